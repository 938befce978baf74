//! Site keys and annual figures that no meter gives, declared by the operator
//! for the EED declaration (Delegated Regulation (EU) 2024/1364 Annexes I–II)
//! and the French public sheet (Code de l'énergie D.236-2, D.236-3): their
//! types and their validation. The config loader calls [`validate_site`].
//!
//! Annual figures live in `[[sites.annual]]` tables, one per calendar year
//! (`year = 2025`). Guarantees of origin and PPA energy declared there also
//! feed REF and the market-based CUE of every period (pro rata temporis for
//! periods shorter than the year), through `site_report`.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SiteConfig};
use crate::indicators::period::{calendar_year, pro_rata_temporis};
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
        for (key, v) in a.numbers() {
            if let Some(v) = v
                && !(v.is_finite() && (v >= 0.0 || key == "twh_c"))
            {
                return Err(aat(key, format!("{v} must be a number ≥ 0")));
            }
        }
        for key in ["cserv_floor_coverage_pct", "cstor_floor_coverage_pct"] {
            let v = if key.starts_with("cserv") { a.cserv_floor_coverage_pct } else { a.cstor_floor_coverage_pct };
            if let Some(v) = v
                && v > 100.0
            {
                return Err(aat(key, format!("{v} is a percentage of the computer room floor area: 0–100")));
            }
        }
        if let Some(t) = a.twh_c
            && !(-20.0..=120.0).contains(&t)
        {
            return Err(aat("twh_c", format!("{t} °C is not a plausible waste heat temperature (-20–120 °C)")));
        }
        if let Some(t) = a.tin_setpoint_c
            && !(t.is_finite() && (5.0..=45.0).contains(&t))
        {
            return Err(aat("tin_setpoint_c", format!("{t} °C is not a plausible intake air set point (5–45 °C)")));
        }
        if let Some(r) = &a.refrigerant_types
            && let Some(bad) = r.iter().find(|x| x.trim().is_empty() || x.len() > 64)
        {
            return Err(aat("refrigerant_types", format!("{bad:?}: name each refrigerant, e.g. \"R-134a\"")));
        }
        if let Some(g) = &a.grid_functions
            && g.iter().any(|x| x.trim().is_empty())
        {
            return Err(aat("grid_functions", "has an empty entry: name each function, or use [] for none".into()));
        }
        if a.cdd_degree_days.is_some() && a.cdd_source.as_deref().is_none_or(|x| x.trim().is_empty()) {
            return Err(aat(
                "cdd_degree_days",
                "needs cdd_source: the open-access source of the cooling degree days (Annex II 1(n))".into(),
            ));
        }
    }
    Ok(())
}

/// The site's declared GOs and PPA energy brought down to `[from_ms, to_ms)`:
/// whole for its calendar year, pro rata temporis for any other period
/// (`indicators::period::pro_rata_temporis`), so that REF and the market-based
/// CUE of every period, the API's and the declaration's alike, count them.
pub fn certificates(site: &SiteConfig, from_ms: i64, to_ms: i64) -> Certificates {
    let Ok(tz) = jiff::tz::TimeZone::get(&site.timezone) else { return Certificates::default() };
    let of = |f: fn(&AnnualValues) -> Option<f64>| -> Vec<(i16, f64)> {
        site.annual.iter().filter_map(|a| f(a).map(|v| (a.year, v))).collect()
    };
    let (go, ppa) = (of(|a| a.eres_goo_kwh), of(|a| a.eres_ppa_kwh));
    let year = jiff::Timestamp::from_millisecond(from_ms).map(|t| t.to_zoned_datetime(tz.clone()).year()).unwrap_or(0);
    let whole_year = calendar_year(year, &tz).is_ok_and(|(a, b)| a == from_ms && b == to_ms);
    Certificates {
        go_kwh: pro_rata_temporis(&go, from_ms, to_ms, &tz).unwrap_or(0.0),
        ppa_kwh: pro_rata_temporis(&ppa, from_ms, to_ms, &tz).unwrap_or(0.0),
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

    #[test]
    fn emails() {
        assert!(valid_email("noc@ndc.example"));
        for bad in ["noc", "@x.fr", "a@b", "a b@c.fr", "a@@c.fr", "a@.fr"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
