//! Facility meter readers through the real collector binary: a Modbus TCP
//! meter (tokio-modbus' server on 127.0.0.1) whose int64 Wh and float32 kWh
//! registers advance and then stop, a Redfish rack PDU (`mock_http`) whose
//! EnergyJoules advances, answers malformed JSON once and is reset, a PDU that
//! answers 401, a Modbus meter nobody listens for and a Prometheus source. The
//! booked energy must equal the registers' increase exactly, and the failing
//! readers must be counted in `/metrics` without stopping the collector.

mod common;
use common::start_modbus;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domesday_tests::{
    COLLECTOR_LOG, Collector, binary, collector_output, free_port, get_text, mock_http, promtool_check_metrics,
    series_value,
};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const TOKEN: &str = "readers-token";
const PASSWORD: &str = "pdu-s3cret-do-not-log";

/// Holding 3203 (Schneider PM5xxx "register 3204"): int64 Wh, +1250 Wh per
/// read for `LIMIT` reads, then constant. Input 0x0048 (Eastron SDM630 total
/// import): float32 kWh, +0.5 kWh per read for `LIMIT` reads, then constant.
struct ModbusMeter {
    holding_reads: AtomicU64,
    input_reads: AtomicU64,
}

const LIMIT: u64 = 4;
const WH_START: u64 = 9_876_543_210; // beyond 2^32: needs all four words
const WH_STEP: u64 = 1_250;

fn words64(v: u64) -> Vec<u16> {
    (0..4).rev().map(|i| (v >> (16 * i)) as u16).collect()
}

impl tokio_modbus::server::Service for ModbusMeter {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(match (req.slave, req.request) {
            (1, Request::ReadHoldingRegisters(3203, 4)) => {
                let n = self.holding_reads.fetch_add(1, Ordering::SeqCst).min(LIMIT);
                Ok(Response::ReadHoldingRegisters(words64(WH_START + WH_STEP * n)))
            }
            (1, Request::ReadInputRegisters(0x48, 2)) => {
                let n = self.input_reads.fetch_add(1, Ordering::SeqCst).min(LIMIT);
                let bits = (1000.0f32 + 0.5 * n as f32).to_bits();
                Ok(Response::ReadInputRegisters(vec![(bits >> 16) as u16, bits as u16]))
            }
            (1, _) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::GatewayTargetDevice),
        })
    }
}

/// EnergyJoules served on the n-th read of the PDU's Metrics (`None`: malformed JSON).
fn pdu_joules(n: usize) -> Option<u64> {
    const SEQ: [Option<u64>; 7] = [
        Some(360_000_000), // 100 kWh: the baseline
        Some(365_400_000), // +1.5 kWh
        None,              // malformed: nothing booked, the next reading carries on
        Some(370_800_000), // +1.5 kWh
        Some(375_300_000), // +1.25 kWh
        Some(1_800_000),   // ResetMetrics: counts from zero, +0.5 kWh
        Some(7_200_000),   // +1.5 kWh, then constant
    ];
    SEQ[n.min(SEQ.len() - 1)]
}
const PDU_READS: usize = 7;
const PDU_EXPECTED_J: u64 = 22_500_000; // 6.25 kWh

const MINUTE: i64 = 60_000;

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[test]
fn readers_book_exact_register_increases_and_survive_failing_meters() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let start = now_ms();

    let modbus = Arc::new(ModbusMeter { holding_reads: AtomicU64::new(0), input_reads: AtomicU64::new(0) });
    let modbus_port = start_modbus(modbus.clone());

    // Prometheus samples five minutes apart, in the recent past.
    let t0 = (start / MINUTE) * MINUTE - 10 * MINUTE;
    let t1 = t0 + 5 * MINUTE;
    let pdu_reads = Arc::new(AtomicU64::new(0));
    let seen_queries = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (reads, queries) = (pdu_reads.clone(), seen_queries.clone());
    let http_port = mock_http(move |target| {
        if target == "/redfish/v1/PowerEquipment/RackPDUs/1" {
            return (200, r##"{"@odata.type":"#PowerDistribution.v1_3_0.PowerDistribution","Id":"1","EquipmentType":"RackPDU","Metrics":{"@odata.id":"/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"}}"##.to_string());
        }
        if target == "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics" {
            let n = reads.fetch_add(1, Ordering::SeqCst) as usize;
            return match pdu_joules(n) {
                // EnergykWh is the coarse whole-kWh figure: reading it instead would book another total.
                Some(j) => (
                    200,
                    format!(
                        r##"{{"@odata.type":"#PowerDistributionMetrics.v1_4_0.PowerDistributionMetrics","PowerWatts":{{"Reading":6438}},"EnergykWh":{{"Reading":{}}},"EnergyJoules":{{"Reading":{j}}}}}"##,
                        j / 3_600_000
                    ),
                ),
                None => (200, r#"{"EnergyJoules":{"Reading":3"#.to_string()),
            };
        }
        if target.starts_with("/redfish/v1/PowerEquipment/RackPDUs/2") {
            return (401, r#"{"error":{"code":"Base.1.8.InsufficientPrivilege"}}"#.to_string());
        }
        if let Some(q) = target.strip_prefix("/api/v1/query?query=") {
            if let Ok(mut s) = queries.lock() {
                s.push(domesday_tests::url_decode(q));
            }
            return (
                200,
                format!(
                    r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"__name__":"water_m3_total","meter":"eau"}},"values":[[{},"1000.5"],[{},"1003"]]}}]}}}}"#,
                    t0 / 1000,
                    t1 / 1000
                ),
            );
        }
        (404, "{}".into())
    });

    std::fs::write(dir.path().join("t"), TOKEN).expect("token");
    std::fs::write(dir.path().join("pdu.password"), format!("{PASSWORD}\n")).expect("password");
    let closed = free_port();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
db = {db:?}

[[sites]]
id = "caen-1"
timezone = "Europe/Paris"
token_file = {t:?}

[[sites.meters]]
id = "tgbt"
role = "utility_in"
kind = "modbus"
unit = "kWh"
address = "127.0.0.1:{modbus_port}"
unit_id = 1
register = 3203          # Schneider PM5xxx register 3204, 0-based
type = "int64"
scale = 0.001            # Wh → kWh
interval = "1s"

[[sites.meters]]
id = "clim"
role = "cooling"
kind = "modbus"
unit = "kWh"
address = "127.0.0.1:{modbus_port}"
register = 0x0048
type = "float32"
function = "input"
interval = "1s"

[[sites.meters]]
id = "tgbt-b"
role = "utility_in"
kind = "modbus"
unit = "kWh"
address = "127.0.0.1:{closed}"
register = 3203
type = "int64"
interval = "1s"
timeout = "1s"

[[sites.meters]]
id = "pdu-a1"
role = "pdu_out"
kind = "redfish"
unit = "kWh"
url = "http://127.0.0.1:{http_port}/redfish/v1/PowerEquipment/RackPDUs/1"
allow_plain_http = true
username = "monitor"
password_file = {pw:?}
interval = "1s"

[[sites.meters]]
id = "pdu-b1"
role = "pdu_out"
kind = "redfish"
unit = "kWh"
url = "http://127.0.0.1:{http_port}/redfish/v1/PowerEquipment/RackPDUs/2/Metrics"
allow_plain_http = true
username = "monitor"
password_file = {pw:?}
interval = "1s"

[[sites.meters]]
id = "eau"
role = "water_in"
kind = "prometheus"
unit = "m3"
url = "http://127.0.0.1:{http_port}"
query = 'water_m3_total{{meter="eau"}}[15m]'
interval = "1s"
"#,
            db = dir.path().join("domesday.db").display().to_string(),
            t = dir.path().join("t").display().to_string(),
            pw = dir.path().join("pdu.password").display().to_string(),
        ),
    )
    .expect("config");

    // check-config accepts it and never prints the password.
    let out = collector_output(
        Command::new(binary("domesday-collector")).args(["check-config", "--config"]).arg(&config),
        dir.path(),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(PASSWORD), "check-config printed the password:\n{text}");

    let log = dir.path().join(COLLECTOR_LOG);
    let mut c = Collector::spawn_command(
        Command::new(binary("domesday-collector"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("DOMESDAY_LOG", "debug"),
        port,
        dir.path(),
    );

    // Let every counter run past its last change, and then some.
    let deadline = Instant::now() + Duration::from_secs(45);
    while modbus.holding_reads.load(Ordering::SeqCst) < LIMIT + 2
        || modbus.input_reads.load(Ordering::SeqCst) < LIMIT + 2
        || pdu_reads.load(Ordering::SeqCst) < PDU_READS as u64 + 1
    {
        assert!(
            Instant::now() < deadline,
            "the mocks were not read enough: modbus {:?}/{:?}, pdu {:?}\n{}",
            modbus.holding_reads,
            modbus.input_reads,
            pdu_reads,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let from = start / MINUTE * MINUTE - 15 * MINUTE;
    let to = (now_ms() / MINUTE + 2) * MINUTE;
    let energy = |q: &str| -> serde_json::Value {
        let url = c.url(&format!("/api/v1/energy?site=caen-1&{q}&from={from}&to={to}"));
        serde_json::from_str(&get_text(&url, Duration::from_secs(10))).expect("json")
    };
    // The last reading is booked shortly after it was served: wait for it, then compare exactly.
    let wait_for = |q: &str, field: &str, want: String| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = energy(q);
            if v[field] == serde_json::Value::String(want.clone()) {
                return v;
            }
            assert!(Instant::now() < deadline, "{q}: {field} is {} and stays so; expected {want}\n{v}", v[field]);
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Modbus int64 Wh: LIMIT × 1250 Wh = 5 kWh = 18 MJ.
    let tgbt_uj = i128::from(LIMIT * WH_STEP) * 3_600 * 1_000_000;
    let v = wait_for("meter=tgbt", "energy_microjoules", tgbt_uj.to_string());
    assert_eq!(v["role"], "utility_in", "{v}");
    assert!(v["samples"].as_u64().is_some_and(|n| n > LIMIT), "every reading is a sample: {v}");
    // The failing utility meter adds nothing to its role.
    wait_for("role=utility_in", "energy_microjoules", tgbt_uj.to_string());
    // Modbus float32 kWh: LIMIT × 0.5 kWh = 2 kWh.
    wait_for("meter=clim", "energy_microjoules", (2i128 * 3_600_000 * 1_000_000).to_string());
    // Redfish: the EnergyJoules increases, the reset counted from zero, the malformed answer skipped.
    let pdu_uj = i128::from(PDU_EXPECTED_J) * 1_000_000;
    wait_for("meter=pdu-a1", "energy_microjoules", pdu_uj.to_string());
    assert_eq!(energy("meter=pdu-b1")["samples"], 0);
    // Prometheus: 1000.5 → 1003 m³ = 2500 L, however many times the window was read.
    wait_for("meter=eau", "volume_microliters", "2500000000".into());
    let q = seen_queries.lock().map(|q| q.clone()).unwrap_or_default();
    assert!(q.len() >= 2 && q.iter().all(|q| q == "water_m3_total{meter=\"eau\"}[15m]"), "{q:?}");

    // Failures are counted by reason, successes too, and the collector still serves.
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    let errors = |meter: &str, reason: &str| {
        series_value(
            &metrics,
            "domesday_meter_read_errors_total",
            &[&format!("meter=\"{meter}\""), &format!("reason=\"{reason}\"")],
        )
    };
    assert!(errors("tgbt-b", "io").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(errors("pdu-b1", "permission").is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(errors("pdu-a1", "parse"), Some(1.0), "{metrics}");
    assert_eq!(errors("tgbt", "io"), None, "{metrics}");
    let readings = series_value(&metrics, "domesday_meter_readings_total", &["meter=\"tgbt\""]);
    assert!(readings.is_some_and(|n| n >= (LIMIT + 2) as f64), "{metrics}");
    assert!(series_value(&metrics, "domesday_meter_last_reading_timestamp_seconds", &["meter=\"pdu-a1\""]).is_some());
    assert_eq!(
        series_value(&metrics, "domesday_site_energy_joules_total", &["role=\"pdu_out\""]),
        Some(PDU_EXPECTED_J as f64),
        "{metrics}"
    );
    assert_eq!(promtool_check_metrics(&metrics), "", "{metrics}");
    assert!(c.proc.0.try_wait().expect("status").is_none(), "the collector stopped");
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");

    assert!(c.proc.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()), "clean shutdown");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("meter read failed") && log.contains("pdu-b1"), "{log}");
    assert!(!log.contains(PASSWORD), "the password reached the log");
}
