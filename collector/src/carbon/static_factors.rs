//! Shipped static grid factors, per grid zone and year, each with its basis
//! and its source, and the `static` source that serves them (or the factor
//! configured as `fallback_g_per_kwh`, which wins).
//!
//! Values are gCO2e/kWh as published; `year` is the year the figure describes
//! (for the Boavizta set, the year of its source data set). A period is given
//! the factor of its own year, else of the latest earlier year, else of the
//! earliest one.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{BoxFuture, CarbonError, FactorBasis, IntensityPoint, IntensitySource};

/// One shipped factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StaticFactor {
    pub grid_zone: &'static str,
    pub year: i16,
    pub g_per_kwh: f64,
    pub basis: FactorBasis,
    pub source: &'static str,
}

const RTE_2023: &str = "RTE, Bilan électrique 2023: direct CO2 emissions of electricity produced in France";
const RTE_2024: &str = "RTE, Bilan électrique 2024: direct CO2 emissions of electricity produced in France";
const BOAVIZTA: &str = "BoaviztAPI data/crowdsourcing/electrical_mix.csv, priority-1 source 2019 \
                        (carbon intensity of electricity produced and used in Europe), life cycle";
const BOAVIZTA_EMBER: &str = "BoaviztAPI data/crowdsourcing/electrical_mix.csv (Ember 2020), life cycle";

/// The shipped table. Direct and life-cycle figures are different quantities:
/// France's direct production figure (RTE, ~20–30 g) is a third of its
/// life-cycle figure (~100 g).
pub const FACTORS: &[StaticFactor] = &[
    StaticFactor { grid_zone: "FR", year: 2023, g_per_kwh: 32.0, basis: FactorBasis::Direct, source: RTE_2023 },
    StaticFactor { grid_zone: "FR", year: 2024, g_per_kwh: 21.7, basis: FactorBasis::Direct, source: RTE_2024 },
    StaticFactor { grid_zone: "FR", year: 2019, g_per_kwh: 98.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "DE", year: 2019, g_per_kwh: 422.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "BE", year: 2019, g_per_kwh: 230.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "ES", year: 2019, g_per_kwh: 279.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "IT", year: 2019, g_per_kwh: 356.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "NL", year: 2019, g_per_kwh: 450.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "IE", year: 2019, g_per_kwh: 384.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "SE", year: 2019, g_per_kwh: 40.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "PL", year: 2019, g_per_kwh: 805.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "CH", year: 2019, g_per_kwh: 78.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "NO", year: 2019, g_per_kwh: 31.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor { grid_zone: "DK", year: 2019, g_per_kwh: 158.0, basis: FactorBasis::Lifecycle, source: BOAVIZTA },
    StaticFactor {
        grid_zone: "GB",
        year: 2020,
        g_per_kwh: 246.0,
        basis: FactorBasis::Lifecycle,
        source: BOAVIZTA_EMBER,
    },
];

/// The factor for `zone`, `basis` and `year`: that year's, else the latest
/// earlier one, else the earliest one.
pub fn lookup(zone: &str, basis: FactorBasis, year: i16) -> Option<&'static StaticFactor> {
    let mut candidates: Vec<&StaticFactor> =
        FACTORS.iter().filter(|f| f.grid_zone.eq_ignore_ascii_case(zone) && f.basis == basis).collect();
    candidates.sort_by_key(|f| f.year);
    candidates.iter().rev().find(|f| f.year <= year).or(candidates.first()).copied()
}

/// Whether the table has any factor for `zone` and `basis`.
pub fn has(zone: &str, basis: FactorBasis) -> bool {
    lookup(zone, basis, i16::MAX).is_some()
}

/// The `static` source: the configured factor if any, else the table.
#[derive(Debug, Clone)]
pub struct StaticSource {
    pub grid_zone: String,
    pub basis: FactorBasis,
    /// `fallback_g_per_kwh` with `source = "static"`: the factor used.
    pub configured: Option<f64>,
}

impl StaticSource {
    /// Pieces of `[from_ms, to_ms)` per UTC calendar year, with their factor.
    pub fn points(&self, from_ms: i64, to_ms: i64) -> Result<Vec<IntensityPoint>, CarbonError> {
        let mut out = Vec::new();
        let mut start = from_ms;
        while start < to_ms {
            let t = Timestamp::from_millisecond(start).map_err(|e| CarbonError::Parse(e.to_string()))?;
            let year = t.to_zoned_datetime(TimeZone::UTC).year();
            let (_, year_end) = crate::indicators::period::calendar_year(year, &TimeZone::UTC)
                .map_err(|e| CarbonError::Parse(e.to_string()))?;
            let end = year_end.min(to_ms);
            let g = match self.configured {
                Some(g) => g,
                None => lookup(&self.grid_zone, self.basis, year)
                    .map(|f| f.g_per_kwh)
                    .ok_or_else(|| CarbonError::NoFactor(format!("{} {}", self.grid_zone, self.basis.as_str())))?,
            };
            out.push(IntensityPoint { start_ms: start, end_ms: end, g_per_kwh: g, fallback: false });
            start = end;
        }
        Ok(out)
    }
}

impl IntensitySource for StaticSource {
    fn name(&self) -> String {
        match self.configured {
            Some(_) => "static:config".into(),
            None => "static:shipped".into(),
        }
    }

    fn grid_zone(&self) -> &str {
        &self.grid_zone
    }

    fn basis(&self) -> FactorBasis {
        self.basis
    }

    fn is_local(&self) -> bool {
        true
    }

    fn fetch(&self, from_ms: i64, to_ms: i64) -> BoxFuture<'_, Result<Vec<IntensityPoint>, CarbonError>> {
        let r = self.points(from_ms, to_ms);
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_year_and_basis() {
        assert_eq!(lookup("FR", FactorBasis::Direct, 2024).map(|f| f.g_per_kwh), Some(21.7));
        assert_eq!(lookup("FR", FactorBasis::Direct, 2023).map(|f| f.g_per_kwh), Some(32.0));
        // Later years carry the latest figure; earlier ones the earliest.
        assert_eq!(lookup("FR", FactorBasis::Direct, 2026).map(|f| f.year), Some(2024));
        assert_eq!(lookup("fr", FactorBasis::Direct, 2010).map(|f| f.year), Some(2023));
        // Bases never stand in for each other.
        assert_eq!(lookup("FR", FactorBasis::Lifecycle, 2024).map(|f| f.g_per_kwh), Some(98.0));
        assert!(lookup("DE", FactorBasis::Direct, 2024).is_none());
        assert!(!has("XX", FactorBasis::Lifecycle));
        assert!(FACTORS.iter().all(|f| !f.source.is_empty() && f.g_per_kwh > 0.0));
    }

    #[test]
    fn static_points_split_by_year() {
        let s = StaticSource { grid_zone: "FR".into(), basis: FactorBasis::Direct, configured: None };
        let from = "2023-12-31T00:00:00Z".parse::<Timestamp>().expect("ts").as_millisecond();
        let to = "2024-01-02T00:00:00Z".parse::<Timestamp>().expect("ts").as_millisecond();
        let p = s.points(from, to).expect("points");
        assert_eq!(p.iter().map(|p| p.g_per_kwh).collect::<Vec<_>>(), vec![32.0, 21.7]);
        assert_eq!(p[0].end_ms, p[1].start_ms);
        let c = StaticSource { configured: Some(25.0), ..s };
        assert!(c.points(from, to).expect("points").iter().all(|p| p.g_per_kwh == 25.0));
        assert_eq!(c.name(), "static:config");
    }
}
