//! `[forward]` through the real collector: every accepted request reaches the
//! upstream remote_write receiver; while the upstream is down the collector
//! keeps acknowledging, spools, and replays everything in order once it is
//! back; a 400 upstream is counted, not retried.

use std::time::Duration;

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::mock_rw::{MockReceiver, Mode};
use domesday_tests::{Collector, free_port, get_text, host_energy_series, post_write, push_table, series_value};

const TOKEN: &str = "forward-token";

fn body(i: i64) -> Vec<u8> {
    let t0 = 1_795_000_000_000i64;
    encode(&WriteRequest {
        timeseries: vec![host_energy_series("caen-1", "srv-f", "model", &[(i as f64 * 10.0, t0 + i * 1000)])],
    })
}

#[test]
fn forwarded_through_an_upstream_outage_in_order_and_complete() {
    let upstream = MockReceiver::start("up-token");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("up.token"), "up-token").expect("token");
    let extra = format!(
        "\n[forward]\nurl = \"{}\"\ntoken_file = {:?}\nspool_dir = {:?}\ntimeout = \"2s\"\n",
        upstream.url(),
        dir.path().join("up.token").display().to_string(),
        dir.path().join("fwd-spool").display().to_string()
    );
    let c = Collector::start_with(dir.path(), free_port(), TOKEN, &extra);
    let write = c.url("/api/v1/write");
    for i in 0..5 {
        assert_eq!(post_write(&write, Some(TOKEN), body(i)).map(|r| r.0), Ok(204));
    }
    upstream.wait_for("5 forwarded", Duration::from_secs(10), |r| r.iter().filter(|x| x.accepted()).count() == 5);
    upstream.set_mode(Mode::Down);
    for i in 5..15 {
        assert_eq!(
            post_write(&write, Some(TOKEN), body(i)).map(|r| r.0),
            Ok(204),
            "ingest does not wait for the upstream"
        );
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert!(
        series_value(&metrics, "domesday_forward_requests_total", &["result=\"spooled\""]).unwrap_or(0.0) >= 9.0,
        "{metrics}"
    );
    upstream.set_mode(Mode::Accept);
    upstream.wait_for("all 15 forwarded", Duration::from_secs(60), |r| r.iter().filter(|x| x.accepted()).count() == 15);
    // In order, each exactly once.
    let stamps: Vec<i64> = upstream
        .received()
        .iter()
        .filter(|r| r.accepted())
        .flat_map(|r| {
            r.request.timeseries.iter().flat_map(|t| t.samples.iter().map(|s| s.timestamp)).collect::<Vec<_>>()
        })
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(stamps, sorted, "forwarded out of order or twice");
    assert_eq!(stamps.len(), 15);
    assert!(upstream.problems().is_empty(), "{:?}", upstream.problems());
    // A request the upstream refuses is counted and not retried.
    upstream.set_mode(Mode::Status(400, "bad".into()));
    assert_eq!(post_write(&write, Some(TOKEN), body(15)).map(|r| r.0), Ok(204));
    std::thread::sleep(Duration::from_millis(500));
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(
        series_value(&metrics, "domesday_forward_requests_total", &["result=\"rejected\""]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(upstream.received().iter().filter(|r| r.status == 400).count(), 1);
}

/// A Remote-Write 2.0 request is forwarded as 1.0 (the upstream protocol), its
/// float series with their labels resolved from the symbols table; its
/// histograms and exemplars stay with the collector.
#[test]
fn a_remote_write_2_request_is_forwarded_as_1_0() {
    use domesday_model::remote_write::Sample;
    use domesday_model::remote_write2::{self as v2, Histogram, Request, TimeSeries};
    let upstream = MockReceiver::start("up-token");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("up.token"), "up-token").expect("token");
    let extra = format!(
        "\n[forward]\nurl = \"{}\"\ntoken_file = {:?}\nspool_dir = {:?}\ntimeout = \"2s\"\n",
        upstream.url(),
        dir.path().join("up.token").display().to_string(),
        dir.path().join("fwd-spool").display().to_string()
    );
    let c = Collector::start_with(dir.path(), free_port(), TOKEN, &extra);
    let t0 = 1_795_000_000_000i64;
    let symbols = ["", "__name__", "domesday_host_energy_joules_total", "host", "srv-f", "method", "model"];
    let symbols = symbols.iter().chain(&["quality", "estimated", "site", "caen-1", "rpc_seconds"]);
    let req = Request {
        symbols: symbols.map(|s| s.to_string()).collect(),
        timeseries: vec![
            TimeSeries {
                labels_refs: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                samples: vec![Sample { value: 10.0, timestamp: t0 }, Sample { value: 12.0, timestamp: t0 + 1000 }],
                ..Default::default()
            },
            TimeSeries {
                labels_refs: vec![1, 11, 9, 10],
                histograms: vec![Histogram { timestamp: t0, ..Default::default() }],
                ..Default::default()
            },
        ],
    };
    let resp = reqwest::blocking::Client::new()
        .post(c.url("/api/v1/write"))
        .bearer_auth(TOKEN)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", v2::CONTENT_TYPE)
        .header("X-Prometheus-Remote-Write-Version", v2::VERSION)
        .body(v2::encode(&req))
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 204);
    upstream.wait_for("forwarded", Duration::from_secs(10), |r| r.iter().any(|x| x.accepted()));
    let got = upstream.accepted_series();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        domesday_tests::mock_rw::series_key(&got[0]),
        "__name__=domesday_host_energy_joules_total,host=srv-f,method=model,quality=estimated,site=caen-1"
    );
    assert_eq!(
        got[0].samples.iter().map(|s| (s.value, s.timestamp)).collect::<Vec<_>>(),
        [(10.0, t0), (12.0, t0 + 1000)]
    );
    assert!(upstream.problems().is_empty(), "{:?}", upstream.problems());
}

/// Debian's VictoriaMetrics single-node binary (`./test.sh` installs the package).
fn victoria_metrics_binary() -> std::path::PathBuf {
    let p = std::path::PathBuf::from("/usr/bin/victoria-metrics");
    assert!(p.exists(), "victoria-metrics not found: install Debian's `victoria-metrics` package (./test.sh does)");
    p
}

/// Every series of VictoriaMetrics' `/api/v1/export` for `selector`: sorted
/// `name=value` labels → (timestamp ms, value) pairs.
fn vm_export(port: u16, selector: &str) -> std::collections::BTreeMap<String, Vec<(i64, f64)>> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    // Samples are searchable once flushed from the in-memory buffers.
    let flushed = client.get(format!("http://127.0.0.1:{port}/internal/force_flush")).send().expect("force_flush");
    assert!(flushed.status().is_success(), "force_flush: {}", flushed.status());
    let text = client
        .get(format!("http://127.0.0.1:{port}/api/v1/export"))
        .query(&[("match[]", selector)])
        .send()
        .and_then(|r| r.text())
        .expect("export");
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let labels = v["metric"].as_object().expect("metric");
        let mut key: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
        key.sort();
        let ts = v["timestamps"].as_array().expect("timestamps").iter().map(|t| t.as_i64().expect("ts"));
        let vals = v["values"].as_array().expect("values").iter().map(|x| x.as_f64().expect("value"));
        let mut points: Vec<(i64, f64)> = ts.zip(vals).collect();
        points.sort_by_key(|p| p.0);
        out.entry(key.join(",")).or_insert_with(Vec::new).extend(points);
    }
    out
}

/// `[forward]` into a real VictoriaMetrics: an agent on a fixture tree pushes
/// through the collector; every series the agent pushed is in VictoriaMetrics
/// with its labels, and the host energy counter with every value and timestamp
/// the agent logged, while the collector's ledger books that counter's increase.
#[test]
fn what_the_agent_pushed_is_in_victoria_metrics_series_for_series_while_the_ledger_books_it() {
    use domesday_tests::{Proc, fixture_copy, pushed_host_energy, start_pushing_agent};
    let dir = tempfile::tempdir().expect("tmp");
    let vm_port = free_port();
    let _vm = Proc(
        std::process::Command::new(victoria_metrics_binary())
            .arg(format!("-httpListenAddr=127.0.0.1:{vm_port}"))
            .arg(format!("-storageDataPath={}", dir.path().join("vm").display()))
            .arg("-retentionPeriod=100y")
            .arg("-search.latencyOffset=0s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn victoria-metrics"),
    );
    get_text(&format!("http://127.0.0.1:{vm_port}/health"), Duration::from_secs(20));
    let extra = format!(
        "\n[forward]\nurl = \"http://127.0.0.1:{vm_port}/api/v1/write\"\nspool_dir = {:?}\ntimeout = \"5s\"\n",
        dir.path().join("fwd-spool").display().to_string()
    );
    let c = Collector::start_with(dir.path(), free_port(), TOKEN, &extra);
    let (_fx, root) = fixture_copy("intel-2s");
    let tables = push_table(&root, TOKEN, &format!("{:?}", c.url("/api/v1/write")), "interval = \"200ms\"\n");
    let log = root.join("agent.log");
    let agent_port = free_port();
    let mut agent = start_pushing_agent(&root, agent_port, &tables, &log);
    std::thread::sleep(Duration::from_millis(2500));
    let exposition = get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(5));
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()), "agent stops cleanly");
    let ticks = pushed_host_energy(&std::fs::read_to_string(&log).expect("log"), "psu_input");
    assert!(ticks.len() >= 8, "{} ticks pushed", ticks.len());

    // The ledger books the counter's increase, exactly.
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    let (from, to) = (first.0 / 60_000 * 60_000, (last.0 / 60_000 + 1) * 60_000);
    let want_uj = (last.1 * 1e6).round() as i64 - (first.1 * 1e6).round() as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = domesday_tests::host_energy(&c, "test-host", from, to);
        if e["samples"].as_u64().is_some_and(|n| n >= ticks.len() as u64) {
            assert_eq!(e["energy_microjoules"], want_uj.to_string(), "{e}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ledger holds {} of {} ticks: {e}", e["samples"], ticks.len());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Everything the collector accepted reaches VictoriaMetrics (bounded wait), the
    // host counter with every value and timestamp the agent sent.
    let energy_key =
        "__name__=domesday_host_energy_joules_total,host=test-host,method=psu_input,quality=measured,site=caen-1";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let series = loop {
        let series = vm_export(vm_port, "{host=\"test-host\"}");
        if series.get(energy_key).is_some_and(|p| p.len() >= ticks.len()) {
            break series;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "VictoriaMetrics holds {:?} of {} ticks; series: {:?}",
            series.get(energy_key).map(Vec::len),
            ticks.len(),
            series.keys().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // Timestamps exact; values to VictoriaMetrics' precision (it stores floats as
    // decimals of about 12 significant digits: the exact figures are the ledger's).
    let got = &series[energy_key];
    assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), ticks.iter().map(|t| t.0).collect::<Vec<_>>());
    for (g, t) in got.iter().zip(&ticks) {
        assert!((g.1 - t.1).abs() <= t.1.abs() * 1e-11, "VictoriaMetrics holds {g:?}, the agent pushed {t:?}");
    }

    // Series for series: each one is a series of the agent's /metrics (same name and
    // labels), each of its timestamps a pushed tick's, in order and once; the default
    // set's families are all there.
    let tick_ts: std::collections::BTreeSet<i64> = ticks.iter().map(|t| t.0).collect();
    let metrics_keys: std::collections::BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (head, _) = l.rsplit_once(' ')?;
            let (name, rest) = head.split_once('{').unwrap_or((head, "}"));
            let mut labels: Vec<String> = vec![format!("__name__={name}")];
            for kv in rest.trim_end_matches('}').split("\",").filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=')?;
                let v = v.trim_matches('"');
                if !v.is_empty() {
                    labels.push(format!("{k}={v}"));
                }
            }
            labels.sort();
            Some(labels.join(","))
        })
        .collect();
    for (key, points) in &series {
        assert!(metrics_keys.contains(key), "{key} is not a series of the agent's /metrics");
        let ts: Vec<i64> = points.iter().map(|p| p.0).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{key}: {ts:?} not increasing or twice");
        assert!(ts.iter().all(|t| tick_ts.contains(t)), "{key}: {ts:?} not pushed ticks {tick_ts:?}");
    }
    for name in [
        "domesday_host_energy_joules_total",
        "domesday_host_power_watts",
        "domesday_sensor_up",
        "domesday_energy_joules_total",
        "domesday_host_info",
        "domesday_agent_info",
    ] {
        assert!(
            series.keys().any(|k| k.starts_with(&format!("__name__={name},"))),
            "{name} missing from VictoriaMetrics: {:?}",
            series.keys().collect::<Vec<_>>()
        );
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_forward_requests_total", &["result=\"rejected\""]).unwrap_or(0.0), 0.0);
}

/// `[forward] headers` go with every forwarded request, e.g. Mimir's tenant
/// header, beside the bearer token from `token_file`.
#[test]
fn forward_headers_reach_the_upstream() {
    use std::sync::{Arc, Mutex};
    /// Path, `X-Scope-OrgID` and `Authorization` of each request.
    type Seen = Vec<(String, Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    let port = domesday_tests::mock_http_headers(move |target, headers| {
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        log.lock().expect("lock").push((target.to_string(), get("x-scope-orgid"), get("authorization")));
        (200, String::new())
    });
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("up.token"), "up-token").expect("token");
    let extra = format!(
        "\n[forward]\nurl = \"http://127.0.0.1:{port}/api/v1/push\"\ntoken_file = {:?}\nspool_dir = {:?}\nheaders = {{ \"X-Scope-OrgID\" = \"dc-caen\" }}\n",
        dir.path().join("up.token").display().to_string(),
        dir.path().join("fwd-spool").display().to_string()
    );
    let c = Collector::start_with(dir.path(), free_port(), TOKEN, &extra);
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body(0)).map(|r| r.0), Ok(204));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("lock").is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing forwarded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = seen.lock().expect("lock").clone();
    assert_eq!(got, [("/api/v1/push".to_string(), Some("dc-caen".to_string()), Some("Bearer up-token".to_string()))]);
}
