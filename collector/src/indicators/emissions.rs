//! Time-matched emissions: Σᵢ (energy of interval i × intensity of interval i).
//!
//! Grid intensity varies by the quarter-hour (RTE éCO2mix) or the hour
//! (Electricity Maps); multiplying a period's energy by the period's mean
//! intensity is wrong whenever consumption and intensity co-vary. Each energy
//! interval (booked evenly over its span, as the ledger spreads it) is split
//! at the intensity series' boundaries and each piece is multiplied by the
//! intensity in force over it. Parts of an interval that no intensity point
//! covers take the fallback intensity, and the result says so.

use crate::carbon::IntensityPoint;

/// Energy of one interval `[start_ms, end_ms)`, spread evenly over it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyInterval {
    pub start_ms: i64,
    pub end_ms: i64,
    pub kwh: f64,
}

/// Emissions of a series.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Emissions {
    /// gCO2e.
    pub grams: f64,
    /// kWh the grams were computed over (the series' total).
    pub kwh: f64,
    /// kWh multiplied by a fallback intensity (a gap in the live series, or a
    /// point the source itself marked as fallback).
    pub fallback_kwh: f64,
    pub fallback_used: bool,
}

impl Emissions {
    /// Mean intensity weighted by energy, g/kWh (`None` without energy).
    pub fn mean_g_per_kwh(&self) -> Option<f64> {
        (self.kwh > 0.0).then(|| self.grams / self.kwh)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EmissionsError {
    #[error("interval [{start_ms}, {end_ms}) is empty, reversed or out of order")]
    BadInterval { start_ms: i64, end_ms: i64 },
    #[error("no intensity covers [{start_ms}, {end_ms}) and no fallback intensity is configured")]
    NoIntensity { start_ms: i64, end_ms: i64 },
    #[error("intensity {g_per_kwh} at {start_ms} is not a finite non-negative number")]
    BadIntensity { start_ms: i64, g_per_kwh: f64 },
}

fn check_sorted(spans: impl Iterator<Item = (i64, i64)>) -> Result<(), EmissionsError> {
    let mut prev_end = i64::MIN;
    for (s, e) in spans {
        if e <= s || s < prev_end {
            return Err(EmissionsError::BadInterval { start_ms: s, end_ms: e });
        }
        prev_end = e;
    }
    Ok(())
}

/// Σ energyᵢ × intensityᵢ. Both series sorted by time, intervals half-open
/// and non-overlapping; they need not share boundaries (an hourly energy
/// series against a 15-minute intensity series). Energy in a part of an
/// interval that no intensity covers is charged at `fallback_g_per_kwh`, or
/// the computation fails when there is none.
pub fn time_matched(
    energy: &[EnergyInterval],
    intensity: &[IntensityPoint],
    fallback_g_per_kwh: Option<f64>,
) -> Result<Emissions, EmissionsError> {
    check_sorted(energy.iter().map(|e| (e.start_ms, e.end_ms)))?;
    check_sorted(intensity.iter().map(|p| (p.start_ms, p.end_ms)))?;
    if let Some(p) = intensity.iter().find(|p| !(p.g_per_kwh.is_finite() && p.g_per_kwh >= 0.0)) {
        return Err(EmissionsError::BadIntensity { start_ms: p.start_ms, g_per_kwh: p.g_per_kwh });
    }
    let mut out = Emissions::default();
    let mut j = 0usize;
    for e in energy {
        let len = (e.end_ms - e.start_ms) as f64;
        let mut charge = |from: i64, to: i64, g: Option<(f64, bool)>| -> Result<(), EmissionsError> {
            if to <= from {
                return Ok(());
            }
            let kwh = e.kwh * (to - from) as f64 / len;
            let (g, fb) = match g {
                Some(x) => x,
                None => match fallback_g_per_kwh {
                    Some(f) => (f, true),
                    None => return Err(EmissionsError::NoIntensity { start_ms: from, end_ms: to }),
                },
            };
            out.grams += kwh * g;
            out.kwh += kwh;
            if fb {
                out.fallback_kwh += kwh;
                out.fallback_used = true;
            }
            Ok(())
        };
        while j < intensity.len() && intensity[j].end_ms <= e.start_ms {
            j += 1;
        }
        let mut cursor = e.start_ms;
        let mut k = j;
        while k < intensity.len() && intensity[k].start_ms < e.end_ms {
            let p = &intensity[k];
            let s = p.start_ms.max(e.start_ms);
            let t = p.end_ms.min(e.end_ms);
            charge(cursor, s, None)?;
            charge(s, t, Some((p.g_per_kwh, p.fallback)))?;
            cursor = t;
            k += 1;
        }
        charge(cursor, e.end_ms, None)?;
    }
    Ok(out)
}

/// The naive (wrong) figure: total energy × the unweighted mean of the
/// intensities. Kept for tests and to show users the difference.
pub fn flat_average(energy: &[EnergyInterval], intensity: &[IntensityPoint]) -> Option<f64> {
    if intensity.is_empty() {
        return None;
    }
    let mean = intensity.iter().map(|p| p.g_per_kwh).sum::<f64>() / intensity.len() as f64;
    Some(energy.iter().map(|e| e.kwh).sum::<f64>() * mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3_600_000;

    fn point(i: i64, g: f64) -> IntensityPoint {
        IntensityPoint { start_ms: i * H, end_ms: (i + 1) * H, g_per_kwh: g, fallback: false }
    }

    fn hour(i: i64, kwh: f64) -> EnergyInterval {
        EnergyInterval { start_ms: i * H, end_ms: (i + 1) * H, kwh }
    }

    /// Consumption peaks when the grid is dirty: the flat average understates.
    #[test]
    fn time_matching_differs_from_the_flat_average() {
        let energy = [hour(0, 100.0), hour(1, 10.0)];
        let intensity = [point(0, 400.0), point(1, 20.0)];
        let e = time_matched(&energy, &intensity, None).expect("covered");
        assert_eq!(e.grams, 100.0 * 400.0 + 10.0 * 20.0);
        assert_eq!(e.kwh, 110.0);
        assert!(!e.fallback_used);
        let flat = flat_average(&energy, &intensity).expect("points");
        assert_eq!(flat, 110.0 * 210.0);
        assert!((e.grams - flat).abs() > 10_000.0, "time-matched {} vs flat {}", e.grams, flat);
    }

    /// An hourly energy interval against quarter-hour intensities.
    #[test]
    fn finer_intensity_splits_the_interval() {
        let q = H / 4;
        let intensity: Vec<IntensityPoint> = (0..4)
            .map(|i| IntensityPoint {
                start_ms: i * q,
                end_ms: (i + 1) * q,
                g_per_kwh: 10.0 * (i + 1) as f64,
                fallback: false,
            })
            .collect();
        let e = time_matched(&[hour(0, 4.0)], &intensity, None).expect("covered");
        assert_eq!(e.grams, 10.0 + 20.0 + 30.0 + 40.0);
    }

    #[test]
    fn gaps_take_the_fallback_or_fail() {
        let energy = [hour(0, 10.0), hour(1, 10.0), hour(2, 10.0)];
        let intensity = [point(0, 50.0), point(2, 70.0)];
        let e = time_matched(&energy, &intensity, Some(30.0)).expect("fallback");
        assert_eq!(e.grams, 500.0 + 300.0 + 700.0);
        assert_eq!(e.fallback_kwh, 10.0);
        assert!(e.fallback_used);
        assert_eq!(
            time_matched(&energy, &intensity, None),
            Err(EmissionsError::NoIntensity { start_ms: H, end_ms: 2 * H })
        );
        // A point the source flagged as fallback counts as fallback.
        let flagged = [IntensityPoint { fallback: true, ..point(0, 50.0) }];
        assert!(time_matched(&[hour(0, 1.0)], &flagged, None).expect("covered").fallback_used);
    }

    #[test]
    fn disorder_and_bad_values_are_errors() {
        assert!(time_matched(&[hour(1, 1.0), hour(0, 1.0)], &[], Some(1.0)).is_err());
        assert!(time_matched(&[hour(0, 1.0)], &[point(0, f64::NAN)], None).is_err());
        assert!(time_matched(&[hour(0, 1.0)], &[point(1, 1.0), point(0, 1.0)], None).is_err());
    }

    proptest! {
        /// Emissions are additive: splitting the energy series at any instant
        /// (the straddling interval split pro rata) and adding the two halves'
        /// emissions gives the whole's.
        #[test]
        fn emissions_are_additive_over_splits(
            kwh in proptest::collection::vec(0.0f64..1e6, 1..48),
            g in proptest::collection::vec(0.0f64..900.0, 1..200),
            cut_frac in 0.0f64..1.0,
        ) {
            let q = H / 4;
            let energy: Vec<EnergyInterval> = kwh.iter().enumerate().map(|(i, k)| hour(i as i64, *k)).collect();
            let intensity: Vec<IntensityPoint> = g.iter().enumerate()
                .map(|(i, g)| IntensityPoint { start_ms: i as i64 * q, end_ms: (i as i64 + 1) * q, g_per_kwh: *g, fallback: false })
                .collect();
            let end = energy.last().map(|e| e.end_ms).unwrap_or(0);
            let cut = (end as f64 * cut_frac) as i64;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for e in &energy {
                if e.end_ms <= cut { a.push(*e) }
                else if e.start_ms >= cut { b.push(*e) }
                else {
                    let f = (cut - e.start_ms) as f64 / (e.end_ms - e.start_ms) as f64;
                    a.push(EnergyInterval { end_ms: cut, kwh: e.kwh * f, ..*e });
                    b.push(EnergyInterval { start_ms: cut, kwh: e.kwh * (1.0 - f), ..*e });
                }
            }
            let whole = time_matched(&energy, &intensity, Some(55.0)).expect("fallback");
            let ea = time_matched(&a, &intensity, Some(55.0)).expect("fallback");
            let eb = time_matched(&b, &intensity, Some(55.0)).expect("fallback");
            let tol = 1e-9 * whole.grams.max(1.0);
            prop_assert!((whole.grams - (ea.grams + eb.grams)).abs() <= tol, "{} vs {}", whole.grams, ea.grams + eb.grams);
            prop_assert!((whole.kwh - kwh.iter().sum::<f64>()).abs() <= 1e-9 * whole.kwh.max(1.0));
        }

        /// A constant intensity gives energy × intensity, whatever the series.
        #[test]
        fn constant_intensity_is_a_product(kwh in proptest::collection::vec(0.0f64..1e6, 1..48), g in 0.0f64..900.0) {
            let energy: Vec<EnergyInterval> = kwh.iter().enumerate().map(|(i, k)| hour(i as i64, *k)).collect();
            let intensity = [IntensityPoint { start_ms: 0, end_ms: 48 * H, g_per_kwh: g, fallback: false }];
            let e = time_matched(&energy, &intensity, None).expect("covered");
            let total: f64 = kwh.iter().sum();
            prop_assert!((e.grams - total * g).abs() <= 1e-9 * (total * g).max(1.0));
        }
    }
}
