//! Sensor sources. Each file owns one kind of sensor, reads it under the
//! injectable roots with plain `std::fs`, and reports typed samples plus one
//! status per sensor. A source never fails as a whole: a broken sensor becomes a
//! status with a reason, and the sampler turns it into `domesday_sensor_up=0`
//! and `domesday_sensor_errors_total{reason}`.

pub mod bmc;
pub mod clock;
pub mod hwmon;
pub mod ipmi;
pub mod nvml;
pub mod procfs;
pub mod rapl;
pub mod redfish;
pub mod thermal;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use domesday_model::vocab::{Reason, Source};

use crate::fsread::ReadError;

pub use domesday_model::exposition::Sample;

/// The outcome of one sensor's read this tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub source: Source,
    /// Qualified id, unique per host (`intel-rapl:1`, `platform_coretemp_0/temp3`).
    pub sensor: String,
    /// Unit of the value, for `probe`.
    pub unit: &'static str,
    /// File read, for `probe`.
    pub path: String,
    pub result: Result<f64, ReadError>,
}

/// Figures the host power arbitration needs, each `None` when not available
/// this tick (sensor absent, unreadable, or no baseline yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    /// BMC DCMI wall power, from a reading younger than 3 BMC intervals.
    pub bmc_dcmi: Option<BmcPower>,
    /// BMC Redfish wall power (`PowerWatts`/`PowerConsumedWatts`) and energy
    /// counter, same freshness rule.
    pub bmc_redfish: Option<BmcPower>,
    /// Σ package + Σ dram RAPL increments since the previous tick, µJ; `None`
    /// when any of those zones failed or had no baseline.
    pub rapl_host_delta_uj: Option<u128>,
    /// Σ PMBus PSU input power (`pin`), W; `None` unless every PSU input read.
    pub psu_input_watts: Option<f64>,
    /// ACPI power meter (`power_meter` hwmon chip), W.
    pub acpi_power_watts: Option<f64>,
    /// Mean CPU utilisation since the previous tick, 0 to 1.
    pub cpu_utilization: Option<f64>,
}

impl HostFacts {
    pub fn merge(&mut self, o: &HostFacts) {
        self.bmc_dcmi = self.bmc_dcmi.take().or_else(|| o.bmc_dcmi.clone());
        self.bmc_redfish = self.bmc_redfish.take().or_else(|| o.bmc_redfish.clone());
        self.rapl_host_delta_uj = self.rapl_host_delta_uj.or(o.rapl_host_delta_uj);
        self.psu_input_watts = self.psu_input_watts.or(o.psu_input_watts);
        self.acpi_power_watts = self.acpi_power_watts.or(o.acpi_power_watts);
        self.cpu_utilization = self.cpu_utilization.or(o.cpu_utilization);
    }
}

/// One BMC wall power reading as host power arbitration needs it: the BMC
/// polls on its own thread, so the reading carries the instant it was taken
/// and host energy integrates between readings, not between ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct BmcPower {
    pub watts: f64,
    /// When the BMC was read (the middle of the request), on the agent's
    /// monotonic clock (the sampler's epoch).
    pub at: Duration,
    /// Readings further apart than this are not interpolated across (an outage).
    pub max_gap: Duration,
    /// Which BMC (several `[[redfish]]` tables): readings of two BMCs are never
    /// paired.
    pub bmc: String,
    /// The BMC's own energy counter, when it has one.
    pub energy: Option<BmcEnergy>,
}

/// A BMC energy counter reading (raw: it may be reset by the BMC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BmcEnergy {
    /// The raw counter, J.
    pub joules: f64,
    /// The smallest step seen in the counter, J (from the decimals it is
    /// written with).
    pub resolution_j: f64,
    /// `EnergyJoules` (true) or the coarser `EnergykWh` (false).
    pub native_joules: bool,
}

/// The agent's monotonic clock at `at`: time since `epoch` (the sampler's start).
pub fn on_agent_clock(epoch: std::time::Instant, at: std::time::Instant) -> Duration {
    at.saturating_duration_since(epoch)
}

/// What a source returns for a tick.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub samples: Vec<Sample>,
    pub statuses: Vec<Status>,
    pub facts: HostFacts,
    /// Errors to count without a sensor status (once per event, e.g. per BMC poll).
    pub errors: Vec<(Source, Reason)>,
    /// Why a source that runs reads nothing at all (`enabled = "auto"` on a host
    /// without the hardware's driver), for `probe`; not an error.
    pub off: Option<String>,
}

impl Output {
    /// Records a sensor outcome.
    pub fn status(
        &mut self,
        source: Source,
        sensor: String,
        unit: &'static str,
        path: String,
        result: Result<f64, ReadError>,
    ) {
        self.statuses.push(Status { source, sensor, unit, path, result });
    }
}

/// The sensor a source is reading right now, so a sampler that gives up
/// waiting can name the sensor that blocked.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<Option<(String, String)>>>);

impl Progress {
    pub fn enter(&self, sensor: &str, path: &str) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some((sensor.to_string(), path.to_string()));
        }
    }

    pub fn current(&self) -> Option<(String, String)> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// A kind of sensor, owned by one worker thread.
pub trait SensorSource: Send + 'static {
    fn kind(&self) -> Source;
    /// (Re)discovers sensors; called at start and every `rescan_interval`.
    fn discover(&mut self);
    /// Reads every sensor. `now` is the agent's monotonic clock.
    fn sample(&mut self, now: Duration, progress: &Progress) -> Output;
    /// Reads energy counters only, to keep wrap detection between ticks
    /// (RAPL when the interval exceeds 30 s). Default: nothing to do.
    fn accumulate(&mut self, _progress: &Progress) {}
}

/// A reason for a sensor that is not there at all.
pub fn missing(detail: impl Into<String>) -> ReadError {
    ReadError::new(Reason::Missing, detail)
}

/// Lists the entries of a sysfs class directory whose names start with `prefix`,
/// sorted naturally (`hwmon2` before `hwmon10`). A missing directory is empty.
pub fn class_entries(dir: &std::path::Path, prefix: &str) -> Vec<(String, std::path::PathBuf)> {
    let mut out: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(prefix).then(|| (name, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|a| natural_key(&a.0));
    out
}

/// Sort key that orders embedded numbers numerically.
pub fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(num.unwrap_or(0).saturating_mul(10).saturating_add(u64::from(d)));
        } else {
            if let Some(n) = num.take() {
                out.push((std::mem::take(&mut text), n));
            }
            text.push(c);
        }
    }
    out.push((text, num.unwrap_or(0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["hwmon10", "hwmon2", "hwmon1", "intel-rapl:1:0", "intel-rapl:0"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["hwmon1", "hwmon2", "hwmon10", "intel-rapl:0", "intel-rapl:1:0"]);
    }
}
