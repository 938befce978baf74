//! `domesday-collector migrate --to postgres://…` through the real binaries: a site booked by `serve` on SQLite
//! (remote_write pushes of three hosts with a late sample and a replay, facility meter readings uploaded, a
//! correction, a meter swap, a retired host) is moved into a throwaway PostgreSQL database; `serve` on PostgreSQL
//! then answers the energy API (every host, meter, role and the site, over whole hours and ranges cut at minutes),
//! the hosts list, the indicators and `report eed` byte for byte as `serve` on SQLite did. And the refusals: a
//! collector still serving, a PostgreSQL source, a missing ledger, a password in the URL, a target that already
//! holds a ledger. No output ever shows the database's password.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use domesday_tests::pg::{PgCluster, PgDb};
use domesday_tests::{
    Collector, binary, collector_output, free_port, get_text, host_energy_series, now_minute_ms, post_write,
};

const TOKEN: &str = "migrate-site-token-7c1f";
const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;
/// `SOURCE_DATE_EPOCH` of the report commands: both runs write the same bytes.
const EPOCH: &str = "1767225600";

/// The collector's configuration in `dir` with the ledger `db` (and its password file when on PostgreSQL).
fn config(dir: &Path, name: &str, port: u16, db: &str, password_file: Option<&Path>) -> PathBuf {
    std::fs::write(dir.join("t"), format!("{TOKEN}\n")).expect("token");
    let meter = |id: &str, role: &str, unit: &str| {
        format!("\n[[sites.meters]]\nid = \"{id}\"\nrole = \"{role}\"\nkind = \"csv\"\nunit = \"{unit}\"\n")
    };
    let password = password_file.map(|p| format!("db_password_file = {:?}\n", p.display().to_string()));
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {db:?}\n{}\n[[sites]]\nid = \"caen-1\"\nname = \"Caen 1\"\n\
             region = \"normandie\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n{}{}{}",
            password.unwrap_or_default(),
            dir.join("t").display().to_string(),
            meter("edf", "utility_in", "kWh"),
            meter("pv", "onsite_renewable_consumed", "kWh"),
            meter("eau", "water_in", "m3"),
        ),
    )
    .expect("config");
    p
}

/// Runs a one-shot collector command to its end (its outputs checked for the secrets of its command line and of
/// `dir`): success, and stdout then stderr.
fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, Option<i32>, String) {
    let out = collector_output(
        Command::new(binary("domesday-collector"))
            .args(args)
            .env_remove("PGPASSWORD")
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .envs(env.iter().copied()),
        dir,
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), out.status.code(), text)
}

/// Every answer the test compares, by what it asked.
fn answers(c: &Collector, cfg: &Path, t0: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let ranges = [
        (t0, t0 + 4 * HOUR),
        (t0 + HOUR, t0 + 2 * HOUR),
        (t0 + 7 * MINUTE, t0 + 2 * HOUR + 23 * MINUTE),
        (t0 + 3 * HOUR + 11 * MINUTE, t0 + 3 * HOUR + 14 * MINUTE),
        (t0 - 24 * HOUR, t0 + 24 * HOUR),
    ];
    let whats = [
        "",
        "&host=srv-1",
        "&host=srv-2",
        "&host=srv-3",
        "&meter=edf",
        "&meter=pv",
        "&meter=eau",
        "&role=utility_in",
        "&role=it_in",
        "&role=water_in",
    ];
    for (from, to) in ranges {
        for what in whats {
            let path = format!("/api/v1/energy?site=caen-1{what}&from={from}&to={to}");
            out.push((path.clone(), get_text(&c.url(&path), Duration::from_secs(10))));
        }
    }
    for path in [
        "/api/v1/sites/caen-1/hosts".to_string(),
        format!("/api/v1/sites/caen-1/indicators?from={t0}&to={}&step=1h", t0 + 4 * HOUR),
        format!("/api/v1/sites/caen-1/indicators?from={}&to={}&step=1h", t0 - 3 * HOUR, t0 + 2 * HOUR),
    ] {
        out.push((path.clone(), get_text(&c.url(&path), Duration::from_secs(30))));
    }
    let (from, to) = (rfc3339(t0 - 24 * HOUR), rfc3339(t0 + 24 * HOUR));
    let cfg_s = cfg.display().to_string();
    let args =
        ["report", "eed", "--site", "caen-1", "--from", &from, "--to", &to, "--format", "json", "--draft", "--config"];
    let (ok, _, report) = cli(cfg.parent().expect("dir"), &[&args[..], &[cfg_s.as_str()]].concat(), &[]);
    assert!(ok, "{report}");
    out.push(("report eed".into(), report));
    out
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).expect("time").to_string()
}

/// A `domesday_host_info` series as an agent pushes it: the host's claim by its machine, and its model.
fn host_info(host: &str, t: i64) -> TimeSeries {
    let machine = format!("{host}-machine");
    let mut labels: Vec<Label> = [
        ("__name__", "domesday_host_info"),
        ("cpu_model", "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz"),
        ("host", host),
        ("job", "domesday-agent"),
        ("machine_id", machine.as_str()),
        ("product", "PowerEdge R740"),
        ("site", "caen-1"),
        ("sockets", "2"),
        ("vendor", "Dell Inc."),
    ]
    .iter()
    .map(|(n, v)| Label { name: (*n).into(), value: (*v).into() })
    .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries { labels, samples: vec![Sample { value: 1.0, timestamp: t }] }
}

fn push(c: &Collector, host: &str, method: &str, points: &[(f64, i64)]) {
    let mut timeseries = vec![host_energy_series("caen-1", host, method, points)];
    if let Some(first) = points.first() {
        timeseries.push(host_info(host, first.1));
    }
    let body = encode(&WriteRequest { timeseries });
    assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
}

/// A ledger booked by `serve` on SQLite in `dir`: three hosts over 4 hours from `t0` (a late sample, a replay),
/// meter readings, a correction, a swap and a retirement. Returns the SQLite configuration.
fn book_a_site(dir: &Path, port: u16, t0: i64) -> PathBuf {
    let cfg = config(dir, "sqlite.toml", port, &dir.join("domesday.db").display().to_string(), None);
    let c = Collector::spawn(dir, port, &cfg);
    let series = |w0: f64, step_j: f64, offset: i64| -> Vec<(f64, i64)> {
        (0..960).map(|i| (w0 + i as f64 * step_j, t0 + i * 15_000 + offset)).collect()
    };
    let (a, b, h) = (series(1000.0, 31.7, 0), series(50.0, 12.3, 7_000), series(7.0, 4.5, 3_000));
    let held = a[300].1;
    push(&c, "srv-1", "psu_input", &a.iter().copied().filter(|p| p.1 != held).collect::<Vec<_>>());
    push(&c, "srv-2", "rapl_uplift", &b[..600]);
    push(&c, "srv-2", "rapl_uplift", &b[500..]);
    push(&c, "srv-3", "bmc_dcmi", &h);
    push(&c, "srv-1", "psu_input", &[a[300]]);
    let mut csv = String::from("start,end,meter,value\n");
    for q in 0..16 {
        csv.push_str(&format!(
            "{},{},edf,0.{:02}\n",
            rfc3339(t0 + q * 900_000),
            rfc3339(t0 + (q + 1) * 900_000),
            15 + q
        ));
    }
    for hr in 0..4 {
        csv.push_str(&format!("{},{},pv,0.06\n", rfc3339(t0 + hr * HOUR), rfc3339(t0 + (hr + 1) * HOUR)));
    }
    c.upload_readings("caen-1", TOKEN, csv);
    let mut regs = String::from("timestamp,meter,value\n");
    for q in 0..=8 {
        regs.push_str(&format!("{},eau,{}\n", rfc3339(t0 + q * 1_800_000), 1000.0 + q as f64 * 0.75));
    }
    c.upload_readings("caen-1", TOKEN, regs);
    drop(c);
    let cfg_s = cfg.display().to_string();
    let by = ["--by", "alice", "--config", cfg_s.as_str()];
    let (from, to, at) = (rfc3339(t0 + HOUR), rfc3339(t0 + 2 * HOUR), rfc3339(t0 + 4 * HOUR + 15 * MINUTE));
    for args in [
        vec!["correct", "--site", "caen-1", "--meter", "edf", "--from", &from, "--to", &to, "--value", "-0.25"],
        vec!["swap-meter", "--site", "caen-1", "--meter", "eau", "--at", &at, "--final", "1006.2", "--initial", "0"],
        vec!["retire-host", "--site", "caen-1", "--host", "srv-3"],
    ] {
        let reason = ["--reason", "migration test"];
        let (ok, _, out) = cli(dir, &[&args[..], &by[..], &reason[..]].concat(), &[]);
        assert!(ok, "{args:?}: {out}");
    }
    cfg
}

#[test]
fn a_sqlite_ledger_moves_to_postgres_and_answers_byte_for_byte() {
    let cluster = PgCluster::start();
    let db: PgDb = cluster.database();
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let t0 = (now_minute_ms() - 6 * HOUR).div_euclid(HOUR) * HOUR;
    let lite_cfg = book_a_site(dir.path(), port, t0);
    let pw = dir.path().join("pg.password");
    std::fs::write(&pw, format!("{}\n", db.password())).expect("password file");
    let lite_s = lite_cfg.display().to_string();
    let url = db.url();

    let c = Collector::spawn(dir.path(), port, &lite_cfg);
    let before = answers(&c, &lite_cfg, t0);
    // A collector still serving on the configuration: refused, nothing moved.
    let (ok, code, out) =
        cli(dir.path(), &["migrate", "--config", &lite_s, "--to", &url], &[("PGPASSWORD", db.password())]);
    assert!(!ok && code == Some(2) && out.contains("in use") && out.contains("stop it"), "{out}");
    let untouched: bool = db.client().query_one("SELECT to_regclass('series') IS NULL", &[]).expect("q").get(0);
    assert!(untouched, "nothing was created in the target");
    let mut c = c;
    c.proc.terminate(Duration::from_secs(15)).expect("serve stops on SIGTERM");
    drop(c);

    let pw_s = pw.display().to_string();
    let (ok, _, out) = cli(dir.path(), &["migrate", "--config", &lite_s, "--to", &url, "--password-file", &pw_s], &[]);
    assert!(ok, "{out}");
    for needle in ["chunks", "adjustments", "retired_hosts", "answers identical", "db_password_file", &url] {
        assert!(out.contains(needle), "{needle:?} not in: {out}");
    }
    // The energy of the move, in the summary: 3 hosts and 3 meters checked.
    assert!(out.contains("6 series"), "{out}");

    // Again to the same database: refused, whatever its rows.
    let (ok, code, again) =
        cli(dir.path(), &["migrate", "--config", &lite_s, "--to", &url], &[("PGPASSWORD", db.password())]);
    assert!(!ok && code == Some(2) && again.contains("already holds a ledger"), "{again}");

    let pg_cfg = config(dir.path(), "pg.toml", port, &url, Some(&pw));
    let c = Collector::spawn(dir.path(), port, &pg_cfg);
    let after = answers(&c, &pg_cfg, t0);
    assert_eq!(before.len(), after.len());
    let mut energy_seen = 0;
    for ((what, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{what}: SQLite (left) and PostgreSQL (right) answer differently");
        energy_seen +=
            usize::from(a.contains("\"energy_microjoules\":\"") && !a.contains("\"energy_microjoules\":\"0\""));
    }
    assert!(energy_seen > 30, "the answers compared hold energy: {before:?}");
    assert!(before.iter().any(|(w, a)| w.contains("meter=edf") && a.contains("\"kind\":\"correction\"")), "{before:?}");
    assert!(before.iter().any(|(w, a)| w.contains("meter=eau") && a.contains("\"kind\":\"swap\"")), "{before:?}");
    assert!(before.iter().any(|(w, a)| w.ends_with("/hosts") && a.contains("srv-3")), "{before:?}");
    assert!(before.iter().any(|(w, a)| w.ends_with("/hosts") && a.contains("srv-1-machine")), "{before:?}");
    // The ledger on PostgreSQL goes on booking: srv-1's next hour.
    let next: Vec<(f64, i64)> = (0..240).map(|i| (1000.0 + (960 + i) as f64 * 31.7, t0 + (960 + i) * 15_000)).collect();
    push(&c, "srv-1", "psu_input", &next);
    let e: serde_json::Value = serde_json::from_str(&get_text(
        &c.url(&format!("/api/v1/energy?site=caen-1&host=srv-1&from={t0}&to={}", t0 + 5 * HOUR)),
        Duration::from_secs(10),
    ))
    .expect("json");
    assert_eq!(e["energy_microjoules"], "38008300000", "{e}"); // 1199 × 31.7 J
}

#[test]
fn migrate_refuses_a_postgres_source_a_missing_ledger_and_a_password_in_the_url() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let cfg = config(dir.path(), "c.toml", port, &dir.path().join("none.db").display().to_string(), None);
    let cfg_s = cfg.display().to_string();
    let to = format!("postgres://domesday@127.0.0.1:{}/ledger", free_port());
    let (ok, code, out) = cli(dir.path(), &["migrate", "--config", &cfg_s, "--to", &to], &[]);
    assert!(!ok && code == Some(2) && out.contains("no SQLite ledger"), "{out}");
    assert!(!dir.path().join("none.db").exists(), "a missing ledger is not created");
    let (ok, code, out) = cli(dir.path(), &["migrate", "--config", &cfg_s, "--db", &to, "--to", &to], &[]);
    assert!(!ok && code == Some(2) && out.contains("already on PostgreSQL"), "{out}");
    let secret = "hunter2-in-the-url-55";
    let with_pw = format!("postgres://domesday:{secret}@127.0.0.1:5432/ledger");
    std::fs::write(dir.path().join("none.db"), b"").expect("an empty file");
    let (ok, code, out) = cli(dir.path(), &["migrate", "--config", &cfg_s, "--to", &with_pw], &[]);
    assert!(!ok && code == Some(2) && out.contains("holds a password") && !out.contains(secret), "{out}");
    let (ok, code, out) = cli(dir.path(), &["migrate", "--config", &cfg_s, "--to", "/tmp/other.db"], &[]);
    assert!(!ok && code == Some(2) && out.contains("--to must be a PostgreSQL database"), "{out}");
}
