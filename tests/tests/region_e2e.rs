//! `domesday-collector report region` through the real binary: the sites of
//! this collector's ledger in region `normandie` mixed with the declaration
//! of another operator, written by another collector's `report eed`.
//!
//! - JSON and CSV compared byte for byte with golden files (`UPDATE_GOLDEN=1`
//!   rewrites them) and twice the same bytes;
//! - each site's figures equal its own declaration and the indicators API;
//!   the regional PUE is given as the ratio of sums and as Annex IV's
//!   energy-weighted mean, both recomputed here;
//! - the year-on-year change from the ledger's previous year and from an
//!   imported previous-year declaration;
//! - the XLSX read back (calamine): typed cells equal to the JSON;
//! - the HTML rendered by headless Chromium: the screenshot is not blank and
//!   every number of the rendered page equals the JSON;
//! - `GET /reports/region` answers the command's page, with a declaration
//!   listed in `[reports]` fetched from a 127.0.0.1 server;
//! - a malformed declaration is refused with its file and field named.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use calamine::{Data, Reader, Xlsx};
use domesday_tests::{
    binary, close, collector_output, declaration_keys, free_port, get_text, mock_http, report_golden, report_meters,
    serve_at_epoch, split_csv,
};

const TOKEN: &str = "region-token";
const EPOCH: &str = "1767225600"; // SOURCE_DATE_EPOCH: 2026-01-01T00:00:00Z

fn site(id: &str, name: &str, operator: &str, region: &str, token: &Path, full: bool) -> String {
    format!(
        "\n[[sites]]\nid = \"{id}\"\nname = \"{name}\"\noperator = \"{operator}\"\nregion = \"{region}\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n{}{}",
        token.display().to_string(),
        if full { declaration_keys(2025) } else { String::new() },
        report_meters()
    )
}

/// A collector config in `dir` with `sites` and `extra` top-level text.
fn config(dir: &Path, port: u16, sites: &[(&str, &str, &str, &str, bool)], extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndb = {:?}\n{extra}\n[carbon]\nsource = \"static\"\ngrid_zone = \"FR\"\nbasis = \"lifecycle\"\n",
        dir.join("domesday.db").display().to_string()
    );
    for (id, name, op, region, full) in sites {
        // Each site its own write token: the collector refuses two sites sharing one.
        let token = dir.join(format!("{id}.token"));
        std::fs::write(&token, format!("{TOKEN}-{id}")).expect("token");
        text.push_str(&site(id, name, op, region, &token, *full));
    }
    let p = dir.join("collector.toml");
    std::fs::write(&p, text).expect("config");
    p
}

/// Monthly intervals of `year` in Paris time with per-month values
/// (utility, ups, pv, heat, water); month m scales utility by `1 + m/100`.
fn readings(year: i16, v: [f64; 5]) -> String {
    let tz = jiff::tz::TimeZone::get("Europe/Paris").expect("tz");
    let at = |y: i16, m: i8| jiff::civil::date(y, m, 1).to_zoned_datetime(tz.clone()).expect("zoned").timestamp();
    let mut csv = String::from("start,end,meter,value\n");
    for m in 1..=12i8 {
        let (a, b) = (at(year, m), if m == 12 { at(year + 1, 1) } else { at(year, m + 1) });
        let utility = v[0] * f64::from(100 + i32::from(m)) / 100.0;
        for (meter, x) in [
            ("edf", utility),
            ("ups", v[1]),
            ("pv", v[2]),
            ("chaleur", v[3]),
            ("eau", v[4]),
            ("eau-pot", v[4] / 5.0 * 2.0),
        ] {
            csv.push_str(&format!("{a},{b},{meter},{x}\n"));
        }
    }
    csv
}

fn run(cfg: &Path, cwd: &Path, args: &[&str]) -> Output {
    collector_output(
        Command::new(binary("domesday-collector"))
            .args(args)
            .arg("--config")
            .arg(cfg)
            .current_dir(cwd)
            .env("SOURCE_DATE_EPOCH", EPOCH),
        cwd,
    )
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn import(cfg: &Path, dir: &Path, site: &str, name: &str, csv: &str) {
    let p = dir.join(name);
    std::fs::write(&p, csv).expect("csv");
    ok(run(cfg, dir, &["import-meters", "--site", site, &p.display().to_string()]));
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The seeded world: operator A's collector (ledger sites of two regions)
/// and operator B's declarations of 2025 and 2024, written by B's own collector.
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cfg: PathBuf,
    port: u16,
}

fn world() -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let a = dir.join("a");
    let cfg = config(
        &a,
        port,
        &[
            ("caen-1", "Caen 1", "Normandie DC", "normandie", true),
            ("rouen-1", "Rouen 1", "Normandie DC", "normandie", false),
            ("brest-1", "Brest 1", "Normandie DC", "bretagne", false),
        ],
        "",
    );
    import(&cfg, &a, "caen-1", "c25.csv", &readings(2025, [100_000.0, 80_000.0, 2_000.0, 5_000.0, 50.0]));
    import(&cfg, &a, "caen-1", "c24.csv", &readings(2024, [110_000.0, 80_000.0, 2_000.0, 5_000.0, 50.0]));
    import(&cfg, &a, "rouen-1", "r25.csv", &readings(2025, [60_000.0, 40_000.0, 0.0, 0.0, 30.0]));
    import(&cfg, &a, "brest-1", "b25.csv", &readings(2025, [999_000.0, 500_000.0, 0.0, 0.0, 1.0]));

    // Operator B: its own collector writes its declarations.
    let b = dir.join("b");
    let bcfg = config(&b, free_port(), &[("le-havre-1", "Le Havre 1", "Seine Data", "normandie", true)], "");
    import(&bcfg, &b, "le-havre-1", "h25.csv", &readings(2025, [300_000.0, 250_000.0, 0.0, 20_000.0, 10.0]));
    import(&bcfg, &b, "le-havre-1", "h24.csv", &readings(2024, [330_000.0, 250_000.0, 0.0, 20_000.0, 10.0]));
    for (y, extra) in [("2025", None), ("2024", Some("--draft"))] {
        let out = dir.join(format!("seine-{y}.json"));
        let mut args = vec!["report", "eed", "--site", "le-havre-1", "--year", y, "--out"];
        let o = out.display().to_string();
        args.push(&o);
        args.extend(extra);
        ok(run(&bcfg, &b, &args));
    }
    World { _tmp: tmp, dir, cfg, port }
}

fn region(w: &World, format: &str, out: &str) -> Vec<u8> {
    let o = ok(run(
        &w.cfg,
        &w.dir,
        &[
            "report",
            "region",
            "--region",
            "normandie",
            "--year",
            "2025",
            "--format",
            format,
            "--declaration",
            "seine-2025.json",
            "--declaration",
            "seine-2024.json",
            "--out",
            out,
        ],
    ));
    drop(o);
    std::fs::read(w.dir.join(out)).expect("output")
}

#[test]
fn region_report_mixes_ledger_sites_and_declarations() {
    let w = world();
    let json_a = region(&w, "json", "r.json");
    let json_b = region(&w, "json", "r2.json");
    assert_eq!(json_a, json_b, "the same inputs give the same bytes");
    let csv_a = region(&w, "csv", "r.csv");
    assert_eq!(csv_a, region(&w, "csv", "r2.csv"));
    let xlsx_a = region(&w, "xlsx", "r.xlsx");
    assert_eq!(xlsx_a, region(&w, "xlsx", "r2.xlsx"));
    let json_text = String::from_utf8(json_a).expect("utf-8");
    let csv_text = String::from_utf8(csv_a).expect("utf-8");
    report_golden("region-normandie-2025.json", &json_text);
    report_golden("region-normandie-2025.csv", &csv_text);
    let r: serde_json::Value = serde_json::from_str(&json_text).expect("json");

    // Who is in: the two ledger sites of the region and operator B's declaration; not Brest.
    let sites = r["sites"].as_array().expect("sites");
    let ids: Vec<&str> = sites.iter().filter_map(|s| s["site"].as_str()).collect();
    assert_eq!(ids, ["caen-1", "rouen-1", "le-havre-1"], "sorted by operator then site");
    let s = |id: &str| sites.iter().find(|s| s["site"] == id).cloned().expect(id);
    assert_eq!(s("le-havre-1")["source"], "declaration");
    assert_eq!(s("le-havre-1")["origin"], "seine-2025.json");
    assert_eq!(s("le-havre-1")["operator"], "Seine Data");
    assert_eq!(s("caen-1")["source"], "ledger");
    assert_eq!(r["totals"]["sites"], 3);
    assert_eq!(r["totals"]["sites_from_declarations"], 1);
    assert_eq!(r["interim"], false);
    let used: Vec<(&str, &str)> = r["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|x| (x["origin"].as_str().unwrap_or_default(), x["used_for"].as_str().unwrap_or_default()))
        .collect();
    assert!(used.contains(&("seine-2024.json", "previous_year")), "{used:?}");

    // Each site's figures are its own declaration's: operator B's file, and caen-1's `report eed`.
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.dir.join("seine-2025.json")).expect("b")).expect("json");
    let ind = |d: &serde_json::Value, n: &str| {
        d["indicators"].as_array().expect("ind").iter().find(|i| i["name"] == n).cloned().expect(n)
    };
    assert_eq!(s("le-havre-1")["edc_kwh"], b["annex_ii_energy"]["edc_kwh"]["value"]);
    assert_eq!(s("le-havre-1")["pue"], ind(&b, "pue")["value"]);
    assert_eq!(s("le-havre-1")["wue_class"], ind(&b, "wue")["class"]);
    ok(run(&w.cfg, &w.dir, &["report", "eed", "--site", "caen-1", "--year", "2025", "--out", "caen.json"]));
    let caen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.dir.join("caen.json")).expect("caen")).expect("json");
    for (k, want) in [
        ("edc_kwh", &caen["annex_ii_energy"]["edc_kwh"]["value"]),
        ("eit_kwh", &caen["annex_ii_energy"]["eit_kwh"]["value"]),
        ("win_m3", &caen["annex_ii_energy"]["win_m3"]["value"]),
        ("pue", &ind(&caen, "pue")["value"]),
        ("cue", &ind(&caen, "cue")["value"]),
        ("ref", &ind(&caen, "ref")["value"]),
        ("erf", &ind(&caen, "erf")["value"]),
    ] {
        assert_eq!(&s("caen-1")[k], want, "caen-1 {k}");
    }
    // Recomputed from the readings: EDC = grid (1 + m/100 per month) + PV.
    let grid: f64 = (1..=12).map(|m| 100_000.0 * (1.0 + f64::from(m) / 100.0)).sum();
    assert!(close(f(&s("caen-1")["edc_kwh"]), grid + 24_000.0));
    assert!(close(f(&s("caen-1")["pue"]), (grid + 24_000.0) / 960_000.0));

    // Monthly figures: 12 months whose EDC adds up to the year.
    let months = s("caen-1")["monthly"].as_array().expect("monthly").clone();
    assert_eq!(months.len(), 12);
    assert_eq!(months[0]["month"], "2025-01");
    let sum: f64 = months.iter().map(|m| f(&m["edc_kwh"])).sum();
    assert!(close(sum, f(&s("caen-1")["edc_kwh"])), "{sum}");
    assert!(close(f(&months[0]["pue"]), (101_000.0 + 2_000.0) / 80_000.0), "{}", months[0]);
    assert!(f(&months[0]["grid_g_per_kwh"]) > 0.0);
    assert_eq!(months[0]["carbon_fallback"], false);
    assert!(s("le-havre-1")["monthly"].as_array().expect("m").is_empty());

    // Regional PUE: the ratio of sums and the Annex IV energy-weighted mean, each recomputed.
    let (mut e, mut it, mut ew) = (0.0, 0.0, 0.0);
    for x in sites {
        e += f(&x["edc_kwh"]);
        it += f(&x["eit_kwh"]);
        ew += f(&x["edc_kwh"]) * f(&x["pue"]);
    }
    let pue = r["indicators"].as_array().expect("ind").iter().find(|i| i["name"] == "pue").expect("pue");
    assert!(close(f(&pue["ratio_of_sums"]), e / it), "{pue}");
    assert!(close(f(&pue["energy_weighted"]), ew / e), "{pue}");
    assert!((f(&pue["ratio_of_sums"]) - f(&pue["energy_weighted"])).abs() > 1e-6, "the two must differ here");
    assert_eq!(pue["energy_weighted_source"], "Commission Delegated Regulation (EU) 2024/1364, Annex IV");
    assert!(close(f(&r["totals"]["edc_kwh"]), e));

    // Year on year: caen-1 from the ledger's 2024, le-havre-1 from the imported 2024 declaration.
    let grid24: f64 = (1..=12).map(|m| 110_000.0 * (1.0 + f64::from(m) / 100.0)).sum();
    let prev = grid24 + 24_000.0;
    assert!(close(f(&s("caen-1")["previous"]["edc_kwh"]), prev));
    assert!(close(f(&s("caen-1")["edc_change_ratio"]), (grid + 24_000.0 - prev) / prev));
    assert_eq!(s("le-havre-1")["previous"]["origin"], "seine-2024.json");
    assert!(f(&s("le-havre-1")["pue_change"]) < 0.0);
    assert!(s("rouen-1")["previous"].is_null());

    // Ranking by PUE: rouen-1 (1.5x) is last.
    let mut by_pue: Vec<(f64, &str)> =
        sites.iter().map(|x| (f(&x["pue"]), x["site"].as_str().unwrap_or_default())).collect();
    by_pue.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (n, (_, id)) in by_pue.iter().enumerate() {
        assert_eq!(s(id)["pue_rank"], n as u64 + 1, "{id}");
    }

    // The indicators API over the same year gives caen-1's figures.
    let c = serve_at_epoch(&w.dir, w.port, &w.cfg, EPOCH);
    let api: serde_json::Value = serde_json::from_str(&get_text(
        &c.url("/api/v1/sites/caen-1/indicators?from=2024-12-31T23:00:00Z&to=2025-12-31T23:00:00Z&step=1y"),
        Duration::from_secs(30),
    ))
    .expect("api");
    let api_pue = api["periods"][0]["indicators"]
        .as_array()
        .expect("ind")
        .iter()
        .find(|i| i["name"] == "pue" && i["category"] == 1)
        .cloned()
        .expect("pue");
    assert_eq!(s("caen-1")["pue"], api_pue["value"]);
    assert_eq!(s("caen-1")["edc_kwh"], api_pue["numerator"]);
    let api_month: serde_json::Value = serde_json::from_str(&get_text(
        &c.url("/api/v1/sites/caen-1/indicators?from=2024-12-31T23:00:00Z&to=2025-12-31T23:00:00Z&step=1mo"),
        Duration::from_secs(30),
    ))
    .expect("api");
    for (m, p) in months.iter().zip(api_month["periods"].as_array().expect("periods")) {
        let pp = p["indicators"].as_array().expect("i").iter().find(|i| i["name"] == "pue" && i["category"] == 1);
        assert_eq!(m["pue"], pp.expect("pue")["value"], "{}", m["month"]);
    }

    // CSV: every site figure is the JSON's.
    let rows: Vec<Vec<String>> = csv_text.lines().skip(1).map(split_csv).collect();
    for x in sites {
        let id = x["site"].as_str().unwrap_or_default();
        for k in ["edc_kwh", "eit_kwh", "pue", "wue", "erf", "ref", "cue", "coverage_ratio", "pue_rank"] {
            let row = rows.iter().find(|r| r[0] == "site" && r[1] == id && r[5] == k).expect("csv row");
            assert_eq!(row[6].parse::<f64>().ok(), x[k].as_f64(), "CSV {id} {k}");
        }
    }
    let row = rows.iter().find(|r| r[0] == "region_indicator" && r[5] == "pue.energy_weighted").expect("row");
    assert_eq!(row[6].parse::<f64>().ok(), pue["energy_weighted"].as_f64());

    // XLSX: typed cells equal to the JSON, one sheet per section.
    let mut x: Xlsx<_> = calamine::open_workbook(w.dir.join("r.xlsx")).expect("xlsx");
    assert_eq!(x.sheet_names(), ["Summary", "Indicators", "Sites", "Monthly", "Data quality", "Sources"]);
    let sheet = x.worksheet_range("Sites").expect("Sites");
    let rows: Vec<Vec<Data>> = sheet.rows().map(|r| r.to_vec()).collect();
    let col = |h: &str| rows[0].iter().position(|c| c == &Data::String(h.into())).unwrap_or_else(|| panic!("{h}"));
    for xs in sites {
        let id = xs["site"].as_str().unwrap_or_default();
        let row = rows.iter().find(|r| r[0] == Data::String(id.into())).expect("xlsx row");
        assert_eq!(row[col("EDC (kWh)")], Data::Float(f(&xs["edc_kwh"])), "{id}");
        assert_eq!(row[col("PUE (ratio)")], Data::Float(f(&xs["pue"])), "{id}");
        assert_eq!(row[col("Interim")], Data::Bool(false), "{id}");
        assert!(matches!(row[col("Period start (UTC)")], Data::DateTime(_)), "{id}: a date cell");
    }
    let months_sheet: Vec<Vec<Data>> =
        x.worksheet_range("Monthly").expect("Monthly").rows().map(|r| r.to_vec()).collect();
    assert_eq!(months_sheet.len(), 1 + 24, "caen-1 and rouen-1, 12 months each");
    assert_eq!(months_sheet[1][10], Data::Float(f(&months[0]["pue"])));

    // HTML: rendered by Chromium; every number of the page is the JSON's.
    let html = region(&w, "html", "r.html");
    let page = String::from_utf8(html.clone()).expect("utf-8");
    assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"), "self-contained");
    assert!(!page.contains("<script") && !page.contains("<link"), "no external resource");
    let dom = chromium(&["--dump-dom", &file_url(&w.dir.join("r.html"))]);
    let checked = check_numbers(&String::from_utf8_lossy(&dom.stdout), &r);
    assert!(checked >= 40, "{checked} numbers checked");
    let png = w.dir.join("region.png");
    chromium(&[
        "--window-size=1200,3600",
        &format!("--screenshot={}", png.display()),
        &file_url(&w.dir.join("r.html")),
    ]);
    let (width, height, ink, colours) = png_ink(&std::fs::read(&png).expect("screenshot"));
    assert!(width >= 1000 && height >= 3000, "{width}×{height}");
    assert!(ink > 0.03, "the screenshot is (nearly) blank: {ink} of the pixels are not white");
    assert!(colours > 20, "{colours} colours: no chart?");
    if let Some(to) = std::env::var_os("REGION_SCREENSHOT") {
        std::fs::copy(&png, to).expect("copy screenshot");
    }

    // Over HTTP: the command's page.
    let body = get_bytes(&c.url("/reports/region?region=normandie&year=2025"));
    assert_eq!(body.0, 200);
    let command_page =
        ok(run(&w.cfg, &w.dir, &["report", "region", "--region", "normandie", "--year", "2025", "--format", "html"]))
            .stdout;
    assert_eq!(body.1, command_page, "HTTP and command differ");
    assert_eq!(get_bytes(&c.url("/reports/region?year=2025")).0, 400);
    assert_eq!(get_bytes(&c.url("/reports/region?region=nowhere&year=2025")).0, 404);
}

/// A declaration listed in `[reports]` as a URL (a 127.0.0.1 server) counts
/// like a file, in the command and over HTTP; `--from/--to` is interim.
#[test]
fn declarations_from_the_config_and_urls() {
    let w = world();
    let decl = std::fs::read_to_string(w.dir.join("seine-2025.json")).expect("decl");
    let mport =
        mock_http(move |path| if path == "/decl/seine-2025.json" { (200, decl.clone()) } else { (404, "{}".into()) });
    let port = free_port();
    let c2 = w.dir.join("c2");
    let url = format!("http://127.0.0.1:{mport}/decl/seine-2025.json");
    std::fs::create_dir_all(&c2).expect("dir");
    let mut text = std::fs::read_to_string(&w.cfg)
        .expect("cfg")
        .replace(&format!("listen = \"127.0.0.1:{}\"", w.port), &format!("listen = \"127.0.0.1:{port}\""));
    text.push_str(&format!("\n[reports]\ndeclarations = [{url:?}]\n"));
    let cfg = c2.join("collector.toml");
    std::fs::write(&cfg, text).expect("cfg");
    let o = ok(run(&cfg, &w.dir, &["report", "region", "--region", "normandie", "--year", "2025", "--format", "json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let havre = r["sites"].as_array().expect("sites").iter().find(|s| s["site"] == "le-havre-1").cloned().expect("b");
    assert_eq!(havre["origin"], url.as_str());
    assert_eq!(r["totals"]["sites"], 3);
    let c = serve_at_epoch(&c2, port, &cfg, EPOCH);
    let (code, body) = get_bytes(&c.url("/reports/region?region=normandie&year=2025"));
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains(&url));
    drop(c);

    // An interim period: marked interim; the 2025 declaration is not of that period.
    let o = ok(run(
        &w.cfg,
        &w.dir,
        &[
            "report",
            "region",
            "--region",
            "normandie",
            "--from",
            "2025-02-28T23:00:00Z",
            "--to",
            "2025-03-31T22:00:00Z",
            "--format",
            "json",
            "--declaration",
            "seine-2025.json",
        ],
    ));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["interim"], true);
    assert!(r["sites"].as_array().expect("sites").iter().all(|s| s["interim"] == true));
    assert_eq!(r["totals"]["sites"], 2, "{}", r["sources"]);
    let o = ok(run(
        &w.cfg,
        &w.dir,
        &[
            "report",
            "region",
            "--region",
            "normandie",
            "--from",
            "2025-02-28T23:00:00Z",
            "--to",
            "2025-03-31T22:00:00Z",
        ],
    ));
    assert!(String::from_utf8_lossy(&o.stdout).contains("data-interim=\"true\""));
}

/// A malformed declaration is refused: the file and the field are named, nothing is written.
#[test]
fn malformed_declaration_is_refused_with_file_and_field() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let cfg = config(&dir.join("a"), free_port(), &[], "");
    let good = r#"{"schema": "domesday.eed-declaration", "schema_version": "1.0.0", "site": "x",
        "reporting_year": 2025, "period_start": "2024-12-31T23:00:00Z", "period_end": "2025-12-31T23:00:00Z",
        "interim": false,
        "annex_i": {"dc_name": {"value": "X"}, "operator_name": {"value": "O"}, "location_lau_code": {"value": null},
                    "dc_type": {"value": null}},
        "annex_ii_energy": {"pdit_kw": {"value": 600, "unit": "kW"}, "edc_kwh": {"value": EDC, "unit": "kWh"},
            "edc_bg_kwh": {"value": 0, "unit": "kWh"}, "eit_kwh": {"value": 100, "unit": "kWh"},
            "eit_basis": {"value": "ups_cat1"}, "win_m3": {"value": null, "unit": "m3"},
            "ereuse_kwh": {"value": null, "unit": "kWh"}, "eres_tot_kwh": {"value": null, "unit": "kWh"}},
        "indicators": [{"name": "pue", "value": 1.5, "numerator": 150, "denominator": 100, "category": 1}]}"#;
    std::fs::write(dir.join("bad.json"), good.replace("EDC", "\"a lot\"")).expect("bad");
    std::fs::write(dir.join("ok.json"), good.replace("EDC", "150")).expect("ok");
    std::fs::write(dir.join("notjson.json"), "{ nope").expect("nj");
    let out = dir.join("out.json");
    let args = |decl: &str| {
        vec![
            "report".to_string(),
            "region".into(),
            "--region".into(),
            "r".into(),
            "--year".into(),
            "2025".into(),
            "--format".into(),
            "json".into(),
            "--declaration".into(),
            decl.into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let call = |decl: &str| {
        let a = args(decl);
        run(&cfg, dir, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = call("bad.json");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.json: field `annex_ii_energy.edc_kwh.value`: must be a number or null, found a string"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written");
    let o = call("notjson.json");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("notjson.json: not JSON"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = call("missing.json");
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.json: cannot read"));
    // The same declaration, valid: a region of declarations only (no ledger).
    ok(call("ok.json"));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("out")).expect("json");
    assert_eq!(r["sites"][0]["pue"], 1.5);
    assert_eq!(r["indicators"][0]["ratio_of_sums"], 1.5);
}

fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::blocking::Client::new().get(url).timeout(Duration::from_secs(60)).send().expect("GET");
    (r.status().as_u16(), r.bytes().expect("body").to_vec())
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// Headless Chromium (Debian package `chromium`, installed by test.sh).
fn chromium(args: &[&str]) -> Output {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("headless Chromium is required: apt-get install chromium (test.sh installs it)");
    let profile = tempfile::tempdir().expect("profile");
    let o = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(args)
        .output()
        .expect("run chromium");
    assert!(o.status.success(), "chromium: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Checks every `data-v` number of the rendered page against the JSON and
/// its displayed text against the value rounded; returns how many.
fn check_numbers(dom: &str, r: &serde_json::Value) -> usize {
    let mut n = 0;
    for chunk in dom.split("data-field=\"").skip(1) {
        let attr = |name: &str| {
            chunk.split(&format!("{name}=\"")).nth(1).and_then(|s| s.split('"').next()).map(str::to_string)
        };
        let field = chunk.split('"').next().unwrap_or_default().to_string();
        let Some(v) = attr("data-v") else { continue };
        let site = attr("data-site").unwrap_or_default();
        let want = if let Some(k) = field.strip_prefix("totals.") {
            r["totals"][k].clone()
        } else if let Some((name, k)) = field.split_once('.') {
            r["indicators"].as_array().expect("i").iter().find(|i| i["name"] == name).expect("ind")[k].clone()
        } else {
            r["sites"].as_array().expect("s").iter().find(|s| s["site"] == site.as_str()).expect("site")[&field].clone()
        };
        let got: f64 = v.parse().unwrap_or_else(|_| panic!("{field} {site}: {v}"));
        assert_eq!(Some(got), want.as_f64(), "{field} of {site:?}: page {v}, JSON {want}");
        // The displayed text: the value rounded to the decimals shown.
        let text = chunk.split('>').nth(1).and_then(|s| s.split('<').next()).unwrap_or_default();
        let clean: String = text.chars().filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-').collect();
        let shown: f64 = clean.parse().unwrap_or_else(|_| panic!("{field} {site}: text {text:?}"));
        let decimals = clean.split_once('.').map(|(_, d)| d.len()).unwrap_or(0) as i32;
        let scaled = if text.contains('%') { got * 100.0 } else { got };
        assert!((shown - scaled).abs() <= 0.5 * 10f64.powi(-decimals) + 1e-9, "{field} {site}: {text} vs {got}");
        n += 1;
    }
    n
}

/// Width, height, share of non-white pixels and number of distinct colours of a PNG (8-bit RGB/RGBA).
fn png_ink(png: &[u8]) -> (u32, u32, f64, usize) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut w, mut h, mut channels) = (0u32, 0u32, 0usize);
    let mut idat = Vec::new();
    let mut at = 8;
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().expect("len")) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(data[0..4].try_into().expect("w"));
                h = u32::from_be_bytes(data[4..8].try_into().expect("h"));
                assert_eq!(data[8], 8, "8-bit");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    c => panic!("colour type {c}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).expect("inflate");
    let stride = w as usize * channels;
    let mut prev = vec![0u8; stride];
    let mut cur = vec![0u8; stride];
    let (mut ink, mut colours) = (0usize, std::collections::HashSet::new());
    for y in 0..h as usize {
        let line = &raw[y * (stride + 1)..(y + 1) * (stride + 1)];
        let filter = line[0];
        for i in 0..stride {
            let a = if i >= channels { cur[i - channels] } else { 0 };
            let b = prev[i];
            let c = if i >= channels { prev[i - channels] } else { 0 };
            let x = line[i + 1];
            cur[i] = match filter {
                0 => x,
                1 => x.wrapping_add(a),
                2 => x.wrapping_add(b),
                3 => x.wrapping_add(((u16::from(a) + u16::from(b)) / 2) as u8),
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = ((p - i16::from(a)).abs(), (p - i16::from(b)).abs(), (p - i16::from(c)).abs());
                    x.wrapping_add(if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    })
                }
                f => panic!("filter {f}"),
            };
        }
        for px in cur.chunks(channels) {
            if px[..3].iter().any(|v| *v < 240) {
                ink += 1;
            }
            if colours.len() < 10_000 {
                colours.insert([px[0], px[1], px[2]]);
            }
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    (w, h, ink as f64 / (f64::from(w) * f64::from(h)), colours.len())
}

/// `report opendata`: `schema.json` is a valid Table Schema (the official
/// Table Schema 2.0 JSON Schema profile, vendored in `tests/fixtures/tableschema`)
/// and every row of `data.csv` conforms to its fields' types and constraints;
/// `data.json` holds the same rows, equal to the region report's figures.
#[test]
fn opendata_conforms_to_its_table_schema() {
    let w = world();
    ok(run(
        &w.cfg,
        &w.dir,
        &[
            "report",
            "opendata",
            "--region",
            "normandie",
            "--year",
            "2025",
            "--declaration",
            "seine-2025.json",
            "--out",
            "od",
        ],
    ));
    let od = w.dir.join("od");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(od.join("schema.json")).expect("schema")).expect("json");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tableschema");
    assert!(std::fs::read_to_string(root.join("LICENSE.md")).expect("licence").contains("public domain"));
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tableschema-2.0.json")).expect("profile"))
            .expect("profile json");
    let validator = jsonschema::draft7::new(&profile).expect("a valid draft-07 schema");
    let errors: Vec<String> = validator.iter_errors(&schema).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "schema.json:\n{}", errors.join("\n"));
    // The profile refuses what it should: an unknown field type.
    let mut bad = schema.clone();
    bad["fields"][0]["type"] = serde_json::json!("text");
    assert!(!validator.is_valid(&bad), "the profile must refuse a field of type \"text\"");

    // Licence, units and both languages.
    assert_eq!(schema["licenses"][0]["name"], "etalab-2.0");
    let fields = schema["fields"].as_array().expect("fields");
    for f in fields {
        for k in ["title", "description", "title_fr", "description_fr"] {
            assert!(f[k].as_str().is_some_and(|s| !s.is_empty()), "{} lacks {k}", f["name"]);
        }
        if f["type"] == "number" {
            assert!(f["unit"].is_string(), "{} has no unit", f["name"]);
        }
    }

    let csv = std::fs::read_to_string(od.join("data.csv")).expect("csv");
    let mut lines = csv.lines();
    let header = split_csv(lines.next().expect("header"));
    let names: Vec<&str> = fields.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(header, names, "the CSV header is the schema's field names, in order");
    let rows: Vec<Vec<String>> = lines.map(split_csv).collect();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        if let Err(e) = conforms(fields, row) {
            panic!("data.csv row {row:?}: {e}");
        }
    }
    // A row with a text in a number field, or a PUE below its minimum, does not conform.
    let pue_at = names.iter().position(|n| *n == "pue").expect("pue");
    let mut bad = rows[0].clone();
    bad[pue_at] = "lots".into();
    assert!(conforms(fields, &bad).is_err());
    bad[pue_at] = "0.9".into();
    assert!(conforms(fields, &bad).is_err());
    // Primary key unique.
    let key: Vec<usize> = schema["primaryKey"]
        .as_array()
        .expect("pk")
        .iter()
        .map(|k| names.iter().position(|n| Some(*n) == k.as_str()).expect("pk field"))
        .collect();
    let mut keys: Vec<Vec<&str>> = rows.iter().map(|r| key.iter().map(|i| r[*i].as_str()).collect()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), rows.len(), "primary key not unique");

    // data.json: the same rows; the values are the region report's.
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(od.join("data.json")).expect("data")).expect("json");
    let o = ok(run(
        &w.cfg,
        &w.dir,
        &[
            "report",
            "region",
            "--region",
            "normandie",
            "--year",
            "2025",
            "--format",
            "json",
            "--declaration",
            "seine-2025.json",
        ],
    ));
    let region: serde_json::Value = serde_json::from_slice(&o.stdout).expect("region json");
    for (row, d) in rows.iter().zip(data.as_array().expect("rows")) {
        let site = region["sites"].as_array().expect("sites").iter().find(|s| s["site"] == d["site_id"]).expect("site");
        for (i, name) in names.iter().enumerate() {
            let v = &d[*name];
            match v {
                serde_json::Value::Number(n) => assert_eq!(row[i].parse::<f64>().ok(), n.as_f64(), "{name}"),
                serde_json::Value::Null => assert_eq!(row[i], "", "{name}"),
                serde_json::Value::Bool(b) => assert_eq!(row[i], b.to_string(), "{name}"),
                other => assert_eq!(Some(row[i].as_str()), other.as_str(), "{name}"),
            }
            let from_region = match *name {
                "region" => serde_json::json!("normandie"),
                "site_id" => site["site"].clone(),
                k => site[k].clone(),
            };
            assert_eq!(v, &from_region, "{name} of {}", d["site_id"]);
        }
    }
}

/// Whether a CSV row conforms to the Table Schema fields (types of the
/// Table Schema specification, `required`, `minimum`, `maximum`, `enum`;
/// the empty string is the missing value).
fn conforms(fields: &[serde_json::Value], row: &[String]) -> Result<(), String> {
    if row.len() != fields.len() {
        return Err(format!("{} cells for {} fields", row.len(), fields.len()));
    }
    for (f, cell) in fields.iter().zip(row) {
        let name = f["name"].as_str().unwrap_or_default();
        let c = &f["constraints"];
        if cell.is_empty() {
            if c["required"] == true {
                return Err(format!("{name}: required"));
            }
            continue;
        }
        let number = match f["type"].as_str() {
            Some("string") => None,
            Some("integer") => {
                Some(cell.parse::<i64>().map_err(|e| format!("{name}: {cell:?} is not an integer: {e}"))? as f64)
            }
            Some("number") => {
                let ok =
                    cell.trim_start_matches(['-', '+']).chars().all(|ch| ch.is_ascii_digit() || ".eE+-".contains(ch));
                let x = cell.parse::<f64>().ok().filter(|x| ok && x.is_finite());
                Some(x.ok_or_else(|| format!("{name}: {cell:?} is not a number"))?)
            }
            Some("boolean") if cell == "true" || cell == "false" => None,
            t => return Err(format!("{name}: {cell:?} is not of type {t:?}")),
        };
        if let Some(x) = number
            && (c["minimum"].as_f64().is_some_and(|m| x < m) || c["maximum"].as_f64().is_some_and(|m| x > m))
        {
            return Err(format!("{name}: {x} outside [{}, {}]", c["minimum"], c["maximum"]));
        }
        if let Some(e) = c["enum"].as_array()
            && !e.iter().any(|v| v.as_str() == Some(cell.as_str()))
        {
            return Err(format!("{name}: {cell:?} not in {e:?}"));
        }
    }
    Ok(())
}
