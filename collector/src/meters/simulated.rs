//! Simulated facility meters (kind `simulated`), for `domesday-collector demo`
//! only: configuration loading refuses them anywhere else, and their ids start
//! with `sim-`. A simulated meter's register is a fixed multiple
//! (`per_it_kwh`, units of the meter per kWh) of the IT energy the ledger has
//! booked for the site's agents, so a laptop running the demo gets utility,
//! UPS, water and heat-reuse figures that move with its own load.
//!
//! It is read like any live meter (the same polling loop, counters and ledger
//! writer): each poll reads the ledger, and when the agents have reported
//! since the last poll it gives one register reading stamped with the instant
//! up to which their energy is booked. Between two such readings the ledger
//! spreads the meter's increment over the same span as the hosts' increments,
//! so a one-host demo has exactly the configured ratios minute by minute
//! (utility ÷ IT = `per_it_kwh` of the utility meter). The register is a pure
//! function of the booked energy: deterministic, monotonic, and consistent
//! across restarts of the demo on the same ledger. No indicator is written
//! here; they are computed from these readings as from a real meter's.

use std::sync::Arc;
use std::time::Duration;

use crate::config::MeterConfig;
use crate::ledger::LedgerReader;
use crate::ledger::query::EnergyQuery;
use crate::ledger::writer::now_ms;

use super::reading::{ReadError, Reading};

const MINUTE_MS: i64 = 60_000;
/// µJ in one kWh.
const UJ_PER_KWH: i128 = 3_600_000_000_000;

/// The register, in micro-units of the meter's unit, for `it_uj` µJ of IT
/// energy at `per_kwh_ppm` millionths of a unit per kWh: floor(kWh × factor × 10⁶),
/// in integers, so it never decreases when the energy grows.
pub fn register_micro(it_uj: i128, per_kwh_ppm: i128) -> i64 {
    let v = it_uj.max(0).saturating_mul(per_kwh_ppm.max(0)) / UJ_PER_KWH;
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The instant up to which the agents' energy is booked: the oldest last
/// sample of the hosts that reported within `gap` of `now` (a host silent for
/// longer is not waited for); `None` when none did.
pub fn settled_ms(last_samples: &[i64], now_ms: i64, gap_ms: i64) -> Option<i64> {
    last_samples.iter().copied().filter(|t| now_ms - t <= gap_ms).min()
}

/// A simulated meter's reader.
pub struct SimulatedReader {
    site: String,
    per_kwh_ppm: i128,
    gap_ms: i64,
    ledger: Arc<dyn LedgerReader>,
    last_ts: Option<i64>,
}

impl SimulatedReader {
    pub fn new(
        site: &str,
        m: &MeterConfig,
        gap: Duration,
        ledger: Arc<dyn LedgerReader>,
    ) -> Result<SimulatedReader, ReadError> {
        let factor = m
            .per_it_kwh
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| ReadError::Config(format!("meter {:?}: `per_it_kwh` is required", m.id)))?;
        Ok(SimulatedReader {
            site: site.to_string(),
            per_kwh_ppm: (factor * 1e6).round() as i128,
            gap_ms: i64::try_from(gap.as_millis()).unwrap_or(i64::MAX),
            ledger,
            last_ts: None,
        })
    }

    /// At most one reading: at the agents' settled instant, when it moved.
    pub async fn read(&mut self) -> Result<Vec<Reading>, ReadError> {
        let (ledger, site, gap) = (self.ledger.clone(), self.site.clone(), self.gap_ms);
        let booked = tokio::task::spawn_blocking(move || booked_it(ledger.as_ref(), &site, gap))
            .await
            .map_err(|e| ReadError::Io(format!("ledger read task: {e}")))?
            .map_err(|e| ReadError::Ledger(e.to_string()))?;
        let Some((ts, it_uj)) = booked else { return Ok(Vec::new()) };
        if self.last_ts.is_some_and(|l| ts <= l) {
            return Ok(Vec::new());
        }
        self.last_ts = Some(ts);
        Ok(vec![Reading { ts_ms: ts, value_micro: register_micro(it_uj, self.per_kwh_ppm) }])
    }
}

/// (settled instant, IT energy booked up to it) of a site. Nothing is booked
/// after a host's last sample, so the energy up to the end of the minute
/// holding the settled instant is the energy up to that instant (for other
/// hosts, a few seconds more: the simulated meter is then slightly ahead).
fn booked_it(
    ledger: &dyn LedgerReader,
    site: &str,
    gap_ms: i64,
) -> Result<Option<(i64, i128)>, crate::ledger::StoreError> {
    let now = now_ms();
    let lasts: Vec<i64> = ledger
        .hosts(site, now)?
        .iter()
        .filter_map(|h| h.last_sample.as_deref()?.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .collect();
    let Some(ts) = settled_ms(&lasts, now, gap_ms) else { return Ok(None) };
    let to_ms = ts.div_euclid(MINUTE_MS) * MINUTE_MS + MINUTE_MS;
    let q =
        EnergyQuery { site: site.to_string(), host: None, meter: None, role: Some("it_in".into()), from_ms: 0, to_ms };
    Ok(Some((ts, ledger.energy(&q)?.energy_uj())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Policy;
    use crate::ledger::sqlite::{SqliteReader, SqliteWriter};
    use crate::ledger::{Batch, CounterSample, LedgerWriter};
    use proptest::prelude::*;

    #[test]
    fn the_register_is_the_ratio_of_the_it_energy_in_micro_units() {
        // 1 kWh of IT at 1.4 kWh/kWh: 1.4 kWh = 1,400,000 µkWh.
        assert_eq!(register_micro(UJ_PER_KWH, 1_400_000), 1_400_000);
        // 0.5 L per kWh over 360 kJ (0.1 kWh): 0.05 L = 50,000 µL.
        assert_eq!(register_micro(360_000_000_000, 500_000), 50_000);
        assert_eq!(register_micro(-5, 1_400_000), 0);
    }

    #[test]
    fn only_hosts_that_reported_within_the_gap_are_waited_for() {
        assert_eq!(settled_ms(&[100_000, 95_000], 100_000, 300_000), Some(95_000));
        assert_eq!(settled_ms(&[100_000, 1_000], 400_000, 300_000), Some(100_000));
        assert_eq!(settled_ms(&[1_000], 400_000, 300_000), None);
        assert_eq!(settled_ms(&[], 400_000, 300_000), None);
    }

    proptest! {
        #[test]
        fn the_register_never_decreases(a in 0i128..1i128 << 80, d in 0i128..1i128 << 40, ppm in 1i128..1_000_000_000) {
            prop_assert!(register_micro(a + d, ppm) >= register_micro(a, ppm));
        }
    }

    #[tokio::test]
    async fn reads_follow_the_booked_host_energy() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("l.db");
        let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
        let now = now_ms();
        let t0 = now / MINUTE_MS * MINUTE_MS - 2 * MINUTE_MS;
        // 3.6 kJ per 10 s: 1 Wh per sample after the first.
        let samples = (0..7)
            .map(|i| CounterSample::host("demo", "h1", "rapl", "measured", t0 + i * 10_000, Some(i * 3_600_000_000)));
        w.apply(&[Batch { samples: samples.collect(), claims: vec![], intervals: vec![], quarantine: vec![] }], now)
            .expect("apply");
        let ledger: Arc<dyn LedgerReader> = Arc::new(SqliteReader::new(&db, Policy::default()));
        let m: MeterConfig = toml::from_str(
            "id = \"sim-utility\"\nrole = \"utility_in\"\nkind = \"simulated\"\nunit = \"kWh\"\nper_it_kwh = 1.4\n",
        )
        .expect("meter");
        let mut r = SimulatedReader::new("demo", &m, Duration::from_secs(600), ledger).expect("reader");
        // 6 Wh of IT booked up to the last sample: 8.4 Wh = 8,400 µkWh.
        assert_eq!(r.read().await.expect("read"), vec![Reading { ts_ms: t0 + 60_000, value_micro: 8_400 }]);
        // Nothing new from the agents: no new reading.
        assert_eq!(r.read().await.expect("again"), vec![]);
        let mut other = SimulatedReader::new("other-site", &m, Duration::from_secs(600), r.ledger.clone()).expect("r");
        assert_eq!(other.read().await.expect("no hosts"), vec![]);
    }
}
