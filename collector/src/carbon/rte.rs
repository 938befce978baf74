//! RTE éCO2mix on ODRÉ (Opendatasoft Explore API v2.1, no key, Licence
//! Ouverte): national `taux_co2`, gCO2/kWh, **direct** emissions of French
//! production (imports excluded), one row per 15 minutes in
//! `eco2mix-national-tr` (30 minutes in the consolidated `…-cons-def`).
//!
//! Query: `GET {base}/api/explore/v2.1/catalog/datasets/{dataset}/records`
//! with `select=date_heure,taux_co2`, `where=date_heure >= date'…' AND
//! date_heure < date'…' AND taux_co2 IS NOT NULL`, `order_by=date_heure`,
//! `limit=100`, `offset`, `timezone=UTC`. `date_heure` is the interval start
//! in UTC. The dataset pre-fills future rows with nulls, and numeric fields
//! may be `null` or the string `"ND"`: such rows are dropped (the gap takes
//! the fallback, visibly). The API caps `limit` at 100 and `offset + limit`
//! at 10,000; a day is 96 rows, one call.

use super::{
    BoxFuture, CarbonError, FactorBasis, IntensityPoint, IntensitySource, instant, json_number, parse_instant,
};

pub const DEFAULT_BASE_URL: &str = "https://odre.opendatasoft.com";
pub const DEFAULT_DATASET: &str = "eco2mix-national-tr";
/// Rows per request (the API's maximum).
pub const PAGE_LIMIT: usize = 100;
/// The API refuses `offset + limit` beyond this.
pub const MAX_WINDOW: usize = 10_000;

/// The RTE source.
#[derive(Debug, Clone)]
pub struct RteSource {
    client: reqwest::Client,
    base_url: String,
    dataset: String,
    row_ms: i64,
}

impl RteSource {
    pub fn new(client: reqwest::Client, base_url: &str, dataset: &str) -> RteSource {
        let minutes = if dataset.contains("cons-def") { 30 } else { 15 };
        RteSource {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            dataset: dataset.to_string(),
            row_ms: minutes * 60_000,
        }
    }

    /// The records URL.
    pub fn url(&self) -> String {
        format!("{}/api/explore/v2.1/catalog/datasets/{}/records", self.base_url, self.dataset)
    }

    /// The ODSQL filter of `[from_ms, to_ms)`.
    pub fn where_clause(from_ms: i64, to_ms: i64) -> String {
        format!(
            "date_heure >= date'{}' AND date_heure < date'{}' AND taux_co2 IS NOT NULL",
            instant(from_ms),
            instant(to_ms)
        )
    }

    async fn page(&self, from_ms: i64, to_ms: i64, offset: usize) -> Result<Records, CarbonError> {
        let query = [
            ("select", "date_heure,taux_co2".to_string()),
            ("where", Self::where_clause(from_ms, to_ms)),
            ("order_by", "date_heure".to_string()),
            ("limit", PAGE_LIMIT.to_string()),
            ("offset", offset.to_string()),
            ("timezone", "UTC".to_string()),
        ];
        let resp = self.client.get(self.url()).query(&query).send().await.map_err(http_error)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(http_error)?;
        if !status.is_success() {
            return Err(CarbonError::Status { status: status.as_u16(), body: snippet(&body) });
        }
        parse_records(&body, self.row_ms)
    }
}

pub(crate) fn http_error(e: reqwest::Error) -> CarbonError {
    if e.is_timeout() { CarbonError::Timeout(0) } else { CarbonError::Http(e.to_string()) }
}

pub(crate) fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    s.chars().take(200).collect()
}

/// One page of records.
#[derive(Debug, Clone, PartialEq)]
pub struct Records {
    /// Rows matching the query, all pages together.
    pub total: u64,
    /// Rows on this page, null ones included.
    pub rows: usize,
    pub points: Vec<IntensityPoint>,
}

/// Parses a v2.1 `records` answer: `{"total_count": n, "results": [rows]}`.
/// Rows without a numeric `taux_co2` are dropped; a row without a readable
/// `date_heure` makes the answer malformed.
pub fn parse_records(body: &[u8], row_ms: i64) -> Result<Records, CarbonError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| CarbonError::Parse(e.to_string()))?;
    let total = v.get("total_count").and_then(|t| t.as_u64());
    let rows = v.get("results").and_then(|r| r.as_array());
    let (Some(total), Some(rows)) = (total, rows) else {
        return Err(CarbonError::Parse("expected {\"total_count\": …, \"results\": […]}".into()));
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let at = row
            .get("date_heure")
            .and_then(|d| d.as_str())
            .ok_or_else(|| CarbonError::Parse("a row has no date_heure".into()))?;
        let start_ms = parse_instant(at)?;
        if let Some(g) = json_number(row.get("taux_co2")).filter(|g| *g >= 0.0) {
            out.push(IntensityPoint { start_ms, end_ms: start_ms + row_ms, g_per_kwh: g, fallback: false });
        }
    }
    Ok(Records { total, rows: rows.len(), points: out })
}

impl IntensitySource for RteSource {
    fn name(&self) -> String {
        format!("rte:{}", self.dataset)
    }

    fn grid_zone(&self) -> &str {
        "FR"
    }

    fn basis(&self) -> FactorBasis {
        FactorBasis::Direct
    }

    fn fetch(&self, from_ms: i64, to_ms: i64) -> BoxFuture<'_, Result<Vec<IntensityPoint>, CarbonError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut offset = 0usize;
            loop {
                let page = self.page(from_ms, to_ms, offset).await?;
                out.extend(page.points);
                offset += PAGE_LIMIT;
                if page.rows == 0 || offset as u64 >= page.total || offset + PAGE_LIMIT > MAX_WINDOW {
                    break;
                }
            }
            Ok(out)
        })
    }
}
