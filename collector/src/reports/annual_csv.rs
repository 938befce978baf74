//! Annual figures imported from CSV files (`[reports] annual_csv`): the
//! figures no meter gives, kept by operators in spreadsheets, read at config
//! load and merged into the sites' `[[sites.annual]]` tables, so that every
//! report and indicator sees them exactly as if they had been written in the
//! config.
//!
//! One row per site and calendar year, one column per figure: `site`, `year`,
//! then any of the `[[sites.annual]]` keys ([`ANNUAL_KEYS`]), in any order.
//! An empty cell declares nothing. The separator is `,`, or `;` (the French
//! Excel export, where numbers may also use a decimal comma), told apart by
//! the header line. A number may carry its key's unit (`1200 kWh`), never
//! another one. Lists (`refrigerant_types`, `grid_functions`) are separated by
//! `;` inside their cell; `none` declares an empty list. Every figure keeps
//! `FILE:LINE` of its row in `declared_in`.

use std::path::{Path, PathBuf};

use super::declared::{ANNUAL_KEYS, AnnualValues, check_values};
use crate::config::{ConfigError, Site};

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A number, in the unit given (`None`: a number without unit).
    Number(Option<&'static str>),
    Text,
    List,
}

/// The kind (and unit) of each figure key.
pub fn kind(key: &str) -> Option<Kind> {
    Some(match key {
        "pdit_kw" | "cbtg_kw" => Kind::Number(Some("kW")),
        "twh_c" | "tin_setpoint_c" => Kind::Number(Some("°C")),
        "cdd_degree_days" => Kind::Number(Some("degree-days")),
        "eres_goo_kwh" | "eres_ppa_kwh" => Kind::Number(Some("kWh")),
        "cserv_sert" => Kind::Number(None),
        "cserv_floor_coverage_pct" | "cstor_floor_coverage_pct" => Kind::Number(Some("%")),
        "cstor_pb" => Kind::Number(Some("PB")),
        "bin_gbyte_per_s" | "bout_gbyte_per_s" => Kind::Number(Some("GB/s")),
        "traffic_in_eb" | "traffic_out_eb" => Kind::Number(Some("EB")),
        "cdd_source" | "cserv_method" => Kind::Text,
        "grid_functions" | "refrigerant_types" => Kind::List,
        _ => return None,
    })
}

/// A parsed cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Number(f64),
    Text(String),
    List(Vec<String>),
}

/// One row of a CSV: a site's figures of one year.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub site: String,
    pub year: i16,
    /// 1-based line of the row in its file.
    pub line: usize,
    /// `(key, value, 1-based column)` of each non-empty cell.
    pub cells: Vec<(&'static str, Cell, usize)>,
}

/// A CSV error: 1-based line and CSV column (0 for the whole row) and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn fail<T>(line: usize, column: usize, message: String) -> Result<T, CsvError> {
    Err(CsvError { line, column, message })
}

/// Parses a number cell of `key`: thousands spaces allowed, the decimal comma
/// only when `decimal_comma`, the key's own unit allowed as a suffix.
pub fn number(cell: &str, key: &str, unit: Option<&str>, decimal_comma: bool) -> Result<f64, String> {
    let mut t = cell.trim();
    if let Some(u) = unit
        && let Some(rest) = t.strip_suffix(u)
    {
        t = rest.trim_end();
    }
    let digits: String = t.chars().filter(|c| !matches!(c, ' ' | '\u{a0}' | '\u{202f}')).collect();
    let unit_text = unit
        .map(|u| format!("is in {u}: write the number alone, or followed by {u}"))
        .unwrap_or_else(|| "has no unit: write the number alone".into());
    let Some(first_bad) =
        digits.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | ',' | '-' | '+' | 'e' | 'E')))
    else {
        let normal = match (digits.contains(','), decimal_comma) {
            (false, _) => digits.clone(),
            (true, true) if !digits.contains('.') => digits.replace(',', "."),
            (true, true) => return Err(format!("{cell:?} mixes a decimal comma and a point: write e.g. 1234,5")),
            (true, false) => {
                return Err(format!(
                    "{cell:?} has a comma: in a ','-separated file write the decimal point (1234.5), or save the file with ';' separators"
                ));
            }
        };
        return match normal.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("{cell:?} is not a number: `{key}` takes a number, e.g. 1234.5")),
        };
    };
    let suffix = digits[first_bad..].to_string();
    if digits[..first_bad].is_empty() {
        return Err(format!("{cell:?} is not a number: `{key}` takes a number, e.g. 1234.5"));
    }
    Err(format!("{cell:?}: unit {suffix:?} is not accepted: `{key}` {unit_text} (convert other units first)"))
}

/// The separator of a file whose first line is `header`: `;` when it has
/// one (and then the decimal comma is allowed), else `,`.
fn separator(header: &str) -> u8 {
    if header.contains(';') { b';' } else { b',' }
}

/// 1-based character column where CSV column `col` (1-based) starts on
/// `line`, when the line has no quotes to confuse the count; else 1.
fn char_column(line: &str, sep: u8, col: usize) -> usize {
    if col == 0 || line.contains('"') {
        return 1;
    }
    line.split(sep as char).take(col - 1).map(|c| c.chars().count() + 1).sum::<usize>() + 1
}

/// Parses one CSV. `sites` are the configured site ids.
pub fn parse(text: &str, sites: &[&str]) -> Result<Vec<Row>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let sep = separator(text.lines().next().unwrap_or_default());
    let decimal_comma = sep == b';';
    let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).delimiter(sep).from_reader(text.as_bytes());
    let mut records = r.records();
    let header = match records.next() {
        None => {
            return fail(
                1,
                0,
                "the file is empty: the first line names the columns, e.g. site,year,eres_goo_kwh".into(),
            );
        }
        Some(Err(e)) => return fail(1, 0, format!("unreadable header: {e}")),
        Some(Ok(h)) => h,
    };
    let mut columns: Vec<&'static str> = Vec::new();
    for (i, h) in header.iter().enumerate() {
        let name = h.trim();
        let col = i + 1;
        let known = ["site", "year"].into_iter().chain(ANNUAL_KEYS).find(|k| *k == name);
        let Some(k) = known else {
            let hint = if name == "omissions" {
                "omissions are declared in the config, with their reasons: [[sites.annual]] omissions = [{ field = \"…\", reason = \"…\" }]".to_string()
            } else if name.is_empty() {
                "the column has no name: name it, or delete it".to_string()
            } else {
                format!("the columns are site, year and the [[sites.annual]] keys: {}", ANNUAL_KEYS.join(", "))
            };
            return fail(1, col, format!("unknown column {name:?}: {hint}"));
        };
        if columns.contains(&k) {
            return fail(1, col, format!("column `{k}` appears twice: keep one"));
        }
        columns.push(k);
    }
    for need in ["site", "year"] {
        if !columns.contains(&need) {
            return fail(
                1,
                0,
                format!("no `{need}` column: the first line must name site, year and the figures' keys"),
            );
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for rec in records {
        // The reader starts a record after a CRLF at its '\n': skip line ends first.
        let line_at = |byte: u64| {
            let b = text.as_bytes();
            let mut at = (byte as usize).min(b.len());
            while at < b.len() && matches!(b[at], b'\r' | b'\n') {
                at += 1;
            }
            b[..at].iter().filter(|c| **c == b'\n').count() + 1
        };
        let rec = rec.map_err(|e| CsvError {
            line: e.position().map(|p| line_at(p.byte())).unwrap_or(0),
            column: 0,
            message: format!("unreadable row: {e}"),
        })?;
        let line = rec.position().map(|p| line_at(p.byte())).unwrap_or(0);
        if rec.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if rec.len() > columns.len() {
            return fail(
                line,
                columns.len() + 1,
                format!(
                    "{} cells where the header names {} columns: a separator inside a value? Quote it (\"R-134a; R-32\")",
                    rec.len(),
                    columns.len()
                ),
            );
        }
        let (mut site, mut year) = (None, None);
        let mut cells = Vec::new();
        for (i, raw) in rec.iter().enumerate() {
            let (key, col, v) = (columns[i], i + 1, raw.trim());
            if v.is_empty() {
                continue;
            }
            match key {
                "site" => {
                    if !sites.contains(&v) {
                        return fail(
                            line,
                            col,
                            format!("unknown site {v:?}: the sites of this config are {}", sites.join(", ")),
                        );
                    }
                    site = Some(v.to_string());
                }
                "year" => match v.parse::<i16>() {
                    Ok(y) if (1990..=2100).contains(&y) => year = Some(y),
                    _ => return fail(line, col, format!("year {v:?} must be a calendar year between 1990 and 2100")),
                },
                _ => {
                    let cell = match kind(key) {
                        Some(Kind::Number(unit)) => {
                            Cell::Number(number(v, key, unit, decimal_comma).map_err(|m| CsvError {
                                line,
                                column: col,
                                message: format!("`{key}`: {m}"),
                            })?)
                        }
                        Some(Kind::Text) => Cell::Text(v.to_string()),
                        Some(Kind::List) if v.eq_ignore_ascii_case("none") => Cell::List(Vec::new()),
                        Some(Kind::List) => {
                            let items: Vec<String> = v.split(';').map(|x| x.trim().to_string()).collect();
                            if items.iter().any(String::is_empty) {
                                return fail(
                                    line,
                                    col,
                                    format!(
                                        "`{key}`: {v:?} has an empty entry: separate the names with ';', or write none"
                                    ),
                                );
                            }
                            Cell::List(items)
                        }
                        None => return fail(line, col, format!("unknown column `{key}`")),
                    };
                    cells.push((key, cell, col));
                }
            }
        }
        let Some(site) = site else { return fail(line, 1, "no site: every row names its site".into()) };
        let Some(year) = year else { return fail(line, 2, "no year: every row names its calendar year".into()) };
        if let Some(o) = rows.iter().find(|o| o.site == site && o.year == year) {
            return fail(
                line,
                0,
                format!("site {site:?} year {year} is already on line {}: one row per site and year", o.line),
            );
        }
        rows.push(Row { site, year, line, cells });
    }
    Ok(rows)
}

/// Sets figure `key` of `a`.
fn assign(a: &mut AnnualValues, key: &str, cell: &Cell) {
    let n = match cell {
        Cell::Number(n) => Some(*n),
        _ => None,
    };
    let t = match cell {
        Cell::Text(t) => Some(t.clone()),
        _ => None,
    };
    let l = match cell {
        Cell::List(l) => Some(l.clone()),
        _ => None,
    };
    match key {
        "pdit_kw" => a.pdit_kw = n,
        "grid_functions" => a.grid_functions = l,
        "cbtg_kw" => a.cbtg_kw = n,
        "twh_c" => a.twh_c = n,
        "tin_setpoint_c" => a.tin_setpoint_c = n,
        "refrigerant_types" => a.refrigerant_types = l,
        "cdd_degree_days" => a.cdd_degree_days = n,
        "cdd_source" => a.cdd_source = t,
        "eres_goo_kwh" => a.eres_goo_kwh = n,
        "eres_ppa_kwh" => a.eres_ppa_kwh = n,
        "cserv_sert" => a.cserv_sert = n,
        "cserv_floor_coverage_pct" => a.cserv_floor_coverage_pct = n,
        "cserv_method" => a.cserv_method = t,
        "cstor_pb" => a.cstor_pb = n,
        "cstor_floor_coverage_pct" => a.cstor_floor_coverage_pct = n,
        "bin_gbyte_per_s" => a.bin_gbyte_per_s = n,
        "bout_gbyte_per_s" => a.bout_gbyte_per_s = n,
        "traffic_in_eb" => a.traffic_in_eb = n,
        "traffic_out_eb" => a.traffic_out_eb = n,
        _ => {}
    }
}

/// Merges the rows of file `name` into the sites' annual tables: a figure
/// declared both in the config and in a CSV is refused, naming both places.
pub fn merge(name: &str, rows: &[Row], sites: &mut [Site]) -> Result<(), CsvError> {
    for row in rows {
        let Some(site) = sites.iter_mut().find(|s| s.config.id == row.site) else {
            return fail(row.line, 1, format!("unknown site {:?}", row.site));
        };
        let annual = &mut site.config.annual;
        let idx = match annual.iter().position(|a| a.year == row.year) {
            Some(i) => i,
            None => {
                annual.push(AnnualValues { year: row.year, ..AnnualValues::default() });
                annual.len() - 1
            }
        };
        let a = &mut annual[idx];
        let here = format!("{name}:{}", row.line);
        for (key, cell, col) in &row.cells {
            if a.is_declared(key) {
                let there = a.origin(key).unwrap_or_else(|| "the config".into());
                return fail(
                    row.line,
                    *col,
                    format!(
                        "site {:?} year {}: `{key}` is declared both in {there} and in {here}: keep one of the two",
                        row.site, row.year
                    ),
                );
            }
            assign(a, key, cell);
            a.declared_in.insert(key.to_string(), here.clone());
        }
        check_values(a).map_err(|(key, msg)| {
            let col = row.cells.iter().find(|c| c.0 == key).map(|c| c.2).unwrap_or(0);
            let other = if col == 0 {
                a.origin(key).map(|o| format!(" (declared in {o})")).unwrap_or_default()
            } else {
                String::new()
            };
            CsvError {
                line: row.line,
                column: col,
                message: format!("site {:?} year {}: `{key}`{other}: {msg}", row.site, row.year),
            }
        })?;
    }
    Ok(())
}

/// Reads every file of `[reports] annual_csv` (relative to `base`, the config
/// file's folder; the entries become the resolved paths) and merges it into
/// `sites`. `at` locates an error of the config key itself; an error in a
/// file names the file, line, column and key.
pub fn import(
    files: &mut [String],
    base: &Path,
    sites: &mut [Site],
    at: &dyn Fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    for f in files.iter_mut() {
        if f.trim().is_empty() {
            return Err(at("annual_csv: an entry is empty: give the path of a CSV file".into()));
        }
        let name = f.clone();
        let path: PathBuf =
            if Path::new(f.as_str()).is_relative() { base.join(f.as_str()) } else { PathBuf::from(f.as_str()) };
        let bytes = std::fs::read(&path).map_err(|e| at(format!("annual_csv: cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| at(format!("annual_csv: {} is not UTF-8 text: save it as \"CSV UTF-8\"", path.display())))?;
        let ids: Vec<String> = sites.iter().map(|s| s.config.id.clone()).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let located = |e: CsvError| {
            let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let snippet = body.lines().nth(e.line.saturating_sub(1)).unwrap_or_default().to_string();
            let sep = separator(body.lines().next().unwrap_or_default());
            let col = if e.column > 0 { format!("column {}: ", e.column) } else { String::new() };
            ConfigError::Invalid {
                path: path.clone(),
                line: e.line,
                column: char_column(&snippet, sep, e.column),
                message: format!("{col}{}", e.message),
                snippet,
            }
        };
        let rows = parse(&text, &id_refs).map_err(located)?;
        merge(&name, &rows, sites).map_err(located)?;
        *f = path.display().to_string();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITES: [&str; 2] = ["caen-1", "rouen-1"];

    fn ok(text: &str) -> Vec<Row> {
        parse(text, &SITES).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn bad(text: &str) -> CsvError {
        parse(text, &SITES).expect_err("must be refused")
    }

    #[test]
    fn every_annual_key_has_a_kind() {
        for k in ANNUAL_KEYS {
            assert!(kind(k).is_some(), "{k}");
        }
        // The keys are exactly the [[sites.annual]] fields but `year` and `omissions`.
        let a = AnnualValues {
            pdit_kw: Some(1.0),
            grid_functions: Some(vec![]),
            cbtg_kw: Some(1.0),
            twh_c: Some(1.0),
            tin_setpoint_c: Some(1.0),
            refrigerant_types: Some(vec![]),
            cdd_degree_days: Some(1.0),
            cdd_source: Some("x".into()),
            eres_goo_kwh: Some(1.0),
            eres_ppa_kwh: Some(1.0),
            cserv_sert: Some(1.0),
            cserv_floor_coverage_pct: Some(1.0),
            cserv_method: Some("x".into()),
            cstor_pb: Some(1.0),
            cstor_floor_coverage_pct: Some(1.0),
            bin_gbyte_per_s: Some(1.0),
            bout_gbyte_per_s: Some(1.0),
            traffic_in_eb: Some(1.0),
            traffic_out_eb: Some(1.0),
            ..AnnualValues::default()
        };
        let v = serde_json::to_value(&a).expect("json");
        let mut fields: Vec<&str> =
            v.as_object().expect("object").keys().map(String::as_str).filter(|k| *k != "year").collect();
        let mut keys = ANNUAL_KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
        for k in ANNUAL_KEYS {
            assert!(a.is_declared(k), "{k}");
            assert!(!AnnualValues::default().is_declared(k), "{k}");
        }
    }

    #[test]
    fn rows_with_bom_quotes_units_and_empty_cells() {
        let rows = ok(
            "\u{feff}site,year,eres_goo_kwh,refrigerant_types,cdd_degree_days,cdd_source,grid_functions,cserv_floor_coverage_pct\r\n\
             caen-1,2025,600000 kWh,\"R-134a; R-1234ze(E)\",118.4,\"Copernicus C3S, ERA5\",none,80 %\r\n\
             rouen-1,2025,,,,,,\r\n\
             ,,,,,,,\r\n",
        );
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!((r.site.as_str(), r.year, r.line), ("caen-1", 2025, 2));
        assert_eq!(
            r.cells,
            vec![
                ("eres_goo_kwh", Cell::Number(600000.0), 3),
                ("refrigerant_types", Cell::List(vec!["R-134a".into(), "R-1234ze(E)".into()]), 4),
                ("cdd_degree_days", Cell::Number(118.4), 5),
                ("cdd_source", Cell::Text("Copernicus C3S, ERA5".into()), 6),
                ("grid_functions", Cell::List(vec![]), 7),
                ("cserv_floor_coverage_pct", Cell::Number(80.0), 8),
            ]
        );
        // Empty cells declare nothing.
        assert_eq!((rows[1].line, rows[1].cells.len()), (3, 0));
    }

    #[test]
    fn french_excel_semicolons_and_decimal_comma() {
        let rows = ok("site;year;eres_goo_kwh;twh_c\ncaen-1;2025;1 234 567,5;-2,5 °C\n");
        assert_eq!(rows[0].cells[0].1, Cell::Number(1_234_567.5));
        assert_eq!(rows[0].cells[1].1, Cell::Number(-2.5));
        // A comma in a ','-separated file is refused, not misread.
        let e = bad("site,year,eres_goo_kwh\ncaen-1,2025,\"1,5\"\n");
        assert_eq!((e.line, e.column), (2, 3));
        assert!(e.message.contains("decimal point"), "{e:?}");
    }

    #[test]
    fn bad_rows_name_line_column_and_fix() {
        let e = bad("site,year,co2_tons\n");
        assert_eq!((e.line, e.column), (1, 3));
        assert!(e.message.contains("co2_tons") && e.message.contains("eres_goo_kwh"), "{e:?}");
        let e = bad("site,year,omissions\n");
        assert!(e.message.contains("[[sites.annual]] omissions"), "{e:?}");
        let e = bad("site,eres_goo_kwh\n");
        assert!(e.message.contains("no `year` column"), "{e:?}");
        let e = bad("site,year,cbtg_kw,cbtg_kw\n");
        assert!(e.message.contains("twice"), "{e:?}");
        let e = bad("site,year\nlille-1,2025\n");
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("unknown site \"lille-1\"") && e.message.contains("caen-1, rouen-1"), "{e:?}");
        let e = bad("site,year\ncaen-1,25\n");
        assert!(e.message.contains("1990 and 2100"), "{e:?}");
        let e = bad("site,year,eres_goo_kwh\ncaen-1,2025,600 MWh\n");
        assert_eq!((e.line, e.column), (2, 3));
        assert!(e.message.contains("\"MWh\"") && e.message.contains("in kWh"), "{e:?}");
        let e = bad("site,year,cserv_sert\ncaen-1,2025,12 kW\n");
        assert!(e.message.contains("has no unit"), "{e:?}");
        let e = bad("site,year,cbtg_kw\ncaen-1,2025,lots\n");
        assert!(e.message.contains("not a number"), "{e:?}");
        let e = bad("site,year,cbtg_kw\ncaen-1,2025,NaN\n");
        assert!(e.message.contains("not a number"), "{e:?}");
        let e = bad("site,year,cbtg_kw\ncaen-1,2025,1,2\n");
        assert!(e.message.contains("cells where the header names 3"), "{e:?}");
        let e = bad("site,year,refrigerant_types\ncaen-1,2025,\"R-134a;;R-32\"\n");
        assert!(e.message.contains("empty entry"), "{e:?}");
        let e = bad("site,year\ncaen-1,2025\ncaen-1,2025\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("already on line 2"), "{e:?}");
        let e = bad("");
        assert!(e.message.contains("empty"), "{e:?}");
        let e = bad("site,year,cbtg_kw\n,2025,1\n");
        assert!(e.message.contains("no site"), "{e:?}");
    }

    #[test]
    fn numbers_and_units() {
        assert_eq!(number("1200", "pdit_kw", Some("kW"), false), Ok(1200.0));
        assert_eq!(number("1200kW", "pdit_kw", Some("kW"), false), Ok(1200.0));
        assert_eq!(number("1e3", "cstor_pb", Some("PB"), false), Ok(1000.0));
        assert_eq!(number("32,5 °C", "twh_c", Some("°C"), true), Ok(32.5));
        assert!(number("1.2 MW", "pdit_kw", Some("kW"), false).is_err());
        assert!(number("kW", "pdit_kw", Some("kW"), false).is_err());
        assert!(number("1,234.5", "pdit_kw", Some("kW"), true).is_err());
        assert!(number("inf", "pdit_kw", Some("kW"), false).is_err());
    }

    /// Through the config loader: merged into `[[sites.annual]]` with its
    /// place; a figure in both the config and a CSV is refused naming both.
    fn load(annual_toml: &str, csv: &str) -> Result<crate::config::Loaded, ConfigError> {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("annual.csv"), csv).expect("csv");
        let cfg = dir.path().join("collector.toml");
        let text = format!(
            "[reports]\nannual_csv = [\"annual.csv\"]\n\n[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_sha256 = \"{}\"\n{annual_toml}",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        std::fs::write(&cfg, text).expect("config");
        crate::config::CollectorConfig::load(Some(&cfg))
    }

    #[test]
    fn csv_figures_merge_into_the_sites_with_their_place() {
        let l = load(
            "[[sites.annual]]\nyear = 2025\ncbtg_kw = 0.0\n",
            "site,year,eres_goo_kwh,cdd_degree_days,cdd_source\ncaen-1,2025,600000,118.4,Copernicus\ncaen-1,2024,5,,\n",
        )
        .expect("load");
        let c = &l.sites[0].config;
        let a = super::super::declared::annual(c, 2025).expect("2025");
        assert_eq!((a.eres_goo_kwh, a.cbtg_kw, a.cdd_degree_days), (Some(600000.0), Some(0.0), Some(118.4)));
        assert_eq!(a.origin("eres_goo_kwh").as_deref(), Some("annual.csv:2"));
        assert_eq!(a.origin("cbtg_kw").as_deref(), Some("collector.toml:10"));
        let b = super::super::declared::annual(c, 2024).expect("2024 from the CSV alone");
        assert_eq!((b.eres_goo_kwh, b.origin("eres_goo_kwh").as_deref()), (Some(5.0), Some("annual.csv:3")));
        assert_eq!(l.config.sites[0].annual.len(), 2, "the effective config holds the CSV's figures");
    }

    #[test]
    fn csv_refusals_name_file_line_and_key() {
        let e = load("[[sites.annual]]\nyear = 2025\neres_goo_kwh = 1.0\n", "site,year,eres_goo_kwh\ncaen-1,2025,2\n")
            .map(|_| ())
            .expect_err("declared twice")
            .to_string();
        assert!(
            e.contains("annual.csv:2:13: column 3") && e.contains("collector.toml:10") && e.contains("annual.csv:2"),
            "{e}"
        );
        let e =
            load("", "site,year,cdd_degree_days\ncaen-1,2025,100\n").map(|_| ()).expect_err("no source").to_string();
        assert!(e.contains("annual.csv:2:") && e.contains("cdd_source"), "{e}");
        let e =
            load("", "site,year,cserv_floor_coverage_pct\ncaen-1,2025,140\n").map(|_| ()).expect_err("pct").to_string();
        assert!(e.contains("0–100"), "{e}");
        let e = load(
            "commissioning_date = \"2025-07-01\"\n[[sites.annual]]\nyear = 2025\nomissions = [{ field = \"twh_c\", reason = \"no sensor\" }]\n",
            "site,year,twh_c\ncaen-1,2025,30\n",
        )
        .map(|_| ())
        .expect_err("omitted and declared")
        .to_string();
        assert!(e.contains("both declared and omitted"), "{e}");
        let e = load("", "site,year\nlille,2025\n").map(|_| ()).expect_err("site").to_string();
        assert!(e.contains("annual.csv:2:1") && e.contains("unknown site"), "{e}");
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("collector.toml");
        std::fs::write(&cfg, "[reports]\nannual_csv = [\"nope.csv\"]\n").expect("config");
        let e = crate::config::CollectorConfig::load(Some(&cfg)).map(|_| ()).expect_err("missing").to_string();
        assert!(e.contains("collector.toml:2:") && e.contains("nope.csv"), "{e}");
        std::fs::write(dir.path().join("latin1.csv"), b"site,year,cserv_method\n\xe9\n").expect("csv");
        std::fs::write(&cfg, "[reports]\nannual_csv = [\"latin1.csv\"]\n").expect("config");
        let e = crate::config::CollectorConfig::load(Some(&cfg)).map(|_| ()).expect_err("latin1").to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }

    /// The sample shipped for operators parses, and its figures pass the checks.
    #[test]
    fn the_sample_file_is_valid() {
        let rows = ok(include_str!("../../../deploy/examples/annual.csv"));
        assert_eq!(rows.len(), 2);
        let mut a = AnnualValues { year: 2025, ..AnnualValues::default() };
        for (k, c, _) in &rows[0].cells {
            assign(&mut a, k, c);
        }
        assert_eq!(check_values(&a), Ok(()));
        assert_eq!(a.refrigerant_types, Some(vec!["R-134a".to_string(), "R-1234ze(E)".to_string()]));
        assert_eq!(a.grid_functions, Some(vec![]));
    }

    #[test]
    fn char_columns() {
        assert_eq!(char_column("caen-1,2025,600 MWh", b',', 3), 13);
        assert_eq!(char_column("caen-1,\"x\",1", b',', 3), 1);
        assert_eq!(char_column("abc", b',', 0), 1);
    }
}
