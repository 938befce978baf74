//! Unit tests of the pusher: the default set, labels, stale markers, batching
//! limits, response classes, backoff, and the send/spool state machine driven
//! by a scripted transport.

use std::cell::RefCell;
use std::rc::Rc;

use domesday_model::catalog::{
    FAN, LOAD_AVERAGE, MEMORY_USED, POWER, PUSH_ERRORS, PUSH_LAST_SUCCESS, PUSH_SAMPLES, SAMPLE_DURATION,
    SENSOR_ERRORS, SPOOL_BYTES,
};
use domesday_model::remote_write::{decode, is_stale_nan};
use proptest::prelude::*;

use super::*;

fn sample(def: &'static domesday_model::catalog::MetricDef, labels: &[&str], v: f64) -> Sample {
    Sample::new(def, labels.iter().map(|s| (*s).to_string()).collect(), v)
}

fn constant() -> Vec<Label> {
    vec![
        Label { name: "site".into(), value: "caen-1".into() },
        Label { name: "host".into(), value: "h1".into() },
        Label { name: "region".into(), value: "normandie".into() },
    ]
}

fn snapshot() -> Snapshot {
    Snapshot {
        samples: vec![
            sample(&HOST_ENERGY, &["psu_input", "measured"], 1580.0),
            sample(&HOST_POWER, &["psu_input", "measured"], 320.0),
            sample(&SENSOR_UP, &["rapl", "intel-rapl:0"], 1.0),
            sample(&ENERGY, &["rapl", "intel-rapl:0", "package", "0"], 10.0),
            sample(&ENERGY, &["rapl", "intel-rapl:2", "psys", ""], 30.0),
            sample(&ENERGY, &["hwmon", "i2c_0_0_0058/energy1", "psu_input", ""], 20.0),
            sample(&POWER, &["rapl", "intel-rapl:0", "package", "0"], 120.0),
            sample(&TEMPERATURE, &["hwmon", "c", "temp1", "Inlet Temp", "inlet"], 22.0),
            sample(&TEMPERATURE, &["hwmon", "c", "temp2", "CPU", "cpu"], 60.0),
            // Fan speeds (hwmon's and a BMC's) stay on /metrics: not in the default set.
            sample(&FAN, &["hwmon", "c", "fan1", ""], 2100.0),
            sample(&FAN, &["ipmi", "bmc", "FAN1", ""], 8400.0),
            sample(&HOST_INFO, &["v", "p", "cpu", "2", "64", ""], 1.0),
            sample(&AGENT_INFO, &["0.1.0"], 1.0),
            sample(&CPU_UTILIZATION, &[], 0.25),
            sample(&MEMORY_USED, &[], 1e9),
            sample(&LOAD_AVERAGE, &["1m"], 1.0),
            sample(&SENSOR_ERRORS, &["hwmon", "parse"], 2.0),
            sample(&SAMPLE_DURATION, &[], 0.01),
            // A duplicate, as /metrics drops it.
            sample(&CPU_UTILIZATION, &[], 0.99),
        ],
        ..Default::default()
    }
}

fn name(labels: &[Label]) -> &str {
    labels.iter().find(|l| l.name == "__name__").map(|l| l.value.as_str()).unwrap_or("")
}

fn get<'a>(labels: &'a [Label], n: &str) -> Option<&'a str> {
    labels.iter().find(|l| l.name == n).map(|l| l.value.as_str())
}

#[test]
fn the_default_set_is_host_energy_power_health_rapl_inlet_cpu_and_info() {
    let series = tick_series(&snapshot(), SeriesSet::Default, &constant());
    let mut names: Vec<String> = series
        .iter()
        .map(|(l, _)| {
            let extra = get(l, "zone").or(get(l, "location")).unwrap_or("");
            format!("{}{}", name(l), if extra.is_empty() { String::new() } else { format!("/{extra}") })
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "domesday_agent_info",
            "domesday_cpu_utilization_ratio",
            "domesday_energy_joules_total/intel-rapl:0",
            "domesday_energy_joules_total/intel-rapl:2",
            "domesday_host_energy_joules_total",
            "domesday_host_info",
            "domesday_host_power_watts",
            "domesday_sensor_up",
            "domesday_temperature_celsius/inlet",
        ]
    );
    // `all` is every series of the snapshot, deduplicated like /metrics.
    let all = tick_series(&snapshot(), SeriesSet::All, &constant());
    assert_eq!(all.len(), snapshot().samples.len() - 1);
    let cpu: Vec<f64> = all.iter().filter(|(l, _)| name(l) == "domesday_cpu_utilization_ratio").map(|s| s.1).collect();
    assert_eq!(cpu, [0.25]);
}

#[test]
fn labels_are_those_of_metrics_sorted_without_empty_values() {
    let series = tick_series(&snapshot(), SeriesSet::Default, &constant());
    let (labels, v) =
        series.iter().find(|(l, _)| name(l) == "domesday_host_energy_joules_total").expect("host energy").clone();
    assert_eq!(v, 1580.0);
    let pairs: Vec<(&str, &str)> = labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("__name__", "domesday_host_energy_joules_total"),
            ("host", "h1"),
            ("method", "psu_input"),
            ("quality", "measured"),
            ("region", "normandie"),
            ("site", "caen-1"),
        ]
    );
    let psys = series.iter().find(|(l, _)| get(l, "zone") == Some("intel-rapl:2")).expect("psys");
    assert_eq!(get(&psys.0, "socket"), None, "empty socket is left out");
    for (l, _) in &series {
        assert!(l.windows(2).all(|w| w[0].name < w[1].name), "{l:?}");
        assert!(l.iter().all(|x| !x.value.is_empty()));
    }
}

#[test]
fn a_series_that_disappears_gets_one_stale_marker_at_the_tick_time() {
    let mut t = StaleTracker::default();
    let a = vec![Label { name: "__name__".into(), value: "a".into() }];
    let b = vec![Label { name: "__name__".into(), value: "b".into() }];
    let first = t.apply(PushTick { timestamp_ms: 1000, series: vec![(a.clone(), 1.0), (b.clone(), 2.0)] });
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|s| !is_stale_nan(s.samples[0].value)));
    let second = t.apply(PushTick { timestamp_ms: 2000, series: vec![(a.clone(), 1.5)] });
    assert_eq!(second.len(), 2);
    let stale = second.iter().find(|s| s.labels == b).expect("stale marker for b");
    assert!(is_stale_nan(stale.samples[0].value));
    assert_eq!(stale.samples[0].timestamp, 2000);
    let third = t.apply(PushTick { timestamp_ms: 3000, series: vec![(a.clone(), 2.0)] });
    assert_eq!(third.len(), 1, "the marker is sent once");
    // A series that comes back is pushed again, and ended again when it goes.
    let fourth = t.apply(PushTick { timestamp_ms: 4000, series: vec![(a.clone(), 2.0), (b.clone(), 3.0)] });
    assert!(fourth.iter().all(|s| !is_stale_nan(s.samples[0].value)));
    let fifth = t.apply(PushTick { timestamp_ms: 5000, series: vec![] });
    assert_eq!(fifth.iter().filter(|s| is_stale_nan(s.samples[0].value)).count(), 2);
}

fn series_n(n: usize) -> Vec<TimeSeries> {
    (0..n)
        .map(|i| TimeSeries {
            labels: vec![
                Label { name: "__name__".into(), value: "m".into() },
                Label { name: "i".into(), value: format!("{i:08}") },
            ],
            samples: vec![remote_write::Sample { value: i as f64, timestamp: 1 }],
        })
        .collect()
}

fn decoded(batches: &[Batch]) -> Vec<TimeSeries> {
    batches.iter().flat_map(|b| decode(&b.body, 64 << 20).expect("decode").timeseries).collect()
}

#[test]
fn batches_hold_at_most_ten_thousand_samples_in_order() {
    let input = series_n(25_001);
    let (batches, dropped) = encode_batches(input.clone(), MAX_SAMPLES_PER_REQUEST, MAX_REQUEST_BYTES);
    assert_eq!(dropped, 0);
    assert_eq!(batches.iter().map(|b| b.samples).collect::<Vec<_>>(), [10_000, 10_000, 5_001]);
    assert!(batches.iter().all(|b| b.body.len() <= MAX_REQUEST_BYTES));
    assert_eq!(decoded(&batches), input);
}

#[test]
fn batches_are_split_to_fit_the_byte_limit() {
    let input = series_n(3_000);
    let (whole, _) = encode_batches(input.clone(), MAX_SAMPLES_PER_REQUEST, MAX_REQUEST_BYTES);
    assert_eq!(whole.len(), 1);
    let limit = whole[0].body.len() / 5;
    let (batches, dropped) = encode_batches(input.clone(), MAX_SAMPLES_PER_REQUEST, limit);
    assert_eq!(dropped, 0);
    assert!(batches.len() >= 5);
    assert!(batches.iter().all(|b| b.body.len() <= limit));
    assert_eq!(decoded(&batches), input);
}

#[test]
fn a_series_too_large_for_any_request_is_dropped_and_counted() {
    let mut input = series_n(3);
    // Incompressible, so snappy cannot bring it under the limit.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: String = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    input[1].labels.push(Label { name: "z".into(), value: noise });
    let (batches, dropped) = encode_batches(input.clone(), 10, 2000);
    assert_eq!(dropped, 1);
    assert_eq!(decoded(&batches), vec![input[0].clone(), input[2].clone()]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever the limits, every sample arrives once, in order, and every
    /// request respects both limits.
    #[test]
    fn batching_keeps_every_sample_within_both_limits(
        per_series in proptest::collection::vec(1usize..40, 1..120),
        max_samples in 1usize..60,
        max_bytes in 400usize..4000,
    ) {
        let input: Vec<TimeSeries> = per_series.iter().enumerate().map(|(i, n)| TimeSeries {
            labels: vec![Label { name: "__name__".into(), value: format!("s{i}") }],
            samples: (0..*n).map(|k| remote_write::Sample { value: k as f64, timestamp: k as i64 }).collect(),
        }).collect();
        let (batches, dropped) = encode_batches(input.clone(), max_samples, max_bytes);
        prop_assert_eq!(dropped, 0);
        for b in &batches {
            prop_assert!(b.body.len() <= max_bytes);
            prop_assert!(b.samples as usize <= max_samples);
            let req = decode(&b.body, 1 << 20).expect("decode");
            prop_assert_eq!(sample_count(&req.timeseries), b.samples as usize);
        }
        // Flattened (series, sample) sequence is unchanged.
        let flat = |v: &[TimeSeries]| -> Vec<(String, i64)> {
            v.iter().flat_map(|t| t.samples.iter().map(move |s| (t.labels[0].value.clone(), s.timestamp))).collect()
        };
        prop_assert_eq!(flat(&decoded(&batches)), flat(&input));
    }
}

#[test]
fn status_classes_follow_the_push_rules() {
    for s in [200, 204, 299] {
        assert_eq!(classify(s), "sent");
    }
    for s in [429, 500, 502, 503, 504, 599] {
        assert_eq!(classify(s), "retry");
    }
    for s in [301, 400, 401, 403, 404, 413, 415] {
        assert_eq!(classify(s), "reject");
    }
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    let mut b = Backoff::for_interval(Duration::from_secs(15));
    assert_eq!(b.max(), MAX_BACKOFF);
    let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
    assert!(waits[0] >= Duration::from_millis(500) && waits[0] <= Duration::from_secs(1), "{waits:?}");
    assert!(waits.iter().all(|w| *w <= MAX_BACKOFF));
    assert!(waits[11] >= MAX_BACKOFF / 2, "{waits:?}");
    b.reset();
    assert!(b.next_wait() <= Duration::from_secs(1));
    // Short intervals (tests) back off briefly.
    let mut b = Backoff::for_interval(Duration::from_millis(200));
    assert_eq!(b.max(), Duration::from_millis(400));
    assert!((0..20).map(|_| b.next_wait()).all(|w| w <= Duration::from_millis(400) && w >= MIN_BACKOFF / 2));
}

#[test]
fn push_stats_are_exported_with_every_result() {
    let s = PushStats::default();
    s.sent.store(5, Ordering::Relaxed);
    s.last_success_ms.store(1_500, Ordering::Relaxed);
    let v = s.samples();
    let results: Vec<&str> =
        v.iter().filter(|x| x.def.name == PUSH_SAMPLES.name).map(|x| x.labels[0].as_str()).collect();
    assert_eq!(results, ["sent", "spooled", "dropped", "rejected"]);
    let errors: Vec<&str> = v.iter().filter(|x| x.def.name == PUSH_ERRORS.name).map(|x| x.labels[0].as_str()).collect();
    assert_eq!(errors, ["tls", "connect", "timeout", "http"]);
    assert!(v.iter().any(|x| x.def.name == PUSH_LAST_SUCCESS.name && x.value == 1.5));
    assert!(v.iter().any(|x| x.def.name == SPOOL_BYTES.name));
}

#[test]
fn the_version_header_is_the_one_of_the_model() {
    let t = HttpTransport::new("http://127.0.0.1:1/w", &secret("tok"), &Default::default(), Duration::from_secs(1), 1)
        .expect("client");
    assert!(t.headers.contains_key(remote_write::VERSION_HEADER));
    assert!(t.headers.get(AUTHORIZATION).is_some_and(|v| v.is_sensitive()));
    assert!(!format!("{t:?}").contains("tok\""), "{t:?}");
}

#[tokio::test]
async fn a_request_without_an_answer_says_why() {
    // Nothing listens on port 1: no connection.
    let t = HttpTransport::new("http://127.0.0.1:1/w", &secret("tok"), &Default::default(), Duration::from_secs(2), 1)
        .expect("client");
    match t.post(vec![1, 2, 3], Duration::from_secs(2)).await {
        Outcome::Retry { reason, .. } => assert_eq!(reason, PushFailure::Connect),
        o => panic!("{o:?}"),
    }
    // A server that is not TLS behind an https URL: the handshake fails.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let url = format!("https://127.0.0.1:{port}/w");
    let t = HttpTransport::new(&url, &secret("tok"), &Default::default(), Duration::from_secs(2), 1).expect("client");
    match t.post(vec![1, 2, 3], Duration::from_secs(2)).await {
        Outcome::Retry { reason, why, .. } => assert_eq!(reason, PushFailure::Tls, "{why}"),
        o => panic!("{o:?}"),
    }
    let _ = server.join();
}

fn secret(s: &str) -> Secret {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("t");
    std::fs::write(&p, s).expect("write");
    crate::config::load_token(Some(&p), &|_| None).expect("token")
}

// --- the state machine, with a scripted transport ---

#[derive(Default)]
struct Script {
    /// Outcome of the next sends; `Sent` when empty.
    next: RefCell<Vec<Outcome>>,
    /// Every body sent, in order, and whether it was accepted.
    seen: RefCell<Vec<(WriteRequest, bool)>>,
    mode: RefCell<Option<Outcome>>,
}

impl Transport for Rc<Script> {
    async fn send(&self, body: &[u8], _timeout: Duration) -> Outcome {
        let scripted = self.next.borrow_mut().pop();
        let out = scripted.or_else(|| self.mode.borrow().clone()).unwrap_or(Outcome::Sent);
        let req = decode(body, 1 << 20).expect("the pusher sends valid bodies");
        self.seen.borrow_mut().push((req, out == Outcome::Sent));
        out
    }
}

fn retry() -> Outcome {
    Outcome::Retry { why: "HTTP 503: busy".into(), reason: PushFailure::Http, retry_after: None }
}

fn tick(ts: i64, energy: f64) -> PushTick {
    PushTick {
        timestamp_ms: ts,
        series: vec![
            (vec![Label { name: "__name__".into(), value: "e".into() }], energy),
            (vec![Label { name: "__name__".into(), value: "up".into() }], 1.0),
        ],
    }
}

fn pusher(dir: &Path) -> (Pusher<Rc<Script>>, Rc<Script>, Arc<PushStats>) {
    let script = Rc::new(Script::default());
    let stats = Arc::new(PushStats::default());
    let (spool, _) = Spool::open(dir, 8 << 20).expect("spool");
    let p = Pusher::new(
        script.clone(),
        spool,
        stats.clone(),
        Backoff::for_interval(Duration::from_millis(200)),
        Duration::from_secs(1),
        Arc::new(AtomicBool::new(false)),
    );
    (p, script, stats)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// (timestamp of series `e`) of every accepted request, in arrival order.
fn accepted_ts(script: &Script) -> Vec<i64> {
    script
        .seen
        .borrow()
        .iter()
        .filter(|(_, ok)| *ok)
        .flat_map(|(r, _)| {
            r.timeseries
                .iter()
                .filter(|t| t.label("__name__") == Some("e"))
                .map(|t| t.samples[0].timestamp)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn an_outage_spools_and_the_replay_keeps_time_order_without_loss_or_duplicate() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, script, stats) = pusher(dir.path());
    block_on(async {
        p.handle_tick(tick(1, 10.0)).await;
        p.handle_tick(tick(2, 20.0)).await;
        *script.mode.borrow_mut() = Some(retry());
        for ts in 3..=8 {
            p.handle_tick(tick(ts, ts as f64 * 10.0)).await;
        }
        // One attempt (tick 3), then everything queued behind it on disk.
        assert_eq!(script.seen.borrow().len(), 3);
        assert!(p.retry_at.is_some());
        assert_eq!(p.spool.pending_samples(), 12);
        assert!(stats.spool_bytes.load(Ordering::Relaxed) > 0);
        // The collector comes back; the timer fires; the spool drains in order.
        *script.mode.borrow_mut() = None;
        p.retry_at = None;
        while !p.spool.is_empty() {
            p.drain_one().await;
        }
        p.handle_tick(tick(9, 90.0)).await;
    });
    assert_eq!(accepted_ts(&script), (1..=9).collect::<Vec<_>>());
    assert_eq!(stats.sent.load(Ordering::Relaxed), 18);
    assert_eq!(stats.spooled.load(Ordering::Relaxed), 12);
    assert_eq!(stats.dropped.load(Ordering::Relaxed) + stats.rejected.load(Ordering::Relaxed), 0);
    assert_eq!(stats.spool_bytes.load(Ordering::Relaxed), 0);
    assert!(stats.last_success_ms.load(Ordering::Relaxed) > 0);
}

#[test]
fn fresh_ticks_wait_behind_the_spool_even_when_the_collector_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, script, _) = pusher(dir.path());
    block_on(async {
        script.next.borrow_mut().push(retry());
        p.handle_tick(tick(1, 1.0)).await;
        // The retry timer has not fired yet: tick 2 must not overtake tick 1.
        p.handle_tick(tick(2, 2.0)).await;
        assert_eq!(script.seen.borrow().len(), 1);
        p.retry_at = None;
        p.drain_one().await;
        // Spool not empty yet: tick 3 goes behind tick 2.
        p.handle_tick(tick(3, 3.0)).await;
        while !p.spool.is_empty() {
            p.drain_one().await;
        }
    });
    assert_eq!(accepted_ts(&script), [1, 2, 3]);
}

#[test]
fn a_rejected_request_is_counted_logged_and_never_retried() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, script, stats) = pusher(dir.path());
    block_on(async {
        script.next.borrow_mut().push(Outcome::Reject { status: 400, body: "out of order sample".into() });
        p.handle_tick(tick(1, 1.0)).await;
        p.handle_tick(tick(2, 2.0)).await;
    });
    assert!(p.spool.is_empty() && p.retry_at.is_none());
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 2);
    assert_eq!(stats.sent.load(Ordering::Relaxed), 2);
    assert_eq!(script.seen.borrow().len(), 2, "tick 1 was not sent again");
    assert_eq!(accepted_ts(&script), [2]);
}

#[test]
fn a_rejected_spooled_request_is_removed_and_the_next_one_sent() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, script, stats) = pusher(dir.path());
    block_on(async {
        script.next.borrow_mut().push(retry());
        p.handle_tick(tick(1, 1.0)).await;
        p.handle_tick(tick(2, 2.0)).await;
        p.retry_at = None;
        script.next.borrow_mut().push(Outcome::Reject { status: 413, body: "too big".into() });
        p.drain_one().await;
        p.drain_one().await;
    });
    assert!(p.spool.is_empty());
    assert_eq!(accepted_ts(&script), [2]);
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 2);
}

#[test]
fn retry_after_is_honoured_up_to_the_backoff_cap() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, script, _) = pusher(dir.path());
    block_on(async {
        script.next.borrow_mut().push(Outcome::Retry {
            why: "429".into(),
            reason: PushFailure::Http,
            retry_after: Some(Duration::from_secs(3600)),
        });
        let before = tokio::time::Instant::now();
        p.handle_tick(tick(1, 1.0)).await;
        let wait = p.retry_at.expect("retry scheduled") - before;
        assert!(wait <= Duration::from_millis(450), "{wait:?}");
    });
}

#[test]
fn the_spool_left_by_a_stopped_pusher_is_sent_first_by_the_next() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let (mut p, script, _) = pusher(dir.path());
        *script.mode.borrow_mut() = Some(retry());
        block_on(async {
            for ts in 1..=3 {
                p.handle_tick(tick(ts, ts as f64)).await;
            }
        });
    }
    let (mut p, script, stats) = pusher(dir.path());
    block_on(async {
        // The new run's first tick queues behind the old spool.
        p.handle_tick(tick(4, 4.0)).await;
        while !p.spool.is_empty() {
            p.drain_one().await;
        }
    });
    assert_eq!(accepted_ts(&script), [1, 2, 3, 4]);
    assert_eq!(stats.sent.load(Ordering::Relaxed), 8);
}

#[test]
fn the_run_loop_retries_on_its_own_and_returns_when_the_sampler_is_gone() {
    let dir = tempfile::tempdir().expect("tmp");
    let (p, script, stats) = pusher(dir.path());
    // Two failures, then the collector answers.
    script.next.borrow_mut().extend([retry(), retry()]);
    block_on(
        async {
            let (tx, rx) = mpsc::channel(PUSH_QUEUE);
            let run = tokio::task::spawn_local(p.run(rx));
            for ts in 1..=3 {
                tx.send(tick(ts, ts as f64)).await.expect("send");
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while stats.sent.load(Ordering::Relaxed) < 6 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(tx);
            run.await.expect("pusher returns");
        }
        .run_in(tokio::task::LocalSet::new()),
    );
    assert_eq!(accepted_ts(&script), [1, 2, 3]);
    assert_eq!(stats.spool_bytes.load(Ordering::Relaxed), 0);
}

trait RunIn: std::future::Future + Sized {
    fn run_in(self, set: tokio::task::LocalSet) -> impl std::future::Future<Output = Self::Output> {
        async move { set.run_until(self).await }
    }
}

impl<F: std::future::Future> RunIn for F {}

#[test]
fn ticks_are_offered_once_per_push_interval_and_a_full_queue_counts_as_dropped() {
    let (tx, mut rx) = mpsc::channel(2);
    let stats = Arc::new(PushStats::default());
    let mut h = PushHandle {
        tx,
        stats: stats.clone(),
        set: SeriesSet::Default,
        constant: constant(),
        every: Duration::from_millis(200),
        next_due: None,
        full_log: Every::new(LOG_EVERY),
    };
    let snap = snapshot();
    let wall = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    // Sampling every 100 ms (with jitter), pushing every 200 ms.
    for ms in [0u64, 101, 199, 203, 305, 398] {
        h.offer(&snap, Duration::from_millis(ms), wall + Duration::from_millis(ms));
    }
    let mut got = Vec::new();
    while let Ok(t) = rx.try_recv() {
        got.push(t.timestamp_ms - 1_700_000_000_123);
    }
    assert_eq!(got, [0, 203]);
    // The queue holds 2 ticks: the third is dropped and counted, the sampler never waits.
    for ms in [400u64, 600, 800] {
        h.offer(&snap, Duration::from_millis(ms), wall);
    }
    let per_tick = tick_series(&snap, SeriesSet::Default, &constant()).len() as u64;
    assert_eq!(stats.dropped.load(Ordering::Relaxed), per_tick);
}

#[test]
fn a_refused_token_is_named_by_its_source_and_other_rejections_get_no_hint() {
    let from = "token_file /etc/domesday/push.token";
    for status in [401, 403] {
        let hint = reject_hint(status, from).expect("a hint");
        assert!(hint.contains(from) && hint.contains("refused the write token"), "{hint}");
    }
    for status in [400, 404, 413, 415] {
        assert_eq!(reject_hint(status, from), None);
    }
}
