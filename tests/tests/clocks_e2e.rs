//! Clocks through the real binaries (docs/clocks.md):
//! - the agent exports its clock's synchronisation state, read from a fixture
//!   standing for the kernel, in both states, and a failed read as a sensor status;
//! - the collector quarantines samples stamped beyond `max_future` (kept in the
//!   ledger's `quarantine` table, counted, never booked) while booking the rest
//!   of the request, and exports the sender's skew; a real agent whose clock is
//!   3 h ahead (under libfaketime) is quarantined and its skew shown;
//! - a spool replay of hours-old samples is booked and shows no skew.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use domesday_tests::{
    Agent, Collector, agent_command, binary, fixture_copy, free_port, get_text, host_energy, host_energy_series,
    post_write, push_table, series_value, spawn_agent, write_agent_config,
};

const TOKEN: &str = "clock-token";
const HOUR: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Polls `url` until `pred` holds on its body, at most `within`; returns the last body.
fn wait_for(url: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = get_text(url, Duration::from_secs(5));
        if pred(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_agent_with_clock(root: &Path, port: u16, clock: &Path) -> Agent {
    let config = write_agent_config(root, "");
    let log = root.join("agent.log");
    spawn_agent(agent_command(root, &config, port, "200ms", &[]).env("DOMESDAY_CLOCK_FIXTURE", clock), &log)
}

#[test]
fn the_agent_exports_its_clock_state_in_both_states_and_a_failed_read_as_a_sensor_status() {
    let (_tmp, root) = fixture_copy("vm-minimal");
    let clock = root.join("clock");
    // chrony at work: STA_PLL | STA_NANO, 12 ms, TIME_OK.
    std::fs::write(&clock, "status=0x2001 maxerror=12000 state=0\n").expect("fixture");
    let port = free_port();
    let mut agent = start_agent_with_clock(&root, port, &clock);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let sync = |body: &str| series_value(body, "domesday_clock_synchronized", &[]);
    let max_error = |body: &str| series_value(body, "domesday_clock_max_error_seconds", &[]);
    let up = |body: &str| series_value(body, "domesday_sensor_up", &["source=\"clock\""]);

    let body = wait_for(&url, Duration::from_secs(10), |b| sync(b).is_some());
    assert_eq!((sync(&body), max_error(&body), up(&body)), (Some(1.0), Some(0.012), Some(1.0)), "{body}");

    // No NTP daemon: what a kernel boots with.
    std::fs::write(&clock, "status=0x40 maxerror=16000000 state=5\n").expect("fixture");
    let body = wait_for(&url, Duration::from_secs(10), |b| sync(b) == Some(0.0));
    assert_eq!((sync(&body), max_error(&body), up(&body)), (Some(0.0), Some(16.0), Some(1.0)), "{body}");

    // The state cannot be read: a sensor status, the series absent, the agent serving on.
    std::fs::write(&clock, "garbage\n").expect("fixture");
    let body = wait_for(&url, Duration::from_secs(10), |b| up(b) == Some(0.0));
    assert_eq!(up(&body), Some(0.0), "{body}");
    assert_eq!((sync(&body), max_error(&body)), (None, None), "{body}");
    let errors = series_value(&body, "domesday_sensor_errors_total", &["source=\"clock\"", "reason=\"parse\""]);
    assert!(errors.is_some_and(|n| n >= 1.0), "{body}");

    std::fs::write(&clock, "status=0x2001 maxerror=3000 state=0\n").expect("fixture");
    let body = wait_for(&url, Duration::from_secs(10), |b| sync(b) == Some(1.0));
    assert_eq!((max_error(&body), up(&body)), (Some(0.003), Some(1.0)), "{body}");
    assert!(agent.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

fn info_series(host: &str, ts: i64) -> TimeSeries {
    let labels = [("__name__", "domesday_host_info"), ("host", host), ("machine_id", host), ("site", "caen-1")];
    TimeSeries {
        labels: labels.iter().map(|(n, v)| Label { name: (*n).into(), value: (*v).into() }).collect(),
        samples: vec![Sample { value: 1.0, timestamp: ts }],
    }
}

/// The ledger's quarantine table, read as an operator would (with `psql` on PostgreSQL).
fn quarantine_rows(db: &Path) -> Vec<(String, i64, Option<f64>, String)> {
    if domesday_tests::store::on_postgres() {
        let mut client = domesday_tests::store::database_for(db).client();
        let rows =
            client.query("SELECT host, ts_ms, value, reason FROM quarantine ORDER BY ts_ms", &[]).expect("query");
        return rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    }
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let mut stmt = conn.prepare("SELECT host, ts_ms, value, reason FROM quarantine ORDER BY ts_ms").expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn a_sender_hours_ahead_is_quarantined_and_counted_the_rest_booked_and_its_skew_exported() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let c = Collector::start(dir.path(), port, TOKEN);
    let write = c.url("/api/v1/write");
    // A relay (a Prometheus) pushing two hosts: `ahead` has a clock 3 h ahead, `right` is on time.
    // Three requests, a live pace apart.
    let mut ahead_ts = Vec::new();
    let mut right_ts = Vec::new();
    for k in 0..3 {
        let now = now_ms();
        let (a, r) = (now + 3 * HOUR, now);
        ahead_ts.push(a);
        right_ts.push(r);
        let body = encode(&WriteRequest {
            timeseries: vec![
                host_energy_series("caen-1", "ahead", "psu_input", &[(1000.0 + 100.0 * k as f64, a)]),
                info_series("ahead", a),
                host_energy_series("caen-1", "right", "psu_input", &[(5000.0 + 250.0 * k as f64, r)]),
                info_series("right", r),
            ],
        });
        assert_eq!(post_write(&write, Some(TOKEN), body).map(|r| r.0), Ok(204), "the request is accepted");
        std::thread::sleep(Duration::from_millis(700));
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    let m = |name: &str, needles: &[&str]| series_value(&metrics, name, needles);
    assert_eq!(m("domesday_ingest_rejected_total", &["reason=\"future\""]), Some(3.0), "{metrics}");
    assert_eq!(m("domesday_ingest_samples_total", &["result=\"quarantined\""]), Some(3.0), "{metrics}");
    assert_eq!(m("domesday_ingest_samples_total", &["result=\"booked\""]), Some(3.0), "{metrics}");
    assert_eq!(m("domesday_ingest_samples_total", &["result=\"suspect\""]), None, "{metrics}");
    let skew_ahead = m("domesday_host_clock_skew_seconds", &["host=\"ahead\""]).expect("skew of ahead");
    // A lower bound of the offset, short of it by the delivery delay (well under a minute on loopback).
    assert!((3.0 * 3600.0 - 60.0..=3.0 * 3600.0).contains(&skew_ahead), "{skew_ahead}\n{metrics}");
    let skew_right = m("domesday_host_clock_skew_seconds", &["host=\"right\""]).expect("skew of right");
    assert!((-60.0..=0.0).contains(&skew_right), "{skew_right}");

    // The on-time host's energy is booked; nothing of the host ahead, in any hour up to its stamps.
    let from = (right_ts[0] - HOUR).div_euclid(60_000) * 60_000;
    let to = (ahead_ts[2] + HOUR).div_euclid(60_000) * 60_000;
    let right = host_energy(&c, "right", from, to);
    assert_eq!(right["energy_joules"], 500.0, "{right}");
    let ahead = host_energy(&c, "ahead", from, to);
    assert_eq!(ahead["energy_joules"], 0.0, "{ahead}");

    // Kept aside, as sent, for an operator to inspect.
    let rows = quarantine_rows(&dir.path().join("domesday.db"));
    let want: Vec<_> = ahead_ts
        .iter()
        .enumerate()
        .map(|(k, t)| ("ahead".to_string(), *t, Some(1000.0 + 100.0 * k as f64), "future".to_string()))
        .collect();
    assert_eq!(rows, want);
}

#[test]
fn a_spool_replay_of_hours_old_samples_is_booked_and_shows_no_skew() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    // The collector comes back after a two-hour outage: the agent's spool holds 480 pushes (15 s apart).
    let c = Collector::start(dir.path(), port, TOKEN);
    let write = c.url("/api/v1/write");
    let back = now_ms();
    let start = back - 2 * HOUR;
    let records = 480i64;
    for k in 0..records {
        let t = start + k * 15_000;
        let body = encode(&WriteRequest {
            timeseries: vec![
                host_energy_series("caen-1", "h", "psu_input", &[(10.0 * k as f64, t)]),
                info_series("h", t),
            ],
        });
        assert_eq!(post_write(&write, Some(TOKEN), body).map(|r| r.0), Ok(204));
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_host_clock_skew_seconds", &["host=\"h\""]), None, "{metrics}");
    assert_eq!(series_value(&metrics, "domesday_ingest_rejected_total", &["reason=\"future\""]), None);
    // Live again: two pushes a pace apart; the skew is the live one's, near zero.
    for k in 0..2 {
        let t = now_ms();
        let body = encode(&WriteRequest {
            timeseries: vec![host_energy_series("caen-1", "h", "psu_input", &[(10.0 * (records + k) as f64, t)])],
        });
        assert_eq!(post_write(&write, Some(TOKEN), body).map(|r| r.0), Ok(204));
        std::thread::sleep(Duration::from_millis(700));
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    let skew = series_value(&metrics, "domesday_host_clock_skew_seconds", &["host=\"h\""]).expect("skew");
    assert!((-60.0..=0.0).contains(&skew), "a replay is not skew: {skew}\n{metrics}");
    // Every replayed sample is booked: the energy of the whole outage is in the ledger.
    let from = start.div_euclid(60_000) * 60_000;
    let to = (now_ms() + 120_000).div_euclid(60_000) * 60_000;
    let e = host_energy(&c, "h", from, to);
    assert_eq!(e["energy_joules"], 10.0 * (records + 1) as f64, "{e}");
    assert!(quarantine_rows(&dir.path().join("domesday.db")).is_empty());
}

/// libfaketime (Debian package `faketime`, which the test command installs); its absence fails the test.
fn libfaketime() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
        .expect("libfaketime is required (apt-get install faketime)")
}

#[test]
fn a_real_agent_three_hours_ahead_is_quarantined_and_its_skew_exported() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let (_fx, root) = fixture_copy("intel-2s");
    let tables = push_table(&root, TOKEN, &format!("{:?}", c.url("/api/v1/write")), "interval = \"500ms\"\n");
    let config = write_agent_config(&root, &tables);
    let port = free_port();
    // libfaketime moves the agent's wall clock 3 hours ahead (not the monotonic clock,
    // on which the kernel times its waits).
    let mut agent = spawn_agent(
        Command::new(binary("domesday-agent"))
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME", "+3h")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--site", "caen-1", "--interval", "100ms", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--sysfs-root")
            .arg(root.join("sys"))
            .arg("--procfs-root")
            .arg(root.join("proc"))
            .env_remove("DOMESDAY_PUSH_TOKEN"),
        &root.join("agent.log"),
    );
    let skew = |body: &str| series_value(body, "domesday_host_clock_skew_seconds", &["host=\"test-host\""]);
    let metrics = wait_for(&c.url("/metrics"), Duration::from_secs(20), |b| skew(b).is_some());
    let s = skew(&metrics).expect("skew of the agent");
    assert!((3.0 * 3600.0 - 60.0..=3.0 * 3600.0).contains(&s), "{s}\n{metrics}");
    let quarantined = series_value(&metrics, "domesday_ingest_samples_total", &["result=\"quarantined\""]);
    assert!(quarantined.is_some_and(|n| n >= 2.0), "{metrics}");
    let booked = series_value(&metrics, "domesday_ingest_samples_total", &["result=\"booked\""]);
    assert_eq!(booked.unwrap_or(0.0), 0.0, "{metrics}");
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()), "the agent stops cleanly");
    // Every host energy sample it sent is kept aside, stamped about 3 h ahead; none is booked.
    let rows = quarantine_rows(&dir.path().join("domesday.db"));
    let now = now_ms();
    assert!(rows.len() >= 2, "{rows:?}");
    assert!(
        rows.iter().all(|(h, ts, v, r)| h == "test-host"
            && (now + 2 * HOUR..now + 4 * HOUR).contains(ts)
            && v.is_some()
            && r == "future"),
        "{rows:?}"
    );
    let e = host_energy(
        &c,
        "test-host",
        (now - HOUR).div_euclid(60_000) * 60_000,
        (now + 4 * HOUR).div_euclid(60_000) * 60_000,
    );
    assert_eq!(e["samples"], 0, "{e}");
}
