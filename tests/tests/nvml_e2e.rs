//! The real `domesday-agent` reading NVIDIA GPUs through NVML, loaded at
//! runtime from a fake `libnvidia-ml.so.1` (tests/fixtures/nvml/fake_nvml.c,
//! compiled here with `cc`) whose readings come from a state file the test
//! rewrites between polls: two GPUs' power, energy, temperature and
//! utilisation; a GPU without power reading is a down sensor with a reason,
//! never 0 W; the energy counter stays monotonic across a driver reset (counted
//! once as `reason="reset"`); NVML
//! is initialised once; and `probe` says why the source is off when the
//! library is absent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use domesday_tests::{
    fixture_copy, fixtures_dir, free_port, get_text, probe_command, probe_output, promtool_check_metrics, series_value,
    start_agent_logged_with, write_agent_config,
};

const WAIT: Duration = Duration::from_secs(25);

/// Compiles the fake NVML library into `dir`; a missing compiler fails the test.
fn fake_nvml(dir: &Path) -> PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(fixtures_dir().join("nvml/fake_nvml.c"))
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `cc` to build the fake NVML library ({e}): install gcc"));
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    lib
}

fn nvml_table(library: &Path, extra: &str) -> String {
    format!("[nvml]\nlibrary = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\n{extra}", library.display().to_string())
}

const GPUS: &str = "\
gpu uuid=GPU-5d2b2b4e-8c3d-6f3b-1c1e-0d9f3a7b2c11 power=61330 energy=1000000 temp=34 util=87 name=NVIDIA A100-SXM4-40GB
gpu uuid=GPU-9a1f0c2e-3b4d-4e5f-8a6b-7c8d9e0f1a2b power=not_supported energy=250000 temp=29 util=0 name=Tesla K80
";

/// The GPU series of an exposition, without the constant labels.
fn nvml_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| l.contains("source=\"nvml\"") && !l.starts_with("domesday_sensor_"))
        .map(|l| l.replace("site=\"test-site\",host=\"test-host\",", ""))
        .collect()
}

fn energy(body: &str, zone: &str) -> Option<f64> {
    series_value(body, "domesday_energy_joules_total", &["source=\"nvml\"", &format!("zone=\"{zone}\"")])
}

#[test]
fn two_gpus_through_nvml_with_an_unsupported_power_reading_and_a_counter_reset() {
    let (tmp, root) = fixture_copy("intel-2s");
    let lib = fake_nvml(tmp.path());
    let state = tmp.path().join("nvml-state");
    let calls = tmp.path().join("nvml-calls");
    std::fs::write(&state, GPUS).expect("state");
    let env = [("FAKE_NVML_STATE", state.display().to_string()), ("FAKE_NVML_LOG", calls.display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let port = free_port();
    let log = tmp.path().join("agent.log");
    // `enabled` is left at "auto": the library loads, so the source is on.
    let _agent = start_agent_logged_with(&root, port, "200ms", &nvml_table(&lib, ""), &env, &log, &[]);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut last_energy = [0.0f64; 2];
    let mut scrape_until = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = Instant::now();
            let body = get_text(&url, WAIT);
            assert!(t.elapsed() < Duration::from_secs(2), "a scrape took {:?}", t.elapsed());
            for (i, zone) in ["gpu0", "gpu1"].iter().enumerate() {
                if let Some(e) = energy(&body, zone) {
                    assert!(e >= last_energy[i], "{zone} energy went from {} to {e}", last_energy[i]);
                    last_energy[i] = e;
                }
            }
            if pred(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last body:\n{body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let body = scrape_until("GPU readings", &|b| energy(b, "gpu0").is_some());
    let want = [
        r#"domesday_energy_joules_total{source="nvml",zone="gpu0",domain="gpu",socket=""} 1000"#,
        r#"domesday_energy_joules_total{source="nvml",zone="gpu1",domain="gpu",socket=""} 250"#,
        r#"domesday_power_watts{source="nvml",zone="gpu0",domain="gpu",socket=""} 61.33"#,
        r#"domesday_temperature_celsius{source="nvml",chip="gpu0",sensor="gpu",label="NVIDIA A100-SXM4-40GB",location="gpu"} 34"#,
        r#"domesday_temperature_celsius{source="nvml",chip="gpu1",sensor="gpu",label="Tesla K80",location="gpu"} 29"#,
        r#"domesday_gpu_utilization_ratio{source="nvml",zone="gpu0"} 0.87"#,
        r#"domesday_gpu_utilization_ratio{source="nvml",zone="gpu1"} 0"#,
    ];
    assert_eq!(nvml_lines(&body), want, "{body}");
    // Power not supported on gpu1: no series (never 0 W), a down sensor, counted as missing.
    let up = |b: &str, sensor: &str| {
        series_value(b, "domesday_sensor_up", &["source=\"nvml\"", &format!("sensor=\"{sensor}\"")])
    };
    assert_eq!(up(&body, "gpu1/power"), Some(0.0));
    for sensor in ["gpu0/power", "gpu0/energy", "gpu0/temp", "gpu0/utilization", "gpu1/energy", "gpu1/temp"] {
        assert_eq!(up(&body, sensor), Some(1.0), "{sensor}");
    }
    let missing = |b: &str| {
        series_value(b, "domesday_sensor_errors_total", &["source=\"nvml\"", "reason=\"missing\""]).unwrap_or(0.0)
    };
    assert!(missing(&body) >= 1.0, "{body}");
    // GPUs are inside the host: they never become the host power method.
    assert!(series_value(&body, "domesday_host_power_watts", &["method=\"psu_input\""]).is_some(), "{body}");
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));

    // New readings at the next poll; then the driver reloads and the raw counter
    // restarts near zero: the exported counter goes on from where it was.
    std::fs::write(&state, GPUS.replace("energy=1000000", "energy=1003000").replace("power=61330", "power=250000"))
        .expect("state");
    scrape_until("the new readings", &|b| energy(b, "gpu0") == Some(1003.0));
    std::fs::write(&state, GPUS.replace("energy=1000000", "energy=500")).expect("state");
    let body = scrape_until("the reset counter", &|b| energy(b, "gpu0") == Some(1003.5));
    assert_eq!(energy(&body, "gpu1"), Some(250.0));
    // The driver reload is counted once, as a reset.
    let resets = |b: &str| {
        series_value(b, "domesday_sensor_errors_total", &["source=\"nvml\"", "reason=\"reset\""]).unwrap_or(0.0)
    };
    assert_eq!(resets(&body), 1.0, "{body}");
    assert_eq!(
        series_value(&body, "domesday_power_watts", &["source=\"nvml\"", "zone=\"gpu0\""]),
        Some(61.33),
        "{body}"
    );
    // One nvmlInit for the agent's life, reused by every poll.
    let c = std::fs::read_to_string(&calls).expect("call log");
    assert_eq!(c, "init\n", "{c}");
}

fn probe(root: &Path, config: &Path) -> String {
    probe_output(probe_command(root, config).env_remove("FAKE_NVML_STATE").env_remove("FAKE_NVML_LOG"))
}

fn nvml_rows(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("nvml ")).collect()
}

#[test]
fn probe_says_why_nvml_is_off_or_failing() {
    let (tmp, root) = fixture_copy("vm-minimal");
    let absent = tmp.path().join("no-driver/libnvidia-ml.so.1");
    // Library absent under auto: off, no sensor row, and why.
    let text = probe(&root, &write_agent_config(&root, &nvml_table(&absent, "")));
    let rows = nvml_rows(&text);
    assert_eq!(rows.len(), 1, "{text}");
    let why = format!("off (auto): {} not found: the NVIDIA driver is not installed", absent.display());
    assert!(rows[0].contains(&why) && rows[0].contains("set [nvml] library"), "{text}");
    // Forced on: the same absence is a down sensor with its reason.
    let text = probe(&root, &write_agent_config(&root, &nvml_table(&absent, "enabled = true\n")));
    let rows = nvml_rows(&text);
    assert_eq!(rows.len(), 1, "{text}");
    assert!(rows[0].contains("missing: ") && rows[0].contains("not found: the NVIDIA driver"), "{text}");
    // The library there (its state file beside it): every GPU reading, the unsupported one with its fix.
    let lib = fake_nvml(tmp.path());
    std::fs::write(tmp.path().join("fake-nvml-state"), GPUS).expect("state");
    let text = probe(&root, &write_agent_config(&root, &nvml_table(&lib, "")));
    let row = |sensor: &str| {
        nvml_rows(&text).into_iter().find(|l| l.contains(&format!(" {sensor} "))).unwrap_or_else(|| panic!("{text}"))
    };
    assert!(row("gpu0/power").contains("ok 61.33"), "{text}");
    assert!(row("gpu0/energy").contains("ok 1000"), "{text}");
    let unsupported = row("gpu1/power");
    assert!(unsupported.contains("missing: nvmlDeviceGetPowerUsage"), "{unsupported}");
    assert!(unsupported.contains("older GPUs"), "{unsupported}");
    // The driver is installed but not loaded: off under auto.
    std::fs::write(tmp.path().join("fake-nvml-state"), "init driver_not_loaded\n").expect("state");
    let text = probe(&root, &write_agent_config(&root, &nvml_table(&lib, "")));
    let rows = nvml_rows(&text);
    assert!(
        rows.len() == 1 && rows[0].contains("off (auto): nvmlInit: the NVIDIA kernel driver is not loaded"),
        "{text}"
    );
}
