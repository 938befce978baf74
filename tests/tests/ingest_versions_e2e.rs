//! The real `domesday-collector` binary against senders of other versions: an
//! agent newer than the collector (a host energy method or quality this
//! collector does not know is booked, not refused).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use domesday_tests::{Collector, free_port, get_text, host_energy_series, post_write, series_value};

const TOKEN: &str = "caen-secret-token";

fn now_minute_ms() -> i64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    ms.div_euclid(60_000) * 60_000
}

fn energy(c: &Collector, host: &str, from: i64, to: i64) -> serde_json::Value {
    let body = get_text(
        &c.url(&format!("/api/v1/energy?site=caen-1&host={host}&from={from}&to={to}")),
        Duration::from_secs(5),
    );
    serde_json::from_str(&body).expect("energy json")
}

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
    let e = energy(&c, "srv-1", t0, t0 + 3_600_000);
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
    assert_eq!(energy(&c, "srv-2", t0, t0 + 3_600_000)["samples"], 0);
}
