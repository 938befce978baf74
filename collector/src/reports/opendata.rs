//! The region's open data set: the public subset of the region report, one
//! row per data centre and year, as `data.csv` and `data.json`, described by
//! a Frictionless Table Schema (`schema.json`: types, constraints, units,
//! English and French titles and descriptions, the licence).
//!
//! Every value is the region report's ([`super::region`]), so the open data
//! equal the page and the declarations. Contacts, SIRET numbers and the
//! provenance details stay out: only what identifies a data centre and its
//! annual figures is published.

use serde_json::{Map, Value as Json, json};

use super::region::RegionReport;
use super::region_render::cell;
use super::render::RenderError;

/// The licence of the data set: Etalab's Licence Ouverte 2.0 (compatible with CC BY 4.0).
pub fn licence() -> Json {
    json!({
        "name": "etalab-2.0",
        "path": "https://www.etalab.gouv.fr/licence-ouverte-open-licence/",
        "title": "Licence Ouverte / Open Licence version 2.0"
    })
}

/// One column: name, Table Schema type, unit, title (en, fr), description (en, fr), constraints.
type Column = (&'static str, &'static str, Option<&'static str>, [&'static str; 2], [&'static str; 2], Json);

const CLASSES: [&str; 7] = ["A", "B", "C", "D", "E", "F", "G"];

/// The columns, in order.
pub fn columns() -> Vec<Column> {
    let req = json!({"required": true});
    let pos = json!({"minimum": 0});
    let share = json!({"minimum": 0, "maximum": 1});
    vec![
        (
            "region",
            "string",
            None,
            ["Region", "Région"],
            ["The region of the report.", "La région du rapport."],
            req.clone(),
        ),
        (
            "reporting_year",
            "integer",
            None,
            ["Reporting year", "Année de déclaration"],
            ["Calendar year of the figures.", "Année civile des données."],
            json!({"required": true, "minimum": 2000, "maximum": 2200}),
        ),
        (
            "site_id",
            "string",
            None,
            ["Site identifier", "Identifiant du site"],
            [
                "The data centre's identifier in its operator's declaration.",
                "Identifiant du centre de données dans la déclaration de son exploitant.",
            ],
            req,
        ),
        (
            "dc_name",
            "string",
            None,
            ["Data centre name", "Nom du centre de données"],
            [
                "Annex I 1(a) of Delegated Regulation (EU) 2024/1364.",
                "Annexe I 1(a) du règlement délégué (UE) 2024/1364.",
            ],
            json!({}),
        ),
        (
            "operator",
            "string",
            None,
            ["Operator", "Exploitant"],
            ["Annex I 1(b): the operator's name.", "Annexe I 1(b) : nom de l'exploitant."],
            json!({}),
        ),
        (
            "lau_code",
            "string",
            None,
            ["LAU code", "Code LAU"],
            [
                "Annex I 1(c): Eurostat local administrative unit (the commune in France).",
                "Annexe I 1(c) : unité administrative locale Eurostat (la commune en France).",
            ],
            json!({}),
        ),
        (
            "nuts3_code",
            "string",
            None,
            ["NUTS 3 code", "Code NUTS 3"],
            ["NUTS 3 region (the département in France).", "Région NUTS 3 (le département en France)."],
            json!({}),
        ),
        (
            "dc_type",
            "string",
            None,
            ["Type", "Type"],
            [
                "Annex I 1(d): enterprise, colocation or co-hosting.",
                "Annexe I 1(d) : entreprise, colocation ou co-hébergement.",
            ],
            json!({"enum": ["enterprise", "colocation", "co_hosting"]}),
        ),
        (
            "size_category",
            "string",
            None,
            ["Size category", "Catégorie de taille"],
            [
                "Annex IV category by installed IT power (each includes its lower bound).",
                "Catégorie de l'annexe IV selon la puissance informatique installée (borne inférieure incluse).",
            ],
            json!({"enum": ["below_100_kw", "very_small", "small", "medium", "large", "very_large"]}),
        ),
        (
            "pdit_kw",
            "number",
            Some("kW"),
            ["Installed IT power", "Puissance informatique installée"],
            ["Annex II 1(a) PDIT.", "Annexe II 1(a) PDIT."],
            pos.clone(),
        ),
        (
            "edc_kwh",
            "number",
            Some("kWh"),
            ["Total energy consumption", "Consommation totale d'énergie"],
            ["Annex II 1(d) EDC.", "Annexe II 1(d) EDC."],
            pos.clone(),
        ),
        (
            "eit_kwh",
            "number",
            Some("kWh"),
            ["IT equipment energy", "Énergie des équipements informatiques"],
            ["Annex II 1(e) EIT.", "Annexe II 1(e) EIT."],
            pos.clone(),
        ),
        (
            "eit_basis",
            "string",
            None,
            ["EIT measurement point", "Point de mesure de EIT"],
            ["ups_cat1 (UPS output), pdu or declared_point.", "ups_cat1 (sortie onduleur), pdu ou declared_point."],
            json!({"enum": ["ups_cat1", "pdu", "declared_point"]}),
        ),
        (
            "win_m3",
            "number",
            Some("m3"),
            ["Water input", "Consommation d'eau"],
            ["Annex II 1(h) WIN.", "Annexe II 1(h) WIN."],
            pos.clone(),
        ),
        (
            "ereuse_kwh",
            "number",
            Some("kWh"),
            ["Waste heat reused", "Chaleur fatale réutilisée"],
            ["Annex II 1(j) EREUSE.", "Annexe II 1(j) EREUSE."],
            pos.clone(),
        ),
        (
            "eres_tot_kwh",
            "number",
            Some("kWh"),
            ["Renewable energy", "Énergie renouvelable"],
            ["Annex II 1(o) ERES-TOT.", "Annexe II 1(o) ERES-TOT."],
            pos.clone(),
        ),
        (
            "pue",
            "number",
            Some("ratio"),
            ["PUE", "PUE"],
            ["Annex III (a): EDC / EIT.", "Annexe III (a) : EDC / EIT."],
            json!({"minimum": 1}),
        ),
        (
            "pue_class",
            "string",
            None,
            ["PUE class (indicative)", "Classe PUE (indicative)"],
            ["EU rating scale C(2026) 3472, indicative.", "Échelle de notation UE C(2026) 3472, indicative."],
            json!({"enum": CLASSES}),
        ),
        (
            "wue",
            "number",
            Some("L/kWh"),
            ["WUE", "WUE"],
            ["Annex III (b): WIN / EIT.", "Annexe III (b) : WIN / EIT."],
            pos.clone(),
        ),
        (
            "wue_class",
            "string",
            None,
            ["WUE class (indicative)", "Classe WUE (indicative)"],
            ["EU rating scale C(2026) 3472, indicative.", "Échelle de notation UE C(2026) 3472, indicative."],
            json!({"enum": CLASSES}),
        ),
        (
            "erf",
            "number",
            Some("ratio"),
            ["ERF", "ERF"],
            ["Annex III (c): EREUSE / EDC.", "Annexe III (c) : EREUSE / EDC."],
            share.clone(),
        ),
        (
            "ref",
            "number",
            Some("ratio"),
            ["REF", "REF"],
            ["Annex III (d): ERES-TOT / EDC.", "Annexe III (d) : ERES-TOT / EDC."],
            share.clone(),
        ),
        (
            "cue",
            "number",
            Some("kgCO2e/kWh"),
            ["CUE", "CUE"],
            ["EN 50600-4-8, location-based: emissions / EIT.", "EN 50600-4-8, base localisation : émissions / EIT."],
            pos.clone(),
        ),
        (
            "emissions_kgco2e",
            "number",
            Some("kgCO2e"),
            ["Emissions", "Émissions"],
            [
                "Location-based emissions of the grid energy, time-matched.",
                "Émissions de l'électricité du réseau (base localisation), au pas horaire.",
            ],
            pos,
        ),
        (
            "coverage_ratio",
            "number",
            Some("ratio"),
            ["Coverage", "Couverture"],
            [
                "Lowest share of the year the meters observed (0–1).",
                "Part minimale de l'année observée par les compteurs (0–1).",
            ],
            share.clone(),
        ),
        (
            "estimated_share",
            "number",
            Some("ratio"),
            ["Estimated share", "Part estimée"],
            ["Estimated part of the energies (0–1).", "Part estimée des énergies (0–1)."],
            share,
        ),
        (
            "interim",
            "boolean",
            None,
            ["Interim", "Provisoire"],
            [
                "True for anything but a complete, ended calendar year.",
                "Vrai sauf pour une année civile complète et close.",
            ],
            json!({"required": true}),
        ),
        (
            "source",
            "string",
            None,
            ["Source", "Source"],
            [
                "ledger (measured by this collector) or declaration (an operator's declaration).",
                "ledger (mesuré par ce collecteur) ou declaration (déclaration d'un exploitant).",
            ],
            json!({"required": true, "enum": ["ledger", "declaration"]}),
        ),
    ]
}

/// The Table Schema of `data.csv`.
pub fn schema(r: &RegionReport) -> Json {
    let fields: Vec<Json> = columns()
        .into_iter()
        .map(|(name, ty, unit, title, desc, constraints)| {
            let mut f = Map::new();
            f.insert("name".into(), json!(name));
            f.insert("type".into(), json!(ty));
            f.insert("title".into(), json!(title[0]));
            f.insert("description".into(), json!(desc[0]));
            f.insert("title_fr".into(), json!(title[1]));
            f.insert("description_fr".into(), json!(desc[1]));
            if let Some(u) = unit {
                f.insert("unit".into(), json!(u));
            }
            if constraints.as_object().is_some_and(|o| !o.is_empty()) {
                f.insert("constraints".into(), constraints);
            }
            Json::Object(f)
        })
        .collect();
    json!({
        "$schema": "https://datapackage.org/profiles/2.0/tableschema.json",
        "title": format!("Data centres of {} — {}", r.region, r.reporting_year.map(|y| y.to_string()).unwrap_or_default()),
        "title_fr": format!("Centres de données de {} — {}", r.region, r.reporting_year.map(|y| y.to_string()).unwrap_or_default()),
        "description": "One row per data centre and year: the public figures of the EED declarations (Delegated Regulation (EU) 2024/1364), from domesday's region report. Units in each field's `unit`; values unrounded.",
        "description_fr": "Une ligne par centre de données et par année : les données publiques des déclarations EED (règlement délégué (UE) 2024/1364), issues du rapport régional de domesday. Unités dans `unit` ; valeurs non arrondies.",
        "licenses": [licence()],
        "fields": fields,
        "primaryKey": ["site_id", "reporting_year"],
        "missingValues": [""],
    })
}

/// The rows, keyed by column name, from the region report.
pub fn rows(r: &RegionReport) -> Result<Vec<Map<String, Json>>, RenderError> {
    let v = serde_json::to_value(r)?;
    let cols = columns();
    let mut out = Vec::new();
    for s in v["sites"].as_array().into_iter().flatten() {
        let mut row = Map::new();
        for (name, ..) in &cols {
            let x = match *name {
                "region" => json!(r.region),
                "reporting_year" => s["reporting_year"].clone(),
                "site_id" => s["site"].clone(),
                k => s[k].clone(),
            };
            row.insert((*name).to_string(), x);
        }
        out.push(row);
    }
    Ok(out)
}

/// `data.csv`: the header, then one line per row; empty cells are missing values.
pub fn csv(r: &RegionReport) -> Result<String, RenderError> {
    let cols = columns();
    let mut out = cols.iter().map(|c| c.0).collect::<Vec<_>>().join(",");
    out.push('\n');
    for row in rows(r)? {
        let line: Vec<String> = cols
            .iter()
            .map(|c| {
                let s = cell(&row[c.0]);
                if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
            })
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// The three files of the data set: (name, bytes). Two data centres with the
/// same site id (of different operators) would break the primary key: refused.
pub fn files(r: &RegionReport) -> Result<Vec<(&'static str, Vec<u8>)>, super::region::RegionError> {
    let mut ids: Vec<&str> = r.sites.iter().map(|s| s.site.as_str()).collect();
    ids.sort();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(super::region::RegionError::Input(format!(
            "two data centres have the site id {:?}: the open data set keys rows by site_id and reporting_year",
            w[0]
        )));
    }
    let mut data = serde_json::to_vec_pretty(&rows(r)?).map_err(RenderError::from)?;
    data.push(b'\n');
    let mut schema = serde_json::to_vec_pretty(&schema(r)).map_err(RenderError::from)?;
    schema.push(b'\n');
    Ok(vec![("data.csv", csv(r)?.into_bytes()), ("data.json", data), ("schema.json", schema)])
}
