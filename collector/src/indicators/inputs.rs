//! Inputs of the indicators: one period's totals per boundary role (already
//! summed over the period by the ledger), the site's parameters, the grid
//! emissions of the period, and the composition of E_DC (docs/indicators.md).
//!
//! Units: energies in kWh as `f64` (converted once from the ledger's exact
//! integer µJ with [`kwh_from_uj`]; f64 keeps 15–16 significant digits, far
//! below any meter's accuracy), `fuel_in` in litres, water in m³.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Category, Refusal, Role, Side};
use crate::carbon::FactorBasis;

/// Microjoules in one kWh (3.6 × 10⁶ J × 10⁶ µJ/J).
pub const UJ_PER_KWH: f64 = 3.6e12;

/// Default weight of district chilled water (kWh thermal → kWh of E_DC): 0.4,
/// The Green Grid WP#49 table 5, "global" source-energy weighting factors of
/// the harmonisation task force (electricity 1.0, district chilled water 0.4).
/// Whether ISO/IEC 30134-2 makes these weights normative is not verified:
/// the weight is a site parameter and every indicator over E_DC states it.
pub const DEFAULT_CHILLED_WATER_WEIGHT: f64 = 0.4;

/// Converts the ledger's exact integer µJ to kWh, once.
pub fn kwh_from_uj(uj: i128) -> f64 {
    uj as f64 / UJ_PER_KWH
}

/// One role's total over the period, in the role's unit ([`Role::report_unit`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Amount {
    pub value: f64,
    /// The part of `value` that is estimated (same unit; 0 ≤ estimated ≤ value).
    pub estimated: f64,
    /// Share of the period its meters observed, 0–1.
    pub coverage_ratio: f64,
}

impl Amount {
    /// A fully measured, fully covered amount.
    pub fn measured(value: f64) -> Amount {
        Amount { value, estimated: 0.0, coverage_ratio: 1.0 }
    }

    /// From the ledger's integer µJ (total and its estimated part).
    pub fn from_uj(total_uj: i128, estimated_uj: i128, coverage_ratio: f64) -> Amount {
        Amount { value: kwh_from_uj(total_uj), estimated: kwh_from_uj(estimated_uj), coverage_ratio }
    }

    pub fn side(self) -> Side {
        Side { gross: self.value, estimated: self.estimated.clamp(0.0, self.value.max(0.0)) }
    }

    /// Estimated share of this amount, 0–1.
    pub fn estimated_share(self) -> f64 {
        self.side().share()
    }

    /// This amount's side of a ratio, in another unit (m³ → L: `k` = 1000).
    pub fn scaled_side(self, k: f64) -> Side {
        let s = self.side();
        Side { gross: s.gross * k, estimated: s.estimated * k }
    }

    fn scaled(self, k: f64) -> Amount {
        Amount { value: self.value * k, estimated: self.estimated * k, coverage_ratio: self.coverage_ratio }
    }
}

/// Two meters of the same role: values add, coverage is the lower one.
impl std::ops::Add for Amount {
    type Output = Amount;

    fn add(self, o: Amount) -> Amount {
        Amount {
            value: self.value + o.value,
            estimated: self.estimated + o.estimated,
            coverage_ratio: self.coverage_ratio.min(o.coverage_ratio),
        }
    }
}

/// IT and cooling totals of one hall (zone).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HallTotals {
    pub ups_out: Option<Amount>,
    pub pdu_out: Option<Amount>,
    pub it_in: Option<Amount>,
    pub cooling: Option<Amount>,
}

impl HallTotals {
    /// E_IT of this hall at category `c`, when metered there.
    pub fn it(&self, c: Category) -> Option<Amount> {
        match c {
            Category::Ups => self.ups_out,
            Category::Pdu => self.pdu_out,
            Category::ItInput => self.it_in,
        }
    }

    /// Categories at which this hall's IT energy is metered.
    pub fn categories(&self) -> Vec<Category> {
        Category::ALL.into_iter().filter(|c| self.it(*c).is_some()).collect()
    }
}

/// A configured meter that reported nothing in the period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingMeter {
    pub meter: String,
    pub role: Role,
    pub hall: Option<String>,
}

/// How annual certificates were brought down to the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// The period is the certificates' calendar year: counted whole.
    Annual,
    /// Interim period: annual quantity × (period length ∩ year / year length),
    /// per calendar year in the site's zone ([`super::period::pro_rata_temporis`]).
    ProRataTemporis,
}

/// Renewable energy bought as instruments (kWh), already allocated to the
/// period. Guarantees of origin are cancelled per year, so an interim period
/// gets a pro-rata share ([`Allocation`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Certificates {
    /// EED E_RES-GOO: GOs purchased and cancelled for this DC.
    pub go_kwh: f64,
    /// EED E_RES-PPA: PPA energy whose GOs the DC owns and cancelled.
    pub ppa_kwh: f64,
    pub allocation: Allocation,
}

impl Default for Certificates {
    fn default() -> Self {
        Certificates { go_kwh: 0.0, ppa_kwh: 0.0, allocation: Allocation::Annual }
    }
}

impl Certificates {
    pub fn total_kwh(&self) -> f64 {
        self.go_kwh.max(0.0) + self.ppa_kwh.max(0.0)
    }
}

/// One site's (or one hall's) totals over one period. `None` means the role
/// has no meter configured; `Some` with 0 means it is metered and read 0.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteTotals {
    pub utility_in: Option<Amount>,
    pub backup_gen_out: Option<Amount>,
    /// Litres.
    pub fuel_in: Option<Amount>,
    pub onsite_renewable_consumed: Option<Amount>,
    /// Not in E_DC, not in REF; carried for reports only.
    pub onsite_renewable_exported: Option<Amount>,
    /// kWh thermal.
    pub chilled_water_in: Option<Amount>,
    /// m³.
    pub water_in: Option<Amount>,
    /// m³, a subset of `water_in`, never added to it.
    pub water_potable_in: Option<Amount>,
    pub heat_reused_out: Option<Amount>,
    /// IT and cooling meters per hall; meters without a hall under `""` (they
    /// cover the whole site).
    pub halls: BTreeMap<String, HallTotals>,
    pub missing_meters: Vec<MissingMeter>,
    pub certificates: Certificates,
}

impl SiteTotals {
    /// The facility role's amount (`None` for IT and cooling roles: see `halls`).
    pub fn role(&self, r: Role) -> Option<Amount> {
        match r {
            Role::UtilityIn => self.utility_in,
            Role::BackupGenOut => self.backup_gen_out,
            Role::FuelIn => self.fuel_in,
            Role::OnsiteRenewableConsumed => self.onsite_renewable_consumed,
            Role::OnsiteRenewableExported => self.onsite_renewable_exported,
            Role::ChilledWaterIn => self.chilled_water_in,
            Role::WaterIn => self.water_in,
            Role::WaterPotableIn => self.water_potable_in,
            Role::HeatReusedOut => self.heat_reused_out,
            Role::UpsOut | Role::PduOut | Role::ItIn | Role::Cooling => None,
        }
    }

    /// Categories metered in at least one hall.
    pub fn categories(&self) -> Vec<Category> {
        Category::ALL.into_iter().filter(|c| self.halls.values().any(|h| h.it(*c).is_some())).collect()
    }
}

/// Site parameters the formulas need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiteParams {
    /// kWh of E_DC per litre of `fuel_in` (the `fuel_in` meter's `kwh_per_litre`).
    pub kwh_per_litre: Option<f64>,
    /// Weight of district chilled water kWh in E_DC ([`DEFAULT_CHILLED_WATER_WEIGHT`]).
    pub chilled_water_weight: f64,
    /// kgCO2e per litre of generator fuel (`[carbon] fuel_kg_per_litre`).
    pub fuel_kg_per_litre: Option<f64>,
    /// gCO2e per kWh of grid electricity not covered by GOs/PPAs (market-based).
    pub residual_mix_g_per_kwh: Option<f64>,
    /// gCO2e per kWh thermal of district chilled water (the network's published factor).
    pub chilled_water_g_per_kwh: Option<f64>,
}

impl Default for SiteParams {
    fn default() -> Self {
        SiteParams {
            kwh_per_litre: None,
            chilled_water_weight: DEFAULT_CHILLED_WATER_WEIGHT,
            fuel_kg_per_litre: None,
            residual_mix_g_per_kwh: None,
            chilled_water_g_per_kwh: None,
        }
    }
}

/// Location-based emissions of the period's grid electricity (`utility_in`),
/// computed upstream by [`super::emissions::time_matched`] over the same
/// intervals the ledger booked: Σ kWhᵢ × gCO2e/kWhᵢ. Never includes generator
/// kWh (they are counted by their fuel).
#[derive(Debug, Clone, PartialEq)]
pub struct GridCarbon {
    pub grams: f64,
    pub source: String,
    pub basis: FactorBasis,
    /// The fallback intensity covered some of the period.
    pub fallback_used: bool,
}

impl GridCarbon {
    /// A constant factor over the whole period (static sources).
    pub fn flat(grid_kwh: f64, g_per_kwh: f64, source: &str, basis: FactorBasis) -> GridCarbon {
        GridCarbon { grams: grid_kwh * g_per_kwh, source: source.to_string(), basis, fallback_used: false }
    }

    /// From a time-matched computation.
    pub fn from_emissions(e: &super::emissions::Emissions, source: &str, basis: FactorBasis) -> GridCarbon {
        GridCarbon { grams: e.grams, source: source.to_string(), basis, fallback_used: e.fallback_used }
    }
}

/// A refusal met while computing, with what was missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub code: Refusal,
    pub missing: Vec<String>,
}

impl Refused {
    pub fn new(code: Refusal, missing: impl Into<String>) -> Refused {
        Refused { code, missing: vec![missing.into()] }
    }
}

/// E_DC and its composition (the facility roles of docs/collector.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edc {
    pub utility_in_kwh: f64,
    pub backup_gen_out_kwh: f64,
    /// `fuel_in` litres × `kwh_per_litre`, counted only without a `backup_gen_out` meter.
    pub fuel_kwh: f64,
    pub onsite_renewable_consumed_kwh: f64,
    /// kWh thermal as metered.
    pub chilled_water_thermal_kwh: f64,
    pub chilled_water_weight: f64,
    /// E_DC, kWh.
    pub total_kwh: f64,
    /// EED E_DC-BG: generator energy, reported separately (Annex II 1(d)).
    pub generator_kwh: f64,
    #[serde(skip)]
    pub side: Side,
    #[serde(skip)]
    pub coverage_ratio: f64,
    /// Roles that fed E_DC.
    #[serde(skip)]
    pub roles: Vec<Role>,
}

/// Composes E_DC = utility_in + backup_gen_out (or fuel_in × kwh_per_litre
/// when no generator output meter exists) + onsite_renewable_consumed +
/// chilled_water_in × weight. Exported on-site surplus is not in it.
pub fn edc(t: &SiteTotals, p: &SiteParams) -> Result<Edc, Refused> {
    let fuel_counted = t.backup_gen_out.is_none() && t.fuel_in.is_some();
    let mut roles = Vec::new();
    let mut parts: Vec<Amount> = Vec::new();
    let mut take = |r: Role, a: Option<Amount>, roles: &mut Vec<Role>| -> f64 {
        match a {
            Some(a) => {
                roles.push(r);
                parts.push(a);
                a.value
            }
            None => 0.0,
        }
    };
    let utility = take(Role::UtilityIn, t.utility_in, &mut roles);
    let generator = take(Role::BackupGenOut, t.backup_gen_out, &mut roles);
    let onsite = take(Role::OnsiteRenewableConsumed, t.onsite_renewable_consumed, &mut roles);
    let chilled_weighted =
        take(Role::ChilledWaterIn, t.chilled_water_in.map(|a| a.scaled(p.chilled_water_weight)), &mut roles);
    let mut fuel_kwh = 0.0;
    if fuel_counted && let Some(f) = t.fuel_in {
        let k = match p.kwh_per_litre {
            Some(k) => k,
            None if f.value == 0.0 => 0.0,
            None => return Err(Refused::new(Refusal::MissingFactor, "factor:kwh_per_litre")),
        };
        fuel_kwh = take(Role::FuelIn, Some(f.scaled(k)), &mut roles);
    }
    if roles.is_empty() {
        return Err(Refused::new(Refusal::MissingMeter, format!("role:{}", Role::UtilityIn.as_str())));
    }
    let side = parts.iter().fold(Side::default(), |s, a| s + a.side());
    let coverage_ratio = parts.iter().map(|a| a.coverage_ratio).fold(1.0, f64::min);
    Ok(Edc {
        utility_in_kwh: utility,
        backup_gen_out_kwh: generator,
        fuel_kwh,
        onsite_renewable_consumed_kwh: onsite,
        chilled_water_thermal_kwh: t.chilled_water_in.map(|a| a.value).unwrap_or(0.0),
        chilled_water_weight: p.chilled_water_weight,
        total_kwh: utility + generator + fuel_kwh + onsite + chilled_weighted,
        generator_kwh: if t.backup_gen_out.is_some() { generator } else { fuel_kwh },
        side,
        coverage_ratio,
        roles,
    })
}
