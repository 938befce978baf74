//! Prometheus meter source (`kind = "prometheus"`): a meter register that
//! already lands in Prometheus or VictoriaMetrics (through snmp_exporter, a
//! Modbus exporter, a BMS bridge…) is read back as raw samples with a range
//! selector (`meter_energy_kwh_total{meter="tgbt"}[5m]`) through
//! `/api/v1/query`. `rate`/`increase`/`irate`/`delta` are refused by the
//! config check: they extrapolate, and the ledger computes increases exactly.
//!
//! The query must give exactly one series; each sample's value is the
//! register in the meter's `unit`, parsed from its decimal text (never through
//! a float) and booked at the sample's own timestamp. Overlapping windows are
//! harmless: a sample read twice is a duplicate and counts once. A NaN,
//! infinite or negative sample is refused and counted; the others are booked.

use super::convert::{Decimal, ValueError, to_micro};
use super::reader::{Poll, ReadError, Reading};
use super::redfish::{http_client, http_error};
use crate::config::{MeterConfig, Secret};

use crate::pull::QueryResponse;

/// The query URL of a meter: `{url}/api/v1/query?query=…`.
pub fn query_url(base: &str, query: &str) -> String {
    format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), crate::pull::percent_encode(query))
}

/// Turns a query answer into readings in micro-units of `unit`.
pub fn matrix_to_poll(body: &str, unit: &str) -> Result<Poll, ReadError> {
    let r: QueryResponse =
        serde_json::from_str(body).map_err(|e| ReadError::Parse(format!("not a query answer: {e}")))?;
    if r.status != "success" {
        return Err(ReadError::Parse(format!("query refused: {}", r.error.unwrap_or(r.status))));
    }
    let data = r.data.ok_or_else(|| ReadError::Parse("answer without data".into()))?;
    if data.result_type != "matrix" {
        return Err(ReadError::Parse(format!(
            "the query gives a {}, not a matrix: use a range selector of the raw register",
            data.result_type
        )));
    }
    let series = match data.result.len() {
        0 => return Err(ReadError::Missing("no series matches the query (yet)".into())),
        1 => &data.result[0],
        n => {
            let names: Vec<String> = data.result.iter().take(3).map(|s| format!("{:?}", s.metric)).collect();
            return Err(ReadError::Parse(format!(
                "the query matches {n} series ({}…): add label matchers so it selects one meter",
                names.join(", ")
            )));
        }
    };
    let mut poll = Poll::default();
    for (t, v) in &series.values {
        let value = Decimal::parse(v).ok_or_else(|| ValueError::NotFinite(v.clone()));
        match value.and_then(|d| to_micro(d, unit, unit)) {
            Ok(value_micro) => poll.readings.push(Reading { ts_ms: (t * 1000.0).round() as i64, value_micro }),
            Err(e) => poll.rejected.push(e),
        }
    }
    Ok(poll)
}

/// A meter read from a Prometheus-compatible query API.
pub struct PrometheusReader {
    client: reqwest::Client,
    url: String,
    username: Option<String>,
    password: Option<Secret>,
    unit: String,
    timeout: std::time::Duration,
}

impl PrometheusReader {
    pub fn new(m: &MeterConfig) -> Result<PrometheusReader, ReadError> {
        let missing = |k: &str| ReadError::Config(format!("meter {:?}: no `{k}`", m.id));
        let base = m.url.as_deref().ok_or_else(|| missing("url"))?;
        let query = m.query.as_deref().ok_or_else(|| missing("query"))?;
        Ok(PrometheusReader {
            client: http_client(m)?,
            url: query_url(base, query),
            username: m.username.clone(),
            password: m.password.clone(),
            unit: m.unit.clone(),
            timeout: m.timeout(),
        })
    }

    pub async fn read(&mut self) -> Result<Poll, ReadError> {
        let mut req = self.client.get(&self.url).header("Accept", "application/json");
        if let Some(u) = &self.username {
            req = req.basic_auth(u, self.password.as_ref().map(Secret::expose));
        }
        let resp = req.send().await.map_err(|e| http_error(&self.url, &e, self.timeout))?;
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(ReadError::Permission(format!("the query API answered {status}: check the credentials")));
        }
        let body = resp.text().await.map_err(|e| http_error(&self.url, &e, self.timeout))?;
        if status.is_server_error() {
            return Err(ReadError::Io(format!("the query API answered {status}")));
        }
        // 4xx answers of Prometheus carry a JSON error that says what is wrong with the query.
        matrix_to_poll(&body, &self.unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_of_raw_samples_becomes_exact_readings() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"water_m3_total","meter":"eau"},
             "values":[[1767225600,"1000.5"],[1767229200.25,"1003"],[1767232800,"NaN"],[1767236400,"-1"]]}]}}"#;
        let p = matrix_to_poll(body, "m3").expect("poll");
        assert_eq!(
            p.readings,
            vec![
                Reading { ts_ms: 1_767_225_600_000, value_micro: 1_000_500_000 },
                Reading { ts_ms: 1_767_229_200_250, value_micro: 1_003_000_000 },
            ]
        );
        assert!(matches!(p.rejected[..], [ValueError::NotFinite(_), ValueError::Negative(_)]), "{:?}", p.rejected);
        // Values keep every digit a float would lose (2^53 + 1 µWh).
        let big = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"9007199254.740993"]]}]}}"#;
        assert_eq!(matrix_to_poll(big, "Wh").expect("poll").readings[0].value_micro, 9_007_199_254_740_993);
    }

    #[test]
    fn other_answers_are_named() {
        let two = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"meter":"a"},"values":[]},{"metric":{"meter":"b"},"values":[]}]}}"#;
        assert!(matches!(matrix_to_poll(two, "kWh"), Err(ReadError::Parse(m)) if m.contains("2 series")));
        let none = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(matches!(matrix_to_poll(none, "kWh"), Err(ReadError::Missing(_))));
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(matches!(matrix_to_poll(vector, "kWh"), Err(ReadError::Parse(m)) if m.contains("range selector")));
        let err = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(matches!(matrix_to_poll(err, "kWh"), Err(ReadError::Parse(m)) if m.contains("parse error")));
        assert!(matches!(matrix_to_poll("<html>", "kWh"), Err(ReadError::Parse(_))));
        let u = query_url("http://prom:9090/", "water_m3_total{meter=\"eau\"}[5m]");
        assert_eq!(u, "http://prom:9090/api/v1/query?query=water_m3_total%7Bmeter%3D%22eau%22%7D%5B5m%5D");
    }
}
