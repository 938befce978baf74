//! Graceful shutdown on SIGTERM through the real binaries:
//! - the agent takes a last sample and pushes it, so with a push interval of an
//!   hour the collector's ledger still has the energy up to the stop;
//! - with the collector down, that last sample waits in the spool and is
//!   delivered at the next start;
//! - the collector finishes a request in flight, checkpoints its ledger and
//!   exits within 10 s, even when a client never finishes its request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::{
    Agent, Collector, Proc, fixture_copy, free_port, host_energy, host_energy_series, pushed_host_energy,
    start_agent_logged_with,
};

const TOKEN: &str = "shutdown-token";

fn uj(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// An agent on `root` pushing to `url` once an hour, its push log in `log`.
fn hourly_agent(root: &Path, url: &str, log: &Path) -> Agent {
    std::fs::write(root.join("push.token"), TOKEN).expect("token");
    let tables = format!(
        "[push]\nurl = \"{url}\"\ntoken_file = {:?}\ninterval = \"1h\"\nspool_dir = {:?}\n",
        root.join("push.token").display().to_string(),
        root.join("spool").display().to_string()
    );
    start_agent_logged_with(
        root,
        free_port(),
        "100ms",
        &tables,
        &[("DOMESDAY_LOG", "info,domesday_agent::push=debug")],
        log,
        &["--site", "caen-1"],
    )
}

/// `GET /api/v1/energy` of `test-host` around `ticks`, once it holds `n` samples (bounded wait).
fn ledger_with(c: &Collector, ticks: &[(i64, f64)], n: u64) -> serde_json::Value {
    let from = ticks[0].0.div_euclid(60_000) * 60_000;
    let to = (ticks[ticks.len() - 1].0.div_euclid(60_000) + 1) * 60_000;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = host_energy(c, "test-host", from, to);
        if e["samples"].as_u64() >= Some(n) || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

#[test]
fn on_sigterm_the_agent_pushes_a_last_sample_whatever_the_push_interval() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let (_fx, root) = fixture_copy("intel-2s");
    let log = root.join("agent.log");
    let mut agent = hourly_agent(&root, &c.url("/api/v1/write"), &log);
    // The push at start, then an hour until the next one.
    let first = ledger_with(&c, &[(now_ms() - 60_000, 0.0), (now_ms() + 60_000, 0.0)], 1);
    assert_eq!(first["samples"], 1, "{first}");
    std::thread::sleep(Duration::from_millis(1500));
    let stop = now_ms();
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()), "the agent stops cleanly");
    let ticks = pushed_host_energy(&std::fs::read_to_string(&log).expect("log"), "psu_input");
    assert_eq!(ticks.len(), 2, "the start's push and the last one: {ticks:?}");
    let (t0, t1) = (ticks[0], ticks[1]);
    assert!(t1.0 >= stop, "the last sample is taken at the stop ({} < {stop})", t1.0);
    assert!(uj(t1.1) > uj(t0.1), "energy was used meanwhile: {ticks:?}");
    let e = ledger_with(&c, &ticks, 2);
    assert_eq!(e["samples"], 2, "{e}");
    assert_eq!(e["energy_microjoules"], (uj(t1.1) - uj(t0.1)).to_string(), "the energy up to the stop: {e}");
}

#[test]
fn with_the_collector_down_the_last_sample_is_spooled_and_delivered_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut c = Collector::start(dir.path(), port, TOKEN);
    let (_fx, root) = fixture_copy("intel-2s");
    let url = c.url("/api/v1/write");
    let log1 = root.join("agent-1.log");
    let mut agent = hourly_agent(&root, &url, &log1);
    let first = ledger_with(&c, &[(now_ms() - 60_000, 0.0), (now_ms() + 60_000, 0.0)], 1);
    assert_eq!(first["samples"], 1, "{first}");
    assert!(c.proc.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()), "the collector stops");
    drop(c);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(spool_bytes(&root.join("spool")), 0, "nothing spooled before the stop");
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()), "the agent stops cleanly");
    assert!(spool_bytes(&root.join("spool")) > 0, "the last sample waits in the spool");
    let run1 = pushed_host_energy(&std::fs::read_to_string(&log1).expect("log"), "psu_input");
    assert_eq!(run1.len(), 2, "{run1:?}");

    // Both come back: the spool is replayed first, then the new run's own push.
    let c = Collector::start(dir.path(), port, TOKEN);
    let log2 = root.join("agent-2.log");
    let mut agent = hourly_agent(&root, &url, &log2);
    std::thread::sleep(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut run2 = Vec::new();
    while run2.is_empty() && Instant::now() < deadline {
        run2 = pushed_host_energy(&std::fs::read_to_string(&log2).unwrap_or_default(), "psu_input");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ticks: Vec<(i64, f64)> = run1.iter().chain(&run2).copied().collect();
    let e = ledger_with(&c, &ticks, 3);
    assert_eq!(e["samples"], 3, "the first run's last sample is in the ledger: {e}");
    let want = uj(ticks[ticks.len() - 1].1) - uj(ticks[0].1);
    assert_eq!(e["energy_microjoules"], want.to_string(), "{e}");
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()));
}

fn sigterm(p: &Proc) {
    let _ = Command::new("kill").arg("-TERM").arg(p.0.id().to_string()).status();
}

/// The head of a remote_write request (its body announced, not sent).
fn request_head(port: u16, len: usize) -> String {
    format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n\
         X-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {len}\r\n\r\n"
    )
}

fn wait_exit(p: &mut Proc, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = p.0.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn on_sigterm_the_collector_finishes_a_request_in_flight_checkpoints_and_exits_within_ten_seconds() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut c = Collector::start(dir.path(), port, TOKEN);
    let t = now_ms().div_euclid(60_000) * 60_000 - 120_000;
    let body = encode(&WriteRequest {
        timeseries: vec![host_energy_series("caen-1", "srv-1", "psu_input", &[(100.0, t), (160.0, t + 60_000)])],
    });
    // Half the body sent: the request is in flight when the signal comes.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    conn.write_all(request_head(port, body.len()).as_bytes()).expect("head");
    conn.write_all(&body[..body.len() / 2]).expect("first half");
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&c.proc);
    std::thread::sleep(Duration::from_millis(500));
    conn.write_all(&body[body.len() / 2..]).expect("second half");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 204"), "the request in flight is answered: {answer}");
    let status = wait_exit(&mut c.proc, Duration::from_secs(11));
    assert!(status.is_some_and(|s| s.success()), "exits cleanly within 10 s: {status:?}");
    // Checkpointed: the write-ahead log is empty (or gone), its content in the database. (PostgreSQL keeps its
    // own write-ahead log: what was committed is read back below on either store.)
    if !domesday_tests::store::on_postgres() {
        let wal = dir.path().join("domesday.db-wal");
        assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0, "{}", wal.display());
    }
    let c = Collector::start(dir.path(), port, TOKEN);
    assert_eq!(host_energy(&c, "srv-1", t, t + 120_000)["energy_joules"], 60.0);
    drop(c);

    // A client that never finishes its request does not hold the collector past 10 s.
    let mut c = Collector::start(dir.path(), port, TOKEN);
    let mut hung = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    hung.write_all(request_head(port, body.len()).as_bytes()).expect("head");
    hung.write_all(&body[..1]).expect("one byte");
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&c.proc);
    let status = wait_exit(&mut c.proc, Duration::from_secs(11));
    assert!(status.is_some_and(|s| s.success()), "exits within 10 s despite the hung client: {status:?}");
}
