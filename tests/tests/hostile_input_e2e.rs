//! Hostile and broken input through the real binaries, the cases the other
//! end-to-end tests do not already cover (the table in `docs/reliability.md`
//! names the test behind each input): each is a clear error or a counted
//! rejection, the process stays up, nothing accepted is lost and nothing wrong
//! is summed.

use std::time::Duration;

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use domesday_tests::{
    Collector, free_port, get_text, host_energy, host_energy_series, now_minute_ms, post_write, series_value,
};

const TOKEN: &str = "caen-secret-token";

fn energy_request(host: &str, points: &[(f64, i64)]) -> Vec<u8> {
    encode(&WriteRequest { timeseries: vec![host_energy_series("caen-1", host, "psu_input", points)] })
}

fn rejected(metrics: &str, reason: &str) -> Option<f64> {
    series_value(metrics, "domesday_ingest_rejected_total", &[&format!("reason=\"{reason}\"")])
}

#[test]
fn suspect_samples_are_counted_and_never_summed() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 1_800_000;
    // ±Inf and a counter no host can reach (10^30 J) between two true readings.
    let body = energy_request(
        "srv-inf",
        &[(10.0, t0), (f64::INFINITY, t0 + 1000), (f64::NEG_INFINITY, t0 + 2000), (1e30, t0 + 3000), (25.0, t0 + 4000)],
    );
    let (code, msg) = post_write(&write, Some(TOKEN), body).expect("post");
    assert_eq!(code, 204, "{msg}");
    assert_eq!(host_energy(&c, "srv-inf", t0, t0 + 60_000)["energy_joules"], 15.0);
    // Timestamps far in the past (a clock reset to 1970, garbage): counted, not booked. Booked, each would
    // spread its series' energy back to its date, into the site's totals, and a query from 1970 would have
    // millions of minutes to walk.
    for (i, t) in [0, -1, i64::MIN, t0 - 400 * 86_400_000].into_iter().enumerate() {
        let host = format!("srv-past-{i}");
        let body = energy_request(&host, &[(5.0, t), (7.0, t0)]);
        assert_eq!(post_write(&write, Some(TOKEN), body).map(|r| r.0), Ok(204), "{host}");
        let body = energy_request(&host, &[(9.0, t0 + 60_000)]);
        assert_eq!(post_write(&write, Some(TOKEN), body).map(|r| r.0), Ok(204), "{host}");
        let e = host_energy(&c, &host, 0, t0 + 120_000);
        assert_eq!((e["energy_joules"].as_f64(), e["samples"].as_u64()), (Some(2.0), Some(2)), "{host}: {e}");
    }
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(rejected(&metrics, "inf"), Some(2.0), "{metrics}");
    assert_eq!(rejected(&metrics, "absurd"), Some(1.0), "{metrics}");
    assert_eq!(rejected(&metrics, "past"), Some(4.0), "{metrics}");
    // Nothing else reached the site's total: 15 J of srv-inf, 2 J of each other host.
    let site = series_value(&metrics, "domesday_site_energy_joules_total", &["site=\"caen-1\"", "role=\"it_in\""]);
    assert_eq!(site, Some(23.0), "{metrics}");
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");
}

fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
    TimeSeries {
        labels: labels.iter().map(|(n, v)| Label { name: (*n).into(), value: (*v).into() }).collect(),
        samples: samples.iter().map(|(v, t)| Sample { value: *v, timestamp: *t }).collect(),
    }
}

#[test]
fn label_and_series_bombs_are_refused_whole_and_out_of_order_samples_are_booked_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(dir.path(), free_port(), TOKEN);
    let write = c.url("/api/v1/write");
    let t0 = now_minute_ms() - 1_800_000;
    let good = host_energy_series("caen-1", "srv-ok", "psu_input", &[(1.0, t0)]);
    let post = |timeseries: Vec<TimeSeries>| {
        post_write(&write, Some(TOKEN), encode(&WriteRequest { timeseries })).expect("post")
    };
    // 65 labels on one series (the limit is 64), next to a good series: the whole request is refused.
    let many: Vec<(String, String)> = (0..64).map(|i| (format!("l{i:02}"), "v".to_string())).collect();
    let mut labels: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    labels.push(("__name__", "x"));
    let (code, msg) = post(vec![good.clone(), series(&labels, &[(1.0, t0)])]);
    assert!(code == 400 && msg.contains("labels"), "{code} {msg}");
    // A 1 MiB label value and a 5,000-byte metric name.
    let long = "v".repeat(1 << 20);
    let (code, msg) = post(vec![good.clone(), series(&[("__name__", "x"), ("host", &long), ("site", "caen-1")], &[])]);
    assert!(code == 400 && msg.contains("4096"), "{code} {msg}");
    let name = "x".repeat(5000);
    let (code, msg) = post(vec![good.clone(), series(&[("__name__", &name), ("site", "caen-1")], &[])]);
    assert!(code == 400 && msg.contains("4096"), "{code} {msg}");
    // 100,001 series in one request (the limit is 100,000), each a new host: refused before anything is booked.
    let hosts: Vec<String> = (0..100_001).map(|i| format!("bomb-{i}")).collect();
    let bomb: Vec<TimeSeries> =
        hosts.iter().map(|h| host_energy_series("caen-1", h, "psu_input", &[(1.0, t0)])).collect();
    let (code, msg) = post(bomb);
    assert!(code == 413 && msg.contains("100000"), "{code} {msg}");
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(rejected(&metrics, "invalid"), Some(3.0), "{metrics}");
    assert_eq!(rejected(&metrics, "too_large"), Some(1.0), "{metrics}");
    assert!(!metrics.contains("bomb-"), "no host of a refused request is known");
    assert_eq!(host_energy(&c, "srv-ok", t0, t0 + 60_000)["samples"], 0, "nothing of a refused request is stored");

    // Samples out of order across requests and repeated: each interval booked once, in time order.
    let points = [(4.0, t0 + 30_000), (1.0, t0), (4.0, t0 + 30_000), (2.0, t0 + 10_000), (1.0, t0), (3.0, t0 + 20_000)];
    for p in points {
        let (code, msg) = post(vec![host_energy_series("caen-1", "srv-late", "psu_input", &[p])]);
        assert_eq!(code, 204, "{msg}");
    }
    let e = host_energy(&c, "srv-late", t0, t0 + 60_000);
    assert_eq!((e["energy_joules"].as_f64(), e["samples"].as_u64()), (Some(3.0), Some(4)), "{e}");
    let metrics = get_text(&c.url("/metrics"), Duration::from_secs(5));
    assert_eq!(series_value(&metrics, "domesday_ingest_samples_total", &["result=\"duplicate\""]), Some(2.0));
    assert_eq!(get_text(&c.url("/healthz"), Duration::from_secs(5)), "ok\n");
}
