//! `domesday-bench`: domesday-agent against prometheus-node-exporter on the same
//! fixture tree (a benchmark, not a test; figures in docs/performance.md).
//!
//! Both programs read a private copy of `tests/fixtures/<name>` and are scraped
//! on loopback:
//!
//! * phase 1 (steady state): each target scraped once a second for `--duration`
//!   (the two half a second apart). CPU time is the sum of the first field of
//!   `/proc/PID/task/*/schedstat` (ns, every thread) at the start and the end of
//!   the phase; `/proc/PID/stat` utime+stime is kept as a cross-check. VmRSS and
//!   VmHWM come from `/proc/PID/status` at the end of the phase.
//! * phase 2 (latency): `--burst` back-to-back scrapes of each target, one
//!   target after the other, on one keep-alive connection.
//!
//! A scrape's latency runs from writing the request to reading the last body
//! byte, on a keep-alive connection (connection set-up excluded). Scrapes ask
//! for gzip, as Prometheus does, unless `--encoding identity`.
//!
//! ```sh
//! domesday-bench --agent target/release/domesday-agent \
//!     --node-exporter /usr/bin/prometheus-node-exporter \
//!     --fixture intel-2s --duration 300s --burst 2000
//! ```

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use domesday_tests::{Proc, copy_tree, fixtures_dir, free_port};

const USAGE: &str = "\
usage: domesday-bench [options]

  --agent PATH          domesday-agent binary (default: next to this binary)
  --node-exporter PATH  node_exporter binary (default: /usr/bin/prometheus-node-exporter)
  --fixture NAME|DIR    fixture tree, a name under tests/fixtures or a directory (default: intel-2s)
  --duration D          phase 1 length, e.g. 300s, 5m (default: 300s)
  --warmup D            wait after both answer, before phase 1 (default: 5s)
  --burst N             phase 2 scrapes per target (default: 2000)
  --encoding E          gzip (as Prometheus asks) or identity (default: gzip)
  --json PATH           also write every figure and raw latency as JSON
  -h, --help            this text
";

/// Longest wait for a program to answer its first scrape.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket read/write timeout of one scrape.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes before each burst that are not counted (first-request effects).
const BURST_WARMUP: usize = 10;
/// Largest body accepted from a target.
const MAX_BODY: usize = 64 << 20;

struct Args {
    agent: PathBuf,
    node_exporter: PathBuf,
    fixture: String,
    duration: Duration,
    warmup: Duration,
    burst: usize,
    gzip: bool,
    json: Option<PathBuf>,
    /// The agent's sampling interval (scrapes stay once a second).
    agent_interval: String,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}: write e.g. 300s, 5m, 1500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}: unit must be ms, s, m or h"),
    };
    if !(secs.is_finite() && secs > 0.0) {
        bail!("duration {s:?} must be greater than zero");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_args() -> Result<Option<Args>> {
    let default_agent = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("domesday-agent")))
        .unwrap_or_else(|| PathBuf::from("domesday-agent"));
    let mut a = Args {
        agent: default_agent,
        node_exporter: PathBuf::from("/usr/bin/prometheus-node-exporter"),
        fixture: "intel-2s".into(),
        duration: Duration::from_secs(300),
        warmup: Duration::from_secs(5),
        burst: 2000,
        gzip: true,
        json: None,
        agent_interval: "1s".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            print!("{USAGE}");
            return Ok(None);
        }
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            inline.clone().or_else(|| it.next()).ok_or_else(|| anyhow!("{key} needs a value\n\n{USAGE}"))
        };
        match key.as_str() {
            "--agent" => a.agent = PathBuf::from(value()?),
            "--node-exporter" => a.node_exporter = PathBuf::from(value()?),
            "--fixture" => a.fixture = value()?,
            "--duration" => a.duration = parse_duration(&value()?)?,
            "--warmup" => a.warmup = parse_duration(&value()?)?,
            "--burst" => {
                let v = value()?;
                a.burst = v.parse().map_err(|_| anyhow!("--burst {v:?}: expected a positive integer"))?;
                if a.burst == 0 {
                    bail!("--burst must be at least 1");
                }
            }
            "--encoding" => {
                a.gzip = match value()?.as_str() {
                    "gzip" => true,
                    "identity" => false,
                    other => bail!("--encoding {other:?}: expected gzip or identity"),
                }
            }
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--agent-interval" => a.agent_interval = value()?,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    for (what, p) in [("--agent", &a.agent), ("--node-exporter", &a.node_exporter)] {
        if !p.is_file() {
            bail!(
                "{what} {}: no such file (build with `cargo build --release`, or apt-get install prometheus-node-exporter)",
                p.display()
            );
        }
    }
    Ok(Some(a))
}

// ---------------------------------------------------------------- HTTP client

/// A minimal HTTP/1.1 client on one keep-alive connection (std only, so the
/// measured time is the server's plus a read loop, not a client runtime's).
struct Http {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    reconnects: u64,
}

struct Reply {
    status: u16,
    /// Body as received (compressed when `gzip`).
    body: Vec<u8>,
    gzip: bool,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Http { addr, stream: None, reconnects: 0 }
    }

    fn connect(&mut self) -> Result<()> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("connect to {}", self.addr))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        self.stream = Some(BufReader::with_capacity(64 << 10, s));
        Ok(())
    }

    /// GETs `/metrics`; returns the latency (request written → last byte read).
    /// A failure on a reused connection (closed while idle) is retried once on a
    /// new one.
    fn scrape(&mut self, gzip: bool) -> Result<(Duration, Reply)> {
        for attempt in 0..2 {
            let fresh = self.stream.is_none();
            if fresh {
                self.connect()?;
            }
            let t0 = Instant::now();
            match self.exchange(gzip) {
                Ok((reply, keep)) => {
                    let took = t0.elapsed();
                    if !keep {
                        self.stream = None;
                    }
                    return Ok((took, reply));
                }
                Err(e) => {
                    self.stream = None;
                    if fresh || attempt > 0 {
                        return Err(e);
                    }
                    self.reconnects += 1;
                }
            }
        }
        Err(anyhow!("unreachable: scrape retry loop"))
    }

    fn exchange(&mut self, gzip: bool) -> Result<(Reply, bool)> {
        let stream = self.stream.as_mut().ok_or_else(|| anyhow!("not connected"))?;
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nUser-Agent: domesday-bench\r\nAccept: text/plain;version=0.0.4\r\n{}\r\n",
            self.addr,
            if gzip { "Accept-Encoding: gzip\r\n" } else { "" }
        );
        stream.get_mut().write_all(req.as_bytes()).context("write request")?;
        let mut line = String::new();
        if stream.read_line(&mut line).context("read status line")? == 0 {
            bail!("connection closed before the status line");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {:?}", line.trim_end()))?;
        let (mut length, mut chunked, mut close, mut enc_gzip) = (None, false, false, false);
        loop {
            line.clear();
            if stream.read_line(&mut line).context("read header")? == 0 {
                bail!("connection closed inside the headers");
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else { bail!("bad header line {h:?}") };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = Some(v.parse::<usize>().context("content-length")?),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                "content-encoding" => enc_gzip = v.contains("gzip"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                stream.read_line(&mut line).context("read chunk size")?;
                let size_hex = line.trim_end().split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16).map_err(|_| anyhow!("bad chunk size {line:?}"))?;
                if size == 0 {
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).context("read trailer")? == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                if body.len() + size > MAX_BODY {
                    bail!("body larger than {MAX_BODY} bytes");
                }
                let start = body.len();
                body.resize(start + size, 0);
                stream.read_exact(&mut body[start..]).context("read chunk")?;
                line.clear();
                stream.read_line(&mut line).context("read chunk end")?;
            }
        } else if let Some(n) = length {
            if n > MAX_BODY {
                bail!("body larger than {MAX_BODY} bytes");
            }
            body.resize(n, 0);
            stream.read_exact(&mut body).context("read body")?;
        } else {
            stream.take(MAX_BODY as u64).read_to_end(&mut body).context("read body to close")?;
            close = true;
        }
        Ok((Reply { status, body, gzip: enc_gzip }, !close))
    }
}

// ------------------------------------------------------------- /proc figures

#[derive(Clone, Default)]
struct Cpu {
    /// Sum of `/proc/PID/task/*/schedstat` first fields (ns).
    sched_ns: u64,
    /// `/proc/PID/stat` utime + stime (clock ticks, includes exited threads).
    stat_ticks: u64,
    /// (tid, thread name, schedstat ns) of every thread.
    threads: Vec<(u32, String, u64)>,
}

impl Cpu {
    /// CPU seconds per thread name between `before` and `self` (threads alive at both).
    fn by_thread(&self, before: &Cpu) -> Vec<(String, f64)> {
        let mut acc: Vec<(String, f64)> = Vec::new();
        for (tid, name, ns) in &self.threads {
            let Some((_, _, ns0)) = before.threads.iter().find(|(t, _, _)| t == tid) else { continue };
            let s = ns.saturating_sub(*ns0) as f64 / 1e9;
            match acc.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => *v += s,
                None => acc.push((name.clone(), s)),
            }
        }
        acc.sort_by(|a, b| b.1.total_cmp(&a.1));
        acc
    }
}

fn cpu_of(pid: u32) -> Result<(Cpu, Vec<u32>)> {
    let mut c = Cpu::default();
    let mut tids = Vec::new();
    let dir = format!("/proc/{pid}/task");
    for e in std::fs::read_dir(&dir).with_context(|| format!("read {dir} (has the program exited?)"))? {
        let e = e?;
        let Ok(text) = std::fs::read_to_string(e.path().join("schedstat")) else { continue }; // thread just exited
        let ns: u64 = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("bad {}/schedstat: {text:?}", e.path().display()))?;
        c.sched_ns += ns;
        if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_string();
            c.threads.push((tid, name, ns));
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "comm)": state is field 3, utime 14, stime 15.
    let field =
        |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| anyhow!("bad stat field {i}"));
    c.stat_ticks = field(14)? + field(15)?;
    tids.sort_unstable();
    Ok((c, tids))
}

/// (VmRSS, VmHWM) in kB.
fn mem_of(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no {k} in /proc/{pid}/status"))
    };
    Ok((get("VmRSS:")?, get("VmHWM:")?))
}

/// The aggregate `cpu` line of the machine's `/proc/stat` (USER_HZ ticks).
#[derive(Clone, Copy, Default)]
struct Machine {
    total: u64,
    idle: u64,
    steal: u64,
}

impl Machine {
    fn read() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .map(|l| l.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default();
        if f.len() < 8 {
            return Machine::default();
        }
        // user nice system idle iowait irq softirq steal
        Machine { total: f.iter().sum(), idle: f[3] + f[4], steal: f[7] }
    }

    /// Share of all CPUs busy (steal counted busy) since `before`, 0 to 1.
    fn busy_since(&self, before: &Machine) -> f64 {
        let dt = self.total.saturating_sub(before.total);
        if dt == 0 {
            return f64::NAN;
        }
        1.0 - self.idle.saturating_sub(before.idle) as f64 / dt as f64
    }

    fn steal_since(&self, before: &Machine) -> f64 {
        let dt = self.total.saturating_sub(before.total);
        if dt == 0 {
            return f64::NAN;
        }
        self.steal.saturating_sub(before.steal) as f64 / dt as f64
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("? ({e})"))
}

fn version_of(bin: &Path) -> String {
    match Command::new(bin).arg("--version").stdin(Stdio::null()).output() {
        Ok(o) => {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            text.lines().next().unwrap_or("?").trim().to_string()
        }
        Err(e) => format!("? ({e})"),
    }
}

// ------------------------------------------------------------------- targets

struct Target {
    name: &'static str,
    proc: Proc,
    pid: u32,
    http: Http,
    stderr: PathBuf,
    spawned: Instant,
}

impl Target {
    fn spawn(name: &'static str, mut cmd: Command, port: u16, stderr: PathBuf) -> Result<Self> {
        let err = std::fs::File::create(&stderr).with_context(|| format!("create {}", stderr.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(err.try_clone()?))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        let spawned = Instant::now();
        Ok(Target {
            spawned,
            name,
            proc: Proc(child),
            pid,
            http: Http::new(SocketAddr::from(([127, 0, 0, 1], port))),
            stderr,
        })
    }

    fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Errors when the program has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.proc.0.try_wait()? {
            bail!("{} exited ({st}); last lines of its output:\n{}", self.name, self.stderr_tail(20));
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.check_alive()?;
            match self.http.scrape(false) {
                Ok((_, r)) if r.status == 200 && !r.body.is_empty() => return Ok(()),
                Ok((_, r)) if Instant::now() > deadline => bail!("{} still answers HTTP {}", self.name, r.status),
                Err(e) if Instant::now() > deadline => {
                    bail!("{} did not answer within {STARTUP_TIMEOUT:?}: {e:#}\n{}", self.name, self.stderr_tail(20))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

// ------------------------------------------------------------------ figures

#[derive(Default)]
struct Latencies {
    ms: Vec<f64>,
}

impl Latencies {
    fn push(&mut self, d: Duration) {
        self.ms.push(d.as_secs_f64() * 1000.0);
    }
    /// Nearest-rank percentile.
    fn pct(&self, q: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
    fn max(&self) -> f64 {
        self.ms.iter().copied().fold(f64::NAN, f64::max)
    }
}

#[derive(Default)]
struct Figures {
    version: String,
    cpu_s: f64,
    cpu_stat_s: f64,
    wall_s: f64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: usize,
    threads_gone: usize,
    /// CPU seconds over phase 1 by thread name.
    by_thread: Vec<(String, f64)>,
    plain_bytes: usize,
    wire_bytes: Vec<usize>,
    gzip_answers: usize,
    series: usize,
    /// Which collectors (node_exporter) or sensors (agent) worked, from the body.
    collectors: String,
    steady: Latencies,
    /// Machine busy share (all CPUs) in the ~0.5 s before each phase 1 scrape.
    steady_busy: Vec<f64>,
    /// Time of each phase 1 scrape since the program was started, modulo 1 s
    /// (ms): the agent ticks once a second from shortly after its start.
    steady_phase: Vec<f64>,
    steady_failed: usize,
    burst: Latencies,
    burst_cpu_us: f64,
    reconnects: u64,
    stderr_lines: usize,
    stderr_problems: Vec<String>,
    exit: String,
}

fn series_count(body: &[u8]) -> usize {
    String::from_utf8_lossy(body).lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count()
}

/// `collector=value` of node_exporter's `node_scrape_collector_success`, or
/// `up/total` of the agent's `domesday_sensor_up`.
fn health(body: &str) -> String {
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    let node: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("node_scrape_collector_success{"))
        .map(|l| {
            let c = l.split("collector=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
            format!("{c}={}", value(l))
        })
        .collect();
    if !node.is_empty() {
        return node.join(" ");
    }
    let up: Vec<f64> = body.lines().filter(|l| l.starts_with("domesday_sensor_up{")).map(value).collect();
    let ok = up.iter().filter(|v| **v == 1.0).count();
    format!("{ok}/{}", up.len())
}

fn median_usize(v: &[usize]) -> usize {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("domesday-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let Some(args) = parse_args()? else { return Ok(()) };
    let fixture_src = if Path::new(&args.fixture).is_dir() {
        PathBuf::from(&args.fixture)
    } else {
        fixtures_dir().join(&args.fixture)
    };
    if !fixture_src.join("sys").is_dir() || !fixture_src.join("proc").is_dir() {
        bail!(
            "fixture {}: no sys/ and proc/ there (run `python3 tests/fixtures/make-fixtures.py`)",
            fixture_src.display()
        );
    }
    let tmp = tempfile::Builder::new().prefix("domesday-bench-").tempdir().context("temporary directory")?;
    let root = tmp.path().join("fixture");
    copy_tree(&fixture_src, &root).with_context(|| format!("copy {}", fixture_src.display()))?;

    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"bench\"\nstate_dir = {:?}\nmachine_id_file = {:?}\n{}\n",
            tmp.path().join("state").display().to_string(),
            root.join("etc/machine-id").display().to_string(),
            // Extra agent tables (e.g. an [ipmi] table with a fake ipmitool) from the environment.
            std::env::var("AGENT_TABLES").unwrap_or_default()
        ),
    )?;

    let versions = [version_of(&args.agent), version_of(&args.node_exporter)];
    let (agent_port, node_port) = (free_port(), free_port());
    let mut agent_cmd = Command::new(&args.agent);
    agent_cmd
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--sysfs-root")
        .arg(root.join("sys"))
        .arg("--procfs-root")
        .arg(root.join("proc"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{agent_port}"))
        .args(["--interval", args.agent_interval.as_str(), "--site", "bench", "--host", "bench"]);
    let mut node_cmd = Command::new(&args.node_exporter);
    node_cmd
        .arg(format!("--path.sysfs={}", root.join("sys").display()))
        .arg(format!("--path.procfs={}", root.join("proc").display()))
        .args([
            "--collector.disable-defaults",
            "--collector.hwmon",
            "--collector.thermal_zone",
            "--collector.rapl",
            "--collector.cpu",
            "--collector.meminfo",
            "--collector.loadavg",
        ])
        .arg(format!("--web.listen-address=127.0.0.1:{node_port}"));

    let mut targets = [
        Target::spawn("domesday-agent", agent_cmd, agent_port, tmp.path().join("agent.log"))?,
        Target::spawn("node_exporter", node_cmd, node_port, tmp.path().join("node_exporter.log"))?,
    ];
    let mut figs: [Figures; 2] = Default::default();
    for (f, v) in figs.iter_mut().zip(versions) {
        f.version = v;
    }
    for t in targets.iter_mut() {
        t.wait_ready()?;
    }
    eprintln!(
        "domesday-bench: both answer (agent pid {}, node_exporter pid {}); warm-up {:?}",
        targets[0].pid, targets[1].pid, args.warmup
    );
    std::thread::sleep(args.warmup);
    for t in targets.iter_mut() {
        t.check_alive()?;
    }

    // Phase 1: steady state.
    let load_before = loadavg();
    let ticks = args.duration.as_secs_f64().round().max(1.0) as u64;
    let tck = clk_tck();
    eprintln!("domesday-bench: phase 1, {ticks} s, one scrape per target per second");
    let mut cpu0 = [(Cpu::default(), Vec::new()), (Cpu::default(), Vec::new())];
    let start = Instant::now();
    let machine0 = Machine::read();
    let mut last = machine0;
    let (bench0, _) = cpu_of(std::process::id())?;
    for (i, t) in targets.iter().enumerate() {
        cpu0[i] = cpu_of(t.pid)?;
    }
    for k in 0..ticks {
        for (i, t) in targets.iter_mut().enumerate() {
            sleep_until(start + Duration::from_millis(k * 1000 + i as u64 * 500));
            t.check_alive()?;
            let now = Machine::read();
            let busy = now.busy_since(&last);
            last = now;
            let phase = (t.spawned.elapsed().as_secs_f64() * 1000.0) % 1000.0;
            match t.http.scrape(args.gzip) {
                Ok((d, r)) if r.status == 200 => {
                    figs[i].steady.push(d);
                    figs[i].steady_busy.push(busy);
                    figs[i].steady_phase.push(phase);
                    figs[i].wire_bytes.push(r.body.len());
                    figs[i].gzip_answers += usize::from(r.gzip);
                }
                Ok((_, r)) => {
                    figs[i].steady_failed += 1;
                    eprintln!("domesday-bench: {} answered HTTP {}", t.name, r.status);
                }
                Err(e) => {
                    figs[i].steady_failed += 1;
                    eprintln!("domesday-bench: scrape of {} failed: {e:#}", t.name);
                }
            }
        }
        if (k + 1) % 60 == 0 {
            eprintln!("domesday-bench: phase 1, {} / {ticks} s", k + 1);
        }
    }
    sleep_until(start + Duration::from_secs(ticks));
    let machine1 = Machine::read();
    let (bench1, _) = cpu_of(std::process::id())?;
    for (i, t) in targets.iter_mut().enumerate() {
        t.check_alive()?;
        let (c1, tids1) = cpu_of(t.pid)?;
        let wall = start.elapsed().as_secs_f64();
        let (c0, tids0) = &cpu0[i];
        let f = &mut figs[i];
        f.wall_s = wall;
        f.cpu_s = c1.sched_ns.saturating_sub(c0.sched_ns) as f64 / 1e9;
        f.cpu_stat_s = c1.stat_ticks.saturating_sub(c0.stat_ticks) as f64 / tck;
        f.threads = tids1.len();
        f.threads_gone = tids0.iter().filter(|t| tids1.binary_search(t).is_err()).count();
        f.by_thread = c1.by_thread(c0);
        (f.rss_kb, f.hwm_kb) = mem_of(t.pid)?;
        // One plain-text scrape (not timed in any phase) for size and series.
        let (_, r) = t.http.scrape(false).with_context(|| format!("plain scrape of {}", t.name))?;
        f.plain_bytes = r.body.len();
        f.series = series_count(&r.body);
        f.collectors = health(&String::from_utf8_lossy(&r.body));
    }
    let load_mid = loadavg();

    // Phase 2: latency bursts, one target after the other.
    for (i, t) in targets.iter_mut().enumerate() {
        eprintln!("domesday-bench: phase 2, {} scrapes of {}", args.burst, t.name);
        for _ in 0..BURST_WARMUP {
            t.http.scrape(args.gzip).with_context(|| format!("warm-up scrape of {}", t.name))?;
        }
        let (c0, _) = cpu_of(t.pid)?;
        for n in 0..args.burst {
            let (d, r) = t.http.scrape(args.gzip).with_context(|| format!("burst scrape {n} of {}", t.name))?;
            if r.status != 200 {
                bail!("{} answered HTTP {} in the burst", t.name, r.status);
            }
            figs[i].burst.push(d);
        }
        let (c1, _) = cpu_of(t.pid)?;
        figs[i].burst_cpu_us = c1.sched_ns.saturating_sub(c0.sched_ns) as f64 / 1e3 / args.burst as f64;
        figs[i].reconnects = t.http.reconnects;
        t.check_alive()?;
    }
    let load_after = loadavg();

    // Stop: SIGTERM (the agent flushes its state), then kill.
    for (i, t) in targets.iter_mut().enumerate() {
        figs[i].exit = match t.proc.terminate(Duration::from_secs(10)) {
            Some(st) => st.to_string(),
            None => "did not exit within 10 s of SIGTERM (killed)".into(),
        };
        let text = std::fs::read_to_string(&t.stderr).unwrap_or_default();
        figs[i].stderr_lines = text.lines().count();
        figs[i].stderr_problems = text
            .lines()
            .filter(|l| {
                let u = l.to_ascii_uppercase();
                u.contains("ERROR") || u.contains("WARN") || u.contains("PANIC")
            })
            .map(str::to_string)
            .collect();
    }
    drop(targets);

    let header = Header {
        fixture: fixture_src.display().to_string(),
        tmp: tmp.path().display().to_string(),
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        loads: [load_before, load_mid, load_after],
        machine_busy: machine1.busy_since(&machine0),
        machine_steal: machine1.steal_since(&machine0),
        bench_cpu_s: bench1.sched_ns.saturating_sub(bench0.sched_ns) as f64 / 1e9,
    };
    print!("{}", report(&args, &header, &figs));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json(&args, &header, &figs))?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

struct Header {
    fixture: String,
    tmp: String,
    nproc: usize,
    kernel: String,
    loads: [String; 3],
    /// Share of all CPUs busy over phase 1, every process included.
    machine_busy: f64,
    machine_steal: f64,
    /// CPU time of this benchmark process over phase 1.
    bench_cpu_s: f64,
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "**PASS**" } else { "**FAIL**" }
}

fn report(args: &Args, h: &Header, f: &[Figures; 2]) -> String {
    let (a, n) = (&f[0], &f[1]);
    let ratio = |x: f64, y: f64| if y > 0.0 { format!("{:.3}", x / y) } else { "n/a".into() };
    let mut o = String::new();
    let _ = writeln!(o, "## domesday-agent vs node_exporter\n");
    let _ = writeln!(o, "* agent: `{}`; node_exporter: `{}`", a.version, n.version);
    let _ = writeln!(o, "* fixture: `{}` (copied to `{}`)", h.fixture, h.tmp);
    let _ = writeln!(o, "* {} CPU(s), kernel {}", h.nproc, h.kernel);
    let _ = writeln!(
        o,
        "* phase 1: {:.1} s, 1 scrape/s per target; phase 2: {} back-to-back scrapes per target (after {} uncounted); encoding {}",
        a.wall_s,
        args.burst,
        BURST_WARMUP,
        if args.gzip { "gzip" } else { "identity" }
    );
    let _ = writeln!(
        o,
        "* /proc/loadavg before phase 1: `{}`; after phase 1: `{}`; after phase 2: `{}`\n",
        h.loads[0], h.loads[1], h.loads[2]
    );
    let _ = writeln!(o, "| | domesday-agent | node_exporter | agent / node_exporter |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    let mut row = |name: &str, x: String, y: String, r: String| {
        let _ = writeln!(o, "| {name} | {x} | {y} | {r} |");
    };
    row(
        "CPU time over phase 1, schedstat (s)",
        format!("{:.3}", a.cpu_s),
        format!("{:.3}", n.cpu_s),
        ratio(a.cpu_s, n.cpu_s),
    );
    row(
        "CPU time over phase 1, utime+stime (s)",
        format!("{:.2}", a.cpu_stat_s),
        format!("{:.2}", n.cpu_stat_s),
        ratio(a.cpu_stat_s, n.cpu_stat_s),
    );
    row(
        "CPU, % of one core",
        format!("{:.3}", 100.0 * a.cpu_s / a.wall_s),
        format!("{:.3}", 100.0 * n.cpu_s / n.wall_s),
        String::new(),
    );
    row(
        "RSS at end of phase 1 (MiB)",
        format!("{:.1}", mib(a.rss_kb)),
        format!("{:.1}", mib(n.rss_kb)),
        ratio(a.rss_kb as f64, n.rss_kb as f64),
    );
    row(
        "peak RSS, VmHWM (MiB)",
        format!("{:.1}", mib(a.hwm_kb)),
        format!("{:.1}", mib(n.hwm_kb)),
        ratio(a.hwm_kb as f64, n.hwm_kb as f64),
    );
    row(
        "threads (exited during phase 1)",
        format!("{} ({})", a.threads, a.threads_gone),
        format!("{} ({})", n.threads, n.threads_gone),
        String::new(),
    );
    row(
        "body bytes, plain",
        a.plain_bytes.to_string(),
        n.plain_bytes.to_string(),
        ratio(a.plain_bytes as f64, n.plain_bytes as f64),
    );
    let wire_label = if args.gzip { "body bytes as scraped (gzip, median)" } else { "body bytes as scraped (median)" };
    let (aw, nw) = (median_usize(&a.wire_bytes), median_usize(&n.wire_bytes));
    row(wire_label, aw.to_string(), nw.to_string(), ratio(aw as f64, nw as f64));
    row(
        "series (non-comment lines)",
        a.series.to_string(),
        n.series.to_string(),
        ratio(a.series as f64, n.series as f64),
    );
    row(
        "phase 1 scrapes ok / failed",
        format!("{} / {}", a.steady.ms.len(), a.steady_failed),
        format!("{} / {}", n.steady.ms.len(), n.steady_failed),
        String::new(),
    );
    for (label, la, ln) in [("phase 1", &a.steady, &n.steady), ("phase 2", &a.burst, &n.burst)] {
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let (x, y) = (la.pct(q), ln.pct(q));
            row(&format!("{label} scrape {name} (ms)"), format!("{x:.3}"), format!("{y:.3}"), ratio(x, y));
        }
        let (x, y) = (la.max(), ln.max());
        row(&format!("{label} scrape max (ms)"), format!("{x:.3}"), format!("{y:.3}"), ratio(x, y));
    }
    row(
        "phase 2 CPU per scrape (µs)",
        format!("{:.1}", a.burst_cpu_us),
        format!("{:.1}", n.burst_cpu_us),
        ratio(a.burst_cpu_us, n.burst_cpu_us),
    );
    row(
        "stderr lines (warn/error)",
        format!("{} ({})", a.stderr_lines, a.stderr_problems.len()),
        format!("{} ({})", n.stderr_lines, n.stderr_problems.len()),
        String::new(),
    );
    row("exit after SIGTERM", a.exit.clone(), n.exit.clone(), String::new());

    let cpu_r = a.cpu_s / n.cpu_s;
    let rss_r = a.rss_kb as f64 / n.rss_kb as f64;
    let (p99_burst, p99_steady) = (a.burst.pct(0.99), a.steady.pct(0.99));
    let _ = writeln!(o, "\n| target | threshold | measured | result |");
    let _ = writeln!(o, "|---|---|---|---|");
    let _ = writeln!(
        o,
        "| CPU ≤ 1/5 of node_exporter | ratio ≤ 0.200 | {cpu_r:.3} ({:.3} s vs {:.3} s) | {} |",
        a.cpu_s,
        n.cpu_s,
        verdict(cpu_r <= 0.2)
    );
    let _ = writeln!(
        o,
        "| RSS ≤ 1/2 of node_exporter | ratio ≤ 0.500 | {rss_r:.3} ({:.1} MiB vs {:.1} MiB; peak {:.1} vs {:.1}) | {} |",
        mib(a.rss_kb),
        mib(n.rss_kb),
        mib(a.hwm_kb),
        mib(n.hwm_kb),
        verdict(rss_r <= 0.5)
    );
    let _ = writeln!(
        o,
        "| agent /metrics p99 < 1 ms | < 1.000 ms, both phases | phase 2 {p99_burst:.3} ms, phase 1 {p99_steady:.3} ms | {} |",
        verdict(p99_burst < 1.0 && p99_steady < 1.0)
    );
    let _ = writeln!(o, "\n### Load on the machine during phase 1\n");
    let phase_cpu = a.wall_s * h.nproc as f64;
    let others = h.machine_busy * phase_cpu - a.cpu_s - n.cpu_s - h.bench_cpu_s;
    let _ = writeln!(
        o,
        "* all CPUs {:.1} % busy (steal {:.2} %): {:.1} CPU-s, of which agent {:.2}, node_exporter {:.2}, this benchmark {:.2}, other processes {:.1}",
        100.0 * h.machine_busy,
        100.0 * h.machine_steal,
        h.machine_busy * phase_cpu,
        a.cpu_s,
        n.cpu_s,
        h.bench_cpu_s,
        others
    );
    let quiet = |fig: &Figures, limit: f64| Latencies {
        ms: fig.steady.ms.iter().zip(&fig.steady_busy).filter(|(_, b)| **b < limit).map(|(m, _)| *m).collect(),
    };
    for (fig, name) in [(a, "agent"), (n, "node_exporter")] {
        let slow: Vec<f64> =
            fig.steady.ms.iter().zip(&fig.steady_busy).filter(|(m, _)| **m > 1.0).map(|(_, b)| *b).collect();
        let all = Latencies { ms: fig.steady_busy.iter().map(|b| b * 100.0).collect() };
        let slow_busy = Latencies { ms: slow.iter().map(|b| b * 100.0).collect() };
        let q = quiet(fig, 0.25);
        let _ = writeln!(
            o,
            "* {name}: {} of {} phase 1 scrapes over 1 ms; machine busy in the ~0.5 s before a scrape: median {:.0} % over all scrapes, {} over the slow ones; p99 over the {} scrapes with the machine < 25 % busy: {:.3} ms (max {:.3} ms)",
            slow.len(),
            fig.steady.ms.len(),
            all.pct(0.5),
            if slow.is_empty() { "n/a".to_string() } else { format!("{:.0} %", slow_busy.pct(0.5)) },
            q.ms.len(),
            q.pct(0.99),
            q.max()
        );
        let phases = Latencies { ms: fig.steady_phase.clone() };
        let slow_phases: Vec<String> = fig
            .steady
            .ms
            .iter()
            .zip(&fig.steady_phase)
            .filter(|(m, _)| **m > 1.0)
            .map(|(m, p)| format!("{p:.0} ms ({m:.1} ms)"))
            .collect();
        let _ = writeln!(
            o,
            "  * scrapes fell {:.0} ms (median; min {:.0}, max {:.0}) after a whole second since {name} was started; slow ones (latency): {}",
            phases.pct(0.5),
            phases.ms.iter().copied().fold(f64::NAN, f64::min),
            phases.max(),
            match slow_phases.len() {
                0 => "none".to_string(),
                k if k <= 12 => slow_phases.join(", "),
                k => format!("{}, … ({} more)", slow_phases[..12].join(", "), k - 12),
            }
        );
    }
    for (fig, name) in [(a, "agent"), (n, "node_exporter")] {
        let parts: Vec<String> = fig.by_thread.iter().map(|(t, s)| format!("{t} {s:.3}")).collect();
        let _ = writeln!(o, "* {name} CPU seconds over phase 1 by thread: {}", parts.join(", "));
    }
    let _ = writeln!(o, "\n* node_exporter collectors (`node_scrape_collector_success`): {}", n.collectors);
    let _ = writeln!(o, "* agent sensors up (`domesday_sensor_up`): {}", a.collectors);
    for fig in f {
        if !fig.stderr_problems.is_empty() {
            let name = if std::ptr::eq(fig, a) { "domesday-agent" } else { "node_exporter" };
            let _ = writeln!(o, "\n{} warning/error lines of {name} (first 5):\n", fig.stderr_problems.len());
            for l in fig.stderr_problems.iter().take(5) {
                let _ = writeln!(o, "    {l}");
            }
        }
    }
    o
}

fn json(args: &Args, h: &Header, f: &[Figures; 2]) -> serde_json::Value {
    let one = |x: &Figures| {
        serde_json::json!({
            "version": x.version,
            "phase1_wall_s": x.wall_s,
            "cpu_schedstat_s": x.cpu_s,
            "cpu_stat_s": x.cpu_stat_s,
            "rss_kib": x.rss_kb,
            "hwm_kib": x.hwm_kb,
            "threads": x.threads,
            "threads_exited": x.threads_gone,
            "cpu_s_by_thread": x.by_thread,
            "plain_bytes": x.plain_bytes,
            "wire_bytes": x.wire_bytes,
            "gzip_answers": x.gzip_answers,
            "series": x.series,
            "health": x.collectors,
            "phase1_latency_ms": x.steady.ms,
            "phase1_failed": x.steady_failed,
            "phase1_machine_busy": x.steady_busy,
            "phase1_ms_since_start_mod_1s": x.steady_phase,
            "phase2_latency_ms": x.burst.ms,
            "phase2_cpu_us_per_scrape": x.burst_cpu_us,
            "reconnects": x.reconnects,
            "stderr_lines": x.stderr_lines,
            "stderr_problems": x.stderr_problems,
            "exit": x.exit,
        })
    };
    serde_json::json!({
        "fixture": h.fixture,
        "nproc": h.nproc,
        "kernel": h.kernel,
        "loadavg": h.loads,
        "phase1_machine_busy": h.machine_busy,
        "phase1_machine_steal": h.machine_steal,
        "phase1_bench_cpu_s": h.bench_cpu_s,
        "duration_s": args.duration.as_secs_f64(),
        "burst": args.burst,
        "gzip": args.gzip,
        "agent": one(&f[0]),
        "node_exporter": one(&f[1]),
    })
}
