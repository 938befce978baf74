//! The BMC over Redfish (DSP0268). The newer model first: when the chassis has
//! `EnvironmentMetrics`, its `PowerWatts.Reading` is the host's wall power
//! (method `bmc_redfish`) and `EnergyJoules.Reading` the BMC's energy counter
//! (reset-corrected: a drop is a reset), else the chassis-level energy member
//! of `Sensors` (one, never a sum); the temperatures come from `Sensors`
//! (`ReadingType` `Temperature`, located by `PhysicalContext`). Otherwise the
//! legacy model: `Power` `PowerControl[0].PowerConsumedWatts` (one member only:
//! it already includes the PSUs) and `Thermal` `Temperatures[]`. The
//! `PowerSubsystem` PSUs' `InputPowerWatts` are exported each on its own; their
//! sum is the chassis power only when neither `PowerWatts` nor
//! `PowerConsumedWatts` gives one, and only when every enabled PSU reads. The chassis is the first one not contained by another
//! (`Links.ContainedBy`) unless configured; a chassis shared by several nodes
//! (an enclosure) is flagged and never used as the host's power.
//! Fans: the `ThermalSubsystem` `Fans` collection (each `Fan`'s
//! `SpeedPercent.SpeedRPM`), else the legacy `Thermal` `Fans[]` in `RPM`; a fan
//! read in percent only is not a speed and is left out.
//! Polled on its own thread ([`super::bmc`]) through one Redfish session
//! (`X-Auth-Token`, re-created on 401, deleted at shutdown) or HTTP Basic auth,
//! TLS verified unless `insecure_skip_verify`; the password and the token are
//! never logged.

use std::time::{Duration, Instant};

use domesday_model::catalog::{ENERGY, FAN, POWER, TEMPERATURE};
use domesday_model::vocab::{Domain, Location, Reason, Source};
use serde_json::Value;

use super::bmc::{Poller, STALE_INTERVALS};
use super::hwmon::temperature_location;
use super::{BmcEnergy, BmcPower, Output, Progress, Sample, SensorSource, on_agent_clock};
use crate::config::{RedfishAuth, RedfishConfig};
use crate::fsread::ReadError;
use crate::plausible::{Quantity, check};

/// One temperature of `Thermal`.
#[derive(Debug, Clone, PartialEq)]
pub struct Temp {
    pub name: String,
    pub location: Location,
    /// The reading, physically plausible, or why there is none.
    pub value: Result<f64, ReadError>,
}

/// One fan read in RPM (`Thermal.Fans[]` or a `ThermalSubsystem` `Fan`).
#[derive(Debug, Clone, PartialEq)]
pub struct Fan {
    pub name: String,
    /// The speed in RPM, physically plausible, or why there is none (absent,
    /// disabled, null; 0 RPM is a reading: a stopped fan).
    pub value: Result<f64, ReadError>,
}

fn missing(why: impl Into<String>) -> ReadError {
    ReadError::new(Reason::Missing, why)
}

/// A sensor-like reading: `Status.State` must be `Enabled` (or absent), the
/// value a number (absent or null is no reading, not 0), within the bounds.
fn state_reading(doc: &Value, value: Option<&Value>, q: Quantity) -> Result<f64, ReadError> {
    let state = doc.pointer("/Status/State").and_then(Value::as_str).unwrap_or("Enabled");
    if state != "Enabled" {
        return Err(missing(format!("state {state}")));
    }
    match value {
        None | Some(Value::Null) => Err(missing("no reading")),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| parse_err("reading out of range")).and_then(|v| check(q, v)),
        Some(other) => Err(parse_err(format!("the reading is not a number: {other}"))),
    }
}

/// Legacy `Thermal.Fans[]`: the fans read in RPM (`Reading` with
/// `ReadingUnits` `RPM`, or the older `ReadingRPM`); a fan in `Percent` (or
/// without units) is left out.
pub fn legacy_fans(doc: &Value) -> Vec<Fan> {
    let list = doc.get("Fans").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    list.iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let units = f.get("ReadingUnits").and_then(Value::as_str);
            let value = match (units, f.get("ReadingRPM")) {
                (Some("RPM"), _) => f.get("Reading"),
                (None, Some(v)) => Some(v),
                _ => return None,
            };
            let name = ["Name", "FanName", "MemberId"]
                .iter()
                .find_map(|k| f.get(*k).and_then(Value::as_str))
                .map(str::to_string)
                .unwrap_or_else(|| format!("fan{i}"));
            Some(Fan { name, value: state_reading(f, value, Quantity::FanSpeed) })
        })
        .collect()
}

/// A `ThermalSubsystem` `Fan` (DSP0268 `Fan` v1): `SpeedPercent.SpeedRPM`, in
/// RPM; `None` for a fan read in percent only (`SpeedPercent.Reading` without
/// `SpeedRPM`). A fan without `SpeedPercent` at all (an empty bay) is listed
/// without a reading.
pub fn subsystem_fan(doc: &Value, fallback_name: &str) -> Option<Fan> {
    let name = doc.get("Name").or_else(|| doc.get("Id")).and_then(Value::as_str).unwrap_or(fallback_name).to_string();
    let speed = doc.get("SpeedPercent");
    let rpm = speed.and_then(|s| s.get("SpeedRPM"));
    if rpm.is_none() && speed.is_some_and(|s| s.get("Reading").is_some()) {
        return None;
    }
    Some(Fan { name, value: state_reading(doc, rpm, Quantity::FanSpeed) })
}

/// One `inlet` at most: when several temperatures are located at the inlet,
/// the first with a reading stays the inlet and the others are `ambient` (air
/// temperatures that are not the reference inlet).
pub fn single_inlet(temps: &mut [Temp]) {
    let best = temps.iter().position(|t| t.location == Location::Inlet && t.value.is_ok());
    for (i, t) in temps.iter_mut().enumerate() {
        if t.location == Location::Inlet && Some(i) != best && best.is_some() {
            t.location = Location::Ambient;
        }
    }
}

/// What one poll read.
#[derive(Debug, Clone, PartialEq)]
pub struct RedfishReading {
    pub chassis: String,
    pub watts: Result<f64, ReadError>,
    pub temps: Vec<Temp>,
    /// The BMC's energy counter (`EnergyJoules`), reset-corrected, J.
    pub energy_j: Option<f64>,
    /// This reading found the counter lower than the previous one: the BMC
    /// reset it (counted once, `reason="reset"`).
    pub energy_reset: bool,
    /// The same counter raw (as the BMC gives it, resets included) with its
    /// finest step seen, for host energy.
    pub energy_raw: Option<BmcEnergy>,
    /// When the power was read: the middle of its request.
    pub taken: Instant,
    /// The resource the power was read from (`.../Power` or `.../EnvironmentMetrics`).
    pub power_path: String,
    /// The resource the temperatures were read from (`.../Thermal` or `.../Sensors`).
    pub thermal_path: String,
    /// Why the chassis covers several nodes; its power is then not the host's.
    pub shared: Option<String>,
    /// The `PowerSubsystem` power supplies, each with its input power.
    pub psus: Vec<Psu>,
    /// The `PowerSubsystem` they were read from.
    pub psu_path: String,
    /// The fans read in RPM.
    pub fans: Vec<Fan>,
    /// The resource they were read from (`.../ThermalSubsystem/Fans` or `.../Thermal`).
    pub fan_path: String,
}

/// A BMC energy counter made monotonic: a drop is a reset (the energy since
/// the reset is the new raw value). Starts at the raw counter value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnergyCounter {
    last_raw: Option<f64>,
    total: f64,
    /// Drops seen so far (resets by the BMC).
    pub resets: u64,
}

impl EnergyCounter {
    pub fn update(&mut self, raw: f64) -> f64 {
        match self.last_raw {
            None => self.total = raw,
            Some(last) if raw >= last => self.total += raw - last,
            Some(_) => {
                self.total += raw;
                self.resets += 1;
            }
        }
        self.last_raw = Some(raw);
        self.total
    }

    /// Another counter takes over (`EnvironmentMetrics` ↔ a `Sensors` member):
    /// its value is the new baseline, the two are never differenced.
    pub fn rebase(&mut self, raw: f64) -> f64 {
        if self.last_raw.is_none() {
            return self.update(raw);
        }
        self.last_raw = Some(raw);
        self.total
    }
}

fn odata_id<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(|v| v.get("@odata.id")).and_then(Value::as_str)
}

/// Whether a chassis is inside another one (`Links.ContainedBy`).
pub fn contained_by(chassis: &Value) -> bool {
    chassis.pointer("/Links/ContainedBy/@odata.id").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

/// Why a chassis covers several nodes, `None` for one node: `Links.ComputerSystems`
/// lists more than one system, or an enclosure-like `ChassisType` (`Enclosure`,
/// `Rack`, `RackGroup`, `Zone`, `Shelf`) does not list exactly one system.
pub fn shared_by_nodes(chassis: &Value) -> Option<String> {
    let systems = chassis.pointer("/Links/ComputerSystems").and_then(Value::as_array).map(Vec::len);
    let kind = chassis.get("ChassisType").and_then(Value::as_str).unwrap_or("");
    match systems {
        Some(n) if n > 1 => Some(format!("its Links.ComputerSystems lists {n} systems")),
        Some(1) => None,
        _ if matches!(kind, "Enclosure" | "Rack" | "RackGroup" | "Zone" | "Shelf") => {
            Some(format!("its ChassisType is {kind} and it does not name one computer system"))
        }
        _ => None,
    }
}

fn reading_of(doc: &Value, key: &str) -> Result<f64, ReadError> {
    match doc.get(key).map(|v| v.get("Reading")) {
        Some(Some(Value::Number(n))) => {
            n.as_f64().filter(|v| v.is_finite()).ok_or_else(|| parse_err(format!("{key}.Reading out of range")))
        }
        Some(None | Some(Value::Null)) | None => {
            Err(ReadError::new(Reason::Missing, format!("{key}.Reading is absent or null; not 0")))
        }
        Some(Some(other)) => Err(parse_err(format!("{key}.Reading is not a number: {other}"))),
    }
}

/// The step of a reading written with this many decimals (`12.345` → 0.001):
/// the counter's resolution is at most that.
pub fn decimal_step(v: f64) -> f64 {
    let text = format!("{v}");
    let decimals = text.split_once('.').map(|(_, d)| d.len()).unwrap_or(0).min(15);
    10f64.powi(-(decimals as i32))
}

/// `EnvironmentMetrics`: `PowerWatts.Reading` (W) and the energy counter in J,
/// `EnergyJoules.Reading`, else the coarser `EnergykWh.Reading` × 3.6 MJ, with
/// the step this reading shows (its decimals).
pub fn environment_power(doc: &Value) -> (Result<f64, ReadError>, Option<BmcEnergy>) {
    let counter = |key: &str| reading_of(doc, key).ok().filter(|v| *v >= 0.0);
    let joules =
        counter("EnergyJoules").map(|j| BmcEnergy { joules: j, resolution_j: decimal_step(j), native_joules: true });
    let energy = joules.or_else(|| {
        counter("EnergykWh").map(|kwh| BmcEnergy {
            joules: kwh * 3.6e6,
            resolution_j: decimal_step(kwh) * 3.6e6,
            native_joules: false,
        })
    });
    (reading_of(doc, "PowerWatts").and_then(|w| check(Quantity::Power(Domain::Platform), w)), energy)
}

/// `ThermalMetrics.TemperatureSummaryCelsius`: the chassis' `Intake` and `Exhaust`.
pub fn temperature_summary(doc: &Value) -> Vec<Temp> {
    [("Intake", Location::Inlet), ("Exhaust", Location::Exhaust)]
        .into_iter()
        .filter_map(|(key, location)| {
            let v = doc.pointer(&format!("/TemperatureSummaryCelsius/{key}"))?;
            let value = state_reading(v, v.get("Reading"), Quantity::Temperature);
            Some(Temp { name: format!("{key} Temp"), location, value })
        })
        .collect()
}

/// A `Sensor` resource if it is a temperature, `None` otherwise.
pub fn sensor_temperature(doc: &Value) -> Option<Temp> {
    let is_temp = doc.get("ReadingType").and_then(Value::as_str) == Some("Temperature")
        || doc.get("ReadingUnits").and_then(Value::as_str) == Some("Cel");
    if !is_temp {
        return None;
    }
    let name = doc.get("Name").or_else(|| doc.get("Id")).and_then(Value::as_str).unwrap_or("temperature").to_string();
    let context = doc.get("PhysicalContext").and_then(Value::as_str).unwrap_or("");
    let location = context_location(context, &name);
    let value = state_reading(doc, doc.get("Reading"), Quantity::Temperature);
    Some(Temp { name, location, value })
}

fn context_location(context: &str, name: &str) -> Location {
    match context {
        "Intake" => Location::Inlet,
        "Exhaust" => Location::Exhaust,
        "CPU" | "CPUSubsystem" => Location::Cpu,
        "Memory" | "MemorySubsystem" => Location::Memory,
        "PowerSupply" | "PowerSubsystem" => Location::Psu,
        "StorageDevice" | "StorageSubsystem" => Location::Disk,
        "GPU" | "GPUSubsystem" | "Accelerator" => Location::Gpu,
        "Room" => Location::Ambient,
        _ => temperature_location("", name),
    }
}

/// One power supply of `PowerSubsystem` (DSP0268 `PowerSupply` v1): its input
/// power from its `Metrics` (`PowerSupplyMetrics` v1 `InputPowerWatts.Reading`).
#[derive(Debug, Clone, PartialEq)]
pub struct Psu {
    /// The PSU's `Id` (`Bay1`), else the last segment of its URI.
    pub id: String,
    /// Its URI, for `probe`.
    pub path: String,
    /// `Status.State` is `Enabled` (or absent): it carries load and its input
    /// is part of the chassis' wall power.
    pub enabled: bool,
    /// Input power, W; an error for a PSU that is not enabled or has no reading.
    pub input_watts: Result<f64, ReadError>,
}

/// A `PowerSupply`'s `Status.State`: `Ok` when enabled (an absent `Status`
/// counts as enabled, as for sensors), else why it is skipped (`Absent` for an
/// empty bay, `StandbySpare`/`StandbyOffline` for a cold spare, `Disabled`…).
pub fn psu_state(doc: &Value) -> Result<(), String> {
    match doc.pointer("/Status/State").and_then(Value::as_str).unwrap_or("Enabled") {
        "Enabled" => Ok(()),
        other => Err(format!("state {other}")),
    }
}

/// `PowerSupplyMetrics.InputPowerWatts.Reading` (W); absent or null is no
/// reading, not 0 W; outside the physical bounds, no reading either.
pub fn psu_input_watts(metrics: &Value) -> Result<f64, ReadError> {
    reading_of(metrics, "InputPowerWatts").and_then(|w| check(Quantity::Power(Domain::PsuInput), w))
}

/// The chassis' wall power as the sum of its PSUs' input power, for a chassis
/// whose `EnvironmentMetrics` (and legacy `Power`) give none. Only enabled
/// PSUs are added (an empty bay or a cold spare draws nothing); an enabled PSU
/// without a reading (missing, implausible, or an answer that does not parse)
/// refuses the sum: the sum over the others would under-report (in a redundant
/// pair, by about half). The refusal is `missing`: the PSU's own status says why.
pub fn psu_sum(psus: &[Psu]) -> Result<f64, ReadError> {
    let enabled: Vec<&Psu> = psus.iter().filter(|p| p.enabled).collect();
    if enabled.is_empty() {
        return Err(ReadError::new(Reason::Missing, format!("none of the {} power supplies is enabled", psus.len())));
    }
    let mut sum = 0.0;
    for p in enabled {
        match &p.input_watts {
            Ok(w) => sum += w,
            Err(e) => {
                // The chassis reading is missing; the PSU's own status counts why.
                return Err(ReadError::new(
                    Reason::Missing,
                    format!(
                        "power supply {} is enabled but has no input power ({}): a sum without it would \
                         under-report, not used",
                        p.id, e.detail
                    ),
                ));
            }
        }
    }
    Ok(sum)
}

/// How a `Sensor` qualifies as the chassis' energy counter, `None` when it is
/// not one: `ReadingType` `EnergyJoules`, `EnergyWh` or `EnergykWh` (or their
/// UCUM units `J`, `W.h`, `kW.h`), at the chassis' input (`PhysicalContext`
/// `Chassis`, `PowerSubsystem` or none; never a PSU's, a CPU's, the board's…
/// counter, which covers only part of the chassis), `ElectricalContext` `Total`
/// or none (never one phase), `PhysicalSubContext` not `Output` (after the PSUs'
/// losses). Higher ranks first: a name saying total/chassis/system, then a
/// context of `Chassis`, then joules (the finest resolution).
pub fn energy_sensor_rank(doc: &Value) -> Option<(u8, u8, u8)> {
    let kind = doc.get("ReadingType").and_then(Value::as_str).unwrap_or("");
    let units = doc.get("ReadingUnits").and_then(Value::as_str).unwrap_or("");
    let joules = kind == "EnergyJoules" || (kind.is_empty() && units == "J");
    let energy =
        joules || matches!(kind, "EnergyWh" | "EnergykWh") || (kind.is_empty() && matches!(units, "W.h" | "kW.h"));
    if !energy {
        return None;
    }
    let context = doc.get("PhysicalContext").and_then(Value::as_str).unwrap_or("");
    if !matches!(context, "" | "Chassis" | "PowerSubsystem") {
        return None;
    }
    if !matches!(doc.get("ElectricalContext").and_then(Value::as_str).unwrap_or("Total"), "Total") {
        return None;
    }
    if doc.get("PhysicalSubContext").and_then(Value::as_str) == Some("Output") {
        return None;
    }
    let name = format!(
        "{} {}",
        doc.get("Id").and_then(Value::as_str).unwrap_or(""),
        doc.get("Name").and_then(Value::as_str).unwrap_or("")
    )
    .to_lowercase();
    let total = ["total", "chassis", "system", "node", "server"].iter().any(|w| name.contains(w));
    Some((u8::from(total), u8::from(context == "Chassis"), u8::from(joules)))
}

/// An energy `Sensor`'s counter in J with the step its reading shows; `None`
/// when it is not an energy sensor, not enabled, or has no reading.
pub fn sensor_energy(doc: &Value) -> Option<BmcEnergy> {
    energy_sensor_rank(doc)?;
    if doc.pointer("/Status/State").and_then(Value::as_str).is_some_and(|s| s != "Enabled") {
        return None;
    }
    let reading = doc.get("Reading").and_then(Value::as_f64).filter(|v| v.is_finite() && *v >= 0.0)?;
    let kind = doc.get("ReadingType").and_then(Value::as_str).unwrap_or("");
    let units = doc.get("ReadingUnits").and_then(Value::as_str).unwrap_or("");
    let scale = match (kind, units) {
        ("EnergyJoules", _) | ("", "J") => 1.0,
        ("EnergyWh", _) | ("", "W.h") => 3600.0,
        _ => 3.6e6,
    };
    Some(BmcEnergy {
        joules: reading * scale,
        resolution_j: decimal_step(reading) * scale,
        native_joules: scale == 1.0,
    })
}

/// Most sensors fetched one by one to find the temperatures (once per chassis).
const MAX_SENSORS: usize = 128;

fn parse_err(detail: impl Into<String>) -> ReadError {
    ReadError::new(Reason::Parse, detail)
}

/// The `@odata.id`s of a collection's members.
pub fn members(doc: &Value) -> Result<Vec<String>, ReadError> {
    let m = doc.get("Members").and_then(Value::as_array).ok_or_else(|| parse_err("no Members array"))?;
    Ok(m.iter().filter_map(|x| x.get("@odata.id").and_then(Value::as_str).map(str::to_string)).collect())
}

/// `PowerControl[0].PowerConsumedWatts`; absent or null is no reading (not 0 W).
pub fn power_consumed(doc: &Value) -> Result<f64, ReadError> {
    let pc =
        doc.get("PowerControl").and_then(Value::as_array).ok_or_else(|| parse_err("no PowerControl array in Power"))?;
    let first = pc.first().ok_or_else(|| ReadError::new(Reason::Missing, "PowerControl is empty"))?;
    match first.get("PowerConsumedWatts") {
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| parse_err("PowerConsumedWatts out of range"))
            .and_then(|w| check(Quantity::Power(Domain::Platform), w)),
        None | Some(Value::Null) => {
            let state = first.pointer("/Status/State").and_then(Value::as_str).unwrap_or("unknown");
            Err(ReadError::new(Reason::Missing, format!("PowerConsumedWatts is null (state {state}); not 0 W")))
        }
        Some(other) => Err(parse_err(format!("PowerConsumedWatts is not a number: {other}"))),
    }
}

/// `Temperatures[]`: readings, honouring `Status.State` and null readings.
pub fn temperatures(doc: &Value) -> Result<Vec<Temp>, ReadError> {
    let ts = doc.get("Temperatures").and_then(Value::as_array).ok_or_else(|| parse_err("no Temperatures array"))?;
    Ok(ts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t.get("Name").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("temp{i}"));
            let context = t.get("PhysicalContext").and_then(Value::as_str).unwrap_or("");
            let location = context_location(context, &name);
            let value = state_reading(t, t.get("ReadingCelsius"), Quantity::Temperature);
            Temp { name, location, value }
        })
        .collect())
}

/// A Redfish client for one BMC.
pub struct Client {
    cfg: RedfishConfig,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    chassis: Option<String>,
    /// The temperature sensors of `Sensors` (found on the first poll).
    temp_sensors: Option<Vec<String>>,
    /// The chassis' energy sensor of `Sensors` (found on the first poll with
    /// the temperatures), read when `EnvironmentMetrics` has no energy.
    energy_sensor: Option<String>,
    /// The `PowerSubsystem` power supplies (found on the first poll).
    psu_uris: Option<Vec<String>>,
    /// The `ThermalSubsystem` fans collection and its members (found on the first poll).
    fan_uris: Option<(String, Vec<String>)>,
    energy: EnergyCounter,
    /// The finest step of the energy counter seen (`EnergyJoules`?, J).
    energy_step: Option<(bool, f64)>,
    /// Where the energy counter was last read (`EnvironmentMetrics` or a sensor).
    energy_from: Option<String>,
    warned_shared: bool,
    /// The session in use (`auth = "session"`).
    session: Option<Session>,
    /// The BMC answered the session login with 404/405/501: Basic instead.
    no_session_service: bool,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.logout();
    }
}

/// The session collection (DSP0266 §13.3.4).
const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

/// A Redfish session: its token is a secret (never logged, redacted in
/// `Debug`, a sensitive header), its path is where to delete it.
struct Session {
    token: reqwest::header::HeaderValue,
    path: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("token", &"<redacted>").field("path", &self.path).finish()
    }
}

/// The path of a session's `Location`: a path as is, an absolute URL reduced
/// to its path (the token is only ever sent to the configured BMC).
pub fn session_path(location: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with('/') {
        return Some(location.to_string());
    }
    reqwest::Url::parse(location).ok().map(|u| u.path().to_string()).filter(|p| p.len() > 1)
}

impl Client {
    pub fn new(cfg: &RedfishConfig) -> Result<Self, String> {
        let t = cfg.timeout.0;
        let mut b =
            reqwest::Client::builder().timeout(t).connect_timeout(t).redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("redfish.ca_file: {e}"))?;
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if cfg.insecure_skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b.build().map_err(|e| format!("Redfish HTTP client: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("Redfish runtime: {e}"))?;
        let chassis = cfg.chassis.as_ref().map(|c| format!("/redfish/v1/Chassis/{c}"));
        Ok(Client {
            cfg: cfg.clone(),
            http,
            rt,
            chassis,
            temp_sensors: None,
            energy_sensor: None,
            psu_uris: None,
            fan_uris: None,
            energy: EnergyCounter::default(),
            energy_step: None,
            energy_from: None,
            warned_shared: false,
            session: None,
            no_session_service: false,
        })
    }

    /// Whether requests go through a session (`auth = "session"` with a
    /// username, and the BMC has a session service).
    fn wants_session(&self) -> bool {
        self.cfg.username.is_some() && self.cfg.auth == RedfishAuth::Session && !self.no_session_service
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url).header("Accept", "application/json").header("OData-Version", "4.0");
        match (&self.session, &self.cfg.username) {
            (Some(s), _) => req.header("X-Auth-Token", s.token.clone()),
            (None, Some(user)) if !self.wants_session() => {
                req.basic_auth(user, self.cfg.password.as_ref().map(|p| p.expose()))
            }
            _ => req,
        }
    }

    /// A document; on a 401 with a session, logs in again once and retries
    /// (the BMC expired or dropped the session).
    fn get(&mut self, path: &str) -> Result<Value, ReadError> {
        if self.wants_session() && self.session.is_none() {
            self.login()?;
        }
        match self.get_once(path) {
            Err((_, true)) if self.session.is_some() => {
                tracing::info!(bmc = %self.cfg.url, "the Redfish session is no longer valid (401): logging in again");
                self.session = None;
                self.login()?;
                self.get_once(path).map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    /// One GET; the flag says the answer was 401.
    fn get_once(&self, path: &str) -> Result<Value, (ReadError, bool)> {
        let url = format!("{}{path}", self.cfg.url);
        let timeout = self.cfg.timeout.0;
        let req = self.request(reqwest::Method::GET, &url);
        self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| (http_error(&url, &e, timeout), false))?;
            let status = resp.status();
            match status.as_u16() {
                200..=299 => {}
                401 | 403 => {
                    return Err((
                        ReadError::new(
                            Reason::Permission,
                            format!(
                                "{url} answered {status}: check username and password_file (and the account's role)"
                            ),
                        ),
                        status.as_u16() == 401,
                    ));
                }
                404 => return Err((ReadError::new(Reason::Missing, format!("{url} answered 404")), false)),
                _ => return Err((ReadError::new(Reason::Io, format!("{url} answered {status}")), false)),
            }
            let body = resp.text().await.map_err(|e| (http_error(&url, &e, timeout), false))?;
            serde_json::from_str(&body).map_err(|e| (parse_err(format!("{url}: not JSON ({e})")), false))
        })
    }

    /// Creates a session (DSP0266 §13.3): `POST /redfish/v1/SessionService/Sessions`
    /// with the credentials, the token from `X-Auth-Token`, the session's URI
    /// from `Location` (else the body's `@odata.id`). A BMC without a session
    /// service (404, 405, 501) is read with HTTP Basic instead.
    fn login(&mut self) -> Result<(), ReadError> {
        let url = format!("{}{SESSIONS}", self.cfg.url);
        let timeout = self.cfg.timeout.0;
        let body = serde_json::json!({
            "UserName": self.cfg.username.as_deref().unwrap_or(""),
            "Password": self.cfg.password.as_ref().map(|p| p.expose()).unwrap_or(""),
        });
        let req = self
            .request(reqwest::Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let answer = self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| http_error(&url, &e, timeout))?;
            let status = resp.status();
            let token = resp.headers().get("X-Auth-Token").cloned();
            let location =
                resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(String::from);
            let text = resp.text().await.unwrap_or_default();
            Ok::<_, ReadError>((status, token, location, text))
        })?;
        let (status, token, location, text) = answer;
        match status.as_u16() {
            200..=299 => {}
            404 | 405 | 501 => {
                tracing::warn!(bmc = %self.cfg.url, %status,
                    "the BMC has no Redfish session service ({url} answered {status}): using HTTP Basic auth");
                self.no_session_service = true;
                return Ok(());
            }
            401 | 403 => {
                return Err(ReadError::new(
                    Reason::Permission,
                    format!("session login at {url} refused ({status}): check username and password_file"),
                ));
            }
            _ => return Err(ReadError::new(Reason::Io, format!("session login at {url} answered {status}"))),
        }
        let Some(mut token) = token.filter(|t| !t.is_empty()) else {
            return Err(parse_err(format!("session login at {url} answered {status} without an X-Auth-Token")));
        };
        token.set_sensitive(true);
        let from_body = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("@odata.id").and_then(Value::as_str).map(String::from));
        let path = location.or(from_body).and_then(|l: String| session_path(&l));
        if path.is_none() {
            tracing::warn!(bmc = %self.cfg.url, "the Redfish session has no Location: it cannot be deleted at shutdown");
        }
        tracing::info!(bmc = %self.cfg.url, session = path.as_deref().unwrap_or("?"), "Redfish session created");
        self.session = Some(Session { token, path });
        Ok(())
    }

    /// Deletes the session (shutdown), best effort: a BMC has few session
    /// slots, and an abandoned one holds its slot until it times out.
    fn logout(&mut self) {
        let Some(Session { token, path: Some(path) }) = self.session.take() else { return };
        let url = format!("{}{path}", self.cfg.url);
        let req = self
            .http
            .delete(&url)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0")
            .header("X-Auth-Token", token);
        // `send` arms its timeout, which needs the runtime: inside `block_on`.
        match self.rt.block_on(async { req.send().await }) {
            Ok(r) if r.status().is_success() => {
                tracing::info!(bmc = %self.cfg.url, session = %path, "Redfish session deleted")
            }
            Ok(r) => tracing::warn!(bmc = %self.cfg.url, session = %path, status = %r.status(),
                "the BMC refused to delete the Redfish session; it will expire it"),
            Err(e) => {
                tracing::warn!(bmc = %self.cfg.url, session = %path, "cannot delete the Redfish session ({}); the BMC will expire it",
                http_error(&url, &e, self.cfg.timeout.0))
            }
        }
    }

    /// A document, where 404 and non-JSON are `None` (the resource is not
    /// there); transport and auth failures are errors.
    fn get_opt(&mut self, path: &str) -> Result<Option<Value>, ReadError> {
        match self.get(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.reason == Reason::Missing || e.reason == Reason::Parse => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A member resource: transport and auth failures fail the poll (outer
    /// error); a resource that is gone (`missing`) or does not parse (`parse`)
    /// is that member's own failure (inner error).
    fn get_member(&mut self, path: &str) -> Result<Result<Value, ReadError>, ReadError> {
        match self.get(path) {
            Ok(v) if v.is_object() => Ok(Ok(v)),
            Ok(_) => Ok(Err(parse_err(format!("{}{path}: not a JSON object", self.cfg.url)))),
            Err(e) if e.reason == Reason::Missing || e.reason == Reason::Parse => Ok(Err(e)),
            Err(e) => Err(e),
        }
    }

    /// The first chassis not contained by another (a DIMM riser, a backplane,
    /// Dell's `Enclosure.Internal`), else the first member.
    fn pick_chassis(&mut self) -> Result<String, ReadError> {
        let all = members(&self.get("/redfish/v1/Chassis")?)?;
        for c in &all {
            if let Some(doc) = self.get_opt(c)?
                && !contained_by(&doc)
            {
                return Ok(c.clone());
            }
        }
        all.into_iter().next().ok_or_else(|| ReadError::new(Reason::Missing, "the BMC lists no chassis"))
    }

    /// The temperatures of a `Sensors` collection (members expanded or not).
    fn sensor_temps(&mut self, sensors: &str) -> Result<Vec<Temp>, ReadError> {
        if let Some(uris) = &self.temp_sensors {
            let mut temps = Vec::new();
            for u in uris.clone() {
                if let Some(t) = self.get_opt(&u)?.as_ref().and_then(sensor_temperature) {
                    temps.push(t);
                }
            }
            return Ok(temps);
        }
        Ok(self.discover_sensors(sensors)?.into_iter().map(|(_, t)| t).collect())
    }

    /// Walks a `Sensors` collection once (members expanded, or fetched one by
    /// one, at most [`MAX_SENSORS`]): keeps the temperature sensors and the best
    /// chassis energy sensor ([`energy_sensor_rank`]; one, never a sum), and
    /// returns the temperatures read on the way.
    fn discover_sensors(&mut self, sensors: &str) -> Result<Vec<(String, Temp)>, ReadError> {
        let Some(coll) = self.get_opt(sensors)? else { return Ok(Vec::new()) };
        let listed = coll.get("Members").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut temps = Vec::new();
        let mut energy: Option<((u8, u8, u8), String)> = None;
        for m in listed.iter().take(MAX_SENSORS) {
            let Some(uri) = m.get("@odata.id").and_then(Value::as_str) else { continue };
            let doc = if m.get("Reading").is_some() || m.get("ReadingType").is_some() {
                Some(m.clone())
            } else {
                self.get_opt(uri)?
            };
            let Some(doc) = doc else { continue };
            if let Some(t) = sensor_temperature(&doc) {
                temps.push((uri.to_string(), t));
            } else if let Some(rank) = energy_sensor_rank(&doc)
                && energy.as_ref().is_none_or(|(best, _)| rank > *best)
            {
                energy = Some((rank, uri.to_string()));
            }
        }
        self.temp_sensors = Some(temps.iter().map(|(u, _)| u.clone()).collect());
        self.energy_sensor = energy.map(|(_, u)| u);
        if let Some(e) = &self.energy_sensor {
            tracing::info!(bmc = %self.cfg.url, sensor = %e, "Redfish energy sensor for the chassis");
        }
        Ok(temps)
    }

    /// The chassis energy counter from `Sensors`, for a chassis whose
    /// `EnvironmentMetrics` has none.
    fn sensor_energy(&mut self, sensors: &str) -> Result<Option<BmcEnergy>, ReadError> {
        if self.temp_sensors.is_none() {
            self.discover_sensors(sensors)?;
        }
        let Some(uri) = self.energy_sensor.clone() else { return Ok(None) };
        Ok(self.get_opt(&uri)?.as_ref().and_then(sensor_energy))
    }

    /// The power supplies of `PowerSubsystem` (listed on the first poll, each
    /// read at every poll with its `Metrics`), the path they were read from and
    /// the middle of their requests. `None` when the chassis has no
    /// `PowerSubsystem` or it lists no power supply.
    fn read_psus(&mut self, chassis: &Value) -> Result<Option<(Vec<Psu>, String, Instant)>, ReadError> {
        let Some(subsystem) = odata_id(chassis, "PowerSubsystem").map(str::to_string) else { return Ok(None) };
        if self.psu_uris.is_none() {
            let coll = match self.get_opt(&subsystem)? {
                Some(d) => odata_id(&d, "PowerSupplies").map(str::to_string),
                None => None,
            };
            let uris = match coll {
                Some(c) => self.get_opt(&c)?.map(|d| members(&d).unwrap_or_default()).unwrap_or_default(),
                None => Vec::new(),
            };
            self.psu_uris = Some(uris);
        }
        let uris = self.psu_uris.clone().unwrap_or_default();
        if uris.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let mut psus = Vec::new();
        for uri in uris {
            let fallback_id = uri.trim_end_matches('/').rsplit('/').next().unwrap_or(&uri).to_string();
            let doc = match self.get_member(&uri)? {
                Ok(doc) => doc,
                Err(e) => {
                    // Gone (404): an empty bay. An answer that does not parse says
                    // nothing of its state: counted as enabled without a reading,
                    // so the sum is refused rather than under-reported.
                    let enabled = e.reason == Reason::Parse;
                    psus.push(Psu { id: fallback_id, path: uri, enabled, input_watts: Err(e) });
                    continue;
                }
            };
            let id = doc.get("Id").and_then(Value::as_str).map(str::to_string).unwrap_or(fallback_id);
            let input_watts = match (psu_state(&doc), odata_id(&doc, "Metrics").map(str::to_string)) {
                (Err(why), _) => Err(ReadError::new(Reason::Missing, why)),
                (Ok(()), None) => Err(ReadError::new(Reason::Missing, "no Metrics (PowerSupplyMetrics) link")),
                (Ok(()), Some(m)) => self.get_member(&m)?.and_then(|metrics| psu_input_watts(&metrics)),
            };
            psus.push(Psu { id, path: uri, enabled: psu_state(&doc).is_ok(), input_watts });
        }
        Ok(Some((psus, subsystem, t0 + t0.elapsed() / 2)))
    }

    /// The fans in RPM: the `ThermalSubsystem` `Fans` collection (listed on the
    /// first poll, each member read at every poll), else the legacy `Thermal`
    /// document's `Fans[]` (`thermal`, when it was already read for the
    /// temperatures, else read if the chassis links it). Returns the fans and
    /// the resource they came from.
    fn read_fans(&mut self, doc: &Value, thermal: Option<(Value, String)>) -> Result<(Vec<Fan>, String), ReadError> {
        if let Some(ts) = odata_id(doc, "ThermalSubsystem").map(str::to_string) {
            if self.fan_uris.is_none() {
                let coll = match self.get_opt(&ts)? {
                    Some(d) => odata_id(&d, "Fans").map(str::to_string),
                    None => None,
                };
                let uris = match &coll {
                    Some(c) => self.get_opt(c)?.map(|d| members(&d).unwrap_or_default()).unwrap_or_default(),
                    None => Vec::new(),
                };
                self.fan_uris = Some((coll.unwrap_or_default(), uris));
            }
            let (coll, uris) = self.fan_uris.clone().unwrap_or_default();
            if !uris.is_empty() {
                let mut fans = Vec::new();
                for uri in uris.iter().take(MAX_SENSORS) {
                    let fallback = uri.trim_end_matches('/').rsplit('/').next().unwrap_or(uri);
                    match self.get_member(uri)? {
                        Ok(d) => fans.extend(subsystem_fan(&d, fallback)),
                        Err(e) => fans.push(Fan { name: fallback.to_string(), value: Err(e) }),
                    }
                }
                return Ok((fans, coll));
            }
        }
        let thermal = match thermal {
            Some(t) => Some(t),
            None => match odata_id(doc, "Thermal").map(str::to_string) {
                Some(p) => self.get_opt(&p)?.map(|d| (d, p)),
                None => None,
            },
        };
        Ok(thermal.map(|(d, p)| (legacy_fans(&d), p)).unwrap_or_default())
    }

    /// A GET and the middle of its request: when the BMC's value was read.
    fn timed_get(&mut self, path: &str) -> (Result<Value, ReadError>, Instant) {
        let t0 = Instant::now();
        let got = self.get(path);
        (got, t0 + t0.elapsed() / 2)
    }

    /// The raw counter with the finest step it has shown so far (a reading
    /// written with fewer decimals, `12.5` for `12.500`, does not coarsen it).
    fn energy_raw(&mut self, mut raw: BmcEnergy) -> BmcEnergy {
        let step = match self.energy_step {
            Some((native, s)) if native == raw.native_joules => s.min(raw.resolution_j),
            _ => raw.resolution_j,
        };
        self.energy_step = Some((raw.native_joules, step));
        raw.resolution_j = step;
        raw
    }

    /// One poll: the chassis, its `EnvironmentMetrics` and `Sensors` when it has
    /// them, else its legacy `Power` and `Thermal`.
    pub fn poll(&mut self) -> Result<RedfishReading, ReadError> {
        let chassis = match &self.chassis {
            Some(c) => c.clone(),
            None => {
                let c = self.pick_chassis()?;
                self.chassis = Some(c.clone());
                c
            }
        };
        let id = chassis.rsplit('/').next().unwrap_or(&chassis).to_string();
        // The chassis resource: absent (404) is read as the legacy model; an
        // answer that is not JSON, or not an object, is a parse failure.
        let doc = match self.get(&chassis) {
            Ok(d) if d.is_object() => d,
            Ok(_) => return Err(parse_err(format!("{}{chassis}: not a Chassis object", self.cfg.url))),
            Err(e) if e.reason == Reason::Missing => Value::Null,
            Err(e) => return Err(e),
        };
        let shared = shared_by_nodes(&doc);
        if let Some(why) = &shared
            && !self.warned_shared
        {
            tracing::warn!(
                chassis = %id,
                "Redfish chassis {id} covers several nodes ({why}): its power is not this host's wall power and is \
                 not used as bmc_redfish; configure [redfish] chassis with the node's own chassis"
            );
            self.warned_shared = true;
        }
        let mut power = match odata_id(&doc, "EnvironmentMetrics") {
            Some(env) => {
                let env = env.to_string();
                let (got, taken) = self.timed_get(&env);
                match got {
                    Ok(d) => {
                        let (w, e) = environment_power(&d);
                        (w, e, env, taken)
                    }
                    Err(e) if e.reason != Reason::Missing && e.reason != Reason::Parse => return Err(e),
                    Err(e) => (Err(e), None, env, taken),
                }
            }
            None => {
                let p = format!("{chassis}/Power");
                let (got, taken) = self.timed_get(&p);
                let w = match got {
                    Ok(doc) => power_consumed(&doc),
                    // A transport or auth failure fails the whole poll.
                    Err(e) if e.reason != Reason::Missing && e.reason != Reason::Parse => return Err(e),
                    Err(e) => Err(e),
                };
                (w, None, p, taken)
            }
        };
        // EnvironmentMetrics without a power reading: the legacy Power if the chassis links it.
        if let (Err(e), Some(p)) = (&power.0, odata_id(&doc, "Power"))
            && e.reason == Reason::Missing
            && power.2 != p
        {
            let p = p.to_string();
            let (got, taken) = self.timed_get(&p);
            match got {
                Ok(d) => power = (power_consumed(&d), power.1, p, taken),
                Err(e) if e.reason != Reason::Missing && e.reason != Reason::Parse => return Err(e),
                Err(_) => {}
            }
        }
        // The PSUs, for their own series; their sum is the chassis' power only
        // when neither EnvironmentMetrics nor Power gives one (it is inside
        // PowerWatts/PowerConsumedWatts: never added to them).
        let psus = self.read_psus(&doc)?;
        if let (Err(e), Some((list, path, taken))) = (&power.0, &psus)
            && e.reason == Reason::Missing
        {
            power = (psu_sum(list), power.1, path.clone(), *taken);
        }
        let (psus, psu_path) = psus.map(|(list, path, _)| (list, path)).unwrap_or_default();
        let sensors = odata_id(&doc, "Sensors").map(str::to_string);
        let mut energy_from = power.1.and(odata_id(&doc, "EnvironmentMetrics").map(str::to_string));
        // EnvironmentMetrics without an energy counter: the chassis' energy sensor.
        if power.1.is_none()
            && let Some(s) = &sensors
            && let Some(raw) = self.sensor_energy(s)?
        {
            power.1 = Some(raw);
            energy_from = self.energy_sensor.clone();
        }
        let (watts, energy_raw, power_path, taken) = power;
        let switched = energy_from.is_some() && self.energy_from.is_some() && energy_from != self.energy_from;
        if switched {
            // Another counter: its own resolution, a new baseline, and this
            // reading carries no counter for host energy (never paired with
            // the other counter's readings).
            tracing::info!(bmc = %self.cfg.url, counter = energy_from.as_deref().unwrap_or(""),
                "the Redfish energy counter is now read from another resource");
            self.energy_step = None;
        }
        let energy_raw = energy_raw.map(|raw| self.energy_raw(raw));
        let resets = self.energy.resets;
        let energy_j = energy_raw
            .map(|raw| if switched { self.energy.rebase(raw.joules) } else { self.energy.update(raw.joules) });
        let energy_reset = self.energy.resets > resets;
        let energy_raw = energy_raw.filter(|_| !switched);
        if energy_from.is_some() {
            self.energy_from = energy_from;
        }
        let sensor_temps = match &sensors {
            Some(s) => self.sensor_temps(s)?,
            None => Vec::new(),
        };
        // Sensors without temperatures: ThermalSubsystem's summary, else the legacy Thermal.
        let thermal = if sensor_temps.is_empty() { None } else { sensors };
        let summary = match (&thermal, odata_id(&doc, "Thermal"), odata_id(&doc, "ThermalSubsystem")) {
            (Some(_), _, _) | (None, Some(_), _) | (None, None, None) => None,
            // No temperature sensor and no legacy Thermal: ThermalSubsystem/ThermalMetrics.
            (None, None, Some(ts)) => {
                let metrics = match self.get_opt(ts)? {
                    Some(d) => odata_id(&d, "ThermalMetrics").map(str::to_string),
                    None => None,
                };
                match metrics {
                    Some(m) => self.get_opt(&m)?.map(|d| (temperature_summary(&d), m)),
                    None => None,
                }
            }
        };
        let mut thermal_doc = None;
        let (mut temps, thermal_path) = match (thermal, summary) {
            (Some(sensors), _) => (sensor_temps, sensors),
            (None, Some(summary)) => summary,
            (None, None) => {
                let p = format!("{chassis}/Thermal");
                let temps = match self.get(&p) {
                    Ok(doc) => {
                        let t = temperatures(&doc).unwrap_or_default();
                        thermal_doc = Some((doc, p.clone()));
                        t
                    }
                    Err(e) if e.reason != Reason::Missing && e.reason != Reason::Parse => return Err(e),
                    Err(_) => Vec::new(),
                };
                (temps, p)
            }
        };
        single_inlet(&mut temps);
        let (fans, fan_path) = self.read_fans(&doc, thermal_doc)?;
        if let Err(e) = &watts
            && e.reason == Reason::Parse
        {
            return Err(e.clone());
        }
        Ok(RedfishReading {
            chassis: id,
            watts,
            temps,
            energy_j,
            energy_reset,
            energy_raw,
            taken,
            power_path,
            thermal_path,
            shared,
            psus,
            psu_path,
            fans,
            fan_path,
        })
    }
}

/// A failed request: no answer in time is `timeout`, an answer whose body
/// cannot be decoded (a `Content-Encoding` it does not follow, a bad charset)
/// is `parse` (it arrived), anything else on the way is `io`.
fn http_error(url: &str, e: &reqwest::Error, timeout: Duration) -> ReadError {
    if e.is_decode() {
        ReadError::new(Reason::Parse, format!("{url}: the answer cannot be decoded ({e})"))
    } else if e.is_timeout() {
        ReadError::new(Reason::Timeout, format!("{url}: no answer within {}", humantime::format_duration(timeout)))
    } else if e.is_connect() {
        ReadError::new(Reason::Io, format!("{url}: cannot connect ({e})"))
    } else {
        ReadError::new(Reason::Io, format!("{url}: {e}"))
    }
}

/// The Redfish source: the tick's view of the poll thread.
pub struct Redfish {
    poller: Poller<RedfishReading>,
    url: String,
    /// The last poll whose shared-chassis rejection was counted.
    rejected_poll: u64,
    /// The reading whose counter reset was counted (each reset once, however
    /// many ticks copy that reading).
    reset_counted: Option<Instant>,
    /// Put before the chassis id in labels when several BMCs are read.
    prefix: String,
    /// The sampler's start: readings are stamped on the agent's clock.
    epoch: Instant,
    /// Readings further apart than this are not interpolated across.
    max_gap: Duration,
}

/// The label prefix of a BMC among several: its URL's host and port, then `/`.
pub fn label_prefix(url: &str) -> String {
    let authority = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = authority.split('/').next().unwrap_or(authority);
    format!("{authority}/")
}

impl Redfish {
    pub fn new(cfg: &RedfishConfig, prefix: String, epoch: Instant) -> std::io::Result<Self> {
        let mut client = Client::new(cfg).map_err(std::io::Error::other)?;
        let poller = Poller::spawn("redfish", cfg.interval.0, move || client.poll())?;
        let max_gap = cfg.interval.0 * STALE_INTERVALS;
        Ok(Redfish { poller, url: cfg.url.clone(), rejected_poll: 0, reset_counted: None, prefix, epoch, max_gap })
    }

    pub fn waiter(&self) -> impl Fn(Duration) + Send + 'static {
        self.poller.waiter()
    }

    /// Stops polling and waits (until the deadline) for the session's logout.
    pub fn closer(&self) -> impl Fn(Instant) + Send + 'static {
        self.poller.closer()
    }
}

impl SensorSource for Redfish {
    fn kind(&self) -> Source {
        Source::Redfish
    }

    fn discover(&mut self) {}

    fn sample(&mut self, _now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        let st = self.poller.state();
        let fresh = self.poller.fresh(&st);
        let last = st.last_ok.as_ref().map(|(_, r)| r);
        let chassis = format!("{}{}", self.prefix, last.map(|r| r.chassis.as_str()).unwrap_or("chassis"));
        let sensor = format!("{chassis}/power");
        let path = match last {
            Some(r) => format!("{}{}", self.url, r.power_path),
            None => format!("{}/redfish/v1/Chassis/chassis/Power", self.url),
        };
        progress.enter(&sensor, &path);
        if st.polls == 0 {
            let e = ReadError::new(Reason::Missing, "no BMC answer yet (first poll running)");
            out.status(Source::Redfish, sensor, "watts", path, Err(e));
            return out;
        }
        let watts = match (&st.last_err, &fresh) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(r)) => r.watts.clone(),
            (None, None) => {
                Err(ReadError::new(Reason::Gap, "the last BMC reading is older than 3 polling intervals; not used"))
            }
        };
        let shared = fresh.as_ref().is_some_and(|r| r.shared.is_some());
        if let Some((Ok(w), r)) = fresh.as_ref().map(|r| (&r.watts, r)) {
            if !shared {
                out.facts.bmc_redfish = Some(BmcPower {
                    watts: *w,
                    at: on_agent_clock(self.epoch, r.taken),
                    max_gap: self.max_gap,
                    bmc: self.url.clone(),
                    energy: r.energy_raw,
                });
            } else if st.polls != self.rejected_poll {
                // Once per poll: the chassis covers several nodes, its power is not the host's.
                self.rejected_poll = st.polls;
                out.errors.push((Source::Redfish, Reason::Rejected));
            }
        }
        let src = Source::Redfish.to_string();
        if let Ok(w) = &watts {
            out.samples.push(Sample::new(
                &POWER,
                vec![src.clone(), chassis.clone(), Domain::Platform.to_string(), String::new()],
                *w,
            ));
        }
        out.status(Source::Redfish, sensor, "watts", path, watts);
        let Some(reading) = fresh.filter(|_| st.last_err.is_none()) else { return out };
        if reading.energy_reset && self.reset_counted != Some(reading.taken) {
            self.reset_counted = Some(reading.taken);
            out.errors.push((Source::Redfish, Reason::Reset));
        }
        if let Some(e) = reading.energy_j {
            out.samples.push(Sample::new(
                &ENERGY,
                vec![src.clone(), chassis.clone(), Domain::Platform.to_string(), String::new()],
                e,
            ));
        }
        for p in &reading.psus {
            let zone = format!("{chassis}/{}", p.id);
            if let Ok(w) = p.input_watts {
                out.samples.push(Sample::new(
                    &POWER,
                    vec![src.clone(), zone.clone(), Domain::PsuInput.to_string(), String::new()],
                    w,
                ));
            }
            out.status(
                Source::Redfish,
                format!("{zone}/input"),
                "watts",
                format!("{}{}", self.url, p.path),
                p.input_watts.clone(),
            );
        }
        for t in &reading.temps {
            if let Ok(v) = t.value {
                out.samples.push(Sample::new(
                    &TEMPERATURE,
                    vec![src.clone(), chassis.clone(), t.name.clone(), String::new(), t.location.to_string()],
                    v,
                ));
            }
            out.status(
                Source::Redfish,
                format!("{chassis}/{}", t.name),
                "celsius",
                format!("{}{}", self.url, reading.thermal_path),
                t.value.clone(),
            );
        }
        for f in &reading.fans {
            // chip="bmc" as for IPMI; the chassis in `sensor` keeps several BMCs apart.
            let sensor = format!("{chassis}/{}", f.name);
            if let Ok(v) = f.value {
                out.samples.push(Sample::new(&FAN, vec![src.clone(), "bmc".into(), sensor.clone(), String::new()], v));
            }
            out.status(Source::Redfish, sensor, "rpm", format!("{}{}", self.url, reading.fan_path), f.value.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bmc/redfish").join(name);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).expect("json")
    }

    #[test]
    fn legacy_power_and_chassis() {
        assert_eq!(power_consumed(&fixture("power.json")), Ok(344.0));
        let e = power_consumed(&fixture("power-absent.json")).expect_err("null");
        assert_eq!(e.reason, Reason::Missing);
        assert!(e.detail.contains("not 0 W"), "{e}");
        assert_eq!(
            members(&fixture("chassis.json")),
            Ok(vec!["/redfish/v1/Chassis/1U".into(), "/redfish/v1/Chassis/Enclosure.Internal.0-1".into()])
        );
        assert_eq!(
            power_consumed(&serde_json::json!({"PowerControl": [{"PowerConsumedWatts": "x"}]})).map_err(|e| e.reason),
            Err(Reason::Parse)
        );
        assert_eq!(power_consumed(&serde_json::json!({"x": 1})).map_err(|e| e.reason), Err(Reason::Parse));
    }

    #[test]
    fn thermal_locations_disabled_and_null_readings() {
        let t = temperatures(&fixture("thermal.json")).expect("thermal");
        let get = |n: &str| t.iter().find(|x| x.name == n).cloned().expect(n);
        assert_eq!(get("Chassis Intake Temp").value, Ok(25.0));
        assert_eq!(get("Chassis Intake Temp").location, Location::Inlet);
        assert_eq!(get("System Board Exhaust Temp").location, Location::Exhaust);
        assert_eq!(get("System Board Exhaust Temp").value, Ok(33.5));
        assert_eq!(get("CPU1 Temp").location, Location::Cpu);
        assert!(get("CPU2 Temp").value.is_err());
        assert!(get("Broken Temp").value.is_err());
    }

    #[test]
    fn newer_model_environment_metrics_and_sensors() {
        let node = fixture("new-node1.json");
        assert!(!contained_by(&node));
        assert!(contained_by(&fixture("new-backplane.json")));
        assert_eq!(shared_by_nodes(&node), None);
        assert_eq!(odata_id(&node, "EnvironmentMetrics"), Some("/redfish/v1/Chassis/Node1/EnvironmentMetrics"));
        let (w, e) = environment_power(&fixture("new-envmetrics.json"));
        assert_eq!(w, Ok(412.0));
        assert_eq!(e, Some(BmcEnergy { joules: 3_600_000.0, resolution_j: 1.0, native_joules: true }));
        let (w, e) = environment_power(&serde_json::json!({"PowerWatts": {"Reading": null}}));
        assert_eq!(w.map_err(|e| e.reason), Err(Reason::Missing), "null is no reading, not 0 W");
        assert_eq!(e, None);
        let (w, _) = environment_power(&serde_json::json!({"PowerWatts": {"Reading": "x"}}));
        assert_eq!(w.map_err(|e| e.reason), Err(Reason::Parse));
        let inlet = sensor_temperature(&fixture("new-sensor-ambient.json")).expect("temperature");
        assert_eq!((inlet.location, inlet.value), (Location::Inlet, Ok(22.5)));
        let exhaust = sensor_temperature(&fixture("new-sensor-exhaust.json")).expect("temperature");
        assert_eq!((exhaust.location, exhaust.value), (Location::Exhaust, Ok(34.0)));
        assert_eq!(sensor_temperature(&fixture("new-sensor-power.json")), None, "a power sensor is no temperature");
        let off = serde_json::json!({"ReadingType": "Temperature", "Name": "T", "Reading": 1.0, "Status": {"State": "Absent"}});
        assert!(sensor_temperature(&off).expect("temp").value.is_err());
    }

    fn psu(id: &str, enabled: bool, w: Option<f64>) -> Psu {
        Psu {
            id: id.into(),
            path: format!("/redfish/v1/Chassis/1U/PowerSubsystem/PowerSupplies/{id}"),
            enabled,
            input_watts: w.ok_or_else(|| ReadError::new(Reason::Missing, "InputPowerWatts.Reading is absent or null")),
        }
    }

    #[test]
    fn power_subsystem_psus_input_power_and_their_sum() {
        let sub = fixture("new-powersubsystem.json");
        assert_eq!(odata_id(&sub, "PowerSupplies"), Some("/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies"));
        assert_eq!(
            members(&fixture("new-psus.json")).map(|m| m.len()),
            Ok(2),
            "the PowerSupplies collection lists both bays"
        );
        let bay1 = fixture("new-psu1.json");
        assert_eq!(psu_state(&bay1), Ok(()));
        assert_eq!(
            odata_id(&bay1, "Metrics"),
            Some("/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay1/Metrics")
        );
        // InputPowerWatts, not OutputPowerWatts (after the PSU's losses) nor the apparent power (VA).
        assert_eq!(psu_input_watts(&fixture("new-psu1-metrics.json")), Ok(205.5));
        assert_eq!(psu_input_watts(&fixture("new-psu2-metrics.json")), Ok(198.0));
        let null = serde_json::json!({"InputPowerWatts": {"Reading": null}, "OutputPowerWatts": {"Reading": 120}});
        assert_eq!(psu_input_watts(&null).map_err(|e| e.reason), Err(Reason::Missing), "null is no reading, not 0 W");
        let absent = serde_json::json!({"Id": "Bay3", "Status": {"State": "Absent"}});
        assert_eq!(psu_state(&absent), Err("state Absent".into()));
        assert!(psu_state(&serde_json::json!({"Status": {"State": "StandbySpare", "Health": "OK"}})).is_err());
        assert_eq!(psu_state(&serde_json::json!({"Id": "PSU1"})), Ok(()), "no Status: enabled, as for sensors");

        assert_eq!(psu_sum(&[psu("Bay1", true, Some(205.5)), psu("Bay2", true, Some(198.0))]), Ok(403.5));
        // An empty bay or a cold spare is skipped.
        assert_eq!(psu_sum(&[psu("Bay1", true, Some(205.5)), psu("Bay2", false, None)]), Ok(205.5));
        // An enabled PSU without a reading refuses the sum (it would under-report).
        let e = psu_sum(&[psu("Bay1", true, Some(205.5)), psu("Bay2", true, None)]).expect_err("partial");
        assert_eq!(e.reason, Reason::Missing);
        assert!(e.detail.contains("Bay2") && e.detail.contains("under-report"), "{e}");
        let e = psu_sum(&[psu("Bay1", false, None)]).expect_err("none enabled");
        assert!(e.detail.contains("none of the 1"), "{e}");
        assert_eq!(psu_sum(&[psu("Bay1", true, Some(0.0))]), Ok(0.0), "a real 0 W reading is a reading");
        // A PSU whose answer did not parse: the chassis reading is missing, the PSU's status says parse.
        let garbage = Psu { input_watts: Err(parse_err("not JSON")), ..psu("Bay2", true, None) };
        let e = psu_sum(&[psu("Bay1", true, Some(205.5)), garbage]).expect_err("refused");
        assert_eq!(e.reason, Reason::Missing);
    }

    #[test]
    fn the_chassis_energy_sensor_is_one_chassis_level_counter() {
        let total = fixture("new-sensor-energy.json");
        let psu_energy = fixture("new-sensor-psu-energy.json");
        assert_eq!(
            sensor_energy(&total),
            Some(BmcEnergy { joules: 3_700_000.0, resolution_j: 1.0, native_joules: true })
        );
        // A PSU's own counter covers part of the chassis: never the chassis' energy, never summed.
        assert_eq!(energy_sensor_rank(&psu_energy), None);
        assert_eq!(sensor_energy(&psu_energy), None);
        assert!(
            energy_sensor_rank(&total)
                > energy_sensor_rank(&serde_json::json!({"ReadingType": "EnergyJoules", "Id": "E1"}))
        );
        // EnergykWh at the chassis: the kWh rule (resolution from the decimals).
        let kwh = serde_json::json!({"Id": "TotalEnergy", "ReadingType": "EnergykWh", "ReadingUnits": "kW.h",
            "Reading": 325.675, "PhysicalContext": "Chassis"});
        let e = sensor_energy(&kwh).expect("kWh");
        assert!((e.joules - 325.675 * 3.6e6).abs() < 1e-3 && !e.native_joules, "{e:?}");
        assert!((e.resolution_j - 3600.0).abs() < 1e-6, "{e:?}");
        // Joules beat kWh at the same rank.
        let j = serde_json::json!({"Id": "TotalEnergyJ", "ReadingType": "EnergyJoules", "PhysicalContext": "Chassis"});
        assert!(energy_sensor_rank(&j) > energy_sensor_rank(&kwh));
        // One phase, a PSU output, a CPU, a power or temperature sensor: not the chassis energy.
        for not in [
            serde_json::json!({"ReadingType": "EnergyJoules", "ElectricalContext": "Line1", "Reading": 1}),
            serde_json::json!({"ReadingType": "EnergyJoules", "PhysicalContext": "PowerSubsystem", "PhysicalSubContext": "Output", "Reading": 1}),
            serde_json::json!({"ReadingType": "EnergyJoules", "PhysicalContext": "CPU", "Reading": 1}),
            fixture("new-sensor-power.json"),
            fixture("new-sensor-ambient.json"),
        ] {
            assert_eq!(energy_sensor_rank(&not), None, "{not}");
        }
        let off = serde_json::json!({"ReadingType": "EnergyJoules", "Reading": 5, "Status": {"State": "Disabled"}});
        assert_eq!(sensor_energy(&off), None);
        assert_eq!(sensor_energy(&serde_json::json!({"ReadingType": "EnergyJoules", "Reading": null})), None);
    }

    #[test]
    fn session_location_is_reduced_to_a_path() {
        assert_eq!(
            session_path("/redfish/v1/SessionService/Sessions/7").as_deref(),
            Some("/redfish/v1/SessionService/Sessions/7")
        );
        // An absolute Location naming another host never receives the token: only its path is kept.
        assert_eq!(
            session_path("https://elsewhere.example/redfish/v1/SessionService/Sessions/7").as_deref(),
            Some("/redfish/v1/SessionService/Sessions/7")
        );
        assert_eq!(session_path("not a url"), None);
        let s = Session { token: reqwest::header::HeaderValue::from_static("tok-secret"), path: None };
        assert!(!format!("{s:?}").contains("tok-secret"), "{s:?}");
    }

    #[test]
    fn fans_in_rpm_legacy_and_thermal_subsystem() {
        let f = legacy_fans(&fixture("thermal.json"));
        let get = |n: &str| f.iter().find(|x| x.name == n).map(|x| x.value.clone().map_err(|e| e.reason));
        assert_eq!(get("BaseBoard System Fan"), Some(Ok(2100.0)));
        assert_eq!(get("Fan 2"), Some(Ok(0.0)), "a stopped fan present and enabled reads 0 RPM");
        assert_eq!(get("Fan 3"), None, "a fan in Percent is not an RPM");
        assert_eq!(get("Fan 4"), Some(Err(Reason::Missing)), "absent: no reading");
        assert_eq!(get("Fan 5"), Some(Err(Reason::Missing)), "disabled: no reading");
        assert_eq!(get("Fan 6"), Some(Err(Reason::Implausible)), "beyond any fan");
        let old = serde_json::json!({"Fans": [{"FanName": "Old", "ReadingRPM": 3000}]});
        assert_eq!(legacy_fans(&old)[0], Fan { name: "Old".into(), value: Ok(3000.0) });
        assert!(legacy_fans(&serde_json::json!({"Fans": [{"Name": "?", "Reading": 50}]})).is_empty(), "no units");
        let fan = |d: Value| subsystem_fan(&d, "X").map(|f| f.value.map_err(|e| e.reason));
        assert_eq!(fan(fixture("new-fan1.json")), Some(Ok(5200.0)));
        assert_eq!(fan(fixture("new-fan2.json")), None, "SpeedPercent.Reading without SpeedRPM");
        assert_eq!(fan(fixture("new-fan3.json")), Some(Err(Reason::Missing)), "an empty bay");
        assert_eq!(fan(fixture("new-fan4.json")), Some(Ok(0.0)), "stopped");
        assert_eq!(fan(serde_json::json!({"SpeedPercent": {"SpeedRPM": "fast"}})), Some(Err(Reason::Parse)));
    }

    #[test]
    fn one_inlet_and_impossible_temperatures() {
        let t = |name: &str, location, v: f64| Temp { name: name.into(), location, value: Ok(v) };
        let mut temps = vec![
            Temp { name: "A".into(), location: Location::Inlet, value: Err(missing("no reading")) },
            t("B", Location::Inlet, 22.0),
            t("C", Location::Inlet, 23.0),
            t("D", Location::Cpu, 50.0),
        ];
        single_inlet(&mut temps);
        let locs: Vec<Location> = temps.iter().map(|x| x.location).collect();
        assert_eq!(locs, [Location::Ambient, Location::Inlet, Location::Ambient, Location::Cpu]);
        let cold = serde_json::json!({"ReadingType": "Temperature", "Name": "T", "Reading": -300.0});
        let e = sensor_temperature(&cold).expect("temperature").value.expect_err("below absolute zero");
        assert_eq!(e.reason, Reason::Implausible);
        let (w, _) = environment_power(&serde_json::json!({"PowerWatts": {"Reading": -12}}));
        assert_eq!(w.map_err(|e| e.reason), Err(Reason::Implausible), "negative power parses but is impossible");
        let (w, _) = environment_power(&serde_json::json!({"PowerWatts": {"Reading": 5.0e9}}));
        assert_eq!(w.map_err(|e| e.reason), Err(Reason::Implausible));
        let psu = serde_json::json!({"InputPowerWatts": {"Reading": 1.0e7}});
        assert_eq!(psu_input_watts(&psu).map_err(|e| e.reason), Err(Reason::Implausible));
    }

    #[test]
    fn label_prefix_is_the_bmc_authority() {
        assert_eq!(label_prefix("https://bmc1.example:8443"), "bmc1.example:8443/");
        assert_eq!(label_prefix("http://10.0.0.5"), "10.0.0.5/");
    }

    #[test]
    fn energy_kwh_and_thermal_metrics_summary() {
        let doc = serde_json::json!({"PowerWatts": {"Reading": 374}, "EnergykWh": {"Reading": 2.5}});
        assert_eq!(
            environment_power(&doc),
            (Ok(374.0), Some(BmcEnergy { joules: 9_000_000.0, resolution_j: 360_000.0, native_joules: false }))
        );
        let both = serde_json::json!({"PowerWatts": {"Reading": 1}, "EnergykWh": {"Reading": 2.5}, "EnergyJoules": {"Reading": 7}});
        assert_eq!(
            environment_power(&both).1.map(|e| (e.joules, e.native_joules)),
            Some((7.0, true)),
            "EnergyJoules first"
        );
        assert_eq!(decimal_step(325675.0), 1.0);
        assert_eq!(decimal_step(12.345), 0.001);
        assert_eq!(decimal_step(0.00001), 0.00001);
        let tm = serde_json::json!({"TemperatureSummaryCelsius": {"Intake": {"Reading": 21.5}, "Exhaust": {"Reading": null}}});
        let t = temperature_summary(&tm);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].location, t[0].value.clone()), (Location::Inlet, Ok(21.5)));
        assert_eq!(t[1].location, Location::Exhaust);
        assert!(t[1].value.is_err(), "null is no reading");
        assert!(temperature_summary(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn energy_counter_survives_bmc_resets() {
        let mut c = EnergyCounter::default();
        assert_eq!(c.update(1000.0), 1000.0, "starts at the raw counter value");
        assert_eq!(c.update(1500.0), 1500.0);
        // The BMC reset its counter: the energy since the reset is the new raw value.
        assert_eq!(c.update(200.0), 1700.0);
        assert_eq!(c.resets, 1);
        assert_eq!(c.update(300.0), 1800.0);
        assert_eq!(c.update(300.0), 1800.0);
        // Another counter (EnvironmentMetrics → a Sensors member): a new
        // baseline, never differenced with the previous counter.
        assert_eq!(c.rebase(9_000_000.0), 1800.0);
        assert_eq!(c.update(9_000_500.0), 2300.0);
        assert_eq!(EnergyCounter::default().rebase(42.0), 42.0, "a first reading is the start");
    }

    #[test]
    fn chassis_shared_by_several_nodes_is_flagged() {
        let why = shared_by_nodes(&fixture("enclosure.json")).expect("an enclosure of 4 nodes");
        assert!(why.contains("4 systems"), "{why}");
        let e = serde_json::json!({"ChassisType": "Enclosure"});
        assert!(shared_by_nodes(&e).expect("enclosure").contains("Enclosure"));
        // An enclosure-typed chassis that names exactly one system is that node.
        let one = serde_json::json!({"ChassisType": "Enclosure", "Links": {"ComputerSystems": [{"@odata.id": "/redfish/v1/Systems/1"}]}});
        assert_eq!(shared_by_nodes(&one), None);
        let two = serde_json::json!({"ChassisType": "RackMount", "Links": {"ComputerSystems": [{}, {}]}});
        assert!(shared_by_nodes(&two).is_some());
        assert_eq!(shared_by_nodes(&serde_json::json!({"ChassisType": "Blade"})), None);
        assert_eq!(shared_by_nodes(&Value::Null), None);
    }
}
