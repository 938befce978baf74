//! The BMC over Redfish, legacy model (DSP0268 `Chassis/{id}/Power` and
//! `/Thermal`, the most widely implemented): `PowerControl[0].PowerConsumedWatts`
//! is the host's wall power (method `bmc_redfish`), `Temperatures[]` the
//! thermals. Polled on its own thread ([`super::bmc`]) with HTTP Basic auth,
//! TLS verified unless `insecure_skip_verify`, the password never logged.

use std::time::Duration;

use domesday_model::catalog::{POWER, TEMPERATURE};
use domesday_model::vocab::{Domain, Location, Reason, Source};
use serde_json::Value;

use super::bmc::Poller;
use super::hwmon::temperature_location;
use super::{Output, Progress, Sample, SensorSource};
use crate::config::RedfishConfig;
use crate::fsread::ReadError;

/// One temperature of `Thermal`.
#[derive(Debug, Clone, PartialEq)]
pub struct Temp {
    pub name: String,
    pub location: Location,
    pub value: Result<f64, String>,
}

/// What one poll read.
#[derive(Debug, Clone, PartialEq)]
pub struct RedfishReading {
    pub chassis: String,
    pub watts: Result<f64, ReadError>,
    pub temps: Vec<Temp>,
}

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
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| parse_err("PowerConsumedWatts out of range")),
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
            let location = match context {
                "Intake" => Location::Inlet,
                "Exhaust" => Location::Exhaust,
                "CPU" | "CPUSubsystem" => Location::Cpu,
                "Memory" | "MemorySubsystem" => Location::Memory,
                "PowerSupply" | "PowerSubsystem" => Location::Psu,
                "StorageDevice" | "StorageSubsystem" => Location::Disk,
                "GPU" | "GPUSubsystem" | "Accelerator" => Location::Gpu,
                "Room" => Location::Ambient,
                _ => temperature_location("", &name),
            };
            let state = t.pointer("/Status/State").and_then(Value::as_str).unwrap_or("Enabled");
            let value = if state != "Enabled" {
                Err(format!("state {state}"))
            } else {
                t.get("ReadingCelsius").and_then(Value::as_f64).ok_or_else(|| "no reading".to_string())
            };
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
        Ok(Client { cfg: cfg.clone(), http, rt, chassis })
    }

    fn get(&self, path: &str) -> Result<Value, ReadError> {
        let url = format!("{}{path}", self.cfg.url);
        let timeout = self.cfg.timeout.0;
        let mut req = self.http.get(&url).header("Accept", "application/json").header("OData-Version", "4.0");
        if let Some(user) = &self.cfg.username {
            req = req.basic_auth(user, self.cfg.password.as_ref().map(|p| p.expose()));
        }
        self.rt.block_on(async {
            let resp = req.send().await.map_err(|e| http_error(&url, &e, timeout))?;
            let status = resp.status();
            match status.as_u16() {
                200..=299 => {}
                401 | 403 => {
                    return Err(ReadError::new(
                        Reason::Permission,
                        format!("{url} answered {status}: check username and password_file (and the account's role)"),
                    ));
                }
                404 => return Err(ReadError::new(Reason::Missing, format!("{url} answered 404"))),
                _ => return Err(ReadError::new(Reason::Io, format!("{url} answered {status}"))),
            }
            let body = resp.text().await.map_err(|e| http_error(&url, &e, timeout))?;
            serde_json::from_str(&body).map_err(|e| parse_err(format!("{url}: not JSON ({e})")))
        })
    }

    /// One poll: the chassis (first member unless configured), its Power and Thermal.
    pub fn poll(&mut self) -> Result<RedfishReading, ReadError> {
        let chassis = match &self.chassis {
            Some(c) => c.clone(),
            None => {
                let c = members(&self.get("/redfish/v1/Chassis")?)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| ReadError::new(Reason::Missing, "the BMC lists no chassis"))?;
                self.chassis = Some(c.clone());
                c
            }
        };
        let id = chassis.rsplit('/').next().unwrap_or(&chassis).to_string();
        let watts = match self.get(&format!("{chassis}/Power")) {
            Ok(doc) => power_consumed(&doc),
            // A transport or auth failure fails the whole poll.
            Err(e) if e.reason != Reason::Missing && e.reason != Reason::Parse => return Err(e),
            Err(e) => Err(e),
        };
        let temps = match self.get(&format!("{chassis}/Thermal")) {
            Ok(doc) => temperatures(&doc).unwrap_or_default(),
            Err(e) if e.reason != Reason::Missing && e.reason != Reason::Parse => return Err(e),
            Err(_) => Vec::new(),
        };
        if let Err(e) = &watts
            && e.reason == Reason::Parse
        {
            return Err(e.clone());
        }
        Ok(RedfishReading { chassis: id, watts, temps })
    }
}

fn http_error(url: &str, e: &reqwest::Error, timeout: Duration) -> ReadError {
    if e.is_timeout() {
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
}

impl Redfish {
    pub fn new(cfg: &RedfishConfig) -> std::io::Result<Self> {
        let mut client = Client::new(cfg).map_err(std::io::Error::other)?;
        let poller = Poller::spawn("redfish", cfg.interval.0, move || client.poll())?;
        Ok(Redfish { poller, url: cfg.url.clone() })
    }

    pub fn waiter(&self) -> impl Fn(Duration) + Send + 'static {
        self.poller.waiter()
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
        let chassis = st.last_ok.as_ref().map(|(_, r)| r.chassis.clone()).unwrap_or_else(|| "chassis".into());
        let sensor = format!("{chassis}/power");
        let path = format!("{}/redfish/v1/Chassis/{chassis}/Power", self.url);
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
        if let Some(Ok(w)) = fresh.as_ref().map(|r| &r.watts) {
            out.facts.bmc_redfish_watts = Some(*w);
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
                format!("{}/redfish/v1/Chassis/{chassis}/Thermal", self.url),
                t.value.clone().map_err(|why| ReadError::new(Reason::Missing, why)),
            );
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
}
