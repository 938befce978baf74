//! Hostile and broken input through the real binaries, the cases the other
//! end-to-end tests do not already cover (the table in `docs/reliability.md`
//! names the test behind each input): each is a clear error or a counted
//! rejection, the process stays up, nothing accepted is lost and nothing wrong
//! is summed.

use std::time::Duration;

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use domesday_tests::{
    Collector, free_port, get_text, host_energy, host_energy_series, limit_file_size, now_minute_ms, post_write,
    series_value,
};

const TOKEN: &str = "caen-secret-token";

fn energy_request(host: &str, points: &[(f64, i64)]) -> Vec<u8> {
    encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", host, "psu_input", points)] })
}

fn rejected(metrics: &str, reason: &str) -> Option<f64> {
    series_value(metrics, "domesday_ingest_rejected_total", &[&format!("reason=\"{reason}\"")])
}

#[test]
fn suspect_samples_are_counted_and_never_summed() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 1_800_000;
    // ±Inf and a counter no host can reach (10^30 J) between two true readings.
    let body = energy_request(
        "srv-inf",
        &[(10.0, t0), (f64::INFINITY, t0 + 1000), (f64::NEG_INFINITY, t0 + 2000), (1e30, t0 + 3000), (25.0, t0 + 4000)],
    );
    let (code, msg) = post_write(&write, Some(TOKEN), body).expect("post");
    assert_eq!(code, 204, "{msg}");
    assert_eq!(host_energy(&c, "srv-inf", t0, t0 + 60_000)["energy_joules"], 15.0);
    // Timestamps far in the past (a clock reset to 1970, garbage): counted, not booked. Booked, each would
    // spread its series' energy back to its date, into the site's totals, and a query from 1970 would have
    // millions of minutes to walk.
    for (i, t) in [0, -1, i64::MIN, t0 - 400 * 86_400_000].into_iter().enumerate() {
        let host = format!("srv-past-{i}");
        let body = energy_request(&host, &[(5.0, t), (7.0, t0)]);
        assert_eq!(post_write(&write, Some(TOKEN), body).map(|r| r.0), Ok(204), "{host}");
        let body = energy_request(&host, &[(9.0, t0 + 60_000)]);
        assert_eq!(post_write(&write, Some(TOKEN), body).map(|r| r.0), Ok(204), "{host}");
        let e = host_energy(&c, &host, 0, t0 + 120_000);
        assert_eq!((e["energy_joules"].as_f64(), e["samples"].as_u64()), (Some(2.0), Some(2)), "{host}: {e}");
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(rejected(&metrics, "inf"), Some(2.0), "{metrics}");
    assert_eq!(rejected(&metrics, "absurd"), Some(1.0), "{metrics}");
    assert_eq!(rejected(&metrics, "past"), Some(4.0), "{metrics}");
    // Nothing else reached the site's total: 15 J of srv-inf, 2 J of each other host.
    let site = series_value(&metrics, "domesday_site_energy_joules_total", &["site=\"caen-1\"", "role=\"it_in\""]);
    assert_eq!(site, Some(23.0), "{metrics}");
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");
}

/// The protobuf of a request, not compressed.
fn prost_encode(req: &WriteRequest) -> Vec<u8> {
    let body = encode(req);
    snap::raw::Decoder::new().decompress_vec(&body).expect("our own snappy")
}

fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
    TimeSeries {
        labels: labels.iter().map(|(n, v)| Label { name: (*n).into(), value: (*v).into() }).collect(),
        samples: samples.iter().map(|(v, t)| Sample { value: *v, timestamp: *t }).collect(),
    }
}

#[test]
fn label_and_series_bombs_are_refused_whole_and_out_of_order_samples_are_booked_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 1_800_000;
    let good = host_energy_series("caen-1", "srv-ok", "psu_input", &[(1.0, t0)]);
    let post = |timeseries: Vec<TimeSeries>| {
        post_write(&write, Some(TOKEN), encode(&WriteRequest { timeseries })).expect("post")
    };
    // 65 labels on one series (the limit is 64), next to a good series: the whole request is refused.
    let many: Vec<(String, String)> = (0..64).map(|i| (format!("l{i:02}"), "v".to_string())).collect();
    let mut labels: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    labels.push(("__name__", "x"));
    let (code, msg) = post(vec![good.clone(), series(&labels, &[(1.0, t0)])]);
    assert!(code == 400 && msg.contains("labels"), "{code} {msg}");
    // A 1 MiB label value and a 5,000-byte metric name.
    let long = "v".repeat(1 << 20);
    let (code, msg) = post(vec![good.clone(), series(&[("__name__", "x"), ("host", &long), ("site", "caen-1")], &[])]);
    assert!(code == 400 && msg.contains("4096"), "{code} {msg}");
    let name = "x".repeat(5000);
    let (code, msg) = post(vec![good.clone(), series(&[("__name__", &name), ("site", "caen-1")], &[])]);
    assert!(code == 400 && msg.contains("4096"), "{code} {msg}");
    // 100,001 series in one request (the limit is 100,000), each a new host: refused before anything is booked.
    let hosts: Vec<String> = (0..100_001).map(|i| format!("bomb-{i}")).collect();
    let bomb: Vec<TimeSeries> =
        hosts.iter().map(|h| host_energy_series("caen-1", h, "psu_input", &[(1.0, t0)])).collect();
    let (code, msg) = post(bomb);
    assert!(code == 413 && msg.contains("100000"), "{code} {msg}");
    // A good request cut short (the protobuf inside valid snappy): refused whole.
    let whole = domesday_model::remote_write::WriteRequest { timeseries: vec![good.clone(); 3] };
    let raw = prost_encode(&whole);
    let cut = snap::raw::Encoder::new().compress_vec(&raw[..raw.len() - 5]).expect("snappy");
    let (code, msg) = post_write(&write, Some(TOKEN), cut).expect("post");
    assert_eq!(code, 400, "{msg}");
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(rejected(&metrics, "invalid"), Some(4.0), "{metrics}");
    assert_eq!(rejected(&metrics, "too_large"), Some(1.0), "{metrics}");
    assert!(!metrics.contains("bomb-"), "no host of a refused request is known");
    assert_eq!(host_energy(&c, "srv-ok", t0, t0 + 60_000)["samples"], 0, "nothing of a refused request is stored");

    // Samples out of order across requests and repeated: each interval booked once, in time order.
    let points = [(4.0, t0 + 30_000), (1.0, t0), (4.0, t0 + 30_000), (2.0, t0 + 10_000), (1.0, t0), (3.0, t0 + 20_000)];
    for p in points {
        let (code, msg) = post(vec![host_energy_series("caen-1", "srv-late", "psu_input", &[p])]);
        assert_eq!(code, 204, "{msg}");
    }
    let e = host_energy(&c, "srv-late", t0, t0 + 60_000);
    assert_eq!((e["energy_joules"].as_f64(), e["samples"].as_u64()), (Some(3.0), Some(4)), "{e}");
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_ingest_samples_total", &["result=\"duplicate\""]), Some(2.0));
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");
}

/// POSTs with a client that waits longer than the ledger's busy timeout (10 s).
fn post_slow(url: &str, body: Vec<u8>) -> (u16, String) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let resp = client
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .expect("post");
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

#[test]
fn a_locked_ledger_answers_503_and_the_retry_is_booked_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 1_800_000;
    assert_eq!(post_slow(&write, energy_request("srv-busy", &[(100.0, t0)])).0, 204);
    // Another process (this test) takes the ledger's write lock and keeps it past the busy timeout: SQLite's
    // `BEGIN IMMEDIATE`; on PostgreSQL every ledger table locked against writes (readers go on), past the lock
    // timeout.
    let db = dir.path().join("domesday.db");
    let release: Box<dyn FnOnce()> = if domesday_tests::store::on_postgres() {
        let mut other = domesday_tests::store::database_for(&db).client();
        let tables: Vec<String> = other
            .query("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'", &[])
            .expect("tables")
            .iter()
            .map(|r| r.get(0))
            .collect();
        other.batch_execute(&format!("BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE", tables.join(", "))).expect("lock");
        Box::new(move || other.batch_execute("ROLLBACK").expect("release"))
    } else {
        let other = rusqlite::Connection::open(&db).expect("open the ledger");
        other.execute_batch("BEGIN IMMEDIATE").expect("write lock");
        Box::new(move || other.execute_batch("ROLLBACK").expect("release"))
    };
    let body = energy_request("srv-busy", &[(110.0, t0 + 10_000)]);
    let (code, msg) = post_slow(&write, body.clone());
    assert!(code == 503 && msg.contains("retry"), "{code} {msg}");
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n", "the collector stays up");
    release();
    // The sender retries: booked once, nothing lost, nothing doubled.
    assert_eq!(post_slow(&write, body).0, 204);
    assert_eq!(post_slow(&write, energy_request("srv-busy", &[(115.0, t0 + 20_000)])).0, 204);
    let e = host_energy(&c, "srv-busy", t0, t0 + 60_000);
    assert_eq!((e["energy_joules"].as_f64(), e["samples"].as_u64()), (Some(15.0), Some(3)), "{e}");
}

#[test]
fn a_full_disk_under_the_ledger_answers_503_and_loses_nothing_acknowledged() {
    if domesday_tests::store::skip_on_postgres(
        "the disk under a PostgreSQL ledger is the database server's, not the collector's: its file size limit \
         does not reach it",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let config = domesday_tests::collector_config(dir.path(), port, TOKEN, "");
    // A disk that refuses every write: see `spawn_logged_ignoring_xfsz`.
    let c = Collector::spawn_ignoring_xfsz(
        std::process::Command::new(domesday_tests::binary("domesday-collector"))
            .arg("serve")
            .arg("--config")
            .arg(&config),
        port,
        dir.path(),
    );
    let pid = c.proc.0.id();
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 1_800_000;
    assert_eq!(post_slow(&write, energy_request("srv-disk", &[(100.0, t0)])).0, 204);
    // The disk fills: no write of any file of the collector goes through.
    limit_file_size(pid, Some(1));
    let refused: Vec<Vec<u8>> =
        (1..=3).map(|i| energy_request("srv-disk", &[(100.0 + i as f64, t0 + i * 10_000)])).collect();
    for body in &refused {
        let (code, msg) = post_slow(&write, body.clone());
        assert!(code == 503 && msg.contains("retry"), "{code} {msg}");
    }
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n", "the collector stays up");
    let e = host_energy(&c, "srv-disk", t0, t0 + 60_000);
    assert_eq!(e["samples"], 1, "what was acknowledged is still there, nothing else: {e}");
    // Space is freed; the sender retries each refused request: booked once each.
    limit_file_size(pid, None);
    for body in refused {
        let (code, msg) = post_slow(&write, body);
        assert_eq!(code, 204, "{msg}");
    }
    let e = host_energy(&c, "srv-disk", t0, t0 + 60_000);
    assert_eq!((e["energy_joules"].as_f64(), e["samples"].as_u64()), (Some(3.0), Some(4)), "{e}");
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_ingest_requests_total", &["code=\"503\""]), Some(3.0), "{metrics}");
}

/// Scrapes the agent's `/metrics` until `pred` holds (bounded: 20 s).
fn scrape_until(port: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = get_text(&url, Duration::from_secs(20));
        if pred(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; last body:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn non_utf8_sysfs_content_is_a_parse_error_or_a_lossy_label_never_a_crash() {
    let (_tmp, root) = domesday_tests::fixture_copy("intel-2s");
    let hwmon = root.join("sys/devices/platform/coretemp.0/hwmon/hwmon1");
    // A reading of bytes that are not UTF-8 (nor a number), and a label in Latin-1 (`Cœur é`).
    std::fs::write(hwmon.join("temp4_input"), b"\xff\xfe\x00\x01\n").expect("write");
    std::fs::write(hwmon.join("temp2_label"), b"C\x9cur \xe9\n").expect("write");
    let port = free_port();
    let _agent = domesday_tests::start_agent(&root, port, "200ms", &[]);
    let body = scrape_until(port, "the parse error", |b| {
        series_value(b, "domesday_sensor_errors_total", &["source=\"hwmon\"", "reason=\"parse\""]).is_some()
    });
    assert_eq!(series_value(&body, "domesday_sensor_up", &["sensor=\"platform_coretemp_0/temp4\""]), Some(0.0));
    // The label is read lossily (U+FFFD for each bad byte): its temperature is still served.
    let lossy = "label=\"C\u{fffd}ur \u{fffd}\"";
    assert!(
        series_value(&body, "domesday_temperature_celsius", &["chip=\"platform_coretemp_0\",sensor=\"temp2\"", lossy])
            .is_some(),
        "{body}"
    );
    assert!(
        series_value(&body, "domesday_temperature_celsius", &["chip=\"platform_coretemp_0\",sensor=\"temp1\""])
            .is_some()
    );
    let problems = domesday_tests::promtool_check_metrics(&body);
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn a_bmc_that_hangs_mid_answer_is_a_timeout_and_its_half_answer_is_never_read() {
    let (tmp, root) = domesday_tests::fixture_copy("intel-2s");
    let ipmitool = domesday_tests::fixtures_dir().join("bmc/ipmitool");
    let tables = format!(
        "[ipmi]\ncommand = {:?}\nargs = [\"-I\", \"open\"]\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        ipmitool.display().to_string()
    );
    let pids = tmp.path().join("ipmi-pids");
    let pids_env = pids.display().to_string();
    let env = [("FAKE_IPMITOOL_MODE", "halfhang"), ("FAKE_IPMITOOL_PIDS", pids_env.as_str())];
    let log = tmp.path().join("agent.log");
    let port = free_port();
    let _agent = domesday_tests::start_agent_logged(&root, port, "200ms", &tables, &env, &log);
    let ipmi_errors = |b: &str, reason: &str| {
        series_value(b, "domesday_sensor_errors_total", &["source=\"ipmi\"", &format!("reason=\"{reason}\"")])
    };
    let body = scrape_until(port, "two IPMI timeouts", |b| ipmi_errors(b, "timeout").is_some_and(|n| n >= 2.0));
    // The 999 W it printed before hanging is no reading: not exported, not host power; the PSUs carry the host.
    assert_eq!(series_value(&body, "domesday_power_watts", &["source=\"ipmi\"", "zone=\"dcmi\""]), None, "{body}");
    assert_eq!(series_value(&body, "domesday_sensor_up", &["source=\"ipmi\"", "sensor=\"dcmi\""]), Some(0.0));
    assert_eq!(ipmi_errors(&body, "parse"), None, "a half answer is not parsed: {body}");
    let host = |m: &str| series_value(&body, "domesday_host_power_watts", &[&format!("method=\"{m}\"")]);
    assert!(host("psu_input").is_some() && host("bmc_dcmi").is_none(), "{body}");
    // Each hung call was killed with its process group (the child sleeping in it too).
    std::thread::sleep(Duration::from_millis(300));
    let pids = std::fs::read_to_string(&pids).expect("the halfhang mode ran");
    for pid in pids.lines().take(1) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "the hung ipmitool's child {pid} survived: {stat}");
    }
}
