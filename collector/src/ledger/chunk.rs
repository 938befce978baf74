//! Raw host samples, stored per series in chunks.
//!
//! A row per sample cost about a microsecond of B-tree work each, which made
//! writing the journal to the tables the collector's largest cost. Host
//! samples are therefore kept as `chunks` rows: one per series per
//! materialization, holding the sorted `(timestamp, value)` points (zigzag
//! LEB128 deltas) with their time span, point count and first/last
//! non-stale timestamps as columns, so range counts decode only the chunks
//! at the range's edges. A series' chunks never overlap in time and are
//! ordered by `first_ts`; a late sample is written into the chunk whose span
//! it falls in (or the one before the gap it falls in). Meter samples stay in
//! `samples` (few, and written by `import-meters` too).

use std::collections::BTreeMap;
use std::rc::Rc;

use rusqlite::vtab::array::Array;
use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::book::{MINUTE_MS, Value, add_shares_in, increment};
use super::journal::{get_varint, put_varint};

/// A sample: timestamp (ms) and value (µJ; `None` is a stale marker).
pub type Point = (i64, Value);

const VERSION: u8 = 1;

pub fn encode(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + points.len() * 6);
    out.push(VERSION);
    out.extend_from_slice(&(points.len() as u32).to_le_bytes());
    let (mut ts, mut base) = (0i64, 0i64);
    for (t, v) in points {
        out.push(u8::from(v.is_some()));
        put_varint(&mut out, t.wrapping_sub(ts));
        ts = *t;
        if let Some(v) = v {
            put_varint(&mut out, v.wrapping_sub(base));
            base = *v;
        }
    }
    out
}

/// Decodes a chunk; `series_id` and `first_ts` name it in the error.
pub fn decode(series_id: i64, first_ts: i64, bytes: &[u8]) -> Result<Vec<Point>, StoreError> {
    let mut out = Vec::new();
    decode_into(series_id, first_ts, bytes, &mut out)?;
    Ok(out)
}

/// [`decode`] into a reused vector (cleared first).
pub fn decode_into(series_id: i64, first_ts: i64, bytes: &[u8], out: &mut Vec<Point>) -> Result<(), StoreError> {
    let bad = |what: &str| StoreError::Chunk { series_id, first_ts, message: what.to_string() };
    let (Some(&VERSION), Some(n)) = (bytes.first(), bytes.get(1..5)) else {
        return Err(bad("unknown encoding version or truncated header"));
    };
    let count = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let mut pos = 5;
    out.clear();
    out.reserve(count.min(bytes.len() / 2));
    let (mut ts, mut base) = (0i64, 0i64);
    while pos < bytes.len() {
        let flag = bytes[pos];
        pos += 1;
        ts = ts.wrapping_add(get_varint(bytes, &mut pos).ok_or_else(|| bad("truncated point"))?);
        let v = if flag & 1 != 0 {
            base = base.wrapping_add(get_varint(bytes, &mut pos).ok_or_else(|| bad("truncated point"))?);
            Some(base)
        } else {
            None
        };
        out.push((ts, v));
    }
    if out.len() != count {
        return Err(bad(&format!("holds {} points, its header says {count}", out.len())));
    }
    Ok(())
}

/// Writes `points` (sorted, unique) as the chunk starting at their first timestamp.
fn put(tx: &Connection, series_id: i64, points: &[Point], replacing: Option<i64>) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return Ok(()) };
    let values = points.iter().filter(|p| p.1.is_some());
    let n_values = values.clone().count() as i64;
    let first_value = values.clone().next().map(|p| p.0);
    let last_value = values.clone().next_back().map(|p| p.0);
    if let Some(old) = replacing {
        tx.prepare_cached("DELETE FROM chunks WHERE series_id = ?1 AND first_ts = ?2")?
            .execute(params![series_id, old])?;
    }
    tx.prepare_cached(
        "INSERT INTO chunks (series_id, first_ts, last_ts, n_points, n_values, first_value_ts, last_value_ts, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        series_id,
        first.0,
        last.0,
        points.len() as i64,
        n_values,
        first_value,
        last_value,
        encode(points)
    ])?;
    Ok(())
}

/// Appends points newer than every stored one as a new chunk.
pub fn append(tx: &Connection, series_id: i64, points: &[Point]) -> Result<(), StoreError> {
    put(tx, series_id, points, None)
}

/// The chunk `(first_ts, points)` of a series chosen by `sql` with `?1` the series and `?2` a time.
fn chunk_where(conn: &Connection, sql: &str, series_id: i64, t: i64) -> Result<Option<(i64, Vec<Point>)>, StoreError> {
    let row: Option<(i64, Vec<u8>)> =
        conn.prepare_cached(sql)?.query_row(params![series_id, t], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    row.map(|(first, data)| Ok((first, decode(series_id, first, &data)?))).transpose()
}

const AT_OR_BEFORE: &str =
    "SELECT first_ts, data FROM chunks WHERE series_id = ?1 AND first_ts <= ?2 ORDER BY first_ts DESC LIMIT 1";
const BEFORE: &str =
    "SELECT first_ts, data FROM chunks WHERE series_id = ?1 AND first_ts < ?2 ORDER BY first_ts DESC LIMIT 1";
const AFTER: &str =
    "SELECT first_ts, data FROM chunks WHERE series_id = ?1 AND first_ts > ?2 ORDER BY first_ts ASC LIMIT 1";

/// The series' last point.
pub fn last_point(conn: &Connection, series_id: i64) -> Result<Option<Point>, StoreError> {
    Ok(chunk_where(conn, AT_OR_BEFORE, series_id, i64::MAX)?.and_then(|(_, p)| p.last().copied()))
}

/// Around `t`: the point before it, the value at it (if any), the point after it.
pub type Neighbours = (Option<Point>, Option<Value>, Option<Point>);

pub fn neighbours(conn: &Connection, series_id: i64, t: i64) -> Result<Neighbours, StoreError> {
    neighbours_with(t, |which, t| chunk_where(conn, which.sqlite(), series_id, t))
}

/// Which chunk of a series a [`neighbours_with`] lookup reads, by its first timestamp against a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Around {
    /// The last chunk starting at or before it.
    AtOrBefore,
    /// The last chunk starting before it.
    Before,
    /// The first chunk starting after it.
    After,
}

impl Around {
    fn sqlite(self) -> &'static str {
        match self {
            Around::AtOrBefore => AT_OR_BEFORE,
            Around::Before => BEFORE,
            Around::After => AFTER,
        }
    }
}

/// [`Neighbours`] of `t` in a series whose chunks (`(first_ts, points)`) `chunk` reads from a store: a series'
/// chunks never overlap and are ordered by their first point, so the chunk starting at or before `t` and, at its
/// edges, the ones before and after it say everything.
pub fn neighbours_with<E>(
    t: i64,
    mut chunk: impl FnMut(Around, i64) -> Result<Option<(i64, Vec<Point>)>, E>,
) -> Result<Neighbours, E> {
    let here = chunk(Around::AtOrBefore, t)?;
    let (mut prev, mut exact, mut next) = (None, None, None);
    if let Some((first, points)) = &here {
        let i = points.partition_point(|p| p.0 < t);
        prev = i.checked_sub(1).map(|k| points[k]);
        if let Some(p) = points.get(i).filter(|p| p.0 == t) {
            exact = Some(p.1);
            next = points.get(i + 1).copied();
        } else {
            next = points.get(i).copied();
        }
        if prev.is_none() {
            prev = chunk(Around::Before, *first)?.and_then(|(_, p)| p.last().copied());
        }
    }
    if next.is_none() {
        next = chunk(Around::After, t)?.and_then(|(_, p)| p.first().copied());
    }
    Ok((prev, exact, next))
}

/// Writes one late point into the chunk whose span (or following gap) holds
/// it, or in front of the first chunk when it is older than all of them.
pub fn insert(tx: &Connection, series_id: i64, point: Point) -> Result<(), StoreError> {
    let (old_first, mut points) = match chunk_where(tx, AT_OR_BEFORE, series_id, point.0)? {
        Some(c) => c,
        None => match chunk_where(tx, AFTER, series_id, point.0)? {
            Some(c) => c,
            None => return append(tx, series_id, &[point]),
        },
    };
    let i = points.partition_point(|p| p.0 < point.0);
    if points.get(i).is_some_and(|p| p.0 == point.0) {
        return Ok(());
    }
    points.insert(i, point);
    put(tx, series_id, &points, Some(old_first))
}

/// Points of a series with a timestamp in `[from, to)`: `(all, non-stale, first non-stale, last non-stale)`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RangeStats {
    pub points: u64,
    pub values: u64,
    pub first_value: Option<i64>,
    pub last_value: Option<i64>,
}

pub fn range_stats(conn: &Connection, series_id: i64, from: i64, to: i64) -> Result<RangeStats, StoreError> {
    range_stats_of(conn, &Rc::new(vec![rusqlite::types::Value::Integer(series_id)]), from, to)
}

/// [`range_stats`] summed over several series (`ids` as for `rarray`), in one
/// statement. Chunks inside the range answer from their columns; only the
/// edge chunks' points are read, by a second statement: naming `data` in the
/// scan would make SQLite read every chunk's blob (its overflow pages), the
/// whole raw history of the range, to count what the columns already say.
pub fn range_stats_of(conn: &Connection, ids: &Array, from: i64, to: i64) -> Result<RangeStats, StoreError> {
    let mut data_of = conn.prepare_cached("SELECT data FROM chunks WHERE id = ?1")?;
    let mut st = conn.prepare_cached(
        "SELECT c.first_ts, c.last_ts, c.n_points, c.n_values, c.first_value_ts, c.last_value_ts, c.id, c.series_id \
         FROM rarray(?1) r CROSS JOIN chunks c ON c.series_id = r.value AND c.last_ts >= ?2 AND c.first_ts < ?3 \
         AND c.first_ts >= COALESCE((SELECT MAX(p.first_ts) FROM chunks p WHERE p.series_id = r.value AND p.first_ts <= ?2), ?2)",
    )?;
    let mut out = RangeStats::default();
    let mut points: Vec<Point> = Vec::new();
    let mut rows = st.query(params![ids, from, to])?;
    while let Some(r) = rows.next()? {
        let (first, last): (i64, i64) = (r.get(0)?, r.get(1)?);
        let series_id: i64 = r.get(7)?;
        let mut add = |points: u64, values: u64, fv: Option<i64>, lv: Option<i64>| {
            out.points += points;
            out.values += values;
            out.first_value = match (out.first_value, fv) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            out.last_value = match (out.last_value, lv) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        };
        if first >= from && last < to {
            add(r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64, r.get(4)?, r.get(5)?);
        } else {
            // An edge chunk: count its points inside the range.
            let data: Vec<u8> = data_of.query_row([r.get::<_, i64>(6)?], |d| d.get(0))?;
            decode_into(series_id, first, &data, &mut points)?;
            let (mut n, mut values, mut fv, mut lv) = (0u64, 0u64, None, None);
            for &(t, v) in points.iter().filter(|p| p.0 >= from && p.0 < to) {
                n += 1;
                if v.is_some() {
                    values += 1;
                    fv = fv.or(Some(t));
                    lv = Some(t);
                }
            }
            add(n, values, fv, lv);
        }
    }
    Ok(out)
}

/// Whether a series of `ids` has a non-stale point in `[from, to)`, from the
/// chunks' columns where they decide it, without counting: chunks of a series
/// never overlap, so the chunks starting inside the range and the last one
/// starting before it are all that can hold such a point. Only a chunk with
/// values before and after the range and none of its columns inside is
/// decoded, and the first point found ends the search.
pub fn any_value_in(conn: &Connection, ids: &Array, from: i64, to: i64) -> Result<bool, StoreError> {
    let inside: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM rarray(?1) r CROSS JOIN chunks c ON c.series_id = r.value \
             AND c.first_ts >= ?2 AND c.first_ts < ?3 AND c.n_values > 0 AND c.first_value_ts < ?3)",
        )?
        .query_row(params![ids, from, to], |r| r.get(0))?;
    if inside {
        return Ok(true);
    }
    let mut st = conn.prepare_cached(
        "SELECT c.first_value_ts, c.last_value_ts, c.id, c.series_id, c.first_ts FROM rarray(?1) r CROSS JOIN chunks c \
         ON c.id = (SELECT p.id FROM chunks p WHERE p.series_id = r.value AND p.first_ts < ?2 ORDER BY p.first_ts DESC LIMIT 1) \
         WHERE c.n_values > 0 AND c.last_value_ts >= ?2",
    )?;
    let mut rows = st.query(params![ids, from])?;
    // Chunks with values before and after the range: (id, series, first_ts).
    let mut spanning: Vec<(i64, i64, i64)> = Vec::new();
    while let Some(r) = rows.next()? {
        let (first, last): (i64, i64) = (r.get(0)?, r.get(1)?);
        if last < to || (first >= from && first < to) {
            return Ok(true);
        }
        if first < from {
            spanning.push((r.get(2)?, r.get(3)?, r.get(4)?));
        }
    }
    let mut data_of = conn.prepare_cached("SELECT data FROM chunks WHERE id = ?1")?;
    let mut points: Vec<Point> = Vec::new();
    for (id, series_id, first_ts) in spanning {
        let data: Vec<u8> = data_of.query_row([id], |d| d.get(0))?;
        decode_into(series_id, first_ts, &data, &mut points)?;
        if points.iter().any(|p| p.1.is_some() && p.0 >= from && p.0 < to) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Energy (µJ) and coverage (ms) per series over `[from, to)` (whole minutes),
/// recomputed from the raw points exactly as the minute buckets would hold them:
/// each interval between consecutive points is spread over one-minute buckets
/// ([`spread`]) and the shares of the buckets inside the range are summed.
/// Host series keep no minute rows (writing one per series per minute was the
/// largest part of materializing); their minutes are these shares.
pub fn minute_shares_of(conn: &Connection, ids: &Array, from: i64, to: i64, gap_ms: i64) -> Result<Sums, StoreError> {
    if from >= to {
        return Ok(BTreeMap::new());
    }
    // Retention cutoffs that reach into the range: usually none, so one scan
    // of `series` instead of a lookup per series.
    let mut pruned: BTreeMap<i64, i64> = BTreeMap::new();
    {
        let mut st = conn.prepare_cached("SELECT id, pruned_until_ms FROM series WHERE pruned_until_ms > ?1")?;
        let mut rows = st.query([from])?;
        while let Some(r) = rows.next()? {
            pruned.insert(r.get(0)?, r.get(1)?);
        }
    }
    // Per series, from the chunk holding the last point before `from` to the
    // one holding the first point at or after `to`: every interval that
    // reaches into the range, and no other chunk. CROSS JOIN keeps the
    // series list as the outer loop, so each series is one index range, read
    // in time order; should SQLite ever return them otherwise, the ordered
    // form of the query answers instead.
    if let Some(out) = minute_shares_pass(conn, MINUTE_SHARES_SQL, ids, (from, to), gap_ms, &pruned)? {
        return Ok(out);
    }
    let ordered = format!("{MINUTE_SHARES_SQL} ORDER BY c.series_id, c.first_ts");
    minute_shares_pass(conn, &ordered, ids, (from, to), gap_ms, &pruned)?.ok_or_else(|| StoreError::Chunk {
        series_id: 0,
        first_ts: from,
        message: "chunks out of order".into(),
    })
}

/// The chunks [`minute_shares_of`] reads (see there).
const MINUTE_SHARES_SQL: &str = "SELECT c.series_id, c.first_ts, c.data FROM rarray(?1) r CROSS JOIN chunks c \
     ON c.series_id = r.value \
     AND c.first_ts >= COALESCE((SELECT MAX(p.first_ts) FROM chunks p WHERE p.series_id = r.value AND p.first_ts < ?2), ?2) \
     AND c.first_ts <= COALESCE((SELECT MIN(n.first_ts) FROM chunks n WHERE n.series_id = r.value AND n.first_ts >= ?3), ?3)";

/// Energy (µJ) and coverage (ms) per series id.
pub type Sums = BTreeMap<i64, (i128, i128)>;

/// The series a pass is reading: its id, its last chunk's start, its last point, its sums so far.
struct Reading {
    id: i64,
    last_first: i64,
    prev: Option<Point>,
    sums: (i128, i128),
}

impl Reading {
    fn flush(self, out: &mut Sums) {
        if self.sums != (0, 0) {
            out.insert(self.id, self.sums);
        }
    }
}

/// One pass of [`minute_shares_of`] over the rows of `sql`; `None` when a
/// series' chunks do not come consecutively and in time order.
fn minute_shares_pass(
    conn: &Connection,
    sql: &str,
    ids: &Array,
    (from, to): (i64, i64),
    gap_ms: i64,
    pruned: &BTreeMap<i64, i64>,
) -> Result<Option<Sums>, StoreError> {
    let mut out = Sums::new();
    let mut st = conn.prepare_cached(sql)?;
    let mut rows = st.query(params![ids, from, to])?;
    let mut points: Vec<Point> = Vec::new();
    let mut current: Option<Reading> = None;
    let mut done: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
    while let Some(r) = rows.next()? {
        let (series_id, first): (i64, i64) = (r.get(0)?, r.get(1)?);
        let data = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
        match &current {
            Some(c) if c.id == series_id => {
                if first <= c.last_first {
                    return Ok(None);
                }
            }
            _ => {
                if !done.insert(series_id) {
                    return Ok(None);
                }
                if let Some(c) = current.take() {
                    c.flush(&mut out);
                }
                current = Some(Reading { id: series_id, last_first: first, prev: None, sums: (0, 0) });
            }
        }
        let Some(c) = current.as_mut() else { continue };
        c.last_first = first;
        // Minutes before the retention cutoff are gone, as meters' rows are.
        let lower = from.max(pruned.get(&series_id).copied().unwrap_or(i64::MIN));
        decode_into(series_id, first, data, &mut points)?;
        for p in &points {
            if let Some((t0, v0)) = c.prev {
                add_shares_in(&mut c.sums, (t0, p.0, increment(v0, p.1)), MINUTE_MS, gap_ms, (lower, to));
            }
            c.prev = Some(*p);
        }
    }
    if let Some(c) = current {
        c.flush(&mut out);
    }
    Ok(Some(out))
}

/// Deletes the chunks of every series that end before `cutoff`, keeping each
/// series' last chunk (its last point is the next sample's baseline), and
/// records `pruned_until_ms` for the series with points before it: their
/// minutes before it are gone ([`minute_shares_of`]) and a late sample before
/// it cannot be slotted in.
pub fn prune(tx: &Connection, cutoff: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE series SET pruned_until_ms = ?1 WHERE pruned_until_ms < ?1 AND EXISTS \
         (SELECT 1 FROM chunks c WHERE c.series_id = series.id AND c.first_ts < ?1)",
        [cutoff],
    )?;
    tx.execute(
        "DELETE FROM chunks WHERE last_ts < ?1 AND first_ts < \
         (SELECT MAX(first_ts) FROM chunks c2 WHERE c2.series_id = chunks.series_id)",
        [cutoff],
    )?;
    Ok(())
}

/// Migration: moves the host series' rows of `samples` into chunks of at most
/// `per_chunk` points.
pub fn migrate_host_samples(tx: &Connection, per_chunk: usize) -> Result<u64, StoreError> {
    let mut st = tx.prepare(
        "SELECT s.series_id, s.ts_ms, s.value_micro FROM samples s JOIN series se ON se.id = s.series_id \
         WHERE se.meter = '' ORDER BY s.series_id, s.ts_ms",
    )?;
    let mut rows = st.query([])?;
    let mut current: Option<i64> = None;
    let mut points: Vec<Point> = Vec::new();
    let mut moved = 0u64;
    while let Some(r) = rows.next()? {
        let (id, ts, v): (i64, i64, Value) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if current != Some(id) || points.len() >= per_chunk {
            if let Some(c) = current {
                append(tx, c, &points)?;
            }
            points.clear();
            current = Some(id);
        }
        points.push((ts, v));
        moved += 1;
    }
    if let Some(c) = current {
        append(tx, c, &points)?;
    }
    tx.execute("DELETE FROM samples WHERE series_id IN (SELECT id FROM series WHERE meter = '')", [])?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::super::book::{any_value, spread};
    use super::*;
    use proptest::prelude::*;

    /// An in-memory database with the tables chunks use, and `rarray`.
    fn chunk_db() -> Connection {
        let conn = Connection::open_in_memory().expect("db");
        rusqlite::vtab::array::load_module(&conn).expect("rarray");
        conn.execute_batch(
            "CREATE TABLE series (id INTEGER PRIMARY KEY, pruned_until_ms INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE chunks (id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL, first_ts INTEGER NOT NULL,
               last_ts INTEGER NOT NULL, n_points INTEGER NOT NULL, n_values INTEGER NOT NULL,
               first_value_ts INTEGER, last_value_ts INTEGER, data BLOB NOT NULL);
             CREATE UNIQUE INDEX chunks_series ON chunks (series_id, first_ts);",
        )
        .expect("schema");
        conn
    }

    proptest! {
        #[test]
        fn encoding_round_trips(raw in proptest::collection::vec((any::<i64>(), any_value()), 0..60), cut in 0usize..400) {
            let buf = encode(&raw);
            prop_assert_eq!(decode(1, 0, &buf).expect("decode"), raw);
            if cut < buf.len() {
                prop_assert!(decode(1, 0, &buf[..cut]).is_err());
            }
        }

        /// Whatever the order points are inserted in, the chunks hold them
        /// sorted, and neighbours and range counts match a plain sorted list.
        #[test]
        fn inserts_and_lookups_match_a_sorted_list(
            appended in proptest::collection::btree_set(0i64..10_000, 0..40),
            late in proptest::collection::vec(0i64..12_000, 0..30),
            probes in proptest::collection::vec(0i64..12_000, 1..10),
        ) {
            let conn = chunk_db();
            let mut all = std::collections::BTreeMap::new();
            // Appended in runs of up to 7 points, as materializations do.
            let appended: Vec<i64> = appended.into_iter().collect();
            for run in appended.chunks(7) {
                let points: Vec<Point> = run.iter().map(|t| (*t, (t % 5 != 0).then_some(*t * 10))).collect();
                append(&conn, 1, &points).expect("append");
                all.extend(points);
            }
            for t in late {
                let p = (t, Some(t * 10));
                if let std::collections::btree_map::Entry::Vacant(e) = all.entry(t) {
                    e.insert(p.1);
                    insert(&conn, 1, p).expect("insert");
                }
            }
            for t in probes {
                let prev = all.range(..t).next_back().map(|(k, v)| (*k, *v));
                let exact = all.get(&t).copied();
                let next = all.range(t + 1..).next().map(|(k, v)| (*k, *v));
                prop_assert_eq!(neighbours(&conn, 1, t).expect("neighbours"), (prev, exact, next));
                let inside: Vec<(i64, Value)> = all.range(t..t + 2_000).map(|(k, v)| (*k, *v)).collect();
                let values: Vec<i64> = inside.iter().filter(|p| p.1.is_some()).map(|p| p.0).collect();
                prop_assert_eq!(
                    range_stats(&conn, 1, t, t + 2_000).expect("stats"),
                    RangeStats {
                        points: inside.len() as u64,
                        values: values.len() as u64,
                        first_value: values.first().copied(),
                        last_value: values.last().copied(),
                    }
                );
            }
            prop_assert_eq!(last_point(&conn, 1).expect("last"), all.iter().next_back().map(|(k, v)| (*k, *v)));
        }

        /// A range's minutes recomputed from the chunks equal the sum of the
        /// minute buckets the series' intervals spread into, whatever the
        /// chunking, with gaps, stale markers and resets.
        #[test]
        fn minute_shares_match_the_buckets(
            seconds in proptest::collection::btree_set(0i64..7_200, 0..60),
            values in proptest::collection::vec(prop_oneof![1 => Just(None), 6 => (0i64..5_000_000).prop_map(Some)], 60),
            run_len in 1usize..9,
            from_min in 0i64..130,
            len_min in 0i64..70,
            pruned_min in prop_oneof![Just(0i64), 0i64..130],
        ) {
            let conn = chunk_db();
            let pruned_until = pruned_min * MINUTE_MS;
            conn.execute("INSERT INTO series VALUES (1, ?1), (2, 0)", [pruned_until]).expect("series");
            // Series 2 holds other points in between: they must not leak into series 1.
            append(&conn, 2, &[(0, Some(1)), (7_200_000, Some(1 << 40))]).expect("append");
            let points: Vec<Point> = seconds.iter().zip(&values).map(|(t, v)| (t * 1_000, *v)).collect();
            for run in points.chunks(run_len) {
                append(&conn, 1, run).expect("append");
            }
            let (from, to) = (from_min * MINUTE_MS, (from_min + len_min) * MINUTE_MS);
            let gap_ms = 300_000;
            let mut want = (0i128, 0i128);
            for w in points.windows(2) {
                for sh in spread(w[0].0, w[1].0, increment(w[0].1, w[1].1), MINUTE_MS, gap_ms) {
                    if sh.start_ms >= from.max(pruned_until) && sh.start_ms < to {
                        want.0 += i128::from(sh.energy_uj);
                        want.1 += i128::from(sh.covered_ms);
                    }
                }
            }
            let ids: Array = Rc::new(vec![rusqlite::types::Value::Integer(1)]);
            let got = minute_shares_of(&conn, &ids, from, to, gap_ms).expect("shares");
            prop_assert_eq!(got.get(&1).copied().unwrap_or((0, 0)), want);
            prop_assert!(got.keys().all(|k| *k == 1));
            // Chunks out of time order are noticed, never summed as they come.
            let reversed = format!("{MINUTE_SHARES_SQL} ORDER BY c.first_ts DESC");
            let pass = minute_shares_pass(&conn, &reversed, &ids, (from, to), gap_ms, &BTreeMap::new()).expect("pass");
            let fetched: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM ({MINUTE_SHARES_SQL})"), params![ids, from, to], |r| r.get(0))
                .expect("count");
            prop_assert_eq!(pass.is_none(), fetched > 1);
        }
    }
}
