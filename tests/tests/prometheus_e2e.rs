//! A real Prometheus (Debian's package) scrapes a real agent on a fixture tree
//! and remote-writes to the real collector, as the README tells operators to
//! set it up: the collector accepts Prometheus' requests (job/instance labels do
//! not split series) and books the agent's host energy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_tests::{Collector, Proc, fixture_copy, free_port, get_text, series_value, start_agent};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

const TOKEN: &str = "prometheus-sender-token";

fn prometheus() -> std::path::PathBuf {
    let p = std::path::PathBuf::from("/usr/bin/prometheus");
    assert!(p.exists(), "prometheus not found: install Debian's `prometheus` package (./test.sh does)");
    p
}

#[test]
fn prometheus_remote_write_is_booked() {
    let dir = tempfile::tempdir().expect("tmp");
    let collector = Collector::start(dir.path(), free_port(), TOKEN);
    let (_fx, root) = fixture_copy("intel-2s");
    let agent_port = free_port();
    let _agent = start_agent(&root, agent_port, "500ms", &["--site", "caen-1"]);
    get_text(&format!("http://127.0.0.1:{agent_port}/metrics"), Duration::from_secs(20));
    std::fs::write(dir.path().join("prom.token"), TOKEN).expect("token");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  external_labels:\n    site: caen-1\n\
             scrape_configs:\n  - job_name: domesday-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n\
             remote_write:\n  - url: {}\n    authorization:\n      credentials_file: {}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
            collector.url("/api/v1/write"),
            dir.path().join("prom.token").display()
        ),
    )
    .expect("prometheus.yml");
    let prom_port = free_port();
    let _prom = Proc(
        Command::new(prometheus())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus"),
    );
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0) / 60_000
        * 60_000
        - 60_000;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let to = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0) / 60_000
            * 60_000
            + 120_000;
        let body = get_text(
            &collector.url(&format!("/api/v1/energy?site=caen-1&host=test-host&from={since}&to={to}")),
            Duration::from_secs(5),
        );
        let e: serde_json::Value = serde_json::from_str(&body).expect("json");
        if e["samples"].as_u64().unwrap_or(0) >= 3 && e["energy_joules"].as_f64().unwrap_or(0.0) > 0.0 {
            // The intel-2s PSUs draw 312 W: booked energy is measured, by psu_input.
            assert!(e["by_method"]["psu_input"].as_f64().unwrap_or(0.0) > 0.0, "{e}");
            assert_eq!(e["estimated_joules"], 0.0, "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no energy booked from Prometheus within 90 s: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let metrics = get_text(&collector.url("/metrics"), Duration::from_secs(5));
    assert!(
        series_value(&metrics, "domesday_ingest_requests_total", &["code=\"204\""]).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert_eq!(series_value(&metrics, "domesday_ingest_requests_total", &["code=\"400\""]), None, "{metrics}");
    assert!(series_value(&metrics, "domesday_ingest_samples_total", &["result=\"not_booked\""]).unwrap_or(0.0) > 0.0);
}

/// Starts Prometheus scraping `agent_port` every second (no remote_write).
fn scraping_prometheus(dir: &std::path::Path, agent_port: u16) -> (Proc, u16) {
    let config = dir.join("prometheus-pull.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: domesday-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
        ),
    )
    .expect("prometheus.yml");
    let port = free_port();
    let p = Proc(
        Command::new(prometheus())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb-pull").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus"),
    );
    (p, port)
}

#[test]
fn pull_mode_books_the_raw_samples_prometheus_scraped() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_fx, root) = fixture_copy("intel-2s");
    let agent_port = free_port();
    let _agent = start_agent(&root, agent_port, "500ms", &["--site", "caen-1"]);
    let (_prom, prom_port) = scraping_prometheus(dir.path(), agent_port);
    let pull = format!(
        "\n[[pull]]\nsite = \"caen-1\"\nurl = \"http://127.0.0.1:{prom_port}\"\ninterval = \"1s\"\nlookback = \"2m\"\n"
    );
    let collector = Collector::start_with(dir.path(), free_port(), TOKEN, &pull);
    let since = now_ms() / 60_000 * 60_000 - 60_000;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let to = now_ms() / 60_000 * 60_000 + 120_000;
        let body = get_text(
            &collector.url(&format!("/api/v1/energy?site=caen-1&host=test-host&from={since}&to={to}")),
            Duration::from_secs(5),
        );
        let e: serde_json::Value = serde_json::from_str(&body).expect("json");
        // The PSUs measure the host: booked as measured, by psu_input.
        if e["samples"].as_u64().unwrap_or(0) >= 3 && e["measured_joules"].as_f64().unwrap_or(0.0) > 0.0 {
            assert_eq!(e["estimated_joules"], 0.0, "{e}");
            assert!(e["by_method"]["psu_input"].as_f64().unwrap_or(0.0) > 0.0, "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "nothing pulled within 90 s: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Overlapping pulls read the same samples again: duplicates, counted once.
    std::thread::sleep(Duration::from_secs(3));
    let metrics = get_text(&collector.url("/metrics"), Duration::from_secs(5));
    assert!(
        series_value(&metrics, "domesday_ingest_samples_total", &["result=\"duplicate\""]).unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
}
