//! The energy arithmetic, as small pure functions: counter wrap and reset
//! correction, wrap-corrected accumulation, and trapezoid integration of power.

/// Increase of a counter between two raw reads.
///
/// `cur ≥ prev`: `cur − prev`. Otherwise the counter wrapped at `max_range`
/// (RAPL's `max_energy_range_uj`): `(max_range − prev) + cur`. With no known
/// range (`None`, hwmon energy) or a `prev` beyond the range, a drop is a reset
/// and the new value counts from zero.
pub fn counter_delta(prev: u64, cur: u64, max_range: Option<u64>) -> u64 {
    if cur >= prev {
        return cur - prev;
    }
    match max_range {
        Some(max) if prev <= max => (max - prev).saturating_add(cur),
        _ => cur,
    }
}

/// A monotonic accumulator over a raw counter: starts at the first raw value and
/// adds wrap-corrected increments, in integer microjoules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accumulator {
    total: u128,
    last_raw: Option<u64>,
    /// The last reading was lower than the one before it (a wrap or a reset).
    dropped: bool,
}

impl Accumulator {
    /// Feeds a raw reading; returns the increment since the previous one
    /// (`None` on the first reading, which is the baseline).
    pub fn update(&mut self, raw: u64, max_range: Option<u64>) -> Option<u64> {
        let delta = match self.last_raw {
            None => {
                self.total = u128::from(raw);
                None
            }
            Some(prev) => {
                self.dropped = raw < prev;
                let d = counter_delta(prev, raw, max_range);
                self.total += u128::from(d);
                Some(d)
            }
        };
        self.last_raw = Some(raw);
        delta
    }

    /// Whether the last reading was lower than the one before it: for a
    /// counter without a known range (hwmon energy), a reset.
    pub fn last_raw_dropped(&self) -> bool {
        self.dropped
    }

    /// Cumulative value in microjoules.
    pub fn total_uj(&self) -> u128 {
        self.total
    }

    pub fn joules(&self) -> f64 {
        uj_to_joules(self.total)
    }
}

/// µJ → J.
pub fn uj_to_joules(uj: u128) -> f64 {
    uj as f64 / 1e6
}

/// µW → W.
pub fn uw_to_watts(uw: u64) -> f64 {
    uw as f64 / 1e6
}

/// m°C → °C.
pub fn millicelsius(m: i64) -> f64 {
    m as f64 / 1000.0
}

/// Energy of a power signal between two readings, by the trapezoid rule over
/// the actual elapsed time.
pub fn trapezoid_joules(p0_watts: f64, p1_watts: f64, dt_seconds: f64) -> f64 {
    (p0_watts + p1_watts) / 2.0 * dt_seconds
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RANGE: u64 = 262_143_328_850;

    #[test]
    fn wrap_and_reset() {
        assert_eq!(counter_delta(100, 250, Some(RANGE)), 150);
        assert_eq!(counter_delta(RANGE - 1_000, 500, Some(RANGE)), 1_500);
        assert_eq!(counter_delta(1_000, 400, None), 400);
        assert_eq!(counter_delta(RANGE + 5, 400, Some(RANGE)), 400);
    }

    #[test]
    fn the_accumulator_says_when_its_counter_dropped() {
        let mut a = Accumulator::default();
        a.update(1_000, None);
        assert!(!a.last_raw_dropped(), "the baseline is no drop");
        a.update(2_000, None);
        assert!(!a.last_raw_dropped());
        a.update(300, None);
        assert!(a.last_raw_dropped(), "a counter without a range went down: a reset");
        assert_eq!(a.total_uj(), 2_300);
        a.update(400, None);
        assert!(!a.last_raw_dropped());
    }

    #[test]
    fn accumulator_starts_at_the_raw_value() {
        let mut a = Accumulator::default();
        assert_eq!(a.update(41_785_212_947, Some(RANGE)), None);
        assert_eq!(a.total_uj(), 41_785_212_947);
        assert_eq!(a.update(41_785_212_947 + 600_000_000, Some(RANGE)), Some(600_000_000));
        assert_eq!(a.joules(), 42_385.212947);
    }

    proptest! {
        /// Feeding a counter that wraps modulo its range yields exactly the true
        /// energy, whatever the increments (each below one range).
        #[test]
        fn wrap_corrected_total_equals_true_energy(start in 0..RANGE, steps in proptest::collection::vec(0..RANGE, 1..50)) {
            let mut a = Accumulator::default();
            a.update(start, Some(RANGE));
            let mut raw = start as u128;
            let mut truth = start as u128;
            for s in steps {
                raw = (raw + s as u128) % RANGE as u128;
                truth += s as u128;
                a.update(raw as u64, Some(RANGE));
            }
            prop_assert_eq!(a.total_uj(), truth);
        }

        /// The accumulator never decreases.
        #[test]
        fn accumulator_is_monotonic(values in proptest::collection::vec(any::<u64>(), 1..50), range in proptest::option::of(1u64..u64::MAX)) {
            let mut a = Accumulator::default();
            let mut last = 0u128;
            for (i, v) in values.into_iter().enumerate() {
                a.update(v, range);
                if i > 0 { prop_assert!(a.total_uj() >= last); }
                last = a.total_uj();
            }
        }

        /// The trapezoid of a constant power is power × time, and it is symmetric.
        #[test]
        fn trapezoid_properties(p0 in 0.0f64..5000.0, p1 in 0.0f64..5000.0, dt in 0.0f64..3600.0) {
            prop_assert!((trapezoid_joules(p0, p0, dt) - p0 * dt).abs() <= 1e-9 * (1.0 + p0 * dt));
            prop_assert_eq!(trapezoid_joules(p0, p1, dt), trapezoid_joules(p1, p0, dt));
            prop_assert!(trapezoid_joules(p0, p1, dt) >= 0.0);
        }
    }
}
