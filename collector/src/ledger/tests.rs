//! Ledger invariants on a real SQLite file: whatever the delivery order,
//! repetition, batching or restarts, the booked energy per minute equals what
//! the counter's increments give when booked in order.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::Policy;
use super::book::{DAY_MS, MINUTE_MS, spread};
use super::query::{EnergyQuery, EnergyReport};
use super::reference::reference;
use super::sqlite::{SqliteReader, SqliteWriter};
use super::{Batch, CounterSample, HostClaim, LedgerReader, LedgerWriter};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const NOW: i64 = T0 + 86_400_000;

fn sample(host: &str, method: &str, ts: i64, v: Option<i64>) -> CounterSample {
    CounterSample::host("s", host, method, if method == "model" { "estimated" } else { "measured" }, ts, v)
}

fn batch(samples: Vec<CounterSample>) -> Batch {
    Batch { samples, claims: vec![], intervals: vec![], quarantine: vec![] }
}

fn query(host: Option<&str>, from: i64, to: i64) -> EnergyQuery {
    EnergyQuery { site: "s".into(), host: host.map(str::to_string), meter: None, role: None, from_ms: from, to_ms: to }
}

fn ledger_minutes(reader: &SqliteReader, minutes: &[i64]) -> BTreeMap<i64, i64> {
    minutes
        .iter()
        .map(|m| {
            let r = reader.energy(&query(Some("h1"), *m, m + MINUTE_MS)).expect("energy");
            (*m, r.energy_uj() as i64)
        })
        .filter(|(_, e)| *e != 0)
        .collect()
}

#[test]
fn in_order_counter_books_exactly_and_replays_count_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let b =
        batch((0..20).map(|i| sample("h1", "psu_input", T0 + i * 15_000, Some(1_000_000 + i * 3_000_000))).collect());
    let o = w.apply(std::slice::from_ref(&b), NOW).expect("apply");
    assert_eq!((o[0].booked, o[0].energy_uj), (20, 19 * 3_000_000));
    let again = w.apply(&[b], NOW).expect("replay");
    assert_eq!((again[0].booked, again[0].duplicate, again[0].energy_uj), (0, 20, 0));
    let r = SqliteReader::new(&db, Policy::default()).energy(&query(None, T0, T0 + 3_600_000)).expect("q");
    assert_eq!(r.energy_microjoules, (19 * 3_000_000).to_string());
    assert_eq!(r.measured_joules, 57.0);
    assert_eq!(r.samples, 20);
    assert_eq!(r.by_method.get("psu_input"), Some(&57.0));
    // 19 intervals × 15 s observed over one host-hour.
    assert!((r.coverage_ratio - 285.0 / 3600.0).abs() < 1e-12, "{}", r.coverage_ratio);
}

#[test]
fn conflicting_value_first_wins_and_reset_counts_from_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    w.apply(&[batch(vec![sample("h1", "model", T0, Some(100)), sample("h1", "model", T0 + 10_000, Some(300))])], NOW)
        .expect("a");
    let o = w.apply(&[batch(vec![sample("h1", "model", T0 + 10_000, Some(999))])], NOW).expect("b");
    assert_eq!(o[0].conflict, 1);
    // A drop: the agent restarted without state; 50 counts from zero.
    w.apply(&[batch(vec![sample("h1", "model", T0 + 20_000, Some(50))])], NOW).expect("c");
    // A stale marker ends the series; the next sample is a new baseline.
    w.apply(
        &[batch(vec![sample("h1", "model", T0 + 30_000, None), sample("h1", "model", T0 + 40_000, Some(7_000))])],
        NOW,
    )
    .expect("d");
    w.apply(&[batch(vec![sample("h1", "model", T0 + 50_000, Some(7_010))])], NOW).expect("e");
    let r = SqliteReader::new(&db, Policy::default()).energy(&query(Some("h1"), T0, T0 + 60_000)).expect("q");
    assert_eq!(r.energy_uj(), 200 + 50 + 10);
    assert_eq!(r.estimated_joules, 260e-6);
}

#[test]
fn restart_continues_from_the_stored_last_sample() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    {
        let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
        w.apply(&[batch(vec![sample("h1", "model", T0, Some(0)), sample("h1", "model", T0 + 60_000, Some(60))])], NOW)
            .expect("a");
    }
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("reopen");
    w.apply(&[batch(vec![sample("h1", "model", T0 + 120_000, Some(180))])], NOW).expect("b");
    let r = SqliteReader::new(&db, Policy::default()).energy(&query(Some("h1"), T0, T0 + 180_000)).expect("q");
    assert_eq!(r.energy_uj(), 180);
}

#[test]
fn a_gap_is_spread_and_shows_in_coverage() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    // Samples every minute for 10 minutes, then a 40-minute outage, then 10 more minutes.
    let mut s: Vec<_> = (0..=10).map(|i| sample("h1", "model", T0 + i * 60_000, Some(i * 60_000_000))).collect();
    s.extend((50..=60).map(|i| sample("h1", "model", T0 + i * 60_000, Some(i * 60_000_000))));
    w.apply(&[batch(s)], NOW).expect("apply");
    let reader = SqliteReader::new(&db, Policy::default());
    let hour = reader.energy(&query(Some("h1"), T0, T0 + 3_600_000)).expect("q");
    assert_eq!(hour.energy_joules, 3600.0);
    assert!((hour.coverage_ratio - 20.0 / 60.0).abs() < 1e-12, "{}", hour.coverage_ratio);
    // The gap's 2400 J are spread evenly: 60 J in each of its minutes.
    let gap_minute = reader.energy(&query(Some("h1"), T0 + 30 * 60_000, T0 + 31 * 60_000)).expect("q");
    assert_eq!((gap_minute.energy_joules, gap_minute.coverage_ratio), (60.0, 0.0));
}

#[test]
fn another_machine_claiming_a_host_is_refused_while_the_owner_reports() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let claim = |m: &str, ts| HostClaim {
        site: "s".into(),
        host: "h1".into(),
        machine_id: m.into(),
        ts_ms: ts,
        model: Default::default(),
    };
    w.apply(
        &[Batch {
            intervals: vec![],
            samples: vec![sample("h1", "model", T0, Some(0))],
            claims: vec![claim("aaa", T0)],
            quarantine: vec![],
        }],
        NOW,
    )
    .expect("a");
    let o = w
        .apply(
            &[Batch {
                intervals: vec![],
                samples: vec![sample("h1", "model", T0 + 1_000, Some(5_000_000))],
                claims: vec![claim("bbb", T0 + 1_000)],
                quarantine: vec![],
            }],
            NOW,
        )
        .expect("b");
    assert_eq!(o[0].host_conflict, 1);
    w.apply(
        &[Batch {
            intervals: vec![],
            samples: vec![sample("h1", "model", T0 + 2_000, Some(10))],
            claims: vec![claim("aaa", T0 + 2_000)],
            quarantine: vec![],
        }],
        NOW,
    )
    .expect("c");
    let reader = SqliteReader::new(&db, Policy::default());
    assert_eq!(reader.energy(&query(Some("h1"), T0, T0 + 60_000)).expect("q").energy_uj(), 10);
    let hosts = reader.hosts("s", NOW).expect("hosts");
    assert_eq!(hosts[0].conflicting_machine_ids, vec!["bbb".to_string()]);
    assert_eq!(hosts[0].machine_id.as_deref(), Some("aaa"));
    // The owner falls silent for longer than the takeover delay: the new machine
    // takes the name over from a fresh baseline.
    let later = T0 + 2 * 3_600_000;
    w.apply(
        &[Batch {
            intervals: vec![],
            samples: vec![sample("h1", "model", later, Some(42))],
            claims: vec![claim("bbb", later)],
            quarantine: vec![],
        }],
        NOW,
    )
    .expect("d");
    w.apply(&[batch(vec![sample("h1", "model", later + 60_000, Some(52))])], NOW).expect("e");
    assert_eq!(reader.energy(&query(Some("h1"), later, later + 120_000)).expect("q").energy_uj(), 10);
}

#[test]
fn old_minutes_are_pruned_but_hours_answer() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let policy = Policy { minute_retention_ms: 3_600_000, ..Policy::default() };
    let mut w = SqliteWriter::open(&db, policy).expect("open");
    let s: Vec<_> = (0..=120).map(|i| sample("h1", "model", T0 + i * 60_000, Some(i * 1_000_000))).collect();
    w.apply(&[batch(s)], T0 + 2 * 3_600_000).expect("apply");
    w.prune(T0 + 3 * 3_600_000).expect("prune");
    let reader = SqliteReader::new(&db, policy);
    assert_eq!(reader.energy(&query(Some("h1"), T0, T0 + 2 * 3_600_000)).expect("q").energy_joules, 120.0);
    // Minutes of the pruned hour are gone; the roll-up still holds the hour.
    assert_eq!(reader.energy(&query(Some("h1"), T0, T0 + 60_000)).expect("q").energy_joules, 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any delivery order, duplicates and batching book exactly what the
    /// in-order series gives, minute by minute.
    #[test]
    fn delivery_order_and_replays_do_not_change_the_ledger(
        steps in proptest::collection::vec((1i64..200_000, 0i64..50_000_000, 0u8..20), 2..40),
        order in proptest::collection::vec(any::<u64>(), 40),
        dups in proptest::collection::vec(0usize..40, 0..10),
        cuts in proptest::collection::vec(1usize..40, 0..5),
        restart_at in 0usize..6,
        materialize_after in proptest::collection::vec(0u8..3, 6),
        slice in 1usize..6,
    ) {
        // A counter with occasional resets (kind 0) and stale markers (kind 1).
        let mut points: Vec<(i64, Option<i64>)> = Vec::new();
        let (mut t, mut v) = (T0, 5_000_000i64);
        for (dt, inc, kind) in steps {
            t += dt;
            match kind {
                0 => v = inc,
                1 => { points.push((t, None)); continue; }
                _ => v += inc,
            }
            points.push((t, Some(v)));
        }
        let want = reference(&points, Policy::default().gap_ms);
        let mut delivery: Vec<usize> = (0..points.len()).collect();
        delivery.sort_by_key(|i| order[*i % order.len()] ^ (*i as u64));
        for d in dups { if d < points.len() { delivery.push(d); } }
        let mut batches: Vec<Vec<CounterSample>> = vec![Vec::new()];
        for (k, i) in delivery.iter().enumerate() {
            if cuts.contains(&k) { batches.push(Vec::new()); }
            let (ts, val) = points[*i];
            if let Some(b) = batches.last_mut() { b.push(sample("h1", "model", ts, val)); }
        }
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("l.db");
        // Due at every housekeeping, a few entries at a time.
        let policy = Policy { materialize_every_ms: 0, materialize_slice: slice, ..Policy::default() };
        let mut w = SqliteWriter::open(&db, policy).expect("open");
        for (n, b) in batches.into_iter().enumerate() {
            if n == restart_at {
                w = SqliteWriter::open(&db, policy).expect("reopen");
            }
            w.apply(&[batch(b)], NOW).expect("apply");
            // Sometimes the journal goes to the tables (whole, or a slice of it),
            // sometimes readers see it as is.
            match materialize_after[n % materialize_after.len()] {
                1 => w.housekeeping(true).expect("materialize"),
                2 => w.housekeeping(false).expect("materialize a slice"),
                _ => {}
            }
        }
        let reader = SqliteReader::new(&db, Policy::default());
        let first = points[0].0.div_euclid(MINUTE_MS) * MINUTE_MS;
        let last = (points[points.len() - 1].0.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let minutes: Vec<i64> = (first..last).step_by(MINUTE_MS as usize).collect();
        prop_assert_eq!(ledger_minutes(&reader, &minutes), want.clone().into_iter().filter(|(_, e)| *e != 0).collect::<BTreeMap<_, _>>());
        let total: i64 = want.values().sum();
        prop_assert_eq!(reader.energy(&query(Some("h1"), first, last)).expect("q").energy_uj(), i128::from(total));
    }
}

fn meter_query(meter: Option<&str>, role: Option<&str>, from: i64, to: i64) -> EnergyQuery {
    EnergyQuery {
        site: "s".into(),
        host: None,
        meter: meter.map(str::to_string),
        role: role.map(str::to_string),
        from_ms: from,
        to_ms: to,
    }
}

#[test]
fn meter_registers_and_intervals_book_exact_shares_and_reimport_is_idempotent() {
    use super::IntervalReading;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    // A utility register in kWh far beyond 2.56 GWh (where i64 µJ would overflow a value).
    let big = 12_345_678_000_000i64; // 12,345,678 kWh in µkWh
    let regs = vec![
        CounterSample::meter("s", "edf", "utility_in", "kWh", T0, big),
        CounterSample::meter("s", "edf", "utility_in", "kWh", T0 + 3_600_000, big + 150_500_000),
    ];
    // A quarter-hour interval of district cold, and water in m³.
    let iv = |meter: &str, role: &str, unit: &str, v: i64| IntervalReading {
        site: "s".into(),
        meter: meter.into(),
        role: role.into(),
        unit: unit.into(),
        start_ms: T0,
        end_ms: T0 + 900_000,
        value_micro: v,
    };
    let b = Batch {
        samples: regs,
        claims: vec![],
        intervals: vec![iv("cold", "chilled_water_in", "kWh", 30_000_000), iv("w", "water_in", "m3", 2_500_000)],
        quarantine: vec![],
    };
    let o = w.apply(std::slice::from_ref(&b), NOW).expect("apply");
    assert_eq!(o[0].booked, 4);
    let again = w.apply(&[b], NOW).expect("re-import");
    assert_eq!((again[0].booked, again[0].duplicate), (0, 4));
    let r = SqliteReader::new(&db, Policy::default());
    let hour = r.energy(&meter_query(None, Some("utility_in"), T0, T0 + 3_600_000)).expect("q");
    assert_eq!(hour.energy_microjoules, (150_500_000i128 * 3_600_000).to_string()); // 150.5 kWh
    assert_eq!(hour.energy_joules, 150.5 * 3.6e6);
    // The first quarter hour gets exactly a quarter.
    let q1 = r.energy(&meter_query(Some("edf"), None, T0, T0 + 900_000)).expect("q");
    assert_eq!(q1.energy_joules, 150.5 * 3.6e6 / 4.0);
    assert_eq!(q1.role, "utility_in");
    let cold = r.energy(&meter_query(None, Some("chilled_water_in"), T0, T0 + 300_000)).expect("q");
    assert_eq!(cold.energy_joules, 10.0 * 3.6e6);
    let water = r.energy(&meter_query(Some("w"), None, T0, T0 + 900_000)).expect("q");
    assert_eq!((water.volume_liters, water.energy_joules), (Some(2_500.0), 0.0));
    assert_eq!(water.coverage_ratio, 1.0);
    // Meters never show up as hosts, nor in the agents' IT energy.
    assert!(r.hosts("s", NOW).expect("hosts").is_empty());
    assert_eq!(r.energy(&query(None, T0, T0 + 3_600_000)).expect("q").energy_joules, 0.0);
}

/// Everything the readers answer is the same whether the host samples are
/// still journaled or already written to the tables.
#[test]
fn readers_answer_the_same_before_and_after_materialization() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let claim = |host: &str| HostClaim {
        site: "s".into(),
        host: host.into(),
        machine_id: format!("m-{host}"),
        ts_ms: T0,
        model: super::HostModel { vendor: "v".into(), ..Default::default() },
    };
    w.apply(
        &[Batch {
            samples: (0..30)
                .flat_map(|i| {
                    [
                        sample("h1", "psu_input", T0 + i * 70_000, Some(i * 9_000_000)),
                        sample("h2", "model", T0 + i * 70_000, Some(5 + i * 1_000_000)),
                    ]
                })
                .collect(),
            claims: vec![claim("h1"), claim("h2")],
            intervals: vec![],
            quarantine: vec![],
        }],
        NOW,
    )
    .expect("apply");
    // A long gap, then one more sample per host.
    w.apply(&[batch(vec![sample("h1", "psu_input", T0 + 3 * 3_600_000, Some(400_000_000))])], NOW).expect("apply");
    let reader = SqliteReader::new(&db, Policy::default());
    let ask = |reader: &SqliteReader| {
        let ranges = [(T0, T0 + 60_000), (T0 + 120_000, T0 + 3_600_000), (T0, T0 + 4 * 3_600_000)];
        let energy: Vec<_> = ranges
            .iter()
            .flat_map(|(a, b)| [None, Some("h1"), Some("h2")].map(|h| reader.energy(&query(h, *a, *b)).expect("q")))
            .collect();
        (
            energy,
            reader.hosts("s", T0 + 4 * 3_600_000).expect("hosts"),
            reader.host_models("s", T0, T0 + 60_000).expect("models"),
            reader.site_totals().expect("totals"),
        )
    };
    let journaled = ask(&reader);
    assert_eq!((journaled.0[6].energy_uj(), journaled.0[8].energy_uj()), (429_000_000, 29_000_000));
    assert_eq!(journaled.2.len(), 2, "{:?}", journaled.2);
    assert_eq!(journaled.3, vec![("s".to_string(), "it_in".to_string(), 400_000_000 + 29_000_000)]);
    w.housekeeping(true).expect("materialize");
    assert_eq!(ask(&reader), journaled);
}

/// A second writer (`import-meters`, `correct`) materializes the server's
/// journal when it opens; the server's own materialization then finds nothing
/// left, so nothing is booked twice.
#[test]
fn a_journal_is_materialized_once_whichever_process_does_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut server = SqliteWriter::open(&db, Policy::default()).expect("open");
    server
        .apply(&[batch((0..10).map(|i| sample("h1", "model", T0 + i * 10_000, Some(i * 1_000))).collect())], NOW)
        .expect("apply");
    let other = SqliteWriter::open(&db, Policy::default()).expect("second writer");
    drop(other);
    server.housekeeping(true).expect("materialize");
    server.apply(&[batch(vec![sample("h1", "model", T0 + 100_000, Some(10_000))])], NOW).expect("apply");
    server.housekeeping(true).expect("materialize");
    let r = SqliteReader::new(&db, Policy::default()).energy(&query(Some("h1"), T0, T0 + 120_000)).expect("q");
    assert_eq!((r.energy_uj(), r.samples), (10_000, 11));
}

/// A reader that cached the journal sees rows written after a
/// materialization emptied it: seqs are never reused.
#[test]
fn a_cached_journal_is_never_mistaken_for_a_new_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let reader = SqliteReader::new(&db, Policy::default());
    let total = |r: &SqliteReader| r.energy(&query(Some("h1"), T0, T0 + 3_600_000)).expect("q").energy_uj();
    w.apply(&[batch(vec![sample("h1", "model", T0, Some(0)), sample("h1", "model", T0 + 10_000, Some(10))])], NOW)
        .expect("a");
    assert_eq!(total(&reader), 10);
    w.housekeeping(true).expect("materialize");
    w.apply(&[batch(vec![sample("h1", "model", T0 + 20_000, Some(30))])], NOW).expect("b");
    assert_eq!(total(&reader), 30);
    w.apply(&[batch(vec![sample("h1", "model", T0 + 30_000, Some(60))])], NOW).expect("c");
    assert_eq!(total(&reader), 60);
    w.housekeeping(true).expect("materialize");
    assert_eq!(total(&reader), 60);
}

/// A database from before chunks (schema 2, host samples as rows) is migrated:
/// the samples move into chunks, counts and the baseline carry on, replays are
/// still recognised.
#[test]
fn host_sample_rows_of_schema_2_move_into_chunks() {
    use super::sqlite::MIGRATIONS;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut minutes: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    {
        let conn = rusqlite::Connection::open(&db).expect("db");
        for m in &MIGRATIONS[..2] {
            conn.execute_batch(m).expect("migrate");
        }
        conn.pragma_update(None, "user_version", 2).expect("version");
        conn.execute(
            "INSERT INTO series (id, site, host, meter, metric, method, quality, role, unit) \
             VALUES (1, 's', 'h1', '', 'domesday_host_energy_joules_total', 'model', 'estimated', 'it_in', 'J')",
            [],
        )
        .expect("series");
        for i in 0..2_500i64 {
            conn.execute("INSERT INTO samples VALUES (1, ?1, ?2)", [T0 + i * 1_000, i * 10]).expect("sample");
        }
        // The minute rows the earlier writer booked for them, and a meter's minute.
        for i in 1..2_500i64 {
            for sh in spread(T0 + (i - 1) * 1_000, T0 + i * 1_000, 10, MINUTE_MS, Policy::default().gap_ms) {
                let m = minutes.entry(sh.start_ms).or_insert((0, 0));
                m.0 += sh.energy_uj;
                m.1 += sh.covered_ms;
            }
        }
        for (start, (e, c)) in &minutes {
            conn.execute("INSERT INTO minutes VALUES (1, ?1, ?2, ?3)", [start, e, c]).expect("minute");
        }
        conn.execute(
            "INSERT INTO series (id, site, host, meter, metric, method, quality, role, unit) \
             VALUES (2, 's', '', 'grid', 'meter', '', 'measured', 'utility_in', 'kWh')",
            [],
        )
        .expect("meter");
        conn.execute("INSERT INTO minutes VALUES (2, ?1, 7, 60000)", [T0]).expect("meter minute");
    }
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open migrates");
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open(&db).expect("db").query_row(sql, [], |r| r.get(0)).expect("count")
    };
    assert_eq!(count("SELECT COUNT(*) FROM samples"), 0);
    // Host minutes are recomputed from the chunks from now on; meters keep theirs.
    assert_eq!(count("SELECT COUNT(*) FROM minutes WHERE series_id = 1"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM minutes WHERE series_id = 2"), 1);
    let edge = SqliteReader::new(&db, Policy::default())
        .energy(&query(Some("h1"), T0 + 5 * MINUTE_MS, T0 + 20 * MINUTE_MS))
        .expect("q");
    let want: i64 = minutes.range(T0 + 5 * MINUTE_MS..T0 + 20 * MINUTE_MS).map(|(_, (e, _))| e).sum();
    assert_eq!(edge.energy_uj(), i128::from(want));
    let o = w
        .apply(
            &[batch(vec![
                sample("h1", "model", T0 + 1_000, Some(10)),
                sample("h1", "model", T0 + 2_500_000, Some(25_000)),
            ])],
            NOW,
        )
        .expect("apply");
    // The replayed sample is a duplicate; the new one counts from the migrated last value.
    assert_eq!((o[0].duplicate, o[0].booked, o[0].energy_uj), (1, 1, 10));
    let r = SqliteReader::new(&db, Policy::default()).energy(&query(Some("h1"), T0, T0 + 3_600_000)).expect("q");
    assert_eq!(r.samples, 2_501);
    assert_eq!(r.first_sample.as_deref(), Some("2026-01-01T00:00:00Z"));
}

/// A due materialization goes in slices, one per housekeeping call, until the
/// journal is empty; the answers never change on the way.
#[test]
fn materialization_goes_in_slices_between_groups() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let policy = Policy { materialize_every_ms: 0, materialize_slice: 2, ..Policy::default() };
    let mut w = SqliteWriter::open(&db, policy).expect("open");
    for i in 0..3i64 {
        let b =
            batch((0..2).map(|k| sample("h1", "model", T0 + (i * 2 + k) * 10_000, Some((i * 2 + k) * 7))).collect());
        w.apply(&[b], NOW).expect("apply");
    }
    let reader = SqliteReader::new(&db, policy);
    let rows = || -> i64 {
        rusqlite::Connection::open(&db)
            .expect("db")
            .query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))
            .expect("n")
    };
    let energy = || reader.energy(&query(Some("h1"), T0, T0 + 3_600_000)).expect("q");
    let before = energy();
    assert_eq!((rows(), before.energy_uj(), before.samples), (3, 35, 6));
    for left in [2, 1, 0] {
        w.housekeeping(false).expect("slice");
        assert_eq!(rows(), left);
        assert_eq!(energy(), before);
    }
}

#[test]
fn preallocated_wal_keeps_what_was_committed_before_and_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let wal = super::sqlite::wal_path(&db);
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let points = |from: i64| (from..from + 10).map(|i| sample("h1", "psu_input", T0 + i * 15_000, Some(i * 1_000_000)));
    w.apply(&[batch(points(0).collect())], NOW).expect("before");
    let committed = std::fs::metadata(&wal).expect("wal").len();
    w.preallocate_wal().expect("preallocate");
    let size = std::fs::metadata(&wal).expect("wal").len();
    assert!(size > 64 << 20 && size > committed, "{committed} -> {size}");
    w.apply(&[batch(points(10).collect())], NOW).expect("after");
    // Again: the WAL is long enough, and never shortened.
    w.preallocate_wal().expect("again");
    assert_eq!(std::fs::metadata(&wal).expect("wal").len(), size);
    // A power-cut image: the database and its WAL as they are, frames not yet checkpointed.
    let image = dir.path().join("image");
    std::fs::create_dir(&image).expect("dir");
    std::fs::copy(&db, image.join("l.db")).expect("copy db");
    std::fs::copy(&wal, super::sqlite::wal_path(&image.join("l.db"))).expect("copy wal");
    let r = SqliteReader::new(&image.join("l.db"), Policy::default())
        .energy(&query(Some("h1"), T0, T0 + 3_600_000))
        .expect("recovered");
    assert_eq!((r.samples, r.energy_microjoules.as_str()), (20, "19000000"));
}

#[test]
fn a_retired_host_keeps_its_energy_and_its_first_record() {
    use super::sqlite::{Provenance, Retire, retire_host};
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let pts = (0..4).map(|i| sample("old", "rapl", T0 + i * 60_000, Some(i * 2_000_000))).collect();
    w.apply(&[batch(pts)], NOW).expect("apply");
    let reader = SqliteReader::new(&db, Policy::default());
    let before = reader.energy(&query(Some("old"), T0, T0 + 600_000)).expect("energy");
    assert_eq!(before.energy_microjoules, "6000000");
    assert!(reader.retired_hosts("s").expect("retired").is_empty());

    // Works with the serving writer still open on the same file.
    let who = |by: &str, ms| Provenance { author: by.into(), reason: "decommissioned".into(), recorded_ms: ms };
    assert_eq!(retire_host(&db, "s", "old", false, &who("alice", NOW)).expect("retire"), Retire::Retired);
    let again = retire_host(&db, "s", "old", false, &who("bob", NOW + 1)).expect("again");
    let Retire::Already(first) = again else { panic!("{again:?}") };
    assert_eq!((first.by.as_str(), first.retired_ms), ("alice", NOW));
    // A host the ledger never saw is refused unless the configuration expects it.
    assert_eq!(retire_host(&db, "s", "typo", false, &who("alice", NOW)).expect("typo"), Retire::UnknownHost);
    assert_eq!(retire_host(&db, "other", "old", false, &who("alice", NOW)).expect("site"), Retire::UnknownHost);
    assert_eq!(retire_host(&db, "s", "never", true, &who("alice", NOW)).expect("expected"), Retire::Retired);

    let list = reader.retired_hosts("s").expect("retired");
    let hosts: Vec<_> = list.iter().map(|r| (r.host.as_str(), r.by.as_str(), r.reason.as_str())).collect();
    assert_eq!(hosts, vec![("never", "alice", "decommissioned"), ("old", "alice", "decommissioned")]);
    assert!(reader.retired_hosts("other").expect("other").is_empty());
    // The energy is still there, and the writer goes on booking (a late sample of the host too).
    w.apply(&[batch(vec![sample("old", "rapl", T0 + 4 * 60_000, Some(8_000_000))])], NOW).expect("late");
    let after = reader.energy(&query(Some("old"), T0, T0 + 600_000)).expect("energy");
    assert_eq!(after.energy_microjoules, "8000000");
}

/// A meter swap's booking and its audit row (who, why) are one transaction:
/// when the audit row cannot be written, nothing of the swap is booked.
#[test]
fn a_swap_whose_audit_row_fails_books_nothing() {
    use super::sqlite::Provenance;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let reg = |ts: i64, v: i64| CounterSample::meter("s", "edf", "utility_in", "kWh", ts, v);
    w.apply(&[batch(vec![reg(T0, 1_000_000_000), reg(T0 + 600_000, 1_010_000_000)])], NOW).expect("apply");
    let r = SqliteReader::new(&db, Policy::default());
    let before = r.energy(&meter_query(Some("edf"), None, T0, T0 + 7_200_000)).expect("q");
    // The audit insert fails (as a full disk or a constraint would) after the booking ran.
    let c = rusqlite::Connection::open(&db).expect("conn");
    c.execute_batch(
        "CREATE TRIGGER no_audit BEFORE INSERT ON adjustments BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
    )
    .expect("trigger");
    let who = Provenance { author: "ops".into(), reason: "meter replaced".into(), recorded_ms: NOW };
    let e = w.swap_meter("s", "edf", "utility_in", "kWh", T0 + 1_200_000, 1_020_000_000, 5_000_000, &who);
    assert!(e.is_err(), "the swap must fail with its audit row");
    let after = r.energy(&meter_query(Some("edf"), None, T0, T0 + 7_200_000)).expect("q");
    assert_eq!(after, before, "nothing of a failed swap is booked");
    let samples: i64 = c.query_row("SELECT COUNT(*) FROM samples", [], |r| r.get(0)).expect("count");
    assert_eq!(samples, 2, "the swap's readings were rolled back");
    // Once the audit can be written, the same swap books and is recorded with who and why.
    c.execute_batch("DROP TRIGGER no_audit;").expect("drop");
    w.swap_meter("s", "edf", "utility_in", "kWh", T0 + 1_200_000, 1_020_000_000, 5_000_000, &who).expect("swap");
    let rows: i64 = c.query_row("SELECT COUNT(*) FROM adjustments WHERE kind = 'swap'", [], |r| r.get(0)).expect("n");
    assert_eq!(rows, 1);
    let done = r.energy(&meter_query(Some("edf"), None, T0, T0 + 7_200_000)).expect("q");
    assert_eq!(done.energy_microjoules, (20_000_000i128 * 3_600_000).to_string()); // 20 kWh up to the final reading
}

/// A batch's outcome says how much energy went to each (site, role): a CSV of
/// several meters adds to each of their roles, volumes add to none, and a late
/// host sample's net change goes to `it_in`.
#[test]
fn an_outcome_carries_its_energy_per_role() {
    use super::{IntervalReading, RoleEnergy};
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let iv = |meter: &str, role: &str, unit: &str, v: i64| IntervalReading {
        site: "s".into(),
        meter: meter.into(),
        role: role.into(),
        unit: unit.into(),
        start_ms: T0,
        end_ms: T0 + 900_000,
        value_micro: v,
    };
    let b = Batch {
        samples: vec![
            CounterSample::meter("s", "edf", "utility_in", "kWh", T0, 1_000_000),
            CounterSample::meter("s", "edf", "utility_in", "kWh", T0 + 600_000, 3_000_000),
        ],
        claims: vec![],
        intervals: vec![iv("ups", "ups_out", "kWh", 1_500_000), iv("w", "water_in", "m3", 2_000_000)],
        quarantine: vec![],
    };
    let o = w.apply(&[b], NOW).expect("apply");
    let kwh = 3_600_000i128;
    let want = vec![
        RoleEnergy { site: "s".into(), role: "utility_in".into(), energy_uj: 2 * kwh * 1_000_000 },
        RoleEnergy { site: "s".into(), role: "ups_out".into(), energy_uj: 15 * kwh * 100_000 },
    ];
    assert_eq!(o[0].by_role, want);
    assert_eq!(o[0].by_role.iter().map(|r| r.energy_uj).sum::<i128>() + 2_000_000 * 1_000, o[0].energy_uj);
    // Host samples, then a late one in between: its net change (here zero) is it_in's.
    let host = |ts: i64, v: i64| sample("h1", "rapl", ts, Some(v));
    let o = w.apply(&[batch(vec![host(T0, 0), host(T0 + 120_000, 2_000_000)])], NOW).expect("host");
    assert_eq!(o[0].by_role, vec![RoleEnergy { site: "s".into(), role: "it_in".into(), energy_uj: 2_000_000 }]);
    let o = w.apply(&[batch(vec![host(T0 + 60_000, 1_000_000)])], NOW).expect("late");
    assert!(o[0].by_role.is_empty(), "{:?}", o[0].by_role);
}

/// A method this collector's vocabulary does not know (booked by ingest under its
/// own name with the quality its sender stated) is summed, split and reported by
/// every reader like a known one.
#[test]
fn an_unknown_method_is_counted_by_every_reader_under_its_quality() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let s = |method: &str, quality: &str, ts: i64, v: i64| CounterSample::host("s", "h1", method, quality, ts, Some(v));
    w.apply(
        &[batch(vec![
            s("psu_input", "measured", T0, 0),
            s("psu_input", "measured", T0 + 60_000, 6_000_000),
            s("cxl_meter", "measured", T0 + 60_000, 10_000_000),
            s("cxl_meter", "measured", T0 + 120_000, 14_000_000),
            s("npu_model", "estimated", T0 + 120_000, 1_000_000),
            s("npu_model", "estimated", T0 + 180_000, 3_000_000),
        ])],
        NOW,
    )
    .expect("apply");
    let reader = SqliteReader::new(&db, Policy::default());
    let r = reader.energy(&query(None, T0, T0 + 3_600_000)).expect("q");
    assert_eq!(r.energy_uj(), 6_000_000 + 4_000_000 + 2_000_000);
    assert_eq!((r.measured_joules, r.estimated_joules), (10.0, 2.0));
    assert_eq!(r.by_method.get("cxl_meter"), Some(&4.0));
    assert_eq!(r.by_method.get("npu_model"), Some(&2.0));
    let hosts = reader.hosts("s", T0 + 240_000).expect("hosts");
    assert_eq!(hosts[0].current_method.as_deref(), Some("npu_model"));
    assert_eq!(hosts[0].current_quality.as_deref(), Some("estimated"));
    assert_eq!(hosts[0].estimated_share_24h, Some(2.0 / 12.0));
}

#[test]
fn quarantined_samples_are_kept_aside_never_booked_and_pruned_with_raw_samples() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let q = |ts: i64, v: Option<f64>| super::Quarantined {
        site: "s".into(),
        host: "h1".into(),
        method: "psu_input".into(),
        ts_ms: ts,
        value: v,
        received_ms: T0,
        reason: "future",
    };
    let mut b =
        batch(vec![sample("h1", "psu_input", T0, Some(0)), sample("h1", "psu_input", T0 + 60_000, Some(6_000_000))]);
    b.quarantine = vec![q(T0 + 3 * 3_600_000, Some(1e9)), q(T0 + 4 * 3_600_000, None)];
    let o = w.apply(std::slice::from_ref(&b), NOW).expect("apply");
    assert_eq!((o[0].booked, o[0].quarantined, o[0].energy_uj), (2, 2, 6_000_000));
    // The same request again (a retry): nothing new is kept.
    let again = w.apply(&[b], NOW).expect("again");
    assert_eq!(again[0].quarantined, 0);
    let reader = SqliteReader::new(&db, Policy::default());
    // The ledger's energy is the booked samples' only, in every hour up to the quarantined ones.
    let r = reader.energy(&query(Some("h1"), T0, T0 + 5 * 3_600_000)).expect("energy");
    assert_eq!(r.energy_uj(), 6_000_000);
    let conn = rusqlite::Connection::open(&db).expect("open");
    let rows: Vec<(String, i64, Option<f64>, String)> = conn
        .prepare("SELECT host, ts_ms, value, reason FROM quarantine ORDER BY ts_ms")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows,
        vec![
            ("h1".into(), T0 + 3 * 3_600_000, Some(1e9), "future".into()),
            ("h1".into(), T0 + 4 * 3_600_000, None, "future".into())
        ]
    );
    // Kept as long as raw samples, counted from their arrival.
    w.prune(T0 + Policy::default().minute_retention_ms + 1).expect("prune");
    let left: i64 = conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0)).expect("count");
    assert_eq!(left, 0);
}

/// A `site_hours` row: site, method, quality, hour start, energy µJ, covered ms.
type SiteHour = (String, String, String, i64, i64, i64);

/// `site_hours` as it is, and as the `GROUP BY` of the host series' `hours` says it must be.
fn site_hours_and_group_by(db: &std::path::Path) -> (Vec<SiteHour>, Vec<SiteHour>) {
    let conn = rusqlite::Connection::open(db).expect("db");
    let rows = |sql: &str| -> Vec<SiteHour> {
        let mut st = conn.prepare(sql).expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let rolled = rows(
        "SELECT site, method, quality, start_ms, energy_uj, covered_ms FROM site_hours ORDER BY site, start_ms, method, quality",
    );
    let grouped = rows(
        "SELECT se.site, se.method, se.quality, h.start_ms, SUM(h.energy_uj), SUM(h.covered_ms) \
         FROM hours h JOIN series se ON se.id = h.series_id WHERE se.metric = 'domesday_host_energy_joules_total' \
         GROUP BY se.site, se.method, se.quality, h.start_ms ORDER BY 1, 4, 2, 3",
    );
    (rolled, grouped)
}

/// A copy of the ledger without its roll-ups, as a ledger of the schema
/// before them: its readers sum `hours` per series.
fn copy_without_site_hours(db: &std::path::Path, copy: &std::path::Path) {
    let conn = rusqlite::Connection::open(db).expect("db");
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()]).expect("copy");
    let c = rusqlite::Connection::open(copy).expect("copy");
    c.execute_batch("DROP TABLE site_hours; DROP TABLE site_days; DROP TABLE days;").expect("drop");
    c.pragma_update(None, "user_version", super::sqlite::SITE_HOURS_VERSION - 1).expect("version");
}

/// `days` and `site_days` as they are, and as the `GROUP BY` UTC day of
/// the meters' `hours` and of `site_hours` says they must be.
type DayRows = Vec<(String, i64, i64, i64)>;
fn days_and_group_by(db: &std::path::Path) -> ((DayRows, DayRows), (DayRows, DayRows)) {
    let conn = rusqlite::Connection::open(db).expect("db");
    let rows = |sql: &str| -> DayRows {
        let mut st = conn.prepare(sql).expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let days =
        rows("SELECT CAST(series_id AS TEXT), start_ms, energy_uj, covered_ms FROM days ORDER BY series_id, start_ms");
    let meters = rows(
        "SELECT CAST(h.series_id AS TEXT), h.start_ms / 86400000 * 86400000 AS d, SUM(h.energy_uj), SUM(h.covered_ms) \
         FROM hours h JOIN series se ON se.id = h.series_id WHERE se.metric != 'domesday_host_energy_joules_total' \
         GROUP BY h.series_id, d ORDER BY h.series_id, d",
    );
    let site_days = rows(
        "SELECT site || '/' || method || '/' || quality, start_ms, energy_uj, covered_ms FROM site_days \
         ORDER BY site, method, quality, start_ms",
    );
    let sites = rows(
        "SELECT site || '/' || method || '/' || quality, start_ms / 86400000 * 86400000 AS d, SUM(energy_uj), SUM(covered_ms) \
         FROM site_hours GROUP BY site, method, quality, d ORDER BY site, method, quality, d",
    );
    ((days, meters), (site_days, sites))
}

/// Site-wide IT questions over whole hours, cut hours, one hour, the whole span.
fn site_wide_questions(first: i64, last: i64) -> Vec<EnergyQuery> {
    let h0 = first.div_euclid(3_600_000) * 3_600_000;
    let h1 = (last.div_euclid(3_600_000) + 1) * 3_600_000;
    let mut qs = vec![
        query(None, h0, h1),
        query(None, h0 - 3_600_000, h1 + 3_600_000),
        query(None, h0 + 7 * MINUTE_MS, h1 - 3 * MINUTE_MS),
        query(None, h0 + 3_600_000, h1),
        query(None, h0, h0 + 3_600_000),
        query(None, h0 + 59 * MINUTE_MS, h0 + 61 * MINUTE_MS),
    ];
    let mut h = h0;
    while h < h1 {
        qs.push(query(None, h, h + 3_600_000));
        h += 3_600_000;
    }
    // Whole UTC days, and days with cut hours and minutes at both ends.
    let d0 = first.div_euclid(DAY_MS) * DAY_MS;
    let d1 = (last.div_euclid(DAY_MS) + 1) * DAY_MS;
    qs.extend([
        query(None, d0, d1),
        query(None, d0 - DAY_MS, d1 + DAY_MS),
        query(None, d0 + 5 * 3_600_000, d1 - 3 * 3_600_000),
        query(None, d0 + 22 * 3_600_000 + 7 * MINUTE_MS, d1 + 2 * 3_600_000 + 3 * MINUTE_MS),
        query(None, d0 + DAY_MS, d1),
    ]);
    qs.retain(|q| q.from_ms < q.to_ms);
    qs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever the delivery order, duplicates, late samples, restarts,
    /// retirements and materialization points, the site roll-up is the
    /// `GROUP BY` of its hosts' hours, and every site-wide energy answer
    /// (energy, measured/estimated, by method, coverage, samples) is the one
    /// the per-host hours give.
    #[test]
    fn the_site_roll_up_is_the_group_by_of_hours_and_answers_the_same(
        hosts in proptest::collection::vec(
            (0usize..3, proptest::collection::vec((1i64..900_000, 0i64..50_000_000, 0u8..20), 2..20)),
            1..4,
        ),
        order in proptest::collection::vec(any::<u64>(), 64),
        dups in proptest::collection::vec(0usize..64, 0..10),
        cuts in proptest::collection::vec(1usize..64, 0..6),
        materialize_after in proptest::collection::vec(0u8..3, 7),
        restart_at in 0usize..7,
        retire_at in proptest::option::of(0usize..7),
    ) {
        // Two measured methods and an estimated one; two hosts may share a method.
        const METHODS: [(&str, &str); 3] = [("rapl", "measured"), ("model", "estimated"), ("bmc_dcmi", "measured")];
        let mut samples: Vec<CounterSample> = Vec::new();
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for (n, (m, steps)) in hosts.iter().enumerate() {
            let (method, quality) = METHODS[*m];
            let (mut t, mut v) = (T0 + n as i64 * 250_000, 5_000_000i64);
            for (dt, inc, kind) in steps {
                t += dt;
                first = first.min(t);
                last = last.max(t);
                if *kind == 19 {
                    // A day-long silence: the roll-ups' days then hold parts of several.
                    t += DAY_MS + 2 * 3_600_000;
                }
                match kind {
                    0 => v = *inc,
                    1 => { samples.push(CounterSample::host("s", &format!("h{n}"), method, quality, t, None)); continue; }
                    _ => v += inc,
                }
                samples.push(CounterSample::host("s", &format!("h{n}"), method, quality, t, Some(v)));
            }
        }
        // A meter of the site and a host of another site: neither is in this site's roll-up;
        // the meter's samples span four days, late ones included (the delivery order below).
        for i in 0..6i64 {
            samples.push(CounterSample::host("other", "h0", "rapl", "measured", T0 + i * 1_800_000, Some(i * 7_000_000)));
        }
        for i in 0..14i64 {
            samples.push(CounterSample::meter("s", "grid", "utility_in", "kWh", T0 + i * 7 * 3_600_000 + i * 60_000, i * 1_000_000));
        }
        let mut delivery: Vec<usize> = (0..samples.len()).collect();
        delivery.sort_by_key(|i| order[*i % order.len()] ^ (*i as u64));
        for d in dups { if d < samples.len() { delivery.push(d); } }
        let mut batches: Vec<Vec<CounterSample>> = vec![Vec::new()];
        for (k, i) in delivery.iter().enumerate() {
            if cuts.contains(&k) { batches.push(Vec::new()); }
            if let Some(b) = batches.last_mut() { b.push(samples[*i].clone()); }
        }
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("l.db");
        let policy = Policy { materialize_every_ms: 0, materialize_slice: 7, ..Policy::default() };
        let mut w = SqliteWriter::open(&db, policy).expect("open");
        for (n, b) in batches.into_iter().enumerate() {
            if n == restart_at {
                w = SqliteWriter::open(&db, policy).expect("reopen");
            }
            if retire_at == Some(n) {
                let who = super::sqlite::Provenance { author: "a".into(), reason: "gone".into(), recorded_ms: NOW };
                super::sqlite::retire_host(&db, "s", "h0", false, &who).expect("retire");
            }
            w.apply(&[batch(b)], NOW).expect("apply");
            match materialize_after[n % materialize_after.len()] {
                1 => w.housekeeping(true).expect("materialize"),
                2 => w.housekeeping(false).expect("materialize a slice"),
                _ => {}
            }
        }
        let (rolled, grouped) = site_hours_and_group_by(&db);
        prop_assert_eq!(&rolled, &grouped);
        prop_assert!(!rolled.iter().any(|r| r.0 != "s" && r.0 != "other"));
        let ((days, meters), (site_days, sites)) = days_and_group_by(&db);
        prop_assert_eq!(days, meters);
        prop_assert_eq!(site_days, sites);
        // With whatever the journal still holds, then with all of it materialized.
        for round in 0..2 {
            if round == 1 {
                w.housekeeping(true).expect("materialize all");
                let (rolled, grouped) = site_hours_and_group_by(&db);
                prop_assert_eq!(rolled, grouped);
                let ((days, meters), (site_days, sites)) = days_and_group_by(&db);
                prop_assert_eq!(days, meters);
                prop_assert_eq!(site_days, sites);
            }
            let copy = dir.path().join(format!("without-{round}.db"));
            copy_without_site_hours(&db, &copy);
            let with = SqliteReader::new(&db, Policy::default());
            let without = SqliteReader::new(&copy, Policy::default());
            for q in site_wide_questions(first, last) {
                let a = with.energy(&q).expect("with the roll-up");
                let b = without.energy(&q).expect("without it");
                prop_assert_eq!(&a, &b, "{:?}", q);
                let meter = EnergyQuery { meter: Some("grid".into()), role: None, ..q.clone() };
                prop_assert_eq!(with.energy(&meter).expect("meter"), without.energy(&meter).expect("meter"), "{:?}", meter);
                // Each answer is the sum of its pieces of at most an hour (which no day roll-up answers).
                for q in [&q, &meter] {
                    let whole = with.energy(q).expect("whole").energy_uj();
                    let mut pieces = 0i128;
                    let mut t = q.from_ms;
                    while t < q.to_ms {
                        let next = ((t.div_euclid(3_600_000) + 1) * 3_600_000).min(q.to_ms);
                        pieces += with.energy(&EnergyQuery { from_ms: t, to_ms: next, ..q.clone() }).expect("piece").energy_uj();
                        t = next;
                    }
                    prop_assert_eq!(whole, pieces, "{:?}", q);
                }
                // The totals-only answer: the same sums; a sample or not, as the full count says.
                let per_host = EnergyQuery { host: Some("h0".into()), ..q.clone() };
                let meter = EnergyQuery { meter: Some("grid".into()), role: None, ..q.clone() };
                for (q, full) in [(q.clone(), a), (per_host.clone(), with.energy(&per_host).expect("host")), (meter.clone(), with.energy(&meter).expect("meter"))] {
                    let t = with.energy_totals(&q).expect("totals");
                    prop_assert_eq!(t.samples == 0, full.samples == 0, "{:?}", q);
                    prop_assert!(t.samples <= full.samples);
                    let same = |r: &EnergyReport| EnergyReport { samples: 0, first_sample: None, last_sample: None, ..r.clone() };
                    prop_assert_eq!(same(&t), same(&full), "{:?}", q);
                }
            }
        }
    }
}

/// A ledger written before the site roll-up existed gets it filled by the
/// migration, from its hosts' hours only (not its meters'), and a reader that
/// opens such a ledger before any writer migrated it answers from `hours`.
#[test]
fn the_migration_fills_the_site_roll_up_of_an_existing_ledger() {
    use super::sqlite::{MIGRATIONS, SITE_HOURS_VERSION};
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let before = SITE_HOURS_VERSION as usize - 1;
    const H: i64 = 3_600_000;
    {
        let conn = rusqlite::Connection::open(&db).expect("db");
        for m in &MIGRATIONS[..before] {
            conn.execute_batch(m).expect("migrate");
        }
        conn.pragma_update(None, "user_version", before as i64).expect("version");
        let series = [
            (1, "s", "h1", "", "domesday_host_energy_joules_total", "rapl", "measured", "it_in", "J"),
            (2, "s", "h2", "", "domesday_host_energy_joules_total", "rapl", "measured", "it_in", "J"),
            (3, "s", "h3", "", "domesday_host_energy_joules_total", "model", "estimated", "it_in", "J"),
            (4, "s", "", "grid", "meter", "", "measured", "utility_in", "kWh"),
            (5, "t", "h1", "", "domesday_host_energy_joules_total", "rapl", "measured", "it_in", "J"),
        ];
        for s in series {
            conn.execute(
                "INSERT INTO series (id, site, host, meter, metric, method, quality, role, unit) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7, s.8],
            )
            .expect("series");
        }
        // (series, hour, energy µJ, covered ms)
        let hours = [
            (1, 0, 100, 3_600_000),
            (1, 1, 200, 1_800_000),
            (2, 0, 1_000, 3_600_000),
            (3, 0, 7, 60_000),
            (3, 2, 9, 120_000),
            (4, 0, 555_555, 3_600_000),
            (5, 0, 42, 3_600_000),
        ];
        for (id, h, e, c) in hours {
            conn.execute("INSERT INTO hours VALUES (?1, ?2, ?3, ?4)", [id, T0 + h * H, e, c]).expect("hour");
        }
    }
    // A reader before any writer migrated the ledger: no roll-up yet, the same answer.
    let old = SqliteReader::new(&db, Policy::default()).energy(&query(None, T0, T0 + 3 * H)).expect("old");
    assert_eq!(old.energy_uj(), 100 + 200 + 1_000 + 7 + 9);

    drop(SqliteWriter::open(&db, Policy::default()).expect("open migrates"));
    let (rolled, grouped) = site_hours_and_group_by(&db);
    let row = |site: &str, method: &str, quality: &str, h: i64, e: i64, c: i64| {
        (site.to_string(), method.to_string(), quality.to_string(), T0 + h * H, e, c)
    };
    assert_eq!(
        rolled,
        vec![
            row("s", "model", "estimated", 0, 7, 60_000),
            row("s", "rapl", "measured", 0, 1_100, 7_200_000),
            row("s", "rapl", "measured", 1, 200, 1_800_000),
            row("s", "model", "estimated", 2, 9, 120_000),
            row("t", "rapl", "measured", 0, 42, 3_600_000),
        ]
    );
    assert_eq!(rolled, grouped);
    let version: i64 = rusqlite::Connection::open(&db)
        .expect("db")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, MIGRATIONS.len() as i64);
    let new = SqliteReader::new(&db, Policy::default()).energy(&query(None, T0, T0 + 3 * H)).expect("new");
    assert_eq!(new, old);
    assert_eq!((new.measured_joules, new.estimated_joules), (1_300.0 / 1e6, 16.0 / 1e6));
    assert_eq!(new.by_method.get("rapl"), Some(&(1_300.0 / 1e6)));
    // Three hosts over three hours, 2.55 h of them observed.
    assert_eq!(new.coverage_ratio, 9_180_000.0 / (3.0 * 3.0 * H as f64));
}

/// A site's hour beyond i64 µJ (two absurd counter jumps in one hour) is kept
/// as a real by SQLite; the roll-up then says "not exact here", and the answer
/// is the exact i128 sum of the hosts' hours.
#[test]
fn a_site_hour_beyond_i64_is_answered_exactly_from_the_hosts_hours() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let jump: i64 = 6_000_000_000_000_000_000;
    // One host per materialization, and both in one: the sum overflows in SQLite's `+` and in the batch.
    for hosts in [&["h1"][..], &["h2"][..], &["h3", "h4"][..]] {
        let samples = hosts
            .iter()
            .flat_map(|h| [sample(h, "rapl", T0, Some(0)), sample(h, "rapl", T0 + 60_000, Some(jump))])
            .collect();
        w.apply(&[batch(samples)], NOW).expect("apply");
        w.housekeeping(true).expect("materialize");
    }
    let kind: String = rusqlite::Connection::open(&db)
        .expect("db")
        .query_row("SELECT typeof(energy_uj) FROM site_hours", [], |r| r.get(0))
        .expect("row");
    assert_eq!(kind, "real");
    let r = SqliteReader::new(&db, Policy::default()).energy(&query(None, T0, T0 + 3_600_000)).expect("q");
    assert_eq!(r.energy_uj(), 4 * i128::from(jump));
    // The day's roll-up is beyond i64 too: a whole day's question falls back the same way.
    let r = SqliteReader::new(&db, Policy::default()).energy(&query(None, T0, T0 + DAY_MS)).expect("day");
    assert_eq!(r.energy_uj(), 4 * i128::from(jump));
}

/// A meter's day beyond i64 µJ (two hours of 5 × 10^18 µJ) is kept as a
/// real in `days`; a day's question then sums its hours exactly.
#[test]
fn a_meter_day_beyond_i64_is_answered_exactly_from_its_hours() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
    let step: i64 = 1_400_000_000_000; // µkWh: 5.04 × 10^18 µJ an hour
    let samples =
        (0..3).map(|i| CounterSample::meter("s", "grid", "utility_in", "kWh", T0 + i * 3_600_000, i * step)).collect();
    w.apply(&[batch(samples)], NOW).expect("apply");
    let kind: String = rusqlite::Connection::open(&db)
        .expect("db")
        .query_row("SELECT typeof(energy_uj) FROM days", [], |r| r.get(0))
        .expect("row");
    assert_eq!(kind, "real");
    let q = EnergyQuery { meter: Some("grid".into()), ..query(None, T0, T0 + DAY_MS) };
    let r = SqliteReader::new(&db, Policy::default()).energy(&q).expect("day");
    assert_eq!(r.energy_uj(), 2 * i128::from(step) * 3_600_000);
}

proptest! {
    /// Materialization slices stay within their bounds, shrink when a slice overran
    /// its time budget and never shrink when it stayed well within it.
    #[test]
    fn slices_follow_the_time_budget(entries in 1usize..200_000, took_ms in 0u64..2_000, max in 1usize..200_000) {
        use crate::ledger::sqlite::{SLICE_BUDGET, SLICE_MIN, next_slice};
        let took = std::time::Duration::from_millis(took_ms);
        let entries = entries.min(max);
        let next = next_slice(entries, took, max);
        prop_assert!(next <= max && next >= SLICE_MIN.min(max));
        if took > SLICE_BUDGET {
            prop_assert!(next <= entries.max(SLICE_MIN.min(max)) && (next < entries || entries <= SLICE_MIN));
        }
        if took < SLICE_BUDGET / 2 {
            prop_assert!(next >= entries);
        }
    }
}

/// Corrections, swaps and retirements go through the store trait, as the
/// commands call them (`Box<dyn LedgerWriter>`): a correction adds or takes
/// away energy without coverage, a swap books up to the final reading, a
/// retirement is recorded once.
#[test]
fn a_store_behind_the_trait_corrects_swaps_and_retires() {
    use super::{Provenance, Retire};
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut w: Box<dyn LedgerWriter> = Box::new(SqliteWriter::open(&db, Policy::default()).expect("open"));
    let who = Provenance { author: "ops".into(), reason: "audit".into(), recorded_ms: NOW };
    let reg = |ts: i64, v: i64| CounterSample::meter("s", "edf", "utility_in", "kWh", ts, v);
    w.apply(&[batch(vec![reg(T0, 1_000_000), reg(T0 + 300_000, 3_000_000)])], NOW).expect("apply");
    let r = SqliteReader::new(&db, Policy::default());
    let kwh = |from: i64, to: i64| {
        let e = r.energy(&meter_query(Some("edf"), None, from, to)).expect("q");
        (e.energy_uj() / 3_600_000, e.coverage_ratio)
    };
    assert_eq!(kwh(T0, T0 + 300_000), (2_000_000, 1.0));
    // Half a kWh taken away over the first minute: coverage unchanged.
    w.correct("s", "edf", "utility_in", "kWh", T0, T0 + 60_000, -500_000, &who).expect("correct");
    assert_eq!(kwh(T0, T0 + 300_000), (1_500_000, 1.0));
    assert_eq!(kwh(T0, T0 + 60_000).0, 400_000 - 500_000);
    // Swapped at T0 + 20 min: booked up to the final reading; the initial one is a baseline.
    let o = w.swap_meter("s", "edf", "utility_in", "kWh", T0 + 1_200_000, 4_000_000, 9_000_000, &who).expect("swap");
    assert_eq!((o.booked, o.energy_uj), (3, 1_000_000 * 3_600_000));
    w.apply(&[batch(vec![reg(T0 + 1_800_000, 9_250_000)])], NOW).expect("after the swap");
    assert_eq!(kwh(T0, T0 + 3_600_000).0, 1_500_000 + 1_000_000 + 250_000);
    // Where no reading observed anything, a correction books its energy and covers nothing either.
    w.correct("s", "edf", "utility_in", "kWh", T0 + 2_400_000, T0 + 2_460_000, 100_000, &who).expect("correct");
    assert_eq!(kwh(T0 + 2_400_000, T0 + 2_460_000), (100_000, 0.0));
    w.apply(&[batch(vec![sample("h1", "rapl", T0, Some(0))])], NOW).expect("host");
    assert_eq!(w.retire_host("s", "h1", false, &who).expect("retire"), Retire::Retired);
    assert!(matches!(w.retire_host("s", "h1", false, &who).expect("again"), Retire::Already(_)));
    assert_eq!(w.retire_host("s", "nope", false, &who).expect("unknown"), Retire::UnknownHost);
    assert_eq!(r.retired_hosts("s").expect("retired").len(), 1);
}

/// A late sample whose previous sample was pruned cannot be slotted in: the
/// interval that sample began is booked already and cannot be split, so
/// booking the late sample's own interval would count that stretch twice. It
/// is too old, even though it is stamped after the prune point.
#[test]
fn a_late_sample_whose_previous_one_was_pruned_is_too_old() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let policy = Policy { minute_retention_ms: 3_600_000, ..Policy::default() };
    let mut w = SqliteWriter::open(&db, policy).expect("open");
    let reg = |ts: i64, v: i64| CounterSample::meter("s", "edf", "utility_in", "kWh", ts, v);
    w.apply(&[batch(vec![reg(T0, 0), reg(T0 + 60_000, 60), reg(T0 + 120_000, 120)])], NOW).expect("apply");
    // Raw samples before T0 + 90 s go, but the series' last one stays.
    w.prune(T0 + 90_000 + 3_600_000).expect("prune");
    let o = w.apply(&[batch(vec![reg(T0 + 100_000, 100), reg(T0 + 30_000, 30)])], NOW).expect("late");
    assert_eq!((o[0].booked, o[0].too_old, o[0].energy_uj), (0, 2, 0));
    let r = SqliteReader::new(&db, policy);
    let e = r.energy(&meter_query(Some("edf"), None, T0, T0 + 3_600_000)).expect("q");
    assert_eq!(e.energy_uj(), 120 * 3_600_000);
}
