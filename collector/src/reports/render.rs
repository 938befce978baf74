//! Renderings of one [`Declaration`]: JSON (the schema), CSV (one row per
//! field) and XLSX (one sheet per section, typed cells). Each is a pure
//! function of the declaration, so the same ledger and config give the same
//! bytes; `generated_at` is the only field that depends on the run (and is
//! fixed by `SOURCE_DATE_EPOCH`).

use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Workbook, Worksheet, XlsxError};

use super::eed::{Declaration, Field, IndicatorField, Value};

/// Output formats of `report eed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Csv,
    Xlsx,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Option<OutputFormat> {
        match s {
            "json" => Some(OutputFormat::Json),
            "csv" => Some(OutputFormat::Csv),
            "xlsx" => Some(OutputFormat::Xlsx),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("XLSX: {0}")]
    Xlsx(#[from] XlsxError),
}

/// The declaration in `format`.
pub fn render(d: &Declaration, format: OutputFormat) -> Result<Vec<u8>, RenderError> {
    match format {
        OutputFormat::Json => json(d),
        OutputFormat::Csv => Ok(csv(d).into_bytes()),
        OutputFormat::Xlsx => xlsx(d),
    }
}

/// Pretty JSON with a final newline; fields in schema order.
pub fn json(d: &Declaration) -> Result<Vec<u8>, RenderError> {
    let mut out = serde_json::to_vec_pretty(d)?;
    out.push(b'\n');
    Ok(out)
}

/// Columns of the CSV, in order.
pub const CSV_COLUMNS: [&str; 24] = [
    "section",
    "field",
    "label",
    "annex",
    "point",
    "mandatory",
    "value",
    "unit",
    "numerator",
    "denominator",
    "source",
    "config_key",
    "meters",
    "coverage_ratio",
    "estimated_share",
    "missing_meters",
    "category",
    "class",
    "class_indicative",
    "error",
    "carbon_source",
    "interim",
    "note",
    "declared_in",
];

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn envelope(d: &Declaration) -> Vec<(&'static str, Value)> {
    vec![
        ("schema", Value::Text(d.schema.into())),
        ("schema_version", Value::Text(d.schema_version.into())),
        ("generated_at", Value::Text(d.generated_at.clone())),
        ("site", Value::Text(d.site.clone())),
        ("reporting_year", d.reporting_year.map(|y| Value::Integer(i64::from(y))).unwrap_or(Value::Null)),
        ("period_start", Value::Text(d.period_start.clone())),
        ("period_end", Value::Text(d.period_end.clone())),
        ("timezone", Value::Text(d.timezone.clone())),
        ("interim", Value::Bool(d.interim)),
        ("first_reporting_period", Value::Bool(d.first_reporting_period)),
        (
            "operating_period",
            d.operating_period.as_ref().map(|o| Value::Text(o.statement.clone())).unwrap_or(Value::Null),
        ),
        ("operating_period_from", d.operating_period.as_ref().map(|o| Value::Date(o.from)).unwrap_or(Value::Null)),
        ("operating_period_to", d.operating_period.as_ref().map(|o| Value::Date(o.to)).unwrap_or(Value::Null)),
        ("rounding", Value::Text(d.conventions.rounding.into())),
        ("class_scale", Value::Text(d.conventions.class_scale.into())),
        ("class_boundaries", Value::Text(d.conventions.class_boundaries.into())),
        ("eit_point", Value::Text(d.conventions.eit_point.clone())),
        ("energy_source", Value::Text(d.conventions.energy_source.into())),
    ]
}

fn opt_num(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// One row per envelope value, field, indicator and missing field.
pub fn csv(d: &Declaration) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let blank = || vec![String::new(); CSV_COLUMNS.len()];
    let interim = d.interim.to_string();
    for (k, v) in envelope(d) {
        let mut r = blank();
        r[0] = "envelope".into();
        r[1] = k.into();
        r[6] = v.cell();
        r[21] = interim.clone();
        rows.push(r);
    }
    for s in d.sections() {
        for f in &s.fields {
            let mut r = blank();
            r[0] = s.id.into();
            r[1] = f.key.into();
            r[2] = f.label.into();
            r[3] = f.annex.unwrap_or_default().into();
            r[4] = f.point.unwrap_or_default().into();
            r[5] = f.mandatory.to_string();
            r[6] = f.value.cell();
            r[7] = f.unit.unwrap_or_default().into();
            r[10] = serde_plain(&f.source);
            r[11] = f.config_key.clone().unwrap_or_default();
            if let Some(p) = &f.provenance {
                r[12] = p.meters.join("; ");
                r[13] = p.coverage_ratio.to_string();
                r[14] = p.estimated_share.to_string();
                r[15] = p.missing_meters.join("; ");
            }
            r[23] = f.declared_in.clone().unwrap_or_default();
            r[21] = f.interim.to_string();
            r[22] = f.note.clone().unwrap_or_default();
            rows.push(r);
        }
    }
    for i in &d.indicators {
        let mut r = blank();
        r[0] = "indicators".into();
        r[1] = i.name.as_str().into();
        r[2] = i.label.into();
        r[3] = i.annex.unwrap_or_default().into();
        r[4] = i.point.unwrap_or_default().into();
        r[5] = "false".into();
        r[6] = opt_num(i.value);
        r[7] = serde_plain(&i.unit);
        r[10] = "computed".into();
        r[13] = i.coverage_ratio.to_string();
        r[14] = i.estimated_share.to_string();
        r[15] = i.missing_meters.join("; ");
        r[16] = i.category.map(|c| c.number().to_string()).unwrap_or_default();
        r[17] = i.class.map(String::from).unwrap_or_default();
        r[18] = i.class_indicative.map(|b| b.to_string()).unwrap_or_default();
        r[19] = i.error.map(|e| e.as_str().to_string()).unwrap_or_default();
        r[20] = i.carbon_source.clone().unwrap_or_default();
        r[21] = i.interim.to_string();
        r[8] = opt_num(i.numerator);
        r[9] = opt_num(i.denominator);
        r[22] = i.standard.into();
        rows.push(r);
    }
    for m in &d.missing {
        let mut r = blank();
        r[0] = "missing".into();
        r[1] = m.field.into();
        r[3] = m.annex.unwrap_or_default().into();
        r[4] = m.point.unwrap_or_default().into();
        r[5] = "true".into();
        r[11] = m.config_key.clone();
        r[21] = interim.clone();
        rows.push(r);
    }
    for o in &d.omissions {
        let mut r = blank();
        r[0] = "omissions".into();
        r[1] = o.field.into();
        r[3] = o.annex.unwrap_or_default().into();
        r[4] = o.point.unwrap_or_default().into();
        r[5] = "true".into();
        r[21] = interim.clone();
        r[22] = format!("omitted for technical reasons ({}): {}", o.regulation, o.reason);
        rows.push(r);
    }
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Sheet names, in order (31 characters at most each).
pub const SHEETS: [&str; 9] = [
    "Declaration",
    "Annex I",
    "Annex II energy",
    "Annex II ICT capacity",
    "Annex II data traffic",
    "France",
    "Indicators",
    "Missing",
    "Omissions",
];

/// Headers of the field sheets (units where a column has one).
pub const FIELD_HEADERS: [&str; 14] = [
    "Field",
    "Label (unit)",
    "Annex",
    "Point",
    "Value",
    "Unit",
    "Mandatory",
    "Source",
    "Config key",
    "Meters",
    "Coverage (ratio 0–1)",
    "Estimated share (ratio 0–1)",
    "Declared in (file:line)",
    "Note",
];

/// Headers of the indicators sheet.
pub const INDICATOR_HEADERS: [&str; 14] = [
    "Indicator",
    "Label",
    "Annex",
    "Point",
    "Value",
    "Unit",
    "Indicative class (A–G)",
    "PUE category",
    "Numerator (kWh, kgCO2e or L)",
    "Denominator (kWh)",
    "Coverage (ratio 0–1)",
    "Estimated share (ratio 0–1)",
    "Error",
    "Carbon source",
];

fn write_value(ws: &mut Worksheet, row: u32, col: u16, v: &Value, date: &Format) -> Result<(), XlsxError> {
    match v {
        Value::Null => {}
        Value::Bool(b) => {
            ws.write_boolean(row, col, *b)?;
        }
        Value::Number(n) => {
            ws.write_number(row, col, *n)?;
        }
        Value::Integer(n) => {
            ws.write_number(row, col, *n as f64)?;
        }
        Value::Text(s) => {
            ws.write_string(row, col, s)?;
        }
        Value::Date(d) => {
            let x = ExcelDateTime::from_ymd(d.year() as u16, d.month() as u8, d.day() as u8)?;
            ws.write_datetime_with_format(row, col, &x, date)?;
        }
        Value::List(l) => {
            ws.write_string(row, col, l.join("; "))?;
        }
    }
    Ok(())
}

fn headers(ws: &mut Worksheet, names: &[&str], bold: &Format) -> Result<(), XlsxError> {
    for (c, h) in names.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, *h, bold)?;
        ws.set_column_width(c as u16, if c == 1 { 48 } else { 18 })?;
    }
    Ok(())
}

fn field_sheet(ws: &mut Worksheet, fields: &[Field], bold: &Format, date: &Format) -> Result<(), XlsxError> {
    headers(ws, &FIELD_HEADERS, bold)?;
    for (i, f) in fields.iter().enumerate() {
        let r = i as u32 + 1;
        ws.write_string(r, 0, f.key)?;
        ws.write_string(r, 1, f.label)?;
        ws.write_string(r, 2, f.annex.unwrap_or_default())?;
        ws.write_string(r, 3, f.point.unwrap_or_default())?;
        write_value(ws, r, 4, &f.value, date)?;
        ws.write_string(r, 5, f.unit.unwrap_or_default())?;
        ws.write_boolean(r, 6, f.mandatory)?;
        ws.write_string(r, 7, serde_plain(&f.source))?;
        ws.write_string(r, 8, f.config_key.clone().unwrap_or_default())?;
        if let Some(p) = &f.provenance {
            ws.write_string(r, 9, p.meters.join("; "))?;
            ws.write_number(r, 10, p.coverage_ratio)?;
            ws.write_number(r, 11, p.estimated_share)?;
        }
        ws.write_string(r, 12, f.declared_in.clone().unwrap_or_default())?;
        ws.write_string(r, 13, f.note.clone().unwrap_or_default())?;
    }
    Ok(())
}

fn indicator_sheet(ws: &mut Worksheet, inds: &[IndicatorField], bold: &Format) -> Result<(), XlsxError> {
    headers(ws, &INDICATOR_HEADERS, bold)?;
    for (i, x) in inds.iter().enumerate() {
        let r = i as u32 + 1;
        ws.write_string(r, 0, x.name.as_str())?;
        ws.write_string(r, 1, x.label)?;
        ws.write_string(r, 2, x.annex.unwrap_or_default())?;
        ws.write_string(r, 3, x.point.unwrap_or_default())?;
        if let Some(v) = x.value {
            ws.write_number(r, 4, v)?;
        }
        ws.write_string(r, 5, serde_plain(&x.unit))?;
        if let Some(c) = x.class {
            ws.write_string(r, 6, format!("{c} (indicative)"))?;
        }
        if let Some(c) = x.category {
            ws.write_number(r, 7, f64::from(c.number()))?;
        }
        if let Some(v) = x.numerator {
            ws.write_number(r, 8, v)?;
        }
        if let Some(v) = x.denominator {
            ws.write_number(r, 9, v)?;
        }
        ws.write_number(r, 10, x.coverage_ratio)?;
        ws.write_number(r, 11, x.estimated_share)?;
        ws.write_string(r, 12, x.error.map(|e| e.as_str()).unwrap_or_default())?;
        ws.write_string(r, 13, x.carbon_source.clone().unwrap_or_default())?;
    }
    Ok(())
}

/// The declaration as an XLSX workbook: one sheet per section, numbers as
/// numbers, dates as dates. The document's creation time is `generated_at`
/// (not the clock), so the bytes are reproducible.
pub fn xlsx(d: &Declaration) -> Result<Vec<u8>, RenderError> {
    let mut wb = Workbook::new();
    let created = ExcelDateTime::parse_from_str(d.generated_at.trim_end_matches('Z'))
        .or_else(|_| ExcelDateTime::from_ymd(2000, 1, 1))?;
    let props = DocProperties::new()
        .set_title(format!(
            "EED declaration {} {}",
            d.site,
            d.reporting_year.map(|y| y.to_string()).unwrap_or_default()
        ))
        .set_creation_datetime(&created);
    wb.set_properties(&props);
    let bold = Format::new().set_bold();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[0])?;
    ws.write_string_with_format(0, 0, "Key", &bold)?;
    ws.write_string_with_format(0, 1, "Value", &bold)?;
    ws.set_column_width(0, 18)?;
    ws.set_column_width(1, 90)?;
    for (i, (k, v)) in envelope(d).iter().enumerate() {
        ws.write_string(i as u32 + 1, 0, *k)?;
        write_value(ws, i as u32 + 1, 1, v, &date)?;
    }
    for (s, name) in d.sections().iter().zip(&SHEETS[1..6]) {
        let ws = wb.add_worksheet();
        ws.set_name(*name)?;
        field_sheet(ws, &s.fields, &bold, &date)?;
    }
    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[6])?;
    indicator_sheet(ws, &d.indicators, &bold)?;
    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[7])?;
    headers(ws, &["Field", "Annex", "Point", "Config key that fills it"], &bold)?;
    for (i, m) in d.missing.iter().enumerate() {
        let r = i as u32 + 1;
        ws.write_string(r, 0, m.field)?;
        ws.write_string(r, 1, m.annex.unwrap_or_default())?;
        ws.write_string(r, 2, m.point.unwrap_or_default())?;
        ws.write_string(r, 3, &m.config_key)?;
    }
    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[8])?;
    headers(ws, &["Field", "Annex", "Point", "Reason (omitted for technical reasons, Art. 3(2))"], &bold)?;
    for (i, o) in d.omissions.iter().enumerate() {
        let r = i as u32 + 1;
        ws.write_string(r, 0, o.field)?;
        ws.write_string(r, 1, o.annex.unwrap_or_default())?;
        ws.write_string(r, 2, o.point.unwrap_or_default())?;
        ws.write_string(r, 3, &o.reason)?;
    }
    Ok(wb.save_to_buffer()?)
}
