//! Roll-ups of one indicator over halls or sites, energy-weighted: numerators
//! add, denominators add, and the ratio is taken once (ΣE_DC / ΣE_IT), never
//! an average of the parts' ratios. Parts metered at different categories are
//! refused (`mixed_categories`), and so are emissions of different carbon
//! factor bases (`mixed_carbon_basis`).
//!
//! A part refused for a structural reason (missing meter or factor, mixed
//! categories, `pue_below_one`: bad metering) refuses the roll-up with the same
//! code: summing without it would silently drop its energy. A part refused
//! only because its own ratio is undefined (`it_energy_zero`,
//! `facility_energy_zero`) still contributes its numerator and denominator.
//!
//! Coverage of a roll-up is the lowest of its parts'; its estimated share is
//! recomputed from the summed estimated parts of numerators and denominators.

use super::{Indicator, Name, Refusal, Side};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RollupError {
    #[error("nothing to roll up")]
    Empty,
    #[error("cannot roll up {a} with {b}: name, basis and water must match")]
    Mismatch { a: String, b: String },
}

fn key(i: &Indicator) -> String {
    format!("{}/{:?}/{:?}", i.name.as_str(), i.basis, i.water)
}

fn same<T: PartialEq + Clone>(parts: &[&Indicator], f: impl Fn(&Indicator) -> T) -> Option<T> {
    let first = f(parts[0]);
    parts.iter().all(|p| f(p) == first).then_some(first)
}

/// Rolls the parts (same name, basis and water) into one indicator.
pub fn rollup(parts: &[&Indicator]) -> Result<Indicator, RollupError> {
    let Some(first) = parts.first() else {
        return Err(RollupError::Empty);
    };
    if let Some(o) = parts.iter().find(|p| key(p) != key(first)) {
        return Err(RollupError::Mismatch { a: key(first), b: key(o) });
    }
    let mut out = Indicator::blank(first.name);
    out.basis = first.basis;
    out.water = first.water;
    out.category = first.category;
    out.hall = same(parts, |p| p.hall.clone()).flatten();
    out.chilled_water_weight = same(parts, |p| p.chilled_water_weight).flatten();
    out.allocation = same(parts, |p| p.allocation).flatten();
    out.coverage_ratio = parts.iter().map(|p| p.coverage_ratio).fold(1.0, f64::min);
    let mut missing: Vec<String> = parts.iter().flat_map(|p| p.missing_meters.iter().cloned()).collect();
    missing.sort();
    missing.dedup();
    out.missing_meters = missing;
    let mut sources: Vec<String> = parts.iter().filter_map(|p| p.carbon_source.clone()).collect();
    sources.sort();
    sources.dedup();
    out.carbon_source = (!sources.is_empty()).then(|| sources.join(","));
    if parts.iter().any(|p| p.carbon_fallback.is_some()) {
        out.carbon_fallback = Some(parts.iter().any(|p| p.carbon_fallback == Some(true)));
    }
    let bases = same(parts, |p| p.carbon_basis);
    out.carbon_basis = bases.flatten();

    if same(parts, |p| p.category).is_none() {
        out.category = None;
        return Ok(out.refuse(Refusal::MixedCategories));
    }
    if bases.is_none() {
        return Ok(out.refuse(Refusal::MixedCarbonBasis));
    }
    let blocking = |p: &&&Indicator| {
        !matches!(p.error, None | Some(Refusal::ItEnergyZero) | Some(Refusal::FacilityEnergyZero))
            || p.numerator.is_none()
            || p.denominator.is_none()
    };
    if let Some(p) = parts.iter().find(blocking) {
        return Ok(out.refuse(p.error.unwrap_or(Refusal::MissingMeter)));
    }
    let (mut num, mut den, mut ns, mut ds) = (0.0, 0.0, Side::default(), Side::default());
    for p in parts {
        num += p.numerator.unwrap_or(0.0);
        den += p.denominator.unwrap_or(0.0);
        ns = ns + p.numerator_side;
        ds = ds + p.denominator_side;
    }
    Ok(out.with_ratio(num, den, ns, ds))
}

/// Rolls up whole sets (one `Vec` per hall or site, as
/// [`super::site_indicators`] returns them): per (name, basis, water), the
/// categories every part meters are rolled up; a category only some parts
/// meter is refused `mixed_categories`, and one no part meters keeps the
/// parts' `missing_it_energy_for_category`. Per-hall pPUE entries are left out.
pub fn rollup_sets(parts: &[Vec<Indicator>]) -> Vec<Indicator> {
    let mut keys: Vec<(Name, String)> = Vec::new();
    for i in parts.iter().flatten().filter(|i| i.hall.is_none()) {
        let k = (i.name, key(i));
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out = Vec::new();
    for (_, k) in keys {
        let groups: Vec<Vec<&Indicator>> =
            parts.iter().map(|p| p.iter().filter(|i| i.hall.is_none() && key(i) == k).collect()).collect();
        let mut cats: Vec<_> = groups.iter().flatten().map(|i| i.category).collect();
        cats.sort();
        cats.dedup();
        for c in cats {
            // A part that lists the category only to refuse it for want of its IT meter does not have it.
            let has = |i: &&&Indicator| i.category == c && i.error != Some(Refusal::MissingItEnergyForCategory);
            if !groups.iter().any(|g| g.iter().any(|i| has(&i))) {
                // No part meters it: the first part's refusal stands for all.
                if let Some(r) = groups.iter().flatten().find(|i| i.category == c) {
                    out.push((*r).clone());
                }
                continue;
            }
            let mut chosen: Vec<&Indicator> = Vec::new();
            let mut refusal: Option<Indicator> = None;
            for g in &groups {
                if let Some(i) = g.iter().find(has) {
                    chosen.push(i);
                    continue;
                }
                let template = g.first().or_else(|| groups.iter().flatten().next()).copied();
                let Some(t) = template else { continue };
                let mut r = t.clone();
                r.category = c;
                r.numerator = None;
                r.denominator = None;
                r = match g.first() {
                    // This part has no IT meter at all: its own refusal stands.
                    Some(only) if only.category.is_none() && only.error.is_some() => {
                        r.refuse(only.error.unwrap_or(Refusal::MissingMeter))
                    }
                    Some(_) => r.refuse(Refusal::MixedCategories),
                    None => {
                        r.missing_meters = vec![missing_for(t)];
                        r.refuse(if t.name == Name::Cue { Refusal::MissingFactor } else { Refusal::MissingMeter })
                    }
                };
                refusal.get_or_insert(r);
            }
            match refusal {
                Some(r) => out.push(r),
                None => {
                    if let Ok(r) = rollup(&chosen) {
                        out.push(r);
                    }
                }
            }
        }
    }
    out
}

fn missing_for(t: &Indicator) -> String {
    match (t.name, t.basis) {
        (Name::Cue, Some(super::Basis::Market)) => "factor:residual_mix_g_per_kwh".into(),
        (Name::Cue, _) => "factor:grid_intensity".into(),
        (n, _) => format!("indicator:{}", n.as_str()),
    }
}
