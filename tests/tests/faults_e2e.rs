//! Faults through the real binaries on 127.0.0.1, each ending with the ledger
//! compared to what was sent, to the microjoule:
//! - the collector stopped and restarted, then killed with SIGKILL, while
//!   `domesday-agent simulate` pushes (nothing acknowledged is lost, nothing
//!   booked twice);
//! - a network partition between an agent and the collector (a TCP proxy that
//!   resets every connection): the agent spools, then replays;
//! - an agent killed with SIGKILL during a partition and started again: its
//!   counter continues and its spool is replayed;
//! - a power-cut image of the agent's spool (the last record cut short):
//!   every complete record is replayed, the torn one skipped, no energy lost;
//! - a live facility meter that disappears and comes back;
//! - the grid carbon API down for more than a day: the fallback factor is used
//!   and marked in the indicators and exported as the current intensity.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_tests::proxy::Proxy;
use domesday_tests::{
    Agent, Collector, Secrets, agent_wait, binary, fixture_copy, free_port, get_text, mock_http, post_write,
    pushed_host_energy, series_value, start_agent_logged_with,
};

const TOKEN: &str = "faults-token-4b1d";
const WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn ms_of(rfc3339: &serde_json::Value) -> Option<i64> {
    rfc3339.as_str()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// `GET /api/v1/energy` for `q` (e.g. `host=srv-1`) of site `caen-1` over whole minutes around `[from, to]`.
fn energy(c: &Collector, q: &str, from: i64, to: i64) -> serde_json::Value {
    let url = c.url(&format!(
        "/api/v1/energy?site=caen-1&{q}&from={}&to={}",
        from.div_euclid(60_000) * 60_000,
        (to.div_euclid(60_000) + 1) * 60_000
    ));
    serde_json::from_str(&get_text(&url, Duration::from_secs(10))).expect("energy json")
}

fn uj(j: f64) -> i64 {
    (j * 1e6).round() as i64
}

#[test]
fn a_simulated_fleet_loses_nothing_acknowledged_across_a_collector_restart_and_a_sigkill() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let collector = Collector::start(dir.path(), port, TOKEN);
    std::fs::write(dir.path().join("push.token"), TOKEN).expect("token");
    let report = dir.path().join("report.csv");
    // Whole seconds, so the schedule below is exact.
    let start_ms = now_ms() / 1000 * 1000 - 60_000;
    let start = jiff::Timestamp::from_millisecond(start_ms).expect("start").to_string();
    let (hosts, interval_ms) = (40usize, 250i64);
    let mut sim = Command::new(binary("domesday-agent"));
    sim.args(["simulate", "--hosts", &hosts.to_string(), "--push", &collector.url("/api/v1/write")])
        .args(["--interval", "250ms", "--duration", "9s", "--connections", "8", "--site", "caen-1"])
        .args(["--timeout", "2s", "--start", &start])
        .arg("--token-file")
        .arg(dir.path().join("push.token"))
        .arg("--report")
        .arg(&report)
        .env("DOMESDAY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let sim_secrets = Secrets::of(&sim);
    let sim = sim.spawn().expect("simulate");
    std::thread::sleep(Duration::from_millis(2500));
    // A clean stop and a start while the fleet pushes.
    let mut c = collector;
    assert!(c.proc.terminate(WAIT).is_some_and(|s| s.success()), "collector stops on SIGTERM");
    drop(c);
    let c = Collector::start(dir.path(), port, TOKEN);
    std::thread::sleep(Duration::from_millis(2500));
    // Killed in the middle of ingest.
    let mut proc = c.proc;
    let _ = proc.0.kill();
    let _ = proc.0.wait();
    let c = Collector::start(dir.path(), port, TOKEN);
    let out = agent_wait(sim, &sim_secrets, "agent simulate");
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{summary}{}", String::from_utf8_lossy(&out.stderr));

    let text = std::fs::read_to_string(&report).expect("report");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap_or_else(|| panic!("column {n}"));
    let (mut failed, mut rows) = (0u64, 0usize);
    for line in lines {
        rows += 1;
        let f: Vec<&str> = line.split(',').collect();
        let host = f[col("host")];
        let i: usize = host.trim_start_matches("sim-").parse::<usize>().expect("host index") - 1;
        failed += f[col("failed")].parse::<u64>().expect("failed");
        let num = |name: &str| f[col(name)].parse::<i64>().unwrap_or_else(|_| panic!("{name} in {line}"));
        let (first_acked, last_acked, last_sent) = (num("first_acked_ms"), num("last_acked_ms"), num("last_sent_ms"));
        let e = energy(&c, &format!("host={host}"), start_ms, last_sent);
        let (first, last) = (ms_of(&e["first_sample"]), ms_of(&e["last_sample"]));
        let (Some(first), Some(last)) = (first, last) else { panic!("{host}: nothing booked: {e}") };
        // Nothing acknowledged is missing; nothing unsent is there.
        assert!(first <= first_acked && last >= last_acked && last <= last_sent, "{line}\n{e}");
        // Push k of host i is stamped start + k × 250 ms + 250 ms × i / hosts, and its
        // counter has advanced k steps: the ledger's energy is exactly the steps between
        // its first and last booked samples, whatever was lost or replayed in between.
        let k = |ts: i64| (ts - start_ms) / interval_ms;
        let step_j = domesday_agent::push::simulate::energy_step(i, Duration::from_millis(interval_ms as u64));
        let want = (k(last) - k(first)) * step_j as i64 * 1_000_000;
        assert_eq!(e["energy_microjoules"], want.to_string(), "{host}: {e}");
        assert!(want >= uj(f[col("acked_increase_joules")].parse::<f64>().expect("acked")), "{line}");
    }
    assert_eq!(rows, hosts);
    assert!(failed > 0, "the restart and the kill hit requests in flight:\n{summary}");
}

/// An agent on the `intel-2s` fixture pushing to `url` every 200 ms with its
/// spool in `<root>/spool`, logging each tick it queues.
fn agent(root: &Path, url: &str, log: &Path, metrics_port: u16) -> Agent {
    std::fs::write(root.join("push.token"), TOKEN).expect("token");
    let tables = format!(
        "[push]\nurl = \"{url}\"\ntoken_file = {:?}\ninterval = \"200ms\"\ntimeout = \"1s\"\nspool_dir = {:?}\n",
        root.join("push.token").display().to_string(),
        root.join("spool").display().to_string()
    );
    start_agent_logged_with(
        root,
        metrics_port,
        "100ms",
        &tables,
        &[("DOMESDAY_LOG", "info,domesday_agent::push=debug")],
        log,
        &["--site", "caen-1"],
    )
}

/// Waits (bounded) until the agent's `/metrics` satisfies `pred`.
fn agent_until(port: u16, what: &str, log: &Path, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = get_text(&format!("http://127.0.0.1:{port}/metrics"), Duration::from_secs(5));
        if pred(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spool_bytes(body: &str) -> f64 {
    series_value(body, "domesday_spool_bytes", &[]).unwrap_or(-1.0)
}

/// Waits (bounded) until the ledger holds `n` samples of `test-host` over the
/// ticks' range, then checks that its energy is the counter's increase.
fn assert_ledger_holds(c: &Collector, ticks: &[(i64, f64)], n: usize) -> serde_json::Value {
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    let deadline = Instant::now() + WAIT;
    loop {
        let e = energy(c, "host=test-host", first.0, last.0);
        if e["samples"].as_u64().is_some_and(|s| s >= n as u64) {
            assert_eq!(e["samples"].as_u64(), Some(n as u64), "{e}");
            assert_eq!(e["energy_microjoules"], (uj(last.1) - uj(first.1)).to_string(), "{e}");
            assert_eq!(ms_of(&e["last_sample"]), Some(last.0), "{e}");
            return e;
        }
        assert!(Instant::now() < deadline, "the ledger holds {} of {n} samples: {e}", e["samples"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The partition tests' set-up: a collector behind a TCP proxy the test cuts and heals, and a copy of the
/// `intel-2s` fixture whose agents ([`agent`]) push through the proxy and serve `/metrics` on `mport`.
struct Partition {
    c: Collector,
    link: Proxy,
    url: String,
    root: PathBuf,
    mport: u16,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Partition {
    fn new() -> Partition {
        let dir = tempfile::tempdir().expect("tmp");
        let c = Collector::start(dir.path(), free_port(), TOKEN);
        let link = Proxy::start(c.port);
        let url = format!("http://127.0.0.1:{}/api/v1/write", link.port());
        let (fx, root) = fixture_copy("intel-2s");
        Partition { c, link, url, root, mport: free_port(), _dirs: (dir, fx) }
    }

    /// An agent pushing through the proxy, its log in `<root>/<log>`.
    fn agent(&self, log: &str) -> (Agent, PathBuf) {
        let log = self.root.join(log);
        (agent(&self.root, &self.url, &log, self.mport), log)
    }

    /// Waits (bounded) until the agent's `/metrics` satisfies `pred`.
    fn until(&self, what: &str, log: &Path, pred: impl Fn(&str) -> bool) {
        agent_until(self.mport, what, log, pred);
    }

    /// Waits until the agent has sent samples.
    fn until_sent(&self, log: &Path) {
        self.until("pushes", log, |b| pushed(b, "sent") > 0.0);
    }

    /// Waits until the agent has spooled several ticks.
    fn until_spooled(&self, log: &Path) {
        self.until("a spool of several ticks", log, |b| pushed(b, "spooled") >= 100.0);
    }

    /// A second agent, after the proxy healed, replaying the first one's spool; stopped cleanly once the spool
    /// is empty. Returns its log.
    fn replay(&self, log: &str) -> String {
        self.link.heal();
        let (mut second, log) = self.agent(log);
        self.until("the old spool replayed", &log, |b| spool_bytes(b) == 0.0 && pushed(b, "sent") > 0.0);
        std::thread::sleep(Duration::from_millis(600));
        assert!(second.terminate(WAIT).is_some_and(|s| s.success()), "agent stops cleanly");
        std::fs::read_to_string(&log).expect("log")
    }
}

/// The agent's `domesday_push_samples_total` of `result` (-1 when absent).
fn pushed(body: &str, result: &str) -> f64 {
    series_value(body, "domesday_push_samples_total", &[&format!("result=\"{result}\"")]).unwrap_or(-1.0)
}

#[test]
fn a_partition_between_agent_and_collector_is_spooled_then_replayed_exactly() {
    let p = Partition::new();
    let (mut a, log) = p.agent("agent.log");
    p.until_sent(&log);
    p.link.partition();
    p.until("the spool to fill during the partition", &log, |b| spool_bytes(b) > 0.0);
    std::thread::sleep(Duration::from_millis(1500));
    p.link.heal();
    p.until("the spool to drain after the partition", &log, |b| spool_bytes(b) == 0.0);
    std::thread::sleep(Duration::from_millis(600));
    assert!(a.terminate(WAIT).is_some_and(|s| s.success()), "agent stops cleanly");
    assert!(p.link.refused() > 0, "the partition refused connections");
    let ticks = pushed_host_energy(&std::fs::read_to_string(&log).expect("log"), "psu_input");
    assert!(ticks.len() >= 10, "{ticks:?}");
    // Every tick once: no tick lost in the partition, none booked twice by the replay.
    assert_ledger_holds(&p.c, &ticks, ticks.len());
}

#[test]
fn an_agent_killed_during_a_partition_keeps_its_counter_and_replays_its_spool() {
    let p = Partition::new();
    let (mut first, log1) = p.agent("first.log");
    p.until_sent(&log1);
    p.link.partition();
    p.until_spooled(&log1);
    // SIGKILL: ticks still queued in memory are lost with the process; what was spooled is not.
    let _ = first.0.kill();
    let _ = first.0.wait();
    let before = pushed_host_energy(&std::fs::read_to_string(&log1).expect("log"), "psu_input");
    let after = pushed_host_energy(&p.replay("second.log"), "psu_input");
    assert!(before.len() >= 3 && after.len() >= 3, "{before:?} {after:?}");
    // Counter continuity: the restarted agent's counter starts at or above the last
    // value the first run queued (persisted before publish), never from zero.
    assert!(after[0].1 >= before[before.len() - 1].1, "{before:?} → {after:?}");
    assert!(after[0].0 > before[before.len() - 1].0);
    let all: Vec<(i64, f64)> = before.iter().chain(after.iter()).copied().collect();
    // The ledger's energy is the counter's increase over both runs: no double count
    // (the replayed spool), no loss (the ticks the kill cut off are carried by the counter).
    let (first_tick, last_tick) = (all[0], all[all.len() - 1]);
    let deadline = Instant::now() + WAIT;
    loop {
        let e = energy(&p.c, "host=test-host", first_tick.0, last_tick.0);
        if ms_of(&e["last_sample"]) == Some(last_tick.0) {
            assert_eq!(e["energy_microjoules"], (uj(last_tick.1) - uj(first_tick.1)).to_string(), "{e}");
            // Every tick of the second run, and every tick of the first that reached the spool.
            let n = e["samples"].as_u64().unwrap_or(0) as usize;
            assert!(n > after.len() && n <= all.len(), "{n} samples for {} ticks: {e}", all.len());
            break;
        }
        assert!(Instant::now() < deadline, "the last tick is not booked: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The spool segments (`*.seg`) under `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spool dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_power_cut_image_of_the_spool_is_replayed_without_losing_a_complete_record() {
    let p = Partition::new();
    p.link.partition();
    let (mut first, log1) = p.agent("first.log");
    p.until_spooled(&log1);
    // A clean stop spools every queued tick: the spool then holds one record per logged tick.
    assert!(first.terminate(WAIT).is_some_and(|s| s.success()), "agent stops cleanly");
    let before = pushed_host_energy(&std::fs::read_to_string(&log1).expect("log"), "psu_input");
    // The power-cut image: the newest record was being written and only part of it reached the disk.
    let segs = segments(&p.root.join("spool"));
    let last = segs.last().expect("a spool segment");
    let len = std::fs::metadata(last).expect("segment").len();
    let f = std::fs::OpenOptions::new().write(true).open(last).expect("open segment");
    f.set_len(len - 7).expect("truncate");
    drop(f);
    let text2 = p.replay("second.log");
    assert!(text2.contains("torn"), "the torn record is reported:\n{text2}");
    let after = pushed_host_energy(&text2, "psu_input");
    let all: Vec<(i64, f64)> = before.iter().chain(after.iter()).copied().collect();
    // Every complete record is booked, the torn one (the first run's last tick) is not,
    // and its energy is not lost: the next booked counter value carries it.
    assert_ledger_holds(&p.c, &all, all.len() - 1);
}

/// A rack PDU (Redfish `PowerDistribution`) whose `EnergyJoules` rises by 1 kWh
/// per read for its first `RISING` reads, then stays.
const RISING: u64 = 4;
const KWH_J: u64 = 3_600_000;

#[test]
fn a_live_meter_that_disappears_is_counted_down_and_its_energy_stays_exact() {
    let dir = tempfile::tempdir().expect("tmp");
    let reads = Arc::new(AtomicU64::new(0));
    let r = reads.clone();
    let pdu = mock_http(move |target| {
        if target == "/redfish/v1/PowerEquipment/RackPDUs/1" {
            return (200, r##"{"@odata.type":"#PowerDistribution.v1_3_0.PowerDistribution","Id":"1","EquipmentType":"RackPDU","Metrics":{"@odata.id":"/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"}}"##.to_string());
        }
        if target == "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics" {
            let n = r.fetch_add(1, Ordering::SeqCst).min(RISING);
            return (
                200,
                format!(
                    r##"{{"@odata.type":"#PowerDistributionMetrics.v1_4_0.PowerDistributionMetrics","EnergyJoules":{{"Reading":{}}}}}"##,
                    100 * KWH_J + n * KWH_J
                ),
            );
        }
        (404, "{}".into())
    });
    let link = Proxy::start(pdu);
    let port = free_port();
    std::fs::write(dir.path().join("t"), TOKEN).expect("token");
    std::fs::write(dir.path().join("pw"), "monitor-pw\n").expect("password");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\n\n[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n\n[[sites.meters]]\nid = \"pdu-a1\"\nrole = \"pdu_out\"\nkind = \"redfish\"\nunit = \"kWh\"\nurl = \"http://127.0.0.1:{}/redfish/v1/PowerEquipment/RackPDUs/1\"\nallow_plain_http = true\nusername = \"monitor\"\npassword_file = {:?}\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            dir.path().join("domesday.db").display().to_string(),
            dir.path().join("t").display().to_string(),
            link.port(),
            dir.path().join("pw").display().to_string(),
        ),
    )
    .expect("config");
    let start = now_ms();
    let c = Collector::spawn(dir.path(), port, &config);
    let deadline = Instant::now() + WAIT;
    while reads.load(Ordering::SeqCst) < RISING + 2 {
        assert!(Instant::now() < deadline, "the PDU was read {} times", reads.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(100));
    }
    let want = (RISING * KWH_J * 1_000_000).to_string();
    let booked = |c: &Collector| energy(c, "meter=pdu-a1", start, now_ms());
    let deadline = Instant::now() + WAIT;
    while booked(&c)["energy_microjoules"] != want.as_str() {
        assert!(Instant::now() < deadline, "{}", booked(&c));
        std::thread::sleep(Duration::from_millis(200));
    }
    // The meter disappears from the network.
    link.partition();
    let metrics = |c: &Collector| get_text(&c.url("/metrics"), Duration::from_secs(5));
    let failures = |m: &str| -> f64 {
        ["io", "timeout"]
            .iter()
            .filter_map(|r| {
                series_value(m, "domesday_meter_read_errors_total", &["meter=\"pdu-a1\"", &format!("reason=\"{r}\"")])
            })
            .sum()
    };
    let last_reading =
        |m: &str| series_value(m, "domesday_meter_last_reading_timestamp_seconds", &["meter=\"pdu-a1\""]);
    let deadline = Instant::now() + WAIT;
    let m = loop {
        let m = metrics(&c);
        if failures(&m) >= 2.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "no read failure counted:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let frozen = last_reading(&m);
    assert!(frozen.is_some(), "{m}");
    std::thread::sleep(Duration::from_millis(2500));
    let m2 = metrics(&c);
    // Retried with backoff, never dropped from the counters.
    assert!(failures(&m2) >= failures(&m), "{m2}");
    assert_eq!(last_reading(&m2), frozen, "no reading while the meter is gone");
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");
    assert_eq!(booked(&c)["energy_microjoules"], want.as_str(), "nothing invented while it was gone");
    // It comes back: readings resume, the energy stays exact (its register did not move).
    let served = reads.load(Ordering::SeqCst);
    link.heal();
    let deadline = Instant::now() + WAIT;
    while reads.load(Ordering::SeqCst) < served + 2 {
        assert!(Instant::now() < deadline, "the PDU is not read again");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert!(last_reading(&metrics(&c)) > frozen);
    assert_eq!(booked(&c)["energy_microjoules"], want.as_str());
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

#[test]
fn the_grid_api_down_for_a_day_gives_the_fallback_factor_marked_in_the_indicators() {
    let dir = tempfile::tempdir().expect("tmp");
    let now = now_ms();
    // The API answers for the day before yesterday (UTC) and fails from yesterday 00:00 on.
    let down_from = now.div_euclid(DAY) * DAY - DAY;
    let calls = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (n, bad) = (calls.clone(), failed.clone());
    let rte = mock_http(move |target| {
        n.fetch_add(1, Ordering::SeqCst);
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let where_ = query.split('&').find_map(|kv| kv.strip_prefix("where=")).map(domesday_tests::url_decode);
        let dates: Vec<i64> = where_
            .unwrap_or_default()
            .split("date'")
            .skip(1)
            .filter_map(|p| p.split('\'').next())
            .filter_map(|d| d.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .collect();
        let [from, to, ..] = dates.as_slice() else { return (400, "{}".into()) };
        if *from >= down_from {
            bad.fetch_add(1, Ordering::SeqCst);
            return (503, "{\"error\":\"maintenance\"}".into());
        }
        let offset: usize =
            query.split('&').find_map(|kv| kv.strip_prefix("offset=")).and_then(|v| v.parse().ok()).unwrap_or(0);
        // 40 g/kWh in every quarter hour.
        let rows: Vec<String> = (0..)
            .map(|i| from + i * 900_000)
            .take_while(|t| t < to)
            .map(|t| {
                format!(
                    "{{\"date_heure\":\"{}\",\"taux_co2\":40}}",
                    jiff::Timestamp::from_millisecond(t).map(|x| x.to_string()).unwrap_or_default()
                )
            })
            .collect();
        let page: Vec<String> = rows.iter().skip(offset).take(100).cloned().collect();
        (200, format!("{{\"total_count\":{},\"results\":[{}]}}", rows.len(), page.join(",")))
    });
    let port = free_port();
    std::fs::write(dir.path().join("t"), TOKEN).expect("token");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\ngauges_refresh = \"1s\"\n\n[carbon]\nsource = \"rte\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 50.0\nbasis = \"direct\"\nbase_url = \"http://127.0.0.1:{rte}\"\ntimeout = \"2s\"\n\n[[sites]]\nid = \"caen-1\"\ntimezone = \"UTC\"\ntoken_file = {:?}\n\n[[sites.meters]]\nid = \"edf\"\nrole = \"utility_in\"\nkind = \"csv\"\nunit = \"kWh\"\n",
            dir.path().join("domesday.db").display().to_string(),
            dir.path().join("t").display().to_string(),
        ),
    )
    .expect("config");
    let c = Collector::spawn(dir.path(), port, &config);
    // One hour the API answered for (the last of the day before yesterday) and one it did not
    // (the first of yesterday): 0.5 kWh of IT and 0.6 kWh from the grid in each.
    let live_h = down_from - HOUR;
    let down_h = down_from;
    let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default();
    let points: Vec<(f64, i64)> = (0..=120).map(|m| (500.0 * 60.0 * m as f64, live_h + m * 60_000)).collect();
    let body = domesday_model::remote_write::encode(&domesday_model::remote_write::WriteRequest {
        timeseries: vec![domesday_tests::host_energy_series("caen-1", "srv-a", "psu_input", &points)],
    });
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
    let mut csv = String::from("start,end,meter,value\n");
    for h in [live_h, down_h] {
        csv.push_str(&format!("{},{},edf,0.6\n", ts(h), ts(h + HOUR)));
    }
    c.upload_readings("caen-1", TOKEN, csv);
    let cue = |h: i64| -> serde_json::Value {
        let body = get_text(
            &c.url(&format!("/api/v1/sites/caen-1/indicators?from={}&to={}&step=1h", ts(h), ts(h + HOUR))),
            Duration::from_secs(30),
        );
        let r: serde_json::Value = serde_json::from_str(&body).expect("json");
        r["periods"][0]["indicators"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i["name"] == "cue"))
            .cloned()
            .unwrap_or_else(|| panic!("no cue: {r}"))
    };
    let close = |v: &serde_json::Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9);
    let live = cue(live_h);
    assert_eq!(live["carbon_fallback"], false, "{live}");
    assert!(close(&live["value"], 0.6 * 40.0 / 1000.0 / 0.5), "{live}");
    // The failed day is charged at the fallback factor, and says so.
    let down = cue(down_h);
    assert_eq!(down["carbon_fallback"], true, "{down}");
    assert!(close(&down["value"], 0.6 * 50.0 / 1000.0 / 0.5), "{down}");
    assert!(failed.load(Ordering::SeqCst) >= 1);
    // The current intensity on /metrics is the fallback's while the API stays down.
    let deadline = Instant::now() + WAIT;
    loop {
        let m = get_text(&c.url("/metrics"), Duration::from_secs(5));
        let v = series_value(&m, "domesday_grid_carbon_intensity_grams_per_kwh", &["grid_zone=\"FR\""]);
        if v == Some(50.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{v:?}\n{m}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");
}
