//! The PostgreSQL ledger's groundwork against a real, throwaway PostgreSQL (`domesday_tests::pg`): the
//! connection with the password from `db_password_file` or `PGPASSWORD`, the schema's migrations (from empty,
//! again, two collectors at once, a newer schema refused) and their mirror of the SQLite schema, version by
//! version. And through the real binary: `check-config` validates a PostgreSQL `db` without ever printing its
//! password, and a command that cannot reach the database says which one it is (never the password). The store
//! through the real binary: `serve` on a PostgreSQL `db` books what agents push and answers the energy API exactly,
//! and the one-shot commands (`energy`) read the same ledger.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use domesday_collector::db::{LedgerDb, PgTarget};
use domesday_collector::ledger::pg::{self, PgError, schema};
use domesday_tests::pg::{PgCluster, PgDb};
use domesday_tests::{assert_no_secrets, binary};

/// The collector's view of a test database: its URL parsed as `db` is, the password as `db_password_file` gives it.
fn target(db: &PgDb, dir: &std::path::Path) -> PgTarget {
    let f = dir.join("pg.password");
    std::fs::write(&f, format!("{}\n", db.password())).expect("password file");
    let mut parsed = LedgerDb::parse(&db.url()).expect("the harness's URL is a valid `db`");
    parsed.resolve_password(Some(&f), None).expect("password file");
    match parsed {
        LedgerDb::Postgres(t) => t,
        other => panic!("{other:?}"),
    }
}

/// Table → its columns in order, and its primary key's columns in order.
type Shape = BTreeMap<String, (Vec<String>, Vec<String>)>;

fn pg_shape(c: &mut postgres::Client) -> Shape {
    let mut shape = Shape::new();
    for r in c
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> 'schema_version' ORDER BY table_name, ordinal_position",
            &[],
        )
        .expect("columns")
    {
        shape.entry(r.get(0)).or_default().0.push(r.get(1));
    }
    for r in c
        .query(
            "SELECT k.table_name::text, k.column_name::text FROM information_schema.table_constraints t
             JOIN information_schema.key_column_usage k
               ON k.constraint_name = t.constraint_name AND k.table_schema = t.table_schema
             WHERE t.table_schema = 'public' AND t.constraint_type = 'PRIMARY KEY' AND t.table_name <> 'schema_version'
             ORDER BY k.table_name, k.ordinal_position",
            &[],
        )
        .expect("primary keys")
    {
        shape.entry(r.get(0)).or_default().1.push(r.get(1));
    }
    shape
}

fn sqlite_shape(c: &rusqlite::Connection) -> Shape {
    let mut shape = Shape::new();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .expect("tables")
        .query_map([], |r| r.get(0))
        .expect("tables")
        .collect::<Result<_, _>>()
        .expect("tables");
    for t in tables {
        let mut cols: Vec<(i64, String, i64)> = c
            .prepare("SELECT cid, name, pk FROM pragma_table_info(?1)")
            .expect("columns")
            .query_map([&t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("columns")
            .collect::<Result<_, _>>()
            .expect("columns");
        cols.sort();
        let names = cols.iter().map(|c| c.1.clone()).collect();
        let mut pk: Vec<&(i64, String, i64)> = cols.iter().filter(|c| c.2 > 0).collect();
        pk.sort_by_key(|c| c.2);
        shape.insert(t, (names, pk.iter().map(|c| c.1.clone()).collect()));
    }
    shape
}

#[test]
fn the_postgres_schema_mirrors_the_sqlite_one_version_by_version() {
    use domesday_collector::ledger::sqlite;
    assert_eq!(schema::MIGRATIONS.len(), sqlite::MIGRATIONS.len(), "one PostgreSQL migration per SQLite one");
    let cluster = PgCluster::start();
    for v in 1..=schema::MIGRATIONS.len() {
        let lite = rusqlite::Connection::open_in_memory().expect("sqlite");
        for m in &sqlite::MIGRATIONS[..v] {
            lite.execute_batch(m).expect("sqlite migration");
        }
        let db = cluster.database();
        let mut c = db.client();
        for m in &schema::MIGRATIONS[..v] {
            c.batch_execute(m).expect("postgres migration");
        }
        let (p, s) = (pg_shape(&mut c), sqlite_shape(&lite));
        // SQLite's AUTOINCREMENT bookkeeping table has no counterpart (PostgreSQL's identity columns keep it).
        let s: Shape = s.into_iter().filter(|(t, _)| t != "sqlite_sequence").collect();
        assert_eq!(p, s, "version {v}: PostgreSQL tables (left) differ from SQLite's (right)");
    }
    // And the latest SQLite ledger as the collector opens it (its migrations' data steps included).
    let dir = tempfile::tempdir().expect("tmp");
    let lite = sqlite::open_writer(&dir.path().join("l.db")).expect("sqlite ledger");
    let db = cluster.database();
    let (mut c, m) = pg::open(&target(&db, dir.path())).expect("migrate");
    assert_eq!(m, schema::Migrated { from: 0, to: schema::current_version() });
    assert_eq!(pg_shape(&mut c), sqlite_shape(&lite));
    // Types: every SQLite integer is a 64-bit one here, except the roll-ups' sums that SQLite turns into a real past
    // i64, exact here; blobs are bytea, reals double precision.
    for r in c
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, COALESCE(numeric_precision, 0)::int,
                    COALESCE(numeric_scale, 0)::int
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'schema_version'",
            &[],
        )
        .expect("types")
    {
        let (t, col, ty): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let decl: String = lite
            .query_row("SELECT type FROM pragma_table_info(?1) WHERE name = ?2", [&t, &col], |r| r.get(0))
            .expect("sqlite column");
        let want = match (decl.as_str(), t.as_str(), col.as_str()) {
            ("INTEGER", "site_hours" | "site_days" | "days", "energy_uj") => "numeric",
            ("INTEGER", ..) => "bigint",
            ("TEXT", ..) => "text",
            ("BLOB", ..) => "bytea",
            ("REAL", ..) => "double precision",
            other => panic!("unexpected SQLite type {other:?}"),
        };
        assert_eq!(ty, want, "{t}.{col}");
        if ty == "numeric" {
            assert_eq!((r.get::<_, i32>(3), r.get::<_, i32>(4)), (39, 0), "{t}.{col} holds any i128 exactly");
        }
    }
}

#[test]
fn migrations_apply_from_empty_once_and_are_idempotent() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = cluster.database();
    let t = target(&db, dir.path());
    let mut c = db.client();
    assert_eq!(schema::version(&mut c).expect("version"), 0);
    let (_, first) = pg::open(&t).expect("first start");
    assert_eq!(first, schema::Migrated { from: 0, to: schema::current_version() });
    let rows = |c: &mut postgres::Client| -> Vec<(i32, String)> {
        c.query("SELECT version, applied_by FROM schema_version ORDER BY version", &[])
            .expect("schema_version")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let before = rows(&mut c);
    assert_eq!(before.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=schema::current_version()).collect::<Vec<_>>());
    assert!(before.iter().all(|r| r.1.starts_with("domesday-collector ")), "{before:?}");
    // Rows written between two starts stay: a restart migrates nothing and deletes nothing.
    c.batch_execute(
        "INSERT INTO series (site, host, meter, metric, method, quality, role, unit)
         VALUES ('caen-1', 'h1', '', 'domesday_host_energy_joules_total', 'rapl_uplift', 'estimated', 'it_in', 'J')",
    )
    .expect("a series");
    let (_, again) = pg::open(&t).expect("second start");
    assert_eq!(again, schema::Migrated { from: schema::current_version(), to: schema::current_version() });
    assert_eq!(rows(&mut c), before);
    let n: i64 = c.query_one("SELECT COUNT(*) FROM series", &[]).expect("count").get(0);
    assert_eq!(n, 1);
    // The roll-up column holds sums beyond i64 exactly.
    c.batch_execute(
        "INSERT INTO site_hours VALUES ('caen-1', 'bmc_dcmi', 'measured', 0, 9223372036854775807, 0);
         UPDATE site_hours SET energy_uj = energy_uj + 9223372036854775807",
    )
    .expect("a sum beyond i64");
    let sum: String = c.query_one("SELECT energy_uj::text FROM site_hours", &[]).expect("sum").get(0);
    assert_eq!(sum.parse::<i128>().expect("i128"), 2 * i128::from(i64::MAX));
}

/// Backends of `application_name` waiting on a lock right now.
fn waiting_on_a_lock(admin: &mut postgres::Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'domesday-collector' AND wait_event_type = 'Lock'",
            &[&db],
        )
        .expect("pg_stat_activity")
        .get(0)
}

#[test]
fn two_collectors_starting_together_migrate_once() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = cluster.database();
    let t = target(&db, dir.path());
    // Hold the migration lock so both collectors are inside their migration at the same time.
    let mut holder = db.client();
    holder.batch_execute(&format!("SELECT pg_advisory_lock({})", schema::MIGRATION_LOCK)).expect("hold the lock");
    let starts: Vec<_> = (0..2)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || pg::open(&t).map(|(_, m)| m))
        })
        .collect();
    let mut admin = cluster.admin();
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting_on_a_lock(&mut admin, &db.name) < 2 {
        assert!(Instant::now() < deadline, "both collectors should wait for the migration lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.batch_execute(&format!("SELECT pg_advisory_unlock({})", schema::MIGRATION_LOCK)).expect("release");
    let mut done: Vec<schema::Migrated> =
        starts.into_iter().map(|h| h.join().expect("thread").expect("both collectors start")).collect();
    done.sort_by_key(|m| m.from);
    let v = schema::current_version();
    assert_eq!(done, vec![schema::Migrated { from: 0, to: v }, schema::Migrated { from: v, to: v }]);
    let mut c = db.client();
    let n: i64 = c.query_one("SELECT COUNT(*) FROM schema_version", &[]).expect("count").get(0);
    assert_eq!(n, i64::from(v));
    let mut lite = tempfile::tempdir().expect("tmp").keep();
    lite.push("l.db");
    let sqlite = domesday_collector::ledger::sqlite::open_writer(&lite).expect("sqlite");
    assert_eq!(pg_shape(&mut c), sqlite_shape(&sqlite));
    let _ = std::fs::remove_dir_all(lite.parent().expect("dir"));
}

#[test]
fn a_schema_newer_than_this_collector_is_refused_and_left_alone() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = cluster.database();
    let t = target(&db, dir.path());
    pg::open(&t).expect("migrate");
    let newer = schema::current_version() + 1;
    let mut c = db.client();
    c.execute("INSERT INTO schema_version (version, applied_by) VALUES ($1, 'domesday-collector 9.9.9')", &[&newer])
        .expect("a newer build's migration");
    let shape = pg_shape(&mut c);
    let e = match pg::open(&t) {
        Err(e) => e,
        Ok((_, m)) => panic!("a newer schema was accepted: {m:?}"),
    };
    assert!(matches!(e, PgError::NewerSchema { found, known } if found == newer && known == newer - 1), "{e:?}");
    let shown = e.to_string();
    assert!(shown.contains(&format!("schema version {newer} is newer")) && shown.contains("newer one"), "{shown}");
    assert_eq!(schema::version(&mut c).expect("version"), newer);
    assert_eq!(pg_shape(&mut c), shape);
}

#[test]
fn the_password_comes_from_the_file_or_pgpassword_and_a_wrong_one_is_refused_without_showing_it() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    let db = cluster.database();
    pg::connect(&target(&db, dir.path())).expect("password from db_password_file");
    let mut from_env = LedgerDb::parse(&db.url()).expect("url");
    from_env.resolve_password(None, Some(db.password().to_string())).expect("PGPASSWORD");
    let LedgerDb::Postgres(t) = &from_env else { panic!() };
    pg::connect(t).expect("password from PGPASSWORD");
    let mut wrong = t.clone();
    wrong.password = Some(domesday_model::secret::Secret::new("wrong-password-5150"));
    let e = pg::connect(&wrong).map(|_| ()).expect_err("a wrong password");
    let shown = format!("{e} {e:?} {wrong:?} {wrong}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(shown.contains(&db.url()), "{shown}");
    assert_no_secrets(&[("the connection error", &shown)], &["wrong-password-5150", db.password()]);
    let mut none = t.clone();
    none.password = None;
    pg::connect(&none).map(|_| ()).expect_err("the cluster asks every client for a password");
}

/// A collector config `name` with `db` = `db`, and a site.
fn config_with_db(dir: &std::path::Path, name: &str, db: &str, extra: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("t"), "site-token-pg-81c2\n").expect("token");
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{}\"\ndb = {db:?}\n{extra}\n[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n",
            domesday_tests::free_port(),
            dir.join("t").display().to_string()
        ),
    )
    .expect("config");
    p
}

/// Runs the collector to its exit, bounded: one still running after 30 s (a `serve` that started) is killed and
/// the test fails.
fn collector(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(binary("domesday-collector"));
    cmd.args(args)
        .env_remove("PGPASSWORD")
        .envs(env.iter().copied())
        .env("DOMESDAY_LOG", "info")
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"));
    let secrets = domesday_tests::Secrets::of(&cmd);
    let mut child = cmd.spawn().expect("run collector");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still runs after 30 s: {}", domesday_tests::read_log(&err));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!("{}{}", domesday_tests::read_log(&out), domesday_tests::read_log(&err));
    secrets.check(&format!("collector {}", args.join(" ")), &text);
    (status.code(), text)
}

#[test]
fn check_config_validates_a_postgres_db_and_commands_that_cannot_reach_it_never_print_the_password() {
    const PW: &str = "pg-password-e2e-7731";
    let dir = tempfile::tempdir().expect("tmp");
    // Nothing listens there: every command that opens the ledger fails to connect.
    let url = &format!("postgres://domesday@127.0.0.1:{}/ledger", domesday_tests::free_port());
    std::fs::write(dir.path().join("pg.password"), format!("{PW}\n")).expect("password file");
    let pw_file = format!("db_password_file = {:?}\n", dir.path().join("pg.password").display().to_string());
    let cfg = config_with_db(dir.path(), "pg-file.toml", url, &pw_file);
    let cfg_s = cfg.display().to_string();
    let mut outputs: Vec<(String, String)> = Vec::new();

    let (code, out) = collector(&["check-config", "--config", &cfg_s], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("db = \"{url}\"")), "{out}");
    assert!(out.contains("# db password: <redacted>, 20 bytes, from db_password_file"), "{out}");
    outputs.push(("check-config, password file".into(), out));

    let env_cfg = config_with_db(dir.path(), "pg-env.toml", url, "");
    let (code, out) = collector(&["check-config", "--config", &env_cfg.display().to_string()], &[("PGPASSWORD", PW)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("# db password: <redacted>, 20 bytes, from PGPASSWORD"), "{out}");
    outputs.push(("check-config, PGPASSWORD".into(), out));

    // --db takes the URL too, its password read the same way.
    let sqlite_cfg = config_with_db(dir.path(), "sqlite.toml", &dir.path().join("l.db").display().to_string(), "");
    let sqlite_s = sqlite_cfg.display().to_string();
    let (code, out) = collector(&["check-config", "--config", &sqlite_s, "--db", url], &[("PGPASSWORD", PW)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("db = \"{url}\"")) && out.contains("from PGPASSWORD"), "{out}");
    outputs.push(("check-config --db".into(), out));

    // Every command that opens the ledger names the database it cannot reach, before anything binds.
    for args in [
        vec!["serve", "--config", &cfg_s],
        vec![
            "energy",
            "--config",
            &cfg_s,
            "--site",
            "caen-1",
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2026-01-02T00:00:00Z",
        ],
        vec!["serve", "--config", &sqlite_s, "--db", url],
    ] {
        let (code, out) = collector(&args, &[("PGPASSWORD", PW)]);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert!(out.contains("cannot connect"), "{args:?}: {out}");
        assert!(out.contains(url.as_str()) && !out.contains("serving"), "{args:?}: {out}");
        outputs.push((format!("{args:?}"), out));
    }
    // `backup` copies a SQLite file: a PostgreSQL ledger is backed up with PostgreSQL's tools.
    let to = dir.path().join("backup.db").display().to_string();
    let (code, out) = collector(&["backup", "--config", &cfg_s, &to], &[("PGPASSWORD", PW)]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("SQLite ledger file only") && out.contains("pg_dump"), "{out}");
    outputs.push(("backup".into(), out));
    assert!(!dir.path().join("l.db").exists(), "no SQLite ledger was created instead");

    // A password in the URL is refused, and not shown back.
    for bad in [
        format!("postgres://domesday:{PW}@127.0.0.1/ledger"),
        format!("postgres://domesday@127.0.0.1/ledger?password={PW}"),
    ] {
        let c = config_with_db(dir.path(), "bad.toml", &bad, "");
        let (code, out) = collector(&["check-config", "--config", &c.display().to_string()], &[]);
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("key `db`") && out.contains("db_password_file") && out.contains("PGPASSWORD"), "{out}");
        outputs.push((format!("check-config {bad:.30}"), out));
        let (code, out) = collector(&["check-config", "--config", &sqlite_s, "--db", &bad], &[]);
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("--db") && out.contains("db_password_file"), "{out}");
        outputs.push(("check-config --db with a password".into(), out));
    }
    let shown: Vec<(&str, &str)> = outputs.iter().map(|(n, o)| (n.as_str(), o.as_str())).collect();
    assert_no_secrets(&shown, &[PW]);
}

/// Copies every row of every ledger table of a SQLite ledger into a migrated PostgreSQL one, column for column
/// (the schemas mirror each other): the same rows in both stores.
fn copy_ledger(lite: &rusqlite::Connection, pg: &mut postgres::Client) -> BTreeMap<String, usize> {
    use postgres::types::ToSql;
    let mut copied = BTreeMap::new();
    for (table, (cols, _)) in sqlite_shape(lite) {
        if table == "sqlite_sequence" {
            continue;
        }
        let types: Vec<String> = cols
            .iter()
            .map(|c| {
                pg.query_one(
                    "SELECT data_type::text FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
                    &[&table, c],
                )
                .expect("column type")
                .get(0)
            })
            .collect();
        let placeholders: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| if t == "numeric" { format!("${}::text::numeric", i + 1) } else { format!("${}", i + 1) })
            .collect();
        let insert = format!(
            "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
            cols.join(", "),
            placeholders.join(", ")
        );
        let mut st = lite.prepare(&format!("SELECT {} FROM {table}", cols.join(", "))).expect("select");
        let rows: Vec<Vec<rusqlite::types::Value>> = st
            .query_map([], |r| (0..cols.len()).map(|i| r.get(i)).collect())
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        for row in &rows {
            use rusqlite::types::Value as V;
            let params: Vec<Box<dyn ToSql + Sync>> = row
                .iter()
                .zip(&types)
                .map(|(v, t)| -> Box<dyn ToSql + Sync> {
                    match (v, t.as_str()) {
                        (V::Integer(i), "numeric") => Box::new(i.to_string()),
                        (V::Real(f), "numeric") => Box::new(format!("{f:.0}")),
                        (V::Integer(i), _) => Box::new(*i),
                        (V::Real(f), _) => Box::new(*f),
                        (V::Text(s), _) => Box::new(s.clone()),
                        (V::Blob(b), _) => Box::new(b.clone()),
                        (V::Null, "bigint") => Box::new(None::<i64>),
                        (V::Null, "double precision") => Box::new(None::<f64>),
                        (V::Null, other) => panic!("NULL in a {other} column of {table}"),
                    }
                })
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
            pg.execute(&insert, &refs).unwrap_or_else(|e| panic!("copy a row of {table}: {e}"));
        }
        copied.insert(table, rows.len());
    }
    copied
}

#[test]
fn the_reads_without_booking_rules_answer_as_the_sqlite_reader_on_the_same_rows() {
    use domesday_collector::ledger::pg::read::PgReader;
    use domesday_collector::ledger::sqlite::{Provenance, SqliteReader, SqliteWriter, retire_host};
    use domesday_collector::ledger::{Batch, CounterSample, IntervalReading, LedgerReader, LedgerWriter, Policy};
    const H: i64 = 3_600_000;
    let t0: i64 = 1_785_000_000_000 / H * H; // an hour boundary in 2026
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("l.db");
    let policy = Policy::default();
    let mut w = SqliteWriter::open(&path, policy).expect("sqlite ledger");
    let host = |ts: i64, h: &str, method: &str, quality: &str, uj: i64| {
        CounterSample::host("caen-1", h, method, quality, ts, Some(uj))
    };
    let batch = |from: i64, to: i64| {
        let mut b = Batch::default();
        let mut ts = from;
        while ts < to {
            // 350 W and 120 W hosts, and a 2 kW utility meter read every 15 minutes (registers in µkWh).
            b.samples.push(host(ts, "h1", "bmc_dcmi", "measured", (ts - t0) / 1_000 * 350_000_000));
            b.samples.push(host(ts, "h2", "rapl_uplift", "estimated", (ts - t0) / 1_000 * 120_000_000 + 7));
            if (ts - t0) % (15 * 60_000) == 0 {
                let kwh_micro = (ts - t0) * 2_000 / H * 1_000; // 2 kWh per hour
                b.samples.push(CounterSample::meter(
                    "caen-1",
                    "grid",
                    "utility_in",
                    "kWh",
                    ts,
                    1_000_000_000 + kwh_micro,
                ));
            }
            ts += 15_000;
        }
        b
    };
    // The first 3 hours written to the tables, the next 90 minutes left in the journal.
    w.apply(&[batch(t0, t0 + 3 * H)], t0 + 3 * H).expect("book");
    w.housekeeping(true).expect("materialize");
    let mut late = batch(t0 + 3 * H, t0 + 4 * H + 30 * 60_000);
    late.intervals.push(IntervalReading {
        site: "caen-1".into(),
        meter: "chiller".into(),
        role: "cooling".into(),
        unit: "kWh".into(),
        start_ms: t0 + 30 * 60_000,
        end_ms: t0 + 2 * H + 30 * 60_000,
        value_micro: 5_000_000,
    });
    w.apply(
        &[late, Batch { samples: vec![host(t0 + 5 * H, "rouen-h", "model", "estimated", 1)], ..Default::default() }],
        t0 + 5 * H,
    )
    .expect("book");
    let who = Provenance { author: "ops".into(), reason: "decommissioned".into(), recorded_ms: t0 + 5 * H };
    retire_host(&path, "caen-1", "h2", false, &who).expect("retire");
    drop(w);
    let sqlite = SqliteReader::new(&path, policy);

    let cluster = PgCluster::start();
    let db = cluster.database();
    let (mut c, _) = pg::open(&target(&db, dir.path())).expect("migrate");
    let lite = rusqlite::Connection::open(&path).expect("sqlite");
    let copied = copy_ledger(&lite, &mut c);
    for t in ["journal", "hours", "samples", "intervals", "chunks", "site_hours", "retired_hosts"] {
        assert!(copied.get(t).copied().unwrap_or(0) > 0, "the data set exercises {t}: {copied:?}");
    }
    let pg = PgReader::new(c);

    let totals = sqlite.site_totals().expect("sqlite totals");
    assert!(totals.iter().any(|(_, r, e)| r == "it_in" && *e > 0), "{totals:?}");
    assert_eq!(pg.site_totals().expect("pg totals"), totals);
    for (role, from, to) in [
        ("utility_in", t0, t0 + 5 * H),
        ("utility_in", t0 + H, t0 + 3 * H + 60_000),
        ("cooling", t0 - H, t0 + 4 * H),
        ("it_in", t0, t0 + 5 * H),
        ("utility_in", t0 + 10 * H, t0 + 11 * H),
    ] {
        let want = sqlite.role_hourly("caen-1", role, from, to).expect("sqlite role_hourly");
        assert_eq!(pg.role_hourly("caen-1", role, from, to).expect("pg role_hourly"), want, "{role} [{from}, {to})");
    }
    assert!(!sqlite.role_hourly("caen-1", "utility_in", t0, t0 + 5 * H).expect("hours").is_empty());
    let retired = sqlite.retired_hosts("caen-1").expect("sqlite retired");
    assert_eq!(retired.len(), 1);
    assert_eq!(pg.retired_hosts("caen-1").expect("pg retired"), retired);
    assert_eq!(pg.retired_hosts("rouen-1").expect("pg retired"), vec![]);
}

/// `serve` with `db = "postgres://…"` books what agents push and answers `GET /api/v1/energy` exactly: per host
/// (raw points at minute edges, hours inside), site-wide (the site roll-ups), a replay counted once, a late sample
/// slotted in, and the same figures after a restart (the last samples are read back from the database) and from
/// the `energy` command on the same database.
#[test]
fn serve_on_postgres_ingests_and_answers_the_energy_api_exactly() {
    use domesday_model::remote_write::{WriteRequest, encode};
    use domesday_tests::{Collector, free_port, host_energy, host_energy_series, now_minute_ms, post_write};
    const TOKEN: &str = "caen-pg-token-5521";
    let cluster = PgCluster::start();
    let db = cluster.database();
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("caen.token"), format!("{TOKEN}\n")).expect("token");
    std::fs::write(dir.path().join("pg.password"), format!("{}\n", db.password())).expect("password");
    let port = free_port();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\ndb_password_file = {:?}\n\n[[sites]]\nid = \"caen-1\"\n\
             timezone = \"Europe/Paris\"\ntoken_file = {:?}\n",
            db.url(),
            dir.path().join("pg.password").display().to_string(),
            dir.path().join("caen.token").display().to_string()
        ),
    )
    .expect("config");
    let body = |host: &str, points: &[(f64, i64)]| {
        encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", host, "psu_input", points)] })
    };
    // Two hours of 15 s samples from 13:00 two hours ago; 0.1 J resolution, exact in µJ.
    let t0 = (now_minute_ms() - 3 * 3_600_000).div_euclid(3_600_000) * 3_600_000;
    let a: Vec<(f64, i64)> = (0..480).map(|i| (1000.0 + i as f64 * 31.7, t0 + i * 15_000)).collect();
    let b: Vec<(f64, i64)> = (0..480).map(|i| (50.0 + i as f64 * 12.3, t0 + i * 15_000 + 7_000)).collect();
    let c = Collector::spawn(dir.path(), port, &config);
    let write = c.url("/api/v1/write");
    // srv-1's first hour, with a sample held back and sent late; srv-2's whole range.
    let held = t0 + 100 * 15_000;
    let early: Vec<(f64, i64)> = a[..240].iter().copied().filter(|p| p.1 != held).collect();
    let late: Vec<(f64, i64)> = a[..240].iter().copied().filter(|p| p.1 == held).collect();
    assert_eq!(post_write(&write, Some(TOKEN), body("srv-1", &early)).map(|r| r.0), Ok(204));
    assert_eq!(post_write(&write, Some(TOKEN), body("srv-2", &b)).map(|r| r.0), Ok(204));
    assert_eq!(post_write(&write, Some(TOKEN), body("srv-1", &late)).map(|r| r.0), Ok(204));
    assert_eq!(post_write(&write, Some(TOKEN), body("srv-2", &b[..50])).map(|r| r.0), Ok(204), "a replay");
    let e = host_energy(&c, "srv-1", t0, t0 + 3_600_000);
    assert_eq!(e["energy_microjoules"], "7576300000", "{e}"); // 239 × 31.7 J
    assert_eq!(e["samples"], 240, "{e}");
    // The rest of srv-1 after a restart: its baseline is the last sample in the database.
    drop(c);
    let c = Collector::spawn(dir.path(), port, &config);
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body("srv-1", &a[240..])).map(|r| r.0), Ok(204));
    let e = host_energy(&c, "srv-1", t0, t0 + 2 * 3_600_000);
    assert_eq!(e["energy_microjoules"], "15184300000", "{e}"); // 479 × 31.7 J
    assert_eq!(e["samples"], 480, "{e}");
    assert_eq!(e["measured_joules"], 15184.3, "{e}");
    // A range cut at minutes (raw points at both edges): srv-2 from t0+7s to t0+30min holds its intervals
    // between samples 0 and 119 whole, plus the share of the one from sample 119 to 120 before t0+30min.
    let e = host_energy(&c, "srv-2", t0, t0 + 1_800_000);
    let whole = 119.0 * 12.3;
    let share = 12.3 * 8_000.0 / 15_000.0;
    let got: f64 = e["energy_joules"].as_f64().expect("joules");
    assert!((got - (whole + share)).abs() < 1e-5, "{e}");
    // Site-wide, both hosts, over the two whole hours (the site roll-ups): 479 × 31.7 J + 479 × 12.3 J, minus what
    // srv-2 booked after t0 + 2 h (its last interval ends at t0 + 2 h + 7 s − 15 s: nothing).
    let site = domesday_tests::get_text(
        &c.url(&format!("/api/v1/energy?site=caen-1&from={t0}&to={}", t0 + 2 * 3_600_000)),
        Duration::from_secs(5),
    );
    let site: serde_json::Value = serde_json::from_str(&site).expect("json");
    assert_eq!(site["energy_microjoules"], "21076000000", "{site}");
    assert_eq!(site["by_method"]["psu_input"], 21076.0, "{site}");
    // The `energy` command reads the same database while serve runs.
    let out = Command::new(binary("domesday-collector"))
        .args(["energy", "--config", &config.display().to_string(), "--site", "caen-1", "--host", "srv-1"])
        .args(["--from", &t0.to_string(), "--to", &(t0 + 2 * 3_600_000).to_string(), "--format", "json"])
        .env_remove("PGPASSWORD")
        .output()
        .expect("energy");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let cli: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(cli["energy_microjoules"], "15184300000", "{cli}");
    // The reads serve makes from its async tasks (host list, indicators, the site gauges of /metrics) answer too.
    let hosts: serde_json::Value =
        serde_json::from_str(&domesday_tests::get_text(&c.url("/api/v1/sites/caen-1/hosts"), Duration::from_secs(5)))
            .expect("json");
    let names: Vec<&str> =
        hosts["hosts"].as_array().expect("hosts").iter().filter_map(|h| h["host"].as_str()).collect();
    assert_eq!(names, ["srv-1", "srv-2"], "{hosts}");
    assert_eq!(hosts["hosts"][0]["current_method"], "psu_input", "{hosts}");
    let ind = domesday_tests::get_text(
        &c.url(&format!("/api/v1/sites/caen-1/indicators?from={t0}&to={}&step=1h", t0 + 2 * 3_600_000)),
        Duration::from_secs(30),
    );
    let ind: serde_json::Value = serde_json::from_str(&ind).expect("json");
    assert_eq!(ind["periods"].as_array().map(Vec::len), Some(2), "{ind}");
    let metrics = domesday_tests::get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert!(metrics.contains("domesday_site_energy"), "{metrics}");
    assert!(!metrics.contains("domesday_ledger_db_bytes "), "SQLite's file size only");
    let log = domesday_tests::read_log(&dir.path().join("collector.log"));
    assert!(!log.contains("panicked"), "{log}");
    // Nothing SQLite was created beside the configuration.
    assert!(!dir.path().join("domesday.db").exists());
}

/// The switch that runs the end-to-end suites on PostgreSQL (`domesday_tests::store`, `DOMESDAY_TEST_LEDGER=postgres`)
/// puts a collector the helpers start on a SQLite configuration into a database of its own: nothing SQLite is
/// created, the database holds what was booked, a restart on the same directory and a one-shot `--db` command on
/// the same path find the same ledger (its password in `PGPASSWORD`, never printed), the configuration file untouched, and
/// another directory gets another, empty database.
#[test]
fn the_store_switch_of_the_e2e_helpers_gives_each_sqlite_ledger_its_own_postgres_database() {
    use domesday_model::remote_write::{WriteRequest, encode};
    use domesday_tests::store::{command_on_postgres, database_for};
    use domesday_tests::{
        Collector, collector_config, collector_output, free_port, host_energy, host_energy_series, post_write,
    };
    const TOKEN: &str = "caen-switch-token-7310";
    let (dir, other) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let port = free_port();
    let start = |d: &std::path::Path| {
        let config = collector_config(d, port, TOKEN, "");
        let mut serve = Command::new(binary("domesday-collector"));
        serve.arg("serve").arg("--config").arg(&config);
        Collector::spawn_command(&mut command_on_postgres(&serve), port, d)
    };
    let written = std::fs::read_to_string(collector_config(dir.path(), port, TOKEN, "")).expect("config");
    let c = start(dir.path());
    // The configuration is left as the test wrote it (its lines are named in reports).
    let config = std::fs::read_to_string(dir.path().join("collector.toml")).expect("config");
    assert_eq!(config, written);
    let db = database_for(&dir.path().join("domesday.db"));
    let t0 = domesday_tests::now_minute_ms() - 3_600_000;
    let points: Vec<(f64, i64)> = (0..5).map(|i| (100.0 + i as f64 * 2.5, t0 + i * 10_000)).collect();
    let body = encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", "srv-1", "psu_input", &points)] });
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
    assert_eq!(host_energy(&c, "srv-1", t0, t0 + 60_000)["energy_microjoules"], "10000000");
    drop(c);
    assert!(!dir.path().join("domesday.db").exists(), "a SQLite ledger was created");
    let rows: i64 = db.client().query_one("SELECT COUNT(*) FROM chunks", &[]).expect("count").get(0);
    assert!(rows > 0, "the host samples are in the PostgreSQL database");
    // The same directory again: the same database.
    let c = start(dir.path());
    assert_eq!(host_energy(&c, "srv-1", t0, t0 + 60_000)["energy_microjoules"], "10000000");
    // A one-shot command given the SQLite path with `--db`: the URL instead, the password in PGPASSWORD.
    let mut energy = Command::new(binary("domesday-collector"));
    energy
        .args(["energy", "--site", "caen-1", "--host", "srv-1", "--format", "json"])
        .args(["--from", &t0.to_string(), "--to", &(t0 + 60_000).to_string()])
        .arg("--db")
        .arg(dir.path().join("domesday.db"));
    let mut energy = command_on_postgres(&energy);
    assert!(energy.get_envs().any(|(k, v)| k == "PGPASSWORD" && v.is_some()));
    let out = collector_output(&mut energy, dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("\"10000000\""), "{text}{}", String::from_utf8_lossy(&out.stderr));
    drop(c);
    // Another directory: another database, empty.
    let c = start(other.path());
    assert_eq!(host_energy(&c, "srv-1", t0, t0 + 60_000)["samples"], 0);
    assert_ne!(database_for(&other.path().join("domesday.db")).url(), db.url());
}
