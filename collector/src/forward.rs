//! `[forward]`: every accepted remote_write request is passed on, byte for
//! byte, to an upstream remote_write receiver (Prometheus, VictoriaMetrics,
//! Mimir), so raw series live in a real TSDB while the collector keeps only the
//! ledger. While the upstream is unreachable or answers 5xx/429, bodies go to an
//! on-disk spool (the same crate as the agent's) and are replayed in order; other
//! 4xx answers are counted as rejected and not retried. A bounded queue sits
//! between the ingest handlers and the forwarder: when it is full, ingest waits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use domesday_model::remote_write;
use domesday_spool::Spool;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use domesday_model::duration::Dur;
use domesday_model::secret::Secret;

/// Bodies waiting for the forwarder thread.
pub const FORWARD_QUEUE: usize = 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_spool_max() -> u64 {
    1 << 30
}

/// `[forward]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// The upstream remote_write URL, e.g. `http://victoria:8428/api/v1/write`.
    pub url: String,
    /// A file holding a bearer token for the upstream (optional).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(skip)]
    pub token: Option<Secret>,
    /// Where bodies wait while the upstream is away (default: `forward-spool` beside a SQLite ledger, else in the
    /// working directory).
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Bound of the spool on disk, bytes; the oldest bodies are dropped first (counted).
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Extra HTTP headers on every request, e.g. Mimir's tenant `X-Scope-OrgID`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Headers the forwarder sets itself, which `[forward] headers` may not replace.
const OWN_HEADERS: [&str; 7] = [
    "authorization",
    "content-encoding",
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "x-prometheus-remote-write-version",
];

/// Checks `[forward] headers`: valid HTTP names and values, none the forwarder
/// sets itself (the bearer token comes from `token_file`).
pub fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("header name {name:?} is not a valid HTTP header name"));
        }
        if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "header {name:?} is set by the collector itself{}",
                if name.eq_ignore_ascii_case("authorization") { "; put a bearer token in token_file" } else { "" }
            ));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(format!("the value of header {name:?} is not a valid HTTP header value (visible ASCII)"));
        }
    }
    Ok(())
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ForwardStats {
    pub sent: AtomicU64,
    pub spooled: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub spool_bytes: AtomicU64,
}

/// The ingest side: hands accepted bodies to the forwarder.
#[derive(Clone)]
pub struct ForwardHandle {
    tx: mpsc::Sender<Bytes>,
    pub stats: Arc<ForwardStats>,
}

impl ForwardHandle {
    /// Queues a body; waits while the queue is full (bounded backpressure).
    pub async fn offer(&self, body: Bytes) {
        if self.tx.send(body).await.is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Sent {
    Ok,
    Retry(String),
    Rejected(String),
}

async fn send(client: &reqwest::Client, cfg: &ForwardConfig, body: &[u8]) -> Sent {
    let mut req = client
        .post(&cfg.url)
        .header("Content-Encoding", remote_write::CONTENT_ENCODING)
        .header("Content-Type", remote_write::CONTENT_TYPE)
        .header(remote_write::VERSION_HEADER, remote_write::VERSION)
        .header("User-Agent", concat!("domesday-collector/", env!("CARGO_PKG_VERSION")))
        .body(body.to_vec());
    for (name, value) in &cfg.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    if let Some(t) = &cfg.token {
        req = req.bearer_auth(t.expose());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Sent::Ok,
        Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
            Sent::Retry(format!("upstream answered {}", r.status()))
        }
        Ok(r) => {
            let status = r.status();
            Sent::Rejected(format!("upstream answered {status}: {}", r.text().await.unwrap_or_default()))
        }
        Err(e) => Sent::Retry(format!("upstream unreachable: {e}")),
    }
}

/// Opens the spool and starts the forwarder task.
pub fn spawn(cfg: ForwardConfig, default_dir: PathBuf) -> anyhow::Result<(ForwardHandle, tokio::task::JoinHandle<()>)> {
    let dir = cfg.spool_dir.clone().unwrap_or(default_dir);
    let (spool, report) =
        Spool::open(&dir, cfg.spool_max_bytes).map_err(|e| anyhow::anyhow!("[forward] spool: {e}"))?;
    if !spool.is_empty() {
        tracing::info!(spool = %dir.display(), records = report.records, bytes = report.bytes, "forward: replaying the spool first");
    }
    let client = reqwest::Client::builder().timeout(cfg.timeout.0).build()?;
    let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
    let stats = Arc::new(ForwardStats::default());
    let task = tokio::spawn(run(cfg, client, spool, rx, stats.clone()));
    Ok((ForwardHandle { tx, stats }, task))
}

async fn run(
    cfg: ForwardConfig,
    client: reqwest::Client,
    mut spool: Spool,
    mut rx: mpsc::Receiver<Bytes>,
    stats: Arc<ForwardStats>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut retry_at: Option<tokio::time::Instant> = (!spool.is_empty()).then(tokio::time::Instant::now);
    loop {
        stats.spool_bytes.store(spool.disk_bytes(), Ordering::Relaxed);
        stats.dropped.fetch_add(spool.take_dropped(), Ordering::Relaxed);
        let wait = retry_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            body = rx.recv() => {
                let Some(body) = body else { break };
                if spool.is_empty() && retry_at.is_none() {
                    match send(&client, &cfg, &body).await {
                        Sent::Ok => { stats.sent.fetch_add(1, Ordering::Relaxed); continue; }
                        Sent::Rejected(why) => {
                            tracing::warn!(%why, "forward: request rejected upstream; not retried");
                            stats.rejected.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Sent::Retry(why) => {
                            tracing::warn!(%why, "forward: upstream away; spooling");
                            retry_at = Some(tokio::time::Instant::now() + backoff);
                        }
                    }
                }
                match spool.append(&body, 0) {
                    Ok(()) => { stats.spooled.fetch_add(1, Ordering::Relaxed); }
                    Err(e) => {
                        tracing::error!(error = %e, "forward: cannot spool; request dropped");
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            () = tokio::time::sleep_until(wait), if retry_at.is_some() => {
                // Replay the spool oldest first until it is empty or the upstream fails again.
                loop {
                    let peeked = match spool.peek() {
                        Ok(Some(p)) => p,
                        Ok(None) => { retry_at = None; backoff = Duration::from_millis(250); break; }
                        Err(e) => { tracing::error!(error = %e, "forward: spool unreadable"); retry_at = Some(tokio::time::Instant::now() + MAX_BACKOFF); break; }
                    };
                    match send(&client, &cfg, &peeked.payload).await {
                        Sent::Ok => stats.sent.fetch_add(1, Ordering::Relaxed),
                        Sent::Rejected(why) => {
                            tracing::warn!(%why, "forward: spooled request rejected upstream; dropped");
                            stats.rejected.fetch_add(1, Ordering::Relaxed)
                        }
                        Sent::Retry(_) => {
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            retry_at = Some(tokio::time::Instant::now() + backoff);
                            break;
                        }
                    };
                    if let Err(e) = spool.ack(&peeked) {
                        tracing::error!(error = %e, "forward: cannot advance the spool");
                        retry_at = Some(tokio::time::Instant::now() + MAX_BACKOFF);
                        break;
                    }
                }
            }
        }
    }
}
