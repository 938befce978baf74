//! The whole energy path with the real binaries on 127.0.0.1: an agent on a
//! fixture tree pushes to the collector; the collector is stopped for a while
//! and restarted, then killed with SIGKILL while the agent pushes. Each time,
//! the ledger books exactly the increase of the host counter the agent sent
//! (read from the agent's own log of every tick it queued), no more, no less.

use std::time::{Duration, Instant};

use domesday_tests::{
    Collector, assert_no_secrets, fixture_copy, free_port, get_text, pushed_host_energy, start_agent_logged_with,
};

const TOKEN: &str = "agent-collector-token";

fn uj(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

#[test]
fn the_ledger_books_exactly_what_the_agent_sent_across_collector_restarts_and_a_kill() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let collector = Collector::start(dir.path(), port, TOKEN);
    let (_fx, root) = fixture_copy("intel-2s");
    std::fs::write(root.join("push.token"), TOKEN).expect("token");
    let tables = format!(
        "[push]\nurl = \"{}\"\ntoken_file = {:?}\ninterval = \"200ms\"\nspool_dir = {:?}\n",
        collector.url("/api/v1/write"),
        root.join("push.token").display().to_string(),
        root.join("spool").display().to_string()
    );
    let log = root.join("agent.log");
    let mut agent = start_agent_logged_with(
        &root,
        free_port(),
        "100ms",
        &tables,
        &[("DOMESDAY_LOG", "info,domesday_agent::push=debug")],
        &log,
        &["--site", "caen-1"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    // The collector goes away for a while (clean stop), then comes back.
    let mut c = collector;
    assert!(c.proc.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()));
    drop(c);
    std::thread::sleep(Duration::from_millis(1200));
    let c = Collector::start(dir.path(), port, TOKEN);
    std::thread::sleep(Duration::from_millis(1200));
    // Killed in the middle of ingest.
    let mut proc = c.proc;
    let _ = proc.0.kill();
    let _ = proc.0.wait();
    std::thread::sleep(Duration::from_millis(800));
    let c = Collector::start(dir.path(), port, TOKEN);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()), "agent stops cleanly");
    let log_text = std::fs::read_to_string(&log).expect("log");
    // The agent logged every push at debug level, through refusals and a dead collector: never the token.
    assert_no_secrets(&[("agent run", &log_text)], &[TOKEN]);
    let ticks = pushed_host_energy(&log_text, "psu_input");
    assert!(ticks.len() >= 20, "{} ticks pushed", ticks.len());
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    let from = first.0 / 60_000 * 60_000;
    let to = (last.0 / 60_000 + 1) * 60_000;
    let want = uj(last.1) - uj(first.1);
    assert!(want > 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = get_text(
            &c.url(&format!("/api/v1/energy?site=caen-1&host=test-host&from={from}&to={to}")),
            Duration::from_secs(5),
        );
        let e: serde_json::Value = serde_json::from_str(&body).expect("json");
        // At least every logged tick (a tick whose debug line was lost under load must
        // not fail the test); the energy, which any double booking would change, is exact.
        if e["samples"].as_u64().is_some_and(|n| n >= ticks.len() as u64) {
            assert_eq!(e["energy_microjoules"], want.to_string(), "{e}");
            assert_eq!(e["by_method"]["psu_input"].as_f64().map(|j| (j * 1e6).round() as i64), Some(want), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "ledger holds {} of {} pushed ticks: {e}", e["samples"], ticks.len());
        std::thread::sleep(Duration::from_millis(200));
    }
}
