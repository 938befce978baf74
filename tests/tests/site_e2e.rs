//! A whole site through the real collector: a real agent on a fixture tree and two pushed hosts, a
//! mock Modbus utility meter, a mock Redfish rack PDU, CSV water, heat-reuse and
//! on-site PV meters, and a mock RTE API. The indicators the collector answers
//! are recomputed here from the raw readings the mocks served.

mod common;
use common::start_modbus;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::{
    Collector, fixture_copy, free_port, get_text, host_energy_series, mock_http, post_write, pushed_host_energy,
    start_agent_logged_with,
};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const TOKEN: &str = "site-token";
const READS: u64 = 4;

/// Utility meter, holding 3203 int64 Wh: 1,000,000 Wh then +600 Wh per read, 4 times.
struct Utility(AtomicU64);

impl tokio_modbus::server::Service for Utility {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match req.request {
            Request::ReadHoldingRegisters(3203, 4) => {
                let n = self.0.fetch_add(1, Ordering::SeqCst).min(READS);
                let wh = 1_000_000u64 + 600 * n;
                Ok(Response::ReadHoldingRegisters((0..4).rev().map(|i| (wh >> (16 * i)) as u16).collect()))
            }
            _ => Err(ExceptionCode::IllegalDataAddress),
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn ts(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

fn find<'a>(period: &'a serde_json::Value, name: &str, category: u64) -> &'a serde_json::Value {
    period["indicators"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|i| {
                i["name"] == name
                    && (i["category"].is_null() || i["category"] == category)
                    && (i["basis"].is_null() || i["basis"] == "location")
                    && (i["water"].is_null() || i["water"] == "total")
                    && i["hall"].is_null()
            })
        })
        .unwrap_or(&serde_json::Value::Null)
}

fn close(v: &serde_json::Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() <= 1e-9 * want.abs().max(1.0))
}

#[test]
fn a_whole_site_gives_the_indicators_the_raw_readings_give() {
    let dir = tempfile::tempdir().expect("tmp");
    let modbus = start_modbus(Arc::new(Utility(AtomicU64::new(0))));
    // Rack PDU: EnergyJoules 10 MJ then +1.8 MJ (0.5 kWh) per read, 4 times.
    let pdu_reads = Arc::new(AtomicU64::new(0));
    let r = pdu_reads.clone();
    let pdu = mock_http(move |target| {
        if target.ends_with("/RackPDUs/1") {
            return (
                200,
                r#"{"Id":"1","Metrics":{"@odata.id":"/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"}}"#.into(),
            );
        }
        let n = r.fetch_add(1, Ordering::SeqCst).min(READS);
        (
            200,
            format!(
                r#"{{"PowerWatts":{{"Reading":1800}},"EnergyJoules":{{"Reading":{}}}}}"#,
                10_000_000 + 1_800_000 * n
            ),
        )
    });
    // RTE: a flat 42 g/kWh, so the expected CUE needs no time matching to recompute.
    let rte = mock_http(|target| {
        let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let w =
            q.split('&').find_map(|kv| kv.strip_prefix("where=")).map(domesday_tests::url_decode).unwrap_or_default();
        let d: Vec<i64> = w
            .split("date'")
            .skip(1)
            .filter_map(|p| p.split('\'').next()?.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .collect();
        let (from, to) = (d.first().copied().unwrap_or(0), d.get(1).copied().unwrap_or(0));
        let off: usize =
            q.split('&').find_map(|kv| kv.strip_prefix("offset=")).and_then(|v| v.parse().ok()).unwrap_or(0);
        let rows: Vec<String> = (0..)
            .map(|i| from + i * 900_000)
            .take_while(|t| *t < to)
            .map(|t| format!("{{\"date_heure\":\"{}\",\"taux_co2\":42}}", ts(t)))
            .collect();
        let page: Vec<String> = rows.iter().skip(off).take(100).cloned().collect();
        (200, format!("{{\"total_count\":{},\"results\":[{}]}}", rows.len(), page.join(",")))
    });
    std::fs::write(dir.path().join("t"), TOKEN).expect("token");
    std::fs::write(dir.path().join("pw"), "secret").expect("pw");
    let port = free_port();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
db = {db:?}

[carbon]
source = "rte"
grid_zone = "FR"
fallback_g_per_kwh = 99.0
basis = "direct"
base_url = "http://127.0.0.1:{rte}"

[[sites]]
id = "caen-1"
timezone = "UTC"
token_file = {t:?}

[[sites.meters]]
id = "tgbt"
role = "utility_in"
kind = "modbus"
unit = "Wh"
address = "127.0.0.1:{modbus}"
register = 3203
type = "int64"
interval = "1s"

[[sites.meters]]
id = "pdu-a"
role = "pdu_out"
kind = "redfish"
unit = "kWh"
url = "http://127.0.0.1:{pdu}/redfish/v1/PowerEquipment/RackPDUs/1"
allow_plain_http = true
username = "monitor"
password_file = {pw:?}
interval = "1s"

[[sites.meters]]
id = "eau"
role = "water_in"
kind = "csv"
unit = "m3"

[[sites.meters]]
id = "chaleur"
role = "heat_reused_out"
kind = "csv"
unit = "kWh"

[[sites.meters]]
id = "pv"
role = "onsite_renewable_consumed"
kind = "csv"
unit = "kWh"
"#,
            db = dir.path().join("domesday.db").display().to_string(),
            t = dir.path().join("t").display().to_string(),
            pw = dir.path().join("pw").display().to_string(),
        ),
    )
    .expect("config");
    let c = Collector::spawn(dir.path(), port, &config);
    let now = now_ms();
    // Two agents at 225 W over 1 h: 0.45 kWh of category-3 IT energy in all.
    let t0 = now / 60_000 * 60_000 - 2 * 3_600_000;
    for host in ["srv-a", "srv-b"] {
        let points: Vec<(f64, i64)> = (0..=60).map(|m| (225.0 * 60.0 * m as f64, t0 + m * 60_000)).collect();
        let body = encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", host, "psu_input", &points)] });
        assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
    }
    let csv = format!(
        "start,end,meter,value\n{a},{b},eau,0.003\n{a},{b},chaleur,0.6\n{a},{b},pv,0.24\n",
        a = ts(t0),
        b = ts(t0 + 3_600_000)
    );
    c.upload_readings("caen-1", TOKEN, csv);
    // And a real agent on the intel-2s fixture tree, pushing its measured host energy (PSU inputs).
    let (_fx, root) = fixture_copy("intel-2s");
    std::fs::write(root.join("push.token"), TOKEN).expect("token");
    let log = root.join("agent.log");
    let mut agent = start_agent_logged_with(
        &root,
        free_port(),
        "200ms",
        &format!(
            "[push]\nurl = \"{}\"\ntoken_file = {:?}\ninterval = \"200ms\"\n",
            c.url("/api/v1/write"),
            root.join("push.token").display().to_string()
        ),
        &[("DOMESDAY_LOG", "info,domesday_agent::push=debug")],
        &log,
        &["--site", "caen-1"],
    );
    let (from, to) = (t0, (now / 3_600_000 + 1) * 3_600_000);
    let energy = |meter: &str| -> f64 {
        let b = get_text(
            &c.url(&format!("/api/v1/energy?site=caen-1&meter={meter}&from={from}&to={to}")),
            Duration::from_secs(5),
        );
        serde_json::from_str::<serde_json::Value>(&b).expect("json")["energy_joules"].as_f64().unwrap_or(-1.0)
    };
    // The readers poll every second until both devices stop advancing.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(energy("tgbt") == 2_400.0 * 3_600.0 && energy("pdu-a") == 2.0 * 3.6e6) {
        assert!(Instant::now() < deadline, "meters: tgbt {} J, pdu-a {} J", energy("tgbt"), energy("pdu-a"));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()));
    let ticks = pushed_host_energy(&std::fs::read_to_string(&log).expect("log"), "psu_input");
    assert!(ticks.len() >= 5, "{} ticks", ticks.len());
    let uj = |v: f64| (v * 1e6).round() as i64;
    let agent_uj = uj(ticks[ticks.len() - 1].1) - uj(ticks[0].1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = get_text(
            &c.url(&format!("/api/v1/energy?site=caen-1&host=test-host&from={from}&to={to}")),
            Duration::from_secs(5),
        );
        let e: serde_json::Value = serde_json::from_str(&b).expect("json");
        if e["samples"].as_u64() == Some(ticks.len() as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "ledger lacks the agent's ticks: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = get_text(
        &c.url(&format!("/api/v1/sites/caen-1/indicators?from={from}&to={to}&step=1y")),
        Duration::from_secs(30),
    );
    let r: serde_json::Value = serde_json::from_str(&body).expect("json");
    let p = &r["periods"][0];
    // From the raw readings: the utility register rose 2,400 Wh, the PDU 7.2 MJ (2.0 kWh),
    // PV 0.24 kWh consumed on site, the two pushed agents 0.45 kWh plus what the fixture agent's
    // counter rose by; water 3 L; heat reused 0.6 kWh.
    let host_it = 0.45 + agent_uj as f64 / 3.6e12;
    let (grid, pv, pdu_it, water_l, heat) = (2.4, 0.24, 2.0, 3.0, 0.6);
    let e_dc = grid + pv;
    assert!(close(&find(p, "pue", 2)["value"], e_dc / pdu_it), "{}", find(p, "pue", 2));
    assert!(
        close(&find(p, "pue", 3)["value"], e_dc / host_it),
        "{} vs host_it {host_it} (agent {agent_uj} µJ over {} ticks)",
        find(p, "pue", 3),
        ticks.len()
    );
    assert!(close(&find(p, "cue", 3)["value"], grid * 42.0 / 1000.0 / host_it), "{}", find(p, "cue", 3));
    assert!(close(&find(p, "wue", 3)["value"], water_l / host_it), "{}", find(p, "wue", 3));
    assert!(close(&find(p, "erf", 0)["value"], heat / e_dc), "{}", find(p, "erf", 0));
    assert!(close(&find(p, "ref", 0)["value"], pv / e_dc), "{}", find(p, "ref", 0));
    assert_eq!(find(p, "cue", 3)["carbon_fallback"], false);
    assert_eq!(p["interim"], true);
}
