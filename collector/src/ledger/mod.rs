//! The energy ledger: exact, replay-safe and restart-safe.
//!
//! Agents send cumulative counters; the ledger is the only place that turns
//! them into increments (baseline, reset, late, duplicate and stale rules of
//! contract §6), in integer microjoules, spread over one-minute UTC buckets and
//! rolled up per hour in the same transaction. Storage sits behind the narrow
//! [`LedgerWriter`]/[`LedgerReader`] traits: SQLite ([`sqlite`]) today, a
//! PostgreSQL implementation for scale-out later.
//!
//! One writer thread owns the write connection and is fed by a bounded channel
//! ([`writer`]); requests are acknowledged only after the commit that holds them.

pub mod book;
pub mod query;
pub mod sqlite;
pub mod writer;

/// The metric the ledger books from agents (role `it_in`).
pub const HOST_ENERGY_METRIC: &str = "domesday_host_energy_joules_total";

/// One counter sample to book.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterSample {
    pub site: String,
    pub host: String,
    pub method: String,
    pub quality: String,
    pub ts_ms: i64,
    /// µJ; `None` is a stale marker.
    pub value_uj: Option<i64>,
}

/// An agent's claim that `host` is the machine `machine_id` (from `domesday_host_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostClaim {
    pub site: String,
    pub host: String,
    pub machine_id: String,
    pub ts_ms: i64,
}

/// What one accepted request asks the ledger to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub samples: Vec<CounterSample>,
    pub claims: Vec<HostClaim>,
}

/// What the ledger did with a batch's samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub booked: u64,
    /// Net energy this batch added to the ledger, µJ.
    pub energy_uj: i128,
    /// Same (series, timestamp) and value again: counted once.
    pub duplicate: u64,
    /// Same (series, timestamp), another value: the first wins.
    pub conflict: u64,
    /// Another machine claims this host while its owner still reports.
    pub host_conflict: u64,
    /// Older than the retained samples: cannot be slotted in any more.
    pub too_old: u64,
}

impl Outcome {
    pub fn add(&mut self, o: &Outcome) {
        self.booked += o.booked;
        self.energy_uj += o.energy_uj;
        self.duplicate += o.duplicate;
        self.conflict += o.conflict;
        self.host_conflict += o.host_conflict;
        self.too_old += o.too_old;
    }
}

/// Storage errors. A failed transaction is rolled back whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("ledger database {path}: {message}")]
    Open { path: String, message: String },
}

/// Books batches; one call is one transaction.
pub trait LedgerWriter: Send {
    fn apply(&mut self, batches: &[Batch], now_ms: i64) -> Result<Vec<Outcome>, StoreError>;
    /// Drops per-host minutes and raw samples older than the retention (hourly roll-ups stay).
    fn prune(&mut self, now_ms: i64) -> Result<(), StoreError>;
}

/// Reads the ledger; safe while a writer runs.
pub trait LedgerReader: Send + Sync {
    fn energy(&self, q: &query::EnergyQuery) -> Result<query::EnergyReport, StoreError>;
    fn hosts(&self, site: &str, now_ms: i64) -> Result<Vec<query::HostRow>, StoreError>;
    fn site_totals(&self) -> Result<Vec<(String, String, i128)>, StoreError>;
}

#[cfg(test)]
mod tests;
