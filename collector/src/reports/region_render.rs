//! Renderings of one [`RegionReport`]: JSON (the schema), CSV (one row per
//! figure, long format), XLSX (one sheet per section, typed cells) and HTML
//! (one self-contained page: inline CSS, inline SVG charts, readable
//! printed). Each is a pure function of the report: the CSV, XLSX and HTML
//! cells are taken from the report's own JSON serialisation, so no format
//! can show a figure the JSON does not hold.

use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Workbook, Worksheet, XlsxError};
use serde_json::Value as Json;

use super::region::{RegionReport, RegionSite};
use super::render::RenderError;

/// Output formats of `report region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionFormat {
    Html,
    Json,
    Csv,
    Xlsx,
}

impl RegionFormat {
    pub fn parse(s: &str) -> Option<RegionFormat> {
        match s {
            "html" => Some(RegionFormat::Html),
            "json" => Some(RegionFormat::Json),
            "csv" => Some(RegionFormat::Csv),
            "xlsx" => Some(RegionFormat::Xlsx),
            _ => None,
        }
    }
}

/// The report in `format`.
pub fn render(r: &RegionReport, format: RegionFormat) -> Result<Vec<u8>, RenderError> {
    match format {
        RegionFormat::Json => json(r),
        RegionFormat::Csv => Ok(csv(r)?.into_bytes()),
        RegionFormat::Xlsx => xlsx(r),
        RegionFormat::Html => Ok(html(r)?.into_bytes()),
    }
}

/// Pretty JSON with a final newline.
pub fn json(r: &RegionReport) -> Result<Vec<u8>, RenderError> {
    let mut out = serde_json::to_vec_pretty(r)?;
    out.push(b'\n');
    Ok(out)
}

/// The unit of a figure, from its key.
pub fn unit_of(key: &str) -> &'static str {
    match key {
        "wue" => "L/kWh",
        "cue" => "kgCO2e/kWh",
        "pue" | "erf" | "ref" | "pue_ratio_of_sums" => "ratio",
        "coverage_ratio" | "estimated_share" | "edc_change_ratio" => "ratio",
        "pue_change" => "ratio",
        "grid_g_per_kwh" => "gCO2e/kWh",
        "emissions_kgco2e" => "kgCO2e",
        k if k.ends_with("_kwh") => "kWh",
        k if k.ends_with("_kw") => "kW",
        k if k.ends_with("_m3") => "m3",
        _ => "",
    }
}

/// One JSON value as a cell: numbers as serde_json writes them (the JSON's
/// own text), lists joined with `; `, pairs as `key: n`.
pub fn cell(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        Json::Array(a) => a
            .iter()
            .map(|x| match x {
                Json::Object(o) => o.values().map(cell).collect::<Vec<_>>().join(": "),
                other => cell(other),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Columns of the CSV.
pub const CSV_COLUMNS: [&str; 9] =
    ["section", "site", "operator", "source", "month", "metric", "value", "unit", "interim"];

/// The report's top-level keys, first in the CSV and the workbook.
const ENVELOPE: [&str; 8] =
    ["schema", "schema_version", "generated_at", "region", "reporting_year", "period_start", "period_end", "interim"];

/// One row per figure: `envelope`, `totals`, `region_indicator`,
/// `region_month`, `site`, `site_month`, `source`.
pub fn csv(r: &RegionReport) -> Result<String, RenderError> {
    let v = serde_json::to_value(r)?;
    let interim = r.interim.to_string();
    let mut rows: Vec<[String; 9]> = Vec::new();
    // `unit` is `unit_of(k)` but for the region indicators, whose unit is their own.
    let mut push = |section: &str, site: &str, op: &str, src: &str, month: &str, k: &str, val: &Json, unit: &str| {
        rows.push([
            section.into(),
            site.into(),
            op.into(),
            src.into(),
            month.into(),
            k.into(),
            cell(val),
            unit.into(),
            interim.clone(),
        ]);
    };
    for k in ENVELOPE {
        push("envelope", "", "", "", "", k, &v[k], unit_of(k));
    }
    for (k, x) in v["conventions"].as_object().into_iter().flatten() {
        push("envelope", "", "", "", "", k, x, unit_of(k));
    }
    for (k, x) in v["totals"].as_object().into_iter().flatten() {
        push("totals", "", "", "", "", k, x, unit_of(k));
    }
    for i in v["indicators"].as_array().into_iter().flatten() {
        let name = i["name"].as_str().unwrap_or_default();
        for (k, x) in i.as_object().into_iter().flatten().filter(|(k, _)| *k != "name" && *k != "unit") {
            let metric = format!("{name}.{k}");
            let unit = match k.as_str() {
                "ratio_of_sums" | "energy_weighted" => i["unit"].as_str().unwrap_or_default(),
                _ => "",
            };
            push("region_indicator", "", "", "", "", &metric, x, unit);
        }
    }
    for m in v["monthly"].as_array().into_iter().flatten() {
        let month = m["month"].as_str().unwrap_or_default();
        for (k, x) in m.as_object().into_iter().flatten().filter(|(k, _)| *k != "month") {
            push("region_month", "", "", "", month, k, x, unit_of(k));
        }
    }
    for s in v["sites"].as_array().into_iter().flatten() {
        let (site, op, src) = (
            s["site"].as_str().unwrap_or_default(),
            s["operator"].as_str().unwrap_or_default(),
            s["origin"].as_str().unwrap_or_default(),
        );
        for (k, x) in s.as_object().into_iter().flatten() {
            match k.as_str() {
                "site" | "operator" | "monthly" => {}
                "previous" => {
                    for (pk, px) in x.as_object().into_iter().flatten() {
                        let key = format!("previous.{pk}");
                        push("site", site, op, src, "", &key, px, unit_of(&key));
                    }
                }
                _ => push("site", site, op, src, "", k, x, unit_of(k)),
            }
        }
        for m in s["monthly"].as_array().into_iter().flatten() {
            let month = m["month"].as_str().unwrap_or_default();
            for (k, x) in m.as_object().into_iter().flatten().filter(|(k, _)| *k != "month") {
                push("site_month", site, op, src, month, k, x, unit_of(k));
            }
        }
    }
    for s in v["sources"].as_array().into_iter().flatten() {
        let (site, op, origin) = (
            s["site"].as_str().unwrap_or_default(),
            s["operator"].as_str().unwrap_or_default(),
            s["origin"].as_str().unwrap_or_default(),
        );
        for k in ["source", "reporting_year", "used_for"] {
            push("source", site, op, origin, "", k, &s[k], unit_of(k));
        }
    }
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&r.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    Ok(out)
}

/// Sheet names, in order.
pub const SHEETS: [&str; 6] = ["Summary", "Indicators", "Sites", "Monthly", "Data quality", "Sources"];

/// Columns of the Sites sheet: (key, header with unit).
pub const SITE_COLUMNS: [(&str, &str); 33] = [
    ("site", "Site"),
    ("name", "Name"),
    ("operator", "Operator"),
    ("source", "Source"),
    ("origin", "Origin (ledger, file or URL)"),
    ("reporting_year", "Reporting year"),
    ("period_start", "Period start (UTC)"),
    ("period_end", "Period end (UTC)"),
    ("interim", "Interim"),
    ("lau_code", "LAU code"),
    ("nuts3_code", "NUTS 3"),
    ("dc_type", "Type"),
    ("size_category", "Size category (Annex IV)"),
    ("pdit_kw", "PDIT (kW)"),
    ("edc_kwh", "EDC (kWh)"),
    ("edc_bg_kwh", "EDC-BG (kWh)"),
    ("eit_kwh", "EIT (kWh)"),
    ("eit_basis", "EIT point"),
    ("win_m3", "WIN (m³)"),
    ("ereuse_kwh", "EREUSE (kWh)"),
    ("eres_tot_kwh", "ERES-TOT (kWh)"),
    ("pue", "PUE (ratio)"),
    ("pue_class", "PUE class (indicative)"),
    ("wue", "WUE (L/kWh)"),
    ("wue_class", "WUE class (indicative)"),
    ("erf", "ERF (ratio)"),
    ("ref", "REF (ratio)"),
    ("cue", "CUE (kgCO2e/kWh)"),
    ("emissions_kgco2e", "Emissions (kgCO2e)"),
    ("edc_change_ratio", "EDC change on the previous year (ratio)"),
    ("pue_change", "PUE change on the previous year"),
    ("pue_rank", "Rank by PUE"),
    ("coverage_ratio", "Coverage (ratio 0–1)"),
];

/// Columns of the Monthly sheet.
pub const MONTH_COLUMNS: [(&str, &str); 13] = [
    ("month", "Month"),
    ("from", "From (UTC)"),
    ("to", "To (UTC)"),
    ("utility_in_kwh", "Grid (kWh)"),
    ("backup_gen_kwh", "Generators (kWh)"),
    ("onsite_renewable_kwh", "On-site renewables (kWh)"),
    ("chilled_water_kwh", "District chilled water, weighted (kWh)"),
    ("edc_kwh", "EDC (kWh)"),
    ("eit_kwh", "EIT (kWh)"),
    ("pue", "PUE (ratio)"),
    ("cue", "CUE (kgCO2e/kWh)"),
    ("grid_g_per_kwh", "Grid intensity (gCO2e/kWh)"),
    ("carbon_fallback", "Fallback carbon factor"),
];

/// Columns of the Data quality sheet.
pub const QUALITY_COLUMNS: [(&str, &str); 8] = [
    ("site", "Site"),
    ("origin", "Origin"),
    ("coverage_ratio", "Coverage (ratio 0–1)"),
    ("estimated_share", "Estimated share (ratio 0–1)"),
    ("missing_meters", "Missing meters"),
    ("carbon_source", "Carbon source"),
    ("carbon_fallback", "Fallback carbon factor"),
    ("refusals", "Refused indicators"),
];

fn is_instant(key: &str) -> bool {
    matches!(key, "period_start" | "period_end" | "from" | "to" | "generated_at")
}

fn write_json(ws: &mut Worksheet, row: u32, col: u16, key: &str, v: &Json, dt: &Format) -> Result<(), XlsxError> {
    match v {
        Json::Null => {}
        Json::Bool(b) => {
            ws.write_boolean(row, col, *b)?;
        }
        Json::Number(n) => {
            ws.write_number(row, col, n.as_f64().unwrap_or(f64::NAN))?;
        }
        Json::String(s) if is_instant(key) => {
            let t = s.parse::<jiff::Timestamp>().ok().map(|t| t.to_zoned_datetime(jiff::tz::TimeZone::UTC).datetime());
            match t.and_then(|d| ExcelDateTime::parse_from_str(&d.strftime("%Y-%m-%dT%H:%M:%S").to_string()).ok()) {
                Some(x) => {
                    ws.write_datetime_with_format(row, col, &x, dt)?;
                }
                None => {
                    ws.write_string(row, col, s)?;
                }
            }
        }
        other => {
            ws.write_string(row, col, cell(other))?;
        }
    }
    Ok(())
}

fn table(
    ws: &mut Worksheet,
    cols: &[(&str, &str)],
    rows: &[&Json],
    lead: Option<(&str, Vec<String>)>,
    bold: &Format,
    dt: &Format,
) -> Result<(), XlsxError> {
    let off = u16::from(lead.is_some());
    if let Some((h, _)) = &lead {
        ws.write_string_with_format(0, 0, *h, bold)?;
        ws.set_column_width(0, 16)?;
    }
    for (c, (_, h)) in cols.iter().enumerate() {
        ws.write_string_with_format(0, c as u16 + off, *h, bold)?;
        ws.set_column_width(c as u16 + off, 16)?;
    }
    for (i, r) in rows.iter().enumerate() {
        let row = i as u32 + 1;
        if let Some((_, l)) = &lead {
            ws.write_string(row, 0, l.get(i).cloned().unwrap_or_default())?;
        }
        for (c, (k, _)) in cols.iter().enumerate() {
            write_json(ws, row, c as u16 + off, k, &r[*k], dt)?;
        }
    }
    Ok(())
}

/// The report as an XLSX workbook: one sheet per section, numbers as
/// numbers, instants as dates, units in the headers. The document's creation
/// time is `generated_at`, so the bytes are reproducible.
pub fn xlsx(r: &RegionReport) -> Result<Vec<u8>, RenderError> {
    let v = serde_json::to_value(r)?;
    let mut wb = Workbook::new();
    let created = ExcelDateTime::parse_from_str(r.generated_at.trim_end_matches('Z'))
        .or_else(|_| ExcelDateTime::from_ymd(2000, 1, 1))?;
    let title = format!(
        "Region report {} {}",
        r.region,
        r.reporting_year.map(|y| y.to_string()).unwrap_or_else(|| "interim".into())
    );
    wb.set_properties(&DocProperties::new().set_title(title).set_creation_datetime(&created));
    let bold = Format::new().set_bold();
    let dt = Format::new().set_num_format("yyyy-mm-dd hh:mm");

    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[0])?;
    ws.write_string_with_format(0, 0, "Key", &bold)?;
    ws.write_string_with_format(0, 1, "Value", &bold)?;
    ws.write_string_with_format(0, 2, "Unit", &bold)?;
    ws.set_column_width(0, 26)?;
    ws.set_column_width(1, 60)?;
    let mut row = 1u32;
    let mut kv: Vec<(String, Json)> = Vec::new();
    for k in ENVELOPE {
        kv.push((k.into(), v[k].clone()));
    }
    for (k, x) in v["totals"].as_object().into_iter().flatten() {
        kv.push((format!("totals.{k}"), x.clone()));
    }
    for (k, x) in v["conventions"].as_object().into_iter().flatten() {
        kv.push((k.clone(), x.clone()));
    }
    for (k, x) in kv {
        ws.write_string(row, 0, &k)?;
        let key = k.rsplit('.').next().unwrap_or(&k).to_string();
        write_json(ws, row, 1, &key, &x, &dt)?;
        ws.write_string(row, 2, unit_of(&key))?;
        row += 1;
    }

    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[1])?;
    let cols = [
        ("name", "Indicator"),
        ("unit", "Unit"),
        ("ratio_of_sums", "Ratio of sums"),
        ("ratio_of_sums_formula", "Ratio of sums: formula"),
        ("energy_weighted", "Energy-weighted (Annex IV)"),
        ("energy_weighted_formula", "Energy-weighted: formula"),
        ("numerator", "Σ numerator"),
        ("denominator", "Σ denominator (kWh)"),
        ("sites_counted", "Sites counted"),
        ("sites_left_out", "Sites left out"),
        ("categories", "PUE categories"),
    ];
    let inds: Vec<&Json> = v["indicators"].as_array().into_iter().flatten().collect();
    table(ws, &cols, &inds, None, &bold, &dt)?;

    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[2])?;
    let sites: Vec<&Json> = v["sites"].as_array().into_iter().flatten().collect();
    table(ws, &SITE_COLUMNS, &sites, None, &bold, &dt)?;

    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[3])?;
    let mut months: Vec<&Json> = Vec::new();
    let mut lead: Vec<String> = Vec::new();
    for s in &sites {
        for m in s["monthly"].as_array().into_iter().flatten() {
            months.push(m);
            lead.push(s["site"].as_str().unwrap_or_default().to_string());
        }
    }
    table(ws, &MONTH_COLUMNS, &months, Some(("Site", lead)), &bold, &dt)?;

    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[4])?;
    table(ws, &QUALITY_COLUMNS, &sites, None, &bold, &dt)?;

    let ws = wb.add_worksheet();
    ws.set_name(SHEETS[5])?;
    let cols = [
        ("origin", "Origin (ledger, file or URL)"),
        ("source", "Kind"),
        ("site", "Site"),
        ("operator", "Operator"),
        ("reporting_year", "Reporting year"),
        ("used_for", "Used for"),
    ];
    let src: Vec<&Json> = v["sources"].as_array().into_iter().flatten().collect();
    table(ws, &cols, &src, None, &bold, &dt)?;
    Ok(wb.save_to_buffer()?)
}

// ---------------------------------------------------------------- HTML

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A figure for display: rounded, with its exact value in `data-v` (the
/// JSON's own text) so that a reader can check the page against the JSON.
fn num(v: &Json, decimals: usize, field: &str, site: &str) -> String {
    match v.as_f64() {
        Some(x) => format!(
            "<td class=\"n\" data-field=\"{}\" data-site=\"{}\" data-v=\"{}\">{}</td>",
            esc(field),
            esc(site),
            v,
            group(x, decimals)
        ),
        None => "<td class=\"n na\">–</td>".to_string(),
    }
}

/// `x` with `decimals` decimals and thin spaces between thousands.
pub fn group(x: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, x);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (s.clone(), None),
    };
    let (sign, digits) = int.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", int.as_str()));
    let mut g = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            g.push('\u{202f}');
        }
        g.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{g}.{f}"),
        None => format!("{sign}{g}"),
    }
}

const COLORS: [&str; 8] = ["#1b6ca8", "#e07b39", "#3a9e5c", "#b8405e", "#7a5cc4", "#8c6d31", "#2aa1a1", "#666666"];

struct Chart {
    w: f64,
    h: f64,
    left: f64,
    bottom: f64,
}

impl Chart {
    const fn new() -> Chart {
        Chart { w: 720.0, h: 240.0, left: 64.0, bottom: 28.0 }
    }

    fn plot_w(&self) -> f64 {
        self.w - self.left - 12.0
    }

    fn plot_h(&self) -> f64 {
        self.h - self.bottom - 12.0
    }

    fn y(&self, v: f64, lo: f64, hi: f64) -> f64 {
        12.0 + self.plot_h() * (1.0 - (v - lo) / (hi - lo).max(f64::MIN_POSITIVE))
    }

    fn frame(&self, title: &str, labels: &[String], lo: f64, hi: f64, decimals: usize) -> String {
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"{}\">",
            self.w,
            self.h,
            esc(title)
        );
        for k in 0..=4 {
            let v = lo + (hi - lo) * f64::from(k) / 4.0;
            let y = self.y(v, lo, hi);
            s.push_str(&format!(
                "<line x1=\"{l}\" x2=\"{r}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/><text x=\"{tx}\" y=\"{ty:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
                group(v, decimals),
                l = self.left,
                r = self.w - 12.0,
                tx = self.left - 6.0,
                ty = y + 4.0
            ));
        }
        let n = labels.len().max(1) as f64;
        for (i, l) in labels.iter().enumerate() {
            let x = self.left + self.plot_w() * (i as f64 + 0.5) / n;
            s.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                self.h - 8.0,
                esc(l)
            ));
        }
        s
    }

    /// Stacked bars per label.
    fn stacked(&self, title: &str, labels: &[String], series: &[(&str, Vec<f64>)]) -> String {
        let tops: Vec<f64> =
            (0..labels.len()).map(|i| series.iter().map(|s| s.1.get(i).copied().unwrap_or(0.0)).sum()).collect();
        let hi = nice(tops.iter().copied().fold(0.0, f64::max));
        let mut s = self.frame(title, labels, 0.0, hi, 0);
        let n = labels.len().max(1) as f64;
        let bw = self.plot_w() / n * 0.7;
        for (i, label) in labels.iter().enumerate() {
            let x = self.left + self.plot_w() * (i as f64 + 0.15) / n;
            let mut base = 0.0;
            for (k, (name, vals)) in series.iter().enumerate() {
                let v = vals.get(i).copied().unwrap_or(0.0);
                if v <= 0.0 {
                    continue;
                }
                let (y0, y1) = (self.y(base, 0.0, hi), self.y(base + v, 0.0, hi));
                s.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{y1:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>",
                    (y0 - y1).max(0.0),
                    COLORS[k % COLORS.len()],
                    esc(label),
                    esc(name),
                    group(v, 0)
                ));
                base += v;
            }
        }
        s.push_str("</svg>");
        s
    }

    /// One polyline per series (gaps where a value is missing).
    fn lines(&self, title: &str, labels: &[String], series: &[(String, Vec<Option<f64>>)], decimals: usize) -> String {
        let vals: Vec<f64> = series.iter().flat_map(|s| s.1.iter().flatten().copied()).collect();
        let (mut lo, mut hi) =
            (vals.iter().copied().fold(f64::INFINITY, f64::min), vals.iter().copied().fold(0.0, f64::max));
        if !lo.is_finite() {
            lo = 0.0;
        }
        lo = (lo * 0.95).floor().min(lo);
        hi = if hi > lo { hi + (hi - lo) * 0.1 } else { lo + 1.0 };
        let mut s = self.frame(title, labels, lo, hi, decimals);
        let n = labels.len().max(1) as f64;
        for (k, (name, v)) in series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let mut pts = String::new();
            for (i, x) in v.iter().enumerate() {
                let px = self.left + self.plot_w() * (i as f64 + 0.5) / n;
                match x {
                    Some(y) => {
                        let py = self.y(*y, lo, hi);
                        pts.push_str(&format!("{px:.1},{py:.1} "));
                        s.push_str(&format!(
                            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{color}\"><title>{} {}: {}</title></circle>",
                            esc(name),
                            esc(&labels[i]),
                            group(*y, decimals + 1)
                        ));
                    }
                    None => pts.push('|'),
                }
            }
            for run in pts.split('|').filter(|r| r.trim().contains(' ')) {
                s.push_str(&format!(
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                    run.trim()
                ));
            }
        }
        s.push_str("</svg>");
        s
    }

    /// Horizontal bars, one per item.
    fn hbars(&self, title: &str, items: &[(String, f64, &str)], decimals: usize) -> String {
        let row = 26.0;
        let h = 20.0 + row * items.len().max(1) as f64;
        let hi = nice(items.iter().map(|i| i.1).fold(0.0, f64::max));
        let left = 180.0;
        let pw = self.w - left - 80.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {h}\" role=\"img\" aria-label=\"{}\">",
            self.w,
            esc(title)
        );
        for (i, (label, v, color)) in items.iter().enumerate() {
            let y = 10.0 + row * i as f64;
            let w = if hi > 0.0 { pw * v / hi } else { 0.0 };
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"18\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">{}</text>",
                left - 6.0,
                y + 13.0,
                esc(label),
                left + w + 4.0,
                y + 13.0,
                group(*v, decimals)
            ));
        }
        s.push_str("</svg>");
        s
    }
}

/// A round upper bound for an axis.
fn nice(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

fn class_color(c: Option<&str>) -> &'static str {
    match c {
        Some("A") => "#1a9850",
        Some("B") => "#66bd63",
        Some("C") => "#a6d96a",
        Some("D") => "#fee08b",
        Some("E") => "#fdae61",
        Some("F") => "#f46d43",
        Some("G") => "#d73027",
        _ => "#999999",
    }
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:24px;color:#1d2329;background:#fff}\
h1{font-size:1.6rem;margin:0 0 4px}h2{font-size:1.2rem;margin:28px 0 8px;border-bottom:2px solid #1b6ca8;padding-bottom:4px}\
.sub{color:#555;margin:0 0 12px}.interim{background:#fff3cd;border:1px solid #e0b000;padding:8px 12px;font-weight:600;margin:8px 0}\
table{border-collapse:collapse;width:100%;font-size:.76rem;margin:6px 0}th,td{border:1px solid #d0d7de;padding:4px 6px;text-align:left;vertical-align:top}\
th{background:#f0f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.na{color:#999}\
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:150px}\
.card b{display:block;font-size:1.3rem}.cls{display:inline-block;min-width:1.4em;text-align:center;border-radius:3px;font-weight:700}\
svg{width:100%;height:auto;max-width:720px;display:block}.grid{stroke:#e3e8ee}.tick{font-size:11px;fill:#444}\
.legend span{display:inline-block;margin-right:14px;font-size:.8rem}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}\
.note{font-size:.78rem;color:#555}footer{margin-top:24px;font-size:.75rem;color:#666}\
@media print{body{max-width:none;padding:0;font-size:10pt}h2{break-after:avoid}table,svg,.chart{break-inside:avoid}.card{break-inside:avoid}}";

fn legend(names: &[&str]) -> String {
    let items: String = names
        .iter()
        .enumerate()
        .map(|(k, n)| format!("<span><i style=\"background:{}\"></i>{}</span>", COLORS[k % COLORS.len()], esc(n)))
        .collect();
    format!("<div class=\"legend\">{items}</div>")
}

fn text_td(v: &Json) -> String {
    format!("<td>{}</td>", esc(&cell(v)))
}

/// The report as one self-contained HTML page (no external resource).
pub fn html(r: &RegionReport) -> Result<String, RenderError> {
    let v = serde_json::to_value(r)?;
    let period = match r.reporting_year {
        Some(y) => format!("calendar year {y}"),
        None => {
            format!("{} – {}", r.period_start.clone().unwrap_or_default(), r.period_end.clone().unwrap_or_default())
        }
    };
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!(
        "<title>Data centres of {} — {}</title><style>{CSS}</style></head><body>\n",
        esc(&r.region),
        esc(&period)
    ));
    h.push_str(&format!(
        "<h1>Data centres of {} — {}</h1><p class=\"sub\">Region report (schema {} {}), generated {}. Sources: {} from this collector's ledger, {} from imported declarations.</p>\n",
        esc(&r.region),
        esc(&period),
        r.schema,
        r.schema_version,
        esc(&r.generated_at),
        r.totals.sites_from_ledger,
        r.totals.sites_from_declarations
    ));
    if r.interim {
        h.push_str("<div class=\"interim\" data-interim=\"true\">INTERIM: this report covers a period that is not a complete, ended calendar year (or includes an interim declaration). It is not a declaration to file.</div>\n");
    }

    // Totals.
    let t = &v["totals"];
    h.push_str("<h2>Regional totals</h2><div class=\"cards\">");
    for (k, label, d) in [
        ("sites", "Data centres", 0),
        ("pdit_kw", "Installed IT power (kW)", 0),
        ("edc_kwh", "Energy EDC (kWh)", 0),
        ("eit_kwh", "IT energy EIT (kWh)", 0),
        ("win_m3", "Water WIN (m³)", 0),
        ("ereuse_kwh", "Heat reused (kWh)", 0),
        ("eres_tot_kwh", "Renewables ERES-TOT (kWh)", 0),
        ("emissions_kgco2e", "Emissions (kgCO2e)", 0),
    ] {
        h.push_str(&format!(
            "<div class=\"card\">{label}<b data-field=\"totals.{k}\" data-v=\"{}\">{}</b></div>",
            t[k],
            group(t[k].as_f64().unwrap_or(0.0), d)
        ));
    }
    h.push_str("</div>\n");
    h.push_str("<table><tr><th>Size category (Annex IV)</th><th>Data centres</th></tr>");
    for p in t["by_size_category"].as_array().into_iter().flatten() {
        h.push_str(&format!("<tr>{}<td class=\"n\">{}</td></tr>", text_td(&p["key"]), p["sites"]));
    }
    h.push_str("</table>\n");

    // Regional indicators.
    h.push_str("<h2>Regional indicators</h2><table><tr><th>Indicator</th><th>Unit</th><th>Ratio of sums</th><th>Energy-weighted (Annex IV)</th><th>Sites counted</th><th>Left out</th></tr>");
    for i in v["indicators"].as_array().into_iter().flatten() {
        let name = i["name"].as_str().unwrap_or_default();
        h.push_str(&format!(
            "<tr><td>{} <span class=\"note\">{}</span></td>{}{}{}{}{}</tr>",
            name.to_uppercase(),
            esc(i["ratio_of_sums_formula"].as_str().unwrap_or_default()),
            text_td(&i["unit"]),
            num(&i["ratio_of_sums"], 3, &format!("{name}.ratio_of_sums"), ""),
            num(&i["energy_weighted"], 3, &format!("{name}.energy_weighted"), ""),
            text_td(&i["sites_counted"]),
            text_td(&i["sites_left_out"])
        ));
    }
    h.push_str("</table><p class=\"note\">Ratio of sums: Σ numerators / Σ denominators over the sites counted. Energy-weighted: Σ(EDCᵢ × valueᵢ) / Σ EDCᵢ, the weighting that Commission Delegated Regulation (EU) 2024/1364 Annex IV prescribes for the published aggregates (\"using the total energy consumption as the weighting factor\"). The two differ whenever sites differ in size and efficiency.</p>\n");

    // Sites.
    h.push_str("<h2>Data centres</h2><table><tr><th>Rank</th><th>Site (source)</th><th>Operator</th><th>PDIT kW</th><th>EDC kWh</th><th>EIT kWh</th><th>PUE</th><th>Class</th><th>WUE L/kWh</th><th>Class</th><th>ERF</th><th>REF</th><th>CUE kgCO2e/kWh</th><th>Emissions kgCO2e</th><th>EDC vs previous year</th><th>PUE vs previous year</th></tr>");
    for s in v["sites"].as_array().into_iter().flatten() {
        let id = s["site"].as_str().unwrap_or_default();
        let cls = |k: &str| {
            let c = s[k].as_str();
            format!(
                "<td><span class=\"cls\" style=\"background:{}\" data-field=\"{k}\" data-site=\"{}\">{}</span>{}</td>",
                class_color(c),
                esc(id),
                c.unwrap_or("–"),
                if c.is_some() { " <span class=\"note\">indicative</span>" } else { "" }
            )
        };
        let pct = |k: &str| match s[k].as_f64() {
            Some(x) => format!(
                "<td class=\"n\" data-field=\"{k}\" data-site=\"{}\" data-v=\"{}\">{}{}</td>",
                esc(id),
                s[k],
                if k == "edc_change_ratio" { group(x * 100.0, 1) } else { group(x, 3) },
                if k == "edc_change_ratio" { " %" } else { "" }
            ),
            None => "<td class=\"n na\">–</td>".into(),
        };
        h.push_str(&format!(
            "<tr><td class=\"n\">{}</td><td>{}<br><span class=\"note\">{} ({})</span></td>{}{}{}{}{}{}{}{}{}{}{}{}{}{}</tr>",
            s["pue_rank"].as_u64().map(|r| r.to_string()).unwrap_or_else(|| "–".into()),
            esc(s["name"].as_str().unwrap_or(id)),
            esc(id),
            esc(s["origin"].as_str().unwrap_or_default()),
            text_td(&s["operator"]),
            num(&s["pdit_kw"], 0, "pdit_kw", id),
            num(&s["edc_kwh"], 0, "edc_kwh", id),
            num(&s["eit_kwh"], 0, "eit_kwh", id),
            num(&s["pue"], 3, "pue", id),
            cls("pue_class"),
            num(&s["wue"], 3, "wue", id),
            cls("wue_class"),
            num(&s["erf"], 3, "erf", id),
            num(&s["ref"], 3, "ref", id),
            num(&s["cue"], 3, "cue", id),
            num(&s["emissions_kgco2e"], 0, "emissions_kgco2e", id),
            pct("edc_change_ratio"),
            pct("pue_change"),
        ));
    }
    h.push_str("</table><p class=\"note\">Classes are indicative: the class each value would get on the EU rating scale (Commission Delegated Regulation C(2026) 3472, Annex I), computed from the unrounded value; the European database assigns the real class. Rank: by PUE, 1 the lowest.</p>\n");

    // Charts.
    let months: Vec<String> =
        v["monthly"].as_array().into_iter().flatten().filter_map(|m| m["month"].as_str().map(str::to_string)).collect();
    let ledger: Vec<&RegionSite> = r.sites.iter().filter(|s| !s.monthly.is_empty()).collect();
    let c = Chart::new();
    if !months.is_empty() {
        let sum = |f: fn(&super::region::Month) -> Option<f64>| -> Vec<f64> {
            months
                .iter()
                .map(|m| ledger.iter().flat_map(|s| s.monthly.iter().filter(|x| &x.month == m)).filter_map(f).sum())
                .collect()
        };
        let grid = sum(|m| m.utility_in_kwh);
        let gen_ = sum(|m| m.backup_gen_kwh);
        let pv = sum(|m| m.onsite_renewable_kwh);
        let cw = sum(|m| m.chilled_water_kwh);
        let eit = sum(|m| m.eit_kwh);
        let overhead: Vec<f64> =
            grid.iter().zip(&gen_).zip(&pv).zip(&cw).zip(&eit).map(|((((a, b), c), d), e)| a + b + c + d - e).collect();
        h.push_str("<h2>Monthly energy by role</h2><div class=\"chart\">");
        h.push_str(&legend(&["IT equipment EIT", "Facility (EDC − EIT)"]));
        h.push_str(&c.stacked(
            "Monthly energy by role (kWh)",
            &months,
            &[("EIT", eit.clone()), ("EDC − EIT", overhead)],
        ));
        h.push_str(&legend(&["Grid (utility_in)", "Generators", "On-site renewables", "District chilled water"]));
        h.push_str(&c.stacked(
            "Monthly energy supply by role (kWh)",
            &months,
            &[("grid", grid), ("generators", gen_), ("on-site renewables", pv), ("chilled water", cw)],
        ));
        h.push_str("<p class=\"note\">Sites of this collector's ledger (declarations carry annual figures only), kWh.</p></div>\n");

        let series_of = |f: fn(&super::region::Month) -> Option<f64>| -> Vec<(String, Vec<Option<f64>>)> {
            ledger
                .iter()
                .map(|s| {
                    (
                        s.site.clone(),
                        months.iter().map(|m| s.monthly.iter().find(|x| &x.month == m).and_then(f)).collect(),
                    )
                })
                .collect()
        };
        let mut pue = series_of(|m| m.pue);
        pue.push(("region (Σ EDC / Σ EIT)".into(), r.monthly.iter().map(|m| m.pue_ratio_of_sums).collect()));
        let names: Vec<&str> = pue.iter().map(|s| s.0.as_str()).collect();
        h.push_str("<h2>PUE over the year</h2><div class=\"chart\">");
        h.push_str(&legend(&names));
        h.push_str(&c.lines("PUE per month", &months, &pue, 2));
        h.push_str("</div>\n");
        let ci = series_of(|m| m.grid_g_per_kwh);
        let names: Vec<&str> = ci.iter().map(|s| s.0.as_str()).collect();
        h.push_str("<h2>Carbon intensity of the grid energy</h2><div class=\"chart\">");
        h.push_str(&legend(&names));
        h.push_str(&c.lines("Grid intensity per month (gCO2e/kWh)", &months, &ci, 0));
        h.push_str("<p class=\"note\">Time-matched: Σ(energyₕ × intensityₕ) / Σ energyₕ over the hours of each month (EN 50600-4-8).</p></div>\n");
    }
    let items: Vec<(String, f64, &str)> = r
        .sites
        .iter()
        .filter_map(|s| s.pue.map(|p| (s.site.clone(), p, class_color(s.pue_class.as_deref()))))
        .collect();
    h.push_str("<h2>Site comparison</h2><div class=\"chart\">");
    h.push_str(&c.hbars("PUE per site", &items, 3));
    let items: Vec<(String, f64, &str)> =
        r.sites.iter().filter_map(|s| s.edc_kwh.map(|e| (s.site.clone(), e, COLORS[0]))).collect();
    h.push_str(&c.hbars("EDC per site (kWh)", &items, 0));
    h.push_str("<p class=\"note\">PUE bars coloured by indicative class; EDC in kWh.</p></div>\n");

    // Data quality.
    h.push_str("<h2>Data quality</h2><table><tr><th>Site</th><th>Origin</th><th>Coverage</th><th>Estimated share</th><th>Missing meters</th><th>Carbon source</th><th>Fallback carbon factor</th><th>Refused indicators</th></tr>");
    for s in v["sites"].as_array().into_iter().flatten() {
        let id = s["site"].as_str().unwrap_or_default();
        h.push_str(&format!(
            "<tr>{}{}{}{}{}{}{}{}</tr>",
            text_td(&s["site"]),
            text_td(&s["origin"]),
            num(&s["coverage_ratio"], 3, "coverage_ratio", id),
            num(&s["estimated_share"], 3, "estimated_share", id),
            text_td(&s["missing_meters"]),
            text_td(&s["carbon_source"]),
            match s["carbon_fallback"].as_bool() {
                Some(b) => format!("<td>{}</td>", if b { "yes" } else { "no" }),
                None => "<td class=\"na\">unknown</td>".into(),
            },
            text_td(&s["refusals"])
        ));
    }
    h.push_str("</table>\n<h2>Sources</h2><table><tr><th>Origin</th><th>Site</th><th>Operator</th><th>Year</th><th>Used for</th></tr>");
    for s in v["sources"].as_array().into_iter().flatten() {
        h.push_str(&format!(
            "<tr>{}{}{}{}{}</tr>",
            text_td(&s["origin"]),
            text_td(&s["site"]),
            text_td(&s["operator"]),
            text_td(&s["reporting_year"]),
            text_td(&s["used_for"])
        ));
    }
    h.push_str("</table>\n<footer>");
    for (k, x) in v["conventions"].as_object().into_iter().flatten() {
        h.push_str(&format!("<p><b>{}</b>: {}</p>", esc(k), esc(&cell(x))));
    }
    h.push_str("<p>EDC, EIT, WIN, EREUSE, ERES-TOT: Commission Delegated Regulation (EU) 2024/1364, Annex II; PUE, WUE, ERF, REF: Annex III (EN 50600-4-2, -4-9, -4-6, -4-3); CUE: EN 50600-4-8, location-based.</p></footer>\n</body></html>\n");
    Ok(h)
}
