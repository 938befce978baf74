//! Electricity Maps (v3 API, key in header `auth-token`).
//!
//! Query: `GET {base}/v3/carbon-intensity/past-range?zone=…&start=…&end=…
//! &emissionFactorType=direct|lifecycle&disableCallerLookup=true`. The answer
//! is `{"zone": …, "data": [rows]}` (`history` answers use the key
//! `history`); a row is `{"carbonIntensity": 83, "datetime": "…Z",
//! "emissionFactorType": "lifecycle", "isEstimated": true, …}`, hourly unless
//! it says `temporalGranularity`. `datetime` is the interval start in UTC.
//! The basis is asked for explicitly and checked on every row that states it:
//! an answer of another basis is refused (so the fallback takes over, flagged)
//! rather than mixed. `disableCallerLookup` stops the API from answering for
//! the caller's IP location instead of the zone.

use super::rte::{http_error, snippet};
use super::{
    BoxFuture, CarbonError, FactorBasis, IntensityPoint, IntensitySource, instant, json_number, parse_instant,
};

pub const DEFAULT_BASE_URL: &str = "https://api.electricitymap.org";

const HOUR_MS: i64 = 3_600_000;

/// The Electricity Maps source.
#[derive(Clone)]
pub struct ElectricityMapsSource {
    client: reqwest::Client,
    base_url: String,
    zone: String,
    api_key: String,
    basis: FactorBasis,
}

impl std::fmt::Debug for ElectricityMapsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectricityMapsSource")
            .field("base_url", &self.base_url)
            .field("zone", &self.zone)
            .field("api_key", &"<redacted>")
            .field("basis", &self.basis)
            .finish()
    }
}

impl ElectricityMapsSource {
    pub fn new(client: reqwest::Client, base_url: &str, zone: &str, api_key: &str, basis: FactorBasis) -> Self {
        ElectricityMapsSource {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            zone: zone.to_string(),
            api_key: api_key.to_string(),
            basis,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/v3/carbon-intensity/past-range", self.base_url)
    }
}

fn granularity_ms(row: &serde_json::Value) -> i64 {
    match row.get("temporalGranularity").and_then(|g| g.as_str()) {
        Some("5_minutes") => 5 * 60_000,
        Some("15_minutes") => 15 * 60_000,
        _ => HOUR_MS,
    }
}

/// Parses a `past-range`/`history` answer of the expected `basis`.
pub fn parse_answer(body: &[u8], basis: FactorBasis) -> Result<Vec<IntensityPoint>, CarbonError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| CarbonError::Parse(e.to_string()))?;
    let rows = v.get("data").or_else(|| v.get("history")).and_then(|r| r.as_array());
    let rows: Vec<&serde_json::Value> = match rows {
        Some(r) => r.iter().collect(),
        // A `latest` answer is one bare row.
        None if v.get("carbonIntensity").is_some() => vec![&v],
        None => return Err(CarbonError::Parse("expected {\"data\": […]} rows of carbonIntensity".into())),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(t) = row.get("emissionFactorType").and_then(|t| t.as_str())
            && t != basis.as_str()
        {
            return Err(CarbonError::BasisMismatch { expected: basis.as_str(), got: t.to_string() });
        }
        let at = row
            .get("datetime")
            .and_then(|d| d.as_str())
            .ok_or_else(|| CarbonError::Parse("a row has no datetime".into()))?;
        let start_ms = parse_instant(at)?;
        if let Some(g) = json_number(row.get("carbonIntensity")).filter(|g| *g >= 0.0) {
            out.push(IntensityPoint {
                start_ms,
                end_ms: start_ms + granularity_ms(row),
                g_per_kwh: g,
                fallback: false,
            });
        }
    }
    Ok(out)
}

impl IntensitySource for ElectricityMapsSource {
    fn name(&self) -> String {
        "electricitymaps".into()
    }

    fn grid_zone(&self) -> &str {
        &self.zone
    }

    fn basis(&self) -> FactorBasis {
        self.basis
    }

    fn fetch(&self, from_ms: i64, to_ms: i64) -> BoxFuture<'_, Result<Vec<IntensityPoint>, CarbonError>> {
        Box::pin(async move {
            let query = [
                ("zone", self.zone.clone()),
                ("start", instant(from_ms)),
                ("end", instant(to_ms)),
                ("emissionFactorType", self.basis.as_str().to_string()),
                ("disableCallerLookup", "true".to_string()),
            ];
            let resp = self
                .client
                .get(self.url())
                .header("auth-token", &self.api_key)
                .query(&query)
                .send()
                .await
                .map_err(http_error)?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(http_error)?;
            if !status.is_success() {
                return Err(CarbonError::Status { status: status.as_u16(), body: snippet(&body) });
            }
            let mut points = parse_answer(&body, self.basis)?;
            points.retain(|p| p.end_ms > from_ms && p.start_ms < to_ms);
            Ok(points)
        })
    }
}
