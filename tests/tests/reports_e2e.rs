//! `domesday-collector report eed` on a seeded year, through the real binary:
//! a year of monthly facility meter readings (utility, UPS output, water,
//! potable water, heat reuse, on-site PV) imported with `import-meters`, the
//! declared figures of `[[sites.annual]]`, and a static carbon factor.
//!
//! - JSON and CSV are compared byte for byte with golden files
//!   (`UPDATE_GOLDEN=1` rewrites them) and checked against figures
//!   recomputed here from the readings;
//! - the XLSX is read back (calamine) and compared with the JSON, cell by cell;
//! - every figure of every format equals `GET /api/v1/sites/{site}/indicators`
//!   over the same year;
//! - the same ledger and inputs give the same bytes in every format;
//! - a declaration lacking a mandatory field is refused (exit 3, the list on
//!   stderr, no file); `--draft` writes it with the list;
//! - `GET /api/v1/reports/eed` answers the command's bytes, 422 with the list
//!   when incomplete, and the draft with `draft=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use calamine::{Data, Reader, Xlsx};
use domesday_tests::{
    binary, close, collector_output, free_port, get_text, report_golden, report_meters, serve_at_epoch, split_csv,
};

const TOKEN: &str = "report-token";
const EPOCH: &str = "1767225600"; // SOURCE_DATE_EPOCH: 2026-01-01T00:00:00Z

/// Per month: utility 100,000 kWh, UPS output 80,000 kWh, PV 2,000 kWh,
/// heat reused 5,000 kWh, water 50 m³ of which 20 m³ potable.
const MONTHLY: [(&str, &str); 6] =
    [("edf", "100000"), ("ups", "80000"), ("pv", "2000"), ("chaleur", "5000"), ("eau", "50"), ("eau-pot", "20")];

const FULL_SITE: &str = r#"name = "Caen 1"
operator = "Normandie DC"
operator_contact = "noc@ndc.example"
owner = "Caen la Mer"
owner_contact = "patrimoine@caen.example"
country = "FR"
lau_code = "14118"
nuts3_code = "FRD11"
dc_type = "colocation"
dc_structure = "structure"
offers_other_type_services = false
entry_into_operation = "2019-06"
installed_it_power_kw = 640.0
total_floor_area_m2 = 1200.0
computer_room_floor_area_m2 = 450.0
intake_air_set_point_c = 24.0
siret = ["73282932000074"]
contact_name = "A. Martin"
contact_email = "energie@ndc.example"
commissioning_date = "2019-06-15"
public_disclosure_url = "https://ndc.example/eed"

[sites.redundancy]
electrical_hv = "2N"
electrical_lv = "2N"
electrical_rack = "2N"
cooling_room = "N+1"
cooling_rack = "N"

[[sites.annual]]
year = 2025
grid_functions = []
cbtg_kw = 0.0
twh_c = 32.5
refrigerant_types = ["R-134a", "R-1234ze(E)"]
cdd_degree_days = 118.4
cdd_source = "Copernicus C3S ERA5"
eres_goo_kwh = 600000.0
eres_ppa_kwh = 24000.0
cserv_sert = 41250.0
cserv_floor_coverage_pct = 80.0
cstor_pb = 3.2
cstor_floor_coverage_pct = 80.0
"#;

/// The collector config: `caen-1` complete, `rouen-1` with the same meters
/// but no Annex I keys and no annual figures.
fn config(dir: &Path, port: u16) -> PathBuf {
    std::fs::write(dir.join("t"), TOKEN).expect("token");
    // Each site its own write token: the collector refuses two sites sharing one.
    std::fs::write(dir.join("t2"), format!("{TOKEN}-rouen")).expect("token");
    let p = dir.join("collector.toml");
    let token = dir.join("t").display().to_string();
    let token2 = dir.join("t2").display().to_string();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndb = {:?}\n\n[carbon]\nsource = \"static\"\ngrid_zone = \"FR\"\nbasis = \"lifecycle\"\n\n\
         [[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {token:?}\n{FULL_SITE}{}\n\
         [[sites]]\nid = \"rouen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {token2:?}\ncountry = \"FR\"\n{}",
        dir.join("domesday.db").display().to_string(),
        report_meters(),
        report_meters(),
    );
    std::fs::write(&p, text).expect("config");
    p
}

/// Monthly intervals of 2025 in Paris time (local midnights, with their offsets).
fn readings() -> String {
    let tz = jiff::tz::TimeZone::get("Europe/Paris").expect("tz");
    let month = |m: i8| {
        let (y, m) = if m > 12 { (2026, 1) } else { (2025, m) };
        jiff::civil::date(y, m, 1).to_zoned_datetime(tz.clone()).expect("zoned").timestamp().to_string()
    };
    let mut csv = String::from("start,end,meter,value\n");
    for m in 1..=12 {
        for (meter, v) in MONTHLY {
            csv.push_str(&format!("{},{},{meter},{v}\n", month(m), month(m + 1)));
        }
    }
    csv
}

fn collector(cfg: &Path, args: &[&str]) -> Output {
    collector_output(
        Command::new(binary("domesday-collector")).args(args).arg("--config").arg(cfg).env("SOURCE_DATE_EPOCH", EPOCH),
        cfg.parent().expect("the config's directory"),
    )
}

fn report(cfg: &Path, site: &str, format: &str, out: &Path, extra: &[&str]) -> Output {
    let out = out.display().to_string();
    let mut args = vec!["report", "eed", "--site", site, "--year", "2025", "--format", format, "--out", &out];
    args.extend_from_slice(extra);
    collector(cfg, &args)
}

/// The rows of one XLSX sheet as strings/numbers.
fn sheet(x: &mut Xlsx<std::io::BufReader<std::fs::File>>, name: &str) -> Vec<Vec<Data>> {
    let r = x.worksheet_range(name).unwrap_or_else(|e| panic!("sheet {name}: {e}"));
    r.rows().map(|row| row.to_vec()).collect()
}

#[test]
fn eed_declaration_of_a_seeded_year_in_every_format() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let cfg = config(dir.path(), port);
    let csv_path = dir.path().join("readings.csv");
    std::fs::write(&csv_path, readings()).expect("csv");
    for site in ["caen-1", "rouen-1"] {
        let o = collector(&cfg, &["import-meters", "--site", site, &csv_path.display().to_string()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // JSON and CSV: golden files, twice the same bytes.
    let out = |n: &str| dir.path().join(n);
    for (fmt, file) in [
        ("json", "a.json"),
        ("csv", "a.csv"),
        ("xlsx", "a.xlsx"),
        ("json", "b.json"),
        ("csv", "b.csv"),
        ("xlsx", "b.xlsx"),
    ] {
        let o = report(&cfg, "caen-1", fmt, &out(file), &[]);
        assert!(o.status.success(), "{fmt}: {}", String::from_utf8_lossy(&o.stderr));
    }
    for (a, b) in [("a.json", "b.json"), ("a.csv", "b.csv"), ("a.xlsx", "b.xlsx")] {
        assert_eq!(std::fs::read(out(a)).expect("a"), std::fs::read(out(b)).expect("b"), "{a} and {b} differ");
    }
    let json_text = std::fs::read_to_string(out("a.json")).expect("json");
    let csv_text = std::fs::read_to_string(out("a.csv")).expect("csv");
    report_golden("eed-caen-1-2025.json", &json_text);
    report_golden("eed-caen-1-2025.csv", &csv_text);
    let d: serde_json::Value = serde_json::from_str(&json_text).expect("json");

    // Recomputed from the readings: EDC = grid + PV; EIT = UPS output (category 1).
    let (edc, eit) = (12.0 * 102_000.0, 12.0 * 80_000.0);
    let e = &d["annex_ii_energy"];
    assert_eq!(d["interim"], false);
    assert_eq!(d["reporting_year"], 2025);
    assert_eq!(d["period_start"], "2024-12-31T23:00:00Z");
    assert!(close(e["edc_kwh"]["value"].as_f64().expect("edc"), edc), "{}", e["edc_kwh"]);
    assert_eq!(e["edc_kwh"]["annex"], "II");
    assert_eq!(e["edc_kwh"]["point"], "1(d)");
    assert_eq!(e["edc_kwh"]["unit"], "kWh");
    assert_eq!(e["edc_kwh"]["provenance"]["meters"], serde_json::json!(["edf", "pv"]));
    assert_eq!(e["edc_kwh"]["provenance"]["coverage_ratio"], 1.0);
    assert_eq!(e["edc_bg_kwh"]["value"], 0.0);
    assert!(close(e["eit_kwh"]["value"].as_f64().expect("eit"), eit));
    assert_eq!(e["eit_basis"]["value"], "ups_cat1");
    assert!(e["eit_kwh"]["note"].as_str().unwrap_or_default().contains("UPS output"));
    assert!(close(e["win_m3"]["value"].as_f64().expect("win"), 600.0));
    assert!(close(e["win_pot_m3"]["value"].as_f64().expect("pot"), 240.0));
    assert!(close(e["ereuse_kwh"]["value"].as_f64().expect("reuse"), 60_000.0));
    assert!(close(e["eres_os_kwh"]["value"].as_f64().expect("os"), 24_000.0));
    assert!(close(e["eres_tot_kwh"]["value"].as_f64().expect("tot"), 24_000.0 + 600_000.0 + 24_000.0));
    assert_eq!(e["grid_functions_provided"]["value"], false);
    assert_eq!(d["annex_i"]["dc_type"]["value"], "colocation");
    assert_eq!(d["france"]["commissioning_date"]["value"], "2019-06-15");
    assert_eq!(d["missing"], serde_json::json!([]));
    let ind = |name: &str| {
        d["indicators"].as_array().expect("indicators").iter().find(|i| i["name"] == name).cloned().expect(name)
    };
    let pue = ind("pue");
    assert!(close(pue["value"].as_f64().expect("pue"), edc / eit), "{pue}");
    assert_eq!((pue["category"].as_u64(), pue["class"].as_str()), (Some(1), Some("C")), "{pue}");
    assert_eq!(pue["class_indicative"], true);
    assert_eq!((pue["annex"].as_str(), pue["point"].as_str()), (Some("III"), Some("(a)")));
    let wue = ind("wue");
    assert!(close(wue["value"].as_f64().expect("wue"), 600_000.0 / eit), "{wue}");
    assert_eq!(wue["class"], "E");
    assert!(close(ind("erf")["value"].as_f64().expect("erf"), 60_000.0 / edc));
    assert!(close(ind("ref")["value"].as_f64().expect("ref"), 648_000.0 / edc), "{}", ind("ref"));
    assert!(ind("cue")["value"].as_f64().is_some(), "{}", ind("cue"));
    assert!(ind("cue")["class"].is_null());

    // The API over the same year: every indicator figure, in every format.
    let c = serve_at_epoch(dir.path(), port, &cfg, EPOCH);
    let api: serde_json::Value = serde_json::from_str(&get_text(
        &c.url("/api/v1/sites/caen-1/indicators?from=2024-12-31T23:00:00Z&to=2025-12-31T23:00:00Z&step=1y"),
        Duration::from_secs(30),
    ))
    .expect("api json");
    let period = &api["periods"][0];
    assert_eq!(period["interim"], false);
    let api_ind = |i: &serde_json::Value| {
        period["indicators"]
            .as_array()
            .expect("api indicators")
            .iter()
            .find(|a| {
                a["name"] == i["name"]
                    && (i["category"].is_null() || a["category"] == i["category"])
                    && (i["water"].is_null() || a["water"] == i["water"])
                    && (i["basis"].is_null() || a["basis"] == i["basis"])
            })
            .cloned()
            .unwrap_or_else(|| panic!("{} not in the API answer: {period}", i["name"]))
    };
    let csv_rows: Vec<Vec<String>> = csv_text.lines().skip(1).map(split_csv).collect();
    let mut xlsx: Xlsx<_> = calamine::open_workbook(out("a.xlsx")).expect("open xlsx");
    let xlsx_ind = sheet(&mut xlsx, "Indicators");
    let indicators = d["indicators"].as_array().expect("indicators");
    assert_eq!(indicators.len(), 5);
    for i in indicators {
        let a = api_ind(i);
        for k in ["value", "numerator", "denominator", "coverage_ratio", "estimated_share", "error", "carbon_source"] {
            assert_eq!(i[k], a[k], "{} {k}: declaration {} vs API {}", i["name"], i[k], a[k]);
        }
        let name = i["name"].as_str().expect("name");
        let row = csv_rows.iter().find(|r| r[0] == "indicators" && r[1] == name).expect("csv row");
        assert_eq!(row[6].parse::<f64>().ok(), a["value"].as_f64(), "CSV {name}");
        assert_eq!(row[8].parse::<f64>().ok(), a["numerator"].as_f64(), "CSV {name}");
        assert_eq!(row[9].parse::<f64>().ok(), a["denominator"].as_f64(), "CSV {name}");
        assert_eq!(row[17], i["class"].as_str().unwrap_or_default(), "CSV {name}");
        let x = xlsx_ind.iter().find(|r| r[0] == Data::String(name.into())).expect("xlsx row");
        assert_eq!(x[4], Data::Float(a["value"].as_f64().expect("value")), "XLSX {name}");
        assert_eq!(x[8], Data::Float(a["numerator"].as_f64().expect("num")), "XLSX {name}");
        assert_eq!(x[9], Data::Float(a["denominator"].as_f64().expect("den")), "XLSX {name}");
    }
    // EDC and EIT are the PUE's own numerator and denominator.
    assert_eq!(e["edc_kwh"]["value"], api_ind(&pue)["numerator"]);
    assert_eq!(e["eit_kwh"]["value"], api_ind(&pue)["denominator"]);

    // Every field of the JSON, in the CSV and the XLSX, with its type.
    let sheets = [
        ("annex_i", "Annex I"),
        ("annex_ii_energy", "Annex II energy"),
        ("annex_ii_ict_capacity", "Annex II ICT capacity"),
        ("annex_ii_data_traffic", "Annex II data traffic"),
        ("france", "France"),
    ];
    let mut n = 0;
    for (section, name) in sheets {
        let rows = sheet(&mut xlsx, name);
        assert_eq!(rows[0][4], Data::String("Value".into()));
        let fields = d[section].as_object().expect("section");
        assert_eq!(rows.len(), fields.len() + 1, "{name}");
        for (key, f) in fields {
            n += 1;
            let x =
                rows.iter().find(|r| r[0] == Data::String(key.clone())).unwrap_or_else(|| panic!("{key} in {name}"));
            let c = csv_rows.iter().find(|r| r[0] == section && &r[1] == key).unwrap_or_else(|| panic!("{key} in CSV"));
            assert_eq!(x[3], Data::String(f["point"].as_str().unwrap_or_default().into()), "{key}");
            assert_eq!(c[4], f["point"].as_str().unwrap_or_default(), "{key}");
            let v = &f["value"];
            match v {
                serde_json::Value::Number(num) => {
                    let want = num.as_f64().expect("f64");
                    assert_eq!(x[4], Data::Float(want), "{key}: a number cell");
                    assert_eq!(c[6].parse::<f64>().ok(), Some(want), "{key}");
                }
                serde_json::Value::Bool(b) => {
                    assert_eq!(x[4], Data::Bool(*b), "{key}");
                    assert_eq!(c[6], b.to_string(), "{key}");
                }
                serde_json::Value::String(s) if key == "commissioning_date" => {
                    let Data::DateTime(dt) = &x[4] else { panic!("{key}: a date cell, got {:?}", x[4]) };
                    // Excel serial days count from 1899-12-30.
                    let day = jiff::civil::date(1899, 12, 30)
                        .checked_add(jiff::Span::new().days(dt.as_f64() as i64))
                        .expect("date");
                    assert_eq!(&day.to_string(), s, "{key}");
                    assert_eq!(&c[6], s, "{key}");
                }
                serde_json::Value::String(s) => {
                    assert_eq!(x[4], Data::String(s.clone()), "{key}");
                    assert_eq!(&c[6], s, "{key}");
                }
                serde_json::Value::Array(l) => {
                    let joined = l.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join("; ");
                    assert_eq!(c[6], joined, "{key}");
                    if joined.is_empty() {
                        assert_eq!(x[4], Data::Empty, "{key}");
                    } else {
                        assert_eq!(x[4], Data::String(joined), "{key}");
                    }
                }
                _ => {
                    assert_eq!(x[4], Data::Empty, "{key}");
                    assert_eq!(c[6], "", "{key}");
                }
            }
        }
    }
    assert!(n > 50, "{n} fields");
    // A units header and the envelope.
    let head = sheet(&mut xlsx, "Indicators");
    assert_eq!(head[0][9], Data::String("Denominator (kWh)".into()));
    let env = sheet(&mut xlsx, "Declaration");
    assert!(env.iter().any(|r| r[0] == Data::String("interim".into()) && r[1] == Data::Bool(false)));

    // GET /api/v1/reports/eed: the command's bytes, in every format.
    for (fmt, file) in [("json", "a.json"), ("csv", "a.csv"), ("xlsx", "a.xlsx")] {
        let (code, ctype, body) = fetch(&c.url(&format!("/api/v1/reports/eed?site=caen-1&year=2025&format={fmt}")));
        assert_eq!(code, 200, "{fmt}: {}", String::from_utf8_lossy(&body));
        assert!(ctype.contains(if fmt == "xlsx" { "spreadsheetml" } else { fmt }), "{fmt}: {ctype}");
        assert_eq!(body, std::fs::read(out(file)).expect("cli file"), "{fmt}: HTTP and command differ");
    }
    let (code, _, body) = fetch(&c.url("/api/v1/reports/eed?site=rouen-1&year=2025"));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("cdd_degree_days (Annex II 1(n)): set [[sites.annual]] cdd_degree_days"), "{text}");
    let (code, _, body) = fetch(&c.url("/api/v1/reports/eed?site=rouen-1&year=2025&draft=true"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, _, _) = fetch(&c.url("/api/v1/reports/eed?site=caen-1"));
    assert_eq!(code, 400);

    // The public sheet: HTML + JSON + CSV, the public subset, the same numbers.
    let pubdir = out("public");
    let o = collector(
        &cfg,
        &["report", "publication", "--site", "caen-1", "--year", "2025", "--out", &pubdir.display().to_string()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(pubdir.join("caen-1-2025.html")).expect("html");
    let pub_json = std::fs::read_to_string(pubdir.join("caen-1-2025.json")).expect("json");
    let pub_csv = std::fs::read_to_string(pubdir.join("caen-1-2025.csv")).expect("csv");
    report_golden("publication-caen-1-2025.html", &page);
    let p: serde_json::Value = serde_json::from_str(&pub_json).expect("publication json");
    assert_eq!(p["schema"], "domesday.eed-publication");
    for text in [&page, &pub_json, &pub_csv] {
        assert!(!text.contains("energie@ndc.example") && !text.contains("A. Martin"), "personal contact published");
        assert!(!text.contains("[[sites"), "config keys published");
    }
    assert!(page.contains("noc@ndc.example"), "the operator's contact (Annex I 1(b)) is public");
    for bad in ["<script", "<link", "src=", "@import", "url("] {
        assert!(!page.contains(bad), "the page is not self-contained: {bad}");
    }
    assert!(page.contains("<svg") && page.contains("@media print"), "inline SVG and print CSS");
    // Every number the page shows is the declaration's (unrounded in data-value).
    let mut shown = 0;
    for (section, fields) in p.as_object().expect("object").iter().filter(|(_, v)| v.is_object()) {
        for (key, f) in fields.as_object().expect("fields") {
            let Some(v) = f.get("value").and_then(|v| v.as_f64()) else { continue };
            let attr = format!("data-field=\"{key}\" data-value=\"");
            let at = page.find(&attr).unwrap_or_else(|| panic!("{section}.{key} is not on the page"));
            let rest = &page[at + attr.len()..];
            let shown_v: f64 = rest[..rest.find('"').expect("quote")].parse().expect("number");
            assert_eq!(shown_v, v, "{section}.{key}");
            assert_eq!(
                Some(v),
                d[section.as_str()][key]["value"].as_f64(),
                "{section}.{key}: publication vs declaration"
            );
            shown += 1;
        }
    }
    assert!(shown > 15, "{shown}");
    for i in p["indicators"].as_array().expect("indicators") {
        let name = i["name"].as_str().expect("name");
        let attr = format!("data-indicator=\"{name}\" data-value=\"");
        let at = page.find(&attr).unwrap_or_else(|| panic!("{name} is not on the page"));
        let rest = &page[at + attr.len()..];
        assert_eq!(rest[..rest.find('"').expect("quote")].parse::<f64>().ok(), api_ind(i)["value"].as_f64(), "{name}");
        if let Some(class) = i["class"].as_str() {
            assert!(page.contains(&format!("data-class=\"{class}\"")), "{name} class {class}");
        }
    }
    // Over HTTP: the same page.
    let (code, ctype, body) = fetch(&c.url("/reports/publication?site=caen-1&year=2025"));
    assert_eq!((code, ctype.starts_with("text/html")), (200, true));
    assert_eq!(String::from_utf8_lossy(&body), page);
    let (code, _, _) = fetch(&c.url("/reports/publication?site=rouen-1&year=2025"));
    assert_eq!(code, 422);
    drop(c);

    // Incomplete: refused with the list, nothing written; --draft writes it.
    let refused = out("rouen.json");
    let o = report(&cfg, "rouen-1", "json", &refused, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "dc_name (Annex I 1(a)): set [[sites]] name",
        "lau_code",
        "cdd_degree_days (Annex II 1(n)): set [[sites.annual]] cdd_degree_days",
        "eres_goo_kwh",
        "siret (D.236-2): set [[sites]] siret",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(!refused.exists(), "a refused declaration must not be written");
    let o = report(&cfg, "rouen-1", "json", &refused, &["--draft"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let draft: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refused).expect("draft")).expect("draft json");
    let missing: Vec<&str> =
        draft["missing"].as_array().expect("missing").iter().filter_map(|m| m["field"].as_str()).collect();
    assert!(missing.contains(&"dc_name") && missing.contains(&"cserv_sert"), "{missing:?}");
    assert!(!missing.contains(&"edc_kwh"), "the ledger gives EDC: {missing:?}");
    // The same ledger figures as the complete site (same readings).
    assert_eq!(draft["annex_ii_energy"]["edc_kwh"]["value"], e["edc_kwh"]["value"]);
}

/// An interim period is marked interim everywhere, and its GOs are pro rata.
#[test]
fn interim_period_is_marked_everywhere() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), free_port());
    let csv_path = dir.path().join("readings.csv");
    std::fs::write(&csv_path, readings()).expect("csv");
    let o = collector(&cfg, &["import-meters", "--site", "caen-1", &csv_path.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("march.json");
    let o = collector(
        &cfg,
        &[
            "report",
            "eed",
            "--site",
            "caen-1",
            "--from",
            "2025-02-28T23:00:00Z",
            "--to",
            "2025-03-31T22:00:00Z",
            "--out",
            &out.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("out")).expect("json");
    assert_eq!(d["interim"], true);
    assert!(d["reporting_year"].is_null());
    for section in ["annex_i", "annex_ii_energy", "france"] {
        for (k, f) in d[section].as_object().expect("section") {
            assert_eq!(f["interim"], true, "{section}.{k}");
        }
    }
    for i in d["indicators"].as_array().expect("indicators") {
        assert_eq!(i["interim"], true, "{i}");
    }
    let e = &d["annex_ii_energy"];
    assert!(close(e["edc_kwh"]["value"].as_f64().expect("edc"), 102_000.0), "{}", e["edc_kwh"]);
    // March is 31 days of 365: the year's GOs pro rata temporis (744 h less the DST hour).
    let share = (31.0 * 24.0 - 1.0) / (365.0 * 24.0);
    assert!(close(e["eres_goo_kwh"]["value"].as_f64().expect("goo"), 600_000.0 * share), "{}", e["eres_goo_kwh"]);
}

/// Status, content type and body of a GET.
fn fetch(url: &str) -> (u16, String, Vec<u8>) {
    let r = reqwest::blocking::Client::new().get(url).timeout(Duration::from_secs(30)).send().expect("GET");
    let ctype = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (r.status().as_u16(), ctype, r.bytes().expect("body").to_vec())
}

/// docs/reports.md documents every field of the declaration, with its point.
#[test]
fn every_declaration_field_is_documented() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../docs/reports.md")).expect("docs/reports.md");
    let golden = std::fs::read_to_string(root.join("golden/reports/eed-caen-1-2025.json")).expect("golden");
    let d: serde_json::Value = serde_json::from_str(&golden).expect("json");
    for section in ["annex_i", "annex_ii_energy", "annex_ii_ict_capacity", "annex_ii_data_traffic", "france"] {
        assert!(doc.contains(&format!("`{section}`")), "section {section} is not documented");
        for (key, f) in d[section].as_object().expect("section") {
            let line = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}`")))
                .unwrap_or_else(|| panic!("{key} has no row in docs/reports.md"));
            assert!(line.contains(f["point"].as_str().expect("point")), "{key}: the row does not give its point");
        }
    }
    for key in d.as_object().expect("object").keys() {
        assert!(doc.contains(&format!("`{key}`")), "envelope key {key} is not documented");
    }
}

/// Headless Chromium renders the golden public sheet: the screenshot is far
/// from blank (against an empty page rendered the same way), and the rendered
/// DOM shows the golden declaration's indicator values and classes.
#[test]
fn chromium_renders_the_public_sheet() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let page = root.join("golden/reports/publication-caen-1-2025.html");
    let dir = tempfile::tempdir().expect("tmp");
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").expect("blank");
    let shot = |html: &Path, png: &Path| {
        let o = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,2400"])
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg(html)
            .output()
            .expect("chromium (apt-get install chromium; test.sh installs it)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::metadata(png).expect("screenshot").len()
    };
    let (full, empty) = (shot(&page, &dir.path().join("page.png")), shot(&blank, &dir.path().join("blank.png")));
    assert!(full > 10 * empty, "the page renders blank: {full} bytes against {empty} for an empty page");
    let o = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .arg(&page)
        .output()
        .expect("chromium");
    let dom = String::from_utf8_lossy(&o.stdout);
    let golden = std::fs::read_to_string(root.join("golden/reports/eed-caen-1-2025.json")).expect("golden");
    let d: serde_json::Value = serde_json::from_str(&golden).expect("json");
    for i in d["indicators"].as_array().expect("indicators") {
        let (name, v) = (i["name"].as_str().expect("name"), i["value"].as_f64().expect("value"));
        assert!(dom.contains(&format!("data-indicator=\"{name}\" data-value=\"{v}\"")), "{name} = {v} not rendered");
        if let Some(c) = i["class"].as_str() {
            assert!(dom.contains(&format!("indicative class {c}")), "{name} class {c} not rendered");
        }
    }
    assert!(dom.contains("Caen 1") && dom.contains("Annex II 1(d)"), "rendered DOM lacks the page's text");
}

/// A config of one site `caen-1` (`site` keys, then the meters) sharing
/// `dir`'s ledger, written to `name`, with `top` before the site.
fn site_config(dir: &Path, name: &str, top: &str, site: &str) -> PathBuf {
    std::fs::write(dir.join("t"), TOKEN).expect("token");
    let p = dir.join(name);
    let text = format!(
        "listen = \"127.0.0.1:{}\"\ndb = {:?}\n{top}\n[carbon]\nsource = \"static\"\ngrid_zone = \"FR\"\nbasis = \"lifecycle\"\n\n\
         [[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n{site}{}",
        free_port(),
        dir.join("domesday.db").display().to_string(),
        dir.join("t").display().to_string(),
        report_meters(),
    );
    std::fs::write(&p, text).expect("config");
    p
}

fn import_year(dir: &Path, cfg: &Path) {
    let csv_path = dir.join("readings.csv");
    std::fs::write(&csv_path, readings()).expect("csv");
    let o = collector(cfg, &["import-meters", "--site", "caen-1", &csv_path.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The declaration's JSON without `declared_in` (where each figure was read).
fn without_places(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("declared_in");
        for x in o.values_mut() {
            *x = without_places(x.take());
        }
    }
    v
}

/// `[reports] annual_csv`: a year declared in a CSV gives the declaration the
/// `[[sites.annual]]` table gives, every figure saying where it was read; a
/// bad CSV is refused by `check-config` with its file, line and key.
#[test]
fn annual_figures_from_a_csv_equal_the_config_table() {
    let dir = tempfile::tempdir().expect("tmp");
    let (head, table) = FULL_SITE.split_once("[[sites.annual]]").expect("annual table");
    let by_config = site_config(dir.path(), "config.toml", "", FULL_SITE);
    std::fs::write(
        dir.path().join("annual.csv"),
        "\u{feff}site;year;grid_functions;cbtg_kw;twh_c;refrigerant_types;cdd_degree_days;cdd_source;eres_goo_kwh;eres_ppa_kwh;cserv_sert;cserv_floor_coverage_pct;cstor_pb;cstor_floor_coverage_pct\r\n\
         caen-1;2025;none;0 kW;32,5;\"R-134a; R-1234ze(E)\";118,4;Copernicus C3S ERA5;600 000 kWh;24000;41250;80 %;3,2;80\r\n",
    )
    .expect("csv");
    let by_csv = site_config(dir.path(), "csv.toml", "[reports]\nannual_csv = [\"annual.csv\"]\n", head);
    assert!(table.contains("eres_goo_kwh = 600000.0"), "the config table the CSV mirrors");
    import_year(dir.path(), &by_config);
    let o = collector(&by_csv, &["check-config"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = |cfg: &Path, file: &str| -> serde_json::Value {
        let out = dir.path().join(file);
        let o = report(cfg, "caen-1", "json", &out, &[]);
        assert!(o.status.success(), "{file}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(out).expect("json")).expect("json")
    };
    let a = json(&by_config, "config.json");
    let b = json(&by_csv, "csv.json");
    assert_eq!(a["missing"], serde_json::json!([]));
    let e = &b["annex_ii_energy"];
    assert_eq!(e["eres_goo_kwh"]["value"], 600000.0);
    assert_eq!(e["eres_goo_kwh"]["declared_in"], "annual.csv:2");
    assert_eq!(a["annex_ii_energy"]["eres_goo_kwh"]["declared_in"], "config.toml:50");
    assert_eq!(b["annex_ii_ict_capacity"]["cstor_pb"]["declared_in"], "annual.csv:2");
    assert_eq!(without_places(a.clone()), without_places(b.clone()), "CSV and config declarations differ");
    assert_ne!(a, b, "the places differ");
    // The CSV rendering carries the place too.
    let out = dir.path().join("csv.csv");
    assert!(report(&by_csv, "caen-1", "csv", &out, &[]).status.success());
    let csv = std::fs::read_to_string(out).expect("csv");
    let row = csv.lines().map(split_csv).find(|r| r[1] == "eres_goo_kwh").expect("row");
    assert_eq!(row.last().map(String::as_str), Some("annual.csv:2"));

    // Refused before anything binds: a bad unit, a figure declared twice.
    std::fs::write(dir.path().join("annual.csv"), "site,year,eres_goo_kwh\ncaen-1,2024,1\ncaen-1,2025,600 MWh\n")
        .expect("csv");
    let o = collector(&by_csv, &["check-config"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("annual.csv:3:13: column 3: `eres_goo_kwh`") && err.contains("in kWh"), "{err}");
    let both = site_config(dir.path(), "both.toml", "[reports]\nannual_csv = [\"annual.csv\"]\n", FULL_SITE);
    std::fs::write(dir.path().join("annual.csv"), "site,year,cstor_pb\ncaen-1,2025,3.2\n").expect("csv");
    let o = collector(&both, &["check-config"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("`cstor_pb` is declared both in both.toml:") && err.contains("annual.csv:2"), "{err}");
}

/// Art. 3(1): the year of commissioning covers commissioning → year end,
/// says so in every format, with the figures of that period only; Art. 3(2):
/// an omitted KPI of the first reporting period is shown with its reason and
/// not counted as missing.
#[test]
fn commissioning_year_covers_its_period_of_operation_with_omissions() {
    let dir = tempfile::tempdir().expect("tmp");
    let site = FULL_SITE
        .replace("entry_into_operation = \"2019-06\"", "entry_into_operation = \"2025-07\"")
        .replace("commissioning_date = \"2019-06-15\"", "commissioning_date = \"2025-07-01\"")
        .replace(
            "year = 2025\n",
            "year = 2025\nomissions = [{ field = \"win_pot_m3\", reason = \"potable water sub-meter installed in 2026\" }]\n",
        );
    let cfg = site_config(dir.path(), "collector.toml", "", &site);
    import_year(dir.path(), &cfg);
    let out = |n: &str| dir.path().join(n);
    for (fmt, file) in [("json", "d.json"), ("csv", "d.csv"), ("xlsx", "d.xlsx")] {
        let o = report(&cfg, "caen-1", fmt, &out(file), &[]);
        assert!(o.status.success(), "{fmt}: the omission is not missing: {}", String::from_utf8_lossy(&o.stderr));
    }
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out("d.json")).expect("json")).expect("json");
    assert_eq!(d["period_start"], "2025-06-30T22:00:00Z", "from the commissioning day, Paris time");
    assert_eq!(d["period_end"], "2025-12-31T23:00:00Z");
    assert_eq!((d["interim"].as_bool(), d["first_reporting_period"].as_bool()), (Some(false), Some(true)));
    let op = &d["operating_period"];
    assert_eq!((op["from"].as_str(), op["to"].as_str()), (Some("2025-07-01"), Some("2025-12-31")));
    assert!(op["statement"].as_str().unwrap_or_default().contains("Art. 3(1)"), "{op}");
    // Six months of readings: the figures and indicators of July–December only.
    let e = &d["annex_ii_energy"];
    let (edc, eit) = (6.0 * 102_000.0, 6.0 * 80_000.0);
    assert!(close(e["edc_kwh"]["value"].as_f64().expect("edc"), edc), "{}", e["edc_kwh"]);
    assert!(close(e["eit_kwh"]["value"].as_f64().expect("eit"), eit), "{}", e["eit_kwh"]);
    assert_eq!(e["eres_goo_kwh"]["value"], 600000.0, "the year's GOs are the period's");
    let pue = d["indicators"].as_array().expect("indicators").iter().find(|i| i["name"] == "pue").expect("pue");
    assert!(close(pue["value"].as_f64().expect("pue"), edc / eit), "{pue}");
    // The omission: null, its reason, listed, not missing.
    assert!(e["win_pot_m3"]["value"].is_null());
    assert_eq!(e["win_pot_m3"]["omitted"], "potable water sub-meter installed in 2026");
    assert_eq!(d["omissions"][0]["field"], "win_pot_m3");
    assert_eq!(d["omissions"][0]["point"], "1(i)");
    assert_eq!(d["missing"], serde_json::json!([]));
    // CSV and XLSX say the same.
    let csv = std::fs::read_to_string(out("d.csv")).expect("csv");
    let rows: Vec<Vec<String>> = csv.lines().skip(1).map(split_csv).collect();
    let env = |k: &str| rows.iter().find(|r| r[0] == "envelope" && r[1] == k).map(|r| r[6].clone()).expect(k);
    assert_eq!(env("operating_period_from"), "2025-07-01");
    assert!(env("operating_period").contains("2025-07-01 to 2025-12-31"));
    assert_eq!(env("first_reporting_period"), "true");
    let om = rows.iter().find(|r| r[0] == "omissions" && r[1] == "win_pot_m3").expect("omission row");
    assert!(om[22].contains("sub-meter installed in 2026"), "{om:?}");
    let mut x: Xlsx<_> = calamine::open_workbook(out("d.xlsx")).expect("xlsx");
    let decl = sheet(&mut x, "Declaration");
    assert!(
        decl.iter().any(|r| r[0] == Data::String("operating_period".into())
            && matches!(&r[1], Data::String(s) if s.contains("2025-07-01 to 2025-12-31"))),
        "{decl:?}"
    );
    let oms = sheet(&mut x, "Omissions");
    assert_eq!(oms[1][0], Data::String("win_pot_m3".into()));
    assert_eq!(oms[1][3], Data::String("potable water sub-meter installed in 2026".into()));
    // The public page.
    let pubdir = out("public");
    let o = collector(
        &cfg,
        &["report", "publication", "--site", "caen-1", "--year", "2025", "--out", &pubdir.display().to_string()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(pubdir.join("caen-1-2025.html")).expect("html");
    assert!(page.contains("data-operating-from=\"2025-07-01\"") && page.contains("first year of operation"));
    assert!(
        page.contains("data-field=\"win_pot_m3\" data-omitted=\"true\"")
            && page.contains("sub-meter installed in 2026")
    );
    // No declaration for a year before commissioning.
    let o = collector(&cfg, &["report", "eed", "--site", "caen-1", "--year", "2024", "--draft"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no reporting period in 2024"));
    // An omission outside the first reporting period is refused at load.
    let late = site.replace("year = 2025\nomissions", "year = 2026\nomissions");
    let bad = site_config(dir.path(), "late.toml", "", &late);
    let o = collector(&bad, &["check-config"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("first reporting period") && err.contains("late.toml:"), "{err}");
}
