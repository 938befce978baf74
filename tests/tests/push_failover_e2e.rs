//! Push failover with the real binaries on 127.0.0.1: an agent with two
//! collectors in `[push] url` (each with its own ledger) pushes to the first;
//! when it stops, to the second; it stays there when the first comes back
//! (sticky), and goes back to the first only when the second stops. While both
//! are away it spools, and replays once one is back. Every tick the agent sent
//! is booked by exactly one of the two ledgers, none lost, none twice.

use std::time::{Duration, Instant};

use domesday_tests::{Collector, fixture_copy, free_port, get_text, pushed_host_energy, series_value};
use domesday_tests::{host_energy, push_table, start_pushing_agent};

const TOKEN: &str = "failover-token";

fn uj(v: f64) -> i64 {
    (v * 1e6).round() as i64
}

/// (samples, energy µJ) that `c`'s ledger holds for the agent's host over `[from, to)`.
fn booked(c: &Collector, from: i64, to: i64) -> (u64, i64) {
    let e = host_energy(c, "test-host", from, to);
    let n = e["samples"].as_u64().unwrap_or(0);
    let uj = e["energy_microjoules"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    (n, uj)
}

fn whole_range() -> (i64, i64) {
    let now = domesday_tests::now_minute_ms();
    (now - 10 * 60_000, now + 10 * 60_000)
}

/// Waits (bounded) until `c`'s ledger holds more than `than` samples.
fn wait_samples_above(c: &Collector, than: u64, what: &str) -> u64 {
    let (from, to) = whole_range();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (n, _) = booked(c, from, to);
        if n > than {
            return n;
        }
        assert!(Instant::now() < deadline, "{what}: still {n} samples");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until the agent's `/metrics` (rendered each tick) shows
/// `domesday_push_url_index` = `want`.
fn wait_url_index(agent_port: u16, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(5));
        let got = series_value(&m, "domesday_push_url_index", &[]);
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "domesday_push_url_index is {got:?}, not {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_fails_over_to_the_next_collector_sticks_to_it_and_loses_or_doubles_nothing() {
    let (da, db) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let (pa, pb) = (free_port(), free_port());
    let a = Collector::start(da.path(), pa, TOKEN);
    let b = Collector::start(db.path(), pb, TOKEN);
    let (_fx, root) = fixture_copy("intel-2s");
    let urls = format!("[{:?}, {:?}]", a.url("/api/v1/write"), b.url("/api/v1/write"));
    let tables = push_table(&root, TOKEN, &urls, "interval = \"200ms\"\ntimeout = \"2s\"\n");
    let log = root.join("agent.log");
    let agent_port = free_port();
    let mut agent = start_pushing_agent(&root, agent_port, &tables, &log);
    let (from, to) = whole_range();

    // 1. The first URL takes the data; the second gets nothing.
    wait_samples_above(&a, 3, "the first collector takes the agent's pushes");
    assert_eq!(booked(&b, from, to).0, 0, "nothing goes to the second while the first answers");

    // 2. The first stops: the agent fails over to the second.
    let mut a = a;
    assert!(a.proc.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()));
    drop(a);
    wait_samples_above(&b, 3, "the second collector takes over");

    // 3. The first comes back; the agent stays on the second (sticky).
    let a = Collector::start(da.path(), pa, TOKEN);
    let a_back = booked(&a, from, to).0;
    let b_then = booked(&b, from, to).0;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(booked(&a, from, to).0, a_back, "the agent stays on the collector that answered");
    assert!(booked(&b, from, to).0 > b_then, "the second keeps taking the pushes");
    wait_url_index(agent_port, 1.0);

    // 4. The second stops: back to the first.
    let mut b = b;
    assert!(b.proc.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()));
    let a_now = wait_samples_above(&a, a_back, "back to the first when the second stops");
    wait_url_index(agent_port, 0.0);

    // 5. Both away (the first killed mid-push): the agent spools, then replays.
    let mut proc = a.proc;
    let _ = proc.0.kill();
    let _ = proc.0.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(5));
        if series_value(&m, "domesday_spool_bytes", &[]).is_some_and(|v| v > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent spools while both are away:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(600));
    let a = Collector::start(da.path(), pa, TOKEN);
    wait_samples_above(&a, a_now, "the spool replays to the first once it is back");
    std::thread::sleep(Duration::from_millis(600));
    assert!(agent.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()), "agent stops cleanly");
    let b = Collector::start(db.path(), pb, TOKEN);

    // Every tick the agent sent is in exactly one ledger.
    let ticks = pushed_host_energy(&std::fs::read_to_string(&log).expect("log"), "psu_input");
    let n = ticks.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ((sa, ea), (sb, eb)) = loop {
        let (ra, rb) = (booked(&a, from, to), booked(&b, from, to));
        if ra.0 + rb.0 >= n {
            break (ra, rb);
        }
        assert!(Instant::now() < deadline, "ledgers hold {} + {} of {n} ticks", ra.0, rb.0);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sa + sb, n, "each tick booked once across the two ledgers ({sa} + {sb})");
    // The first ledger holds the first and last ticks, so its in-order series spans
    // the whole counter increase; the second holds one unbroken stretch of ticks,
    // and books exactly that stretch's increase.
    let total = uj(ticks[ticks.len() - 1].1) - uj(ticks[0].1);
    assert_eq!(ea, total, "the first ledger books its series' increase");
    let sb = sb as usize;
    assert!(sb >= 4 && sb < ticks.len());
    let stretch = (0..=ticks.len() - sb).find(|&j| uj(ticks[j + sb - 1].1) - uj(ticks[j].1) == eb);
    assert!(stretch.is_some_and(|j| j > 0), "the second ledger's {eb} µJ is no stretch of {sb} ticks");
    let log = std::fs::read_to_string(&log).expect("log");
    assert_eq!(log.matches("push: failed over to the next collector").count(), 2, "{log}");
}
