//! Two `domesday-collector serve` on one PostgreSQL ledger with the same configuration, a facility meter (a Redfish
//! rack PDU served by a mock on 127.0.0.1) among it: exactly one of them leads the site-wide work, so only it reads
//! the meter and exports the site gauges, and the other takes it over when the leader is SIGKILLed (within the
//! minute the docs promise), reads the meter on, and counts in its site energy counter what was pushed through the
//! dead one; a leader whose lock session is ended stops the work and, alone, takes it up again.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::pg::{PgCluster, PgDb};
use domesday_tests::{
    COLLECTOR_LOG, Collector, binary, free_port, get_text, host_energy_series, mock_http, now_minute_ms, post_write,
    read_log, series_value,
};

const TOKEN: &str = "caen-election-token-7781";
const PDU_PASSWORD: &str = "pdu-election-s3cret";
/// The PDU's EnergyJoules at its first read, and its increase at each read (1 kWh).
const PDU_BASE_J: u64 = 360_000_000;
const PDU_STEP_J: u64 = 3_600_000;

/// A collector's directory with its configuration: the same for both but for the port they listen on.
fn configure(dir: &std::path::Path, port: u16, db: &PgDb, pdu_port: u16) -> std::path::PathBuf {
    std::fs::write(dir.join("caen.token"), format!("{TOKEN}\n")).expect("token");
    std::fs::write(dir.join("pg.password"), format!("{}\n", db.password())).expect("password");
    std::fs::write(dir.join("pdu.password"), format!("{PDU_PASSWORD}\n")).expect("password");
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
db = {db:?}
db_password_file = {pw:?}
gauges_refresh = "1s"

[[sites]]
id = "caen-1"
timezone = "Europe/Paris"
token_file = {token:?}

[[sites.meters]]
id = "pdu"
role = "pdu_out"
kind = "redfish"
unit = "kWh"
url = "http://127.0.0.1:{pdu_port}/redfish/v1/PowerEquipment/RackPDUs/1"
allow_plain_http = true
username = "monitor"
password_file = {pdu_pw:?}
interval = "1s"
"#,
            db = db.url(),
            pw = dir.join("pg.password").display().to_string(),
            token = dir.join("caen.token").display().to_string(),
            pdu_pw = dir.join("pdu.password").display().to_string(),
        ),
    )
    .expect("config");
    config
}

fn metrics(c: &Collector) -> String {
    get_text(&c.url("/metrics"), Duration::from_secs(10))
}

fn leader_gauge(c: &Collector) -> Option<f64> {
    series_value(&metrics(c), "domesday_collector_leader", &[])
}

fn meter_reads(c: &Collector) -> f64 {
    series_value(&metrics(c), "domesday_meter_readings_total", &["meter=\"pdu\""]).unwrap_or(0.0)
}

/// Waits (bounded by `within`) until `f` holds; panics with `what` otherwise.
fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The PDU meter's energy in the ledger, µJ, as a collector's energy API answers it.
fn pdu_energy(c: &Collector, from: i64, to: i64) -> i128 {
    let body =
        get_text(&c.url(&format!("/api/v1/energy?site=caen-1&meter=pdu&from={from}&to={to}")), Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["energy_microjoules"].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn one_collector_leads_the_site_wide_work_and_another_takes_over_when_it_is_killed() {
    let cluster = PgCluster::start();
    let db = cluster.database();
    let reads = Arc::new(AtomicU64::new(0));
    let served = reads.clone();
    let pdu_port = mock_http(move |target| {
        match target {
        "/redfish/v1/PowerEquipment/RackPDUs/1" => (
            200,
            r##"{"@odata.type":"#PowerDistribution.v1_3_0.PowerDistribution","Id":"1","EquipmentType":"RackPDU","Metrics":{"@odata.id":"/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"}}"##.into(),
        ),
        "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics" => {
            let n = served.fetch_add(1, Ordering::SeqCst);
            let j = PDU_BASE_J + n * PDU_STEP_J;
            (200, format!(r##"{{"@odata.type":"#PowerDistributionMetrics.v1_4_0.PowerDistributionMetrics","EnergyJoules":{{"Reading":{j}}}}}"##))
        }
        _ => (404, "{}".into()),
    }
    });
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = configure(dir_a.path(), port_a, &db, pdu_port);
    let config_b = configure(dir_b.path(), port_b, &db, pdu_port);
    let spawn = |dir: &std::path::Path, port: u16, config: &std::path::Path| {
        Collector::spawn_command(
            Command::new(binary("domesday-collector"))
                .arg("serve")
                .arg("--config")
                .arg(config)
                .env_remove("PGPASSWORD"),
            port,
            dir,
        )
    };
    let from = now_minute_ms() - 3_600_000;
    let mut collectors = vec![spawn(dir_a.path(), port_a, &config_a), spawn(dir_b.path(), port_b, &config_b)];

    // Exactly one leads: it says 1, the other 0 (both export the gauge).
    until("one of the two collectors leads", Duration::from_secs(60), || {
        collectors.iter().filter(|c| leader_gauge(c) == Some(1.0)).count() == 1
    });
    let leader = collectors.iter().position(|c| leader_gauge(c) == Some(1.0)).expect("a leader");
    let (l, f) = (&collectors[leader], &collectors[1 - leader]);
    assert_eq!(leader_gauge(f), Some(0.0), "the follower exports the gauge as 0");
    // Only the leader reads the meter and exports the site gauges.
    until("the leader reads the meter", Duration::from_secs(30), || meter_reads(l) >= 3.0);
    let (lm, fm) = (metrics(l), metrics(f));
    assert_eq!(meter_reads(f), 0.0, "the follower never read the meter:\n{fm}");
    assert!(reads.load(Ordering::SeqCst) >= 3);
    assert!(lm.contains("domesday_site_info{"), "the leader exports the site gauges:\n{lm}");
    assert!(!fm.contains("domesday_site_info{"), "the follower does not:\n{fm}");
    assert_eq!(leader_gauge(l), Some(1.0));
    assert_eq!(leader_gauge(f), Some(0.0), "still exactly one leads");

    // An agent pushes through the leader (the follower ingests too, but this goes through the one about to die):
    // 60 intervals of 10 J.
    let t0 = now_minute_ms() - 30 * 60_000;
    let points: Vec<(f64, i64)> = (0..61).map(|i| (1000.0 + 10.0 * i as f64, t0 + i * 15_000)).collect();
    let body = encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", "srv-1", "psu_input", &points)] });
    assert_eq!(post_write(&l.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));

    // SIGKILL: no shutdown, no goodbye to the database; its kernel closes the socket.
    let mut dead = collectors.swap_remove(leader);
    let survivor = collectors.pop().expect("the other collector");
    dead.proc.0.kill().expect("SIGKILL");
    dead.proc.0.wait().expect("reaped");
    let energy_at_kill = pdu_energy(&survivor, from, now_minute_ms() + 3_600_000);
    let reads_at_kill = reads.load(Ordering::SeqCst);
    until("the other collector takes the site-wide work over", Duration::from_secs(60), || {
        leader_gauge(&survivor) == Some(1.0)
    });
    let log = read_log(&survivor.dir.join(COLLECTOR_LOG));
    assert!(log.contains("leading the site-wide work"), "{log}");
    // It reads the meter now, and the meter's energy in the ledger grows on.
    until("the new leader reads the meter", Duration::from_secs(30), || meter_reads(&survivor) >= 2.0);
    assert!(reads.load(Ordering::SeqCst) > reads_at_kill);
    until("the meter's energy grows on in the ledger", Duration::from_secs(30), || {
        pdu_energy(&survivor, from, now_minute_ms() + 3_600_000) > energy_at_kill
    });
    let m = metrics(&survivor);
    assert!(m.contains("domesday_site_info{"), "the new leader exports the site gauges:\n{m}");
    // Its site energy counter holds what was pushed through the dead collector: it follows the shared ledger.
    until("the survivor's site energy counter counts the dead collector's commits", Duration::from_secs(60), || {
        series_value(&metrics(&survivor), "domesday_site_energy_joules_total", &["role=\"it_in\""]) == Some(600.0)
    });
    // The survivor's lock session ends under it (an administrator, or the server giving up on it): it stops the
    // site-wide work at once and, alone, takes the lock again at its next try.
    let mut admin = cluster.admin();
    let pid: i32 = admin
        .query_one(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 1684894564 \
             AND objid = 1818583396 AND objsubid = 1",
            &[],
        )
        .expect("the leader's lock in pg_locks")
        .get(0);
    let ended: bool = admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).expect("terminate").get(0);
    assert!(ended);
    let log_path = survivor.dir.join(COLLECTOR_LOG);
    domesday_tests::wait_for_log(&log_path, "no longer leading the site-wide work", Duration::from_secs(30));
    until("the survivor leads again", Duration::from_secs(60), || {
        read_log(&log_path).matches("leading the site-wide work: facility").count() == 2
            && leader_gauge(&survivor) == Some(1.0)
    });
    let dead_log = read_log(&dead.dir.join(COLLECTOR_LOG));
    assert!(dead_log.contains("leading the site-wide work"), "{dead_log}");
    for log in [&dead_log, &read_log(&survivor.dir.join(COLLECTOR_LOG))] {
        assert!(!log.contains("panicked"), "{log}");
    }
}
