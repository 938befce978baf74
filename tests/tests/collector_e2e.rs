//! The real `domesday-collector` binary over loopback HTTP: exact energy through
//! the API and the CLI, replays counted once, tokens per site, hostile bodies
//! refused while the server stays up, and no acknowledged sample lost across a
//! SIGTERM or a SIGKILL in the middle of ingest.

use std::process::Command;
use std::time::Duration;

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::{
    Collector, binary, collector_output, free_port, get_text, host_energy, host_energy_series, now_minute_ms,
    post_write, series_value,
};

const TOKEN: &str = "caen-secret-token";

fn request(host: &str, points: &[(f64, i64)]) -> Vec<u8> {
    encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", host, "psu_input", points)] })
}

#[test]
fn energy_is_exact_replays_count_once_and_tokens_are_per_site() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 3_600_000;
    // 0.1 J resolution values: the ledger works in exact µJ from the f64 values.
    let points: Vec<(f64, i64)> = (0..40).map(|i| (1234.5 + i as f64 * 312.1, t0 + i * 15_000)).collect();
    let body = request("srv-1", &points);
    assert_eq!(post_write(&write, Some(TOKEN), body.clone()).map(|r| r.0), Ok(204));
    assert_eq!(post_write(&write, Some(TOKEN), body.clone()).map(|r| r.0), Ok(204), "a replay is accepted");
    let e = host_energy(&c, "srv-1", t0, t0 + 3_600_000);
    assert_eq!(e["energy_microjoules"], "12171900000", "{e}"); // 39 × 312.1 J
    assert_eq!(e["samples"], 40);
    assert_eq!(e["measured_joules"], 12171.9);
    assert_eq!(e["by_method"]["psu_input"], 12171.9);
    assert_eq!(e["first_sample"], serde_json::Value::String(jiff_like(t0)));
    // Another site's token cannot write caen-1's series.
    let (code, msg) = post_write(&write, Some("other-token"), body.clone()).expect("post");
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("caen-1") && msg.contains("rouen-1"), "{msg}");
    assert_eq!(post_write(&write, Some("wrong"), body.clone()).map(|r| r.0), Ok(401));
    assert_eq!(post_write(&write, None, body).map(|r| r.0), Ok(401));
    // The CLI reads the same figure, read-only, while serve runs.
    let out = collector_output(
        Command::new(binary("domesday-collector"))
            .args(["energy", "--site", "caen-1", "--host", "srv-1", "--format", "csv"])
            .arg("--from")
            .arg(t0.to_string())
            .arg("--to")
            .arg((t0 + 3_600_000).to_string())
            .arg("--db")
            .arg(dir.path().join("domesday.db")),
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(",12171.9,12171900000,12171.9,0,"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unaligned bounds name the aligned ones.
    let resp = reqwest::blocking::get(c.url(&format!("/api/v1/energy?site=caen-1&from={}&to={}", t0 + 1, t0 + 60_000)))
        .expect("get");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap_or_default().contains("whole minutes"));
    // Last seen per host, also when one host's series are not adjacent in a request.
    let mixed = encode(&WriteRequest {
        timeseries: vec![
            host_energy_series("caen-1", "srv-2", "psu_input", &[(10.0, t0 + 120_000)]),
            host_energy_series("caen-1", "srv-3", "psu_input", &[(10.0, t0)]),
            host_energy_series("caen-1", "srv-2", "bmc_dcmi", &[(5.0, t0 + 60_000)]),
        ],
    });
    assert_eq!(post_write(&write, Some(TOKEN), mixed).map(|r| r.0), Ok(204));
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    let last_seen = |host: &str| {
        let host = format!("host=\"{host}\"");
        series_value(&metrics, "domesday_host_last_seen_timestamp_seconds", &["site=\"caen-1\"", &host])
    };
    assert_eq!(last_seen("srv-1"), Some((t0 + 39 * 15_000) as f64 / 1000.0));
    assert_eq!(last_seen("srv-2"), Some((t0 + 120_000) as f64 / 1000.0));
    assert_eq!(last_seen("srv-3"), Some(t0 as f64 / 1000.0));
    assert_eq!(series_value(&metrics, "domesday_ingest_samples_total", &["result=\"duplicate\""]), Some(40.0));
    assert_eq!(series_value(&metrics, "domesday_ingest_requests_total", &["code=\"403\""]), Some(1.0));
    assert_eq!(
        series_value(&metrics, "domesday_site_energy_joules_total", &["site=\"caen-1\"", "role=\"it_in\""]),
        Some(12171.9)
    );
}

/// RFC 3339 in UTC, as the API writes it.
fn jiff_like(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

#[test]
fn hostile_bodies_are_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let bomb = vec![186u8, 232, 186, 232, 11, 0, 0];
    assert_eq!(post_write(&write, Some(TOKEN), bomb).map(|r| r.0), Ok(413));
    assert_eq!(post_write(&write, Some(TOKEN), b"not snappy at all".to_vec()).map(|r| r.0), Ok(400));
    let not_proto = snap_compress(&[0xff; 64]);
    assert_eq!(post_write(&write, Some(TOKEN), not_proto).map(|r| r.0), Ok(400));
    assert_eq!(post_write(&write, Some(TOKEN), vec![0u8; 17 << 20]).map(|r| r.0), Ok(413));
    // NaN and negative counters: accepted, not booked.
    let t0 = now_minute_ms() - 600_000;
    let r = request("srv-2", &[(10.0, t0), (f64::NAN, t0 + 1000), (-5.0, t0 + 2000), (20.0, t0 + 3000)]);
    assert_eq!(post_write(&write, Some(TOKEN), r).map(|r| r.0), Ok(204));
    assert_eq!(host_energy(&c, "srv-2", t0, t0 + 60_000)["energy_joules"], 10.0);
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_ingest_rejected_total", &["reason=\"nan\""]), Some(1.0));
    assert_eq!(series_value(&metrics, "domesday_ingest_rejected_total", &["reason=\"negative\""]), Some(1.0));
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");
}

fn snap_compress(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).expect("compress")
}

#[test]
fn acknowledged_samples_survive_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut c = Collector::start(dir.path(), port, TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 2 * 3_600_000;
    let mut acked: Vec<(f64, i64)> = Vec::new();
    let mut next = 0i64;
    let mut send = |c: &Collector, n: i64, acked: &mut Vec<(f64, i64)>| {
        for _ in 0..n {
            let p = (100.0 + next as f64 * 2.5, t0 + next * 10_000);
            next += 1;
            if let Ok((204, _)) = post_write(&c.url("/api/v1/write"), Some(TOKEN), request("srv-3", &[p])) {
                acked.push(p);
            }
        }
    };
    send(&c, 50, &mut acked);
    assert!(c.proc.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()), "clean stop on SIGTERM");
    drop(c);
    let c = Collector::start(dir.path(), port, TOKEN);
    send(&c, 50, &mut acked);
    // SIGKILL while a writer thread of ours keeps posting.
    let w = write.clone();
    let pusher = std::thread::spawn(move || {
        let mut got = Vec::new();
        for i in 100..400i64 {
            let p = (100.0 + i as f64 * 2.5, t0 + i * 10_000);
            match post_write(&w, Some(TOKEN), request("srv-3", &[p])) {
                Ok((204, _)) => got.push(p),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        got
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut proc = c.proc;
    let _ = proc.0.kill();
    let _ = proc.0.wait();
    acked.extend(pusher.join().expect("pusher"));
    let c = Collector::start(dir.path(), port, TOKEN);
    // Every acknowledged sample is booked: the ledger holds at least up to the
    // last acknowledged one (a commit whose answer the kill cut off may be there too).
    let last_acked = acked.last().map(|p| p.1).unwrap_or(t0);
    let e = host_energy(&c, "srv-3", t0, (last_acked / 60_000 + 1) * 60_000);
    let booked_last = e["last_sample"].as_str().unwrap_or_default().to_string();
    assert!(booked_last >= jiff_like(last_acked), "{e}: last acknowledged sample at {last_acked} missing");
    assert!(acked.len() >= 100, "{} acked", acked.len());
    // A sender retries what was not acknowledged: replays count once, and the
    // ledger then holds the whole series exactly.
    for i in 0..400i64 {
        let p = (100.0 + i as f64 * 2.5, t0 + i * 10_000);
        assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), request("srv-3", &[p])).map(|r| r.0), Ok(204));
    }
    let e = host_energy(&c, "srv-3", t0, t0 + 68 * 60_000);
    assert_eq!(e["energy_microjoules"], (399 * 2_500_000i64).to_string(), "{e}");
    assert_eq!(e["samples"], 400, "{e}");
}
