//! The carbon sources against mock HTTP servers on 127.0.0.1 replaying
//! recorded-looking answers (`collector/tests/fixtures/carbon/`): rows, null
//! rows, quota via the cache, a 500, a timeout, malformed JSON, a wrong
//! basis; the `[carbon]` validation; and config → series → CUE end to end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::electricitymaps::ElectricityMapsSource;
use super::rte::RteSource;
use super::service::{CarbonService, ServiceOptions};
use super::*;
use crate::indicators::emissions::{EnergyInterval, time_matched};
use crate::indicators::{Basis, Category, GridCarbon, HallTotals, SiteParams, SiteTotals, compute};

const RTE_FIXTURE: &str = include_str!("../../tests/fixtures/carbon/rte_eco2mix_national_tr.json");
const EM_FIXTURE: &str = include_str!("../../tests/fixtures/carbon/electricitymaps_past_range_fr.json");
const RTE_PATH: &str = "/api/explore/v2.1/catalog/datasets/eco2mix-national-tr/records";
const EM_PATH: &str = "/v3/carbon-intensity/past-range";
const Q: i64 = 15 * 60_000;
const MIN: i64 = 60_000;

fn ms(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().expect("RFC 3339").as_millisecond()
}

/// What the mock answers, in turn (the last answer repeats).
#[derive(Clone)]
enum Answer {
    Json(&'static str),
    Status(u16),
    Sleep(Duration),
    Malformed,
}

#[derive(Default)]
struct Seen {
    queries: Mutex<Vec<String>>,
    tokens: Mutex<Vec<Option<String>>>,
    hits: AtomicUsize,
}

async fn mock(path: &'static str, answers: Vec<Answer>) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let handler = move |RawQuery(q): RawQuery, headers: HeaderMap| {
        let s = s.clone();
        let answers = answers.clone();
        async move {
            let n = s.hits.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut v) = s.queries.lock() {
                v.push(q.unwrap_or_default());
            }
            if let Ok(mut v) = s.tokens.lock() {
                v.push(headers.get("auth-token").and_then(|h| h.to_str().ok()).map(str::to_string));
            }
            let a = answers.get(n).or(answers.last()).cloned().unwrap_or(Answer::Status(500));
            let json = |body: &'static str| -> Response {
                ([(axum::http::header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
            };
            match a {
                Answer::Json(body) => json(body),
                Answer::Status(code) => (
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    r#"{"error_code": "InternalError", "message": "upstream unavailable"}"#,
                )
                    .into_response(),
                Answer::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    json(RTE_FIXTURE)
                }
                Answer::Malformed => json(
                    r#"{"total_count": 6, "results": [{"date_heure": "2026-06-14T19:00:00+00:00", "taux_co2": 15},"#,
                ),
            }
        }
    };
    let app = Router::new().route(path, get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().expect("client")
}

fn rte_service(addr: SocketAddr, opts: ServiceOptions) -> CarbonService {
    let src = RteSource::new(client(opts.timeout), &format!("http://{addr}"), rte::DEFAULT_DATASET);
    CarbonService::new(Arc::new(src), Some(21.7), opts)
}

fn opts() -> ServiceOptions {
    ServiceOptions { timeout: Duration::from_secs(5), ..ServiceOptions::default() }
}

/// Rows become direct quarter-hours starting at `date_heure` (UTC); null and
/// "ND" rows are dropped and their interval takes the fallback, flagged.
#[tokio::test]
async fn rte_rows_null_rows_and_the_query() {
    let (addr, seen) = mock(RTE_PATH, vec![Answer::Json(RTE_FIXTURE)]).await;
    let svc = rte_service(addr, opts());
    let (from, to) = (ms("2026-06-14T19:00:00Z"), ms("2026-06-14T20:30:00Z"));
    let s = svc.series(from, to, ms("2026-06-14T21:00:00Z")).await;
    assert_eq!(s.source, "rte:eco2mix-national-tr");
    assert_eq!(s.basis, FactorBasis::Direct);
    assert_eq!(s.grid_zone, "FR");
    let got: Vec<(i64, f64, bool)> = s.points.iter().map(|p| (p.start_ms - from, p.g_per_kwh, p.fallback)).collect();
    assert_eq!(
        got,
        vec![(0, 15.0, false), (Q, 16.0, false), (2 * Q, 18.0, false), (3 * Q, 21.0, false), (4 * Q, 21.7, true)]
    );
    assert_eq!(s.points[4].end_ms, to);
    assert!(s.fallback_used);
    assert_eq!(s.source_error, None, "the source answered; only its null rows fell back");

    let q = seen.queries.lock().expect("lock")[0].clone();
    let q = q.replace("%20", " ").replace('+', " ").replace("%27", "'").replace("%3A", ":").replace("%3E", ">");
    let q = q.replace("%3C", "<").replace("%3D", "=").replace("%2C", ",");
    for want in [
        "select=date_heure,taux_co2",
        "date_heure >= date'2026-06-14T00:00:00Z'",
        "date_heure < date'2026-06-15T00:00:00Z'",
        "taux_co2 IS NOT NULL",
        "order_by=date_heure",
        "limit=100",
        "offset=0",
        "timezone=UTC",
    ] {
        assert!(q.contains(want), "{want} not in {q}");
    }
}

/// Quota: periods of one day share one call; a day is asked again only after
/// `min_refresh`.
#[tokio::test]
async fn the_cache_keeps_us_inside_the_quota() {
    let (addr, seen) = mock(RTE_PATH, vec![Answer::Json(RTE_FIXTURE)]).await;
    let svc = rte_service(addr, opts());
    let now = ms("2026-06-14T21:00:00Z");
    let day = ms("2026-06-14T00:00:00Z");
    for h in 0..24 {
        let s = svc.series(day + h * 60 * MIN, day + (h + 1) * 60 * MIN, now + h * 10_000).await;
        assert!(!s.points.is_empty());
    }
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1, "24 hourly periods of one day: one call");
    assert_eq!(svc.requests(), 1);
    svc.series(day, day + 60 * MIN, now + 14 * MIN).await;
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1, "within min_refresh (15 min)");
    svc.series(day, day + 60 * MIN, now + 16 * MIN).await;
    assert_eq!(seen.hits.load(Ordering::SeqCst), 2, "after min_refresh");
}

/// A 500 gives the fallback, flagged with the reason; the failure is cached
/// so the source is not hammered.
#[tokio::test]
async fn a_server_error_falls_back() {
    let (addr, seen) = mock(RTE_PATH, vec![Answer::Status(500)]).await;
    let svc = rte_service(addr, opts());
    let (from, to, now) = (ms("2026-06-14T19:00:00Z"), ms("2026-06-14T20:00:00Z"), ms("2026-06-14T21:00:00Z"));
    let s = svc.series(from, to, now).await;
    assert_eq!(s.points.len(), 1);
    assert!(s.points[0].fallback && s.fallback_used);
    assert_eq!((s.points[0].start_ms, s.points[0].end_ms, s.points[0].g_per_kwh), (from, to, 21.7));
    assert!(s.source_error.as_deref().is_some_and(|e| e.contains("500")), "{:?}", s.source_error);
    assert_eq!(s.basis, FactorBasis::Direct, "the fallback has the source's basis");
    svc.series(from, to, now + MIN).await;
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1, "the failure is cached");
}

/// A server that sleeps past the timeout: fallback within the timeout, flagged.
#[tokio::test]
async fn a_timeout_falls_back() {
    let (addr, _) = mock(RTE_PATH, vec![Answer::Sleep(Duration::from_secs(5))]).await;
    let svc = rte_service(addr, ServiceOptions { timeout: Duration::from_millis(300), ..ServiceOptions::default() });
    let t0 = Instant::now();
    let s = svc.series(ms("2026-06-14T19:00:00Z"), ms("2026-06-14T20:00:00Z"), ms("2026-06-14T21:00:00Z")).await;
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    assert!(s.fallback_used && s.points.iter().all(|p| p.fallback));
    assert!(s.source_error.as_deref().is_some_and(|e| e.contains("timed out")), "{:?}", s.source_error);
}

/// Malformed JSON: fallback, flagged as malformed.
#[tokio::test]
async fn malformed_json_falls_back() {
    let (addr, _) = mock(RTE_PATH, vec![Answer::Malformed]).await;
    let svc = rte_service(addr, opts());
    let s = svc.series(ms("2026-06-14T19:00:00Z"), ms("2026-06-14T20:00:00Z"), ms("2026-06-14T21:00:00Z")).await;
    assert!(s.fallback_used && s.points.iter().all(|p| p.fallback));
    assert!(s.source_error.as_deref().is_some_and(|e| e.contains("malformed")), "{:?}", s.source_error);
}

/// A failure after a good answer keeps the good (stale) data rather than the fallback.
#[tokio::test]
async fn stale_data_beats_the_fallback() {
    let (addr, seen) = mock(RTE_PATH, vec![Answer::Json(RTE_FIXTURE), Answer::Status(503)]).await;
    let svc = rte_service(addr, opts());
    let (from, to, now) = (ms("2026-06-14T19:00:00Z"), ms("2026-06-14T20:00:00Z"), ms("2026-06-14T21:00:00Z"));
    svc.series(from, to, now).await;
    let s = svc.series(from, to, now + 20 * MIN).await;
    assert_eq!(seen.hits.load(Ordering::SeqCst), 2);
    assert!(!s.fallback_used);
    assert_eq!(s.points.iter().map(|p| p.g_per_kwh).collect::<Vec<_>>(), vec![15.0, 16.0, 18.0, 21.0]);
    assert!(s.source_error.as_deref().is_some_and(|e| e.contains("503")));
}

/// A long range is fetched a few days per call; the rest is flagged fallback until later calls fill it.
#[tokio::test]
async fn the_fetch_budget_bounds_one_call() {
    let (addr, seen) = mock(RTE_PATH, vec![Answer::Json(RTE_FIXTURE)]).await;
    let svc = rte_service(addr, ServiceOptions { max_fetches_per_call: 2, ..opts() });
    let from = ms("2026-06-10T00:00:00Z");
    let s = svc.series(from, from + 5 * 86_400_000, ms("2026-06-16T00:00:00Z")).await;
    assert_eq!(seen.hits.load(Ordering::SeqCst), 2);
    assert!(s.fallback_used);
    assert!(s.source_error.as_deref().is_some_and(|e| e.contains("budget")));
}

/// Electricity Maps: key in `auth-token`, basis asked for and checked.
#[tokio::test]
async fn electricitymaps_key_rows_and_basis() {
    let (addr, seen) = mock(EM_PATH, vec![Answer::Json(EM_FIXTURE)]).await;
    let base = format!("http://{addr}");
    let src = ElectricityMapsSource::new(client(Duration::from_secs(5)), &base, "FR", "s3cret", FactorBasis::Lifecycle);
    let svc = CarbonService::new(Arc::new(src), Some(56.0), opts());
    let (from, to) = (ms("2026-06-14T17:00:00Z"), ms("2026-06-14T21:00:00Z"));
    let s = svc.series(from, to, ms("2026-06-14T22:00:00Z")).await;
    assert_eq!((s.source.as_str(), s.basis), ("electricitymaps", FactorBasis::Lifecycle));
    let got: Vec<(f64, bool)> = s.points.iter().map(|p| (p.g_per_kwh, p.fallback)).collect();
    assert_eq!(got, vec![(83.0, false), (79.0, false), (88.0, false), (56.0, true)], "null row falls back");
    assert_eq!(s.points[0].end_ms - s.points[0].start_ms, 60 * MIN, "hourly rows");
    assert_eq!(seen.tokens.lock().expect("lock")[0].as_deref(), Some("s3cret"));
    let q = seen.queries.lock().expect("lock")[0].clone();
    for want in
        ["zone=FR", "emissionFactorType=lifecycle", "disableCallerLookup=true", "start=2026-06-14T00%3A00%3A00Z"]
    {
        assert!(q.contains(want), "{want} not in {q}");
    }

    // Configured direct, answered lifecycle: refused, the (direct) fallback stands in, flagged.
    let src = ElectricityMapsSource::new(client(Duration::from_secs(5)), &base, "FR", "s3cret", FactorBasis::Direct);
    let svc = CarbonService::new(Arc::new(src), Some(21.7), opts());
    let s = svc.series(from, to, ms("2026-06-14T22:00:00Z")).await;
    assert!(s.points.iter().all(|p| p.fallback && p.g_per_kwh == 21.7));
    assert!(s.source_error.as_deref().is_some_and(|e| e.contains("basis lifecycle")), "{:?}", s.source_error);
}

// ---------------------------------------------------------------- config

fn parse(text: &str) -> Result<CarbonConfig, String> {
    toml::from_str::<CarbonConfig>(text).map_err(|e| e.to_string())
}

fn refused(text: &str, key: &str, needle: &str) {
    let c = parse(text).expect("parses");
    let e = c.validate().expect_err("must be refused");
    assert_eq!(e.key, key, "{e}");
    assert!(e.to_string().contains(needle), "{e}");
}

#[test]
fn config_validation() {
    // RTE is direct: a lifecycle fallback is a basis mismatch.
    refused(
        "source = \"rte\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 52.0\nbasis = \"lifecycle\"\n",
        "basis",
        "direct",
    );
    refused("source = \"rte\"\ngrid_zone = \"FR\"\n", "fallback_g_per_kwh", "fallback");
    refused("source = \"rte\"\ngrid_zone = \"DE\"\nfallback_g_per_kwh = 21.7\n", "grid_zone", "France");
    refused("source = \"static\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 21.7\n", "basis", "direct");
    refused("source = \"static\"\ngrid_zone = \"XX\"\nbasis = \"lifecycle\"\n", "fallback_g_per_kwh", "no shipped");
    refused("source = \"electricitymaps\"\ngrid_zone = \"DE\"\nfallback_g_per_kwh = 400\n", "api_key_file", "key");
    refused(
        "source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"direct\"\nfallback_g_per_kwh = -3\n",
        "fallback_g_per_kwh",
        "-3",
    );
    refused(
        "source = \"rte\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 21.7\nbase_url = \"ftp://x\"\n",
        "base_url",
        "http",
    );
    refused(
        "source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"direct\"\nfuel_kg_per_litre = 2650\n",
        "fuel_kg_per_litre",
        "2650",
    );
    refused(
        "source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"direct\"\ndataset = \"eco2mix-national-tr\"\n",
        "dataset",
        "rte",
    );
    // Unknown keys are errors.
    let e = parse("source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"direct\"\ncolour = 1\n").expect_err("unknown");
    assert!(e.contains("colour"), "{e}");
    let e = parse("source = \"watttime\"\ngrid_zone = \"FR\"\n").expect_err("unknown source");
    assert!(e.contains("watttime"), "{e}");

    // Valid ones.
    let ok = parse(
        "source = \"rte\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 21.7\nbasis = \"direct\"\n\
         residual_mix_g_per_kwh = 420\nfuel_kg_per_litre = 2.65\ntimeout = \"5s\"\nmin_refresh = \"30m\"\n",
    )
    .expect("parses");
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(ok.effective_basis(), FactorBasis::Direct);
    assert_eq!(ok.min_refresh.0, Duration::from_secs(1800));
    let mut p = SiteParams::default();
    ok.apply(&mut p);
    assert_eq!((p.fuel_kg_per_litre, p.residual_mix_g_per_kwh), (Some(2.65), Some(420.0)));
    let st = parse("source = \"static\"\ngrid_zone = \"DE\"\nbasis = \"lifecycle\"\n").expect("parses");
    assert_eq!(st.validate(), Ok(()));
    let em = parse(
        "source = \"electricitymaps\"\ngrid_zone = \"DK-DK2\"\nfallback_g_per_kwh = 150\napi_key_file = \"/k\"\n",
    )
    .expect("parses");
    assert_eq!(em.validate(), Ok(()));
    assert_eq!(em.effective_basis(), FactorBasis::Lifecycle);
}

/// A year of day chunks from a static source is answered whole in one call:
/// no request is made, so the per-call fetch budget (31 chunks) does not cut
/// an annual report short.
#[tokio::test]
async fn a_static_source_covers_a_whole_year_in_one_call() {
    let c = parse("source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"direct\"\n").expect("parses");
    let svc = c.build().expect("build");
    let (from, to) = (ms("2025-01-01T00:00:00Z"), ms("2026-01-01T00:00:00Z"));
    let s = svc.series(from, to, ms("2026-06-01T00:00:00Z")).await;
    assert_eq!(s.source_error, None);
    assert_eq!(s.points.first().map(|p| p.start_ms), Some(from));
    assert_eq!(s.points.last().map(|p| p.end_ms), Some(to));
    assert!(s.points.windows(2).all(|w| w[0].end_ms == w[1].start_ms), "gapless");
}

#[tokio::test]
async fn static_sources_serve_their_factor() {
    let c = parse("source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"direct\"\n").expect("parses");
    let svc = c.build().expect("build");
    let (from, to) = (ms("2024-03-01T00:00:00Z"), ms("2024-03-02T00:00:00Z"));
    let s = svc.series(from, to, ms("2026-01-01T00:00:00Z")).await;
    assert_eq!(s.source, "static:shipped");
    assert_eq!(s.points.iter().map(|p| p.g_per_kwh).collect::<Vec<_>>(), vec![21.7]);
    assert!(!s.fallback_used);
    let c =
        parse("source = \"static\"\ngrid_zone = \"FR\"\nbasis = \"lifecycle\"\nfallback_g_per_kwh = 52\n").expect("p");
    let s = c.build().expect("build").series(from, to, ms("2026-01-01T00:00:00Z")).await;
    assert_eq!((s.source.as_str(), s.points[0].g_per_kwh, s.basis), ("static:config", 52.0, FactorBasis::Lifecycle));
}

#[tokio::test]
async fn electricitymaps_key_file_is_read_by_build() {
    let (addr, seen) = mock(EM_PATH, vec![Answer::Json(EM_FIXTURE)]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("em.key");
    std::fs::write(&key, "from-file\n").expect("write");
    let text = format!(
        "source = \"electricitymaps\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 56\napi_key_file = \"{}\"\nbase_url = \"http://{addr}\"\n",
        key.display()
    );
    let svc = parse(&text).expect("parses").build().expect("build");
    svc.series(ms("2026-06-14T17:00:00Z"), ms("2026-06-14T18:00:00Z"), ms("2026-06-14T22:00:00Z")).await;
    assert_eq!(seen.tokens.lock().expect("lock")[0].as_deref(), Some("from-file"));
    std::fs::write(&key, "  \n").expect("write");
    assert_eq!(parse(&text).expect("parses").build().map(|_| ()).expect_err("empty key").key, "api_key_file");
}

/// `[carbon]` → mocked RTE → time-matched emissions of hourly grid energy →
/// location-based CUE that names its source and its fallback use.
#[tokio::test]
async fn config_to_cue_end_to_end() {
    let (addr, _) = mock(RTE_PATH, vec![Answer::Json(RTE_FIXTURE)]).await;
    let text = format!(
        "source = \"rte\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 21.7\nbasis = \"direct\"\nbase_url = \"http://{addr}\"\n"
    );
    let cfg = parse(&text).expect("parses");
    let svc = cfg.build().expect("build");
    let (from, to) = (ms("2026-06-14T19:00:00Z"), ms("2026-06-14T21:00:00Z"));
    let s = svc.series(from, to, ms("2026-06-14T22:00:00Z")).await;
    // 1,000 kWh in the first hour, 200 in the second (quarter-hour values 15, 16, 18, 21, then fallback).
    let energy = [
        EnergyInterval { start_ms: from, end_ms: from + 4 * Q, kwh: 1000.0 },
        EnergyInterval { start_ms: from + 4 * Q, end_ms: to, kwh: 200.0 },
    ];
    let e = time_matched(&energy, &s.points, svc.fallback_g_per_kwh()).expect("covered");
    assert!((e.grams - (250.0 * (15.0 + 16.0 + 18.0 + 21.0) + 200.0 * 21.7)).abs() < 1e-6, "{}", e.grams);
    assert_eq!(e.fallback_kwh, 200.0);
    let grid = GridCarbon::from_emissions(&e, &s.source, s.basis);
    let mut t = SiteTotals { utility_in: Some(crate::indicators::Amount::measured(1200.0)), ..Default::default() };
    t.halls.insert(
        String::new(),
        HallTotals { it_in: Some(crate::indicators::Amount::measured(1000.0)), ..Default::default() },
    );
    let mut p = SiteParams::default();
    cfg.apply(&mut p);
    let i = compute::cue(&t, &p, Category::ItInput, Basis::Location, Some(&grid));
    let j = serde_json::to_value(&i).expect("json");
    assert_eq!(j["carbon_source"], "rte:eco2mix-national-tr");
    assert_eq!(j["carbon_fallback"], true);
    assert_eq!(j["carbon_basis"], "direct");
    assert_eq!(j["basis"], "location");
    assert!((i.value.unwrap_or(0.0) - e.grams / 1000.0 / 1000.0).abs() < 1e-12);
}
