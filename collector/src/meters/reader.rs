//! The polling loop shared by the meter readers (Modbus, Redfish,
//! Prometheus, and the demo's simulated meters): one tokio task per configured meter reads every `interval`
//! under a `timeout`, submits the readings to the ledger writer as register
//! samples (`CounterSample::meter`, micro-units of the meter's unit), and on
//! failure logs, counts the failure by `reason` and backs off exponentially
//! (doubling from the interval, capped at [`MAX_BACKOFF`] or the interval when
//! that is longer). A failing meter never stops the collector or another
//! meter. Baselines, resets, duplicates and late samples are the ledger's job.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domesday_model::catalog::{METER_LAST_READING, METER_READ_ERRORS, METER_READINGS};
use domesday_model::exposition::Sample;
use domesday_model::vocab::Reason;
use tokio::task::JoinHandle;

use super::modbus::{ModbusReader, RegisterSpec};
use super::prometheus::PrometheusReader;
use super::reading::{Poll, ReadError, Reading};
use super::redfish::RedfishReader;
use super::simulated::SimulatedReader;
use crate::config::{MeterConfig, MeterKind, Site};
use crate::ledger::LedgerReader;
use crate::ledger::writer::WriterHandle;
use crate::ledger::{Batch, CounterSample};

/// Longest wait between two attempts of a failing meter (unless its interval is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A meter's reader.
pub enum Source {
    Modbus(ModbusReader),
    Redfish(RedfishReader),
    Prometheus(PrometheusReader),
    Simulated(SimulatedReader),
}

impl Source {
    /// The reader of a validated meter of `site`; `None` for `csv` meters (fed by imports).
    /// `gap` is the ledger's gap (how far a power gauge is integrated across missing samples).
    /// `ledger` is what a `simulated` meter reads (the site's booked IT energy).
    pub fn new(
        site: &str,
        m: &MeterConfig,
        gap: Duration,
        ledger: Option<&Arc<dyn LedgerReader>>,
    ) -> Result<Option<Source>, ReadError> {
        Ok(Some(match m.kind {
            MeterKind::Csv => return Ok(None),
            MeterKind::Modbus => Source::Modbus(ModbusReader::new(RegisterSpec::from_config(m)?)),
            MeterKind::Redfish => Source::Redfish(RedfishReader::new(m)?),
            MeterKind::Prometheus => Source::Prometheus(PrometheusReader::new(m, gap)?),
            MeterKind::Simulated => {
                let ledger = ledger.ok_or_else(|| ReadError::Config("a simulated meter needs the ledger".into()))?;
                Source::Simulated(SimulatedReader::new(site, m, gap, ledger.clone())?)
            }
        }))
    }

    pub async fn read(&mut self) -> Result<Poll, ReadError> {
        match self {
            Source::Modbus(r) => r.read().await.map(Poll::from),
            Source::Redfish(r) => r.read().await.map(Poll::from),
            Source::Prometheus(r) => r.read().await,
            Source::Simulated(r) => r.read().await.map(Poll::from),
        }
    }

    /// Forgets connection state after a failure.
    pub fn reset(&mut self) {
        if let Source::Modbus(r) = self {
            r.reset();
        }
    }
}

/// Per-meter counters for `/metrics`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MeterStatus {
    pub readings: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub last_reading_ms: Option<i64>,
}

/// The readers' counters, shared with the `/metrics` handler.
#[derive(Debug, Default)]
pub struct MeterStats {
    meters: Mutex<BTreeMap<(String, String), MeterStatus>>,
}

impl MeterStats {
    fn with<F: FnOnce(&mut MeterStatus)>(&self, site: &str, meter: &str, f: F) {
        if let Ok(mut m) = self.meters.lock() {
            f(m.entry((site.to_string(), meter.to_string())).or_default());
        }
    }

    /// Registers a meter so its series exist before the first read.
    pub fn register(&self, site: &str, meter: &str) {
        self.with(site, meter, |_| {});
    }

    pub fn booked(&self, site: &str, meter: &str, n: u64, last_ms: Option<i64>) {
        self.with(site, meter, |s| {
            s.readings += n;
            s.last_reading_ms = s.last_reading_ms.max(last_ms);
        });
    }

    pub fn failed(&self, site: &str, meter: &str, reason: Reason, n: u64) {
        self.with(site, meter, |s| *s.errors.entry(reason.as_str()).or_insert(0) += n);
    }

    pub fn status(&self, site: &str, meter: &str) -> Option<MeterStatus> {
        self.meters.lock().ok().and_then(|m| m.get(&(site.to_string(), meter.to_string())).cloned())
    }

    /// The `domesday_meter_*` samples.
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        let Ok(meters) = self.meters.lock() else { return out };
        for ((site, meter), s) in meters.iter() {
            let labels = vec![site.clone(), meter.clone()];
            out.push(Sample::new(&METER_READINGS, labels.clone(), s.readings as f64));
            for (reason, n) in &s.errors {
                out.push(Sample::new(
                    &METER_READ_ERRORS,
                    vec![site.clone(), meter.clone(), reason.to_string()],
                    *n as f64,
                ));
            }
            if let Some(t) = s.last_reading_ms {
                out.push(Sample::new(&METER_LAST_READING, labels, t as f64 / 1000.0));
            }
        }
        out
    }
}

/// Wait before the next attempt after `failures` consecutive failures.
pub fn next_delay(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let backoff = interval.saturating_mul(1u32 << failures.min(16));
    backoff.min(MAX_BACKOFF.max(interval))
}

/// One read of `source`, given up after `timeout` (the source is then reset by the caller).
pub async fn read_within(source: &mut Source, timeout: Duration) -> Result<Poll, ReadError> {
    match tokio::time::timeout(timeout, source.read()).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout(timeout)),
    }
}

/// Submits one poll's readings; returns how many the ledger booked.
async fn submit(site: &str, m: &MeterConfig, readings: &[Reading], writer: &WriterHandle) -> Result<u64, ReadError> {
    if readings.is_empty() {
        return Ok(0);
    }
    let batch = Batch {
        samples: readings
            .iter()
            .map(|r| CounterSample::meter(site, &m.id, &m.role, &m.unit, r.ts_ms, r.value_micro))
            .collect(),
        ..Default::default()
    };
    match writer.submit(batch).await {
        Ok(Ok(o)) => Ok(o.booked),
        Ok(Err(e)) => Err(ReadError::Ledger(e)),
        Err(e) => Err(ReadError::Ledger(e.to_string())),
    }
}

/// Polls one meter until the task is aborted.
pub async fn run(
    site: String,
    m: MeterConfig,
    gap: Duration,
    writer: WriterHandle,
    stats: Arc<MeterStats>,
    ledger: Arc<dyn LedgerReader>,
) {
    let mut source = match Source::new(&site, &m, gap, Some(&ledger)) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(site = %site, meter = %m.id, error = %e, "meter reader cannot start");
            stats.failed(&site, &m.id, e.reason(), 1);
            return;
        }
    };
    let (interval, timeout) = (m.interval(), m.timeout());
    let kind = m.kind.as_str();
    tracing::info!(site = %site, meter = %m.id, kind, interval = ?interval, "meter reader started");
    if m.kind == MeterKind::Simulated {
        tracing::warn!(site = %site, meter = %m.id, "this meter is SIMULATED (demo): its readings are invented from the site's IT energy");
    }
    if m.insecure_skip_verify {
        tracing::warn!(site = %site, meter = %m.id, "TLS certificate verification is off for this meter (insecure_skip_verify)");
    }
    let mut failures: u32 = 0;
    loop {
        let started = tokio::time::Instant::now();
        let result = match read_within(&mut source, timeout).await {
            Ok(poll) => {
                for e in &poll.rejected {
                    tracing::warn!(site = %site, meter = %m.id, kind, error = %e, "meter sample refused");
                }
                stats.failed(&site, &m.id, Reason::Rejected, poll.rejected.len() as u64);
                let last = poll.readings.iter().map(|r| r.ts_ms).max();
                if let Some(r) = poll.readings.last() {
                    tracing::debug!(site = %site, meter = %m.id, kind, value_micro = r.value_micro, unit = %m.unit, "meter value");
                }
                submit(&site, &m, &poll.readings, &writer).await.map(|n| (n, poll.readings.len(), last))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((booked, read, last)) => {
                if failures > 0 {
                    tracing::info!(site = %site, meter = %m.id, kind, after = failures, "meter reads again");
                }
                failures = 0;
                stats.booked(&site, &m.id, read as u64, last);
                tracing::debug!(site = %site, meter = %m.id, kind, read, booked, "meter read");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                source.reset();
                stats.failed(&site, &m.id, e.reason(), 1);
                let wait = next_delay(interval, failures);
                tracing::warn!(
                    site = %site, meter = %m.id, kind, reason = e.reason().as_str(), error = %e,
                    failures, retry_in = ?wait, "meter read failed"
                );
            }
        }
        tokio::time::sleep_until(started + next_delay(interval, failures)).await;
    }
}

/// Starts a reader task for every configured non-csv meter.
pub fn spawn_all(
    sites: &[Site],
    gap: Duration,
    writer: &WriterHandle,
    stats: &Arc<MeterStats>,
    ledger: &Arc<dyn LedgerReader>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for s in sites {
        for m in s.config.meters.iter().filter(|m| m.kind != MeterKind::Csv) {
            stats.register(&s.config.id, &m.id);
            tasks.push(tokio::spawn(run(
                s.config.id.clone(),
                m.clone(),
                gap,
                writer.clone(),
                stats.clone(),
                ledger.clone(),
            )));
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meters::convert::ValueError;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let s = Duration::from_secs;
        assert_eq!(next_delay(s(60), 0), s(60));
        assert_eq!(next_delay(s(60), 1), s(120));
        assert_eq!(next_delay(s(60), 2), s(240));
        assert_eq!(next_delay(s(60), 3), s(300));
        assert_eq!(next_delay(s(60), 1000), s(300));
        assert_eq!(next_delay(s(1), 3), s(8));
        // An interval longer than the cap is never shortened.
        assert_eq!(next_delay(s(3600), 5), s(3600));
    }

    #[test]
    fn reasons_follow_the_reason_vocabulary() {
        assert_eq!(ReadError::Timeout(Duration::from_secs(1)).reason().as_str(), "timeout");
        assert_eq!(ReadError::Permission("401".into()).reason().as_str(), "permission");
        assert_eq!(ReadError::Parse("x".into()).reason().as_str(), "parse");
        assert_eq!(ReadError::Rejected(ValueError::Negative("-1".into())).reason().as_str(), "rejected");
        assert_eq!(ReadError::Io("refused".into()).reason().as_str(), "io");
        assert_eq!(ReadError::Missing("404".into()).reason().as_str(), "missing");
    }

    #[test]
    fn stats_become_samples() {
        let st = MeterStats::default();
        st.register("s", "m");
        st.booked("s", "m", 2, Some(1_700_000_000_000));
        st.failed("s", "m", Reason::Timeout, 1);
        st.failed("s", "m", Reason::Timeout, 1);
        let text = domesday_model::exposition::render(&st.samples(), &[]);
        assert!(text.contains("domesday_meter_readings_total{site=\"s\",meter=\"m\"} 2"), "{text}");
        assert!(
            text.contains("domesday_meter_read_errors_total{site=\"s\",meter=\"m\",reason=\"timeout\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("domesday_meter_last_reading_timestamp_seconds{site=\"s\",meter=\"m\"} 1700000000"),
            "{text}"
        );
    }
}
