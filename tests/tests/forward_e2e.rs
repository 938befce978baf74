//! `[forward]` through the real collector: every accepted request reaches the
//! upstream remote_write receiver; while the upstream is down the collector
//! keeps acknowledging, spools, and replays everything in order once it is
//! back; a 400 upstream is counted, not retried.

use std::time::Duration;

use domesday_model::remote_write::{WriteRequest, encode};
use domesday_tests::mock_rw::{MockReceiver, Mode};
use domesday_tests::{Collector, free_port, get_text, host_energy_series, post_write, series_value};

const TOKEN: &str = "forward-token";

fn body(i: i64) -> Vec<u8> {
    let t0 = 1_795_000_000_000i64;
    encode(&WriteRequest {
        timeseries: vec![host_energy_series("caen-1", "srv-f", "model", &[(i as f64 * 10.0, t0 + i * 1000)])],
    })
}

#[test]
fn forwarded_through_an_upstream_outage_in_order_and_complete() {
    let upstream = MockReceiver::start("up-token");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("up.token"), "up-token").expect("token");
    let extra = format!(
        "\n[forward]\nurl = \"{}\"\ntoken_file = {:?}\nspool_dir = {:?}\ntimeout = \"2s\"\n",
        upstream.url(),
        dir.path().join("up.token").display().to_string(),
        dir.path().join("fwd-spool").display().to_string()
    );
    let c = Collector::start_with(dir.path(), free_port(), TOKEN, &extra);
    let write = c.url("/api/v1/write");
    for i in 0..5 {
        assert_eq!(post_write(&write, Some(TOKEN), body(i)).map(|r| r.0), Ok(204));
    }
    upstream.wait_for("5 forwarded", Duration::from_secs(10), |r| r.iter().filter(|x| x.accepted()).count() == 5);
    upstream.set_mode(Mode::Down);
    for i in 5..15 {
        assert_eq!(
            post_write(&write, Some(TOKEN), body(i)).map(|r| r.0),
            Ok(204),
            "ingest does not wait for the upstream"
        );
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert!(
        series_value(&metrics, "domesday_forward_requests_total", &["result=\"spooled\""]).unwrap_or(0.0) >= 9.0,
        "{metrics}"
    );
    upstream.set_mode(Mode::Accept);
    upstream.wait_for("all 15 forwarded", Duration::from_secs(60), |r| r.iter().filter(|x| x.accepted()).count() == 15);
    // In order, each exactly once.
    let stamps: Vec<i64> = upstream
        .received()
        .iter()
        .filter(|r| r.accepted())
        .flat_map(|r| {
            r.request.timeseries.iter().flat_map(|t| t.samples.iter().map(|s| s.timestamp)).collect::<Vec<_>>()
        })
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(stamps, sorted, "forwarded out of order or twice");
    assert_eq!(stamps.len(), 15);
    assert!(upstream.problems().is_empty(), "{:?}", upstream.problems());
    // A request the upstream refuses is counted and not retried.
    upstream.set_mode(Mode::Status(400, "bad".into()));
    assert_eq!(post_write(&write, Some(TOKEN), body(15)).map(|r| r.0), Ok(204));
    std::thread::sleep(Duration::from_millis(500));
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(
        series_value(&metrics, "domesday_forward_requests_total", &["result=\"rejected\""]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(upstream.received().iter().filter(|r| r.status == 400).count(), 1);
}

/// A Remote-Write 2.0 request is forwarded as 1.0 (the upstream protocol), its
/// float series with their labels resolved from the symbols table; its
/// histograms and exemplars stay with the collector.
#[test]
fn a_remote_write_2_request_is_forwarded_as_1_0() {
    use domesday_model::remote_write::Sample;
    use domesday_model::remote_write2::{self as v2, Histogram, Request, TimeSeries};
    let upstream = MockReceiver::start("up-token");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("up.token"), "up-token").expect("token");
    let extra = format!(
        "\n[forward]\nurl = \"{}\"\ntoken_file = {:?}\nspool_dir = {:?}\ntimeout = \"2s\"\n",
        upstream.url(),
        dir.path().join("up.token").display().to_string(),
        dir.path().join("fwd-spool").display().to_string()
    );
    let c = Collector::start_with(dir.path(), free_port(), TOKEN, &extra);
    let t0 = 1_795_000_000_000i64;
    let symbols = ["", "__name__", "domesday_host_energy_joules_total", "host", "srv-f", "method", "model"];
    let symbols = symbols.iter().chain(&["quality", "estimated", "site", "caen-1", "rpc_seconds"]);
    let req = Request {
        symbols: symbols.map(|s| s.to_string()).collect(),
        timeseries: vec![
            TimeSeries {
                labels_refs: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                samples: vec![Sample { value: 10.0, timestamp: t0 }, Sample { value: 12.0, timestamp: t0 + 1000 }],
                ..Default::default()
            },
            TimeSeries {
                labels_refs: vec![1, 11, 9, 10],
                histograms: vec![Histogram { timestamp: t0, ..Default::default() }],
                ..Default::default()
            },
        ],
    };
    let resp = reqwest::blocking::Client::new()
        .post(c.url("/api/v1/write"))
        .bearer_auth(TOKEN)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", v2::CONTENT_TYPE)
        .header("X-Prometheus-Remote-Write-Version", v2::VERSION)
        .body(v2::encode(&req))
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 204);
    upstream.wait_for("forwarded", Duration::from_secs(10), |r| r.iter().any(|x| x.accepted()));
    let got = upstream.accepted_series();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        domesday_tests::mock_rw::series_key(&got[0]),
        "__name__=domesday_host_energy_joules_total,host=srv-f,method=model,quality=estimated,site=caen-1"
    );
    assert_eq!(
        got[0].samples.iter().map(|s| (s.value, s.timestamp)).collect::<Vec<_>>(),
        [(10.0, t0), (12.0, t0 + 1000)]
    );
    assert!(upstream.problems().is_empty(), "{:?}", upstream.problems());
}
