//! The real `domesday-collector` exports the numbers alert rules compare with:
//! the site's PUE target, per-host power budgets from the config, and hosts
//! retired with `retire-host` while `serve` runs (recorded with who and why,
//! energy kept, shown by the hosts API).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::{
    Collector, binary, collector_output, free_port, get_text, host_energy_series, post_write, series_value,
};

const TOKEN: &str = "caen-secret-token";

fn config(dir: &Path, port: u16) -> std::path::PathBuf {
    std::fs::write(dir.join("t"), TOKEN).expect("token");
    let p = dir.join("collector.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\ngauges_refresh = \"1s\"\n\n[[sites]]\nid = \"caen-1\"\n\
             timezone = \"Europe/Paris\"\ntoken_file = {:?}\npue_target = 1.35\nexpected_hosts = [\"srv-1\", \"old\", \"spare\"]\n\
             [sites.host_power_budget_watts]\n\"srv-1\" = 450.0\nold = 300\n",
            dir.join("domesday.db").display().to_string(),
            dir.join("t").display().to_string()
        ),
    )
    .expect("config");
    p
}

fn cli(cfg: &Path, args: &[&str]) -> (bool, String) {
    let out = collector_output(
        Command::new(binary("domesday-collector")).args(args).arg("--config").arg(cfg),
        cfg.parent().expect("the config's directory"),
    );
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn retire(cfg: &Path, host: &str, by: &str, reason: &str) -> (bool, String) {
    cli(cfg, &["retire-host", "--site", "caen-1", "--host", host, "--by", by, "--reason", reason])
}

/// Polls `/metrics` until `f` holds (the site gauges refresh every second).
fn metrics_until(c: &Collector, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = get_text(&c.url("/metrics"), Duration::from_secs(5));
        if f(&m) || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn targets_budgets_and_retired_hosts_are_exported_and_retirement_keeps_the_energy() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let cfg = config(dir.path(), port);
    let c = Collector::spawn(dir.path(), port, &cfg);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let t0 = now.div_euclid(60_000) * 60_000 - 1_800_000;
    let points =
        |base: f64| -> Vec<(f64, i64)> { (0..10).map(|i| (base + i as f64 * 6_000.0, t0 + i * 60_000)).collect() };
    let body = encode(&WriteRequest {
        timeseries: vec![
            host_energy_series("caen-1", "srv-1", "psu_input", &points(1_000.0)),
            host_energy_series("caen-1", "old", "psu_input", &points(5_000.0)),
        ],
    });
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
    let energy = |host: &str| -> String {
        let body = get_text(
            &c.url(&format!("/api/v1/energy?site=caen-1&host={host}&from={t0}&to={}", t0 + 900_000)),
            Duration::from_secs(5),
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("energy json");
        v["energy_microjoules"].as_str().unwrap_or_default().to_string()
    };
    let before = energy("old");
    assert_eq!(before, "54000000000");

    let m = metrics_until(&c, |m| m.contains("domesday_site_pue_target"));
    assert_eq!(series_value(&m, "domesday_site_pue_target", &["site=\"caen-1\""]), Some(1.35), "{m}");
    assert_eq!(
        series_value(&m, "domesday_host_power_budget_watts", &["site=\"caen-1\"", "host=\"srv-1\""]),
        Some(450.0)
    );
    assert_eq!(series_value(&m, "domesday_host_power_budget_watts", &["host=\"old\""]), Some(300.0));
    assert!(!m.contains("domesday_host_retired{"), "nothing retired yet: {m}");

    // Refusals name the fix and record nothing.
    let (ok, out) = retire(&cfg, "typo", "alice", "decommissioned");
    assert!(!ok && out.contains("expected_hosts") && out.contains("\"typo\""), "{out}");
    let (ok, out) = retire(&cfg, "old", "alice", "");
    assert!(!ok && out.contains("--reason"), "{out}");
    let (ok, out) = cli(&cfg, &["retire-host", "--site", "nowhere", "--host", "old", "--by", "a", "--reason", "gone"]);
    assert!(!ok && out.contains("nowhere"), "{out}");

    // While serve runs.
    let (ok, out) = retire(&cfg, "old", "alice", "decommissioned, rack B2 emptied");
    assert!(ok && out.contains("retired"), "{out}");
    let (ok, out) = retire(&cfg, "old", "bob", "again");
    assert!(ok && out.contains("already retired by alice"), "{out}");
    // Expected but never reported: may be retired too.
    let (ok, out) = retire(&cfg, "spare", "alice", "never installed");
    assert!(ok, "{out}");

    // Both retirements: a refresh of the gauges may fall between the two commands.
    let m = metrics_until(&c, |m| series_value(m, "domesday_host_retired", &["host=\"spare\""]).is_some());
    assert_eq!(series_value(&m, "domesday_host_retired", &["site=\"caen-1\"", "host=\"old\""]), Some(1.0), "{m}");
    assert_eq!(series_value(&m, "domesday_host_retired", &["host=\"spare\""]), Some(1.0), "{m}");
    assert_eq!(series_value(&m, "domesday_host_retired", &["host=\"srv-1\""]), None);
    // The collector's last-seen stays (rules exclude retired hosts, the series itself is fact).
    assert!(series_value(&m, "domesday_host_last_seen_timestamp_seconds", &["host=\"old\""]).is_some());

    let hosts: serde_json::Value =
        serde_json::from_str(&get_text(&c.url("/api/v1/sites/caen-1/hosts"), Duration::from_secs(5))).expect("json");
    let row = |h: &str| hosts["hosts"].as_array().and_then(|a| a.iter().find(|r| r["host"] == h).cloned());
    let old = row("old").expect("old row");
    assert_eq!(old["status"], "retired", "{hosts}");
    assert_eq!(old["retired"]["by"], "alice");
    assert_eq!(old["retired"]["reason"], "decommissioned, rack B2 emptied");
    assert!(old["retired"]["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{old}");
    assert_eq!(row("spare").expect("spare")["status"], "retired");
    assert_eq!(row("srv-1").expect("srv-1")["retired"], serde_json::Value::Null);
    // srv-1's last sample is 20 minutes old: silent, and missing; retired hosts are not missing.
    assert_eq!(hosts["missing"], serde_json::json!(["srv-1"]), "{hosts}");
    assert_eq!(energy("old"), before);

    // The retirement survives a restart.
    let mut c = c;
    c.proc.terminate(Duration::from_secs(10));
    let c = Collector::spawn(dir.path(), port, &cfg);
    let m = metrics_until(&c, |m| m.contains("domesday_host_retired{"));
    assert_eq!(series_value(&m, "domesday_host_retired", &["host=\"old\""]), Some(1.0), "{m}");
}
