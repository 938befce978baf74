//! Embodied (manufacturing) emissions of hosts: a small shipped table of
//! footprints per host class, and their linear amortisation over the
//! hardware's lifetime (SCI, ISO/IEC 21031: M = TE × TiR / EL).
//!
//! Embodied emissions are reported beside operational ones, never inside CUE:
//! ISO/IEC 30134-8 CUE covers the use phase only. Nothing in
//! [`crate::indicators`] takes these figures.

use serde::Serialize;

/// Default lifetime, hours: 4 years (35,040 h), BoaviztAPI's default server
/// lifetime and the EL of Cloud Carbon Footprint's embodied model.
pub const DEFAULT_LIFETIME_HOURS: f64 = 35_040.0;

const MS_PER_HOUR: f64 = 3_600_000.0;

/// The manufacturing footprint of a host class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Footprint {
    pub class: &'static str,
    /// kgCO2e (GWP), manufacturing; no use phase, no end of life.
    pub kg_co2e: f64,
    pub lifetime_hours: f64,
    pub source: &'static str,
}

/// The shipped table.
pub const FOOTPRINTS: &[Footprint] = &[
    Footprint {
        class: "dell_r740",
        kg_co2e: 967.9,
        lifetime_hours: DEFAULT_LIFETIME_HOURS,
        source: "BoaviztAPI bottom-up model (tests/api/test_server.py): Dell R740, 2 CPU × 24 cores, 12 × 32 GB RAM, \
                 1 × 400 GB SSD, 2 PSU of 2.99 kg",
    },
    Footprint {
        class: "rack_server",
        kg_co2e: 1000.0,
        lifetime_hours: DEFAULT_LIFETIME_HOURS,
        source: "Teads model as used by Cloud Carbon Footprint (cloud-carbon-coefficients): base mono-socket rack server",
    },
];

/// The footprint of `class`.
pub fn footprint(class: &str) -> Option<&'static Footprint> {
    FOOTPRINTS.iter().find(|f| f.class == class)
}

/// Teads model (via Cloud Carbon Footprint): 1,000 kg base mono-socket rack
/// server + 100 kg per extra CPU + 50 kg per HDD + 100 kg per SSD + 150 kg per GPU.
pub fn teads_rack_server_kg(extra_cpus: u32, hdds: u32, ssds: u32, gpus: u32) -> f64 {
    1000.0 + 100.0 * f64::from(extra_cpus) + 50.0 * f64::from(hdds) + 100.0 * f64::from(ssds) + 150.0 * f64::from(gpus)
}

/// kgCO2e of `kg_co2e` amortised linearly over `lifetime_hours` from
/// `in_service_ms`, that fall in `[from_ms, to_ms)`. Nothing before service
/// or after the lifetime; additive over any split of the range.
pub fn amortised_kg(kg_co2e: f64, lifetime_hours: f64, in_service_ms: i64, from_ms: i64, to_ms: i64) -> f64 {
    if !(lifetime_hours > 0.0 && kg_co2e.is_finite()) {
        return 0.0;
    }
    let life_ms = lifetime_hours * MS_PER_HOUR;
    let end = in_service_ms as f64 + life_ms;
    let a = (from_ms as f64).max(in_service_ms as f64);
    let b = (to_ms as f64).min(end);
    if b <= a { 0.0 } else { kg_co2e * (b - a) / life_ms }
}

/// A host and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbodiedHost {
    pub host: String,
    /// A class of [`FOOTPRINTS`].
    pub class: String,
    pub in_service_ms: i64,
}

/// Embodied emissions of a set of hosts over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbodiedReport {
    pub kg_co2e: f64,
    pub hosts: usize,
    /// Hosts whose class is not in the table (not counted).
    pub unknown: Vec<String>,
    /// The sources of the footprints used.
    pub sources: Vec<&'static str>,
}

/// Sums the amortised footprints of `hosts` over `[from_ms, to_ms)`.
pub fn site_embodied(hosts: &[EmbodiedHost], from_ms: i64, to_ms: i64) -> EmbodiedReport {
    let mut r = EmbodiedReport { kg_co2e: 0.0, hosts: 0, unknown: Vec::new(), sources: Vec::new() };
    for h in hosts {
        match footprint(&h.class) {
            Some(f) => {
                r.kg_co2e += amortised_kg(f.kg_co2e, f.lifetime_hours, h.in_service_ms, from_ms, to_ms);
                r.hosts += 1;
                if !r.sources.contains(&f.source) {
                    r.sources.push(f.source);
                }
            }
            None => r.unknown.push(h.host.clone()),
        }
    }
    r
}

/// The class of [`FOOTPRINTS`] a host model from `domesday_host_info` falls
/// in, if the table knows it: a Dell (vendor "Dell…") PowerEdge R740 (product
/// naming "R740", case-insensitive) is `dell_r740`. Anything else is unknown.
pub fn class_of(vendor: &str, product: &str) -> Option<&'static str> {
    let v = vendor.to_ascii_lowercase();
    let p = product.to_ascii_lowercase();
    (v.starts_with("dell") && p.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "r740")).then_some("dell_r740")
}

/// The class used for hosts whose model the table does not know.
pub const DEFAULT_CLASS: &str = "rack_server";

/// Embodied emissions of the hosts that reported in one period of the
/// indicators answer, beside the indicators (never inside CUE).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodEmbodied {
    /// kgCO2e amortised over the period.
    pub kg_co2e: f64,
    /// Hosts counted.
    pub hosts: usize,
    /// Hosts whose model is not in the table, counted with the default footprint.
    pub unknown_models: usize,
    /// Where the footprints come from.
    pub source: String,
    /// The lifetime the footprints are amortised over.
    pub lifetime_years: f64,
}

/// Amortises the footprints of hosts given as `(vendor, product)` over the
/// whole of `[from_ms, to_ms)` (each host counts for the whole period it
/// reported in); `None` without hosts.
pub fn period_embodied<'a>(
    models: impl IntoIterator<Item = (&'a str, &'a str)>,
    from_ms: i64,
    to_ms: i64,
) -> Option<PeriodEmbodied> {
    let mut r =
        PeriodEmbodied { kg_co2e: 0.0, hosts: 0, unknown_models: 0, source: String::new(), lifetime_years: 0.0 };
    let mut sources: Vec<String> = Vec::new();
    let mut lifetimes: Vec<f64> = Vec::new();
    for (vendor, product) in models {
        let class = class_of(vendor, product);
        let f = footprint(class.unwrap_or(DEFAULT_CLASS))?;
        let source = match class {
            Some(c) => format!("{c}: {}", f.source),
            None => {
                r.unknown_models += 1;
                format!("unknown models, default {DEFAULT_CLASS} ({} kg): {}", f.kg_co2e, f.source)
            }
        };
        if !sources.contains(&source) {
            sources.push(source);
        }
        if !lifetimes.contains(&f.lifetime_hours) {
            lifetimes.push(f.lifetime_hours);
        }
        r.kg_co2e += amortised_kg(f.kg_co2e, f.lifetime_hours, from_ms, from_ms, to_ms);
        r.hosts += 1;
    }
    if r.hosts == 0 {
        return None;
    }
    sources.sort();
    r.source = sources.join("; ");
    r.lifetime_years = lifetimes.iter().copied().fold(0.0, f64::max) / HOURS_PER_YEAR;
    Some(r)
}

/// 365 days.
const HOURS_PER_YEAR: f64 = 8_760.0;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3_600_000;

    #[test]
    fn table_and_teads() {
        assert_eq!(footprint("dell_r740").map(|f| f.kg_co2e), Some(967.9));
        assert_eq!(footprint("rack_server").map(|f| f.kg_co2e), Some(1000.0));
        assert_eq!(teads_rack_server_kg(1, 2, 1, 1), 1000.0 + 100.0 + 100.0 + 100.0 + 150.0);
    }

    /// SCI's example: 1,000 kg over 4 years, one hour → about 28.5 g.
    #[test]
    fn amortisation() {
        let g = amortised_kg(1000.0, DEFAULT_LIFETIME_HOURS, 0, 0, H) * 1000.0;
        assert!((g - 28.539).abs() < 0.001, "{g}");
        assert_eq!(amortised_kg(1000.0, 10.0, 0, -5 * H, 0), 0.0, "before service");
        assert_eq!(amortised_kg(1000.0, 10.0, 0, 10 * H, 20 * H), 0.0, "after the lifetime");
        assert_eq!(amortised_kg(1000.0, 10.0, 0, -H, 11 * H), 1000.0, "the whole lifetime");
        let r = site_embodied(
            &[
                EmbodiedHost { host: "a".into(), class: "dell_r740".into(), in_service_ms: 0 },
                EmbodiedHost { host: "b".into(), class: "toaster".into(), in_service_ms: 0 },
            ],
            0,
            (DEFAULT_LIFETIME_HOURS as i64) * H,
        );
        assert!((r.kg_co2e - 967.9).abs() < 1e-9);
        assert_eq!(r.unknown, vec!["b".to_string()]);
    }

    /// Two hosts of known models (and one unknown) over one day.
    #[test]
    fn period_amortisation() {
        let day = 24 * H;
        let r = period_embodied([("Dell Inc.", "PowerEdge R740"), ("DELL", "PowerEdge R740 (SKU 0715)")], 0, day)
            .expect("hosts");
        let want = 2.0 * 967.9 * 24.0 / DEFAULT_LIFETIME_HOURS;
        assert!((r.kg_co2e - want).abs() < 1e-12, "{} vs {want}", r.kg_co2e);
        assert_eq!((r.hosts, r.unknown_models), (2, 0));
        assert_eq!(r.lifetime_years, 4.0);
        assert!(r.source.starts_with("dell_r740: BoaviztAPI"), "{}", r.source);
        let r = period_embodied([("Dell Inc.", "PowerEdge R740"), ("Acme", "Toaster")], day, 2 * day).expect("hosts");
        assert!((r.kg_co2e - (967.9 + 1000.0) * 24.0 / DEFAULT_LIFETIME_HOURS).abs() < 1e-12);
        assert_eq!(r.unknown_models, 1);
        assert!(r.source.contains("unknown models, default rack_server"), "{}", r.source);
        assert_eq!(class_of("Dell Inc.", "PowerEdge R7400"), None);
        assert_eq!(period_embodied([], 0, day), None);
    }

    proptest! {
        #[test]
        fn amortisation_is_additive(start in -1_000_000i64..1_000_000, a in 0i64..100_000_000_000, b in 0i64..100_000_000_000) {
            let whole = amortised_kg(967.9, DEFAULT_LIFETIME_HOURS, 0, start, start + a + b);
            let parts = amortised_kg(967.9, DEFAULT_LIFETIME_HOURS, 0, start, start + a)
                + amortised_kg(967.9, DEFAULT_LIFETIME_HOURS, 0, start + a, start + a + b);
            prop_assert!((whole - parts).abs() < 1e-9);
            prop_assert!(whole <= 967.9 + 1e-9);
        }
    }
}
