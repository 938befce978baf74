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
//!
//! With `measure = "power"` the series is an instantaneous power gauge in
//! watts (snmp_exporter's `upsOutputTruePower` of UPS-MIB, a PDU's watts):
//! [`PowerIntegrator`] integrates consecutive samples with the trapezoid rule
//! over their own timestamps into a cumulative energy register, which is booked
//! like any other register.

use super::convert::{Decimal, ValueError, to_micro};
use super::http::{http_client, http_error};
use super::reading::{Poll, ReadError, Reading};
use crate::config::{Measure, MeterConfig, Secret};

use crate::pull::QueryResponse;

/// The query URL of a meter: `{url}/api/v1/query?query=…`.
pub fn query_url(base: &str, query: &str) -> String {
    format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), crate::pull::percent_encode(query))
}

/// The raw `(seconds, value text)` samples of the one series a query answer holds.
fn matrix_values(body: &str) -> Result<Vec<(f64, String)>, ReadError> {
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
    let mut result = data.result;
    match result.len() {
        0 => Err(ReadError::Missing("no series matches the query (yet)".into())),
        1 => Ok(result.remove(0).values),
        n => {
            let names: Vec<String> = result.iter().take(3).map(|s| format!("{:?}", s.metric)).collect();
            Err(ReadError::Parse(format!(
                "the query matches {n} series ({}…): add label matchers so it selects one meter",
                names.join(", ")
            )))
        }
    }
}

fn ts_ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

/// Turns a query answer into readings in micro-units of `unit`.
pub fn matrix_to_poll(body: &str, unit: &str) -> Result<Poll, ReadError> {
    let mut poll = Poll::default();
    for (t, v) in &matrix_values(body)? {
        let value = Decimal::parse(v).ok_or_else(|| ValueError::NotFinite(v.clone()));
        match value.and_then(|d| to_micro(d, unit, unit)) {
            Ok(value_micro) => poll.readings.push(Reading { ts_ms: ts_ms(*t), value_micro }),
            Err(e) => poll.rejected.push(e),
        }
    }
    Ok(poll)
}

/// A power sample in µW, exact to the µW (half away from zero below it).
fn power_micro_watts(text: &str) -> Result<i128, ValueError> {
    let d = Decimal::parse(text).ok_or_else(|| ValueError::NotFinite(text.to_string()))?;
    if d.mantissa < 0 {
        return Err(ValueError::Negative(text.to_string()));
    }
    // µW = mantissa × 10^6 / 10^exponent; "J" has factor 1, so `to_micro` gives exactly that.
    to_micro(d, "J", "J").map(i128::from)
}

/// Integrates a power gauge (W) into a cumulative energy register.
///
/// Energy is kept exactly as an integer of 1/2000 µJ: the trapezoid of two
/// samples `P0`, `P1` (µW) over `Δt` (ms) is `(P0 + P1) / 2 × Δt` µW·ms, and
/// 1 µW·ms = 1/1000 µJ, so `(P0 + P1) × Δt` counts 1/2000 µJ with no
/// rounding. The register booked is that total in micro-units of the meter's
/// unit (1 µWh = 3600 µJ), floored: the remainder stays in the total and is
/// carried to the next reading, so nothing is lost or counted twice.
///
/// Restarting the collector restarts the register at 0. The ledger takes a
/// register that goes down as a reset and counts it from zero, which is right
/// here: the first poll after a start only takes its newest sample as the
/// baseline (booked at 0) and integrates from there, so no energy the previous
/// run integrated is integrated again, even though the range query gives
/// samples it already saw (the span between the previous run's last sample and
/// the new baseline is lost, never doubled).
#[derive(Debug, Clone)]
pub struct PowerIntegrator {
    /// µJ per micro-unit of the meter's unit.
    factor: i128,
    /// Longest span between two samples that is bridged (ms).
    max_bridge_ms: i64,
    /// The last integrated sample: ms, µW.
    last: Option<(i64, i128)>,
    /// Cumulative energy in 1/2000 µJ.
    total: i128,
}

/// 1/2000 µJ per µJ.
const PARTS_PER_UJ: i128 = 2000;

impl PowerIntegrator {
    /// `unit` must be an energy unit; spans longer than `max_bridge_ms` restart the baseline.
    pub fn new(unit: &str, max_bridge_ms: i64) -> Result<PowerIntegrator, ValueError> {
        let factor = match unit {
            "Wh" | "kWh" | "MWh" => crate::ledger::micro_factor(unit).map(i128::from),
            _ => None,
        }
        .ok_or_else(|| ValueError::Unit(unit.to_string()))?;
        Ok(PowerIntegrator { factor, max_bridge_ms, last: None, total: 0 })
    }

    /// The register now, in micro-units of the unit.
    fn register(&self) -> i64 {
        i64::try_from(self.total / (PARTS_PER_UJ * self.factor)).unwrap_or(i64::MAX)
    }

    /// Integrates the samples newer than the last integrated one (sorted by
    /// time first) and returns the register at each of them.
    pub fn feed(&mut self, mut samples: Vec<(i64, i128)>) -> Vec<Reading> {
        samples.sort_by_key(|s| s.0);
        let mut out = Vec::new();
        if self.last.is_none() {
            // The first poll: its newest sample is the baseline (see the type's doc).
            let Some(&newest) = samples.last() else { return out };
            self.last = Some(newest);
            out.push(Reading { ts_ms: newest.0, value_micro: self.register() });
            return out;
        }
        for (t, p) in samples {
            let Some((t0, p0)) = self.last else { break };
            if t <= t0 {
                continue; // already integrated (overlapping windows)
            }
            let dt = t - t0;
            if dt <= self.max_bridge_ms {
                self.total = self.total.saturating_add((p0 + p).saturating_mul(i128::from(dt)));
            }
            // Longer spans are not bridged: the sample is the new baseline, the register unchanged.
            self.last = Some((t, p));
            out.push(Reading { ts_ms: t, value_micro: self.register() });
        }
        out
    }
}

/// Turns a power gauge's query answer into register readings through `integrator`.
pub fn power_matrix_to_poll(body: &str, integrator: &mut PowerIntegrator) -> Result<Poll, ReadError> {
    let mut poll = Poll::default();
    let mut samples = Vec::new();
    for (t, v) in matrix_values(body)? {
        match power_micro_watts(&v) {
            Ok(p) => samples.push((ts_ms(t), p)),
            Err(e) => poll.rejected.push(e),
        }
    }
    poll.readings = integrator.feed(samples);
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
    /// `measure = "power"`: the gauge's integrator.
    power: Option<PowerIntegrator>,
}

impl PrometheusReader {
    /// `gap` is the ledger's gap: a power gauge is not integrated across a
    /// longer span, nor across more than 3 intervals.
    pub fn new(m: &MeterConfig, gap: std::time::Duration) -> Result<PrometheusReader, ReadError> {
        let missing = |k: &str| ReadError::Config(format!("meter {:?}: no `{k}`", m.id));
        let base = m.url.as_deref().ok_or_else(|| missing("url"))?;
        let query = m.query.as_deref().ok_or_else(|| missing("query"))?;
        let power = match m.measure {
            Some(Measure::Power) => {
                let bridge = gap.min(m.interval().saturating_mul(3));
                Some(PowerIntegrator::new(&m.unit, i64::try_from(bridge.as_millis()).unwrap_or(i64::MAX))?)
            }
            Some(Measure::Energy) | None => None,
        };
        Ok(PrometheusReader {
            client: http_client(m)?,
            url: query_url(base, query),
            username: m.username.clone(),
            password: m.password.clone(),
            unit: m.unit.clone(),
            timeout: m.timeout(),
            power,
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
        match &mut self.power {
            Some(integrator) => power_matrix_to_poll(&body, integrator),
            None => matrix_to_poll(&body, &self.unit),
        }
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

    /// µW of whole watts.
    fn w(watts: i128) -> i128 {
        watts * 1_000_000
    }

    #[test]
    fn constant_power_integrates_to_p_times_dt_exactly() {
        // 1800 W every 15 s, in Wh: 1800 W × 15 s = 7.5 Wh per step.
        let mut i = PowerIntegrator::new("Wh", 300_000).expect("unit");
        let t0 = 1_767_225_600_000;
        // The first poll only sets the baseline at its newest sample.
        assert_eq!(i.feed(vec![(t0, w(1800))]), vec![Reading { ts_ms: t0, value_micro: 0 }]);
        let window: Vec<_> = (0..=8).map(|k| (t0 + k * 15_000, w(1800))).collect();
        let r = i.feed(window);
        assert_eq!(r.len(), 8);
        assert_eq!(r[7], Reading { ts_ms: t0 + 120_000, value_micro: 60_000_000 }); // 1800 W × 120 s = 60 Wh
        // A remainder below one micro-unit is carried: 1 W for 1 ms = 1000 µJ < 1 µWh (3600 µJ).
        let mut i = PowerIntegrator::new("Wh", 300_000).expect("unit");
        i.feed(vec![(0, w(1))]);
        let r = i.feed((1..=36).map(|t| (t, w(1))).collect());
        assert_eq!(r.iter().map(|r| r.value_micro).collect::<Vec<_>>()[..5], [0, 0, 0, 1, 1]);
        assert_eq!(r[35].value_micro, 10); // 36 ms × 1 W = 36000 µJ = 10 µWh exactly
        // kWh: trapezoid of a ramp 0 → 3600 W over an hour is 1.8 kWh.
        let mut i = PowerIntegrator::new("kWh", 4_000_000).expect("unit");
        i.feed(vec![(0, 0)]);
        assert_eq!(i.feed(vec![(3_600_000, w(3600))])[0].value_micro, 1_800_000);
        assert!(PowerIntegrator::new("m3", 1).is_err());
    }

    #[test]
    fn overlapping_windows_integrate_each_sample_once() {
        let mut i = PowerIntegrator::new("Wh", 300_000).expect("unit");
        i.feed(vec![(0, w(3600))]);
        let a = i.feed(vec![(0, w(3600)), (10_000, w(3600)), (20_000, w(3600))]);
        assert_eq!(a.last().map(|r| r.value_micro), Some(20_000_000)); // 3600 W × 20 s = 20 Wh
        // The same window again, then a later one that overlaps it, out of order.
        assert!(i.feed(vec![(0, w(3600)), (10_000, w(3600)), (20_000, w(3600))]).is_empty());
        let b = i.feed(vec![(30_000, w(3600)), (10_000, w(3600)), (20_000, w(3600))]);
        assert_eq!(b, vec![Reading { ts_ms: 30_000, value_micro: 30_000_000 }]);
    }

    #[test]
    fn a_gap_restarts_the_baseline() {
        // Bridge at most 45 s (3 × a 15 s interval).
        let mut i = PowerIntegrator::new("Wh", 45_000).expect("unit");
        i.feed(vec![(0, w(3600))]);
        let r = i.feed(vec![(15_000, w(3600)), (75_000, w(1800)), (90_000, w(1800))]);
        // 15 Wh, then the 60 s span is not bridged (the register stays), then 1800 W × 15 s = 7.5 Wh.
        let values: Vec<i64> = r.iter().map(|r| r.value_micro).collect();
        assert_eq!(values, [15_000_000, 15_000_000, 22_500_000]);
        // Exactly the limit is still bridged.
        let r = i.feed(vec![(135_000, w(1800))]);
        assert_eq!(r[0].value_micro, 45_000_000);
    }

    #[test]
    fn power_gauges_refuse_negative_and_nan() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"upsOutputTruePower"},
             "values":[[100,"1800"],[115,"-5"],[130,"NaN"],[145,"1800.5"]]}]}}"#;
        let mut i = PowerIntegrator::new("Wh", 300_000).expect("unit");
        i.feed(vec![(85_000, w(1800))]);
        let p = power_matrix_to_poll(body, &mut i).expect("poll");
        assert!(matches!(p.rejected[..], [ValueError::Negative(_), ValueError::NotFinite(_)]), "{:?}", p.rejected);
        // 85 → 100 s at 1800 W = 7.5 Wh; 100 → 145 s bridged over the refused ones: (1800 + 1800.5) / 2 × 45 s.
        let want = 7_500_000 + (1_800_000_000 + 1_800_500_000) * 45_000 / 2 / 3_600_000;
        assert_eq!(p.readings.last().map(|r| r.value_micro), Some(want));
        assert_eq!(power_micro_watts("0.0000005"), Ok(1));
        assert!(power_micro_watts("+Inf").is_err());
    }
}
