//! Ingest benchmark: identical remote_write bodies sent to domesday-collector,
//! VictoriaMetrics and Prometheus (remote-write receiver) on 127.0.0.1, one
//! target after the other, with the same connection count. Prints a markdown
//! table (samples/s, server CPU seconds from /proc/PID/schedstat, peak RSS) and
//! checks the collector's ledger for zero loss through its energy API.
//!
//! Usage: domesday-ingest-bench --collector PATH [--victoria-metrics PATH]
//!        [--prometheus PATH] [--bulk-requests N] [--small-requests N] [--connections N]
//!        [--synchronous full|normal]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if reqwest::blocking::get(url).map(|r| r.status().is_success()).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("{url} not ready within 60 s")
}

/// CPU seconds of every thread of a process (schedstat run time, ns).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return f64::NAN };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 1e9
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// One connection's requests: its own hosts, in time order.
type Plan = Vec<Vec<Vec<u8>>>;

/// Builds `requests` bodies per connection, each with `series` host-energy
/// series of `samples` samples spaced `step_ms`, ending at `end_ms`.
fn plan(
    connections: usize,
    requests: usize,
    series: usize,
    samples: usize,
    step_ms: i64,
    end_ms: i64,
    prefix: &str,
) -> (Plan, i64) {
    let span = (requests * samples) as i64 * step_ms;
    let start = end_ms - span;
    let mut out = Vec::new();
    for c in 0..connections {
        let mut bodies = Vec::new();
        for r in 0..requests {
            let timeseries = (0..series)
                .map(|s| {
                    let host = format!("{prefix}-{c:02}-{s:05}");
                    let labels = [
                        ("__name__", "domesday_host_energy_joules_total"),
                        ("host", host.as_str()),
                        ("method", "psu_input"),
                        ("quality", "measured"),
                        ("site", "bench"),
                    ]
                    .iter()
                    .map(|(n, v)| Label { name: (*n).into(), value: (*v).into() })
                    .collect();
                    let samples = (0..samples)
                        .map(|j| {
                            let k = (r * samples + j) as i64;
                            // 300 W host: 1.5 kJ per 5 s step, plus a per-host offset.
                            Sample {
                                value: 1000.0 + s as f64 + k as f64 * 0.3 * step_ms as f64,
                                timestamp: start + k * step_ms,
                            }
                        })
                        .collect();
                    TimeSeries { labels, samples }
                })
                .collect();
            bodies.push(encode(&WriteRequest { timeseries }));
        }
        out.push(bodies);
    }
    (out, start)
}

struct RunResult {
    seconds: f64,
    failures: usize,
    cpu: f64,
}

fn send_all(url: &str, token: Option<&str>, plan: &Plan, pid: u32) -> RunResult {
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let failures: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .iter()
            .map(|bodies| {
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().ok();
                    let Some(client) = client else { return bodies.len() };
                    let mut failed = 0;
                    for b in bodies {
                        let mut req = client
                            .post(url)
                            .header("Content-Encoding", "snappy")
                            .header("Content-Type", "application/x-protobuf")
                            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                            .body(b.clone());
                        if let Some(t) = token {
                            req = req.bearer_auth(t);
                        }
                        // Retry 5xx/429 as a remote_write sender would.
                        let mut ok = false;
                        for _ in 0..50 {
                            match req.try_clone().map(|r| r.send()) {
                                Some(Ok(r)) if r.status().is_success() => {
                                    ok = true;
                                    break;
                                }
                                Some(Ok(r)) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                                    std::thread::sleep(Duration::from_millis(20))
                                }
                                _ => break,
                            }
                        }
                        if !ok {
                            failed += 1;
                        }
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(usize::MAX)).sum()
    });
    RunResult { seconds: t0.elapsed().as_secs_f64(), failures, cpu: cpu_seconds(pid) - cpu0 }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let collector =
        PathBuf::from(arg(&args, "--collector").unwrap_or_else(|| "target/release/domesday-collector".into()));
    let vm = PathBuf::from(arg(&args, "--victoria-metrics").unwrap_or_else(|| "/usr/bin/victoria-metrics".into()));
    let prom = PathBuf::from(arg(&args, "--prometheus").unwrap_or_else(|| "/usr/bin/prometheus".into()));
    let bulk_requests: usize = arg(&args, "--bulk-requests").and_then(|v| v.parse().ok()).unwrap_or(10);
    let small_requests: usize = arg(&args, "--small-requests").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let connections: usize = arg(&args, "--connections").and_then(|v| v.parse().ok()).unwrap_or(4);
    let synchronous = arg(&args, "--synchronous").unwrap_or_else(|| "full".into());
    anyhow::ensure!(["full", "normal"].contains(&synchronous.as_str()), "--synchronous is full or normal");
    let dir = tempfile::tempdir()?;
    let token = "bench-token";
    std::fs::write(dir.path().join("t"), token)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 / 60_000 * 60_000;

    // Start the three servers.
    let cport = port();
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            "listen = \"127.0.0.1:{cport}\"\ndb = {:?}\n[ledger]\nsynchronous = {synchronous:?}\n[[sites]]\nid = \"bench\"\ntimezone = \"UTC\"\ntoken_file = {:?}\n",
            dir.path().join("bench.db").display().to_string(),
            dir.path().join("t").display().to_string()
        ),
    )?;
    let c = Killed(
        Command::new(&collector)
            .args(["serve", "--config"])
            .arg(dir.path().join("c.toml"))
            .stderr(Stdio::null())
            .spawn()?,
    );
    let vport = port();
    let v = Killed(
        Command::new(&vm)
            .arg(format!("-storageDataPath={}", dir.path().join("vm").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{vport}"))
            .arg("-retentionPeriod=100y")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pport = port();
    std::fs::write(dir.path().join("p.yml"), "global:\n  scrape_interval: 1h\n")?;
    let p = Killed(
        Command::new(&prom)
            .arg(format!("--config.file={}", dir.path().join("p.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("prom").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_ready(&format!("http://127.0.0.1:{cport}/readyz"))?;
    wait_ready(&format!("http://127.0.0.1:{vport}/health"))?;
    wait_ready(&format!("http://127.0.0.1:{pport}/-/ready"))?;

    println!(
        "# Ingest benchmark ({connections} connections, identical bodies per target, collector synchronous={synchronous})\n"
    );
    println!("| workload | target | samples | seconds | samples/s | failed requests | server CPU s | ratio vs peer |");
    println!("|---|---|---|---|---|---|---|---|");
    // Workload A: 1000 series × 100 samples per request (bulk), 5 s steps.
    let (bulk, bulk_start) = plan(connections, bulk_requests, 1000, 100, 5_000, now - 3_600_000, "bulk");
    let bulk_samples = connections * bulk_requests * 1000 * 100;
    let ra = send_all(&format!("http://127.0.0.1:{cport}/api/v1/write"), Some(token), &bulk, c.0.id());
    let rb = send_all(&format!("http://127.0.0.1:{vport}/api/v1/write"), None, &bulk, v.0.id());
    let rate = |r: &RunResult, n: usize| n as f64 / r.seconds;
    for (name, r, peer) in [("domesday-collector", &ra, Some(&rb)), ("VictoriaMetrics", &rb, None)] {
        println!(
            "| 1000 series × 100 samples | {name} | {bulk_samples} | {:.2} | {:.0} | {} | {:.2} | {} |",
            r.seconds,
            rate(r, bulk_samples),
            r.failures,
            r.cpu,
            peer.map(|p| format!("{:.2}× VictoriaMetrics", rate(r, bulk_samples) / rate(p, bulk_samples)))
                .unwrap_or_default()
        );
    }
    // Workload B: one-scrape-sized requests (100 series × 1 sample), recent timestamps for Prometheus.
    let (small, _) = plan(connections, small_requests, 100, 1, 1_000, now - 60_000, "small");
    let small_samples = connections * small_requests * 100;
    let sa = send_all(&format!("http://127.0.0.1:{cport}/api/v1/write"), Some(token), &small, c.0.id());
    let sb = send_all(&format!("http://127.0.0.1:{pport}/api/v1/write"), None, &small, p.0.id());
    let sv = send_all(&format!("http://127.0.0.1:{vport}/api/v1/write"), None, &small, v.0.id());
    for (name, r, peer) in
        [("domesday-collector", &sa, Some(&sb)), ("Prometheus", &sb, None), ("VictoriaMetrics", &sv, None)]
    {
        println!(
            "| 100 series × 1 sample | {name} | {small_samples} | {:.2} | {:.0} | {} | {:.2} | {} |",
            r.seconds,
            rate(r, small_samples),
            r.failures,
            r.cpu,
            peer.map(|p| format!("{:.2}× Prometheus", rate(r, small_samples) / rate(p, small_samples)))
                .unwrap_or_default()
        );
    }
    println!(
        "\nPeak RSS (MiB): domesday-collector {:.1}, VictoriaMetrics {:.1}, Prometheus {:.1}",
        peak_rss_mib(c.0.id()),
        peak_rss_mib(v.0.id()),
        peak_rss_mib(p.0.id())
    );
    // Zero loss: the ledger's energy for a few bulk hosts equals their counter increase.
    let span_ms = (bulk_requests * 100) as i64 * 5_000;
    let mut checked = 0;
    for (conn, s) in [(0usize, 0usize), (connections - 1, 999), (connections / 2, 500)] {
        let host = format!("bulk-{conn:02}-{s:05}");
        let url = format!(
            "http://127.0.0.1:{cport}/api/v1/energy?site=bench&host={host}&from={}&to={}",
            bulk_start / 60_000 * 60_000,
            (bulk_start + span_ms) / 60_000 * 60_000 + 60_000
        );
        let e: serde_json::Value = serde_json::from_str(&reqwest::blocking::get(&url)?.text()?)?;
        let want = ((bulk_requests * 100 - 1) as f64 * 0.3 * 5_000.0 * 1e6).round() as i64;
        anyhow::ensure!(
            e["energy_microjoules"].as_str() == Some(want.to_string().as_str()),
            "{host}: ledger {} vs counter increase {want}",
            e["energy_microjoules"]
        );
        checked += 1;
    }
    println!("Ledger check: {checked} bulk hosts' energy equals their counter increase exactly.");
    let _ = Path::new(".");
    drop((c, v, p));
    Ok(())
}
