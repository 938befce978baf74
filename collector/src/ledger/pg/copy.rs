//! `migrate --to postgres://…`: a SQLite ledger moved into an empty PostgreSQL database, every row of every
//! table, then checked by asking both stores' readers the same energy questions.
//!
//! The order is what makes it safe:
//! 1. the SQLite ledger is brought to the current schema and its journal written to its tables (what a start of
//!    `serve` does), so every sample is in a table (PostgreSQL has no journal);
//! 2. SQLite's write lock is taken (`BEGIN IMMEDIATE`) and held to the end: the rows read are one snapshot, and a
//!    collector still running cannot book anything meanwhile (a journal row found then means one is: refused);
//! 3. one PostgreSQL transaction migrates the target's schema ([`super::schema::migrate_in`]), refuses a target
//!    that holds any ledger row, copies each table of [`TABLES`] with a binary `COPY` streamed row by row (a table
//!    is never held in memory), moves the identity sequences past the copied ids, compares the row counts, and
//!    commits;
//! 4. both readers answer the same questions (each host, meter, role and site, over the whole ledger in days and
//!    in hours and over a range cut at minutes; hosts, retirements, totals per role); any difference empties the
//!    target again and fails the command.
//!
//! The tables' columns are read from both schemas and must be the same, in the same order (the PostgreSQL schema
//! mirrors SQLite's, column for column); values go over as they are, except a roll-up sum SQLite had to keep as a
//! real (past i64): it is recomputed exactly from `hours` in PostgreSQL, where it is a `NUMERIC`.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres::Transaction;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use rusqlite::types::ValueRef;

use super::PgError;
use super::read::PgReader;
use crate::db::PgTarget;
use crate::ledger::book::{DAY_MS, HOUR_MS, MINUTE_MS};
use crate::ledger::query::{EnergyQuery, EnergyReport};
use crate::ledger::sqlite::{self, SqliteReader, SqliteWriter};
use crate::ledger::{HOST_ENERGY_METRIC, LedgerReader, Policy, StoreError};

/// Every table of the ledger, in the order they are copied. A table added to the schemas must be added here (a
/// test compares this list with both schemas).
pub const TABLES: &[&str] = &[
    "series",
    "hosts",
    "host_conflicts",
    "retired_hosts",
    "adjustments",
    "samples",
    "intervals",
    "minutes",
    "hours",
    "days",
    "site_hours",
    "site_days",
    "chunks",
    "quarantine",
    "journal",
];

/// Why a move was refused or failed. The PostgreSQL password is never in it.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("no SQLite ledger at {0}: give the ledger to move with --config (its `db`) or --db")]
    NoLedger(String),
    #[error(
        "the SQLite ledger was written while it was being read (its journal holds new samples): a collector is \
         still running on it; stop it (systemctl stop domesday-collector) and run migrate again"
    )]
    Written,
    #[error(
        "{target} already holds a ledger (table {table} has rows): migrate never merges into or overwrites a \
         ledger; give an empty database (CREATE DATABASE …) or drop this one's tables first"
    )]
    NotEmpty { target: String, table: String },
    #[error(
        "table {table}: its columns differ between SQLite ({sqlite}) and PostgreSQL ({pg}); use a collector \
         version whose two schemas match (this one's do in its tests)"
    )]
    Columns { table: String, sqlite: String, pg: String },
    #[error("table {table}, column {column}: {what}; nothing was moved (the PostgreSQL transaction rolled back)")]
    Value { table: String, column: String, what: String },
    #[error("table {table}: {copied} rows copied but PostgreSQL holds {found}; nothing was moved (rolled back)")]
    Count { table: String, copied: u64, found: i64 },
    #[error(
        "the PostgreSQL ledger does not answer as the SQLite one ({} of {checked} answers differ; the first: {}); \
         the PostgreSQL database was emptied again and the SQLite ledger is unchanged: keep running on SQLite and \
         report this",
        .differences.len(), .differences.first().map(String::as_str).unwrap_or("")
    )]
    Mismatch { checked: usize, differences: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl From<postgres::Error> for MigrateError {
    fn from(e: postgres::Error) -> Self {
        MigrateError::Pg(PgError::Db(e))
    }
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Store(StoreError::Sqlite(e))
    }
}

/// What a move did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows copied per table, in [`TABLES`] order.
    pub tables: Vec<(String, u64)>,
    /// Roll-up rows whose sum SQLite kept as a real, recomputed exactly from `hours`.
    pub recomputed: u64,
    /// Series (hosts and meters) whose answers were compared.
    pub series_checked: usize,
    /// Questions asked of both readers.
    pub answers_checked: usize,
    /// The journal materialization and schema upgrade of the SQLite ledger.
    pub prepare: Duration,
    /// The copy, from the first row read to the commit.
    pub copy: Duration,
    /// The comparison of the readers' answers.
    pub verify: Duration,
}

impl Summary {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.1).sum()
    }
}

/// A value as SQLite holds it, sent in PostgreSQL's binary format.
#[derive(Debug)]
enum Cell<'a> {
    Null,
    Int(i64),
    Float(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Numeric(i128),
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Int(v) => v.to_sql(ty, out),
            Cell::Float(v) => v.to_sql(ty, out),
            Cell::Text(v) => v.to_sql(ty, out),
            Cell::Bytes(v) => v.to_sql(ty, out),
            Cell::Numeric(v) => {
                put_numeric(*v, out);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT8, Type::FLOAT8, Type::TEXT, Type::BYTEA, Type::NUMERIC].contains(ty)
    }

    to_sql_checked!();
}

/// An integer in PostgreSQL's binary `NUMERIC` format: digit count, weight (the power of 10000 of the first
/// digit), sign, display scale, then the base-10000 digits, most significant first (trailing zero digits left
/// out, as PostgreSQL writes them).
fn put_numeric(v: i128, out: &mut BytesMut) {
    let mut abs = v.unsigned_abs();
    let mut digits: Vec<i16> = Vec::new();
    while abs > 0 {
        digits.push((abs % 10_000) as i16);
        abs /= 10_000;
    }
    let weight = digits.len() as i16 - 1;
    digits.reverse();
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let sign: u16 = if v < 0 { 0x4000 } else { 0 };
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&(if digits.is_empty() { 0 } else { weight }).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
}

/// The PostgreSQL column kinds of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Text,
    Bytes,
    Numeric,
}

impl Kind {
    fn of(data_type: &str) -> Option<Kind> {
        Some(match data_type {
            "bigint" => Kind::Int,
            "double precision" => Kind::Float,
            "text" => Kind::Text,
            "bytea" => Kind::Bytes,
            "numeric" => Kind::Numeric,
            _ => return None,
        })
    }

    fn pg_type(self) -> Type {
        match self {
            Kind::Int => Type::INT8,
            Kind::Float => Type::FLOAT8,
            Kind::Text => Type::TEXT,
            Kind::Bytes => Type::BYTEA,
            Kind::Numeric => Type::NUMERIC,
        }
    }
}

/// What a SQLite value becomes in a column of `kind`; `Ok(None)`: a real in a `NUMERIC` roll-up sum, recomputed
/// after the copy.
fn cell(v: ValueRef<'_>, kind: Kind) -> Result<Option<Cell<'_>>, String> {
    Ok(Some(match (v, kind) {
        (ValueRef::Null, _) => Cell::Null,
        (ValueRef::Integer(i), Kind::Int) => Cell::Int(i),
        (ValueRef::Integer(i), Kind::Numeric) => Cell::Numeric(i128::from(i)),
        (ValueRef::Real(_), Kind::Numeric) => return Ok(None),
        (ValueRef::Integer(i), Kind::Float) => Cell::Float(i as f64),
        (ValueRef::Real(f), Kind::Float) => Cell::Float(f),
        (ValueRef::Text(t), Kind::Text) => {
            Cell::Text(std::str::from_utf8(t).map_err(|_| "a text that is not UTF-8".to_string())?)
        }
        (ValueRef::Blob(b), Kind::Bytes) => Cell::Bytes(b),
        (ValueRef::Real(f), Kind::Int) => {
            return Err(format!(
                "the real {f} where an integer is kept (SQLite turns a sum past i64 into a real): the PostgreSQL \
                 ledger cannot hold it exactly"
            ));
        }
        (other, kind) => return Err(format!("a {:?} value where the column is {kind:?}", other.data_type())),
    }))
}

/// The columns of a SQLite table, in order.
fn sqlite_columns(conn: &rusqlite::Connection, table: &str) -> Result<Vec<String>, MigrateError> {
    let mut st = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
    let cols = st.query_map([table], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(cols)
}

/// The columns of a PostgreSQL table with their kinds, in order.
fn pg_columns(tx: &mut Transaction<'_>, table: &str) -> Result<Vec<(String, String)>, MigrateError> {
    let rows = tx.query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        &[&table],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Copies one table; returns the rows copied and how many roll-up sums must be recomputed.
fn copy_table(lite: &rusqlite::Connection, tx: &mut Transaction<'_>, table: &str) -> Result<(u64, u64), MigrateError> {
    let cols = sqlite_columns(lite, table)?;
    let pg = pg_columns(tx, table)?;
    if cols.is_empty() || pg.iter().map(|c| &c.0).ne(cols.iter()) {
        return Err(MigrateError::Columns {
            table: table.into(),
            sqlite: cols.join(", "),
            pg: pg.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    let kinds: Vec<Kind> = pg
        .iter()
        .map(|(c, t)| {
            Kind::of(t).ok_or_else(|| MigrateError::Value {
                table: table.into(),
                column: c.clone(),
                what: format!("PostgreSQL type {t} is not one the ledger uses"),
            })
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<Type> = kinds.iter().map(|k| k.pg_type()).collect();
    let list = cols.join(", ");
    let sink = tx.copy_in(&format!("COPY {table} ({list}) FROM STDIN (FORMAT binary)"))?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    let mut st = lite.prepare(&format!("SELECT {list} FROM {table}"))?;
    let mut rows = st.query([])?;
    let (mut n, mut recompute) = (0u64, 0u64);
    while let Some(r) = rows.next()? {
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.iter().enumerate() {
            match cell(r.get_ref(i)?, *kind) {
                Ok(Some(c)) => cells.push(c),
                Ok(None) => {
                    recompute += 1;
                    cells.push(Cell::Numeric(0));
                }
                Err(what) => return Err(MigrateError::Value { table: table.into(), column: cols[i].clone(), what }),
            }
        }
        let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        writer.write(&refs)?;
        n += 1;
    }
    let written = writer.finish()?;
    if written != n {
        return Err(MigrateError::Count { table: table.into(), copied: n, found: written as i64 });
    }
    Ok((n, recompute))
}

/// Recomputes the roll-ups' sums from `hours` (exact as `NUMERIC`): where SQLite kept one as a real.
const RECOMPUTE_ROLLUPS: &str = "
UPDATE site_hours r SET energy_uj = x.e FROM (
    SELECT s.site, s.method, s.quality, h.start_ms, SUM(h.energy_uj) AS e
    FROM hours h JOIN series s ON s.id = h.series_id WHERE s.metric = $1
    GROUP BY s.site, s.method, s.quality, h.start_ms) x
WHERE r.site = x.site AND r.method = x.method AND r.quality = x.quality AND r.start_ms = x.start_ms
  AND r.energy_uj IS DISTINCT FROM x.e;
UPDATE site_days r SET energy_uj = x.e FROM (
    SELECT s.site, s.method, s.quality, h.start_ms / 86400000 * 86400000 AS d, SUM(h.energy_uj) AS e
    FROM hours h JOIN series s ON s.id = h.series_id WHERE s.metric = $1
    GROUP BY s.site, s.method, s.quality, d) x
WHERE r.site = x.site AND r.method = x.method AND r.quality = x.quality AND r.start_ms = x.d
  AND r.energy_uj IS DISTINCT FROM x.e;
UPDATE days r SET energy_uj = x.e FROM (
    SELECT h.series_id, h.start_ms / 86400000 * 86400000 AS d, SUM(h.energy_uj) AS e
    FROM hours h JOIN series s ON s.id = h.series_id WHERE s.metric <> $1
    GROUP BY h.series_id, d) x
WHERE r.series_id = x.series_id AND r.start_ms = x.d AND r.energy_uj IS DISTINCT FROM x.e;
";

/// Moves the identity columns' sequences past the ids copied, so the next series, chunk or adjustment a
/// collector writes gets a fresh id.
fn advance_identities(tx: &mut Transaction<'_>) -> Result<(), MigrateError> {
    let cols: Vec<(String, String)> = tx
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY table_name",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (table, col) in cols {
        if !TABLES.contains(&table.as_str()) {
            continue;
        }
        tx.batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{col}'), \
             COALESCE((SELECT MAX({col}) FROM {table}), 1), (SELECT MAX({col}) FROM {table}) IS NOT NULL)"
        ))?;
    }
    Ok(())
}

/// The table of `tables` holding a row, if any.
fn first_non_empty(tx: &mut Transaction<'_>, tables: &[&str]) -> Result<Option<String>, MigrateError> {
    for t in tables {
        let any: bool = tx.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {t})"), &[])?.get(0);
        if any {
            return Ok(Some((*t).to_string()));
        }
    }
    Ok(None)
}

/// A site's hosts, meters and roles, each sorted.
type SiteSeries = (Vec<String>, Vec<String>, Vec<String>);

/// The questions both readers must answer alike, read from the SQLite snapshot.
#[derive(Debug, Default)]
struct Questions {
    /// Per site: its hosts, meters and roles.
    sites: BTreeMap<String, SiteSeries>,
    /// Ranges `[from, to)`: the whole ledger in UTC days, in hours, and a range cut at minutes inside it.
    ranges: Vec<(i64, i64)>,
}

fn questions(conn: &rusqlite::Connection) -> Result<Questions, MigrateError> {
    let mut q = Questions::default();
    let mut st =
        conn.prepare("SELECT DISTINCT site, host, meter, role FROM series ORDER BY site, host, meter, role")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let (site, host, meter, role): (String, String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let e = q.sites.entry(site).or_default();
        if meter.is_empty() {
            e.0.push(host);
        } else {
            e.1.push(meter);
        }
        e.2.push(role);
    }
    for (hosts, meters, roles) in q.sites.values_mut() {
        for v in [hosts, meters, roles] {
            v.sort();
            v.dedup();
        }
    }
    let span: Option<(i64, i64)> = conn.query_row("SELECT MIN(start_ms), MAX(start_ms) FROM hours", [], |r| {
        Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
    })?;
    if let Some((first, last)) = span {
        let (from, to) = (first.div_euclid(DAY_MS) * DAY_MS, last.div_euclid(DAY_MS) * DAY_MS + DAY_MS);
        q.ranges.push((from, to));
        // Whole hours: the site's hour roll-ups at the days' edges.
        if (first, last + HOUR_MS) != (from, to) {
            q.ranges.push((first, last + HOUR_MS));
        }
        // The middle third of the booked hours, its ends moved off the hours: minutes and raw points at both edges.
        let third = (last + HOUR_MS - first) / 3;
        let a = (first + third).div_euclid(MINUTE_MS) * MINUTE_MS + 7 * MINUTE_MS;
        let b = (first + 2 * third).div_euclid(MINUTE_MS) * MINUTE_MS + 23 * MINUTE_MS;
        if a < b {
            q.ranges.push((a, b));
        }
    }
    Ok(q)
}

/// The names of the fields of two answers that differ, for the report of a mismatch.
fn fields_differing(a: &EnergyReport, b: &EnergyReport) -> String {
    let (a, b) = (serde_json::to_value(a).unwrap_or_default(), serde_json::to_value(b).unwrap_or_default());
    let keys: BTreeSet<&String> = a.as_object().into_iter().chain(b.as_object()).flat_map(|o| o.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asks both readers every question; returns the number asked, the series covered and the differences.
fn compare(
    q: &Questions,
    lite: &dyn LedgerReader,
    pg: &dyn LedgerReader,
    now_ms: i64,
) -> Result<(usize, usize, Vec<String>), MigrateError> {
    let mut asked = 0;
    let mut diffs = Vec::new();
    let mut series = 0;
    let differ = |what: String, diffs: &mut Vec<String>| {
        if diffs.len() < 20 {
            diffs.push(what);
        } else if diffs.len() == 20 {
            diffs.push("…".into());
        }
    };
    let totals = (lite.site_totals()?, pg.site_totals()?);
    asked += 1;
    if totals.0 != totals.1 {
        differ(format!("total energy per site and role: SQLite {:?}, PostgreSQL {:?}", totals.0, totals.1), &mut diffs);
    }
    for (site, (hosts, meters, roles)) in &q.sites {
        series += hosts.len() + meters.len();
        let h = (lite.hosts(site, now_ms)?, pg.hosts(site, now_ms)?);
        let r = (lite.retired_hosts(site)?, pg.retired_hosts(site)?);
        asked += 2;
        if h.0 != h.1 {
            differ(format!("hosts of site {site}"), &mut diffs);
        }
        if r.0 != r.1 {
            differ(format!("retired hosts of site {site}"), &mut diffs);
        }
        let mut energy: Vec<EnergyQuery> = Vec::new();
        for &(from_ms, to_ms) in &q.ranges {
            let base = EnergyQuery { site: site.clone(), host: None, meter: None, role: None, from_ms, to_ms };
            energy.push(base.clone());
            energy.extend(roles.iter().map(|x| EnergyQuery { role: Some(x.clone()), ..base.clone() }));
            energy.extend(hosts.iter().map(|x| EnergyQuery { host: Some(x.clone()), ..base.clone() }));
            energy.extend(meters.iter().map(|x| EnergyQuery { meter: Some(x.clone()), ..base.clone() }));
            let m = (lite.host_models(site, from_ms, to_ms)?, pg.host_models(site, from_ms, to_ms)?);
            asked += 1;
            if m.0 != m.1 {
                differ(format!("host models of site {site}"), &mut diffs);
            }
        }
        for e in energy {
            let (a, b) = (lite.energy(&e)?, pg.energy(&e)?);
            asked += 1;
            if a != b {
                let who = match (&e.host, &e.meter, &e.role) {
                    (Some(h), ..) => format!("host {h}"),
                    (_, Some(m), _) => format!("meter {m}"),
                    (_, _, Some(r)) => format!("role {r}"),
                    _ => "the whole site".into(),
                };
                differ(
                    format!(
                        "energy of {who} of site {site} over [{}, {}): {} differ (SQLite {} µJ, {} samples; \
                         PostgreSQL {} µJ, {} samples)",
                        a.from,
                        a.to,
                        fields_differing(&a, &b),
                        a.energy_microjoules,
                        a.samples,
                        b.energy_microjoules,
                        b.samples
                    ),
                    &mut diffs,
                );
            }
        }
    }
    Ok((asked, series, diffs))
}

/// Moves the SQLite ledger at `path` into the empty PostgreSQL database `target` and checks it (see the module's
/// doc); `progress` is told each step.
pub fn migrate(
    path: &Path,
    target: &PgTarget,
    policy: Policy,
    progress: &mut dyn FnMut(&str),
) -> Result<Summary, MigrateError> {
    if !path.is_file() {
        return Err(MigrateError::NoLedger(path.display().to_string()));
    }
    let mut summary = Summary::default();
    let t = Instant::now();
    progress("bringing the SQLite ledger to the current schema and writing its journal to its tables");
    drop(SqliteWriter::open(path, policy)?);
    let lite = sqlite::open_writer(path)?;
    summary.prepare = t.elapsed();
    // Held to the end: one snapshot, and no collector can book anything meanwhile.
    lite.execute_batch("BEGIN IMMEDIATE")?;
    let out = move_locked(&lite, path, target, policy, &mut summary, progress);
    let _ = lite.execute_batch("ROLLBACK");
    out.map(|()| summary)
}

fn move_locked(
    lite: &rusqlite::Connection,
    path: &Path,
    target: &PgTarget,
    policy: Policy,
    summary: &mut Summary,
    progress: &mut dyn FnMut(&str),
) -> Result<(), MigrateError> {
    let journal: i64 = lite.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))?;
    if journal > 0 {
        return Err(MigrateError::Written);
    }
    let q = questions(lite)?;
    let mut client = super::connect(target)?;
    let t = Instant::now();
    {
        let mut tx = client.transaction()?;
        let m = super::schema::migrate_in(&mut tx)?;
        if let Some(table) = first_non_empty(&mut tx, TABLES)? {
            return Err(MigrateError::NotEmpty { target: target.to_string(), table });
        }
        progress(&format!("{target}: schema at version {} (was {}); copying", m.to, m.from));
        for table in TABLES {
            let t = Instant::now();
            let (rows, recompute) = copy_table(lite, &mut tx, table)?;
            summary.recomputed += recompute;
            progress(&format!("  {table}: {rows} rows in {:.1} s", t.elapsed().as_secs_f64()));
            summary.tables.push(((*table).to_string(), rows));
        }
        if summary.tables.iter().any(|(t, n)| t == "journal" && *n > 0) {
            return Err(MigrateError::Written);
        }
        if summary.recomputed > 0 {
            progress(&format!(
                "  {} roll-up sums SQLite kept as reals (past i64): recomputed exactly from hours",
                summary.recomputed
            ));
            for stmt in RECOMPUTE_ROLLUPS.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.execute(stmt, &[&HOST_ENERGY_METRIC])?;
            }
        }
        advance_identities(&mut tx)?;
        for (table, copied) in &summary.tables {
            let found: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?.get(0);
            if found != *copied as i64 {
                return Err(MigrateError::Count { table: table.clone(), copied: *copied, found });
            }
        }
        // The planner's statistics now, not at autovacuum's next pass: the first questions are planned on them.
        tx.batch_execute(&format!("ANALYZE {}", TABLES.join(", ")))?;
        tx.commit()?;
    }
    summary.copy = t.elapsed();
    progress(&format!(
        "copied {} rows in {:.1} s; comparing the answers of both ledgers",
        summary.rows(),
        summary.copy.as_secs_f64()
    ));
    let t = Instant::now();
    let sqlite_reader = SqliteReader::new(path, policy);
    let pg_reader = PgReader::open(target, policy)?;
    let now_ms = crate::ledger::writer::now_ms();
    let checked = compare(&q, &sqlite_reader, &pg_reader, now_ms);
    drop(pg_reader);
    summary.verify = t.elapsed();
    let failure = match checked {
        Ok((asked, series, diffs)) => {
            summary.answers_checked = asked;
            summary.series_checked = series;
            (!diffs.is_empty()).then_some(MigrateError::Mismatch { checked: asked, differences: diffs })
        }
        Err(e) => Some(e),
    };
    if let Some(e) = failure {
        // A ledger that answers otherwise must not be started on: the target is left empty, as it was.
        client.batch_execute(&format!("TRUNCATE {}", TABLES.join(", ")))?;
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
