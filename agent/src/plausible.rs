//! The physical bounds of a reading, for every source: a value that parses but
//! cannot be true of a server (below absolute zero, a fan faster than any fan,
//! a CPU drawing megawatts) is not a reading. Sources pass each temperature,
//! fan speed and power through [`check`] where they parse it, so a refused
//! value never becomes a sample or a host power figure and its sensor is
//! reported down with `reason="implausible"`; the sampler drops any sample that
//! would still be outside the bounds ([`screen`]). The table of bounds and why
//! is in `docs/bmc.md` ("Readings that cannot be true").

use domesday_model::catalog::{FAN, POWER, TEMPERATURE};
use domesday_model::vocab::{Domain, Reason};

use crate::fsread::ReadError;
use crate::sources::Sample;

/// What a reading measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// °C.
    Temperature,
    /// Revolutions per minute.
    FanSpeed,
    /// W, of a zone of this domain.
    Power(Domain),
}

/// The closed interval a reading of a quantity must lie in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    pub min: f64,
    pub max: f64,
    pub unit: &'static str,
}

/// Coldest a server sensor can read, °C: below the coldest air ever measured on
/// Earth (−89.2 °C, Vostok 1983), so also below absolute zero (−273.15 °C); it
/// refuses the −128 °C some BMCs and drivers report for "no sensor".
pub const MIN_CELSIUS: f64 = -100.0;
/// Hottest, °C: above any component's thermal trip (CPUs and GPUs shut down
/// near 100–125 °C) and near the melting point of lead-free solder (217 °C);
/// it refuses the 255 °C of an unset byte.
pub const MAX_CELSIUS: f64 = 200.0;
/// Fastest fan, RPM: server fans top out near 40,000 RPM.
pub const MAX_RPM: f64 = 100_000.0;
/// Most power of one processor-side zone (RAPL package/core/uncore/dram/psys,
/// an SoC), W: today's largest sockets draw about 500 W.
pub const MAX_CPU_WATTS: f64 = 5_000.0;
/// Most power of one accelerator, W: today's largest modules draw 1–3 kW.
pub const MAX_GPU_WATTS: f64 = 10_000.0;
/// Most power of one power supply or power shelf, W: the largest rack power
/// shelves deliver about 33 kW.
pub const MAX_PSU_WATTS: f64 = 100_000.0;
/// Most power of a chassis or anything else a BMC or a sensor reads, W: a
/// whole AI rack draws about 130 kW; a megawatt is a building.
pub const MAX_PLATFORM_WATTS: f64 = 1_000_000.0;

/// The bounds of a quantity. Power is never negative: every zone read here
/// consumes power, none feeds it back.
pub const fn bound(q: Quantity) -> Bound {
    match q {
        Quantity::Temperature => Bound { min: MIN_CELSIUS, max: MAX_CELSIUS, unit: "°C" },
        Quantity::FanSpeed => Bound { min: 0.0, max: MAX_RPM, unit: "RPM" },
        Quantity::Power(d) => {
            let max = match d {
                Domain::Package | Domain::Core | Domain::Uncore | Domain::Dram | Domain::Psys | Domain::Soc => {
                    MAX_CPU_WATTS
                }
                Domain::Gpu => MAX_GPU_WATTS,
                Domain::PsuInput | Domain::PsuOutput => MAX_PSU_WATTS,
                Domain::Platform | Domain::Other => MAX_PLATFORM_WATTS,
            };
            Bound { min: 0.0, max, unit: "W" }
        }
    }
}

/// Whether `v` can be a reading of `q` (finite and within its bounds).
pub fn is_plausible(q: Quantity, v: f64) -> bool {
    let b = bound(q);
    v.is_finite() && v >= b.min && v <= b.max
}

/// `v` if it can be a reading of `q`, else a `reason="implausible"` error
/// naming the value and the bound.
pub fn check(q: Quantity, v: f64) -> Result<f64, ReadError> {
    if is_plausible(q, v) {
        return Ok(v);
    }
    let b = bound(q);
    let what = match q {
        Quantity::Temperature => "temperature".to_string(),
        Quantity::FanSpeed => "fan speed".to_string(),
        Quantity::Power(d) => format!("{d} power"),
    };
    Err(ReadError::new(
        Reason::Implausible,
        format!(
            "a {what} of {v} {} is physically impossible (outside {} to {} {}); not a reading",
            b.unit, b.min, b.max, b.unit
        ),
    ))
}

/// The quantity a sample of the catalog measures, `None` for the families
/// without bounds here (energy counters, ratios, info…).
pub fn quantity_of(s: &Sample) -> Option<Quantity> {
    let name = s.def.name;
    if name == TEMPERATURE.name {
        Some(Quantity::Temperature)
    } else if name == FAN.name {
        Some(Quantity::FanSpeed)
    } else if name == POWER.name {
        let i = POWER.labels.iter().position(|l| *l == "domain")?;
        let d = s.labels.get(i)?;
        Some(Quantity::Power(Domain::ALL.iter().copied().find(|x| x.as_str() == d).unwrap_or(Domain::Other)))
    } else {
        None
    }
}

/// Drops the samples outside their bounds (the last line of defence: sources
/// refuse them where they read them); returns the `source` label of each one
/// dropped.
pub fn screen(samples: &mut Vec<Sample>) -> Vec<String> {
    let mut dropped = Vec::new();
    samples.retain(|s| match quantity_of(s) {
        Some(q) if !is_plausible(q, s.value) => {
            dropped.push(s.labels.first().cloned().unwrap_or_default());
            false
        }
        _ => true,
    });
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds_of_each_quantity() {
        assert_eq!(check(Quantity::Temperature, 23.5), Ok(23.5));
        assert_eq!(check(Quantity::Temperature, -40.0), Ok(-40.0), "a cold aisle in winter can be below 0 °C");
        for v in [-273.16, -300.0, -128.0, 200.5, 255.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = check(Quantity::Temperature, v).expect_err("impossible");
            assert_eq!(e.reason, Reason::Implausible, "{v}");
        }
        assert_eq!(check(Quantity::Temperature, 200.0), Ok(200.0), "the bound itself is a reading");
        assert_eq!(check(Quantity::FanSpeed, 0.0), Ok(0.0), "a stopped fan is a reading");
        assert_eq!(check(Quantity::FanSpeed, 38_000.0), Ok(38_000.0));
        assert!(check(Quantity::FanSpeed, -1.0).is_err() && check(Quantity::FanSpeed, 150_000.0).is_err());
        assert_eq!(check(Quantity::Power(Domain::Platform), 0.0), Ok(0.0), "0 W is a reading");
        assert_eq!(check(Quantity::Power(Domain::Platform), 130_000.0), Ok(130_000.0), "an AI rack's chassis");
        assert!(check(Quantity::Power(Domain::Platform), 2e6).is_err());
        assert!(check(Quantity::Power(Domain::Platform), -5.0).is_err(), "no zone feeds power back");
        assert!(check(Quantity::Power(Domain::Package), 6_000.0).is_err());
        assert_eq!(check(Quantity::Power(Domain::PsuInput), 6_000.0), Ok(6_000.0));
        assert!(check(Quantity::Power(Domain::Gpu), 12_000.0).is_err());
        let e = check(Quantity::Power(Domain::PsuInput), 5e9).expect_err("absurd");
        assert!(e.detail.contains("psu_input power") && e.detail.contains("100000 W"), "{e}");
    }

    #[test]
    fn screen_drops_only_impossible_bounded_samples() {
        use domesday_model::catalog::{ENERGY, FAN, POWER, TEMPERATURE};
        let t =
            |v: f64| Sample::new(&TEMPERATURE, vec!["ipmi".into(), "bmc".into(), "T".into(), "".into(), "".into()], v);
        let p = |d: &str, v: f64| Sample::new(&POWER, vec!["hwmon".into(), "z".into(), d.into(), "".into()], v);
        let mut s = vec![
            t(25.0),
            t(-300.0),
            p("package", 200.0),
            p("package", 9_000.0),
            p("platform", 9_000.0),
            Sample::new(&FAN, vec!["redfish".into(), "bmc".into(), "F".into(), "".into()], 1e6),
            Sample::new(&ENERGY, vec!["rapl".into(), "z".into(), "package".into(), "".into()], 1e12),
        ];
        assert_eq!(screen(&mut s), vec!["ipmi".to_string(), "hwmon".into(), "redfish".into()]);
        let kept: Vec<f64> = s.iter().map(|x| x.value).collect();
        assert_eq!(kept, vec![25.0, 200.0, 9_000.0, 1e12], "energy counters are not bounded here");
    }

    fn quantities() -> impl Strategy<Value = Quantity> {
        prop_oneof![
            Just(Quantity::Temperature),
            Just(Quantity::FanSpeed),
            proptest::sample::select(Domain::ALL.to_vec()).prop_map(Quantity::Power),
        ]
    }

    proptest! {
        #[test]
        fn check_accepts_exactly_the_closed_interval(q in quantities(), v in proptest::num::f64::ANY) {
            let b = bound(q);
            let inside = v.is_finite() && v >= b.min && v <= b.max;
            match check(q, v) {
                Ok(x) => prop_assert!(inside && x.to_bits() == v.to_bits()),
                Err(e) => prop_assert!(!inside && e.reason == Reason::Implausible),
            }
        }

        #[test]
        fn bounds_are_ordered_and_refuse_below_absolute_zero(q in quantities(), v in -1e300f64..-273.15f64) {
            let b = bound(q);
            prop_assert!(b.min < b.max && b.min >= -273.15 && b.max.is_finite());
            prop_assert!(check(q, v).is_err());
        }
    }
}
