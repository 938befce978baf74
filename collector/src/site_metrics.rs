//! The collector's site gauges (`domesday_site_pue{window}` and friends),
//! recomputed from the ledger every `gauges_refresh` (1 minute) on a background task so a scrape
//! only copies them. Values come from the same `site_report` + `indicators`
//! path as the API: one computation, two formats.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use domesday_model::catalog::{
    GRID_INTENSITY, HOST_POWER_BUDGET, HOST_RETIRED, SITE_COVERAGE, SITE_CUE, SITE_DCIE, SITE_EMISSIONS, SITE_ERF,
    SITE_INFO, SITE_POWER, SITE_PUE, SITE_PUE_TARGET, SITE_REF, SITE_WUE,
};
use domesday_model::exposition::Sample;

use crate::carbon::service::CarbonService;
use crate::config::{CollectorConfig, Site};
use crate::indicators::period::{Period, Window};
use crate::indicators::{Indicator, Name};
use crate::ledger::query::{EnergyQuery, EnergyReport, HostRow};
use crate::ledger::writer::now_ms;
use crate::ledger::{HostModel, LedgerReader, Retirement, StoreError};
use crate::site_report;

fn text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn indicator_samples(site: &str, window: &str, list: &[Indicator], out: &mut Vec<Sample>) {
    for i in list {
        let Some(v) = i.value else { continue };
        if i.hall.is_some() {
            continue;
        }
        let cat = i.category.map(|c| c.label().to_string()).unwrap_or_default();
        let (s, w) = (site.to_string(), window.to_string());
        match i.name {
            Name::Pue => out.push(Sample::new(&SITE_PUE, vec![s, cat, w], v)),
            Name::Dcie => out.push(Sample::new(&SITE_DCIE, vec![s, cat, w], v)),
            Name::Cue => out.push(Sample::new(&SITE_CUE, vec![s, cat, text(&i.basis), w], v)),
            Name::Wue => out.push(Sample::new(&SITE_WUE, vec![s, cat, text(&i.water), w], v)),
            Name::Erf => out.push(Sample::new(&SITE_ERF, vec![s, w], v)),
            Name::Ref => out.push(Sample::new(&SITE_REF, vec![s, w], v)),
            Name::Ere | Name::Ppue => {}
        }
    }
}

/// The numbers alert rules compare with (PromQL cannot compare with a label):
/// the PUE target, the host power budgets and the retired hosts.
fn threshold_samples(
    s: &crate::config::SiteConfig,
    retired: Result<Vec<Retirement>, StoreError>,
    out: &mut Vec<Sample>,
) {
    if let Some(t) = s.pue_target {
        out.push(Sample::new(&SITE_PUE_TARGET, vec![s.id.clone()], t));
    }
    for (host, w) in &s.host_power_budget_watts {
        out.push(Sample::new(&HOST_POWER_BUDGET, vec![s.id.clone(), host.clone()], *w));
    }
    match retired {
        Ok(list) => {
            for r in list {
                out.push(Sample::new(&HOST_RETIRED, vec![s.id.clone(), r.host], 1.0));
            }
        }
        Err(e) => tracing::warn!(site = %s.id, error = %e, "retired hosts not read"),
    }
}

/// Time-matched emissions per site: (hour computed up to, grams).
type Emitted = BTreeMap<String, (i64, f64)>;

/// Computes every site gauge once.
pub async fn compute(
    reader: &dyn LedgerReader,
    cfg: &CollectorConfig,
    sites: &[Site],
    carbon: Option<&CarbonService>,
    emitted: &mut Emitted,
) -> Vec<Sample> {
    let now = now_ms();
    let mut out = Vec::new();
    for site in sites {
        let s = &site.config;
        out.push(Sample::new(
            &SITE_INFO,
            vec![
                s.id.clone(),
                s.name.clone(),
                s.region.clone(),
                s.operator.clone(),
                s.timezone.clone(),
                s.pue_target.map(|p| p.to_string()).unwrap_or_default(),
            ],
            1.0,
        ));
        threshold_samples(s, reader.retired_hosts(&s.id), &mut out);
        let Ok(tz) = jiff::tz::TimeZone::get(&s.timezone) else { continue };
        let params = site_report::params(s, cfg.carbon.as_ref());
        let mut roles: Vec<String> = s.meters.iter().map(|m| m.role.clone()).collect();
        roles.push("it_in".into());
        roles.sort();
        roles.dedup();
        let minute = now / 60_000 * 60_000;
        for role in &roles {
            let q = EnergyQuery {
                site: s.id.clone(),
                host: None,
                meter: None,
                role: Some(role.clone()),
                from_ms: minute - 300_000,
                to_ms: minute,
            };
            if let Ok(r) = reader.energy_totals(&q)
                && r.volume_liters.is_none()
                && (r.samples > 0 || r.coverage_ratio > 0.0)
            {
                out.push(Sample::new(&SITE_POWER, vec![s.id.clone(), role.clone()], r.energy_joules / 300.0));
            }
        }
        for w in Window::ALL {
            let Ok((from, to)) = w.bounds(now, &tz) else { continue };
            let (from, to) = (from / 60_000 * 60_000, to / 60_000 * 60_000);
            if to <= from {
                continue;
            }
            for role in &roles {
                let q = EnergyQuery {
                    site: s.id.clone(),
                    host: None,
                    meter: None,
                    role: Some(role.clone()),
                    from_ms: from,
                    to_ms: to,
                };
                if let Ok(r) = reader.energy_totals(&q) {
                    out.push(Sample::new(
                        &SITE_COVERAGE,
                        vec![s.id.clone(), role.clone(), w.as_str().into()],
                        r.coverage_ratio,
                    ));
                }
            }
            let period = Period { from_ms: from, to_ms: to, interim: true };
            let cats = site_report::implied_categories(s);
            match site_report::period_indicators(reader, s, &params, carbon, period, now, &cats).await {
                Ok(list) => indicator_samples(&s.id, w.as_str(), &list, &mut out),
                Err(e) => tracing::warn!(site = %s.id, window = w.as_str(), error = %e, "site indicators failed"),
            }
        }
        if let Some(c) = carbon {
            // Recomputed over the whole utility history each time: readings imported late
            // (a CSV of last month) still count, and the total only grows with them.
            let last_hour = now / 3_600_000 * 3_600_000;
            let first =
                reader.role_hourly(&s.id, "utility_in", 0, last_hour).ok().and_then(|h| h.first().map(|(t, _)| *t));
            let entry = emitted.entry(s.id.clone()).or_insert((0, 0.0));
            if let Some(first) = first {
                match site_report::grid_carbon(reader, s, c, first, last_hour, now).await {
                    Ok(g) => *entry = (last_hour, g.map(|g| g.grams).unwrap_or(0.0)),
                    Err(e) => tracing::warn!(site = %s.id, error = %e, "emissions not updated"),
                }
            }
            out.push(Sample::new(&SITE_EMISSIONS, vec![s.id.clone(), "location".into()], entry.1));
        }
    }
    if let Some(c) = carbon
        && let Some(p) = c.current(now).await
    {
        out.push(Sample::new(&GRID_INTENSITY, vec![c.grid_zone(), c.source_name(), text(&c.basis())], p.g_per_kwh));
    }
    out
}

/// A reader that answers a repeated energy question from its first answer.
/// One refresh asks the same site-wide question twice per window (coverage,
/// then the indicators' totals); over 50,000 hosts each costs a few hundred
/// milliseconds. It lives for one refresh, so answers are never staler than it.
struct OnceReader<'a> {
    inner: &'a dyn LedgerReader,
    /// Keyed by whether the answer is [`LedgerReader::energy_totals`]'s.
    energy: Mutex<std::collections::HashMap<(bool, EnergyQuery), EnergyReport>>,
}

impl OnceReader<'_> {
    fn once(
        &self,
        totals: bool,
        q: &EnergyQuery,
        ask: impl FnOnce(&EnergyQuery) -> Result<EnergyReport, StoreError>,
    ) -> Result<EnergyReport, StoreError> {
        let key = (totals, q.clone());
        if let Some(r) = self.energy.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(r);
        }
        let r = ask(q)?;
        if let Ok(mut m) = self.energy.lock() {
            m.insert(key, r.clone());
        }
        Ok(r)
    }
}

impl LedgerReader for OnceReader<'_> {
    fn energy(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.once(false, q, |q| self.inner.energy(q))
    }
    fn energy_totals(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.once(true, q, |q| self.inner.energy_totals(q))
    }
    fn hosts(&self, site: &str, now_ms: i64) -> Result<Vec<HostRow>, StoreError> {
        self.inner.hosts(site, now_ms)
    }
    fn host_models(&self, site: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(String, HostModel)>, StoreError> {
        self.inner.host_models(site, from_ms, to_ms)
    }
    fn site_totals(&self) -> Result<Vec<(String, String, i128)>, StoreError> {
        self.inner.site_totals()
    }
    fn role_hourly(&self, site: &str, role: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, i128)>, StoreError> {
        self.inner.role_hourly(site, role, from_ms, to_ms)
    }
    fn retired_hosts(&self, site: &str) -> Result<Vec<Retirement>, StoreError> {
        self.inner.retired_hosts(site)
    }
}

/// Refreshes `target` every `gauges_refresh` until the task is dropped.
pub async fn run(
    reader: Arc<dyn LedgerReader>,
    cfg: CollectorConfig,
    sites: Vec<Site>,
    carbon: Option<Arc<CarbonService>>,
    target: Arc<Mutex<Vec<Sample>>>,
) {
    let mut emitted = Emitted::new();
    let mut tick = tokio::time::interval(cfg.gauges_refresh.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let once = OnceReader { inner: reader.as_ref(), energy: Mutex::default() };
        let samples =
            crate::site_report::with_blocking_reads(compute(&once, &cfg, &sites, carbon.as_deref(), &mut emitted))
                .await;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "site gauges refreshed");
        if let Ok(mut t) = target.lock() {
            *t = samples;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Policy;
    use crate::ledger::sqlite::{SqliteReader, SqliteWriter};
    use crate::ledger::testing::Counting;
    use crate::ledger::{Batch, CounterSample, LedgerWriter};

    #[test]
    fn one_refresh_asks_each_energy_question_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("l.db");
        let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
        let t0 = 1_767_225_600_000;
        let samples =
            (0..5).map(|i| CounterSample::host("s", "h1", "rapl", "measured", t0 + i * 60_000, Some(i * 1_000_000)));
        w.apply(&[Batch { samples: samples.collect(), claims: vec![], intervals: vec![], quarantine: vec![] }], t0)
            .expect("apply");
        let inner = Counting::new(SqliteReader::new(&db, Policy::default()));
        let once = OnceReader { inner: &inner, energy: Mutex::default() };
        let q = |to: i64| EnergyQuery {
            site: "s".into(),
            host: None,
            meter: None,
            role: Some("it_in".into()),
            from_ms: t0,
            to_ms: to,
        };
        let first = once.energy(&q(t0 + 600_000)).expect("first");
        assert_eq!(first.energy_microjoules, "4000000");
        assert_eq!(once.energy(&q(t0 + 600_000)).expect("again"), first);
        assert_eq!(once.energy(&q(t0 + 120_000)).expect("other").energy_microjoules, "2000000");
        assert_eq!(inner.energy_asked(), 2);
    }
}
