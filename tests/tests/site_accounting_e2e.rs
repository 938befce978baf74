//! A site's answers through the real collector: the PUE categories its
//! configuration implies are all in the indicators answer (refused, not left
//! out, when they cannot be computed), and the site energy counters of
//! `/metrics` follow every booking at once: a CSV upload of several meters and
//! roles, and the corrections and swaps another process writes to the ledger.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_tests::{Collector, binary, collector_output, free_port, get_text, series_value};

const TOKEN: &str = "site-accounting-token";
const HOUR: i64 = 3_600_000;

/// A site with a utility meter and a UPS output meter, no agent and no `it_in`
/// meter, plus a water meter (a volume: never in the energy counters).
fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    std::fs::write(dir.join("t"), TOKEN).expect("token");
    let p = dir.join("collector.toml");
    std::fs::write(
        &p,
        format!(
            r#"listen = "127.0.0.1:{port}"
db = {:?}
gauges_refresh = "1s"

[[sites]]
id = "caen-1"
timezone = "Europe/Paris"
token_file = {:?}

[[sites.meters]]
id = "tgbt"
role = "utility_in"
kind = "csv"
unit = "kWh"

[[sites.meters]]
id = "onduleur"
role = "ups_out"
kind = "csv"
unit = "kWh"

[[sites.meters]]
id = "eau"
role = "water_in"
kind = "csv"
unit = "m3"
"#,
            dir.join("domesday.db").display().to_string(),
            dir.join("t").display().to_string()
        ),
    )
    .expect("config");
    p
}

fn ts(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn metrics(c: &Collector) -> String {
    get_text(&c.url("/metrics"), Duration::from_secs(10))
}

fn energy_counter(exposition: &str, role: &str) -> Option<f64> {
    let role = format!("role=\"{role}\"");
    series_value(exposition, "domesday_site_energy_joules_total", &["site=\"caen-1\"", &role])
}

fn cli(cfg: &std::path::Path, args: &[&str]) {
    let out = collector_output(
        Command::new(binary("domesday-collector")).args(args).arg("--config").arg(cfg),
        cfg.parent().expect("the config's directory"),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}: {text}");
}

/// `correct` the `tgbt` meter of `caen-1` over `[from, to)` by `value` kWh, by `ops`.
fn correct_tgbt(cfg: &std::path::Path, from: &str, to: &str, value: &str, reason: &str) {
    cli(
        cfg,
        &[
            "correct", "--site", "caen-1", "--meter", "tgbt", "--from", from, "--to", to, "--value", value, "--by",
            "ops", "--reason", reason,
        ],
    );
}

/// Polls `/metrics` until `ok` holds for the role's counter (within 15 s); returns the last value.
fn wait_counter(c: &Collector, role: &str, ok: impl Fn(Option<f64>) -> bool) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = energy_counter(&metrics(c), role);
        if ok(v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts a collector and uploads one CSV: two energy meters of two roles and a water meter,
/// over the hour that ends 5 minutes before the current minute. Returns the hour's end.
fn start_and_upload(dir: &std::path::Path) -> (Collector, std::path::PathBuf, i64) {
    let port = free_port();
    let cfg = config(dir, port);
    let c = Collector::spawn(dir, port, &cfg);
    let end = now_ms() / 60_000 * 60_000 - 5 * 60_000;
    let start = end - HOUR;
    let body = format!(
        "start,end,meter,value\n{s},{e},tgbt,150\n{s},{e},onduleur,100\n{s},{e},eau,2\n",
        s = ts(start),
        e = ts(end)
    );
    c.upload_readings("caen-1", TOKEN, body);
    (c, cfg, end)
}

#[test]
fn every_implied_or_asked_category_is_answered_refused_when_not_metered() {
    let dir = tempfile::tempdir().expect("tmp");
    let (c, _, end) = start_and_upload(dir.path());
    let client = reqwest::blocking::Client::new();
    // The indicators: category 1 computed; category 3 (the agents' it_in, which this site
    // lacks) is implied by every site and refused, never left out, for each per-category indicator.
    let get = |q: &str| -> (u16, String) {
        let r = client.get(c.url(&format!("/api/v1/sites/caen-1/indicators?{q}"))).send().expect("get");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let (code, text) = get(&format!("from={}&to={}&step=1h", ts(end - HOUR), ts(end)));
    assert_eq!(code, 200, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).expect("json");
    let list = r["periods"][0]["indicators"].as_array().cloned().unwrap_or_default();
    let of = |name: &str, cat: u64| -> Vec<&serde_json::Value> {
        list.iter().filter(|i| i["name"] == name && i["category"] == cat && i["hall"].is_null()).collect()
    };
    let pue1 = of("pue", 1);
    assert_eq!(pue1.len(), 1, "{r}");
    assert!(pue1[0]["value"].as_f64().is_some_and(|v| (v - 1.5).abs() < 1e-9), "{}", pue1[0]);
    for name in ["pue", "dcie", "ere", "wue"] {
        let refused = of(name, 3);
        assert!(!refused.is_empty(), "{name} category 3 left out: {r}");
        for i in refused {
            assert!(i["value"].is_null(), "{i}");
            assert_eq!(i["error"], "missing_it_energy_for_category", "{i}");
        }
    }
    // Category 2 is not implied (no pdu_out meter) unless asked for; asked, it is refused.
    assert!(of("pue", 2).is_empty(), "{r}");
    let (code, text) = get(&format!("from={}&to={}&step=1h&category=2", ts(end - HOUR), ts(end)));
    assert_eq!(code, 200, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).expect("json");
    let asked = r["periods"][0]["indicators"].as_array().cloned().unwrap_or_default();
    let pue: Vec<_> = asked.iter().filter(|i| i["name"] == "pue").collect();
    assert_eq!(pue.len(), 1, "{r}");
    assert_eq!(
        (pue[0]["category"].as_u64(), pue[0]["error"].as_str()),
        (Some(2), Some("missing_it_energy_for_category"))
    );
    let (code, text) = get(&format!("from={}&to={}&step=1h&category=4", ts(end - HOUR), ts(end)));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("category \"4\""), "{text}");

    // The window gauges: category 1 exported; the refused category 3 has no sample.
    let deadline = Instant::now() + Duration::from_secs(15);
    let m = loop {
        let m = metrics(&c);
        if series_value(&m, "domesday_site_pue", &["category=\"1\"", "window=\"24h\""]).is_some()
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(series_value(&m, "domesday_site_pue", &["category=\"1\"", "window=\"24h\""]).is_some(), "{m}");
    assert!(!m.lines().any(|l| l.starts_with("domesday_site_pue{") && l.contains("category=\"3\"")), "{m}");
}

#[test]
fn site_energy_counters_follow_every_booking() {
    let dir = tempfile::tempdir().expect("tmp");
    let (c, cfg, end) = start_and_upload(dir.path());
    let start = end - HOUR;
    let client = reqwest::blocking::Client::new();
    // Right after the answer, each role's counter holds what was booked for it.
    let m = metrics(&c);
    assert_eq!(energy_counter(&m, "utility_in"), Some(150.0 * 3.6e6), "{m}");
    assert_eq!(energy_counter(&m, "ups_out"), Some(100.0 * 3.6e6), "{m}");
    assert_eq!(energy_counter(&m, "water_in"), None, "a volume is not energy: {m}");

    // Another process writes the ledger while serve runs: a correction (+10 kWh) and a meter
    // swap reach the counters without a restart.
    let (from, to) = (ts(start), ts(start + 10 * 60_000));
    correct_tgbt(&cfg, &from, &to, "10", "missed reading");
    let v = wait_counter(&c, "utility_in", |v| v == Some(160.0 * 3.6e6));
    assert_eq!(v, Some(160.0 * 3.6e6));
    // Register readings of the UPS meter around a swap: 5 kWh up to the final reading, none from the new meter's initial one.
    let reg = format!("timestamp,meter,value\n{},onduleur,1000\n", ts(end - 30 * 60_000));
    let resp =
        client.post(c.url("/api/v1/sites/caen-1/meter-readings")).bearer_auth(TOKEN).body(reg).send().expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    cli(
        &cfg,
        &[
            "swap-meter",
            "--site",
            "caen-1",
            "--meter",
            "onduleur",
            "--at",
            &ts(end - 20 * 60_000),
            "--final",
            "1005",
            "--initial",
            "3",
            "--by",
            "ops",
            "--reason",
            "ups meter replaced",
        ],
    );
    let v = wait_counter(&c, "ups_out", |v| v == Some(105.0 * 3.6e6));
    assert_eq!(v, Some(105.0 * 3.6e6));
    // A correction that lowers the total: the counter never goes down (Prometheus counters are monotonic).
    correct_tgbt(&cfg, &from, &to, "-4", "double count");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(energy_counter(&metrics(&c), "utility_in"), Some(160.0 * 3.6e6));
}
