//! The EED declaration of one site over one reporting period: every field of
//! Annexes I and II of Delegated Regulation (EU) 2024/1364, the French keys
//! of D.236-2/D.236-3, and the Annex III indicators, each with its point,
//! unit and provenance, and the list of missing mandatory fields with the
//! config key that fills each.
//!
//! The energies and the indicators come from `site_report::period_inputs` and
//! `indicators::site_indicators`, the computation behind
//! `GET /api/v1/sites/{site}/indicators`: nothing here recomputes a ratio.
//! This module only selects, labels and checks completeness; rendering is
//! [`super::render`]'s.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::classes;
use super::declared::{
    AnnualValues, OMITTABLE, PditBasis, annual, commissioning, first_reporting_year, operating_span,
};
use crate::carbon::config::CarbonConfig;
use crate::carbon::service::CarbonService;
use crate::config::SiteConfig;
use crate::indicators::compute::it_energy;
use crate::indicators::inputs::edc;
use crate::indicators::period::{Period, is_complete_year};
use crate::indicators::{Amount, Basis, Category, Indicator, Name, Role, SiteTotals, Water, site_indicators};
use crate::ledger::LedgerReader;
use crate::ledger::query::rfc3339;
use crate::site_report::{ReportError, params, period_inputs};

/// Name of our schema (the Commission publishes none).
pub const SCHEMA: &str = "domesday.eed-declaration";
/// Version of the schema: major changes break readers, minor ones add fields.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The act whose annexes the `annex`/`point` ids refer to.
pub const REGULATION: &str = "Commission Delegated Regulation (EU) 2024/1364";
/// The French code whose articles the `point` ids of the `france` section refer to.
pub const CODE_ENERGIE: &str = "Code de l'énergie (décret n° 2025-1382)";

/// A declared value, typed so that each rendering can keep its type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    Integer(i64),
    Text(String),
    /// A calendar date, `YYYY-MM-DD`.
    Date(jiff::civil::Date),
    List(Vec<String>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn text(s: Option<&str>) -> Value {
        match s {
            Some(s) if !s.trim().is_empty() => Value::Text(s.to_string()),
            _ => Value::Null,
        }
    }

    fn number(v: Option<f64>) -> Value {
        v.map(Value::Number).unwrap_or(Value::Null)
    }

    /// The value as one CSV cell: numbers in Rust's shortest round-trip form,
    /// lists joined with `; `.
    pub fn cell(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Integer(n) => n.to_string(),
            Value::Text(s) => s.clone(),
            Value::Date(d) => d.to_string(),
            Value::List(l) => l.join("; "),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => s.serialize_f64(*n),
            Value::Integer(n) => s.serialize_i64(*n),
            Value::Text(t) => s.serialize_str(t),
            Value::Date(d) => s.collect_str(d),
            Value::List(l) => l.serialize(s),
        }
    }
}

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A `[[sites]]` key.
    Config,
    /// A `[[sites.annual]]` figure.
    Declared,
    /// Summed by the ledger from meters and agents.
    Ledger,
    /// Derived from other fields (a sum, a flag).
    Computed,
}

/// How a ledger figure was obtained.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Provenance {
    /// Configured meters of the roles that fed the figure (`agents` for the
    /// agents' host energy).
    pub meters: Vec<String>,
    /// Roles summed.
    pub roles: Vec<&'static str>,
    /// Lowest share of the period the meters observed, 0–1.
    pub coverage_ratio: f64,
    /// Estimated part of the figure, 0–1.
    pub estimated_share: f64,
    /// Meters that reported nothing in the period.
    pub missing_meters: Vec<String>,
}

/// One declared value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Field {
    #[serde(skip)]
    pub key: &'static str,
    pub label: &'static str,
    pub value: Value,
    pub unit: Option<&'static str>,
    /// `"I"` or `"II"` of 2024/1364; `None` for the French keys and the envelope.
    pub annex: Option<&'static str>,
    /// Point of the annex (`"1(d)"`) or article of the French code (`"D.236-2"`).
    pub point: Option<&'static str>,
    pub regulation: Option<&'static str>,
    pub mandatory: bool,
    pub source: Source,
    /// The config key that sets (or would set) the value.
    pub config_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where a declared figure was read: `FILE:LINE` of its `[[sites.annual]]`
    /// key in the config, or of its row in an `annual_csv` file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_in: Option<String>,
    /// Art. 3(2): the reason this KPI is omitted in the first reporting
    /// period (its `value` is then `null` and it is not missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted: Option<String>,
    pub interim: bool,
}

/// A group of fields: one JSON object, one XLSX sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub fields: Vec<Field>,
}

impl Serialize for Section {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.fields.len()))?;
        for f in &self.fields {
            m.serialize_entry(f.key, f)?;
        }
        m.end()
    }
}

/// An Annex III indicator (and CUE beside them), as the indicators computed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndicatorField {
    pub name: Name,
    pub label: &'static str,
    pub value: Option<f64>,
    pub unit: crate::indicators::Unit,
    /// `"III"` for PUE, WUE, ERF, REF; `None` for CUE (not in 2024/1364).
    pub annex: Option<&'static str>,
    pub point: Option<&'static str>,
    pub regulation: Option<&'static str>,
    pub standard: &'static str,
    pub category: Option<Category>,
    pub water: Option<Water>,
    pub basis: Option<Basis>,
    pub numerator: Option<f64>,
    pub denominator: Option<f64>,
    pub coverage_ratio: f64,
    pub estimated_share: f64,
    pub missing_meters: Vec<String>,
    pub error: Option<crate::indicators::Refusal>,
    pub carbon_source: Option<String>,
    /// Indicative EU class (A–G) of PUE and WUE, from the unrounded value.
    pub class: Option<char>,
    /// Always true where `class` is given: the database assigns the real class.
    pub class_indicative: Option<bool>,
    pub interim: bool,
}

/// A mandatory field without a value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Missing {
    pub field: &'static str,
    pub annex: Option<&'static str>,
    pub point: Option<&'static str>,
    /// The config key (or meter role) that would fill it.
    pub config_key: String,
}

/// The article of 2024/1364 on the reporting period.
pub const ART_3_1: &str = "Commission Delegated Regulation (EU) 2024/1364 Art. 3(1)";
/// The article of 2024/1364 on first-period omissions.
pub const ART_3_2: &str = "Commission Delegated Regulation (EU) 2024/1364 Art. 3(2)";

/// Art. 3(1): a data centre in operation for less than the calendar year
/// reports only for the period it has been in operation, indicating it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatingPeriod {
    /// The site's `commissioning_date`.
    #[serde(serialize_with = "date")]
    pub commissioning_date: jiff::civil::Date,
    /// First and last day (inclusive, site's zone) the declaration covers.
    #[serde(serialize_with = "date")]
    pub from: jiff::civil::Date,
    #[serde(serialize_with = "date")]
    pub to: jiff::civil::Date,
    pub regulation: &'static str,
    /// The same in words, as every rendering shows it.
    pub statement: String,
}

fn date<S: Serializer>(d: &jiff::civil::Date, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// A KPI omitted under Art. 3(2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Omitted {
    pub field: &'static str,
    pub annex: Option<&'static str>,
    pub point: Option<&'static str>,
    pub reason: String,
    pub regulation: &'static str,
}

/// Conventions the figures follow, stated in every rendering.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conventions {
    pub rounding: &'static str,
    pub class_scale: &'static str,
    pub class_boundaries: &'static str,
    pub eit_point: String,
    pub energy_source: &'static str,
}

/// The declaration of one site over one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Declaration {
    pub schema: &'static str,
    pub schema_version: &'static str,
    pub generated_at: String,
    pub site: String,
    /// The calendar year declared (`None` for a `--from/--to` period).
    pub reporting_year: Option<i16>,
    pub period_start: String,
    pub period_end: String,
    pub timezone: String,
    /// Anything but a complete, ended calendar year (or, in the year of
    /// commissioning, its ended period of operation): not a declaration to file.
    pub interim: bool,
    /// Whether this is the site's first reporting period (the year of its
    /// commissioning, or 2023 for an older data centre): the one where Art.
    /// 3(2) omissions are allowed.
    pub first_reporting_period: bool,
    /// Art. 3(1): set when the data centre was commissioned during the
    /// reporting year; the period then starts at the commissioning date.
    pub operating_period: Option<OperatingPeriod>,
    pub annex_i: Section,
    pub annex_ii_energy: Section,
    pub annex_ii_ict_capacity: Section,
    pub annex_ii_data_traffic: Section,
    pub france: Section,
    pub indicators: Vec<IndicatorField>,
    pub missing: Vec<Missing>,
    /// Art. 3(2): KPIs omitted for technical reasons, with their reasons.
    pub omissions: Vec<Omitted>,
    pub conventions: Conventions,
}

impl Declaration {
    /// The field sections in rendering order.
    pub fn sections(&self) -> [&Section; 5] {
        [&self.annex_i, &self.annex_ii_energy, &self.annex_ii_ict_capacity, &self.annex_ii_data_traffic, &self.france]
    }
}

/// The period asked for: a calendar year, or any `[from, to)` (interim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportPeriod {
    pub from_ms: i64,
    pub to_ms: i64,
    pub year: Option<i16>,
}

impl ReportPeriod {
    /// Calendar year `year` of `site`'s time zone, from the commissioning
    /// date in the year of commissioning (Art. 3(1)); refused for a year
    /// wholly before commissioning.
    pub fn year(site: &SiteConfig, year: i16) -> Result<ReportPeriod, ReportError> {
        let tz = jiff::tz::TimeZone::get(&site.timezone).map_err(|e| ReportError::Period(e.to_string()))?;
        crate::indicators::period::calendar_year(year, &tz).map_err(|e| ReportError::Period(e.to_string()))?;
        let Some((a, b)) = operating_span(site, year, &tz) else {
            return Err(ReportError::Period(format!(
                "site {} was commissioned on {} (commissioning_date): it has no reporting period in {year}",
                site.id,
                site.commissioning_date.as_deref().unwrap_or_default()
            )));
        };
        Ok(ReportPeriod { from_ms: a, to_ms: b, year: Some(year) })
    }

    /// Whether `site` was in operation during calendar year `year` (a
    /// commissioning date after it says not).
    pub fn in_operation(site: &SiteConfig, year: i16) -> bool {
        commissioning(site).is_none_or(|d| d.year() <= year)
    }
}

/// Builds fields with the period's `interim` flag.
struct Fields {
    interim: bool,
    out: Vec<Field>,
}

impl Fields {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: Value,
        unit: Option<&'static str>,
        point: (Option<&'static str>, &'static str),
        mandatory: bool,
        source: Source,
        config_key: Option<String>,
    ) -> &mut Field {
        let (annex, point) = point;
        let regulation = if annex.is_some() { REGULATION } else { CODE_ENERGIE };
        self.out.push(Field {
            key,
            label,
            value,
            unit,
            annex,
            point: Some(point),
            regulation: Some(regulation),
            mandatory,
            source,
            config_key,
            provenance: None,
            note: None,
            declared_in: None,
            omitted: None,
            interim: self.interim,
        });
        let n = self.out.len() - 1;
        &mut self.out[n]
    }
}

fn ids(site: &SiteConfig, roles: &[Role]) -> Vec<String> {
    site.meters
        .iter()
        .filter(|m| Role::parse(&m.role).is_some_and(|r| roles.contains(&r)))
        .map(|m| m.id.clone())
        .collect()
}

fn provenance(site: &SiteConfig, t: &SiteTotals, roles: &[Role], a: Option<Amount>) -> Provenance {
    Provenance {
        meters: ids(site, roles),
        roles: roles.iter().map(|r| r.as_str()).collect(),
        coverage_ratio: a.map(|a| a.coverage_ratio).unwrap_or(0.0),
        estimated_share: a.map(|a| a.estimated_share()).unwrap_or(0.0),
        missing_meters: t.missing_meters.iter().filter(|m| roles.contains(&m.role)).map(|m| m.meter.clone()).collect(),
    }
}

fn meter_key(r: Role) -> String {
    format!("[[sites.meters]] role = \"{}\"", r.as_str())
}

fn annual_key(k: &str) -> Option<String> {
    Some(format!("[[sites.annual]] {k}"))
}

/// The IT metering point Annex II 1(e) asks for: category 1 (UPS output)
/// first, then the PDU, then the IT equipment input the site specifies.
pub fn eit_category(t: &SiteTotals) -> Option<Category> {
    Category::ALL.into_iter().find(|c| it_energy(t, *c).is_ok()).or_else(|| t.categories().first().copied())
}

fn eit_basis(c: Category) -> &'static str {
    match c {
        Category::Ups => "ups_cat1",
        Category::Pdu => "pdu",
        Category::ItInput => "declared_point",
    }
}

/// Years of the site's zone that `[from, to)` overlaps.
fn years(site: &SiteConfig, from_ms: i64, to_ms: i64) -> Vec<i16> {
    let Ok(tz) = jiff::tz::TimeZone::get(&site.timezone) else { return Vec::new() };
    let y = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_zoned_datetime(tz.clone()).year()).ok();
    match (y(from_ms), y(to_ms - 1)) {
        (Some(a), Some(b)) => (a..=b).collect(),
        _ => Vec::new(),
    }
}

/// Builds the declaration of `site` over `period`. `generated_at` is the one
/// field that may differ between two runs over the same ledger and config.
#[allow(clippy::too_many_arguments)]
pub async fn build(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    period: ReportPeriod,
    now_ms: i64,
    generated_at: String,
) -> Result<Declaration, ReportError> {
    if period.from_ms >= period.to_ms {
        return Err(ReportError::Period("the period is empty: --from must be before --to".into()));
    }
    let tz = jiff::tz::TimeZone::get(&site.timezone).map_err(|e| ReportError::Period(e.to_string()))?;
    // The year of commissioning is complete once its period of operation has ended.
    let operating = period.year.and_then(|y| operating_span(site, y, &tz));
    let whole_operating = operating == Some((period.from_ms, period.to_ms)) && period.to_ms <= now_ms;
    let interim = !(is_complete_year(period.from_ms, period.to_ms, &tz, now_ms) || whole_operating);
    let p = params(site, carbon_config);
    let (t, grid) =
        period_inputs(reader, site, carbon, Period { from_ms: period.from_ms, to_ms: period.to_ms, interim }, now_ms)
            .await?;
    let computed = site_indicators(&t, &p, grid.as_ref(), &crate::site_report::implied_categories(site));
    let years = years(site, period.from_ms, period.to_ms);
    let first_year = years.first().copied().unwrap_or(0);
    let ann: AnnualValues = annual(site, first_year).cloned().unwrap_or_default();
    // A declared annual figure counts for the period only if every year it overlaps declares it.
    let declared_all = |f: fn(&AnnualValues) -> bool| years.iter().all(|y| annual(site, *y).is_some_and(f));

    // Annex I.
    let mut f = Fields { interim, out: Vec::new() };
    let ck = |k: &str| Some(format!("[[sites]] {k}"));
    let i = |p: &'static str| (Some("I"), p);
    f.push(
        "dc_name",
        "Data centre name",
        Value::text(Some(&site.name)),
        None,
        i("1(a)"),
        true,
        Source::Config,
        ck("name"),
    );
    f.push(
        "owner_name",
        "Owner (name)",
        Value::text(site.owner.as_deref()),
        None,
        i("1(b)"),
        true,
        Source::Config,
        ck("owner"),
    );
    f.push(
        "owner_contact",
        "Owner (contact details)",
        Value::text(site.owner_contact.as_deref()),
        None,
        i("1(b)"),
        true,
        Source::Config,
        ck("owner_contact"),
    );
    f.push(
        "operator_name",
        "Operator (name)",
        Value::text(Some(&site.operator)),
        None,
        i("1(b)"),
        true,
        Source::Config,
        ck("operator"),
    );
    f.push(
        "operator_contact",
        "Operator (contact details)",
        Value::text(site.operator_contact.as_deref()),
        None,
        i("1(b)"),
        true,
        Source::Config,
        ck("operator_contact"),
    );
    f.push(
        "location_lau_code",
        "Location: Eurostat LAU code",
        Value::text(site.lau_code.as_deref()),
        None,
        i("1(c)"),
        true,
        Source::Config,
        ck("lau_code"),
    );
    f.push(
        "location_nuts3_code",
        "Location: NUTS 3 code (2026 amendment)",
        Value::text(site.nuts3_code.as_deref()),
        None,
        i("1(c)"),
        false,
        Source::Config,
        ck("nuts3_code"),
    );
    let dc_type = site.dc_type.map(|t| serde_plain(&t)).map(Value::Text).unwrap_or(Value::Null);
    f.push("dc_type", "Type of data centre", dc_type, None, i("1(d)"), true, Source::Config, ck("dc_type"));
    let structure = site.dc_structure.map(|t| serde_plain(&t)).map(Value::Text).unwrap_or(Value::Null);
    f.push(
        "dc_structure",
        "Structure or group of structures",
        structure,
        None,
        i("1(d)"),
        true,
        Source::Config,
        ck("dc_structure"),
    );
    let other = site.offers_other_type_services.map(Value::Bool).unwrap_or(Value::Null);
    let needs_other =
        matches!(site.dc_type, Some(crate::config::DcType::Colocation | crate::config::DcType::CoHosting));
    f.push(
        "offers_other_type_services",
        "Colocation also offering co-hosting, or the reverse",
        other,
        None,
        i("1(d)"),
        needs_other,
        Source::Config,
        ck("offers_other_type_services"),
    );
    f.push(
        "entry_into_operation",
        "Year and month of entry into operation (YYYY-MM)",
        Value::text(site.entry_into_operation.as_deref()),
        None,
        i("1(e)"),
        true,
        Source::Config,
        ck("entry_into_operation"),
    );
    let r = site.redundancy.clone().unwrap_or_default();
    f.push(
        "elec_redundancy_hv",
        "Electrical redundancy, high voltage",
        Value::text(r.electrical_hv.as_deref()),
        None,
        i("2(a)"),
        true,
        Source::Config,
        Some("[sites.redundancy] electrical_hv".into()),
    );
    f.push(
        "elec_redundancy_lv_lineup",
        "Electrical redundancy, low voltage (line-up)",
        Value::text(r.electrical_lv.as_deref()),
        None,
        i("2(a)"),
        true,
        Source::Config,
        Some("[sites.redundancy] electrical_lv".into()),
    );
    f.push(
        "elec_redundancy_rack",
        "Electrical redundancy, rack level",
        Value::text(r.electrical_rack.as_deref()),
        None,
        i("2(a)"),
        true,
        Source::Config,
        Some("[sites.redundancy] electrical_rack".into()),
    );
    f.push(
        "cooling_redundancy_room",
        "Cooling redundancy, room level",
        Value::text(r.cooling_room.as_deref()),
        None,
        i("2(b)"),
        true,
        Source::Config,
        Some("[sites.redundancy] cooling_room".into()),
    );
    f.push(
        "cooling_redundancy_rack",
        "Cooling redundancy, rack level",
        Value::text(r.cooling_rack.as_deref()),
        None,
        i("2(b)"),
        true,
        Source::Config,
        Some("[sites.redundancy] cooling_rack".into()),
    );
    let annex_i = Section { id: "annex_i", title: "Annex I", fields: std::mem::take(&mut f.out) };

    // Annex II, group 1.
    let ii = |p: &'static str| (Some("II"), p);
    let (pdit, pdit_src, pdit_key) = match ann.pdit_kw {
        Some(v) => (Some(v), Source::Declared, annual_key("pdit_kw")),
        None => (site.installed_it_power_kw, Source::Config, ck("installed_it_power_kw")),
    };
    f.push(
        "pdit_kw",
        "Installed IT power demand PDIT (kW)",
        Value::number(pdit),
        Some("kW"),
        ii("1(a)"),
        true,
        pdit_src,
        pdit_key,
    );
    let basis = site.pdit_basis.unwrap_or(PditBasis::Installed);
    f.push(
        "pdit_basis",
        "PDIT basis: installed or rated",
        Value::Text(basis.as_str().into()),
        None,
        ii("1(a)"),
        true,
        Source::Config,
        ck("pdit_basis"),
    )
    .note = site.pdit_basis.is_none().then(|| "default: installed".to_string());
    f.push(
        "sdc_m2",
        "Data centre total floor area SDC (m²)",
        Value::number(site.total_floor_area_m2),
        Some("m2"),
        ii("1(b)"),
        true,
        Source::Config,
        ck("total_floor_area_m2"),
    );
    f.push(
        "scr_m2",
        "Computer room floor area SCR (m²)",
        Value::number(site.computer_room_floor_area_m2),
        Some("m2"),
        ii("1(c)"),
        true,
        Source::Config,
        ck("computer_room_floor_area_m2"),
    );

    let e = edc(&t, &p).ok();
    let edc_roles: Vec<Role> = e.as_ref().map(|e| e.roles.clone()).unwrap_or_else(|| vec![Role::UtilityIn]);
    let edc_amount = e.as_ref().map(|e| Amount {
        value: e.total_kwh,
        estimated: e.side.estimated,
        coverage_ratio: e.coverage_ratio,
    });
    f.push(
        "edc_kwh",
        "Total energy consumption EDC (kWh)",
        Value::number(e.as_ref().map(|e| e.total_kwh)),
        Some("kWh"),
        ii("1(d)"),
        true,
        Source::Ledger,
        Some(meter_key(Role::UtilityIn)),
    )
    .provenance = Some(provenance(site, &t, &edc_roles, edc_amount));
    let gen_roles = [Role::BackupGenOut, Role::FuelIn];
    let has_gen = t.backup_gen_out.is_some() || t.fuel_in.is_some();
    let gen_amount = t.backup_gen_out.or(t.fuel_in);
    let bg = f.push(
        "edc_bg_kwh",
        "Energy from back-up generators EDC-BG (kWh)",
        Value::number(e.as_ref().map(|e| e.generator_kwh)),
        Some("kWh"),
        ii("1(d)"),
        true,
        Source::Ledger,
        Some(meter_key(Role::BackupGenOut)),
    );
    bg.provenance = Some(provenance(site, &t, &gen_roles, gen_amount));
    if !has_gen && e.is_some() {
        bg.note = Some("no backup_gen_out or fuel_in meter is configured: no generator energy in EDC".into());
    }

    let cat = eit_category(&t);
    let it = cat.and_then(|c| it_energy(&t, c).ok());
    let it_roles: Vec<Role> = cat.map(|c| vec![c.role()]).unwrap_or_else(|| vec![Role::UpsOut]);
    let eit = f.push(
        "eit_kwh",
        "IT equipment energy consumption EIT (kWh)",
        Value::number(it.map(|a| a.value)),
        Some("kWh"),
        ii("1(e)"),
        true,
        Source::Ledger,
        Some(meter_key(Role::UpsOut)),
    );
    let mut prov = provenance(site, &t, &it_roles, it);
    if cat == Some(Category::ItInput) && !site.meters.iter().any(|m| m.role == "it_in") {
        prov.meters.push("agents".into());
    }
    eit.provenance = Some(prov);
    let eit_point = match cat {
        Some(Category::Ups) => "Annex II 1(e): UPS output, PUE category 1 (EN 50600-4-2)".to_string(),
        Some(Category::Pdu) => "Annex II 1(e): PDU output (no UPS meter), PUE category 2 (EN 50600-4-2)".to_string(),
        Some(Category::ItInput) => "Annex II 1(e): measurement point specified by the data centre: IT equipment input (PUE category 3: agents' host energy and it_in meters)".to_string(),
        None => "none: no IT metering point (ups_out, pdu_out, it_in or agents)".to_string(),
    };
    eit.note = Some(eit_point.clone());
    let eb = cat.map(|c| Value::Text(eit_basis(c).into())).unwrap_or(Value::Null);
    f.push(
        "eit_basis",
        "EIT measurement point (ups_cat1, pdu, declared_point)",
        eb,
        None,
        ii("1(e)"),
        true,
        Source::Computed,
        Some(meter_key(Role::UpsOut)),
    );

    let gf = ann.grid_functions.clone();
    let gf_all = declared_all(|a| a.grid_functions.is_some());
    f.push(
        "grid_functions_provided",
        "Electrical grid functions provided",
        if gf_all { gf.as_ref().map(|g| Value::Bool(!g.is_empty())).unwrap_or(Value::Null) } else { Value::Null },
        None,
        ii("1(f)"),
        true,
        Source::Declared,
        annual_key("grid_functions"),
    );
    f.push(
        "grid_functions",
        "Electrical grid functions (list)",
        if gf_all { gf.map(Value::List).unwrap_or(Value::Null) } else { Value::Null },
        None,
        ii("1(f)"),
        true,
        Source::Declared,
        annual_key("grid_functions"),
    );
    let num = |all: bool, v: Option<f64>| if all { Value::number(v) } else { Value::Null };
    f.push(
        "cbtg_kw",
        "Average battery capacity offered to the grid CBtG (kW)",
        num(declared_all(|a| a.cbtg_kw.is_some()), ann.cbtg_kw),
        Some("kW"),
        ii("1(g)"),
        true,
        Source::Declared,
        annual_key("cbtg_kw"),
    );

    let water = |f: &mut Fields, key, label, role: Role, point| {
        let a = t.role(role);
        f.push(
            key,
            label,
            Value::number(a.map(|a| a.value)),
            Some("m3"),
            ii(point),
            true,
            Source::Ledger,
            Some(meter_key(role)),
        )
        .provenance = Some(provenance(site, &t, &[role], a));
    };
    water(&mut f, "win_m3", "Total water input WIN (m³)", Role::WaterIn, "1(h)");
    let wcat = t.water_in.map(|_| Value::Integer(2)).unwrap_or(Value::Null);
    f.push(
        "win_wue_category",
        "WUE category of WIN (EN 50600-4-9)",
        wcat,
        None,
        ii("1(h)"),
        true,
        Source::Computed,
        Some(meter_key(Role::WaterIn)),
    );
    water(&mut f, "win_pot_m3", "Total potable water input WIN-POT (m³)", Role::WaterPotableIn, "1(i)");
    let h = t.heat_reused_out;
    f.push(
        "ereuse_kwh",
        "Waste heat reused EREUSE (kWh)",
        Value::number(h.map(|a| a.value)),
        Some("kWh"),
        ii("1(j)"),
        true,
        Source::Ledger,
        Some(meter_key(Role::HeatReusedOut)),
    )
    .provenance = Some(provenance(site, &t, &[Role::HeatReusedOut], h));
    f.push(
        "twh_c",
        "Average waste heat temperature TWH (°C)",
        num(declared_all(|a| a.twh_c.is_some()), ann.twh_c),
        Some("°C"),
        ii("1(k)"),
        true,
        Source::Declared,
        annual_key("twh_c"),
    );
    let (tin, tin_src, tin_key) = match ann.tin_setpoint_c {
        Some(v) => (Some(v), Source::Declared, annual_key("tin_setpoint_c")),
        None => (site.intake_air_set_point_c, Source::Config, ck("intake_air_set_point_c")),
    };
    f.push(
        "tin_setpoint_c",
        "Average IT intake air temperature set point (°C)",
        Value::number(tin),
        Some("°C"),
        ii("1(l)"),
        true,
        tin_src,
        tin_key,
    );
    let refr = if declared_all(|a| a.refrigerant_types.is_some()) {
        ann.refrigerant_types.clone().map(Value::List).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    f.push(
        "refrigerant_types",
        "Types of refrigerants (Regulation (EU) No 517/2014)",
        refr,
        None,
        ii("1(m)"),
        true,
        Source::Declared,
        annual_key("refrigerant_types"),
    );
    let cdd_all = declared_all(|a| a.cdd_degree_days.is_some());
    f.push(
        "cdd_degree_days",
        "Cooling degree days CDD, base 21 °C",
        num(cdd_all, ann.cdd_degree_days),
        Some("degree-days"),
        ii("1(n)"),
        true,
        Source::Declared,
        annual_key("cdd_degree_days"),
    );
    f.push(
        "cdd_source",
        "Open-access source of the CDD",
        if cdd_all { Value::text(ann.cdd_source.as_deref()) } else { Value::Null },
        None,
        ii("1(n)"),
        true,
        Source::Declared,
        annual_key("cdd_source"),
    );

    // Renewables: on-site from the meters, GOs and PPAs as the indicators allocated them.
    let os = t.onsite_renewable_consumed;
    let os_value = os.map(|a| a.value).unwrap_or(0.0);
    let goo = declared_all(|a| a.eres_goo_kwh.is_some()).then_some(t.certificates.go_kwh);
    let ppa = declared_all(|a| a.eres_ppa_kwh.is_some()).then_some(t.certificates.ppa_kwh);
    let tot = goo.zip(ppa).map(|(g, q)| os_value + g + q);
    let note_alloc =
        interim.then(|| "annual quantity × share of the year in the period (pro rata temporis)".to_string());
    f.push(
        "eres_tot_kwh",
        "Total renewable energy consumption ERES-TOT (kWh)",
        Value::number(tot),
        Some("kWh"),
        ii("1(o)"),
        true,
        Source::Computed,
        annual_key("eres_goo_kwh, eres_ppa_kwh"),
    )
    .note = Some("ERES-GOO + ERES-PPA + ERES-OS".into());
    f.push(
        "eres_goo_kwh",
        "Renewable energy from guarantees of origin ERES-GOO (kWh)",
        Value::number(goo),
        Some("kWh"),
        ii("1(p)"),
        true,
        Source::Declared,
        annual_key("eres_goo_kwh"),
    )
    .note = note_alloc.clone();
    f.push(
        "eres_ppa_kwh",
        "Renewable energy from PPAs ERES-PPA (kWh)",
        Value::number(ppa),
        Some("kWh"),
        ii("1(q)"),
        true,
        Source::Declared,
        annual_key("eres_ppa_kwh"),
    )
    .note = note_alloc;
    let os_field = f.push(
        "eres_os_kwh",
        "On-site renewable energy consumed ERES-OS (kWh)",
        Value::Number(os_value),
        Some("kWh"),
        ii("1(r)"),
        true,
        Source::Ledger,
        Some(meter_key(Role::OnsiteRenewableConsumed)),
    );
    os_field.provenance = Some(provenance(site, &t, &[Role::OnsiteRenewableConsumed], os));
    if os.is_none() {
        os_field.note = Some("no onsite_renewable_consumed meter is configured: no on-site renewable energy".into());
    }
    let annex_ii_energy = Section {
        id: "annex_ii_energy",
        title: "Annex II 1: energy and sustainability",
        fields: std::mem::take(&mut f.out),
    };

    // Annex II, groups 2 and 3.
    f.push(
        "cserv_sert",
        "ICT capacity for servers CSERV (SERT active-state performance)",
        num(declared_all(|a| a.cserv_sert.is_some()), ann.cserv_sert),
        None,
        ii("2(a)"),
        true,
        Source::Declared,
        annual_key("cserv_sert"),
    );
    f.push(
        "cserv_floor_coverage_pct",
        "Share of the computer room floor area CSERV covers (%)",
        num(declared_all(|a| a.cserv_floor_coverage_pct.is_some()), ann.cserv_floor_coverage_pct),
        Some("%"),
        ii("2(a)"),
        true,
        Source::Declared,
        annual_key("cserv_floor_coverage_pct"),
    );
    f.push(
        "cserv_method",
        "How CSERV was obtained",
        Value::text(ann.cserv_method.as_deref()),
        None,
        ii("2(a)"),
        false,
        Source::Declared,
        annual_key("cserv_method"),
    );
    f.push(
        "cstor_pb",
        "ICT capacity for storage CSTOR (PB)",
        num(declared_all(|a| a.cstor_pb.is_some()), ann.cstor_pb),
        Some("PB"),
        ii("2(b)"),
        true,
        Source::Declared,
        annual_key("cstor_pb"),
    );
    f.push(
        "cstor_floor_coverage_pct",
        "Share of the computer room floor area CSTOR covers (%)",
        num(declared_all(|a| a.cstor_floor_coverage_pct.is_some()), ann.cstor_floor_coverage_pct),
        Some("%"),
        ii("2(b)"),
        true,
        Source::Declared,
        annual_key("cstor_floor_coverage_pct"),
    );
    let annex_ii_ict_capacity =
        Section { id: "annex_ii_ict_capacity", title: "Annex II 2: ICT capacity", fields: std::mem::take(&mut f.out) };
    let traffic_note = "optional here: the 2026 amending act was proposed without the data traffic indicators";
    for (key, label, unit, point, v, all) in [
        (
            "bin_gbyte_per_s",
            "Incoming traffic bandwidth BIN (GB/s)",
            "GB/s",
            "3(a)",
            ann.bin_gbyte_per_s,
            declared_all(|a| a.bin_gbyte_per_s.is_some()),
        ),
        (
            "bout_gbyte_per_s",
            "Outgoing traffic bandwidth BOUT (GB/s)",
            "GB/s",
            "3(b)",
            ann.bout_gbyte_per_s,
            declared_all(|a| a.bout_gbyte_per_s.is_some()),
        ),
        (
            "traffic_in_eb",
            "Incoming data traffic TIN (EB)",
            "EB",
            "3(c)",
            ann.traffic_in_eb,
            declared_all(|a| a.traffic_in_eb.is_some()),
        ),
        (
            "traffic_out_eb",
            "Outgoing data traffic TOUT (EB)",
            "EB",
            "3(d)",
            ann.traffic_out_eb,
            declared_all(|a| a.traffic_out_eb.is_some()),
        ),
    ] {
        f.push(key, label, num(all, v), Some(unit), ii(point), false, Source::Declared, annual_key(key)).note =
            Some(traffic_note.into());
    }
    let annex_ii_data_traffic =
        Section { id: "annex_ii_data_traffic", title: "Annex II 3: data traffic", fields: std::mem::take(&mut f.out) };

    // France: D.236-2 and D.236-3, mandatory for a site in France.
    let fr = site.country.as_deref() == Some("FR");
    let siret = if site.siret.is_empty() { Value::Null } else { Value::List(site.siret.clone()) };
    f.push("siret", "SIRET number(s)", siret, None, (None, "D.236-2"), fr, Source::Config, ck("siret"));
    f.push(
        "declared_installed_power_kw",
        "Declared installed power (kW)",
        Value::number(site.installed_it_power_kw),
        Some("kW"),
        (None, "D.236-2"),
        fr,
        Source::Config,
        ck("installed_it_power_kw"),
    );
    f.push(
        "contact_name",
        "Person to contact (name)",
        Value::text(site.contact_name.as_deref()),
        None,
        (None, "D.236-2"),
        fr,
        Source::Config,
        ck("contact_name"),
    );
    f.push(
        "contact_email",
        "Person to contact (e-mail)",
        Value::text(site.contact_email.as_deref()),
        None,
        (None, "D.236-2"),
        fr,
        Source::Config,
        ck("contact_email"),
    );
    let date = site
        .commissioning_date
        .as_deref()
        .and_then(|d| d.parse::<jiff::civil::Date>().ok())
        .map(Value::Date)
        .unwrap_or(Value::Null);
    f.push(
        "commissioning_date",
        "Commissioning date",
        date,
        None,
        (None, "D.236-2"),
        fr,
        Source::Config,
        ck("commissioning_date"),
    );
    f.push(
        "public_disclosure_url",
        "Address of the public page",
        Value::text(site.public_disclosure_url.as_deref()),
        None,
        (None, "D.236-3"),
        fr,
        Source::Config,
        ck("public_disclosure_url"),
    );
    let france = Section { id: "france", title: "France (Code de l'énergie)", fields: std::mem::take(&mut f.out) };

    // Indicators: those the indicators computed at the EIT point, unchanged.
    let pick = |name: Name, pred: &dyn Fn(&Indicator) -> bool| computed.iter().find(|i| i.name == name && pred(i));
    let at_cat = |i: &Indicator| cat.is_none() || i.category == cat;
    let mut indicators = Vec::new();
    let specs: [IndicatorSpec; 5] = [
        (Name::Pue, "Power usage effectiveness PUE = EDC / EIT", Some("III"), Some("(a)"), "EN 50600-4-2"),
        (
            Name::Wue,
            "Water usage effectiveness WUE = WIN / EIT (L/kWh = m³/MWh)",
            Some("III"),
            Some("(b)"),
            "EN 50600-4-9",
        ),
        (Name::Erf, "Energy reuse factor ERF = EREUSE / EDC", Some("III"), Some("(c)"), "EN 50600-4-6"),
        (Name::Ref, "Renewable energy factor REF = ERES-TOT / EDC", Some("III"), Some("(d)"), "EN 50600-4-3"),
        (Name::Cue, "Carbon usage effectiveness CUE, location-based (not in 2024/1364)", None, None, "EN 50600-4-8"),
    ];
    for (name, label, annex, point, standard) in specs {
        let found = match name {
            Name::Pue => pick(name, &|i| at_cat(i)),
            Name::Wue => pick(name, &|i| at_cat(i) && i.water == Some(Water::Total)),
            Name::Cue => pick(name, &|i| at_cat(i) && i.basis == Some(Basis::Location)),
            _ => pick(name, &|_| true),
        };
        let Some(x) = found else { continue };
        let class = match (name, x.value) {
            (Name::Pue, Some(v)) => classes::pue_class(v),
            (Name::Wue, Some(v)) => classes::wue_class(v),
            _ => None,
        };
        indicators.push(IndicatorField {
            name,
            label,
            value: x.value,
            unit: x.unit,
            annex,
            point,
            regulation: annex.map(|_| REGULATION),
            standard,
            category: x.category,
            water: x.water,
            basis: x.basis,
            numerator: x.numerator,
            denominator: x.denominator,
            coverage_ratio: x.coverage_ratio,
            estimated_share: x.estimated_share,
            missing_meters: x.missing_meters.clone(),
            error: x.error,
            carbon_source: x.carbon_source.clone(),
            class_indicative: class.map(|_| true),
            class,
            interim,
        });
    }

    let mut d = Declaration {
        schema: SCHEMA,
        schema_version: SCHEMA_VERSION,
        generated_at,
        site: site.id.clone(),
        reporting_year: period.year,
        period_start: rfc3339(period.from_ms),
        period_end: rfc3339(period.to_ms),
        timezone: site.timezone.clone(),
        interim,
        first_reporting_period: period.year.is_some_and(|y| y == first_reporting_year(site)),
        operating_period: operating_period(site, period, &tz),
        annex_i,
        annex_ii_energy,
        annex_ii_ict_capacity,
        annex_ii_data_traffic,
        france,
        indicators,
        missing: Vec::new(),
        omissions: Vec::new(),
        conventions: Conventions {
            rounding: "none: every value is unrounded (IEEE 754 double); round for display only",
            class_scale: "indicative: EU rating scheme classes A–G for PUE and WUE, Commission Delegated Regulation C(2026) 3472 Annex I, Tables 1 and 2; the European database assigns the real class",
            class_boundaries: "from the unrounded value; each class interval excludes its lower bound and includes its upper bound (PUE 1.25 is B, 1.2500001 is C)",
            eit_point,
            energy_source: "the ledger's exact integer microjoules, converted once to kWh; the same computation as GET /api/v1/sites/{site}/indicators",
        },
    };
    // Where each declared figure was read (one year only: a period over
    // several years takes its figures from several tables).
    let one_year = years.len() == 1;
    for s in [&mut d.annex_ii_energy, &mut d.annex_ii_ict_capacity, &mut d.annex_ii_data_traffic] {
        for f in &mut s.fields {
            let key = if f.key == "grid_functions_provided" { "grid_functions" } else { f.key };
            if one_year && f.source == Source::Declared && !f.value.is_null() {
                f.declared_in = ann.origin(key);
            }
        }
    }
    // Art. 3(2): the first reporting period's omitted KPIs (checked at config load).
    if one_year && d.first_reporting_period {
        for f in &mut d.annex_ii_energy.fields {
            let Some(reason) = ann.omitted(f.key) else { continue };
            if !OMITTABLE.iter().any(|(k, _)| *k == f.key) {
                continue;
            }
            f.value = Value::Null;
            f.provenance = None;
            f.declared_in = None;
            f.omitted = Some(reason.to_string());
            f.note = Some(format!("omitted for technical reasons ({ART_3_2}): {reason}"));
            d.omissions.push(Omitted {
                field: f.key,
                annex: f.annex,
                point: f.point,
                reason: reason.to_string(),
                regulation: ART_3_2,
            });
        }
    }
    d.missing = d
        .sections()
        .iter()
        .flat_map(|s| s.fields.iter())
        .filter(|f| f.mandatory && f.value.is_null() && f.omitted.is_none())
        .map(|f| Missing {
            field: f.key,
            annex: f.annex,
            point: f.point,
            config_key: f.config_key.clone().unwrap_or_default(),
        })
        .collect();
    Ok(d)
}

/// Art. 3(1): the period of operation when the site was commissioned during
/// the reporting year asked for.
fn operating_period(site: &SiteConfig, period: ReportPeriod, tz: &jiff::tz::TimeZone) -> Option<OperatingPeriod> {
    let y = period.year?;
    let d = commissioning(site).filter(|d| d.year() == y)?;
    let (_, b) = operating_span(site, y, tz)?;
    let to = jiff::Timestamp::from_millisecond(b - 1).ok()?.to_zoned_datetime(tz.clone()).date();
    let from = d.max(jiff::civil::date(y, 1, 1));
    Some(OperatingPeriod {
        commissioning_date: d,
        from,
        to,
        regulation: ART_3_1,
        statement: format!(
            "In operation since {d} (commissioning date), less than the calendar year {y}: this declaration covers only the period of operation, {from} to {to}, and every energy figure and indicator is of that period ({ART_3_1})."
        ),
    })
}

/// Name, label, annex, point and standard of a declared indicator.
type IndicatorSpec = (Name, &'static str, Option<&'static str>, Option<&'static str>, &'static str);

/// A unit enum's serde name (`co_hosting`).
fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::indicators::HallTotals;

    fn halls(list: &[(&str, HallTotals)]) -> SiteTotals {
        SiteTotals { halls: list.iter().map(|(h, t)| (h.to_string(), *t)).collect(), ..SiteTotals::default() }
    }

    /// Annex II 1(e): the UPS output first, then the PDU, then the IT input the site specifies.
    #[test]
    fn eit_is_taken_where_annex_ii_1e_says() {
        let a = Some(Amount::measured(10.0));
        let all = HallTotals { ups_out: a, pdu_out: a, it_in: a, cooling: None };
        assert_eq!(eit_category(&halls(&[("", all)])), Some(Category::Ups));
        let pdu_it = HallTotals { ups_out: None, ..all };
        assert_eq!(eit_category(&halls(&[("", pdu_it)])), Some(Category::Pdu));
        let it = HallTotals { ups_out: None, pdu_out: None, ..all };
        assert_eq!(eit_category(&halls(&[("", it)])), Some(Category::ItInput));
        assert_eq!(eit_category(&SiteTotals::default()), None);
        // Hall A at the UPS, hall B only at the PDU: category 1 does not cover the
        // site, category 2 does not either; the first metered category is named
        // (its indicators then carry the mixed_categories refusal).
        let ups_only = HallTotals { ups_out: a, ..HallTotals::default() };
        let pdu_only = HallTotals { pdu_out: a, ..HallTotals::default() };
        let mixed = halls(&[("A", ups_only), ("B", pdu_only)]);
        assert_eq!(eit_category(&mixed), Some(Category::Ups));
        assert!(it_energy(&mixed, Category::Ups).is_err());
        assert_eq!(eit_basis(Category::Ups), "ups_cat1");
        assert_eq!(eit_basis(Category::ItInput), "declared_point");
    }
}
