//! Host power estimation for machines with no power sensor (method `model`).
//!
//! Two models, both pure functions of CPU utilisation `u` in `[0, 1]`:
//! - `linear` (default): `P = idle + (max − idle) × u`, the Cloud Carbon
//!   Footprint method. Default `idle`/`max` are CCF's per-hardware-thread
//!   SPECpower coefficients for the CPU's micro-architecture × the thread count
//!   (cloud-carbon-footprint `packages/aws|gcp|azure` coefficients,
//!   `cloud-carbon-coefficients/coefficients.ipynb`; see docs/estimation.md).
//! - `boavizta`: BoaviztAPI's CPU curve `P_cpu = a·ln(b·(100u + c)) + d` per
//!   socket (clamped ≥ 1 W), plus 0.284 W/GB of RAM, × (1 + 0.33) for the rest
//!   of the server (boaviztapi `consumption_profile.py`, `server.py`,
//!   `data/consumption_profile/cpu/cpu_profile.csv`).
//!
//! Every figure from here is exported with `quality="estimated"`.

use crate::config::{Estimation, ModelKind};

/// A CPU class with CCF's per-thread SPECpower coefficients (watts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuClass {
    pub name: &'static str,
    pub idle_w_per_thread: f64,
    pub max_w_per_thread: f64,
}

const fn class(name: &'static str, idle: f64, max: f64) -> CpuClass {
    CpuClass { name, idle_w_per_thread: idle, max_w_per_thread: max }
}

/// CCF coefficients (min/max watts per vCPU = hardware thread).
pub const CASCADE_LAKE: CpuClass = class("Cascade Lake", 0.64, 3.97);
pub const SKYLAKE: CpuClass = class("Skylake", 0.65, 4.26);
pub const BROADWELL: CpuClass = class("Broadwell", 0.71, 3.69);
pub const HASWELL: CpuClass = class("Haswell", 1.00, 4.74);
pub const COFFEE_LAKE: CpuClass = class("Coffee Lake", 1.14, 5.42);
pub const SANDY_BRIDGE: CpuClass = class("Sandy Bridge", 2.17, 8.58);
pub const IVY_BRIDGE: CpuClass = class("Ivy Bridge", 3.04, 8.25);
pub const EPYC_GEN1: CpuClass = class("AMD EPYC 1st Gen", 0.82, 2.55);
pub const EPYC_GEN2: CpuClass = class("AMD EPYC 2nd Gen", 0.47, 1.69);
pub const EPYC_GEN3: CpuClass = class("AMD EPYC 3rd Gen", 0.45, 2.02);
/// CCF's AWS average, for CPUs it has no coefficient for.
pub const AVERAGE: CpuClass = class("average (unknown micro-architecture)", 0.74, 3.5);

/// Picks the CPU class from `/proc/cpuinfo`'s `model name`.
pub fn classify_cpu(model: &str) -> CpuClass {
    let m = model.to_ascii_lowercase();
    // Virtual CPUs name the micro-architecture: "Intel Xeon Processor (Cascadelake)".
    for (key, c) in [
        ("cascadelake", CASCADE_LAKE),
        ("skylake", SKYLAKE),
        ("broadwell", BROADWELL),
        ("haswell", HASWELL),
        ("ivybridge", IVY_BRIDGE),
        ("sandybridge", SANDY_BRIDGE),
    ] {
        if m.contains(&format!("({key}")) {
            return c;
        }
    }
    let model_number = m.split_whitespace().find(|w| w.len() == 4 && w.chars().all(|c| c.is_ascii_digit()));
    if m.contains("epyc") {
        return match model_number.map(|n| (n.as_bytes()[0], n.as_bytes()[3])) {
            Some((b'7', b'1')) => EPYC_GEN1,
            Some((b'7', b'2')) => EPYC_GEN2,
            Some((b'7', b'3')) => EPYC_GEN3,
            _ => AVERAGE,
        };
    }
    if ["platinum", "gold", "silver", "bronze"].iter().any(|t| m.contains(t)) {
        // Xeon Scalable: the second digit is the generation (61xx Skylake, 62xx Cascade Lake).
        return match model_number.map(|n| n.as_bytes()[1]) {
            Some(b'1') => SKYLAKE,
            Some(b'2') => CASCADE_LAKE,
            _ => AVERAGE,
        };
    }
    if m.contains(" e5-") || m.contains(" e7-") {
        return if m.contains(" v4") {
            BROADWELL
        } else if m.contains(" v3") {
            HASWELL
        } else if m.contains(" v2") {
            IVY_BRIDGE
        } else {
            SANDY_BRIDGE
        };
    }
    if m.contains(" e-21") || m.contains(" e-22") {
        return COFFEE_LAKE;
    }
    AVERAGE
}

/// BoaviztAPI CPU curve parameters for one model range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoaviztaCurve {
    pub range: &'static str,
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub d: f64,
}

pub const XEON_PLATINUM: BoaviztaCurve =
    BoaviztaCurve { range: "Xeon Platinum", a: 171.1813, b: 0.0354, c: 36.8953, d: -10.1336 };
pub const XEON_GOLD: BoaviztaCurve = BoaviztaCurve { range: "Xeon Gold", a: 35.5688, b: 0.2438, c: 9.6694, d: -0.6087 };
pub const XEON_SILVER: BoaviztaCurve =
    BoaviztaCurve { range: "Xeon Silver", a: 20.7794, b: 0.3043, c: 8.4241, d: 0.8613 };
pub const XEON_E5: BoaviztaCurve = BoaviztaCurve { range: "Xeon E5", a: 48.9167, b: 0.1349, c: 15.7262, d: -4.654 };
pub const XEON_E3: BoaviztaCurve = BoaviztaCurve { range: "Xeon E3", a: 342.3624, b: 0.0347, c: 36.8952, d: -16.4022 };

/// BoaviztAPI's default range is Xeon Platinum.
pub fn boavizta_curve(model: &str) -> BoaviztaCurve {
    let m = model.to_ascii_lowercase();
    if m.contains("gold") {
        XEON_GOLD
    } else if m.contains("silver") || m.contains("bronze") {
        XEON_SILVER
    } else if m.contains(" e5-") {
        XEON_E5
    } else if m.contains(" e3-") {
        XEON_E3
    } else {
        XEON_PLATINUM
    }
}

impl BoaviztaCurve {
    /// Watts of one CPU at utilisation `u` in `[0, 1]`.
    pub fn cpu_watts(&self, u: f64) -> f64 {
        let load = 100.0 * u.clamp(0.0, 1.0);
        (self.a * (self.b * (load + self.c)).ln() + self.d).max(1.0)
    }
}

/// BoaviztAPI's RAM power, watts per GB.
pub const BOAVIZTA_RAM_W_PER_GB: f64 = 0.284;
/// BoaviztAPI's `other_consumption_ratio` default (server.py).
pub const BOAVIZTA_OTHER_RATIO: f64 = 0.33;

/// A ready-to-evaluate power model.
#[derive(Debug, Clone, PartialEq)]
pub enum PowerModel {
    Linear { idle_watts: f64, max_watts: f64 },
    Boavizta { curve: BoaviztaCurve, sockets: u32, ram_gb: f64 },
}

impl PowerModel {
    /// Builds the model from the config and the host inventory.
    pub fn new(cfg: &Estimation, cpu_model: &str, sockets: u32, threads: u32, memory_bytes: u64) -> Self {
        match cfg.model {
            ModelKind::Linear => {
                let c = classify_cpu(cpu_model);
                let threads = f64::from(threads.max(1));
                PowerModel::Linear {
                    idle_watts: cfg.idle_watts.unwrap_or(c.idle_w_per_thread * threads),
                    max_watts: cfg.max_watts.unwrap_or(c.max_w_per_thread * threads),
                }
            }
            ModelKind::Boavizta => PowerModel::Boavizta {
                curve: boavizta_curve(cpu_model),
                sockets: sockets.max(1),
                ram_gb: memory_bytes as f64 / 1e9,
            },
        }
    }

    /// Host watts at CPU utilisation `u` (clamped to `[0, 1]`).
    pub fn watts(&self, u: f64) -> f64 {
        let u = if u.is_finite() { u.clamp(0.0, 1.0) } else { 0.0 };
        match self {
            PowerModel::Linear { idle_watts, max_watts } => idle_watts + (max_watts - idle_watts) * u,
            PowerModel::Boavizta { curve, sockets, ram_gb } => {
                (f64::from(*sockets) * curve.cpu_watts(u) + ram_gb * BOAVIZTA_RAM_W_PER_GB)
                    * (1.0 + BOAVIZTA_OTHER_RATIO)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_classes_from_model_names() {
        assert_eq!(classify_cpu("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"), CASCADE_LAKE);
        assert_eq!(classify_cpu("Intel(R) Xeon(R) Platinum 8180 CPU @ 2.50GHz"), SKYLAKE);
        assert_eq!(classify_cpu("Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz"), CASCADE_LAKE);
        assert_eq!(classify_cpu("AMD EPYC 7763 64-Core Processor"), EPYC_GEN3);
        assert_eq!(classify_cpu("AMD EPYC 7502P 32-Core Processor"), AVERAGE); // "7502P" is not 4 digits
        assert_eq!(classify_cpu("AMD EPYC 7402 24-Core Processor"), EPYC_GEN2);
        assert_eq!(classify_cpu("Intel Xeon Processor (Cascadelake)"), CASCADE_LAKE);
        assert_eq!(classify_cpu("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"), BROADWELL);
        assert_eq!(classify_cpu("Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz"), SANDY_BRIDGE);
        assert_eq!(classify_cpu("ARMv8 Neoverse-N1"), AVERAGE);
    }

    #[test]
    fn boavizta_curve_matches_the_reference_values() {
        // P@0/10/50/100 % from BoaviztAPI's cpu_profile.csv parameters.
        for (u, w) in [(0.0, 35.6), (0.1, 76.6), (0.5, 182.2), (1.0, 260.0)] {
            assert!((XEON_PLATINUM.cpu_watts(u) - w).abs() < 0.1, "{u}: {}", XEON_PLATINUM.cpu_watts(u));
        }
        assert!((XEON_GOLD.cpu_watts(1.0) - 116.3).abs() < 0.1);
        assert!((XEON_SILVER.cpu_watts(0.0) - 20.4).abs() < 0.1);
    }

    #[test]
    fn boavizta_server_archetype() {
        // BoaviztAPI platform_compute_medium: 2 × Platinum at 50 %, 256 GB → ≈ 581 W.
        let m = PowerModel::Boavizta { curve: XEON_PLATINUM, sockets: 2, ram_gb: 256.0 };
        assert!((m.watts(0.5) - 581.3).abs() < 1.0, "{}", m.watts(0.5));
    }

    #[test]
    fn linear_defaults_scale_with_threads() {
        let cfg = Estimation { model: ModelKind::Linear, idle_watts: None, max_watts: None, rapl_uplift: 1.33 };
        let m = PowerModel::new(&cfg, "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", 2, 80, 0);
        assert_eq!(m, PowerModel::Linear { idle_watts: 0.64 * 80.0, max_watts: 3.97 * 80.0 });
        let cfg = Estimation { idle_watts: Some(110.0), max_watts: Some(420.0), ..cfg };
        assert_eq!(PowerModel::new(&cfg, "x", 1, 1, 0).watts(0.5), 265.0);
    }

    proptest! {
        /// Both models are monotonic in utilisation and bounded by their ends.
        #[test]
        fn models_are_monotonic(u1 in 0.0f64..=1.0, u2 in 0.0f64..=1.0, idle in 0.0f64..500.0, span in 0.0f64..1000.0) {
            let (lo, hi) = if u1 <= u2 { (u1, u2) } else { (u2, u1) };
            let lin = PowerModel::Linear { idle_watts: idle, max_watts: idle + span };
            prop_assert!(lin.watts(lo) <= lin.watts(hi) + 1e-9);
            prop_assert!(lin.watts(lo) >= idle - 1e-9 && lin.watts(hi) <= idle + span + 1e-9);
            for curve in [XEON_PLATINUM, XEON_GOLD, XEON_SILVER, XEON_E5, XEON_E3] {
                let b = PowerModel::Boavizta { curve, sockets: 2, ram_gb: 64.0 };
                prop_assert!(b.watts(lo) <= b.watts(hi) + 1e-9);
                prop_assert!(b.watts(lo) > 0.0);
            }
        }

        #[test]
        fn out_of_range_utilisation_is_clamped(u in proptest::num::f64::ANY) {
            let lin = PowerModel::Linear { idle_watts: 100.0, max_watts: 300.0 };
            let w = lin.watts(u);
            prop_assert!((100.0..=300.0).contains(&w));
        }
    }
}
