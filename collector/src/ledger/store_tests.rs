//! A store executes the rules as the pure model does: random deliveries of two
//! hosts' counters and a meter's register (out of order, repeated, conflicting,
//! with resets, stale markers, host claims that are refused or take a host over,
//! pruning and materialization in between) go through a store's
//! [`LedgerWriter`], one sample per batch so each outcome says what became of
//! it; the store's hourly energy must then be the in-order reference of the
//! samples it accepted (and the stale markers of takeovers, which the scenario
//! derives from the claims with [`rules::claim`]). [`check_store`] takes any
//! store; the SQLite and the PostgreSQL ones run it here (PostgreSQL on a
//! throwaway cluster), and two PostgreSQL writers share one host's batches.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::book::{HOUR_MS, Value};
use super::pg::read::PgReader;
use super::pg::schema;
use super::pg::store::PgWriter;
use super::pg::test_cluster::Cluster;
use super::query::EnergyQuery;
use super::reference::reference;
use super::rules::{self, Claim, Point};
use super::rules_tests::counter;
use super::sqlite::{SqliteReader, SqliteWriter};
use super::{Batch, CounterSample, HostClaim, LedgerReader, LedgerWriter, Policy};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const NOW: i64 = T0 + 86_400_000;
const HOSTS: [&str; 2] = ["h0", "h1"];

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Step {
    /// A sample of series `.0` (0 and 1: hosts, 2: the meter), with the claim of
    /// its host by machine `m{.2.0}` at `.2.1` when given.
    Sample(usize, Point, Option<(u8, i64)>),
    /// Raw samples before this time are pruned.
    Prune(i64),
    /// The store's housekeeping (materialization when it keeps a journal).
    Housekeeping,
}

fn scenario() -> impl Strategy<Value = Vec<Step>> {
    (
        proptest::collection::vec(proptest::collection::vec((1i64..400_000, 0i64..50_000_000, 0u8..20), 1..16), 3),
        proptest::collection::vec(any::<u64>(), 48),
        proptest::collection::vec(0usize..48, 0..8),
        proptest::collection::vec((0usize..48, proptest::option::of(1i64..1_000)), 0..4),
        proptest::collection::vec((0usize..48, 0u8..3, 0i64..4_000_000), 0..6),
        proptest::collection::vec((0usize..48, proptest::option::of(0i64..4_000_000)), 0..6),
    )
        .prop_map(|(series, order, dups, conflicts, claims, events)| {
            let mut all: Vec<(usize, Point)> = Vec::new();
            for (id, steps) in series.iter().enumerate() {
                all.extend(counter(T0 + id as i64 * 70_000, steps).into_iter().map(|p| (id, p)));
            }
            let mut keyed: Vec<(u64, (usize, Point))> =
                all.iter().enumerate().map(|(i, d)| (order[i % order.len()] ^ i as u64, *d)).collect();
            keyed.sort_by_key(|k| k.0);
            let mut delivery: Vec<(usize, Point)> = keyed.into_iter().map(|k| k.1).collect();
            delivery.extend(dups.iter().filter(|d| **d < all.len()).map(|d| all[*d]));
            for (i, delta) in &conflicts {
                if let Some(&(id, (ts, v))) = all.get(*i) {
                    delivery.insert(i % (delivery.len() + 1), (id, (ts, delta.map(|d| v.unwrap_or(0) + d))));
                }
            }
            let mut steps: Vec<Step> = Vec::new();
            for (k, (id, p)) in delivery.into_iter().enumerate() {
                for (_, e) in events.iter().filter(|(at, _)| *at == k) {
                    steps.push(e.map_or(Step::Housekeeping, |t| Step::Prune(T0 + t)));
                }
                let claim = claims.iter().find(|(at, _, _)| *at == k && id < HOSTS.len()).map(|(_, m, t)| (*m, T0 + t));
                steps.push(Step::Sample(id, p, claim));
            }
            steps
        })
}

fn sample_of(id: usize, (ts, v): Point) -> CounterSample {
    match HOSTS.get(id) {
        Some(h) => CounterSample::host("s", h, "rapl", "measured", ts, v),
        None => {
            CounterSample { value_micro: v, ..CounterSample::meter("s", "m", "utility_in", "J", ts, v.unwrap_or(0)) }
        }
    }
}

fn hourly(points: &BTreeMap<i64, Value>, gap_ms: i64) -> BTreeMap<i64, i64> {
    let points: Vec<Point> = points.iter().map(|(t, v)| (*t, *v)).collect();
    let mut out = BTreeMap::new();
    for (m, e) in reference(&points, gap_ms) {
        *out.entry(m.div_euclid(HOUR_MS) * HOUR_MS).or_insert(0) += e;
    }
    out.retain(|_, e| *e != 0);
    out
}

/// Runs `steps` through `store` and checks every series' hourly energy, as
/// `reader` answers it, against the reference of the samples the store accepted.
fn check_store(
    store: &mut dyn LedgerWriter,
    reader: &dyn LedgerReader,
    policy: &Policy,
    steps: &[Step],
    group: usize,
) -> Result<(), TestCaseError> {
    let mut accepted: Vec<BTreeMap<i64, Value>> = vec![BTreeMap::new(); 3];
    let mut owners: HashMap<usize, (String, i64)> = HashMap::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    // Consecutive samples go to the store `group` batches per call (one transaction), as the writer groups
    // requests: each batch must be booked as if alone, after the ones before it.
    let mut pending: Vec<(usize, Point, bool, Batch)> = Vec::new();
    let apply = |store: &mut dyn LedgerWriter,
                 pending: &mut Vec<(usize, Point, bool, Batch)>,
                 accepted: &mut Vec<BTreeMap<i64, Value>>|
     -> Result<(), TestCaseError> {
        if pending.is_empty() {
            return Ok(());
        }
        let batches: Vec<Batch> = pending.iter().map(|p| p.3.clone()).collect();
        let outcomes = store.apply(&batches, NOW).map_err(fail)?;
        prop_assert_eq!(outcomes.len(), batches.len());
        for ((id, p, takeover, _), o) in pending.drain(..).zip(&outcomes) {
            if takeover
                && let Some((lt, lv)) = accepted[id].last_key_value().map(|(t, v)| (*t, *v))
                && let Some((mt, mv)) = rules::takeover_marker((lt, lv))
            {
                accepted[id].insert(mt, mv);
            }
            prop_assert_eq!(o.booked + o.duplicate + o.conflict + o.too_old + o.host_conflict, 1, "{:?}", o);
            let before = accepted[id].get(&p.0).copied();
            if o.booked == 1 {
                prop_assert_eq!(before, None, "a second sample at {} was booked", p.0);
                accepted[id].insert(p.0, p.1);
            }
            if o.duplicate == 1 {
                prop_assert_eq!(before, Some(p.1));
            }
            if o.conflict == 1 {
                prop_assert!(before.is_some() && before != Some(p.1));
            }
        }
        Ok(())
    };
    for step in steps {
        match step {
            Step::Prune(cutoff) => {
                apply(store, &mut pending, &mut accepted)?;
                store.prune(cutoff + policy.minute_retention_ms).map_err(fail)?
            }
            Step::Housekeeping => {
                apply(store, &mut pending, &mut accepted)?;
                store.housekeeping(false).map_err(fail)?
            }
            Step::Sample(id, p, claim) => {
                first = first.min(p.0);
                last = last.max(p.0 + 1);
                let mut batch = Batch { samples: vec![sample_of(*id, *p)], ..Batch::default() };
                let mut takeover = false;
                if let Some((m, t)) = claim {
                    let machine = format!("m{m}");
                    let owner = owners.get(id).cloned();
                    match rules::claim(owner.as_ref().map(|(m, t)| (m.as_str(), *t)), &machine, *t, policy) {
                        Claim::Refuse => {}
                        decision => {
                            takeover = decision == Claim::TakeOver;
                            owners.insert(*id, (machine.clone(), *t));
                        }
                    }
                    batch.claims.push(HostClaim {
                        site: "s".into(),
                        host: HOSTS[*id].into(),
                        machine_id: machine,
                        ts_ms: *t,
                        model: Default::default(),
                    });
                }
                pending.push((*id, *p, takeover, batch));
                if pending.len() >= group {
                    apply(store, &mut pending, &mut accepted)?;
                }
            }
        }
    }
    apply(store, &mut pending, &mut accepted)?;
    let (h0, h1) = (first.div_euclid(HOUR_MS) * HOUR_MS, (last.div_euclid(HOUR_MS) + 1) * HOUR_MS);
    for (id, points) in accepted.iter().enumerate() {
        let want = hourly(points, policy.gap_ms);
        let mut got = BTreeMap::new();
        for h in (h0..h1).step_by(HOUR_MS as usize) {
            let q = EnergyQuery {
                site: "s".into(),
                host: HOSTS.get(id).map(|h| h.to_string()),
                meter: (id >= HOSTS.len()).then(|| "m".to_string()),
                role: None,
                from_ms: h,
                to_ms: h + HOUR_MS,
            };
            let e = reader.energy(&q).map_err(fail)?.energy_uj();
            if e != 0 {
                got.insert(h, e as i64);
            }
        }
        prop_assert_eq!(got, want, "series {}", id);
    }
    Ok(())
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_sqlite_store_books_what_the_rules_say(steps in scenario(), group in 1usize..6) {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("l.db");
        let policy = scenario_policy();
        let mut store = SqliteWriter::open(&db, policy).expect("open");
        let reader = SqliteReader::new(&db, policy);
        check_store(&mut store, &reader, &policy, &steps, group)?;
    }
}

/// The policy the scenarios run under on both stores: takeovers, pruning and materialization all within their
/// time span.
fn scenario_policy() -> Policy {
    Policy {
        host_takeover_ms: 600_000,
        minute_retention_ms: 3_600_000,
        materialize_every_ms: 0,
        materialize_slice: 3,
        ..Policy::default()
    }
}

/// A migrated database of `cluster` with a writer and a reader on it, and a way to connect to it again.
fn pg_store(cluster: &Cluster, policy: Policy) -> (PgWriter, PgReader, impl Fn() -> postgres::Client + use<>) {
    let connect = cluster.database();
    let mut client = connect();
    schema::migrate(&mut client).expect("migrate");
    (PgWriter::new(client, policy), PgReader::with_policy(connect(), policy), connect)
}

/// The scenarios on the PostgreSQL store: one throwaway cluster for the test, owned here so that it stops with it
/// (a database per case). Fewer cases than SQLite's, for the time they take.
#[test]
fn the_postgres_store_books_what_the_rules_say() {
    let cluster = Cluster::start();
    let policy = scenario_policy();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(32));
    // Calls of one to five batches: one transaction each, as the writer groups requests.
    let result = runner.run(&(scenario(), 1usize..6), |(steps, group)| {
        let (mut store, reader, _) = pg_store(&cluster, policy);
        check_store(&mut store, &reader, &policy, &steps, group)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Two collectors on one database given interleaved batches of the same host at once (each batch both sides'
/// next samples, late ones included) book every sample exactly once, whatever the interleaving: the hours, the
/// site roll-ups and the range answers are the reference of all samples in order.
#[test]
fn two_postgres_writers_on_one_host_stay_exact() {
    let cluster = Cluster::start();
    let policy = Policy::default();
    let (store, reader, connect) = pg_store(&cluster, policy);
    let counter: Vec<(i64, Option<i64>)> =
        (0..400).map(|i| (T0 + i * 7_000 + (i % 5) * 311, Some(i * i * 1_000 + (i % 3) * 17))).collect();
    // Writer k sends the samples with index ≡ k (mod 2), in batches of 10, each batch's order shuffled a little.
    let writers: Vec<std::thread::JoinHandle<u64>> = [store, PgWriter::new(connect(), policy)]
        .into_iter()
        .enumerate()
        .map(|(k, mut w)| {
            let mine: Vec<(i64, Option<i64>)> = counter.iter().copied().skip(k).step_by(2).collect();
            std::thread::spawn(move || {
                let mut booked = 0;
                for (b, batch) in mine.chunks(10).enumerate() {
                    let mut samples: Vec<CounterSample> = batch.iter().map(|p| sample_of(0, *p)).collect();
                    if b % 2 == 1 {
                        samples.reverse();
                    }
                    for o in w.apply(&[Batch { samples, ..Batch::default() }], NOW).expect("apply") {
                        assert_eq!(o.duplicate + o.conflict + o.too_old + o.host_conflict, 0, "{o:?}");
                        booked += o.booked;
                    }
                }
                booked
            })
        })
        .collect();
    let booked: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    assert_eq!(booked, counter.len() as u64);
    let points: BTreeMap<i64, Value> = counter.iter().copied().collect();
    let want = hourly(&points, policy.gap_ms);
    let (first, last) = (counter[0].0, counter[counter.len() - 1].0);
    let (h0, h1) = (first.div_euclid(HOUR_MS) * HOUR_MS, (last.div_euclid(HOUR_MS) + 1) * HOUR_MS);
    for site_wide in [false, true] {
        let mut got = BTreeMap::new();
        for h in (h0..h1).step_by(HOUR_MS as usize) {
            let q = EnergyQuery {
                site: "s".into(),
                host: (!site_wide).then(|| "h0".to_string()),
                meter: None,
                role: None,
                from_ms: h,
                to_ms: h + HOUR_MS,
            };
            let e = reader.energy(&q).expect("energy").energy_uj();
            if e != 0 {
                got.insert(h, e as i64);
            }
        }
        assert_eq!(got, want, "site-wide: {site_wide}");
    }
    // A range cut in minutes reads the raw points: the same total.
    let q = EnergyQuery {
        site: "s".into(),
        host: Some("h0".into()),
        meter: None,
        role: None,
        from_ms: first.div_euclid(60_000) * 60_000,
        to_ms: (last.div_euclid(60_000) + 1) * 60_000,
    };
    let r = reader.energy(&q).expect("energy");
    assert_eq!(r.energy_uj(), i128::from(want.values().sum::<i64>()));
    assert_eq!(r.samples, counter.len() as u64);
}

/// The same bookings (hosts with claims and models, a takeover, late samples, a power meter's register with a
/// swap and a correction, a water meter's intervals, a quarantined sample, a retirement) through the SQLite and
/// the PostgreSQL stores: every reader answer is the same, field for field — energy over ranges cut in minutes,
/// hours and whole days (per host, site-wide, per meter, per role), the host list, the host models, the totals,
/// a role's hours and the retired hosts.
#[test]
fn the_postgres_reader_answers_as_the_sqlite_reader_on_the_same_bookings() {
    use super::query::EnergyReport;
    use super::{HostModel, IntervalReading, Provenance, Quarantined};
    let policy = Policy { host_takeover_ms: 600_000, ..Policy::default() };
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("l.db");
    let mut lite = SqliteWriter::open(&db, policy).expect("open");
    let lite_reader = SqliteReader::new(&db, policy);
    let cluster = Cluster::start();
    let (mut pg, pg_reader, _) = pg_store(&cluster, policy);
    let model =
        |cpu: &str| HostModel { vendor: "v".into(), product: "p".into(), cpu_model: cpu.into(), sockets: Some(2) };
    let claim = |host: &str, m: &str, t: i64| HostClaim {
        site: "s".into(),
        host: host.into(),
        machine_id: m.into(),
        ts_ms: t,
        model: model(m),
    };
    // Two and a half days, a sample every 10 minutes; srv-b estimated; one sample of each held back and sent late.
    let mut batches: Vec<Batch> = Vec::new();
    let mut late: Vec<CounterSample> = Vec::new();
    for i in 0..370i64 {
        let t = T0 + i * 600_000 + 13_000;
        let a = CounterSample::host("s", "srv-a", "rapl", "measured", t, Some(i * 9_100_000 + (i % 7) * 1_000));
        let b = CounterSample::host("s", "srv-b", "model", "estimated", t + 4_000, Some(i * 3_300_000));
        let m = CounterSample::meter("s", "grid", "utility_in", "kWh", t + 9_000, 1_000_000 + i * 41_000);
        let mut batch = Batch { claims: vec![claim("srv-a", "m1", t), claim("srv-b", "m2", t)], ..Batch::default() };
        if i % 50 == 17 {
            late.extend([a, b]);
            batch.samples.push(m);
        } else {
            batch.samples.extend([a, b, m]);
        }
        if i == 200 {
            batch.samples.push(CounterSample::host("s", "srv-a", "rapl", "measured", t + 1, None));
        }
        if i % 24 == 3 {
            batch.intervals.push(IntervalReading {
                site: "s".into(),
                meter: "water".into(),
                role: "water_in".into(),
                unit: "L".into(),
                start_ms: t - 3_600_000,
                end_ms: t,
                value_micro: 250_000_000 + i * 1_000,
            });
        }
        if i == 5 {
            batch.quarantine.push(Quarantined {
                site: "s".into(),
                host: "srv-a".into(),
                method: "rapl".into(),
                ts_ms: T0 + 40 * 86_400_000,
                value: Some(1.5),
                received_ms: t,
                reason: "future",
            });
        }
        batches.push(batch);
    }
    batches.push(Batch { samples: late, ..Batch::default() });
    // Another machine claims srv-b while m2 still reports (refused), then after it stops (a takeover).
    let end = T0 + 370 * 600_000;
    // A late request carries an old claim of srv-a: the owner's claim time is the one last recorded, so another
    // machine claiming it now takes it over.
    batches.push(Batch { claims: vec![claim("srv-a", "m1", T0)], ..Batch::default() });
    batches.push(Batch {
        samples: vec![CounterSample::host("s", "srv-a", "rapl", "measured", end + 60_000, Some(1_000))],
        claims: vec![claim("srv-a", "m7", end)],
        ..Batch::default()
    });
    batches.push(Batch {
        samples: vec![CounterSample::host("s", "srv-b", "model", "estimated", end, Some(5))],
        claims: vec![claim("srv-b", "m9", end - 60_000)],
        ..Batch::default()
    });
    batches.push(Batch {
        samples: vec![CounterSample::host("s", "srv-b", "model", "estimated", end + 3_600_000, Some(7_000_000))],
        claims: vec![claim("srv-b", "m9", end + 3_600_000)],
        ..Batch::default()
    });
    let who = Provenance { author: "alice".into(), reason: "test".into(), recorded_ms: end };
    for (k, b) in batches.chunks(3).enumerate() {
        let (o1, o2) = (lite.apply(b, NOW).expect("sqlite"), pg.apply(b, NOW).expect("pg"));
        assert_eq!(o1, o2, "batches {k}");
        if k % 20 == 0 {
            lite.housekeeping(true).expect("materialize");
        }
    }
    let mut swaps = Vec::new();
    for w in [&mut lite as &mut dyn LedgerWriter, &mut pg] {
        // A swap in the middle of the register's history: its readings are slotted in as late samples.
        swaps.push(
            w.swap_meter("s", "grid", "utility_in", "kWh", T0 + 86_400_000 + 1_000, 4_000_000, 10_000, &who)
                .expect("swap"),
        );
        w.correct("s", "grid", "utility_in", "kWh", T0 + 3_600_000, T0 + 7_200_000, -250_000, &who).expect("correct");
        assert_eq!(w.retire_host("s", "srv-a", false, &who).expect("retire"), super::Retire::Retired);
        assert_eq!(w.retire_host("s", "nope", false, &who).expect("retire"), super::Retire::UnknownHost);
    }
    assert_eq!(swaps[0], swaps[1]);
    assert_eq!(swaps[0].booked, 3, "{:?}", swaps[0]);
    let q = |host: Option<&str>, meter: Option<&str>, role: Option<&str>, from: i64, to: i64| EnergyQuery {
        site: "s".into(),
        host: host.map(str::to_string),
        meter: meter.map(str::to_string),
        role: role.map(str::to_string),
        from_ms: from,
        to_ms: to,
    };
    let ranges = [
        (T0, T0 + 3 * 86_400_000),
        (T0 + 7 * 60_000, T0 + 2 * 86_400_000 + 13 * 60_000),
        (T0 + 86_400_000, T0 + 2 * 86_400_000),
        (T0 + 3_600_000 + 60_000, T0 + 3 * 3_600_000 - 60_000),
        (T0 + 25 * 60_000, T0 + 26 * 60_000),
    ];
    let mut asked = 0;
    for (from, to) in ranges {
        for question in [
            q(Some("srv-a"), None, None, from, to),
            q(Some("srv-b"), None, None, from, to),
            q(None, None, None, from, to),
            q(None, Some("grid"), None, from, to),
            q(None, Some("water"), None, from, to),
            q(None, None, Some("utility_in"), from, to),
        ] {
            let (a, b): (EnergyReport, EnergyReport) =
                (lite_reader.energy(&question).expect("sqlite"), pg_reader.energy(&question).expect("pg"));
            assert_eq!(a, b, "{question:?}");
            let (a, b) = (
                lite_reader.energy_totals(&question).expect("sqlite"),
                pg_reader.energy_totals(&question).expect("pg"),
            );
            assert_eq!((&a.energy_microjoules, a.coverage_ratio), (&b.energy_microjoules, b.coverage_ratio));
            assert_eq!(a.samples.min(1), b.samples, "{question:?}");
            asked += usize::from(a.energy_uj() != 0);
        }
    }
    assert!(asked > 20, "the questions found energy: {asked}");
    assert_eq!(
        lite_reader.hosts("s", end + 3_600_000).expect("sqlite"),
        pg_reader.hosts("s", end + 3_600_000).expect("pg")
    );
    for (from, to) in ranges {
        assert_eq!(
            lite_reader.host_models("s", from, to).expect("sqlite"),
            pg_reader.host_models("s", from, to).expect("pg")
        );
    }
    assert_eq!(lite_reader.site_totals().expect("sqlite"), LedgerReader::site_totals(&pg_reader).expect("pg"));
    assert_eq!(
        lite_reader.role_hourly("s", "utility_in", T0, T0 + 3 * 86_400_000).expect("sqlite"),
        LedgerReader::role_hourly(&pg_reader, "s", "utility_in", T0, T0 + 3 * 86_400_000).expect("pg")
    );
    assert_eq!(
        lite_reader.retired_hosts("s").expect("sqlite"),
        LedgerReader::retired_hosts(&pg_reader, "s").expect("pg")
    );
}

/// A connection the server closes (a restart, a terminated backend) fails the request that finds it closed, which
/// its sender retries, and the next one runs on a new connection: the writer and the reader go on, and nothing is
/// booked twice or lost.
#[test]
fn the_postgres_store_reconnects_after_the_server_closes_its_connections() {
    let cluster = Cluster::start();
    let policy = Policy::default();
    let connect = std::sync::Arc::new(cluster.database());
    let mut client = connect();
    schema::migrate(&mut client).expect("migrate");
    let again = |c: &std::sync::Arc<dyn Fn() -> postgres::Client + Send + Sync>| -> super::pg::Reconnect {
        let c = c.clone();
        Box::new(move || Ok(c()))
    };
    let connect: std::sync::Arc<dyn Fn() -> postgres::Client + Send + Sync> = connect;
    let mut w = PgWriter::new(client, policy).reconnecting(again(&connect));
    let reader = PgReader::with_policy(connect(), policy).reconnecting(again(&connect));
    let batch =
        |i: i64| Batch { samples: vec![sample_of(0, (T0 + i * 10_000, Some(i * 1_000_000)))], ..Batch::default() };
    let hour = EnergyQuery {
        site: "s".into(),
        host: Some("h0".into()),
        meter: None,
        role: None,
        from_ms: T0,
        to_ms: T0 + HOUR_MS,
    };
    for i in 0..5 {
        w.apply(&[batch(i)], NOW).expect("apply");
    }
    assert_eq!(reader.energy(&hour).expect("energy").energy_uj(), 4_000_000);
    let mut admin = connect();
    let killed: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 2, "the writer's and the reader's connections");
    // The request that finds the connection closed fails (its sender retries it); the retry is booked once.
    let o = match w.apply(&[batch(5)], NOW) {
        Ok(o) => o,
        Err(_) => w.apply(&[batch(5)], NOW).expect("the retry, on a new connection"),
    };
    assert_eq!(o[0].booked, 1);
    // Likewise the reader: at most one read fails.
    let _ = reader.energy(&hour);
    assert_eq!(reader.energy(&hour).expect("energy, reconnected").energy_uj(), 5_000_000);
}
