//! The French public sheet (Code de l'énergie L.236-1 II, D.236-3 I): the
//! declaration's public subset as one self-contained HTML page (inline CSS
//! and SVG, no script, no external resource, readable printed), plus the same
//! data as JSON and CSV.
//!
//! The public subset is the declaration without what the law does not make
//! public: the person to contact of D.236-2 (`contact_name`,
//! `contact_email`: personal data declared to the minister only), the
//! measurement details (meter ids, config keys) and the internal list of
//! missing fields. Every number shown comes from the [`Declaration`]; the
//! page rounds for display only and carries the unrounded value in
//! `data-value`.

use std::fmt::Write as _;

use super::eed::{Declaration, Field, IndicatorField, Section, Value};
use super::render::RenderError;

/// Schema name of the publication's JSON.
pub const SCHEMA: &str = "domesday.eed-publication";

/// Fields never published (personal data of D.236-2).
pub const PRIVATE_FIELDS: [&str; 2] = ["contact_name", "contact_email"];

/// The public subset of a declaration.
pub fn public(d: &Declaration) -> Declaration {
    let mut p = d.clone();
    p.schema = SCHEMA;
    let strip = |s: &mut Section| {
        s.fields.retain(|f| !PRIVATE_FIELDS.contains(&f.key));
        for f in &mut s.fields {
            f.provenance = None;
            f.config_key = None;
            f.declared_in = None;
        }
    };
    strip(&mut p.annex_i);
    strip(&mut p.annex_ii_energy);
    strip(&mut p.annex_ii_ict_capacity);
    strip(&mut p.annex_ii_data_traffic);
    strip(&mut p.france);
    for i in &mut p.indicators {
        i.missing_meters.clear();
    }
    p.missing.clear();
    p
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A number for reading: thin-space thousands, at most `decimals` decimals.
pub fn display_number(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    let (int, frac) = s.split_once('.').map(|(a, b)| (a.to_string(), Some(b.to_string()))).unwrap_or((s, None));
    let (sign, digits) = int.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", int.as_str()));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push('\u{202f}');
        }
        grouped.push(c);
    }
    match frac.map(|f| f.trim_end_matches('0').to_string()).filter(|f| !f.is_empty()) {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn value_cell(f: &Field) -> String {
    if let Some(reason) = &f.omitted {
        return format!(
            "<td class=\"na\" data-field=\"{}\" data-omitted=\"true\">omitted for technical reasons (first reporting period, Delegated Regulation (EU) 2024/1364 Art. 3(2)): {}</td>",
            f.key,
            esc(reason)
        );
    }
    match &f.value {
        Value::Null => "<td class=\"na\">not declared</td>".to_string(),
        Value::Number(n) => format!(
            "<td class=\"num\" data-field=\"{}\" data-value=\"{n}\">{}</td>",
            f.key,
            display_number(*n, if n.abs() >= 1000.0 { 0 } else { 2 })
        ),
        Value::Integer(n) => format!("<td class=\"num\" data-field=\"{}\" data-value=\"{n}\">{n}</td>", f.key),
        Value::Bool(b) => {
            format!("<td data-field=\"{}\" data-value=\"{b}\">{}</td>", f.key, if *b { "yes" } else { "no" })
        }
        Value::List(l) if l.is_empty() => format!("<td data-field=\"{}\" data-value=\"\">none</td>", f.key),
        other => {
            let t = other.cell();
            format!("<td data-field=\"{}\" data-value=\"{}\">{}</td>", f.key, esc(&t), esc(&t))
        }
    }
}

fn section_table(out: &mut String, s: &Section) {
    let _ = write!(
        out,
        "<section><h2>{}</h2><table><thead><tr><th>Point</th><th>Information</th><th>Value</th><th>Unit</th></tr></thead><tbody>",
        esc(s.title)
    );
    for f in &s.fields {
        let point = match f.annex {
            Some(a) => format!("Annex {a} {}", f.point.unwrap_or_default()),
            None => f.point.unwrap_or_default().to_string(),
        };
        let _ = write!(
            out,
            "<tr><td class=\"pt\">{}</td><td>{}</td>{}<td>{}</td></tr>",
            esc(&point),
            esc(f.label),
            value_cell(f),
            esc(f.unit.unwrap_or_default())
        );
    }
    out.push_str("</tbody></table></section>");
}

const CLASSES: [char; 7] = ['A', 'B', 'C', 'D', 'E', 'F', 'G'];
const CLASS_COLOURS: [&str; 7] = ["#1a9641", "#52b151", "#a6d96a", "#ffffbf", "#fdae61", "#f46d43", "#d7191c"];

/// An inline SVG scale A–G with the class marked.
fn class_scale(class: char) -> String {
    let mut s = String::from(
        "<svg class=\"scale\" viewBox=\"0 0 280 40\" width=\"280\" height=\"40\" role=\"img\" aria-label=\"indicative class\">",
    );
    for (i, (c, col)) in CLASSES.iter().zip(CLASS_COLOURS).enumerate() {
        let x = i * 40;
        let on = *c == class;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"38\" height=\"{}\" fill=\"{col}\" stroke=\"#222\" stroke-width=\"{}\"/><text x=\"{}\" y=\"26\" text-anchor=\"middle\" font-size=\"{}\" font-weight=\"{}\">{c}</text>",
            if on { 0 } else { 8 },
            if on { 40 } else { 24 },
            if on { 2 } else { 0 },
            x + 19,
            if on { 18 } else { 12 },
            if on { "bold" } else { "normal" }
        );
    }
    s.push_str("</svg>");
    s
}

fn kpi(out: &mut String, i: &IndicatorField) {
    let value = match i.value {
        Some(v) => format!(
            "<span class=\"big\" data-indicator=\"{}\" data-value=\"{v}\">{}</span>",
            i.name.as_str(),
            display_number(v, 2)
        ),
        None => format!(
            "<span class=\"big na\" data-indicator=\"{}\" data-value=\"\">—</span><br><small>not computable: {}</small>",
            i.name.as_str(),
            esc(i.error.map(|e| e.as_str()).unwrap_or("no data"))
        ),
    };
    let unit = serde_json::to_value(i.unit).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let _ = write!(
        out,
        "<div class=\"kpi\"><h3>{}</h3>{value} <span class=\"unit\">{}</span>",
        esc(&i.name.as_str().to_uppercase()),
        esc(if unit == "ratio" { "" } else { &unit })
    );
    if let Some(c) = i.class {
        let _ = write!(
            out,
            "<div class=\"class\" data-class=\"{c}\">{}<br><small>indicative class {c}</small></div>",
            class_scale(c)
        );
    }
    let _ = write!(out, "<p class=\"def\">{}</p></div>", esc(i.label));
}

/// Horizontal bars of the year's energies (kWh), as inline SVG.
fn energy_chart(d: &Declaration) -> String {
    let get = |k: &str| {
        d.annex_ii_energy.fields.iter().find(|f| f.key == k).and_then(|f| match f.value {
            Value::Number(n) => Some(n),
            _ => None,
        })
    };
    let bars: Vec<(&str, Option<f64>)> = vec![
        ("Total energy EDC", get("edc_kwh")),
        ("IT equipment EIT", get("eit_kwh")),
        ("Renewable ERES-TOT", get("eres_tot_kwh")),
        ("Waste heat reused EREUSE", get("ereuse_kwh")),
        ("Back-up generators EDC-BG", get("edc_bg_kwh")),
    ];
    let max = bars.iter().filter_map(|b| b.1).fold(0.0f64, f64::max);
    let mut s = String::from(
        "<svg class=\"chart\" viewBox=\"0 0 640 170\" width=\"640\" height=\"170\" role=\"img\" aria-label=\"energy of the period, kWh\">",
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 10 + i * 32;
        let w = match (v, max > 0.0) {
            (Some(v), true) => (v / max * 300.0).max(0.0),
            _ => 0.0,
        };
        let text = v.map(|v| format!("{} kWh", display_number(v, 0))).unwrap_or_else(|| "not declared".into());
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"180\" y=\"{y}\" width=\"{w:.1}\" height=\"20\" fill=\"#3b6ea5\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 15,
            esc(label),
            186.0 + w,
            y + 15,
            esc(&text)
        );
    }
    s.push_str("</svg>");
    s
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:60rem;color:#111;line-height:1.4;padding:0 1rem}\
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;border-bottom:2px solid #3b6ea5;padding-bottom:.2rem;margin-top:2rem}\
.sub{color:#444;margin-top:0}.interim{background:#fff3cd;border:1px solid #e0b400;padding:.6rem;font-weight:bold}\
.kpis{display:flex;flex-wrap:wrap;gap:1rem}.kpi{border:1px solid #ccc;border-radius:6px;padding:.8rem;flex:1 1 12rem}\
.kpi h3{margin:0;font-size:.9rem;color:#3b6ea5}.big{font-size:2rem;font-weight:bold}.unit{color:#444}.def{font-size:.8rem;color:#444}\
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{border-bottom:1px solid #ddd;padding:.3rem .4rem;text-align:left;vertical-align:top}\
td.num{text-align:right;font-variant-numeric:tabular-nums}td.pt{white-space:nowrap;color:#444}.na{color:#888;font-style:italic}\
footer,.refs{font-size:.8rem;color:#333}@media print{body{margin:0;max-width:none}section,.kpi{break-inside:avoid}a{color:#111}}";

/// The page: self-contained HTML5 (no script, no external resource).
pub fn html(d: &Declaration) -> String {
    let p = public(d);
    let name = p
        .annex_i
        .fields
        .iter()
        .find(|f| f.key == "dc_name")
        .map(|f| f.value.cell())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| p.site.clone());
    let period = match (p.reporting_year, &p.operating_period) {
        (Some(y), Some(o)) => format!("{y}, from {} to {} (first year of operation)", o.from, o.to),
        (Some(y), None) => format!("calendar year {y}"),
        (None, _) => format!("{} to {} (interim)", p.period_start, p.period_end),
    };
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{} — energy and environmental information, {}</title><style>{CSS}</style></head><body>",
        esc(&name),
        esc(&period)
    );
    let _ = write!(
        o,
        "<header><h1>{}</h1><p class=\"sub\">Administrative, environmental and energy information of the data centre, {} \
(period {} – {}, time zone {}), made public under Code de l'énergie article L.236-1 II and D.236-3.</p></header>",
        esc(&name),
        esc(&period),
        esc(&p.period_start),
        esc(&p.period_end),
        esc(&p.timezone)
    );
    if p.interim {
        o.push_str("<p class=\"interim\" data-interim=\"true\">Interim figures: this period is not a complete calendar year. They are not the annual declaration.</p>");
    }
    if let Some(op) = &p.operating_period {
        let _ = write!(
            o,
            "<p class=\"interim\" data-operating-from=\"{}\" data-operating-to=\"{}\">{}</p>",
            op.from,
            op.to,
            esc(&op.statement)
        );
    }
    if !p.omissions.is_empty() {
        o.push_str("<section data-omissions=\"true\"><h2>Indicators omitted for the first reporting period</h2><p>Delegated Regulation (EU) 2024/1364 Art. 3(2) lets a data centre omit these indicators for its first reporting period, for technical reasons it explains:</p><ul>");
        for om in &p.omissions {
            let _ = write!(
                o,
                "<li data-omitted-field=\"{}\"><strong>Annex {} {}</strong> ({}): {}</li>",
                om.field,
                esc(om.annex.unwrap_or_default()),
                esc(om.point.unwrap_or_default()),
                esc(om.field),
                esc(&om.reason)
            );
        }
        o.push_str("</ul></section>");
    }
    o.push_str("<section><h2>Indicators</h2><div class=\"kpis\">");
    for i in &p.indicators {
        kpi(&mut o, i);
    }
    o.push_str("</div><p class=\"def\">Classes are indicative: the class each value would get on the EU rating scale (Commission Delegated Regulation C(2026) 3472, Annex I), computed from the unrounded value, each class excluding its lower bound and including its upper bound. The European database assigns the official class. Values are rounded here for reading only; the JSON and CSV files beside this page carry them unrounded.</p></section>");
    let _ = write!(o, "<section><h2>Energy of the period</h2>{}</section>", energy_chart(&p));
    for s in p.sections() {
        section_table(&mut o, s);
    }
    o.push_str(
        "<section class=\"refs\"><h2>Definitions and standards</h2><ul>\
<li>Commission Delegated Regulation (EU) 2024/1364 on the first phase of the establishment of a common Union rating scheme for data centres: Annex I (information), Annex II (key performance indicators and measurement methods), Annex III (PUE = EDC / EIT, WUE = WIN / EIT, ERF = EREUSE / EDC, REF = ERES-TOT / EDC).</li>\
<li>Directive (EU) 2023/1791 on energy efficiency, article 12 and Annex VII.</li>\
<li>Code de l'énergie, articles L.236-1 and D.236-1 to D.236-3 (décret n° 2025-1382 du 29 décembre 2025).</li>\
<li>EN 50600-4-2 (PUE; EIT measured at the UPS output, category 1), EN 50600-4-3 (REF), EN 50600-4-6 (ERF), EN 50600-4-8 (CUE), EN 50600-4-9 (WUE).</li>\
<li>Commission Delegated Regulation C(2026) 3472, Annex I, Tables 1 and 2 (PUE and WUE classes A–G).</li>\
</ul></section>",
    );
    let _ = writeln!(
        o,
        "<footer><p>Generated {} by domesday from metered energy (schema {} {}). The same data: the JSON and CSV files published beside this page.</p></footer></body></html>",
        esc(&p.generated_at),
        esc(SCHEMA),
        esc(p.schema_version)
    );
    o
}

/// The three files of the publication: `(file name, bytes)`.
pub fn files(d: &Declaration) -> Result<Vec<(String, Vec<u8>)>, RenderError> {
    let p = public(d);
    let stem = format!("{}-{}", p.site, p.reporting_year.map(|y| y.to_string()).unwrap_or_else(|| "interim".into()));
    Ok(vec![
        (format!("{stem}.html"), html(d).into_bytes()),
        (format!("{stem}.json"), super::render::json(&p)?),
        (format!("{stem}.csv"), super::render::csv(&p).into_bytes()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_reading() {
        assert_eq!(display_number(1_224_000.0, 0), "1\u{202f}224\u{202f}000");
        assert_eq!(display_number(1.275, 2), "1.27");
        assert_eq!(display_number(0.5, 2), "0.5");
        assert_eq!(display_number(-1234.5, 1), "-1\u{202f}234.5");
        assert_eq!(display_number(12.0, 2), "12");
    }

    #[test]
    fn escaping() {
        assert_eq!(esc("<a href=\"x\">R&D's</a>"), "&lt;a href=&quot;x&quot;&gt;R&amp;D&#39;s&lt;/a&gt;");
    }
}
