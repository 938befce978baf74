//! The shipped Grafana dashboards (`dashboards/*.json`): valid against the
//! dashboard JSON Schema of grafana-foundation-sdk (vendored in
//! `tests/schemas/`), the lint rules Grafana's dashboard-linter would apply,
//! domesday's own rules (queries filtered by the template variables, only
//! catalog metrics and recording rules, counters only through rate/increase,
//! energy to kWh, no averages of ratios), and every panel query run against a
//! real Prometheus that scrapes a real agent and collector while the agent
//! pushes and a meter is read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::catalog::{CATALOG, Component, Kind};
use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::prom::{add_inlet_sensor, query, start_prometheus};
use domesday_tests::{
    Collector, fixture_copy, free_port, get_text, host_energy_series, mock_http, post_write, start_agent_logged_with,
    workspace_root, write_in_place,
};
use serde_json::Value;

const FILES: [(&str, &str); 4] = [
    ("domesday-region.json", "domesday-region"),
    ("domesday-site.json", "domesday-site"),
    ("domesday-host.json", "domesday-host"),
    ("domesday-operations.json", "domesday-operations"),
];

fn load(name: &str) -> Value {
    let path = workspace_root().join("dashboards").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

fn exprs(p: &Value) -> Vec<(String, String)> {
    p["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (t["refId"].as_str().unwrap_or_default().to_string(), t["expr"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Recording rules of the shipped rule file: name → the labels their level keeps.
fn recording_rules() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/prometheus/domesday-rules.yml")).expect("rules");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(|r| {
            let level = r.split(':').next().unwrap_or_default();
            let labels = if level == "global" { vec![] } else { level.split('_').map(str::to_string).collect() };
            (r.to_string(), labels)
        })
        .collect()
}

/// The labels a series of `metric` carries for filtering: agent families carry
/// `site` and `host`; collector families their own; recording rules their level.
fn filter_labels(metric: &str, rules: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    if let Some(m) = CATALOG.iter().find(|m| m.name == metric) {
        return Some(match m.component {
            Component::Agent => vec!["site".into(), "host".into()],
            Component::Collector => m.labels.iter().map(|l| l.to_string()).collect(),
        });
    }
    rules.get(metric).cloned()
}

/// Metric selectors of a PromQL expression: (name, matchers text, byte offset).
fn selectors(expr: &str) -> Vec<(String, String, usize)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c == '"' {
            // Skip a string literal (label values).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let braces = if j < b.len() && b[j] == b'{' {
                let end = expr[j..].find('}').map(|e| j + e + 1).unwrap_or(b.len());
                let m = expr[j + 1..end - 1].to_string();
                i = end;
                Some(m)
            } else {
                None
            };
            if word.starts_with("domesday_") || word.contains(':') || braces.is_some() {
                out.push((word.to_string(), braces.unwrap_or_default(), start));
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn dashboards_validate_against_the_grafana_dashboard_schema() {
    let dir = workspace_root().join("tests/schemas/grafana-foundation-sdk");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.jsonschema.json")).expect("schema"))
            .expect("schema json");
    assert!(std::fs::read_to_string(dir.join("LICENSE")).expect("licence").contains("Apache License"));
    let validator = jsonschema::draft7::new(&schema).expect("a valid draft-07 schema");
    for (file, _) in FILES {
        let d = load(file);
        let errors: Vec<String> =
            validator.iter_errors(&d).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{file}:\n{}", errors.join("\n"));
        // Classic JSON, not the v2 resource model file provisioning refuses.
        for key in ["elements", "layout", "apiVersion", "spec", "kind"] {
            assert!(d.get(key).is_none(), "{file}: `{key}` is v2 resource JSON");
        }
        assert_eq!(d["schemaVersion"], 39, "{file}");
        assert!(d["panels"].as_array().is_some_and(|p| !p.is_empty()), "{file}");
    }
    // The schema rejects what it should: an unknown top-level key, a panel without a type.
    let mut bad = load(FILES[0].0);
    bad["__inputs"] = serde_json::json!([]);
    assert!(!validator.is_valid(&bad));
    let mut bad = load(FILES[0].0);
    if let Some(p) = bad["panels"][0].as_object_mut() {
        p.remove("type");
    }
    assert!(!validator.is_valid(&bad));
}

/// Grafana unit ids used here (packages/grafana-data/src/valueFormats/categories.ts), plus custom suffixes.
const UNITS: &[&str] = &[
    "watt",
    "kwatth",
    "joule",
    "celsius",
    "percentunit",
    "rotrpm",
    "none",
    "short",
    "s",
    "bytes",
    "masskg",
    "masst",
    "cps",
    "reqps",
];

#[test]
fn dashboards_follow_the_lint_rules() {
    let rules = recording_rules();
    let mut uids = BTreeSet::new();
    for (file, uid) in FILES {
        let d = load(file);
        let text = serde_json::to_string(&d).expect("json");
        assert_eq!(d["uid"], uid, "{file}");
        assert!(uids.insert(uid));
        assert!(d["tags"].as_array().is_some_and(|t| t.contains(&Value::from("domesday"))), "{file}: tag");
        for key in ["__inputs", "__requires", "__elements"] {
            assert!(d.get(key).is_none(), "{file}: `{key}` only works through the import UI");
        }
        assert!(!text.contains("DS_PROMETHEUS"), "{file}");
        // Links to the other dashboards, keeping time range and variables.
        let links = d["links"].as_array().expect("links");
        assert!(
            links.iter().any(|l| l["type"] == "dashboards"
                && l["tags"].as_array().is_some_and(|t| t.contains(&Value::from("domesday")))
                && l["includeVars"] == true
                && l["keepTime"] == true),
            "{file}: links"
        );

        // Template variables: one `datasource`, then region, site (and host) multi-value with All.
        let vars = d["templating"]["list"].as_array().expect("variables");
        let ds: Vec<_> = vars.iter().filter(|v| v["type"] == "datasource").collect();
        assert_eq!(ds.len(), 1, "{file}: exactly one data source variable");
        assert_eq!((ds[0]["name"].as_str(), ds[0]["query"].as_str()), (Some("datasource"), Some("prometheus")));
        assert_eq!(ds[0]["label"], "Data source");
        let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        let has_host = names.contains(&"host");
        for n in ["region", "site"].iter().chain(if has_host { &["host"][..] } else { &[][..] }) {
            let v = vars.iter().find(|v| v["name"] == *n).unwrap_or_else(|| panic!("{file}: variable {n}"));
            assert!(v["multi"] == true && v["includeAll"] == true && v["allValue"] == ".*", "{file}: {n}");
            assert_eq!(v["refresh"], 2, "{file}: {n} refreshes on time range change");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{file}: {n}");
        }
        // Every data source reference is the variable (the built-in annotation aside).
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
            match v {
                Value::Object(o) => {
                    for (k, x) in o {
                        if k == "datasource" && x.is_object() {
                            out.push(x);
                        }
                        refs(x, out);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&d, &mut all);
        for r in all {
            assert!(r["uid"] == "${datasource}" || r["uid"] == "-- Grafana --", "{file}: hard-coded data source {r}");
        }

        // Panels: unique ids, a grid inside 24 columns with no overlap.
        let ps = panels(&d);
        let mut ids = BTreeSet::new();
        let mut cells: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for p in &ps {
            let id = p["id"].as_i64().expect("panel id");
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            let g = &p["gridPos"];
            let (x, y, w, h) = (g["x"].as_i64(), g["y"].as_i64(), g["w"].as_i64(), g["h"].as_i64());
            let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else { panic!("{file}: panel {id} gridPos") };
            assert!(x >= 0 && w > 0 && h > 0 && x + w <= 24, "{file}: panel {id} outside the grid");
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), id) {
                        panic!("{file}: panels {other} and {id} overlap at ({cx}, {cy})");
                    }
                }
            }
        }

        for p in ps.iter().filter(|p| p["type"] != "row") {
            let title = p["title"].as_str().unwrap_or_default();
            let at = format!("{file}: panel {title:?}");
            assert!(!title.is_empty(), "{at}: title");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{at}");
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or_default();
            assert!(UNITS.contains(&unit) || unit.starts_with("suffix:"), "{at}: unit {unit:?}");
            let targets = exprs(p);
            assert!(!targets.is_empty(), "{at}: no query");
            for t in p["targets"].as_array().into_iter().flatten() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{at}");
            }
            let description = p["description"].as_str().unwrap_or_default();
            let mut named = false;
            for (refid, expr) in &targets {
                let at = format!("{at} query {refid}");
                assert!(
                    !expr.contains("avg_over_time") && !expr.contains("avg("),
                    "{at}: never average ratios: {expr}"
                );
                if expr.contains("_joules_total") && unit == "kwatth" {
                    assert!(
                        expr.contains("increase(") && expr.ends_with("/ 3.6e6"),
                        "{at}: energy in kWh from increase()"
                    );
                }
                if expr.contains("rate(") {
                    assert!(expr.contains("[$__rate_interval]"), "{at}: rate over $__rate_interval");
                }
                for (metric, matchers, offset) in selectors(expr) {
                    let labels = filter_labels(&metric, &rules)
                        .unwrap_or_else(|| panic!("{at}: {metric} is neither in the catalog nor a recording rule"));
                    named |= description.contains(&metric);
                    if labels.iter().any(|l| l == "region") {
                        assert!(
                            matchers.contains("region=~\"$region\""),
                            "{at}: {metric} not filtered by $region: {expr}"
                        );
                    }
                    if labels.iter().any(|l| l == "site") {
                        assert!(matchers.contains("site=~\"$site\""), "{at}: {metric} not filtered by $site: {expr}");
                    }
                    if has_host && labels.iter().any(|l| l == "host") {
                        assert!(matchers.contains("host=~\"$host\""), "{at}: {metric} not filtered by $host: {expr}");
                    }
                    if CATALOG.iter().any(|m| m.name == metric && m.kind == Kind::Counter) {
                        let before = expr[..offset].trim_end();
                        assert!(
                            before.ends_with("increase(") || before.ends_with("rate("),
                            "{at}: counter {metric} outside rate()/increase(): {expr}"
                        );
                    }
                }
            }
            assert!(named, "{at}: the description names none of its metrics");
        }
    }
}

/// Panels (title, refId) that may stay empty in the test below, and why. None: the
/// setup feeds every panel (a fake NVML library for the GPUs, a `[forward]` upstream,
/// a broken sensor, a refused sender, a failing meter, a retired host).
const MAY_BE_EMPTY: &[(&str, &str, &str)] = &[];

/// Compiles the fake NVML library (tests/fixtures/nvml/fake_nvml.c) into `dir`.
fn fake_nvml(dir: &Path) -> std::path::PathBuf {
    let lib = dir.join("libnvidia-ml.so.1");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(domesday_tests::fixtures_dir().join("nvml/fake_nvml.c"))
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `cc` to build the fake NVML library ({e}): install gcc"));
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    lib
}

/// Rewrites the fixture's /proc/stat every 300 ms so CPU utilisation moves (40 % busy).
fn busy_cpu(root: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let path = root.join("proc/stat");
    let text = std::fs::read_to_string(&path).expect("stat");
    std::thread::spawn(move || {
        let mut tick: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            tick += 1;
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            if let Some(first) = lines.first_mut() {
                let mut f: Vec<u64> = first.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
                if f.len() >= 4 {
                    f[0] += tick * 40;
                    f[3] += tick * 60;
                }
                *first = format!("cpu  {}", f.iter().map(u64::to_string).collect::<Vec<_>>().join(" "));
            }
            let _ = write_in_place(&path, format!("{}\n", lines.join("\n")).as_bytes());
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

const TOKEN: &str = "dashboards-site-token";
const HOUR: i64 = 3_600_000;

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    // A live Redfish PDU whose energy grows with time, and one that refuses the credentials.
    let t_start = Instant::now();
    let pdu = mock_http(move |target| {
        if target == "/forward" {
            return (204, String::new());
        }
        if target.ends_with("/RackPDUs/1/Metrics") {
            let j = 1_000_000 + t_start.elapsed().as_millis() as u64 * 5;
            return (200, format!(r#"{{"PowerWatts":{{"Reading":5000}},"EnergyJoules":{{"Reading":{j}}}}}"#));
        }
        (401, r#"{"error":{"code":"Base.1.8.InsufficientPrivilege"}}"#.to_string())
    });
    std::fs::write(d.join("t"), TOKEN).expect("token");
    std::fs::write(d.join("rouen.token"), "rouen-token").expect("token");
    std::fs::write(d.join("pw"), "secret").expect("pw");
    let port = free_port();
    let csv_meter = |id: &str, role: &str, unit: &str| {
        format!("[[sites.meters]]\nid = \"{id}\"\nrole = \"{role}\"\nkind = \"csv\"\nunit = \"{unit}\"\n")
    };
    let redfish = |id: &str, role: &str, n: u8| {
        format!(
            "[[sites.meters]]\nid = \"{id}\"\nrole = \"{role}\"\nkind = \"redfish\"\nunit = \"kWh\"\n\
             url = \"http://127.0.0.1:{pdu}/redfish/v1/PowerEquipment/RackPDUs/{n}/Metrics\"\nallow_plain_http = true\n\
             username = \"monitor\"\npassword_file = {:?}\ninterval = \"1s\"\n",
            d.join("pw").display().to_string()
        )
    };
    let cfg = d.join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\ngauges_refresh = \"1s\"\n\n\
             [forward]\nurl = \"http://127.0.0.1:{pdu}/forward\"\nspool_dir = {:?}\n\n\
             [carbon]\nsource = \"static\"\ngrid_zone = \"FR\"\nbasis = \"direct\"\nfallback_g_per_kwh = 50.0\n\n\
             [[sites]]\nid = \"caen-1\"\nname = \"Caen 1\"\nregion = \"normandie\"\ntimezone = \"Europe/Paris\"\n\
             token_file = {:?}\npue_target = 1.3\n\
             [sites.host_power_budget_watts]\n\"test-host\" = 300.0\n{}{}{}{}{}\n\
             [[sites]]\nid = \"rouen-1\"\nregion = \"normandie\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n{}",
            d.join("domesday.db").display().to_string(),
            d.join("forward-spool").display().to_string(),
            d.join("t").display().to_string(),
            csv_meter("edf", "utility_in", "kWh"),
            csv_meter("pv", "onsite_renewable_consumed", "kWh"),
            csv_meter("chaleur", "heat_reused_out", "kWh"),
            csv_meter("eau", "water_in", "m3"),
            redfish("clim", "cooling", 1),
            d.join("rouen.token").display().to_string(),
            redfish("pdu-b", "cooling", 2),
        ),
    )
    .expect("config");
    let c = Collector::spawn(d, port, &cfg);

    // Six hours of history up to the current minute: srv-a at 250 W, the utility at 350 W,
    // some PV, reused heat and water, so every indicator of the 1 h and 24 h windows stands.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|t| t.as_millis() as i64).unwrap_or(0);
    let end = now / 60_000 * 60_000;
    let h0 = end - 6 * HOUR;
    let points: Vec<(f64, i64)> = (0..=360).map(|m| (250.0 * 60.0 * m as f64, h0 + m * 60_000)).collect();
    let old: Vec<(f64, i64)> = (0..=10).map(|m| (100.0 * 60.0 * m as f64, h0 + m * 60_000)).collect();
    let body = encode(&WriteRequest {
        timeseries: vec![
            host_energy_series("caen-1", "srv-a", "psu_input", &points),
            host_energy_series("caen-1", "old", "psu_input", &old),
        ],
    });
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
    let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default();
    let mut csv = String::from("start,end,meter,value\n");
    for q in 0..24 {
        let (a, b) = (ts(h0 + q * 900_000), ts(h0 + (q + 1) * 900_000));
        csv.push_str(&format!("{a},{b},edf,0.0875\n{a},{b},pv,0.01\n{a},{b},chaleur,0.02\n{a},{b},eau,0.0002\n"));
    }
    c.upload_readings("caen-1", TOKEN, csv);
    // A sender with a wrong token: refused (unauthorized).
    assert_eq!(post_write(&c.url("/api/v1/write"), Some("wrong"), vec![0]).map(|r| r.0), Ok(401));
    let retire = domesday_tests::collector_output(
        std::process::Command::new(domesday_tests::binary("domesday-collector"))
            .args(["retire-host", "--site", "caen-1", "--host", "old", "--by", "test", "--reason", "decommissioned"])
            .arg("--config")
            .arg(&cfg),
        dir.path(),
    );
    assert!(retire.status.success(), "{}", String::from_utf8_lossy(&retire.stderr));

    // A real agent on a fixture tree with an inlet sensor and one broken sensor, pushing to the collector.
    let (_fx, root) = fixture_copy("intel-2s");
    add_inlet_sensor(&root, 24.0);
    std::fs::write(root.join("sys/devices/virtual/hwmon/hwmon9/temp2_input"), "garbage\n").expect("broken sensor");
    std::fs::write(root.join("push.token"), TOKEN).expect("push token");
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = busy_cpu(&root, stop.clone());
    let agent_port = free_port();
    let nvml = fake_nvml(d);
    let gpu_state = d.join("nvml-state");
    std::fs::write(
        &gpu_state,
        "gpu uuid=GPU-5d2b2b4e-8c3d-6f3b-1c1e-0d9f3a7b2c11 power=61330 energy=1000000 temp=34 util=87 name=NVIDIA A100-SXM4-40GB\n",
    )
    .expect("nvml state");
    let gpu_state = gpu_state.display().to_string();
    let tables = format!(
        "[push]\nurl = \"{}\"\ntoken_file = {:?}\ninterval = \"1s\"\nspool_dir = {:?}\n\n\
         [nvml]\nlibrary = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        c.url("/api/v1/write"),
        root.join("push.token").display().to_string(),
        root.join("spool").display().to_string(),
        nvml.display().to_string()
    );
    let env = [("FAKE_NVML_STATE", gpu_state.as_str())];
    let _agent = start_agent_logged_with(
        &root,
        agent_port,
        "500ms",
        &tables,
        &env,
        &root.join("agent.log"),
        &["--site", "caen-1"],
    );
    get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(20));

    // Prometheus scrapes both and evaluates the shipped rules (the recording rules the panels use).
    let (_prom, prom) = start_prometheus(
        d,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: domesday-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n\
             \x20 - job_name: domesday-collector\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            workspace_root().join("deploy/prometheus/domesday-rules.yml").display()
        ),
    );

    let mut queries: Vec<(String, String, String, String)> = Vec::new();
    for (file, _) in FILES {
        let dash = load(file);
        for p in panels(&dash).into_iter().filter(|p| p["type"] != "row") {
            for (refid, expr) in exprs(p) {
                let q = expr
                    .replace("$__rate_interval", "10s")
                    .replace("$__range", "1m")
                    .replace("$region", ".*")
                    .replace("$site", ".*")
                    .replace("$host", ".*");
                queries.push((file.into(), p["title"].as_str().unwrap_or_default().into(), refid, q));
            }
        }
    }
    // Until every query that should have data has it (counters need two scrapes in the
    // range, the site gauges a refresh after the uploads), 60 s at most.
    let deadline = Instant::now() + Duration::from_secs(60);
    let empty = loop {
        let mut empty = Vec::new();
        for (file, title, refid, q) in &queries {
            let result = query(prom, q).unwrap_or_else(|e| panic!("{file}: {title:?} {refid}: {e}"));
            let allowed = MAY_BE_EMPTY.iter().any(|(t, r, _)| t == title && r == refid);
            if result.is_empty() && !allowed {
                empty.push(format!("{file}: {title:?} {refid}: {q}"));
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break empty;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    stop.store(true, Ordering::Relaxed);
    let _ = cpu.join();
    assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
    // Values that must be right, not only present.
    let one = |q: &str| -> f64 {
        let r = query(prom, q).unwrap_or_else(|e| panic!("{e}"));
        r.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    // The utility drew 1.4 × srv-a's power; the live agent and the cooling PDU move it a little.
    let pue = one(r#"domesday_site_pue{site="caen-1", window="24h", category="3"}"#);
    assert!(pue > 1.2 && pue < 1.6, "{pue}");
    assert_eq!(one(r#"domesday_site_pue_target{site="caen-1"}"#), 1.3);
    assert_eq!(one(r#"count(domesday_host_retired == 1)"#), 1.0);
    assert_eq!(one(r#"site_host:domesday_inlet_temperature_celsius:max{host="test-host"}"#), 24.0);
    println!("{} queries in {:?}", queries.len(), started.elapsed());
}
