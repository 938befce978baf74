//! Indicative EU classes A–G of PUE and WUE (Commission Delegated Regulation
//! C(2026) 3472, Annex I, Tables 1 and 2), as pure functions of the
//! unrounded value. Each class is a half-open interval: the lower bound is
//! excluded and the upper bound included (`1.15 < PUE ≤ 1.25` is B), as the
//! tables print them. The classes are indicative only: the European database
//! assigns the real one.

/// Upper bounds (inclusive) of classes A–F; above the last is G.
pub const PUE_BOUNDS: [f64; 6] = [1.15, 1.25, 1.35, 1.5, 1.7, 1.9];
/// WUE upper bounds, L/kWh (= m³/MWh, the unit of WIN / EIT with EIT in MWh).
pub const WUE_BOUNDS: [f64; 6] = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0];

const CLASSES: [char; 7] = ['A', 'B', 'C', 'D', 'E', 'F', 'G'];

fn class(bounds: &[f64; 6], v: f64) -> Option<char> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
    CLASSES.get(i).copied()
}

/// The indicative PUE class, `None` for a value that is not a number.
pub fn pue_class(pue: f64) -> Option<char> {
    class(&PUE_BOUNDS, pue)
}

/// The indicative WUE class (WUE in L/kWh).
pub fn wue_class(wue: f64) -> Option<char> {
    class(&WUE_BOUNDS, wue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The boundary vectors: each printed bound is in the better class.
    #[test]
    fn boundaries_belong_to_the_lower_class() {
        let pue =
            [(1.0, 'A'), (1.15, 'A'), (1.25, 'B'), (1.35, 'C'), (1.5, 'D'), (1.7, 'E'), (1.9, 'F'), (1.9000001, 'G')];
        for (v, c) in pue {
            assert_eq!(pue_class(v), Some(c), "PUE {v}");
        }
        assert_eq!(pue_class(1.1500000000000001), Some('B'));
        let wue =
            [(0.0, 'A'), (0.1, 'A'), (0.2, 'B'), (0.4, 'C'), (0.6, 'D'), (0.8, 'E'), (1.0, 'F'), (1.0000001, 'G')];
        for (v, c) in wue {
            assert_eq!(wue_class(v), Some(c), "WUE {v}");
        }
        // The reference vector: EDC 10 GWh, EIT 8 GWh → PUE 1.25 (B); WIN 12,000 m³ → WUE 1.5 (G).
        assert_eq!(pue_class(10_000_000.0 / 8_000_000.0), Some('B'));
        assert_eq!(wue_class(12_000.0 * 1000.0 / 8_000_000.0), Some('G'));
        assert_eq!(pue_class(f64::NAN), None);
        assert_eq!(wue_class(f64::INFINITY), None);
    }

    proptest! {
        /// A better (lower) value never gets a worse class.
        #[test]
        fn classes_are_monotonic(a in 0.0f64..5.0, b in 0.0f64..5.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(pue_class(lo) <= pue_class(hi));
            prop_assert!(wue_class(lo) <= wue_class(hi));
        }
    }
}
