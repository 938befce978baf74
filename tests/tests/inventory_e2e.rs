//! The expected IT inventory through the real collector: two expected hosts,
//! one reporting through remote_write, and a network switch without an agent
//! estimated from its nameplate. `/hosts` names the silent host; the
//! indicators count the switch's estimated energy in E_IT, give a category 3
//! coverage of 1/2 and name the missing host. `/sites` carries the Annex I data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::{Collector, free_port, get_text, host_energy_series, post_write, site_config};

const TOKEN: &str = "inventory-token";
const HOUR: i64 = 3_600_000;

fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    site_config(
        dir,
        port,
        TOKEN,
        r#"name = "Caen 1"
operator = "Normandie DC"
country = "FR"
dc_type = "colocation"
dc_structure = "structure"
entry_into_operation = "2019-06"
installed_it_power_kw = 640.0
total_floor_area_m2 = 1200.0
computer_room_floor_area_m2 = 450.0
intake_air_set_point_c = 24.0
expected_hosts = ["srv-1", "srv-2"]

[sites.redundancy]
electrical_hv = "2N"
cooling_room = "N+1"

[[sites.meters]]
id = "edf"
role = "utility_in"
kind = "csv"
unit = "kWh"

[[sites.it_loads]]
id = "core-switch"
kind = "network"
nameplate_watts = 100.0
quality = "estimated"
"#,
    )
}

fn close(v: &serde_json::Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9 * want.abs().max(1.0))
}

#[test]
fn missing_hosts_and_loads_without_agents_are_known() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let cfg = config(dir.path(), port);
    let c = Collector::spawn(dir.path(), port, &cfg);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let h0 = now / HOUR * HOUR - HOUR;
    // srv-1 at 250 W, a sample a minute from h0 up to now; srv-2 never reports.
    let points: Vec<(f64, i64)> =
        (0..).map(|m: i64| (250.0 * 60.0 * m as f64, h0 + m * 60_000)).take_while(|(_, t)| *t <= now).collect();
    let body = encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", "srv-1", "psu_input", &points)] });
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
    let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default();
    let csv = format!("start,end,meter,value\n{},{},edf,0.7\n", ts(h0), ts(h0 + HOUR));
    c.upload_readings("caen-1", TOKEN, csv);

    let get = |path: &str| -> serde_json::Value {
        serde_json::from_str(&get_text(&c.url(path), Duration::from_secs(20))).expect("json")
    };
    let hosts = get("/api/v1/sites/caen-1/hosts");
    assert_eq!(hosts["missing"], serde_json::json!(["srv-2"]), "{hosts}");
    let row = |h: &str| {
        hosts["hosts"].as_array().and_then(|a| a.iter().find(|r| r["host"] == h).cloned()).unwrap_or_default()
    };
    assert_eq!((row("srv-1")["status"].clone(), row("srv-1")["expected"].clone()), ("reporting".into(), true.into()));
    assert_eq!(row("srv-2")["status"], "never", "{hosts}");
    assert!(row("srv-2")["last_sample"].is_null(), "{hosts}");

    let sites = get("/api/v1/sites");
    let site = &sites["sites"][0];
    assert_eq!(site["dc_type"], "colocation", "{site}");
    assert_eq!(site["redundancy"]["electrical_hv"], "2N", "{site}");
    assert_eq!(site["installed_it_power_kw"], 640.0, "{site}");
    assert_eq!(site["expected_hosts"], serde_json::json!(["srv-1", "srv-2"]), "{site}");
    assert_eq!(site["it_loads"][0]["nameplate_watts"], 100.0, "{site}");

    let r = get(&format!("/api/v1/sites/caen-1/indicators?from={}&to={}&step=1h", ts(h0), ts(h0 + HOUR)));
    let pue = r["periods"][0]["indicators"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "pue").cloned())
        .unwrap_or_default();
    // E_IT = srv-1's 0.25 kWh + the switch's 100 W × 1 h (estimated) = 0.35 kWh.
    assert_eq!(pue["category"], 3, "{pue}");
    assert!(close(&pue["denominator"], 0.35), "{pue}");
    assert!(close(&pue["numerator"], 0.7), "{pue}");
    assert!(close(&pue["estimated_share"], 0.1 / 0.35), "{pue}");
    // One expected host of two reported: coverage 1/2, the silent host named, and no number.
    assert!(close(&pue["coverage_ratio"], 0.5), "{pue}");
    assert_eq!(pue["missing_meters"], serde_json::json!(["host:srv-2"]), "{pue}");
    assert!(pue["value"].is_null() && pue["error"] == "missing_meter", "{pue}");
}
