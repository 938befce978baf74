//! The README's "run it" command: `domesday-collector demo` starts the
//! collector and an agent on this machine, the agent's energy reaches the
//! ledger, the site's simulated facility meters (named as such) follow it so
//! that every indicator has a figure within about a minute, on the API and on
//! the window gauges of /metrics, and Ctrl-C (SIGINT) stops both cleanly.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use domesday_tests::{NoSecretsInOutput, Proc, Secrets, binary, collector_output, free_port, get_text, series_value};

/// RFC 3339 of a millisecond timestamp.
fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).expect("timestamp").to_string()
}

/// The value of the first indicator `name` matching `pred`, when it has one.
fn value(list: &[serde_json::Value], name: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Option<f64> {
    list.iter().find(|i| i["name"] == name && pred(i)).and_then(|i| i["value"].as_f64())
}

#[test]
fn demo_shows_every_indicator_from_simulated_meters_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tmp");
    let (port, agent_port) = (free_port(), free_port());
    let started = Instant::now();
    // The demo writes its own token in its directory: its outputs (its agent's too, which inherits them) are
    // checked, once both are gone, for the secrets found there then (the guards drop after `demo`).
    let demo_dir = dir.path().join("demo");
    let secrets = Secrets::default().beside(&demo_dir);
    let (stdout_log, stderr_log) = (dir.path().join("demo.stdout"), dir.path().join("demo.stderr"));
    let _stdout_checked: NoSecretsInOutput;
    let _stderr_checked = NoSecretsInOutput::new(secrets.clone(), &stderr_log, None);
    let mut demo = Proc(
        Command::new(binary("domesday-collector"))
            .args(["demo", "--dir"])
            .arg(&demo_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--agent-listen")
            .arg(format!("127.0.0.1:{agent_port}"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("log"))
            .spawn()
            .expect("demo"),
    );
    // Read to the end (the agent inherits the pipe), handing each line over and keeping it for the check.
    let stdout = demo.0.stdout.take().expect("stdout");
    let mut kept = std::fs::File::create(&stdout_log).expect("log");
    let (tx, printed) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(kept, "{l}");
            let _ = tx.send(l);
        }
    });
    _stdout_checked = NoSecretsInOutput::new(secrets.clone(), &stdout_log, Some(reader));
    let base = format!("http://127.0.0.1:{port}");
    // The agent pushes every 5 s; its first push lands within about 15 s.
    let deadline = started + Duration::from_secs(40);
    loop {
        let hosts = get_text(&format!("{base}/api/v1/sites/local/hosts"), Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&hosts).expect("json");
        if v["hosts"].as_array().is_some_and(|h| h.iter().any(|h| !h["last_sample"].is_null())) {
            break;
        }
        assert!(Instant::now() < deadline, "no host reached the demo collector: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(5))
            .contains("domesday_host_info")
    );

    // The demo prints where the indicators are and that its meters are simulated.
    let mut lines = Vec::new();
    while let Ok(l) = printed.recv_timeout(Duration::from_secs(5)) {
        let last = l.starts_with("Ctrl-C");
        lines.push(l);
        if last {
            break;
        }
    }
    let text = lines.join("\n");
    assert!(
        lines.iter().any(|l| l.contains(&format!("{base}/api/v1/sites/local/indicators?from="))),
        "no indicators URL printed:\n{text}"
    );
    assert!(text.contains("SIMULATED") && text.contains("sim-utility"), "{text}");

    // The site and its meters say they are simulated.
    let sites: serde_json::Value =
        serde_json::from_str(&get_text(&format!("{base}/api/v1/sites"), Duration::from_secs(5))).expect("json");
    let name = sites.to_string();
    assert!(name.contains("Demo site (simulated meters)"), "{sites}");

    // The last hour's indicators, up to the end of the current minute: every
    // one of them has a figure within 90 s of starting the demo.
    let deadline = started + Duration::from_secs(90);
    // The simulation's ratios (utility 1.4 × IT, UPS output 1.06 × IT, 0.5 L and
    // 0.25 kWh of heat per kWh of IT).
    let in_range = |g: &[Option<f64>; 5]| {
        let [pue1, pue3, wue, erf, cue] = g.map(|v| v.unwrap_or(f64::NAN));
        (1.0..=1.6).contains(&pue3)
            && (1.0..=1.6).contains(&pue1)
            && pue1 <= pue3 + 0.1
            && wue > 0.0
            && wue < 1.0
            && erf > 0.0
            && erf < 0.5
            && cue > 0.0
            && cue < 1.0
    };
    let indicators = loop {
        let now = jiff::Timestamp::now().as_millisecond() / 60_000 * 60_000;
        let url = format!(
            "{base}/api/v1/sites/local/indicators?from={}&to={}&step=1d",
            rfc3339(now - 3_600_000),
            rfc3339(now + 60_000)
        );
        let v: serde_json::Value = serde_json::from_str(&get_text(&url, Duration::from_secs(5))).expect("json");
        let list = v["periods"]
            .as_array()
            .map(|p| p.iter().flat_map(|p| p["indicators"].as_array().cloned().unwrap_or_default()).collect::<Vec<_>>())
            .unwrap_or_default();
        let cat = |c: u64| move |i: &serde_json::Value| i["category"] == c;
        let location = |i: &serde_json::Value| i["basis"] == "location";
        let total = |i: &serde_json::Value| i["water"] == "total";
        let got = [
            value(&list, "pue", cat(1)),
            value(&list, "pue", cat(3)),
            value(&list, "wue", |i| total(i) && i["category"] == 1),
            value(&list, "erf", |_| true),
            value(&list, "cue", |i| location(i) && i["category"] == 1),
        ];
        // The meters are polled one by one, so over the first few seconds one of
        // them may lag a push behind the others: wait (bounded) until the figures
        // have the simulation's ratios, which the asserts below then check.
        if got.iter().all(Option::is_some) && in_range(&got) {
            break got;
        }
        assert!(Instant::now() < deadline, "indicators still refused after 90 s: {v:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("indicators after {:?}", started.elapsed());
    assert!(in_range(&indicators), "{indicators:?}");
    let [pue1, pue3, wue, erf, cue] = indicators.map(|v| v.unwrap_or(f64::NAN));
    // The simulation's ratios (utility 1.4 × IT, UPS output 1.06 × IT, 0.5 L and
    // 0.25 kWh of heat per kWh of IT), allowing for the meters' last poll lagging the agents' last push.
    assert!((1.0..=1.6).contains(&pue3), "PUE category 3 {pue3}");
    assert!((1.0..=1.6).contains(&pue1) && pue1 <= pue3 + 0.1, "PUE category 1 {pue1}");
    assert!(wue > 0.0 && wue < 1.0, "WUE {wue}");
    assert!(erf > 0.0 && erf < 0.5, "ERF {erf}");
    assert!(cue > 0.0 && cue < 1.0, "CUE {cue}");

    // The window gauges of /metrics: the last hour's, with their coverage.
    let metrics = loop {
        let m = get_text(&format!("{base}/metrics"), Duration::from_secs(5));
        let hour = |name: &str, extra: &[&str]| {
            let mut needles = vec!["site=\"local\"", "window=\"1h\""];
            needles.extend_from_slice(extra);
            series_value(&m, name, &needles)
        };
        let gauges = [
            hour("domesday_site_pue", &["category=\"1\""]),
            hour("domesday_site_pue", &["category=\"3\""]),
            hour("domesday_site_wue_liters_per_kwh", &["water=\"total\""]),
            hour("domesday_site_erf_ratio", &[]),
            hour("domesday_site_cue_kg_per_kwh", &["basis=\"location\""]),
            hour("domesday_site_coverage_ratio", &["role=\"utility_in\""]),
        ];
        if gauges.iter().all(Option::is_some) {
            assert!(gauges[0].is_some_and(|p| p >= 1.0) && gauges[1].is_some_and(|p| p >= 1.0), "{gauges:?}");
            // One minute or so of data in an hour: the coverage says so.
            assert!(gauges[5].is_some_and(|c| c > 0.0 && c < 0.5), "{gauges:?}");
            break m;
        }
        assert!(Instant::now() < deadline, "window gauges still missing after 90 s: {gauges:?}\n{m}");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("window gauges after {:?}", started.elapsed());
    assert!(metrics.contains("name=\"Demo site (simulated meters)\""), "site name on domesday_site_info");
    // Every report URL the demo printed answers with a complete (not draft)
    // document of the simulated site, with its figures.
    let report_urls: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with(&format!("{base}/")) && w.contains("report")))
        .collect();
    assert_eq!(report_urls.len(), 3, "report URLs printed:\n{text}");
    for url in &report_urls {
        let body = get_text(url, Duration::from_secs(10));
        assert!(body.contains("Demo site (simulated meters)") || body.contains("\"local\""), "{url}: {body}");
    }
    let eed: serde_json::Value = serde_json::from_str(&get_text(
        report_urls.iter().find(|u| u.contains("/api/v1/reports/eed")).expect("eed URL"),
        Duration::from_secs(10),
    ))
    .expect("eed json");
    assert_eq!(eed["interim"], serde_json::Value::Bool(true), "this year so far is interim");
    let text_eed = eed.to_string();
    assert!(text_eed.contains("sim-utility"), "the declaration's provenance names the simulated meters");
    for id in ["sim-utility", "sim-ups-out", "sim-water", "sim-heat-reuse", "sim-water-potable"] {
        assert!(
            series_value(&metrics, "domesday_meter_readings_total", &[&format!("meter=\"{id}\"")])
                .is_some_and(|n| n > 0.0),
            "meter {id} has no readings"
        );
    }

    let _ = Command::new("kill").arg("-INT").arg(demo.0.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(s)) = demo.0.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    // The agent it started is gone too.
    assert!(std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err(), "agent still listening");
    assert!(dir.path().join("demo/domesday.db").exists());
    // The guards will search the outputs for the token the demo wrote.
    assert!(secrets.values().iter().any(|(what, _)| what.contains("push.token")), "{:?}", secrets.dirs);
}

/// `demo` writes its own configuration and SQLite ledger: a `--db` or `--config` given to it would be ignored, so it
/// is refused, with what to run instead, before anything starts.
#[test]
fn demo_refuses_a_db_or_config_it_would_ignore() {
    let dir = tempfile::tempdir().expect("tmp");
    for option in ["--db", "--config"] {
        let out = collector_output(
            Command::new(binary("domesday-collector"))
                .arg(option)
                .arg(dir.path().join("mine"))
                .args(["demo", "--dir"])
                .arg(dir.path().join("demo")),
            dir.path(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option}: {err}");
        assert!(err.contains("`demo` takes no --config or --db") && err.contains("serve"), "{option}: {err}");
        assert!(!dir.path().join("demo").exists(), "{option}: nothing started");
    }
}
