//! Worked examples of the reference notes (§5), refusals, E_DC composition,
//! CUE rules, roll-ups, a synthetic year, and properties.

use proptest::prelude::*;

use super::compute::{cue, dcie, ere, erf, it_energy, ppue, pue, ref_, wue};
use super::rollup::{rollup, rollup_sets};
use super::*;

fn m(v: f64) -> Option<Amount> {
    Some(Amount::measured(v))
}

/// A site with `utility_in` and IT metered at one category, no hall.
fn site(utility: f64, c: Category, it: f64) -> SiteTotals {
    let mut t = SiteTotals { utility_in: m(utility), ..Default::default() };
    t.halls.insert(String::new(), hall(c, it));
    t
}

fn hall(c: Category, it: f64) -> HallTotals {
    let mut h = HallTotals::default();
    match c {
        Category::Ups => h.ups_out = m(it),
        Category::Pdu => h.pdu_out = m(it),
        Category::ItInput => h.it_in = m(it),
    }
    h
}

fn p() -> SiteParams {
    SiteParams::default()
}

fn close(a: Option<f64>, b: f64, tol: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= tol)
}

fn find(v: &[Indicator], name: Name, c: Option<Category>) -> &Indicator {
    v.iter().find(|i| i.name == name && i.category == c && i.hall.is_none()).expect("indicator present")
}

// ---------------------------------------------------------------- worked examples

/// T4 (EED-style example): PUE 1.25, WUE 1.5 L/kWh, ERF 0.15, REF 0.60.
#[test]
fn t4_eed_example() {
    let mut t = SiteTotals {
        utility_in: m(9_000_000.0),
        onsite_renewable_consumed: m(1_000_000.0),
        water_in: m(12_000.0),
        water_potable_in: m(3_000.0),
        heat_reused_out: m(1_500_000.0),
        certificates: Certificates { go_kwh: 2_000_000.0, ppa_kwh: 3_000_000.0, allocation: Allocation::Annual },
        ..Default::default()
    };
    t.halls.insert(String::new(), hall(Category::Ups, 8_000_000.0));
    let e = inputs::edc(&t, &p()).expect("E_DC");
    assert_eq!(e.total_kwh, 10_000_000.0);
    let all = site_indicators(&t, &p(), None, &t.categories());
    let c1 = Some(Category::Ups);
    assert_eq!(find(&all, Name::Pue, c1).value, Some(1.25));
    assert_eq!(find(&all, Name::Dcie, c1).value, Some(0.8));
    let w: Vec<&Indicator> = all.iter().filter(|i| i.name == Name::Wue).collect();
    assert_eq!(w[0].water, Some(Water::Total));
    assert_eq!(w[0].value, Some(1.5));
    assert_eq!(w[0].numerator, Some(12_000_000.0), "litres");
    assert_eq!(w[0].unit, Unit::LitresPerKwh);
    assert_eq!(w[1].water, Some(Water::Potable));
    assert_eq!(w[1].value, Some(0.375));
    assert_eq!(find(&all, Name::Erf, None).value, Some(0.15));
    let r = find(&all, Name::Ref, None);
    assert_eq!(r.value, Some(0.6));
    assert_eq!(r.numerator, Some(6_000_000.0), "E_RES-TOT = GOO + PPA + OS");
    assert_eq!(r.allocation, Some(Allocation::Annual));
    assert_eq!(find(&all, Name::Ere, c1).value, Some(8_500_000.0 / 8_000_000.0));
}

/// T1 (Green Grid WP#49 §5.1 "Data Center A"), T7 (EU course), T5 (EN 50600-4-9 card), T6 (ERE calculator).
#[test]
fn green_grid_and_standard_cards() {
    let t1 = pue(&site(1_633_333.0, Category::Ups, 1_000_000.0), &p(), Category::Ups);
    assert_eq!(t1.value.map(|v| (v * 100.0).round() / 100.0), Some(1.63));
    let t7 = pue(&site(1_500_000.0, Category::Ups, 1_000_000.0), &p(), Category::Ups);
    assert_eq!(t7.value, Some(1.5));
    let mut t5 = site(700_000.0, Category::Ups, 582_600.0);
    t5.water_in = m(928.0);
    let w = wue(&t5, Category::Ups, Water::Total);
    assert!(close(w.value, 1.593, 0.0005), "{:?}", w.value);
    let mut t6 = site(1_250_000.0, Category::Ups, 820_000.0);
    t6.heat_reused_out = m(210_000.0);
    assert!(close(ere(&t6, &p(), Category::Ups).value, 1.27, 0.005));
    assert!(close(pue(&t6, &p(), Category::Ups).value, 1.524, 0.0005));
    assert!(close(erf(&t6, &p()).value, 0.168, 0.0005));
    // ERE = (1 − ERF) × PUE.
    let (e, f, u) = (ere(&t6, &p(), Category::Ups).value, erf(&t6, &p()).value, pue(&t6, &p(), Category::Ups).value);
    assert!(close(e, (1.0 - f.unwrap_or(0.0)) * u.unwrap_or(0.0), 1e-12));
}

/// Green Grid WP#49 style multi-energy site: district chilled water weighted
/// 0.4 (the weight is stated), a generator metered at its output (fuel not
/// added again), exported on-site surplus outside E_DC.
#[test]
fn edc_composition() {
    let mut t = site(1_000_000.0, Category::Ups, 800_000.0);
    t.chilled_water_in = m(1_000_000.0);
    let i = pue(&t, &p(), Category::Ups);
    assert_eq!(i.numerator, Some(1_400_000.0));
    assert_eq!(i.value, Some(1.75));
    assert_eq!(i.chilled_water_weight, Some(0.4));
    let json = serde_json::to_value(&i).expect("json");
    assert_eq!(json["chilled_water_weight"], 0.4);

    // Another weight (WP#49 US table: 0.31) is carried through.
    let us = SiteParams { chilled_water_weight: 0.31, ..p() };
    assert_eq!(pue(&t, &us, Category::Ups).numerator, Some(1_310_000.0));

    // Fuel counts (× kwh_per_litre) only without a generator output meter.
    let mut g = site(1_000.0, Category::Ups, 800.0);
    g.fuel_in = m(100.0);
    let k = SiteParams { kwh_per_litre: Some(3.5), ..p() };
    let e = inputs::edc(&g, &k).expect("E_DC");
    assert_eq!((e.total_kwh, e.fuel_kwh, e.generator_kwh), (1_350.0, 350.0, 350.0));
    g.backup_gen_out = m(340.0);
    let e = inputs::edc(&g, &k).expect("E_DC");
    assert_eq!((e.total_kwh, e.fuel_kwh, e.generator_kwh), (1_340.0, 0.0, 340.0));
    // Exported surplus is not in E_DC.
    g.onsite_renewable_exported = m(5_000.0);
    assert_eq!(inputs::edc(&g, &k).expect("E_DC").total_kwh, 1_340.0);
}

// ---------------------------------------------------------------- refusals

#[test]
fn every_refusal_code() {
    let json_of = |i: &Indicator| serde_json::to_value(i).expect("json");
    let refused = |i: &Indicator, code: Refusal| {
        assert_eq!(i.value, None, "{i:?}");
        assert_eq!(i.error, Some(code), "{i:?}");
        let j = json_of(i);
        assert!(j["value"].is_null());
        assert_eq!(j["error"], code.as_str());
    };

    // it_energy_zero: the ratio is undefined, not ∞; DCiE and CUE/WUE too.
    let z = site(100.0, Category::ItInput, 0.0);
    refused(&pue(&z, &p(), Category::ItInput), Refusal::ItEnergyZero);
    refused(&dcie(&z, &p(), Category::ItInput), Refusal::ItEnergyZero);
    let mut zw = z.clone();
    zw.water_in = m(1.0);
    refused(&wue(&zw, Category::ItInput, Water::Total), Refusal::ItEnergyZero);

    // pue_below_one: E_DC < E_IT is bad metering; DCiE, ERE and CUE refuse with it.
    let b = site(90.0, Category::ItInput, 100.0);
    let i = pue(&b, &p(), Category::ItInput);
    refused(&i, Refusal::PueBelowOne);
    assert_eq!((i.numerator, i.denominator), (Some(90.0), Some(100.0)), "inputs still shown");
    refused(&dcie(&b, &p(), Category::ItInput), Refusal::PueBelowOne);
    let mut bh = b.clone();
    bh.heat_reused_out = m(0.0);
    refused(&ere(&bh, &p(), Category::ItInput), Refusal::PueBelowOne);
    let c = GridCarbon::flat(90.0, 50.0, "static:config", FactorBasis::Direct);
    refused(&cue(&b, &p(), Category::ItInput, Basis::Location, Some(&c)), Refusal::PueBelowOne);

    // missing_it_energy_for_category: only it_in is metered, category 1 asked.
    let only3 = site(150.0, Category::ItInput, 100.0);
    let i = pue(&only3, &p(), Category::Ups);
    refused(&i, Refusal::MissingItEnergyForCategory);
    assert_eq!(i.missing_meters, vec!["role:ups_out".to_string()]);
    assert_eq!(i.category, Some(Category::Ups));

    // mixed_categories: hall A at UPS output, hall B only at IT input.
    let mut mixed = SiteTotals { utility_in: m(500.0), ..Default::default() };
    mixed.halls.insert("A".into(), hall(Category::Ups, 100.0));
    mixed.halls.insert("B".into(), hall(Category::ItInput, 200.0));
    let i = pue(&mixed, &p(), Category::Ups);
    refused(&i, Refusal::MixedCategories);
    assert_eq!(i.missing_meters, vec!["hall:B".to_string()]);
    refused(&pue(&mixed, &p(), Category::ItInput), Refusal::MixedCategories);
    // ... but agents' it_in without a hall covers the whole site.
    mixed.halls.insert(String::new(), hall(Category::ItInput, 280.0));
    assert_eq!(pue(&mixed, &p(), Category::ItInput).value, Some(500.0 / 480.0));

    // missing_meter: no E_DC meter at all; a silent meter; no water meter.
    let mut no_edc = SiteTotals::default();
    no_edc.halls.insert(String::new(), hall(Category::ItInput, 100.0));
    let i = pue(&no_edc, &p(), Category::ItInput);
    refused(&i, Refusal::MissingMeter);
    assert_eq!(i.missing_meters, vec!["role:utility_in".to_string()]);
    let mut silent = site(150.0, Category::Ups, 100.0);
    silent.missing_meters.push(MissingMeter { meter: "tgbt-2".into(), role: Role::UtilityIn, hall: None });
    let i = pue(&silent, &p(), Category::Ups);
    refused(&i, Refusal::MissingMeter);
    assert_eq!(i.missing_meters, vec!["tgbt-2".to_string()]);
    assert_eq!(i.numerator, Some(150.0), "the biased sums are shown, not a value");
    // The silent utility meter does not touch WUE.
    silent.water_in = m(1.0);
    assert!(wue(&silent, Category::Ups, Water::Total).value.is_some());
    refused(&wue(&only3, Category::ItInput, Water::Potable), Refusal::MissingMeter);
    refused(&erf(&only3, &p()), Refusal::MissingMeter);

    // missing_factor: fuel litres without kwh_per_litre; CUE without intensity or fuel factor.
    let mut f = site(150.0, Category::Ups, 100.0);
    f.fuel_in = m(10.0);
    let i = pue(&f, &p(), Category::Ups);
    refused(&i, Refusal::MissingFactor);
    assert_eq!(i.missing_meters, vec!["factor:kwh_per_litre".to_string()]);
    let k = SiteParams { kwh_per_litre: Some(3.5), ..p() };
    let i = cue(&f, &k, Category::Ups, Basis::Location, None);
    refused(&i, Refusal::MissingFactor);
    assert_eq!(i.missing_meters, vec!["factor:fuel_kg_per_litre".to_string(), "factor:grid_intensity".to_string()]);

    // mixed_carbon_basis: direct and lifecycle emissions are not summed.
    let s = site(150.0, Category::Ups, 100.0);
    let d =
        cue(&s, &p(), Category::Ups, Basis::Location, Some(&GridCarbon::flat(150.0, 30.0, "rte", FactorBasis::Direct)));
    let l = cue(
        &s,
        &p(),
        Category::Ups,
        Basis::Location,
        Some(&GridCarbon::flat(150.0, 90.0, "em", FactorBasis::Lifecycle)),
    );
    refused(&rollup(&[&d, &l]).expect("same name"), Refusal::MixedCarbonBasis);

    // facility_energy_zero: ERF over E_DC = 0.
    let mut e0 = site(0.0, Category::Ups, 0.0);
    e0.heat_reused_out = m(0.0);
    refused(&erf(&e0, &p()), Refusal::FacilityEnergyZero);
    refused(&ref_(&e0, &p()), Refusal::FacilityEnergyZero);
}

/// The JSON of an indicator has exactly contract §7's fields (extras only when they apply).
#[test]
fn json_shape_is_the_contracts() {
    let i = pue(&site(150.0, Category::ItInput, 100.0), &p(), Category::ItInput);
    let j = serde_json::to_value(&i).expect("json");
    let mut keys: Vec<&str> = j.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort();
    let mut want = vec![
        "name",
        "category",
        "basis",
        "water",
        "value",
        "error",
        "numerator",
        "denominator",
        "unit",
        "coverage_ratio",
        "estimated_share",
        "missing_meters",
        "carbon_source",
        "carbon_fallback",
    ];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(j["name"], "pue");
    assert_eq!(j["category"], 3);
    assert_eq!(j["unit"], "ratio");
    assert_eq!(j["value"], 1.5);
    assert!(j["error"].is_null() && j["basis"].is_null() && j["water"].is_null());
    let c = cue(&site(150.0, Category::Ups, 100.0), &p(), Category::Ups, Basis::Market, None);
    assert_eq!(serde_json::to_value(&c).expect("json")["basis"], "market");
    // A whole answer.
    let r = IndicatorsReport {
        site: "caen-1".into(),
        from: "2025-01-01T00:00:00Z".into(),
        to: "2025-01-02T00:00:00Z".into(),
        step: period::Step::Day,
        periods: vec![PeriodReport {
            from: "a".into(),
            to: "b".into(),
            interim: true,
            indicators: vec![i],
            embodied: None,
        }],
    };
    let j = serde_json::to_value(&r).expect("json");
    assert_eq!(j["step"], "1d");
    assert_eq!(j["periods"][0]["interim"], true);
    assert_eq!(j["periods"][0]["indicators"][0]["name"], "pue");
}

// ---------------------------------------------------------------- CUE

/// Location: grid kWh × time-matched intensity + fuel litres × kg/L; the grid
/// factor never touches generator kWh. Market: GO/PPA kWh at zero, residual
/// mix for the rest.
#[test]
fn cue_location_and_market() {
    let mut t = site(1_000.0, Category::Ups, 500.0);
    t.fuel_in = m(10.0);
    t.backup_gen_out = m(30.0);
    let k = SiteParams { fuel_kg_per_litre: Some(2.6), residual_mix_g_per_kwh: Some(400.0), ..p() };
    let grid = GridCarbon {
        grams: 50_000.0,
        source: "rte:eco2mix-national-tr".into(),
        basis: FactorBasis::Direct,
        fallback_used: true,
    };
    let i = cue(&t, &k, Category::Ups, Basis::Location, Some(&grid));
    assert!(close(i.numerator, 76.0, 1e-9), "{:?}", i.numerator);
    assert!(close(i.value, 0.152, 1e-12));
    assert_eq!(i.unit, Unit::KgPerKwh);
    assert_eq!(i.carbon_source.as_deref(), Some("rte:eco2mix-national-tr"));
    assert_eq!(i.carbon_fallback, Some(true));
    assert_eq!(i.carbon_basis, Some(FactorBasis::Direct));
    // More generator kWh for the same fuel changes PUE, not emissions.
    let mut t2 = t.clone();
    t2.backup_gen_out = m(300.0);
    assert_eq!(cue(&t2, &k, Category::Ups, Basis::Location, Some(&grid)).numerator, i.numerator);
    assert_ne!(pue(&t2, &k, Category::Ups).value, pue(&t, &k, Category::Ups).value);

    t.certificates = Certificates { go_kwh: 600.0, ppa_kwh: 200.0, allocation: Allocation::ProRataTemporis };
    let mk = cue(&t, &k, Category::Ups, Basis::Market, Some(&grid));
    assert!(close(mk.numerator, 200.0 * 0.4 + 26.0, 1e-9), "{:?}", mk.numerator);
    assert_eq!(mk.carbon_source.as_deref(), Some("residual_mix"));
    assert_eq!(mk.allocation, Some(Allocation::ProRataTemporis));
    assert_eq!(serde_json::to_value(&mk).expect("json")["allocation"], "pro_rata_temporis");
    // Certificates beyond the grid supply do not make emissions negative.
    t.certificates.go_kwh = 5_000.0;
    assert!(close(cue(&t, &k, Category::Ups, Basis::Market, None).numerator, 26.0, 1e-9));

    // A generator without a fuel meter: litres estimated from kWh ÷ kwh_per_litre.
    let mut g = site(0.0, Category::Ups, 100.0);
    g.backup_gen_out = m(350.0);
    let k2 = SiteParams { kwh_per_litre: Some(3.5), fuel_kg_per_litre: Some(2.6), ..p() };
    let none = GridCarbon::flat(0.0, 50.0, "static:config", FactorBasis::Direct);
    let i = cue(&g, &k2, Category::Ups, Basis::Location, Some(&none));
    assert!(close(i.numerator, 260.0, 1e-9));
    assert_eq!(i.estimated_share, 1.0, "fuel estimated from generator output");
    // District chilled water needs its network's factor.
    let mut cw = site(1_000.0, Category::Ups, 500.0);
    cw.chilled_water_in = m(100.0);
    let grid = GridCarbon::flat(1_000.0, 50.0, "static:config", FactorBasis::Direct);
    assert_eq!(cue(&cw, &p(), Category::Ups, Basis::Location, Some(&grid)).error, Some(Refusal::MissingFactor));
    let k3 = SiteParams { chilled_water_g_per_kwh: Some(20.0), ..p() };
    assert!(close(cue(&cw, &k3, Category::Ups, Basis::Location, Some(&grid)).numerator, 52.0, 1e-9));
}

// ---------------------------------------------------------------- WUE, REF, pPUE

#[test]
fn potable_water_is_a_subset_never_added() {
    let mut t = site(10.0, Category::Ups, 8_000_000.0);
    t.water_in = m(12_000.0);
    t.water_potable_in = m(3_000.0);
    assert_eq!(wue(&t, Category::Ups, Water::Total).value, Some(1.5));
    assert_eq!(wue(&t, Category::Ups, Water::Potable).value, Some(0.375));
}

#[test]
fn ref_is_capped_and_excludes_exported_surplus() {
    let mut t = site(100.0, Category::Ups, 80.0);
    t.onsite_renewable_consumed = m(50.0);
    t.onsite_renewable_exported = m(1_000.0);
    t.certificates.go_kwh = 500.0;
    let r = ref_(&t, &p());
    assert_eq!(r.value, Some(1.0));
    assert_eq!(r.numerator, Some(150.0), "capped at E_DC");
    t.certificates.go_kwh = 0.0;
    assert_eq!(ref_(&t, &p()).value, Some(50.0 / 150.0), "exported surplus not counted");
    assert_eq!(ref_(&t, &p()).allocation, None);
}

#[test]
fn partial_pue_per_hall() {
    let mut t = SiteTotals { utility_in: m(500.0), ..Default::default() };
    let mut a = hall(Category::Pdu, 100.0);
    a.cooling = m(30.0);
    let mut b = hall(Category::Pdu, 200.0);
    b.cooling = m(40.0);
    t.halls.insert("A".into(), a);
    t.halls.insert("B".into(), b);
    assert_eq!(ppue(&t, Some("A"), Category::Pdu).value, Some(1.3));
    assert_eq!(ppue(&t, Some("B"), Category::Pdu).value, Some(1.2));
    assert_eq!(ppue(&t, None, Category::Pdu).value, Some(370.0 / 300.0));
    let all = site_indicators(&t, &p(), None, &t.categories());
    let halls: Vec<_> = all.iter().filter(|i| i.name == Name::Ppue).map(|i| (i.hall.clone(), i.value)).collect();
    assert_eq!(halls, vec![(None, Some(370.0 / 300.0)), (Some("A".into()), Some(1.3)), (Some("B".into()), Some(1.2))]);
    assert_eq!(serde_json::to_value(all.last().expect("ppue")).expect("json")["hall"], "B");
    // A silent cooling meter of hall A refuses A only.
    t.missing_meters.push(MissingMeter { meter: "crah-a".into(), role: Role::Cooling, hall: Some("A".into()) });
    assert_eq!(ppue(&t, Some("A"), Category::Pdu).error, Some(Refusal::MissingMeter));
    assert!(ppue(&t, Some("B"), Category::Pdu).value.is_some());
}

/// Every IT category metered on the site gets its own PUE, never mixed.
#[test]
fn one_pue_per_category() {
    let mut t = site(1_500.0, Category::Ups, 1_200.0);
    if let Some(h) = t.halls.get_mut("") {
        h.it_in = m(1_000.0);
    }
    let all = site_indicators(&t, &p(), None, &t.categories());
    assert_eq!(find(&all, Name::Pue, Some(Category::Ups)).value, Some(1.25));
    assert_eq!(find(&all, Name::Pue, Some(Category::ItInput)).value, Some(1.5));
    assert!(all.iter().all(|i| i.name != Name::Pue || i.category != Some(Category::Pdu)));
    assert_eq!(it_energy(&t, Category::Ups).map(|a| a.value), Ok(1_200.0));
    // No IT meter: refused, visibly.
    let none = SiteTotals { utility_in: m(1.0), ..Default::default() };
    let all = site_indicators(&none, &p(), None, &[Category::ItInput]);
    let i = find(&all, Name::Pue, Some(Category::ItInput));
    assert_eq!((i.value, i.error), (None, Some(Refusal::MissingItEnergyForCategory)));
    assert_eq!(i.missing_meters, vec!["role:it_in".to_string()]);
    // A category asked for (or implied by the configuration) but not metered is
    // refused in the answer, never left out: every per-category indicator.
    let all = site_indicators(&t, &p(), None, &[Category::Ups, Category::ItInput, Category::Pdu]);
    for name in [Name::Pue, Name::Dcie, Name::Ere, Name::Wue] {
        let i = find(&all, name, Some(Category::Pdu));
        assert_eq!((i.value, i.error), (None, Some(Refusal::MissingItEnergyForCategory)), "{name:?}");
    }
    assert_eq!(find(&all, Name::Pue, Some(Category::Ups)).value, Some(1.25));
}

#[test]
fn coverage_and_estimated_share() {
    let mut t = site(150.0, Category::ItInput, 100.0);
    t.utility_in = Some(Amount { value: 150.0, estimated: 0.0, coverage_ratio: 0.9 });
    t.halls.insert(
        String::new(),
        HallTotals { it_in: Some(Amount { value: 100.0, estimated: 25.0, coverage_ratio: 0.8 }), ..Default::default() },
    );
    let i = pue(&t, &p(), Category::ItInput);
    assert_eq!(i.coverage_ratio, 0.8);
    assert_eq!(i.estimated_share, 0.25);
    let from_uj = Amount::from_uj(3_600_000_000_000 * 5, 3_600_000_000_000, 1.0);
    assert_eq!((from_uj.value, from_uj.estimated), (5.0, 1.0));
    assert_eq!(kwh_from_uj(3_600_000_000_000), 1.0);
}

// ---------------------------------------------------------------- roll-ups

#[test]
fn rollups_are_energy_weighted() {
    let a = site(150.0, Category::Ups, 100.0);
    let b = site(1_200.0, Category::Ups, 1_000.0);
    let (pa, pb) = (pue(&a, &p(), Category::Ups), pue(&b, &p(), Category::Ups));
    let r = rollup(&[&pa, &pb]).expect("rollup");
    assert_eq!(r.value, Some(1_350.0 / 1_100.0));
    assert_ne!(r.value, Some((1.5 + 1.2) / 2.0), "not the mean of the PUEs");
    // Across categories: refused.
    let c3 = pue(&site(130.0, Category::ItInput, 100.0), &p(), Category::ItInput);
    let r = rollup(&[&pa, &c3]).expect("rollup");
    assert_eq!((r.value, r.error), (None, Some(Refusal::MixedCategories)));
    // A part without IT load contributes its E_DC; a part missing a meter refuses the whole.
    let idle = site(50.0, Category::Ups, 0.0);
    let pi = pue(&idle, &p(), Category::Ups);
    assert_eq!(pi.error, Some(Refusal::ItEnergyZero));
    assert_eq!(rollup(&[&pa, &pi]).expect("rollup").value, Some(2.0));
    let mut silent = a.clone();
    silent.missing_meters.push(MissingMeter { meter: "m1".into(), role: Role::UpsOut, hall: None });
    let ps = pue(&silent, &p(), Category::Ups);
    let r = rollup(&[&ps, &pb]).expect("rollup");
    assert_eq!(
        (r.value, r.error, r.missing_meters.clone()),
        (None, Some(Refusal::MissingMeter), vec!["m1".to_string()])
    );
    assert!(matches!(rollup(&[&pa, &erf(&a, &p())]), Err(rollup::RollupError::Mismatch { .. })));
    assert_eq!(rollup(&[]), Err(rollup::RollupError::Empty));
}

/// Sets: categories every site has are rolled up; the others are refused.
#[test]
fn rollup_of_site_sets() {
    let mut a = site(1_500.0, Category::Ups, 1_200.0);
    if let Some(h) = a.halls.get_mut("") {
        h.it_in = m(1_000.0);
    }
    let b = site(700.0, Category::ItInput, 500.0);
    let cats = [Category::Ups, Category::ItInput];
    let r = rollup_sets(&[site_indicators(&a, &p(), None, &cats), site_indicators(&b, &p(), None, &cats)]);
    assert_eq!(find(&r, Name::Pue, Some(Category::ItInput)).value, Some(2_200.0 / 1_500.0));
    assert_eq!(find(&r, Name::Pue, Some(Category::Ups)).error, Some(Refusal::MixedCategories));
    // ERF is refused in both (no heat meter), REF is rolled up.
    assert_eq!(find(&r, Name::Erf, None).error, Some(Refusal::MissingMeter));
    assert_eq!(find(&r, Name::Ref, None).value, Some(0.0));
    // A site without carbon config makes the roll-up's CUE refused, not partial.
    let g = GridCarbon::flat(1_500.0, 20.0, "static:config", FactorBasis::Direct);
    let r = rollup_sets(&[site_indicators(&a, &p(), Some(&g), &cats), site_indicators(&b, &p(), None, &cats)]);
    let c = r.iter().find(|i| i.name == Name::Cue && i.category == Some(Category::ItInput)).expect("cue");
    assert_eq!(c.error, Some(Refusal::MissingFactor));
}

// ---------------------------------------------------------------- a synthetic year

/// A year of hourly data whose overhead varies with the season and the load:
/// the mean of the hourly PUEs is not the annual PUE; the annual function,
/// fed with totals summed in integer µJ as the ledger sums them, returns the
/// ratio of sums, and so does the roll-up of the 8,760 hourly figures.
#[test]
fn synthetic_year_ratio_of_sums() {
    let mut it_uj: i128 = 0;
    let mut dc_uj: i128 = 0;
    let mut hourly = Vec::new();
    let mut mean = 0.0;
    for h in 0..8760 {
        let season = (2.0 * std::f64::consts::PI * f64::from(h) / 8760.0).cos(); // winter +1, summer −1
        let day = (2.0 * std::f64::consts::PI * f64::from(h % 24) / 24.0).sin();
        let it_kwh = 500.0 + 300.0 * day; // 200..800 kWh in the hour
        let overhead = 60.0 + 140.0 * (1.0 - season) / 2.0; // fixed cooling: 60 in winter, 200 in summer
        let dc_kwh = it_kwh * 1.08 + overhead;
        let it = (it_kwh * 3.6e12).round() as i128;
        let dc = (dc_kwh * 3.6e12).round() as i128;
        it_uj += it;
        dc_uj += dc;
        let t = site(kwh_from_uj(dc), Category::ItInput, kwh_from_uj(it));
        let i = pue(&t, &p(), Category::ItInput);
        mean += i.value.expect("hourly PUE") / 8760.0;
        hourly.push(i);
    }
    let annual = pue(&site(kwh_from_uj(dc_uj), Category::ItInput, kwh_from_uj(it_uj)), &p(), Category::ItInput);
    let ratio = dc_uj as f64 / it_uj as f64;
    assert!(close(annual.value, ratio, 1e-12), "{:?} vs {ratio}", annual.value);
    assert!((mean - ratio).abs() > 0.01, "mean of hourly PUEs {mean} should differ from the annual {ratio}");
    let refs: Vec<&Indicator> = hourly.iter().collect();
    assert!(close(rollup(&refs).expect("rollup").value, ratio, 1e-9));
}

// ---------------------------------------------------------------- properties

fn arb_site() -> impl Strategy<Value = (f64, f64)> {
    (1e-3f64..1e9, 1.0f64..3.0).prop_map(|(it, k)| (it * k, it))
}

proptest! {
    /// PUE ≥ 1 whenever E_DC ≥ E_IT > 0, and DCiE = 1/PUE.
    #[test]
    fn pue_at_least_one_and_dcie_its_inverse((edc, it) in arb_site()) {
        let t = site(edc, Category::ItInput, it);
        let u = pue(&t, &p(), Category::ItInput).value;
        let d = dcie(&t, &p(), Category::ItInput).value;
        prop_assert!(u.is_some_and(|u| u >= 1.0));
        prop_assert!(d.is_some_and(|d| d > 0.0 && d <= 1.0));
        prop_assert!((u.unwrap_or(0.0) * d.unwrap_or(0.0) - 1.0).abs() < 1e-12);
    }

    /// Any E_DC < E_IT is refused, never a value below 1.
    #[test]
    fn no_pue_below_one(edc in 0.0f64..1e9, it in 1e-3f64..1e9) {
        let v = pue(&site(edc, Category::ItInput, it), &p(), Category::ItInput);
        prop_assert!(v.value.is_none_or(|v| v >= 1.0));
        prop_assert_eq!(v.value.is_none(), v.error.is_some());
    }

    /// The roll-up of n identical sites equals each site.
    #[test]
    fn rollup_of_identical_sites((edc, it) in arb_site(), n in 1usize..20) {
        let one = pue(&site(edc, Category::Ups, it), &p(), Category::Ups);
        let parts: Vec<&Indicator> = std::iter::repeat_n(&one, n).collect();
        let r = rollup(&parts).expect("rollup");
        prop_assert!((r.value.unwrap_or(0.0) - one.value.unwrap_or(-1.0)).abs() <= 1e-12 * one.value.unwrap_or(1.0));
    }

    /// The roll-up of sites is the PUE of their summed totals.
    #[test]
    fn rollup_is_the_ratio_of_sums(sites in proptest::collection::vec(arb_site(), 1..10)) {
        let parts: Vec<Indicator> = sites.iter().map(|(e, i)| pue(&site(*e, Category::Pdu, *i), &p(), Category::Pdu)).collect();
        let refs: Vec<&Indicator> = parts.iter().collect();
        let (se, si) = sites.iter().fold((0.0, 0.0), |(a, b), (e, i)| (a + e, b + i));
        let whole = pue(&site(se, Category::Pdu, si), &p(), Category::Pdu);
        let r = rollup(&refs).expect("rollup");
        prop_assert!((r.value.unwrap_or(0.0) - whole.value.unwrap_or(-1.0)).abs() <= 1e-9);
    }

    /// REF ≤ 1 whatever the certificates, and roll-ups keep it so.
    #[test]
    fn ref_never_above_one(u in 0.0f64..1e9, os in 0.0f64..1e9, go in 0.0f64..1e10, u2 in 1.0f64..1e9) {
        let mut t = site(u, Category::Ups, 1.0);
        t.onsite_renewable_consumed = m(os);
        t.certificates.go_kwh = go;
        let r = ref_(&t, &p());
        prop_assert!(r.value.is_none_or(|v| (0.0..=1.0).contains(&v)));
        let other = ref_(&site(u2, Category::Ups, 1.0), &p());
        let ru = rollup(&[&r, &other]).expect("rollup");
        prop_assert!(ru.value.is_none_or(|v| (0.0..=1.0).contains(&v)));
    }

    /// Shares stay in [0, 1] and a value exists exactly when there is no error.
    #[test]
    fn shares_are_ratios(u in 0.0f64..1e6, it in 0.0f64..1e6, est in 0.0f64..1.0, cov in 0.0f64..1.0) {
        let mut t = site(u, Category::ItInput, it);
        t.halls.insert(String::new(), HallTotals { it_in: Some(Amount { value: it, estimated: it * est, coverage_ratio: cov }), ..Default::default() });
        for i in site_indicators(&t, &p(), None, &t.categories()) {
            prop_assert!((0.0..=1.0).contains(&i.estimated_share) && (0.0..=1.0).contains(&i.coverage_ratio));
            prop_assert_eq!(i.value.is_some(), i.error.is_none());
            prop_assert!(i.value.is_none_or(f64::is_finite));
        }
    }
}

#[test]
fn roles_round_trip() {
    for r in Role::ALL {
        assert_eq!(Role::parse(r.as_str()), Some(*r));
    }
    assert_eq!(Role::FuelIn.report_unit(), "L");
    assert_eq!(Role::WaterPotableIn.report_unit(), "m3");
    assert_eq!(
        Category::ALL.map(|c| super::category_of(c.role())),
        [Some(Category::Ups), Some(Category::Pdu), Some(Category::ItInput)]
    );
    assert_eq!(Category::Pdu.label(), "2");
}
