//! The ledger's booking rules, as pure functions over what a store reads.
//!
//! A store reads what a rule needs (a host name's owner, a series' last
//! sample, a late sample's neighbours, an interval reading already recorded),
//! asks the rule, and writes what it says: a journal entry, a raw sample,
//! intervals booked or taken back. The rules never see a database, so every
//! store books the same way, and they are property-tested on their own against
//! the in-order reference (`rules_tests.rs`): whatever the delivery order,
//! repetition, conflicts, resets, stale markers, takeovers and pruning, the
//! energy booked per bucket is what the accepted samples give in order.
//!
//! The arithmetic they use (increments, spreading over buckets) is [`super::book`].

use super::Policy;
use super::book::{Value, increment};

/// A sample of a series: timestamp (Unix ms) and counter value (`None`: a stale marker).
pub type Point = (i64, Value);

/// An interval to book: `(t0, t1, amount)`, the amount in micro-units of the series' unit.
pub type Interval = (i64, i64, i64);

/// What a store reads around a late sample's timestamp: the series' sample
/// before it, the value already stored at it (`Some(None)`: a stale marker),
/// and the sample after it.
pub type Neighbours = (Option<Point>, Option<Value>, Option<Point>);

/// What to do with an agent's claim that a host name is its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name is free or already this machine's: record the claim (its time and model).
    Accept,
    /// Another machine owned the name but has not claimed it for `host_takeover_ms`:
    /// the claimant takes it over, and each series of the host that has a value ends
    /// with a stale marker ([`takeover_marker`]), so the new machine's counters start
    /// from a fresh baseline instead of being read as a jump or a reset of the old ones.
    TakeOver,
    /// Another machine still owns the name: the claim is recorded as a host conflict,
    /// and the request's samples of this host are refused.
    Refuse,
}

/// Decides a claim of `machine_id` at `ts_ms` on a host name whose current owner
/// is `owner` (`(machine id, time of its last claim)`, `None` for a new name).
pub fn claim(owner: Option<(&str, i64)>, machine_id: &str, ts_ms: i64, policy: &Policy) -> Claim {
    match owner {
        Some((m, t)) if m != machine_id && ts_ms.saturating_sub(t) < policy.host_takeover_ms => Claim::Refuse,
        Some((m, _)) if m != machine_id => Claim::TakeOver,
        _ => Claim::Accept,
    }
}

/// The stale marker that ends a taken-over host's series whose last sample is
/// `last`: 1 ms after it, so it sorts after every sample of the old machine.
/// `None` when the series already ends with a stale marker.
pub fn takeover_marker(last: Point) -> Option<Point> {
    last.1.map(|_| (last.0.saturating_add(1), None))
}

/// Where a sample goes, from its series' last stored sample alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Newer than the series' last sample, in a journaled (host) series: appended
    /// to the journal with `prev`, the series' last sample (`None`: its first
    /// sample, a baseline), which fixes the energy it adds:
    /// `increment(prev value, value)` over `[prev ts, ts)`.
    Journal { prev: Option<Point> },
    /// The first sample of a series that is not journaled (a meter): stored; a
    /// baseline, it books nothing.
    First,
    /// Newer than the last sample of a series that is not journaled: stored, and
    /// the interval since the last sample is booked.
    Append(Interval),
    /// At or before the series' last sample: a replay or a late sample. The
    /// store reads its [`Neighbours`] and asks [`slot`].
    Late,
}

/// Places the sample `(ts_ms, value)` of a series whose last stored sample is
/// `last`; `journaled` for host series (their in-order samples go to the journal).
pub fn place(last: Option<Point>, (ts_ms, value): Point, journaled: bool) -> Placement {
    match last {
        Some((lt, _)) if ts_ms <= lt => Placement::Late,
        prev if journaled => Placement::Journal { prev },
        None => Placement::First,
        Some((lt, lv)) => Placement::Append((lt, ts_ms, increment(lv, value))),
    }
}

/// What a late sample (or a replay) does, once its neighbours are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The same value is stored at this timestamp: counted once, nothing booked.
    Duplicate,
    /// Another value is stored at this timestamp: the first one wins.
    Conflict,
    /// Older than the raw samples the series keeps (`pruned_until_ms`), or
    /// after it but with its previous sample pruned: a neighbour is gone, so it
    /// cannot be slotted in.
    TooOld,
    /// Stored between its neighbours: the interval between them (`remove`, booked
    /// when the later one arrived) is taken back and the intervals from the one
    /// before to it and from it to the one after (`add`) are booked instead.
    Insert { remove: Option<Interval>, add: [Option<Interval>; 2] },
}

/// Slots the sample `(ts_ms, value)` between its `neighbours`; raw samples of
/// the series before `pruned_until_ms` were pruned.
pub fn slot((prev, existing, next): Neighbours, pruned_until_ms: i64, (ts_ms, value): Point) -> Slot {
    if let Some(v) = existing {
        return if v == value { Slot::Duplicate } else { Slot::Conflict };
    }
    // A series pruned at all had a sample before `pruned_until_ms`, hence before
    // this one: when none is left before it, its previous sample was pruned, and
    // the interval that sample began (booked already) cannot be split.
    if ts_ms < pruned_until_ms || prev.is_none() && pruned_until_ms > 0 {
        return Slot::TooOld;
    }
    let remove = match (prev, next) {
        (Some((pt, pv)), Some((nt, nv))) => Some((pt, nt, increment(pv, nv))),
        _ => None,
    };
    let add = [
        prev.map(|(pt, pv)| (pt, ts_ms, increment(pv, value))),
        next.map(|(nt, nv)| (ts_ms, nt, increment(value, nv))),
    ];
    Slot::Insert { remove, add }
}

/// What to do with a meter's interval reading (its consumption over `[start, end)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// New: store it and book its value over the interval, which it covers whole
    /// (a measurement of the interval, never a gap: see [`INTERVAL_GAP_MS`]).
    Book,
    /// The same interval with the same value again (a re-import): counted once.
    Duplicate,
    /// The same interval with another value: the first one wins.
    Conflict,
}

/// The gap an interval reading, a correction or a swap is spread with: none of
/// them is a gap between two samples, whatever its length.
pub const INTERVAL_GAP_MS: i64 = i64::MAX;

/// Decides an interval reading of `value` given the value already recorded
/// for the same meter and interval, if any.
pub fn interval_reading(existing: Option<i64>, value: i64) -> Reading {
    match existing {
        Some(v) if v == value => Reading::Duplicate,
        Some(_) => Reading::Conflict,
        None => Reading::Book,
    }
}

/// The gap a correction is booked with: shorter than any interval, so its
/// shares cover nothing (see [`correction`]).
pub const CORRECTION_GAP_MS: i64 = 0;

/// A manual correction of `value_micro` (signed) over `[start_ms, end_ms)`, as
/// booked: the interval with the amount's magnitude, and its sign (-1 takes
/// energy away). It adds or removes energy but observes nothing, so the store
/// books it with [`CORRECTION_GAP_MS`]: no coverage.
pub fn correction(start_ms: i64, end_ms: i64, value_micro: i64) -> (Interval, i64) {
    if value_micro < 0 {
        ((start_ms, end_ms, value_micro.saturating_neg()), -1)
    } else {
        ((start_ms, end_ms, value_micro), 1)
    }
}

/// The register readings a meter swap at `at_ms` books, in order: the old
/// meter's final reading, a stale marker 1 ms later (the old register ends),
/// and the new meter's initial reading 1 ms after that, a fresh baseline: the
/// ledger books up to the final reading, and the initial value is never
/// counted as consumption.
pub fn swap_readings(at_ms: i64, final_micro: i64, initial_micro: i64) -> [Point; 3] {
    [(at_ms, Some(final_micro)), (at_ms.saturating_add(1), None), (at_ms.saturating_add(2), Some(initial_micro))]
}
