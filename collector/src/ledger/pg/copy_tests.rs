//! The move of a SQLite ledger into PostgreSQL (`migrate --to`), against a throwaway cluster: every table of both
//! schemas is in the list copied, every row arrives, the target's identities and a late sample inside a moved
//! chunk keep booking exactly afterwards, a non-empty target is refused and left alone, a roll-up sum SQLite kept
//! as a real arrives exact, and the comparison of the readers reports a ledger that answers otherwise.

use std::collections::BTreeSet;
use std::path::Path;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};

use super::super::read::PgReader;
use super::super::store::PgWriter;
use super::super::test_cluster::Cluster;
use super::{Cell, MigrateError, TABLES, compare, migrate, questions};
use crate::db::PgTarget;
use crate::ledger::query::EnergyQuery;
use crate::ledger::sqlite::{SqliteReader, SqliteWriter};
use crate::ledger::{
    Batch, CounterSample, HostClaim, HostModel, IntervalReading, LedgerReader, LedgerWriter, Policy, Provenance,
    Quarantined,
};

const H: i64 = 3_600_000;
/// An hour boundary in 2026.
const T0: i64 = 1_785_000_000_000 / H * H;

fn host(ts: i64, h: &str, uj: i64) -> CounterSample {
    CounterSample::host("caen-1", h, "bmc_dcmi", "measured", ts, Some(uj))
}

fn claim(h: &str, machine: &str, ts_ms: i64) -> HostClaim {
    HostClaim {
        site: "caen-1".into(),
        host: h.into(),
        machine_id: machine.into(),
        ts_ms,
        model: HostModel { vendor: "Dell".into(), product: "R650".into(), cpu_model: "Xeon".into(), sockets: Some(2) },
    }
}

/// A SQLite ledger with a row in every table but the journal's after materialization (some samples are left in
/// the journal for the move to write out): two hosts every 15 s over 5 hours with a gap (a host's chunks hold
/// many points), a claim refused, a sample from the future, a meter's registers and an interval reading, a
/// correction, a swap and a retirement.
fn sqlite_ledger(path: &Path, policy: Policy) {
    let mut w = SqliteWriter::open(path, policy).expect("sqlite ledger");
    let batch = |from: i64, to: i64| {
        let mut b = Batch::default();
        let mut ts = from;
        while ts < to {
            // Host h1 misses the samples of minute 20 to 21 of each hour: the late samples below land inside a chunk.
            if (ts - T0) % H / 60_000 != 20 {
                b.samples.push(host(ts, "h1", (ts - T0) / 1_000 * 350_000_000));
            }
            b.samples.push(CounterSample::host(
                "caen-1",
                "h2",
                "rapl_uplift",
                "estimated",
                ts,
                Some((ts - T0) / 1_000 * 120_000_000 + 7),
            ));
            if (ts - T0) % (15 * 60_000) == 0 {
                b.samples.push(CounterSample::meter(
                    "caen-1",
                    "grid",
                    "utility_in",
                    "kWh",
                    ts,
                    1_000_000_000 + (ts - T0) * 2_000 / H * 1_000,
                ));
            }
            ts += 15_000;
        }
        b
    };
    let mut first = batch(T0, T0 + 3 * H);
    first.claims = vec![claim("h1", "machine-a", T0), claim("h2", "machine-b", T0)];
    w.apply(&[first], T0 + 3 * H).expect("book");
    w.housekeeping(true).expect("materialize");
    let mut second = batch(T0 + 3 * H, T0 + 5 * H);
    second.claims = vec![claim("h2", "machine-c", T0 + 30 * 60_000)];
    second.quarantine = vec![Quarantined {
        site: "caen-1".into(),
        host: "h2".into(),
        method: "rapl_uplift".into(),
        ts_ms: T0 + 30 * H,
        value: Some(12.5),
        received_ms: T0 + 3 * H,
        reason: "future",
    }];
    second.samples.retain(|s| s.series.host != "h1");
    second.intervals.push(IntervalReading {
        site: "caen-1".into(),
        meter: "chiller".into(),
        role: "cooling".into(),
        unit: "kWh".into(),
        start_ms: T0 + 30 * 60_000,
        end_ms: T0 + 2 * H + 30 * 60_000,
        value_micro: 5_000_000,
    });
    w.apply(&[second], T0 + 5 * H).expect("book");
    // h1's last two hours, left in the journal.
    let mut third = batch(T0 + 3 * H, T0 + 5 * H);
    third.samples.retain(|s| s.series.host == "h1");
    w.apply(&[third], T0 + 5 * H).expect("book");
    let who = |reason: &str| Provenance { author: "ops".into(), reason: reason.into(), recorded_ms: T0 + 5 * H };
    w.correct("caen-1", "grid", "utility_in", "kWh", T0 + H, T0 + 2 * H, -250_000, &who("meter drift"))
        .expect("correct");
    w.swap_meter("caen-1", "grid", "utility_in", "kWh", T0 + 4 * H, 1_009_000_000, 0, &who("new meter")).expect("swap");
    w.retire_host("caen-1", "h2", false, &who("decommissioned")).expect("retire");
    let journal: i64 = rusqlite::Connection::open(path)
        .expect("sqlite")
        .query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))
        .expect("journal");
    assert!(journal > 0, "the move must write a journal out");
}

fn count_sqlite(path: &Path, table: &str) -> i64 {
    rusqlite::Connection::open(path)
        .expect("sqlite")
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

fn count_pg(target: &PgTarget, table: &str) -> i64 {
    super::super::connect(target)
        .expect("connect")
        .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .expect("count")
        .get(0)
}

fn quiet() -> impl FnMut(&str) {
    |_: &str| {}
}

#[test]
fn every_table_of_both_schemas_is_copied() {
    let dir = tempfile::tempdir().expect("tmp");
    let lite = crate::ledger::sqlite::open_writer(&dir.path().join("l.db")).expect("sqlite");
    let sqlite: BTreeSet<String> = lite
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .expect("tables")
        .query_map([], |r| r.get(0))
        .expect("tables")
        .collect::<Result<_, _>>()
        .expect("tables");
    let listed: BTreeSet<String> = TABLES.iter().map(|t| t.to_string()).collect();
    assert_eq!(listed.len(), TABLES.len(), "a table listed twice");
    assert_eq!(listed, sqlite, "the tables copied (left) and SQLite's (right)");
    let cluster = Cluster::start();
    let mut c = cluster.database()();
    super::super::schema::migrate(&mut c).expect("migrate");
    let pg: BTreeSet<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' \
             AND table_name <> 'schema_version'",
            &[],
        )
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(listed, pg, "the tables copied (left) and PostgreSQL's (right)");
}

#[test]
fn a_ledger_moves_row_for_row_and_books_on_exactly_afterwards() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("l.db");
    let policy = Policy::default();
    sqlite_ledger(&path, policy);
    let cluster = Cluster::start();
    let target = cluster.target();
    let mut lines = Vec::new();
    let s = migrate(&path, &target, policy, &mut |l: &str| lines.push(l.to_string())).expect("migrate");
    // The journal was written to the tables first: every table but it has rows, the same in both stores.
    assert_eq!(s.tables.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), TABLES);
    for (table, copied) in &s.tables {
        let (lite, pg) = (count_sqlite(&path, table), count_pg(&target, table));
        assert_eq!((lite, pg), (*copied as i64, *copied as i64), "{table}");
        assert_eq!(*copied > 0, table != "journal", "{table}: {copied} rows");
    }
    assert!(count_sqlite(&path, "chunks") < count_sqlite(&path, "series") * 100, "chunks of many points");
    assert_eq!((s.series_checked, s.recomputed), (4, 0), "{s:?}");
    assert!(s.answers_checked > 10, "{s:?}");
    assert!(lines.iter().any(|l| l.contains("chunks:")), "{lines:?}");

    // Both ledgers book on alike: a new host and meter (fresh ids), late samples inside a moved chunk of h1, and
    // h1's next samples.
    let mut lite = SqliteWriter::open(&path, policy).expect("sqlite");
    let mut pg = PgWriter::open(&target, policy).expect("pg");
    let mut late = Batch::default();
    for ts in [T0 + H + 20 * 60_000 + 15_000, T0 + H + 20 * 60_000 + 45_000] {
        late.samples.push(host(ts, "h1", (ts - T0) / 1_000 * 350_000_000));
    }
    let mut next = Batch::default();
    for i in 0..10 {
        let ts = T0 + 5 * H + i * 15_000;
        next.samples.push(host(ts, "h1", (ts - T0) / 1_000 * 350_000_000));
        next.samples.push(host(ts, "h3", i * 90_000_000));
        next.samples.push(CounterSample::meter("caen-1", "pv", "onsite_renewable_consumed", "kWh", ts, i * 1_000));
    }
    for b in [&late, &next] {
        let a = lite.apply(std::slice::from_ref(b), T0 + 6 * H).expect("sqlite books");
        let p = pg.apply(std::slice::from_ref(b), T0 + 6 * H).expect("pg books");
        assert_eq!(a, p);
        assert!(a[0].booked > 0, "{a:?}");
    }
    drop((lite, pg));
    let (lite, pg) = (SqliteReader::new(&path, policy), PgReader::open(&target, policy).expect("reader"));
    for (h, from, to) in [
        ("h1", T0 + H + 19 * 60_000, T0 + H + 22 * 60_000),
        ("h1", T0 + H + 21 * 60_000, T0 + H + 40 * 60_000),
        ("h1", T0, T0 + 6 * H),
        ("h3", T0, T0 + 6 * H),
    ] {
        let q = EnergyQuery {
            site: "caen-1".into(),
            host: Some(h.into()),
            meter: None,
            role: None,
            from_ms: from,
            to_ms: to,
        };
        let (a, b) = (lite.energy(&q).expect("sqlite"), pg.energy(&q).expect("pg"));
        assert_eq!(a, b, "{h} [{from}, {to})");
        assert!(a.samples > 0, "{a:?}");
    }
    let q = EnergyQuery {
        site: "caen-1".into(),
        host: None,
        meter: Some("pv".into()),
        role: None,
        from_ms: T0,
        to_ms: T0 + 6 * H,
    };
    assert_eq!(lite.energy(&q).expect("sqlite"), pg.energy(&q).expect("pg"));
}

#[test]
fn a_target_holding_ledger_rows_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("l.db");
    sqlite_ledger(&path, Policy::default());
    let cluster = Cluster::start();
    let target = cluster.target();
    // A collector ran on it: one host sample booked.
    let mut w = PgWriter::open(&target, Policy::default()).expect("pg");
    w.apply(&[Batch { samples: vec![host(T0, "other", 1)], ..Default::default() }], T0).expect("book");
    drop(w);
    let before: Vec<i64> = TABLES.iter().map(|t| count_pg(&target, t)).collect();
    let e = migrate(&path, &target, Policy::default(), &mut quiet()).expect_err("a ledger is never merged into");
    assert!(matches!(&e, MigrateError::NotEmpty { table, .. } if table == "series"), "{e:?}");
    let shown = e.to_string();
    assert!(shown.contains(&target.to_string()) && shown.contains("never merges"), "{shown}");
    assert_eq!(TABLES.iter().map(|t| count_pg(&target, t)).collect::<Vec<_>>(), before);
    // A target whose schema exists but holds no row is fine.
    let empty = cluster.target();
    PgWriter::open(&empty, Policy::default()).expect("a collector started on it");
    migrate(&path, &empty, Policy::default(), &mut quiet()).expect("an empty ledger is a valid target");
    // A missing SQLite ledger is refused before anything.
    let e = migrate(&dir.path().join("none.db"), &cluster.target(), Policy::default(), &mut quiet())
        .expect_err("no ledger");
    assert!(matches!(e, MigrateError::NoLedger(_)), "{e:?}");
    assert!(!dir.path().join("none.db").exists(), "nothing created");
}

#[test]
fn a_roll_up_sum_sqlite_kept_as_a_real_arrives_exact() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("l.db");
    sqlite_ledger(&path, Policy::default());
    {
        // What SQLite does to a site's hour past i64 µJ, on one row: a real (its readers then read `hours`).
        let c = rusqlite::Connection::open(&path).expect("sqlite");
        let n = c
            .execute(
                "UPDATE site_hours SET energy_uj = CAST(energy_uj AS REAL) + 0.5 \
                 WHERE start_ms = (SELECT MIN(start_ms) FROM site_hours) AND method = 'bmc_dcmi'",
                [],
            )
            .expect("a real");
        assert_eq!(n, 1);
    }
    let cluster = Cluster::start();
    let target = cluster.target();
    let s = migrate(&path, &target, Policy::default(), &mut quiet()).expect("migrate");
    assert_eq!(s.recomputed, 1, "{s:?}");
    let mut c = super::super::connect(&target).expect("connect");
    let stale: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM site_hours r WHERE r.energy_uj <> (SELECT SUM(h.energy_uj) FROM hours h \
             JOIN series s ON s.id = h.series_id WHERE s.site = r.site AND s.method = r.method \
             AND s.quality = r.quality AND s.meter = '' AND h.start_ms = r.start_ms)",
            &[],
        )
        .expect("check")
        .get(0);
    assert_eq!(stale, 0);
}

#[test]
fn integers_arrive_as_exact_numerics() {
    let cluster = Cluster::start();
    let mut c = cluster.database()();
    c.batch_execute("CREATE TABLE n (i INT, v NUMERIC(39, 0))").expect("table");
    let values: Vec<i128> = vec![
        0,
        1,
        -1,
        9_999,
        10_000,
        -10_001,
        100_000_000,
        i128::from(i64::MAX),
        i128::from(i64::MAX) * 3,
        -(i128::from(i64::MAX) * 3),
        10_i128.pow(38),
        i128::MAX,
        i128::MIN + 1,
    ];
    {
        let sink = c.copy_in("COPY n (i, v) FROM STDIN (FORMAT binary)").expect("copy");
        let mut w = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::NUMERIC]);
        for (i, v) in values.iter().enumerate() {
            w.write(&[&(i as i32) as &(dyn ToSql + Sync), &Cell::Numeric(*v)]).expect("row");
        }
        w.finish().expect("finish");
    }
    let back: Vec<i128> = c
        .query("SELECT v::text FROM n ORDER BY i", &[])
        .expect("read")
        .iter()
        .map(|r| r.get::<_, String>(0).parse().expect("an integer"))
        .collect();
    assert_eq!(back, values);
}

#[test]
fn the_comparison_reports_a_ledger_that_answers_otherwise() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let policy = Policy::default();
    sqlite_ledger(&a, policy);
    sqlite_ledger(&b, policy);
    // Ledger b: one more sample of h2, 1 J after its last.
    let mut w = SqliteWriter::open(&b, policy).expect("sqlite");
    let more = CounterSample::host("caen-1", "h2", "rapl_uplift", "estimated", T0 + 5 * H, Some(18_000_000_000_007));
    w.apply(&[Batch { samples: vec![more], ..Default::default() }], T0 + 6 * H).expect("book");
    drop(w);
    let cluster = Cluster::start();
    let target = cluster.target();
    migrate(&a, &target, policy, &mut quiet()).expect("migrate");
    let q = questions(&rusqlite::Connection::open(&a).expect("sqlite")).expect("questions");
    let pg = PgReader::open(&target, policy).expect("reader");
    let (asked, series, same) = compare(&q, &SqliteReader::new(&a, policy), &pg, T0 + 6 * H).expect("compare");
    assert!(same.is_empty(), "{same:?}");
    assert_eq!(series, 4);
    let (asked_b, _, differ) = compare(&q, &SqliteReader::new(&b, policy), &pg, T0 + 6 * H).expect("compare");
    assert_eq!(asked_b, asked);
    assert!(differ.iter().any(|d| d.contains("total energy")), "{differ:?}");
    assert!(differ.iter().any(|d| d.contains("host h2")), "{differ:?}");
}
