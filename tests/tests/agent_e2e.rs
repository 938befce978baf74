//! The real `domesday-agent` binary on fixture trees, over loopback HTTP:
//! counters advanced in place (one wrapping) give exact joules, a blocked
//! sensor does not stall the tick, a vanished chip stops its series, host
//! energy persists across a SIGTERM restart, and bad configs are refused with
//! file:line.

use std::process::Command;
use std::time::{Duration, Instant};

use domesday_tests::{
    agent_output, apply_overlay, binary, fixture_copy, fixtures_dir, free_port, get_text, promtool_check_metrics,
    series_value, start_agent,
};

const WAIT: Duration = Duration::from_secs(20);

/// Scrapes until `pred` holds on the body (bounded).
fn scrape_until(port: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + WAIT;
    loop {
        let body = get_text(&url, WAIT);
        if pred(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last body:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rapl(body: &str, zone: &str) -> Option<f64> {
    series_value(body, "domesday_energy_joules_total", &[&format!("zone=\"{zone}\""), "source=\"rapl\""])
}

#[test]
fn run_serves_exact_wrap_corrected_joules() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let port = free_port();
    let mut agent = start_agent(&root, port, "200ms", &[]);
    let first = scrape_until(port, "first RAPL sample", |b| rapl(b, "intel-rapl:1").is_some());
    assert_eq!(rapl(&first, "intel-rapl:1"), Some(262143.0));
    assert!(promtool_check_metrics(&first).is_empty());
    apply_overlay("intel-2s", &root).expect("overlay");
    let after = scrape_until(port, "the t1 counters", |b| rapl(b, "intel-rapl:0") == Some(101834.56789));
    // package-1 wrapped at max_energy_range_uj: +550 J exactly.
    assert_eq!(rapl(&after, "intel-rapl:1"), Some(262693.0));
    assert_eq!(rapl(&after, "intel-rapl:0:0"), Some(40502.33512));
    assert_eq!(rapl(&after, "intel-rapl:1:0"), Some(13078.240775));
    assert_eq!(
        series_value(&after, "domesday_host_power_watts", &["method=\"psu_input\"", "quality=\"measured\""]),
        Some(320.0)
    );
    assert!(after.contains("site=\"test-site\",host=\"test-host\""));

    // gzip when asked, identical content.
    let client = reqwest::blocking::Client::builder().gzip(true).build().expect("client");
    let resp = client.get(format!("http://127.0.0.1:{port}/metrics")).send().expect("gzip scrape");
    assert_eq!(resp.headers().get("content-encoding").and_then(|v| v.to_str().ok()), None, "decoded by reqwest");
    let raw = reqwest::blocking::Client::builder()
        .gzip(false)
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .expect("raw gzip scrape");
    assert_eq!(raw.headers().get("content-encoding").and_then(|v| v.to_str().ok()), Some("gzip"));
    assert!(resp.text().expect("body").contains("domesday_agent_info"));

    let status = agent.terminate(Duration::from_secs(10)).expect("agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn host_energy_persists_across_restart() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let port = free_port();
    let energy = |b: &str| series_value(b, "domesday_host_energy_joules_total", &["method=\"psu_input\""]);
    let mut agent = start_agent(&root, port, "100ms", &[]);
    let before = scrape_until(port, "some host energy", |b| energy(b).is_some_and(|e| e > 100.0));
    assert!(agent.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()));
    let saved = newest_state(&std::fs::read(root.join("state/host-energy.state")).expect("state file"));
    let saved = saved["host_energy_joules"]["psu_input"].as_f64().expect("psu_input joules");
    assert!(saved >= energy(&before).unwrap_or(f64::MAX), "state {saved} behind the last scrape");
    drop(agent);
    let port = free_port();
    let _agent = start_agent(&root, port, "100ms", &[]);
    let again = scrape_until(port, "the restored counter", |b| energy(b).is_some());
    assert!(energy(&again).is_some_and(|e| e >= saved), "counter went back after restart: {again}");
}

#[test]
fn a_blocked_sensor_is_marked_down_and_the_tick_goes_on() {
    let (_tmp, root) = fixture_copy("intel-2s");
    // A FIFO never written to: open() blocks like a hung driver.
    let temp = root.join("sys/devices/platform/coretemp.0/hwmon/hwmon1/temp3_input");
    std::fs::remove_file(&temp).expect("rm");
    assert!(Command::new("mkfifo").arg(&temp).status().expect("mkfifo").success());
    let port = free_port();
    let _agent = start_agent(&root, port, "300ms", &[]);
    let body = scrape_until(port, "the timeout to be reported", |b| {
        series_value(b, "domesday_sensor_errors_total", &["source=\"hwmon\"", "reason=\"timeout\""]).is_some()
    });
    assert_eq!(series_value(&body, "domesday_sensor_up", &["sensor=\"platform_coretemp_0/temp3\""]), Some(0.0));
    // The other sources keep sampling while hwmon is stuck.
    apply_overlay("intel-2s", &root).expect("overlay");
    let later = scrape_until(port, "RAPL to advance", |b| rapl(b, "intel-rapl:1") == Some(262693.0));
    assert_eq!(series_value(&later, "domesday_sensor_up", &["sensor=\"intel-rapl:0\""]), Some(1.0));
    let took = series_value(&later, "domesday_sample_duration_seconds", &[]).expect("duration");
    assert!(took < 5.0, "tick took {took} s");
}

#[test]
fn a_vanished_chip_stops_its_series_without_a_crash() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let port = free_port();
    let _agent = start_agent(&root, port, "100ms", &[]);
    let psu2 = "chip=\"i2c_0_0_0059\"";
    scrape_until(port, "PSU 2", |b| b.contains(psu2));
    let dev = root.join("sys/devices/pci0000:00/0000:00:1f.4/i2c-0/0-0059");
    std::fs::remove_dir_all(&dev).expect("remove PSU 2");
    let body = scrape_until(port, "PSU 2 series to stop", |b| !b.contains("i2c_0_0_0059"));
    // The remaining PSU carries the host: 176 W.
    assert_eq!(series_value(&body, "domesday_host_power_watts", &["method=\"psu_input\""]), Some(176.0));
}

#[test]
fn once_prints_a_valid_exposition_on_a_vm() {
    let root = fixtures_dir().join("vm-minimal");
    let out = agent_output(
        Command::new(binary("domesday-agent"))
            .args(["once", "--interval", "100ms", "--site", "s", "--host", "vm"])
            .arg("--sysfs-root")
            .arg(root.join("sys"))
            .arg("--procfs-root")
            .arg(root.join("proc")),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("domesday_host_info{site=\"s\",host=\"vm\",vendor=\"QEMU\""), "{text}");
    assert!(promtool_check_metrics(&text).is_empty());
}

#[test]
fn probe_names_each_failure_and_its_fix() {
    let root = fixtures_dir().join("broken");
    let out = agent_output(
        Command::new(binary("domesday-agent"))
            .args(["probe", "--interval", "100ms", "--host", "b"])
            .arg("--sysfs-root")
            .arg(root.join("sys"))
            .arg("--procfs-root")
            .arg(root.join("proc")),
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |sensor: &str| text.lines().find(|l| l.contains(&format!(" {sensor} "))).unwrap_or_default().to_string();
    assert!(line("intel-rapl:1").contains("parse:"), "{text}");
    assert!(line("intel-rapl:1:0").contains("missing:"), "{text}");
    assert!(line("intel-rapl:0:0").contains("io:"), "{text}");
    assert!(line("intel-rapl:0").contains("ok "), "{text}");
    assert!(text.contains("by method acpi_power_meter (measured)"), "{text}");
}

#[test]
fn check_config_refuses_bad_files_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = |text: &str| {
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).expect("write");
        let out = agent_output(
            Command::new(binary("domesday-agent"))
                .arg("check-config")
                .arg("--config")
                .arg(&p)
                .env_remove("DOMESDAY_PUSH_TOKEN"),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run("site = \"a\"\n[labels]\ninstance = \"x\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("agent.toml:3:") && err.contains("instance"), "{err}");
    // [push] without a token (no token_file, no DOMESDAY_PUSH_TOKEN): refused at the table.
    let (code, _, err) = run("site = \"a\"\n[push]\nurl = \"http://x\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("agent.toml:2:") && err.contains("push") && err.contains("DOMESDAY_PUSH_TOKEN"), "{err}");
    let (code, out, _) = run("site = \"a\"\nhost = \"h\"\ninterval = \"10s\"\n");
    assert_eq!(code, Some(0));
    assert!(out.contains("interval = \"10s\"") && out.contains("listen = \"127.0.0.1:9955\""), "{out}");
    // `run` refuses the same way before binding anything.
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "site = \"a\"\ninterval = \"fast\"\n").expect("write");
    let out = agent_output(Command::new(binary("domesday-agent")).arg("run").arg("--config").arg(&p));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("bad.toml:2:"), "{err}");
}

#[test]
fn an_unreadable_rapl_zone_is_a_permission_error_with_its_fix() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, root) = fixture_copy("intel-2s");
    let zone = root.join("sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj");
    // As on Linux ≥ 5.10: energy_uj is 0400 root.
    std::fs::set_permissions(&zone, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let mut cmd = if running_as_root() {
        // Root reads anything: drop to nobody, which is what an unprivileged agent is.
        // The checkout may sit under a directory nobody cannot enter (/root): run a copy.
        let exe = tmp.path().join("domesday-agent");
        std::fs::copy(binary("domesday-agent"), &exe).expect("copy binary");
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&exe);
        c
    } else {
        Command::new(binary("domesday-agent"))
    };
    let out = agent_output(
        cmd.args(["probe", "--interval", "100ms", "--host", "p"])
            .arg("--sysfs-root")
            .arg(root.join("sys"))
            .arg("--procfs-root")
            .arg(root.join("proc")),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(" intel-rapl:0 ")).unwrap_or_default();
    assert!(line.contains("permission:") && line.contains("CAP_DAC_READ_SEARCH"), "{text}");
}

/// Whether the tests run as root (CI does): the effective uid of this process.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// The newest whole slot of the agent's state file (two 1 KiB slots: magic
/// `DDH1`, sequence, length, CRC-32, JSON), read independently of the agent.
fn newest_state(bytes: &[u8]) -> serde_json::Value {
    bytes
        .chunks(1024)
        .filter(|c| c.len() >= 20 && &c[..4] == b"DDH1")
        .filter_map(|c| {
            let seq = u64::from_le_bytes(c[4..12].try_into().ok()?);
            let len = u32::from_le_bytes(c[12..16].try_into().ok()?) as usize;
            let json: serde_json::Value = serde_json::from_slice(c.get(20..20 + len)?).ok()?;
            Some((seq, json))
        })
        .max_by_key(|(seq, _)| *seq)
        .map(|(_, j)| j)
        .expect("a whole slot")
}

#[test]
fn impossible_sysfs_readings_are_refused_and_counted() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let port = free_port();
    let _agent = start_agent(&root, port, "200ms", &[]);
    let host = |b: &str, m: &str| series_value(b, "domesday_host_power_watts", &[&format!("method=\"{m}\"")]);
    let errors = |b: &str, source: &str| {
        series_value(b, "domesday_sensor_errors_total", &[&format!("source=\"{source}\""), "reason=\"implausible\""])
            .unwrap_or(0.0)
    };
    let body = scrape_until(port, "psu_input", |b| host(b, "psu_input").is_some());
    assert_eq!(errors(&body, "hwmon") + errors(&body, "thermal"), 0.0, "the fixture reads true: {body}");

    // A PSU reading 5 MW, a fan at 150,000 RPM, a core below absolute zero, a
    // thermal zone at 250 °C: they parse, none can be true.
    let hwmon = root.join("sys/class/hwmon");
    let thermal = root.join("sys/class/thermal/thermal_zone0/temp");
    for (file, value) in [
        (hwmon.join("hwmon4/power1_input"), "5000000000000\n"),
        (hwmon.join("hwmon4/fan1_input"), "150000\n"),
        (hwmon.join("hwmon1/temp1_input"), "-280000\n"),
        (thermal, "250000\n"),
    ] {
        domesday_tests::write_in_place(&file, value.as_bytes()).expect("write");
    }
    let body = scrape_until(port, "the refusals", |b| errors(b, "hwmon") >= 3.0 && errors(b, "thermal") >= 1.0);
    // No sample: the PSU sum is refused (not 5 MW, not the other PSU alone).
    assert_eq!(host(&body, "psu_input"), None, "{body}");
    assert!(host(&body, "acpi_power_meter").is_some(), "the next method carries the host: {body}");
    assert!(!body.lines().any(|l| l.starts_with("domesday_power_watts{") && l.ends_with(" 5000000")), "{body}");
    assert!(!body.lines().any(|l| l.starts_with("domesday_fan_speed_rpm{") && l.ends_with(" 150000")), "{body}");
    assert!(!body.lines().any(|l| l.starts_with("domesday_temperature_celsius{") && l.ends_with(" -280")), "{body}");
    assert_eq!(
        series_value(&body, "domesday_temperature_celsius", &["source=\"thermal\"", "sensor=\"thermal_zone0\""]),
        None
    );
    // Each refused sensor is down.
    assert_eq!(
        series_value(&body, "domesday_sensor_up", &["source=\"thermal\"", "sensor=\"thermal_zone0\""]),
        Some(0.0)
    );
    let down = |suffix: &str| {
        body.lines().any(|l| {
            l.starts_with("domesday_sensor_up{")
                && l.contains("source=\"hwmon\"")
                && l.contains(suffix)
                && l.ends_with(" 0")
        })
    };
    for s in ["/power1\"", "/fan1\"", "/temp1\""] {
        assert!(down(s), "{s} is not down: {body}");
    }
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
}

#[test]
fn an_hwmon_energy_counter_going_backwards_is_counted_as_a_reset() {
    let (_tmp, root) = fixture_copy("amd-epyc");
    let port = free_port();
    let _agent = start_agent(&root, port, "200ms", &[]);
    let resets = |b: &str| {
        series_value(b, "domesday_sensor_errors_total", &["source=\"hwmon\"", "reason=\"reset\""]).unwrap_or(0.0)
    };
    let energy = |b: &str| {
        series_value(b, "domesday_energy_joules_total", &["source=\"hwmon\"", "zone=\"platform_amd_energy_0/energy1\""])
    };
    let body = scrape_until(port, "the hwmon energy", |b| energy(b).is_some());
    let before = energy(&body).expect("energy");
    assert_eq!(resets(&body), 0.0);
    // The chip restarts its counter near zero: counted once as a reset, the series keeps growing.
    let file = root.join("sys/class/hwmon/hwmon2/energy1_input");
    domesday_tests::write_in_place(&file, b"1000000\n").expect("write");
    let body = scrape_until(port, "the reset", |b| resets(b) >= 1.0);
    assert!(energy(&body).is_some_and(|e| e >= before), "{body}");
    std::thread::sleep(Duration::from_millis(600));
    let body = get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT);
    assert_eq!(resets(&body), 1.0, "one reset, counted once: {body}");
    assert_eq!(series_value(&body, "domesday_sensor_errors_total", &["source=\"hwmon\"", "reason=\"rejected\""]), None);
}
