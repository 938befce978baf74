//! The SQLite ledger (bundled SQLite, WAL).
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL`, so every commit is
//! fsynced before the writer acknowledges the requests it holds: a power loss
//! loses nothing that was answered 2xx. Group commit (several requests per
//! transaction) pays for the fsync.
//!
//! Schema (versioned with `PRAGMA user_version`, migrations in [`MIGRATIONS`]):
//! `series` (site, host, metric, method), raw samples (so a late sample can be
//! slotted between its neighbours and a replay recognised: meters' as `samples`
//! rows, hosts' as per-series [`super::chunk`]s), `intervals` of meters,
//! `hours` buckets of integer µJ (or µL for water and fuel) with the observed
//! milliseconds, `minutes` buckets of meters (a host series' minutes are
//! recomputed from its chunks), `hosts` (the machine that owns each host name)
//! and `host_conflicts`, the `journal` of host samples not yet written to
//! chunks and hours ([`super::journal`]), `retired_hosts` (who retired a
//! decommissioned host, when and why), `quarantine` (host samples stamped
//! too far in the future, kept aside and never booked), and the roll-ups written
//! with `hours` in the same transaction: `site_hours` and `site_days` (the host
//! series' hours summed per site, method, quality and hour or UTC day, so a
//! site-wide question reads a row per hour or day, not per host) and `days` (a
//! meter's hours per UTC day, so a month or a year reads about a row per day).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::book::{DAY_MS, HOUR_MS, MINUTE_MS, Value, spread};
use super::chunk;
use super::journal::{self, Entry, Pending};
use super::query::{EnergyQuery, EnergyReport, HostRow};
use super::rules::{self, Claim, Placement, Reading, Slot};
use super::{
    Batch, HOST_ENERGY_METRIC, HostClaim, HostModel, IdMap, LedgerReader, LedgerWriter, METER_METRIC, Outcome, Policy,
    Retirement, StoreError, micro_factor,
};
pub use super::{Provenance, Retire};

/// Schema migrations; index + 1 is the `user_version` after applying it.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL, host TEXT NOT NULL, meter TEXT NOT NULL, metric TEXT NOT NULL, method TEXT NOT NULL,
    quality TEXT NOT NULL, role TEXT NOT NULL, unit TEXT NOT NULL,
    -- Raw samples before this were pruned: a late sample older than it cannot find its neighbours.
    pruned_until_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (site, host, meter, metric, method)
);
CREATE TABLE samples (
    series_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, value_micro INTEGER,
    PRIMARY KEY (series_id, ts_ms)
) WITHOUT ROWID;
CREATE TABLE intervals (
    series_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, value_micro INTEGER NOT NULL,
    PRIMARY KEY (series_id, start_ms, end_ms)
) WITHOUT ROWID;
CREATE TABLE minutes (
    series_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, energy_uj INTEGER NOT NULL, covered_ms INTEGER NOT NULL,
    PRIMARY KEY (series_id, start_ms)
) WITHOUT ROWID;
CREATE TABLE hours (
    series_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, energy_uj INTEGER NOT NULL, covered_ms INTEGER NOT NULL,
    PRIMARY KEY (series_id, start_ms)
) WITHOUT ROWID;
CREATE TABLE hosts (
    site TEXT NOT NULL, host TEXT NOT NULL, machine_id TEXT NOT NULL, claimed_ms INTEGER NOT NULL,
    vendor TEXT NOT NULL DEFAULT '', product TEXT NOT NULL DEFAULT '', cpu_model TEXT NOT NULL DEFAULT '', sockets INTEGER,
    PRIMARY KEY (site, host)
);
CREATE TABLE adjustments (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL, kind TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
    value_micro INTEGER NOT NULL, final_micro INTEGER, initial_micro INTEGER,
    author TEXT NOT NULL, reason TEXT NOT NULL, recorded_ms INTEGER NOT NULL
);
CREATE TABLE host_conflicts (
    site TEXT NOT NULL, host TEXT NOT NULL, machine_id TEXT NOT NULL,
    first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, rejected_samples INTEGER NOT NULL,
    PRIMARY KEY (site, host, machine_id)
);
"#,
    r#"
-- Host samples booked but not yet written to samples/minutes/hours (see ledger::journal).
-- AUTOINCREMENT: a seq is never reused, so readers may cache rows by seq.
CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
"#,
    r#"
-- Raw host samples, per series in chunks (see ledger::chunk); `samples` keeps meters'.
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL,
    n_points INTEGER NOT NULL, n_values INTEGER NOT NULL, first_value_ts INTEGER, last_value_ts INTEGER,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX chunks_series ON chunks (series_id, first_ts);
"#,
    r#"
-- Host series' minutes are recomputed from their chunks (see ledger::chunk::minute_shares_of);
-- `minutes` keeps meters'.
DELETE FROM minutes WHERE series_id IN (SELECT id FROM series WHERE meter = '');
"#,
    r#"
-- Decommissioned hosts (`retire-host`): their silence is expected; their energy stays booked.
CREATE TABLE retired_hosts (
    site TEXT NOT NULL, host TEXT NOT NULL,
    author TEXT NOT NULL, reason TEXT NOT NULL, retired_ms INTEGER NOT NULL,
    PRIMARY KEY (site, host)
);
"#,
    r#"
-- Host samples kept aside, never booked: stamped too far in the future (a sender's clock ahead).
-- One row per (series, timestamp): a retry of the same request is not stored twice. `value` NULL: a stale marker.
CREATE TABLE quarantine (
    site TEXT NOT NULL, host TEXT NOT NULL, method TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    value REAL, received_ms INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (site, host, method, ts_ms)
);
"#,
    r#"
-- Hosts' hours summed per site, method and quality (see `add_rollups`): a
-- site-wide IT question reads one row per hour and method instead of one per host.
-- Filled from `hours` by `fill_site_hours` when this migration runs.
CREATE TABLE site_hours (
    site TEXT NOT NULL, method TEXT NOT NULL, quality TEXT NOT NULL, start_ms INTEGER NOT NULL,
    energy_uj INTEGER NOT NULL, covered_ms INTEGER NOT NULL,
    PRIMARY KEY (site, start_ms, method, quality)
) WITHOUT ROWID;
"#,
    r#"
-- Day roll-ups (UTC days; see `add_rollups`): meters' hours summed per series and day,
-- and `site_hours` summed per day, so a month or a year reads about a row per day.
-- Filled from `hours` and `site_hours` by `fill_days` when this migration runs.
CREATE TABLE days (
    series_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, energy_uj INTEGER NOT NULL, covered_ms INTEGER NOT NULL,
    PRIMARY KEY (series_id, start_ms)
) WITHOUT ROWID;
CREATE TABLE site_days (
    site TEXT NOT NULL, method TEXT NOT NULL, quality TEXT NOT NULL, start_ms INTEGER NOT NULL,
    energy_uj INTEGER NOT NULL, covered_ms INTEGER NOT NULL,
    PRIMARY KEY (site, start_ms, method, quality)
) WITHOUT ROWID;
"#,
];

/// The `user_version` from which `site_hours` exists and is kept.
pub const SITE_HOURS_VERSION: i64 = 7;

/// The `user_version` from which `days` and `site_days` exist and are kept.
pub const DAYS_VERSION: i64 = 8;

/// Points per chunk when migration 3 moves the host rows of `samples` into chunks.
const MIGRATED_CHUNK_POINTS: usize = 1_024;

/// Journal entries that trigger a materialization whatever the time.
const MATERIALIZE_MAX_ENTRIES: usize = 500_000;

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Open { path: path.display().to_string(), message: e.to_string() })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// WAL pages after which a commit checkpoints them into the database.
const WAL_CHECKPOINT_PAGES: i64 = 16_384;

/// Opens (creating and migrating) the database for writing, `synchronous=FULL`.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
    refuse_read_only(&conn, path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // A larger page cache and fewer, larger checkpoints: the writer appends in bulk.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            message: format!("schema version {version} is newer than this collector knows ({})", MIGRATIONS.len()),
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(m)?;
        if i == 2 {
            chunk::migrate_host_samples(&tx, MIGRATED_CHUNK_POINTS)?;
        }
        if i + 1 == SITE_HOURS_VERSION as usize {
            fill_site_hours(&tx)?;
        }
        if i + 1 == DAYS_VERSION as usize {
            fill_days(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    ensure_writable(&conn, path)?;
    Ok(conn)
}

/// Refuses a database SQLite opened read-only: it does so without a word when
/// the file is write-protected, and the first write would fail with a bare
/// "attempt to write a readonly database".
fn refuse_read_only(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            message: "is read-only (the file is write-protected, or on a read-only file system): the collector \
                      must write its ledger; give its user write access to the file and its directory"
                .into(),
        });
    }
    Ok(())
}

/// Refuses a ledger this process cannot write, at open rather than at the
/// first write: a read-only directory, or `-wal`/`-shm` files it cannot
/// write, let it run until a write (or the next start, once a clean stop
/// deleted them) must create or write them. So a real write transaction must
/// commit, and a file must be creatable in the database's directory.
fn ensure_writable(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let refuse = |message: String| StoreError::Open { path: path.display().to_string(), message };
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE; PRAGMA user_version = {version}; COMMIT;")).map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        refuse(format!(
            "cannot be written ({e}): the collector must write its ledger; give its user write access to the file, \
             its -wal and -shm files and its directory"
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = dir.join(format!(".domesday-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(refuse(format!(
            "its directory {} is not writable ({e}): SQLite creates the ledger's -wal and -shm files there; give \
             the collector's user write access to it",
            dir.display()
        ))),
    }
}

/// A series' identity: site, host, meter and method joined by
/// U+001F, so lookups can borrow a reused buffer instead of allocating four strings.
type SeriesKey = String;

const SEP: char = '\u{1f}';

fn series_key(buf: &mut String, site: &str, host: &str, meter: &str, method: &str) {
    buf.clear();
    for (i, part) in [site, host, meter, method].iter().enumerate() {
        if i > 0 {
            buf.push(SEP);
        }
        buf.push_str(part);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Last {
    ts_ms: i64,
    value: Value,
}

/// The writer: one connection, the series ids and each series' last sample in memory.
pub struct SqliteWriter {
    conn: Connection,
    path: PathBuf,
    policy: Policy,
    series: HashMap<SeriesKey, i64>,
    last: IdMap<i64, Last>,
    owners: HashMap<(String, String), (String, i64)>,
    /// Journal entries this writer committed since the last materialization.
    journal_entries: usize,
    /// A sliced materialization has rows left: the next housekeeping goes on.
    unfinished: bool,
    last_materialized: std::time::Instant,
    /// Entries of the next materialization slice, sized by [`next_slice`] so that one
    /// slice holds the writer about [`SLICE_BUDGET`].
    slice: usize,
    /// `PRAGMA data_version` as last seen: it changes when another connection
    /// (another process) commits, never for this connection's own commits.
    data_version: i64,
}

#[derive(Default)]
struct Staged {
    series: HashMap<SeriesKey, i64>,
    last: IdMap<i64, Last>,
    owners: HashMap<(String, String), (String, i64)>,
    minutes: IdMap<(i64, i64), (i64, i64)>,
    hours: IdMap<(i64, i64), (i64, i64)>,
    /// Net µJ booked by the batch being applied.
    energy_uj: i128,
    key_buf: String,
    /// Fast-path host samples for this transaction's journal row.
    entries: Vec<Entry>,
    /// The journal was materialized in this transaction.
    materialized: bool,
}

impl SqliteWriter {
    pub fn open(path: &Path, policy: Policy) -> Result<Self, StoreError> {
        let conn = open_writer(path)?;
        if !policy.fsync_each_commit {
            // Durable against a crash of the collector, not against a power loss (WAL synced at checkpoints).
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        // What a previous run journaled goes to the tables first, so the last
        // samples loaded below are the series' true last samples.
        {
            let tx = conn.unchecked_transaction()?;
            materialize(&tx, &policy, usize::MAX)?;
            tx.commit()?;
        }
        let mut series = HashMap::new();
        let mut last = IdMap::default();
        let mut owners = HashMap::new();
        {
            let mut st = conn.prepare("SELECT id, site, host, meter, method FROM series")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    (r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?),
                ))
            })?;
            for row in rows {
                let (id, (site, host, meter, method)) = row?;
                let mut key = String::new();
                series_key(&mut key, &site, &host, &meter, &method);
                series.insert(key, id);
            }
            // Only host series keep their last sample in memory: meters are few, and
            // `import-meters` may write them while `serve` runs.
            let mut st = conn.prepare(
                "SELECT c.series_id, c.first_ts, c.data FROM chunks c \
                 JOIN (SELECT series_id, MAX(first_ts) AS m FROM chunks GROUP BY series_id) l \
                 ON c.series_id = l.series_id AND c.first_ts = l.m",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let (id, first): (i64, i64) = (r.get(0)?, r.get(1)?);
                let data = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
                if let Some((ts_ms, value)) = chunk::decode(id, first, data)?.last() {
                    last.insert(id, Last { ts_ms: *ts_ms, value: *value });
                }
            }
            let mut st = conn.prepare("SELECT site, host, machine_id, claimed_ms FROM hosts")?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
            })?;
            for row in rows {
                let (site, host, m, t) = row?;
                owners.insert((site, host), (m, t));
            }
        }
        let data_version = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(SqliteWriter {
            data_version,
            conn,
            path: path.to_path_buf(),
            policy,
            series,
            last,
            owners,
            journal_entries: 0,
            unfinished: false,
            last_materialized: std::time::Instant::now(),
            // Small first, grown while fast: the first slice must not overrun the budget tenfold.
            slice: policy.materialize_slice.clamp(1, SLICE_FIRST),
        })
    }

    /// Extends the WAL with zeros up to the size it reaches between two
    /// checkpoints, so that commits overwrite allocated blocks from the first
    /// one, as they do anyway once the WAL has been reused after a checkpoint.
    /// An fdatasync after an append also commits the file's new size to the
    /// filesystem journal: 210-270 µs against 120-150 µs after an overwrite
    /// (ext4, docs/performance.md). SQLite reads frames only while their
    /// checksums chain from a valid header, so it never takes the zeros for
    /// frames. The write lock is held meanwhile, so no other process appends
    /// frames, and bytes already in the file are never touched. For `serve`:
    /// a one-shot command does not pay for it.
    pub fn preallocate_wal(&self) -> Result<(), StoreError> {
        let page: i64 = self.conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let target = (WAL_CHECKPOINT_PAGES as u64 + 64) * (page as u64 + WAL_FRAME_HEADER) + WAL_HEADER;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let extended = extend_with_zeros(&wal_path(&self.path), target);
        // The transaction wrote nothing: it only held the lock, and must not stay open.
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        extended
    }

    /// Books `amount` (in the series' micro-units) over `[t0, t1)`, converted to the
    /// bucket's micro-base unit with the unit's exact integer factor, into the
    /// hours and, when `minutes` (meters), the minutes.
    #[allow(clippy::too_many_arguments)]
    fn book_interval(
        staged: &mut Staged,
        policy: &Policy,
        id: i64,
        factor: i64,
        minutes: bool,
        t0: i64,
        t1: i64,
        amount: i64,
        sign: i64,
    ) {
        let energy = amount.saturating_mul(factor);
        if t1 > t0 && factor > 0 {
            staged.energy_uj += i128::from(sign) * i128::from(energy);
        }
        for (bucket, map) in [(MINUTE_MS, &mut staged.minutes), (HOUR_MS, &mut staged.hours)] {
            if bucket == MINUTE_MS && !minutes {
                continue;
            }
            for s in spread(t0, t1, energy, bucket, policy.gap_ms) {
                add_to_bucket(map, id, s.start_ms, sign * s.energy_uj, sign * s.covered_ms);
            }
        }
    }

    fn apply_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
        staged: &mut Staged,
        batch: &Batch,
    ) -> Result<Outcome, StoreError> {
        let mut out = Outcome::default();
        staged.energy_uj = 0;
        // Host ownership first: a request's claims decide whether its samples are booked.
        let mut refused: Vec<(String, String)> = Vec::new();
        for c in &batch.claims {
            let key = (c.site.clone(), c.host.clone());
            let owner = staged.owners.get(&key).or_else(|| self.owners.get(&key)).cloned();
            let decision =
                rules::claim(owner.as_ref().map(|(m, t)| (m.as_str(), *t)), &c.machine_id, c.ts_ms, &self.policy);
            match decision {
                Claim::Refuse => {
                    tx.execute(
                        "INSERT INTO host_conflicts VALUES (?1, ?2, ?3, ?4, ?4, 0) \
                         ON CONFLICT (site, host, machine_id) DO UPDATE SET last_ms = MAX(last_ms, ?4)",
                        params![c.site, c.host, c.machine_id, c.ts_ms],
                    )?;
                    refused.push(key);
                }
                Claim::TakeOver => {
                    let old = owner.map(|(m, _)| m).unwrap_or_default();
                    tracing::warn!(site = %c.site, host = %c.host, old = %old, new = %c.machine_id, "host name taken over by another machine");
                    for (key, id) in self.series.iter().chain(staged.series.iter()) {
                        let mut parts = key.split(SEP);
                        if parts.next() == Some(c.site.as_str())
                            && parts.next() == Some(c.host.as_str())
                            && let Some(l) = staged.last.get(id).or_else(|| self.last.get(id)).copied()
                            && let Some((ts_ms, value)) = rules::takeover_marker((l.ts_ms, l.value))
                        {
                            // The marker is journaled like any sample: the raw points, and the
                            // minutes recomputed from them, hold the fresh baseline as the buckets do.
                            staged.entries.push(Entry { series_id: *id, ts_ms, value, prev: Some((l.ts_ms, l.value)) });
                            staged.last.insert(*id, Last { ts_ms, value });
                        }
                    }
                    staged.owners.insert(key.clone(), (c.machine_id.clone(), c.ts_ms));
                    upsert_host(tx, c)?;
                }
                Claim::Accept => {
                    staged.owners.insert(key, (c.machine_id.clone(), c.ts_ms));
                    upsert_host(tx, c)?;
                }
            }
        }
        let mut insert =
            tx.prepare_cached("INSERT INTO samples (series_id, ts_ms, value_micro) VALUES (?1, ?2, ?3)")?;
        // Requests carry runs of one series: its id is looked up once per run.
        let mut run: Option<(&Arc<super::SeriesLabels>, i64)> = None;
        // Energy per (site, role): what each sample or interval changed `staged.energy_uj` by,
        // settled when the next one starts (the loop bodies `continue` early).
        let mut by_role: Vec<super::RoleEnergy> = Vec::new();
        let mut open: Option<(&str, &str, &str, i128)> = None;
        for s in &batch.samples {
            let l = &*s.series;
            settle(&mut by_role, open.take(), staged.energy_uj);
            open = Some((&l.site, &l.role, &l.unit, staged.energy_uj));

            if refused.iter().any(|(site, host)| **site == *l.site && *host == l.host) {
                out.host_conflict += 1;
                tx.execute(
                    "UPDATE host_conflicts SET rejected_samples = rejected_samples + 1 WHERE site = ?1 AND host = ?2",
                    params![&*l.site, l.host],
                )?;
                continue;
            }
            let factor = micro_factor(&l.unit).unwrap_or(0);
            let id = match run {
                Some((r, id)) if Arc::ptr_eq(r, &s.series) || **r == *l => id,
                _ => self.series_id(tx, staged, &l.site, &l.host, &l.meter, &l.method, &l.quality, &l.role, &l.unit)?,
            };
            run = Some((&s.series, id));
            let last = if l.meter.is_empty() {
                staged.last.get(&id).or_else(|| self.last.get(&id)).copied()
            } else {
                tx.query_row(
                    "SELECT ts_ms, value_micro FROM samples WHERE series_id = ?1 ORDER BY ts_ms DESC LIMIT 1",
                    [id],
                    |r| Ok(Last { ts_ms: r.get(0)?, value: r.get(1)? }),
                )
                .optional()?
            };
            let host = l.meter.is_empty();
            let sample = (s.ts_ms, s.value_micro);
            match rules::place(last.map(|l| (l.ts_ms, l.value)), sample, host) {
                Placement::Journal { prev } => {
                    // The fast path: journaled now, written to the series' tables in bulk later.
                    let e = Entry { series_id: id, ts_ms: s.ts_ms, value: s.value_micro, prev };
                    if prev.is_some() && factor > 0 {
                        staged.energy_uj += i128::from(e.increment().saturating_mul(factor));
                    }
                    staged.entries.push(e);
                    staged.last.insert(id, Last { ts_ms: s.ts_ms, value: s.value_micro });
                    out.booked += 1;
                }
                Placement::First => {
                    insert.execute(params![id, s.ts_ms, s.value_micro])?;
                    staged.last.insert(id, Last { ts_ms: s.ts_ms, value: s.value_micro });
                    out.booked += 1;
                }
                Placement::Append((t0, t1, inc)) => {
                    insert.execute(params![id, s.ts_ms, s.value_micro])?;
                    Self::book_interval(staged, &self.policy, id, factor, true, t0, t1, inc, 1);
                    staged.last.insert(id, Last { ts_ms: s.ts_ms, value: s.value_micro });
                    out.booked += 1;
                }
                Placement::Late => {
                    // Its neighbours may still be in the journal: write it out first.
                    if host && (!staged.materialized || !staged.entries.is_empty()) {
                        Self::journal_staged(tx, staged)?;
                        materialize(tx, &self.policy, usize::MAX)?;
                        staged.materialized = true;
                    }
                    let neighbours =
                        if host { chunk::neighbours(tx, id, s.ts_ms)? } else { sample_neighbours(tx, id, s.ts_ms)? };
                    let pruned_until: i64 =
                        tx.query_row("SELECT pruned_until_ms FROM series WHERE id = ?1", [id], |r| r.get(0))?;
                    match rules::slot(neighbours, pruned_until, sample) {
                        Slot::Duplicate => out.duplicate += 1,
                        Slot::Conflict => out.conflict += 1,
                        Slot::TooOld => out.too_old += 1,
                        Slot::Insert { remove, add } => {
                            // A host series' minutes are recomputed from its points: only hours are booked.
                            let mut book = |(t0, t1, amount), sign| {
                                Self::book_interval(staged, &self.policy, id, factor, !host, t0, t1, amount, sign)
                            };
                            remove.into_iter().for_each(|iv| book(iv, -1));
                            add.into_iter().flatten().for_each(|iv| book(iv, 1));
                            if host {
                                chunk::insert(tx, id, sample)?;
                            } else {
                                insert.execute(params![id, s.ts_ms, s.value_micro])?;
                            }
                            out.booked += 1;
                        }
                    }
                }
            }
        }
        for iv in &batch.intervals {
            settle(&mut by_role, open.take(), staged.energy_uj);
            open = Some((&iv.site, &iv.role, &iv.unit, staged.energy_uj));
            let factor = micro_factor(&iv.unit).unwrap_or(0);
            let id = self.series_id(tx, staged, &iv.site, "", &iv.meter, "", "measured", &iv.role, &iv.unit)?;
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT value_micro FROM intervals WHERE series_id = ?1 AND start_ms = ?2 AND end_ms = ?3",
                    params![id, iv.start_ms, iv.end_ms],
                    |r| r.get(0),
                )
                .optional()?;
            match rules::interval_reading(existing, iv.value_micro) {
                Reading::Duplicate => out.duplicate += 1,
                Reading::Conflict => out.conflict += 1,
                Reading::Book => {
                    tx.execute(
                        "INSERT INTO intervals VALUES (?1, ?2, ?3, ?4)",
                        params![id, iv.start_ms, iv.end_ms, iv.value_micro],
                    )?;
                    // An interval reading is a measurement of the whole interval: it covers it.
                    let policy = Policy { gap_ms: rules::INTERVAL_GAP_MS, ..self.policy };
                    Self::book_interval(staged, &policy, id, factor, true, iv.start_ms, iv.end_ms, iv.value_micro, 1);
                    out.booked += 1;
                }
            }
        }
        settle(&mut by_role, open.take(), staged.energy_uj);
        out.energy_uj = staged.energy_uj;
        out.by_role = by_role;
        Ok(out)
    }

    /// The id of a series, created in this transaction if new.
    #[allow(clippy::too_many_arguments)]
    fn series_id(
        &self,
        tx: &rusqlite::Transaction<'_>,
        staged: &mut Staged,
        site: &str,
        host: &str,
        meter: &str,
        method: &str,
        quality: &str,
        role: &str,
        unit: &str,
    ) -> Result<i64, StoreError> {
        series_key(&mut staged.key_buf, site, host, meter, method);
        if let Some(id) =
            staged.series.get(staged.key_buf.as_str()).or_else(|| self.series.get(staged.key_buf.as_str()))
        {
            return Ok(*id);
        }
        let key = staged.key_buf.clone();
        let metric = if meter.is_empty() { HOST_ENERGY_METRIC } else { METER_METRIC };
        // Another process (import-meters) may have created it since we loaded.
        if let Some(id) = tx
            .query_row(
                "SELECT id FROM series WHERE site = ?1 AND host = ?2 AND meter = ?3 AND metric = ?4 AND method = ?5",
                params![site, host, meter, metric, method],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
        {
            staged.series.insert(key, id);
            return Ok(id);
        }
        tx.execute(
            "INSERT INTO series (site, host, meter, metric, method, quality, role, unit) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![site, host, meter, metric, method, quality, role, unit],
        )?;
        let id = tx.last_insert_rowid();
        staged.series.insert(key, id);
        Ok(id)
    }
}

/// Adds what one sample or interval booked (`now` − the total before it) to
/// its site and role, energy only.
fn settle(by_role: &mut Vec<super::RoleEnergy>, open: Option<(&str, &str, &str, i128)>, now: i128) {
    if let Some((site, role, unit, before)) = open
        && now != before
        && !super::is_volume(unit)
    {
        super::add_role_energy(by_role, site, role, now - before);
    }
}

impl SqliteWriter {
    /// Books `batches` and runs `also` in the same transaction: either all of
    /// it commits or none of it (an error from `also` rolls the batches back).
    fn apply_with(
        &mut self,
        batches: &[Batch],
        also: impl FnOnce(&Self, &rusqlite::Transaction<'_>, &mut Staged) -> Result<(), StoreError>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut staged = Staged::default();
        let tx = self.conn.unchecked_transaction()?;
        let mut outcomes = Vec::with_capacity(batches.len());
        for b in batches {
            let mut o = self.apply_one(&tx, &mut staged, b)?;
            o.quarantined = quarantine(&tx, &b.quarantine)?;
            outcomes.push(o);
        }
        also(self, &tx, &mut staged)?;
        let journaled = staged.entries.len();
        Self::journal_staged(&tx, &mut staged)?;
        Self::write_buckets(&tx, &staged)?;
        tx.commit()?;
        // Only now does the in-memory state follow: a failed commit leaves it untouched.
        self.series.extend(staged.series);
        self.last.extend(staged.last);
        self.owners.extend(staged.owners);
        if staged.materialized {
            self.unfinished = false;
            self.journal_entries = 0;
            self.last_materialized = std::time::Instant::now();
        }
        self.journal_entries += journaled;
        Ok(outcomes)
    }

    /// Writes the staged buckets. Minutes of a series before its prune point
    /// are not recreated: they were pruned, their hour holds the energy, and a
    /// partial minute row would be wrong.
    fn write_buckets(tx: &rusqlite::Transaction<'_>, staged: &Staged) -> Result<(), StoreError> {
        write_bucket_lists(tx, &sorted_buckets(&staged.minutes), &sorted_buckets(&staged.hours))
    }
}

/// Stores samples kept aside (see [`super::Quarantined`]); returns how many were new.
fn quarantine(tx: &rusqlite::Transaction<'_>, rows: &[super::Quarantined]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO quarantine (site, host, method, ts_ms, value, received_ms, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut new = 0;
    for q in rows {
        new += stmt.execute(params![q.site, q.host, q.method, q.ts_ms, q.value, q.received_ms, q.reason])? as u64;
    }
    Ok(new)
}

/// [`LedgerWriter::retire_host`] on a connection of its own, without loading a
/// writer's state, so it works while `serve` runs.
pub fn retire_host(path: &Path, site: &str, host: &str, known: bool, who: &Provenance) -> Result<Retire, StoreError> {
    record_retirement(&open_writer(path)?, site, host, known, who)
}

/// Records a retirement on `conn` (see [`LedgerWriter::retire_host`]).
fn record_retirement(
    conn: &Connection,
    site: &str,
    host: &str,
    known: bool,
    who: &Provenance,
) -> Result<Retire, StoreError> {
    let tx = conn.unchecked_transaction()?;
    if let Some(r) = tx
        .query_row(
            "SELECT host, author, reason, retired_ms FROM retired_hosts WHERE site = ?1 AND host = ?2",
            params![site, host],
            retirement_row,
        )
        .optional()?
    {
        return Ok(Retire::Already(r));
    }
    let seen: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM series WHERE site = ?1 AND host = ?2) \
         OR EXISTS (SELECT 1 FROM hosts WHERE site = ?1 AND host = ?2)",
        params![site, host],
        |r| r.get(0),
    )?;
    if !(seen || known) {
        return Ok(Retire::UnknownHost);
    }
    tx.execute(
        "INSERT INTO retired_hosts (site, host, author, reason, retired_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![site, host, who.author, who.reason, who.recorded_ms],
    )?;
    tx.commit()?;
    Ok(Retire::Retired)
}

fn retirement_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Retirement> {
    Ok(Retirement { host: r.get(0)?, by: r.get(1)?, reason: r.get(2)?, retired_ms: r.get(3)? })
}

/// A bucket to add: `((series_id, start_ms), (energy, covered_ms))`.
type Bucket = ((i64, i64), (i64, i64));

fn sorted_buckets(map: &IdMap<(i64, i64), (i64, i64)>) -> Vec<Bucket> {
    let mut v: Vec<Bucket> = map.iter().map(|(k, v)| (*k, *v)).collect();
    v.sort_unstable_by_key(|b| b.0);
    v
}

/// Adds `minutes` and `hours` (each sorted by series and start) to their
/// tables. In key order, consecutive upserts land on the same B-tree page;
/// in hash order each one was a fresh descent to another page.
fn write_bucket_lists(tx: &rusqlite::Transaction<'_>, minutes: &[Bucket], hours: &[Bucket]) -> Result<(), StoreError> {
    let mut pruned: Option<(i64, i64)> = None;
    let mut pruned_of = tx.prepare_cached("SELECT pruned_until_ms FROM series WHERE id = ?1")?;
    let mut up_min = tx.prepare_cached(
        "INSERT INTO minutes VALUES (?1, ?2, ?3, ?4) ON CONFLICT (series_id, start_ms) DO UPDATE SET \
         energy_uj = energy_uj + excluded.energy_uj, covered_ms = covered_ms + excluded.covered_ms",
    )?;
    for &((id, start), (e, c)) in minutes {
        let until = match pruned {
            Some((pid, until)) if pid == id => until,
            _ => {
                let until: i64 = pruned_of.query_row([id], |r| r.get(0))?;
                pruned = Some((id, until));
                until
            }
        };
        if start >= until {
            up_min.execute(params![id, start, e, c])?;
        }
    }
    let mut up_hour = tx.prepare_cached(
        "INSERT INTO hours VALUES (?1, ?2, ?3, ?4) ON CONFLICT (series_id, start_ms) DO UPDATE SET \
         energy_uj = energy_uj + excluded.energy_uj, covered_ms = covered_ms + excluded.covered_ms",
    )?;
    for &((id, start), (e, c)) in hours {
        up_hour.execute(params![id, start, e, c])?;
    }
    add_rollups(tx, hours)
}

/// A sum for `site_hours`: exact in i128, unless an addend was not an integer
/// (an `hours` row SQLite turned into a real on overflow).
#[derive(Debug, Clone, Copy, Default)]
struct RollupSum {
    exact: i128,
    approx: f64,
    inexact: bool,
}

impl RollupSum {
    fn add(&mut self, v: rusqlite::types::ValueRef<'_>) {
        match v {
            rusqlite::types::ValueRef::Integer(i) => {
                self.exact += i128::from(i);
                self.approx += i as f64;
            }
            rusqlite::types::ValueRef::Real(f) => {
                self.approx += f;
                self.inexact = true;
            }
            _ => self.inexact = true,
        }
    }

    /// The value to store: an integer when exact and within i64, else a real,
    /// which readers take as "not exact here" and answer from `hours` instead.
    fn value(&self) -> rusqlite::types::Value {
        match i64::try_from(self.exact) {
            Ok(v) if !self.inexact => rusqlite::types::Value::Integer(v),
            _ => rusqlite::types::Value::Real(self.approx),
        }
    }
}

/// Sums per (index into a label list, bucket start): energy, covered.
type RollupSums = BTreeMap<(usize, i64), (RollupSum, RollupSum)>;

/// Adds rows to a site roll-up (`site_hours` or `site_days`):
/// `(site, method, quality, start_ms)` → sums.
fn upsert_site_rollup(
    tx: &rusqlite::Transaction<'_>,
    table: SiteRollup,
    labels: &[(String, String, String)],
    sums: &RollupSums,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {} VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (site, start_ms, method, quality) \
         DO UPDATE SET energy_uj = energy_uj + excluded.energy_uj, covered_ms = covered_ms + excluded.covered_ms",
        table.name()
    );
    let mut up = tx.prepare_cached(&sql)?;
    for (&(l, start), (e, c)) in sums {
        let (site, method, quality) = &labels[l];
        up.execute(params![site, method, quality, start, e.value(), c.value()])?;
    }
    Ok(())
}

/// Adds rows to `days`: `(series_id, start_ms)` → sums.
fn upsert_days(
    tx: &rusqlite::Transaction<'_>,
    sums: &BTreeMap<(i64, i64), (RollupSum, RollupSum)>,
) -> Result<(), StoreError> {
    let mut up = tx.prepare_cached(
        "INSERT INTO days VALUES (?1, ?2, ?3, ?4) ON CONFLICT (series_id, start_ms) DO UPDATE SET \
         energy_uj = energy_uj + excluded.energy_uj, covered_ms = covered_ms + excluded.covered_ms",
    )?;
    for (&(id, start), (e, c)) in sums {
        up.execute(params![id, start, e.value(), c.value()])?;
    }
    Ok(())
}

/// A site roll-up table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteRollup {
    Hours,
    Days,
}

impl SiteRollup {
    pub fn name(self) -> &'static str {
        match self {
            SiteRollup::Hours => "site_hours",
            SiteRollup::Days => "site_days",
        }
    }

    /// The schema version from which the table exists and is kept.
    pub fn since(self) -> i64 {
        match self {
            SiteRollup::Hours => SITE_HOURS_VERSION,
            SiteRollup::Days => DAYS_VERSION,
        }
    }
}

/// The UTC day of a bucket start.
fn day_of(start_ms: i64) -> i64 {
    start_ms.div_euclid(DAY_MS) * DAY_MS
}

/// Adds hour buckets (sorted by series) to the roll-ups: a host energy
/// series' to its site's `site_hours` and `site_days`, summed per site,
/// method, quality and hour or day first (a materialization of N hosts' hour
/// writes one row, not N); a meter's to its `days`. Called for every write to
/// `hours`, in its transaction, so each roll-up is the `GROUP BY` of `hours`
/// at every commit.
fn add_rollups(tx: &rusqlite::Transaction<'_>, hours: &[Bucket]) -> Result<(), StoreError> {
    let mut labels_of = tx.prepare_cached("SELECT site, method, quality, metric FROM series WHERE id = ?1")?;
    let mut labels: Vec<(String, String, String)> = Vec::new();
    let mut index: HashMap<(String, String, String), usize> = HashMap::new();
    let (mut site_hours, mut site_days) = (RollupSums::new(), RollupSums::new());
    let mut days: BTreeMap<(i64, i64), (RollupSum, RollupSum)> = BTreeMap::new();
    // The series of the last bucket and what it is: a host series' labels' index, or None (a meter).
    let mut current: Option<(i64, Option<usize>)> = None;
    let add = |t: &mut (RollupSum, RollupSum), e: i64, c: i64| {
        t.0.add(rusqlite::types::ValueRef::Integer(e));
        t.1.add(rusqlite::types::ValueRef::Integer(c));
    };
    for &((id, start), (e, c)) in hours {
        let l = match current {
            Some((cid, l)) if cid == id => l,
            _ => {
                let (site, method, quality, metric): (String, String, String, String) =
                    labels_of.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                let l = (metric == HOST_ENERGY_METRIC).then(|| {
                    *index.entry((site.clone(), method.clone(), quality.clone())).or_insert_with(|| {
                        labels.push((site, method, quality));
                        labels.len() - 1
                    })
                });
                current = Some((id, l));
                l
            }
        };
        match l {
            Some(l) => {
                add(site_hours.entry((l, start)).or_default(), e, c);
                add(site_days.entry((l, day_of(start))).or_default(), e, c);
            }
            None => add(days.entry((id, day_of(start))).or_default(), e, c),
        }
    }
    upsert_site_rollup(tx, SiteRollup::Hours, &labels, &site_hours)?;
    upsert_site_rollup(tx, SiteRollup::Days, &labels, &site_days)?;
    upsert_days(tx, &days)
}

/// Fills `site_hours` from `hours` (its migration, on a ledger written
/// before it): one (site, method, quality) group of host series at a time,
/// summed in memory, so the work is a scan of each series' hours and the
/// memory one group's hours, whatever the ledger's size.
fn fill_site_hours(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let mut groups: BTreeMap<(String, String, String), Vec<i64>> = BTreeMap::new();
    {
        let mut st = tx.prepare("SELECT id, site, method, quality FROM series WHERE metric = ?1")?;
        let mut rows = st.query([HOST_ENERGY_METRIC])?;
        while let Some(r) = rows.next()? {
            groups.entry((r.get(1)?, r.get(2)?, r.get(3)?)).or_default().push(r.get(0)?);
        }
    }
    let mut hours_of = tx.prepare("SELECT start_ms, energy_uj, covered_ms FROM hours WHERE series_id = ?1")?;
    for (key, ids) in groups {
        let mut sums = RollupSums::new();
        for id in ids {
            let mut rows = hours_of.query([id])?;
            while let Some(r) = rows.next()? {
                let t = sums.entry((0, r.get(0)?)).or_default();
                t.0.add(r.get_ref(1)?);
                t.1.add(r.get_ref(2)?);
            }
        }
        upsert_site_rollup(tx, SiteRollup::Hours, &[key], &sums)?;
    }
    Ok(())
}

/// Fills `days` and `site_days` (their migration, on a ledger written before
/// them): each meter's hours summed per UTC day, and `site_hours` summed per
/// day, one series or site group at a time, as [`fill_site_hours`] does.
fn fill_days(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let meters: Vec<i64> = tx
        .prepare("SELECT id FROM series WHERE metric != ?1")?
        .query_map([HOST_ENERGY_METRIC], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut hours_of = tx.prepare("SELECT start_ms, energy_uj, covered_ms FROM hours WHERE series_id = ?1")?;
    for id in meters {
        let mut sums: BTreeMap<(i64, i64), (RollupSum, RollupSum)> = BTreeMap::new();
        let mut rows = hours_of.query([id])?;
        while let Some(r) = rows.next()? {
            let t = sums.entry((id, day_of(r.get(0)?))).or_default();
            t.0.add(r.get_ref(1)?);
            t.1.add(r.get_ref(2)?);
        }
        upsert_days(tx, &sums)?;
    }
    let groups: Vec<(String, String, String)> = tx
        .prepare("SELECT DISTINCT site, method, quality FROM site_hours")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut of_group = tx.prepare(
        "SELECT start_ms, energy_uj, covered_ms FROM site_hours WHERE site = ?1 AND method = ?2 AND quality = ?3",
    )?;
    for key in groups {
        let mut sums = RollupSums::new();
        let mut rows = of_group.query(params![key.0, key.1, key.2])?;
        while let Some(r) = rows.next()? {
            let t = sums.entry((0, day_of(r.get(0)?))).or_default();
            t.0.add(r.get_ref(1)?);
            t.1.add(r.get_ref(2)?);
        }
        upsert_site_rollup(tx, SiteRollup::Days, &[key], &sums)?;
    }
    Ok(())
}

impl SqliteWriter {
    /// Writes the transaction's fast-path entries as one journal row.
    fn journal_staged(tx: &rusqlite::Transaction<'_>, staged: &mut Staged) -> Result<(), StoreError> {
        if staged.entries.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        journal::encode(&staged.entries, &mut data);
        tx.prepare_cached("INSERT INTO journal (data) VALUES (?1)")?.execute([data])?;
        staged.entries.clear();
        Ok(())
    }

    /// Materializes one slice of at least `max_entries` (the whole journal with
    /// `usize::MAX`); remembers whether rows remain for the next housekeeping.
    fn materialize_now(&mut self, max_entries: usize) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let more = materialize(&tx, &self.policy, max_entries)?;
        tx.commit()?;
        self.unfinished = more;
        if !more {
            self.journal_entries = 0;
            self.last_materialized = std::time::Instant::now();
        }
        Ok(())
    }
}

/// Adds energy (µJ) and coverage (ms) to the staged bucket `(id, start)`.
fn add_to_bucket(map: &mut IdMap<(i64, i64), (i64, i64)>, id: i64, start: i64, energy_uj: i64, covered_ms: i64) {
    let t = map.entry((id, start)).or_insert((0, 0));
    t.0 += energy_uj;
    t.1 += covered_ms;
}

/// A meter series' samples around `t` (see [`chunk::neighbours`] for host series).
fn sample_neighbours(tx: &rusqlite::Transaction<'_>, id: i64, t: i64) -> Result<chunk::Neighbours, StoreError> {
    let point = |sql: &str| {
        tx.prepare_cached(sql)?
            .query_row(params![id, t], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Value>(1)?)))
            .optional()
            .map_err(StoreError::from)
    };
    let exact = point("SELECT ts_ms, value_micro FROM samples WHERE series_id = ?1 AND ts_ms = ?2")?;
    let prev = point(
        "SELECT ts_ms, value_micro FROM samples WHERE series_id = ?1 AND ts_ms < ?2 ORDER BY ts_ms DESC LIMIT 1",
    )?;
    let next =
        point("SELECT ts_ms, value_micro FROM samples WHERE series_id = ?1 AND ts_ms > ?2 ORDER BY ts_ms ASC LIMIT 1")?;
    Ok((prev, exact.map(|p| p.1), next))
}

/// Writes the oldest journal rows holding at least `max_entries` entries (all
/// of them with `usize::MAX`) to the per-series tables (raw samples, minutes,
/// hours) and deletes them, inside `tx`; returns whether rows remain. Any
/// prefix of the journal can go first: each entry carries its previous sample,
/// and a series' later entries are newer. The rows are read back from the
/// database, so whichever process materializes them does it once.
fn materialize(tx: &rusqlite::Transaction<'_>, policy: &Policy, max_entries: usize) -> Result<bool, StoreError> {
    let (rows, more) = journal::rows(tx, i64::MIN, max_entries)?;
    let Some(max_seq) = rows.last().map(|(seq, _)| *seq) else { return Ok(false) };
    let mut entries: Vec<Entry> = rows.into_iter().flat_map(|(_, e)| e).collect();
    // Series by series, in time order: each series' pages are touched once.
    entries.sort_by_key(|e| (e.series_id, e.ts_ms));
    // Runs come by series, each in time order, so their hours come out sorted.
    // Host series keep no minute rows: their minutes are recomputed from the
    // chunks ([`chunk::minute_shares_of`]).
    let mut hours: Vec<Bucket> = Vec::new();
    let mut points: Vec<chunk::Point> = Vec::new();
    for run in entries.chunk_by(|a, b| a.series_id == b.series_id) {
        let id = run[0].series_id;
        points.clear();
        points.extend(run.iter().map(|e| (e.ts_ms, e.value)));
        chunk::append(tx, id, &points)?;
        // Add a run's shares up per hour here: each hour is written once, not
        // once per sample. Journaled series are host energy counters: joules, factor 1.
        let mut open: Option<Bucket> = None;
        for (t0, t1, inc) in run.iter().filter_map(Entry::interval) {
            for sh in spread(t0, t1, inc, HOUR_MS, policy.gap_ms) {
                match &mut open {
                    Some(((_, start), (e, c))) if *start == sh.start_ms => {
                        *e += sh.energy_uj;
                        *c += sh.covered_ms;
                    }
                    _ => hours.extend(open.replace(((id, sh.start_ms), (sh.energy_uj, sh.covered_ms)))),
                }
            }
        }
        hours.extend(open);
    }
    write_bucket_lists(tx, &[], &hours)?;
    tx.execute("DELETE FROM journal WHERE seq <= ?1", [max_seq])?;
    Ok(more)
}

impl LedgerWriter for SqliteWriter {
    fn apply(&mut self, batches: &[Batch], _now_ms: i64) -> Result<Vec<Outcome>, StoreError> {
        self.apply_with(batches, |_, _, _| Ok(()))
    }

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
    ) -> Result<(), StoreError> {
        // The booking and its `adjustments` row in one transaction.
        let mut staged = Staged::default();
        let tx = self.conn.unchecked_transaction()?;
        let id = self.series_id(&tx, &mut staged, site, "", meter, "", "measured", role, unit)?;
        tx.execute(
            "INSERT INTO adjustments (series_id, kind, start_ms, end_ms, value_micro, author, reason, recorded_ms) \
             VALUES (?1, 'correction', ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, start_ms, end_ms, value_micro, who.author, who.reason, who.recorded_ms],
        )?;
        let policy = Policy { gap_ms: rules::CORRECTION_GAP_MS, ..self.policy };
        let factor = micro_factor(unit).unwrap_or(0);
        let ((t0, t1, amount), sign) = rules::correction(start_ms, end_ms, value_micro);
        Self::book_interval(&mut staged, &policy, id, factor, true, t0, t1, amount, sign);
        Self::write_buckets(&tx, &staged)?;
        tx.commit()?;
        self.series.extend(staged.series);
        Ok(())
    }

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
    ) -> Result<Outcome, StoreError> {
        let batch = Batch::meter_swap(site, meter, role, unit, at_ms, final_micro, initial_micro);
        // The booking and its audit row (who and why) commit together or not at all:
        // a swap that lost its provenance would be an unexplained jump in the ledger.
        let out = self.apply_with(&[batch], |w, tx, staged| {
            let id = w.series_id(tx, staged, site, "", meter, "", "measured", role, unit)?;
            tx.execute(
                "INSERT INTO adjustments (series_id, kind, start_ms, end_ms, value_micro, final_micro, initial_micro, author, reason, recorded_ms) \
                 VALUES (?1, 'swap', ?2, ?2, 0, ?3, ?4, ?5, ?6, ?7)",
                params![id, at_ms, final_micro, initial_micro, who.author, who.reason, who.recorded_ms],
            )?;
            Ok(())
        })?;
        Ok(out.into_iter().next().unwrap_or_default())
    }

    fn retire_host(&mut self, site: &str, host: &str, known: bool, who: &Provenance) -> Result<Retire, StoreError> {
        record_retirement(&self.conn, site, host, known, who)
    }

    fn housekeeping(&mut self, force: bool) -> Result<(), StoreError> {
        if force {
            return self.materialize_now(usize::MAX);
        }
        let due = self.unfinished
            || self.journal_entries > 0
                && (self.journal_entries >= MATERIALIZE_MAX_ENTRIES
                    || self.last_materialized.elapsed().as_millis() as i64 >= self.policy.materialize_every_ms);
        if !due {
            return Ok(());
        }
        // In slices, so requests are answered between them rather than after the whole journal,
        // each sized after the last one's time: the queue waits at most about one budget.
        let t = std::time::Instant::now();
        self.materialize_now(self.slice)?;
        self.slice = next_slice(self.slice, t.elapsed(), self.policy.materialize_slice.max(1));
        Ok(())
    }

    fn totals_if_changed_elsewhere(&mut self) -> Result<Option<super::SiteTotals>, StoreError> {
        let v: i64 = self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if v == self.data_version {
            return Ok(None);
        }
        self.data_version = v;
        // Read on the writer's thread, between its commits: the totals are exactly
        // what its own commits (already reported) and the other process's made.
        SqliteReader::new(&self.path, self.policy).site_totals().map(Some)
    }

    fn checkpoint(&mut self) -> Result<(), StoreError> {
        // TRUNCATE: every frame into the database and the WAL emptied; `busy` = 1
        // when a reader still holds an old snapshot (then it is a partial checkpoint).
        let busy: i64 = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            tracing::info!("ledger checkpoint at shutdown was partial: a reader still had the database open");
        }
        Ok(())
    }

    fn prune(&mut self, now_ms: i64) -> Result<(), StoreError> {
        // Pruning decides on raw samples: they must all be in the table.
        self.materialize_now(usize::MAX)?;
        let cutoff = now_ms - self.policy.minute_retention_ms;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM minutes WHERE start_ms < ?1", [cutoff])?;
        tx.execute(
            "UPDATE series SET pruned_until_ms = ?1 WHERE pruned_until_ms < ?1 AND EXISTS \
             (SELECT 1 FROM samples s WHERE s.series_id = series.id AND s.ts_ms < ?1)",
            [cutoff],
        )?;
        chunk::prune(&tx, cutoff)?;
        // Quarantined samples are kept as long as raw samples, counted from their arrival.
        tx.execute("DELETE FROM quarantine WHERE received_ms < ?1", [cutoff])?;
        // Keep each series' last sample: it is the baseline of the next one.
        tx.execute(
            "DELETE FROM samples WHERE ts_ms < ?1 AND ts_ms < (SELECT MAX(ts_ms) FROM samples s2 WHERE s2.series_id = samples.series_id)",
            [cutoff],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Writer time one materialization slice aims at: requests that arrive meanwhile wait for it.
pub const SLICE_BUDGET: std::time::Duration = std::time::Duration::from_millis(40);
/// The smallest slice: below it, per-slice overhead (a commit, hour rows) would dominate.
pub const SLICE_MIN: usize = 1_000;
/// The first slice of a writer (a 100,000-entry first slice took 0.87 s on a loaded VM).
const SLICE_FIRST: usize = 10_000;

/// The next slice's entries after a slice of `entries` took `took`: halved when
/// it overran [`SLICE_BUDGET`], grown by half when it used less than half of it,
/// always within `SLICE_MIN..=max`. A slice's time grows with the entries (and
/// series) it writes, and with how loaded the machine is: measuring adapts to both.
pub fn next_slice(entries: usize, took: std::time::Duration, max: usize) -> usize {
    let next = if took > SLICE_BUDGET {
        entries / 2
    } else if took < SLICE_BUDGET / 2 {
        entries.saturating_add(entries / 2)
    } else {
        entries
    };
    next.clamp(SLICE_MIN.min(max), max)
}

/// Sizes of the WAL format (sqlite.org/fileformat.html, section 4).
const WAL_HEADER: u64 = 32;
const WAL_FRAME_HEADER: u64 = 24;

/// Appends zeros to `file` until it is `target` bytes long (never shortens it).
fn extend_with_zeros(file: &Path, target: u64) -> Result<(), StoreError> {
    use std::io::Write;
    let fail = |e: std::io::Error| StoreError::Open { path: file.display().to_string(), message: e.to_string() };
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(file).map_err(fail)?;
    let len = f.metadata().map_err(fail)?.len();
    if len >= target {
        return Ok(());
    }
    // In 1 MiB writes: `io::copy` from `io::repeat` writes 8 KiB at a time, 4× slower here.
    let zeros = vec![0u8; 1 << 20];
    let mut left = target - len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(fail)?;
        left -= n as u64;
    }
    f.sync_all().map_err(fail)
}

/// The write-ahead log of the database at `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Idle read connections a reader keeps: enough for the API's concurrent
/// requests, few enough that the file descriptors and page caches stay small.
const IDLE_READ_CONNECTIONS: usize = 4;

/// Page cache of a read connection, KiB as SQLite's negative `cache_size` says.
const READ_CACHE_KIB: i64 = -16_384;

/// The reader: read-only connections, each call in a read transaction of its
/// own, so concurrent API requests and the `energy` CLI never block the
/// writer. Connections are kept between calls (a small pool): a report's
/// hundred questions per site then share a warm page cache and prepared
/// statements instead of opening the file, the WAL index and a cold cache for
/// each one.
pub struct SqliteReader {
    path: PathBuf,
    policy: Policy,
    /// The journal as last read, with the row seqs it holds: rows are only
    /// ever appended or deleted, so unchanged seqs mean an unchanged journal,
    /// and appended rows are the only ones to decode.
    pending: std::sync::Mutex<(Vec<i64>, Arc<Pending>)>,
    /// Idle connections, at most [`IDLE_READ_CONNECTIONS`].
    idle: std::sync::Mutex<Vec<Connection>>,
}

impl SqliteReader {
    pub fn new(path: &Path, policy: Policy) -> Self {
        SqliteReader { path: path.to_path_buf(), policy, pending: Default::default(), idle: Default::default() }
    }

    fn open_conn(&self) -> Result<Connection, StoreError> {
        let conn = open(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        // `series_id IN rarray(?)`: a whole site's series in one statement.
        rusqlite::vtab::array::load_module(&conn)?;
        // A site-year's pages (meters' hours and samples, its roll-up, its
        // chunks' columns) stay in the connection's cache between a report's
        // questions (its year, then each month) instead of being read again.
        conn.pragma_update(None, "cache_size", READ_CACHE_KIB)?;
        Ok(conn)
    }

    /// An idle connection, or a new one.
    fn take_conn(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        match idle {
            Some(c) => Ok(c),
            None => self.open_conn(),
        }
    }

    /// Keeps `conn` for the next call, unless enough are idle.
    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < IDLE_READ_CONNECTIONS {
            idle.push(conn);
        }
    }

    /// The journal in the snapshot of `conn`'s read transaction.
    fn pending(&self, conn: &Connection) -> Result<Arc<Pending>, StoreError> {
        let seqs: Vec<i64> = conn
            .prepare_cached("SELECT seq FROM journal ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut cache = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.0 == seqs {
            return Ok(cache.1.clone());
        }
        let (mut pending, after) = if !cache.0.is_empty() && seqs.starts_with(&cache.0) {
            (cache.1.clone(), cache.0.last().copied())
        } else {
            (Arc::new(Pending::default()), None)
        };
        Arc::make_mut(&mut pending).load_after(conn, after)?;
        *cache = (seqs, pending.clone());
        Ok(pending)
    }

    /// Runs `f` in one read transaction: the journal and the tables it reads
    /// are one snapshot, so a materialization in between cannot count twice.
    /// The connection goes back to the pool only after a clean finish: one
    /// that failed mid-way is dropped rather than trusted again.
    fn read<T>(&self, f: impl FnOnce(&Connection, &Pending) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.take_conn()?;
        let out = {
            let tx = conn.unchecked_transaction()?;
            let pending = self.pending(&tx)?;
            let out = f(&tx, &pending)?;
            tx.finish()?;
            out
        };
        self.give_back(conn);
        Ok(out)
    }
}

/// Records a host's owner and model.
fn upsert_host(tx: &rusqlite::Transaction<'_>, c: &HostClaim) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR REPLACE INTO hosts (site, host, machine_id, claimed_ms, vendor, product, cpu_model, sockets) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            c.site,
            c.host,
            c.machine_id,
            c.ts_ms,
            c.model.vendor,
            c.model.product,
            c.model.cpu_model,
            c.model.sockets
        ],
    )?;
    Ok(())
}

impl LedgerReader for SqliteReader {
    fn energy(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.read(|c, p| super::query::energy(c, q, &self.policy, p, super::query::Detail::Full))
    }

    fn energy_totals(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.read(|c, p| super::query::energy(c, q, &self.policy, p, super::query::Detail::Totals))
    }

    fn hosts(&self, site: &str, now_ms: i64) -> Result<Vec<HostRow>, StoreError> {
        self.read(|c, p| super::query::hosts(c, site, now_ms, &self.policy, p))
    }
    fn host_models(&self, site: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(String, HostModel)>, StoreError> {
        self.read(|c, p| super::query::host_models(c, site, from_ms, to_ms, p))
    }

    fn site_totals(&self) -> Result<Vec<(String, String, i128)>, StoreError> {
        self.read(super::query::site_totals)
    }

    fn role_hourly(&self, site: &str, role: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, i128)>, StoreError> {
        self.read(|c, _| super::query::role_hourly(c, site, role, from_ms, to_ms))
    }

    fn retired_hosts(&self, site: &str) -> Result<Vec<Retirement>, StoreError> {
        self.read(|c, _| {
            let mut st = c.prepare_cached(
                "SELECT host, author, reason, retired_ms FROM retired_hosts WHERE site = ?1 ORDER BY host",
            )?;
            let rows = st.query_map([site], retirement_row)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }
}
