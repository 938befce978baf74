//! A real Prometheus (and Alertmanager) for the tests of the shipped rules and
//! dashboards: spawned on 127.0.0.1 with a scratch TSDB, queried over its HTTP API.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Proc, free_port, write_in_place};

/// Debian's `prometheus` binary (`./test.sh` installs the package).
pub fn prometheus_binary() -> PathBuf {
    let p = PathBuf::from("/usr/bin/prometheus");
    assert!(p.exists(), "prometheus not found: install Debian's `prometheus` package (./test.sh does)");
    p
}

/// Debian's `prometheus-alertmanager` binary (`./test.sh` installs the package).
pub fn alertmanager_binary() -> PathBuf {
    let p = PathBuf::from("/usr/bin/prometheus-alertmanager");
    assert!(p.exists(), "alertmanager not found: install Debian's `prometheus-alertmanager` package (./test.sh does)");
    p
}

/// Starts Prometheus with `config` (YAML text) in `dir`; returns it and its port once ready.
pub fn start_prometheus(dir: &Path, config: &str) -> (Proc, u16) {
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).expect("prometheus.yml");
    let port = free_port();
    let p = Proc(
        Command::new(prometheus_binary())
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus"),
    );
    wait_ready(&format!("http://127.0.0.1:{port}/-/ready"));
    (p, port)
}

/// Starts Alertmanager with `config` (YAML text), clustering off; returns it and its port once ready.
pub fn start_alertmanager(dir: &Path, config: &str) -> (Proc, u16) {
    let file = dir.join("alertmanager.yml");
    std::fs::write(&file, config).expect("alertmanager.yml");
    let port = free_port();
    let p = Proc(
        Command::new(alertmanager_binary())
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.path={}", dir.join("am").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn alertmanager"),
    );
    wait_ready(&format!("http://127.0.0.1:{port}/-/ready"));
    (p, port)
}

fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    while Instant::now() < deadline {
        if client.get(url).send().is_ok_and(|r| r.status().is_success()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} not ready within 20 s");
}

/// An instant query's result vector (`data.result`), or the error text.
pub fn query(port: u16, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let client =
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let resp = client
        .post(format!("http://127.0.0.1:{port}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .map_err(|e| e.to_string())?;
    let body = resp.text().map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{expr}: {v}"));
    }
    match &v["data"]["result"] {
        serde_json::Value::Array(a) => Ok(a.clone()),
        // A scalar or string result: one value.
        other => Ok(vec![serde_json::json!({ "metric": {}, "value": other })]),
    }
}

/// Adds a hwmon chip `inlet_sensor` with one temperature labelled "Inlet Temp" to a
/// fixture tree; returns its `temp1_input` (millidegrees) for [`set_millidegrees`].
pub fn add_inlet_sensor(root: &Path, celsius: f64) -> PathBuf {
    let dir = root.join("sys/devices/virtual/hwmon/hwmon9");
    std::fs::create_dir_all(&dir).expect("hwmon dir");
    std::fs::write(dir.join("name"), "inlet_sensor\n").expect("name");
    std::fs::write(dir.join("temp1_label"), "Inlet Temp\n").expect("label");
    let input = dir.join("temp1_input");
    std::fs::write(&input, format!("{}\n", (celsius * 1000.0) as i64)).expect("input");
    let link = root.join("sys/class/hwmon/hwmon9");
    std::os::unix::fs::symlink("../../devices/virtual/hwmon/hwmon9", &link).expect("hwmon link");
    input
}

/// Rewrites a fixture temperature in place (the agent keeps the file open).
pub fn set_millidegrees(input: &Path, celsius: f64) {
    write_in_place(input, format!("{}\n", (celsius * 1000.0) as i64).as_bytes()).expect("write temperature");
}
