//! The PostgreSQL ledger's reader, a [`LedgerReader`]: the energy of a range as `ledger::query` defines it (minutes
//! at the range's edges, whole hours, whole UTC days from the day roll-ups; a site-wide IT question from
//! `site_hours` and `site_days`; host series' minutes recomputed from their raw points), the hosts and their
//! models, the total energy per site and role, the hourly energy of a site's meters of one role, and the retired
//! hosts. The same answers as the SQLite reader's on the same bookings (tested with the store's property test).
//!
//! Each answer is read in one `REPEATABLE READ` transaction, so the journal and the tables it reads are one
//! snapshot (a materialization between the two reads could otherwise count an entry twice or not at all). Sums
//! are computed by PostgreSQL as `NUMERIC` and read back as text into i128, exactly.

use std::collections::BTreeMap;
use std::sync::Mutex;

use postgres::{Client, IsolationLevel, Transaction};

use super::PgError;
use crate::db::PgTarget;
use crate::ledger::book::{HOUR_MS, MINUTE_MS, add_shares_in, increment};
use crate::ledger::chunk::{self, Point};
use crate::ledger::journal;
use crate::ledger::query::{
    Adjustment, Detail, EnergyQuery, EnergyReport, Grain, HostRow, SeriesRow, answer, max_opt, min_opt, parts, rfc3339,
};
use crate::ledger::{HOST_ENERGY_METRIC, HostModel, LedgerReader, Policy, Retirement, SiteTotals, StoreError};

/// Read-only queries on one connection (see the module's doc). Each runs where the synchronous client may
/// ([`super::off_runtime`]): `serve` reads from its async tasks too.
pub struct PgReader {
    /// The connection, and whether the last read failed (see `super::live`).
    client: Mutex<(Option<Client>, bool)>,
    policy: Policy,
    reconnect: Option<super::Reconnect>,
}

impl Drop for PgReader {
    fn drop(&mut self) {
        // Closing the connection drives the client's runtime too.
        let client = self.client.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).0.take();
        super::off_runtime(move || drop(client));
    }
}

/// `(energy µJ, covered ms)` per series id.
type SeriesSums = BTreeMap<i64, (i128, i128)>;

fn parse_sum(s: &str) -> Result<i128, PgError> {
    s.parse().map_err(|_| PgError::Corrupt(format!("a sum {s:?} is not an integer of at most 39 digits")))
}

impl PgReader {
    pub fn new(client: Client) -> PgReader {
        PgReader::with_policy(client, Policy::default())
    }

    /// A reader whose minute shares use `policy`'s gap (as the writer books them).
    pub fn with_policy(client: Client, policy: Policy) -> PgReader {
        PgReader { client: Mutex::new((Some(client), false)), policy, reconnect: None }
    }

    /// Connects to `target` (its schema migrated by the writer); a connection the server closes is replaced.
    pub fn open(target: &PgTarget, policy: Policy) -> Result<PgReader, PgError> {
        Ok(PgReader::with_policy(super::connect(target)?, policy).reconnecting(super::reconnect_to(target)))
    }

    /// Replaces a connection the server closed with one from `reconnect`.
    pub fn reconnecting(mut self, reconnect: super::Reconnect) -> PgReader {
        self.reconnect = Some(reconnect);
        self
    }

    fn read<T: Send>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T, PgError> + Send) -> Result<T, PgError> {
        super::off_runtime(|| {
            let mut guard = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (client, suspect) = &mut *guard;
            let out = (|| {
                let client = super::live(client, *suspect, self.reconnect.as_ref())?;
                let mut tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let out = f(&mut tx)?;
                tx.commit()?;
                Ok(out)
            })();
            *suspect = out.is_err();
            out
        })
    }

    /// Total booked energy per (site, role), µJ: the hours plus the journal not yet written to them.
    pub fn site_totals(&self) -> Result<SiteTotals, PgError> {
        self.read(|tx| {
            let mut totals: BTreeMap<(String, String), i128> = BTreeMap::new();
            for r in tx.query(
                "SELECT se.site, se.role, SUM(h.energy_uj)::text FROM hours h JOIN series se ON se.id = h.series_id \
                 GROUP BY se.site, se.role",
                &[],
            )? {
                *totals.entry((r.get(0), r.get(1))).or_insert(0) += parse_sum(r.get(2))?;
            }
            let mut pending: BTreeMap<i64, i128> = BTreeMap::new();
            for r in tx.query("SELECT seq, data FROM journal ORDER BY seq", &[])? {
                let (seq, data): (i64, &[u8]) = (r.get(0), r.get(1));
                for e in journal::decode(seq, data).map_err(|e| PgError::Corrupt(e.to_string()))? {
                    *pending.entry(e.series_id).or_insert(0) += i128::from(e.increment());
                }
            }
            if !pending.is_empty() {
                for r in tx.query("SELECT id, site, role FROM series", &[])? {
                    if let Some(&e) = pending.get(&r.get::<_, i64>(0))
                        && e != 0
                    {
                        *totals.entry((r.get(1), r.get(2))).or_insert(0) += e;
                    }
                }
            }
            Ok(totals.into_iter().map(|((s, r), e)| (s, r, e)).collect())
        })
    }

    /// Hourly energy of a site's meters of `role` (µJ per hour start), whole hours in `[from, to)`.
    pub fn role_hourly(&self, site: &str, role: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, i128)>, PgError> {
        self.read(|tx| {
            let mut out = Vec::new();
            for r in tx.query(
                "SELECT h.start_ms, SUM(h.energy_uj)::text FROM hours h JOIN series se ON se.id = h.series_id \
                 WHERE se.site = $1 AND se.role = $2 AND se.meter <> '' AND h.start_ms >= $3 AND h.start_ms < $4 \
                   AND h.start_ms + $5 <= $4 \
                 GROUP BY h.start_ms ORDER BY h.start_ms",
                &[&site, &role, &from_ms, &to_ms, &HOUR_MS],
            )? {
                out.push((r.get(0), parse_sum(r.get(1))?));
            }
            Ok(out)
        })
    }

    /// The retired hosts of a site, by host name.
    pub fn retired_hosts(&self, site: &str) -> Result<Vec<Retirement>, PgError> {
        self.read(|tx| {
            Ok(tx
                .query(
                    "SELECT host, author, reason, retired_ms FROM retired_hosts WHERE site = $1 ORDER BY host COLLATE \"C\"",
                    &[&site],
                )?
                .iter()
                .map(|r| Retirement { host: r.get(0), by: r.get(1), reason: r.get(2), retired_ms: r.get(3) })
                .collect())
        })
    }
}

/// Sums a bucket table (`minutes`, `hours`, `days`) over `[from, to)` per series.
fn sum_table(tx: &mut Transaction<'_>, table: &str, ids: &[i64], from: i64, to: i64) -> Result<SeriesSums, PgError> {
    let mut out = SeriesSums::new();
    let sql = format!(
        "SELECT series_id, SUM(energy_uj)::TEXT, SUM(covered_ms)::TEXT FROM {table} \
         WHERE series_id = ANY($1) AND start_ms >= $2 AND start_ms < $3 GROUP BY series_id"
    );
    for r in tx.query(&sql, &[&ids, &from, &to])? {
        out.insert(r.get(0), (parse_sum(r.get(1))?, parse_sum(r.get(2))?));
    }
    Ok(out)
}

/// Host series' energy and coverage over `[from, to)` (whole minutes), recomputed from their raw points as the
/// minute buckets would hold them (as `chunk::minute_shares_of` does): from the chunk holding the last point
/// before `from` to the one holding the first point at or after `to`. Minutes before a series' retention cutoff
/// are gone, as meters' rows are.
fn minute_shares(
    tx: &mut Transaction<'_>,
    ids: &[i64],
    from: i64,
    to: i64,
    gap_ms: i64,
) -> Result<SeriesSums, PgError> {
    let mut out = SeriesSums::new();
    if from >= to {
        return Ok(out);
    }
    let rows = tx.query(
        "SELECT c.series_id, c.first_ts, c.data, s.pruned_until_ms FROM chunks c JOIN series s ON s.id = c.series_id \
         WHERE c.series_id = ANY($1) \
         AND c.first_ts >= COALESCE((SELECT MAX(p.first_ts) FROM chunks p WHERE p.series_id = c.series_id AND p.first_ts < $2), $2) \
         AND c.first_ts <= COALESCE((SELECT MIN(n.first_ts) FROM chunks n WHERE n.series_id = c.series_id AND n.first_ts >= $3), $3) \
         ORDER BY c.series_id, c.first_ts",
        &[&ids, &from, &to],
    )?;
    let mut prev: Option<(i64, Point)> = None;
    let mut points: Vec<Point> = Vec::new();
    for r in rows {
        let (id, first, data, pruned): (i64, i64, &[u8], i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        chunk::decode_into(id, first, data, &mut points).map_err(|e| PgError::Corrupt(e.to_string()))?;
        let lower = from.max(pruned);
        for p in &points {
            if let Some((pid, (t0, v0))) = prev
                && pid == id
            {
                let sums = out.entry(id).or_insert((0, 0));
                add_shares_in(sums, (t0, p.0, increment(v0, p.1)), MINUTE_MS, gap_ms, (lower, to));
            }
            prev = Some((id, *p));
        }
    }
    out.retain(|_, s| *s != (0, 0));
    Ok(out)
}

/// Non-stale host points of `ids` in `[from, to)`: count, first, last. Chunks inside the range answer from their
/// columns, those at its edges from their points.
fn host_sample_stats(
    tx: &mut Transaction<'_>,
    ids: &[i64],
    from: i64,
    to: i64,
) -> Result<(u64, Option<i64>, Option<i64>), PgError> {
    let (mut n, mut first, mut last) = (0u64, None, None);
    let mut points: Vec<Point> = Vec::new();
    for r in tx.query(
        "SELECT series_id, first_ts, last_ts, n_values, first_value_ts, last_value_ts, \
         CASE WHEN first_ts >= $2 AND last_ts < $3 THEN NULL ELSE data END \
         FROM chunks WHERE series_id = ANY($1) AND last_ts >= $2 AND first_ts < $3",
        &[&ids, &from, &to],
    )? {
        let (id, f): (i64, i64) = (r.get(0), r.get(1));
        match r.get::<_, Option<&[u8]>>(6) {
            None => {
                n += r.get::<_, i64>(3) as u64;
                first = min_opt(first, r.get(4));
                last = max_opt(last, r.get(5));
            }
            Some(data) => {
                chunk::decode_into(id, f, data, &mut points).map_err(|e| PgError::Corrupt(e.to_string()))?;
                for &(t, _) in points.iter().filter(|p| p.0 >= from && p.0 < to && p.1.is_some()) {
                    n += 1;
                    first = min_opt(first, Some(t));
                    last = max_opt(last, Some(t));
                }
            }
        }
    }
    Ok((n, first, last))
}

impl PgReader {
    /// Energy over `[q.from_ms, q.to_ms)`, as `ledger::query::energy` answers it on SQLite (see the module's doc).
    pub fn energy_report(&self, q: &EnergyQuery, detail: Detail) -> Result<EnergyReport, PgError> {
        let gap_ms = self.policy.gap_ms;
        self.read(|tx| {
            let mut role = q.role.clone().unwrap_or_else(|| "it_in".to_string());
            // (id, host or meter, method, quality, unit)
            let mut series: Vec<SeriesRow> = Vec::new();
            let row = |r: &postgres::Row| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            if let Some(meter) = &q.meter {
                for r in tx.query(
                    "SELECT id, meter, method, quality, unit, role FROM series WHERE site = $1 AND meter = $2 ORDER BY id",
                    &[&q.site, meter],
                )? {
                    role = r.get(5);
                    series.push(row(&r));
                }
            } else if role == "it_in" {
                for r in tx.query(
                    "SELECT id, host, method, quality, unit FROM series \
                     WHERE site = $1 AND metric = $2 AND ($3::TEXT IS NULL OR host = $3) ORDER BY id",
                    &[&q.site, &HOST_ENERGY_METRIC, &q.host],
                )? {
                    series.push(row(&r));
                }
            } else {
                for r in tx.query(
                    "SELECT id, meter, method, quality, unit FROM series WHERE site = $1 AND meter <> '' AND role = $2 \
                     ORDER BY id",
                    &[&q.site, &role],
                )? {
                    series.push(row(&r));
                }
            }
            let host_series = q.meter.is_none() && role == "it_in";
            let ids: Vec<i64> = series.iter().map(|s| s.0).collect();
            let site_wide = host_series && q.host.is_none();
            let mut per_series = SeriesSums::new();
            let mut rolled_up: BTreeMap<(String, String), (i128, i128)> = BTreeMap::new();
            for (grain, a, b) in parts(q.from_ms, q.to_ms, site_wide || !host_series) {
                if site_wide && grain != Grain::Minutes {
                    // NUMERIC sums: the roll-ups are always exact here, never a fallback to a finer table.
                    let table = if grain == Grain::Days { "site_days" } else { "site_hours" };
                    for r in tx.query(
                        &format!(
                            "SELECT method, quality, SUM(energy_uj)::TEXT, SUM(covered_ms)::TEXT FROM {table} \
                             WHERE site = $1 AND start_ms >= $2 AND start_ms < $3 GROUP BY method, quality"
                        ),
                        &[&q.site, &a, &b],
                    )? {
                        let t = rolled_up.entry((r.get(0), r.get(1))).or_insert((0, 0));
                        t.0 += parse_sum(r.get(2))?;
                        t.1 += parse_sum(r.get(3))?;
                    }
                    continue;
                }
                let sums = match grain {
                    Grain::Minutes if host_series => minute_shares(tx, &ids, a, b, gap_ms)?,
                    Grain::Minutes => sum_table(tx, "minutes", &ids, a, b)?,
                    Grain::Days if !host_series => sum_table(tx, "days", &ids, a, b)?,
                    _ => sum_table(tx, "hours", &ids, a, b)?,
                };
                for (id, (e, c)) in sums {
                    let t = per_series.entry(id).or_insert((0, 0));
                    t.0 += e;
                    t.1 += c;
                }
            }
            let (mut samples, mut first, mut last) = if host_series {
                host_sample_stats(tx, &ids, q.from_ms, q.to_ms)?
            } else {
                let r = tx.query_one(
                    "SELECT COUNT(*), MIN(ts_ms), MAX(ts_ms) FROM samples WHERE series_id = ANY($1) \
                     AND ts_ms >= $2 AND ts_ms < $3 AND value_micro IS NOT NULL",
                    &[&ids, &q.from_ms, &q.to_ms],
                )?;
                (r.get::<_, i64>(0) as u64, r.get(1), r.get(2))
            };
            if detail == Detail::Totals {
                // Whether there is a sample, not how many (see `Detail::Totals`).
                samples = samples.min(1);
                (first, last) = (None, None);
            }
            let mut adjustments = Vec::new();
            if !host_series {
                for r in tx.query(
                    "SELECT se.meter, a.kind, a.start_ms, a.end_ms, a.value_micro, a.final_micro, a.initial_micro, \
                     se.unit, a.author, a.reason, a.recorded_ms FROM adjustments a JOIN series se ON se.id = a.series_id \
                     WHERE a.series_id = ANY($1) AND a.start_ms < $3 AND a.end_ms >= $2 ORDER BY a.series_id, a.id",
                    &[&ids, &q.from_ms, &q.to_ms],
                )? {
                    adjustments.push(Adjustment {
                        meter: r.get(0),
                        kind: r.get(1),
                        from: rfc3339(r.get(2)),
                        to: rfc3339(r.get(3)),
                        value_micro: r.get::<_, i64>(4).to_string(),
                        final_micro: r.get::<_, Option<i64>>(5).map(|v| v.to_string()),
                        initial_micro: r.get::<_, Option<i64>>(6).map(|v| v.to_string()),
                        unit: r.get(7),
                        author: r.get(8),
                        reason: r.get(9),
                        recorded: rfc3339(r.get(10)),
                    });
                }
            }
            Ok(answer(q, role, &series, &per_series, &rolled_up, (samples, first, last), adjustments))
        })
    }

    /// Hosts of a site with their first and last sample, current method and estimated share of the last 24 hours.
    pub fn host_rows(&self, site: &str, now_ms: i64) -> Result<Vec<HostRow>, PgError> {
        struct Found {
            host: String,
            machine_id: Option<String>,
            first: Option<i64>,
            last: Option<i64>,
            current: Option<(String, String)>,
            conflicts: Vec<String>,
        }
        let found: Vec<Found> = self.read(|tx| {
            let names: Vec<String> = tx
                .query(
                    "SELECT host FROM (SELECT host FROM series WHERE site = $1 AND host <> '' \
                     UNION SELECT host FROM hosts WHERE site = $1) u ORDER BY host COLLATE \"C\"",
                    &[&site],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut out = Vec::new();
            for host in names {
                let machine_id = tx
                    .query_opt("SELECT machine_id FROM hosts WHERE site = $1 AND host = $2", &[&site, &host])?
                    .map(|r| r.get(0));
                let r = tx.query_one(
                    "SELECT MIN(c.first_ts), MAX(c.last_ts) FROM chunks c JOIN series se ON se.id = c.series_id \
                     WHERE se.site = $1 AND se.host = $2",
                    &[&site, &host],
                )?;
                let current = tx
                    .query_opt(
                        "SELECT se.method, se.quality FROM chunks c JOIN series se ON se.id = c.series_id \
                         WHERE se.site = $1 AND se.host = $2 AND c.last_value_ts IS NOT NULL \
                         ORDER BY c.last_value_ts DESC LIMIT 1",
                        &[&site, &host],
                    )?
                    .map(|r| (r.get(0), r.get(1)));
                let conflicts = tx
                    .query(
                        "SELECT machine_id FROM host_conflicts WHERE site = $1 AND host = $2 ORDER BY machine_id COLLATE \"C\"",
                        &[&site, &host],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                out.push(Found { host, machine_id, first: r.get(0), last: r.get(1), current, conflicts });
            }
            Ok(out)
        })?;
        let mut out = Vec::new();
        for f in found {
            let day = self.energy_report(
                &EnergyQuery {
                    site: site.to_string(),
                    host: Some(f.host.clone()),
                    meter: None,
                    role: None,
                    from_ms: (now_ms - 24 * HOUR_MS).div_euclid(MINUTE_MS) * MINUTE_MS,
                    to_ms: (now_ms.div_euclid(MINUTE_MS) + 1) * MINUTE_MS,
                },
                Detail::Totals,
            )?;
            let share = (day.energy_joules > 0.0).then(|| day.estimated_joules / day.energy_joules);
            out.push(HostRow {
                host: f.host,
                machine_id: f.machine_id,
                first_sample: f.first.map(rfc3339),
                last_sample: f.last.map(rfc3339),
                current_method: f.current.as_ref().map(|c| c.0.clone()),
                current_quality: f.current.map(|c| c.1),
                estimated_share_24h: share,
                conflicting_machine_ids: f.conflicts,
            });
        }
        Ok(out)
    }

    /// The claimed hosts of a site with a sample in `[from, to)` (or an hour of energy touching it), and their model.
    pub fn models(&self, site: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(String, HostModel)>, PgError> {
        self.read(|tx| {
            let rows = tx.query(
                "SELECT h.host, h.vendor, h.product, h.cpu_model, h.sockets FROM hosts h WHERE h.site = $1 AND (EXISTS \
                 (SELECT 1 FROM series se JOIN hours ho ON ho.series_id = se.id \
                  WHERE se.site = h.site AND se.host = h.host AND ho.start_ms >= $2::BIGINT - 3600000 AND ho.start_ms < $3::BIGINT) \
                 OR EXISTS (SELECT 1 FROM series se JOIN chunks c ON c.series_id = se.id \
                  WHERE se.site = h.site AND se.host = h.host AND c.last_ts >= $2 AND c.first_ts < $3)) \
                 ORDER BY h.host COLLATE \"C\"",
                &[&site, &from_ms, &to_ms],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        HostModel {
                            vendor: r.get(1),
                            product: r.get(2),
                            cpu_model: r.get(3),
                            sockets: r.get::<_, Option<i64>>(4).and_then(|s| u32::try_from(s).ok()),
                        },
                    )
                })
                .collect())
        })
    }
}

impl LedgerReader for PgReader {
    fn energy(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        Ok(self.energy_report(q, Detail::Full)?)
    }

    fn energy_totals(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        Ok(self.energy_report(q, Detail::Totals)?)
    }

    fn hosts(&self, site: &str, now_ms: i64) -> Result<Vec<HostRow>, StoreError> {
        Ok(self.host_rows(site, now_ms)?)
    }

    fn host_models(&self, site: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(String, HostModel)>, StoreError> {
        Ok(self.models(site, from_ms, to_ms)?)
    }

    fn site_totals(&self) -> Result<SiteTotals, StoreError> {
        Ok(PgReader::site_totals(self)?)
    }

    fn role_hourly(&self, site: &str, role: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, i128)>, StoreError> {
        Ok(PgReader::role_hourly(self, site, role, from_ms, to_ms)?)
    }

    fn retired_hosts(&self, site: &str) -> Result<Vec<Retirement>, StoreError> {
        Ok(PgReader::retired_hosts(self, site)?)
    }
}
