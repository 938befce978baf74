//! The PostgreSQL ledger's reads that need no booking rule and no raw samples: the total energy per site and
//! role, the hourly energy of a site's meters of one role, and the retired hosts. The same answers as the SQLite
//! reader's on the same rows (tested against it). Not yet a [`super::super::LedgerReader`]: the energy of a
//! range, the hosts and their models also read the raw sample chunks, which come with the store.
//!
//! Each answer is read in one `REPEATABLE READ` transaction, so the journal and the tables it reads are one
//! snapshot (a materialization between the two reads could otherwise count an entry twice or not at all). Sums
//! are computed by PostgreSQL as `NUMERIC` and read back as text into i128, exactly.

use std::collections::BTreeMap;
use std::sync::Mutex;

use postgres::{Client, IsolationLevel, Transaction};

use super::PgError;
use crate::ledger::book::HOUR_MS;
use crate::ledger::journal;
use crate::ledger::{Retirement, SiteTotals};

/// Read-only queries on one connection (see the module's doc).
pub struct PgReader {
    client: Mutex<Client>,
}

fn parse_sum(s: &str) -> Result<i128, PgError> {
    s.parse().map_err(|_| PgError::Corrupt(format!("a sum {s:?} is not an integer of at most 39 digits")))
}

impl PgReader {
    pub fn new(client: Client) -> PgReader {
        PgReader { client: Mutex::new(client) }
    }

    fn read<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T, PgError>) -> Result<T, PgError> {
        let mut client = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tx =
            client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
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
