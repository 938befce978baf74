//! The booking rules alone, without a database. An in-memory store reads what
//! each rule needs, asks it and does what it says, as the SQLite store does:
//! whatever the delivery order, duplicates, conflicts, counter resets, stale
//! markers, host claims and takeovers and pruning, the energy it books per
//! minute is what the in-order reference gives for the samples it accepted,
//! and each refusal is justified. A store that executes the rules faithfully
//! books the same.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::Policy;
use super::book::{MINUTE_MS, Value, increment, spread};
use super::reference::reference;
use super::rules::{self, Claim, Interval, Placement, Point, Reading, Slot};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// What the store did with one delivered sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Booked,
    Duplicate,
    Conflict,
    TooOld,
    /// Refused with its request: another machine owns the host.
    HostConflict,
}

/// One series as a store keeps it: the raw samples it still has and the point
/// before which it pruned them.
#[derive(Debug, Default)]
struct Series {
    samples: BTreeMap<i64, Value>,
    pruned_until: i64,
    /// A host series (in-order samples go to the journal), not a meter's.
    journaled: bool,
}

/// A store in memory: series by index (series `i < hosts` belongs to host `i`),
/// host owners, booked minutes, and every sample it ever accepted (never pruned,
/// for the reference).
#[derive(Debug)]
struct MemStore {
    policy: Policy,
    series: Vec<Series>,
    owners: HashMap<usize, (String, i64)>,
    minutes: BTreeMap<(usize, i64), i64>,
    accepted: Vec<BTreeMap<i64, Value>>,
}

impl MemStore {
    fn new(policy: Policy, hosts: usize, meters: usize) -> Self {
        let series = (0..hosts + meters).map(|i| Series { journaled: i < hosts, ..Series::default() }).collect();
        MemStore {
            policy,
            series,
            owners: HashMap::new(),
            minutes: BTreeMap::new(),
            accepted: vec![BTreeMap::new(); hosts + meters],
        }
    }

    fn book(&mut self, id: usize, (t0, t1, amount): Interval, sign: i64) {
        for s in spread(t0, t1, amount, MINUTE_MS, self.policy.gap_ms) {
            *self.minutes.entry((id, s.start_ms)).or_insert(0) += sign * s.energy_uj;
        }
    }

    fn store(&mut self, id: usize, (ts, v): Point) {
        self.series[id].samples.insert(ts, v);
        self.accepted[id].insert(ts, v);
    }

    /// A claim of `host` by `machine` at `ts`; false when refused.
    fn claim(&mut self, host: usize, machine: &str, ts: i64) -> bool {
        let owner = self.owners.get(&host).cloned();
        match rules::claim(owner.as_ref().map(|(m, t)| (m.as_str(), *t)), machine, ts, &self.policy) {
            Claim::Refuse => return false,
            Claim::TakeOver => {
                let last = self.series[host].samples.last_key_value().map(|(t, v)| (*t, *v));
                if let Some((lt, lv)) = last
                    && let Some(marker) = rules::takeover_marker((lt, lv))
                {
                    // Journaled with the series' last sample as its previous one.
                    self.book(host, (lt, marker.0, increment(lv, marker.1)), 1);
                    self.store(host, marker);
                }
            }
            Claim::Accept => {}
        }
        self.owners.insert(host, (machine.to_string(), ts));
        true
    }

    fn sample(&mut self, id: usize, p: Point) -> Done {
        let s = &self.series[id];
        let last = s.samples.last_key_value().map(|(t, v)| (*t, *v));
        match rules::place(last, p, s.journaled) {
            Placement::Journal { prev } => {
                if let Some((pt, pv)) = prev {
                    self.book(id, (pt, p.0, increment(pv, p.1)), 1);
                }
            }
            Placement::First => {}
            Placement::Append(iv) => self.book(id, iv, 1),
            Placement::Late => {
                let prev = s.samples.range(..p.0).next_back().map(|(t, v)| (*t, *v));
                let next = s.samples.range(p.0 + 1..).next().map(|(t, v)| (*t, *v));
                let existing = s.samples.get(&p.0).copied();
                match rules::slot((prev, existing, next), s.pruned_until, p) {
                    Slot::Duplicate => return Done::Duplicate,
                    Slot::Conflict => return Done::Conflict,
                    Slot::TooOld => return Done::TooOld,
                    Slot::Insert { remove, add } => {
                        remove.into_iter().for_each(|iv| self.book(id, iv, -1));
                        add.into_iter().flatten().for_each(|iv| self.book(id, iv, 1));
                    }
                }
            }
        }
        self.store(id, p);
        Done::Booked
    }

    /// Drops raw samples before `cutoff`, keeping each series' last one (the
    /// next sample's baseline), as the SQLite store prunes a meter's samples.
    fn prune(&mut self, cutoff: i64) {
        for s in &mut self.series {
            if s.pruned_until < cutoff && s.samples.range(..cutoff).next().is_some() {
                s.pruned_until = cutoff;
            }
            let last = s.samples.last_key_value().map(|(t, _)| *t);
            s.samples.retain(|t, _| *t >= cutoff || Some(*t) == last);
        }
    }

    /// The series' booked minutes that hold energy.
    fn minutes_of(&self, id: usize) -> BTreeMap<i64, i64> {
        self.minutes.iter().filter(|((s, _), e)| *s == id && **e != 0).map(|((_, m), e)| (*m, *e)).collect()
    }
}

/// A counter's points from `(step, increment, kind)`: kind 0 resets to the
/// increment, kind 1 is a stale marker, the rest add the increment.
pub(super) fn counter(start: i64, steps: &[(i64, i64, u8)]) -> Vec<Point> {
    let (mut t, mut v) = (start, 5_000_000i64);
    let mut points = Vec::new();
    for &(dt, inc, kind) in steps {
        t += dt;
        match kind {
            0 => v = inc,
            1 => {
                points.push((t, None));
                continue;
            }
            _ => v += inc,
        }
        points.push((t, Some(v)));
    }
    points
}

/// What happens between deliveries.
#[derive(Debug, Clone)]
enum Event {
    /// A claim of host `.0` by machine `m{.1}` at `T0 + .2`, carried by the next delivery of that host.
    Claim(usize, u8, i64),
    /// Raw samples before `T0 + .0` are pruned.
    Prune(i64),
}

fn events() -> impl Strategy<Value = Vec<(usize, Event)>> {
    let claim = (0usize..2, 0u8..3, 0i64..6_000_000).prop_map(|(h, m, t)| Event::Claim(h, m, t));
    let prune = (0i64..6_000_000).prop_map(Event::Prune);
    proptest::collection::vec((0usize..120, prop_oneof![3 => claim, 1 => prune]), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Two host series and a meter's register, delivered in any order with
    /// duplicates and conflicting values, with host claims (refusals and
    /// takeovers) and pruning in between: every series' booked minutes are the
    /// in-order reference of the samples the store accepted (takeover markers
    /// included), a sample is accepted unless a refusal says why, and a refusal
    /// is justified.
    #[test]
    fn the_rules_book_what_the_accepted_samples_give_in_order(
        series in proptest::collection::vec(proptest::collection::vec((1i64..400_000, 0i64..50_000_000, 0u8..20), 1..30), 3),
        order in proptest::collection::vec(any::<u64>(), 96),
        dups in proptest::collection::vec(0usize..96, 0..12),
        conflicts in proptest::collection::vec((0usize..96, proptest::option::of(1i64..1_000)), 0..6),
        events in events(),
    ) {
        let policy = Policy { host_takeover_ms: 600_000, ..Policy::default() };
        let mut store = MemStore::new(policy, 2, 1);
        // Every delivery: (series, point). Originals, then repeats, then other values at the same timestamps.
        let mut all: Vec<(usize, Point)> = Vec::new();
        for (id, steps) in series.iter().enumerate() {
            all.extend(counter(T0 + id as i64 * 70_000, steps).into_iter().map(|p| (id, p)));
        }
        let n = all.len();
        let mut keyed: Vec<(u64, (usize, Point))> =
            all.iter().enumerate().map(|(i, d)| (order[i % order.len()] ^ i as u64, *d)).collect();
        keyed.sort_by_key(|k| k.0);
        let mut delivery: Vec<(usize, Point)> = keyed.into_iter().map(|k| k.1).collect();
        delivery.extend(dups.iter().filter(|d| **d < n).map(|d| all[*d]));
        for (i, delta) in &conflicts {
            if let Some(&(id, (ts, v))) = all.get(*i) {
                delivery.insert(i % (delivery.len() + 1), (id, (ts, delta.map(|d| v.unwrap_or(0) + d))));
            }
        }
        let mut pending_claims: Vec<(usize, u8, i64)> = Vec::new();
        let (mut delivered, mut booked, mut refused) = (0usize, 0usize, 0usize);
        for (k, &(id, p)) in delivery.iter().enumerate() {
            for (_, e) in events.iter().filter(|(at, _)| *at == k) {
                match e {
                    Event::Claim(h, m, t) => pending_claims.push((*h, *m, T0 + t)),
                    Event::Prune(t) => store.prune(T0 + t),
                }
            }
            delivered += 1;
            // The request of a host sample carries the claims made for that host since its last request.
            let mut allowed = true;
            pending_claims.retain(|&(h, m, t)| {
                if h != id { return true; }
                allowed &= store.claim(h, &format!("m{m}"), t);
                false
            });
            let before = store.accepted[id].get(&p.0).copied();
            let gone_before = store.accepted[id].range(..p.0).next_back().is_some()
                && store.series[id].samples.range(..p.0).next().is_none();
            let pruned_until = store.series[id].pruned_until;
            let held = store.series[id].samples.contains_key(&p.0);
            let done = if allowed { store.sample(id, p) } else { Done::HostConflict };
            match done {
                Done::Booked => {
                    prop_assert_eq!(before, None, "a second sample at {} was booked", p.0);
                    booked += 1;
                }
                Done::Duplicate => prop_assert_eq!(before, Some(p.1)),
                Done::Conflict => prop_assert!(before.is_some() && before != Some(p.1)),
                Done::TooOld => {
                    // A replay of a pruned sample is too old; one the store still holds is not.
                    prop_assert!(!held, "a sample the store holds is not too old");
                    prop_assert!(p.0 < pruned_until || gone_before, "too old at {} with prune point {}", p.0, pruned_until);
                    refused += 1;
                }
                Done::HostConflict => refused += 1,
            }
        }
        prop_assert!(booked + refused <= delivered);
        for id in 0..3 {
            let points: Vec<Point> = store.accepted[id].iter().map(|(t, v)| (*t, *v)).collect();
            let want: BTreeMap<i64, i64> =
                reference(&points, policy.gap_ms).into_iter().filter(|(_, e)| *e != 0).collect();
            prop_assert_eq!(store.minutes_of(id), want, "series {}", id);
        }
    }

    /// Interval readings imported in any order and any number of times book each
    /// interval once, with the first value imported for it.
    #[test]
    fn interval_readings_book_each_interval_once_with_its_first_value(
        imports in proptest::collection::vec((0usize..6, 0i64..1_000), 1..40),
    ) {
        let mut recorded: BTreeMap<usize, i64> = BTreeMap::new();
        let mut booked: i64 = 0;
        for &(iv, v) in &imports {
            match rules::interval_reading(recorded.get(&iv).copied(), v) {
                Reading::Book => { recorded.insert(iv, v); booked += v; }
                Reading::Duplicate => prop_assert_eq!(recorded.get(&iv), Some(&v)),
                Reading::Conflict => prop_assert!(recorded.get(&iv).is_some_and(|r| *r != v)),
            }
        }
        let mut first: BTreeMap<usize, i64> = BTreeMap::new();
        for &(iv, v) in &imports { first.entry(iv).or_insert(v); }
        prop_assert_eq!(&recorded, &first);
        prop_assert_eq!(booked, first.values().sum::<i64>());
    }

    /// A correction books its signed value over its interval, exactly.
    #[test]
    fn a_correction_books_its_signed_value(start in 0i64..10_000_000, len in 1i64..10_000_000, v in -1_000_000_000_000i64..1_000_000_000_000) {
        let ((t0, t1, amount), sign) = rules::correction(start, start + len, v);
        prop_assert!(amount >= 0 && (sign == 1 || sign == -1));
        let total: i64 = spread(t0, t1, amount, MINUTE_MS, rules::INTERVAL_GAP_MS).map(|s| sign * s.energy_uj).sum();
        prop_assert_eq!(total, v);
    }

    /// A meter swap books the old register up to its final reading and counts
    /// the new register from its initial reading, whatever the two values.
    #[test]
    fn a_swap_books_up_to_the_final_reading_and_from_the_initial_one(
        before in 0i64..1_000_000_000, used in 0i64..1_000_000_000, initial in 0i64..1_000_000_000, after in 0i64..1_000_000_000,
    ) {
        let mut store = MemStore::new(Policy::default(), 0, 1);
        prop_assert_eq!(store.sample(0, (T0, Some(before))), Done::Booked);
        for p in rules::swap_readings(T0 + 60_000, before + used, initial) {
            prop_assert_eq!(store.sample(0, p), Done::Booked);
        }
        store.sample(0, (T0 + 120_000, Some(initial + after)));
        prop_assert_eq!(store.minutes_of(0).values().sum::<i64>(), used + after);
    }
}

#[test]
fn a_claim_is_refused_while_the_owner_reports_and_taken_over_after() {
    let policy = Policy { host_takeover_ms: 1_000, ..Policy::default() };
    assert_eq!(rules::claim(None, "a", 0, &policy), Claim::Accept);
    assert_eq!(rules::claim(Some(("a", 0)), "a", 5_000, &policy), Claim::Accept);
    assert_eq!(rules::claim(Some(("a", 0)), "b", 999, &policy), Claim::Refuse);
    assert_eq!(rules::claim(Some(("a", 0)), "b", 1_000, &policy), Claim::TakeOver);
    // A claim stamped before the owner's (a replay) is refused, not a takeover.
    assert_eq!(rules::claim(Some(("a", 10_000)), "b", 0, &policy), Claim::Refuse);
    assert_eq!(rules::takeover_marker((7, Some(3))), Some((8, None)));
    assert_eq!(rules::takeover_marker((7, None)), None);
}

#[test]
fn placement_follows_the_last_sample() {
    assert_eq!(rules::place(None, (10, Some(5)), true), Placement::Journal { prev: None });
    assert_eq!(rules::place(Some((5, Some(1))), (10, Some(5)), true), Placement::Journal { prev: Some((5, Some(1))) });
    assert_eq!(rules::place(None, (10, Some(5)), false), Placement::First);
    assert_eq!(rules::place(Some((5, Some(1))), (10, Some(5)), false), Placement::Append((5, 10, 4)));
    // A drop is a reset: the new value counts from zero.
    assert_eq!(rules::place(Some((5, Some(9))), (10, Some(5)), false), Placement::Append((5, 10, 5)));
    for journaled in [true, false] {
        assert_eq!(rules::place(Some((10, Some(1))), (10, Some(1)), journaled), Placement::Late);
        assert_eq!(rules::place(Some((10, Some(1))), (3, Some(1)), journaled), Placement::Late);
    }
}

#[test]
fn a_late_sample_takes_back_its_neighbours_interval_and_books_both_halves() {
    let n = (Some((0, Some(100))), None, Some((20, Some(300))));
    assert_eq!(
        rules::slot(n, 0, (10, Some(150))),
        Slot::Insert { remove: Some((0, 20, 200)), add: [Some((0, 10, 50)), Some((10, 20, 150))] }
    );
    assert_eq!(rules::slot((None, Some(Some(7)), None), 0, (10, Some(7))), Slot::Duplicate);
    assert_eq!(rules::slot((None, Some(Some(7)), None), 0, (10, Some(8))), Slot::Conflict);
    assert_eq!(rules::slot((None, Some(None), None), 0, (10, None)), Slot::Duplicate);
    assert_eq!(rules::slot((None, None, Some((20, Some(1)))), 50, (10, Some(1))), Slot::TooOld);
}
