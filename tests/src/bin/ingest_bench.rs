//! Ingest benchmark: identical remote_write bodies sent to domesday-collector,
//! VictoriaMetrics and Prometheus (remote-write receiver) on 127.0.0.1, one
//! target after the other, with the same connection count. Prints a markdown
//! table (samples/s, server CPU seconds from /proc/PID/schedstat, peak RSS) and
//! checks the collector's ledger for zero loss through its energy API.
//!
//! Usage: domesday-ingest-bench --collector PATH [--victoria-metrics PATH]
//!        [--prometheus PATH] [--bulk-requests N] [--small-requests N] [--connections N]
//!        [--synchronous full|normal]
//!
//! With `--scale-out`, the same bodies go instead to one collector on SQLite, then to one, two and three
//! collectors sharing one PostgreSQL database (a throwaway cluster on 127.0.0.1 with fsync and synchronous
//! commit on, as a real server), the connections spread round-robin over the collectors; every host's energy is
//! then checked exactly through one collector's energy API. The table gives samples/s and the CPU seconds of the
//! collectors and of PostgreSQL (the server and its backends).

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

/// Sends `plan`, connection `i` to `urls[i % urls.len()]`; `pid`'s CPU is measured.
fn send_all(urls: &[String], token: Option<&str>, plan: &Plan, pid: u32) -> RunResult {
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let failures: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .iter()
            .enumerate()
            .map(|(i, bodies)| {
                let url = urls[i % urls.len()].as_str();
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
    if args.iter().any(|a| a == "--scale-out") {
        return scale_out::run(&args);
    }
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
    let ra = send_all(&[format!("http://127.0.0.1:{cport}/api/v1/write")], Some(token), &bulk, c.0.id());
    let rb = send_all(&[format!("http://127.0.0.1:{vport}/api/v1/write")], None, &bulk, v.0.id());
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
    let sa = send_all(&[format!("http://127.0.0.1:{cport}/api/v1/write")], Some(token), &small, c.0.id());
    let sb = send_all(&[format!("http://127.0.0.1:{pport}/api/v1/write")], None, &small, p.0.id());
    let sv = send_all(&[format!("http://127.0.0.1:{vport}/api/v1/write")], None, &small, v.0.id());
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

/// `--scale-out`: one collector on SQLite against one, two and three on one PostgreSQL, same bodies, same run.
mod scale_out {
    use super::*;
    use domesday_tests::pg::{PgCluster, PgDb};

    /// CPU seconds of a PostgreSQL server: its own, its exited children's (cutime, cstime), its live backends'.
    fn pg_cpu(postmaster: u32, tick: f64) -> f64 {
        let fields = |pid: &str| -> Option<Vec<String>> {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold spaces: the fields start after its ')'.
            Some(s[s.rfind(')')? + 2..].split_whitespace().map(String::from).collect())
        };
        let num = |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let mut ticks = 0.0;
        // After the ')': state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
        if let Some(f) = fields(&postmaster.to_string()) {
            ticks += num(&f, 11) + num(&f, 12) + num(&f, 13) + num(&f, 14);
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some(f) = fields(&name)
                && f.get(1).map(String::as_str) == Some(postmaster.to_string().as_str())
            {
                ticks += num(&f, 11) + num(&f, 12);
            }
        }
        ticks / tick
    }

    struct Collectors {
        procs: Vec<Killed>,
        ports: Vec<u16>,
    }

    /// `n` collectors on `db` (a path or a postgres:// URL), each on its own port.
    fn start(collector: &Path, dir: &Path, n: usize, db: &str, password: Option<&str>) -> anyhow::Result<Collectors> {
        let mut procs = Vec::new();
        let mut ports = Vec::new();
        let pw = dir.join("pg.password");
        if let Some(p) = password {
            std::fs::write(&pw, format!("{p}\n"))?;
        }
        for i in 0..n {
            let port = port();
            let conf = dir.join(format!("c{i}.toml"));
            let password_line = if password.is_some() {
                format!("db_password_file = {:?}\n", pw.display().to_string())
            } else {
                String::new()
            };
            std::fs::write(
                &conf,
                format!(
                    "listen = \"127.0.0.1:{port}\"\ndb = {db:?}\n{password_line}[ledger]\nsynchronous = \"full\"\n[[sites]]\nid = \"bench\"\ntimezone = \"UTC\"\ntoken_file = {:?}\n",
                    dir.join("t").display().to_string()
                ),
            )?;
            procs.push(Killed(
                Command::new(collector).args(["serve", "--config"]).arg(&conf).stderr(Stdio::null()).spawn()?,
            ));
            ports.push(port);
        }
        for p in &ports {
            wait_ready(&format!("http://127.0.0.1:{p}/readyz"))?;
        }
        Ok(Collectors { procs, ports })
    }

    struct Row {
        seconds: f64,
        failures: usize,
        collector_cpu: f64,
        pg_cpu: Option<f64>,
        checked: usize,
        wrong: usize,
    }

    /// Sends `plan` with connection `c` to collector `c % n`, then checks every host of the plan.
    fn measure(
        cs: &Collectors,
        token: &str,
        plan: &Plan,
        pg: Option<(u32, f64)>,
        check: &dyn Fn(u16) -> anyhow::Result<(usize, usize)>,
    ) -> anyhow::Result<Row> {
        let cpu = || cs.procs.iter().map(|p| cpu_seconds(p.0.id())).sum::<f64>();
        let (c0, p0) = (cpu(), pg.map(|(pid, t)| pg_cpu(pid, t)));
        let urls: Vec<String> = cs.ports.iter().map(|p| format!("http://127.0.0.1:{p}/api/v1/write")).collect();
        let RunResult { seconds, failures, .. } = send_all(&urls, Some(token), plan, std::process::id());
        let (collector_cpu, pg_cpu) = (cpu() - c0, pg.zip(p0).map(|((pid, t), p0)| pg_cpu(pid, t) - p0));
        let (checked, wrong) = check(cs.ports[0])?;
        Ok(Row { seconds, failures, collector_cpu, pg_cpu, checked, wrong })
    }

    pub fn run(args: &[String]) -> anyhow::Result<()> {
        let collector =
            PathBuf::from(arg(args, "--collector").unwrap_or_else(|| "target/release/domesday-collector".into()));
        let connections: usize = arg(args, "--connections").and_then(|v| v.parse().ok()).unwrap_or(6);
        let bulk_requests: usize = arg(args, "--bulk-requests").and_then(|v| v.parse().ok()).unwrap_or(4);
        let small_requests: usize = arg(args, "--small-requests").and_then(|v| v.parse().ok()).unwrap_or(300);
        let tick: f64 = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        let token = "bench-token";
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 / 60_000 * 60_000;
        let step = 5_000;
        // A: a catch-up (one host's spool, or a proxy): 100 hosts × 10 samples per request.
        // B: the fleet's shape: one host's energy sample per request (an agent's other series are not booked).
        let workloads = [
            ("100 hosts × 10 samples", 100, 10, bulk_requests, "bulk"),
            ("1 host × 1 sample", 1, 1, small_requests, "agent"),
        ];
        let cluster = PgCluster::start_with(&[
            "fsync=on",
            "synchronous_commit=on",
            "full_page_writes=on",
            "shared_buffers=128MB",
        ]);
        let postmaster = cluster.pid().ok_or_else(|| anyhow::anyhow!("PostgreSQL has no process"))?;
        println!(
            "# Scale-out benchmark: {connections} connections spread over the collectors, identical bodies per \
             target; SQLite synchronous=full, PostgreSQL fsync=on synchronous_commit=on\n"
        );
        println!(
            "machine: {} CPUs, load average {}\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "| workload | store | collectors | samples | seconds | samples/s | failed requests | collectors' CPU s | PostgreSQL CPU s | CPU s per 1000 samples | hosts exact |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let mut all_exact = true;
        for (wname, series, samples, requests, prefix) in workloads {
            let end = now - 60_000;
            let (bodies, start_ms) = plan(connections, requests, series, samples, step, end, prefix);
            let n_samples = connections * requests * series * samples;
            let span_ms = (requests * samples) as i64 * step;
            let want = |s: usize| -> i64 {
                let k = (requests * samples - 1) as f64;
                let first = 1000.0 + s as f64;
                let last = 1000.0 + s as f64 + k * 0.3 * step as f64;
                ((last - first) * 1e6).round() as i64
            };
            let check = |port: u16| -> anyhow::Result<(usize, usize)> {
                let mut wrong = 0;
                let mut checked = 0;
                for c in 0..connections {
                    for s in 0..series {
                        let host = format!("{prefix}-{c:02}-{s:05}");
                        let url = format!(
                            "http://127.0.0.1:{port}/api/v1/energy?site=bench&host={host}&from={}&to={}",
                            start_ms / 60_000 * 60_000,
                            (start_ms + span_ms) / 60_000 * 60_000 + 60_000
                        );
                        let e: serde_json::Value = serde_json::from_str(&reqwest::blocking::get(&url)?.text()?)?;
                        if e["energy_microjoules"].as_str() != Some(want(s).to_string().as_str()) {
                            wrong += 1;
                        }
                        checked += 1;
                    }
                }
                Ok((checked, wrong))
            };
            let mut targets: Vec<(&str, usize, Option<PgDb>)> = vec![("SQLite", 1, None)];
            for n in 1..=3 {
                targets.push(("PostgreSQL", n, Some(cluster.database())));
            }
            for (store, n, db) in targets {
                let dir = tempfile::tempdir()?;
                std::fs::write(dir.path().join("t"), token)?;
                let cs = match &db {
                    None => start(&collector, dir.path(), 1, &dir.path().join("bench.db").display().to_string(), None)?,
                    Some(db) => start(&collector, dir.path(), n, &db.url(), Some(db.password()))?,
                };
                let pg = db.as_ref().map(|_| (postmaster, tick));
                let r = measure(&cs, token, &bodies, pg, &check)?;
                all_exact &= r.wrong == 0 && r.failures == 0;
                let total_cpu = r.collector_cpu + r.pg_cpu.unwrap_or(0.0);
                println!(
                    "| {wname} | {store} | {n} | {n_samples} | {:.2} | {:.0} | {} | {:.2} | {} | {:.3} | {}/{} |",
                    r.seconds,
                    n_samples as f64 / r.seconds,
                    r.failures,
                    r.collector_cpu,
                    r.pg_cpu.map(|c| format!("{c:.2}")).unwrap_or_else(|| "—".into()),
                    total_cpu * 1000.0 / n_samples as f64,
                    r.checked - r.wrong,
                    r.checked
                );
                drop(cs);
            }
        }
        anyhow::ensure!(all_exact, "a request failed or a host's energy differs from its counter increase");
        println!("\nLedger check: every host's energy equals its counter increase exactly, on every target.");
        Ok(())
    }
}
