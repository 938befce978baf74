//! Redfish meter reader (`kind = "redfish"`): rack PDUs, floor PDUs and
//! switchgear exposing the DMTF PowerDistribution model (DSP2046 mockups).
//!
//! `url` names one resource, read with HTTP Basic auth (no session to keep or
//! leak; mainstream BMCs and PDUs accept it), `Accept: application/json` and
//! `OData-Version: 4.0`. The energy counter is taken from, in this order:
//! - an `EnergyJoules` excerpt `{"Reading": …}` (EnvironmentMetrics 1.2+,
//!   some PDUs' metrics): preferred, because it is finer than kWh;
//! - an `EnergykWh` excerpt (`PowerDistributionMetrics`, `Circuit` for
//!   Mains/Branches, `Outlet`, PSU metrics);
//! - a `Sensor` resource whose `ReadingType` is `EnergyJoules` or `EnergykWh`;
//! - a `PowerDistribution` resource (`RackPDUs/{id}`…): its `Metrics` link is
//!   followed once.
//!
//! Readings are converted exactly to micro-units of the meter's unit. Energy
//! sensors are resettable (`ResetMetrics`): a drop is handed to the ledger as
//! is, which counts it as a reset from zero. Credentials are sent only in the
//! `Authorization` header and never appear in logs or errors.

use std::time::Duration;

use serde_json::Value;

use super::convert::{Decimal, to_micro};
use super::http::{get_json, http_client};
use super::reading::{ReadError, Reading};
use crate::config::{MeterConfig, Secret};
use crate::ledger::writer::now_ms;

/// The energy counter in a Redfish document: `(value, "J" | "kWh")`, or
/// `None` when the resource has no energy property at all.
pub fn energy_of(doc: &Value) -> Result<Option<(Decimal, &'static str)>, ReadError> {
    if let Some(state) = doc.pointer("/Status/State").and_then(Value::as_str)
        && matches!(state, "Absent" | "Disabled" | "UnavailableOffline" | "StandbyOffline")
    {
        return Err(ReadError::Missing(format!("the resource's Status.State is {state}")));
    }
    let number = |v: &Value| -> Result<Option<Decimal>, ReadError> {
        match v {
            Value::Null => Ok(None),
            Value::Number(n) => Decimal::parse(&n.to_string())
                .map(Some)
                .ok_or_else(|| ReadError::Parse(format!("Reading {n} is out of range"))),
            other => Err(ReadError::Parse(format!("Reading {other} is not a number"))),
        }
    };
    let mut present = false;
    for (prop, unit) in [("EnergyJoules", "J"), ("EnergykWh", "kWh")] {
        if let Some(excerpt) = doc.get(prop) {
            present = true;
            if let Some(v) = number(excerpt.get("Reading").unwrap_or(&Value::Null))? {
                return Ok(Some((v, unit)));
            }
        }
    }
    if let Some(rt) = doc.get("ReadingType").and_then(Value::as_str) {
        let unit = match rt {
            "EnergyJoules" => "J",
            "EnergykWh" => "kWh",
            other => {
                return Err(ReadError::Missing(format!(
                    "this Sensor reads {other}, not energy: point `url` at an EnergyJoules or EnergykWh sensor"
                )));
            }
        };
        present = true;
        if let Some(units) = doc.get("ReadingUnits").and_then(Value::as_str) {
            let expected = if unit == "J" { "J" } else { "kW.h" };
            if units != expected {
                return Err(ReadError::Parse(format!(
                    "{rt} sensor with ReadingUnits {units:?} (expected {expected:?})"
                )));
            }
        }
        if let Some(v) = number(doc.get("Reading").unwrap_or(&Value::Null))? {
            return Ok(Some((v, unit)));
        }
    }
    if present {
        return Err(ReadError::Missing("the energy Reading is null or absent (sensor disabled?)".into()));
    }
    Ok(None)
}

/// A Redfish meter.
pub struct RedfishReader {
    client: reqwest::Client,
    url: String,
    username: Option<String>,
    password: Option<Secret>,
    unit: String,
    timeout: Duration,
}

impl RedfishReader {
    pub fn new(m: &MeterConfig) -> Result<RedfishReader, ReadError> {
        Ok(RedfishReader {
            client: http_client(m)?,
            url: m.url.clone().ok_or_else(|| ReadError::Config(format!("meter {:?}: no `url`", m.id)))?,
            username: m.username.clone(),
            password: m.password.clone(),
            unit: m.unit.clone(),
            timeout: m.timeout(),
        })
    }

    async fn get(&self, url: &str) -> Result<Value, ReadError> {
        let auth = self.username.as_deref().map(|u| (u, self.password.as_ref()));
        get_json(&self.client, url, auth, self.timeout).await
    }

    /// Reads the energy counter once.
    pub async fn read(&mut self) -> Result<Vec<Reading>, ReadError> {
        let doc = self.get(&self.url).await?;
        let mut ts_ms = now_ms();
        let found = match energy_of(&doc)? {
            Some(v) => v,
            None => {
                let Some(link) = doc.pointer("/Metrics/@odata.id").and_then(Value::as_str) else {
                    return Err(ReadError::Missing(format!(
                        "{} has no EnergyJoules, EnergykWh or Metrics link: point `url` at the PDU, its Metrics, a Mains/Branches circuit or an Outlet",
                        self.url
                    )));
                };
                let metrics = reqwest::Url::parse(&self.url)
                    .and_then(|u| u.join(link))
                    .map_err(|e| ReadError::Parse(format!("Metrics link {link:?}: {e}")))?;
                let doc = self.get(metrics.as_str()).await?;
                ts_ms = now_ms();
                energy_of(&doc)?
                    .ok_or_else(|| ReadError::Missing(format!("{metrics} has neither EnergyJoules nor EnergykWh")))?
            }
        };
        let (value, from) = found;
        Ok(vec![Reading { ts_ms, value_micro: to_micro(value, from, &self.unit)? }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn energy(doc: Value) -> Result<Option<(String, &'static str)>, ReadError> {
        energy_of(&doc).map(|o| o.map(|(d, u)| (d.to_string(), u)))
    }

    #[test]
    fn energy_joules_is_preferred_then_kwh_then_sensors() {
        // The DSP2046 PowerDistributionMetrics mockup (protocols.md §3.4).
        let metrics = json!({"@odata.type":"#PowerDistributionMetrics.v1_4_0.PowerDistributionMetrics",
            "PowerWatts":{"DataSourceUri":"/redfish/v1/PowerEquipment/RackPDUs/1/Sensors/PDUPower","Reading":6438},
            "EnergykWh":{"DataSourceUri":"/redfish/v1/PowerEquipment/RackPDUs/1/Sensors/PDUEnergy","Reading":56438}});
        assert_eq!(energy(metrics.clone()).expect("ok"), Some(("56438".into(), "kWh")));
        let mut both = metrics;
        both["EnergyJoules"] = json!({"Reading": 203176800000u64});
        assert_eq!(energy(both.clone()).expect("ok"), Some(("203176800000".into(), "J")));
        // A null EnergyJoules falls back to EnergykWh.
        both["EnergyJoules"] = json!({"Reading": null});
        assert_eq!(energy(both).expect("ok"), Some(("56438".into(), "kWh")));
        let circuit = json!({"@odata.type":"#Circuit.v1_8_1.Circuit","Id":"A","CircuitType":"Branch",
            "PowerWatts":{"Reading":937.4,"PowerFactor":1},"EnergykWh":{"Reading":325675.25}});
        assert_eq!(energy(circuit).expect("ok"), Some(("325675.25".into(), "kWh")));
        let sensor = json!({"@odata.type":"#Sensor.v1_6_0.Sensor","Id":"TotalEnergy","ReadingType":"EnergykWh",
            "Reading":325675,"ReadingUnits":"kW.h"});
        assert_eq!(energy(sensor).expect("ok"), Some(("325675".into(), "kWh")));
        let joules = json!({"ReadingType":"EnergyJoules","Reading":1.5e9,"ReadingUnits":"J"});
        assert_eq!(energy(joules).expect("ok"), Some(("1500000000".into(), "J")));
    }

    #[test]
    fn absent_disabled_and_wrong_sensors_are_named() {
        let pdu = json!({"@odata.type":"#PowerDistribution.v1_3_0.PowerDistribution","EquipmentType":"RackPDU",
            "Metrics":{"@odata.id":"/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"}});
        assert_eq!(energy(pdu).expect("no energy here"), None);
        let null = json!({"EnergykWh":{"Reading":null}});
        assert!(matches!(energy(null), Err(ReadError::Missing(_))));
        let disabled = json!({"EnergykWh":{"Reading":3},"Status":{"State":"Disabled"}});
        assert!(matches!(energy(disabled), Err(ReadError::Missing(_))));
        let power = json!({"ReadingType":"Power","Reading":374,"ReadingUnits":"W"});
        assert!(matches!(energy(power), Err(ReadError::Missing(m)) if m.contains("not energy")));
        let units = json!({"ReadingType":"EnergykWh","Reading":3,"ReadingUnits":"W.h"});
        assert!(matches!(energy(units), Err(ReadError::Parse(_))));
        let text = json!({"EnergykWh":{"Reading":"12"}});
        assert!(matches!(energy(text), Err(ReadError::Parse(_))));
    }
}
