//! Which ledger store the collectors of the end-to-end tests run on: SQLite, the default, or PostgreSQL when the
//! environment variable `DOMESDAY_TEST_LEDGER` is `postgres` (`./test.sh` runs the ledger-bearing suites both ways,
//! see docs/testing.md).
//!
//! The tests write their collectors' configurations and `--db` arguments for SQLite (`db = "<dir>/domesday.db"`).
//! On PostgreSQL, the helpers that run a collector ([`crate::Collector`]'s spawns, [`crate::collector_output`])
//! pass its command through [`command_for_store`], which gives each SQLite ledger path of the test process a fresh
//! database of its own in the process's one cluster ([`crate::pg::shared`]): a `--db` argument becomes that
//! database's URL, and a `--config` file naming a SQLite ledger (or none: `./domesday.db`) gets a `--db URL` added
//! after it (the global `--db` overrides the file's `db`), the password in `PGPASSWORD` either way. The file itself
//! is left as the test wrote it, so what a test reads back of it (the `file:line` of a declared figure in a
//! report) is the same on both stores. The same path always gives the same database, so a
//! collector restarted on its directory, or a one-shot command on that directory, finds its ledger. A test of what
//! only SQLite has (the ledger file, its write-ahead log, `backup`) calls [`skip_on_postgres`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::pg::{self, PgDb};

/// The environment variable that picks the store: `sqlite` (or unset) or `postgres`.
pub const ENV: &str = "DOMESDAY_TEST_LEDGER";

/// A ledger store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// The store this test process's collectors run on, from [`ENV`]; any other value fails the test.
pub fn current() -> Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    *STORE.get_or_init(|| match std::env::var(ENV) {
        Err(_) => Store::Sqlite,
        Ok(v) if v.is_empty() || v == "sqlite" => Store::Sqlite,
        Ok(v) if v == "postgres" => Store::Postgres,
        Ok(v) => panic!("{ENV}={v:?}: give `sqlite` (the default) or `postgres`"),
    })
}

/// Whether this test process's collectors run on PostgreSQL.
pub fn on_postgres() -> bool {
    current() == Store::Postgres
}

/// On PostgreSQL, prints that the calling test is skipped and why (to the test process's stderr, past the test
/// harness's capture, so the run's output shows it) and returns true: the test returns at once. On SQLite, false.
pub fn skip_on_postgres(reason: &str) -> bool {
    if !on_postgres() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    let _ = writeln!(std::io::stderr(), "SKIPPED on PostgreSQL: {test}: {reason}");
    true
}

/// The database of the SQLite ledger `ledger` (an absolute path) on PostgreSQL: a fresh one the first time.
pub fn database_for(ledger: &Path) -> PgDb {
    static DATABASES: Mutex<BTreeMap<PathBuf, PgDb>> = Mutex::new(BTreeMap::new());
    let mut dbs = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    dbs.entry(ledger.to_path_buf()).or_insert_with(|| pg::shared().database()).clone()
}

/// `cmd`, a collector command, rewritten for PostgreSQL (see the module's doc), or None on SQLite: run the returned
/// command instead. Its `--config` file is rewritten in place.
pub fn command_for_store(cmd: &Command) -> Option<Command> {
    on_postgres().then(|| command_on_postgres(cmd))
}

/// `cmd`, a collector command, rewritten for PostgreSQL whatever [`ENV`] says (see the module's doc).
pub fn command_on_postgres(cmd: &Command) -> Command {
    let cwd = cmd
        .get_current_dir()
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let args: Vec<OsString> = cmd.get_args().map(OsString::from).collect();
    let mut out_args: Vec<OsString> = Vec::with_capacity(args.len());
    let mut password = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        let (flag, value, joined) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(OsString::from(v)), true),
            _ => (arg.clone(), args.get(i + 1).cloned(), false),
        };
        let step = if joined { 1 } else { 2 };
        match (flag.as_str(), value) {
            ("--config", Some(v)) => {
                out_args.extend(args[i..(i + step).min(args.len())].iter().cloned());
                i += step;
                // A `--db` of the command's own wins over the file's ledger (it is rewritten when met).
                let has_db = args.iter().any(|a| a == "--db" || a.to_string_lossy().starts_with("--db="));
                if let Some(db) = ledger_of_config(&cwd.join(&v), &cwd).filter(|_| !has_db) {
                    password = Some(db.password().to_string());
                    out_args.push("--db".into());
                    out_args.push(db.url().into());
                }
            }
            ("--db", Some(v)) if !is_postgres_url(&v.to_string_lossy()) => {
                let db = database_for(&cwd.join(&v));
                password = Some(db.password().to_string());
                out_args.push("--db".into());
                out_args.push(db.url().into());
                i += step;
            }
            _ => {
                out_args.push(args[i].clone());
                i += 1;
            }
        }
    }
    let mut out = Command::new(cmd.get_program());
    out.args(out_args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        out.current_dir(d);
    }
    if let Some(p) = password {
        out.env("PGPASSWORD", p);
    }
    out
}

fn is_postgres_url(v: &str) -> bool {
    v.starts_with("postgres://") || v.starts_with("postgresql://")
}

/// The key of a TOML `key = value` line, if it is one.
fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')).then_some(k)
}

/// The value of a `key = "string"` line (basic or literal string; the escapes the tests' `{:?}` writes undone).
fn string_value(line: &str) -> String {
    let v = line.split_once('=').map(|(_, v)| v.trim()).unwrap_or_default();
    if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_string();
    }
    let inner = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

/// The PostgreSQL database of the ledger the collector configuration `config` names: its top-level `db` (a SQLite
/// path, relative to `cwd`, or the default `./domesday.db` when it has none). None for a configuration already on
/// PostgreSQL, or missing.
pub fn ledger_of_config(config: &Path, cwd: &Path) -> Option<PgDb> {
    let text = std::fs::read_to_string(config).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let top = lines.iter().position(|l| l.trim_start().starts_with('[')).unwrap_or(lines.len());
    let ledger = match lines[..top].iter().find(|l| key_of(l) == Some("db")).map(|l| string_value(l)) {
        Some(v) if is_postgres_url(&v) => return None,
        Some(v) => cwd.join(v),
        None => cwd.join("domesday.db"),
    };
    Some(database_for(&ledger))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_db_line_is_read_as_the_tests_write_it() {
        assert_eq!(key_of("db = \"/tmp/x/domesday.db\""), Some("db"));
        assert_eq!(key_of("db_password_file = \"p\""), Some("db_password_file"));
        assert_eq!(key_of("# db = 1 is a comment"), None);
        assert_eq!(string_value("db = \"/tmp/a \\\"b\\\"/domesday.db\""), "/tmp/a \"b\"/domesday.db");
        assert_eq!(string_value("db = '/tmp/c.db'"), "/tmp/c.db");
    }
}
