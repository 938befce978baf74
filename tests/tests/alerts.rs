//! The shipped alert rules (`deploy/prometheus/domesday-rules.yml`): promtool
//! checks and unit tests (every alert fires, stays quiet, resolves), the
//! naming and annotation conventions, thresholds as series, the runbook
//! sections, the Kubernetes `PrometheusRule` copy, and one path end to end:
//! a real agent on a fixture tree with a hot inlet, a real Prometheus
//! evaluating the rules, a real Alertmanager delivering the alert and then its
//! resolution to a webhook receiver.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domesday_tests::prom::{add_inlet_sensor, set_millidegrees, start_alertmanager, start_prometheus};
use domesday_tests::{
    MockResponse, fixture_copy, free_port, get_text, mock_http_full, promtool, start_agent, workspace_root,
};

const RUNBOOK: &str = "https://github.com/domesday-dc/domesday/blob/main/docs/alerts.md#";

fn rules_path() -> PathBuf {
    workspace_root().join("deploy/prometheus/domesday-rules.yml")
}

fn rules_text() -> String {
    std::fs::read_to_string(rules_path()).expect("rules file")
}

/// One rule of the file, read from its fixed layout (two-space YAML as written).
#[derive(Debug, Default)]
struct Rule {
    group: String,
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    keys: Vec<(String, String)>,
}

impl Rule {
    fn key(&self, k: &str) -> Option<&str> {
        self.keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && (v.starts_with('\'') && v.ends_with('\'') || v.starts_with('"') && v.ends_with('"')) {
        v[1..v.len() - 1].replace("''", "'")
    } else {
        v.to_string()
    }
}

fn parse_rules(text: &str) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut group = String::new();
    let mut in_expr = false;
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if let Some(g) = t.strip_prefix("- name: ") {
            group = g.to_string();
            continue;
        }
        if let Some(n) = t.strip_prefix("- alert: ") {
            rules.push(Rule { group: group.clone(), alert: Some(n.into()), ..Rule::default() });
            in_expr = false;
            continue;
        }
        if let Some(n) = t.strip_prefix("- record: ") {
            rules.push(Rule { group: group.clone(), record: Some(n.into()), ..Rule::default() });
            in_expr = false;
            continue;
        }
        let Some(r) = rules.last_mut() else { continue };
        if in_expr && indent > 8 {
            r.expr.push_str(t);
            r.expr.push(' ');
            continue;
        }
        in_expr = false;
        if let Some((k, v)) = t.split_once(':') {
            let v = v.trim();
            if k == "expr" {
                if v == "|" {
                    in_expr = true;
                } else {
                    r.expr = v.to_string();
                }
            } else if !v.is_empty() {
                r.keys.push((k.to_string(), unquote(v)));
            }
        }
    }
    rules
}

#[test]
fn promtool_checks_the_rules_and_every_alert_fires_stays_quiet_and_resolves() {
    let check = Command::new(promtool()).arg("check").arg("rules").arg(rules_path()).output().expect("promtool");
    let out = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success() && out.contains("SUCCESS"), "{out}");
    let tests = workspace_root().join("deploy/prometheus/tests/domesday-rules.test.yml");
    let run = Command::new(promtool())
        .arg("test")
        .arg("rules")
        .arg(&tests)
        .current_dir(workspace_root().join("deploy/prometheus/tests"))
        .output()
        .expect("promtool test");
    let out = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success() && out.contains("SUCCESS"), "{out}");

    // Each alert has, within one test case, a quiet time, then a firing one, then a quiet one again.
    let text = std::fs::read_to_string(&tests).expect("tests");
    let mut cases: Vec<Vec<(u32, String, bool)>> = Vec::new();
    let mut eval: Option<u32> = None;
    let mut name = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("- name: ") {
            cases.push(Vec::new());
        } else if let Some(m) = t.strip_prefix("- eval_time: ").and_then(|v| v.strip_suffix('m')) {
            eval = m.parse().ok();
        } else if let Some(a) = t.strip_prefix("alertname: ") {
            name = a.to_string();
        } else if let (Some(e), Some(c)) = (eval, cases.last_mut())
            && t.starts_with("exp_alerts:")
        {
            c.push((e, name.clone(), t != "exp_alerts: []"));
            eval = None;
        }
    }
    let alerts: Vec<String> = parse_rules(&rules_text()).into_iter().filter_map(|r| r.alert).collect();
    assert!(alerts.len() >= 13, "{alerts:?}");
    for a in &alerts {
        let proven = cases.iter().any(|c| {
            let mut evals: Vec<_> = c.iter().filter(|(_, n, _)| n == a).collect();
            evals.sort_by_key(|(t, _, _)| *t);
            evals.iter().enumerate().any(|(i, (_, _, firing))| {
                *firing && evals[..i].iter().any(|e| !e.2) && evals[i + 1..].iter().any(|e| !e.2)
            })
        });
        assert!(proven, "{a}: no test case where it stays quiet, fires, then resolves");
    }
}

#[test]
fn alerts_follow_the_conventions_and_take_their_thresholds_from_series() {
    let rules = parse_rules(&rules_text());
    let groups: Vec<&str> = rules.iter().map(|r| r.group.as_str()).collect();
    for g in ["domesday-agent", "domesday-collector", "domesday-site"] {
        assert!(groups.contains(&g), "group {g} missing");
    }
    let docs = std::fs::read_to_string(workspace_root().join("docs/alerts.md")).expect("docs/alerts.md");
    let headings: Vec<String> =
        docs.lines().filter_map(|l| l.strip_prefix("### ")).map(|h| h.trim().to_lowercase()).collect();
    for r in &rules {
        if let Some(rec) = &r.record {
            let parts: Vec<&str> = rec.split(':').collect();
            assert!(
                parts.len() == 3 && parts.iter().all(|p| !p.is_empty()) && parts[1].starts_with("domesday_"),
                "{rec}: recording rules are named level:metric:operations"
            );
            continue;
        }
        let Some(name) = &r.alert else { continue };
        assert!(
            name.starts_with("Domesday") && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "{name}: alert names are Domesday + CamelCase"
        );
        assert!(matches!(r.key("severity"), Some("critical" | "warning" | "info")), "{name}: severity");
        let summary = r.key("summary").unwrap_or_default();
        assert!(summary.ends_with('.') && !summary.contains("{{"), "{name}: summary is one fixed sentence");
        assert!(r.key("description").is_some_and(|d| d.contains("{{")), "{name}: description with the values");
        let lower = name.to_lowercase();
        assert_eq!(r.key("runbook_url"), Some(format!("{RUNBOOK}{lower}").as_str()), "{name}");
        assert!(headings.contains(&lower), "docs/alerts.md has no section `### {name}`");
        // A comparison with a literal is only "any" (0) or a 0/1 flag: thresholds are series.
        let e = r.expr.as_bytes();
        for (i, w) in e.windows(1).enumerate() {
            if matches!(w[0], b'>' | b'<') || (w[0] == b'=' && e.get(i + 1) == Some(&b'=')) {
                let rest = r.expr[i + 1..].trim_start_matches(['=', ' ']);
                let literal: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
                assert!(
                    literal.is_empty() || literal == "0" || literal == "1",
                    "{name}: compares with the literal {literal}; make it a threshold series"
                );
            }
        }
    }
}

/// The `PrometheusRule` (prometheus-operator) wrapping the same groups, byte for byte.
fn prometheus_rule(rules: &str) -> String {
    let groups = rules.find("\ngroups:").map(|i| &rules[i + 1..]).expect("groups");
    let mut out = format!(
        "# Generated from deploy/prometheus/domesday-rules.yml by the tests (UPDATE_DEPLOY=1 cargo test -p\n\
         # domesday-tests --test alerts); do not edit. The same rules for the Prometheus Operator.\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: domesday-rules\n  labels:\n\
         \x20   app.kubernetes.io/name: domesday\n    app.kubernetes.io/instance: domesday\n\
         \x20   app.kubernetes.io/component: alerting-rules\n    app.kubernetes.io/part-of: domesday\n\
         \x20   app.kubernetes.io/version: \"{}\"\n    app.kubernetes.io/managed-by: kubectl\n    prometheus: k8s\n\
         \x20   role: alert-rules\nspec:\n",
        env!("CARGO_PKG_VERSION")
    );
    for line in groups.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_kubernetes_prometheus_rule_holds_the_same_rules() {
    let path = workspace_root().join("deploy/kubernetes/domesday-rules.yaml");
    let want = prometheus_rule(&rules_text());
    if std::env::var_os("UPDATE_DEPLOY").is_some() {
        std::fs::write(&path, &want).expect("write");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "{} is stale: UPDATE_DEPLOY=1 cargo test -p domesday-tests --test alerts", path.display());
    // Its spec, unwrapped, is a rule file promtool accepts with the same rules.
    let dir = tempfile::tempdir().expect("tmp");
    let spec: String = have
        .split_once("\nspec:\n")
        .map(|(_, s)| s)
        .expect("spec")
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    std::fs::write(dir.path().join("spec.yml"), spec).expect("spec");
    let out =
        Command::new(promtool()).arg("check").arg("rules").arg(dir.path().join("spec.yml")).output().expect("promtool");
    let text = String::from_utf8_lossy(&out.stdout);
    let n = parse_rules(&rules_text()).len();
    assert!(out.status.success() && text.contains(&format!("SUCCESS: {n} rules found")), "{text}");
}

/// Webhook bodies Alertmanager delivered, as JSON.
type Delivered = Arc<Mutex<Vec<serde_json::Value>>>;

fn wait_for(
    delivered: &Delivered,
    within: Duration,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = delivered.lock().expect("lock").iter().find(|v| f(v)).cloned() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not delivered within {within:?}: {:?}",
            delivered.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_hot_inlet_reaches_a_webhook_through_prometheus_and_alertmanager_then_resolves() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let (_fx, root) = fixture_copy("intel-2s");
    let inlet = add_inlet_sensor(&root, 30.0);
    let agent_port = free_port();
    let _agent = start_agent(&root, agent_port, "500ms", &["--site", "caen-1"]);
    let m = get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(20));
    assert!(m.contains("location=\"inlet\""), "{m}");

    let delivered: Delivered = Arc::default();
    let sink = delivered.clone();
    let hook = mock_http_full(move |req| {
        if let Ok(v) = serde_json::from_str(&req.body) {
            sink.lock().expect("lock").push(v);
        }
        MockResponse { status: 200, headers: vec![], body: "{}".into() }
    });
    let (_am, am_port) = start_alertmanager(
        dir.path(),
        &format!(
            "route:\n  receiver: hook\n  group_by: [alertname, site, host]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{hook}/alerts\n        send_resolved: true\n"
        ),
    );
    // The shipped rules, with every `for:` shortened so the test takes seconds (the
    // durations themselves are proven by promtool's unit tests).
    let rules: String = rules_text()
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                format!("{}for: 0s\n", &l[..l.len() - l.trim_start().len()])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("rules.yml"), rules).expect("rules");
    let (_prom, _prom_port) = start_prometheus(
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: domesday-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n",
            dir.path().join("rules.yml").display()
        ),
    );

    let is_inlet = |v: &serde_json::Value, status: &str| {
        v["status"] == status
            && v["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| x["labels"]["alertname"] == "DomesdayInletTemperatureHigh" && x["status"] == status)
            })
    };
    let firing = wait_for(&delivered, Duration::from_secs(30), "the firing inlet alert", |v| is_inlet(v, "firing"));
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["site"], "caen-1", "{firing}");
    assert_eq!(alert["labels"]["host"], "test-host", "{firing}");
    assert_eq!(alert["labels"]["severity"], "warning", "{firing}");
    assert_eq!(
        alert["annotations"]["description"],
        "The inlet of test-host at site caen-1 is at 30.0 °C, above the recommended 27 °C (ASHRAE TC 9.9).",
        "{firing}"
    );
    assert_eq!(alert["annotations"]["runbook_url"], format!("{RUNBOOK}domesdayinlettemperaturehigh"));
    // 30 °C is within the allowable range: no critical alert was sent.
    assert!(
        !delivered.lock().expect("lock").iter().any(|v| v.to_string().contains("DomesdayInletTemperatureCritical")),
        "{:?}",
        delivered.lock().expect("lock")
    );

    set_millidegrees(&inlet, 22.0);
    let resolved = wait_for(&delivered, Duration::from_secs(30), "the resolution", |v| is_inlet(v, "resolved"));
    assert_eq!(resolved["alerts"][0]["labels"]["host"], "test-host", "{resolved}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}
