//! The BMC over IPMI: DCMI wall power and the sensor listing, read by running
//! `ipmitool` (or FreeIPMI's `ipmi-dcmi`) on a poll thread of its own
//! ([`super::bmc`]). The tick only copies the last reading.
//!
//! Parsers go by label prefix and unit, never by column position or SDR type:
//! the layouts differ between versions and vendors (Dell iDRAC, HPE iLO, Lenovo
//! XCC, Supermicro; fixtures in `tests/fixtures/bmc/`). A DCMI reading whose
//! state is `deactivated` (FreeIPMI: `Not Available`) is no reading, never 0 W.
//! Fans are read in `RPM` only (a percentage is a duty cycle, not a speed).
//! A temperature's location comes from its SDR entity ID when the listing has
//! one (`sdr elist`), else from its name, and one sensor at most is the inlet
//! ([`locate`]).

use std::collections::BTreeMap;
use std::time::Duration;

use domesday_model::catalog::{FAN, POWER, TEMPERATURE};
use domesday_model::vocab::{Domain, Location, Reason, Source};

use super::bmc::{Poller, STALE_INTERVALS, run_command};
use super::hwmon::temperature_location;
use super::{BmcPower, Output, Progress, Sample, SensorSource, on_agent_clock};
use crate::config::{IpmiBackend, IpmiConfig};
use crate::fsread::ReadError;
use crate::plausible::{Quantity, check};

/// One DCMI power reading, W.
#[derive(Debug, Clone, PartialEq)]
pub struct Dcmi {
    pub current: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub average: Option<f64>,
}

/// The unit of a listed sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Celsius,
    Watts,
    Rpm,
}

impl Unit {
    /// The unit's name for `probe`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Unit::Celsius => "celsius",
            Unit::Watts => "watts",
            Unit::Rpm => "rpm",
        }
    }
}

/// An SDR entity (IPMI 2.0 §39, table 43-13 "Entity ID Codes"): what the
/// sensor measures, and which one of them (`sdr elist` prints `55.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entity {
    pub id: u8,
    pub instance: u8,
}

/// One sensor of the listing: its reading, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct BmcSensor {
    /// The BMC's name, made unique (`Temp`, `Temp (0Eh)`).
    pub name: String,
    pub unit: Unit,
    /// The SDR entity, when the listing prints it (`sdr elist`).
    pub entity: Option<Entity>,
    /// The reading, physically plausible ([`check`]), or why there is none.
    pub value: Result<f64, ReadError>,
    /// Where a temperature is taken ([`locate`]); `Other` for the other units.
    pub location: Location,
}

/// What one poll read.
#[derive(Debug, Clone, PartialEq)]
pub struct IpmiReading {
    pub dcmi: Result<Dcmi, ReadError>,
    /// When the DCMI reading was taken: the middle of the command's run.
    pub taken: std::time::Instant,
    pub sensors: Vec<BmcSensor>,
    /// Why the sensor listing could not be read (the command failed, or printed
    /// no sensor row at all), counted once per poll.
    pub listing_err: Option<ReadError>,
}

fn parse_err(detail: impl Into<String>) -> ReadError {
    ReadError::new(Reason::Parse, detail)
}

/// A number, accepting a decimal comma (`23,5`).
fn number(s: &str) -> Option<f64> {
    let t = s.trim();
    let v: f64 = t.parse().ok().or_else(|| t.replace(',', ".").parse().ok())?;
    v.is_finite().then_some(v)
}

/// The first number in `s` (`"   344 Watts"` → 344).
fn first_number(s: &str) -> Option<f64> {
    s.split(|c: char| c.is_whitespace()).find_map(number)
}

/// Splits `label: value` on the first colon, both trimmed, label lower-cased
/// with runs of whitespace collapsed.
fn label_value(line: &str) -> Option<(String, &str)> {
    let (l, v) = line.split_once(':')?;
    Some((l.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase(), v.trim()))
}

/// `ipmitool dcmi power reading`.
pub fn parse_ipmitool_dcmi(text: &str) -> Result<Dcmi, ReadError> {
    let mut current = None;
    let (mut min, mut max, mut average, mut state) = (None, None, None, None);
    for line in text.lines() {
        let Some((label, value)) = label_value(line) else { continue };
        if label.starts_with("instantaneous power reading") {
            current = first_number(value);
        } else if label.starts_with("minimum during sampling period") {
            min = first_number(value);
        } else if label.starts_with("maximum during sampling period") {
            max = first_number(value);
        } else if label.starts_with("average power reading") {
            average = first_number(value);
        } else if label.starts_with("power reading state is") {
            state = Some(value.to_lowercase());
        }
    }
    match state.as_deref() {
        Some("activated") => {}
        Some(s) if s.starts_with("deactivated") => {
            return Err(ReadError::new(
                Reason::Missing,
                "the BMC reports its power reading state as deactivated (no measurement; not 0 W)",
            ));
        }
        Some(other) => return Err(parse_err(format!("unknown power reading state {other:?}"))),
        None => return Err(parse_err("no \"Power reading state is\" line in the DCMI output")),
    }
    let current = current.ok_or_else(|| parse_err("no numeric \"Instantaneous power reading\" in the DCMI output"))?;
    Ok(Dcmi { current, min, max, average })
}

/// FreeIPMI `ipmi-dcmi --get-system-power-statistics`.
pub fn parse_freeipmi_dcmi(text: &str) -> Result<Dcmi, ReadError> {
    let mut current = None;
    let (mut min, mut max, mut average, mut state) = (None, None, None, None);
    for line in text.lines() {
        let Some((label, value)) = label_value(line) else { continue };
        if label == "current power" {
            current = first_number(value);
        } else if label.starts_with("minimum power") {
            min = first_number(value);
        } else if label.starts_with("maximum power") {
            max = first_number(value);
        } else if label.starts_with("average power") {
            average = first_number(value);
        } else if label == "power measurement" {
            state = Some(value.to_lowercase());
        }
    }
    match state.as_deref() {
        Some("active") => {}
        Some(s) if s.starts_with("not available") || s.starts_with("inactive") => {
            return Err(ReadError::new(
                Reason::Missing,
                "the BMC reports Power Measurement: Not Available (no measurement; not 0 W)",
            ));
        }
        Some(other) => return Err(parse_err(format!("unknown Power Measurement state {other:?}"))),
        None => return Err(parse_err("no \"Power Measurement\" line in the ipmi-dcmi output")),
    }
    let current = current.ok_or_else(|| parse_err("no numeric \"Current Power\" in the ipmi-dcmi output"))?;
    Ok(Dcmi { current, min, max, average })
}

/// A reading cell `23 degrees C`, `224 Watts`, `5880 RPM`, `23,5 degrees C`:
/// its unit and value (`percent` is not a unit read here).
fn reading_with_unit(cell: &str) -> Option<(Unit, Option<f64>)> {
    let t = cell.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let (num, unit) = if let Some(n) = t.strip_suffix("degrees c") {
        (n, Unit::Celsius)
    } else if let Some(n) = t.strip_suffix("watts") {
        (n, Unit::Watts)
    } else if let Some(n) = t.strip_suffix("rpm") {
        (n, Unit::Rpm)
    } else {
        return None;
    };
    Some((unit, number(num)))
}

fn unit_cell(cell: &str) -> Option<Unit> {
    match cell.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase().as_str() {
        "degrees c" => Some(Unit::Celsius),
        "watts" => Some(Unit::Watts),
        "rpm" => Some(Unit::Rpm),
        _ => None,
    }
}

/// An entity cell `55.1` (`sdr elist`), `None` when it is not one.
fn entity_cell(cell: &str) -> Option<Entity> {
    let (id, instance) = cell.trim().split_once('.')?;
    Some(Entity { id: id.trim().parse().ok()?, instance: instance.trim().parse().ok()? })
}

/// What a reading of this unit measures, for its bounds.
fn quantity(unit: Unit, name: &str) -> Quantity {
    match unit {
        Unit::Celsius => Quantity::Temperature,
        Unit::Watts => Quantity::Power(sensor_power_domain(name)),
        Unit::Rpm => Quantity::FanSpeed,
    }
}

/// Where a temperature is taken according to its SDR entity ID (IPMI 2.0
/// table 43-13, as `ipmitool` prints it, in decimal), `None` when the entity
/// does not say (system board, chassis, unspecified, OEM…). 55 (0x37) and 64
/// (0x40, the DCMI inlet temperature entity) are the air inlet; a sensor named
/// exhaust or outlet on that entity is the other end of the same air stream.
pub fn entity_location(entity: Entity, name: &str) -> Option<Location> {
    let l = name.to_lowercase();
    match entity.id {
        0x37 | 0x40 if l.contains("exhaust") || l.contains("outlet") => Some(Location::Exhaust),
        0x37 | 0x40 => Some(Location::Inlet),
        // Processor, processor module, processor (DCMI).
        0x03 | 0x09 | 0x41 => Some(Location::Cpu),
        // Memory module, memory device.
        0x08 | 0x20 => Some(Location::Memory),
        // Power supply, power unit.
        0x0A | 0x13 => Some(Location::Psu),
        // Disk or disk bay, disk drive bay.
        0x04 | 0x1A => Some(Location::Disk),
        // External environment: the air around the server.
        0x27 => Some(Location::Ambient),
        _ => None,
    }
}

/// How strongly a temperature says it is the server's inlet: 3 by its entity
/// (air inlet), 2 by its name (`Inlet`, `Intake`), 1 by a name vendors use for
/// the inlet when they have no better one (`Ambient Temp`, `System Temp`), 0 not.
pub fn inlet_rank(entity: Option<Entity>, name: &str) -> u8 {
    let l = name.to_lowercase();
    match entity.and_then(|e| entity_location(e, name)) {
        Some(Location::Inlet) => 3,
        Some(_) => 0,
        None if l.contains("inlet") || l.contains("intake") => 2,
        None if l.contains("ambient") || l.starts_with("system temp") || l.starts_with("sys temp") => 1,
        None => 0,
    }
}

/// The locations of a listing's temperatures: by entity first, by name when
/// the entity says nothing (or the listing has no entity column), and exactly
/// one `inlet` when any sensor with a reading qualifies: the highest
/// [`inlet_rank`], then the lowest entity instance, then the first listed.
/// Other inlet candidates are `ambient` (an air temperature that is not the
/// reference inlet), or what their name says when only a weak name made them
/// candidates (`System Temp` is a board temperature: `other`).
pub fn locate(sensors: &mut [BmcSensor]) {
    let best = sensors
        .iter()
        .enumerate()
        .filter(|(_, s)| s.unit == Unit::Celsius && s.value.is_ok())
        .map(|(i, s)| (inlet_rank(s.entity, &s.name), i, s.entity.map(|e| e.instance)))
        .filter(|(rank, _, _)| *rank > 0)
        .min_by_key(|(rank, i, instance)| (std::cmp::Reverse(*rank), instance.unwrap_or(u8::MAX), *i))
        .map(|(_, i, _)| i);
    for (i, s) in sensors.iter_mut().enumerate() {
        if s.unit != Unit::Celsius {
            s.location = Location::Other;
            continue;
        }
        let by_name = match temperature_location("", &s.name) {
            Location::Inlet => Location::Ambient,
            Location::Ambient if s.name.to_lowercase().starts_with("sys") => Location::Other,
            other => other,
        };
        s.location = if Some(i) == best {
            Location::Inlet
        } else {
            match s.entity.and_then(|e| entity_location(e, &s.name)) {
                Some(Location::Inlet) => Location::Ambient,
                Some(l) => l,
                None => by_name,
            }
        };
    }
}

/// A cell that says there is no reading.
fn no_reading(cell: &str) -> bool {
    matches!(
        cell.trim().to_lowercase().as_str(),
        "na" | "n/a" | "no reading" | "not available" | "disabled" | "unavailable" | ""
    )
}

/// An `ipmitool sdr`, `sdr elist` or `sensor` listing: the sensors whose unit
/// is `degrees C`, `Watts` or `RPM`, whatever their SDR type, each reading
/// checked against the physical bounds ([`check`]) and each temperature located
/// ([`locate`]). Other lines (discrete sensors, volts, fans in percent,
/// garbage) are skipped.
pub fn parse_ipmitool_sensors(text: &str) -> Vec<BmcSensor> {
    let no = |why: String| ReadError::new(Reason::Missing, why);
    let mut out: Vec<(BmcSensor, String)> = Vec::new();
    // Duplicate names are normal (Dell's several `Temp`): such names are
    // qualified with the sensor number, counted over every row so that a name
    // stays the same whether or not its twin has a reading.
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let name = line.split('|').next().unwrap_or("").trim();
        if line.matches('|').count() >= 2 && !name.is_empty() {
            *count.entry(name.to_string()).or_default() += 1;
        }
    }
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 || cells[0].is_empty() {
            continue;
        }
        let name = cells[0].to_string();
        let status = |s: &str| s.to_lowercase();
        // `sensor`: name | value | unit | status | thresholds…
        if cells.len() >= 4
            && let Some(unit) = unit_cell(cells[2])
        {
            let value = if no_reading(cells[1]) || status(cells[3]) == "ns" || status(cells[3]) == "na" {
                Err(no(format!("no reading ({})", cells[1])))
            } else {
                match number(cells[1]) {
                    Some(v) => check(quantity(unit, &name), v),
                    None => Err(ReadError::new(Reason::Parse, format!("unparsable reading {:?}", cells[1]))),
                }
            };
            let s = BmcSensor { name, unit, entity: None, value, location: Location::Other };
            out.push((s, String::new()));
            continue;
        }
        // `sdr`: name | reading | status; `sdr elist`: name | id | status | entity | reading.
        let (reading, id, st, entity) = if cells.len() >= 5 {
            (cells[4], cells[1], cells[2], entity_cell(cells[3]))
        } else {
            (cells[1], "", cells[2], None)
        };
        let value = match reading_with_unit(reading) {
            Some((unit, Some(v))) if status(st) != "ns" => (unit, check(quantity(unit, &name), v)),
            Some((unit, _)) => (unit, Err(no(format!("no reading ({reading}, status {st})")))),
            None => continue,
        };
        let s = BmcSensor { name, unit: value.0, entity, value: value.1, location: Location::Other };
        out.push((s, id.to_string()));
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut sensors: Vec<BmcSensor> = out
        .into_iter()
        .map(|(mut s, id)| {
            if count.get(&s.name).copied().unwrap_or(0) > 1 {
                let n = seen.entry(s.name.clone()).or_default();
                *n += 1;
                let tag = if id.is_empty() { n.to_string() } else { id };
                s.name = format!("{} ({tag})", s.name);
            }
            s
        })
        .collect();
    locate(&mut sensors);
    sensors
}

/// A line shaped like a listing row: a name, then at least two more `|` cells.
fn is_sensor_row(line: &str) -> bool {
    line.matches('|').count() >= 2 && line.split('|').next().is_some_and(|name| !name.trim().is_empty())
}

/// Domain of a BMC power sensor, from its name.
pub fn sensor_power_domain(name: &str) -> Domain {
    let l = name.to_lowercase();
    let psu = l.starts_with("ps") || l.contains("psu") || l.contains("power supply");
    if psu && (l.contains(" in") || l.contains("input")) {
        Domain::PsuInput
    } else if psu && (l.contains(" out") || l.contains("output")) {
        Domain::PsuOutput
    } else if l.contains("cpu") {
        Domain::Package
    } else if l.contains("consumption")
        || l.contains("system")
        || l.contains("sys power")
        || l.contains("total")
        || l.contains("power meter")
    {
        Domain::Platform
    } else {
        Domain::Other
    }
}

/// Why the tool failed, from its stderr, with the fix.
pub fn classify_failure(program: &str, stderr: &str) -> ReadError {
    let first = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message");
    let l = stderr.to_lowercase();
    if l.contains("insufficient privilege") {
        ReadError::new(
            Reason::Permission,
            format!("{first}: the BMC user lacks the privilege for this command; give it the User role or higher"),
        )
    } else if l.contains("permission denied") {
        ReadError::new(
            Reason::Permission,
            format!("{first}: in-band IPMI needs root or a udev rule for /dev/ipmi0 (docs/bmc.md)"),
        )
    } else if l.contains("/dev/ipmi") && (l.contains("no such file") || l.contains("could not open device")) {
        ReadError::new(
            Reason::Missing,
            format!(
                "/dev/ipmi0 missing ({first}): modprobe ipmi_devintf ipmi_si, or use -I lanplus args for the BMC's network port"
            ),
        )
    } else if l.contains("invalid command") || l.contains("not supported") || l.contains("unsupported") {
        ReadError::new(Reason::Missing, format!("the BMC does not support DCMI power readings: {first}"))
    } else {
        ReadError::new(Reason::Io, format!("{program} failed: {first}"))
    }
}

/// One poll: DCMI power, then the sensor listing.
pub fn poll(cfg: &IpmiConfig) -> Result<IpmiReading, ReadError> {
    let timeout = cfg.timeout.0;
    let started = std::time::Instant::now();
    type Parser = fn(&str) -> Result<Dcmi, ReadError>;
    let (sub, parse): (&[&str], Parser) = match cfg.backend {
        IpmiBackend::Ipmitool => (&["dcmi", "power", "reading"], parse_ipmitool_dcmi),
        IpmiBackend::Freeipmi => (&["--get-system-power-statistics"], parse_freeipmi_dcmi),
    };
    let args: Vec<String> = cfg.args.iter().cloned().chain(sub.iter().map(|s| s.to_string())).collect();
    let out = run_command(&cfg.command, &args, timeout)?;
    let taken = started + started.elapsed() / 2;
    let dcmi = if out.success { parse(&out.stdout) } else { Err(classify_failure(&cfg.command, &out.stderr)) };
    // A DCMI reading outside the physical bounds is no reading (the listing is still read).
    let dcmi = dcmi.and_then(|d| check(Quantity::Power(Domain::Platform), d.current).map(|_| d));
    // A BMC without the device at all: no use trying the listing.
    if let Err(e) = &dcmi
        && e.reason != Reason::Parse
        && e.reason != Reason::Implausible
        && !(e.reason == Reason::Missing && e.detail.contains("deactivated"))
        && !e.detail.contains("does not support")
    {
        return Err(e.clone());
    }
    let mut sensors = Vec::new();
    let mut listing_err = None;
    if cfg.sensors && cfg.backend == IpmiBackend::Ipmitool {
        let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
        let args: Vec<String> = cfg.args.iter().cloned().chain(["sdr".to_string(), "elist".to_string()]).collect();
        let out = run_command(&cfg.command, &args, left)?;
        if !out.success {
            listing_err = Some(classify_failure(&cfg.command, &out.stderr));
        } else if !out.stdout.trim().is_empty() && !out.stdout.lines().any(is_sensor_row) {
            listing_err = Some(parse_err("the sdr elist output has no sensor row (name | … | reading)"));
        } else {
            sensors = parse_ipmitool_sensors(&out.stdout);
        }
    }
    Ok(IpmiReading { dcmi, taken, sensors, listing_err })
}

/// The IPMI source: the tick's view of the poll thread.
pub struct Ipmi {
    poller: Poller<IpmiReading>,
    command: String,
    /// The sampler's start: readings are stamped on the agent's clock.
    epoch: std::time::Instant,
    max_gap: Duration,
    /// The reading whose listing failure was counted (once, however many
    /// ticks copy that reading).
    listing_err_counted: Option<std::time::Instant>,
}

impl Ipmi {
    pub fn new(cfg: &IpmiConfig, epoch: std::time::Instant) -> std::io::Result<Self> {
        let c = cfg.clone();
        let poller = Poller::spawn("ipmi", cfg.interval.0, move || poll(&c))?;
        Ok(Ipmi {
            poller,
            command: cfg.command.clone(),
            epoch,
            max_gap: cfg.interval.0 * STALE_INTERVALS,
            listing_err_counted: None,
        })
    }

    /// Waits (bounded) for the first poll; for `probe`.
    pub fn waiter(&self) -> impl Fn(Duration) + Send + 'static {
        self.poller.waiter()
    }
}

impl SensorSource for Ipmi {
    fn kind(&self) -> Source {
        Source::Ipmi
    }

    fn discover(&mut self) {}

    fn sample(&mut self, _now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        let path = format!("{} dcmi power reading", self.command);
        progress.enter("dcmi", &path);
        let st = self.poller.state();
        let src = Source::Ipmi.to_string();
        let fresh = self.poller.fresh(&st);
        if st.polls == 0 {
            out.status(
                Source::Ipmi,
                "dcmi".into(),
                "watts",
                path,
                Err(ReadError::new(Reason::Missing, "no BMC answer yet (first poll running)")),
            );
            return out;
        }
        let dcmi = match (&st.last_err, &fresh) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(r)) => r.dcmi.clone(),
            (None, None) => {
                Err(ReadError::new(Reason::Gap, "the last BMC reading is older than 3 polling intervals; not used"))
            }
        };
        // Host power uses a fresh reading even while a later poll fails.
        if let Some((Ok(d), taken)) = fresh.as_ref().map(|r| (&r.dcmi, r.taken)) {
            out.facts.bmc_dcmi = Some(BmcPower {
                watts: d.current,
                at: on_agent_clock(self.epoch, taken),
                max_gap: self.max_gap,
                bmc: "ipmi".into(),
                energy: None,
            });
        }
        if let Ok(d) = &dcmi {
            out.samples.push(Sample::new(
                &POWER,
                vec![src.clone(), "dcmi".into(), Domain::Platform.to_string(), String::new()],
                d.current,
            ));
        }
        out.status(Source::Ipmi, "dcmi".into(), "watts", path, dcmi.map(|d| d.current));
        let Some(reading) = fresh.filter(|_| st.last_err.is_none()) else { return out };
        if let Some(e) = &reading.listing_err
            && self.listing_err_counted != Some(reading.taken)
        {
            self.listing_err_counted = Some(reading.taken);
            tracing::warn!(reason = %e.reason, "the BMC's sensor listing failed: {}", e.detail);
            out.errors.push((Source::Ipmi, e.reason));
        }
        for s in &reading.sensors {
            if let Ok(v) = s.value {
                match s.unit {
                    Unit::Celsius => out.samples.push(Sample::new(
                        &TEMPERATURE,
                        vec![src.clone(), "bmc".into(), s.name.clone(), String::new(), s.location.to_string()],
                        v,
                    )),
                    Unit::Watts => out.samples.push(Sample::new(
                        &POWER,
                        vec![src.clone(), s.name.clone(), sensor_power_domain(&s.name).to_string(), String::new()],
                        v,
                    )),
                    Unit::Rpm => out.samples.push(Sample::new(
                        &FAN,
                        vec![src.clone(), "bmc".into(), s.name.clone(), String::new()],
                        v,
                    )),
                }
            }
            let path = format!("{} sdr elist", self.command);
            out.status(Source::Ipmi, s.name.clone(), s.unit.as_str(), path, s.value.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bmc").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn ipmitool_dcmi_of_each_vendor() {
        for (file, cur, avg) in [
            ("dell-idrac.dcmi", 344.0, Some(320.0)),
            ("hpe-ilo.dcmi", 212.0, Some(208.0)),
            ("lenovo-xcc.dcmi", 418.0, Some(401.0)),
            ("supermicro.dcmi", 96.0, Some(95.0)),
        ] {
            let d = parse_ipmitool_dcmi(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!((d.current, d.average), (cur, avg), "{file}");
        }
        let d = parse_ipmitool_dcmi(&fixture("dell-idrac.dcmi")).expect("dell");
        assert_eq!((d.min, d.max), (Some(270.0), Some(668.0)));
    }

    #[test]
    fn a_deactivated_reading_is_no_reading_not_zero() {
        let e = parse_ipmitool_dcmi(&fixture("deactivated.dcmi")).expect_err("deactivated");
        assert_eq!(e.reason, Reason::Missing);
        assert!(e.detail.contains("deactivated"), "{e}");
        let e = parse_freeipmi_dcmi(&fixture("freeipmi-not-available.dcmi")).expect_err("n/a");
        assert_eq!(e.reason, Reason::Missing);
    }

    #[test]
    fn whitespace_tabs_and_crlf_do_not_matter() {
        let text = "\r\n\tInstantaneous power reading:\t\t  250 Watts\r\n    Power reading state is:   activated\r\n";
        assert_eq!(parse_ipmitool_dcmi(text).map(|d| d.current), Ok(250.0));
        let text = "Instantaneous  power   reading :250 Watts\npower reading state is: ACTIVATED\n";
        assert_eq!(parse_ipmitool_dcmi(text).map(|d| d.current), Ok(250.0));
    }

    #[test]
    fn garbage_and_truncated_output_are_parse_errors() {
        for text in [fixture("garbage.dcmi"), String::new(), "Instantaneous power reading: lots Watts\n".into()] {
            let e = parse_ipmitool_dcmi(&text).expect_err("garbage");
            assert_eq!(e.reason, Reason::Parse, "{text:?}");
        }
        let e = parse_ipmitool_dcmi("Instantaneous power reading: x Watts\nPower reading state is: activated\n");
        assert_eq!(e.map_err(|e| e.reason), Err(Reason::Parse));
    }

    #[test]
    fn freeipmi_dcmi_matches_watts_case_insensitively() {
        let d = parse_freeipmi_dcmi(&fixture("freeipmi.dcmi")).expect("freeipmi");
        assert_eq!(d, Dcmi { current: 164.0, min: Some(48.0), max: Some(361.0), average: Some(157.0) });
    }

    #[test]
    fn dell_sdr_elist_by_unit_with_duplicates_and_no_reading() {
        let s = parse_ipmitool_sensors(&fixture("dell-idrac.sdr"));
        let get = |n: &str| s.iter().find(|x| x.name == n).map(|x| (x.unit, x.value.clone()));
        assert_eq!(get("Inlet Temp"), Some((Unit::Celsius, Ok(23.0))));
        assert_eq!(get("Exhaust Temp"), Some((Unit::Celsius, Ok(31.0))));
        assert_eq!(get("Pwr Consumption"), Some((Unit::Watts, Ok(168.0))));
        assert_eq!(get("Temp (0Eh)"), Some((Unit::Celsius, Ok(41.0))));
        // `No Reading` carries no unit in `sdr elist`: not listed, and its twin keeps its qualified name.
        assert_eq!(get("Temp (0Fh)"), None, "{s:?}");
        assert_eq!(get("Temp"), None, "{s:?}");
        // Discrete sensors, volts and amps are not listed; fans in RPM are.
        assert!(s.iter().all(|x| !x.name.starts_with("PS1 Status") && !x.name.starts_with("Current")), "{s:?}");
        assert_eq!(get("Fan1 RPM"), Some((Unit::Rpm, Ok(5880.0))));
        // Dell's inlet is on the system board entity (7.1): located by its name.
        let loc = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.location);
        assert_eq!(loc("Inlet Temp"), Some(Location::Inlet));
        assert_eq!(loc("Exhaust Temp"), Some(Location::Exhaust));
        assert_eq!(loc("Temp (0Eh)"), Some(Location::Cpu), "entity 3 is a processor");
    }

    #[test]
    fn other_vendors_and_listing_formats() {
        let s = parse_ipmitool_sensors(&fixture("hpe-ilo.sdr"));
        let inlet = s.iter().find(|x| x.name == "01-Inlet Ambient").expect("inlet");
        assert_eq!(inlet.value, Ok(22.0));
        assert_eq!(temperature_location("", &inlet.name).to_string(), "inlet");
        assert!(s.iter().any(|x| x.name == "Power Meter" && x.value == Ok(212.0)), "{s:?}");
        let s = parse_ipmitool_sensors(&fixture("lenovo-xcc.sdr"));
        assert!(s.iter().any(|x| x.name == "Ambient Temp" && x.value == Ok(24.0)), "{s:?}");
        assert!(s.iter().any(|x| x.name == "Exhaust Temp" && x.value == Ok(35.0)), "{s:?}");
        assert!(s.iter().any(|x| x.name == "Sys Power" && x.value == Ok(418.0)), "{s:?}");
        // Supermicro `ipmitool sensor`: value | unit | status | thresholds, `na` when disabled.
        let s = parse_ipmitool_sensors(&fixture("supermicro.sdr"));
        assert!(s.iter().any(|x| x.name == "CPU Temp" && x.value == Ok(45.0)), "{s:?}");
        assert!(s.iter().any(|x| x.name == "Inlet Temp" && x.value == Ok(23.5)), "{s:?}");
        assert!(s.iter().any(|x| x.name == "PS1 Input Power" && x.value == Ok(96.0)), "{s:?}");
        assert!(s.iter().any(|x| x.name == "GPU Temp" && x.value.is_err()), "{s:?}");
        let fan = |n: &str| s.iter().find(|x| x.name == n).map(|x| (x.unit, x.value.clone()));
        assert_eq!(fan("FAN1"), Some((Unit::Rpm, Ok(3500.0))));
        assert_eq!(fan("FAN2"), Some((Unit::Rpm, Ok(0.0))), "a stopped fan reads 0 RPM: a reading");
        assert_eq!(fan("FAN3").map(|(_, v)| v.map_err(|e| e.reason)), Some(Err(Reason::Missing)), "na: no reading");
        // Two inlet candidates by name: `Inlet Temp` is the inlet, `System Temp` a board temperature.
        let loc = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.location);
        assert_eq!((loc("Inlet Temp"), loc("System Temp")), (Some(Location::Inlet), Some(Location::Other)));
        // HPE: the fan in percent is a duty cycle, not a speed: not listed.
        let s = parse_ipmitool_sensors(&fixture("hpe-ilo.sdr"));
        assert!(!s.iter().any(|x| x.name == "Fan 1"), "{s:?}");
        let loc = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.location);
        assert_eq!(loc("01-Inlet Ambient"), Some(Location::Inlet), "entity 64 (0x40): air inlet");
        assert_eq!(loc("02-CPU 1"), Some(Location::Cpu), "entity 65 (0x41): processor");
        assert_eq!(loc("04-P1 DIMM 1-6"), Some(Location::Memory), "entity 66 (baseboard) says nothing: by name");
        assert_eq!(loc("14-Chipset"), Some(Location::Other));
        // Lenovo: `Ambient Temp` on the air inlet entity is the inlet; `Exhaust Temp` on the same entity is the exhaust.
        let s = parse_ipmitool_sensors(&fixture("lenovo-xcc.sdr"));
        let loc = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.location);
        assert_eq!(loc("Ambient Temp"), Some(Location::Inlet));
        assert_eq!(loc("Exhaust Temp"), Some(Location::Exhaust));
        assert_eq!(loc("CPU1 Temp"), Some(Location::Cpu));
        assert!(s.iter().any(|x| x.name == "Fan 1A Tach" && x.value == Ok(6000.0) && x.unit == Unit::Rpm), "{s:?}");
    }

    #[test]
    fn the_entity_locates_first_and_one_sensor_is_the_inlet() {
        let text = "\
Front Temp       | 31h | ok  | 64.2 | 23 degrees C
Ambient Temp     | 30h | ok  | 55.1 | 24 degrees C
Inlet Temp       | 32h | ok  |  7.1 | 25 degrees C
Proc Temp        | 33h | ok  | 65.1 | 51 degrees C
Board Temp 2     | 34h | ok  | 32.1 | 35 degrees C
Bay Temp         | 35h | ok  |  4.1 | 30 degrees C
Supply Temp      | 36h | ok  | 10.1 | 40 degrees C
Room Temp        | 37h | ok  | 39.1 | 18 degrees C
Outlet Temp      | 38h | ok  | 55.3 | 38 degrees C
";
        let s = parse_ipmitool_sensors(text);
        let loc = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.location.as_str());
        // Three inlet candidates: both air inlet entities outrank the name; the lowest instance wins.
        assert_eq!(loc("Ambient Temp"), Some("inlet"));
        assert_eq!(loc("Front Temp"), Some("ambient"));
        assert_eq!(loc("Inlet Temp"), Some("ambient"));
        assert_eq!(s.iter().filter(|x| x.location == Location::Inlet).count(), 1);
        assert_eq!(loc("Proc Temp"), Some("cpu"));
        assert_eq!(loc("Board Temp 2"), Some("memory"));
        assert_eq!(loc("Bay Temp"), Some("disk"));
        assert_eq!(loc("Supply Temp"), Some("psu"));
        assert_eq!(loc("Room Temp"), Some("ambient"));
        assert_eq!(loc("Outlet Temp"), Some("exhaust"));
        // The best candidate without a reading does not take the inlet from one that reads.
        let s = parse_ipmitool_sensors(
            "Ambient Temp | 30h | ns | 55.1 | No Reading\nInlet Temp | 32h | ok | 7.1 | 25 degrees C\n",
        );
        assert_eq!(s.iter().find(|x| x.name == "Inlet Temp").map(|x| x.location), Some(Location::Inlet));
        // Without an entity column, a weak name is the inlet only when nothing better is there.
        let s = parse_ipmitool_sensors("System Temp | 31 degrees C | ok\nCPU Temp | 45 degrees C | ok\n");
        assert_eq!(s[0].location, Location::Inlet);
        assert_eq!(entity_cell(" 55.1 "), Some(Entity { id: 55, instance: 1 }));
        assert_eq!(entity_cell(""), None);
    }

    #[test]
    fn impossible_readings_are_refused_where_they_are_parsed() {
        let text = "\
GPU Temp         | 39h | ok  | 11.1 | -128 degrees C
Hot Temp         | 3Ah | ok  |  7.1 | 255 degrees C
FAN4             | 43h | ok  | 29.4 | 250000 RPM
CPU Power        | 45h | ok  |  3.1 | 9000 Watts
Sys Power        | 46h | ok  |  7.1 | 9000 Watts
FAN5             | 3500.000 | RPM | ok | na
FAN6             | -20.000  | RPM | ok | na
FAN7             | lots     | RPM | ok | na
";
        let s = parse_ipmitool_sensors(text);
        let reason = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.value.clone().map_err(|e| e.reason));
        for n in ["GPU Temp", "Hot Temp", "FAN4", "CPU Power", "FAN6"] {
            assert_eq!(reason(n), Some(Err(Reason::Implausible)), "{n}");
        }
        assert_eq!(reason("Sys Power"), Some(Ok(9000.0)), "a platform may draw 9 kW, a CPU may not");
        assert_eq!(reason("FAN5"), Some(Ok(3500.0)));
        assert_eq!(reason("FAN7"), Some(Err(Reason::Parse)), "a reading that does not parse is garbage");
        let mut d = Dcmi { current: 250.0, min: None, max: None, average: None };
        assert!(check(Quantity::Power(Domain::Platform), d.current).is_ok());
        d.current = -3.0;
        assert!(check(Quantity::Power(Domain::Platform), d.current).is_err());
    }

    #[test]
    fn locale_decimal_comma_and_garbage_listing() {
        let s = parse_ipmitool_sensors("Inlet Temp | 23,5 degrees C | ok\n");
        assert_eq!(s[0].value, Ok(23.5));
        assert!(parse_ipmitool_sensors(&fixture("garbage.dcmi")).is_empty());
    }

    #[test]
    fn power_sensor_domains_and_failures() {
        assert_eq!(sensor_power_domain("Pwr Consumption"), Domain::Platform);
        assert_eq!(sensor_power_domain("PS1 Input Power"), Domain::PsuInput);
        assert_eq!(sensor_power_domain("PS2 Output Power"), Domain::PsuOutput);
        assert_eq!(sensor_power_domain("CPU Power"), Domain::Package);
        let e = classify_failure(
            "ipmitool",
            "Could not open device at /dev/ipmi0 or /dev/ipmi/0 or /dev/ipmidev/0: No such file or directory\n",
        );
        assert_eq!(e.reason, Reason::Missing);
        assert!(e.detail.contains("modprobe ipmi_devintf") && e.detail.contains("lanplus"), "{e}");
        let e = classify_failure("ipmitool", "Could not open device at /dev/ipmi0: Permission denied\n");
        assert_eq!(e.reason, Reason::Permission);
        let e = classify_failure("ipmitool", "Get SDR 0000 command failed: Insufficient privilege level\n");
        assert_eq!(e.reason, Reason::Permission);
        let e = classify_failure("ipmitool", "Error: Unable to establish IPMI v2 / RMCP+ session\n");
        assert_eq!(e.reason, Reason::Io, "the transport to the BMC failed");
    }
}
