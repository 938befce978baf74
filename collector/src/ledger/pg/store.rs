//! The PostgreSQL ledger's writer: a [`LedgerWriter`] that books exactly as the SQLite store does, by asking the
//! same [`rules`] with what it reads, in one PostgreSQL transaction per call, acknowledged only after its commit.
//!
//! Exact with several collectors writing one database:
//! - no journal and nothing kept in memory between calls (but prepared statements): every rule reads its inputs
//!   (a host name's owner, a series' last sample, a late sample's neighbours, an interval already recorded) from
//!   the database inside the transaction, after its locks, so another collector's commits are always seen;
//! - a host sample is written as a chunk of one point (`chunks`, the SQLite mirror's table), and its interval
//!   booked into `hours` in the same transaction; meter samples go to `samples`, meter intervals to `minutes` and
//!   `hours`, as in SQLite. The roll-ups (`site_hours`, `site_days`, `days`) are upserted with the hours, summed
//!   exactly as `NUMERIC`;
//! - serialisation: before reading anything a rule needs, the transaction takes a transaction-level advisory lock
//!   on every host name it claims (the two-key form, keyed by a hash of site and host) and then on every series
//!   id it touches (the one-key form), each set in sorted order, so two collectors given batches of one host at
//!   once take turns on that series and never wait on each other in a cycle. Series are created in sorted order
//!   too (`INSERT … ON CONFLICT DO NOTHING`, then a select), before any lock.
//!
//! Speed: a call's statements do not grow with its samples on the usual path. The series of all its batches are
//! resolved, locked and their last samples, labels and prune points read in one statement each (arrays,
//! `= ANY`/`unnest`); the claimed hosts' owners likewise. The rules then run on what was read, kept up to date in
//! [`Staged`] with what the transaction writes; those writes (points, meter samples, host claims) wait in
//! [`Pending`] and go out as one multi-row `INSERT … SELECT FROM unnest(…)` per table before the commit, as do
//! the buckets and roll-ups. A rare path that reads the tables themselves (a late sample's neighbours, a host
//! name's takeover) first flushes what is pending. Statements are prepared once per connection ([`Stmts`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use postgres::{Client, Statement, Transaction};

use super::PgError;
use crate::db::PgTarget;
use crate::ledger::book::{DAY_MS, HOUR_MS, MINUTE_MS, increment, spread};
use crate::ledger::chunk::{self, Point};
use crate::ledger::rules::{self, Claim, Placement, Reading, Slot};
use crate::ledger::{
    Batch, CounterSample, HOST_ENERGY_METRIC, HostClaim, IdMap, LedgerWriter, METER_METRIC, Outcome, Policy,
    Provenance, Retire, Retirement, RoleEnergy, StoreError, is_volume, micro_factor,
};

/// First key of the advisory locks on host names (the two-key form): "dmsd" in ASCII.
const HOST_LOCK_CLASS: i32 = 0x646d_7364;

/// A series' identity, in the order series are created and locked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SeriesKey {
    site: String,
    host: String,
    meter: String,
    method: String,
}

/// What the writer needs to know of a series besides its key.
#[derive(Debug, Clone)]
struct SeriesDef {
    quality: String,
    role: String,
    unit: String,
}

/// The PostgreSQL writer: one connection (see the module's doc).
pub struct PgWriter {
    /// `None` while dropping, or after a failed reconnection.
    client: Option<Client>,
    policy: Policy,
    reconnect: Option<super::Reconnect>,
    /// The last call failed: the connection is probed before the next one.
    suspect: bool,
    /// The statements prepared on `client`; emptied whenever the connection may be replaced.
    stmts: Stmts,
    /// When the ledger's totals were last read ([`LedgerWriter::totals_if_changed_elsewhere`]).
    totals_read: Option<std::time::Instant>,
}

/// Statements prepared on one connection, by their text: a statement is parsed and planned once, each later use
/// is one round trip.
#[derive(Default)]
struct Stmts(HashMap<&'static str, Statement>);

impl Stmts {
    fn get(&mut self, tx: &mut Transaction<'_>, sql: &'static str) -> Result<Statement, PgError> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = tx.prepare(sql)?;
        self.0.insert(sql, s.clone());
        Ok(s)
    }
}

impl Drop for PgWriter {
    fn drop(&mut self) {
        // Closing the connection drives the client's runtime, which cannot run inside `serve`'s.
        let client = self.client.take();
        super::off_runtime(move || drop(client));
    }
}

/// What one transaction has booked so far, written to the bucket tables before its commit, and what it read.
#[derive(Default)]
struct Staged {
    ids: HashMap<SeriesKey, i64>,
    minutes: IdMap<(i64, i64), (i64, i64)>,
    hours: IdMap<(i64, i64), (i64, i64)>,
    energy_uj: i128,
    /// Each series' last sample as this transaction sees it (its pending writes included); `None`: none yet.
    last: IdMap<i64, Option<Point>>,
    /// Labels and prune point of the series read by this transaction.
    info: IdMap<i64, Info>,
    /// The owner (machine id, claim time) of each claimed host name, pending claims included.
    owners: HashMap<(String, String), Option<(String, i64)>>,
    pending: Pending,
    stmts: Stmts,
}

/// What the roll-ups and the minutes need to know of a series.
struct Info {
    site: String,
    method: String,
    quality: String,
    /// A host energy series (else a meter's).
    host: bool,
    pruned_until_ms: i64,
}

/// Rows written by this transaction that are not in the tables yet (see [`flush`]).
#[derive(Default)]
struct Pending {
    points: Vec<(i64, Point)>,
    samples: Vec<(i64, Point)>,
    /// The last claim of each host name (a claim replaces the whole row).
    hosts: BTreeMap<(String, String), HostClaim>,
}

/// Books `amount` (micro-units) over `[t0, t1)` with the unit's `factor`, into the hours and, when `minutes`
/// (meters), the minutes; as the SQLite store's `book_interval`.
#[allow(clippy::too_many_arguments)]
fn book_interval(
    staged: &mut Staged,
    gap_ms: i64,
    id: i64,
    factor: i64,
    minutes: bool,
    (t0, t1, amount): (i64, i64, i64),
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
        for s in spread(t0, t1, energy, bucket, gap_ms) {
            let t = map.entry((id, s.start_ms)).or_insert((0, 0));
            t.0 += sign * s.energy_uj;
            t.1 += sign * s.covered_ms;
        }
    }
}

/// Adds what one sample or interval booked (`now` − the total before it) to its site and role, energy only.
fn settle(by_role: &mut Vec<RoleEnergy>, open: Option<(&str, &str, &str, i128)>, now: i128) {
    if let Some((site, role, unit, before)) = open
        && now != before
        && !is_volume(unit)
    {
        crate::ledger::add_role_energy(by_role, site, role, now - before);
    }
}

fn metric_of(key: &SeriesKey) -> &'static str {
    if key.meter.is_empty() { HOST_ENERGY_METRIC } else { METER_METRIC }
}

fn key_of(s: &CounterSample) -> (SeriesKey, SeriesDef) {
    let l = &*s.series;
    (
        SeriesKey {
            site: l.site.to_string(),
            host: l.host.clone(),
            meter: l.meter.clone(),
            method: l.method.to_string(),
        },
        SeriesDef { quality: l.quality.to_string(), role: l.role.to_string(), unit: l.unit.to_string() },
    )
}

fn meter_key(site: &str, meter: &str, role: &str, unit: &str) -> (SeriesKey, SeriesDef) {
    (
        SeriesKey { site: site.into(), host: String::new(), meter: meter.into(), method: String::new() },
        SeriesDef { quality: "measured".into(), role: role.into(), unit: unit.into() },
    )
}

// The lookups by name are lateral joins: one index probe per name, whatever the planner's estimate of the arrays'
// length or of the tables' sizes (the statements are prepared once, their plans kept).
const FIND_SERIES: &str = "SELECT s.id, k.i FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) \
     WITH ORDINALITY AS k(site, host, meter, metric, method, i) CROSS JOIN LATERAL (SELECT id FROM series \
     WHERE site = k.site AND host = k.host AND meter = k.meter AND metric = k.metric AND method = k.method) s";
/// New series, in the order given (sorted): another collector may create some of them at the same time.
const CREATE_SERIES: &str = "INSERT INTO series (site, host, meter, metric, method, quality, role, unit) \
     SELECT site, host, meter, metric, method, quality, role, unit FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], \
     $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[]) WITH ORDINALITY \
     AS k(site, host, meter, metric, method, quality, role, unit, i) ORDER BY i \
     ON CONFLICT (site, host, meter, metric, method) DO NOTHING";
/// Since PostgreSQL 9.6, volatile functions of the select list run after the sort, in the order of the
/// `ORDER BY` (release notes, "Evaluate volatile functions and set-returning functions in the output list
/// after ORDER BY"): the locks are taken in sorted order.
const LOCK_HOSTS: &str = "SELECT pg_advisory_xact_lock($1, h) FROM (SELECT DISTINCT hashtext(s || chr(31) || h) \
     AS h FROM unnest($2::TEXT[], $3::TEXT[]) AS c(s, h)) l ORDER BY h";
const LOCK_SERIES: &str = "SELECT pg_advisory_xact_lock(id) FROM (SELECT unnest($1::INT8[]) AS id UNION \
     SELECT s.id FROM unnest($2::TEXT[], $3::TEXT[]) AS c(site, host) CROSS JOIN LATERAL \
     (SELECT id FROM series WHERE site = c.site AND host = c.host AND meter = '') s) l ORDER BY id";
/// Each series' labels, prune point and last sample: a host's from its chunks, a meter's from `samples`.
const READ_SERIES: &str = "SELECT s.id, s.site, s.method, s.quality, s.metric, s.pruned_until_ms, \
     c.first_ts, c.data, m.ts_ms, m.value_micro FROM series s \
     LEFT JOIN LATERAL (SELECT first_ts, data FROM chunks WHERE series_id = s.id AND s.meter = '' \
     ORDER BY first_ts DESC LIMIT 1) c ON true \
     LEFT JOIN LATERAL (SELECT ts_ms, value_micro FROM samples WHERE series_id = s.id AND s.meter <> '' \
     ORDER BY ts_ms DESC LIMIT 1) m ON true WHERE s.id = ANY($1)";
const READ_OWNERS: &str = "SELECT h.site, h.host, h.machine_id, h.claimed_ms FROM unnest($1::TEXT[], $2::TEXT[]) \
     AS c(site, host) CROSS JOIN LATERAL (SELECT * FROM hosts WHERE site = c.site AND host = c.host) h";

/// Resolves (creating in key order) the series of `keys`, then locks the host names of `claims` and every series
/// touched: the batch's and the claimed hosts' (a takeover ends them with a stale marker). Then reads what the
/// rules will ask about: the series' last samples and labels, the claimed host names' owners.
fn resolve_and_lock(
    tx: &mut Transaction<'_>,
    staged: &mut Staged,
    keys: BTreeMap<SeriesKey, SeriesDef>,
    claims: &BTreeSet<(String, String)>,
) -> Result<(), PgError> {
    let keys: Vec<(SeriesKey, SeriesDef)> = keys.into_iter().collect();
    let column = |f: fn(&SeriesKey) -> &str, keys: &[&(SeriesKey, SeriesDef)]| -> Vec<String> {
        keys.iter().map(|(k, _)| f(k).to_string()).collect()
    };
    let find = |tx: &mut Transaction<'_>,
                stmts: &mut Stmts,
                ids: &mut HashMap<SeriesKey, i64>,
                keys: &[&(SeriesKey, SeriesDef)]|
     -> Result<(), PgError> {
        if keys.is_empty() {
            return Ok(());
        }
        let st = stmts.get(tx, FIND_SERIES)?;
        let rows = tx.query(
            &st,
            &[
                &column(|k| &k.site, keys),
                &column(|k| &k.host, keys),
                &column(|k| &k.meter, keys),
                &column(metric_of, keys),
                &column(|k| &k.method, keys),
            ],
        )?;
        for r in rows {
            let i: i64 = r.get(1);
            if let Some((k, _)) = usize::try_from(i - 1).ok().and_then(|i| keys.get(i)) {
                ids.insert(k.clone(), r.get(0));
            }
        }
        Ok(())
    };
    let all: Vec<&(SeriesKey, SeriesDef)> = keys.iter().collect();
    find(tx, &mut staged.stmts, &mut staged.ids, &all)?;
    let missing: Vec<&(SeriesKey, SeriesDef)> = all.into_iter().filter(|(k, _)| !staged.ids.contains_key(k)).collect();
    if !missing.is_empty() {
        let def =
            |f: fn(&SeriesDef) -> &str| -> Vec<String> { missing.iter().map(|(_, d)| f(d).to_string()).collect() };
        let st = staged.stmts.get(tx, CREATE_SERIES)?;
        tx.execute(
            &st,
            &[
                &column(|k| &k.site, &missing),
                &column(|k| &k.host, &missing),
                &column(|k| &k.meter, &missing),
                &column(metric_of, &missing),
                &column(|k| &k.method, &missing),
                &def(|d| &d.quality),
                &def(|d| &d.role),
                &def(|d| &d.unit),
            ],
        )?;
        find(tx, &mut staged.stmts, &mut staged.ids, &missing)?;
        if let Some((k, _)) = missing.iter().find(|(k, _)| !staged.ids.contains_key(k)) {
            return Err(PgError::Corrupt(format!("series {k:?} was neither created nor found")));
        }
    }
    let (sites, hosts): (Vec<String>, Vec<String>) = claims.iter().cloned().unzip();
    if !claims.is_empty() {
        let st = staged.stmts.get(tx, LOCK_HOSTS)?;
        tx.execute(&st, &[&HOST_LOCK_CLASS, &sites, &hosts])?;
    }
    let ids: Vec<i64> = staged.ids.values().copied().collect();
    let st = staged.stmts.get(tx, LOCK_SERIES)?;
    tx.execute(&st, &[&ids, &sites, &hosts])?;
    read_series(tx, staged, &ids)?;
    if !claims.is_empty() {
        for c in claims {
            staged.owners.insert(c.clone(), None);
        }
        let st = staged.stmts.get(tx, READ_OWNERS)?;
        for r in tx.query(&st, &[&sites, &hosts])? {
            staged.owners.insert((r.get(0), r.get(1)), Some((r.get(2), r.get(3))));
        }
    }
    Ok(())
}

/// Reads the labels, prune point and last sample of the series `ids` into `staged`.
fn read_series(tx: &mut Transaction<'_>, staged: &mut Staged, ids: &[i64]) -> Result<(), PgError> {
    if ids.is_empty() {
        return Ok(());
    }
    let st = staged.stmts.get(tx, READ_SERIES)?;
    for r in tx.query(&st, &[&ids])? {
        let id: i64 = r.get(0);
        let metric: String = r.get(4);
        let host = metric == HOST_ENERGY_METRIC;
        let last = if host {
            match r.get::<_, Option<i64>>(6) {
                Some(first) => {
                    let data: &[u8] = r.get(7);
                    let points = chunk::decode(id, first, data).map_err(|e| PgError::Corrupt(e.to_string()))?;
                    points.last().copied()
                }
                None => None,
            }
        } else {
            r.get::<_, Option<i64>>(8).map(|ts| (ts, r.get(9)))
        };
        staged.last.insert(id, last);
        staged
            .info
            .insert(id, Info { site: r.get(1), method: r.get(2), quality: r.get(3), host, pruned_until_ms: r.get(5) });
    }
    Ok(())
}

/// A series' last sample, with what this transaction wrote: from what [`read_series`] read, else read now.
fn last_point(tx: &mut Transaction<'_>, staged: &mut Staged, id: i64) -> Result<Option<Point>, PgError> {
    if !staged.last.contains_key(&id) {
        read_series(tx, staged, &[id])?;
    }
    staged.last.get(&id).copied().ok_or_else(|| PgError::Corrupt(format!("series {id} does not exist")))
}

/// Writes what is pending (see [`Pending`]), each table in one statement.
fn flush(tx: &mut Transaction<'_>, staged: &mut Staged) -> Result<(), PgError> {
    let p = std::mem::take(&mut staged.pending);
    if !p.points.is_empty() {
        let st = staged.stmts.get(
            tx,
            "INSERT INTO chunks (series_id, first_ts, last_ts, n_points, n_values, first_value_ts, last_value_ts, data) \
             SELECT id, ts, ts, 1, nv, vts, vts, d FROM unnest($1::INT8[], $2::INT8[], $3::INT8[], $4::INT8[], \
             $5::BYTEA[]) AS u(id, ts, nv, vts, d)",
        )?;
        let ids: Vec<i64> = p.points.iter().map(|(id, _)| *id).collect();
        let ts: Vec<i64> = p.points.iter().map(|(_, (t, _))| *t).collect();
        let n_values: Vec<i64> = p.points.iter().map(|(_, (_, v))| i64::from(v.is_some())).collect();
        let value_ts: Vec<Option<i64>> = p.points.iter().map(|(_, (t, v))| v.map(|_| *t)).collect();
        let data: Vec<Vec<u8>> = p.points.iter().map(|(_, pt)| chunk::encode(&[*pt])).collect();
        tx.execute(&st, &[&ids, &ts, &n_values, &value_ts, &data])?;
    }
    if !p.samples.is_empty() {
        let st = staged.stmts.get(
            tx,
            "INSERT INTO samples (series_id, ts_ms, value_micro) SELECT * FROM unnest($1::INT8[], $2::INT8[], $3::INT8[])",
        )?;
        let ids: Vec<i64> = p.samples.iter().map(|(id, _)| *id).collect();
        let ts: Vec<i64> = p.samples.iter().map(|(_, (t, _))| *t).collect();
        let values: Vec<Option<i64>> = p.samples.iter().map(|(_, (_, v))| *v).collect();
        tx.execute(&st, &[&ids, &ts, &values])?;
    }
    if !p.hosts.is_empty() {
        let st = staged.stmts.get(
            tx,
            "INSERT INTO hosts (site, host, machine_id, claimed_ms, vendor, product, cpu_model, sockets) \
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::INT8[], $5::TEXT[], $6::TEXT[], $7::TEXT[], \
             $8::INT8[]) ON CONFLICT (site, host) DO UPDATE SET machine_id = excluded.machine_id, \
             claimed_ms = excluded.claimed_ms, vendor = excluded.vendor, product = excluded.product, \
             cpu_model = excluded.cpu_model, sockets = excluded.sockets",
        )?;
        let c: Vec<&HostClaim> = p.hosts.values().collect();
        let text = |f: fn(&HostClaim) -> &str| -> Vec<&str> { c.iter().map(|c| f(c)).collect() };
        let ts: Vec<i64> = c.iter().map(|c| c.ts_ms).collect();
        let sockets: Vec<Option<i64>> = c.iter().map(|c| c.model.sockets.map(i64::from)).collect();
        tx.execute(
            &st,
            &[
                &text(|c| &c.site),
                &text(|c| &c.host),
                &text(|c| &c.machine_id),
                &ts,
                &text(|c| &c.model.vendor),
                &text(|c| &c.model.product),
                &text(|c| &c.model.cpu_model),
                &sockets,
            ],
        )?;
    }
    Ok(())
}

/// Records `point` as written to series `id` (a host's chunk, or a meter's sample): pending until [`flush`].
fn put(staged: &mut Staged, id: i64, point: Point, host: bool) {
    if let Some(last) = staged.last.get_mut(&id)
        && last.is_none_or(|(t, _)| point.0 > t)
    {
        *last = Some(point);
    }
    if host { staged.pending.points.push((id, point)) } else { staged.pending.samples.push((id, point)) }
}

/// Records a host name's claim: pending until [`flush`].
fn upsert_host(staged: &mut Staged, c: &HostClaim) {
    let key = (c.site.clone(), c.host.clone());
    staged.owners.insert(key.clone(), Some((c.machine_id.clone(), c.ts_ms)));
    staged.pending.hosts.insert(key, c.clone());
}

fn decode_row(series_id: i64, r: &postgres::Row) -> Result<(i64, Vec<Point>), PgError> {
    let first: i64 = r.get(0);
    let data: &[u8] = r.get(1);
    let points = chunk::decode(series_id, first, data).map_err(|e| PgError::Corrupt(e.to_string()))?;
    Ok((first, points))
}

const AT_OR_BEFORE: &str =
    "SELECT first_ts, data FROM chunks WHERE series_id = $1 AND first_ts <= $2 ORDER BY first_ts DESC LIMIT 1";
const BEFORE: &str =
    "SELECT first_ts, data FROM chunks WHERE series_id = $1 AND first_ts < $2 ORDER BY first_ts DESC LIMIT 1";
const AFTER: &str =
    "SELECT first_ts, data FROM chunks WHERE series_id = $1 AND first_ts > $2 ORDER BY first_ts ASC LIMIT 1";

fn chunk_where(tx: &mut Transaction<'_>, sql: &str, id: i64, t: i64) -> Result<Option<(i64, Vec<Point>)>, PgError> {
    tx.query_opt(sql, &[&id, &t])?.map(|r| decode_row(id, &r)).transpose()
}

/// Around `t`: the sample before it, the value at it (if any), the sample after it.
fn neighbours(tx: &mut Transaction<'_>, id: i64, t: i64, host: bool) -> Result<rules::Neighbours, PgError> {
    if !host {
        let point = |tx: &mut Transaction<'_>, sql: &str| -> Result<Option<Point>, PgError> {
            Ok(tx.query_opt(sql, &[&id, &t])?.map(|r| (r.get(0), r.get(1))))
        };
        let exact = point(tx, "SELECT ts_ms, value_micro FROM samples WHERE series_id = $1 AND ts_ms = $2")?;
        let prev = point(
            tx,
            "SELECT ts_ms, value_micro FROM samples WHERE series_id = $1 AND ts_ms < $2 ORDER BY ts_ms DESC LIMIT 1",
        )?;
        let next = point(
            tx,
            "SELECT ts_ms, value_micro FROM samples WHERE series_id = $1 AND ts_ms > $2 ORDER BY ts_ms ASC LIMIT 1",
        )?;
        return Ok((prev, exact.map(|p| p.1), next));
    }
    chunk::neighbours_with(t, |which, t| {
        let sql = match which {
            chunk::Around::AtOrBefore => AT_OR_BEFORE,
            chunk::Around::Before => BEFORE,
            chunk::Around::After => AFTER,
        };
        chunk_where(tx, sql, id, t)
    })
}

/// Stores a late host sample. Inside the span of a chunk of several points (SQLite's chunks, moved by
/// `migrate --to`), it goes into that chunk at once, so a series' chunks never overlap (the lookups of
/// [`chunk::neighbours_with`] and the reader rely on it); elsewhere it is a chunk of one point, pending like the
/// others. The slot rule never inserts at an existing timestamp, so the chunk keeps its first and last timestamps.
/// Called after [`flush`]: what this transaction wrote is in the tables.
fn put_late_point(tx: &mut Transaction<'_>, staged: &mut Staged, id: i64, point: Point) -> Result<(), PgError> {
    let Some((first, mut points)) = chunk_where(tx, AT_OR_BEFORE, id, point.0)? else {
        put(staged, id, point, true);
        return Ok(());
    };
    if points.last().is_none_or(|p| p.0 <= point.0) {
        put(staged, id, point, true);
        return Ok(());
    }
    let i = points.partition_point(|p| p.0 < point.0);
    points.insert(i, point);
    let values = points.iter().filter(|p| p.1.is_some());
    let n_values = values.clone().count() as i64;
    let (first_value, last_value) = (values.clone().next().map(|p| p.0), values.clone().next_back().map(|p| p.0));
    tx.execute(
        "UPDATE chunks SET n_points = $3, n_values = $4, first_value_ts = $5, last_value_ts = $6, data = $7 \
         WHERE series_id = $1 AND first_ts = $2",
        &[&id, &first, &(points.len() as i64), &n_values, &first_value, &last_value, &chunk::encode(&points)],
    )?;
    Ok(())
}

impl PgWriter {
    /// Connects, migrates the schema (see [`super::schema::migrate`]) and returns the writer.
    pub fn open(target: &PgTarget, policy: Policy) -> Result<PgWriter, PgError> {
        let (client, _) = super::open(target)?;
        Ok(PgWriter::new(client, policy).reconnecting(super::reconnect_to(target)))
    }

    /// A writer on a connection whose database is already migrated.
    pub fn new(client: Client, policy: Policy) -> PgWriter {
        PgWriter {
            client: Some(client),
            policy,
            reconnect: None,
            suspect: false,
            stmts: Stmts::default(),
            totals_read: None,
        }
    }

    /// Replaces a connection the server closed with one from `reconnect` (see [`super::live`]).
    pub fn reconnecting(mut self, reconnect: super::Reconnect) -> PgWriter {
        self.reconnect = Some(reconnect);
        self
    }

    /// The live connection (see [`super::live`]). One that may be replaced takes its prepared statements with it:
    /// every caller goes through here, so none is left naming a statement of a closed connection.
    fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.suspect || self.client.as_ref().is_none_or(Client::is_closed) {
            self.stmts.0.clear();
        }
        super::live(&mut self.client, self.suspect, self.reconnect.as_ref())
    }

    /// Runs `f` in one transaction after resolving and locking (see the module's doc) the series of `keys` and
    /// the host names of `claims`, then writes the staged buckets and commits.
    fn transaction<T>(
        &mut self,
        keys: BTreeMap<SeriesKey, SeriesDef>,
        claims: BTreeSet<(String, String)>,
        f: impl FnOnce(&mut Transaction<'_>, &mut Staged, &Policy) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        let policy = self.policy;
        let out = (|| {
            self.client()?;
            let mut staged = Staged { stmts: std::mem::take(&mut self.stmts), ..Staged::default() };
            let client =
                self.client.as_mut().ok_or_else(|| PgError::Corrupt("the ledger's connection is closed".into()))?;
            let out = (|| {
                let mut tx = client.transaction()?;
                resolve_and_lock(&mut tx, &mut staged, keys, &claims)?;
                let out = f(&mut tx, &mut staged, &policy)?;
                flush(&mut tx, &mut staged)?;
                write_buckets(&mut tx, &mut staged)?;
                tx.commit()?;
                Ok(out)
            })();
            self.stmts = staged.stmts;
            out
        })();
        self.suspect = out.is_err();
        out
    }
}

fn apply_one(
    tx: &mut Transaction<'_>,
    staged: &mut Staged,
    policy: &Policy,
    batch: &Batch,
) -> Result<Outcome, PgError> {
    let mut out = Outcome::default();
    staged.energy_uj = 0;
    // Host ownership first: a request's claims decide whether its samples are booked.
    let mut refused: Vec<(String, String)> = Vec::new();
    for c in &batch.claims {
        // Every claimed name's owner was read after its lock (resolve_and_lock).
        let owner: Option<(String, i64)> = staged.owners.get(&(c.site.clone(), c.host.clone())).cloned().flatten();
        match rules::claim(owner.as_ref().map(|(m, t)| (m.as_str(), *t)), &c.machine_id, c.ts_ms, policy) {
            Claim::Refuse => {
                tx.execute(
                    "INSERT INTO host_conflicts VALUES ($1, $2, $3, $4, $4, 0) ON CONFLICT (site, host, machine_id) \
                     DO UPDATE SET last_ms = GREATEST(host_conflicts.last_ms, excluded.last_ms)",
                    &[&c.site, &c.host, &c.machine_id, &c.ts_ms],
                )?;
                refused.push((c.site.clone(), c.host.clone()));
            }
            Claim::TakeOver => {
                let old = owner.map(|(m, _)| m).unwrap_or_default();
                flush(tx, staged)?;
                tracing::warn!(site = %c.site, host = %c.host, old = %old, new = %c.machine_id, "host name taken over by another machine");
                let ids: Vec<i64> = tx
                    .query(
                        "SELECT id FROM series WHERE site = $1 AND host = $2 AND meter = '' ORDER BY id",
                        &[&c.site, &c.host],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for id in ids {
                    if let Some(last) = last_point(tx, staged, id)?
                        && let Some(marker) = rules::takeover_marker(last)
                    {
                        // Booked as an in-order sample: zero energy, its millisecond covered.
                        put(staged, id, marker, true);
                        book_interval(staged, policy.gap_ms, id, 1, false, (last.0, marker.0, 0), 1);
                    }
                }
                upsert_host(staged, c);
            }
            Claim::Accept => upsert_host(staged, c),
        }
    }
    let mut by_role: Vec<RoleEnergy> = Vec::new();
    let mut open: Option<(&str, &str, &str, i128)> = None;
    for s in &batch.samples {
        let l = &*s.series;
        settle(&mut by_role, open.take(), staged.energy_uj);
        open = Some((&l.site, &l.role, &l.unit, staged.energy_uj));
        if refused.iter().any(|(site, host)| **site == *l.site && *host == l.host) {
            out.host_conflict += 1;
            tx.execute(
                "UPDATE host_conflicts SET rejected_samples = rejected_samples + 1 WHERE site = $1 AND host = $2",
                &[&&*l.site, &l.host],
            )?;
            continue;
        }
        let factor = micro_factor(&l.unit).unwrap_or(0);
        let (key, _) = key_of(s);
        let id = *staged.ids.get(&key).ok_or_else(|| PgError::Corrupt("a series was not resolved".into()))?;
        let host = l.meter.is_empty();
        let sample: Point = (s.ts_ms, s.value_micro);
        match rules::place(last_point(tx, staged, id)?, sample, host) {
            Placement::Journal { prev } => {
                put(staged, id, sample, true);
                if let Some((pt, pv)) = prev {
                    let inc = increment(pv, s.value_micro);
                    book_interval(staged, policy.gap_ms, id, factor, false, (pt, s.ts_ms, inc), 1);
                }
                out.booked += 1;
            }
            Placement::First => {
                put(staged, id, sample, false);
                out.booked += 1;
            }
            Placement::Append(iv) => {
                put(staged, id, sample, false);
                book_interval(staged, policy.gap_ms, id, factor, true, iv, 1);
                out.booked += 1;
            }
            Placement::Late => {
                // The neighbours are read from the tables: what this transaction wrote must be there.
                flush(tx, staged)?;
                let n = neighbours(tx, id, s.ts_ms, host)?;
                let pruned_until: i64 =
                    tx.query_one("SELECT pruned_until_ms FROM series WHERE id = $1", &[&id])?.get(0);
                match rules::slot(n, pruned_until, sample) {
                    Slot::Duplicate => out.duplicate += 1,
                    Slot::Conflict => out.conflict += 1,
                    Slot::TooOld => out.too_old += 1,
                    Slot::Insert { remove, add } => {
                        // A host series' minutes are recomputed from its points: only hours are booked.
                        if let Some(iv) = remove {
                            book_interval(staged, policy.gap_ms, id, factor, !host, iv, -1);
                        }
                        for iv in add.into_iter().flatten() {
                            book_interval(staged, policy.gap_ms, id, factor, !host, iv, 1);
                        }
                        if host {
                            put_late_point(tx, staged, id, sample)?;
                        } else {
                            put(staged, id, sample, false);
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
        let (key, _) = meter_key(&iv.site, &iv.meter, &iv.role, &iv.unit);
        let id = *staged.ids.get(&key).ok_or_else(|| PgError::Corrupt("a series was not resolved".into()))?;
        let existing: Option<i64> = tx
            .query_opt(
                "SELECT value_micro FROM intervals WHERE series_id = $1 AND start_ms = $2 AND end_ms = $3",
                &[&id, &iv.start_ms, &iv.end_ms],
            )?
            .map(|r| r.get(0));
        match rules::interval_reading(existing, iv.value_micro) {
            Reading::Duplicate => out.duplicate += 1,
            Reading::Conflict => out.conflict += 1,
            Reading::Book => {
                tx.execute(
                    "INSERT INTO intervals VALUES ($1, $2, $3, $4)",
                    &[&id, &iv.start_ms, &iv.end_ms, &iv.value_micro],
                )?;
                // An interval reading is a measurement of the whole interval: it covers it.
                let span = (iv.start_ms, iv.end_ms, iv.value_micro);
                book_interval(staged, rules::INTERVAL_GAP_MS, id, factor, true, span, 1);
                out.booked += 1;
            }
        }
    }
    settle(&mut by_role, open.take(), staged.energy_uj);
    out.energy_uj = staged.energy_uj;
    out.by_role = by_role;
    for q in &batch.quarantine {
        out.quarantined += tx.execute(
            "INSERT INTO quarantine (site, host, method, ts_ms, value, received_ms, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[&q.site, &q.host, &q.method, &q.ts_ms, &q.value, &q.received_ms, &q.reason],
        )?;
    }
    Ok(out)
}

/// Adds the staged minutes and hours to their tables, and the hours to the roll-ups, each in key order (two
/// collectors adding to one site's roll-up row take its row locks in the same order). Minutes of a series before
/// its prune point are not recreated: they were pruned, their hour holds the energy.
/// Bucket rows as columns: series ids, starts, energies, coverages.
type Rows = (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>);

/// Adds `rows` to a bucket table (`minutes`, `hours`) with `sql`, an upsert of the four columns from arrays.
fn add_buckets(tx: &mut Transaction<'_>, stmts: &mut Stmts, sql: &'static str, rows: &Rows) -> Result<(), PgError> {
    if rows.0.is_empty() {
        return Ok(());
    }
    let st = stmts.get(tx, sql)?;
    tx.execute(&st, &[&rows.0, &rows.1, &rows.2, &rows.3])?;
    Ok(())
}

fn write_buckets(tx: &mut Transaction<'_>, staged: &mut Staged) -> Result<(), PgError> {
    let sorted = |m: &IdMap<(i64, i64), (i64, i64)>| {
        let mut v: Vec<((i64, i64), (i64, i64))> = m.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_unstable_by_key(|b| b.0);
        v
    };
    // Series booked but not read yet (a taken-over host's other series): their labels and prune point.
    let unknown: BTreeSet<i64> = staged
        .minutes
        .keys()
        .chain(staged.hours.keys())
        .map(|k| k.0)
        .filter(|id| !staged.info.contains_key(id))
        .collect();
    if !unknown.is_empty() {
        read_series(tx, staged, &unknown.into_iter().collect::<Vec<_>>())?;
    }
    let info = |staged: &Staged, id: i64| -> Result<(String, String, String, bool, i64), PgError> {
        let i = staged.info.get(&id).ok_or_else(|| PgError::Corrupt(format!("series {id} does not exist")))?;
        Ok((i.site.clone(), i.method.clone(), i.quality.clone(), i.host, i.pruned_until_ms))
    };
    let push = |rows: &mut Rows, (id, start): (i64, i64), (e, c): (i64, i64)| {
        rows.0.push(id);
        rows.1.push(start);
        rows.2.push(e);
        rows.3.push(c);
    };
    let mut minutes: Rows = Default::default();
    for (k, v) in sorted(&staged.minutes) {
        if k.1 >= info(staged, k.0)?.4 {
            push(&mut minutes, k, v);
        }
    }
    add_buckets(
        tx,
        &mut staged.stmts,
        "INSERT INTO minutes (series_id, start_ms, energy_uj, covered_ms) \
         SELECT * FROM unnest($1::INT8[], $2::INT8[], $3::INT8[], $4::INT8[]) \
         ON CONFLICT (series_id, start_ms) DO UPDATE SET energy_uj = minutes.energy_uj + excluded.energy_uj, \
         covered_ms = minutes.covered_ms + excluded.covered_ms",
        &minutes,
    )?;
    // The roll-ups: a host series' hours per (site, method, quality) and hour or day, a meter's per day.
    type Sums = BTreeMap<(String, i64, String, String), (i128, i64)>;
    let (mut site_hours, mut site_days): (Sums, Sums) = (BTreeMap::new(), BTreeMap::new());
    let mut days: BTreeMap<(i64, i64), (i128, i64)> = BTreeMap::new();
    let mut hours: Rows = Default::default();
    for ((id, start), (e, c)) in sorted(&staged.hours) {
        push(&mut hours, (id, start), (e, c));
        let (site, method, quality, host, _) = info(staged, id)?;
        let day = start.div_euclid(DAY_MS) * DAY_MS;
        let add = |t: &mut (i128, i64)| {
            t.0 += i128::from(e);
            t.1 += c;
        };
        if host {
            add(site_hours.entry((site.clone(), start, method.clone(), quality.clone())).or_default());
            add(site_days.entry((site, day, method, quality)).or_default());
        } else {
            add(days.entry((id, day)).or_default());
        }
    }
    add_buckets(
        tx,
        &mut staged.stmts,
        "INSERT INTO hours (series_id, start_ms, energy_uj, covered_ms) \
         SELECT * FROM unnest($1::INT8[], $2::INT8[], $3::INT8[], $4::INT8[]) \
         ON CONFLICT (series_id, start_ms) DO UPDATE SET energy_uj = hours.energy_uj + excluded.energy_uj, \
         covered_ms = hours.covered_ms + excluded.covered_ms",
        &hours,
    )?;
    const SITE_HOURS: &str = "INSERT INTO site_hours (site, start_ms, method, quality, energy_uj, covered_ms) \
         SELECT s, t, m, q, e::NUMERIC, c FROM unnest($1::TEXT[], $2::INT8[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
         $6::INT8[]) AS u(s, t, m, q, e, c) ON CONFLICT (site, start_ms, method, quality) DO UPDATE SET \
         energy_uj = site_hours.energy_uj + excluded.energy_uj, covered_ms = site_hours.covered_ms + excluded.covered_ms";
    const SITE_DAYS: &str = "INSERT INTO site_days (site, start_ms, method, quality, energy_uj, covered_ms) \
         SELECT s, t, m, q, e::NUMERIC, c FROM unnest($1::TEXT[], $2::INT8[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
         $6::INT8[]) AS u(s, t, m, q, e, c) ON CONFLICT (site, start_ms, method, quality) DO UPDATE SET \
         energy_uj = site_days.energy_uj + excluded.energy_uj, covered_ms = site_days.covered_ms + excluded.covered_ms";
    for (sql, sums) in [(SITE_HOURS, &site_hours), (SITE_DAYS, &site_days)] {
        if sums.is_empty() {
            continue;
        }
        let text = |f: fn(&(String, i64, String, String)) -> &str| -> Vec<&str> { sums.keys().map(f).collect() };
        let starts: Vec<i64> = sums.keys().map(|k| k.1).collect();
        let energy: Vec<String> = sums.values().map(|v| v.0.to_string()).collect();
        let covered: Vec<i64> = sums.values().map(|v| v.1).collect();
        let st = staged.stmts.get(tx, sql)?;
        tx.execute(&st, &[&text(|k| &k.0), &starts, &text(|k| &k.2), &text(|k| &k.3), &energy, &covered])?;
    }
    if !days.is_empty() {
        let st = staged.stmts.get(
            tx,
            "INSERT INTO days (series_id, start_ms, energy_uj, covered_ms) \
             SELECT id, t, e::NUMERIC, c FROM unnest($1::INT8[], $2::INT8[], $3::TEXT[], $4::INT8[]) AS u(id, t, e, c) \
             ON CONFLICT (series_id, start_ms) DO UPDATE SET energy_uj = days.energy_uj + excluded.energy_uj, \
             covered_ms = days.covered_ms + excluded.covered_ms",
        )?;
        let ids: Vec<i64> = days.keys().map(|k| k.0).collect();
        let starts: Vec<i64> = days.keys().map(|k| k.1).collect();
        let energy: Vec<String> = days.values().map(|v| v.0.to_string()).collect();
        let covered: Vec<i64> = days.values().map(|v| v.1).collect();
        tx.execute(&st, &[&ids, &starts, &energy, &covered])?;
    }
    Ok(())
}

/// The series and claimed host names of `batches`.
fn keys_of(batches: &[Batch]) -> (BTreeMap<SeriesKey, SeriesDef>, BTreeSet<(String, String)>) {
    let mut keys = BTreeMap::new();
    let mut claims = BTreeSet::new();
    for b in batches {
        for s in &b.samples {
            let (k, d) = key_of(s);
            keys.entry(k).or_insert(d);
        }
        for iv in &b.intervals {
            let (k, d) = meter_key(&iv.site, &iv.meter, &iv.role, &iv.unit);
            keys.entry(k).or_insert(d);
        }
        for c in &b.claims {
            claims.insert((c.site.clone(), c.host.clone()));
        }
    }
    (keys, claims)
}

impl LedgerWriter for PgWriter {
    fn apply(&mut self, batches: &[Batch], _now_ms: i64) -> Result<Vec<Outcome>, StoreError> {
        let (keys, claims) = keys_of(batches);
        Ok(self.transaction(keys, claims, |tx, staged, policy| {
            batches.iter().map(|b| apply_one(tx, staged, policy, b)).collect()
        })?)
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
        let (key, def) = meter_key(site, meter, role, unit);
        let keys = BTreeMap::from([(key.clone(), def)]);
        Ok(self.transaction(keys, BTreeSet::new(), |tx, staged, _| {
            let id = staged.ids[&key];
            tx.execute(
                "INSERT INTO adjustments (series_id, kind, start_ms, end_ms, value_micro, author, reason, recorded_ms) \
                 VALUES ($1, 'correction', $2, $3, $4, $5, $6, $7)",
                &[&id, &start_ms, &end_ms, &value_micro, &who.author, &who.reason, &who.recorded_ms],
            )?;
            let factor = micro_factor(unit).unwrap_or(0);
            let (iv, sign) = rules::correction(start_ms, end_ms, value_micro);
            book_interval(staged, rules::CORRECTION_GAP_MS, id, factor, true, iv, sign);
            Ok(())
        })?)
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
        let (keys, claims) = keys_of(std::slice::from_ref(&batch));
        let (key, _) = meter_key(site, meter, role, unit);
        // The readings and the record of who and why commit together or not at all.
        Ok(self.transaction(keys, claims, |tx, staged, policy| {
            let out = apply_one(tx, staged, policy, &batch)?;
            let id = staged.ids[&key];
            tx.execute(
                "INSERT INTO adjustments (series_id, kind, start_ms, end_ms, value_micro, final_micro, initial_micro, \
                 author, reason, recorded_ms) VALUES ($1, 'swap', $2, $2, 0, $3, $4, $5, $6, $7)",
                &[&id, &at_ms, &final_micro, &initial_micro, &who.author, &who.reason, &who.recorded_ms],
            )?;
            Ok(out)
        })?)
    }

    fn retire_host(&mut self, site: &str, host: &str, known: bool, who: &Provenance) -> Result<Retire, StoreError> {
        let out = self.record_retirement(site, host, known, who);
        self.suspect = out.is_err();
        out
    }

    fn prune(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let out = self.prune_before(now_ms - self.policy.minute_retention_ms);
        self.suspect = out.is_err();
        out
    }

    fn housekeeping(&mut self, _force: bool) -> Result<(), StoreError> {
        // No journal: every call wrote its samples to the tables before its commit.
        Ok(())
    }

    fn totals_if_changed_elsewhere(&mut self) -> Result<Option<crate::ledger::SiteTotals>, StoreError> {
        // Other collectors commit all the time: the totals are re-read from the roll-ups now and then (cheap),
        // rather than counting commits in a row every transaction would update.
        if self.totals_read.is_some_and(|t| t.elapsed() < super::totals::READ_EVERY) {
            return Ok(None);
        }
        self.totals_read = Some(std::time::Instant::now());
        let out = self.client().and_then(super::totals::from_rollups);
        self.suspect = out.is_err();
        Ok(Some(out?))
    }
}

impl PgWriter {
    /// [`LedgerWriter::retire_host`].
    fn record_retirement(
        &mut self,
        site: &str,
        host: &str,
        known: bool,
        who: &Provenance,
    ) -> Result<Retire, StoreError> {
        let mut tx = self.client()?.transaction().map_err(PgError::from)?;
        let existing = |tx: &mut Transaction<'_>| -> Result<Option<Retire>, PgError> {
            Ok(tx
                .query_opt(
                    "SELECT host, author, reason, retired_ms FROM retired_hosts WHERE site = $1 AND host = $2",
                    &[&site, &host],
                )?
                .map(|r| {
                    Retire::Already(Retirement { host: r.get(0), by: r.get(1), reason: r.get(2), retired_ms: r.get(3) })
                }))
        };
        if let Some(r) = existing(&mut tx)? {
            return Ok(r);
        }
        let seen: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM series WHERE site = $1 AND host = $2) \
                 OR EXISTS (SELECT 1 FROM hosts WHERE site = $1 AND host = $2)",
                &[&site, &host],
            )
            .map_err(PgError::from)?
            .get(0);
        if !(seen || known) {
            return Ok(Retire::UnknownHost);
        }
        // Another command retiring the host at the same moment: the first record stays.
        let n = tx
            .execute(
                "INSERT INTO retired_hosts (site, host, author, reason, retired_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (site, host) DO NOTHING",
                &[&site, &host, &who.author, &who.reason, &who.recorded_ms],
            )
            .map_err(PgError::from)?;
        if n == 0 {
            return Ok(existing(&mut tx)?.unwrap_or(Retire::Retired));
        }
        tx.commit().map_err(PgError::from)?;
        Ok(Retire::Retired)
    }

    /// [`LedgerWriter::prune`]: minutes, raw samples and quarantined samples before `cutoff`, each series' last
    /// sample kept (the next one's baseline).
    fn prune_before(&mut self, cutoff: i64) -> Result<(), StoreError> {
        let mut tx = self.client()?.transaction().map_err(PgError::from)?;
        tx.batch_execute(&format!(
            "DELETE FROM minutes WHERE start_ms < {cutoff};
             UPDATE series SET pruned_until_ms = {cutoff} WHERE pruned_until_ms < {cutoff} AND (EXISTS \
             (SELECT 1 FROM samples s WHERE s.series_id = series.id AND s.ts_ms < {cutoff}) OR EXISTS \
             (SELECT 1 FROM chunks c WHERE c.series_id = series.id AND c.first_ts < {cutoff}));
             DELETE FROM chunks WHERE last_ts < {cutoff} AND first_ts < \
             (SELECT MAX(first_ts) FROM chunks c2 WHERE c2.series_id = chunks.series_id);
             DELETE FROM quarantine WHERE received_ms < {cutoff};
             DELETE FROM samples WHERE ts_ms < {cutoff} AND ts_ms < \
             (SELECT MAX(ts_ms) FROM samples s2 WHERE s2.series_id = samples.series_id);"
        ))
        .map_err(PgError::from)?;
        tx.commit().map_err(PgError::from)?;
        Ok(())
    }
}
