//! The collector's HTTP API: remote_write ingest (1.0 and 2.0), the energy,
//! sites and hosts read endpoints, health and `/metrics`. Handlers only
//! validate, hand work to the ledger writer or reader, and format answers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use domesday_model::catalog::{
    COLLECTOR_LEADER, HOST_CLOCK_SKEW, HOST_LAST_SEEN, INGEST_REJECTED, INGEST_REQUESTS, INGEST_SAMPLES,
    INGEST_UNKNOWN_VALUES, LEDGER_DB_BYTES, LEDGER_LAG, SITE_ENERGY,
};
use domesday_model::exposition::{CONTENT_TYPE, Sample, render};
use domesday_model::remote_write::WriteRequestView;
use domesday_model::remote_write2::{self, Counts, Proto, negotiate};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{IngestConfig, Site, SiteConfig, hash_token};
use crate::ingest::{Refusal, authenticate, decompress_body, parse, parse_v2, split, track_unknown};
use crate::ledger::query::{EnergyQuery, rfc3339};
use crate::ledger::writer::{SubmitError, WriterHandle, now_ms};
use crate::ledger::{Batch, LedgerReader, Outcome};

/// Counters behind the collector's `/metrics`.
#[derive(Default)]
pub struct Stats {
    requests: BTreeMap<u16, u64>,
    samples: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
    /// Samples booked under unknown vocabulary values, capped per label (`ingest::track_unknown`).
    unknown: BTreeMap<(&'static str, String), u64>,
    /// The ledger's energy per (site, role) as this process knows it: the
    /// totals read at start or after another process wrote, plus every commit
    /// of its own writer since (µJ, energy roles only).
    ledger_energy: BTreeMap<(String, String), i128>,
    /// `domesday_site_energy_joules_total`: the ledger's energy, never lower
    /// than an earlier export (a counter). After a correction that lowers a
    /// total, it holds until the ledger passes it again.
    site_energy: BTreeMap<(String, String), i128>,
    /// Per site, per host: the newest sample timestamp seen (ms). Hashed: every
    /// request updates it under the lock (ordered when rendered).
    last_seen: BTreeMap<String, HashMap<String, i64>>,
    /// Per site, per host: the sender's clock skew (`domesday_host_clock_skew_seconds`).
    skew: BTreeMap<String, HashMap<String, crate::skew::SkewEstimator>>,
}

/// Whether a role's totals are energy (water and fuel are volumes).
fn energy_role(role: &str) -> bool {
    domesday_model::vocab::Role::parse(role).is_none_or(|r| r.report_unit() == "kWh")
}

impl Stats {
    /// Starts the per-site energy counters from the ledger's totals.
    pub fn with_totals(totals: Vec<(String, String, i128)>) -> Self {
        let mut s = Stats::default();
        s.ledger_totals(totals);
        s
    }

    /// Takes the ledger's totals per (site, role), read when another process
    /// (`import-meters`, `correct`, `swap-meter`) committed: the counters
    /// follow them, and never go down.
    pub fn ledger_totals(&mut self, totals: Vec<(String, String, i128)>) {
        self.ledger_energy =
            totals.into_iter().filter(|(_, r, _)| energy_role(r)).map(|(s, r, e)| ((s, r), e)).collect();
        for (k, e) in &self.ledger_energy {
            let c = self.site_energy.entry(k.clone()).or_insert(0);
            *c = (*c).max(*e);
        }
    }

    /// Books what a commit did (called by the writer thread).
    pub fn committed(&mut self, batches: &[Batch], outcomes: &[Outcome]) {
        for (_, o) in batches.iter().zip(outcomes) {
            // Each batch says how much energy went to each (site, role): a CSV of
            // several meters advances each of their roles.
            for r in &o.by_role {
                let key = (r.site.clone(), r.role.clone());
                let total = self.ledger_energy.entry(key.clone()).or_insert(0);
                *total += r.energy_uj;
                let c = self.site_energy.entry(key).or_insert(0);
                *c = (*c).max(*total);
            }
            for (k, v) in [
                ("booked", o.booked),
                ("duplicate", o.duplicate),
                ("conflict", o.conflict),
                ("host_conflict", o.host_conflict),
                ("too_old", o.too_old),
                ("quarantined", o.quarantined),
            ] {
                *self.samples.entry(k).or_insert(0) += v;
            }
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    pub sites: Vec<Site>,
    pub read_hash: Option<[u8; 32]>,
    /// An expected host silent longer than this (the ledger gap) is listed as missing.
    pub host_silence_ms: i64,
    pub limits: IngestConfig,
    pub writer: WriterHandle,
    pub reader: Arc<dyn LedgerReader>,
    pub stats: Arc<Mutex<Stats>>,
    /// The SQLite ledger's file (`None` on PostgreSQL, whose size the database server reports).
    pub db_path: Option<PathBuf>,
    pub carbon_config: Option<crate::carbon::config::CarbonConfig>,
    pub carbon: Option<Arc<crate::carbon::service::CarbonService>>,
    /// `[forward]`, when configured.
    pub forward: Option<crate::forward::ForwardHandle>,
    /// Site gauges refreshed by `site_metrics::run`.
    pub site_samples: Arc<Mutex<Vec<Sample>>>,
    /// Counters of the facility meter readers.
    pub meter_stats: Arc<crate::meters::reader::MeterStats>,
    /// `[reports] declarations`: other operators' declarations for the region report.
    pub declarations: Vec<String>,
    /// Whether this collector does the site-wide work ([`crate::leader`]).
    pub leading: tokio::sync::watch::Receiver<bool>,
}

pub(crate) type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/api/v1/write", post(write).layer(DefaultBodyLimit::max(body_limit)))
        .route("/api/v1/energy", get(energy))
        .route("/api/v1/sites", get(sites))
        .route("/api/v1/sites/{site}/hosts", get(hosts))
        .route("/api/v1/sites/{site}/indicators", get(indicators))
        .route("/api/v1/reports/eed", get(report_eed))
        .route("/reports/region", get(crate::reports::region_http::report_region))
        .route("/reports/publication", get(report_publication))
        .route("/api/v1/sites/{site}/meter-readings", post(meter_readings).layer(DefaultBodyLimit::max(body_limit)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into() + "\n").into_response()
}

fn count_request(state: &AppState, code: u16) {
    if let Ok(mut s) = state.stats.lock() {
        *s.requests.entry(code).or_insert(0) += 1;
    }
}

fn reject(state: &AppState, r: &Refusal) -> Response {
    if let Ok(mut s) = state.stats.lock() {
        *s.rejected.entry(r.reason()).or_insert(0) += 1;
    }
    count_request(state, r.status());
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, r.to_string())
}

/// Adds the Remote-Write 2.0 `X-Prometheus-Remote-Write-*-Written` headers to
/// an answer to a 2.0 request (`counts` is `None` for 1.0, which has none).
fn with_written(mut r: Response, counts: Option<Counts>) -> Response {
    if let Some(c) = counts {
        for (name, n) in [
            (remote_write2::SAMPLES_WRITTEN, c.samples),
            (remote_write2::HISTOGRAMS_WRITTEN, c.histograms),
            (remote_write2::EXEMPLARS_WRITTEN, c.exemplars),
        ] {
            r.headers_mut().insert(name, header::HeaderValue::from(n));
        }
    }
    r
}

/// A 1.0 body for `[forward]` holding a request's float series (the upstream
/// is spoken to in 1.0; a 2.0 request's histograms and exemplars stay here).
fn as_v1(view: &WriteRequestView<'_>) -> Bytes {
    use domesday_model::remote_write::{Label, TimeSeries, WriteRequest, encode};
    let timeseries = view
        .series()
        .filter(|s| !s.samples.is_empty())
        .map(|s| TimeSeries {
            labels: s.labels.iter().map(|(n, v)| Label { name: (*n).into(), value: (*v).into() }).collect(),
            samples: s.samples.to_vec(),
        })
        .collect();
    Bytes::from(encode(&WriteRequest { timeseries }))
}

/// `POST /api/v1/write`: Remote-Write 1.0 (`prometheus.WriteRequest`) and 2.0
/// (`io.prometheus.write.v2.Request`), told apart by `Content-Type`.
async fn write(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let site = match authenticate(&state.sites, auth) {
        Ok(s) => s.config.id.clone(),
        Err(r) => return reject(&state, &r),
    };
    // A header that is not visible ASCII names no message this receiver reads.
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not ASCII)"));
    let proto = match negotiate(content_type) {
        Ok(p) => p,
        Err(m) => return reject(&state, &Refusal::Unsupported(m)),
    };
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("(not ASCII)"))
        && !enc.eq_ignore_ascii_case("snappy")
    {
        return reject(
            &state,
            &Refusal::Unsupported(format!("Content-Encoding {enc:?}: remote_write bodies are snappy")),
        );
    }
    // From here on a 2.0 request is answered with its Written headers: zero
    // until the ledger has committed it.
    let none = (proto == Proto::V2).then(Counts::default);
    let raw = match decompress_body(&body, &state.limits) {
        Ok(r) => r,
        Err(r) => return with_written(reject(&state, &r), none),
    };
    let decoded = match proto {
        Proto::V1 => parse(&raw).map(|v| (v, None)),
        Proto::V2 => parse_v2(&raw).map(|(v, c)| (v, Some(c))),
    };
    let (view, counts) = match decoded {
        Ok(d) => d,
        Err(r) => return with_written(reject(&state, &r), none),
    };
    let received_ms = now_ms();
    let accepted = match split(&view, &site, received_ms, &state.limits) {
        Ok(a) => a,
        Err(r) => return with_written(reject(&state, &r), none),
    };
    let forwarded = match (&state.forward, proto) {
        (None, _) => None,
        (Some(_), Proto::V1) => Some(body),
        (Some(_), Proto::V2) => Some(as_v1(&view)),
    };
    drop(view);
    if let Ok(mut s) = state.stats.lock() {
        for (k, v) in &accepted.suspect {
            *s.rejected.entry(k).or_insert(0) += v;
            // Quarantined samples are counted as such once committed (`committed`).
            if *k != crate::ingest::FUTURE {
                *s.samples.entry("suspect").or_insert(0) += v;
            }
        }
        *s.samples.entry("not_booked").or_insert(0) += accepted.other;
        for ((label, value), n) in &accepted.unknown {
            if track_unknown(&mut s.unknown, label, value, *n) {
                tracing::warn!(
                    site = %site, label = *label, value = %value,
                    "booking host energy under a {label} this collector does not know (a newer sender?): \
                     classified by its quality label, counted in domesday_ingest_unknown_values_total"
                );
            }
        }
        // The newest sample of each host in this request, for its skew.
        let mut newest: HashMap<&str, i64> = HashMap::with_capacity(accepted.hosts.len());
        for (host, t) in &accepted.hosts {
            let e = newest.entry(host.as_str()).or_insert(*t);
            *e = (*e).max(*t);
        }
        let skews = s.skew.entry(site.clone()).or_default();
        for (host, t) in &newest {
            match skews.get_mut(*host) {
                Some(e) => e.observe(received_ms, *t),
                None => skews.entry((*host).to_string()).or_default().observe(received_ms, *t),
            }
        }
        let hosts = s.last_seen.entry(site.clone()).or_default();
        for (host, t) in accepted.hosts {
            let e = hosts.entry(host).or_insert(t);
            *e = (*e).max(t);
        }
    }
    if accepted.batch.samples.is_empty() && accepted.batch.claims.is_empty() && accepted.batch.quarantine.is_empty() {
        if let (Some(f), Some(b)) = (&state.forward, forwarded) {
            f.offer(b).await;
        }
        count_request(&state, 204);
        return with_written(StatusCode::NO_CONTENT.into_response(), counts);
    }
    match state.writer.submit(accepted.batch).await {
        Ok(Ok(_)) => {
            if let (Some(f), Some(b)) = (&state.forward, forwarded) {
                f.offer(b).await;
            }
            count_request(&state, 204);
            with_written(StatusCode::NO_CONTENT.into_response(), counts)
        }
        Ok(Err(e)) => {
            count_request(&state, 503);
            with_written(error(StatusCode::SERVICE_UNAVAILABLE, format!("ledger commit failed, retry: {e}")), none)
        }
        Err(e @ (SubmitError::Busy | SubmitError::Stopped)) => {
            if let Ok(mut s) = state.stats.lock() {
                *s.rejected.entry("busy").or_insert(0) += 1;
            }
            count_request(&state, 503);
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            with_written(r, none)
        }
    }
}

#[derive(Debug, Deserialize)]
struct CsvParams {
    delimiter: Option<String>,
    #[serde(default)]
    decimal_comma: bool,
    timezone: Option<String>,
}

async fn meter_readings(
    State(state): State<Shared>,
    Path(site): Path<String>,
    Query(p): Query<CsvParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use crate::meters::csv_import::{CsvOptions, parse};
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let writer_site = match authenticate(&state.sites, auth) {
        Ok(s) => s,
        Err(r) => return error(StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNAUTHORIZED), r.to_string()),
    };
    if writer_site.config.id != site {
        return error(
            StatusCode::FORBIDDEN,
            format!("this token writes site {:?}, not {site:?}", writer_site.config.id),
        );
    }
    let delimiter = match p.delimiter.as_deref() {
        None | Some("") => b',',
        Some(d) if d.len() == 1 => d.as_bytes()[0],
        Some(d) => return error(StatusCode::BAD_REQUEST, format!("delimiter {d:?} must be one character")),
    };
    let text = String::from_utf8_lossy(&body);
    let opts = CsvOptions { delimiter, decimal_comma: p.decimal_comma, timezone: p.timezone };
    let batch = match parse(&text, &site, &writer_site.config.meters, &opts) {
        Ok(b) => b,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().take(50).map(|e| e.to_string()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("{} error(s); nothing imported:\n{}", errors.len(), lines.join("\n")),
            );
        }
    };
    let rows = batch.samples.len() + batch.intervals.len();
    match state.writer.submit(batch).await {
        Ok(Ok(o)) => axum::Json(serde_json::json!({
            "rows": rows, "booked": o.booked, "duplicate": o.duplicate, "conflict": o.conflict,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("ledger commit failed, retry: {e}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The read rule, pure: loopback reads freely; any other address needs the
/// read token (compared by hash, in constant time). A site's write token is
/// never a read token (the configuration refuses a read token equal to one).
pub fn read_allowed(read_hash: Option<[u8; 32]>, peer: std::net::IpAddr, authorization: Option<&str>) -> bool {
    if peer.is_loopback() {
        return true;
    }
    let token = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")));
    matches!((read_hash, token), (Some(h), Some(t)) if bool::from(h.ct_eq(&hash_token(t))))
}

/// The rule of `/metrics`: open while no read token is configured (scrapers
/// set up before the read token existed expect it), else the read rule.
pub fn metrics_allowed(read_hash: Option<[u8; 32]>, peer: std::net::IpAddr, authorization: Option<&str>) -> bool {
    read_hash.is_none() || read_allowed(read_hash, peer, authorization)
}

/// Read endpoints: free on loopback, else the read token. `Some` is the refusal.
pub(crate) fn deny_read(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if read_allowed(state.read_hash, peer.ip(), auth) {
        return None;
    }
    Some(error(StatusCode::UNAUTHORIZED, "read endpoints need `Authorization: Bearer <read token>` off loopback"))
}

/// The gate of a read endpoint about one site: `deny_read`, then `site` is
/// required (400) and must be configured (404). `Err` is the refusal (boxed:
/// a `Response` is large).
fn read_site<'a>(
    state: &'a AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    site: Option<&str>,
) -> Result<&'a SiteConfig, Box<Response>> {
    if let Some(r) = deny_read(state, peer, headers) {
        return Err(Box::new(r));
    }
    let Some(site) = site else { return Err(Box::new(error(StatusCode::BAD_REQUEST, "`site` is required"))) };
    state
        .sites
        .iter()
        .find(|s| s.config.id == site)
        .map(|s| &s.config)
        .ok_or_else(|| Box::new(error(StatusCode::NOT_FOUND, format!("no site {site:?}"))))
}

/// RFC 3339 or Unix milliseconds.
pub fn parse_time(name: &str, v: &str) -> Result<i64, String> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("`{name}`: {v:?} is neither RFC 3339 (2026-01-01T00:00:00Z) nor Unix milliseconds ({e})"))
}

/// Parses and checks `[from, to)`: whole minutes, from < to.
pub fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), String> {
    let from = parse_time("from", from.ok_or("`from` is required")?)?;
    let to = parse_time("to", to.ok_or("`to` is required")?)?;
    const MIN: i64 = 60_000;
    if from % MIN != 0 || to % MIN != 0 {
        return Err(format!(
            "bounds must be whole minutes: use from={} and to={}",
            rfc3339(from.div_euclid(MIN) * MIN),
            rfc3339((to + MIN - 1).div_euclid(MIN) * MIN)
        ));
    }
    if from >= to {
        return Err("`from` must be before `to`".into());
    }
    Ok((from, to))
}

#[derive(Debug, Deserialize)]
struct EnergyParams {
    site: Option<String>,
    host: Option<String>,
    meter: Option<String>,
    role: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

async fn energy(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<EnergyParams>,
) -> Response {
    let site = match read_site(&state, peer, &headers, p.site.as_deref()) {
        Ok(c) => c.id.clone(),
        Err(r) => return *r,
    };
    if p.host.is_some() && p.meter.is_some() {
        return error(StatusCode::BAD_REQUEST, "give `host` or `meter`, not both");
    }
    let (from_ms, to_ms) = match parse_range(p.from.as_deref(), p.to.as_deref()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let q = EnergyQuery { site, host: p.host, meter: p.meter, role: p.role, from_ms, to_ms };
    let reader = state.reader.clone();
    match tokio::task::spawn_blocking(move || reader.energy(&q)).await {
        Ok(Ok(report)) => axum::Json(report).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn sites(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = deny_read(&state, peer, &headers) {
        return r;
    }
    let list: Vec<serde_json::Value> = state
        .sites
        .iter()
        .map(|s| {
            let c = &s.config;
            serde_json::json!({
                "id": c.id, "name": c.name, "operator": c.operator,
                "region": c.region, "timezone": c.timezone, "pue_target": c.pue_target,
                "owner": c.owner, "owner_contact": c.owner_contact, "operator_contact": c.operator_contact,
                "address": c.address, "country": c.country, "lau_code": c.lau_code, "nuts3_code": c.nuts3_code,
                "dc_type": c.dc_type, "dc_structure": c.dc_structure,
                "offers_other_type_services": c.offers_other_type_services,
                "entry_into_operation": c.entry_into_operation, "redundancy": c.redundancy,
                "installed_it_power_kw": c.installed_it_power_kw, "total_floor_area_m2": c.total_floor_area_m2,
                "computer_room_floor_area_m2": c.computer_room_floor_area_m2,
                "intake_air_set_point_c": c.intake_air_set_point_c,
                "meters": c.meters.iter().map(|m| serde_json::json!({
                    "id": m.id, "role": m.role, "kind": m.kind, "unit": m.unit, "hall": m.hall,
                })).collect::<Vec<_>>(),
                "expected_hosts": c.expected_hosts, "it_loads": c.it_loads,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "sites": list })).into_response()
}

async fn hosts(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(site): Path<String>,
) -> Response {
    let expected = match read_site(&state, peer, &headers, Some(&site)) {
        Ok(c) => c.expected_hosts.clone(),
        Err(r) => return *r,
    };
    let reader = state.reader.clone();
    let s = site.clone();
    let now = now_ms();
    let read = move || Ok::<_, crate::ledger::StoreError>((reader.hosts(&s, now)?, reader.retired_hosts(&s)?));
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok((rows, retired))) => {
            let (hosts, missing) = with_inventory(rows, &expected, &retired, now - state.host_silence_ms);
            axum::Json(serde_json::json!({ "site": site, "hosts": hosts, "missing": missing })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Host rows marked against the expected inventory: each row gets `expected`
/// and `status` (`reporting`, `silent`: nothing since `since_ms`, `never`:
/// expected but never reported, `retired`: decommissioned with `retire-host`,
/// with `retired` saying who, why and when); expected hosts that never
/// reported get a row. Returns the rows and the expected hosts that are
/// `silent` or `never` (a retired host is not missing).
fn with_inventory(
    rows: Vec<crate::ledger::query::HostRow>,
    expected: &[String],
    retired: &[crate::ledger::Retirement],
    since_ms: i64,
) -> (Vec<serde_json::Value>, Vec<String>) {
    let retirement = |host: &str| {
        retired.iter().find(|r| r.host == host).map(|r| {
            serde_json::json!({
                "by": r.by, "reason": r.reason, "at": crate::ledger::query::rfc3339(r.retired_ms),
            })
        })
    };
    let mut missing = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let last_ms =
            r.last_sample.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond());
        let retired = retirement(&r.host);
        let status = match (&retired, last_ms.is_some_and(|l| l >= since_ms)) {
            (Some(_), _) => "retired",
            (None, true) => "reporting",
            (None, false) => "silent",
        };
        let is_expected = expected.contains(&r.host);
        if is_expected && matches!(status, "silent") {
            missing.push(r.host.clone());
        }
        let mut v = serde_json::to_value(r).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("expected".into(), is_expected.into());
            o.insert("status".into(), status.into());
            o.insert("retired".into(), retired.unwrap_or_default());
        }
        out.push(v);
    }
    for h in expected.iter().filter(|h| !rows.iter().any(|r| &r.host == *h)) {
        let retired = retirement(h);
        if retired.is_none() {
            missing.push(h.clone());
        }
        out.push(serde_json::json!({
            "host": h, "machine_id": null, "first_sample": null, "last_sample": null, "current_method": null,
            "current_quality": null, "estimated_share_24h": null, "conflicting_machine_ids": [],
            "expected": true, "status": if retired.is_some() { "retired" } else { "never" },
            "retired": retired,
        }));
    }
    missing.sort();
    (out, missing)
}

#[derive(Debug, Deserialize)]
struct IndicatorParams {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    /// PUE categories to answer (`1,3`); the site's implied ones when absent.
    category: Option<String>,
}

async fn indicators(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(site): Path<String>,
    Query(p): Query<IndicatorParams>,
) -> Response {
    let site_cfg = match read_site(&state, peer, &headers, Some(&site)) {
        Ok(c) => c.clone(),
        Err(r) => return *r,
    };
    let (from_ms, to_ms) = match parse_range(p.from.as_deref(), p.to.as_deref()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let categories = match p.category.as_deref().map(crate::site_report::parse_categories).transpose() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let params = crate::site_report::params(&site_cfg, state.carbon_config.as_ref());
    let step = p.step.unwrap_or_else(|| "1d".into());
    let reader = state.reader.clone();
    let report = crate::site_report::with_blocking_reads(crate::site_report::report(
        reader.as_ref(),
        &site_cfg,
        &params,
        state.carbon.as_deref(),
        from_ms,
        to_ms,
        &step,
        now_ms(),
        categories.as_deref(),
    ))
    .await;
    match report {
        Ok(r) => axum::Json(r).into_response(),
        Err(crate::site_report::ReportError::Period(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct EedParams {
    site: Option<String>,
    year: Option<i16>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    draft: Option<bool>,
}

/// The period of `year`, or of `from` and `to` (one or the other); `Err` is the 400.
fn eed_period(site: &SiteConfig, p: &EedParams) -> Result<crate::reports::eed::ReportPeriod, Box<Response>> {
    use crate::reports::eed::ReportPeriod;
    match (p.year, &p.from, &p.to) {
        (Some(y), None, None) => ReportPeriod::year(site, y)
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("`year` {y}: {e}")))),
        (None, Some(_), Some(_)) => parse_range(p.from.as_deref(), p.to.as_deref())
            .map(|(from_ms, to_ms)| ReportPeriod { from_ms, to_ms, year: None })
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e))),
        _ => Err(Box::new(error(StatusCode::BAD_REQUEST, "give `year`, or `from` and `to`"))),
    }
}

/// A declaration that could not be made: 422 when incomplete, 400 for a bad
/// period, else 503.
fn document_error(e: crate::reports::document::DocumentError) -> Response {
    use crate::reports::document::DocumentError;
    match e {
        e @ DocumentError::Incomplete { .. } => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        DocumentError::Report(crate::site_report::ReportError::Period(e)) => error(StatusCode::BAD_REQUEST, e),
        e => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/v1/reports/eed`: the document of `report eed` (docs/reports.md);
/// an incomplete declaration is 422 with the list unless `draft=true`.
async fn report_eed(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<EedParams>,
) -> Response {
    use crate::reports::document::{Request, eed_document};
    use crate::reports::render::OutputFormat;
    let site_cfg = match read_site(&state, peer, &headers, p.site.as_deref()) {
        Ok(c) => c.clone(),
        Err(r) => return *r,
    };
    let fmt = p.format.as_deref().unwrap_or("json");
    let Some(format) = OutputFormat::parse(fmt) else {
        return error(StatusCode::BAD_REQUEST, format!("`format` {fmt:?}: use json, csv or xlsx"));
    };
    let period = match eed_period(&site_cfg, &p) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let req = Request { period, format, draft: p.draft.unwrap_or(false) };
    let reader = state.reader.clone();
    let doc = crate::site_report::with_blocking_reads(eed_document(
        reader.as_ref(),
        &site_cfg,
        state.carbon_config.as_ref(),
        state.carbon.as_deref(),
        req,
        now_ms(),
    ))
    .await;
    let (ctype, ext) = match format {
        OutputFormat::Json => ("application/json", "json"),
        OutputFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        OutputFormat::Xlsx => ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    };
    let year = p.year.map(|y| y.to_string()).unwrap_or_else(|| "interim".into());
    let name = format!("eed-{}-{year}.{ext}", site_cfg.id);
    match doc {
        Ok(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, ctype.to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => document_error(e),
    }
}

/// `GET /reports/publication?site=&year=` (or `from`/`to`): the public
/// sheet's HTML page; 422 with the missing fields unless `draft=true`.
async fn report_publication(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<EedParams>,
) -> Response {
    use crate::reports::document::declaration;
    let site_cfg = match read_site(&state, peer, &headers, p.site.as_deref()) {
        Ok(c) => c.clone(),
        Err(r) => return *r,
    };
    let period = match eed_period(&site_cfg, &p) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let reader = state.reader.clone();
    let d = crate::site_report::with_blocking_reads(declaration(
        reader.as_ref(),
        &site_cfg,
        state.carbon_config.as_ref(),
        state.carbon.as_deref(),
        period,
        p.draft.unwrap_or(false),
        now_ms(),
    ))
    .await;
    match d {
        Ok(d) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::reports::publication::html(&d),
        )
            .into_response(),
        Err(e) => document_error(e),
    }
}

async fn readyz(State(state): State<Shared>) -> Response {
    let reader = state.reader.clone();
    match tokio::task::spawn_blocking(move || reader.site_totals().map(|_| ())).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "ledger database not readable"),
    }
}

fn db_bytes(path: &std::path::Path) -> u64 {
    let wal = crate::ledger::sqlite::wal_path(path);
    [path.to_path_buf(), wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// `/metrics` names every site and host with their energy: once a read token
/// is configured, it is a read endpoint like the others (Prometheus sends the
/// token with `authorization: {credentials_file: …}`); without one it stays
/// open, as scrapers that predate the read token expect.
async fn metrics(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !metrics_allowed(state.read_hash, peer.ip(), auth) {
        return error(StatusCode::UNAUTHORIZED, "/metrics needs `Authorization: Bearer <read token>` off loopback");
    }
    let mut samples = Vec::new();
    if let Ok(s) = state.stats.lock() {
        for ((site, role), uj) in &s.site_energy {
            samples.push(Sample::new(&SITE_ENERGY, vec![site.clone(), role.clone()], *uj as f64 / 1e6));
        }
        for (site, hosts) in &s.last_seen {
            let mut hosts: Vec<_> = hosts.iter().collect();
            hosts.sort_unstable();
            for (host, t) in hosts {
                samples.push(Sample::new(&HOST_LAST_SEEN, vec![site.clone(), host.clone()], *t as f64 / 1000.0));
            }
        }
        for (site, hosts) in &s.skew {
            let mut hosts: Vec<_> = hosts.iter().filter_map(|(h, e)| Some((h, e.estimate_ms()?))).collect();
            hosts.sort_unstable();
            for (host, ms) in hosts {
                samples.push(Sample::new(&HOST_CLOCK_SKEW, vec![site.clone(), host.clone()], ms as f64 / 1000.0));
            }
        }
        for (code, n) in &s.requests {
            samples.push(Sample::new(&INGEST_REQUESTS, vec![code.to_string()], *n as f64));
        }
        for (r, n) in &s.samples {
            samples.push(Sample::new(&INGEST_SAMPLES, vec![r.to_string()], *n as f64));
        }
        for (r, n) in &s.rejected {
            samples.push(Sample::new(&INGEST_REJECTED, vec![r.to_string()], *n as f64));
        }
        for ((label, value), n) in &s.unknown {
            samples.push(Sample::new(&INGEST_UNKNOWN_VALUES, vec![label.to_string(), value.clone()], *n as f64));
        }
    }
    if let Ok(site) = state.site_samples.lock() {
        samples.extend(site.iter().cloned());
    }
    samples.extend(state.meter_stats.samples());
    if let Some(f) = &state.forward {
        use std::sync::atomic::Ordering::Relaxed;
        for (result, n) in [
            ("sent", &f.stats.sent),
            ("spooled", &f.stats.spooled),
            ("rejected", &f.stats.rejected),
            ("dropped", &f.stats.dropped),
        ] {
            samples.push(Sample::new(
                &domesday_model::catalog::FORWARD_REQUESTS,
                vec![result.into()],
                n.load(Relaxed) as f64,
            ));
        }
        samples.push(Sample::new(
            &domesday_model::catalog::FORWARD_SPOOL_BYTES,
            vec![],
            f.stats.spool_bytes.load(Relaxed) as f64,
        ));
    }
    samples.push(Sample::new(&LEDGER_LAG, vec![], state.writer.lag_seconds()));
    samples.push(Sample::new(&COLLECTOR_LEADER, vec![], if *state.leading.borrow() { 1.0 } else { 0.0 }));
    if let Some(db) = &state.db_path {
        samples.push(Sample::new(&LEDGER_DB_BYTES, vec![], db_bytes(db) as f64));
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&samples, &[])).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_the_read_token_off_loopback_and_a_write_token_is_not_one() {
        let read = hash_token("reader-secret");
        let remote: std::net::IpAddr = "192.0.2.7".parse().expect("ip");
        let v6: std::net::IpAddr = "2001:db8::7".parse().expect("ip");
        for lo in ["127.0.0.1", "::1"] {
            assert!(read_allowed(None, lo.parse().expect("ip"), None));
        }
        assert!(read_allowed(Some(read), remote, Some("Bearer reader-secret")));
        assert!(read_allowed(Some(read), v6, Some("bearer reader-secret")));
        // A site's write token, no token, another scheme, no read token configured: refused.
        assert!(!read_allowed(Some(read), remote, Some("Bearer site-write-token")));
        assert!(!read_allowed(Some(read), remote, None));
        assert!(!read_allowed(Some(read), remote, Some("Basic cmVhZGVyLXNlY3JldA==")));
        assert!(!read_allowed(None, remote, Some("Bearer reader-secret")));
        // `/metrics`: open without a read token, the read rule with one.
        assert!(metrics_allowed(None, remote, None));
        assert!(!metrics_allowed(Some(read), remote, None));
        assert!(!metrics_allowed(Some(read), remote, Some("Bearer site-write-token")));
        assert!(metrics_allowed(Some(read), remote, Some("Bearer reader-secret")));
        assert!(metrics_allowed(Some(read), "127.0.0.1".parse().expect("ip"), None));
        // And the write rule refuses the read token: no site has it.
        let sites =
            vec![crate::config::Site { config: SiteConfig::default(), token_hash: hash_token("site-write-token") }];
        assert!(crate::ingest::authenticate(&sites, Some("Bearer reader-secret")).is_err());
        assert!(crate::ingest::authenticate(&sites, Some("Bearer site-write-token")).is_ok());
    }

    #[test]
    fn ranges_are_whole_minutes() {
        assert_eq!(
            parse_range(Some("2026-01-01T00:00:00Z"), Some("2026-01-01T01:00:00Z")),
            Ok((1_767_225_600_000, 1_767_229_200_000))
        );
        assert_eq!(parse_range(Some("60000"), Some("120000")), Ok((60_000, 120_000)));
        let e = parse_range(Some("2026-01-01T00:00:30Z"), Some("2026-01-01T00:01:30Z")).expect_err("must be refused");
        assert!(e.contains("from=2026-01-01T00:00:00Z") && e.contains("to=2026-01-01T00:02:00Z"), "{e}");
        assert!(parse_range(Some("120000"), Some("60000")).is_err());
        assert!(parse_range(None, Some("60000")).is_err());
        assert!(parse_range(Some("yesterday"), Some("60000")).expect_err("must be refused").contains("RFC 3339"));
    }

    #[test]
    fn expected_hosts_are_marked_and_the_silent_ones_listed() {
        let row = |host: &str, last: Option<i64>| crate::ledger::query::HostRow {
            host: host.into(),
            machine_id: None,
            first_sample: last.map(crate::ledger::query::rfc3339),
            last_sample: last.map(crate::ledger::query::rfc3339),
            current_method: None,
            current_quality: None,
            estimated_share_24h: None,
            conflicting_machine_ids: vec![],
        };
        let since = 1_767_225_600_000;
        let rows = vec![row("a", Some(since)), row("b", Some(since - 60_000)), row("extra", Some(since - 60_000))];
        let expected: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let rows = [rows, vec![row("old", Some(since - 60_000))]].concat();
        let retired: Vec<crate::ledger::Retirement> = ["old", "d"]
            .iter()
            .map(|h| crate::ledger::Retirement {
                host: h.to_string(),
                by: "ops".into(),
                reason: "decommissioned".into(),
                retired_ms: since,
            })
            .collect();
        let (out, missing) = with_inventory(rows, &expected, &retired, since);
        assert_eq!(missing, vec!["b".to_string(), "c".to_string()]);
        let status: Vec<(String, String, bool)> = out
            .iter()
            .map(|v| {
                (
                    v["host"].as_str().unwrap_or("").into(),
                    v["status"].as_str().unwrap_or("").into(),
                    v["expected"] == true,
                )
            })
            .collect();
        assert_eq!(
            status,
            vec![
                ("a".into(), "reporting".into(), true),
                ("b".into(), "silent".into(), true),
                ("extra".into(), "silent".into(), false),
                ("old".into(), "retired".into(), false),
                ("c".into(), "never".into(), true),
                ("d".into(), "retired".into(), true),
            ]
        );
        assert_eq!(out[3]["retired"]["by"], "ops");
        assert_eq!(out[3]["retired"]["reason"], "decommissioned");
        assert_eq!(out[0]["retired"], serde_json::Value::Null);
    }
}
