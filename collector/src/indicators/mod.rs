//! Efficiency indicators of ISO/IEC 30134 / EN 50600-4 (PUE, DCiE, pPUE, ERE,
//! CUE, WUE, ERF, REF) as pure functions over totals already summed over one
//! period, their energy-weighted roll-ups, time-matched emissions, and the
//! period arithmetic of `GET /api/v1/sites/{site}/indicators`.
//!
//! This module owns the formulas, the boundary composition of E_DC (the
//! facility roles), the refusal rules (a refused indicator has `value: None`
//! and an error code, never a number) and the JSON shape of an indicator. It
//! does no I/O and never reads the ledger: callers sum energies over a period
//! (in integer µJ, converted once with [`kwh_from_uj`]) and hand in totals.
//!
//! No ratio is ever averaged: every value is a ratio of sums over the same
//! period, and roll-ups sum numerators and denominators (see [`rollup`]).
//!
//! - [`inputs`]: period totals per role, site parameters, E_DC composition.
//! - [`compute`]: one function per indicator, and [`compute::site_indicators`].
//! - [`rollup`]: sites/halls → one figure, refused across categories.
//! - [`emissions`]: Σ energyᵢ × intensityᵢ over aligned interval series.
//! - [`period`]: `[from, to)` split into `1h`/`1d`/`1mo`/`1y` steps in the site's zone.

use serde::{Serialize, Serializer};

pub mod compute;
pub mod emissions;
pub mod inputs;
pub mod period;
pub mod rollup;

#[cfg(test)]
mod tests;

pub use compute::site_indicators;
pub use inputs::{
    Allocation, Amount, Certificates, DEFAULT_CHILLED_WATER_WEIGHT, Edc, GridCarbon, HallTotals, MissingMeter,
    SiteParams, SiteTotals, kwh_from_uj,
};

pub use crate::carbon::FactorBasis;

/// A facility boundary role (docs/collector.md). Units: kWh for energies (thermal
/// kWh for `chilled_water_in`), litres for `fuel_in`, m³ for water.
/// Facility roles are a closed vocabulary, encoded once in `model`.
pub use domesday_model::vocab::Role;

/// The PUE category an IT metering role gives.
pub fn category_of(r: Role) -> Option<Category> {
    match r {
        Role::UpsOut => Some(Category::Ups),
        Role::PduOut => Some(Category::Pdu),
        Role::ItIn => Some(Category::ItInput),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Category 1 (basic): UPS output (`ups_out`). The EED's E_IT.
    Ups = 1,
    /// Category 2 (intermediate): PDU output (`pdu_out`).
    Pdu = 2,
    /// Category 3 (advanced): IT equipment input (`it_in`, the agents' host energy).
    ItInput = 3,
}

impl Category {
    pub const ALL: [Category; 3] = [Category::Ups, Category::Pdu, Category::ItInput];

    pub fn number(self) -> u8 {
        self as u8
    }

    /// The role that meters E_IT at this category.
    pub fn role(self) -> Role {
        match self {
            Category::Ups => Role::UpsOut,
            Category::Pdu => Role::PduOut,
            Category::ItInput => Role::ItIn,
        }
    }

    /// The `category` label value (`"1"`, `"2"`, `"3"`).
    pub fn label(self) -> &'static str {
        match self {
            Category::Ups => "1",
            Category::Pdu => "2",
            Category::ItInput => "3",
        }
    }
}

impl Serialize for Category {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

/// Indicator names of the API (`ppue` is ours: partial PUE of a hall).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Name {
    Pue,
    Dcie,
    Cue,
    Wue,
    Erf,
    Ref,
    Ere,
    Ppue,
}

impl Name {
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Pue => "pue",
            Name::Dcie => "dcie",
            Name::Cue => "cue",
            Name::Wue => "wue",
            Name::Erf => "erf",
            Name::Ref => "ref",
            Name::Ere => "ere",
            Name::Ppue => "ppue",
        }
    }

    /// Unit of the value.
    pub fn unit(self) -> Unit {
        match self {
            Name::Cue => Unit::KgPerKwh,
            Name::Wue => Unit::LitresPerKwh,
            _ => Unit::Ratio,
        }
    }
}

/// Unit of an indicator's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Unit {
    #[serde(rename = "ratio")]
    Ratio,
    /// CUE: kgCO2e per kWh of IT energy.
    #[serde(rename = "kgCO2e/kWh")]
    KgPerKwh,
    /// WUE: litres per kWh of IT energy (= m³/MWh).
    #[serde(rename = "L/kWh")]
    LitresPerKwh,
}

/// Carbon accounting basis of a CUE (`basis` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// Grid average intensity (time-matched), whatever was bought.
    Location,
    /// GOs and PPAs at zero, the residual mix for the rest.
    Market,
}

/// Water category of a WUE (ISO/IEC 30134-9 / EN 50600-4-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Water {
    /// All water input (`water_in`), EN 50600-4-9 category 2, the EED's W_IN.
    Total,
    /// Potable water input (`water_potable_in`, a subset of `water_in`), category 1, the EED's W_IN-POT.
    Potable,
}

/// Why an indicator was refused. The first five are the documented refusal
/// codes of the indicators API; the last three cover cases those do not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// E_IT is zero: the ratio is undefined (never ∞).
    ItEnergyZero,
    /// E_DC < E_IT: no PUE can be below 1 (EN 50600-4-2 §5; The Green Grid rejects it). Bad metering.
    PueBelowOne,
    /// No meter at the IT metering point of the requested category.
    MissingItEnergyForCategory,
    /// Halls or sites metered at different categories cannot share one ratio.
    MixedCategories,
    /// A role the indicator needs has no meter, or one of its meters reported nothing in the period.
    MissingMeter,
    /// A factor the computation needs is not configured (`kwh_per_litre`,
    /// `fuel_kg_per_litre`, `chilled_water_g_per_kwh`, grid intensity).
    MissingFactor,
    /// Emissions of different carbon factor bases (direct vs lifecycle) cannot be summed.
    MixedCarbonBasis,
    /// E_DC is zero: ERF and REF are undefined.
    FacilityEnergyZero,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ItEnergyZero => "it_energy_zero",
            Refusal::PueBelowOne => "pue_below_one",
            Refusal::MissingItEnergyForCategory => "missing_it_energy_for_category",
            Refusal::MixedCategories => "mixed_categories",
            Refusal::MissingMeter => "missing_meter",
            Refusal::MissingFactor => "missing_factor",
            Refusal::MixedCarbonBasis => "mixed_carbon_basis",
            Refusal::FacilityEnergyZero => "facility_energy_zero",
        }
    }
}

/// The estimated part of one side of a ratio, kept to roll estimated shares up.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Side {
    /// Sum of the side's inputs (gross: ERE's numerator counts E_DC and E_reuse both).
    pub gross: f64,
    /// Estimated part of `gross`.
    pub estimated: f64,
}

impl Side {
    pub fn share(&self) -> f64 {
        if self.gross > 0.0 { (self.estimated / self.gross).clamp(0.0, 1.0) } else { 0.0 }
    }
}

impl std::ops::Add for Side {
    type Output = Side;

    fn add(self, o: Side) -> Side {
        Side { gross: self.gross + o.gross, estimated: self.estimated + o.estimated }
    }
}

/// One indicator over one period, serialized field for field as docs/indicators.md
/// names them; the fields after `carbon_fallback` are additions, omitted when
/// they do not apply.
///
/// Numerator and denominator units: kWh for every energy ratio; CUE's
/// numerator is kgCO2e, WUE's is litres; their denominators are kWh of E_IT.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Indicator {
    pub name: Name,
    /// PUE category of the E_IT used; `None` for ERF and REF (no E_IT).
    pub category: Option<Category>,
    /// CUE only.
    pub basis: Option<Basis>,
    /// WUE only.
    pub water: Option<Water>,
    /// `None` exactly when refused.
    pub value: Option<f64>,
    pub error: Option<Refusal>,
    pub numerator: Option<f64>,
    pub denominator: Option<f64>,
    pub unit: Unit,
    /// The lowest coverage among the inputs (share of the period their meters observed).
    pub coverage_ratio: f64,
    /// The larger of the estimated shares of numerator and denominator.
    pub estimated_share: f64,
    /// Meters that reported nothing in the period (by id), roles the indicator
    /// needs that have no meter (`role:<role>`), factors it needs that are not
    /// configured (`factor:<key>`), halls lacking the category's IT meter
    /// (`hall:<hall>`, with `mixed_categories`).
    pub missing_meters: Vec<String>,
    /// CUE: where the grid intensity came from.
    pub carbon_source: Option<String>,
    /// CUE: whether the fallback intensity was used for any part of the period.
    pub carbon_fallback: Option<bool>,
    /// pPUE: the hall (zone) it describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hall: Option<String>,
    /// CUE: basis of the emission factors (`direct` combustion or `lifecycle`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carbon_basis: Option<FactorBasis>,
    /// Indicators over E_DC: the weight applied to district chilled water kWh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chilled_water_weight: Option<f64>,
    /// REF and market-based CUE: how annual GOs/PPAs were allocated to the period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    #[serde(skip)]
    pub numerator_side: Side,
    #[serde(skip)]
    pub denominator_side: Side,
}

impl Indicator {
    /// An indicator with no value yet: the identity fields set, the rest empty.
    pub fn blank(name: Name) -> Indicator {
        Indicator {
            name,
            category: None,
            basis: None,
            water: None,
            value: None,
            error: None,
            numerator: None,
            denominator: None,
            unit: name.unit(),
            coverage_ratio: 0.0,
            estimated_share: 0.0,
            missing_meters: Vec::new(),
            carbon_source: None,
            carbon_fallback: None,
            hall: None,
            carbon_basis: None,
            chilled_water_weight: None,
            allocation: None,
            numerator_side: Side::default(),
            denominator_side: Side::default(),
        }
    }

    /// Refuses: no value, whatever was computed before.
    pub fn refuse(mut self, code: Refusal) -> Indicator {
        self.value = None;
        self.error = Some(code);
        self
    }

    /// Sets numerator and denominator and derives the value, or the refusal
    /// that the name's rules give (see [`compute::finish`]).
    pub fn with_ratio(mut self, numerator: f64, denominator: f64, num: Side, den: Side) -> Indicator {
        self.numerator = Some(numerator);
        self.denominator = Some(denominator);
        self.numerator_side = num;
        self.denominator_side = den;
        self.estimated_share = num.share().max(den.share());
        match compute::finish(self.name, numerator, denominator) {
            Ok(v) => {
                self.value = Some(v);
                self.error = None;
            }
            Err(code) => {
                self.value = None;
                self.error = Some(code);
            }
        }
        self
    }

    pub fn is_refused(&self) -> bool {
        self.error.is_some()
    }
}

/// One period of the indicators answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodReport {
    /// RFC 3339 UTC.
    pub from: String,
    pub to: String,
    /// Anything but a complete calendar year in the site's zone.
    pub interim: bool,
    pub indicators: Vec<Indicator>,
    /// Embodied emissions of the hosts that reported in the period, amortised
    /// over it: beside the indicators, never inside CUE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embodied: Option<crate::carbon::embodied::PeriodEmbodied>,
}

/// The whole indicators answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndicatorsReport {
    pub site: String,
    pub from: String,
    pub to: String,
    pub step: period::Step,
    pub periods: Vec<PeriodReport>,
}
