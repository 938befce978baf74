//! One function per indicator over one period's totals. Each returns an
//! [`Indicator`] that carries its numerator and denominator (when they could
//! be formed), coverage, estimated share and missing inputs; a refused one has
//! `value: None` and an error code.
//!
//! Precedence of refusals: structural ones (a missing meter, factor or
//! category) win over numeric ones (`it_energy_zero`, `pue_below_one`),
//! because a missing input explains a wrong ratio.
//!
//! | name | numerator | denominator | standard |
//! |---|---|---|---|
//! | `pue` | E_DC | E_IT(category) | ISO/IEC 30134-2, EN 50600-4-2 |
//! | `dcie` | E_IT | E_DC | The Green Grid (= 1/PUE, ratio 0–1) |
//! | `ppue` | E_IT(hall) + E_cooling(hall) | E_IT(hall) | EN 50600-4-2 partial PUE |
//! | `ere` | E_DC − E_reuse | E_IT | The Green Grid ERE = (1 − ERF) × PUE |
//! | `cue` | kgCO2e of E_DC | E_IT | ISO/IEC 30134-8, EN 50600-4-8 |
//! | `wue` | litres of water | E_IT | ISO/IEC 30134-9, EN 50600-4-9 |
//! | `erf` | E_reuse | E_DC | ISO/IEC 30134-6, EN 50600-4-6 |
//! | `ref` | min(E_ren, E_DC) | E_DC | ISO/IEC 30134-3, EN 50600-4-3 |

use super::inputs::{Amount, GridCarbon, Refused, SiteParams, SiteTotals, edc};
use super::{Basis, Category, Indicator, Name, Refusal, Role, Side, Water};

/// The value of `numerator / denominator` for `name`, or why there is none.
pub fn finish(name: Name, numerator: f64, denominator: f64) -> Result<f64, Refusal> {
    if !(numerator.is_finite() && denominator.is_finite()) {
        return Err(Refusal::MissingMeter);
    }
    match name {
        Name::Pue => {
            if denominator <= 0.0 {
                Err(Refusal::ItEnergyZero)
            } else if numerator < denominator {
                Err(Refusal::PueBelowOne)
            } else {
                Ok(numerator / denominator)
            }
        }
        Name::Dcie => {
            if numerator <= 0.0 {
                Err(Refusal::ItEnergyZero)
            } else if denominator < numerator {
                Err(Refusal::PueBelowOne)
            } else {
                Ok(numerator / denominator)
            }
        }
        Name::Ere | Name::Cue | Name::Wue | Name::Ppue => {
            if denominator <= 0.0 {
                Err(Refusal::ItEnergyZero)
            } else {
                Ok(numerator / denominator)
            }
        }
        Name::Erf => {
            if denominator <= 0.0 {
                Err(Refusal::FacilityEnergyZero)
            } else {
                Ok(numerator / denominator)
            }
        }
        Name::Ref => {
            if denominator <= 0.0 {
                Err(Refusal::FacilityEnergyZero)
            } else {
                Ok((numerator / denominator).min(1.0))
            }
        }
    }
}

/// Collects refusals while an indicator is built; the first code wins and
/// every missing input is listed.
struct Build {
    ind: Indicator,
    code: Option<Refusal>,
    missing: Vec<String>,
    coverage: f64,
}

impl Build {
    fn new(name: Name) -> Build {
        Build { ind: Indicator::blank(name), code: None, missing: Vec::new(), coverage: 1.0 }
    }

    fn fail(&mut self, r: Refused) {
        self.code.get_or_insert(r.code);
        self.missing.extend(r.missing);
    }

    fn need<T>(&mut self, r: Result<T, Refused>) -> Option<T> {
        r.map_err(|e| self.fail(e)).ok()
    }

    fn cover(&mut self, a: Amount) {
        self.coverage = self.coverage.min(a.coverage_ratio);
    }

    /// Meters of `roles` (in `hall` when given) that reported nothing.
    fn silent(&mut self, t: &SiteTotals, roles: &[Role], hall: Option<&str>) {
        let ids: Vec<String> = t
            .missing_meters
            .iter()
            .filter(|m| roles.contains(&m.role))
            .filter(|m| hall.is_none() || m.hall.as_deref() == hall)
            .map(|m| m.meter.clone())
            .collect();
        if !ids.is_empty() {
            self.fail(Refused { code: Refusal::MissingMeter, missing: ids });
        }
    }

    fn ratio(&mut self, num: f64, den: f64, ns: Side, ds: Side) {
        let ind = std::mem::replace(&mut self.ind, Indicator::blank(Name::Pue));
        self.ind = ind.with_ratio(num, den, ns, ds);
    }

    fn done(self) -> Indicator {
        let mut ind = self.ind;
        ind.coverage_ratio = self.coverage.clamp(0.0, 1.0);
        let mut missing = self.missing;
        missing.sort();
        missing.dedup();
        ind.missing_meters = missing;
        match self.code {
            Some(c) => ind.refuse(c),
            None => ind,
        }
    }
}

fn role_missing(r: Role) -> String {
    format!("role:{}", r.as_str())
}

/// Site E_IT at category `c`: the sum of that role's meters over all halls.
/// Meters without a hall cover the whole site. Otherwise every hall that
/// meters IT energy at all must meter it at `c`: a strict subset is
/// `mixed_categories`, none is `missing_it_energy_for_category`.
pub fn it_energy(t: &SiteTotals, c: Category) -> Result<Amount, Refused> {
    let with_c: Vec<(&String, Amount)> = t.halls.iter().filter_map(|(h, ht)| ht.it(c).map(|a| (h, a))).collect();
    if with_c.is_empty() {
        return Err(Refused::new(Refusal::MissingItEnergyForCategory, role_missing(c.role())));
    }
    let site_wide = t.halls.get("").is_some_and(|h| h.it(c).is_some());
    if !site_wide {
        let lacking: Vec<String> = t
            .halls
            .iter()
            .filter(|(h, ht)| !h.is_empty() && !ht.categories().is_empty() && ht.it(c).is_none())
            .map(|(h, _)| format!("hall:{h}"))
            .collect();
        if !lacking.is_empty() {
            return Err(Refused { code: Refusal::MixedCategories, missing: lacking });
        }
    }
    let mut it = with_c.iter().map(|(_, a)| *a);
    let first = it.next().unwrap_or(Amount::measured(0.0));
    Ok(it.fold(first, |a, b| a + b))
}

fn edc_roles(b: &mut Build, t: &SiteTotals, p: &SiteParams) -> Option<super::inputs::Edc> {
    let e = b.need(edc(t, p))?;
    b.coverage = b.coverage.min(e.coverage_ratio);
    if t.chilled_water_in.is_some() {
        b.ind.chilled_water_weight = Some(e.chilled_water_weight);
    }
    Some(e)
}

fn it_part(b: &mut Build, t: &SiteTotals, c: Category) -> Option<Amount> {
    b.ind.category = Some(c);
    let it = b.need(it_energy(t, c))?;
    b.cover(it);
    Some(it)
}

/// PUE = E_DC / E_IT at category `c`.
pub fn pue(t: &SiteTotals, p: &SiteParams, c: Category) -> Indicator {
    edc_over_it(Name::Pue, t, p, c)
}

/// DCiE = E_IT / E_DC (ratio 0–1, = 1/PUE).
pub fn dcie(t: &SiteTotals, p: &SiteParams, c: Category) -> Indicator {
    edc_over_it(Name::Dcie, t, p, c)
}

fn edc_over_it(name: Name, t: &SiteTotals, p: &SiteParams, c: Category) -> Indicator {
    let mut b = Build::new(name);
    let e = edc_roles(&mut b, t, p);
    let it = it_part(&mut b, t, c);
    let mut roles = e.as_ref().map(|e| e.roles.clone()).unwrap_or_default();
    roles.push(c.role());
    b.silent(t, &roles, None);
    if let (Some(e), Some(it)) = (e, it) {
        if name == Name::Pue {
            b.ratio(e.total_kwh, it.value, e.side, it.side());
        } else {
            b.ratio(it.value, e.total_kwh, it.side(), e.side);
        }
    }
    b.done()
}

/// ERE = (E_DC − E_reuse) / E_IT; refused as PUE is when E_DC < E_IT.
pub fn ere(t: &SiteTotals, p: &SiteParams, c: Category) -> Indicator {
    let mut b = Build::new(Name::Ere);
    let e = edc_roles(&mut b, t, p);
    let it = it_part(&mut b, t, c);
    let heat = t.heat_reused_out;
    if heat.is_none() {
        b.fail(Refused::new(Refusal::MissingMeter, role_missing(Role::HeatReusedOut)));
    }
    let mut roles = e.as_ref().map(|e| e.roles.clone()).unwrap_or_default();
    roles.extend([c.role(), Role::HeatReusedOut]);
    b.silent(t, &roles, None);
    if let (Some(e), Some(it), Some(h)) = (e, it, heat) {
        b.cover(h);
        b.ratio(e.total_kwh - h.value, it.value, e.side + h.side(), it.side());
        if b.ind.error.is_none() && e.total_kwh < it.value {
            b.ind = std::mem::replace(&mut b.ind, Indicator::blank(Name::Ere)).refuse(Refusal::PueBelowOne);
        }
    }
    b.done()
}

/// Grams of CO2e of the generator fuel: `fuel_in` litres × `fuel_kg_per_litre`
/// always; without a `fuel_in` meter, `backup_gen_out` kWh ÷ `kwh_per_litre`
/// litres (all estimated). Never the grid factor on generator kWh.
fn fuel_grams(t: &SiteTotals, p: &SiteParams) -> Result<Side, Refused> {
    let factor = || p.fuel_kg_per_litre.ok_or_else(|| Refused::new(Refusal::MissingFactor, "factor:fuel_kg_per_litre"));
    if let Some(f) = t.fuel_in {
        if f.value == 0.0 {
            return Ok(Side::default());
        }
        let g = f.value * factor()? * 1000.0;
        return Ok(Side { gross: g, estimated: g * f.estimated_share() });
    }
    match t.backup_gen_out {
        Some(b) if b.value > 0.0 => {
            let k = p.kwh_per_litre.ok_or_else(|| Refused::new(Refusal::MissingFactor, "factor:kwh_per_litre"))?;
            let g = b.value / k * factor()? * 1000.0;
            Ok(Side { gross: g, estimated: g })
        }
        _ => Ok(Side::default()),
    }
}

fn chilled_water_grams(t: &SiteTotals, p: &SiteParams) -> Result<Side, Refused> {
    match t.chilled_water_in {
        Some(cw) if cw.value > 0.0 => {
            let f = p
                .chilled_water_g_per_kwh
                .ok_or_else(|| Refused::new(Refusal::MissingFactor, "factor:chilled_water_g_per_kwh"))?;
            let g = cw.value * f;
            Ok(Side { gross: g, estimated: g * cw.estimated_share() })
        }
        _ => Ok(Side::default()),
    }
}

/// CUE = kgCO2e / E_IT at category `c`, on `basis`:
/// - location: the grid electricity's time-matched emissions ([`GridCarbon`]);
/// - market: grid kWh not covered by GOs/PPAs × the residual mix (GO/PPA kWh at zero).
///
/// Both add generator fuel (litres × `fuel_kg_per_litre`) and district chilled
/// water (kWh thermal × `chilled_water_g_per_kwh`). Embodied emissions are never in CUE.
pub fn cue(t: &SiteTotals, p: &SiteParams, c: Category, basis: Basis, carbon: Option<&GridCarbon>) -> Indicator {
    let mut b = Build::new(Name::Cue);
    b.ind.basis = Some(basis);
    let e = edc_roles(&mut b, t, p);
    let it = it_part(&mut b, t, c);
    let grid_kwh = t.utility_in.map(|a| a.value).unwrap_or(0.0);
    let grid_share = t.utility_in.map(|a| a.estimated_share()).unwrap_or(0.0);
    let grid = match basis {
        Basis::Location => match carbon {
            Some(g) => {
                b.ind.carbon_source = Some(g.source.clone());
                b.ind.carbon_fallback = Some(g.fallback_used);
                b.ind.carbon_basis = Some(g.basis);
                Some(Side { gross: g.grams, estimated: g.grams * grid_share })
            }
            None => {
                b.fail(Refused::new(Refusal::MissingFactor, "factor:grid_intensity"));
                None
            }
        },
        Basis::Market => match p.residual_mix_g_per_kwh {
            Some(rm) => {
                b.ind.carbon_source = Some("residual_mix".into());
                b.ind.carbon_fallback = Some(false);
                if t.certificates.total_kwh() > 0.0 {
                    b.ind.allocation = Some(t.certificates.allocation);
                }
                let uncovered = (grid_kwh - t.certificates.total_kwh()).max(0.0);
                let g = uncovered * rm;
                Some(Side { gross: g, estimated: g * grid_share })
            }
            None => {
                b.fail(Refused::new(Refusal::MissingFactor, "factor:residual_mix_g_per_kwh"));
                None
            }
        },
    };
    let fuel = b.need(fuel_grams(t, p));
    let chilled = b.need(chilled_water_grams(t, p));
    let mut roles = vec![Role::UtilityIn, Role::FuelIn, Role::BackupGenOut, Role::ChilledWaterIn, c.role()];
    for r in &roles {
        if let Some(a) = t.role(*r) {
            b.cover(a);
        }
    }
    roles.sort();
    b.silent(t, &roles, None);
    if let (Some(e), Some(it), Some(g), Some(f), Some(cw)) = (e, it, grid, fuel, chilled) {
        let grams = g + f + cw;
        let kg = Side { gross: grams.gross / 1000.0, estimated: grams.estimated / 1000.0 };
        b.ratio(kg.gross, it.value, kg, it.side());
        if b.ind.error.is_none() && e.total_kwh < it.value {
            b.ind = std::mem::replace(&mut b.ind, Indicator::blank(Name::Cue)).refuse(Refusal::PueBelowOne);
        }
    }
    b.done()
}

/// WUE = litres / E_IT at category `c`: `total` uses `water_in`, `potable`
/// uses `water_potable_in` (a subset of `water_in`, never added to it).
pub fn wue(t: &SiteTotals, c: Category, water: Water) -> Indicator {
    let mut b = Build::new(Name::Wue);
    b.ind.water = Some(water);
    let role = match water {
        Water::Total => Role::WaterIn,
        Water::Potable => Role::WaterPotableIn,
    };
    let it = it_part(&mut b, t, c);
    let w = t.role(role);
    if w.is_none() {
        b.fail(Refused::new(Refusal::MissingMeter, role_missing(role)));
    }
    b.silent(t, &[role, c.role()], None);
    if let (Some(it), Some(w)) = (it, w) {
        b.cover(w);
        let litres = w.scaled_side(1000.0);
        b.ratio(litres.gross, it.value, litres, it.side());
    }
    b.done()
}

/// ERF = E_reuse / E_DC (heat handed off outside the DC boundary).
pub fn erf(t: &SiteTotals, p: &SiteParams) -> Indicator {
    let mut b = Build::new(Name::Erf);
    let e = edc_roles(&mut b, t, p);
    let heat = t.heat_reused_out;
    if heat.is_none() {
        b.fail(Refused::new(Refusal::MissingMeter, role_missing(Role::HeatReusedOut)));
    }
    let mut roles = e.as_ref().map(|e| e.roles.clone()).unwrap_or_default();
    roles.push(Role::HeatReusedOut);
    b.silent(t, &roles, None);
    if let (Some(e), Some(h)) = (e, heat) {
        b.cover(h);
        b.ratio(h.value, e.total_kwh, h.side(), e.side);
    }
    b.done()
}

/// REF = min(E_ren, E_DC) / E_DC with E_ren = on-site renewable consumed +
/// GOs + PPAs (allocated to the period); exported surplus never counts. The
/// numerator is capped at E_DC, so REF ≤ 1 and roll-ups never let one site's
/// surplus offset another's shortfall.
pub fn ref_(t: &SiteTotals, p: &SiteParams) -> Indicator {
    let mut b = Build::new(Name::Ref);
    let e = edc_roles(&mut b, t, p);
    if t.certificates.total_kwh() > 0.0 {
        b.ind.allocation = Some(t.certificates.allocation);
    }
    if let Some(e) = &e {
        let roles = e.roles.clone();
        b.silent(t, &roles, None);
    }
    if let Some(e) = e {
        let onsite = t.onsite_renewable_consumed.unwrap_or(Amount::measured(0.0));
        let renewable = onsite.value.max(0.0) + t.certificates.total_kwh();
        let num = renewable.min(e.total_kwh.max(0.0));
        let est = onsite.side().estimated.min(num);
        b.ratio(num, e.total_kwh, Side { gross: num, estimated: est }, e.side);
    }
    b.done()
}

/// pPUE = (E_IT + E_cooling) / E_IT of one hall (`Some(hall)`) or of the whole
/// site (`None`: the site's E_IT and every cooling sub-meter). A partial PUE
/// over the cooling subsystem (EN 50600-4-2 derivatives).
pub fn ppue(t: &SiteTotals, hall: Option<&str>, c: Category) -> Indicator {
    let mut b = Build::new(Name::Ppue);
    b.ind.category = Some(c);
    b.ind.hall = hall.map(str::to_string);
    let (it, cooling) = match hall {
        Some(h) => {
            let ht = t.halls.get(h).copied().unwrap_or_default();
            let it = ht.it(c);
            if it.is_none() {
                b.fail(Refused::new(Refusal::MissingItEnergyForCategory, role_missing(c.role())));
            }
            (it, ht.cooling)
        }
        None => {
            let it = b.need(it_energy(t, c));
            let cooling = t.halls.values().filter_map(|h| h.cooling).reduce(|a, b| a + b);
            (it, cooling)
        }
    };
    if cooling.is_none() {
        b.fail(Refused::new(Refusal::MissingMeter, role_missing(Role::Cooling)));
    }
    b.silent(t, &[c.role(), Role::Cooling], hall);
    if let (Some(it), Some(cool)) = (it, cooling) {
        b.cover(it);
        b.cover(cool);
        b.ratio(it.value + cool.value, it.value, it.side() + cool.side(), it.side());
    }
    b.done()
}

/// Every indicator of one site over one period, in a stable order: per IT
/// category of `cats` (the categories the site's configuration implies, or
/// those the caller asked for; see `site_report::implied_categories`): `pue`,
/// `dcie`, `ere`, `cue` location (when `carbon` is given), `cue` market (when
/// a residual mix is configured), `wue` total and potable; then `erf`, `ref`;
/// then `ppue` of the site per category of `cats` and of each hall with a
/// cooling meter. A category of `cats` the site does not meter is never left
/// out: its indicators are there, refused `missing_it_energy_for_category`.
pub fn site_indicators(
    t: &SiteTotals,
    p: &SiteParams,
    carbon: Option<&GridCarbon>,
    cats: &[Category],
) -> Vec<Indicator> {
    let mut out = Vec::new();
    let mut cats = cats.to_vec();
    cats.sort();
    cats.dedup();
    for &c in &cats {
        out.push(pue(t, p, c));
        out.push(dcie(t, p, c));
        out.push(ere(t, p, c));
        if carbon.is_some() {
            out.push(cue(t, p, c, Basis::Location, carbon));
        }
        if p.residual_mix_g_per_kwh.is_some() {
            out.push(cue(t, p, c, Basis::Market, carbon));
        }
        out.push(wue(t, c, Water::Total));
        out.push(wue(t, c, Water::Potable));
    }
    out.push(erf(t, p));
    out.push(ref_(t, p));
    if t.halls.values().any(|h| h.cooling.is_some()) {
        for &c in &cats {
            out.push(ppue(t, None, c));
        }
        for (h, ht) in t.halls.iter().filter(|(h, ht)| !h.is_empty() && ht.cooling.is_some()) {
            for c in ht.categories() {
                out.push(ppue(t, Some(h), c));
            }
        }
    }
    out
}
