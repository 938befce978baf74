//! The single writer thread. Requests arrive over a bounded channel; the thread
//! drains up to [`GROUP_MAX`] of them into one transaction (group commit),
//! commits, and only then answers each request. When the channel is full the
//! ingest handler answers 503 so senders retry: the queue never grows without
//! bound and nothing accepted is ever dropped. Between groups the thread does
//! the store's housekeeping (journal materialization, pruning).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use super::{Batch, LedgerWriter, Outcome};

/// Requests waiting for the writer.
pub const WRITE_QUEUE: usize = 256;
/// Requests committed together at most.
pub const GROUP_MAX: usize = 64;
/// A writer step longer than this is logged with its phase (`ledger writer: slow step`),
/// so a stall of ingest can be told apart: commit, materialization, checkpoint or prune.
const SLOW_STEP: Duration = Duration::from_millis(200);

/// Logs `phase` when it held the writer longer than [`SLOW_STEP`].
fn note_slow(phase: &'static str, started: Instant, requests: usize) {
    let took = started.elapsed();
    if took >= SLOW_STEP {
        tracing::warn!(phase, took_ms = took.as_millis() as u64, requests, "ledger writer: slow step");
    }
}

/// How often old minutes and samples are pruned by default (`[ledger] prune_every`).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A request for the writer.
pub struct Job {
    pub batch: Batch,
    /// The outcome, and the batch back: it is freed by the waiting handler on
    /// its own worker, not by the writer (freeing a large request's samples
    /// was a few percent of the writer's time).
    pub reply: oneshot::Sender<(Result<Outcome, String>, Batch)>,
}

/// Called after each commit with the batches and what was booked.
pub type OnCommit = Box<dyn Fn(&[Batch], &[Outcome]) + Send>;

/// Called with the ledger's totals per (site, role) when another process
/// committed to the ledger (checked after each group, and at each [`WriterHandle::sync`]).
pub type OnTotals = Box<dyn Fn(super::SiteTotals) + Send>;

/// The sending side, cloned into the HTTP handlers.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<(Job, Instant)>,
    /// Milliseconds the oldest request of the last group waited (ledger lag).
    lag_ms: Arc<AtomicI64>,
}

/// Why a request could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the ledger writer is busy; retry")]
    Busy,
    #[error("the ledger writer has stopped")]
    Stopped,
}

impl WriterHandle {
    /// Queues a batch (fails fast when the queue is full) and waits for its commit.
    pub async fn submit(&self, batch: Batch) -> Result<Result<Outcome, String>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((Job { batch, reply }, Instant::now())).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Busy,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
        })?;
        rx.await.map(|(outcome, _batch)| outcome).map_err(|_| SubmitError::Stopped)
    }

    /// Wakes the writer with an empty request so that it looks for commits of
    /// other processes even when no data arrives (see [`OnTotals`]).
    pub async fn sync(&self) -> Result<(), SubmitError> {
        self.submit(Batch::default()).await.map(|_| ())
    }

    pub fn lag_seconds(&self) -> f64 {
        self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Whether the writer may prune now (retention is site-wide work: of several collectors on one ledger, only the
/// leading one prunes).
pub type MayPrune = Box<dyn Fn() -> bool + Send>;

/// Starts the writer thread. It stops when every handle is dropped, after
/// committing what is queued. It prunes every `prune_every` (the first time one
/// `prune_every` after it starts) when `may_prune` says so then.
pub fn spawn(
    mut store: Box<dyn LedgerWriter>,
    on_commit: OnCommit,
    on_totals: OnTotals,
    prune_every: Duration,
    may_prune: MayPrune,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<(Job, Instant)>(WRITE_QUEUE);
    let lag_ms = Arc::new(AtomicI64::new(0));
    let lag = lag_ms.clone();
    let thread = std::thread::Builder::new().name("ledger-writer".into()).spawn(move || {
        let mut last_prune = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let oldest = jobs.iter().map(|(_, t)| *t).min().unwrap_or_else(Instant::now);
            lag.store(oldest.elapsed().as_millis() as i64, Ordering::Relaxed);
            let (batches, replies): (Vec<Batch>, Vec<_>) = jobs.into_iter().map(|(j, _)| (j.batch, j.reply)).unzip();
            let t = Instant::now();
            let applied = store.apply(&batches, now_ms());
            note_slow("commit", t, batches.len());
            match applied {
                Ok(outcomes) => {
                    on_commit(&batches, &outcomes);
                    for ((reply, o), batch) in replies.into_iter().zip(outcomes).zip(batches) {
                        let _ = reply.send((Ok(o), batch));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "ledger commit failed; the requests are answered 503 and will be retried");
                    for (reply, batch) in replies.into_iter().zip(batches) {
                        let _ = reply.send((Err(e.to_string()), batch));
                    }
                }
            }
            lag.store(0, Ordering::Relaxed);
            // After the answers: materializing the journal delays no request it holds.
            let t = Instant::now();
            if let Err(e) = store.housekeeping(false) {
                tracing::warn!(error = %e, "writing the ledger journal to its tables failed; it stays journaled and is retried");
            }
            note_slow("materialize", t, rx.len());
            match store.totals_if_changed_elsewhere() {
                Ok(Some(totals)) => on_totals(totals),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the ledger totals after another process wrote failed"),
            }
            if last_prune.elapsed() >= prune_every {
                last_prune = Instant::now();
                if may_prune() {
                    if let Err(e) = store.prune(now_ms()) {
                        tracing::warn!(error = %e, "ledger pruning failed");
                    }
                    note_slow("prune", last_prune, rx.len());
                }
            }
        }
        // Every sender is gone: leave the ledger fully materialized, its WAL in the database.
        if let Err(e) = store.housekeeping(true) {
            tracing::warn!(error = %e, "writing the ledger journal to its tables at shutdown failed; the next start does it");
        }
        if let Err(e) = store.checkpoint() {
            tracing::warn!(error = %e, "checkpointing the ledger at shutdown failed; the next start does it");
        }
    })?;
    Ok((WriterHandle { tx, lag_ms }, thread))
}
