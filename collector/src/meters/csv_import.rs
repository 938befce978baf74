//! Meter readings in CSV (`import-meters` and
//! `POST /api/v1/sites/{site}/meter-readings`): a header, then either register
//! readings `timestamp,meter,value` or intervals `start,end,meter,value`.
//! Timestamps are RFC 3339 with an offset, or naive local times with a time
//! zone. The French Excel dialect (`;` separator, decimal comma, BOM, CRLF,
//! spaces as thousands separators) is accepted. Values are parsed exactly into
//! micro-units, never through floats. The whole file is validated before
//! anything is stored; each error names the row, the column and the fix.

use std::collections::BTreeMap;

use jiff::civil::DateTime;
use jiff::tz::{Disambiguation, TimeZone};

use crate::config::MeterConfig;
use crate::ledger::{Batch, CounterSample, IntervalReading};

/// Parsing options.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub decimal_comma: bool,
    /// For naive timestamps (no offset); `None` refuses them.
    pub timezone: Option<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { delimiter: b',', decimal_comma: false, timezone: None }
    }
}

/// Parses a decimal string into micro-units exactly (at most 6 decimals).
pub fn parse_micro(text: &str, decimal_comma: bool) -> Result<i64, String> {
    let mut t: String = text.trim().chars().filter(|c| !matches!(c, ' ' | '\u{a0}' | '\u{202f}')).collect();
    if decimal_comma {
        if t.contains('.') && t.contains(',') {
            return Err(format!("{text:?} mixes '.' and ','; with --decimal-comma write 1234,5"));
        }
        t = t.replace(',', ".");
    } else if t.contains(',') {
        return Err(format!("{text:?} has a comma: use '.' for decimals, or --decimal-comma (French Excel)"));
    }
    if t.starts_with('-') {
        return Err(format!("{text:?} is negative: meter readings are never negative"));
    }
    let (int, frac) = t.split_once('.').unwrap_or((&t, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(format!("{text:?} is not a number"));
    }
    if frac.len() > 6 {
        return Err(format!("{text:?} has more than 6 decimals; round it to the meter's resolution"));
    }
    let int: i64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| format!("{text:?} is too large"))? };
    let frac_val: i64 = format!("{frac:0<6}").parse().map_err(|_| format!("{text:?} is not a number"))?;
    int.checked_mul(1_000_000).and_then(|v| v.checked_add(frac_val)).ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a timestamp: RFC 3339 with offset, or naive local time in `tz`.
/// Ambiguous (DST fall-back) and non-existent (spring-forward) local times are refused.
pub fn parse_time(text: &str, tz: Option<&TimeZone>) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let civil: DateTime = t.replace(' ', "T").parse().map_err(|_| {
        format!("{t:?} is not a date-time: write 2026-03-01T00:15:00+01:00, or a local time with --timezone")
    })?;
    let Some(tz) = tz else {
        return Err(format!("{t:?} has no UTC offset: add one (…+01:00) or give the meter's --timezone"));
    };
    let zoned = tz.to_ambiguous_timestamp(civil).disambiguate(Disambiguation::Reject).map_err(|_| {
        format!(
            "{t:?} is ambiguous or does not exist in {} (DST change): write it with its UTC offset",
            tz.iana_name().unwrap_or("the time zone")
        )
    })?;
    Ok(zoned.as_millisecond())
}

/// One problem in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole file for `site` into a ledger batch, or every error found.
pub fn parse(text: &str, site: &str, meters: &[MeterConfig], opts: &CsvOptions) -> Result<Batch, Vec<RowError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let tz = match &opts.timezone {
        Some(name) => match TimeZone::get(name) {
            Ok(z) => Some(z),
            Err(_) => {
                return Err(vec![RowError {
                    line: 0,
                    message: format!("--timezone {name:?} is not an IANA time zone"),
                }]);
            }
        },
        None => None,
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(opts.delimiter)
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|c| c.to_ascii_lowercase()).collect(),
        Err(e) => return Err(vec![RowError { line: 1, message: format!("cannot read the header: {e}") }]),
    };
    let col = |name: &str| header.iter().position(|h| h == name);
    let intervals = col("start").is_some() || col("end").is_some();
    let required: &[&str] =
        if intervals { &["start", "end", "meter", "value"] } else { &["timestamp", "meter", "value"] };
    let missing: Vec<&str> = required.iter().copied().filter(|c| col(c).is_none()).collect();
    if !missing.is_empty() {
        let sep = if opts.delimiter == b';' { "';'" } else { "','" };
        return Err(vec![RowError {
            line: 1,
            message: format!(
                "header {:?} lacks {} (with separator {sep}); expected `timestamp,meter,value` or `start,end,meter,value`{}",
                header.join(&(opts.delimiter as char).to_string()),
                missing.join(", "),
                if header.len() == 1 { " — is the separator right? (--delimiter ';')" } else { "" }
            ),
        }]);
    }
    let by_id: BTreeMap<&str, &MeterConfig> = meters.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut batch = Batch::default();
    let mut errors = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { len, expected_len, .. } => format!(
                        "{len} fields where the header has {expected_len}: a decimal comma in a {:?}-separated file? (--delimiter ';' --decimal-comma)",
                        opts.delimiter as char
                    ),
                    _ => format!("unreadable row: {e}"),
                };
                errors.push(RowError { line, message });
                continue;
            }
        };
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        let field = |name: &str| col(name).and_then(|c| rec.get(c)).unwrap_or("");
        let mut row_err = |message: String| errors.push(RowError { line, message });
        let meter_id = field("meter");
        let Some(meter) = by_id.get(meter_id) else {
            row_err(format!("meter {meter_id:?} is not configured for site {site:?} (add it under [[sites.meters]])"));
            continue;
        };
        let value = match parse_micro(field("value"), opts.decimal_comma) {
            Ok(v) => v,
            Err(e) => {
                row_err(format!("column value: {e}"));
                continue;
            }
        };
        if intervals {
            let (start, end) = match (parse_time(field("start"), tz.as_ref()), parse_time(field("end"), tz.as_ref())) {
                (Ok(s), Ok(e)) => (s, e),
                (Err(e), _) => {
                    row_err(format!("column start: {e}"));
                    continue;
                }
                (_, Err(e)) => {
                    row_err(format!("column end: {e}"));
                    continue;
                }
            };
            if end <= start {
                row_err("end is not after start".into());
                continue;
            }
            batch.intervals.push(IntervalReading {
                site: site.into(),
                meter: meter.id.clone(),
                role: meter.role.clone(),
                unit: meter.unit.clone(),
                start_ms: start,
                end_ms: end,
                value_micro: value,
            });
        } else {
            match parse_time(field("timestamp"), tz.as_ref()) {
                Ok(ts) => {
                    batch.samples.push(CounterSample::meter(site, &meter.id, &meter.role, &meter.unit, ts, value))
                }
                Err(e) => row_err(format!("column timestamp: {e}")),
            }
        }
    }
    if errors.is_empty() {
        batch.samples.sort_by(|a, b| (&a.series.meter, a.ts_ms).cmp(&(&b.series.meter, b.ts_ms)));
        Ok(batch)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MeterKind;

    fn meter(id: &str, role: &str, unit: &str) -> MeterConfig {
        let toml = format!("id = \"{id}\"\nrole = \"{role}\"\nkind = \"csv\"\nunit = \"{unit}\"\n");
        let m: MeterConfig = toml::from_str(&toml).expect("meter");
        assert_eq!(m.kind, MeterKind::Csv);
        m
    }

    #[test]
    fn exact_decimals() {
        assert_eq!(parse_micro("12345.678", false), Ok(12_345_678_000));
        assert_eq!(parse_micro("12 345,6", true), Ok(12_345_600_000));
        assert_eq!(parse_micro("0,000001", true), Ok(1));
        assert_eq!(parse_micro(".5", false), Ok(500_000));
        assert!(parse_micro("1,5", false).is_err());
        assert!(parse_micro("-3", false).is_err());
        assert!(parse_micro("1.2345678", false).is_err());
        assert!(parse_micro("abc", false).is_err());
        assert!(parse_micro("", false).is_err());
    }

    #[test]
    fn timestamps_and_dst() {
        let paris = TimeZone::get("Europe/Paris").expect("tz");
        assert_eq!(parse_time("2026-01-01T00:00:00Z", None), Ok(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01T01:00:00+01:00", None), Ok(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01 01:00:00", Some(&paris)), Ok(1_767_225_600_000));
        assert!(parse_time("2026-01-01 01:00:00", None).expect_err("naive").contains("--timezone"));
        // 2026-03-29 02:30 does not exist in Paris; 2026-10-25 02:30 happens twice.
        assert!(parse_time("2026-03-29 02:30:00", Some(&paris)).is_err());
        assert!(parse_time("2026-10-25 02:30:00", Some(&paris)).expect_err("ambiguous").contains("UTC offset"));
    }

    #[test]
    fn french_excel_intervals() {
        let m = vec![meter("edf", "utility_in", "kWh")];
        let text = "\u{feff}start;end;meter;value\r\n2026-01-01 00:00:00;2026-01-01 00:15:00;edf;1 234,5\r\n";
        let opts = CsvOptions { delimiter: b';', decimal_comma: true, timezone: Some("Europe/Paris".into()) };
        let b = parse(text, "s", &m, &opts).expect("parse");
        assert_eq!(b.intervals.len(), 1);
        assert_eq!(b.intervals[0].value_micro, 1_234_500_000);
        assert_eq!(b.intervals[0].end_ms - b.intervals[0].start_ms, 900_000);
        assert_eq!(b.intervals[0].unit, "kWh");
    }

    #[test]
    fn every_bad_row_is_named_and_nothing_is_returned() {
        let m = vec![meter("w", "water_in", "m3")];
        let text = "timestamp,meter,value\n2026-01-01T00:00:00Z,w,10\n2026-01-01T01:00:00Z,nope,11\n2026-01-01T02:00:00Z,w,1,5\nyesterday,w,12\n";
        let errs = parse(text, "s", &m, &CsvOptions::default()).expect_err("errors");
        let lines: Vec<u64> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5], "{errs:?}");
        assert!(errs[0].message.contains("not configured"));
        assert!(errs[1].message.contains("decimal comma"), "{errs:?}");
        assert!(errs[2].message.contains("column timestamp"), "{errs:?}");
        let wrong_sep = parse("timestamp;meter;value\n", "s", &m, &CsvOptions::default()).expect_err("sep");
        assert!(wrong_sep[0].message.contains("--delimiter"), "{wrong_sep:?}");
    }
}
