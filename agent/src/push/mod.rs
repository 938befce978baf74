//! Push to a collector with Prometheus remote_write 1.0.
//!
//! This module owns the pusher: which series are pushed (the default set or
//! all), their labels, stale markers for series that disappear, batching into
//! requests within the protocol limits, the HTTP requests and how their answers
//! are handled, backoff, the order guarantee, and the push self-metrics.
//! [`spool`] owns the on-disk format of the batches waiting; [`simulate`] the
//! `simulate` load generator.
//!
//! Data path: the sampler thread calls [`PushHandle::offer`] after each tick;
//! when a push is due it turns the snapshot into a [`PushTick`] (labels built,
//! the tick's wall-clock timestamp) and hands it over a bounded channel of
//! [`PUSH_QUEUE`] ticks with `try_send`: the sampler never waits, and a tick
//! that finds the queue full is counted as `dropped`. The pusher runs on its own
//! thread (a current-thread tokio runtime, so spool file I/O never delays
//! `/metrics`):
//! - a tick becomes one or more requests (≤ [`MAX_SAMPLES_PER_REQUEST`] samples,
//!   ≤ [`MAX_REQUEST_BYTES`] compressed), with a stale marker for every series
//!   pushed last time and absent now;
//! - while the spool is empty and no retry is pending, requests are sent
//!   directly; 2xx → `sent`; 429/5xx/connection errors → the request and every
//!   later one go to the spool (`spooled`) and a retry is scheduled with
//!   exponential backoff and jitter; other statuses → `rejected`, logged with
//!   the collector's answer, never retried;
//! - while the spool is not empty, new requests are appended to it (FIFO) and
//!   the head is sent one at a time, so a series' samples always arrive in time
//!   order, across restarts too;
//! - with several URLs in `push.url`, [`failover`] decides which collector
//!   gets each request; to the pusher they are one transport.
//!
//! Counting (`domesday_push_samples_total{result}`): every sample ends `sent`,
//! `rejected` or `dropped`; `spooled` counts in addition the samples that went
//! through the disk spool on their way.

pub mod failover;
pub mod simulate;
/// The on-disk spool lives in its own crate, shared with the collector's forwarder.
pub use domesday_spool as spool;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domesday_model::catalog::{
    AGENT_INFO, CPU_UTILIZATION, ENERGY, HOST_ENERGY, HOST_INFO, HOST_POWER, SENSOR_UP, TEMPERATURE,
};
use domesday_model::remote_write::{self, Label, TimeSeries, WriteRequest};
use domesday_model::vocab::PushFailure;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;

use crate::config::{AgentConfig, PushConfig, Secret, SeriesSet};
use crate::push::spool::{OpenReport, Spool, SpoolError};
use crate::snapshot::{PushStats, Snapshot};
use crate::sources::Sample;

/// Ticks waiting between the sampler and the pusher. The pusher takes a tick in
/// milliseconds unless a request is in flight (at most `push.timeout`), so 16
/// ticks cover a hung request even at a 1 s push interval.
pub const PUSH_QUEUE: usize = 16;
/// Most samples in one request.
pub const MAX_SAMPLES_PER_REQUEST: usize = 10_000;
/// Largest compressed request body.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Longest wait between two retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest wait between two retries, whatever the push interval.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Deadline of the one final attempt made at shutdown.
pub const FINAL_ATTEMPT: Duration = Duration::from_secs(5);
/// Connection deadline (within the request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Repeated warnings (collector down, rejections) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// How much of a collector's error answer is read and logged.
const ERROR_BODY_LIMIT: usize = 2048;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("domesday-agent/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the push token cannot be sent in an Authorization header")]
    Token,
    #[error("push URL: {0}")]
    Url(String),
    #[error("cannot start the pusher thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// One tick's pushed series: full label sets (sorted by name, no empty value)
/// and values, all at the tick's timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct PushTick {
    pub timestamp_ms: i64,
    pub series: Vec<(Vec<Label>, f64)>,
}

/// Whether a sample belongs to the default push set: host energy and power,
/// sensor health, RAPL zone energy, inlet temperature, CPU utilisation, host
/// and agent info.
pub fn in_default_set(s: &Sample) -> bool {
    let label = |name: &str| s.def.labels.iter().position(|l| *l == name).and_then(|i| s.labels.get(i));
    let name = s.def.name;
    if [HOST_ENERGY.name, HOST_POWER.name, SENSOR_UP.name, HOST_INFO.name, AGENT_INFO.name, CPU_UTILIZATION.name]
        .contains(&name)
    {
        return true;
    }
    (name == ENERGY.name && label("source").is_some_and(|v| v == "rapl"))
        || (name == TEMPERATURE.name && label("location").is_some_and(|v| v == "inlet"))
}

/// `site`, `host` and the extras as remote_write labels.
pub fn constant_labels(cfg: &AgentConfig) -> Vec<Label> {
    crate::snapshot::constant_labels(cfg).into_iter().map(|(name, value)| Label { name, value }).collect()
}

/// The remote_write label set of a sample: the same labels as `/metrics`
/// (`__name__`, `site`, `host`, extras, catalog labels), sorted by name as
/// remote_write requires, labels with an empty value left out (Prometheus
/// treats them as absent).
pub fn labels_of(s: &Sample, constant: &[Label]) -> Vec<Label> {
    let mut labels = Vec::with_capacity(1 + constant.len() + s.labels.len());
    labels.push(Label { name: "__name__".into(), value: s.def.name.into() });
    labels.extend(constant.iter().cloned());
    labels.extend(s.def.labels.iter().zip(&s.labels).map(|(n, v)| Label { name: (*n).to_string(), value: v.clone() }));
    labels.retain(|l| !l.value.is_empty());
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

/// The series of a snapshot to push (the default set or all), sorted and
/// deduplicated as in `/metrics`.
pub fn tick_series(snap: &Snapshot, set: SeriesSet, constant: &[Label]) -> Vec<(Vec<Label>, f64)> {
    let mut out: Vec<(Vec<Label>, f64)> = snap
        .samples
        .iter()
        .filter(|s| set == SeriesSet::All || in_default_set(s))
        .map(|s| (labels_of(s, constant), s.value))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// The sampler's end of the push channel.
pub struct PushHandle {
    tx: mpsc::Sender<PushTick>,
    stats: Arc<PushStats>,
    set: SeriesSet,
    constant: Vec<Label>,
    every: Duration,
    next_due: Option<Duration>,
    full_log: Every,
}

impl PushHandle {
    /// Called by the sampler after each tick (monotonic `now`, wall-clock
    /// `wall` taken when the tick started). Pushes when `push.interval` has
    /// passed since the last push; never blocks.
    pub fn offer(&mut self, snap: &Snapshot, now: Duration, wall: SystemTime) {
        if self.next_due.is_some_and(|due| now < due) {
            return;
        }
        let mut due = self.next_due.unwrap_or(now);
        while due <= now {
            due += self.every;
        }
        self.next_due = Some(due);
        self.send(snap, wall);
    }

    /// Pushes this tick whether or not a push is due (the last tick at shutdown).
    pub fn offer_now(&mut self, snap: &Snapshot, now: Duration, wall: SystemTime) {
        self.next_due = Some(now + self.every);
        self.send(snap, wall);
    }

    fn send(&mut self, snap: &Snapshot, wall: SystemTime) {
        let timestamp_ms = wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let series = tick_series(snap, self.set, &self.constant);
        let n = series.len() as u64;
        if let Err(e) = self.tx.try_send(PushTick { timestamp_ms, series }) {
            PushStats::add(&self.stats.dropped, n);
            if let Some(more) = self.full_log.ready() {
                tracing::warn!(
                    samples = n,
                    earlier = more,
                    "push queue {}: a tick was dropped (the pusher is stuck)",
                    if matches!(e, mpsc::error::TrySendError::Full(_)) { "full" } else { "closed" }
                );
            }
        }
    }
}

/// Remembers the series pushed last time, to end the ones that disappear.
#[derive(Debug, Default)]
pub struct StaleTracker {
    last: HashSet<Vec<Label>>,
}

impl StaleTracker {
    /// The tick's series, plus a stale marker at the tick's timestamp for each
    /// series pushed last time and absent now.
    pub fn apply(&mut self, tick: PushTick) -> Vec<TimeSeries> {
        let ts = tick.timestamp_ms;
        let mut current = HashSet::with_capacity(tick.series.len());
        let mut out = Vec::with_capacity(tick.series.len());
        for (labels, value) in tick.series {
            current.insert(labels.clone());
            out.push(TimeSeries { labels, samples: vec![remote_write::Sample { value, timestamp: ts }] });
        }
        let mut gone: Vec<&Vec<Label>> = self.last.difference(&current).collect();
        gone.sort();
        for labels in gone {
            out.push(TimeSeries {
                labels: labels.clone(),
                samples: vec![remote_write::Sample { value: remote_write::stale_nan(), timestamp: ts }],
            });
        }
        self.last = current;
        out
    }
}

/// One encoded request body and the samples it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub samples: u32,
}

fn sample_count(series: &[TimeSeries]) -> usize {
    series.iter().map(|t| t.samples.len()).sum()
}

/// Splits series into snappy-compressed requests of at most `max_samples`
/// samples and `max_bytes` bytes, in order. Returns the batches and the samples
/// dropped because a single series could not fit `max_bytes` on its own.
pub fn encode_batches(series: Vec<TimeSeries>, max_samples: usize, max_bytes: usize) -> (Vec<Batch>, u64) {
    let max_samples = max_samples.max(1);
    let mut out = Vec::new();
    let mut dropped = 0u64;
    let mut chunk: Vec<TimeSeries> = Vec::new();
    let mut n = 0usize;
    for ts in series {
        // A series with more samples than a request holds is cut in pieces.
        let pieces: Vec<TimeSeries> = if ts.samples.len() > max_samples {
            ts.samples
                .chunks(max_samples)
                .map(|s| TimeSeries { labels: ts.labels.clone(), samples: s.to_vec() })
                .collect()
        } else {
            vec![ts]
        };
        for p in pieces {
            let k = p.samples.len();
            if n + k > max_samples && !chunk.is_empty() {
                encode_chunk(std::mem::take(&mut chunk), max_bytes, &mut out, &mut dropped);
                n = 0;
            }
            n += k;
            chunk.push(p);
        }
    }
    if !chunk.is_empty() {
        encode_chunk(chunk, max_bytes, &mut out, &mut dropped);
    }
    (out, dropped)
}

fn encode_chunk(chunk: Vec<TimeSeries>, max_bytes: usize, out: &mut Vec<Batch>, dropped: &mut u64) {
    let req = WriteRequest { timeseries: chunk };
    let body = remote_write::encode(&req);
    let samples = sample_count(&req.timeseries);
    if body.len() <= max_bytes {
        out.push(Batch { body, samples: samples as u32 });
        return;
    }
    let mut chunk = req.timeseries;
    if chunk.len() == 1 && samples <= 1 {
        tracing::warn!(bytes = body.len(), max_bytes, "push: one series does not fit in a request; dropped");
        *dropped += samples as u64;
        return;
    }
    if chunk.len() == 1 {
        // One series with many samples: halve its samples.
        let ts = chunk.remove(0);
        let mid = ts.samples.len() / 2;
        let (a, b) = ts.samples.split_at(mid);
        encode_chunk(vec![TimeSeries { labels: ts.labels.clone(), samples: a.to_vec() }], max_bytes, out, dropped);
        encode_chunk(vec![TimeSeries { labels: ts.labels, samples: b.to_vec() }], max_bytes, out, dropped);
        return;
    }
    let right = chunk.split_off(chunk.len() / 2);
    encode_chunk(chunk, max_bytes, out, dropped);
    encode_chunk(right, max_bytes, out, dropped);
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Sent,
    /// 429, 5xx or no answer: keep it and try again later.
    Retry { why: String, reason: PushFailure, retry_after: Option<Duration> },
    /// Any other status: never retried.
    Reject { status: u16, body: String },
}

/// Classifies a status code.
pub fn classify(status: u16) -> &'static str {
    match status {
        200..=299 => "sent",
        429 | 500..=599 => "retry",
        _ => "reject",
    }
}

/// Sends one request body (the HTTP client, or a script in tests).
pub(crate) trait Transport {
    async fn send(&self, body: &[u8], timeout: Duration) -> Outcome;
}

/// The remote_write 1.0 client: fixed headers, the bearer token (marked
/// sensitive), keep-alive connections, no redirects.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    pub(crate) url: reqwest::Url,
    /// Every header but `User-Agent` (set by the client) and `Host`.
    pub(crate) headers: HeaderMap,
}

impl HttpTransport {
    pub fn new(
        url: &str,
        token: &Secret,
        tls: &crate::config::PushTls,
        timeout: Duration,
        pool: usize,
    ) -> Result<Self, PushError> {
        let url = crate::config::parse_push_url(url).map_err(PushError::Url)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(remote_write::CONTENT_ENCODING));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(remote_write::CONTENT_TYPE));
        headers.insert(
            HeaderName::from_static("x-prometheus-remote-write-version"),
            HeaderValue::from_static(remote_write::VERSION),
        );
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| PushError::Token)?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &tls.ca_pem {
            // A private CA replaces the bundled public roots: only it may vouch for the collector.
            builder = builder.tls_built_in_root_certs(false);
            for c in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(c);
            }
        }
        if let Some(id) = &tls.identity_pem {
            builder = builder.identity(reqwest::Identity::from_pem(id.expose().as_bytes())?);
        }
        let client = builder
            .user_agent(USER_AGENT)
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(HttpTransport { client, url, headers })
    }

    /// Posts `body` and reads (a bounded part of) the answer.
    pub async fn post(&self, body: Vec<u8>, timeout: Duration) -> Outcome {
        let sent =
            self.client.post(self.url.clone()).headers(self.headers.clone()).timeout(timeout).body(body).send().await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Retry { why: describe(&e), reason: failure_of(&e), retry_after: None },
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the body so the connection is reused.
        let mut text = Vec::new();
        while let Ok(Some(c)) = resp.chunk().await {
            let room = ERROR_BODY_LIMIT.saturating_sub(text.len());
            text.extend_from_slice(&c[..c.len().min(room)]);
        }
        let text = String::from_utf8_lossy(&text).trim().to_string();
        match classify(status) {
            "sent" => Outcome::Sent,
            "retry" => Outcome::Retry { why: format!("HTTP {status}: {text}"), reason: PushFailure::Http, retry_after },
            _ => Outcome::Reject { status, body: text },
        }
    }
}

impl Transport for HttpTransport {
    async fn send(&self, body: &[u8], timeout: Duration) -> Outcome {
        self.post(body.to_vec(), timeout).await
    }
}

/// Why a request got no answer: a TLS error anywhere in its causes (rustls's
/// own error type, also inside an I/O error) is `tls`, else `timeout` or `connect`.
pub fn failure_of(e: &reqwest::Error) -> PushFailure {
    use std::error::Error;
    if e.is_timeout() {
        return PushFailure::Timeout;
    }
    let mut src: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(s) = src {
        let inner = s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|i| i as &(dyn Error + 'static));
        if s.downcast_ref::<rustls::Error>().is_some()
            || inner.is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
        {
            return PushFailure::Tls;
        }
        src = inner.or_else(|| s.source());
    }
    PushFailure::Connect
}

/// A reqwest error with its causes ("connection refused", "timed out").
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// Exponential backoff with jitter: `min × 2^failures`, capped at `max`, each
/// wait drawn in [½, 1] of that.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Derived from the push interval: from a quarter of it (at least 100 ms,
    /// at most 1 s) up to twice it (at most 30 s).
    pub fn for_interval(interval: Duration) -> Self {
        let min = (interval / 4).clamp(MIN_BACKOFF, Duration::from_secs(1));
        let max = (interval * 2).clamp(min, MAX_BACKOFF);
        Backoff { min, max, failures: 0 }
    }

    pub fn next_wait(&mut self) -> Duration {
        let full = self.min.saturating_mul(1 << self.failures.min(16)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        full.mul_f64(rand::random_range(0.5..=1.0))
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Lets a repeated message through at most once per period.
#[derive(Debug)]
struct Every {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Every {
    fn new(period: Duration) -> Self {
        Every { period, last: None, suppressed: 0 }
    }

    /// `Some(suppressed since the last one)` when the message may be logged.
    fn ready(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The pusher's state (runs on the pusher thread).
pub(crate) struct Pusher<T> {
    transport: T,
    spool: Spool,
    stats: Arc<PushStats>,
    stale: StaleTracker,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
    timeout: Duration,
    stopping: Arc<AtomicBool>,
    failing_since: Option<Instant>,
    fail_log: Every,
    reject_log: Every,
    spool_log: Every,
    /// Where the write token came from ([`token_source`]), named when the collector refuses it.
    token_from: String,
}

impl<T: Transport> Pusher<T> {
    pub(crate) fn new(
        transport: T,
        spool: Spool,
        stats: Arc<PushStats>,
        backoff: Backoff,
        timeout: Duration,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        let p = Pusher {
            transport,
            spool,
            stats,
            stale: StaleTracker::default(),
            backoff,
            retry_at: None,
            timeout,
            stopping,
            failing_since: None,
            fail_log: Every::new(LOG_EVERY),
            reject_log: Every::new(LOG_EVERY),
            spool_log: Every::new(LOG_EVERY),
            token_from: String::new(),
        };
        p.update_gauges_of(&p.spool);
        p
    }

    /// Names where the write token came from in the message of a refused token.
    pub(crate) fn with_token_source(mut self, from: String) -> Self {
        self.token_from = from;
        self
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Runs until the sampler drops its [`PushHandle`], then returns after the
    /// ticks already queued are sent (one bounded attempt) or spooled.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<PushTick>) {
        loop {
            let retry_at = self.retry_at;
            let drain_now = retry_at.is_none() && !self.spool.is_empty() && !self.stopping();
            tokio::select! {
                biased;
                tick = rx.recv() => match tick {
                    Some(t) => self.handle_tick(t).await,
                    None => break,
                },
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                    if retry_at.is_some() => self.retry_at = None,
                () = std::future::ready(()), if drain_now => self.drain_one().await,
            }
        }
        if !self.spool.is_empty() {
            tracing::info!(samples = self.spool.pending_samples(), bytes = self.spool.pending_bytes(),
                spool = %self.spool.dir().display(), "push: stopped with samples spooled; they are sent at next start");
        }
    }

    /// Pushes one tick: directly when nothing waits, else through the spool.
    pub(crate) async fn handle_tick(&mut self, tick: PushTick) {
        // The host energy counters of the tick, for audits that compare what was sent
        // with what the collector booked.
        let host_energy: Vec<String> = tick
            .series
            .iter()
            .filter(|(labels, _)| labels.iter().any(|l| l.name == "__name__" && l.value == HOST_ENERGY.name))
            .map(|(labels, v)| {
                let method = labels.iter().find(|l| l.name == "method").map(|l| l.value.as_str()).unwrap_or("");
                format!("{method}={v}")
            })
            .collect();
        tracing::debug!(ts = tick.timestamp_ms, series = tick.series.len(), host_energy = %host_energy.join(","), "push tick");
        let series = self.stale.apply(tick);
        let (batches, dropped) = encode_batches(series, MAX_SAMPLES_PER_REQUEST, MAX_REQUEST_BYTES);
        PushStats::add(&self.stats.dropped, dropped);
        for b in batches {
            if self.spool.is_empty() && self.retry_at.is_none() {
                let timeout = if self.stopping() { self.timeout.min(FINAL_ATTEMPT) } else { self.timeout };
                match self.transport.send(&b.body, timeout).await {
                    Outcome::Sent => self.on_sent(b.samples),
                    Outcome::Retry { why, reason, retry_after } => {
                        self.on_failure(&why, reason, retry_after);
                        self.spool_batch(&b);
                    }
                    Outcome::Reject { status, body } => self.on_reject(status, &body, b.samples),
                }
            } else {
                self.spool_batch(&b);
            }
        }
        self.update_gauges();
    }

    /// Sends the spool's oldest request.
    pub(crate) async fn drain_one(&mut self) {
        let rec = match self.spool.peek() {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "push: cannot read the spool");
                self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_wait());
                return;
            }
        };
        match self.transport.send(&rec.payload, self.timeout).await {
            Outcome::Sent => {
                self.ack(&rec);
                self.on_sent(rec.samples);
                if self.spool.is_empty() {
                    tracing::info!("push: spool replayed, pushing live again");
                }
            }
            Outcome::Reject { status, body } => {
                self.ack(&rec);
                self.on_reject(status, &body, rec.samples);
            }
            Outcome::Retry { why, reason, retry_after } => self.on_failure(&why, reason, retry_after),
        }
        self.update_gauges();
    }

    fn ack(&mut self, rec: &spool::Peeked) {
        if let Err(e) = self.spool.ack(rec) {
            tracing::error!(error = %e, "push: cannot remove a sent record from the spool");
        }
    }

    fn spool_batch(&mut self, b: &Batch) {
        match self.spool.append(&b.body, b.samples) {
            Ok(()) => PushStats::add(&self.stats.spooled, u64::from(b.samples)),
            Err(e) => {
                PushStats::add(&self.stats.dropped, u64::from(b.samples));
                if let Some(more) = self.spool_log.ready() {
                    tracing::error!(error = %e, samples = b.samples, earlier = more,
                        "push: cannot spool a batch; dropped");
                }
            }
        }
    }

    fn on_sent(&mut self, samples: u32) {
        PushStats::add(&self.stats.sent, u64::from(samples));
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.stats.last_success_ms.store(now_ms, Ordering::Relaxed);
        self.backoff.reset();
        if let Some(since) = self.failing_since.take() {
            tracing::info!(after = %humantime::format_duration(round_secs(since.elapsed())),
                spooled_samples = self.spool.pending_samples(), "push: the collector takes data again");
            self.fail_log = Every::new(LOG_EVERY);
        }
    }

    fn on_failure(&mut self, why: &str, reason: PushFailure, retry_after: Option<Duration>) {
        self.stats.failed(reason);
        let wait = match retry_after {
            Some(d) => d.min(self.backoff.max()),
            None => self.backoff.next_wait(),
        };
        self.retry_at = Some(tokio::time::Instant::now() + wait);
        let pending = self.spool.pending_samples();
        match self.failing_since {
            None => {
                self.failing_since = Some(Instant::now());
                self.fail_log.ready();
                tracing::warn!(why, "push: the collector does not take data; spooling to disk and retrying");
            }
            Some(since) => match self.fail_log.ready() {
                Some(_) => tracing::warn!(why, for_ = %humantime::format_duration(round_secs(since.elapsed())),
                    spooled_samples = pending, "push: the collector still does not take data"),
                None => tracing::debug!(why, retry_in = ?wait, "push: retry failed"),
            },
        }
    }

    fn on_reject(&mut self, status: u16, body: &str, samples: u32) {
        PushStats::add(&self.stats.rejected, u64::from(samples));
        if let Some(more) = self.reject_log.ready() {
            tracing::warn!(
                status,
                samples,
                earlier_rejections = more,
                response = body,
                hint = reject_hint(status, &self.token_from),
                "push: the collector rejected a request; not retried"
            );
        }
    }

    fn update_gauges(&mut self) {
        PushStats::add(&self.stats.dropped, self.spool.take_dropped());
        self.update_gauges_of(&self.spool);
    }

    fn update_gauges_of(&self, spool: &Spool) {
        self.stats.spool_bytes.store(spool.pending_bytes(), Ordering::Relaxed);
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// A running pusher: the handle for the sampler, the stats for `/metrics`, and
/// the thread to join at shutdown.
pub struct Pushing {
    pub handle: PushHandle,
    pub stats: Arc<PushStats>,
    pub thread: std::thread::JoinHandle<()>,
    /// Set at shutdown: queued ticks get one bounded attempt, the spool is not drained.
    pub stopping: Arc<AtomicBool>,
}

/// Opens the spool (falling back to the user's state directory when the
/// default one is not writable), builds the client and starts the pusher
/// thread.
pub fn start(cfg: &AgentConfig, p: &PushConfig) -> Result<Pushing, PushError> {
    let (spool, report) = open_spool(p)?;
    log_open(spool.dir(), &report);
    if p.interval.0 < cfg.interval.0 {
        tracing::warn!(push_interval = %p.interval, interval = %cfg.interval,
            "push.interval is shorter than the sampling interval: every tick is pushed");
    }
    let stats = Arc::new(PushStats::default());
    let transport = failover::Failover::http(&p.urls, &p.token, &p.tls, p.timeout.0, 2)?.with_stats(stats.clone());
    let stopping = Arc::new(AtomicBool::new(false));
    let pusher = Pusher::new(
        transport,
        spool,
        stats.clone(),
        Backoff::for_interval(p.interval.0),
        p.timeout.0,
        stopping.clone(),
    )
    .with_token_source(token_source(p));
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let thread = std::thread::Builder::new().name("pusher".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(pusher.run(rx)),
            Err(e) => tracing::error!(error = %e, "push: cannot start the pusher runtime; nothing is pushed"),
        }
    })?;
    tracing::info!(url = %p.urls.join(", "), interval = %p.interval, series = ?p.series, "pushing to the collector");
    let handle = PushHandle {
        tx,
        stats: stats.clone(),
        set: p.series,
        constant: constant_labels(cfg),
        every: p.interval.0,
        next_due: None,
        full_log: Every::new(LOG_EVERY),
    };
    Ok(Pushing { handle, stats, thread, stopping })
}

/// Where the push token came from, for messages: `token_file <path>` or the environment variable (never the
/// token itself).
pub fn token_source(p: &PushConfig) -> String {
    match &p.token_file {
        Some(f) => format!("token_file {}", f.display()),
        None => format!("the environment variable {}", crate::config::PUSH_TOKEN_ENV),
    }
}

/// What to do about a rejected request whose status says the collector refused the credentials (401: unknown
/// token, 403: not this site's): check the token where it came from (`token_from`, see [`token_source`]).
pub fn reject_hint(status: u16, token_from: &str) -> Option<String> {
    matches!(status, 401 | 403).then(|| {
        format!(
            "the collector refused the write token from {token_from}: give the token of the site this agent pushes for"
        )
    })
}

fn open_spool(p: &PushConfig) -> Result<(Spool, OpenReport), PushError> {
    let max = p.spool_max_bytes.0;
    match Spool::open(&p.spool_dir, max) {
        Ok(s) => Ok(s),
        Err(e @ SpoolError::Io { .. }) if !p.spool_dir_explicit => {
            let Some(alt) = crate::host_power::user_state_dir().map(|d| d.join("spool")) else { return Err(e.into()) };
            tracing::warn!(error = %e, fallback = %alt.display(), "push spool: default directory unusable");
            Ok(Spool::open(&alt, max)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn log_open(dir: &Path, r: &OpenReport) {
    if r.records > 0 {
        tracing::info!(spool = %dir.display(), records = r.records, samples = r.samples, bytes = r.bytes,
            "push: replaying the spool left by the last run first");
    }
    if r.skipped_bytes > 0 {
        tracing::warn!(spool = %dir.display(), skipped_bytes = r.skipped_bytes, torn_tails = r.torn_tails,
            "push: the spool had torn or corrupt records (power loss?); they were skipped");
    }
}

#[cfg(test)]
mod tests;
