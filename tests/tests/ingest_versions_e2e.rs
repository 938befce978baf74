//! The real `domesday-collector` binary against senders of other versions: an
//! agent newer than the collector (a host energy method or quality this
//! collector does not know is booked, not refused) and Remote-Write 2.0 bodies
//! (booked through the same rules as 1.0, answered with the `Written` headers;
//! bad symbol references refused with nothing stored; other content types 415).

use std::time::Duration;

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use domesday_model::remote_write2::{self as v2, Exemplar, Histogram, Metadata, Request};
use domesday_tests::{
    Collector, free_port, get_text, host_energy, host_energy_series, now_minute_ms, post_write, series_value,
};

const TOKEN: &str = "caen-secret-token";

fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
    let mut labels: Vec<Label> = labels.iter().map(|(n, v)| Label { name: (*n).into(), value: (*v).into() }).collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries { labels, samples: samples.iter().map(|(v, t)| Sample { value: *v, timestamp: *t }).collect() }
}

#[test]
fn a_method_the_collector_does_not_know_is_booked_under_the_quality_it_states() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 3_600_000;
    let energy_series = |method: &str, quality: Option<&str>, points: &[(f64, i64)]| {
        let mut labels = vec![
            ("__name__", "domesday_host_energy_joules_total"),
            ("site", "caen-1"),
            ("host", "srv-1"),
            ("method", method),
        ];
        labels.extend(quality.map(|q| ("quality", q)));
        series(&labels, points)
    };
    // One request from an agent newer than this collector: a known method, a new
    // measured one, and a new one whose quality value is new too.
    let body = encode(&WriteRequest {
        timeseries: vec![
            host_energy_series("caen-1", "srv-1", "psu_input", &[(100.0, t0), (160.0, t0 + 60_000)]),
            energy_series("cxl_meter", Some("measured"), &[(10.0, t0 + 60_000), (40.0, t0 + 120_000)]),
            energy_series("npu_model", Some("calibrated"), &[(1.0, t0 + 120_000), (6.0, t0 + 180_000)]),
        ],
    });
    let (code, msg) = post_write(&write, Some(TOKEN), body).expect("post");
    assert_eq!(code, 204, "{msg}");
    let e = host_energy(&c, "srv-1", t0, t0 + 3_600_000);
    assert_eq!(e["energy_joules"], 95.0, "{e}");
    assert_eq!(e["measured_joules"], 90.0, "{e}");
    assert_eq!(e["estimated_joules"], 5.0, "{e}");
    assert_eq!(e["by_method"]["psu_input"], 60.0, "{e}");
    assert_eq!(e["by_method"]["cxl_meter"], 30.0, "{e}");
    assert_eq!(e["by_method"]["npu_model"], 5.0, "{e}");
    let hosts: serde_json::Value =
        serde_json::from_str(&get_text(&c.url("/api/v1/sites/caen-1/hosts"), Duration::from_secs(5))).expect("json");
    let row =
        hosts["hosts"].as_array().and_then(|h| h.iter().find(|h| h["host"] == "srv-1")).cloned().unwrap_or_default();
    assert_eq!(
        (&row["current_method"], &row["current_quality"]),
        (&"npu_model".into(), &"estimated".into()),
        "{hosts}"
    );
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    let unknown = |label: &str, value: &str| {
        series_value(
            &metrics,
            "domesday_ingest_unknown_values_total",
            &[&format!("label=\"{label}\""), &format!("value=\"{value}\"")],
        )
    };
    assert_eq!(unknown("method", "cxl_meter"), Some(2.0), "{metrics}");
    assert_eq!(unknown("method", "npu_model"), Some(2.0), "{metrics}");
    assert_eq!(unknown("quality", "calibrated"), Some(2.0), "{metrics}");
    assert_eq!(unknown("method", "psu_input"), None);
    // What cannot be attributed to any method is still malformed, and stores nothing.
    let bad = encode(&WriteRequest {
        timeseries: vec![
            host_energy_series("caen-1", "srv-2", "psu_input", &[(1.0, t0), (2.0, t0 + 60_000)]),
            energy_series("not a method", Some("measured"), &[(1.0, t0)]),
        ],
    });
    let (code, msg) = post_write(&write, Some(TOKEN), bad).expect("post");
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("series 1") && msg.contains("`method`"), "{msg}");
    assert_eq!(host_energy(&c, "srv-2", t0, t0 + 3_600_000)["samples"], 0);
}

/// POSTs a body with the given Content-Type (and Remote-Write 2.0's other headers).
fn post(url: &str, content_type: Option<&str>, encoding: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut req = client
        .post(url)
        .bearer_auth(TOKEN)
        .header("Content-Encoding", encoding)
        .header("X-Prometheus-Remote-Write-Version", v2::VERSION)
        .header("User-Agent", "domesday-tests")
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    req.send().expect("send")
}

fn written(r: &reqwest::blocking::Response) -> [Option<u64>; 3] {
    [v2::SAMPLES_WRITTEN, v2::HISTOGRAMS_WRITTEN, v2::EXEMPLARS_WRITTEN]
        .map(|h| r.headers().get(h).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
}

/// A 2.0 request as Prometheus 3 writes it: one symbols table, label references
/// sorted by name, metadata, a created timestamp, an exemplar and a histogram.
fn request_v2(host: &str, t0: i64, bad_ref: bool) -> Request {
    let symbols = [
        "",
        "__name__",
        "domesday_host_energy_joules_total",
        "host",
        host,
        "method",
        "psu_input",
        "quality",
        "measured",
        "site",
        "caen-1",
        "up",
        "job",
        "node",
        "trace_id",
        "abc123",
        "http_request_duration_seconds",
        "Energy the host used.",
        "joules",
    ];
    let energy = v2::TimeSeries {
        labels_refs: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        samples: vec![Sample { value: 500.0, timestamp: t0 }, Sample { value: 620.5, timestamp: t0 + 60_000 }],
        exemplars: vec![Exemplar { labels_refs: vec![14, 15], value: 620.5, timestamp: t0 + 60_000 }],
        metadata: Some(Metadata { r#type: 1, help_ref: 17, unit_ref: 18 }),
        created_timestamp: t0 - 3_600_000,
        ..Default::default()
    };
    let up = v2::TimeSeries {
        labels_refs: vec![1, 11, 12, if bad_ref { symbols.len() as u32 } else { 13 }, 9, 10],
        samples: vec![Sample { value: 1.0, timestamp: t0 + 60_000 }],
        metadata: Some(Metadata { r#type: 2, help_ref: 0, unit_ref: 0 }),
        ..Default::default()
    };
    let histogram = v2::TimeSeries {
        labels_refs: vec![1, 16, 9, 10],
        histograms: vec![Histogram {
            count: Some(v2::histogram::Count::CountInt(4)),
            sum: 0.75,
            schema: 3,
            timestamp: t0 + 60_000,
            ..Default::default()
        }],
        metadata: Some(Metadata { r#type: 3, help_ref: 0, unit_ref: 0 }),
        ..Default::default()
    };
    Request { symbols: symbols.iter().map(|s| s.to_string()).collect(), timeseries: vec![energy, up, histogram] }
}

#[test]
fn remote_write_2_is_booked_like_1_0_and_answered_with_written_counts() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 3_600_000;
    let r = post(&write, Some(v2::CONTENT_TYPE), "snappy", v2::encode(&request_v2("srv-1", t0, false)));
    assert_eq!(r.status().as_u16(), 204);
    // Every float sample, histogram sample and exemplar accepted (booked or counted).
    assert_eq!(written(&r), [Some(3), Some(1), Some(1)]);
    let e = host_energy(&c, "srv-1", t0, t0 + 3_600_000);
    assert_eq!(e["energy_microjoules"], "120500000", "{e}");
    assert_eq!(e["by_method"]["psu_input"], 120.5, "{e}");
    assert_eq!(e["samples"], 2, "{e}");
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_ingest_samples_total", &["result=\"booked\""]), Some(2.0));
    assert_eq!(series_value(&metrics, "domesday_ingest_samples_total", &["result=\"not_booked\""]), Some(1.0));
    let last_seen = series_value(&metrics, "domesday_host_last_seen_timestamp_seconds", &["host=\"srv-1\""]);
    assert_eq!(last_seen, Some((t0 + 60_000) as f64 / 1000.0));

    // A reference outside the symbols table: 400, nothing written, nothing stored
    // (the request's valid energy series of srv-2 included).
    let r = post(&write, Some(v2::CONTENT_TYPE), "snappy", v2::encode(&request_v2("srv-2", t0, true)));
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(written(&r), [Some(0), Some(0), Some(0)]);
    let msg = r.text().unwrap_or_default();
    assert!(msg.contains("series 1") && msg.contains("symbol"), "{msg}");
    assert_eq!(host_energy(&c, "srv-2", t0, t0 + 3_600_000)["samples"], 0);

    // The same rules as 1.0: another site's series is 403, written nothing.
    let mut other_site = request_v2("srv-3", t0, false);
    other_site.symbols[10] = "rouen-1".into();
    let r = post(&write, Some(v2::CONTENT_TYPE), "snappy", v2::encode(&other_site));
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(written(&r), [Some(0), Some(0), Some(0)]);

    // What this receiver does not read is 415, never a 2xx with nothing stored.
    let body = v2::encode(&request_v2("srv-4", t0, false));
    for ct in ["application/x-protobuf;proto=io.prometheus.write.v3.Request", "application/json", "text/plain"] {
        let r = post(&write, Some(ct), "snappy", body.clone());
        assert_eq!(r.status().as_u16(), 415, "{ct}");
        assert!(r.text().unwrap_or_default().contains("not supported"), "{ct}");
    }
    assert_eq!(post(&write, Some(v2::CONTENT_TYPE), "gzip", body).status().as_u16(), 415);
    assert_eq!(host_energy(&c, "srv-4", t0, t0 + 3_600_000)["samples"], 0);
    // 1.0, named explicitly or by the bare media type, is still read as 1.0 (no Written headers).
    let v1 = encode(&WriteRequest {
        timeseries: vec![host_energy_series("caen-1", "srv-5", "psu_input", &[(1.0, t0), (3.0, t0 + 60_000)])],
    });
    let r = post(&write, Some("application/x-protobuf;proto=prometheus.WriteRequest"), "snappy", v1.clone());
    assert_eq!((r.status().as_u16(), written(&r)), (204, [None, None, None]));
    assert_eq!(post_write(&write, Some(TOKEN), v1).map(|r| r.0), Ok(204));
    assert_eq!(host_energy(&c, "srv-5", t0, t0 + 3_600_000)["energy_joules"], 2.0);
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_ingest_requests_total", &["code=\"415\""]), Some(4.0));
    assert_eq!(series_value(&metrics, "domesday_ingest_rejected_total", &["reason=\"unsupported\""]), Some(4.0));
}
