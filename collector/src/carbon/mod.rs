//! Grid carbon intensity and embodied emissions.
//!
//! This module owns where intensities come from and how they reach the
//! indicators: the sources behind one trait ([`IntensitySource`]: shipped
//! static factors, RTE éCO2mix on ODRÉ, Electricity Maps), the cache that
//! keeps us inside the providers' quotas, the timeout and the visible fallback
//! ([`service::CarbonService`]), the `[carbon]` configuration and its
//! validation ([`config`]), and the shipped embodied-emissions table with its
//! amortisation ([`embodied`]).
//!
//! Every intensity carries its basis: `direct` (combustion at the power plant,
//! e.g. RTE's `taux_co2`) or `lifecycle` (with upstream and construction, e.g.
//! ADEME Base Empreinte, Electricity Maps' default). The two are never mixed:
//! the fallback must have the live source's basis (checked by
//! [`config::CarbonConfig::validate`]), and every series says which source,
//! which basis and whether the fallback stood in.
//!
//! Intensities are in gCO2e per kWh; intervals are half-open UTC ms.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub mod config;
pub mod electricitymaps;
pub mod embodied;
pub mod rte;
pub mod service;
pub mod static_factors;

#[cfg(test)]
mod tests;

pub use config::{CarbonConfig, CarbonConfigError, SourceKind};
pub use service::CarbonService;

/// Basis of an emission factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactorBasis {
    /// Direct combustion emissions of the electricity produced (RTE éCO2mix `taux_co2`).
    Direct,
    /// Life-cycle emissions, upstream and construction included (ADEME Base Empreinte, Electricity Maps default).
    Lifecycle,
}

impl FactorBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            FactorBasis::Direct => "direct",
            FactorBasis::Lifecycle => "lifecycle",
        }
    }
}

/// Grid intensity over `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IntensityPoint {
    pub start_ms: i64,
    pub end_ms: i64,
    /// gCO2e per kWh.
    pub g_per_kwh: f64,
    /// The fallback intensity, standing in for a missing live value.
    pub fallback: bool,
}

/// Intensities over a range, with where they came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntensitySeries {
    pub grid_zone: String,
    /// `rte:eco2mix-national-tr`, `electricitymaps`, `static:…`.
    pub source: String,
    pub basis: FactorBasis,
    /// Sorted, non-overlapping; gaps remain only where there was no fallback.
    pub points: Vec<IntensityPoint>,
    /// Some interval of the range took the fallback intensity.
    pub fallback_used: bool,
    /// Why the source did not answer for some of the range (its failure, a
    /// timeout, or the per-call fetch budget), when it did not: the gap took
    /// stale data or the fallback.
    pub source_error: Option<String>,
}

/// Why a source gave no intensities.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CarbonError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("HTTP status {status}: {body}")]
    Status { status: u16, body: String },
    #[error("malformed answer: {0}")]
    Parse(String),
    #[error("source answered with basis {got}, configured {expected}")]
    BasisMismatch { expected: &'static str, got: String },
    #[error("no factor: {0}")]
    NoFactor(String),
}

/// A boxed future (the trait is object-safe: sources are chosen by config).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of grid carbon intensity.
pub trait IntensitySource: Send + Sync {
    /// Name used in `carbon_source` (`rte:eco2mix-national-tr`, `electricitymaps`, `static:…`).
    fn name(&self) -> String;
    fn grid_zone(&self) -> &str;
    fn basis(&self) -> FactorBasis;
    /// Points inside `[from_ms, to_ms)` that the source has (may leave gaps).
    fn fetch(&self, from_ms: i64, to_ms: i64) -> BoxFuture<'_, Result<Vec<IntensityPoint>, CarbonError>>;
    /// A source answered from memory (static factors): no request, so no fetch budget.
    fn is_local(&self) -> bool {
        false
    }
}

/// Reads a JSON number that may be a number, `null`, or a string (ODRÉ uses
/// `"ND"` for "non disponible"): `None` for anything but a finite number.
pub(crate) fn json_number(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Number(n) => n.as_f64().filter(|x| x.is_finite()),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

/// Parses an RFC 3339 instant to UTC ms.
pub(crate) fn parse_instant(s: &str) -> Result<i64, CarbonError> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| CarbonError::Parse(format!("timestamp {s:?}: {e}")))
}

/// RFC 3339 UTC with a `Z`, for query parameters.
pub(crate) fn instant(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_else(|_| ms.to_string())
}

/// Sorts points, drops duplicates and trims overlaps so the series is well formed.
pub(crate) fn normalise(mut points: Vec<IntensityPoint>) -> Vec<IntensityPoint> {
    points.retain(|p| p.end_ms > p.start_ms && p.g_per_kwh.is_finite() && p.g_per_kwh >= 0.0);
    points.sort_by_key(|p| p.start_ms);
    points.dedup_by_key(|p| p.start_ms);
    for i in 1..points.len() {
        let next = points[i].start_ms;
        if points[i - 1].end_ms > next {
            points[i - 1].end_ms = next;
        }
    }
    points
}
