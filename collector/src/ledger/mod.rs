//! The energy ledger: exact, replay-safe and restart-safe.
//!
//! Agents send cumulative counters; the ledger is the only place that turns
//! them into increments (baseline, reset, late, duplicate and stale rules of
//! docs/collector.md), in integer microjoules, spread over one-minute UTC buckets and
//! rolled up per hour in the same transaction. Every booking decision is a pure
//! function of [`rules`] (with the arithmetic of [`book`]); a store reads what a
//! rule needs, asks it and writes what it says. Stores sit behind the narrow
//! [`LedgerWriter`]/[`LedgerReader`] traits, which everything that writes or
//! reads the ledger uses: SQLite ([`sqlite`]) and PostgreSQL ([`pg`]).
//!
//! One writer thread owns the write connection and is fed by a bounded channel
//! ([`writer`]); requests are acknowledged only after the commit that holds them.
//! Host samples that arrive in order go to an append-only [`journal`] first and
//! are written to the per-series tables in bulk later; readers see both.

pub mod book;
pub mod checkpoint;
pub mod chunk;
pub mod journal;
pub mod pg;
pub mod query;
pub mod rules;
pub mod sqlite;
#[cfg(test)]
pub mod testing;
pub mod writer;

use std::borrow::Cow;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use book::{HOUR_MS, MINUTE_MS};

/// Retention and rules of the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// An interval between two samples longer than this books its energy but
    /// covers nothing (coverage shows the gap).
    pub gap_ms: i64,
    /// Raw samples and per-host minutes older than this are pruned; hours stay.
    pub minute_retention_ms: i64,
    /// A machine that has not claimed its host for this long yields it to another.
    pub host_takeover_ms: i64,
    /// fsync every commit before acknowledging (`synchronous=FULL`).
    pub fsync_each_commit: bool,
    /// How often the journal is written to the per-series tables.
    pub materialize_every_ms: i64,
    /// The most entries written in one go between two groups of requests, so no
    /// request waits for the whole journal; the writer sizes each slice below this
    /// after the last one's time (`sqlite::next_slice`): 100,000 held it 0.26-0.34 s
    /// under the fleet benchmark on a loaded machine.
    pub materialize_slice: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            gap_ms: 5 * MINUTE_MS,
            minute_retention_ms: 90 * 24 * HOUR_MS,
            host_takeover_ms: HOUR_MS,
            fsync_each_commit: true,
            materialize_every_ms: MINUTE_MS,
            materialize_slice: 100_000,
        }
    }
}

/// A hasher for keys the ledger assigns itself (series ids, bucket starts):
/// the multiply-rotate step of rustc's FxHash. SipHash's resistance to chosen
/// keys buys nothing for ids no client picks, and it was a few percent of the
/// writer's time; maps keyed by client-chosen names keep the default hasher.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }
}

/// A map keyed by ledger-assigned integers (see [`IdHasher`]).
pub type IdMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The metric the ledger books from agents (role `it_in`).
pub const HOST_ENERGY_METRIC: &str = "domesday_host_energy_joules_total";

/// The metric name under which facility meter series are stored.
pub const METER_METRIC: &str = "meter";

/// Units the ledger knows, with the factor from one micro-unit to the bucket's
/// micro-base unit (µJ for energy, µL for volume), so conversions stay exact.
pub fn micro_factor(unit: &str) -> Option<i64> {
    match unit {
        "J" => Some(1),
        "Wh" => Some(3_600),
        "kWh" => Some(3_600_000),
        "MWh" => Some(3_600_000_000),
        "L" => Some(1),
        "m3" => Some(1_000),
        _ => None,
    }
}

/// Whether a unit measures volume (water, fuel) rather than energy.
pub fn is_volume(unit: &str) -> bool {
    matches!(unit, "L" | "m3")
}

/// The labels of one booked series: a host's energy counter (`meter` empty,
/// unit `J`) or a facility meter's register (`host` empty). A request's samples
/// of one series share one of these, so decoding allocates per series, not per
/// sample, and the writer recognises a run of one series by pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLabels {
    pub site: Arc<str>,
    pub host: String,
    pub meter: String,
    pub method: Cow<'static, str>,
    pub quality: Cow<'static, str>,
    pub role: Cow<'static, str>,
    pub unit: Cow<'static, str>,
}

impl SeriesLabels {
    /// A host energy series; `site` is shared by every series of a request,
    /// method and quality are usually the vocabulary's static names.
    pub fn host(
        site: Arc<str>,
        host: &str,
        method: impl Into<Cow<'static, str>>,
        quality: impl Into<Cow<'static, str>>,
    ) -> Arc<Self> {
        Arc::new(SeriesLabels {
            site,
            host: host.to_string(),
            meter: String::new(),
            method: method.into(),
            quality: quality.into(),
            role: Cow::Borrowed("it_in"),
            unit: Cow::Borrowed("J"),
        })
    }
}

/// One cumulative sample to book (see [`SeriesLabels`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CounterSample {
    pub series: Arc<SeriesLabels>,
    pub ts_ms: i64,
    /// Micro-units of the series' unit (µJ for agents); `None` is a stale marker.
    pub value_micro: Option<i64>,
}

impl CounterSample {
    /// An agent's host energy sample, with labels of its own.
    pub fn host(site: &str, host: &str, method: &str, quality: &str, ts_ms: i64, value_uj: Option<i64>) -> Self {
        let series = SeriesLabels::host(site.into(), host, method.to_string(), quality.to_string());
        CounterSample { series, ts_ms, value_micro: value_uj }
    }

    /// A sample of a series whose labels are already shared.
    pub fn of_series(series: &Arc<SeriesLabels>, ts_ms: i64, value_micro: Option<i64>) -> Self {
        CounterSample { series: series.clone(), ts_ms, value_micro }
    }

    /// A facility meter's register reading.
    pub fn meter(site: &str, meter: &str, role: &str, unit: &str, ts_ms: i64, value_micro: i64) -> Self {
        let series = Arc::new(SeriesLabels {
            site: site.into(),
            host: String::new(),
            meter: meter.to_string(),
            method: Cow::Borrowed(""),
            quality: Cow::Borrowed("measured"),
            role: Cow::Owned(role.to_string()),
            unit: Cow::Owned(unit.to_string()),
        });
        CounterSample { series, ts_ms, value_micro: Some(value_micro) }
    }
}

/// A meter's consumption over an interval (`start,end,meter,value` rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalReading {
    pub site: String,
    pub meter: String,
    pub role: String,
    pub unit: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub value_micro: i64,
}

/// An agent's claim that `host` is the machine `machine_id` (from `domesday_host_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostClaim {
    pub site: String,
    pub host: String,
    pub machine_id: String,
    pub ts_ms: i64,
    /// What the machine is (labels `vendor`, `product`, `cpu_model`, `sockets`).
    pub model: HostModel,
}

/// A host's model as its agent reports it in `domesday_host_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostModel {
    pub vendor: String,
    pub product: String,
    pub cpu_model: String,
    pub sockets: Option<u32>,
}

/// A retired (decommissioned) host: who retired it, why, and when (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retirement {
    pub host: String,
    pub by: String,
    pub reason: String,
    pub retired_ms: i64,
}

/// A host energy sample kept aside rather than booked: stamped too far in the
/// future (its sender's clock is ahead), it would put energy in an hour that has
/// not happened yet. It is stored in the `quarantine` table for an operator to
/// inspect, never in the ledger's minutes or hours.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub site: String,
    pub host: String,
    pub method: String,
    pub ts_ms: i64,
    /// The counter value as sent, joules; `None` for a stale marker.
    pub value: Option<f64>,
    /// When the collector received it (Unix ms).
    pub received_ms: i64,
    /// Why it was kept aside (`future`).
    pub reason: &'static str,
}

/// What one accepted request asks the ledger to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub samples: Vec<CounterSample>,
    pub claims: Vec<HostClaim>,
    pub intervals: Vec<IntervalReading>,
    /// Samples kept aside in the `quarantine` table, not booked.
    pub quarantine: Vec<Quarantined>,
}

impl Batch {
    /// The register readings of a meter swap at `at_ms` ([`rules::swap_readings`]) as the batch a store books.
    pub fn meter_swap(
        site: &str,
        meter: &str,
        role: &str,
        unit: &str,
        at_ms: i64,
        final_micro: i64,
        initial_micro: i64,
    ) -> Batch {
        let series = CounterSample::meter(site, meter, role, unit, at_ms, 0).series;
        let samples = rules::swap_readings(at_ms, final_micro, initial_micro)
            .into_iter()
            .map(|(ts_ms, value)| CounterSample::of_series(&series, ts_ms, value))
            .collect();
        Batch { samples, ..Batch::default() }
    }
}

/// Net energy a batch added to one site's boundary role, µJ (energy units
/// only: water and fuel volumes are not in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleEnergy {
    pub site: String,
    pub role: String,
    pub energy_uj: i128,
}

/// What the ledger did with a batch's samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub booked: u64,
    /// Net energy this batch added to the ledger, µJ.
    pub energy_uj: i128,
    /// The same, per (site, role) it went to, energy only: one CSV of several
    /// meters adds to several roles.
    pub by_role: Vec<RoleEnergy>,
    /// Same (series, timestamp) and value again: counted once.
    pub duplicate: u64,
    /// Same (series, timestamp), another value: the first wins.
    pub conflict: u64,
    /// Another machine claims this host while its owner still reports.
    pub host_conflict: u64,
    /// Older than the retained samples: cannot be slotted in any more.
    pub too_old: u64,
    /// Kept aside in the `quarantine` table (a repeat of a quarantined sample is not counted again).
    pub quarantined: u64,
}

impl Outcome {
    pub fn add(&mut self, o: &Outcome) {
        self.booked += o.booked;
        self.energy_uj += o.energy_uj;
        for r in &o.by_role {
            add_role_energy(&mut self.by_role, &r.site, &r.role, r.energy_uj);
        }
        self.duplicate += o.duplicate;
        self.conflict += o.conflict;
        self.host_conflict += o.host_conflict;
        self.too_old += o.too_old;
        self.quarantined += o.quarantined;
    }
}

/// The ledger's total energy per (site, role), µJ.
pub type SiteTotals = Vec<(String, String, i128)>;

/// Adds `energy_uj` to the `(site, role)` entry of `list` (a handful of entries: a linear search).
pub fn add_role_energy(list: &mut Vec<RoleEnergy>, site: &str, role: &str, energy_uj: i128) {
    if energy_uj == 0 {
        return;
    }
    match list.iter_mut().find(|r| r.site == site && r.role == role) {
        Some(r) => r.energy_uj += energy_uj,
        None => list.push(RoleEnergy { site: site.to_string(), role: role.to_string(), energy_uj }),
    }
}

/// Storage errors. A failed transaction is rolled back whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Pg(#[from] pg::PgError),
    #[error("ledger database {path}: {message}")]
    Open { path: String, message: String },
    #[error("ledger journal row {seq} cannot be read ({message}); restore the database from a backup")]
    Journal { seq: i64, message: String },
    #[error(
        "ledger sample chunk of series {series_id} from {first_ts} ms cannot be read ({message}); restore the database from a backup"
    )]
    Chunk { series_id: i64, first_ts: i64, message: String },
}

/// Who changed the ledger by hand, and why (kept forever with the change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub author: String,
    pub reason: String,
    pub recorded_ms: i64,
}

/// What [`LedgerWriter::retire_host`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retire {
    /// Recorded now.
    Retired,
    /// The host was retired before; the first record stays.
    Already(Retirement),
    /// The ledger has no sample or claim of this host at this site.
    UnknownHost,
}

/// The ledger's store: everything that writes to it, the server's writer
/// thread and the one-shot commands (`import-meters`, `correct`, `swap-meter`,
/// `retire-host`) alike, goes through this trait, so a command never depends on
/// which store runs (`Box<dyn LedgerWriter>`). Each call is one transaction. A
/// store decides nothing itself: it reads what the [`rules`] need, asks them,
/// and writes what they say.
pub trait LedgerWriter: Send {
    /// Books batches of samples, host claims, interval readings and quarantined
    /// samples, all in one transaction; one outcome per batch.
    fn apply(&mut self, batches: &[Batch], now_ms: i64) -> Result<Vec<Outcome>, StoreError>;
    /// Books a signed manual correction of a meter's consumption over
    /// `[start, end)` (micro-units of its unit), recorded with who, when and why
    /// ([`rules::correction`]). History is not rewritten: the correction is an
    /// entry of its own, and it adds no coverage.
    #[allow(clippy::too_many_arguments)]
    fn correct(
        &mut self,
        site: &str,
        meter: &str,
        role: &str,
        unit: &str,
        start_ms: i64,
        end_ms: i64,
        value_micro: i64,
        who: &Provenance,
    ) -> Result<(), StoreError>;
    /// Records a meter swap at `at_ms`: the old meter's final register reading,
    /// then the new meter's initial one ([`rules::swap_readings`]). The ledger
    /// books up to the final reading, and the new meter's register starts a fresh
    /// baseline, so its initial value is never counted as consumption. The
    /// readings and the record of who and why commit together or not at all.
    #[allow(clippy::too_many_arguments)]
    fn swap_meter(
        &mut self,
        site: &str,
        meter: &str,
        role: &str,
        unit: &str,
        at_ms: i64,
        final_micro: i64,
        initial_micro: i64,
        who: &Provenance,
    ) -> Result<Outcome, StoreError>;
    /// Records that a decommissioned host is retired, with who, when and why.
    /// Only a record of its own: the host's series and energy stay as booked.
    /// `known` says the host is expected by the configuration even if the
    /// ledger never saw it.
    fn retire_host(&mut self, site: &str, host: &str, known: bool, who: &Provenance) -> Result<Retire, StoreError>;
    /// Drops per-host minutes and raw samples older than the retention (hourly roll-ups stay).
    fn prune(&mut self, now_ms: i64) -> Result<(), StoreError>;
    /// Work that may wait until the requests are answered (materializing the
    /// journal when it is due); `force` does it now, as at shutdown.
    fn housekeeping(&mut self, force: bool) -> Result<(), StoreError>;
    /// The ledger's total energy per (site, role) when another process (the
    /// `import-meters`, `correct` or `swap-meter` commands, another collector
    /// on a shared PostgreSQL ledger) may have committed to it since the last
    /// call, `None` otherwise. SQLite answers when its file changed; PostgreSQL
    /// re-reads its roll-ups every [`pg::totals::READ_EVERY`].
    fn totals_if_changed_elsewhere(&mut self) -> Result<Option<SiteTotals>, StoreError> {
        Ok(None)
    }
    /// Moves what the write-ahead log holds into the database (at shutdown).
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Reads the ledger; safe while a writer runs.
pub trait LedgerReader: Send + Sync {
    fn energy(&self, q: &query::EnergyQuery) -> Result<query::EnergyReport, StoreError>;
    /// [`Self::energy`] with [`query::Detail::Totals`]: the sums and whether
    /// there is a sample, not how many (the indicators' and reports' question).
    fn energy_totals(&self, q: &query::EnergyQuery) -> Result<query::EnergyReport, StoreError> {
        self.energy(q)
    }
    fn hosts(&self, site: &str, now_ms: i64) -> Result<Vec<query::HostRow>, StoreError>;
    /// The claimed hosts of a site with a sample in `[from, to)`, and their model.
    fn host_models(&self, site: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(String, HostModel)>, StoreError>;
    fn site_totals(&self) -> Result<Vec<(String, String, i128)>, StoreError>;
    /// Hourly energy (µJ) of a site's meters of one role over whole hours in `[from, to)`.
    fn role_hourly(&self, site: &str, role: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, i128)>, StoreError>;
    /// The retired hosts of a site (`retire-host`), by host name.
    fn retired_hosts(&self, _site: &str) -> Result<Vec<Retirement>, StoreError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
