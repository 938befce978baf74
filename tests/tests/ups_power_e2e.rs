//! A UPS read through snmp_exporter and Prometheus (`kind = "prometheus"`,
//! `measure = "power"`): the real collector polls a mock query API
//! (`mock_http`) whose matrix is a constant 1800 W `upsOutputTruePower`
//! gauge with samples 15 s apart. The first answer holds one sample (the
//! baseline); later ones hold the whole window again, overlapping what was
//! integrated. The booked energy must be 1800 W × (last − first sample time)
//! exactly: each span integrated once, none twice.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domesday_tests::{COLLECTOR_LOG, Collector, binary, collector_output, free_port, get_text, mock_http, site_config};

const TOKEN: &str = "ups-token";
const MINUTE: i64 = 60_000;
const STEP_MS: i64 = 15_000;
const SAMPLES: i64 = 9;
const WATTS: i128 = 1800;

#[test]
fn a_ups_power_gauge_is_integrated_into_exact_energy() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let start = jiff::Timestamp::now().as_millisecond();
    let t0 = (start / MINUTE) * MINUTE - 5 * MINUTE;
    let last = t0 + (SAMPLES - 1) * STEP_MS;

    let reads = Arc::new(AtomicU64::new(0));
    let r = reads.clone();
    let http_port = mock_http(move |target| {
        if !target.starts_with("/api/v1/query?query=") {
            return (404, "{}".into());
        }
        let n = if r.fetch_add(1, Ordering::SeqCst) == 0 { 1 } else { SAMPLES };
        let values: Vec<String> = (0..n).map(|k| format!("[{},\"{WATTS}\"]", (t0 + k * STEP_MS) / 1000)).collect();
        (
            200,
            format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"__name__":"upsOutputTruePower","instance":"ups-a","upsOutputLineIndex":"1"}},"values":[{}]}}]}}}}"#,
                values.join(",")
            ),
        )
    });

    let config = site_config(
        dir.path(),
        port,
        TOKEN,
        &format!(
            r#"
[[sites.meters]]
id = "ups-a"
role = "ups_out"
kind = "prometheus"
unit = "kWh"
url = "http://127.0.0.1:{http_port}"
query = 'upsOutputTruePower{{instance="ups-a",upsOutputLineIndex="1"}}[5m]'
measure = "power"
interval = "5s"          # spans up to 3 × 5 s = 15 s are integrated
"#
        ),
    );

    let out = collector_output(
        Command::new(binary("domesday-collector")).args(["check-config", "--config"]).arg(&config),
        dir.path(),
    );
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let log = dir.path().join(COLLECTOR_LOG);
    let mut c = Collector::spawn(dir.path(), port, &config);

    let from = t0 - 10 * MINUTE;
    let to = (jiff::Timestamp::now().as_millisecond() / MINUTE + 2) * MINUTE;
    let want = (WATTS * i128::from(last - t0) * 1000).to_string(); // W × ms × 1000 = µJ
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let url = c.url(&format!("/api/v1/energy?site=caen-1&meter=ups-a&from={from}&to={to}"));
        let v: serde_json::Value = serde_json::from_str(&get_text(&url, Duration::from_secs(10))).expect("json");
        // A third read re-serves the same window: it must not add anything.
        if reads.load(Ordering::SeqCst) >= 3 && v["energy_microjoules"] == serde_json::Value::String(want.clone()) {
            assert_eq!(v["role"], "ups_out", "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "energy is {} after {} reads; expected {want} µJ (1800 W × {} s)\n{v}\n{}",
            v["energy_microjoules"],
            reads.load(Ordering::SeqCst),
            (last - t0) / 1000,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(c.proc.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()), "clean shutdown");
}
