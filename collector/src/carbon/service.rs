//! The cached intensity service: one source, a cache of UTC-day chunks, a
//! timeout per request, and the fallback intensity for what the source could
//! not give.
//!
//! Quota: ranges are served from day chunks, and a chunk is asked for again at
//! most once per `min_refresh` (once it is settled — ended `settle` before it
//! was fetched, with no gap — it is kept for `settled_ttl`). However many
//! periods a request splits into, one day costs one call. Failures are cached
//! too: after a failure or a timeout the remaining chunks of that call are not
//! tried (they take stale data if any, else the fallback), and the failed
//! chunk is not retried before `min_refresh`. Fetches are serialised by the
//! cache lock, so two requests never ask for the same chunk at once.
//!
//! Every answer says which source and basis it is, and which intervals took
//! the fallback and why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;

use super::{CarbonError, FactorBasis, IntensityPoint, IntensitySeries, IntensitySource, normalise};

const DAY_MS: i64 = 86_400_000;

/// Cache and request policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceOptions {
    /// Per request to the source.
    pub timeout: Duration,
    /// A chunk is fetched again at most this often.
    pub min_refresh: Duration,
    /// How long a settled chunk is kept before it is asked for again.
    pub settled_ttl: Duration,
    /// A chunk is settled once it ended this long before it was fetched (RTE publishes ~30 min late).
    pub settle: Duration,
    /// Chunk length (a UTC day: 96 RTE rows, one call).
    pub chunk_ms: i64,
    /// At most this many requests per call (and none once the call has spent
    /// `timeout` fetching); the rest of the range takes stale data or the
    /// fallback until later calls fill it.
    pub max_fetches_per_call: usize,
    /// Chunks kept.
    pub max_chunks: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            timeout: Duration::from_secs(10),
            min_refresh: Duration::from_secs(15 * 60),
            settled_ttl: Duration::from_secs(7 * 86_400),
            settle: Duration::from_secs(6 * 3600),
            chunk_ms: DAY_MS,
            max_fetches_per_call: 31,
            max_chunks: 800,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    fetched_at_ms: i64,
    /// Last good answer (kept through later failures: real data beats the fallback).
    points: Option<Vec<IntensityPoint>>,
    settled: bool,
    error: Option<CarbonError>,
}

/// Intensities from one source, cached, with a visible fallback.
pub struct CarbonService {
    source: Arc<dyn IntensitySource>,
    fallback_g_per_kwh: Option<f64>,
    opts: ServiceOptions,
    cache: Mutex<BTreeMap<i64, Entry>>,
    requests: AtomicU64,
}

impl std::fmt::Debug for CarbonService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarbonService")
            .field("source", &self.source.name())
            .field("fallback_g_per_kwh", &self.fallback_g_per_kwh)
            .field("opts", &self.opts)
            .finish()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl CarbonService {
    /// `fallback_g_per_kwh` must have the source's basis (see [`super::CarbonConfig::validate`]).
    pub fn new(source: Arc<dyn IntensitySource>, fallback_g_per_kwh: Option<f64>, opts: ServiceOptions) -> Self {
        let opts = ServiceOptions { chunk_ms: opts.chunk_ms.max(60_000), ..opts };
        CarbonService {
            source,
            fallback_g_per_kwh,
            opts,
            cache: Mutex::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    pub fn source_name(&self) -> String {
        self.source.name()
    }

    pub fn basis(&self) -> FactorBasis {
        self.source.basis()
    }

    pub fn grid_zone(&self) -> String {
        self.source.grid_zone().to_string()
    }

    pub fn fallback_g_per_kwh(&self) -> Option<f64> {
        self.fallback_g_per_kwh
    }

    /// Requests sent to the source so far (tests, self-metrics).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn fresh(&self, e: &Entry, now_ms: i64) -> bool {
        let ttl = if e.settled && e.error.is_none() { self.opts.settled_ttl } else { self.opts.min_refresh };
        now_ms.saturating_sub(e.fetched_at_ms) < ms(ttl)
    }

    /// Intensities over `[from_ms, to_ms)` at `now_ms`: live points where the
    /// source has them, the fallback (flagged) elsewhere when one is configured.
    pub async fn series(&self, from_ms: i64, to_ms: i64, now_ms: i64) -> IntensitySeries {
        let mut out = IntensitySeries {
            grid_zone: self.grid_zone(),
            source: self.source_name(),
            basis: self.basis(),
            points: Vec::new(),
            fallback_used: false,
            source_error: None,
        };
        if from_ms >= to_ms {
            return out;
        }
        let c = self.opts.chunk_ms;
        let mut live = Vec::new();
        let mut budget = self.opts.max_fetches_per_call;
        let mut failed: Option<CarbonError> = None;
        // However many chunks, one call spends at most about twice the timeout fetching.
        let started = std::time::Instant::now();
        {
            let mut cache = self.cache.lock().await;
            let mut start = from_ms.div_euclid(c) * c;
            while start < to_ms {
                let end = start.saturating_add(c);
                let cached = cache.get(&start).cloned();
                let usable = cached.as_ref().is_some_and(|e| self.fresh(e, now_ms));
                // A local source (static factors) costs no request: a year of
                // day chunks is answered whole, the API's and a report's alike.
                if self.source.is_local() {
                    budget = budget.max(1);
                } else if started.elapsed() >= self.opts.timeout {
                    budget = 0;
                }
                let entry = if usable || failed.is_some() || budget == 0 {
                    if cached.is_none() && failed.is_none() && budget == 0 {
                        out.source_error.get_or_insert_with(|| "fetch budget of this call spent".into());
                    }
                    cached
                } else {
                    budget -= 1;
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    let r = match tokio::time::timeout(self.opts.timeout, self.source.fetch(start, end)).await {
                        Ok(r) => r,
                        Err(_) => Err(CarbonError::Timeout(ms(self.opts.timeout) as u64)),
                    };
                    let e = match r {
                        Ok(points) => {
                            let points = normalise(points);
                            let settled =
                                end.saturating_add(ms(self.opts.settle)) <= now_ms && covers(&points, start, end);
                            Entry { fetched_at_ms: now_ms, points: Some(points), settled, error: None }
                        }
                        Err(e) => {
                            failed = Some(e.clone());
                            let points = cached.and_then(|c| c.points);
                            Entry { fetched_at_ms: now_ms, points, settled: false, error: Some(e) }
                        }
                    };
                    cache.insert(start, e.clone());
                    Some(e)
                };
                if let Some(e) = entry {
                    if let Some(err) = &e.error {
                        out.source_error.get_or_insert_with(|| err.to_string());
                    }
                    if let Some(p) = e.points {
                        live.extend(p);
                    }
                }
                start = end;
            }
            while cache.len() > self.opts.max_chunks {
                let oldest = cache.iter().min_by_key(|(_, e)| e.fetched_at_ms).map(|(k, _)| *k);
                match oldest {
                    Some(k) => cache.remove(&k),
                    None => break,
                };
            }
        }
        if let Some(e) = failed {
            out.source_error = Some(e.to_string());
        }
        let live = clip(normalise(live), from_ms, to_ms);
        out.points = fill(live, from_ms, to_ms, self.fallback_g_per_kwh);
        out.fallback_used = out.points.iter().any(|p| p.fallback);
        out
    }

    /// The latest live (or fallback) intensity at `now_ms`, for the
    /// `domesday_grid_carbon_intensity_grams_per_kwh` gauge.
    pub async fn current(&self, now_ms: i64) -> Option<IntensityPoint> {
        let s = self.series(now_ms.saturating_sub(DAY_MS), now_ms, now_ms).await;
        s.points.iter().rev().find(|p| !p.fallback).or(s.points.last()).copied()
    }
}

/// Whether `points` cover `[start, end)` without a gap.
fn covers(points: &[IntensityPoint], start: i64, end: i64) -> bool {
    let mut cursor = start;
    for p in points {
        if p.start_ms > cursor {
            return false;
        }
        cursor = cursor.max(p.end_ms);
    }
    cursor >= end
}

fn clip(points: Vec<IntensityPoint>, from_ms: i64, to_ms: i64) -> Vec<IntensityPoint> {
    points
        .into_iter()
        .filter(|p| p.end_ms > from_ms && p.start_ms < to_ms)
        .map(|p| IntensityPoint { start_ms: p.start_ms.max(from_ms), end_ms: p.end_ms.min(to_ms), ..p })
        .collect()
}

/// Fills the gaps of sorted, non-overlapping `points` in `[from_ms, to_ms)`
/// with fallback points (when there is a fallback).
pub fn fill(points: Vec<IntensityPoint>, from_ms: i64, to_ms: i64, fallback: Option<f64>) -> Vec<IntensityPoint> {
    let Some(g) = fallback else { return points };
    let gap = |s: i64, e: i64| IntensityPoint { start_ms: s, end_ms: e, g_per_kwh: g, fallback: true };
    let mut out = Vec::with_capacity(points.len() + 2);
    let mut cursor = from_ms;
    for p in points {
        if p.start_ms > cursor {
            out.push(gap(cursor, p.start_ms));
        }
        cursor = p.end_ms;
        out.push(p);
    }
    if cursor < to_ms {
        out.push(gap(cursor, to_ms));
    }
    out
}
