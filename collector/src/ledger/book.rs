//! The ledger's arithmetic, as pure functions: counter increments in integer
//! microjoules (baseline, reset, stale marker) and the exact spreading of an
//! interval's energy over one-minute UTC buckets.

/// Milliseconds in a ledger bucket.
pub const MINUTE_MS: i64 = 60_000;
/// Milliseconds in a roll-up bucket.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in a day roll-up bucket (UTC days).
pub const DAY_MS: i64 = 86_400_000;

/// A counter value in µJ, or `None` for a stale marker (the series ended).
pub type Value = Option<i64>;

/// Converts a transmitted counter value (joules, f64) to integer µJ.
/// `None` when it cannot be a counter (NaN, ±Inf, negative, beyond i64 µJ).
pub fn joules_to_uj(v: f64) -> Option<i64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let uj = (v * 1e6).round();
    (uj < i64::MAX as f64).then_some(uj as i64)
}

/// Increment between two consecutive samples of a series: the first sample and
/// the one after a stale marker are baselines (0); a drop is a reset and the
/// new value counts from zero.
pub fn increment(prev: Value, cur: Value) -> i64 {
    match (prev, cur) {
        (Some(p), Some(c)) if c >= p => c - p,
        (Some(_), Some(c)) => c,
        _ => 0,
    }
}

/// One bucket's share of an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Bucket start, ms since the epoch (a multiple of the bucket size).
    pub start_ms: i64,
    pub energy_uj: i64,
    /// Milliseconds of the bucket the interval observed (0 across a gap).
    pub covered_ms: i64,
}

/// Spreads `energy_uj` evenly over `[t0, t1)` into buckets of `bucket_ms`.
/// Shares are apportioned on cumulative time, so they sum to `energy_uj`
/// exactly and any sub-range gets its proportional share. An interval longer
/// than `gap_ms` still books its energy but covers nothing: coverage shows
/// the gap. An iterator, not a vector: materialization spreads every sample
/// twice, and an allocation each time was a measurable part of it.
pub fn spread(t0: i64, t1: i64, energy_uj: i64, bucket_ms: i64, gap_ms: i64) -> Spread {
    let valid = t1 > t0 && bucket_ms > 0;
    Spread {
        t0,
        t1,
        energy: i128::from(energy_uj),
        total: i128::from(t1.saturating_sub(t0)).max(1),
        covered: t1.saturating_sub(t0) <= gap_ms,
        bucket_ms: bucket_ms.max(1),
        start: if valid { t0.div_euclid(bucket_ms) * bucket_ms } else { t1 },
        given: 0,
    }
}

/// Adds to `sums` (µJ, covered ms) the shares of the interval `(t0, t1, energy_uj)`
/// whose buckets start in `[from, to)`: what a range of buckets holds of it.
pub fn add_shares_in(
    sums: &mut (i128, i128),
    (t0, t1, energy_uj): (i64, i64, i64),
    bucket_ms: i64,
    gap_ms: i64,
    (from, to): (i64, i64),
) {
    if t1 <= from || t0 >= to {
        return;
    }
    for sh in spread(t0, t1, energy_uj, bucket_ms, gap_ms) {
        if sh.start_ms >= from && sh.start_ms < to {
            sums.0 += i128::from(sh.energy_uj);
            sums.1 += i128::from(sh.covered_ms);
        }
    }
}

/// The shares of one interval, bucket by bucket (see [`spread`]).
#[derive(Debug, Clone)]
pub struct Spread {
    t0: i64,
    t1: i64,
    energy: i128,
    total: i128,
    covered: bool,
    bucket_ms: i64,
    /// Start of the next bucket to yield; `>= t1` when done.
    start: i64,
    given: i128,
}

impl Iterator for Spread {
    type Item = Share;

    fn next(&mut self) -> Option<Share> {
        if self.start >= self.t1 {
            return None;
        }
        let start = self.start;
        let end = start.saturating_add(self.bucket_ms);
        let upto = i128::from(end.min(self.t1) - self.t0);
        let cum = self.energy * upto / self.total;
        let share = cum - self.given;
        self.given = cum;
        let overlap = end.min(self.t1) - start.max(self.t0);
        self.start = end;
        Some(Share { start_ms: start, energy_uj: share as i64, covered_ms: if self.covered { overlap } else { 0 } })
    }
}

/// Any counter value or a stale marker, for the property tests of the encodings.
#[cfg(test)]
pub fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    prop_oneof![Just(None), any::<i64>().prop_map(Some)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn increments() {
        assert_eq!(increment(None, Some(5)), 0);
        assert_eq!(increment(Some(5), Some(9)), 4);
        assert_eq!(increment(Some(9), Some(3)), 3);
        assert_eq!(increment(Some(9), None), 0);
        assert_eq!(joules_to_uj(1.5), Some(1_500_000));
        assert_eq!(joules_to_uj(f64::NAN), None);
        assert_eq!(joules_to_uj(-1.0), None);
        assert_eq!(joules_to_uj(1e300), None);
    }

    #[test]
    fn spread_over_minutes() {
        // 90 s from 00:00:30: a third in the first minute, two thirds in the second.
        let s: Vec<Share> = spread(30_000, 120_000, 900, MINUTE_MS, 300_000).collect();
        assert_eq!(
            s,
            vec![
                Share { start_ms: 0, energy_uj: 300, covered_ms: 30_000 },
                Share { start_ms: 60_000, energy_uj: 600, covered_ms: 60_000 },
            ]
        );
        // Across a gap: energy booked, nothing covered.
        let g: Vec<Share> = spread(0, 600_000, 10, MINUTE_MS, 300_000).collect();
        assert_eq!(g.len(), 10);
        assert_eq!(g.iter().map(|s| s.energy_uj).sum::<i64>(), 10);
        assert!(g.iter().all(|s| s.covered_ms == 0));
        // Empty and reversed intervals have no shares.
        assert_eq!(spread(5, 5, 10, MINUTE_MS, 300_000).count(), 0);
        assert_eq!(spread(9, 5, 10, MINUTE_MS, 300_000).count(), 0);
        assert_eq!(spread(0, 5, 10, 0, 300_000).count(), 0);
    }

    proptest! {
        /// Shares sum to the energy exactly, never go negative for a positive
        /// energy, and cover exactly the interval when it is not a gap.
        #[test]
        fn spread_is_exact(t0 in -10_000_000i64..10_000_000, len in 1i64..20_000_000, e in 0i64..1_000_000_000_000) {
            let s: Vec<Share> = spread(t0, t0 + len, e, MINUTE_MS, i64::MAX).collect();
            prop_assert_eq!(s.iter().map(|x| i128::from(x.energy_uj)).sum::<i128>(), i128::from(e));
            prop_assert!(s.iter().all(|x| x.energy_uj >= 0 && x.start_ms % MINUTE_MS == 0));
            prop_assert_eq!(s.iter().map(|x| x.covered_ms).sum::<i64>(), len);
        }

        /// Splitting an interval at any point and spreading both parts with
        /// their own energies gives the same total as the whole.
        #[test]
        fn counter_increments_telescope(values in proptest::collection::vec(0i64..1_000_000_000, 2..30)) {
            let mut sorted = values.clone();
            sorted.sort();
            let total: i64 = sorted.windows(2).map(|w| increment(Some(w[0]), Some(w[1]))).sum();
            prop_assert_eq!(total, sorted[sorted.len() - 1] - sorted[0]);
        }
    }
}
