//! What one tick hands on: the [`Snapshot`] the sampler produces and the
//! exporter, the pusher and `probe` read; the push self-metrics
//! ([`PushStats`]) the pusher writes and the sampler exports with each tick;
//! the agent's constant labels. It sits below all of them so that none of
//! them imports another for a shared type.

use std::sync::atomic::{AtomicU64, Ordering};

use domesday_model::catalog::{PUSH_ERRORS, PUSH_LAST_SUCCESS, PUSH_SAMPLES, PUSH_URL_INDEX, SPOOL_BYTES};
use domesday_model::vocab::PushFailure;
use domesday_model::vocab::Source;

use crate::config::AgentConfig;
use crate::host_power::HostReading;
use crate::sources::{Sample, Status};

/// Everything one tick produced, ready to render.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub samples: Vec<Sample>,
    pub statuses: Vec<Status>,
    pub host: Option<HostReading>,
    /// Sources running but off for lack of hardware, and why (`probe`).
    pub off: Vec<(Source, String)>,
}

/// The push self-metrics, shared by the pusher (writer) and the sampler, which
/// exports them with each tick.
#[derive(Debug, Default)]
pub struct PushStats {
    pub sent: AtomicU64,
    pub spooled: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected: AtomicU64,
    /// Bytes waiting in the spool.
    pub spool_bytes: AtomicU64,
    /// Unix time in ms of the last 2xx; 0 before the first.
    pub last_success_ms: AtomicU64,
    /// Position in `push.url` of the collector pushed to now.
    pub url_index: AtomicU64,
    /// Failed requests, by `PushFailure` (in `PushFailure::ALL` order).
    pub errors: [AtomicU64; PushFailure::ALL.len()],
}

impl PushStats {
    /// `domesday_push_samples_total`, `domesday_spool_bytes`,
    /// `domesday_push_last_success_timestamp_seconds`, `domesday_push_url_index`.
    pub fn samples(&self) -> Vec<Sample> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut v: Vec<Sample> = [
            ("sent", &self.sent),
            ("spooled", &self.spooled),
            ("dropped", &self.dropped),
            ("rejected", &self.rejected),
        ]
        .into_iter()
        .map(|(result, n)| Sample::new(&PUSH_SAMPLES, vec![result.to_string()], get(n)))
        .collect();
        for (reason, n) in PushFailure::ALL.iter().zip(&self.errors) {
            v.push(Sample::new(&PUSH_ERRORS, vec![reason.to_string()], get(n)));
        }
        v.push(Sample::new(&SPOOL_BYTES, vec![], get(&self.spool_bytes)));
        v.push(Sample::new(&PUSH_LAST_SUCCESS, vec![], get(&self.last_success_ms) / 1000.0));
        v.push(Sample::new(&PUSH_URL_INDEX, vec![], get(&self.url_index)));
        v
    }

    /// Counts one failed request.
    pub(crate) fn failed(&self, reason: PushFailure) {
        if let Some(i) = PushFailure::ALL.iter().position(|r| *r == reason) {
            Self::add(&self.errors[i], 1);
        }
    }

    pub(crate) fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// The constant labels: `site`, `host`, then the extras in name order.
pub fn constant_labels(cfg: &AgentConfig) -> Vec<(String, String)> {
    let mut v = vec![("site".to_string(), cfg.site.clone()), ("host".to_string(), cfg.host.clone())];
    v.extend(cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    v
}
