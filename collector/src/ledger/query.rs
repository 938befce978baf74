//! Ledger reads: energy over a half-open `[from, to)` range (
//! `GET /api/v1/energy` and `domesday-collector energy`), hosts per site, and
//! totals per site and role. Sums are taken in Rust in i128: SQLite's `SUM`
//! over i64 µJ would overflow past 2.56 GWh. Every answer adds the journal's
//! unmaterialized entries ([`super::journal::Pending`]) to what the tables say.

use std::collections::BTreeMap;

use std::rc::Rc;

use rusqlite::vtab::array::Array;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::book::{DAY_MS, HOUR_MS, MINUTE_MS, add_shares_in};
use super::journal::Pending;
use super::sqlite::{DAYS_VERSION, SiteRollup};
use super::{HOST_ENERGY_METRIC, Policy, StoreError};

/// An energy question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnergyQuery {
    pub site: String,
    pub host: Option<String>,
    pub meter: Option<String>,
    pub role: Option<String>,
    /// Milliseconds since the epoch, multiples of a minute.
    pub from_ms: i64,
    pub to_ms: i64,
}

/// How much of an [`EnergyReport`] a caller needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every field: `samples` is the exact count, with the first and last.
    Full,
    /// The sums (energy, methods, coverage, volume, adjustments) and whether
    /// the range holds a sample: `samples` is then 0 or 1 and the first and
    /// last are not read. Counting a site-year's samples exactly reads every
    /// host's chunks and decodes those cut by the range; the indicators only
    /// ask whether there is one, and their questions read the roll-ups alone.
    Totals,
}

/// The answer, field for field as docs/collector.md names them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergyReport {
    pub site: String,
    pub host: Option<String>,
    pub meter: Option<String>,
    pub role: String,
    pub from: String,
    pub to: String,
    pub energy_joules: f64,
    /// Exact integer, as a string (JSON numbers lose precision past 2^53).
    pub energy_microjoules: String,
    pub measured_joules: f64,
    pub estimated_joules: f64,
    pub by_method: BTreeMap<String, f64>,
    pub coverage_ratio: f64,
    pub samples: u64,
    pub first_sample: Option<String>,
    pub last_sample: Option<String>,
    /// For water and fuel meters (roles `water_in`, `water_potable_in`, `fuel_in`):
    /// the volume over the range, in litres; the energy fields are then zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_liters: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_microliters: Option<String>,
    /// Manual corrections and meter swaps touching the range, with who and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<Adjustment>,
}

/// A hand-made change to a meter's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Adjustment {
    pub meter: String,
    /// `correction` or `swap`.
    pub kind: String,
    pub from: String,
    pub to: String,
    /// Micro-units of the meter's unit (corrections), as a string.
    pub value_micro: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_micro: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_micro: Option<String>,
    pub unit: String,
    pub author: String,
    pub reason: String,
    pub recorded: String,
}

impl EnergyReport {
    pub fn energy_uj(&self) -> i128 {
        self.energy_microjoules.parse().unwrap_or(0)
    }
}

/// A host of a site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub machine_id: Option<String>,
    pub first_sample: Option<String>,
    pub last_sample: Option<String>,
    pub current_method: Option<String>,
    pub current_quality: Option<String>,
    /// Estimated share of the host's energy over the last 24 hours.
    pub estimated_share_24h: Option<f64>,
    /// Other machines that claimed this host name while it was owned.
    pub conflicting_machine_ids: Vec<String>,
}

/// RFC 3339 UTC of a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_else(|_| ms.to_string())
}

fn uj_to_j(uj: i128) -> f64 {
    uj as f64 / 1e6
}

/// The series ids of a question as one SQL parameter (`series_id IN rarray(?)`):
/// a site of 50,000 hosts is then one statement per table, not 50,000.
pub fn id_array(ids: &[i64]) -> Array {
    Rc::new(ids.iter().map(|id| rusqlite::types::Value::Integer(*id)).collect())
}

/// Sums a bucket table over `[from, to)` per series: `(energy µJ, covered ms)`.
fn sum_buckets(
    conn: &Connection,
    table: &str,
    ids: &Array,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, (i128, i128)>, StoreError> {
    let mut out: BTreeMap<i64, (i128, i128)> = BTreeMap::new();
    if from >= to {
        return Ok(out);
    }
    let sql = format!(
        "SELECT series_id, energy_uj, covered_ms FROM {table} WHERE series_id IN rarray(?1) AND start_ms >= ?2 AND start_ms < ?3"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let mut rows = st.query(params![ids, from, to])?;
    while let Some(r) = rows.next()? {
        let t = out.entry(r.get(0)?).or_insert((0, 0));
        t.0 += i128::from(r.get::<_, i64>(1)?);
        t.1 += i128::from(r.get::<_, i64>(2)?);
    }
    Ok(out)
}

/// `(energy µJ, covered ms)` per series id.
pub type SeriesSums = BTreeMap<i64, (i128, i128)>;

/// `(energy µJ, covered ms)` per (method, quality).
pub type MethodSums = BTreeMap<(String, String), (i128, i128)>;

/// A site roll-up of host energy (`site_hours` or `site_days`) over
/// `[from, to)` (whole buckets of the table), per (method, quality):
/// `(energy µJ, covered ms)`. `None` when the ledger has no such roll-up yet
/// (a schema older than the table, opened by a reader before any writer
/// migrated it) or a row in the range is not an exact integer (a sum beyond
/// i64, stored as a real): the caller then reads a finer table.
pub fn site_rollup(
    conn: &Connection,
    table: SiteRollup,
    site: &str,
    from: i64,
    to: i64,
) -> Result<Option<MethodSums>, StoreError> {
    if schema_version(conn)? < table.since() {
        return Ok(None);
    }
    // A site has a handful of (method, quality) pairs: a short list, searched by &str.
    let mut out: Vec<((String, String), (i128, i128))> = Vec::new();
    let sql = format!(
        "SELECT method, quality, energy_uj, covered_ms FROM {} WHERE site = ?1 AND start_ms >= ?2 AND start_ms < ?3",
        table.name()
    );
    let mut st = conn.prepare_cached(&sql)?;
    let mut rows = st.query(params![site, from, to])?;
    while let Some(r) = rows.next()? {
        use rusqlite::types::ValueRef;
        let (ValueRef::Integer(e), ValueRef::Integer(c)) = (r.get_ref(2)?, r.get_ref(3)?) else {
            return Ok(None);
        };
        let method = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        let quality = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let i = match out.iter().position(|((m, q), _)| m == method && q == quality) {
            Some(i) => i,
            None => {
                out.push(((method.to_string(), quality.to_string()), (0, 0)));
                out.len() - 1
            }
        };
        out[i].1.0 += i128::from(e);
        out[i].1.1 += i128::from(c);
    }
    Ok(Some(out.into_iter().collect()))
}

/// The schema version of the ledger (`PRAGMA user_version`).
fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.prepare_cached("PRAGMA user_version")?.query_row([], |r| r.get(0))?)
}

/// Meters' day roll-up over `[from, to)` (whole UTC days) per series, or
/// `None` (no such table yet, or a day beyond i64 stored as a real): the
/// caller then sums `hours`.
fn sum_days(conn: &Connection, ids: &Array, from: i64, to: i64) -> Result<Option<SeriesSums>, StoreError> {
    if schema_version(conn)? < DAYS_VERSION {
        return Ok(None);
    }
    let mut out: BTreeMap<i64, (i128, i128)> = BTreeMap::new();
    let mut st = conn.prepare_cached(
        "SELECT series_id, energy_uj, covered_ms FROM days WHERE series_id IN rarray(?1) AND start_ms >= ?2 AND start_ms < ?3",
    )?;
    let mut rows = st.query(params![ids, from, to])?;
    while let Some(r) = rows.next()? {
        use rusqlite::types::ValueRef;
        let (ValueRef::Integer(e), ValueRef::Integer(c)) = (r.get_ref(1)?, r.get_ref(2)?) else {
            return Ok(None);
        };
        let t = out.entry(r.get(0)?).or_insert((0, 0));
        t.0 += i128::from(e);
        t.1 += i128::from(c);
    }
    Ok(Some(out))
}

/// Which table answers a part of a question's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    Minutes,
    Hours,
    Days,
}

/// A question's range cut into parts each table answers: minutes at the
/// edges, whole hours, and whole UTC days inside those when `days` (the
/// question has a day roll-up). Empty parts are left out.
pub fn parts(from: i64, to: i64, days: bool) -> Vec<(Grain, i64, i64)> {
    let h1 = ((from + HOUR_MS - 1).div_euclid(HOUR_MS)) * HOUR_MS;
    let h2 = to.div_euclid(HOUR_MS) * HOUR_MS;
    if h1 >= h2 {
        return vec![(Grain::Minutes, from, to)];
    }
    let d1 = ((h1 + DAY_MS - 1).div_euclid(DAY_MS)) * DAY_MS;
    let d2 = h2.div_euclid(DAY_MS) * DAY_MS;
    let mut out = vec![(Grain::Minutes, from, h1)];
    if days && d1 < d2 {
        out.extend([(Grain::Hours, h1, d1), (Grain::Days, d1, d2), (Grain::Hours, d2, h2)]);
    } else {
        out.push((Grain::Hours, h1, h2));
    }
    out.push((Grain::Minutes, h2, to));
    out.retain(|p| p.1 < p.2);
    out
}

/// Energy over `[q.from_ms, q.to_ms)`: minutes at the edges (meters' minute
/// rows; host series' minutes recomputed from their raw points), hourly
/// roll-ups for the whole hours in between (so ranges older than the minute
/// retention still answer on whole hours).
pub fn energy(
    conn: &Connection,
    q: &EnergyQuery,
    policy: &Policy,
    pending: &Pending,
    detail: Detail,
) -> Result<EnergyReport, StoreError> {
    let mut role = q.role.clone().unwrap_or_else(|| "it_in".to_string());
    // (id, host or meter, method, quality, unit)
    let mut series: Vec<SeriesRow> = Vec::new();
    let map = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    };
    if let Some(meter) = &q.meter {
        let mut st = conn.prepare_cached(
            "SELECT id, meter, method, quality, unit, role FROM series WHERE site = ?1 AND meter = ?2",
        )?;
        let rows = st.query_map(params![q.site, meter], |r| Ok((map(r)?, r.get::<_, String>(5)?)))?;
        for row in rows {
            let (s, r) = row?;
            role = r;
            series.push(s);
        }
    } else if role == "it_in" {
        let mut st = conn.prepare_cached(
            "SELECT id, host, method, quality, unit FROM series WHERE site = ?1 AND metric = ?2 AND (?3 IS NULL OR host = ?3)",
        )?;
        for row in st.query_map(params![q.site, HOST_ENERGY_METRIC, q.host], map)? {
            series.push(row?);
        }
    } else {
        let mut st = conn.prepare_cached(
            "SELECT id, meter, method, quality, unit FROM series WHERE site = ?1 AND meter != '' AND role = ?2",
        )?;
        for row in st.query_map(params![q.site, role], map)? {
            series.push(row?);
        }
    }
    // Host energy series (raw points in chunks and the journal, hours) or
    // meters (sample and minute rows, adjustments): each table is read only
    // for the series it can hold, as a site-wide read names every host.
    let host_series = q.meter.is_none() && role == "it_in";
    let ids: Vec<i64> = series.iter().map(|s| s.0).collect();
    let id_param = id_array(&ids);
    let mut per_series: BTreeMap<i64, (i128, i128)> = BTreeMap::new();
    // A site-wide IT question's whole hours and days, per (method, quality),
    // from the site roll-ups: a row per hour or day and method, not per host.
    let mut rolled_up: MethodSums = BTreeMap::new();
    let site_wide = host_series && q.host.is_none();
    for (grain, a, b) in parts(q.from_ms, q.to_ms, site_wide || !host_series) {
        // Each roll-up falls back to the finer table where it cannot answer exactly.
        let mut rollup = None;
        if site_wide && grain == Grain::Days {
            rollup = site_rollup(conn, SiteRollup::Days, &q.site, a, b)?;
        }
        if site_wide && grain != Grain::Minutes && rollup.is_none() {
            rollup = site_rollup(conn, SiteRollup::Hours, &q.site, a, b)?;
        }
        let sums = if let Some(r) = rollup {
            for (k, (e, c)) in r {
                let t = rolled_up.entry(k).or_insert((0, 0));
                t.0 += e;
                t.1 += c;
            }
            BTreeMap::new()
        } else if grain == Grain::Minutes && host_series {
            // Host series' minutes come from their raw points (no minute rows).
            super::chunk::minute_shares_of(conn, &id_param, a, b, policy.gap_ms)?
        } else if grain == Grain::Minutes {
            sum_buckets(conn, "minutes", &id_param, a, b)?
        } else if let Some(d) =
            (grain == Grain::Days && !host_series).then(|| sum_days(conn, &id_param, a, b)).transpose()?.flatten()
        {
            d
        } else {
            sum_buckets(conn, "hours", &id_param, a, b)?
        };
        for (id, (e, c)) in sums {
            let t = per_series.entry(id).or_insert((0, 0));
            t.0 += e;
            t.1 += c;
        }
        // The journal's entries, spread exactly as materialization will book them.
        let bucket = if grain == Grain::Minutes { MINUTE_MS } else { HOUR_MS };
        for id in &ids {
            for interval in pending.of(*id).iter().filter_map(|e| e.interval()) {
                add_shares_in(per_series.entry(*id).or_insert((0, 0)), interval, bucket, policy.gap_ms, (a, b));
            }
        }
    }
    let (mut samples, mut first, mut last) = (0u64, None::<i64>, None::<i64>);
    {
        // Meter samples are rows, host samples chunks, recent host samples journaled.
        let known = match detail {
            Detail::Totals => Some(has_sample(conn, &id_param, host_series, q.from_ms, q.to_ms)?),
            Detail::Full => None,
        };
        let found = known == Some(true);
        if found {
            samples = 1;
        } else if known == Some(false) {
            // None in the tables: the journal's are counted below.
        } else if host_series {
            let c = super::chunk::range_stats_of(conn, &id_param, q.from_ms, q.to_ms)?;
            samples += c.values;
            first = min_opt(first, c.first_value);
            last = max_opt(last, c.last_value);
        } else {
            let mut st = conn.prepare_cached(
                "SELECT COUNT(*), MIN(ts_ms), MAX(ts_ms) FROM samples WHERE series_id IN rarray(?1) AND ts_ms >= ?2 AND ts_ms < ?3 AND value_micro IS NOT NULL",
            )?;
            let (n, a, b): (i64, Option<i64>, Option<i64>) =
                st.query_row(params![id_param, q.from_ms, q.to_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            samples += n as u64;
            first = min_opt(first, a);
            last = max_opt(last, b);
        }
        for id in ids.iter().filter(|_| !found) {
            for e in pending.of(*id).iter().filter(|e| e.value.is_some() && e.ts_ms >= q.from_ms && e.ts_ms < q.to_ms) {
                samples += 1;
                first = min_opt(first, Some(e.ts_ms));
                last = max_opt(last, Some(e.ts_ms));
            }
        }
    }
    let mut adjustments = Vec::new();
    // Corrections and swaps are of meters.
    if !host_series {
        let mut st = conn.prepare_cached(
            "SELECT se.meter, a.kind, a.start_ms, a.end_ms, a.value_micro, a.final_micro, a.initial_micro, se.unit, a.author, a.reason, a.recorded_ms \
             FROM adjustments a JOIN series se ON se.id = a.series_id WHERE a.series_id IN rarray(?1) AND a.start_ms < ?3 AND a.end_ms >= ?2 \
             ORDER BY a.series_id, a.id",
        )?;
        {
            let rows = st.query_map(params![id_param, q.from_ms, q.to_ms], |r| {
                Ok(Adjustment {
                    meter: r.get(0)?,
                    kind: r.get(1)?,
                    from: rfc3339(r.get(2)?),
                    to: rfc3339(r.get(3)?),
                    value_micro: r.get::<_, i64>(4)?.to_string(),
                    final_micro: r.get::<_, Option<i64>>(5)?.map(|v| v.to_string()),
                    initial_micro: r.get::<_, Option<i64>>(6)?.map(|v| v.to_string()),
                    unit: r.get(7)?,
                    author: r.get(8)?,
                    reason: r.get(9)?,
                    recorded: rfc3339(r.get(10)?),
                })
            })?;
            for a in rows {
                adjustments.push(a?);
            }
        }
    }
    Ok(answer(q, role, &series, &per_series, &rolled_up, (samples, first, last), adjustments))
}

/// Whether the tables hold a sample of `ids` in `[from, to)`, without
/// counting them: a meter's row (one index seek), or a host chunk's point
/// ([`super::chunk::any_value_in`]).
fn has_sample(conn: &Connection, ids: &Array, host_series: bool, from: i64, to: i64) -> Result<bool, StoreError> {
    if host_series {
        return super::chunk::any_value_in(conn, ids, from, to);
    }
    let sql = "SELECT EXISTS (SELECT 1 FROM samples WHERE series_id IN rarray(?1) AND ts_ms >= ?2 AND ts_ms < ?3 \
               AND value_micro IS NOT NULL)";
    Ok(conn.prepare_cached(sql)?.query_row(params![ids, from, to], |r| r.get(0))?)
}

/// A series an energy question reads: (id, host or meter, method, quality, unit).
pub type SeriesRow = (i64, String, String, String, String);

/// The answer to `q` from what a store read: the sums of each of `series`
/// (`per_series`), the site roll-ups' sums per (method, quality) (the same
/// series grouped by the labels the per-series loop reads: every figure is
/// the same sum in another order), the samples (count, first, last) and the
/// adjustments. Every store answers through it, so the figures are computed
/// one way: energy or volume, measured/estimated, by method, coverage.
pub fn answer(
    q: &EnergyQuery,
    role: String,
    series: &[SeriesRow],
    per_series: &SeriesSums,
    rolled_up: &MethodSums,
    (samples, first, last): (u64, Option<i64>, Option<i64>),
    adjustments: Vec<Adjustment>,
) -> EnergyReport {
    let volume = series.first().is_some_and(|s| super::is_volume(&s.4));
    let (mut total, mut measured, mut estimated, mut covered) = (0i128, 0i128, 0i128, 0i128);
    let mut by_method: BTreeMap<String, i128> = BTreeMap::new();
    let mut add = |method: &str, quality: &str, e: i128, c: i128| {
        total += e;
        covered += c;
        if !method.is_empty() {
            *by_method.entry(method.to_string()).or_insert(0) += e;
        }
        if quality == "estimated" { estimated += e } else { measured += e }
    };
    let mut hosts = std::collections::BTreeSet::new();
    for (id, name, method, quality, _) in series {
        let (e, c) = per_series.get(id).copied().unwrap_or((0, 0));
        add(method, quality, e, c);
        hosts.insert(name.as_str());
    }
    for ((method, quality), (e, c)) in rolled_up {
        add(method, quality, *e, *c);
    }
    let (volume_total, total, measured, estimated) =
        if volume { (Some(total), 0, 0, 0) } else { (None, total, measured, estimated) };
    let span = i128::from(q.to_ms - q.from_ms) * hosts.len() as i128;
    let coverage = if span > 0 { (covered as f64 / span as f64).clamp(0.0, 1.0) } else { 0.0 };
    EnergyReport {
        site: q.site.clone(),
        host: q.host.clone(),
        meter: q.meter.clone(),
        role,
        from: rfc3339(q.from_ms),
        to: rfc3339(q.to_ms),
        energy_joules: uj_to_j(total),
        energy_microjoules: total.to_string(),
        measured_joules: uj_to_j(measured),
        estimated_joules: uj_to_j(estimated),
        by_method: by_method.into_iter().map(|(k, v)| (k, uj_to_j(v))).collect(),
        coverage_ratio: coverage,
        samples,
        first_sample: first.map(rfc3339),
        last_sample: last.map(rfc3339),
        volume_liters: volume_total.map(|v| v as f64 / 1e6),
        volume_microliters: volume_total.map(|v| v.to_string()),
        adjustments,
    }
}

/// The smaller of two optional times (either when one is missing).
pub fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The larger of two optional times (either when one is missing).
pub fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The claimed hosts of a site with a sample in `[from, to)`, and their model.
pub fn host_models(
    conn: &Connection,
    site: &str,
    from_ms: i64,
    to_ms: i64,
    pending: &Pending,
) -> Result<Vec<(String, super::HostModel)>, StoreError> {
    let mut st = conn.prepare_cached(
        // Hours cover ranges whose raw samples were pruned; chunks and the journal are added below.
        "SELECT h.host, h.vendor, h.product, h.cpu_model, h.sockets FROM hosts h WHERE h.site = ?1 AND EXISTS \
         (SELECT 1 FROM series se JOIN hours ho ON ho.series_id = se.id \
          WHERE se.site = h.site AND se.host = h.host AND ho.start_ms >= ?2 - 3600000 AND ho.start_ms < ?3) \
         ORDER BY h.host",
    )?;
    let model = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, String>(0)?,
            super::HostModel {
                vendor: r.get(1)?,
                product: r.get(2)?,
                cpu_model: r.get(3)?,
                sockets: r.get::<_, Option<u32>>(4)?,
            },
        ))
    };
    let mut out: BTreeMap<String, super::HostModel> =
        st.query_map(params![site, from_ms, to_ms], model)?.collect::<Result<_, _>>()?;
    // Hosts whose raw samples in the range are in chunks or still journaled.
    let mut journaled = std::collections::BTreeSet::new();
    let mut st = conn.prepare_cached("SELECT id, host FROM series WHERE site = ?1 AND host != ''")?;
    for r in st.query_map([site], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (id, host) = r?;
        if journaled.contains(&host) || out.contains_key(&host) {
            continue;
        }
        if pending.of(id).iter().any(|e| e.ts_ms >= from_ms && e.ts_ms < to_ms)
            || super::chunk::range_stats(conn, id, from_ms, to_ms)?.points > 0
        {
            journaled.insert(host);
        }
    }
    if !journaled.is_empty() {
        let mut st = conn.prepare_cached(
            "SELECT host, vendor, product, cpu_model, sockets FROM hosts WHERE site = ?1 ORDER BY host",
        )?;
        for r in st.query_map([site], model)? {
            let (host, m) = r?;
            if journaled.contains(&host) {
                out.entry(host).or_insert(m);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Hosts of a site with their first/last sample, current method and estimated share.
pub fn hosts(
    conn: &Connection,
    site: &str,
    now_ms: i64,
    policy: &Policy,
    pending: &Pending,
) -> Result<Vec<HostRow>, StoreError> {
    let mut names: Vec<String> = Vec::new();
    {
        let mut st = conn.prepare(
            "SELECT host FROM series WHERE site = ?1 AND host != '' UNION SELECT host FROM hosts WHERE site = ?1 ORDER BY 1",
        )?;
        for r in st.query_map([site], |r| r.get::<_, String>(0))? {
            names.push(r?);
        }
    }
    let mut out = Vec::new();
    for host in names {
        let machine_id: Option<String> = conn
            .query_row("SELECT machine_id FROM hosts WHERE site = ?1 AND host = ?2", params![site, host], |r| r.get(0))
            .ok();
        // A host's raw samples are in chunks (the `samples` table holds meters'
        // only, since migration 3) and, the newest, in the journal.
        let (mut first, mut last): (Option<i64>, Option<i64>) = conn.query_row(
            "SELECT MIN(c.first_ts), MAX(c.last_ts) FROM chunks c JOIN series se ON se.id = c.series_id \
             WHERE se.site = ?1 AND se.host = ?2",
            params![site, host],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut current: Option<(i64, String, String)> = conn
            .query_row(
                "SELECT c.last_value_ts, se.method, se.quality FROM chunks c JOIN series se ON se.id = c.series_id \
                 WHERE se.site = ?1 AND se.host = ?2 AND c.last_value_ts IS NOT NULL ORDER BY c.last_value_ts DESC LIMIT 1",
                params![site, host],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let mut st = conn.prepare_cached("SELECT id, method, quality FROM series WHERE site = ?1 AND host = ?2")?;
        for r in st.query_map(params![site, host], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })? {
            let (id, method, quality) = r?;
            for e in pending.of(id) {
                first = min_opt(first, Some(e.ts_ms));
                last = max_opt(last, Some(e.ts_ms));
                if e.value.is_some() && current.as_ref().is_none_or(|c| e.ts_ms > c.0) {
                    current = Some((e.ts_ms, method.clone(), quality.clone()));
                }
            }
        }
        let day = energy(
            conn,
            &EnergyQuery {
                site: site.to_string(),
                host: Some(host.clone()),
                meter: None,
                role: None,
                from_ms: (now_ms - 24 * HOUR_MS).div_euclid(MINUTE_MS) * MINUTE_MS,
                to_ms: (now_ms.div_euclid(MINUTE_MS) + 1) * MINUTE_MS,
            },
            policy,
            pending,
            Detail::Totals,
        )?;
        let share = (day.energy_joules > 0.0).then(|| day.estimated_joules / day.energy_joules);
        let mut conflicts = Vec::new();
        let mut st =
            conn.prepare_cached("SELECT machine_id FROM host_conflicts WHERE site = ?1 AND host = ?2 ORDER BY 1")?;
        for r in st.query_map(params![site, host], |r| r.get::<_, String>(0))? {
            conflicts.push(r?);
        }
        out.push(HostRow {
            host,
            machine_id,
            first_sample: first.map(rfc3339),
            last_sample: last.map(rfc3339),
            current_method: current.as_ref().map(|c| c.1.clone()),
            current_quality: current.map(|c| c.2),
            estimated_share_24h: share,
            conflicting_machine_ids: conflicts,
        });
    }
    Ok(out)
}

/// Total booked energy per (site, role), µJ.
pub fn site_totals(conn: &Connection, pending: &Pending) -> Result<Vec<(String, String, i128)>, StoreError> {
    let mut st =
        conn.prepare("SELECT se.site, se.role, h.energy_uj FROM hours h JOIN series se ON se.id = h.series_id")?;
    let mut totals: BTreeMap<(String, String), i128> = BTreeMap::new();
    for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))? {
        let (site, role, e) = r?;
        *totals.entry((site, role)).or_insert(0) += i128::from(e);
    }
    if !pending.by_series.is_empty() {
        let mut st = conn.prepare("SELECT id, site, role FROM series")?;
        for r in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))? {
            let (id, site, role) = r?;
            let e: i128 = pending.of(id).iter().map(|e| i128::from(e.increment())).sum();
            if e != 0 {
                *totals.entry((site, role)).or_insert(0) += e;
            }
        }
    }
    Ok(totals.into_iter().map(|((s, r), e)| (s, r, e)).collect())
}

/// Hourly energy of a site's meters of `role` (µJ per hour start), whole hours in `[from, to)`.
pub fn role_hourly(
    conn: &Connection,
    site: &str,
    role: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, i128)>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT h.start_ms, h.energy_uj FROM hours h JOIN series se ON se.id = h.series_id \
         WHERE se.site = ?1 AND se.role = ?2 AND se.meter != '' AND h.start_ms >= ?3 AND h.start_ms < ?4",
    )?;
    let mut by_hour: BTreeMap<i64, i128> = BTreeMap::new();
    for r in st.query_map(params![site, role, from_ms, to_ms], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
        let (h, e) = r?;
        *by_hour.entry(h).or_insert(0) += i128::from(e);
    }
    Ok(by_hour.into_iter().filter(|(h, _)| h + HOUR_MS <= to_ms).collect())
}
