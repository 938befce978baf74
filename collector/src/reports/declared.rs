//! Site keys and annual figures that no meter gives, declared by the operator
//! for the EED declaration (Delegated Regulation (EU) 2024/1364 Annexes I–II)
//! and the French public sheet (Code de l'énergie D.236-2, D.236-3): their
//! types and their validation. The config loader calls [`validate_site`].
//!
//! Annual figures live in `[[sites.annual]]` tables, one per calendar year
//! (`year = 2025`). Guarantees of origin and PPA energy declared there also
//! feed REF and the market-based CUE of every period (pro rata temporis for
//! periods shorter than the year), through `site_report`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SiteConfig};
use crate::indicators::period::calendar_year;
use crate::indicators::{Allocation, Certificates};
use domesday_model::config_text::find_key;

/// Annex II 1(a): which power the PDIT figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PditBasis {
    /// Installed IT power demand (Art. 2(14)): sum of the nominal power of the installed IT.
    Installed,
    /// Rated IT load (Art. 2(15)), the fallback Annex II 1(a) allows.
    Rated,
}

impl PditBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            PditBasis::Installed => "installed",
            PditBasis::Rated => "rated",
        }
    }
}

/// One calendar year's declared figures (`[[sites.annual]]`). Every figure is
/// optional in the config; the report lists the missing mandatory ones.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnnualValues {
    /// Calendar year (of the site's time zone) these figures describe.
    pub year: i16,
    /// Annex II 1(a) PDIT, kW: the year's weighted average when the installed
    /// power changed (else the site's `installed_it_power_kw` is used).
    #[serde(default)]
    pub pdit_kw: Option<f64>,
    /// Annex II 1(f): grid functions provided (e.g. "peak demand shifting",
    /// "FFR"); an empty list declares that none is provided.
    #[serde(default)]
    pub grid_functions: Option<Vec<String>>,
    /// Annex II 1(g) CBtG, kW: average battery capacity offered to the grid.
    #[serde(default)]
    pub cbtg_kw: Option<f64>,
    /// Annex II 1(k) TWH, °C: average waste heat temperature.
    #[serde(default)]
    pub twh_c: Option<f64>,
    /// Annex II 1(l) TIN, °C: the year's average intake air set point (else
    /// the site's `intake_air_set_point_c`).
    #[serde(default)]
    pub tin_setpoint_c: Option<f64>,
    /// Annex II 1(m): refrigerants by their designation under Regulation (EU) No 517/2014 ("R-134a").
    #[serde(default)]
    pub refrigerant_types: Option<Vec<String>>,
    /// Annex II 1(n) CDD: cooling degree days, base 21 °C, from an open source.
    #[serde(default)]
    pub cdd_degree_days: Option<f64>,
    /// Annex II 1(n): the open-access source of the CDD (e.g. "Copernicus C3S, ERA5").
    #[serde(default)]
    pub cdd_source: Option<String>,
    /// Annex II 1(p) ERES-GOO, kWh: guarantees of origin purchased and cancelled for this DC.
    #[serde(default)]
    pub eres_goo_kwh: Option<f64>,
    /// Annex II 1(q) ERES-PPA, kWh: PPA energy whose GOs the DC owns and cancelled.
    #[serde(default)]
    pub eres_ppa_kwh: Option<f64>,
    /// Annex II 2(a) CSERV: sum of the SERT active-state performance of the servers (no unit).
    #[serde(default)]
    pub cserv_sert: Option<f64>,
    /// Annex II 2(a): share of the computer room floor area CSERV covers, %.
    #[serde(default)]
    pub cserv_floor_coverage_pct: Option<f64>,
    /// Annex II 2(a): how CSERV was obtained (manufacturer values, interpolation, CPU table…).
    #[serde(default)]
    pub cserv_method: Option<String>,
    /// Annex II 2(b) CSTOR, PB: raw capacity of the SSD and HDD storage devices.
    #[serde(default)]
    pub cstor_pb: Option<f64>,
    /// Annex II 2(b): share of the computer room floor area CSTOR covers, %.
    #[serde(default)]
    pub cstor_floor_coverage_pct: Option<f64>,
    /// Annex II 3(a) BIN, GB/s (gigabytes): provisioned incoming bandwidth, yearly average.
    #[serde(default)]
    pub bin_gbyte_per_s: Option<f64>,
    /// Annex II 3(b) BOUT, GB/s.
    #[serde(default)]
    pub bout_gbyte_per_s: Option<f64>,
    /// Annex II 3(c) TIN, EB: incoming data traffic over the year.
    #[serde(default)]
    pub traffic_in_eb: Option<f64>,
    /// Annex II 3(d) TOUT, EB.
    #[serde(default)]
    pub traffic_out_eb: Option<f64>,
    /// Delegated Regulation (EU) 2024/1364 Art. 3(2): Annex II KPIs omitted
    /// for technical reasons in the first reporting period, each with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omissions: Vec<Omission>,
    /// Where each declared figure was read, by key: `FILE:LINE` of the config
    /// table or of the CSV row (filled at load, never read from the file).
    #[serde(skip)]
    pub declared_in: BTreeMap<String, String>,
}

/// A KPI omitted under Art. 3(2): the declaration field and why.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Omission {
    /// The declaration field omitted (`win_m3`), one of [`OMITTABLE`].
    pub field: String,
    /// The technical reason, in words: the declaration shows it.
    pub reason: String,
}

/// The first calendar year any declaration covered: the first declarations,
/// due 15 September 2024, covered 2023 (Delegated Regulation (EU) 2024/1364 Art. 3(1)).
pub const FIRST_REGULATION_YEAR: i16 = 2023;

/// The declaration fields Art. 3(2) lets the first reporting period omit:
/// Annex II points 1(d), 1(e), 1(h)–(l) and 1(o)–(r), by field key and point.
pub const OMITTABLE: [(&str, &str); 14] = [
    ("edc_kwh", "1(d)"),
    ("edc_bg_kwh", "1(d)"),
    ("eit_kwh", "1(e)"),
    ("eit_basis", "1(e)"),
    ("win_m3", "1(h)"),
    ("win_wue_category", "1(h)"),
    ("win_pot_m3", "1(i)"),
    ("ereuse_kwh", "1(j)"),
    ("twh_c", "1(k)"),
    ("tin_setpoint_c", "1(l)"),
    ("eres_tot_kwh", "1(o)"),
    ("eres_goo_kwh", "1(p)"),
    ("eres_ppa_kwh", "1(q)"),
    ("eres_os_kwh", "1(r)"),
];

/// The commissioning date of `site`, if configured and valid.
pub fn commissioning(site: &SiteConfig) -> Option<jiff::civil::Date> {
    site.commissioning_date.as_deref().and_then(|d| d.parse::<jiff::civil::Date>().ok())
}

/// The calendar year of `site`'s first reporting period: the year of its
/// `commissioning_date`, or 2023 (the year the first declarations covered)
/// for a site commissioned earlier or whose date is not configured.
pub fn first_reporting_year(site: &SiteConfig) -> i16 {
    commissioning(site).map(|d| d.year()).unwrap_or(FIRST_REGULATION_YEAR).max(FIRST_REGULATION_YEAR)
}

/// Art. 3(1): the part of calendar year `year` (site's zone) the data centre
/// was in operation, `[start, end)` in ms: from the commissioning date's
/// local midnight in its commissioning year, the whole year after, `None`
/// for a year wholly before commissioning.
pub fn operating_span(site: &SiteConfig, year: i16, tz: &jiff::tz::TimeZone) -> Option<(i64, i64)> {
    let (a, b) = calendar_year(year, tz).ok()?;
    match commissioning(site) {
        Some(d) if d.year() > year => None,
        Some(d) if d.year() == year => {
            let start = d.to_zoned_datetime(tz.clone()).ok()?.start_of_day().ok()?.timestamp().as_millisecond();
            Some((start.max(a), b))
        }
        _ => Some((a, b)),
    }
}

impl AnnualValues {
    /// Non-negative numbers of the table, by key.
    fn numbers(&self) -> [(&'static str, Option<f64>); 14] {
        [
            ("pdit_kw", self.pdit_kw),
            ("cbtg_kw", self.cbtg_kw),
            ("cdd_degree_days", self.cdd_degree_days),
            ("eres_goo_kwh", self.eres_goo_kwh),
            ("eres_ppa_kwh", self.eres_ppa_kwh),
            ("cserv_sert", self.cserv_sert),
            ("cserv_floor_coverage_pct", self.cserv_floor_coverage_pct),
            ("cstor_pb", self.cstor_pb),
            ("cstor_floor_coverage_pct", self.cstor_floor_coverage_pct),
            ("bin_gbyte_per_s", self.bin_gbyte_per_s),
            ("bout_gbyte_per_s", self.bout_gbyte_per_s),
            ("traffic_in_eb", self.traffic_in_eb),
            ("traffic_out_eb", self.traffic_out_eb),
            ("twh_c", self.twh_c),
        ]
    }
}

/// Whether `s` is a SIRET: 14 digits whose Luhn checksum is valid (INSEE).
/// La Poste's establishments (SIREN 356000000) use a digit-sum rule instead.
pub fn valid_siret(s: &str) -> bool {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let digits: Vec<u32> = s.bytes().map(|b| u32::from(b - b'0')).collect();
    if s.starts_with("356000000") {
        return digits.iter().sum::<u32>().is_multiple_of(5);
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A plausible e-mail address: one `@`, a non-empty local part, a dotted domain, no spaces.
pub fn valid_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// Byte offset of `key = …` inside the `[[sites.annual]]` table of `year` of
/// site `id` (else that table's `year` line, else the site's `id` line).
fn find_annual_key(text: &str, id: &str, year: i16, key: &str) -> usize {
    let start = text.find(&format!("id = \"{id}\"")).unwrap_or(0);
    let end = text[start..].find("\n[[sites]]").map(|i| start + i + 1).unwrap_or(text.len());
    let site = &text[start..end];
    let Some(y) = site.find(&format!("year = {year}")) else { return start };
    let table_end = site[y..].find("\n[").map(|i| y + i + 1).unwrap_or(site.len());
    match find_key(&site[y..table_end], key) {
        0 => start + y,
        o => start + y + o,
    }
}

/// Checks the declaration keys of a site: SIRETs, contact, dates, URL and the
/// `[[sites.annual]]` tables. `at(key, msg)` locates a site-level key.
pub fn validate_site(
    s: &SiteConfig,
    text: &str,
    at: &dyn Fn(&str, String) -> ConfigError,
    err: &dyn Fn(usize, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for n in &s.siret {
        if !valid_siret(n) {
            return Err(at(
                "siret",
                format!(
                    "{n:?} is not a SIRET: 14 digits with a valid check digit (no spaces), e.g. \"73282932000074\""
                ),
            ));
        }
        if seen.contains(&n.as_str()) {
            return Err(at("siret", format!("{n:?} is listed twice")));
        }
        seen.push(n);
    }
    if let Some(e) = &s.contact_email
        && !valid_email(e)
    {
        return Err(at("contact_email", format!("{e:?} is not an e-mail address (name@domain.tld)")));
    }
    if let Some(n) = &s.contact_name
        && n.trim().is_empty()
    {
        return Err(at("contact_name", "is empty: name the person to contact, or remove the key".into()));
    }
    if let Some(d) = &s.commissioning_date
        && !(d.len() == 10 && d.parse::<jiff::civil::Date>().is_ok())
    {
        return Err(at("commissioning_date", format!("{d:?} must be a date \"YYYY-MM-DD\", e.g. \"2019-06-15\"")));
    }
    if let (Some(d), Some(e)) = (commissioning(s), &s.entry_into_operation)
        && format!("{:04}-{:02}", d.year(), d.month()) != *e
    {
        return Err(at(
            "commissioning_date",
            format!(
                "{d} is not in entry_into_operation {e:?}: both date the data centre's entry into operation (Annex I 1(e) gives its year and month); make them agree"
            ),
        ));
    }
    if let Some(u) = &s.public_disclosure_url {
        let rest = u.strip_prefix("https://").unwrap_or_default();
        if rest.is_empty() || rest.starts_with('/') || u.chars().any(char::is_whitespace) {
            return Err(at(
                "public_disclosure_url",
                format!("{u:?} must be the https:// address of the page where the data are public"),
            ));
        }
    }
    let id = s.id.as_str();
    let mut years: Vec<i16> = Vec::new();
    for a in &s.annual {
        let y = a.year;
        let aat = |key: &str, msg: String| {
            err(
                find_annual_key(text, id, y, key),
                format!("site {id:?}: [[sites.annual]] year {y}: key `{key}`: {msg}"),
            )
        };
        if !(1990..=2100).contains(&y) {
            return Err(aat("year", "must be a calendar year between 1990 and 2100".into()));
        }
        if years.contains(&y) {
            return Err(aat("year", "is declared twice: one [[sites.annual]] table per year".into()));
        }
        years.push(y);
        check_values(a).map_err(|(key, msg)| aat(key, msg))?;
        check_omissions(s, a).map_err(|(key, msg)| aat(key, msg))?;
    }
    Ok(())
}

/// The checks of one year's figures, wherever they were declared: the key
/// at fault and the message.
pub fn check_values(a: &AnnualValues) -> Result<(), (&'static str, String)> {
    for (key, v) in a.numbers() {
        if let Some(v) = v
            && !(v.is_finite() && (v >= 0.0 || key == "twh_c"))
        {
            return Err((key, format!("{v} must be a number ≥ 0")));
        }
    }
    for key in ["cserv_floor_coverage_pct", "cstor_floor_coverage_pct"] {
        let v = if key.starts_with("cserv") { a.cserv_floor_coverage_pct } else { a.cstor_floor_coverage_pct };
        if let Some(v) = v
            && v > 100.0
        {
            return Err((key, format!("{v} is a percentage of the computer room floor area: 0–100")));
        }
    }
    if let Some(t) = a.twh_c
        && !(-20.0..=120.0).contains(&t)
    {
        return Err(("twh_c", format!("{t} °C is not a plausible waste heat temperature (-20–120 °C)")));
    }
    if let Some(t) = a.tin_setpoint_c
        && !(t.is_finite() && (5.0..=45.0).contains(&t))
    {
        return Err(("tin_setpoint_c", format!("{t} °C is not a plausible intake air set point (5–45 °C)")));
    }
    if let Some(r) = &a.refrigerant_types
        && let Some(bad) = r.iter().find(|x| x.trim().is_empty() || x.len() > 64)
    {
        return Err(("refrigerant_types", format!("{bad:?}: name each refrigerant, e.g. \"R-134a\"")));
    }
    if let Some(g) = &a.grid_functions
        && g.iter().any(|x| x.trim().is_empty())
    {
        return Err(("grid_functions", "has an empty entry: name each function, or use [] for none".into()));
    }
    if a.cdd_degree_days.is_some() && a.cdd_source.as_deref().is_none_or(|x| x.trim().is_empty()) {
        return Err((
            "cdd_degree_days",
            "needs cdd_source: the open-access source of the cooling degree days (Annex II 1(n))".into(),
        ));
    }
    for o in &a.omissions {
        if a.is_declared(&o.field) {
            return Err((
                "omissions",
                format!(
                    "`{}` is both declared and omitted: keep the figure, or remove it and keep the omission",
                    o.field
                ),
            ));
        }
    }
    Ok(())
}

/// Art. 3(2): omissions only of the points it lists, with a reason, only in
/// the site's first reporting period.
fn check_omissions(site: &SiteConfig, a: &AnnualValues) -> Result<(), (&'static str, String)> {
    let first = first_reporting_year(site);
    let mut seen: Vec<&str> = Vec::new();
    for o in &a.omissions {
        let Some((_, point)) = OMITTABLE.iter().find(|(k, _)| *k == o.field) else {
            let allowed: Vec<&str> = OMITTABLE.iter().map(|(k, _)| *k).collect();
            return Err((
                "omissions",
                format!(
                    "field {:?} cannot be omitted: Delegated Regulation (EU) 2024/1364 Art. 3(2) allows only the KPIs of Annex II 1(d), 1(e), 1(h)–(l) and 1(o)–(r), i.e. {}",
                    o.field,
                    allowed.join(", ")
                ),
            ));
        };
        if o.reason.trim().is_empty() {
            return Err((
                "omissions",
                format!(
                    "field {:?} (Annex II {point}): give the technical reason for the omission in `reason`",
                    o.field
                ),
            ));
        }
        if seen.contains(&o.field.as_str()) {
            return Err(("omissions", format!("field {:?} is omitted twice", o.field)));
        }
        seen.push(&o.field);
        if a.year != first {
            let why = match commissioning(site) {
                Some(d) if d.year() >= FIRST_REGULATION_YEAR => format!("the year of commissioning_date {d}"),
                Some(d) => format!("commissioning_date {d} is before 2023, the year the first declarations covered"),
                None => "no commissioning_date is configured: 2023, the year the first declarations covered".into(),
            };
            return Err((
                "omissions",
                format!(
                    "field {:?}: omissions are allowed only for the first reporting period (Delegated Regulation (EU) 2024/1364 Art. 3(2)), which is {first} for site {:?} ({why}); declare the figure for {}",
                    o.field, site.id, a.year
                ),
            ));
        }
    }
    Ok(())
}

/// Fills `declared_in` of every `[[sites.annual]]` figure with the config
/// file's name and the key's line, so that the declaration says where each
/// figure was declared.
pub fn locate_declared(site: &mut SiteConfig, text: &str, err: &dyn Fn(usize, String) -> ConfigError) {
    let id = site.id.clone();
    for a in &mut site.annual {
        let keys: Vec<&'static str> = ANNUAL_KEYS.iter().copied().filter(|k| a.is_declared(k)).collect();
        for key in keys {
            if let ConfigError::Invalid { path, line, .. } = err(find_annual_key(text, &id, a.year, key), String::new())
            {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                a.declared_in.insert(key.to_string(), format!("{name}:{line}"));
            }
        }
    }
}

/// The figure keys of `[[sites.annual]]` (and of the annual CSV files), in table order.
pub const ANNUAL_KEYS: [&str; 19] = [
    "pdit_kw",
    "grid_functions",
    "cbtg_kw",
    "twh_c",
    "tin_setpoint_c",
    "refrigerant_types",
    "cdd_degree_days",
    "cdd_source",
    "eres_goo_kwh",
    "eres_ppa_kwh",
    "cserv_sert",
    "cserv_floor_coverage_pct",
    "cserv_method",
    "cstor_pb",
    "cstor_floor_coverage_pct",
    "bin_gbyte_per_s",
    "bout_gbyte_per_s",
    "traffic_in_eb",
    "traffic_out_eb",
];

impl AnnualValues {
    /// Whether figure `key` has a value.
    pub fn is_declared(&self, key: &str) -> bool {
        match key {
            "grid_functions" => self.grid_functions.is_some(),
            "refrigerant_types" => self.refrigerant_types.is_some(),
            "cdd_source" => self.cdd_source.is_some(),
            "cserv_method" => self.cserv_method.is_some(),
            "tin_setpoint_c" => self.tin_setpoint_c.is_some(),
            k => self.numbers().iter().any(|(n, v)| *n == k && v.is_some()),
        }
    }

    /// Where figure `key` was declared (`FILE:LINE`), if known.
    pub fn origin(&self, key: &str) -> Option<String> {
        self.declared_in.get(key).cloned()
    }

    /// The reason `field` is omitted this year, if it is.
    pub fn omitted(&self, field: &str) -> Option<&str> {
        self.omissions.iter().find(|o| o.field == field).map(|o| o.reason.as_str())
    }
}

/// The site's declared GOs and PPA energy brought down to `[from_ms, to_ms)`:
/// whole for its calendar year, pro rata temporis for any other period
/// (`indicators::period::pro_rata_temporis`), so that REF and the market-based
/// CUE of every period, the API's and the declaration's alike, count them.
pub fn certificates(site: &SiteConfig, from_ms: i64, to_ms: i64) -> Certificates {
    let Ok(tz) = jiff::tz::TimeZone::get(&site.timezone) else { return Certificates::default() };
    // Each year's quantity is spread over the part of the year the data
    // centre was in operation (Art. 3(1)): the whole calendar year, or
    // commissioning → year end in the commissioning year.
    let spread = |f: fn(&AnnualValues) -> Option<f64>| -> f64 {
        site.annual
            .iter()
            .filter_map(|a| {
                let v = f(a)?;
                let (a, b) = operating_span(site, a.year, &tz)?;
                let overlap = to_ms.min(b) - from_ms.max(a);
                (overlap > 0 && b > a).then(|| v * overlap as f64 / (b - a) as f64)
            })
            .fold(0.0, |acc, x| acc + x)
    };
    let year = jiff::Timestamp::from_millisecond(from_ms).map(|t| t.to_zoned_datetime(tz.clone()).year()).unwrap_or(0);
    let whole_year = operating_span(site, year, &tz).is_some_and(|(a, b)| a == from_ms && b == to_ms)
        || calendar_year(year, &tz).is_ok_and(|(a, b)| a == from_ms && b == to_ms);
    if from_ms >= to_ms {
        return Certificates { allocation: Allocation::ProRataTemporis, ..Certificates::default() };
    }
    Certificates {
        go_kwh: spread(|a| a.eres_goo_kwh),
        ppa_kwh: spread(|a| a.eres_ppa_kwh),
        allocation: if whole_year { Allocation::Annual } else { Allocation::ProRataTemporis },
    }
}

/// The declared figures of `year`, if any.
pub fn annual(site: &SiteConfig, year: i16) -> Option<&AnnualValues> {
    site.annual.iter().find(|a| a.year == year)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sirets_pass_the_luhn_check() {
        for ok in ["73282932000074", "35600000000010", "55208131766522"] {
            assert!(valid_siret(ok), "{ok}");
        }
        for bad in ["73282932000075", "7328293200007", "7328293200007a", "732 829 320 00074", ""] {
            assert!(!valid_siret(bad), "{bad}");
        }
    }

    fn load(extra: &str) -> Result<crate::config::Loaded, ConfigError> {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        let text = format!(
            "[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_sha256 = \"{}\"\n{extra}",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        f.write_all(text.as_bytes()).expect("write");
        crate::config::CollectorConfig::load(Some(f.path()))
    }

    fn refused(extra: &str) -> String {
        load(extra).map(|_| ()).expect_err("must be refused").to_string()
    }

    #[test]
    fn declaration_keys_and_annual_tables_load() {
        let l = load(
            "siret = [\"73282932000074\"]\ncontact_name = \"A. Martin\"\ncontact_email = \"noc@ndc.example\"\n\
             commissioning_date = \"2019-06-15\"\npublic_disclosure_url = \"https://ndc.example/eed\"\npdit_basis = \"rated\"\n\
             [[sites.annual]]\nyear = 2025\neres_goo_kwh = 1000.0\nrefrigerant_types = [\"R-134a\"]\ngrid_functions = []\n\
             cdd_degree_days = 120.5\ncdd_source = \"Copernicus C3S\"\n",
        )
        .expect("load");
        let c = &l.sites[0].config;
        assert_eq!(c.siret, vec!["73282932000074".to_string()]);
        assert_eq!(c.pdit_basis, Some(PditBasis::Rated));
        let a = annual(c, 2025).expect("2025");
        assert_eq!(a.eres_goo_kwh, Some(1000.0));
        assert_eq!(a.grid_functions, Some(vec![]));
        assert!(annual(c, 2024).is_none());
    }

    #[test]
    fn bad_declaration_keys_name_line_and_fix() {
        let e = refused("siret = [\"73282932000075\"]\n");
        assert!(e.contains(":5:") && e.contains("check digit"), "{e}");
        let e = refused("contact_email = \"noc\"\n");
        assert!(e.contains(":5:") && e.contains("e-mail"), "{e}");
        let e = refused("commissioning_date = \"2019-06\"\n");
        assert!(e.contains(":5:") && e.contains("YYYY-MM-DD"), "{e}");
        let e = refused("public_disclosure_url = \"http://x.fr/eed\"\n");
        assert!(e.contains(":5:") && e.contains("https://"), "{e}");
        let e = refused("pdit_basis = \"nominal\"\n");
        assert!(e.contains(":5:") && e.contains("rated"), "{e}");
        // Annual tables: the line of the key, in the right year's table.
        let two =
            "[[sites.annual]]\nyear = 2024\neres_goo_kwh = 1.0\n[[sites.annual]]\nyear = 2025\neres_goo_kwh = -1.0\n";
        let e = refused(two);
        assert!(e.contains(":10:") && e.contains("year 2025") && e.contains("≥ 0"), "{e}");
        let e = refused("[[sites.annual]]\nyear = 2025\ncdd_degree_days = 100.0\n");
        assert!(e.contains(":7:") && e.contains("cdd_source"), "{e}");
        let e = refused("[[sites.annual]]\nyear = 2025\ncserv_floor_coverage_pct = 140.0\n");
        assert!(e.contains(":7:") && e.contains("0–100"), "{e}");
        let e = refused("[[sites.annual]]\nyear = 2025\n[[sites.annual]]\nyear = 2025\n");
        assert!(e.contains("twice"), "{e}");
        let e = refused("[[sites.annual]]\nyear = 2025\nco2_tons = 1.0\n");
        assert!(e.contains(":7:") && e.contains("co2_tons"), "{e}");
    }

    /// GOs and PPAs: whole for their year, pro rata temporis for a month.
    #[test]
    fn certificates_follow_the_period() {
        let l = load("[[sites.annual]]\nyear = 2025\neres_goo_kwh = 365000.0\neres_ppa_kwh = 3650.0\n").expect("load");
        let c = &l.sites[0].config;
        let tz = jiff::tz::TimeZone::get("Europe/Paris").expect("tz");
        let (a, b) = calendar_year(2025, &tz).expect("year");
        let whole = certificates(c, a, b);
        assert_eq!((whole.go_kwh, whole.ppa_kwh, whole.allocation), (365000.0, 3650.0, Allocation::Annual));
        let day = certificates(c, a, a + 86_400_000);
        assert!((day.go_kwh - 1000.0).abs() < 1e-6 && (day.ppa_kwh - 10.0).abs() < 1e-9, "{day:?}");
        assert_eq!(day.allocation, Allocation::ProRataTemporis);
        assert_eq!(certificates(c, b, b + 86_400_000).total_kwh(), 0.0);
    }

    /// Art. 3(2): omissions only of the listed points, with a reason, in the first reporting period.
    #[test]
    fn omissions_only_in_the_first_period_and_only_the_listed_points() {
        let site = "commissioning_date = \"2025-07-01\"\n";
        let table = |year: i16, field: &str, reason: &str| {
            format!(
                "{site}[[sites.annual]]\nyear = {year}\nomissions = [{{ field = \"{field}\", reason = \"{reason}\" }}]\n"
            )
        };
        let l = load(&table(2025, "win_m3", "water meter installed in 2026")).expect("load");
        let a = annual(&l.sites[0].config, 2025).expect("2025");
        assert_eq!(a.omitted("win_m3"), Some("water meter installed in 2026"));
        assert_eq!(first_reporting_year(&l.sites[0].config), 2025);
        let e = refused(&table(2026, "win_m3", "no meter"));
        assert!(e.contains(":8:") && e.contains("first reporting period") && e.contains("2025"), "{e}");
        let e = refused(&table(2025, "cserv_sert", "no SERT data"));
        assert!(e.contains("cannot be omitted") && e.contains("1(h)–(l)"), "{e}");
        let e = refused(&table(2025, "win_m3", " "));
        assert!(e.contains("reason"), "{e}");
        let e = refused(&format!(
            "{site}[[sites.annual]]\nyear = 2025\ntwh_c = 30.0\nomissions = [{{ field = \"twh_c\", reason = \"x\" }}]\n"
        ));
        assert!(e.contains("both declared and omitted"), "{e}");
        // Without a commissioning date the first period is 2023, the first one any declaration covered.
        assert!(
            load(
                "[[sites.annual]]\nyear = 2023\nomissions = [{ field = \"eit_kwh\", reason = \"no UPS meter yet\" }]\n"
            )
            .is_ok()
        );
        let e = refused(
            "[[sites.annual]]\nyear = 2024\nomissions = [{ field = \"eit_kwh\", reason = \"no UPS meter\" }]\n",
        );
        assert!(e.contains("no commissioning_date"), "{e}");
    }

    #[test]
    fn commissioning_date_agrees_with_entry_into_operation() {
        assert!(load("entry_into_operation = \"2025-07\"\ncommissioning_date = \"2025-07-01\"\n").is_ok());
        let e = refused("entry_into_operation = \"2025-06\"\ncommissioning_date = \"2025-07-01\"\n");
        assert!(e.contains(":6:") && e.contains("agree"), "{e}");
    }

    /// Art. 3(1): the commissioning year runs from the commissioning date; its
    /// GOs are whole for that period and pro rata over it for a part of it.
    #[test]
    fn operating_span_and_certificates_of_the_commissioning_year() {
        let l = load("commissioning_date = \"2025-07-01\"\n[[sites.annual]]\nyear = 2025\neres_goo_kwh = 184000.0\n")
            .expect("load");
        let c = &l.sites[0].config;
        let tz = jiff::tz::TimeZone::get("Europe/Paris").expect("tz");
        let (a, b) = operating_span(c, 2025, &tz).expect("2025");
        assert_eq!(a, "2025-06-30T22:00:00Z".parse::<jiff::Timestamp>().expect("ts").as_millisecond());
        assert_eq!(b, calendar_year(2025, &tz).expect("year").1);
        assert!(operating_span(c, 2024, &tz).is_none());
        assert_eq!(operating_span(c, 2026, &tz), calendar_year(2026, &tz).ok());
        let whole = certificates(c, a, b);
        assert_eq!((whole.go_kwh, whole.allocation), (184000.0, Allocation::Annual));
        // The calendar year holds the same GOs; one day of the 184 of operation holds 1/184.
        assert_eq!(certificates(c, calendar_year(2025, &tz).expect("y").0, b).go_kwh, 184000.0);
        // 184 days and the autumn DST hour.
        let day = certificates(c, a, a + 86_400_000);
        assert!((day.go_kwh - 184000.0 * 24.0 / (184.0 * 24.0 + 1.0)).abs() < 1e-6, "{day:?}");
        assert_eq!(day.ppa_kwh.to_bits(), 0.0f64.to_bits(), "no PPA declared: +0");
        assert_eq!(certificates(c, a - 86_400_000, a).go_kwh, 0.0);
    }

    /// Config figures say where they were declared.
    #[test]
    fn config_figures_keep_their_line() {
        let l = load("[[sites.annual]]\nyear = 2025\neres_goo_kwh = 1.0\n").expect("load");
        let a = annual(&l.sites[0].config, 2025).expect("2025");
        let at = a.origin("eres_goo_kwh").expect("origin");
        assert!(at.ends_with(":7"), "{at}");
        assert_eq!(a.origin("cbtg_kw"), None);
    }

    #[test]
    fn emails() {
        assert!(valid_email("noc@ndc.example"));
        for bad in ["noc", "@x.fr", "a@b", "a b@c.fr", "a@@c.fr", "a@.fr"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
