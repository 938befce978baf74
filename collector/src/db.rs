//! Where the ledger lives: the `db` key (and `--db`) as a typed choice between a SQLite file (the default) and a
//! PostgreSQL database given as `postgres://user@host:port/dbname`, with the PostgreSQL password read from the
//! file `db_password_file` names or from the `PGPASSWORD` environment variable. The password is never in the URL
//! (refused), and never printed: [`PgTarget`]'s `Debug` and `Display` leave it out, `check-config` says only where
//! it came from.

use std::fmt;
use std::path::{Path, PathBuf};

use domesday_model::secret::Secret;

use crate::secret_file::read_secret_file;

/// PostgreSQL's default port.
pub const DEFAULT_PG_PORT: u16 = 5432;

/// The environment variable libpq and every PostgreSQL client read a password from.
pub const PGPASSWORD: &str = "PGPASSWORD";

/// Where the ledger is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerDb {
    /// A SQLite file (created when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgTarget),
}

/// A PostgreSQL database to connect to, and the password to connect with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub user: String,
    /// A host name, an IPv4 address or an IPv6 address (without its brackets).
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// `None`: the server must not ask for one (e.g. `trust` on a loopback).
    pub password: Option<Secret>,
    /// Where [`password`](Self::password) was read from.
    pub password_from: PasswordFrom,
}

/// Where a PostgreSQL password was read from, for `check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordFrom {
    None,
    File(PathBuf),
    Env,
}

/// A command that works on a SQLite file only (`backup`) was given a PostgreSQL `db`.
#[derive(Debug, thiserror::Error)]
#[error(
    "`db` is the PostgreSQL database {0}: this command works on a SQLite ledger file only; back a PostgreSQL \
     ledger up with PostgreSQL's own tools (pg_dump, or a base backup with WAL archiving: see docs/scaling.md)"
)]
pub struct StoreUnavailable(pub String);

impl Default for LedgerDb {
    fn default() -> Self {
        LedgerDb::Sqlite(PathBuf::from("./domesday.db"))
    }
}

impl LedgerDb {
    /// Parses a `db` value: a `postgres://` or `postgresql://` URL, else a SQLite file path. The reason of a
    /// refusal never quotes the value (it may hold a password).
    pub fn parse(raw: &str) -> Result<LedgerDb, String> {
        if raw.trim().is_empty() {
            return Err("is empty: give a SQLite file path or postgres://user@host:port/dbname".into());
        }
        for scheme in ["postgres://", "postgresql://"] {
            if let Some(rest) = raw.strip_prefix(scheme) {
                return PgTarget::parse_url(rest).map(LedgerDb::Postgres);
            }
        }
        if let Some((scheme, _)) = raw.split_once("://")
            && !scheme.is_empty()
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(format!(
                "a {scheme}:// URL is not a ledger store: give a SQLite file path or postgres://user@host:port/dbname"
            ));
        }
        Ok(LedgerDb::Sqlite(PathBuf::from(raw)))
    }

    /// The SQLite file, or why a command that needs it cannot run on this `db`.
    pub fn sqlite_path(&self) -> Result<&Path, StoreUnavailable> {
        match self {
            LedgerDb::Sqlite(p) => Ok(p),
            LedgerDb::Postgres(t) => Err(StoreUnavailable(t.to_string())),
        }
    }

    /// Reads the PostgreSQL password: from `file` (the `db_password_file` key) when given, else from
    /// `env` (the `PGPASSWORD` variable's value) when set and not empty. A password file with a SQLite `db` is
    /// refused: it would be silently unused.
    pub fn resolve_password(&mut self, file: Option<&Path>, env: Option<String>) -> Result<(), PasswordError> {
        match self {
            LedgerDb::Sqlite(_) => match file {
                Some(_) => Err(PasswordError::NotPostgres),
                None => Ok(()),
            },
            LedgerDb::Postgres(t) => {
                if let Some(f) = file {
                    t.password = Some(read_secret_file(f, false).map_err(PasswordError::File)?);
                    t.password_from = PasswordFrom::File(f.to_path_buf());
                } else if let Some(p) = env.filter(|p| !p.is_empty()) {
                    t.password = Some(Secret::new(p));
                    t.password_from = PasswordFrom::Env;
                } else {
                    t.password = None;
                    t.password_from = PasswordFrom::None;
                }
                Ok(())
            }
        }
    }

    /// How `check-config` describes the password, if any.
    pub fn describe_password(&self) -> Option<String> {
        let LedgerDb::Postgres(t) = self else { return None };
        let p = t.password.as_ref()?;
        Some(match &t.password_from {
            PasswordFrom::File(f) => p.describe(&format!("db_password_file {}", f.display())),
            PasswordFrom::Env | PasswordFrom::None => p.describe(PGPASSWORD),
        })
    }
}

/// Why the PostgreSQL password could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "is set but `db` is a SQLite file, which has no password: remove it, or set `db` to postgres://user@host:port/dbname"
    )]
    NotPostgres,
    #[error("{0}")]
    File(String),
}

impl fmt::Display for LedgerDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerDb::Sqlite(p) => write!(f, "{}", p.display()),
            LedgerDb::Postgres(t) => t.fmt(f),
        }
    }
}

/// The URL without any password: `postgres://user@host:port/dbname`.
impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "postgres://{}@{host}:{}/{}", encode(&self.user), self.port, encode(&self.dbname))
    }
}

const PASSWORD_REFUSED: &str = "holds a password: a password in the configuration would be shown wherever the URL is; \
     put it in a file that only the collector's user can read and name it with `db_password_file`, or set the \
     PGPASSWORD environment variable";

impl PgTarget {
    /// Parses what follows `postgres://`: `user@host[:port]/dbname`.
    fn parse_url(rest: &str) -> Result<PgTarget, String> {
        const FORM: &str = "give postgres://user@host:port/dbname";
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        if let Some(q) = query {
            if q.split('&').any(|kv| kv.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case("password"))) {
                return Err(format!("the PostgreSQL URL {PASSWORD_REFUSED}"));
            }
            return Err(format!("the PostgreSQL URL has options after `?`, which are not supported: {FORM}"));
        }
        let (authority, path) =
            main.split_once('/').ok_or_else(|| format!("the PostgreSQL URL names no database: {FORM}"))?;
        let (userinfo, hostport) =
            authority.rsplit_once('@').ok_or_else(|| format!("the PostgreSQL URL names no user: {FORM}"))?;
        if userinfo.contains(':') {
            return Err(format!("the PostgreSQL URL {PASSWORD_REFUSED}"));
        }
        let user = decode(userinfo)
            .ok_or_else(|| format!("the PostgreSQL URL's user is not valid percent-encoded UTF-8: {FORM}"))?;
        if user.is_empty() {
            return Err(format!("the PostgreSQL URL names no user: {FORM}"));
        }
        let (host, port) = split_host_port(hostport)?;
        if path.is_empty() || path.contains('/') {
            return Err(format!("the PostgreSQL URL must name one database after the host: {FORM}"));
        }
        let dbname = decode(path)
            .ok_or_else(|| format!("the PostgreSQL URL's database is not valid percent-encoded UTF-8: {FORM}"))?;
        Ok(PgTarget { user, host, port, dbname, password: None, password_from: PasswordFrom::None })
    }

    /// The driver's connection settings (the password included).
    pub fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.user(&self.user)
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .application_name("domesday-collector")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        c
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    const HOST: &str = "the PostgreSQL URL needs a host name or address (Unix socket directories are not supported): \
                        give postgres://user@host:port/dbname";
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| HOST.to_string())?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(HOST.into());
        }
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':').ok_or_else(|| HOST.to_string())?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty()
        || !(host.contains(':') || host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(HOST.into());
    }
    let port = match port {
        None => DEFAULT_PG_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err("the PostgreSQL URL's port must be a number from 1 to 65535".into()),
        },
    };
    Ok((host.to_string(), port))
}

/// Percent-decoding of a URL part; `None` when malformed or not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl<'de> serde::Deserialize<'de> for LedgerDb {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        LedgerDb::parse(&raw).map_err(|why| serde::de::Error::custom(format!("key `db`: {why}")))
    }
}

impl serde::Serialize for LedgerDb {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(raw: &str) -> PgTarget {
        match LedgerDb::parse(raw).expect(raw) {
            LedgerDb::Postgres(t) => t,
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn a_postgres_url_is_parsed_and_shown_back_without_password() {
        let t = pg("postgres://domesday@db.example:6543/ledger");
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port, t.dbname.as_str()),
            ("domesday", "db.example", 6543, "ledger")
        );
        assert_eq!(t.to_string(), "postgres://domesday@db.example:6543/ledger");
        let t = pg("postgresql://dom%40esday@[::1]/led%20ger");
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port, t.dbname.as_str()),
            ("dom@esday", "::1", 5432, "led ger")
        );
        assert_eq!(t.to_string(), "postgres://dom%40esday@[::1]:5432/led%20ger");
        assert_eq!(LedgerDb::parse(&t.to_string()).expect("round trip"), LedgerDb::Postgres(t));
    }

    #[test]
    fn anything_else_is_a_sqlite_path() {
        for p in ["./domesday.db", "/var/lib/domesday-collector/ledger.db", "postgres.db", "a:b.db"] {
            assert_eq!(LedgerDb::parse(p).expect(p), LedgerDb::Sqlite(PathBuf::from(p)), "{p}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_quoting_it() {
        for raw in [
            "postgres://domesday:hunter2-pw@db/ledger",
            "postgres://domesday:@db/ledger",
            "postgresql://domesday@db/ledger?password=hunter2-pw",
            "postgres://domesday@db/ledger?sslmode=disable&PASSWORD=hunter2-pw",
        ] {
            let e = LedgerDb::parse(raw).expect_err(raw);
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("db_password_file") && e.contains("PGPASSWORD"), "{e}");
        }
    }

    #[test]
    fn malformed_urls_get_a_reason_and_the_form() {
        for (raw, why) in [
            ("postgres://db.example/ledger", "no user"),
            ("postgres://u@db.example", "no database"),
            ("postgres://u@db.example/", "one database"),
            ("postgres://u@db.example/a/b", "one database"),
            ("postgres://u@/ledger", "host"),
            ("postgres://u@%2Fvar%2Frun/ledger", "host"),
            ("postgres://u@db:0/ledger", "port"),
            ("postgres://u@db:99999/ledger", "port"),
            ("postgres://u@[nothost]:5432/ledger", "host"),
            ("postgres://u@db/ledger?sslmode=require", "not supported"),
            ("postgres://%ZZ@db/ledger", "percent-encoded"),
            ("mysql://u:secret-pw@db/ledger", "not a ledger store"),
            ("", "empty"),
        ] {
            let e = LedgerDb::parse(raw).expect_err(raw);
            assert!(e.contains(why), "{raw}: {e}");
            assert!(!e.contains("secret-pw"), "{e}");
        }
    }

    #[test]
    fn the_password_comes_from_the_file_first_then_pgpassword_and_never_prints() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("pg.password");
        std::fs::write(&f, "file-pw-4242\n").expect("write");
        let mut db = LedgerDb::parse("postgres://u@127.0.0.1:5432/l").expect("parse");
        db.resolve_password(Some(&f), Some("env-pw-4343".into())).expect("file");
        let LedgerDb::Postgres(t) = &db else { panic!() };
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("file-pw-4242"));
        let described = db.describe_password().expect("described");
        assert!(described.contains("db_password_file") && described.contains("12 bytes"), "{described}");
        db.resolve_password(None, Some("env-pw-4343".into())).expect("env");
        let LedgerDb::Postgres(t) = &db else { panic!() };
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("env-pw-4343"));
        assert!(db.describe_password().expect("described").contains("PGPASSWORD"));
        for shown in [format!("{db:?}"), db.to_string(), format!("{t:?}"), t.to_string(), format!("{:?}", t.config())] {
            assert!(!shown.contains("env-pw") && !shown.contains("file-pw"), "{shown}");
        }
        db.resolve_password(None, Some(String::new())).expect("empty env");
        assert_eq!(db.describe_password(), None);
        let e = db.resolve_password(Some(&dir.path().join("nope")), None).expect_err("missing file");
        assert!(e.to_string().contains("nope"), "{e}");
        let mut sqlite = LedgerDb::default();
        assert!(matches!(sqlite.resolve_password(Some(&f), None), Err(PasswordError::NotPostgres)));
        sqlite.resolve_password(None, Some("env-pw-4343".into())).expect("PGPASSWORD is ignored with SQLite");
    }

    #[test]
    fn a_command_needing_a_sqlite_file_names_the_postgres_db_and_its_own_tools() {
        let db = LedgerDb::parse("postgres://u@127.0.0.1:5432/l").expect("parse");
        let e = db.sqlite_path().expect_err("postgres").to_string();
        assert!(e.contains("postgres://u@127.0.0.1:5432/l") && e.contains("SQLite ledger file only"), "{e}");
        assert!(e.contains("pg_dump"), "{e}");
        assert_eq!(LedgerDb::default().sqlite_path().expect("sqlite"), Path::new("./domesday.db"));
    }
}
