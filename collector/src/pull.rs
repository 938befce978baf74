//! Pull mode: for sites whose Prometheus (or VictoriaMetrics) already scrapes
//! the agents, the collector reads the raw counter samples back through the
//! query API with a range selector (`metric[lookback]`) — never `rate` or
//! `increase`, which extrapolate — and books them through the same ingest rules
//! and ledger writer as a push. Overlapping windows are harmless: a sample read
//! twice is a duplicate and counts once.

use std::time::Duration;

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use serde::Deserialize;

use crate::config::{IngestConfig, PullConfig};
use crate::ingest::split;
use crate::ledger::writer::{WriterHandle, now_ms};

/// A Prometheus query API answer (also read by the Prometheus meter source).
#[derive(Debug, Deserialize)]
pub(crate) struct QueryResponse {
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) data: Option<QueryData>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct QueryData {
    #[serde(rename = "resultType")]
    pub(crate) result_type: String,
    pub(crate) result: Vec<MatrixSeries>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MatrixSeries {
    #[serde(default)]
    pub(crate) metric: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) values: Vec<(f64, String)>,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("query to {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("{url} answered an error: {message}")]
    Api { url: String, message: String },
    #[error("{url} answered a {kind} result; a range selector must give a matrix")]
    NotMatrix { url: String, kind: String },
}

/// Converts a Prometheus matrix answer to remote_write series (the same shape a push has).
pub fn matrix_to_request(body: &str, url: &str) -> Result<WriteRequest, PullError> {
    let r: QueryResponse = serde_json::from_str(body)
        .map_err(|e| PullError::Api { url: url.into(), message: format!("not a query answer: {e}") })?;
    if r.status != "success" {
        return Err(PullError::Api { url: url.into(), message: r.error.unwrap_or(r.status) });
    }
    let data = r.data.ok_or_else(|| PullError::Api { url: url.into(), message: "no data".into() })?;
    if data.result_type != "matrix" {
        return Err(PullError::NotMatrix { url: url.into(), kind: data.result_type });
    }
    let timeseries = data
        .result
        .into_iter()
        .map(|s| TimeSeries {
            labels: s.metric.into_iter().map(|(name, value)| Label { name, value }).collect(),
            samples: s
                .values
                .into_iter()
                .filter_map(|(t, v)| {
                    v.parse::<f64>().ok().map(|value| Sample { value, timestamp: (t * 1000.0).round() as i64 })
                })
                .collect(),
        })
        .collect();
    Ok(WriteRequest { timeseries })
}

/// The query of a pull: the configured selector over the lookback window.
pub fn query_url(cfg: &PullConfig) -> String {
    let selector =
        cfg.selector.clone().unwrap_or_else(|| format!("domesday_host_energy_joules_total{{site=\"{}\"}}", cfg.site));
    let q = format!("{selector}[{}s]", cfg.lookback.0.as_secs());
    let mut url = format!("{}/api/v1/query", cfg.url.trim_end_matches('/'));
    url.push_str("?query=");
    url.push_str(&percent_encode(&q));
    url
}

pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One pull: query, convert, apply the ingest rules, book. Returns samples booked.
pub async fn pull_once(
    client: &reqwest::Client,
    cfg: &PullConfig,
    limits: &IngestConfig,
    writer: &WriterHandle,
) -> Result<u64, PullError> {
    let url = query_url(cfg);
    let mut req = client.get(&url);
    if let Some(t) = &cfg.bearer_token {
        req = req.bearer_auth(t.expose());
    }
    let body = req
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| PullError::Http { url: cfg.url.clone(), message: e.to_string() })?
        .text()
        .await
        .map_err(|e| PullError::Http { url: cfg.url.clone(), message: e.to_string() })?;
    let request = matrix_to_request(&body, &cfg.url)?;
    let accepted = split(&(&request).into(), &cfg.site, now_ms(), limits).map_err(|e| PullError::Api {
        url: cfg.url.clone(),
        message: format!("series refused by the ingest rules: {e}"),
    })?;
    if accepted.batch.samples.is_empty() {
        return Ok(0);
    }
    match writer.submit(accepted.batch).await {
        Ok(Ok(o)) => Ok(o.booked),
        Ok(Err(e)) => Err(PullError::Api { url: cfg.url.clone(), message: format!("ledger: {e}") }),
        Err(e) => Err(PullError::Api { url: cfg.url.clone(), message: format!("ledger: {e}") }),
    }
}

/// Pulls every `interval` until the task is dropped; failures are logged and retried.
pub async fn run(cfg: PullConfig, limits: IngestConfig, writer: WriterHandle) {
    let client = match reqwest::Client::builder().timeout(cfg.timeout.0).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the pull HTTP client");
            return;
        }
    };
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        match pull_once(&client, &cfg, &limits, &writer).await {
            Ok(n) => tracing::debug!(site = %cfg.site, url = %cfg.url, booked = n, "pulled"),
            Err(e) => tracing::warn!(site = %cfg.site, error = %e, "pull failed; retrying next interval"),
        }
    }
}

/// Default pull timing.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_answers_become_series() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"domesday_host_energy_joules_total","site":"s","host":"h","method":"model","quality":"estimated","instance":"a:9955"},
             "values":[[1700000000.5,"10.25"],[1700000015,"20"]]}]}}"#;
        let r = matrix_to_request(body, "http://p").expect("matrix");
        assert_eq!(r.timeseries[0].samples[0].timestamp, 1_700_000_000_500);
        assert_eq!(r.timeseries[0].samples[1].value, 20.0);
        assert_eq!(r.timeseries[0].label("instance"), Some("a:9955"));
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(matches!(matrix_to_request(vector, "u"), Err(PullError::NotMatrix { .. })));
        let err = r#"{"status":"error","error":"bad query"}"#;
        assert!(matrix_to_request(err, "u").map_err(|e| e.to_string()).err().is_some_and(|e| e.contains("bad query")));
    }

    #[test]
    fn the_query_is_a_raw_range_selector() {
        let cfg = PullConfig {
            site: "caen-1".into(),
            url: "http://prom:9090/".into(),
            interval: crate::config::Dur(DEFAULT_INTERVAL),
            lookback: crate::config::Dur(Duration::from_secs(300)),
            timeout: crate::config::Dur(Duration::from_secs(10)),
            selector: None,
            bearer_token_file: None,
            bearer_token: None,
        };
        let u = query_url(&cfg);
        assert!(u.starts_with("http://prom:9090/api/v1/query?query="), "{u}");
        assert!(u.ends_with("%5B300s%5D") && u.contains("site%3D%22caen-1%22"), "{u}");
        assert!(!u.contains("rate") && !u.contains("increase"));
    }
}
