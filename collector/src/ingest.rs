//! remote_write ingest rules (contract §6): authentication of the site's token,
//! limits, protocol validation, and the split of a request into what the ledger
//! books and what is only counted. Pure functions over a decoded request, so
//! every rule is unit-tested without HTTP.

use std::collections::BTreeMap;

use domesday_model::remote_write::{DecodeError, WriteRequestView, decompress, is_stale_nan};
use domesday_model::vocab::Method;
use subtle::ConstantTimeEq;

use crate::config::{IngestConfig, Site, hash_token};
use crate::ledger::book::joules_to_uj;
use crate::ledger::{Batch, CounterSample, HOST_ENERGY_METRIC, HostClaim, HostModel, SeriesLabels};

/// Counters far beyond any machine's energy (10 TJ ≈ 2.8 GWh) are suspect.
pub const ABSURD_JOULES: f64 = 1e13;

/// A refused request and the status to answer with. Nothing is stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::TooLarge(_) => 413,
        }
    }

    /// The `reason` label in `domesday_ingest_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "invalid",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "wrong_site",
            Refusal::TooLarge(_) => "too_large",
        }
    }
}

/// A request split for the ledger, with per-reason counts of what is not booked.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    pub batch: Batch,
    /// Samples accepted but not booked, by reason (`nan`, `inf`, `negative`,
    /// `absurd`, `future`, `no_site`).
    pub suspect: BTreeMap<&'static str, u64>,
    /// Samples of other series, validated and not summed.
    pub other: u64,
    /// (host, latest timestamp) per run of series of one host, for last-seen:
    /// a host whose series are not adjacent appears more than once.
    pub hosts: Vec<(String, i64)>,
}

/// Finds the site whose token this is, comparing hashes in constant time.
pub fn authenticate<'a>(sites: &'a [Site], authorization: Option<&str>) -> Result<&'a Site, Refusal> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .ok_or_else(|| Refusal::Unauthorized("missing `Authorization: Bearer <site write token>`".into()))?;
    let presented = hash_token(token);
    let mut found = None;
    for s in sites {
        if bool::from(s.token_hash.ct_eq(&presented)) {
            found = Some(s);
        }
    }
    found.ok_or_else(|| Refusal::Unauthorized("unknown token: no site has this write token".into()))
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Decompresses a body within the limits; [`parse`] decodes what it returns.
pub fn decompress_body(body: &[u8], limits: &IngestConfig) -> Result<Vec<u8>, Refusal> {
    if body.len() > limits.max_body_bytes {
        return Err(Refusal::TooLarge(format!("body of {} bytes exceeds {}", body.len(), limits.max_body_bytes)));
    }
    decompress(body, limits.max_uncompressed_bytes).map_err(refusal)
}

/// Decodes a decompressed body; its labels borrow `raw`.
pub fn parse(raw: &[u8]) -> Result<WriteRequestView<'_>, Refusal> {
    WriteRequestView::parse(raw).map_err(refusal)
}

fn refusal(e: DecodeError) -> Refusal {
    match e {
        DecodeError::TooLarge { .. } => Refusal::TooLarge(e.to_string()),
        _ => Refusal::BadRequest(e.to_string()),
    }
}

/// The labels the rules look at, found in one pass over a series' labels,
/// which also checks each name and that none repeats.
#[derive(Default)]
struct KnownLabels<'a> {
    name: Option<&'a str>,
    site: Option<&'a str>,
    host: Option<&'a str>,
    method: Option<&'a str>,
    machine_id: Option<&'a str>,
}

fn scan_labels<'a>(i: usize, labels: &[(&'a str, &'a str)], limits: &IngestConfig) -> Result<KnownLabels<'a>, Refusal> {
    if labels.len() > limits.max_labels_per_series {
        return Err(Refusal::BadRequest(format!(
            "series {i}: {} labels exceed {}",
            labels.len(),
            limits.max_labels_per_series
        )));
    }
    let mut known = KnownLabels::default();
    // Senders sort label names (remote_write 1.0): strictly ascending names
    // cannot repeat. Anything else is checked pairwise.
    let unique = labels.is_sorted_by(|a, b| a.0 < b.0);
    for (k, &(name, value)) in labels.iter().enumerate() {
        if name.len() + value.len() > limits.max_label_bytes {
            return Err(Refusal::BadRequest(format!(
                "series {i}: label {name:?} is longer than {} bytes",
                limits.max_label_bytes
            )));
        }
        if name != "__name__" && !valid_label_name(name) {
            return Err(Refusal::BadRequest(format!("series {i}: invalid label name {name:?}")));
        }
        if !unique && labels[..k].iter().any(|(n, _)| *n == name) {
            return Err(Refusal::BadRequest(format!("series {i}: duplicate label name {name:?}")));
        }
        let slot = match name {
            "__name__" => &mut known.name,
            "site" => &mut known.site,
            "host" => &mut known.host,
            "method" => &mut known.method,
            "machine_id" => &mut known.machine_id,
            _ => continue,
        };
        *slot = Some(value);
    }
    Ok(known)
}

/// The ledger's preferred order: by host and method, then time.
fn in_order(a: &CounterSample, b: &CounterSample) -> std::cmp::Ordering {
    // Within a run of one series the labels are the same shared struct.
    if std::sync::Arc::ptr_eq(&a.series, &b.series) {
        return a.ts_ms.cmp(&b.ts_ms);
    }
    (&a.series.host, &a.series.method, a.ts_ms).cmp(&(&b.series.host, &b.series.method, b.ts_ms))
}

/// Applies the ingest rules to a decoded request from `site`.
pub fn split(req: &WriteRequestView<'_>, site: &str, now_ms: i64, limits: &IngestConfig) -> Result<Accepted, Refusal> {
    if req.len() > limits.max_series_per_request {
        return Err(Refusal::TooLarge(format!(
            "{} series in one request exceed {}",
            req.len(),
            limits.max_series_per_request
        )));
    }
    let total = req.sample_count();
    if total > limits.max_samples_per_request {
        return Err(Refusal::TooLarge(format!(
            "{total} samples in one request exceed {}",
            limits.max_samples_per_request
        )));
    }
    let max_future = now_ms + limits.max_future.0.as_millis() as i64;
    let site_labels: std::sync::Arc<str> = site.into();
    let mut acc = Accepted::default();
    // At most `total` samples: one allocation, not a doubling series of copies.
    acc.batch.samples.reserve(total);
    for (i, ts) in req.series().enumerate() {
        let known = scan_labels(i, ts.labels, limits)?;
        let name = known.name.unwrap_or("");
        if !valid_metric_name(name) {
            return Err(Refusal::BadRequest(format!("series {i}: missing or invalid metric name {name:?}")));
        }
        let ledger = name == HOST_ENERGY_METRIC;
        match known.site {
            Some(s) if s != site => {
                return Err(Refusal::Forbidden(format!(
                    "series {i} ({name}) belongs to site {s:?}; this token writes site {site:?}"
                )));
            }
            Some(_) => {}
            None if ledger => {
                return Err(Refusal::BadRequest(format!("series {i}: {name} without a `site` label cannot be booked")));
            }
            None => {
                *acc.suspect.entry("no_site").or_insert(0) += ts.samples.len() as u64;
                continue;
            }
        }
        let host = known.host.unwrap_or("");
        if name == "domesday_host_info"
            && let (false, Some(m)) = (host.is_empty(), known.machine_id.filter(|m| !m.is_empty()))
        {
            let label = |k: &str| ts.label(k).unwrap_or("").to_string();
            let model = HostModel {
                vendor: label("vendor"),
                product: label("product"),
                cpu_model: label("cpu_model"),
                sockets: ts.label("sockets").and_then(|s| s.parse().ok()),
            };
            for s in ts.samples {
                acc.batch.claims.push(HostClaim {
                    site: site.into(),
                    host: host.into(),
                    machine_id: m.into(),
                    ts_ms: s.timestamp,
                    model: model.clone(),
                });
            }
        }
        if !host.is_empty()
            && let Some(t) = ts.samples.iter().map(|s| s.timestamp).max()
        {
            match acc.hosts.last_mut() {
                Some((h, e)) if h == host => *e = (*e).max(t),
                _ => acc.hosts.push((host.to_string(), t)),
            }
        }
        if !ledger {
            acc.other += ts.samples.len() as u64;
            continue;
        }
        if host.is_empty() {
            return Err(Refusal::BadRequest(format!("series {i}: {name} without a `host` label cannot be booked")));
        }
        let method_label = known.method.unwrap_or("");
        let Some(method) = Method::ALL.iter().find(|m| m.as_str() == method_label) else {
            return Err(Refusal::BadRequest(format!("series {i}: {name} has an unknown method {method_label:?}")));
        };
        let labels = SeriesLabels::host(site_labels.clone(), host, method.as_str(), method.quality().as_str());
        for s in ts.samples {
            let value_uj = if is_stale_nan(s.value) {
                None
            } else {
                let reason = if s.value.is_nan() {
                    Some("nan")
                } else if s.value.is_infinite() {
                    Some("inf")
                } else if s.value < 0.0 {
                    Some("negative")
                } else if s.value > ABSURD_JOULES {
                    Some("absurd")
                } else if s.timestamp > max_future {
                    Some("future")
                } else {
                    None
                };
                if let Some(r) = reason {
                    *acc.suspect.entry(r).or_insert(0) += 1;
                    continue;
                }
                match joules_to_uj(s.value) {
                    Some(v) => Some(v),
                    None => {
                        *acc.suspect.entry("absurd").or_insert(0) += 1;
                        continue;
                    }
                }
            };
            acc.batch.samples.push(CounterSample::of_series(&labels, s.timestamp, value_uj));
        }
    }
    // Within a request, book each series in time order.
    // Series by series in time order, as the ledger books fastest; usually already so.
    if !acc.batch.samples.is_sorted_by(|a, b| in_order(a, b) != std::cmp::Ordering::Greater) {
        acc.batch.samples.sort_by(in_order);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domesday_model::remote_write::{Label, Sample, TimeSeries, stale_nan};

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| Label { name: (*n).into(), value: (*v).into() }).collect(),
            samples: samples.iter().map(|(v, t)| Sample { value: *v, timestamp: *t }).collect(),
        }
    }

    fn energy(site: &str, samples: &[(f64, i64)]) -> TimeSeries {
        series(
            &[
                ("__name__", HOST_ENERGY_METRIC),
                ("site", site),
                ("host", "h1"),
                ("method", "model"),
                ("quality", "estimated"),
            ],
            samples,
        )
    }

    fn req(ts: Vec<TimeSeries>) -> domesday_model::remote_write::WriteRequest {
        domesday_model::remote_write::WriteRequest { timeseries: ts }
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn books_host_energy_and_counts_the_rest() {
        let r = req(vec![
            energy("s", &[(10.0, NOW - 2000), (11.5, NOW - 1000), (stale_nan(), NOW)]),
            series(&[("__name__", "up"), ("job", "x")], &[(1.0, NOW)]),
            series(&[("__name__", "domesday_cpu_utilization_ratio"), ("site", "s"), ("host", "h1")], &[(0.5, NOW)]),
            series(
                &[("__name__", "domesday_host_info"), ("site", "s"), ("host", "h1"), ("machine_id", "abc")],
                &[(1.0, NOW)],
            ),
        ]);
        let a = split(&(&r).into(), "s", NOW, &IngestConfig::default()).expect("accepted");
        assert_eq!(a.batch.samples.len(), 3);
        assert_eq!(a.batch.samples[1].value_micro, Some(11_500_000));
        assert_eq!(a.batch.samples[2].value_micro, None);
        assert_eq!(&*a.batch.samples[0].series.quality, "estimated");
        assert_eq!(a.suspect.get("no_site"), Some(&1));
        assert_eq!(a.other, 2);
        assert_eq!(
            a.batch.claims,
            vec![HostClaim {
                site: "s".into(),
                host: "h1".into(),
                machine_id: "abc".into(),
                ts_ms: NOW,
                model: HostModel::default()
            }]
        );
    }

    #[test]
    fn suspect_values_are_accepted_not_booked() {
        let r = req(vec![energy(
            "s",
            &[
                (f64::NAN, NOW),
                (f64::INFINITY, NOW + 1),
                (-1.0, NOW + 2),
                (1e20, NOW + 3),
                (5.0, NOW + 3_600_000),
                (5.0, NOW + 4),
            ],
        )]);
        let a = split(&(&r).into(), "s", NOW, &IngestConfig::default()).expect("accepted");
        assert_eq!(a.batch.samples.len(), 1);
        for k in ["nan", "inf", "negative", "absurd", "future"] {
            assert_eq!(a.suspect.get(k), Some(&1), "{k}");
        }
    }

    #[test]
    fn refusals() {
        let limits = IngestConfig::default();
        let other_site = req(vec![energy("s2", &[(1.0, NOW)])]);
        assert!(matches!(split(&(&other_site).into(), "s", NOW, &limits), Err(Refusal::Forbidden(_))));
        let no_site =
            req(vec![series(&[("__name__", HOST_ENERGY_METRIC), ("host", "h"), ("method", "model")], &[(1.0, NOW)])]);
        assert!(matches!(split(&(&no_site).into(), "s", NOW, &limits), Err(Refusal::BadRequest(_))));
        let dup = req(vec![series(&[("__name__", "x"), ("a", "1"), ("a", "2"), ("site", "s")], &[(1.0, NOW)])]);
        assert!(matches!(split(&(&dup).into(), "s", NOW, &limits), Err(Refusal::BadRequest(_))));
        // Unsorted, the repeat far from its first: still found.
        let dup = req(vec![series(&[("site", "s"), ("__name__", "x"), ("a", "1"), ("site", "s")], &[(1.0, NOW)])]);
        assert!(matches!(split(&(&dup).into(), "s", NOW, &limits), Err(Refusal::BadRequest(_))));
        let bad_name = req(vec![series(&[("__name__", "1x"), ("site", "s")], &[(1.0, NOW)])]);
        assert!(matches!(split(&(&bad_name).into(), "s", NOW, &limits), Err(Refusal::BadRequest(_))));
        let bad_label = req(vec![series(&[("__name__", "x"), ("a-b", "1"), ("site", "s")], &[(1.0, NOW)])]);
        assert!(matches!(split(&(&bad_label).into(), "s", NOW, &limits), Err(Refusal::BadRequest(_))));
        let bad_method = req(vec![series(
            &[("__name__", HOST_ENERGY_METRIC), ("site", "s"), ("host", "h"), ("method", "guess")],
            &[(1.0, NOW)],
        )]);
        assert!(matches!(split(&(&bad_method).into(), "s", NOW, &limits), Err(Refusal::BadRequest(_))));
        let small = IngestConfig { max_series_per_request: 1, ..IngestConfig::default() };
        let two = req(vec![energy("s", &[(1.0, NOW)]), energy("s", &[(2.0, NOW)])]);
        assert!(matches!(split(&(&two).into(), "s", NOW, &small), Err(Refusal::TooLarge(_))));
    }

    #[test]
    fn authentication() {
        let site = |id: &str, token: &str| Site {
            config: crate::config::SiteConfig {
                id: id.into(),
                name: String::new(),
                operator: String::new(),
                region: String::new(),
                timezone: "UTC".into(),
                token_sha256: None,
                token_file: None,
                pue_target: None,
                meters: vec![],
                ..Default::default()
            },
            token_hash: hash_token(token),
        };
        let sites = vec![site("a", "tok-a"), site("b", "tok-b")];
        assert_eq!(authenticate(&sites, Some("Bearer tok-b")).map(|s| s.config.id.as_str()), Ok("b"));
        assert!(matches!(authenticate(&sites, Some("Bearer nope")), Err(Refusal::Unauthorized(_))));
        assert!(matches!(authenticate(&sites, None), Err(Refusal::Unauthorized(_))));
    }

    #[test]
    fn bodies_over_the_limits_are_refused_before_decoding() {
        let limits = IngestConfig::default();
        assert!(matches!(decompress_body(&[186, 232, 186, 232, 11, 0, 0], &limits), Err(Refusal::TooLarge(_))));
        assert!(matches!(decompress_body(b"garbage", &limits), Err(Refusal::BadRequest(_))));
        let small = IngestConfig { max_body_bytes: 4, ..IngestConfig::default() };
        assert!(matches!(decompress_body(b"12345", &small), Err(Refusal::TooLarge(_))));
        // Snappy-valid (one 16-byte literal), protobuf-invalid: refused by the decoder.
        let mut not_proto = vec![16, 15 << 2];
        not_proto.extend([0xff; 16]);
        let raw = decompress_body(&not_proto, &limits).expect("valid snappy");
        assert!(matches!(parse(&raw), Err(Refusal::BadRequest(_))));
    }
}
