//! Feeds the indicators with the ledger: for a site and a period, the energy
//! of each configured meter summed by role (and by hall for IT metering points
//! and cooling), the agents' host energy as `it_in` when no `it_in` meter is
//! configured, the meters that reported nothing, and the time-matched grid
//! emissions. The maths is `indicators`'; this module only gathers inputs.

use std::collections::BTreeMap;

use crate::carbon::embodied::period_embodied;
use crate::carbon::service::CarbonService;
use crate::config::SiteConfig;
use crate::indicators::emissions::{EnergyInterval, time_matched};
use crate::indicators::inputs::{Amount, GridCarbon, HallTotals, MissingMeter, SiteParams, SiteTotals, kwh_from_uj};
use crate::indicators::period::{Period, Step, split};
use crate::indicators::{Category, Indicator, IndicatorsReport, PeriodReport, Role, category_of, site_indicators};
use crate::ledger::query::{EnergyQuery, rfc3339};
use crate::ledger::{LedgerReader, StoreError};

/// Why a report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Period(String),
}

fn set(slot: &mut Option<Amount>, a: Amount) {
    *slot = Some(match slot.take() {
        Some(old) => old + a,
        None => a,
    });
}

/// The PUE categories a site's configuration implies: category 3 always (the
/// site's `it_in` is the agents' host energy unless an `it_in` meter replaces
/// it), and the category of each configured IT metering point (`ups_out` 1,
/// `pdu_out` 2). Each of them appears in the indicators answer, refused
/// `missing_it_energy_for_category` when it cannot be computed.
pub fn implied_categories(site: &SiteConfig) -> Vec<Category> {
    let mut cats: Vec<Category> =
        site.meters.iter().filter_map(|m| Role::parse(&m.role).and_then(category_of)).collect();
    cats.push(Category::ItInput);
    cats.sort();
    cats.dedup();
    cats
}

/// Parses the `category` query parameter: `1`, `2`, `3`, comma-separated.
pub fn parse_categories(v: &str) -> Result<Vec<Category>, String> {
    let mut cats = Vec::new();
    for part in v.split(',').map(str::trim) {
        let c = Category::ALL
            .into_iter()
            .find(|c| c.label() == part)
            .ok_or_else(|| format!("category {part:?} is not a PUE category: use 1, 2 or 3 (comma-separated)"))?;
        cats.push(c);
    }
    cats.sort();
    cats.dedup();
    Ok(cats)
}

/// Site parameters from its meters and the carbon settings.
pub fn params(site: &SiteConfig, carbon: Option<&crate::carbon::config::CarbonConfig>) -> SiteParams {
    let mut p = SiteParams {
        kwh_per_litre: site.meters.iter().find(|m| m.role == "fuel_in").and_then(|m| m.kwh_per_litre),
        ..SiteParams::default()
    };
    if let Some(c) = carbon {
        c.apply(&mut p);
    }
    p
}

/// The period totals of a site. `now_ms` bounds the nameplate estimates of
/// IT loads without an agent (no energy is estimated for the future).
pub fn totals(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
) -> Result<SiteTotals, StoreError> {
    let mut t = SiteTotals::default();
    let q = |meter: Option<String>, role: Option<&str>| EnergyQuery {
        site: site.id.clone(),
        host: None,
        meter,
        role: role.map(str::to_string),
        from_ms,
        to_ms,
    };
    let mut halls: BTreeMap<String, HallTotals> = BTreeMap::new();
    // Meters of IT loads without an agent (`[[sites.it_loads]]`): added to the
    // agents' category 3 energy when that is the site's it_in.
    let load_meter = |id: &str| site.it_loads.iter().any(|l| l.meter.as_deref() == Some(id));
    let agents_it = !site.meters.iter().any(|m| m.role == "it_in" && !load_meter(&m.id));
    let mut loads: Option<Amount> = None;
    for m in &site.meters {
        let Some(role) = Role::parse(&m.role) else { continue };
        let r = reader.energy_totals(&q(Some(m.id.clone()), None))?;
        if r.samples == 0 && r.coverage_ratio == 0.0 {
            t.missing_meters.push(MissingMeter { meter: m.id.clone(), role, hall: m.hall.clone() });
        }
        if agents_it && load_meter(&m.id) {
            set(&mut loads, Amount::from_uj(r.energy_uj(), 0, r.coverage_ratio));
            continue;
        }
        let amount = match (r.volume_microliters.as_deref(), role.report_unit()) {
            (Some(ul), "m3") => Amount {
                value: ul.parse::<f64>().unwrap_or(0.0) / 1e9,
                estimated: 0.0,
                coverage_ratio: r.coverage_ratio,
            },
            (Some(ul), _) => Amount {
                value: ul.parse::<f64>().unwrap_or(0.0) / 1e6,
                estimated: 0.0,
                coverage_ratio: r.coverage_ratio,
            },
            (None, _) => Amount::from_uj(r.energy_uj(), 0, r.coverage_ratio),
        };
        let hall = halls.entry(m.hall.clone().unwrap_or_default()).or_default();
        match role {
            Role::UtilityIn => set(&mut t.utility_in, amount),
            Role::BackupGenOut => set(&mut t.backup_gen_out, amount),
            Role::FuelIn => set(&mut t.fuel_in, amount),
            Role::OnsiteRenewableConsumed => set(&mut t.onsite_renewable_consumed, amount),
            Role::OnsiteRenewableExported => set(&mut t.onsite_renewable_exported, amount),
            Role::ChilledWaterIn => set(&mut t.chilled_water_in, amount),
            Role::WaterIn => set(&mut t.water_in, amount),
            Role::WaterPotableIn => set(&mut t.water_potable_in, amount),
            Role::HeatReusedOut => set(&mut t.heat_reused_out, amount),
            Role::UpsOut => set(&mut hall.ups_out, amount),
            Role::PduOut => set(&mut hall.pdu_out, amount),
            Role::ItIn => set(&mut hall.it_in, amount),
            Role::Cooling => set(&mut hall.cooling, amount),
        }
    }
    // Without an it_in meter, category 3 IT energy is the sum of the agents'
    // host energy, plus the IT loads without an agent (metered outlets and
    // nameplate estimates) of the expected inventory.
    if agents_it {
        let r = reader.energy_totals(&q(None, Some("it_in")))?;
        let mut it = (r.samples > 0 || r.coverage_ratio > 0.0).then(|| {
            let estimated = (r.estimated_joules * 1e6).round() as i128;
            Amount::from_uj(r.energy_uj(), estimated, r.coverage_ratio)
        });
        if !site.expected_hosts.is_empty() {
            let mut reported = 0usize;
            for h in &site.expected_hosts {
                let hr = reader.energy_totals(&EnergyQuery { host: Some(h.clone()), ..q(None, Some("it_in")) })?;
                if hr.samples > 0 || hr.coverage_ratio > 0.0 {
                    reported += 1;
                } else {
                    t.missing_meters.push(MissingMeter { meter: format!("host:{h}"), role: Role::ItIn, hall: None });
                }
            }
            let inventory = reported as f64 / site.expected_hosts.len() as f64;
            let a = it.get_or_insert(Amount { value: 0.0, estimated: 0.0, coverage_ratio: 0.0 });
            a.coverage_ratio = a.coverage_ratio.min(inventory);
        }
        let span_ms = (to_ms.min(now_ms) - from_ms).max(0);
        for l in &site.it_loads {
            if let Some(w) = l.nameplate_watts {
                // W × ms = mJ; × 1000 = µJ. All of it estimated.
                let uj = (w * span_ms as f64 * 1000.0).round() as i128;
                set(&mut loads, Amount::from_uj(uj, uj, 1.0));
            }
        }
        // Loads without an agent complete the agents' energy; alone they are not the site's IT.
        if let (Some(l), Some(_)) = (loads, it) {
            set(&mut it, l);
        }
        if let Some(a) = it {
            halls.entry(String::new()).or_default().it_in = Some(a);
        }
    }
    // Declared guarantees of origin and PPA energy (`[[sites.annual]]`).
    t.certificates = crate::reports::declared::certificates(site, from_ms, to_ms);
    halls.retain(|_, h| h.ups_out.is_some() || h.pdu_out.is_some() || h.it_in.is_some() || h.cooling.is_some());
    t.halls = halls;
    Ok(t)
}

const HOUR_MS: i64 = 3_600_000;

/// The site's `utility_in` energy over `[from_ms, to_ms)` as intervals for
/// time matching: whole hours from the hourly table, and the parts of the
/// first and last hours that the period cuts (a rolling window, a period
/// ending now) from the ledger at minute resolution, so that a period not
/// aligned on hours has all of its grid energy, not only its whole hours.
pub fn utility_intervals(
    reader: &dyn LedgerReader,
    site: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<EnergyInterval>, StoreError> {
    let first = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let end = (to_ms + HOUR_MS - 1).div_euclid(HOUR_MS) * HOUR_MS;
    let mut out = Vec::new();
    for (h, uj) in reader.role_hourly(site, "utility_in", first, end)? {
        let (a, b) = (h.max(from_ms), (h + HOUR_MS).min(to_ms));
        if a >= b {
            continue;
        }
        let uj = if a == h && b == h + HOUR_MS {
            uj
        } else {
            let q = EnergyQuery {
                site: site.to_string(),
                host: None,
                meter: None,
                role: Some("utility_in".into()),
                from_ms: a,
                to_ms: b,
            };
            reader.energy(&q)?.energy_uj()
        };
        out.push(EnergyInterval { start_ms: a, end_ms: b, kwh: kwh_from_uj(uj) });
    }
    Ok(out)
}

/// Time-matched grid emissions of the site's `utility_in` over a period.
pub async fn grid_carbon(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    carbon: &CarbonService,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
) -> Result<Option<GridCarbon>, StoreError> {
    let energy = utility_intervals(reader, &site.id, from_ms, to_ms)?;
    if energy.is_empty() {
        return Ok(None);
    }
    let series = carbon.series(from_ms, to_ms, now_ms).await;
    match time_matched(&energy, &series.points, carbon.fallback_g_per_kwh()) {
        Ok(e) => Ok(Some(GridCarbon::from_emissions(&e, &series.source, series.basis))),
        Err(e) => {
            tracing::warn!(site = %site.id, error = %e, "no time-matched emissions for the period");
            Ok(None)
        }
    }
}

/// The inputs of one period's indicators: the site's totals and the grid's
/// time-matched emissions. The EED declaration reads its energies from these
/// same inputs, so its figures and the indicators' cannot differ.
pub async fn period_inputs(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    carbon: Option<&CarbonService>,
    period: Period,
    now_ms: i64,
) -> Result<(SiteTotals, Option<GridCarbon>), StoreError> {
    let t = totals(reader, site, period.from_ms, period.to_ms, now_ms)?;
    let grid = match carbon {
        Some(c) => grid_carbon(reader, site, c, period.from_ms, period.to_ms, now_ms).await?,
        None => None,
    };
    Ok((t, grid))
}

/// Indicators of one period, for each of `categories`.
pub async fn period_indicators(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    params: &SiteParams,
    carbon: Option<&CarbonService>,
    period: Period,
    now_ms: i64,
    categories: &[Category],
) -> Result<Vec<Indicator>, StoreError> {
    let (t, grid) = period_inputs(reader, site, carbon, period, now_ms).await?;
    Ok(site_indicators(&t, params, grid.as_ref(), categories))
}

/// Runs `f`, whose ledger reads are synchronous (SQLite), without stalling the
/// runtime: on a multi-thread runtime the worker hands its other tasks (ingest
/// requests) to another thread for the duration. A site-wide period over
/// 50,000 hosts reads for seconds; run in place it held a worker that long.
pub async fn with_blocking_reads<F: std::future::Future>(f: F) -> F::Output {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| Handle::current().block_on(f)),
        _ => f.await,
    }
}

/// The `GET /api/v1/sites/{site}/indicators` answer: the indicators of each
/// of `categories` (the caller's), else of the site's [`implied_categories`].
#[allow(clippy::too_many_arguments)]
pub async fn report(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    params: &SiteParams,
    carbon: Option<&CarbonService>,
    from_ms: i64,
    to_ms: i64,
    step: &str,
    now_ms: i64,
    categories: Option<&[Category]>,
) -> Result<IndicatorsReport, ReportError> {
    let implied = implied_categories(site);
    let categories = categories.unwrap_or(&implied);
    let step = Step::parse(step).map_err(|e| ReportError::Period(e.to_string()))?;
    let tz = jiff::tz::TimeZone::get(&site.timezone).map_err(|e| ReportError::Period(e.to_string()))?;
    let periods = split(from_ms, to_ms, step, &tz, now_ms).map_err(|e| ReportError::Period(e.to_string()))?;
    let mut out = Vec::with_capacity(periods.len());
    for p in periods {
        let indicators = period_indicators(reader, site, params, carbon, p, now_ms, categories).await?;
        let models = reader.host_models(&site.id, p.from_ms, p.to_ms)?;
        let embodied =
            period_embodied(models.iter().map(|(_, m)| (m.vendor.as_str(), m.product.as_str())), p.from_ms, p.to_ms);
        out.push(PeriodReport {
            from: rfc3339(p.from_ms),
            to: rfc3339(p.to_ms),
            interim: p.interim,
            indicators,
            embodied,
        });
    }
    Ok(IndicatorsReport { site: site.id.clone(), from: rfc3339(from_ms), to: rfc3339(to_ms), step, periods: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carbon::config::CarbonConfig;
    use crate::ledger::Policy;
    use crate::ledger::sqlite::{SqliteReader, SqliteWriter};
    use crate::ledger::{Batch, CounterSample, LedgerWriter};

    #[tokio::test]
    async fn a_period_cut_inside_hours_has_the_emissions_of_all_its_grid_energy() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("l.db");
        let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
        let h = 1_767_225_600_000; // 2026-01-01T00:00Z
        // A utility register gaining 1 kWh (10⁶ µkWh) every 10 minutes from 00:00 to 02:00.
        let samples =
            (0..=12).map(|i| CounterSample::meter("s", "tgbt", "utility_in", "kWh", h + i * 600_000, i * 1_000_000));
        w.apply(&[Batch { samples: samples.collect(), claims: vec![], intervals: vec![], quarantine: vec![] }], h)
            .expect("apply");
        let reader = SqliteReader::new(&db, Policy::default());
        // 00:30–01:30: no whole hour inside, 6 kWh across two cut hours.
        let (from, to) = (h + 1_800_000, h + 5_400_000);
        let iv = utility_intervals(&reader, "s", from, to).expect("intervals");
        assert_eq!(
            iv.iter().map(|e| (e.start_ms, e.end_ms)).collect::<Vec<_>>(),
            vec![(from, h + 3_600_000), (h + 3_600_000, to)]
        );
        assert!((iv.iter().map(|e| e.kwh).sum::<f64>() - 6.0).abs() < 1e-9, "{iv:?}");
        let carbon: CarbonConfig =
            toml::from_str("source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"lifecycle\"\n").expect("carbon");
        let service = carbon.build().expect("service");
        let site = SiteConfig { id: "s".into(), timezone: "UTC".into(), ..SiteConfig::default() };
        let g = grid_carbon(&reader, &site, &service, from, to, h + 7_200_000).await.expect("read").expect("emissions");
        // 6 kWh at France's shipped life-cycle factor (98 g/kWh).
        assert!((g.grams - 6.0 * 98.0).abs() < 1e-6, "{g:?}");
        // Whole hours still come from the hourly table: 00:00–02:00 is 12 kWh.
        let whole = utility_intervals(&reader, "s", h, h + 7_200_000).expect("whole");
        assert_eq!(whole.len(), 2);
        assert!((whole.iter().map(|e| e.kwh).sum::<f64>() - 12.0).abs() < 1e-9);
    }
}
