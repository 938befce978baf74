//! Each sender's clock skew, estimated from what it sends: the newest sample
//! timestamp of a host in a request against the collector's receive time. Pure
//! state, updated under the ingest statistics' lock and exported as
//! `domesday_host_clock_skew_seconds{site,host}`.
//!
//! A sample stamped `ts` by a clock that is `offset` ahead, delivered after a
//! delay `d ≥ 0`, arrives at `received = ts - offset + d`, so
//! `ts - received = offset - d ≤ offset`: each request gives a lower bound of the
//! offset, and the least-delayed request of a window gives the tightest one. The
//! estimate is therefore the **maximum of `newest - received` over the requests
//! of the last [`WINDOW_MS`]**: a clock ahead shows at once and in full, a clock
//! behind shows as its offset plus the smallest delivery delay of the window
//! (the push latency, milliseconds), and it is never above the true offset.
//!
//! A spool replay after an outage sends samples hours old: `newest - received`
//! is then hours negative while the sender's clock is right. Such requests are
//! recognised by their pace: a replay sends its backlog back to back, so the
//! sample time advances between two requests much faster than the receive time.
//! Only **paced** requests update the estimate: since the host's previous
//! request, its newest sample advanced by between half and twice the receive
//! time that passed (`Δnewest > 0`, `Δnewest / 2 ≤ Δreceived ≤ 2 × Δnewest`). A
//! live sender is paced whatever its offset (its samples advance with real
//! time); a replay is not (its first request comes after a silence much longer
//! than its samples advanced, the next ones back to back), so it leaves the
//! estimate where the live traffic before the outage put it. Neither is a
//! clock step (the one request where the sample time jumps), which the next
//! paced request shows. The first request of a host after the collector starts
//! has no predecessor and does not count either, so a replay into a freshly
//! started collector shows no skew until live traffic resumes.

use std::collections::VecDeque;

/// The window over which the maximum is taken (receive time).
pub const WINDOW_MS: i64 = 10 * 60_000;
/// The window is kept as this many buckets of their maximum: constant memory per host.
const BUCKETS: i64 = 10;
const BUCKET_MS: i64 = WINDOW_MS / BUCKETS;

/// One sender's (site, host) skew state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkewEstimator {
    /// The last request: (received, newest sample), ms.
    prev: Option<(i64, i64)>,
    /// (bucket index, max `newest - received` in it) for the paced requests of the window, oldest first.
    buckets: VecDeque<(i64, i64)>,
    /// The current estimate, ms (positive: the sender's clock is ahead).
    estimate: Option<i64>,
}

/// Whether a request is paced (see the module doc): since the previous
/// request, its newest sample advanced by between half and twice the receive
/// time that passed.
pub fn paced(prev: (i64, i64), received_ms: i64, newest_ms: i64) -> bool {
    let (r0, t0) = prev;
    let advanced = newest_ms.saturating_sub(t0);
    let waited = received_ms.saturating_sub(r0);
    advanced > 0 && waited.saturating_mul(2) >= advanced && waited <= advanced.saturating_mul(2)
}

impl SkewEstimator {
    /// A request received at `received_ms` whose newest sample of this host is
    /// stamped `newest_ms`.
    pub fn observe(&mut self, received_ms: i64, newest_ms: i64) {
        let prev = self.prev.replace((received_ms, newest_ms));
        if !prev.is_some_and(|p| paced(p, received_ms, newest_ms)) {
            return;
        }
        let e = newest_ms.saturating_sub(received_ms);
        let idx = received_ms.div_euclid(BUCKET_MS);
        while self.buckets.front().is_some_and(|(i, _)| *i <= idx - BUCKETS) {
            self.buckets.pop_front();
        }
        match self.buckets.back_mut() {
            Some((i, m)) if *i >= idx => *m = (*m).max(e),
            _ => self.buckets.push_back((idx, e)),
        }
        self.estimate = self.buckets.iter().map(|(_, m)| *m).max();
    }

    /// The estimate in ms (positive: ahead), `None` before the first paced request.
    pub fn estimate_ms(&self) -> Option<i64> {
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000_000;
    const HOUR: i64 = 3_600_000;

    /// A live sender: pushes every `every` ms of its own clock, `offset` ahead, each delivered after `delays[i]`.
    fn live(est: &mut SkewEstimator, start: i64, every: i64, offset: i64, delays: &[i64]) -> i64 {
        let mut true_time = start;
        for d in delays {
            est.observe(true_time + d, true_time + offset);
            true_time += every;
        }
        true_time
    }

    #[test]
    fn a_clock_ahead_shows_in_full_after_two_requests() {
        let mut e = SkewEstimator::default();
        e.observe(T0, T0 + 3 * HOUR);
        assert_eq!(e.estimate_ms(), None, "one request has no pace");
        e.observe(T0 + 15_000 + 20, T0 + 3 * HOUR + 15_000);
        assert_eq!(e.estimate_ms(), Some(3 * HOUR - 20));
    }

    #[test]
    fn a_replay_after_an_outage_leaves_the_estimate() {
        let mut e = SkewEstimator::default();
        let t = live(&mut e, T0, 15_000, 0, &[5, 7, 3, 9]);
        assert_eq!(e.estimate_ms(), Some(-3));
        // Three hours of partition, then the spool's 720 records back to back, 2 ms apart.
        let back = t + 3 * HOUR;
        for k in 0..720 {
            e.observe(back + 2 * k, t + k * 15_000);
        }
        assert_eq!(e.estimate_ms(), Some(-3), "a replay is not skew");
        // Live again (the first live request follows the replay too closely to be
        // paced): the window has moved on, the estimate follows the live requests.
        live(&mut e, back + 2_000, 15_000, 0, &[4, 6, 5]);
        assert_eq!(e.estimate_ms(), Some(-5));
    }

    #[test]
    fn a_replay_into_a_fresh_collector_shows_nothing() {
        let mut e = SkewEstimator::default();
        for k in 0..100 {
            e.observe(T0 + k, T0 - 2 * HOUR + k * 15_000);
        }
        assert_eq!(e.estimate_ms(), None);
    }

    #[test]
    fn a_clock_behind_shows_once_live() {
        let mut e = SkewEstimator::default();
        live(&mut e, T0, 10_000, -2 * HOUR, &[1, 1, 1]);
        assert_eq!(e.estimate_ms(), Some(-2 * HOUR - 1));
    }

    #[test]
    fn the_window_forgets_an_old_maximum() {
        let mut e = SkewEstimator::default();
        let t = live(&mut e, T0, 15_000, 60_000, &[0, 0]);
        assert_eq!(e.estimate_ms(), Some(60_000));
        // The sender's clock is corrected: its samples jump back a minute, then go on.
        let t = live(&mut e, t, 15_000, 0, &vec![0; 80]);
        assert_eq!(e.estimate_ms(), Some(0), "{t}");
    }

    proptest! {
        /// Whatever the delays, the estimate never claims more than the true offset, and a
        /// live sender is estimated within its largest delay.
        #[test]
        fn live_senders_are_bounded_by_their_delays(
            offset in -10 * HOUR..10 * HOUR,
            every in 1_000i64..60_000,
            delays in proptest::collection::vec(0i64..500, 2..60),
        ) {
            let mut e = SkewEstimator::default();
            live(&mut e, T0, every, offset, &delays);
            let est = e.estimate_ms().expect("paced requests");
            prop_assert!(est <= offset);
            prop_assert!(est >= offset - delays.iter().max().copied().unwrap_or(0));
        }

        /// Any delivery (replays, bursts, retries, out of order): never above the true offset.
        #[test]
        fn never_above_the_true_offset(
            offset in -10 * HOUR..10 * HOUR,
            steps in proptest::collection::vec((0i64..120_000, 0i64..4 * HOUR, 0i64..30_000), 1..100),
        ) {
            let mut e = SkewEstimator::default();
            let mut now = T0;
            for (advance, delay, jitter) in steps {
                now += advance;
                // A sample taken `delay` before it arrives (true time), stamped by a clock `offset` ahead.
                e.observe(now, now - delay - jitter + offset);
                if let Some(est) = e.estimate_ms() {
                    prop_assert!(est <= offset);
                }
            }
        }

        /// A replay burst of any length and age after live traffic leaves the estimate unchanged.
        #[test]
        fn replays_do_not_move_the_estimate(
            offset in -HOUR..HOUR,
            outage in 60_000i64..24 * HOUR,
            records in 1i64..2_000,
            gap in 0i64..50,
        ) {
            let per = outage / records;
            // A replay sends faster than its samples were taken.
            prop_assume!(per > 2 * gap);
            let mut e = SkewEstimator::default();
            let t = live(&mut e, T0, 15_000, offset, &[3, 2, 8]);
            let before = e.estimate_ms();
            prop_assert!(before.is_some());
            let back = t + outage;
            for k in 0..records {
                // Spooled at the sender's pace during the outage, sent `gap` ms apart now.
                e.observe(back + gap * k, t + offset + per * k);
            }
            prop_assert_eq!(e.estimate_ms(), before);
        }
    }
}
