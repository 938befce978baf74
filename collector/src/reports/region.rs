//! The Region's report: every data centre of a region over one year (or an
//! interim period), from two inputs mixed freely: the sites of this
//! collector's ledger whose `region` matches, and EED declarations of other
//! operators (the JSON of `report eed`, from files or URLs), each validated
//! and kept with its provenance.
//!
//! Both inputs go through the same path: a ledger site's declaration is built
//! by [`super::eed::build`] (the computation of the indicators API),
//! serialised, and read back by the same [`figures`] function as an imported
//! one, so a site counts in the regional totals the same way whatever its
//! origin. The monthly series of ledger sites come from
//! `site_report::period_inputs` and `indicators::site_indicators` per
//! calendar month, the computation of the indicators API with `step=1mo`.
//!
//! Regional values are given twice, each named: the ratio of sums
//! (ΣEDC / ΣEIT for PUE) and the energy-weighted mean of Delegated Regulation
//! (EU) 2024/1364 Annex IV (Σ(EDCᵢ × KPIᵢ) / ΣEDCᵢ). Nothing here averages
//! ratios otherwise. Rendering is [`super::region_render`]'s.

use serde::Serialize;
use serde_json::Value as Json;

use super::eed::{self, ReportPeriod, eit_category};
use crate::carbon::config::CarbonConfig;
use crate::carbon::service::CarbonService;
use crate::config::SiteConfig;
use crate::indicators::compute::it_energy;
use crate::indicators::inputs::edc;
use crate::indicators::period::{Step, split};
use crate::indicators::{Basis, Name, site_indicators};
use crate::ledger::query::{EnergyQuery, EnergyReport, HostRow, rfc3339};
use crate::ledger::{HostModel, LedgerReader, Retirement, StoreError};
use crate::site_report::{ReportError, params, period_inputs};

/// Name of the region report's schema.
pub const SCHEMA: &str = "domesday.region-report";
/// Its version (semantic versioning, as the declaration's).
pub const SCHEMA_VERSION: &str = "1.0.0";
/// The act whose Annex IV defines the energy-weighted aggregation.
pub const ANNEX_IV: &str = "Commission Delegated Regulation (EU) 2024/1364, Annex IV";
/// Largest declaration accepted from a file or a URL.
pub const MAX_DECLARATION_BYTES: usize = 8 << 20;
/// How long a declaration URL may take to answer.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a region report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{0}")]
    Report(#[from] ReportError),
    /// An imported declaration that is unreadable or not valid.
    #[error("{origin}: {problem}")]
    Declaration { origin: String, problem: String },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Render(#[from] super::render::RenderError),
}

/// Where a site's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Built from this collector's ledger.
    Ledger,
    /// An imported declaration (a file or a URL).
    Declaration,
}

/// An imported declaration: where it came from and its JSON.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The file path or URL, as given.
    pub origin: String,
    pub json: Json,
}

/// The figures one declaration gives, read by [`figures`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    pub site: String,
    pub name: Option<String>,
    pub operator: Option<String>,
    pub lau_code: Option<String>,
    pub nuts3_code: Option<String>,
    pub dc_type: Option<String>,
    pub reporting_year: Option<i64>,
    pub period_start: String,
    pub period_end: String,
    pub interim: bool,
    pub pdit_kw: Option<f64>,
    pub edc_kwh: Option<f64>,
    pub edc_bg_kwh: Option<f64>,
    pub eit_kwh: Option<f64>,
    pub eit_basis: Option<String>,
    pub win_m3: Option<f64>,
    pub ereuse_kwh: Option<f64>,
    pub eres_tot_kwh: Option<f64>,
    pub coverage_ratio: Option<f64>,
    pub estimated_share: Option<f64>,
    pub missing_meters: Vec<String>,
    pub indicators: Vec<IndicatorFigure>,
}

/// One indicator of a declaration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndicatorFigure {
    pub name: String,
    pub value: Option<f64>,
    pub numerator: Option<f64>,
    pub denominator: Option<f64>,
    pub category: Option<i64>,
    pub class: Option<String>,
    pub error: Option<String>,
    pub carbon_source: Option<String>,
}

impl Figures {
    fn indicator(&self, name: &str) -> Option<&IndicatorFigure> {
        self.indicators.iter().find(|i| i.name == name)
    }

    fn value(&self, name: &str) -> Option<f64> {
        self.indicator(name).and_then(|i| i.value)
    }
}

fn bad(field: &str, problem: impl std::fmt::Display) -> String {
    format!("field `{field}`: {problem}")
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

fn text_at(v: &Json, path: &str, required: bool) -> Result<Option<String>, String> {
    match v.pointer(&format!("/{}", path.replace('.', "/"))) {
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Null) | None if !required => Ok(None),
        None => Err(bad(path, "is missing")),
        Some(o) => Err(bad(path, format!("must be a string, found {}", kind(o)))),
    }
}

fn number(path: &str, v: Option<&Json>, non_negative: bool) -> Result<Option<f64>, String> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => {
            let x = n.as_f64().ok_or_else(|| bad(path, "is not a finite number"))?;
            if non_negative && !(x.is_finite() && x >= 0.0) {
                return Err(bad(path, format!("{x} must be a number ≥ 0")));
            }
            Ok(Some(x))
        }
        Some(o) => Err(bad(path, format!("must be a number or null, found {}", kind(o)))),
    }
}

/// A declared field `section.key`: an object with `value` (and `unit` when `unit` is given).
fn declared<'a>(v: &'a Json, section: &str, key: &str, unit: Option<&str>) -> Result<&'a Json, String> {
    let path = format!("{section}.{key}");
    let f = v.get(section).and_then(|s| s.get(key)).ok_or_else(|| bad(&path, "is missing"))?;
    if !f.is_object() {
        return Err(bad(
            &path,
            format!("must be an object with `value`, `unit`, `annex` and `point`, found {}", kind(f)),
        ));
    }
    let value = f.get("value").ok_or_else(|| bad(&format!("{path}.value"), "is missing"))?;
    if let Some(u) = unit
        && f.get("unit").and_then(Json::as_str) != Some(u)
    {
        return Err(bad(
            &format!("{path}.unit"),
            format!("must be {u:?}, found {}", f.get("unit").unwrap_or(&Json::Null)),
        ));
    }
    Ok(value)
}

fn declared_number(v: &Json, section: &str, key: &str, unit: &str) -> Result<Option<f64>, String> {
    let x = declared(v, section, key, Some(unit))?;
    number(&format!("{section}.{key}.value"), Some(x), true)
}

fn declared_text(v: &Json, section: &str, key: &str) -> Result<Option<String>, String> {
    match declared(v, section, key, None)? {
        Json::String(s) => Ok(Some(s.clone())),
        Json::Null => Ok(None),
        o => Err(bad(&format!("{section}.{key}.value"), format!("must be a string or null, found {}", kind(o)))),
    }
}

/// Validates a declaration against our schema (`domesday.eed-declaration`
/// 1.x) and reads the figures the region needs. The error names the field.
pub fn figures(v: &Json) -> Result<Figures, String> {
    if !v.is_object() {
        return Err(format!("not a declaration: the top level must be an object, found {}", kind(v)));
    }
    match v.get("schema").and_then(Json::as_str) {
        Some(eed::SCHEMA) => {}
        other => {
            return Err(bad(
                "schema",
                format!("must be {:?} (the JSON of `report eed`), found {other:?}", eed::SCHEMA),
            ));
        }
    }
    let version = text_at(v, "schema_version", true)?.unwrap_or_default();
    let major = eed::SCHEMA_VERSION.split('.').next().unwrap_or("1");
    if version.split('.').next() != Some(major) {
        return Err(bad("schema_version", format!("{version:?} is not a {major}.x version this collector reads")));
    }
    let site = text_at(v, "site", true)?.unwrap_or_default();
    if site.trim().is_empty() {
        return Err(bad("site", "must not be empty"));
    }
    let reporting_year = match v.get("reporting_year") {
        Some(Json::Null) => None,
        Some(Json::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(o) => return Err(bad("reporting_year", format!("must be a year or null, found {o}"))),
        None => return Err(bad("reporting_year", "is missing")),
    };
    let mut when = Vec::new();
    for k in ["period_start", "period_end"] {
        let s = text_at(v, k, true)?.unwrap_or_default();
        let t = s.parse::<jiff::Timestamp>().map_err(|e| bad(k, format!("{s:?} is not an RFC 3339 instant: {e}")))?;
        when.push((s, t));
    }
    if when[0].1 >= when[1].1 {
        return Err(bad("period_end", "must be after period_start"));
    }
    let interim = match v.get("interim") {
        Some(Json::Bool(b)) => *b,
        Some(o) => return Err(bad("interim", format!("must be a boolean, found {}", kind(o)))),
        None => return Err(bad("interim", "is missing")),
    };
    let mut f = Figures {
        site,
        name: declared_text(v, "annex_i", "dc_name")?,
        operator: declared_text(v, "annex_i", "operator_name")?,
        lau_code: declared_text(v, "annex_i", "location_lau_code")?,
        nuts3_code: v
            .get("annex_i")
            .and_then(|s| s.get("location_nuts3_code"))
            .map_or(Ok(None), |_| declared_text(v, "annex_i", "location_nuts3_code"))?,
        dc_type: declared_text(v, "annex_i", "dc_type")?,
        reporting_year,
        period_start: when[0].0.clone(),
        period_end: when[1].0.clone(),
        interim,
        pdit_kw: declared_number(v, "annex_ii_energy", "pdit_kw", "kW")?,
        edc_kwh: declared_number(v, "annex_ii_energy", "edc_kwh", "kWh")?,
        edc_bg_kwh: declared_number(v, "annex_ii_energy", "edc_bg_kwh", "kWh")?,
        eit_kwh: declared_number(v, "annex_ii_energy", "eit_kwh", "kWh")?,
        eit_basis: declared_text(v, "annex_ii_energy", "eit_basis")?,
        win_m3: declared_number(v, "annex_ii_energy", "win_m3", "m3")?,
        ereuse_kwh: declared_number(v, "annex_ii_energy", "ereuse_kwh", "kWh")?,
        eres_tot_kwh: declared_number(v, "annex_ii_energy", "eres_tot_kwh", "kWh")?,
        ..Figures::default()
    };
    // Coverage and estimated share of the ledger figures (EDC and EIT).
    let mut missing: Vec<String> = Vec::new();
    for key in ["edc_kwh", "eit_kwh", "win_m3", "ereuse_kwh"] {
        let Some(p) = v.pointer(&format!("/annex_ii_energy/{key}/provenance")) else { continue };
        let path = format!("annex_ii_energy.{key}.provenance");
        if key == "edc_kwh" || key == "eit_kwh" {
            if let Some(c) = number(&format!("{path}.coverage_ratio"), p.get("coverage_ratio"), true)? {
                f.coverage_ratio = Some(f.coverage_ratio.map_or(c, |o: f64| o.min(c)));
            }
            if let Some(e) = number(&format!("{path}.estimated_share"), p.get("estimated_share"), true)? {
                f.estimated_share = Some(f.estimated_share.map_or(e, |o: f64| o.max(e)));
            }
        }
        if let Some(m) = p.get("missing_meters") {
            let list = m.as_array().ok_or_else(|| bad(&format!("{path}.missing_meters"), "must be a list"))?;
            missing.extend(list.iter().filter_map(|x| x.as_str().map(str::to_string)));
        }
    }
    let inds = match v.get("indicators") {
        Some(Json::Array(a)) => a,
        Some(o) => return Err(bad("indicators", format!("must be a list, found {}", kind(o)))),
        None => return Err(bad("indicators", "is missing")),
    };
    for (n, i) in inds.iter().enumerate() {
        let at = |k: &str| format!("indicators[{n}].{k}");
        let name = match i.get("name").and_then(Json::as_str) {
            Some(s @ ("pue" | "wue" | "erf" | "ref" | "cue")) => s.to_string(),
            other => return Err(bad(&at("name"), format!("must be one of pue, wue, erf, ref, cue, found {other:?}"))),
        };
        let opt_text = |k: &str| -> Result<Option<String>, String> {
            match i.get(k) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(o) => Err(bad(&at(k), format!("must be a string or null, found {}", kind(o)))),
            }
        };
        let class = opt_text("class")?;
        if let Some(c) = &class
            && !matches!(c.as_str(), "A" | "B" | "C" | "D" | "E" | "F" | "G")
        {
            return Err(bad(&at("class"), format!("{c:?} is not a class A–G")));
        }
        if let Some(Json::Array(m)) = i.get("missing_meters") {
            missing.extend(m.iter().filter_map(|x| x.as_str().map(str::to_string)));
        }
        f.indicators.push(IndicatorFigure {
            value: number(&at("value"), i.get("value"), true)?,
            numerator: number(&at("numerator"), i.get("numerator"), true)?,
            denominator: number(&at("denominator"), i.get("denominator"), true)?,
            category: i.get("category").and_then(Json::as_i64),
            class,
            error: opt_text("error")?,
            carbon_source: opt_text("carbon_source")?,
            name,
        });
    }
    missing.sort();
    missing.dedup();
    f.missing_meters = missing;
    Ok(f)
}

/// Whether a declaration URL may be fetched: `https`, or plain `http` on a
/// loopback address (tests, a local mirror).
pub fn fetchable(origin: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(origin).map_err(|e| format!("not a URL: {e}"))?;
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err("only https URLs are fetched (plain http only on a loopback address)".into()),
    }
}

/// Reads and validates one declaration from a file or an `https` URL (plain
/// `http` only on a loopback address, for tests and local mirrors).
pub async fn load_declaration(origin: &str) -> Result<Imported, RegionError> {
    let err = |problem: String| RegionError::Declaration { origin: origin.to_string(), problem };
    let bytes = if origin.starts_with("https://") || origin.starts_with("http://") {
        let url = fetchable(origin).map_err(err)?;
        let client =
            reqwest::Client::builder().timeout(FETCH_TIMEOUT).build().map_err(|e| err(format!("HTTP client: {e}")))?;
        let mut r = client.get(url).send().await.map_err(|e| err(format!("fetching: {e}")))?;
        if !r.status().is_success() {
            return Err(err(format!("fetching: HTTP status {}", r.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| err(format!("reading the answer: {e}")))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DECLARATION_BYTES {
                return Err(err(format!("larger than {MAX_DECLARATION_BYTES} bytes")));
            }
        }
        body
    } else {
        let meta = std::fs::metadata(origin).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_DECLARATION_BYTES as u64 {
            return Err(err(format!("larger than {MAX_DECLARATION_BYTES} bytes")));
        }
        std::fs::read(origin).map_err(|e| err(format!("cannot read: {e}")))?
    };
    let json: Json = serde_json::from_slice(&bytes).map_err(|e| err(format!("not JSON: {e}")))?;
    figures(&json).map_err(err)?;
    Ok(Imported { origin: origin.to_string(), json })
}

/// One month of a ledger site, from the indicators' computation over that month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Month {
    /// `YYYY-MM` of the site's zone.
    pub month: String,
    pub from: String,
    pub to: String,
    /// EDC's parts (kWh): grid, generators, on-site renewables, district chilled water (weighted).
    pub utility_in_kwh: Option<f64>,
    pub backup_gen_kwh: Option<f64>,
    pub onsite_renewable_kwh: Option<f64>,
    pub chilled_water_kwh: Option<f64>,
    pub edc_kwh: Option<f64>,
    pub eit_kwh: Option<f64>,
    pub pue: Option<f64>,
    pub cue: Option<f64>,
    /// Time-matched grid intensity of the month's grid energy, gCO2e/kWh.
    pub grid_g_per_kwh: Option<f64>,
    pub carbon_fallback: Option<bool>,
}

/// The previous year's figures of a site, for the year-on-year change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Previous {
    pub reporting_year: Option<i64>,
    pub origin: String,
    pub edc_kwh: Option<f64>,
    pub pue: Option<f64>,
}

/// One data centre of the region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionSite {
    pub site: String,
    pub name: Option<String>,
    pub operator: Option<String>,
    pub source: Origin,
    /// `ledger`, or the file path or URL of the declaration.
    pub origin: String,
    pub reporting_year: Option<i64>,
    pub period_start: String,
    pub period_end: String,
    pub interim: bool,
    pub lau_code: Option<String>,
    pub nuts3_code: Option<String>,
    pub dc_type: Option<String>,
    /// Annex IV size category of PDIT.
    pub size_category: Option<&'static str>,
    pub pdit_kw: Option<f64>,
    pub edc_kwh: Option<f64>,
    pub edc_bg_kwh: Option<f64>,
    pub eit_kwh: Option<f64>,
    pub eit_basis: Option<String>,
    pub win_m3: Option<f64>,
    pub ereuse_kwh: Option<f64>,
    pub eres_tot_kwh: Option<f64>,
    pub pue: Option<f64>,
    pub pue_class: Option<String>,
    pub pue_category: Option<i64>,
    pub wue: Option<f64>,
    pub wue_class: Option<String>,
    pub erf: Option<f64>,
    #[serde(rename = "ref")]
    pub ref_: Option<f64>,
    pub cue: Option<f64>,
    /// CUE's numerator: location-based emissions, kgCO2e.
    pub emissions_kgco2e: Option<f64>,
    pub carbon_source: Option<String>,
    /// Whether a fallback intensity covered part of the period (ledger sites; unknown for declarations).
    pub carbon_fallback: Option<bool>,
    pub coverage_ratio: Option<f64>,
    pub estimated_share: Option<f64>,
    pub missing_meters: Vec<String>,
    /// Indicators the declaration refused, with their code (`pue: missing_meter`).
    pub refusals: Vec<String>,
    pub previous: Option<Previous>,
    /// (EDC − previous EDC) / previous EDC.
    pub edc_change_ratio: Option<f64>,
    /// PUE − previous PUE.
    pub pue_change: Option<f64>,
    /// Rank by PUE, 1 the lowest; none without a PUE.
    pub pue_rank: Option<u32>,
    /// Monthly figures (ledger sites only: a declaration has annual figures).
    pub monthly: Vec<Month>,
    /// The declaration's indicators, whose numerators and denominators the regional ratios sum.
    #[serde(skip)]
    pub figures: Vec<IndicatorFigure>,
}

/// A regional value of one indicator, both ways.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionIndicator {
    pub name: &'static str,
    pub unit: &'static str,
    /// Σ numerators / Σ denominators over the sites counted.
    pub ratio_of_sums: Option<f64>,
    pub numerator: f64,
    pub denominator: f64,
    pub ratio_of_sums_formula: &'static str,
    /// Σ(EDCᵢ × valueᵢ) / Σ EDCᵢ, Annex IV.
    pub energy_weighted: Option<f64>,
    pub energy_weighted_formula: &'static str,
    pub energy_weighted_source: &'static str,
    pub sites_counted: Vec<String>,
    /// Sites without a value (refused, or no figure), left out of both.
    pub sites_left_out: Vec<String>,
    /// PUE categories of the sites counted (PUE, WUE and CUE); several means the ratio mixes metering points.
    pub categories: Vec<i64>,
}

/// Regional totals and the Annex IV distributions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionTotals {
    pub sites: usize,
    pub sites_from_ledger: usize,
    pub sites_from_declarations: usize,
    pub pdit_kw: f64,
    pub edc_kwh: f64,
    pub eit_kwh: f64,
    pub win_m3: f64,
    pub ereuse_kwh: f64,
    pub eres_tot_kwh: f64,
    pub emissions_kgco2e: f64,
    /// Number of sites per Annex IV size category (`unknown` without PDIT).
    pub by_size_category: Vec<Count>,
    /// Number of sites per type (Annex I 1(d)).
    pub by_dc_type: Vec<Count>,
}

/// How many sites have a key (a size category, a type).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Count {
    pub key: String,
    pub sites: usize,
}

/// A month of the region: the sums of its ledger sites.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionMonth {
    pub month: String,
    pub edc_kwh: f64,
    pub eit_kwh: f64,
    /// Σ EDC / Σ EIT of the ledger sites with both that month.
    pub pue_ratio_of_sums: Option<f64>,
    pub sites: usize,
}

/// An input of the report and what it was used for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceEntry {
    pub origin: String,
    pub source: Origin,
    pub site: String,
    pub operator: Option<String>,
    pub reporting_year: Option<i64>,
    /// `reporting_period`, `previous_year`, or `ignored: …` with the reason.
    pub used_for: String,
}

/// The region report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionReport {
    pub schema: &'static str,
    pub schema_version: &'static str,
    pub generated_at: String,
    pub region: String,
    pub reporting_year: Option<i16>,
    /// The period asked for, `[from, to)`: for a year, the calendar year of each site's zone.
    pub period_start: Option<String>,
    pub period_end: Option<String>,
    /// Anything but complete, ended calendar years (in the ledger or in a declaration).
    pub interim: bool,
    pub totals: RegionTotals,
    pub indicators: Vec<RegionIndicator>,
    pub sites: Vec<RegionSite>,
    pub monthly: Vec<RegionMonth>,
    pub sources: Vec<SourceEntry>,
    pub conventions: RegionConventions,
}

/// Conventions stated in every rendering.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionConventions {
    pub aggregation: &'static str,
    pub size_categories: &'static str,
    pub ranking: &'static str,
    pub class_scale: &'static str,
    pub rounding: &'static str,
}

/// Annex IV size category of an installed IT power (kW). Each category
/// includes its lower bound (500 kW is small), the last one starts above 10 MW.
pub fn size_category(pdit_kw: f64) -> Option<&'static str> {
    if !pdit_kw.is_finite() || pdit_kw < 0.0 {
        return None;
    }
    Some(match pdit_kw {
        x if x < 100.0 => "below_100_kw",
        x if x < 500.0 => "very_small",
        x if x < 1000.0 => "small",
        x if x < 2000.0 => "medium",
        x if x <= 10_000.0 => "large",
        _ => "very_large",
    })
}

/// What to report.
#[derive(Debug, Clone)]
pub struct RegionRequest {
    pub region: String,
    /// A calendar year (each site's zone), or an interim `[from, to)`.
    pub year: Option<i16>,
    pub range: Option<(i64, i64)>,
}

fn row(f: Figures, source: Origin, origin: String) -> RegionSite {
    let ind = |n: &str| f.indicator(n).cloned();
    let pue = ind("pue");
    let wue = ind("wue");
    let cue = ind("cue");
    let refusals = f.indicators.iter().filter_map(|i| i.error.as_ref().map(|e| format!("{}: {e}", i.name))).collect();
    RegionSite {
        size_category: f.pdit_kw.and_then(size_category),
        pue: f.value("pue"),
        pue_class: pue.as_ref().and_then(|i| i.class.clone()),
        pue_category: pue.as_ref().and_then(|i| i.category),
        wue: f.value("wue"),
        wue_class: wue.as_ref().and_then(|i| i.class.clone()),
        erf: f.value("erf"),
        ref_: f.value("ref"),
        cue: f.value("cue"),
        emissions_kgco2e: cue.as_ref().and_then(|i| i.value.and(i.numerator)),
        carbon_source: cue.as_ref().and_then(|i| i.carbon_source.clone()),
        carbon_fallback: None,
        refusals,
        site: f.site,
        name: f.name,
        operator: f.operator,
        source,
        origin,
        reporting_year: f.reporting_year,
        period_start: f.period_start,
        period_end: f.period_end,
        interim: f.interim,
        lau_code: f.lau_code,
        nuts3_code: f.nuts3_code,
        dc_type: f.dc_type,
        pdit_kw: f.pdit_kw,
        edc_kwh: f.edc_kwh,
        edc_bg_kwh: f.edc_bg_kwh,
        eit_kwh: f.eit_kwh,
        eit_basis: f.eit_basis,
        win_m3: f.win_m3,
        ereuse_kwh: f.ereuse_kwh,
        eres_tot_kwh: f.eres_tot_kwh,
        coverage_ratio: f.coverage_ratio,
        estimated_share: f.estimated_share,
        missing_meters: f.missing_meters,
        previous: None,
        edc_change_ratio: None,
        pue_change: None,
        pue_rank: None,
        monthly: Vec::new(),
        figures: f.indicators,
    }
}

/// The months of a ledger site over `[from, to)`, each from the indicators' computation.
async fn months(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
) -> Result<Vec<Month>, ReportError> {
    let tz = jiff::tz::TimeZone::get(&site.timezone).map_err(|e| ReportError::Period(e.to_string()))?;
    let p = params(site, carbon_config);
    let periods = split(from_ms, to_ms, Step::Month, &tz, now_ms).map_err(|e| ReportError::Period(e.to_string()))?;
    let mut out = Vec::with_capacity(periods.len());
    for period in periods {
        let (t, grid) = period_inputs(reader, site, carbon, period, now_ms).await?;
        let inds = site_indicators(&t, &p, grid.as_ref(), &crate::site_report::implied_categories(site));
        let cat = eit_category(&t);
        let e = edc(&t, &p).ok();
        let at = |i: &&crate::indicators::Indicator| cat.is_none() || i.category == cat;
        let pue = inds.iter().find(|i| i.name == Name::Pue && at(i));
        let cue = inds.iter().find(|i| i.name == Name::Cue && i.basis == Some(Basis::Location) && at(i));
        let grid_kwh = t.utility_in.map(|a| a.value);
        let month = jiff::Timestamp::from_millisecond(period.from_ms)
            .map(|ts| ts.to_zoned_datetime(tz.clone()).strftime("%Y-%m").to_string())
            .unwrap_or_default();
        out.push(Month {
            month,
            from: rfc3339(period.from_ms),
            to: rfc3339(period.to_ms),
            utility_in_kwh: e.as_ref().map(|e| e.utility_in_kwh),
            backup_gen_kwh: e.as_ref().map(|e| e.generator_kwh),
            onsite_renewable_kwh: e.as_ref().map(|e| e.onsite_renewable_consumed_kwh),
            chilled_water_kwh: e.as_ref().map(|e| e.chilled_water_thermal_kwh * e.chilled_water_weight),
            edc_kwh: e.as_ref().map(|e| e.total_kwh),
            eit_kwh: cat.and_then(|c| it_energy(&t, c).ok()).map(|a| a.value),
            pue: pue.and_then(|i| i.value),
            cue: cue.and_then(|i| i.value),
            grid_g_per_kwh: match (&grid, grid_kwh) {
                (Some(g), Some(k)) if k > 0.0 => Some(g.grams / k),
                _ => None,
            },
            carbon_fallback: grid.as_ref().map(|g| g.fallback_used),
        });
    }
    Ok(out)
}

/// The declaration of a ledger site as JSON, read back like an imported one.
#[allow(clippy::too_many_arguments)]
async fn ledger_figures(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    period: ReportPeriod,
    now_ms: i64,
) -> Result<Figures, RegionError> {
    let d = eed::build(reader, site, carbon_config, carbon, period, now_ms, String::new()).await?;
    let json = serde_json::to_value(&d).map_err(|e| RegionError::Input(e.to_string()))?;
    figures(&json).map_err(|problem| RegionError::Declaration { origin: format!("ledger site {}", site.id), problem })
}

/// A reader for one site's part of the report: the hourly grid energy (for
/// the carbon time matching) of the year, read once, answers its months too,
/// from the same rows; every other question goes to the ledger.
struct HourlyOnce<'a> {
    inner: &'a dyn LedgerReader,
    hourly: std::sync::Mutex<Vec<Asked>>,
}

/// A `role_hourly` question (site, role, from, to) and its answer.
type Asked = (String, String, i64, i64, Vec<(i64, i128)>);

impl LedgerReader for HourlyOnce<'_> {
    fn energy(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.inner.energy(q)
    }
    fn energy_totals(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.inner.energy_totals(q)
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
    fn retired_hosts(&self, site: &str) -> Result<Vec<Retirement>, StoreError> {
        self.inner.retired_hosts(site)
    }
    /// Whole hours `[from, to)` inside a range already asked are the same
    /// rows as that answer's hours starting at `from` and ending by `to`.
    fn role_hourly(&self, site: &str, role: &str, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, i128)>, StoreError> {
        let mut asked = self.hourly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = asked.iter().find(|(s, r, a, b, _)| s == site && r == role && *a <= from_ms && to_ms <= *b);
        if let Some((.., rows)) = hit {
            let hour = crate::ledger::book::HOUR_MS;
            return Ok(rows.iter().copied().filter(|(h, _)| *h >= from_ms && h + hour <= to_ms).collect());
        }
        let rows = self.inner.role_hourly(site, role, from_ms, to_ms)?;
        asked.push((site.to_string(), role.to_string(), from_ms, to_ms, rows.clone()));
        Ok(rows)
    }
}

/// A ledger site's row of the report and its source entry; `None` when the
/// site was not yet in operation in the requested year.
async fn ledger_site(
    reader: &dyn LedgerReader,
    s: &SiteConfig,
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    req: &RegionRequest,
    now_ms: i64,
) -> Result<Option<(RegionSite, SourceEntry)>, RegionError> {
    // A site commissioned after the year has nothing to declare for it (Art. 3(1)).
    if req.year.is_some_and(|y| !ReportPeriod::in_operation(s, y)) {
        return Ok(None);
    }
    let once = HourlyOnce { inner: reader, hourly: Default::default() };
    let reader: &dyn LedgerReader = &once;
    let period = match (req.year, req.range) {
        (Some(y), _) => ReportPeriod::year(s, y)?,
        (None, Some((a, b))) => ReportPeriod { from_ms: a, to_ms: b, year: None },
        (None, None) => return Err(RegionError::Input("give --year, or --from and --to".into())),
    };
    let f = ledger_figures(reader, s, carbon_config, carbon, period, now_ms).await?;
    let mut r = row(f, Origin::Ledger, "ledger".into());
    r.monthly = months(reader, s, carbon_config, carbon, period.from_ms, period.to_ms, now_ms).await?;
    let fallbacks: Vec<bool> = r.monthly.iter().filter_map(|m| m.carbon_fallback).collect();
    r.carbon_fallback = (!fallbacks.is_empty()).then(|| fallbacks.iter().any(|b| *b));
    if let Some(y) = req.year
        && ReportPeriod::in_operation(s, y - 1)
    {
        let prev = ReportPeriod::year(s, y - 1)?;
        let pf = ledger_figures(reader, s, carbon_config, carbon, prev, now_ms).await?;
        if pf.edc_kwh.is_some_and(|e| e > 0.0) {
            r.previous = Some(Previous {
                reporting_year: pf.reporting_year,
                origin: "ledger".into(),
                edc_kwh: pf.edc_kwh,
                pue: pf.value("pue"),
            });
        }
    }
    let source = SourceEntry {
        origin: "ledger".into(),
        source: Origin::Ledger,
        site: s.id.clone(),
        operator: r.operator.clone(),
        reporting_year: r.reporting_year,
        used_for: "reporting_period".into(),
    };
    Ok(Some((r, source)))
}

/// The most ledger sites read at once: the reader keeps four connections.
const SITE_WORKERS: usize = 4;

/// `each` of `sites`, answers in the sites' order. A site's figures are a
/// hundred synchronous ledger reads: on a multi-thread runtime the sites are
/// shared among up to [`SITE_WORKERS`] threads (one per core), each driving
/// its sites' futures with the runtime's handle (whose other workers keep
/// the I/O of a live carbon source going); elsewhere (a current-thread
/// runtime, as in unit tests) one after the other. The answers are the same
/// either way: each site's are computed alone and kept in order.
async fn in_parallel<'a, T, F, Fut>(sites: &[&'a SiteConfig], each: F) -> Vec<T>
where
    T: Send,
    F: Fn(&'a SiteConfig) -> Fut + Sync,
    Fut: std::future::Future<Output = T>,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(SITE_WORKERS).min(sites.len());
    let handle = match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread && workers > 1 => h,
        _ => {
            let mut out = Vec::with_capacity(sites.len());
            for s in sites {
                out.push(each(s).await);
            }
            return out;
        }
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<T>>> = sites.iter().map(|_| std::sync::Mutex::new(None)).collect();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(s) = sites.get(i) else { break };
                        let answer = handle.block_on(each(s));
                        if let Ok(mut slot) = slots[i].lock() {
                            *slot = Some(answer);
                        }
                    }
                });
            }
        })
    });
    slots.into_iter().filter_map(|m| m.into_inner().ok().flatten()).collect()
}

/// Builds the region report. `sites` are the collector's sites (those of
/// `req.region` are taken), `imported` the validated declarations.
#[allow(clippy::too_many_arguments)]
pub async fn build(
    reader: Option<&dyn LedgerReader>,
    sites: &[SiteConfig],
    imported: &[Imported],
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    req: &RegionRequest,
    now_ms: i64,
    generated_at: String,
) -> Result<RegionReport, RegionError> {
    let mut rows: Vec<RegionSite> = Vec::new();
    let mut sources: Vec<SourceEntry> = Vec::new();
    let mut interim = false;
    let ledger_sites: Vec<&SiteConfig> = sites.iter().filter(|s| s.region == req.region).collect();
    if !ledger_sites.is_empty() && reader.is_none() {
        return Err(RegionError::Input("the region has ledger sites but there is no ledger (set --db or `db`)".into()));
    }
    if let Some(reader) = reader {
        let each = in_parallel(&ledger_sites, |s| ledger_site(reader, s, carbon_config, carbon, req, now_ms));
        for row in each.await {
            let Some((r, source)) = row? else { continue };
            sources.push(source);
            rows.push(r);
        }
    }
    let range_text = req.range.map(|(a, b)| (rfc3339(a), rfc3339(b)));
    let mut previous: Vec<(Figures, String)> = Vec::new();
    for imp in imported {
        let f =
            figures(&imp.json).map_err(|problem| RegionError::Declaration { origin: imp.origin.clone(), problem })?;
        let when = match (req.year, &range_text) {
            (Some(y), _) if f.reporting_year == Some(i64::from(y)) => Ok(true),
            (Some(y), _) if f.reporting_year == Some(i64::from(y) - 1) => Ok(false),
            (Some(y), _) => Err(format!("ignored: reporting year {:?}, not {y} or {}", f.reporting_year, y - 1)),
            (None, Some((a, b))) => {
                let same = |x: &str, y: &str| x.parse::<jiff::Timestamp>().ok() == y.parse::<jiff::Timestamp>().ok();
                if same(&f.period_start, a) && same(&f.period_end, b) {
                    Ok(true)
                } else {
                    Err(format!("ignored: period {} – {}, not {a} – {b}", f.period_start, f.period_end))
                }
            }
            (None, None) => Err("ignored".into()),
        };
        sources.push(SourceEntry {
            origin: imp.origin.clone(),
            source: Origin::Declaration,
            site: f.site.clone(),
            operator: f.operator.clone(),
            reporting_year: f.reporting_year,
            used_for: match &when {
                Ok(true) => "reporting_period".into(),
                Ok(false) => "previous_year".into(),
                Err(e) => e.clone(),
            },
        });
        match when {
            Ok(true) => {
                if let Some(o) = rows.iter().find(|r| r.site == f.site && r.operator == f.operator) {
                    return Err(RegionError::Declaration {
                        origin: imp.origin.clone(),
                        problem: format!(
                            "site {:?} of operator {:?} is already in the report (from {}); give each data centre once",
                            f.site,
                            f.operator.clone().unwrap_or_default(),
                            o.origin
                        ),
                    });
                }
                rows.push(row(f, Origin::Declaration, imp.origin.clone()));
            }
            Ok(false) => previous.push((f, imp.origin.clone())),
            Err(_) => {}
        }
    }
    if rows.is_empty() {
        return Err(RegionError::Input(format!(
            "no data centre in region {:?}: no configured site has `region = {:?}` and no declaration of the period was given",
            req.region, req.region
        )));
    }
    for (pf, origin) in previous {
        if let Some(r) =
            rows.iter_mut().find(|r| r.site == pf.site && r.operator == pf.operator && r.previous.is_none())
        {
            r.previous =
                Some(Previous { reporting_year: pf.reporting_year, origin, edc_kwh: pf.edc_kwh, pue: pf.value("pue") });
        }
    }
    for r in &mut rows {
        interim |= r.interim;
        if let Some(p) = &r.previous {
            r.edc_change_ratio = match (r.edc_kwh, p.edc_kwh) {
                (Some(a), Some(b)) if b > 0.0 => Some((a - b) / b),
                _ => None,
            };
            r.pue_change = r.pue.zip(p.pue).map(|(a, b)| a - b);
        }
    }
    rows.sort_by(|a, b| (a.operator.as_deref(), &a.site).cmp(&(b.operator.as_deref(), &b.site)));
    // Rank by PUE: the lowest is 1; equal values share a rank.
    let mut ranked: Vec<(f64, usize)> = rows.iter().enumerate().filter_map(|(i, r)| r.pue.map(|p| (p, i))).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut last: Option<(f64, u32)> = None;
    for (n, (p, i)) in ranked.iter().enumerate() {
        let rank = match last {
            Some((lp, lr)) if lp == *p => lr,
            _ => n as u32 + 1,
        };
        last = Some((*p, rank));
        rows[*i].pue_rank = Some(rank);
    }
    let indicators = ["pue", "wue", "erf", "ref", "cue"].map(|n| aggregate(n, &rows)).to_vec();
    let totals = totals(&rows);
    let monthly = region_months(&rows);
    Ok(RegionReport {
        schema: SCHEMA,
        schema_version: SCHEMA_VERSION,
        generated_at,
        region: req.region.clone(),
        reporting_year: req.year,
        period_start: range_text.as_ref().map(|r| r.0.clone()),
        period_end: range_text.map(|r| r.1),
        interim: interim || req.year.is_none(),
        totals,
        indicators,
        sites: rows,
        monthly,
        sources,
        conventions: RegionConventions {
            aggregation: "each regional indicator twice: the ratio of sums (Σ numerators / Σ denominators, e.g. ΣEDC / ΣEIT) and the energy-weighted mean of Delegated Regulation (EU) 2024/1364 Annex IV, Σ(EDCᵢ × KPIᵢ) / ΣEDCᵢ, over the sites with a value",
            size_categories: "Annex IV by installed IT power: very small 100–500 kW, small 500–1000 kW, medium 1–2 MW, large 2–10 MW, very large above 10 MW; each category includes its lower bound",
            ranking: "by PUE, 1 the lowest; equal values share a rank; sites without a PUE are not ranked",
            class_scale: "indicative: EU rating scheme classes A–G for PUE and WUE (Commission Delegated Regulation C(2026) 3472 Annex I), as each declaration gives them",
            rounding: "none: values are unrounded; round for display only",
        },
    })
}

/// Loads the declarations (files and URLs) and builds the report.
#[allow(clippy::too_many_arguments)]
pub async fn region_report(
    reader: Option<&dyn LedgerReader>,
    sites: &[SiteConfig],
    declarations: &[String],
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    req: &RegionRequest,
    now_ms: i64,
) -> Result<RegionReport, RegionError> {
    let mut imported = Vec::with_capacity(declarations.len());
    for d in declarations {
        imported.push(load_declaration(d).await?);
    }
    let generated_at = super::document::generated_at(now_ms);
    build(reader, sites, &imported, carbon_config, carbon, req, now_ms, generated_at).await
}

/// Loads the declarations (files and URLs), builds the report and renders
/// it: what `report region` and `GET /reports/region` share.
#[allow(clippy::too_many_arguments)]
pub async fn region_document(
    reader: Option<&dyn LedgerReader>,
    sites: &[SiteConfig],
    declarations: &[String],
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    req: &RegionRequest,
    format: super::region_render::RegionFormat,
    now_ms: i64,
) -> Result<Vec<u8>, RegionError> {
    let r = region_report(reader, sites, declarations, carbon_config, carbon, req, now_ms).await?;
    Ok(super::region_render::render(&r, format)?)
}

fn aggregate(name: &'static str, rows: &[RegionSite]) -> RegionIndicator {
    let (unit, formula) = match name {
        "pue" => ("ratio", "Σ EDC / Σ EIT"),
        "wue" => ("L/kWh", "Σ WIN (L) / Σ EIT (kWh)"),
        "erf" => ("ratio", "Σ EREUSE / Σ EDC"),
        "ref" => ("ratio", "Σ ERES-TOT / Σ EDC"),
        _ => ("kgCO2e/kWh", "Σ emissions (kgCO2e) / Σ EIT (kWh)"),
    };
    let value = |r: &RegionSite| match name {
        "pue" => r.pue,
        "wue" => r.wue,
        "erf" => r.erf,
        "ref" => r.ref_,
        _ => r.cue,
    };
    let mut out = RegionIndicator {
        name,
        unit,
        ratio_of_sums: None,
        numerator: 0.0,
        denominator: 0.0,
        ratio_of_sums_formula: formula,
        energy_weighted: None,
        energy_weighted_formula: "Σ(EDCᵢ × valueᵢ) / Σ EDCᵢ",
        energy_weighted_source: ANNEX_IV,
        sites_counted: Vec::new(),
        sites_left_out: Vec::new(),
        categories: Vec::new(),
    };
    let (mut weighted, mut weights) = (0.0, 0.0);
    for r in rows {
        let fig = r.figure(name);
        match (value(r), r.edc_kwh, fig.and_then(|i| i.0).zip(fig.and_then(|i| i.1))) {
            (Some(v), Some(e), Some((n, d))) => {
                out.numerator += n;
                out.denominator += d;
                weighted += e * v;
                weights += e;
                out.sites_counted.push(r.site.clone());
                if let Some(c) = fig.and_then(|i| i.2)
                    && !out.categories.contains(&c)
                {
                    out.categories.push(c);
                }
            }
            _ => out.sites_left_out.push(r.site.clone()),
        }
    }
    out.categories.sort();
    if out.denominator > 0.0 {
        out.ratio_of_sums = Some(out.numerator / out.denominator);
    }
    if weights > 0.0 {
        out.energy_weighted = Some(weighted / weights);
    }
    out
}

impl RegionSite {
    /// (numerator, denominator, category) of an indicator, as the site's declaration gives them.
    fn figure(&self, name: &str) -> Option<(Option<f64>, Option<f64>, Option<i64>)> {
        self.figures.iter().find(|i| i.name == name).map(|i| (i.numerator, i.denominator, i.category))
    }
}

fn totals(rows: &[RegionSite]) -> RegionTotals {
    let sum = |f: fn(&RegionSite) -> Option<f64>| rows.iter().filter_map(f).sum::<f64>();
    let mut by_size: Vec<Count> = Vec::new();
    let mut by_type: Vec<Count> = Vec::new();
    let bump = |v: &mut Vec<Count>, k: String| match v.iter_mut().find(|x| x.key == k) {
        Some(x) => x.sites += 1,
        None => v.push(Count { key: k, sites: 1 }),
    };
    for r in rows {
        bump(&mut by_size, r.size_category.unwrap_or("unknown").to_string());
        bump(&mut by_type, r.dc_type.clone().unwrap_or_else(|| "unknown".into()));
    }
    let order = ["below_100_kw", "very_small", "small", "medium", "large", "very_large", "unknown"];
    by_size.sort_by_key(|c| order.iter().position(|o| *o == c.key));
    by_type.sort();
    RegionTotals {
        sites: rows.len(),
        sites_from_ledger: rows.iter().filter(|r| r.source == Origin::Ledger).count(),
        sites_from_declarations: rows.iter().filter(|r| r.source == Origin::Declaration).count(),
        pdit_kw: sum(|r| r.pdit_kw),
        edc_kwh: sum(|r| r.edc_kwh),
        eit_kwh: sum(|r| r.eit_kwh),
        win_m3: sum(|r| r.win_m3),
        ereuse_kwh: sum(|r| r.ereuse_kwh),
        eres_tot_kwh: sum(|r| r.eres_tot_kwh),
        emissions_kgco2e: sum(|r| r.emissions_kgco2e),
        by_size_category: by_size,
        by_dc_type: by_type,
    }
}

fn region_months(rows: &[RegionSite]) -> Vec<RegionMonth> {
    let mut out: Vec<RegionMonth> = Vec::new();
    for m in rows.iter().flat_map(|r| r.monthly.iter()) {
        let i = match out.iter().position(|x| x.month == m.month) {
            Some(i) => i,
            None => {
                out.push(RegionMonth {
                    month: m.month.clone(),
                    edc_kwh: 0.0,
                    eit_kwh: 0.0,
                    pue_ratio_of_sums: None,
                    sites: 0,
                });
                out.len() - 1
            }
        };
        if let (Some(e), Some(it)) = (m.edc_kwh, m.eit_kwh) {
            out[i].edc_kwh += e;
            out[i].eit_kwh += it;
            out[i].sites += 1;
        }
    }
    for m in &mut out {
        m.pue_ratio_of_sums = (m.eit_kwh > 0.0).then(|| m.edc_kwh / m.eit_kwh);
    }
    out.sort_by(|a, b| a.month.cmp(&b.month));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(id: &str, op: &str, edc: f64, eit: f64, pue: Option<f64>) -> RegionSite {
        let f = Figures {
            site: id.into(),
            operator: Some(op.into()),
            edc_kwh: Some(edc),
            eit_kwh: Some(eit),
            pdit_kw: Some(600.0),
            indicators: vec![IndicatorFigure {
                name: "pue".into(),
                value: pue,
                numerator: Some(edc),
                denominator: Some(eit),
                category: Some(1),
                class: None,
                error: None,
                carbon_source: None,
            }],
            ..Figures::default()
        };
        row(f, Origin::Declaration, "x".into())
    }

    /// Annex IV weights each PUE by EDC; the ratio of sums is ΣEDC/ΣEIT: they differ.
    /// The months' hourly grid energy sliced from the year's answer is the
    /// ledger's own answer for each month, and the ledger is asked once.
    #[test]
    fn a_month_of_hourly_grid_energy_is_the_ledgers_answer_read_once() {
        use crate::ledger::sqlite::{SqliteReader, SqliteWriter};
        use crate::ledger::testing::Counting;
        use crate::ledger::{Batch, CounterSample, LedgerWriter, Policy};
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("l.db");
        let mut w = SqliteWriter::open(&db, Policy::default()).expect("open");
        const H: i64 = 3_600_000;
        let t0 = 1_735_686_000_000; // 2025-01-01T00:00+01:00
        // Every 50 minutes for 40 days, a growing register: hours cut at both ends.
        let samples = (0..1_152)
            .map(|i| CounterSample::meter("s", "grid", "utility_in", "kWh", t0 + i * 50 * 60_000, i * i * 1_000))
            .collect();
        w.apply(&[Batch { samples, claims: vec![], intervals: vec![], quarantine: vec![] }], t0).expect("apply");
        let direct = SqliteReader::new(&db, Policy::default());
        let inner = Counting::new(SqliteReader::new(&db, Policy::default()));
        let once = HourlyOnce { inner: &inner, hourly: Default::default() };
        let year = (t0 - 5 * H, t0 + 60 * 24 * H);
        assert_eq!(once.role_hourly("s", "utility_in", year.0, year.1).expect("year").len(), 40 * 24);
        let cut = t0 + 9 * H + 30 * 60_000;
        for (a, b) in [(t0, t0 + 31 * 24 * H), (t0 + 31 * 24 * H - H, t0 + 59 * 24 * H), (t0 + 7 * H, cut), (t0, t0)] {
            let want = direct.role_hourly("s", "utility_in", a, b).expect("direct");
            assert_eq!(once.role_hourly("s", "utility_in", a, b).expect("sliced"), want, "[{a}, {b})");
        }
        assert_eq!(inner.role_hourly_asked(), 1);
        // Outside the year, or another role: the ledger is asked.
        once.role_hourly("s", "utility_in", year.0 - H, year.1).expect("wider");
        once.role_hourly("s", "ups_out", year.0, year.1).expect("other role");
        assert_eq!(inner.role_hourly_asked(), 3);
    }

    /// Sites shared among threads come back in the sites' order, with the
    /// runtime's timers working inside each site's future, and equal to the
    /// one-after-the-other answers of a current-thread runtime.
    #[test]
    fn sites_read_in_parallel_come_back_in_order() {
        let sites: Vec<SiteConfig> =
            (0..9).map(|i| SiteConfig { id: format!("s{i}"), ..SiteConfig::default() }).collect();
        let refs: Vec<&SiteConfig> = sites.iter().collect();
        let threads = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let each = |s: &SiteConfig| {
            let id = s.id.clone();
            let threads = &threads;
            async move {
                // Later sites finish first if run at once.
                let n: u64 = id[1..].parse().unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_millis(5 * (9 - n))).await;
                threads.lock().expect("lock").insert(format!("{:?}", std::thread::current().id()));
                id
            }
        };
        let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let parallel = multi.block_on(in_parallel(&refs, each));
        let single = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let sequential = single.block_on(in_parallel(&refs, each));
        let want: Vec<String> = sites.iter().map(|s| s.id.clone()).collect();
        assert_eq!(parallel, want);
        assert_eq!(sequential, want);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Sites on more than one thread of the pool, plus the sequential run's one.
        if cores > 1 {
            assert!(threads.lock().expect("lock").len() >= 3);
        }
    }

    #[test]
    fn energy_weighted_and_ratio_of_sums_are_both_given() {
        let rows = vec![site("a", "o", 200.0, 100.0, Some(2.0)), site("b", "o", 120.0, 100.0, Some(1.2))];
        let p = aggregate("pue", &rows);
        assert_eq!(p.ratio_of_sums, Some(320.0 / 200.0));
        assert_eq!(p.energy_weighted, Some((200.0 * 2.0 + 120.0 * 1.2) / 320.0));
        assert_eq!(p.sites_counted, ["a", "b"]);
        let rows = vec![site("a", "o", 200.0, 100.0, Some(2.0)), site("c", "o", 50.0, 0.0, None)];
        let p = aggregate("pue", &rows);
        assert_eq!((p.ratio_of_sums, p.sites_left_out.clone()), (Some(2.0), vec!["c".to_string()]));
    }

    proptest::proptest! {
        /// Both regional values lie between the smallest and the largest site PUE; with
        /// equal site PUEs they are that PUE.
        #[test]
        fn regional_pue_lies_between_the_sites(parts in proptest::collection::vec((1.0f64..1e7, 1.0f64..3.0), 1..12)) {
            let rows: Vec<RegionSite> = parts
                .iter()
                .enumerate()
                .map(|(i, (eit, pue))| site(&format!("s{i}"), "o", eit * pue, *eit, Some(eit * pue / eit)))
                .collect();
            let p = aggregate("pue", &rows);
            let lo = rows.iter().filter_map(|r| r.pue).fold(f64::INFINITY, f64::min);
            let hi = rows.iter().filter_map(|r| r.pue).fold(0.0, f64::max);
            for v in [p.ratio_of_sums, p.energy_weighted] {
                let v = v.unwrap_or(f64::NAN);
                proptest::prop_assert!(v >= lo * (1.0 - 1e-12) && v <= hi * (1.0 + 1e-12), "{v} not in [{lo}, {hi}]");
            }
        }
    }

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(fetchable("https://dc.example/eed.json").is_ok());
        for ok in ["http://127.0.0.1:8080/a.json", "http://localhost/a.json", "http://[::1]:9/a.json"] {
            assert!(fetchable(ok).is_ok(), "{ok}");
        }
        for bad in ["http://dc.example/a.json", "http://127.0.0.1.evil.example/a.json", "ftp://x/a", "nope"] {
            assert!(fetchable(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn size_categories_include_their_lower_bound() {
        assert_eq!(size_category(499.9), Some("very_small"));
        assert_eq!(size_category(500.0), Some("small"));
        assert_eq!(size_category(1000.0), Some("medium"));
        assert_eq!(size_category(10_000.0), Some("large"));
        assert_eq!(size_category(10_000.1), Some("very_large"));
        assert_eq!(size_category(f64::NAN), None);
    }

    #[test]
    fn a_malformed_declaration_names_the_field() {
        let e = figures(&serde_json::json!({"schema": "other"})).expect_err("refused");
        assert!(e.contains("field `schema`"), "{e}");
        let mut d = serde_json::json!({
            "schema": "domesday.eed-declaration", "schema_version": "1.0.0", "site": "s",
            "reporting_year": 2025, "period_start": "2025-01-01T00:00:00Z", "period_end": "2026-01-01T00:00:00Z",
            "interim": false,
            "annex_i": {"dc_name": {"value": "S"}, "operator_name": {"value": "O"}, "location_lau_code": {"value": null},
                        "dc_type": {"value": "enterprise"}},
            "annex_ii_energy": {
                "pdit_kw": {"value": 600.0, "unit": "kW"}, "edc_kwh": {"value": "lots", "unit": "kWh"},
                "edc_bg_kwh": {"value": 0.0, "unit": "kWh"}, "eit_kwh": {"value": 1.0, "unit": "kWh"},
                "eit_basis": {"value": "ups_cat1"}, "win_m3": {"value": null, "unit": "m3"},
                "ereuse_kwh": {"value": null, "unit": "kWh"}, "eres_tot_kwh": {"value": null, "unit": "kWh"}},
            "indicators": []
        });
        let e = figures(&d).expect_err("refused");
        assert!(e.contains("field `annex_ii_energy.edc_kwh.value`: must be a number or null"), "{e}");
        d["annex_ii_energy"]["edc_kwh"]["value"] = serde_json::json!(2.0);
        d["annex_ii_energy"]["edc_kwh"]["unit"] = serde_json::json!("MWh");
        let e = figures(&d).expect_err("refused");
        assert!(e.contains("field `annex_ii_energy.edc_kwh.unit`: must be \"kWh\""), "{e}");
        d["annex_ii_energy"]["edc_kwh"]["unit"] = serde_json::json!("kWh");
        let f = figures(&d).expect("valid");
        assert_eq!((f.edc_kwh, f.operator.as_deref()), (Some(2.0), Some("O")));
    }
}
