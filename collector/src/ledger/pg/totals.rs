//! The ledger's total energy per (site, role) read from the day roll-ups (`site_days` for the hosts, whose series
//! are all `it_in`, `days` for the meters): a few rows per site and day, whatever the number of hosts, so a
//! collector can re-read them often. That is how its `domesday_site_energy_joules_total` follows what the other
//! collectors and the one-shot commands commit to a shared database: every [`READ_EVERY`] at most, on the writer's
//! thread between its own commits, with no row that every commit would have to update.

use std::collections::BTreeMap;
use std::time::Duration;

use postgres::GenericClient;

use super::PgError;
use crate::ledger::SiteTotals;

/// How often the writer re-reads the totals (when it has work, or at the collector's `gauges_refresh`).
pub const READ_EVERY: Duration = Duration::from_secs(10);

/// The totals per (site, role), µJ (volumes in their micro-units), in one statement (one snapshot).
pub fn from_rollups(client: &mut impl GenericClient) -> Result<SiteTotals, PgError> {
    let mut totals: BTreeMap<(String, String), i128> = BTreeMap::new();
    for r in client.query(
        "SELECT site, 'it_in', SUM(energy_uj)::text FROM site_days GROUP BY site \
         UNION ALL \
         SELECT se.site, se.role, SUM(d.energy_uj)::text FROM days d JOIN series se ON se.id = d.series_id \
         GROUP BY se.site, se.role",
        &[],
    )? {
        let sum: &str = r.get(2);
        let sum: i128 = sum
            .parse()
            .map_err(|_| PgError::Corrupt(format!("a sum {sum:?} is not an integer of at most 39 digits")))?;
        *totals.entry((r.get(0), r.get(1))).or_insert(0) += sum;
    }
    Ok(totals.into_iter().map(|((s, r), e)| (s, r, e)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::pg::read::PgReader;
    use crate::ledger::pg::schema;
    use crate::ledger::pg::store::PgWriter;
    use crate::ledger::pg::test_cluster::Cluster;
    use crate::ledger::{Batch, CounterSample, LedgerWriter, Policy, Provenance};

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const HOUR: i64 = 3_600_000;

    /// Host samples of `host` every 10 minutes over two days, and a utility meter's register (kWh) likewise.
    fn batches(host: &str, meter: &str) -> Vec<Batch> {
        (0..2 * 24 * 6)
            .map(|i| Batch {
                samples: vec![
                    CounterSample::host("caen-1", host, "rapl", "measured", T0 + i * 600_000, Some(i * 7_000_001)),
                    CounterSample::meter("caen-1", meter, "utility_in", "kWh", T0 + i * 600_000, i * 1_250_000),
                ],
                ..Batch::default()
            })
            .collect()
    }

    /// A collector's writer sees, within [`READ_EVERY`], what another writer on the same database committed: the
    /// totals it reports are the ledger's (as the hour tables sum them), its own commits and the other's, meters,
    /// hosts and corrections; in between it reports nothing (no read at each commit).
    #[test]
    fn a_writer_reports_the_totals_another_writer_committed() {
        let cluster = Cluster::start();
        let connect = cluster.database();
        let mut c = connect();
        schema::migrate(&mut c).expect("migrate");
        let (mut mine, mut other) = (PgWriter::new(c, Policy::default()), PgWriter::new(connect(), Policy::default()));
        let reader = PgReader::new(connect());
        mine.apply(&batches("h1", "edf"), T0 + 3 * 24 * HOUR).expect("mine");
        let first = mine.totals_if_changed_elsewhere().expect("totals").expect("the first call reads them");
        assert_eq!(first, reader.site_totals().expect("totals"));
        assert_eq!(mine.totals_if_changed_elsewhere().expect("totals"), None, "not read again at once");
        // Another collector books another host and meter; a command corrects a meter.
        other.apply(&batches("h2", "gas"), T0 + 3 * 24 * HOUR).expect("other");
        let who = Provenance { author: "ops".into(), reason: "test".into(), recorded_ms: T0 };
        other.correct("caen-1", "edf", "utility_in", "kWh", T0, T0 + HOUR, -3_000_000, &who).expect("correct");
        let want = reader.site_totals().expect("totals");
        assert_ne!(want, first);
        std::thread::sleep(READ_EVERY);
        let got = mine.totals_if_changed_elsewhere().expect("totals").expect("read again after READ_EVERY");
        assert_eq!(got, want);
        let it = want.iter().find(|(s, r, _)| s == "caen-1" && r == "it_in").expect("it_in").2;
        let one_host = first.iter().find(|(s, r, _)| s == "caen-1" && r == "it_in").expect("it_in").2;
        assert_eq!(it, 2 * one_host, "both hosts");
    }
}
