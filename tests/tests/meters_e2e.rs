//! Facility meter readings through the real collector: `import-meters` on a
//! French Excel CSV and the HTTP upload, exact shares through the energy API,
//! idempotent re-imports, and a bad file refused whole with its line numbers.

use std::process::Command;
use std::time::Duration;

use domesday_tests::{Collector, binary, collector_output, free_port, get_text, site_config};

const TOKEN: &str = "meters-token";

fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    site_config(
        dir,
        port,
        TOKEN,
        r#"
[[sites.meters]]
id = "tgbt"
role = "utility_in"
kind = "csv"
unit = "kWh"

[[sites.meters]]
id = "eau"
role = "water_in"
kind = "csv"
unit = "m3"
"#,
    )
}

fn import(cfg: &std::path::Path, file: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = collector_output(
        Command::new(binary("domesday-collector"))
            .args(["import-meters", "--site", "caen-1", "--config"])
            .arg(cfg)
            .arg(file)
            .args(extra),
        cfg.parent().expect("the config's directory"),
    );
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn csv_imports_are_exact_idempotent_and_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let cfg = config(dir.path(), port);
    // French Excel: BOM, ';', decimal comma, local Paris times, CRLF. 2026-01-01 00:00 Paris = 2025-12-31T23:00Z.
    let csv = "\u{feff}start;end;meter;value\r\n2026-01-01 00:00:00;2026-01-01 00:15:00;tgbt;1 200,5\r\n2026-01-01 00:15:00;2026-01-01 00:30:00;tgbt;1 199,5\r\n";
    let file = dir.path().join("releve.csv");
    std::fs::write(&file, csv).expect("csv");
    let excel = ["--delimiter", ";", "--decimal-comma", "--timezone", "Europe/Paris"];
    let (ok, out) = import(&cfg, &file, &excel);
    assert!(ok && out.contains("2 booked"), "{out}");
    let (ok, out) = import(&cfg, &file, &excel);
    assert!(ok && out.contains("0 booked, 2 already there"), "{out}");
    // A bad file: nothing stored, each bad line named.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "timestamp,meter,value\n2026-01-01T00:00:00Z,eau,10\n2026-01-01T01:00:00Z,gaz,3\nhier,eau,11\n",
    )
    .expect("csv");
    let (ok, out) = import(&cfg, &bad, &[]);
    assert!(
        !ok && out.contains("bad.csv:line 3") && out.contains("bad.csv:line 4") && out.contains("nothing was imported"),
        "{out}"
    );

    let c = Collector::spawn(dir.path(), port, &cfg);
    let get = |q: &str| -> serde_json::Value {
        serde_json::from_str(&get_text(&c.url(&format!("/api/v1/energy?site=caen-1&{q}")), Duration::from_secs(10)))
            .expect("json")
    };
    let half = get("meter=tgbt&from=2025-12-31T23:00:00Z&to=2025-12-31T23:30:00Z");
    assert_eq!(half["energy_microjoules"], (2_400_000_000i128 * 3_600_000).to_string(), "{half}"); // 2400 kWh
    let five = get("role=utility_in&from=2025-12-31T23:00:00Z&to=2025-12-31T23:05:00Z");
    assert_eq!(five["energy_joules"], 1200.5 / 3.0 * 3.6e6, "{five}");
    // The bad file's valid row was not stored either.
    assert_eq!(
        get("meter=eau&from=2025-12-31T23:00:00Z&to=2026-01-01T02:00:00Z")["volume_liters"],
        serde_json::Value::Null
    );

    // The same through HTTP, with the site's write token; registers this time.
    let client = reqwest::blocking::Client::new();
    let body = "timestamp,meter,value\n2026-01-01T00:00:00Z,eau,1000.5\n2026-01-01T01:00:00Z,eau,1003\n";
    let url = c.url("/api/v1/sites/caen-1/meter-readings");
    let resp = client.post(&url).bearer_auth(TOKEN).header("content-type", "text/csv").body(body).send().expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = serde_json::from_str(&resp.text().expect("body")).expect("json");
    assert_eq!(v["booked"], 2, "{v}");
    let water = get("meter=eau&from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z");
    assert_eq!(water["volume_liters"], 2500.0, "{water}");
    let resp = client.post(&url).bearer_auth("wrong").body(body).send().expect("post");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client.post(&url).bearer_auth(TOKEN).body("timestamp;meter;value\n").send().expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap_or_default().contains("--delimiter"));
}

fn collector_cli(cfg: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = collector_output(
        Command::new(binary("domesday-collector")).args(args).arg("--config").arg(cfg),
        cfg.parent().expect("the config's directory"),
    );
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_meter_swap_and_a_correction_are_booked_and_kept_with_who_and_why() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), free_port());
    let file = dir.path().join("eau.csv");
    std::fs::write(&file, "timestamp,meter,value\n2026-02-01T00:00:00Z,eau,1000.5\n2026-02-01T01:00:00Z,eau,1003\n2026-02-01T02:00:00Z,eau,5\n")
        .expect("csv");
    // The swap happened at 01:30 (old meter ends at 1004, new one starts at 2): recorded first,
    // so the 02:00 reading of the new meter counts from 2, not from zero.
    let (ok, out) = collector_cli(
        &cfg,
        &[
            "swap-meter",
            "--site",
            "caen-1",
            "--meter",
            "eau",
            "--at",
            "2026-02-01T01:30:00Z",
            "--final",
            "1004",
            "--initial",
            "2",
            "--by",
            "alice",
            "--reason",
            "meter replaced (leak)",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = import(&cfg, &file, &[]);
    assert!(ok, "{out}");
    let (ok, out) = collector_cli(
        &cfg,
        &[
            "correct",
            "--site",
            "caen-1",
            "--meter",
            "eau",
            "--from",
            "2026-02-01T01:00:00Z",
            "--to",
            "2026-02-01T02:00:00Z",
            "--value",
            "-0.5",
            "--by",
            "bob",
            "--reason",
            "test flush of the new meter",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = collector_cli(
        &cfg,
        &[
            "correct",
            "--site",
            "caen-1",
            "--meter",
            "eau",
            "--from",
            "2026-02-01T01:00:00Z",
            "--to",
            "2026-02-01T02:00:00Z",
            "--value",
            "1",
            "--by",
            "",
            "--reason",
            "",
        ],
    );
    assert!(!ok && out.contains("--by"), "{out}");
    let energy = |db: &std::path::Path| -> serde_json::Value {
        let (ok, out) = collector_cli(
            &cfg,
            &[
                "energy",
                "--site",
                "caen-1",
                "--meter",
                "eau",
                "--from",
                "2026-02-01T00:00:00Z",
                "--to",
                "2026-02-01T02:00:00Z",
                "--db",
                &db.display().to_string(),
            ],
        );
        assert!(ok, "{out}");
        serde_json::from_str(&out).expect("json")
    };
    let e = energy(&dir.path().join("domesday.db"));
    // 2.5 m³ + (1004 − 1003) + (5 − 2) − 0.5 = 6 m³.
    assert_eq!(e["volume_liters"], 6000.0, "{e}");
    let adj = e["adjustments"].as_array().expect("adjustments");
    assert_eq!(adj.len(), 2, "{e}");
    assert!(
        adj.iter().any(|a| a["kind"] == "swap" && a["author"] == "alice" && a["final_micro"] == "1004000000"),
        "{e}"
    );
    assert!(
        adj.iter().any(|a| a["kind"] == "correction" && a["author"] == "bob" && a["value_micro"] == "-500000"),
        "{e}"
    );
    // An online backup answers the same. On PostgreSQL `backup` refuses and names PostgreSQL's own tools.
    let backup = dir.path().join("backup.db");
    let (ok, out) = collector_cli(&cfg, &["backup", &backup.display().to_string()]);
    if domesday_tests::store::on_postgres() {
        assert!(!ok && out.contains("SQLite ledger file only") && out.contains("pg_dump"), "{out}");
        assert!(!backup.exists());
        return;
    }
    assert!(ok, "{out}");
    assert_eq!(energy(&backup)["volume_liters"], 6000.0);
    let (ok, out) = collector_cli(&cfg, &["backup", &backup.display().to_string()]);
    assert!(!ok && out.contains("exists"), "{out}");
}
