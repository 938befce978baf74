//! `domesday-agent simulate`: N virtual agents pushing to a collector, for load
//! tests and for end-to-end checks of the energy ledger.
//!
//! Owns the simulated hosts' values and the schedule; requests go through the
//! same [`HttpTransport`] (headers, token, keep-alive) and the same label
//! building as the real pusher. Each host `sim-00001`… pushes the default set
//! (20 series, [`SERIES_PER_HOST`]) every interval, with a
//! `domesday_host_energy_joules_total{method="model",quality="estimated"}`
//! counter that advances by a whole number of joules per interval
//! ([`energy_step`]), so the increase is exact in f64 and in integer µJ.
//!
//! Hosts are spread evenly over the interval and shared round-robin between
//! `connections` workers. For `http://` each worker holds exactly one HTTP/1.1
//! keep-alive connection (hyper's connection API, reconnecting after an error),
//! so the collector sees exactly `connections` connections; for `https://` the
//! workers share reqwest's pool, which may open a few more under load. A worker
//! that falls behind sends without waiting (the lag is reported). Failed requests are not retried
//! (the next interval's counter carries the energy on): the report says, per
//! host, what was sent and what the collector acknowledged (2xx), so a test can
//! compare with the collector's energy API.
//!
//! With several URLs (`--push` given more than once), each worker fails over as a real agent with a list in
//! `push.url` does ([`UrlChoice`]: a request that gets no answer or a 429/5xx goes at once to the next URL, which
//! then stays current), but the workers start on different URLs, worker `w` on URL `w mod n`: the fleet is
//! split evenly over the collectors, as a site whose agents list them in different orders. A request that no URL
//! answered is still not retried.
//!
//! Time can be compressed for soak tests: `sample_interval` is the simulated
//! time between a host's two samples (the counter advances by watts × it) while
//! `interval` stays the wall-clock time between them, and `start_ms` puts the
//! first sample in the past, so a month of samples can be sent in minutes
//! without any timestamp in the future.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::catalog::{
    AGENT_INFO, CPU_UTILIZATION, ENERGY, HOST_ENERGY, HOST_INFO, HOST_POWER, SENSOR_UP, TEMPERATURE,
};
use domesday_model::remote_write::{Label, TimeSeries, WriteRequest};
use domesday_model::vocab::PushFailure;
use prost::Message;

use crate::config::Secret;
use crate::push::failover::UrlChoice;
use crate::push::{HttpTransport, Outcome, labels_of};
use crate::sources::Sample;

/// Series each simulated host pushes.
pub const SERIES_PER_HOST: usize = 20;
/// Progress is logged this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub hosts: usize,
    /// The collectors' URLs: the workers are spread over them and fail over between them (see the module doc).
    pub urls: Vec<String>,
    pub token: Secret,
    pub interval: Duration,
    /// Simulated time between a host's two samples (timestamps and counter
    /// steps); `None`: the same as `interval` (real time).
    pub sample_interval: Option<Duration>,
    /// Timestamp (ms) of the first sample; `None`: now.
    pub start_ms: Option<i64>,
    /// `None`: until SIGINT/SIGTERM.
    pub duration: Option<Duration>,
    pub connections: usize,
    pub site: String,
    /// Per-host lines go here (else to stdout after the summary).
    pub report: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Push(#[from] crate::push::PushError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `sim-00001` for host index 0.
pub fn host_name(i: usize) -> String {
    format!("sim-{:05}", i + 1)
}

/// Host power, whole watts (150 to 399 W).
pub fn host_watts(i: usize) -> u64 {
    150 + (i as u64 * 37) % 250
}

/// Energy counter increase per interval, whole joules: watts × interval,
/// rounded down to the joule.
pub fn energy_step(i: usize, interval: Duration) -> u64 {
    (u128::from(host_watts(i)) * interval.as_millis() / 1000) as u64
}

/// The counter's first value.
pub fn energy_start(i: usize) -> u64 {
    1_000_000 + i as u64 * 1_000
}

/// Counter value at the `k`-th push.
pub fn energy_at(i: usize, k: u64, interval: Duration) -> f64 {
    (energy_start(i) + k * energy_step(i, interval)) as f64
}

/// What one host sent and what was acknowledged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostReport {
    pub requests: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub rejected: u64,
    /// (timestamp ms, counter J) of the first and last sample sent.
    pub first_sent: Option<(i64, f64)>,
    pub last_sent: Option<(i64, f64)>,
    /// The same for the samples the collector acknowledged (2xx).
    pub first_acked: Option<(i64, f64)>,
    pub last_acked: Option<(i64, f64)>,
}

impl HostReport {
    pub fn sent_increase(&self) -> f64 {
        increase(self.first_sent, self.last_sent)
    }

    pub fn acked_increase(&self) -> f64 {
        increase(self.first_acked, self.last_acked)
    }
}

fn increase(a: Option<(i64, f64)>, b: Option<(i64, f64)>) -> f64 {
    match (a, b) {
        (Some((_, x)), Some((_, y))) => y - x,
        _ => 0.0,
    }
}

/// Which value a template series takes.
#[derive(Debug, Clone, Copy)]
enum Value {
    HostEnergy,
    HostPower,
    Cpu,
    One,
    /// RAPL zone with its share of the host step, in tenths.
    Rapl(u64),
    Inlet,
}

/// One host's request, rebuilt in place for each host and tick.
struct Template {
    req: WriteRequest,
    values: Vec<Value>,
    /// Index of the `host` label in each series, and of `machine_id` if any.
    host_at: Vec<usize>,
    machine_id_at: Vec<Option<usize>>,
    raw: Vec<u8>,
    packed: Vec<u8>,
    encoder: snap::raw::Encoder,
}

impl Template {
    fn new(site: &str) -> Self {
        let s = |def, labels: &[&str], v| (Sample::new(def, labels.iter().map(|l| (*l).to_string()).collect(), 0.0), v);
        let mut samples = vec![
            s(&HOST_ENERGY, &["model", "estimated"], Value::HostEnergy),
            s(&HOST_POWER, &["model", "estimated"], Value::HostPower),
            s(&CPU_UTILIZATION, &[], Value::Cpu),
            s(&AGENT_INFO, &[env!("CARGO_PKG_VERSION")], Value::One),
            s(&HOST_INFO, &["domesday", "simulated", "Simulated CPU", "2", "64", "0"], Value::One),
            s(&ENERGY, &["rapl", "intel-rapl:0", "package", "0"], Value::Rapl(4)),
            s(&ENERGY, &["rapl", "intel-rapl:0:0", "dram", "0"], Value::Rapl(1)),
            s(&ENERGY, &["rapl", "intel-rapl:1", "package", "1"], Value::Rapl(3)),
            s(&ENERGY, &["rapl", "intel-rapl:1:0", "dram", "1"], Value::Rapl(1)),
            s(&TEMPERATURE, &["hwmon", "platform_sim_0", "temp1", "Inlet Temp", "inlet"], Value::Inlet),
        ];
        for (source, sensor) in [
            ("rapl", "intel-rapl:0"),
            ("rapl", "intel-rapl:0:0"),
            ("rapl", "intel-rapl:1"),
            ("rapl", "intel-rapl:1:0"),
            ("hwmon", "platform_sim_0/temp1"),
            ("hwmon", "platform_coretemp_0/temp1"),
            ("hwmon", "platform_coretemp_1/temp1"),
            ("hwmon", "i2c_0_0_0058/power1"),
            ("hwmon", "i2c_0_0_0059/power1"),
            ("procfs", "stat"),
        ] {
            samples.push(s(&SENSOR_UP, &[source, sensor], Value::One));
        }
        let constant =
            [Label { name: "site".into(), value: site.into() }, Label { name: "host".into(), value: "-".into() }];
        let mut req = WriteRequest::default();
        let (mut values, mut host_at, mut machine_id_at) = (Vec::new(), Vec::new(), Vec::new());
        for (sample, v) in &samples {
            debug_assert!(crate::push::in_default_set(sample), "{}", sample.def.name);
            let labels = labels_of(sample, &constant);
            host_at.push(labels.iter().position(|l| l.name == "host").unwrap_or(0));
            machine_id_at.push(labels.iter().position(|l| l.name == "machine_id"));
            req.timeseries.push(TimeSeries { labels, samples: vec![Default::default()] });
            values.push(*v);
        }
        Template {
            req,
            values,
            host_at,
            machine_id_at,
            raw: Vec::new(),
            packed: Vec::new(),
            encoder: snap::raw::Encoder::new(),
        }
    }

    /// The compressed body of host `i`'s `k`-th push at `ts`.
    fn body(&mut self, i: usize, k: u64, ts: i64, interval: Duration) -> Vec<u8> {
        let name = host_name(i);
        let step = energy_step(i, interval);
        for (j, ts_) in self.req.timeseries.iter_mut().enumerate() {
            if let Some(l) = ts_.labels.get_mut(self.host_at[j]) {
                l.value.clear();
                l.value.push_str(&name);
            }
            if let Some(l) = self.machine_id_at[j].and_then(|m| ts_.labels.get_mut(m)) {
                l.value.clear();
                let _ = write!(l.value, "{:032x}", i + 1);
            }
            let value = match self.values[j] {
                Value::HostEnergy => energy_at(i, k, interval),
                Value::HostPower => host_watts(i) as f64,
                Value::Cpu => (i % 10) as f64 / 10.0,
                Value::One => 1.0,
                Value::Rapl(tenths) => (1_000 + k * step * tenths / 10) as f64,
                Value::Inlet => 20.0 + (i % 8) as f64,
            };
            if let Some(s) = ts_.samples.first_mut() {
                s.value = value;
                s.timestamp = ts;
            }
        }
        self.raw.clear();
        // Encoding into a Vec cannot run out of room.
        let _ = self.req.encode(&mut self.raw);
        self.packed.resize(snap::raw::max_compress_len(self.raw.len()), 0);
        match self.encoder.compress(&self.raw, &mut self.packed) {
            Ok(n) => self.packed[..n].to_vec(),
            Err(_) => domesday_model::remote_write::encode(&self.req),
        }
    }
}

/// Log-scale latency histogram (16 buckets per doubling, ±4 %).
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    max: Duration,
}

impl Histogram {
    const PER_DOUBLING: f64 = 16.0;

    fn new() -> Self {
        Histogram { counts: vec![0; 40 * 16], max: Duration::ZERO }
    }

    fn record(&mut self, d: Duration) {
        let us = d.as_micros().max(1) as f64;
        let i = ((us.log2() * Self::PER_DOUBLING) as usize).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.max = self.max.max(d);
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.max = self.max.max(o.max);
    }

    fn quantile(&self, q: f64) -> Duration {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                let us = 2f64.powf((i as f64 + 1.0) / Self::PER_DOUBLING);
                return Duration::from_micros(us as u64).min(self.max);
            }
        }
        self.max
    }
}

/// One worker's way to the collector.
enum Conn {
    /// `http://`: one dedicated keep-alive connection.
    Direct(Direct),
    /// `https://`: reqwest's shared pool.
    Pooled,
}

/// A single HTTP/1.1 connection, opened on first use and after an error.
struct Direct {
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
}

impl Direct {
    async fn post(&mut self, t: &HttpTransport, body: Vec<u8>, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.exchange(t, body)).await {
            Ok(Ok(o)) => o,
            Ok(Err(why)) => {
                self.sender = None;
                Outcome::Retry { why, reason: PushFailure::Connect, retry_after: None }
            }
            Err(_) => {
                self.sender = None;
                Outcome::Retry { why: "timed out".into(), reason: PushFailure::Timeout, retry_after: None }
            }
        }
    }

    async fn exchange(&mut self, t: &HttpTransport, body: Vec<u8>) -> Result<Outcome, String> {
        use http_body_util::BodyExt;
        let host = t.url.host_str().unwrap_or("127.0.0.1").to_string();
        let port = t.url.port_or_known_default().unwrap_or(80);
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp =
                tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else { return Err("no connection".into()) };
        sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let authority = match t.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let mut req = hyper::Request::post(t.url.path())
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, crate::push::USER_AGENT)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        req.headers_mut().extend(t.headers.clone());
        let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.into_body().collect().await.map_err(|e| format!("response: {e}"))?.to_bytes();
        let text = String::from_utf8_lossy(&text[..text.len().min(2048)]).trim().to_string();
        Ok(match crate::push::classify(status) {
            "sent" => Outcome::Sent,
            "retry" => {
                Outcome::Retry { why: format!("HTTP {status}: {text}"), reason: PushFailure::Http, retry_after: None }
            }
            _ => Outcome::Reject { status, body: text },
        })
    }
}

struct Shared {
    opts: SimOptions,
    /// One per URL of `opts.urls`.
    transports: Vec<HttpTransport>,
    start: tokio::time::Instant,
    start_ms: i64,
    requests: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    /// Requests that another URL than the current one answered.
    failed_over: AtomicU64,
}

struct WorkerResult {
    hosts: Vec<usize>,
    reports: Vec<HostReport>,
    latency: Histogram,
    max_lag: Duration,
    last_error: Option<String>,
}

/// Runs the simulation and returns the text to print (summary, and the
/// per-host lines unless they went to `--report`).
pub fn run(opts: SimOptions) -> Result<String, SimError> {
    if opts.hosts == 0 {
        return Err(SimError::Invalid("--hosts must be at least 1".into()));
    }
    if opts.connections == 0 {
        return Err(SimError::Invalid("--connections must be at least 1".into()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(simulate(opts))
}

async fn simulate(opts: SimOptions) -> Result<String, SimError> {
    let connections = opts.connections.min(opts.hosts);
    if opts.urls.is_empty() {
        return Err(SimError::Invalid("--push: at least one URL".into()));
    }
    let transports = opts
        .urls
        .iter()
        .map(|u| HttpTransport::new(u, &opts.token, &Default::default(), opts.timeout, connections))
        .collect::<Result<Vec<_>, _>>()?;
    let start_ms = opts
        .start_ms
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0));
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        transports,
        start: tokio::time::Instant::now(),
        start_ms,
        requests: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        failed_over: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        domesday_runtime::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(hosts = opts.hosts, connections, interval = %humantime::format_duration(opts.interval),
        urls = %opts.urls.join(", "), "simulate: starting");
    let progress = tokio::spawn(progress(shared.clone()));
    let mut tasks = Vec::with_capacity(connections);
    for w in 0..connections {
        let hosts: Vec<usize> = (w..opts.hosts).step_by(connections).collect();
        tasks.push(tokio::spawn(worker(shared.clone(), hosts, stop_rx.clone())));
    }
    let mut reports = vec![HostReport::default(); opts.hosts];
    let mut latency = Histogram::new();
    let mut max_lag = Duration::ZERO;
    let mut last_error = None;
    for t in tasks {
        match t.await {
            Ok(r) => {
                for (h, rep) in r.hosts.into_iter().zip(r.reports) {
                    reports[h] = rep;
                }
                latency.merge(&r.latency);
                max_lag = max_lag.max(r.max_lag);
                last_error = r.last_error.or(last_error);
            }
            Err(e) => tracing::error!(error = %e, "simulate: a worker failed"),
        }
    }
    progress.abort();
    let elapsed = shared.start.elapsed();
    let mut out = summary(&shared, &reports, &latency, max_lag, elapsed, last_error.as_deref());
    let lines = host_lines(&reports);
    match &opts.report {
        Some(path) => {
            let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
            f.write_all(lines.as_bytes())?;
            f.flush()?;
            let _ = writeln!(out, "per-host report: {}", path.display());
        }
        None => out.push_str(&lines),
    }
    Ok(out)
}

async fn worker(shared: Arc<Shared>, hosts: Vec<usize>, mut stop: tokio::sync::watch::Receiver<bool>) -> WorkerResult {
    let o = &shared.opts;
    let mut tpl = Template::new(&o.site);
    let worker = hosts.first().copied().unwrap_or(0) % o.connections.max(1);
    let mut conns: Vec<Conn> = shared
        .transports
        .iter()
        .map(|t| if t.url.scheme() == "http" { Conn::Direct(Direct { sender: None }) } else { Conn::Pooled })
        .collect();
    let mut choice = UrlChoice::new(conns.len());
    choice.answered(worker % conns.len());
    let mut reports = vec![HostReport::default(); hosts.len()];
    let mut latency = Histogram::new();
    let mut max_lag = Duration::ZERO;
    let mut last_error = None;
    let interval_ns = o.interval.as_nanos();
    let sample = o.sample_interval.unwrap_or(o.interval);
    let sample_ns = sample.as_nanos();
    'ticks: for k in 0u64.. {
        for (j, &h) in hosts.iter().enumerate() {
            let offset_ns = interval_ns * u128::from(k) + interval_ns * h as u128 / o.hosts as u128;
            let offset = Duration::from_nanos(u64::try_from(offset_ns).unwrap_or(u64::MAX));
            if o.duration.is_some_and(|d| offset >= d) || *stop.borrow() {
                break 'ticks;
            }
            let due = shared.start + offset;
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                _ = stop.changed() => break 'ticks,
            }
            max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
            // The same place in the simulated schedule, scaled from `interval` to `sample`.
            let sim_ns = sample_ns * u128::from(k) + sample_ns * h as u128 / o.hosts as u128;
            let ts = shared.start_ms + i64::try_from(sim_ns / 1_000_000).unwrap_or(i64::MAX);
            let value = energy_at(h, k, sample);
            let body = tpl.body(h, k, ts, sample);
            let t0 = Instant::now();
            let start_url = choice.current();
            let mut outcome = Outcome::Retry { why: "no URL".into(), reason: PushFailure::Connect, retry_after: None };
            for u in choice.order() {
                let (Some(conn), Some(transport)) = (conns.get_mut(u), shared.transports.get(u)) else { continue };
                outcome = match conn {
                    Conn::Direct(d) => d.post(transport, body.clone(), o.timeout).await,
                    Conn::Pooled => transport.post(body.clone(), o.timeout).await,
                };
                if !matches!(outcome, Outcome::Retry { .. }) {
                    choice.answered(u);
                    if u != start_url {
                        shared.failed_over.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            }
            latency.record(t0.elapsed());
            let r = &mut reports[j];
            r.requests += 1;
            r.first_sent.get_or_insert((ts, value));
            r.last_sent = Some((ts, value));
            shared.requests.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Outcome::Sent => {
                    r.acknowledged += 1;
                    r.first_acked.get_or_insert((ts, value));
                    r.last_acked = Some((ts, value));
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Retry { why, .. } => {
                    r.failed += 1;
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    last_error = Some(why);
                }
                Outcome::Reject { status, body } => {
                    r.rejected += 1;
                    shared.rejected.fetch_add(1, Ordering::Relaxed);
                    last_error = Some(format!("HTTP {status}: {body}"));
                }
            }
        }
    }
    WorkerResult { hosts, reports, latency, max_lag, last_error }
}

async fn progress(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        tracing::info!(
            requests = shared.requests.load(Ordering::Relaxed),
            acknowledged = shared.acked.load(Ordering::Relaxed),
            failed = shared.failed.load(Ordering::Relaxed),
            rejected = shared.rejected.load(Ordering::Relaxed),
            "simulate: progress"
        );
    }
}

fn summary(
    shared: &Shared,
    reports: &[HostReport],
    latency: &Histogram,
    max_lag: Duration,
    elapsed: Duration,
    last_error: Option<&str>,
) -> String {
    let o = &shared.opts;
    let sum = |f: fn(&HostReport) -> u64| reports.iter().map(f).sum::<u64>();
    let (requests, acked) = (sum(|r| r.requests), sum(|r| r.acknowledged));
    let (failed, rejected) = (sum(|r| r.failed), sum(|r| r.rejected));
    let sent_j: f64 = reports.iter().map(HostReport::sent_increase).sum();
    let acked_j: f64 = reports.iter().map(HostReport::acked_increase).sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "simulate: {} hosts × {SERIES_PER_HOST} series every {} over {} connections to {} for {:.1} s",
        o.hosts,
        humantime::format_duration(o.interval),
        o.connections.min(o.hosts),
        o.urls.join(" "),
        secs
    );
    let _ = writeln!(
        out,
        "requests {requests} ({:.1}/s): acknowledged {acked}, failed {failed} (no answer, 429 or 5xx; not retried), rejected {rejected}",
        requests as f64 / secs
    );
    let _ = writeln!(
        out,
        "samples acknowledged {}; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; schedule lag max {:.1} ms",
        acked * SERIES_PER_HOST as u64,
        ms(latency.quantile(0.5)),
        ms(latency.quantile(0.99)),
        ms(latency.quantile(0.999)),
        ms(latency.max),
        ms(max_lag)
    );
    let _ = writeln!(out, "host energy increase: sent {sent_j} J, acknowledged {acked_j} J (sum over hosts)");
    if o.urls.len() > 1 {
        let _ = writeln!(
            out,
            "failed over: {} requests answered by another URL than their worker's current one",
            shared.failed_over.load(Ordering::Relaxed)
        );
    }
    if let Some(e) = last_error {
        let _ = writeln!(out, "last error: {e}");
    }
    out
}

/// Per-host CSV: what was sent and what was acknowledged.
pub const REPORT_HEADER: &str = "host,requests,acknowledged,failed,rejected,first_sent_ms,last_sent_ms,sent_increase_joules,first_acked_ms,last_acked_ms,first_acked_joules,last_acked_joules,acked_increase_joules";

fn host_lines(reports: &[HostReport]) -> String {
    let mut out = String::with_capacity(reports.len() * 120);
    out.push_str(REPORT_HEADER);
    out.push('\n');
    let opt = |v: Option<(i64, f64)>, pick: fn((i64, f64)) -> String| v.map(pick).unwrap_or_default();
    for (i, r) in reports.iter().enumerate() {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            host_name(i),
            r.requests,
            r.acknowledged,
            r.failed,
            r.rejected,
            opt(r.first_sent, |v| v.0.to_string()),
            opt(r.last_sent, |v| v.0.to_string()),
            r.sent_increase(),
            opt(r.first_acked, |v| v.0.to_string()),
            opt(r.last_acked, |v| v.0.to_string()),
            opt(r.first_acked, |v| v.1.to_string()),
            opt(r.last_acked, |v| v.1.to_string()),
            r.acked_increase(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use domesday_model::remote_write::decode;

    #[test]
    fn a_host_pushes_twenty_default_series_with_its_labels_and_exact_counter() {
        let mut t = Template::new("sim");
        let interval = Duration::from_secs(10);
        let body = t.body(41, 3, 1_700_000_000_000, interval);
        let req = decode(&body, 1 << 20).expect("decode");
        assert_eq!(req.timeseries.len(), SERIES_PER_HOST);
        for ts in &req.timeseries {
            assert_eq!(ts.label("host"), Some("sim-00042"));
            assert_eq!(ts.label("site"), Some("sim"));
            assert_eq!(ts.samples.len(), 1);
            assert_eq!(ts.samples[0].timestamp, 1_700_000_000_000);
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted);
            assert!(ts.labels.iter().all(|l| !l.value.is_empty()));
        }
        let energy = req
            .timeseries
            .iter()
            .find(|t| t.label("__name__") == Some("domesday_host_energy_joules_total"))
            .expect("host energy");
        assert_eq!(energy.label("method"), Some("model"));
        assert_eq!(energy.label("quality"), Some("estimated"));
        assert_eq!(energy.samples[0].value, energy_at(41, 3, interval));
        assert_eq!(energy_at(41, 3, interval) - energy_at(41, 0, interval), 3.0 * (host_watts(41) * 10) as f64);
        // The next host reuses the buffers without leaking the previous one's labels.
        let again = decode(&t.body(0, 0, 5, interval), 1 << 20).expect("decode");
        assert!(again.timeseries.iter().all(|t| t.label("host") == Some("sim-00001")));
        let info = again.timeseries.iter().find(|t| t.label("__name__") == Some("domesday_host_info")).expect("info");
        assert_eq!(info.label("machine_id"), Some(format!("{:032x}", 1).as_str()));
    }

    #[test]
    fn energy_steps_are_whole_joules_even_for_short_intervals() {
        for i in 0..300 {
            let s = energy_step(i, Duration::from_millis(250));
            assert_eq!(s, host_watts(i) / 4);
            assert_eq!(energy_at(i, 1000, Duration::from_millis(250)).fract(), 0.0);
        }
        assert_eq!(host_name(0), "sim-00001");
        assert_eq!(host_name(49_999), "sim-50000");
    }

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut h = Histogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1000.0;
        assert!((47.0..=53.0).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), Duration::from_millis(100));
    }

    #[test]
    fn report_lines_state_sent_and_acknowledged_increase() {
        let r = HostReport {
            requests: 3,
            acknowledged: 2,
            failed: 1,
            rejected: 0,
            first_sent: Some((1000, 10.0)),
            last_sent: Some((3000, 40.0)),
            first_acked: Some((1000, 10.0)),
            last_acked: Some((2000, 25.0)),
        };
        let text = host_lines(&[r]);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(REPORT_HEADER));
        assert_eq!(lines.next(), Some("sim-00001,3,2,1,0,1000,3000,30,1000,2000,10,25,15"));
    }
}
