//! The real `domesday-agent` binary pushing to a mock remote_write receiver on
//! 127.0.0.1 (`domesday_tests::mock_rw`), which checks headers, token and
//! body and can answer 204, 503, 400 or be down. The agent logs each tick it
//! hands to the pusher (`push tick ts=…`, debug level); comparing those with
//! what the receiver accepted proves that nothing is lost or duplicated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{TimeSeries, is_stale_nan};
use domesday_tests::mock_rw::{MockReceiver, Mode, Received, series_key};
use domesday_tests::{
    binary, fixture_copy, free_port, get_text, promtool_check_metrics, series_value, start_agent_logged,
};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "e2e-Token-7f3a9c51d2";
const LOG: &str = "info,domesday_agent=debug";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The `[labels]` and `[push]` tables for an agent pushing to `url` every 200 ms.
fn push_tables(root: &Path, url: &str) -> String {
    let token = root.join("push.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    format!(
        "[labels]\nregion = \"normandie\"\n[push]\nurl = {url:?}\ntoken_file = {:?}\ninterval = \"200ms\"\ntimeout = \"2s\"\n",
        token.display().to_string()
    )
}

struct Agent {
    proc: domesday_tests::Agent,
    port: u16,
    log: std::path::PathBuf,
}

fn start(root: &Path, url: &str, log_name: &str, log_filter: &str) -> Agent {
    let port = free_port();
    let log = root.join(log_name);
    let proc = start_agent_logged(root, port, "100ms", &push_tables(root, url), &[("DOMESDAY_LOG", log_filter)], &log);
    Agent { proc, port, log }
}

impl Agent {
    fn metrics(&self) -> String {
        get_text(&format!("http://127.0.0.1:{}/metrics", self.port), WAIT)
    }

    fn push_metric(&self, body: &str, result: &str) -> f64 {
        series_value(body, "domesday_push_samples_total", &[&format!("result=\"{result}\"")]).unwrap_or(-1.0)
    }

    /// Scrapes until `pred` holds (bounded).
    fn metrics_until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let body = self.metrics();
            if pred(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`MockReceiver::wait_for`], printing the agent's log if it times out.
    fn wait(&self, mock: &MockReceiver, what: &str, pred: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred(&mock.received()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {} requests, problems {:?}; log:\n{}",
                mock.received().len(),
                mock.problems(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Timestamps of the ticks the agent handed to its pusher.
    fn ticks(&self) -> Vec<i64> {
        logged_ticks(&self.log_text())
    }

    fn stop(&mut self) {
        let status = self.proc.terminate(WAIT).expect("agent exits on SIGTERM");
        assert!(status.success(), "{status:?}; log:\n{}", self.log_text());
    }
}

fn logged_ticks(log: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains("push tick"))
        .filter_map(|l| l.split("ts=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn name(ts: &TimeSeries) -> &str {
    ts.label("__name__").unwrap_or("")
}

fn spool_bytes(body: &str) -> f64 {
    series_value(body, "domesday_spool_bytes", &[]).unwrap_or(-1.0)
}

/// Timestamps of the accepted `domesday_agent_info` samples (one per tick), in arrival order.
fn accepted_ticks(mock: &MockReceiver) -> Vec<i64> {
    mock.accepted_series()
        .iter()
        .filter(|t| name(t) == "domesday_agent_info")
        .flat_map(|t| t.samples.iter().map(|s| s.timestamp))
        .collect()
}

/// Per series, the accepted samples' timestamps arrive strictly increasing:
/// time order kept and no sample delivered twice.
fn assert_time_order_per_series(mock: &MockReceiver) {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for ts in mock.accepted_series() {
        let key = series_key(&ts);
        for s in &ts.samples {
            if let Some(prev) = last.get(&key) {
                assert!(s.timestamp > *prev, "{key}: {} after {prev}", s.timestamp);
            }
            last.insert(key.clone(), s.timestamp);
        }
    }
}

/// Every logged tick was accepted exactly once, and nothing else was.
fn assert_every_tick_delivered_once(mock: &MockReceiver, logged: &[i64]) {
    let got = accepted_ticks(mock);
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a tick was delivered twice: {got:?}");
    let want: BTreeSet<i64> = logged.iter().copied().collect();
    assert_eq!(want.len(), logged.len(), "two ticks share a timestamp: {logged:?}");
    let lost: Vec<&i64> = want.difference(&unique).collect();
    let extra: Vec<&i64> = unique.difference(&want).collect();
    assert!(lost.is_empty() && extra.is_empty(), "lost {lost:?}, not logged {extra:?}");
}

#[test]
fn pushed_samples_carry_the_metrics_labels_and_their_tick_time() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let mock = MockReceiver::start(TOKEN);
    let started = now_ms();
    let mut agent = start(&root, &mock.url(), "agent.log", LOG);
    agent.wait(&mock, "6 accepted requests", |r| r.iter().filter(|r| r.accepted()).count() >= 6);
    let body = agent.metrics_until("sent samples on /metrics", |b| agent.push_metric(b, "sent") > 0.0);
    assert!(promtool_check_metrics(&body).is_empty(), "{}", promtool_check_metrics(&body));
    assert_eq!(spool_bytes(&body), 0.0);
    let last_ok = series_value(&body, "domesday_push_last_success_timestamp_seconds", &[]).expect("last success");
    assert!(last_ok * 1000.0 >= started as f64, "{last_ok}");
    agent.stop();
    let finished = now_ms();
    assert!(mock.problems().is_empty(), "{:?}", mock.problems());

    let reqs: Vec<Received> = mock.received();
    let allowed = [
        "domesday_host_energy_joules_total",
        "domesday_host_power_watts",
        "domesday_sensor_up",
        "domesday_energy_joules_total",
        "domesday_temperature_celsius",
        "domesday_host_info",
        "domesday_agent_info",
        "domesday_cpu_utilization_ratio",
    ];
    let mut per_series: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.accepted()) {
        // One request = one tick: a single timestamp, within the run.
        let times: BTreeSet<i64> =
            r.request.timeseries.iter().flat_map(|t| t.samples.iter().map(|s| s.timestamp)).collect();
        assert_eq!(times.len(), 1, "{times:?}");
        let t = *times.first().expect("a time");
        assert!((started - 1000..=finished).contains(&t), "timestamp {t} outside [{started}, {finished}] (ms)");
        for ts in &r.request.timeseries {
            assert_eq!(ts.label("site"), Some("test-site"));
            assert_eq!(ts.label("host"), Some("test-host"));
            assert_eq!(ts.label("region"), Some("normandie"));
            assert!(allowed.contains(&name(ts)), "{} is not in the default set", name(ts));
            if name(ts) == "domesday_energy_joules_total" {
                assert_eq!(ts.label("source"), Some("rapl"), "{}", series_key(ts));
            }
            per_series.entry(series_key(ts)).or_default().push(t);
        }
    }
    let energy = mock
        .accepted_series()
        .into_iter()
        .find(|t| name(t) == "domesday_host_energy_joules_total")
        .expect("host energy pushed");
    let labels: Vec<(String, String)> = energy.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
    let want: Vec<(String, String)> = [
        ("__name__", "domesday_host_energy_joules_total"),
        ("host", "test-host"),
        ("method", "psu_input"),
        ("quality", "measured"),
        ("region", "normandie"),
        ("site", "test-site"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(labels, want);
    // The raw RAPL counter of the fixture, as /metrics shows it.
    let rapl1 = mock
        .accepted_series()
        .into_iter()
        .find(|t| t.label("zone") == Some("intel-rapl:1") && name(t) == "domesday_energy_joules_total")
        .expect("RAPL package 1");
    assert_eq!(rapl1.samples[0].value, 262143.0);
    assert_eq!(rapl1.label("domain"), Some("package"));
    assert_eq!(rapl1.label("socket"), Some("1"));
    // Every pushed tick is push.interval (200 ms) or more after the previous one, but the
    // last: the one the agent takes and pushes when it stops, whenever that is.
    for (key, times) in &per_series {
        for w in times[..times.len().saturating_sub(1)].windows(2) {
            assert!(w[1] - w[0] >= 150, "{key}: ticks {} ms apart", w[1] - w[0]);
        }
    }
    assert_every_tick_delivered_once(&mock, &agent.ticks());
}

#[test]
fn an_outage_is_spooled_and_replayed_in_time_order_with_nothing_lost_or_duplicated() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let mock = MockReceiver::start(TOKEN);
    let mut agent = start(&root, &mock.url(), "agent.log", LOG);
    agent.wait(&mock, "3 accepted requests", |r| r.iter().filter(|r| r.accepted()).count() >= 3);

    mock.set_mode(Mode::Status(503, "overloaded".into()));
    let during_503 = agent.metrics_until("the spool to fill on 503", |b| {
        spool_bytes(b) > 2000.0 && agent.push_metric(b, "spooled") > 0.0
    });
    let segments = std::fs::read_dir(root.join("state/spool"))
        .expect("spool dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg")))
        .count();
    assert!(segments >= 1);
    // Retries back off: far fewer 503 answers than the loop could make.
    let answered_503 = mock.received().iter().filter(|r| r.status == 503).count();
    assert!(answered_503 >= 1);

    mock.set_mode(Mode::Down);
    let grown = spool_bytes(&during_503) * 1.5;
    agent.metrics_until("the spool to grow while down", |b| spool_bytes(b) > grown);

    // A slow collector: the replay takes several push intervals, so live ticks
    // arrive while the spool drains and must queue behind it.
    mock.set_delay(Duration::from_millis(60));
    mock.set_mode(Mode::Accept);
    agent.metrics_until("the spool to drain", |b| spool_bytes(b) == 0.0);
    mock.set_delay(Duration::ZERO);
    let resumed = accepted_ticks(&mock).len();
    agent.wait(&mock, "live pushes after the replay", |r| r.iter().filter(|r| r.accepted()).count() >= resumed + 3);
    let body = agent.metrics();
    assert_eq!(agent.push_metric(&body, "dropped"), 0.0);
    assert_eq!(agent.push_metric(&body, "rejected"), 0.0);
    agent.stop();
    assert!(mock.problems().is_empty(), "{:?}", mock.problems());

    assert_time_order_per_series(&mock);
    let logged = agent.ticks();
    assert!(logged.len() >= 8, "{logged:?}");
    assert_every_tick_delivered_once(&mock, &logged);
    // Host energy is non-decreasing in arrival order.
    let energy: Vec<f64> = mock
        .accepted_series()
        .iter()
        .filter(|t| name(t) == "domesday_host_energy_joules_total")
        .flat_map(|t| t.samples.iter().map(|s| s.value))
        .collect();
    assert!(energy.windows(2).all(|w| w[1] >= w[0]), "{energy:?}");
    // What the agent counts as sent is what the receiver accepted.
    let accepted: usize = mock.received().iter().filter(|r| r.accepted()).map(Received::samples).sum();
    assert!(accepted > 0);
    let log = agent.log_text();
    assert!(log.contains("does not take data") && log.contains("takes data again"), "{log}");
}

#[test]
fn a_400_is_counted_as_rejected_logged_with_its_reason_and_never_retried() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let mock = MockReceiver::start(TOKEN);
    mock.set_mode(Mode::Status(400, "out of order sample (test reason 4c1d)".into()));
    let mut agent = start(&root, &mock.url(), "agent.log", LOG);
    agent.wait(&mock, "3 rejected requests", |r| r.iter().filter(|r| r.status == 400).count() >= 3);
    let body = agent.metrics_until("rejected samples", |b| agent.push_metric(b, "rejected") > 0.0);
    assert_eq!(agent.push_metric(&body, "spooled"), 0.0, "a 400 must not be spooled");
    assert_eq!(spool_bytes(&body), 0.0);
    mock.set_mode(Mode::Accept);
    agent.wait(&mock, "accepted requests after the 400s", |r| r.iter().filter(|r| r.accepted()).count() >= 3);
    let body = agent.metrics();
    agent.stop();
    // Each tick was sent once: no request body was ever sent twice.
    let all_ticks: Vec<i64> = mock
        .received()
        .iter()
        .flat_map(|r| {
            r.request
                .timeseries
                .iter()
                .filter(|t| name(t) == "domesday_agent_info")
                .map(|t| t.samples[0].timestamp)
                .collect::<Vec<_>>()
        })
        .collect();
    let unique: BTreeSet<i64> = all_ticks.iter().copied().collect();
    assert_eq!(unique.len(), all_ticks.len(), "a rejected request was retried: {all_ticks:?}");
    // The agent's count is the receiver's (up to the requests after the scrape).
    let rejected_at_receiver: usize = mock.received().iter().filter(|r| r.status == 400).map(Received::samples).sum();
    assert_eq!(agent.push_metric(&body, "rejected"), rejected_at_receiver as f64);
    let log = agent.log_text();
    assert!(log.contains("test reason 4c1d") && log.contains("rejected"), "{log}");
}

#[test]
fn a_sensor_that_disappears_is_ended_with_one_stale_marker() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let mock = MockReceiver::start(TOKEN);
    let mut agent = start(&root, &mock.url(), "agent.log", LOG);
    let gone = "i2c_0_0_0059/";
    let is_gone =
        |t: &TimeSeries| name(t) == "domesday_sensor_up" && t.label("sensor").is_some_and(|s| s.starts_with(gone));
    agent.wait(&mock, "PSU 2 health", |r| r.iter().any(|r| r.request.timeseries.iter().any(is_gone)));
    std::fs::remove_dir_all(root.join("sys/devices/pci0000:00/0000:00:1f.4/i2c-0/0-0059")).expect("remove PSU 2");
    agent.wait(&mock, "stale markers", |r| {
        r.iter().any(|r| r.request.timeseries.iter().any(|t| is_gone(t) && is_stale_nan(t.samples[0].value)))
    });
    // A few more ticks, to see that nothing follows the marker.
    let n = mock.received().len();
    agent.wait(&mock, "3 more requests", |r| r.len() >= n + 3);
    agent.stop();
    let mut per_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for r in mock.received().iter().filter(|r| r.accepted()) {
        let tick =
            r.request.timeseries.iter().find(|t| name(t) == "domesday_agent_info").map(|t| t.samples[0].timestamp);
        for t in r.request.timeseries.iter().filter(|t| is_gone(t)) {
            // The marker carries the tick's timestamp.
            assert_eq!(Some(t.samples[0].timestamp), tick);
            per_series.entry(series_key(t)).or_default().push((t.samples[0].timestamp, t.samples[0].value));
        }
    }
    assert_eq!(per_series.len(), 4, "{:?}", per_series.keys());
    for (key, samples) in &per_series {
        let stale: Vec<usize> =
            samples.iter().enumerate().filter(|(_, (_, v))| is_stale_nan(*v)).map(|(i, _)| i).collect();
        assert_eq!(stale, [samples.len() - 1], "{key}: one marker, last: {samples:?}");
    }
    // Series that stay are never marked stale.
    let others_stale = mock
        .accepted_series()
        .iter()
        .filter(|t| !is_gone(t) && t.samples.iter().any(|s| is_stale_nan(s.value)))
        .map(series_key)
        .collect::<Vec<_>>();
    assert!(others_stale.is_empty(), "{others_stale:?}");
}

#[test]
fn the_spool_survives_a_restart_and_is_replayed_before_new_samples() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let mock = MockReceiver::start(TOKEN);
    mock.set_mode(Mode::Down);
    let mut first = start(&root, &mock.url(), "first.log", LOG);
    first.metrics_until("a spool of several ticks", |b| first.push_metric(b, "spooled") >= 200.0);
    first.stop();
    let spooled: u64 = std::fs::read_dir(root.join("state/spool"))
        .expect("spool dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(spooled > 0, "the spool is on disk after the stop");
    let first_ticks = first.ticks();

    // A slow collector, so the new run's first ticks are ready while the old
    // spool is still being replayed: they must queue behind it.
    mock.set_delay(Duration::from_millis(60));
    mock.set_mode(Mode::Accept);
    let mut second = start(&root, &mock.url(), "second.log", LOG);
    second.metrics_until("the old spool to be replayed", |b| {
        spool_bytes(b) == 0.0 && second.push_metric(b, "sent") > 0.0
    });
    mock.set_delay(Duration::ZERO);
    let n = accepted_ticks(&mock).len();
    second.wait(&mock, "live pushes", |r| r.iter().filter(|r| r.accepted()).count() >= n + 2);
    second.stop();
    assert!(mock.problems().is_empty(), "{:?}", mock.problems());
    assert!(second.log_text().contains("replaying the spool left by the last run"), "{}", second.log_text());

    assert_time_order_per_series(&mock);
    let mut all = first_ticks.clone();
    all.extend(second.ticks());
    assert_every_tick_delivered_once(&mock, &all);
    // The first run's ticks all arrive before the second run's.
    let got = accepted_ticks(&mock);
    assert_eq!(&got[..first_ticks.len()], first_ticks.as_slice());
}

#[test]
fn the_token_never_appears_in_check_config_output_or_logs() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let mock = MockReceiver::start(TOKEN);
    let tables = push_tables(&root, &mock.url());
    let config = domesday_tests::write_agent_config(&root, &tables);
    let check = |env: &[(&str, &str)], cfg: &Path| {
        let out = domesday_tests::agent_output(
            Command::new(binary("domesday-agent"))
                .arg("check-config")
                .arg("--config")
                .arg(cfg)
                .env_remove("DOMESDAY_PUSH_TOKEN")
                .envs(env.iter().copied()),
        );
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = check(&[], &config);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(TOKEN), "{out}");
    assert!(out.contains("<redacted>") && out.contains("push.token") && out.contains("[push]"), "{out}");
    // From the environment.
    let env_only = root.join("env.toml");
    let without_file: String = std::fs::read_to_string(&config)
        .expect("config")
        .lines()
        .filter(|l| !l.starts_with("token_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&env_only, without_file).expect("write");
    let (code, out) = check(&[("DOMESDAY_PUSH_TOKEN", TOKEN)], &env_only);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(TOKEN) && out.contains("DOMESDAY_PUSH_TOKEN"), "{out}");
    // A bad token file is refused with file:line, without quoting it.
    std::fs::write(root.join("push.token"), format!("{TOKEN} with spaces")).expect("write");
    let (code, out) = check(&[], &config);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("agent.toml:") && out.contains("token_file") && !out.contains(TOKEN), "{out}");

    // Everything at trace level, through success, 503, 401 and 400 answers.
    let mut agent = start(&root, &mock.url(), "trace.log", "trace");
    agent.wait(&mock, "an accepted request", |r| r.iter().any(Received::accepted));
    for mode in [
        Mode::Status(503, "busy".into()),
        Mode::Status(401, "unauthorized".into()),
        Mode::Status(400, "bad".into()),
        Mode::Accept,
    ] {
        let n = mock.received().len();
        mock.set_mode(mode);
        agent.wait(&mock, "another request", |r| r.len() >= n + 2);
    }
    agent.stop();
    assert!(mock.problems().is_empty(), "the token was sent: {:?}", mock.problems());
    let log = agent.log_text();
    assert!(
        log.contains("TRACE hyper_util") && log.contains("DEBUG domesday_agent::push"),
        "trace logging was on:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the token leaked into the log");
}

#[test]
fn simulate_reports_per_host_what_the_collector_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let mock = MockReceiver::start(TOKEN);
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let report = dir.path().join("report.csv");
    let hosts = 30;
    let mut cmd = Command::new(binary("domesday-agent"));
    cmd.args(["simulate", "--hosts", &hosts.to_string(), "--push", &mock.url(), "--interval", "300ms"])
        .args(["--duration", "2400ms", "--connections", "4", "--site", "simsite"])
        .arg("--token-file")
        .arg(&token)
        .arg("--report")
        .arg(&report)
        .env("DOMESDAY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let secrets = domesday_tests::Secrets::of(&cmd);
    let child = cmd.spawn().expect("simulate");
    // An overload in the middle: those requests are failed, not acknowledged.
    std::thread::sleep(Duration::from_millis(900));
    mock.set_mode(Mode::Status(503, "overloaded".into()));
    std::thread::sleep(Duration::from_millis(400));
    mock.set_mode(Mode::Accept);
    let out = domesday_tests::agent_wait(child, &secrets, "agent simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("30 hosts × 20 series") && stdout.contains("failed"), "{stdout}");
    assert!(mock.problems().is_empty(), "{:?}", mock.problems());
    // One keep-alive connection per worker, kept through the 503s.
    assert_eq!(mock.connections(), 4);

    // What the receiver saw, per host.
    #[derive(Default, Debug)]
    struct Seen {
        accepted: u64,
        failed: u64,
        first: Option<f64>,
        last: Option<f64>,
    }
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for r in mock.received() {
        assert_eq!(r.request.timeseries.len(), 20);
        let host = r.request.timeseries[0].label("host").expect("host").to_string();
        assert!(
            r.request.timeseries.iter().all(|t| t.label("site") == Some("simsite") && t.label("host") == Some(&host))
        );
        let e = r
            .request
            .timeseries
            .iter()
            .find(|t| name(t) == "domesday_host_energy_joules_total" && t.label("method") == Some("model"))
            .expect("host energy");
        let s = seen.entry(host).or_default();
        if r.accepted() {
            s.accepted += 1;
            s.first.get_or_insert(e.samples[0].value);
            s.last = Some(e.samples[0].value);
        } else {
            s.failed += 1;
        }
    }
    assert_eq!(seen.len(), hosts);
    assert!(seen.values().map(|s| s.failed).sum::<u64>() > 0, "the overload was seen");

    let text = std::fs::read_to_string(&report).expect("report");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap_or_else(|| panic!("column {n}"));
    let mut rows = 0;
    for line in lines {
        rows += 1;
        let f: Vec<&str> = line.split(',').collect();
        let host = f[col("host")];
        let s = seen.get(host).unwrap_or_else(|| panic!("{host} not seen"));
        assert_eq!(f[col("acknowledged")].parse::<u64>().ok(), Some(s.accepted), "{line}");
        assert_eq!(f[col("failed")].parse::<u64>().ok(), Some(s.failed), "{line}");
        let acked: f64 = f[col("acked_increase_joules")].parse().expect("acked increase");
        assert_eq!(acked, s.last.unwrap_or(0.0) - s.first.unwrap_or(0.0), "{line}");
        let sent: f64 = f[col("sent_increase_joules")].parse().expect("sent increase");
        assert!(sent >= acked && sent > 0.0, "{line}");
        assert!(f[col("requests")].parse::<u64>().is_ok_and(|n| (6..=9).contains(&n)), "{line}");
    }
    assert_eq!(rows, hosts);
}

#[test]
fn a_full_disk_under_the_spool_drops_and_counts_and_what_was_spooled_is_delivered() {
    let (_tmp, root) = fixture_copy("intel-2s");
    let mock = MockReceiver::start(TOKEN);
    let port = free_port();
    let log = root.join("agent.log");
    let proc = domesday_tests::start_agent_logged_ignoring_xfsz(
        &root,
        port,
        "100ms",
        &push_tables(&root, &mock.url()),
        &[("DOMESDAY_LOG", LOG)],
        &log,
    );
    let pid = proc.0.id();
    let mut agent = Agent { proc, port, log };
    agent.wait(&mock, "3 accepted requests", |r| r.iter().filter(|r| r.accepted()).count() >= 3);
    // The collector goes away: ticks are spooled.
    mock.set_mode(Mode::Down);
    let spooled = agent.metrics_until("the spool to fill", |b| spool_bytes(b) > 2000.0);
    let spooled_samples = agent.push_metric(&spooled, "spooled");
    // Then the disk fills: a batch that cannot be spooled is dropped and counted; the agent stays up.
    domesday_tests::limit_file_size(pid, Some(1));
    let full = agent.metrics_until("batches dropped on the full disk", |b| agent.push_metric(b, "dropped") > 0.0);
    assert!(agent.log_text().contains("cannot spool a batch; dropped"), "{}", agent.log_text());
    // Space comes back, then the collector: what was spooled is delivered, in time order, once.
    domesday_tests::limit_file_size(pid, None);
    agent.metrics_until("spooling again", |b| agent.push_metric(b, "spooled") > agent.push_metric(&full, "spooled"));
    mock.set_mode(Mode::Accept);
    agent.metrics_until("the spool to drain", |b| spool_bytes(b) == 0.0);
    let body = agent.metrics();
    agent.stop();
    assert!(mock.problems().is_empty(), "{:?}", mock.problems());
    assert_time_order_per_series(&mock);
    let accepted: f64 = mock.received().iter().filter(|r| r.accepted()).map(|r| r.samples() as f64).sum();
    // Counted before the stop, whose last tick is pushed too.
    assert!(accepted >= agent.push_metric(&body, "sent"), "what the agent counts as sent was accepted");
    assert!(agent.push_metric(&body, "sent") > spooled_samples, "the spooled samples were delivered");
    // Every tick the agent logged was delivered once, except those dropped on the full disk.
    let delivered = accepted_ticks(&mock);
    let unique: BTreeSet<i64> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "a tick was delivered twice");
    let logged: BTreeSet<i64> = agent.ticks().into_iter().collect();
    assert!(unique.is_subset(&logged), "delivered ticks the agent never logged");
    assert!(unique.len() < logged.len(), "the full disk dropped some ticks");
}

/// `simulate` with two `--push` URLs splits the hosts over both collectors and, when one answers 503, fails its
/// workers over to the other at once, which then stays current: every request is acknowledged by one of them.
#[test]
fn simulate_splits_hosts_over_its_push_urls_and_fails_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (MockReceiver::start(TOKEN), MockReceiver::start(TOKEN));
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let mut cmd = Command::new(binary("domesday-agent"));
    cmd.args(["simulate", "--hosts", "8", "--push", &a.url(), "--push", &b.url(), "--interval", "300ms"])
        .args(["--duration", "2100ms", "--connections", "4", "--site", "simsite"])
        .arg("--token-file")
        .arg(&token)
        .env("DOMESDAY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let secrets = domesday_tests::Secrets::of(&cmd);
    let child = cmd.spawn().expect("simulate");
    std::thread::sleep(Duration::from_millis(900));
    a.set_mode(Mode::Status(503, "going away".into()));
    let out = domesday_tests::agent_wait(child, &secrets, "agent simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("failed 0 "), "every request was acknowledged by one collector: {stdout}");
    let hosts_of = |rs: &[Received], accepted: bool| -> BTreeSet<String> {
        rs.iter()
            .filter(|r| r.accepted() == accepted)
            .filter_map(|r| r.request.timeseries.first()?.label("host").map(String::from))
            .collect()
    };
    let (got_a, got_b) = (a.received(), b.received());
    // Workers 0 and 2 (hosts 1, 3, 5, 7) start on the first URL, workers 1 and 3 on the second.
    let odd: BTreeSet<String> = ["sim-00001", "sim-00003", "sim-00005", "sim-00007"].map(String::from).into();
    assert_eq!(hosts_of(&got_a, true), odd, "before the 503s, the first URL had its half of the fleet");
    assert_eq!(hosts_of(&got_b, true).len(), 8, "then the second one had every host");
    // Sticky: each of the two workers that were on the first URL met its 503 once, then stayed on the second.
    let refused = got_a.iter().filter(|r| !r.accepted()).count();
    assert!((1..=2).contains(&refused), "{refused} requests answered 503 by the first URL");
    assert!(stdout.contains(&format!("failed over: {refused} requests")), "{stdout}");
}
