//! The PostgreSQL ledger's writer: a [`LedgerWriter`] that books exactly as the SQLite store does, by asking the
//! same [`rules`] with what it reads, in one PostgreSQL transaction per call, acknowledged only after its commit.
//!
//! Simple first, and exact with several collectors writing one database:
//! - no journal and nothing kept in memory between calls: every rule reads its inputs (a host name's owner, a
//!   series' last sample, a late sample's neighbours, an interval already recorded) from the database inside the
//!   transaction, so another collector's commits are always seen;
//! - a host sample is written at once as a chunk of one point (`chunks`, the SQLite mirror's table), and its
//!   interval booked into `hours` in the same transaction; meter samples go to `samples`, meter intervals to
//!   `minutes` and `hours`, as in SQLite. The roll-ups (`site_hours`, `site_days`, `days`) are upserted with the
//!   hours, summed exactly as `NUMERIC`;
//! - serialisation: before reading anything a rule needs, the transaction takes a transaction-level advisory lock
//!   on every host name it claims (the two-key form, keyed by a hash of site and host) and then on every series
//!   id it touches (the one-key form), each set in sorted order, so two collectors given batches of one host at
//!   once take turns on that series and never wait on each other in a cycle. Series are created in sorted order
//!   too (`INSERT … ON CONFLICT DO NOTHING`, then a select), before any lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use postgres::{Client, Transaction};

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
}

impl Drop for PgWriter {
    fn drop(&mut self) {
        // Closing the connection drives the client's runtime, which cannot run inside `serve`'s.
        let client = self.client.take();
        super::off_runtime(move || drop(client));
    }
}

/// What one transaction has booked so far, written to the bucket tables before its commit.
#[derive(Default)]
struct Staged {
    ids: HashMap<SeriesKey, i64>,
    minutes: IdMap<(i64, i64), (i64, i64)>,
    hours: IdMap<(i64, i64), (i64, i64)>,
    energy_uj: i128,
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

/// The series' id, created if new; another collector may create it at the same time.
fn series_id(tx: &mut Transaction<'_>, key: &SeriesKey, def: &SeriesDef) -> Result<i64, PgError> {
    let metric = metric_of(key);
    if let Some(r) = tx.query_opt(
        "INSERT INTO series (site, host, meter, metric, method, quality, role, unit) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (site, host, meter, metric, method) DO NOTHING RETURNING id",
        &[&key.site, &key.host, &key.meter, &metric, &key.method, &def.quality, &def.role, &def.unit],
    )? {
        return Ok(r.get(0));
    }
    let r = tx.query_one(
        "SELECT id FROM series WHERE site = $1 AND host = $2 AND meter = $3 AND metric = $4 AND method = $5",
        &[&key.site, &key.host, &key.meter, &metric, &key.method],
    )?;
    Ok(r.get(0))
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

/// Resolves (creating in key order) the series of `keys`, then locks the host names of `claims` and every series
/// touched: the batch's and the claimed hosts' (a takeover ends them with a stale marker).
fn resolve_and_lock(
    tx: &mut Transaction<'_>,
    staged: &mut Staged,
    keys: BTreeMap<SeriesKey, SeriesDef>,
    claims: &BTreeSet<(String, String)>,
) -> Result<(), PgError> {
    for (k, def) in keys {
        let id = series_id(tx, &k, &def)?;
        staged.ids.insert(k, id);
    }
    let mut hosts: Vec<i32> = Vec::new();
    for (site, host) in claims {
        let h: i32 = tx.query_one("SELECT hashtext($1 || chr(31) || $2)", &[site, host])?.get(0);
        hosts.push(h);
    }
    hosts.sort_unstable();
    hosts.dedup();
    for h in hosts {
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&HOST_LOCK_CLASS, &h])?;
    }
    let mut ids: Vec<i64> = staged.ids.values().copied().collect();
    for (site, host) in claims {
        for r in tx.query("SELECT id FROM series WHERE site = $1 AND host = $2 AND meter = ''", &[site, host])? {
            ids.push(r.get(0));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&id])?;
    }
    Ok(())
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

/// A series' last stored sample: a host's from its chunks, a meter's from `samples`.
fn last_point(tx: &mut Transaction<'_>, id: i64, host: bool) -> Result<Option<Point>, PgError> {
    if host {
        return Ok(chunk_where(tx, AT_OR_BEFORE, id, i64::MAX)?.and_then(|(_, p)| p.last().copied()));
    }
    Ok(tx
        .query_opt("SELECT ts_ms, value_micro FROM samples WHERE series_id = $1 ORDER BY ts_ms DESC LIMIT 1", &[&id])?
        .map(|r| (r.get(0), r.get(1))))
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

/// Stores one host sample as a chunk of one point.
fn put_point(tx: &mut Transaction<'_>, id: i64, (ts, value): Point) -> Result<(), PgError> {
    let value_ts = value.map(|_| ts);
    tx.execute(
        "INSERT INTO chunks (series_id, first_ts, last_ts, n_points, n_values, first_value_ts, last_value_ts, data) \
         VALUES ($1, $2, $2, 1, $3, $4, $4, $5)",
        &[&id, &ts, &i64::from(value.is_some()), &value_ts, &chunk::encode(&[(ts, value)])],
    )?;
    Ok(())
}

fn put_sample(tx: &mut Transaction<'_>, id: i64, (ts, value): Point) -> Result<(), PgError> {
    tx.execute("INSERT INTO samples (series_id, ts_ms, value_micro) VALUES ($1, $2, $3)", &[&id, &ts, &value])?;
    Ok(())
}

fn upsert_host(tx: &mut Transaction<'_>, c: &HostClaim) -> Result<(), PgError> {
    let sockets = c.model.sockets.map(i64::from);
    tx.execute(
        "INSERT INTO hosts (site, host, machine_id, claimed_ms, vendor, product, cpu_model, sockets) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (site, host) DO UPDATE SET \
         machine_id = excluded.machine_id, claimed_ms = excluded.claimed_ms, \
         vendor = excluded.vendor, product = excluded.product, cpu_model = excluded.cpu_model, sockets = excluded.sockets",
        &[&c.site, &c.host, &c.machine_id, &c.ts_ms, &c.model.vendor, &c.model.product, &c.model.cpu_model, &sockets],
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
        PgWriter { client: Some(client), policy, reconnect: None, suspect: false }
    }

    /// Replaces a connection the server closed with one from `reconnect` (see [`super::live`]).
    pub fn reconnecting(mut self, reconnect: super::Reconnect) -> PgWriter {
        self.reconnect = Some(reconnect);
        self
    }

    fn client(&mut self) -> Result<&mut Client, PgError> {
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
            let mut tx = self.client()?.transaction()?;
            let mut staged = Staged::default();
            resolve_and_lock(&mut tx, &mut staged, keys, &claims)?;
            let out = f(&mut tx, &mut staged, &policy)?;
            write_buckets(&mut tx, &staged)?;
            tx.commit()?;
            Ok(out)
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
        let owner: Option<(String, i64)> = tx
            .query_opt("SELECT machine_id, claimed_ms FROM hosts WHERE site = $1 AND host = $2", &[&c.site, &c.host])?
            .map(|r| (r.get(0), r.get(1)));
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
                    if let Some(last) = last_point(tx, id, true)?
                        && let Some(marker) = rules::takeover_marker(last)
                    {
                        // Booked as an in-order sample: zero energy, its millisecond covered.
                        put_point(tx, id, marker)?;
                        book_interval(staged, policy.gap_ms, id, 1, false, (last.0, marker.0, 0), 1);
                    }
                }
                upsert_host(tx, c)?;
            }
            Claim::Accept => upsert_host(tx, c)?,
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
        match rules::place(last_point(tx, id, host)?, sample, host) {
            Placement::Journal { prev } => {
                put_point(tx, id, sample)?;
                if let Some((pt, pv)) = prev {
                    let inc = increment(pv, s.value_micro);
                    book_interval(staged, policy.gap_ms, id, factor, false, (pt, s.ts_ms, inc), 1);
                }
                out.booked += 1;
            }
            Placement::First => {
                put_sample(tx, id, sample)?;
                out.booked += 1;
            }
            Placement::Append(iv) => {
                put_sample(tx, id, sample)?;
                book_interval(staged, policy.gap_ms, id, factor, true, iv, 1);
                out.booked += 1;
            }
            Placement::Late => {
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
                            put_point(tx, id, sample)?;
                        } else {
                            put_sample(tx, id, sample)?;
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
fn write_buckets(tx: &mut Transaction<'_>, staged: &Staged) -> Result<(), PgError> {
    let sorted = |m: &IdMap<(i64, i64), (i64, i64)>| {
        let mut v: Vec<((i64, i64), (i64, i64))> = m.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_unstable_by_key(|b| b.0);
        v
    };
    let mut pruned: HashMap<i64, i64> = HashMap::new();
    let up_min = tx.prepare(
        "INSERT INTO minutes VALUES ($1, $2, $3, $4) ON CONFLICT (series_id, start_ms) DO UPDATE SET \
         energy_uj = minutes.energy_uj + excluded.energy_uj, covered_ms = minutes.covered_ms + excluded.covered_ms",
    )?;
    for ((id, start), (e, c)) in sorted(&staged.minutes) {
        let until = match pruned.get(&id) {
            Some(u) => *u,
            None => {
                let u: i64 = tx.query_one("SELECT pruned_until_ms FROM series WHERE id = $1", &[&id])?.get(0);
                pruned.insert(id, u);
                u
            }
        };
        if start >= until {
            tx.execute(&up_min, &[&id, &start, &e, &c])?;
        }
    }
    let hours = sorted(&staged.hours);
    let up_hour = tx.prepare(
        "INSERT INTO hours VALUES ($1, $2, $3, $4) ON CONFLICT (series_id, start_ms) DO UPDATE SET \
         energy_uj = hours.energy_uj + excluded.energy_uj, covered_ms = hours.covered_ms + excluded.covered_ms",
    )?;
    // The roll-ups: a host series' hours per (site, method, quality) and hour or day, a meter's per day.
    type Sums = BTreeMap<(String, i64, String, String), (i128, i64)>;
    let (mut site_hours, mut site_days): (Sums, Sums) = (BTreeMap::new(), BTreeMap::new());
    let mut days: BTreeMap<(i64, i64), (i128, i64)> = BTreeMap::new();
    let mut labels: HashMap<i64, (String, String, String, bool)> = HashMap::new();
    for ((id, start), (e, c)) in hours {
        tx.execute(&up_hour, &[&id, &start, &e, &c])?;
        if let std::collections::hash_map::Entry::Vacant(v) = labels.entry(id) {
            let r = tx.query_one("SELECT site, method, quality, metric FROM series WHERE id = $1", &[&id])?;
            let metric: String = r.get(3);
            v.insert((r.get(0), r.get(1), r.get(2), metric == HOST_ENERGY_METRIC));
        }
        let Some((site, method, quality, host)) = labels.get(&id) else { continue };
        let day = start.div_euclid(DAY_MS) * DAY_MS;
        let add = |t: &mut (i128, i64)| {
            t.0 += i128::from(e);
            t.1 += c;
        };
        if *host {
            add(site_hours.entry((site.clone(), start, method.clone(), quality.clone())).or_default());
            add(site_days.entry((site.clone(), day, method.clone(), quality.clone())).or_default());
        } else {
            add(days.entry((id, day)).or_default());
        }
    }
    for (table, sums) in [("site_hours", &site_hours), ("site_days", &site_days)] {
        let up = tx.prepare(&format!(
            "INSERT INTO {table} (site, start_ms, method, quality, energy_uj, covered_ms) \
             VALUES ($1, $2, $3, $4, $5::TEXT::NUMERIC, $6) ON CONFLICT (site, start_ms, method, quality) DO UPDATE SET \
             energy_uj = {table}.energy_uj + excluded.energy_uj, covered_ms = {table}.covered_ms + excluded.covered_ms"
        ))?;
        for ((site, start, method, quality), (e, c)) in sums {
            tx.execute(&up, &[site, start, method, quality, &e.to_string(), c])?;
        }
    }
    let up = tx.prepare(
        "INSERT INTO days (series_id, start_ms, energy_uj, covered_ms) VALUES ($1, $2, $3::TEXT::NUMERIC, $4) \
         ON CONFLICT (series_id, start_ms) DO UPDATE SET \
         energy_uj = days.energy_uj + excluded.energy_uj, covered_ms = days.covered_ms + excluded.covered_ms",
    )?;
    for ((id, start), (e, c)) in &days {
        tx.execute(&up, &[id, start, &e.to_string(), c])?;
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
