//! The real `domesday-agent` with a fake `ipmitool` (tests/fixtures/bmc/ipmitool)
//! on the intel-2s fixture, whose PSUs give a `psu_input` host power: the BMC's
//! DCMI reading wins over it (`bmc_dcmi`), a deactivated reading is no reading
//! (never 0 W), a hung ipmitool is killed with its children on timeout while
//! `/metrics` keeps answering, and every host counter stays monotonic across
//! the method switches. `probe` says why IPMI is off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use domesday_tests::{
    binary, fixture_copy, fixtures_dir, free_port, get_text, probe_command, probe_output, promtool_check_metrics,
    series_value, start_agent_logged_with, write_agent_config,
};

const WAIT: Duration = Duration::from_secs(25);

fn fake_ipmitool() -> PathBuf {
    fixtures_dir().join("bmc/ipmitool")
}

fn ipmi_table(interval: &str, timeout: &str) -> String {
    format!(
        "[ipmi]\ncommand = {:?}\nargs = [\"-I\", \"open\"]\ninterval = {interval:?}\ntimeout = {timeout:?}\n",
        fake_ipmitool().display().to_string()
    )
}

struct Bmc {
    mode_file: PathBuf,
    pids: PathBuf,
}

impl Bmc {
    fn new(dir: &Path, mode: &str) -> Bmc {
        let b = Bmc { mode_file: dir.join("ipmi-mode"), pids: dir.join("ipmi-pids") };
        b.set(mode);
        b
    }

    fn set(&self, mode: &str) {
        std::fs::write(&self.mode_file, format!("{mode}\n")).expect("mode");
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("FAKE_IPMITOOL_MODE_FILE", self.mode_file.display().to_string()),
            ("FAKE_IPMITOOL_PIDS", self.pids.display().to_string()),
        ]
    }
}

/// Scrapes until `pred` holds (bounded); every scrape must answer fast.
fn scrape_until(port: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + WAIT;
    loop {
        let t = Instant::now();
        let body = get_text(&url, WAIT);
        assert!(t.elapsed() < Duration::from_secs(2), "a scrape took {:?}", t.elapsed());
        if pred(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last body:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn host_power(body: &str, method: &str) -> Option<f64> {
    series_value(body, "domesday_host_power_watts", &[&format!("method=\"{method}\"")])
}

fn dcmi_power(body: &str) -> Option<f64> {
    series_value(body, "domesday_power_watts", &["source=\"ipmi\"", "zone=\"dcmi\"", "domain=\"platform\""])
}

fn dcmi_up(body: &str) -> Option<f64> {
    series_value(body, "domesday_sensor_up", &["source=\"ipmi\"", "sensor=\"dcmi\""])
}

fn ipmi_errors(body: &str, reason: &str) -> f64 {
    series_value(body, "domesday_sensor_errors_total", &["source=\"ipmi\"", &format!("reason=\"{reason}\"")])
        .unwrap_or(0.0)
}

/// Every host energy counter seen so far; asserts none went down.
fn check_monotonic(seen: &mut BTreeMap<String, f64>, body: &str) {
    for l in body.lines().filter(|l| l.starts_with("domesday_host_energy_joules_total{")) {
        let (series, v) = l.rsplit_once(' ').expect("sample line");
        let v: f64 = v.parse().expect("value");
        let prev = seen.insert(series.to_string(), v).unwrap_or(0.0);
        assert!(v >= prev, "{series} went from {prev} to {v}");
    }
}

#[test]
fn bmc_dcmi_wins_over_psu_input_and_a_deactivated_or_hung_bmc_falls_back() {
    let (tmp, root) = fixture_copy("intel-2s");
    let bmc = Bmc::new(tmp.path(), "deactivated");
    let port = free_port();
    let env = bmc.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = tmp.path().join("agent.log");
    let _agent = start_agent_logged_with(&root, port, "200ms", &ipmi_table("1s", "1s"), &env, &log, &[]);
    let mut seen = BTreeMap::new();

    // Deactivated: no reading, not 0 W; the PSUs carry the host.
    let body = scrape_until(port, "the deactivated DCMI reading", |b| dcmi_up(b) == Some(0.0));
    assert!(ipmi_errors(&body, "missing") >= 1.0, "{body}");
    assert_eq!(dcmi_power(&body), None, "a deactivated reading must not be exported as a value");
    assert!(host_power(&body, "psu_input").is_some() && host_power(&body, "bmc_dcmi").is_none(), "{body}");
    check_monotonic(&mut seen, &body);

    // Activated (Dell iDRAC layout): bmc_dcmi wins over psu_input, measured.
    bmc.set("dell-idrac");
    let body = scrape_until(port, "bmc_dcmi", |b| host_power(b, "bmc_dcmi").is_some());
    assert_eq!(
        series_value(&body, "domesday_host_power_watts", &["method=\"bmc_dcmi\"", "quality=\"measured\""]),
        Some(344.0)
    );
    assert_eq!(host_power(&body, "psu_input"), None, "one method at a time");
    assert_eq!(dcmi_power(&body), Some(344.0));
    assert_eq!(dcmi_up(&body), Some(1.0));
    assert_eq!(
        series_value(
            &body,
            "domesday_temperature_celsius",
            &["source=\"ipmi\"", "sensor=\"Inlet Temp\"", "location=\"inlet\""]
        ),
        Some(23.0)
    );
    assert_eq!(
        series_value(
            &body,
            "domesday_temperature_celsius",
            &["source=\"ipmi\"", "sensor=\"Exhaust Temp\"", "location=\"exhaust\""]
        ),
        Some(31.0)
    );
    assert_eq!(
        series_value(&body, "domesday_power_watts", &["source=\"ipmi\"", "zone=\"Pwr Consumption\""]),
        Some(168.0)
    );
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
    check_monotonic(&mut seen, &body);
    // 344 W integrated on the agent's clock: the counter grows by about 344 J/s.
    let e0 = series_value(&body, "domesday_host_energy_joules_total", &["method=\"bmc_dcmi\""]).expect("bmc energy");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let body = scrape_until(port, "more bmc energy", |b| host_power(b, "bmc_dcmi").is_some());
    let e1 = series_value(&body, "domesday_host_energy_joules_total", &["method=\"bmc_dcmi\""]).expect("bmc energy");
    let expect = 344.0 * t0.elapsed().as_secs_f64();
    assert!((e1 - e0 - expect).abs() < 344.0 * 0.8, "booked {} J, expected about {expect} J", e1 - e0);
    check_monotonic(&mut seen, &body);

    // Hung: the poll is killed on timeout with its children, /metrics never waits,
    // and once the last reading is 3 intervals old the PSUs take over again.
    bmc.set("hang");
    let body = scrape_until(port, "the IPMI timeout", |b| ipmi_errors(b, "timeout") >= 1.0);
    check_monotonic(&mut seen, &body);
    let body = scrape_until(port, "the fallback to psu_input", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_dcmi"), None);
    check_monotonic(&mut seen, &body);
    let took = series_value(&body, "domesday_sample_duration_seconds", &[]).expect("duration");
    assert!(took < 0.5, "tick took {took} s while the BMC hung");
    let pids = std::fs::read_to_string(&bmc.pids).expect("the hang mode ran");
    std::thread::sleep(Duration::from_millis(300));
    for pid in pids.lines().take(1) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "the hung ipmitool's child {pid} survived: {stat}");
    }

    // Back to life: bmc_dcmi again, counters still monotonic.
    bmc.set("dell-idrac");
    let body = scrape_until(port, "bmc_dcmi again", |b| host_power(b, "bmc_dcmi") == Some(344.0));
    check_monotonic(&mut seen, &body);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("killed with its process group"), "{log}");
}

fn ipmi_temp(body: &str, sensor: &str) -> Option<f64> {
    series_value(body, "domesday_temperature_celsius", &["source=\"ipmi\"", &format!("sensor=\"{sensor}\",")])
}

/// The `location` label of an IPMI temperature series.
fn ipmi_location(body: &str, sensor: &str) -> Option<String> {
    let needle = format!("sensor=\"{sensor}\",");
    let line = body.lines().find(|l| {
        l.starts_with("domesday_temperature_celsius{") && l.contains("source=\"ipmi\"") && l.contains(&needle)
    })?;
    let rest = line.split("location=\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

fn fan(body: &str, source: &str, sensor: &str) -> Option<f64> {
    series_value(
        body,
        "domesday_fan_speed_rpm",
        &[&format!("source=\"{source}\""), "chip=\"bmc\"", &format!("sensor=\"{sensor}\"")],
    )
}

fn up(body: &str, source: &str, sensor: &str) -> Option<f64> {
    series_value(body, "domesday_sensor_up", &[&format!("source=\"{source}\""), &format!("sensor=\"{sensor}\"")])
}

#[test]
fn ipmi_fans_locations_by_entity_one_inlet_and_impossible_readings() {
    let (tmp, root) = fixture_copy("intel-2s");
    let bmc = Bmc::new(tmp.path(), "thermals");
    let port = free_port();
    let env = bmc.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = tmp.path().join("agent.log");
    let _agent = start_agent_logged_with(&root, port, "200ms", &ipmi_table("1s", "1s"), &env, &log, &[]);

    let body = scrape_until(port, "the BMC fans", |b| fan(b, "ipmi", "FAN1").is_some());
    // Fans in RPM, with their sensor status; a stopped fan reads 0 and is exported.
    assert_eq!(fan(&body, "ipmi", "FAN1"), Some(8400.0));
    assert_eq!(fan(&body, "ipmi", "FAN2"), Some(0.0), "a stopped fan is a reading");
    assert_eq!((up(&body, "ipmi", "FAN1"), up(&body, "ipmi", "FAN2")), (Some(1.0), Some(1.0)));
    // A fan in percent is a duty cycle, not a speed: not a fan series, not a sensor read.
    assert_eq!(fan(&body, "ipmi", "FAN5"), None);
    assert_eq!(up(&body, "ipmi", "FAN5"), None);
    assert!(!body.contains("sensor=\"FAN3\""), "no reading, no unit: not listed: {body}");
    // Located by entity first: one inlet (the air inlet entity, lowest instance).
    let inlets: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("domesday_temperature_celsius{") && l.contains("location=\"inlet\""))
        .collect();
    assert_eq!(inlets.len(), 1, "exactly one inlet: {inlets:?}");
    assert_eq!(ipmi_location(&body, "Ambient Temp").as_deref(), Some("inlet"), "entity 55 (0x37) air inlet");
    assert_eq!(ipmi_temp(&body, "Ambient Temp"), Some(24.0));
    assert_eq!(ipmi_location(&body, "Front Panel Temp").as_deref(), Some("ambient"), "a second air inlet");
    assert_eq!(ipmi_location(&body, "Exhaust Temp").as_deref(), Some("exhaust"), "named exhaust on the air entity");
    assert_eq!(ipmi_location(&body, "Proc Temp").as_deref(), Some("cpu"), "entity 65 (0x41) processor");
    assert_eq!(ipmi_location(&body, "Board Temp 2").as_deref(), Some("memory"), "entity 32 (0x20) memory device");
    assert_eq!(ipmi_location(&body, "PSU1 Temp").as_deref(), Some("psu"), "entity 10 (0x0A) power supply");
    assert_eq!(ipmi_location(&body, "System Temp").as_deref(), Some("other"), "system board: by name");
    // Impossible readings are no readings: no sample, the sensor down, counted.
    assert_eq!(ipmi_temp(&body, "GPU Temp"), None, "-128 °C is not a temperature");
    assert_eq!(fan(&body, "ipmi", "FAN4"), None, "250,000 RPM is beyond any fan");
    assert_eq!(series_value(&body, "domesday_power_watts", &["source=\"ipmi\"", "zone=\"CPU Power\""]), None);
    for s in ["GPU Temp", "FAN4", "CPU Power"] {
        assert_eq!(up(&body, "ipmi", s), Some(0.0), "{s}");
    }
    assert!(ipmi_errors(&body, "implausible") >= 3.0, "{body}");
    assert_eq!(
        series_value(&body, "domesday_power_watts", &["source=\"ipmi\"", "zone=\"Pwr Consumption\""]),
        Some(96.0)
    );
    assert_eq!(host_power(&body, "bmc_dcmi"), Some(96.0));
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));

    // A DCMI reading of 3.4 MW: not a reading, not the host's power; the PSUs carry it.
    bmc.set("implausible");
    let body = scrape_until(port, "the refused DCMI reading", |b| dcmi_up(b) == Some(0.0));
    assert_eq!(dcmi_power(&body), None);
    let body = scrape_until(port, "psu_input", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_dcmi"), None, "{body}");
    // The listing is still read.
    assert_eq!(fan(&body, "ipmi", "FAN1"), Some(8400.0));

    // probe shows the refused readings with the reason and what it means.
    bmc.set("thermals");
    let config = write_agent_config(&root, &ipmi_table("1s", "1s"));
    let text = probe_output(probe_command(&root, &config).envs(bmc.env()));
    let row =
        text.lines().find(|l| l.starts_with("ipmi ") && l.contains("GPU Temp")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("implausible") && row.contains("physically impossible"), "{row}");
    let row = text.lines().find(|l| l.starts_with("ipmi ") && l.contains("FAN1")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("rpm") && row.contains("8400"), "{row}");
}

#[test]
fn ipmi_error_reasons_say_what_happened() {
    let (tmp, root) = fixture_copy("intel-2s");
    let bmc = Bmc::new(tmp.path(), "garbage");
    let port = free_port();
    let env = bmc.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = tmp.path().join("agent.log");
    let _agent = start_agent_logged_with(&root, port, "200ms", &ipmi_table("1s", "1s"), &env, &log, &[]);
    // Output that is not what the command prints: parse. The command failing:
    // what its message says (no access: permission; no device: missing;
    // anything else on the way to the BMC: io).
    for (mode, reason) in
        [("garbage", "parse"), ("permission", "permission"), ("failing", "io"), ("nodevice", "missing")]
    {
        bmc.set(mode);
        let body = scrape_until(port, reason, |b| ipmi_errors(b, reason) >= 1.0 && dcmi_up(b) == Some(0.0));
        assert_eq!(dcmi_power(&body), None, "{mode}");
        // Back to a working BMC, so the next failure does not wait out the backoff.
        bmc.set("dell-idrac");
        scrape_until(port, "a working BMC", |b| dcmi_up(b) == Some(1.0));
    }
    let body = get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT);
    for r in ["parse", "permission", "io", "missing"] {
        assert!(ipmi_errors(&body, r) >= 1.0, "{r}: {body}");
    }
    assert_eq!(ipmi_errors(&body, "implausible"), 0.0);

    // DCMI reads but the sensor listing fails: counted once per poll with what
    // happened (never silently empty), while DCMI stays up.
    for (mode, reason) in [("sdrdenied", "permission"), ("sdrgarbage", "parse")] {
        let before = ipmi_errors(&get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT), reason);
        bmc.set(mode);
        let body = scrape_until(port, mode, |b| ipmi_errors(b, reason) > before);
        assert_eq!(dcmi_up(&body), Some(1.0), "{mode}");
        assert_eq!(ipmi_temp(&body, "Inlet Temp"), None, "{mode}: no listing, no temperatures");
        std::thread::sleep(Duration::from_millis(1500));
        let body = get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT);
        let n = ipmi_errors(&body, reason) - before;
        assert!((1.0..=3.0).contains(&n), "{mode}: once per 1 s poll, not per 200 ms tick: {n}");
    }
}

#[test]
fn probe_says_why_ipmi_is_off() {
    let (tmp, root) = fixture_copy("intel-2s");
    let bmc = Bmc::new(tmp.path(), "nodevice");
    let config = write_agent_config(&root, &ipmi_table("1s", "1s"));
    let run = |config: &Path| probe_output(probe_command(&root, config).envs(bmc.env()));
    let text = run(&config);
    let row = text.lines().find(|l| l.starts_with("ipmi ") && l.contains("dcmi")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("/dev/ipmi0 missing") && row.contains("modprobe ipmi_devintf"), "{row}");
    assert!(row.contains("lanplus"), "{row}");
    // Without an [ipmi] table the source is off, and probe says so.
    let config = write_agent_config(&root, "");
    let text = run(&config);
    assert!(text.lines().any(|l| l.starts_with("ipmi ") && l.contains("no [ipmi] table")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("redfish ") && l.contains("no [redfish] table")), "{text}");
    // nvml = "auto": a row whether or not this host has the NVIDIA driver (nvml_e2e checks the reason).
    assert!(text.lines().any(|l| l.starts_with("nvml ")), "{text}");
    // A working BMC: the DCMI reading and the host method.
    bmc.set("hpe-ilo");
    let config = write_agent_config(&root, &ipmi_table("1s", "1s"));
    let text = run(&config);
    assert!(text.contains("host power: 212.0 W by method bmc_dcmi (measured)"), "{text}");
    // `once` waits for the BMC's first poll too.
    let out = domesday_tests::agent_output(
        Command::new(binary("domesday-agent"))
            .args(["once", "--interval", "100ms", "--host", "p", "--config"])
            .arg(&config)
            .arg("--sysfs-root")
            .arg(root.join("sys"))
            .arg("--procfs-root")
            .arg(root.join("proc"))
            .envs(bmc.env()),
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert_eq!(host_power(&body, "bmc_dcmi"), Some(212.0), "{body}");
    // The FreeIPMI backend (ipmi-dcmi --get-system-power-statistics).
    bmc.set("freeipmi");
    let config = write_agent_config(&root, &format!("{}backend = \"freeipmi\"\n", ipmi_table("1s", "1s")));
    let text = run(&config);
    assert!(text.contains("host power: 164.0 W by method bmc_dcmi (measured)"), "{text}");
}

const PASSWORD: &str = "s3cret-pw";
/// base64("monitor:s3cret-pw")
const BASIC: &str = "Basic bW9uaXRvcjpzM2NyZXQtcHc=";

/// The mock BMC's Redfish sessions.
#[derive(Debug, Default)]
struct Sessions {
    /// Live token → session id.
    live: BTreeMap<String, u32>,
    created: u32,
    deleted: u32,
    /// Logins refused (bad credentials).
    refused: u32,
    next: u32,
}

const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

/// A Redfish BMC on loopback serving the legacy mockup; `mode` switches it
/// between `legacy`, `auth` (401 for everything), `slow` (answers after 3 s)
/// and `malformed` (not JSON). Every GET's credentials are kept
/// (`Authorization`, or `token <X-Auth-Token>`).
fn mock_bmc(
    mode: std::sync::Arc<std::sync::Mutex<String>>,
    auths: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> u16 {
    mock_bmc_sessions(mode, auths, Default::default())
}

/// [`mock_bmc`] with its session service (DSP0266 §13.3): a login with the
/// right credentials creates a session (`X-Auth-Token`, `Location`), a DELETE
/// of its `Location` ends it; clearing `sessions.live` expires every token.
/// Mode `session` accepts only a live token (no Basic).
fn mock_bmc_sessions(
    mode: std::sync::Arc<std::sync::Mutex<String>>,
    auths: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    sessions: std::sync::Arc<std::sync::Mutex<Sessions>>,
) -> u16 {
    let fixture = |f: &str| std::fs::read_to_string(fixtures_dir().join("bmc/redfish").join(f)).expect("fixture");
    let (chassis, power, thermal) = (fixture("chassis.json"), fixture("power.json"), fixture("thermal.json"));
    let answer = |status: u16, body: &str| domesday_tests::MockResponse { status, headers: vec![], body: body.into() };
    domesday_tests::mock_http_full(move |r| {
        let mode = mode.lock().map(|m| m.clone()).unwrap_or_default();
        let auth = r.header("authorization").unwrap_or_default().to_string();
        let token = r.header("x-auth-token").map(str::to_string);
        let Ok(mut ss) = sessions.lock() else { return answer(500, "{}") };
        if mode == "auth" {
            return answer(401, r#"{"error":{"code":"Base.1.8.NoValidSession"}}"#);
        }
        if r.method == "POST" && r.target == SESSIONS {
            let creds: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            if creds["UserName"] != "monitor" || creds["Password"] != PASSWORD {
                ss.refused += 1;
                return answer(401, r#"{"error":{"code":"Base.1.8.InsufficientPrivilege"}}"#);
            }
            ss.next += 1;
            ss.created += 1;
            let id = ss.next;
            let tok = format!("tok{id}-{SESSION_SECRET}");
            ss.live.insert(tok.clone(), id);
            let location = format!("{SESSIONS}/{id}");
            return domesday_tests::MockResponse {
                status: 201,
                headers: vec![("X-Auth-Token".into(), tok), ("Location".into(), location.clone())],
                body: format!(r#"{{"@odata.id":"{location}","Id":"{id}","UserName":"monitor"}}"#),
            };
        }
        let session = token.as_ref().and_then(|t| ss.live.get(t).copied());
        if r.method == "DELETE" {
            return match session {
                Some(id) if r.target == format!("{SESSIONS}/{id}") => {
                    ss.live.retain(|_, v| *v != id);
                    ss.deleted += 1;
                    answer(200, "{}")
                }
                _ => answer(401, "{}"),
            };
        }
        drop(ss);
        if let Ok(mut a) = auths.lock() {
            a.push(token.as_ref().map(|t| format!("token {t}")).unwrap_or_else(|| auth.clone()));
        }
        let basic_ok = mode != "session" && auth == BASIC;
        if session.is_none() && !basic_ok {
            return answer(401, r#"{"error":{"code":"Base.1.8.NoValidSession"}}"#);
        }
        if mode == "slow" {
            std::thread::sleep(Duration::from_secs(3));
        }
        if mode == "malformed" {
            return answer(200, "{\"PowerControl\": [ {\"PowerConsumedWatts\": 3");
        }
        match r.target.as_str() {
            "/redfish/v1/Chassis" => answer(200, &chassis),
            "/redfish/v1/Chassis/1U/Power" => answer(200, &power),
            "/redfish/v1/Chassis/1U/Thermal" => answer(200, &thermal),
            _ => answer(404, "{}"),
        }
    })
}

/// A marker in the mock's session tokens, to look for in the agent's log.
const SESSION_SECRET: &str = "f00dsecrettoken";

fn redfish_errors(body: &str, reason: &str) -> f64 {
    series_value(body, "domesday_sensor_errors_total", &["source=\"redfish\"", &format!("reason=\"{reason}\"")])
        .unwrap_or(0.0)
}

#[test]
fn redfish_legacy_power_wins_over_psu_input_and_auth_slow_malformed_are_counted() {
    use std::sync::{Arc, Mutex};
    let (tmp, root) = fixture_copy("intel-2s");
    let mode = Arc::new(Mutex::new("legacy".to_string()));
    let auths = Arc::new(Mutex::new(Vec::new()));
    let bmc_port = mock_bmc(mode.clone(), auths.clone());
    let pw = tmp.path().join("bmc.password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).expect("password");
    let table = format!(
        "[redfish]\nurl = \"http://127.0.0.1:{bmc_port}\"\nallow_plain_http = true\nusername = \"monitor\"\n\
         password_file = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\nauth = \"basic\"\n",
        pw.display().to_string()
    );
    let port = free_port();
    let log = tmp.path().join("agent.log");
    let _agent = start_agent_logged_with(&root, port, "200ms", &table, &[("DOMESDAY_LOG", "trace")], &log, &[]);
    let mut seen = BTreeMap::new();

    let body = scrape_until(port, "bmc_redfish", |b| host_power(b, "bmc_redfish").is_some());
    assert_eq!(
        series_value(&body, "domesday_host_power_watts", &["method=\"bmc_redfish\"", "quality=\"measured\""]),
        Some(344.0)
    );
    assert_eq!(host_power(&body, "psu_input"), None);
    assert_eq!(
        series_value(&body, "domesday_power_watts", &["source=\"redfish\"", "zone=\"1U\"", "domain=\"platform\""]),
        Some(344.0)
    );
    assert_eq!(
        series_value(
            &body,
            "domesday_temperature_celsius",
            &["source=\"redfish\"", "sensor=\"Chassis Intake Temp\"", "location=\"inlet\""]
        ),
        Some(25.0)
    );
    assert!(!body.contains("sensor=\"CPU2 Temp\",label"), "a disabled sensor has no value: {body}");
    // Legacy Thermal.Fans in RPM: chip "bmc", the chassis in the sensor; 0 RPM is a stopped fan.
    assert_eq!(fan(&body, "redfish", "1U/BaseBoard System Fan"), Some(2100.0), "{body}");
    assert_eq!(fan(&body, "redfish", "1U/Fan 2"), Some(0.0));
    assert_eq!(up(&body, "redfish", "1U/Fan 2"), Some(1.0));
    // Percent is not RPM: neither a fan series nor a sensor.
    assert_eq!((fan(&body, "redfish", "1U/Fan 3"), up(&body, "redfish", "1U/Fan 3")), (None, None));
    // Absent, disabled, 655,350 RPM: no value, the sensor down.
    for f in ["1U/Fan 4", "1U/Fan 5", "1U/Fan 6"] {
        assert_eq!((fan(&body, "redfish", f), up(&body, "redfish", f)), (None, Some(0.0)), "{f}");
    }
    assert!(redfish_errors(&body, "implausible") >= 1.0, "{body}");
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
    check_monotonic(&mut seen, &body);
    assert!(auths.lock().map(|a| a.iter().all(|h| h == BASIC)).unwrap_or(false), "Basic auth on every request");

    for (m, reason) in [("auth", "permission"), ("slow", "timeout"), ("malformed", "parse")] {
        if let Ok(mut g) = mode.lock() {
            *g = m.to_string();
        }
        let body = scrape_until(port, reason, |b| redfish_errors(b, reason) >= 1.0);
        check_monotonic(&mut seen, &body);
        let took = series_value(&body, "domesday_sample_duration_seconds", &[]).expect("duration");
        assert!(took < 0.5, "tick took {took} s with a {m} BMC");
    }
    // Stale readings are not used: psu_input carries the host again.
    let body = scrape_until(port, "the fallback", |b| host_power(b, "psu_input").is_some());
    check_monotonic(&mut seen, &body);
    if let Ok(mut g) = mode.lock() {
        *g = "legacy".to_string();
    }
    let body = scrape_until(port, "bmc_redfish again", |b| host_power(b, "bmc_redfish") == Some(344.0));
    check_monotonic(&mut seen, &body);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("401"), "the auth failure is logged: {log}");
    assert!(!log.contains(PASSWORD) && !log.contains("bW9uaXRvcjpzM2NyZXQtcHc"), "the password leaked into the log");
}

/// `sensor_up` of the Redfish power reading (`chassis/power` before any reading).
fn redfish_up(body: &str, chassis: &str) -> Option<f64> {
    series_value(body, "domesday_sensor_up", &["source=\"redfish\"", &format!("sensor=\"{chassis}/power\"")])
}

fn redfish_session_agent(
    tmp: &Path,
    root: &Path,
    bmc_port: u16,
    password: &str,
) -> (domesday_tests::Agent, u16, PathBuf) {
    let pw = tmp.join("bmc.password");
    std::fs::write(&pw, format!("{password}\n")).expect("password");
    // No `auth` key: sessions are the default.
    let table = format!(
        "[redfish]\nurl = \"http://127.0.0.1:{bmc_port}\"\nallow_plain_http = true\nusername = \"monitor\"\n\
         password_file = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        pw.display().to_string()
    );
    let port = free_port();
    let log = tmp.join("agent.log");
    let agent = start_agent_logged_with(root, port, "200ms", &table, &[("DOMESDAY_LOG", "trace")], &log, &[]);
    (agent, port, log)
}

#[test]
fn redfish_session_logs_in_once_again_on_expiry_without_a_gap_and_logs_out_at_shutdown() {
    use std::sync::{Arc, Mutex};
    let (tmp, root) = fixture_copy("intel-2s");
    let mode = Arc::new(Mutex::new("session".to_string()));
    let auths = Arc::new(Mutex::new(Vec::new()));
    let sessions = Arc::new(Mutex::new(Sessions::default()));
    let bmc_port = mock_bmc_sessions(mode, auths.clone(), sessions.clone());
    let (mut agent, port, log) = redfish_session_agent(tmp.path(), &root, bmc_port, PASSWORD);
    let created = || sessions.lock().map(|s| s.created).unwrap_or(0);
    let mut seen = BTreeMap::new();

    let body = scrape_until(port, "bmc_redfish over a session", |b| host_power(b, "bmc_redfish") == Some(344.0));
    check_monotonic(&mut seen, &body);
    assert_eq!(created(), 1, "one session for every request");
    let gets = auths.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        !gets.is_empty() && gets.iter().all(|a| a.starts_with("token tok1-")),
        "every request carries the session's X-Auth-Token, never Basic: {gets:?}"
    );

    // The BMC expires the session: one new login, and the readings go on.
    if let Ok(mut s) = sessions.lock() {
        s.live.clear();
    }
    let deadline = Instant::now() + WAIT;
    while created() < 2 {
        let body = get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT);
        assert!(host_power(&body, "bmc_redfish").is_some(), "no gap at the re-login:\n{body}");
        assert!(Instant::now() < deadline, "no new login after the session expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A few more polls (1 s apart) on the new session: no other login, no failure.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let body = get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT);
        assert!(host_power(&body, "bmc_redfish").is_some(), "no gap after the re-login:\n{body}");
        assert_eq!(redfish_up(&body, "1U"), Some(1.0), "{body}");
        assert_eq!(redfish_errors(&body, "permission"), 0.0, "{body}");
        assert_eq!(redfish_errors(&body, "gap"), 0.0, "{body}");
        check_monotonic(&mut seen, &body);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(created(), 2, "exactly one re-login");
    let gets = auths.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(gets.last().is_some_and(|a| a.starts_with("token tok2-")), "{gets:?}");

    // SIGTERM: the agent deletes its session before it exits.
    let status = agent.terminate(Duration::from_secs(15)).expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let s = sessions.lock().map(|s| (s.deleted, s.live.len())).unwrap_or_default();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        s,
        (1, 0),
        "the live session was deleted at shutdown: {}",
        log.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
    assert!(log.contains("Redfish session deleted"), "{log}");
    assert!(!log.contains(SESSION_SECRET), "a session token leaked into the log");
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
}

#[test]
fn redfish_session_with_bad_credentials_is_a_permission_failure_and_psu_input_carries_the_host() {
    use std::sync::{Arc, Mutex};
    let (tmp, root) = fixture_copy("intel-2s");
    let sessions = Arc::new(Mutex::new(Sessions::default()));
    let bmc_port =
        mock_bmc_sessions(Arc::new(Mutex::new("session".into())), Arc::new(Mutex::new(Vec::new())), sessions.clone());
    let wrong = "not-the-pw-9f3b";
    let (_agent, port, log) = redfish_session_agent(tmp.path(), &root, bmc_port, wrong);
    let body = scrape_until(port, "the refused login", |b| redfish_errors(b, "permission") >= 1.0);
    assert_eq!(redfish_up(&body, "chassis"), Some(0.0), "{body}");
    let body = scrape_until(port, "psu_input", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), None);
    std::thread::sleep(Duration::from_secs(3));
    let s = sessions.lock().map(|s| (s.created, s.refused)).unwrap_or_default();
    assert_eq!(s.0, 0);
    // Failures back off (2, 4, 8 intervals): a handful of logins, not one per tick.
    assert!((1..=4).contains(&s.1), "{} logins refused", s.1);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("session login") && log.contains("401"), "the refusal is logged: {log}");
    assert!(!log.contains(wrong), "the password leaked into the log");
}

/// A Redfish BMC of the newer model (`EnvironmentMetrics`, `Sensors`; no
/// `Power`/`Thermal`), whose first chassis is a backplane contained by the
/// node. `mode`: `new`, `reset` (the BMC's energy counter restarted low),
/// `envnopower` (no `PowerWatts`; the chassis links a legacy `Power`),
/// `nosensors` (no `Sensors`: `ThermalSubsystem/ThermalMetrics` summary),
/// `counting` (the energy counter grows 1000 J per poll while the power reads
/// 412 W) or `shared` (the node's chassis lists four computer systems). Its
/// `PowerSubsystem` has two PSUs (Bay1 205.5 W, Bay2 198 W input) in every
/// mode; the `psu*` modes take `PowerWatts` and the energy out of
/// `EnvironmentMetrics`, so the PSUs' sum is the chassis power and the energy
/// comes from the `Sensors` member `TotalEnergy` (1000 J more at each GET):
/// `psu`, `psu-reset` (that counter restarted low), `psu-absent` (Bay2 is an
/// empty bay), `psu-missing` (Bay2 enabled, its input reading null) and
/// `psu-garbage` (Bay2 answers text, not JSON). Its
/// `ThermalSubsystem` lists four fans (5200 RPM, percent only, an empty bay,
/// 0 RPM). Broken answers: `implausible` (`PowerWatts` of 5 GW, the ambient
/// sensor at −300 °C), `garbage` (the node's chassis answers HTML), `shape`
/// (it answers a JSON array), `gzip` (`EnvironmentMetrics` declares a gzip
/// body that is not).
fn mock_bmc_new(mode: std::sync::Arc<std::sync::Mutex<String>>) -> u16 {
    let counted = std::sync::atomic::AtomicU64::new(0);
    let sensor_reads = std::sync::atomic::AtomicU64::new(0);
    let fixture = |f: &str| std::fs::read_to_string(fixtures_dir().join("bmc/redfish").join(f)).expect("fixture");
    let docs: BTreeMap<&'static str, String> = [
        ("/redfish/v1/Chassis", "new-chassis.json"),
        ("/redfish/v1/Chassis/Backplane", "new-backplane.json"),
        ("/redfish/v1/Chassis/Node1", "new-node1.json"),
        ("/redfish/v1/Chassis/Node1/EnvironmentMetrics", "new-envmetrics.json"),
        ("/redfish/v1/Chassis/Node1/Sensors", "new-sensors.json"),
        ("/redfish/v1/Chassis/Node1/Sensors/AmbientTemp", "new-sensor-ambient.json"),
        ("/redfish/v1/Chassis/Node1/Sensors/ExhaustTemp", "new-sensor-exhaust.json"),
        ("/redfish/v1/Chassis/Node1/Sensors/TotalPower", "new-sensor-power.json"),
        ("/redfish/v1/Chassis/Node1/Power", "power.json"),
        ("/redfish/v1/Chassis/Node1/Sensors/TotalEnergy", "new-sensor-energy.json"),
        ("/redfish/v1/Chassis/Node1/Sensors/PS1Energy", "new-sensor-psu-energy.json"),
        ("/redfish/v1/Chassis/Node1/PowerSubsystem", "new-powersubsystem.json"),
        ("/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies", "new-psus.json"),
        ("/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay1", "new-psu1.json"),
        ("/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay2", "new-psu2.json"),
        ("/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay1/Metrics", "new-psu1-metrics.json"),
        ("/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay2/Metrics", "new-psu2-metrics.json"),
        ("/redfish/v1/Chassis/Node1/ThermalSubsystem", "new-thermalsubsystem.json"),
        ("/redfish/v1/Chassis/Node1/ThermalSubsystem/Fans", "new-fans.json"),
        ("/redfish/v1/Chassis/Node1/ThermalSubsystem/Fans/Bay1", "new-fan1.json"),
        ("/redfish/v1/Chassis/Node1/ThermalSubsystem/Fans/Bay2", "new-fan2.json"),
        ("/redfish/v1/Chassis/Node1/ThermalSubsystem/Fans/Bay3", "new-fan3.json"),
        ("/redfish/v1/Chassis/Node1/ThermalSubsystem/Fans/Bay4", "new-fan4.json"),
    ]
    .into_iter()
    .map(|(k, f)| (k, fixture(f)))
    .collect();
    let answer = move |target: &str, mode: &str| -> (u16, String) {
        if mode == "nosensors" {
            match target {
                t if t.starts_with("/redfish/v1/Chassis/Node1/Sensors") => return (404, "{}".into()),
                "/redfish/v1/Chassis/Node1/ThermalSubsystem" => {
                    return (
                        200,
                        r#"{"ThermalMetrics":{"@odata.id":"/redfish/v1/Chassis/Node1/ThermalSubsystem/ThermalMetrics"}}"#.into(),
                    );
                }
                "/redfish/v1/Chassis/Node1/ThermalSubsystem/ThermalMetrics" => {
                    return (
                        200,
                        r#"{"TemperatureSummaryCelsius":{"Intake":{"Reading":19.5},"Exhaust":{"Reading":30.5}}}"#
                            .into(),
                    );
                }
                _ => {}
            }
        }
        let Some(doc) = docs.get(target) else { return (404, "{}".into()) };
        let psu_mode = mode.starts_with("psu");
        let doc = match (mode, target) {
            (_, "/redfish/v1/Chassis/Node1/EnvironmentMetrics") if psu_mode => {
                r##"{"@odata.type":"#EnvironmentMetrics.v1_3_0.EnvironmentMetrics","TemperatureCelsius":{"Reading":22.5}}"##
                    .into()
            }
            (_, "/redfish/v1/Chassis/Node1/Sensors/TotalEnergy") => {
                let n = sensor_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let base = if mode == "psu-reset" { 500 } else { 3_700_000 };
                doc.replace("3700000", &(base + 1000 * n).to_string())
            }
            ("psu-absent", "/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay2") => {
                r##"{"@odata.type":"#PowerSupply.v1_5_0.PowerSupply","Id":"Bay2","Name":"Power Supply Bay 2",
                    "Status":{"State":"Absent"}}"##
                    .into()
            }
            ("psu-missing", "/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay2/Metrics") => {
                doc.replace(r#""Reading":198.0"#, r#""Reading":null"#)
            }
            ("reset", "/redfish/v1/Chassis/Node1/EnvironmentMetrics") => doc.replace("3600000", "1000"),
            ("counting", "/redfish/v1/Chassis/Node1/EnvironmentMetrics") => {
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                doc.replace("3600000", &(3_600_000 + 1000 * (n + 1)).to_string())
            }
            ("envnopower", "/redfish/v1/Chassis/Node1/EnvironmentMetrics") => r#"{"TemperatureCelsius":{"Reading":22.5}}"#.into(),
            ("envnopower", "/redfish/v1/Chassis/Node1") => {
                doc.replace(r#""PowerState":"On","#, r#""PowerState":"On","Power":{"@odata.id":"/redfish/v1/Chassis/Node1/Power"},"#)
            }
            ("shared", "/redfish/v1/Chassis/Node1") => doc.replace(
                r#""ComputerSystems":[{"@odata.id":"/redfish/v1/Systems/Node1"}]"#,
                r#""ComputerSystems":[{"@odata.id":"/redfish/v1/Systems/Node1"},{"@odata.id":"/redfish/v1/Systems/Node2"},
                   {"@odata.id":"/redfish/v1/Systems/Node3"},{"@odata.id":"/redfish/v1/Systems/Node4"}]"#,
            ),
            ("implausible", "/redfish/v1/Chassis/Node1/EnvironmentMetrics") => {
                doc.replace(r#""Reading":412.0"#, r#""Reading":5.0e9"#)
            }
            ("implausible", "/redfish/v1/Chassis/Node1/Sensors/AmbientTemp") => {
                doc.replace(r#""Reading":22.5"#, r#""Reading":-300.0"#)
            }
            ("garbage", "/redfish/v1/Chassis/Node1") => "<html><body>502 Bad Gateway</body></html>".into(),
            ("psu-garbage", "/redfish/v1/Chassis/Node1/PowerSubsystem/PowerSupplies/Bay2") => "Service Unavailable".into(),
            ("shape", "/redfish/v1/Chassis/Node1") => "[1, 2, 3]".into(),
            _ => doc.clone(),
        };
        (200, doc)
    };
    domesday_tests::mock_http_full(move |r| {
        let mode = mode.lock().map(|m| m.clone()).unwrap_or_default();
        let (status, body) = answer(&r.target, &mode);
        let headers = if mode == "gzip" && r.target == "/redfish/v1/Chassis/Node1/EnvironmentMetrics" {
            vec![("Content-Encoding".to_string(), "gzip".to_string())]
        } else {
            Vec::new()
        };
        domesday_tests::MockResponse { status, headers, body }
    })
}

/// An agent on the intel-2s fixture ticking every 200 ms, reading the
/// newer-model mock BMC ([`mock_bmc_new`]) every second; `set` switches its mode.
struct NewModelAgent {
    _tmp: tempfile::TempDir,
    mode: std::sync::Arc<std::sync::Mutex<String>>,
    port: u16,
    log: PathBuf,
    _agent: domesday_tests::Agent,
}

impl NewModelAgent {
    fn start() -> Self {
        let (tmp, root) = fixture_copy("intel-2s");
        let mode = std::sync::Arc::new(std::sync::Mutex::new("new".to_string()));
        let bmc_port = mock_bmc_new(mode.clone());
        let table = format!(
            "[redfish]\nurl = \"http://127.0.0.1:{bmc_port}\"\nallow_plain_http = true\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        );
        let port = free_port();
        let log = tmp.path().join("agent.log");
        let agent = start_agent_logged_with(&root, port, "200ms", &table, &[], &log, &[]);
        NewModelAgent { _tmp: tmp, mode, port, log, _agent: agent }
    }

    fn set(&self, mode: &str) {
        if let Ok(mut g) = self.mode.lock() {
            *g = mode.to_string();
        }
    }
}

#[test]
fn redfish_newer_model_environment_metrics_sensors_and_a_shared_chassis() {
    let bmc = NewModelAgent::start();
    let (port, log) = (bmc.port, bmc.log.clone());
    let mut seen = BTreeMap::new();
    let bmc_energy =
        |b: &str| series_value(b, "domesday_energy_joules_total", &["source=\"redfish\"", "zone=\"Node1\""]);

    // The backplane (contained by Node1) is skipped; EnvironmentMetrics gives the power.
    let body = scrape_until(port, "bmc_redfish", |b| host_power(b, "bmc_redfish").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), Some(412.0));
    assert_eq!(host_power(&body, "psu_input"), None);
    assert_eq!(
        series_value(&body, "domesday_power_watts", &["source=\"redfish\"", "zone=\"Node1\"", "domain=\"platform\""]),
        Some(412.0)
    );
    assert_eq!(bmc_energy(&body), Some(3_600_000.0), "the BMC's energy counter");
    let temp = |b: &str, location: &str| {
        series_value(
            b,
            "domesday_temperature_celsius",
            &["source=\"redfish\"", "chip=\"Node1\"", &format!("location=\"{location}\"")],
        )
    };
    assert_eq!(temp(&body, "inlet"), Some(22.5), "{body}");
    assert_eq!(temp(&body, "exhaust"), Some(34.0), "{body}");
    assert!(!body.contains("sensor=\"Total Power\",label"), "a power sensor is no temperature");
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
    check_monotonic(&mut seen, &body);

    // The BMC reset its counter: ours keeps growing.
    bmc.set("reset");
    let body = scrape_until(port, "the reset counter", |b| bmc_energy(b).is_some_and(|e| e > 3_600_000.0));
    assert_eq!(bmc_energy(&body), Some(3_601_000.0));
    // The host counter saw the reset too: counted as a reset (not a refused
    // value), never negative.
    let body = scrape_until(port, "the reset counted", |b| redfish_errors(b, "reset") >= 1.0);
    assert_eq!(redfish_errors(&body, "rejected"), 0.0, "a counter reset is not a rejection: {body}");
    check_monotonic(&mut seen, &body);

    // EnvironmentMetrics without PowerWatts: the chassis' legacy Power (one PowerControl member).
    bmc.set("envnopower");
    let body = scrape_until(port, "the legacy Power", |b| host_power(b, "bmc_redfish") == Some(344.0));
    check_monotonic(&mut seen, &body);

    // No Sensors: the ThermalMetrics summary gives the intake and exhaust temperatures.
    bmc.set("nosensors");
    let body = scrape_until(port, "the ThermalMetrics summary", |b| temp(b, "inlet") == Some(19.5));
    assert_eq!(temp(&body, "exhaust"), Some(30.5), "{body}");
    check_monotonic(&mut seen, &body);

    // The BMC's energy counter carries the host energy (1000 J per poll), not
    // the integral of its 412 W readings.
    bmc.set("counting");
    let host_energy = |b: &str| {
        series_value(b, "domesday_host_energy_joules_total", &["method=\"bmc_redfish\""]).expect("bmc_redfish energy")
    };
    let body = scrape_until(port, "the counter's first increment", |b| bmc_energy(b).is_some_and(|e| e > 3_601_000.0));
    let e0 = host_energy(&body);
    let body = scrape_until(port, "a counted increment", |b| host_energy(b) > e0);
    let e1 = host_energy(&body);
    let body = scrape_until(port, "two more increments", |b| host_energy(b) >= e1 + 2000.0);
    let e2 = host_energy(&body);
    // Whole 1000 J steps, up to the f64 rounding of the exported totals (412 W integrated would leave fractions).
    let steps = (e2 - e1) / 1000.0;
    assert!((steps - steps.round()).abs() < 1e-9, "whole counter increments, not 412 W integrated: {e1} → {e2}");
    check_monotonic(&mut seen, &body);

    // A chassis shared by four nodes: rejected, never the host's power.
    let rejected = redfish_errors(&body, "rejected");
    bmc.set("shared");
    scrape_until(port, "the shared chassis", |b| redfish_errors(b, "rejected") > rejected);
    let body = scrape_until(port, "psu_input", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), None, "{body}");
    let n0 = redfish_errors(&body, "rejected");
    std::thread::sleep(Duration::from_secs(2));
    let body = scrape_until(port, "psu_input", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), None, "{body}");
    let n = redfish_errors(&body, "rejected") - n0;
    assert!((1.0..=4.0).contains(&n), "rejected once per poll (1 s), not per tick (200 ms): {n} in 2 s");
    check_monotonic(&mut seen, &body);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("covers several nodes"), "{log}");
}

#[test]
fn redfish_power_subsystem_psus_are_never_added_to_power_watts_and_carry_the_host_without_it() {
    let bmc = NewModelAgent::start();
    let port = bmc.port;
    let set = |m: &str| bmc.set(m);
    let mut seen = BTreeMap::new();
    let psu = |b: &str, bay: &str| {
        series_value(
            b,
            "domesday_power_watts",
            &["source=\"redfish\"", &format!("zone=\"Node1/{bay}\""), "domain=\"psu_input\""],
        )
    };
    let psu_up = |b: &str, bay: &str| {
        series_value(b, "domesday_sensor_up", &["source=\"redfish\"", &format!("sensor=\"Node1/{bay}/input\"")])
    };
    let chassis_power = |b: &str| {
        series_value(b, "domesday_power_watts", &["source=\"redfish\"", "zone=\"Node1\"", "domain=\"platform\""])
    };
    let bmc_energy =
        |b: &str| series_value(b, "domesday_energy_joules_total", &["source=\"redfish\"", "zone=\"Node1\""]);
    let host_energy = |b: &str| {
        series_value(b, "domesday_host_energy_joules_total", &["method=\"bmc_redfish\""]).expect("bmc_redfish energy")
    };

    // EnvironmentMetrics has PowerWatts: it is the host's power; the PSUs are
    // exported on their own and never added to it (412 W, not 815.5 W).
    let body = scrape_until(port, "the PSUs", |b| psu(b, "Bay2").is_some() && host_power(b, "bmc_redfish").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), Some(412.0), "{body}");
    assert_eq!(chassis_power(&body), Some(412.0));
    assert_eq!(psu(&body, "Bay1"), Some(205.5), "InputPowerWatts, not OutputPowerWatts");
    assert_eq!(psu(&body, "Bay2"), Some(198.0));
    assert_eq!((psu_up(&body, "Bay1"), psu_up(&body, "Bay2")), (Some(1.0), Some(1.0)));
    assert_eq!(bmc_energy(&body), Some(3_600_000.0), "EnvironmentMetrics' EnergyJoules first, not the sensor's");
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
    check_monotonic(&mut seen, &body);

    // No PowerWatts and no energy in EnvironmentMetrics: the enabled PSUs' input
    // sum is the chassis power, the TotalEnergy sensor its energy counter (not
    // the PSU's own PS1Energy, 4211.5 kWh).
    set("psu");
    let body = scrape_until(port, "the PSU sum", |b| host_power(b, "bmc_redfish") == Some(403.5));
    assert_eq!(chassis_power(&body), Some(403.5));
    assert_eq!(host_power(&body, "psu_input"), None);
    check_monotonic(&mut seen, &body);
    // The sensor's counter takes over from EnvironmentMetrics' at its own value
    // (a new baseline: 3.6 MJ, never a jump of 100 kJ) and counts 1000 J per poll.
    let body = scrape_until(port, "the sensor's increments", |b| bmc_energy(b).is_some_and(|e| e >= 3_602_000.0));
    let e = bmc_energy(&body).expect("energy");
    assert!(e < 3_650_000.0, "the switch of counters was differenced: {e}");
    let e0 = host_energy(&body);
    let body = scrape_until(port, "a counted increment", |b| host_energy(b) > e0);
    let e1 = host_energy(&body);
    let body = scrape_until(port, "two more increments", |b| host_energy(b) >= e1 + 2000.0);
    let steps = (host_energy(&body) - e1) / 1000.0;
    assert!((steps - steps.round()).abs() < 1e-6, "the sensor's whole increments, not 403.5 W integrated: {steps}");
    check_monotonic(&mut seen, &body);

    // The BMC reset that sensor: the exported counter keeps growing, the reset is counted.
    let resets = redfish_errors(&body, "reset");
    let before = bmc_energy(&body).expect("energy");
    set("psu-reset");
    let body = scrape_until(port, "the sensor's reset", |b| redfish_errors(b, "reset") > resets);
    assert_eq!(redfish_errors(&body, "rejected"), 0.0, "a counter reset is not a rejection: {body}");
    assert!(bmc_energy(&body).is_some_and(|e| e > before), "{body}");
    check_monotonic(&mut seen, &body);

    // An empty bay is skipped (and down): the sum is the other PSU's input.
    set("psu-absent");
    let body = scrape_until(port, "one PSU", |b| host_power(b, "bmc_redfish") == Some(205.5));
    assert_eq!(psu(&body, "Bay2"), None);
    assert_eq!(psu_up(&body, "Bay2"), Some(0.0));
    check_monotonic(&mut seen, &body);

    // An enabled PSU without a reading refuses the sum (it would under-report):
    // no bmc_redfish, the PSUs of the hwmon fixture carry the host.
    set("psu-missing");
    let body = scrape_until(port, "the refused sum", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), None, "{body}");
    assert_eq!(chassis_power(&body), None, "a partial sum is no reading");
    assert_eq!(redfish_up(&body, "Node1"), Some(0.0));
    assert_eq!(psu(&body, "Bay1"), Some(205.5));
    assert_eq!((psu(&body, "Bay2"), psu_up(&body, "Bay2")), (None, Some(0.0)));
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
    check_monotonic(&mut seen, &body);

    // A PSU that answers garbage is a parse failure, not an empty bay: its state
    // is unknown, so the sum is refused (never the other PSU alone).
    set("new");
    scrape_until(port, "bmc_redfish again", |b| host_power(b, "bmc_redfish") == Some(412.0));
    let parse = redfish_errors(&get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT), "parse");
    set("psu-garbage");
    let body = scrape_until(port, "the garbage PSU", |b| redfish_errors(b, "parse") > parse);
    assert_eq!(psu_up(&body, "Bay2"), Some(0.0));
    let body = scrape_until(port, "psu_input", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), None, "not 205.5 W: {body}");
    assert_eq!(chassis_power(&body), None);
    check_monotonic(&mut seen, &body);
}

#[test]
fn redfish_thermal_subsystem_fans_impossible_readings_and_parse_errors() {
    let bmc = NewModelAgent::start();
    let port = bmc.port;
    let chassis_power = |b: &str| {
        series_value(b, "domesday_power_watts", &["source=\"redfish\"", "zone=\"Node1\"", "domain=\"platform\""])
    };
    let inlet = |b: &str| {
        series_value(b, "domesday_temperature_celsius", &["source=\"redfish\"", "chip=\"Node1\"", "location=\"inlet\""])
    };

    // ThermalSubsystem/Fans: each Fan's SpeedPercent.SpeedRPM.
    let body = scrape_until(port, "the fans", |b| fan(b, "redfish", "Node1/Fan Bay 1").is_some());
    assert_eq!(fan(&body, "redfish", "Node1/Fan Bay 1"), Some(5200.0));
    assert_eq!(fan(&body, "redfish", "Node1/Fan Bay 4"), Some(0.0), "a stopped fan is a reading");
    assert_eq!(up(&body, "redfish", "Node1/Fan Bay 4"), Some(1.0));
    assert_eq!((fan(&body, "redfish", "Node1/Fan Bay 2"), up(&body, "redfish", "Node1/Fan Bay 2")), (None, None));
    assert_eq!((fan(&body, "redfish", "Node1/Fan Bay 3"), up(&body, "redfish", "Node1/Fan Bay 3")), (None, Some(0.0)));
    assert_eq!(inlet(&body), Some(22.5));
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));

    // 5 GW at the chassis and −300 °C at the intake parse but are impossible:
    // no sample, the sensors down, counted; the hwmon PSUs carry the host.
    bmc.set("implausible");
    let body = scrape_until(port, "the refused readings", |b| redfish_up(b, "Node1") == Some(0.0));
    assert_eq!(chassis_power(&body), None);
    assert_eq!(inlet(&body), None, "{body}");
    assert_eq!(up(&body, "redfish", "Node1/Ambient Temperature"), Some(0.0));
    assert!(redfish_errors(&body, "implausible") >= 2.0, "{body}");
    let body = scrape_until(port, "psu_input", |b| host_power(b, "psu_input").is_some());
    assert_eq!(host_power(&body, "bmc_redfish"), None);
    assert_eq!(redfish_errors(&body, "parse"), 0.0);

    // Answers that arrive but are not what Redfish says: parse, never io.
    for mode in ["garbage", "shape", "gzip"] {
        let before = redfish_errors(&get_text(&format!("http://127.0.0.1:{port}/metrics"), WAIT), "parse");
        bmc.set(mode);
        let body = scrape_until(port, mode, |b| redfish_errors(b, "parse") > before);
        assert_eq!(redfish_errors(&body, "io"), 0.0, "{mode}: {body}");
        bmc.set("new");
        scrape_until(port, "a working BMC", |b| chassis_power(b) == Some(412.0));
    }
}

#[test]
fn an_unreachable_redfish_bmc_is_an_io_failure() {
    let (tmp, root) = fixture_copy("intel-2s");
    // A port nothing listens on: the connection is refused.
    let bmc_port = free_port();
    let table = format!(
        "[redfish]\nurl = \"http://127.0.0.1:{bmc_port}\"\nallow_plain_http = true\ninterval = \"1s\"\ntimeout = \"1s\"\n"
    );
    let port = free_port();
    let log = tmp.path().join("agent.log");
    let _agent = start_agent_logged_with(&root, port, "200ms", &table, &[], &log, &[]);
    let body = scrape_until(port, "io", |b| redfish_errors(b, "io") >= 1.0);
    assert_eq!(redfish_errors(&body, "parse"), 0.0);
    assert!(host_power(&body, "psu_input").is_some(), "{body}");
}

#[test]
fn several_redfish_targets_are_read_and_the_first_is_the_host_power() {
    use std::sync::{Arc, Mutex};
    let (tmp, root) = fixture_copy("intel-2s");
    let legacy = mock_bmc(Arc::new(Mutex::new("legacy".to_string())), Arc::new(Mutex::new(Vec::new())));
    let new = mock_bmc_new(Arc::new(Mutex::new("new".to_string())));
    let pw = tmp.path().join("bmc.password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).expect("password");
    let table = format!(
        "[[redfish]]\nurl = \"http://127.0.0.1:{new}\"\nallow_plain_http = true\ninterval = \"1s\"\ntimeout = \"1s\"\n\
         [[redfish]]\nurl = \"http://127.0.0.1:{legacy}\"\nallow_plain_http = true\nusername = \"monitor\"\n\
         password_file = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        pw.display().to_string()
    );
    let port = free_port();
    let log = tmp.path().join("agent.log");
    let _agent = start_agent_logged_with(&root, port, "200ms", &table, &[], &log, &[]);
    let zone =
        |b: &str, z: String| series_value(b, "domesday_power_watts", &["source=\"redfish\"", &format!("zone=\"{z}\"")]);
    let body = scrape_until(port, "both BMCs", |b| {
        zone(b, format!("127.0.0.1:{new}/Node1")).is_some() && zone(b, format!("127.0.0.1:{legacy}/1U")).is_some()
    });
    assert_eq!(zone(&body, format!("127.0.0.1:{new}/Node1")), Some(412.0));
    assert_eq!(zone(&body, format!("127.0.0.1:{legacy}/1U")), Some(344.0));
    assert_eq!(host_power(&body, "bmc_redfish"), Some(412.0), "the first listed BMC is the host's power");
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
}

#[test]
fn nvidia_gpus_through_nvidia_smi_are_gpu_power_not_host_power() {
    let (tmp, root) = fixture_copy("intel-2s");
    let table = format!(
        "[nvml]\nenabled = true\ncommand = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        fixtures_dir().join("nvml/nvidia-smi").display().to_string()
    );
    let port = free_port();
    let log = tmp.path().join("agent.log");
    let _agent = start_agent_logged_with(&root, port, "200ms", &table, &[], &log, &[]);
    let gpu0 =
        |b: &str| series_value(b, "domesday_power_watts", &["source=\"nvml\"", "zone=\"gpu0\"", "domain=\"gpu\""]);
    let body = scrape_until(port, "GPU power", |b| gpu0(b).is_some());
    assert_eq!(gpu0(&body), Some(61.33));
    // [N/A] power is no reading: down, never 0 W.
    assert!(!body.contains("zone=\"gpu1\""), "{body}");
    assert_eq!(series_value(&body, "domesday_sensor_up", &["source=\"nvml\"", "sensor=\"gpu1/power\""]), Some(0.0));
    assert_eq!(
        series_value(&body, "domesday_temperature_celsius", &["source=\"nvml\"", "chip=\"gpu1\"", "location=\"gpu\""]),
        Some(29.0)
    );
    // GPUs are inside the host: they never become the host power method.
    assert!(host_power(&body, "psu_input").is_some(), "{body}");
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
}

#[test]
fn nvidia_smi_impossible_and_garbage_values_are_refused_with_their_reason() {
    let (tmp, root) = fixture_copy("intel-2s");
    let csv = tmp.path().join("gpus.csv");
    // 4.3 MW (an all-ones register), 300 °C, a negative power, a value that is no number.
    std::fs::write(
        &csv,
        "0, GPU-0, NVIDIA H100 80GB HBM3, 4294967.29, 41\n\
         1, GPU-1, NVIDIA H100 80GB HBM3, 310.50, 300\n\
         2, GPU-2, NVIDIA H100 80GB HBM3, -12.00, 38\n\
         3, GPU-3, NVIDIA H100 80GB HBM3, 0x1f, 39\n",
    )
    .expect("csv");
    let table = format!(
        "[nvml]\nenabled = true\ncommand = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        fixtures_dir().join("nvml/nvidia-smi").display().to_string()
    );
    let port = free_port();
    let log = tmp.path().join("agent.log");
    let csv_env = csv.display().to_string();
    let env = [("FAKE_NVIDIA_SMI_CSV", csv_env.as_str())];
    let _agent = start_agent_logged_with(&root, port, "200ms", &table, &env, &log, &[]);
    let errors = |b: &str, reason: &str| {
        series_value(b, "domesday_sensor_errors_total", &["source=\"nvml\"", &format!("reason=\"{reason}\"")])
            .unwrap_or(0.0)
    };
    let body = scrape_until(port, "the GPUs", |b| up(b, "nvml", "gpu3/power").is_some());
    let power =
        |gpu: &str| series_value(&body, "domesday_power_watts", &["source=\"nvml\"", &format!("zone=\"{gpu}\"")]);
    let temp = |gpu: &str| {
        series_value(&body, "domesday_temperature_celsius", &["source=\"nvml\"", &format!("chip=\"{gpu}\"")])
    };
    assert_eq!((power("gpu0"), temp("gpu0")), (None, Some(41.0)), "4.3 MW is no GPU's power");
    assert_eq!((power("gpu1"), temp("gpu1")), (Some(310.5), None), "300 °C is no GPU's temperature");
    assert_eq!(power("gpu2"), None, "a negative power is impossible");
    assert_eq!(power("gpu3"), None, "not a number");
    for s in ["gpu0/power", "gpu1/temp", "gpu2/power", "gpu3/power"] {
        assert_eq!(up(&body, "nvml", s), Some(0.0), "{s}");
    }
    assert!(errors(&body, "implausible") >= 3.0, "{body}");
    assert!(errors(&body, "parse") >= 1.0, "an answer that is not a number is garbage, not a missing reading: {body}");
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
}
