//! remote_write ingest rules: authentication of the site's token, limits,
//! protocol validation, and the split of a request into what the ledger books
//! and what is only counted. Pure functions over a decoded request, so every
//! rule is unit-tested without HTTP; a Remote-Write 1.0 and a 2.0 body decode
//! to the same view and meet the same rules.

use std::borrow::Cow;
use std::collections::BTreeMap;

use domesday_model::remote_write::{DecodeError, WriteRequestView, decompress, is_stale_nan};
use domesday_model::remote_write2::Counts;
use domesday_model::vocab::{Method, Quality};
use subtle::ConstantTimeEq;

use crate::config::{IngestConfig, Site, hash_token};
use crate::ledger::book::joules_to_uj;
use crate::ledger::{Batch, CounterSample, HOST_ENERGY_METRIC, HostClaim, HostModel, Quarantined, SeriesLabels};

/// Counters far beyond any machine's energy (10 TJ ≈ 2.8 GWh) are suspect.
pub const ABSURD_JOULES: f64 = 1e13;

/// The `reason` of a host sample stamped more than `max_future` ahead of the
/// collector's clock: kept aside in the ledger's `quarantine` table, not booked.
pub const FUTURE: &str = "future";

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
    /// A `Content-Type` or `Content-Encoding` this receiver does not read (415).
    #[error("{0}")]
    Unsupported(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::TooLarge(_) => 413,
            Refusal::Unsupported(_) => 415,
        }
    }

    /// The `reason` label in `domesday_ingest_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "invalid",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "wrong_site",
            Refusal::TooLarge(_) => "too_large",
            Refusal::Unsupported(_) => "unsupported",
        }
    }
}

/// A request split for the ledger, with per-reason counts of what is not booked.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    pub batch: Batch,
    /// Samples accepted but not booked, by reason (`nan`, `inf`, `negative`,
    /// `absurd`, `future`, `no_site`); the `future` ones are also in
    /// `batch.quarantine`, kept aside.
    pub suspect: BTreeMap<&'static str, u64>,
    /// Samples of other series, validated and not summed.
    pub other: u64,
    /// (host, latest timestamp) per run of series of one host, for last-seen:
    /// a host whose series are not adjacent appears more than once.
    pub hosts: Vec<(String, i64)>,
    /// Samples booked under a value this collector's vocabulary does not know,
    /// by (label, value): a sender newer than the collector (see [`classify`]).
    pub unknown: BTreeMap<(&'static str, String), u64>,
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

/// Decodes a decompressed Remote-Write 2.0 body into the same view as a 1.0
/// body (labels resolved into its symbols table, borrowing `raw`), with the
/// counts its response headers report.
pub fn parse_v2(raw: &[u8]) -> Result<(WriteRequestView<'_>, Counts), Refusal> {
    WriteRequestView::parse_v2(raw).map_err(refusal)
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
    quality: Option<&'a str>,
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
            "quality" => &mut known.quality,
            "machine_id" => &mut known.machine_id,
            _ => continue,
        };
        *slot = Some(value);
    }
    Ok(known)
}

/// Longest value of a closed-vocabulary label booked as is when unknown.
pub const MAX_VOCABULARY_VALUE: usize = 64;

/// Whether an unknown value of a closed vocabulary can be stored and shown as
/// is: 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `:`, the shape every
/// vocabulary value has (no separator, control character or space that could
/// blur a series' identity in the ledger or an exposition).
pub fn vocabulary_shaped(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_VOCABULARY_VALUE
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// The method and quality a host energy series is booked under.
///
/// A known method books with the quality the vocabulary gives it. A method this
/// collector does not know (an agent upgraded before its collector, the usual
/// order of a roll-out) is booked under its own name, with the quality its
/// `quality` label states: `measured` or `estimated`, anything else or none is
/// `estimated` (a figure is never claimed measured on a guess). Each unknown
/// value seen (method or quality) is counted with `samples` in `unknown`, so an
/// operator sees the new value. Only a missing, empty or ill-shaped method (see
/// [`vocabulary_shaped`]) is malformed: the series' energy cannot be attributed.
pub fn classify(
    i: usize,
    method: Option<&str>,
    quality: Option<&str>,
    samples: u64,
    unknown: &mut BTreeMap<(&'static str, String), u64>,
) -> Result<(Cow<'static, str>, Cow<'static, str>), Refusal> {
    let method = method.unwrap_or("");
    let stated = match quality {
        None => None,
        Some(q) => match Quality::ALL.iter().find(|k| k.as_str() == q) {
            Some(k) => Some(*k),
            None => {
                if !q.is_empty() {
                    let q = if vocabulary_shaped(q) { q } else { UNKNOWN_OVERFLOW };
                    *unknown.entry(("quality", q.to_string())).or_insert(0) += samples;
                }
                None
            }
        },
    };
    if let Some(m) = Method::ALL.iter().find(|m| m.as_str() == method) {
        return Ok((Cow::Borrowed(m.as_str()), Cow::Borrowed(m.quality().as_str())));
    }
    if !vocabulary_shaped(method) {
        return Err(Refusal::BadRequest(format!(
            "series {i}: {HOST_ENERGY_METRIC} needs a `method` label of 1 to {MAX_VOCABULARY_VALUE} ASCII letters, digits, `_`, `-`, `.` or `:`, not {method:?}"
        )));
    }
    *unknown.entry(("method", method.to_string())).or_insert(0) += samples;
    let quality = stated.unwrap_or(Quality::Estimated);
    Ok((Cow::Owned(method.to_string()), Cow::Borrowed(quality.as_str())))
}

/// How many distinct unknown values per label `domesday_ingest_unknown_values_total`
/// tracks; further values are added to [`UNKNOWN_OVERFLOW`], so a sender cannot
/// grow the collector's memory or its exposition without bound.
pub const UNKNOWN_VALUES_PER_LABEL: usize = 16;

/// The value under which unknown values beyond the cap (or not vocabulary-shaped) are counted.
pub const UNKNOWN_OVERFLOW: &str = "other";

/// Adds `n` samples seen with an unknown `value` of `label` to the tracked
/// counts, folding a value beyond [`UNKNOWN_VALUES_PER_LABEL`] into
/// [`UNKNOWN_OVERFLOW`]. Returns whether `value` is newly tracked (worth a log line).
pub fn track_unknown(
    tracked: &mut BTreeMap<(&'static str, String), u64>,
    label: &'static str,
    value: &str,
    n: u64,
) -> bool {
    let key = (label, value.to_string());
    if let Some(c) = tracked.get_mut(&key) {
        *c += n;
        return false;
    }
    let distinct = tracked.range((label, String::new())..).take_while(|(k, _)| k.0 == label).count();
    let has_overflow = tracked.contains_key(&(label, UNKNOWN_OVERFLOW.to_string()));
    // The overflow bucket does not take one of the named values' places.
    if distinct - usize::from(has_overflow) < UNKNOWN_VALUES_PER_LABEL && value != UNKNOWN_OVERFLOW {
        tracked.insert(key, n);
        true
    } else {
        *tracked.entry((label, UNKNOWN_OVERFLOW.to_string())).or_insert(0) += n;
        false
    }
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
    let min_past = now_ms.saturating_sub(i64::try_from(limits.max_past.0.as_millis()).unwrap_or(i64::MAX));
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
            // A claim stamped in the future would hold the host name for this machine until then.
            for s in ts.samples.iter().filter(|s| s.timestamp <= max_future) {
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
        let (method, quality) = classify(i, known.method, known.quality, ts.samples.len() as u64, &mut acc.unknown)?;
        let labels = SeriesLabels::host(site_labels.clone(), host, method, quality);
        for s in ts.samples {
            // Checked after the value: a NaN or absurd value is refused for that, whenever it is stamped.
            let quarantine = |acc: &mut Accepted| {
                *acc.suspect.entry(FUTURE).or_insert(0) += 1;
                acc.batch.quarantine.push(Quarantined {
                    site: site.to_string(),
                    host: host.to_string(),
                    method: labels.method.to_string(),
                    ts_ms: s.timestamp,
                    value: (!is_stale_nan(s.value)).then_some(s.value),
                    received_ms: now_ms,
                    reason: FUTURE,
                });
            };
            let value_uj = if is_stale_nan(s.value) {
                if s.timestamp > max_future {
                    quarantine(&mut acc);
                    continue;
                }
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
                } else if s.timestamp < min_past {
                    Some("past")
                } else {
                    None
                };
                if let Some(r) = reason {
                    *acc.suspect.entry(r).or_insert(0) += 1;
                    continue;
                }
                if s.timestamp > max_future {
                    quarantine(&mut acc);
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
                // A clock reset to 1970 and a garbage timestamp: far in the past.
                (5.0, 0),
                (5.0, i64::MIN),
                (5.0, NOW - 91 * 86_400_000),
            ],
        )]);
        let a = split(&(&r).into(), "s", NOW, &IngestConfig::default()).expect("accepted");
        assert_eq!(a.batch.samples.len(), 1);
        for k in ["nan", "inf", "negative", "absurd", "future"] {
            assert_eq!(a.suspect.get(k), Some(&1), "{k}");
        }
        // The future sample is kept aside, as sent, with the time it arrived.
        assert_eq!(
            a.batch.quarantine,
            vec![Quarantined {
                site: "s".into(),
                host: "h1".into(),
                method: "model".into(),
                ts_ms: NOW + 3_600_000,
                value: Some(5.0),
                received_ms: NOW,
                reason: FUTURE,
            }]
        );
        assert_eq!(a.suspect.get("past"), Some(&3));
        // Hours or days old (a spool replaying after an outage): booked.
        let r = req(vec![energy("s", &[(5.0, NOW - 89 * 86_400_000), (6.0, NOW - 3_600_000)])]);
        let a = split(&(&r).into(), "s", NOW, &IngestConfig::default()).expect("accepted");
        assert_eq!((a.batch.samples.len(), a.suspect.get("past")), (2, None));
    }

    #[test]
    fn future_samples_are_quarantined_and_the_rest_booked() {
        let limits = IngestConfig::default();
        let bound = limits.max_future.0.as_millis() as i64;
        let r = req(vec![energy(
            "s",
            &[(1.0, NOW - 1000), (2.0, NOW + bound), (3.0, NOW + bound + 1), (stale_nan(), NOW + 3 * bound)],
        )]);
        let a = split(&(&r).into(), "s", NOW, &limits).expect("accepted");
        // At the bound is booked; beyond it is kept aside, a stale marker too (no value).
        let booked: Vec<i64> = a.batch.samples.iter().map(|s| s.ts_ms).collect();
        assert_eq!(booked, vec![NOW - 1000, NOW + bound]);
        let kept: Vec<(i64, Option<f64>)> = a.batch.quarantine.iter().map(|q| (q.ts_ms, q.value)).collect();
        assert_eq!(kept, vec![(NOW + bound + 1, Some(3.0)), (NOW + 3 * bound, None)]);
        assert_eq!(a.suspect.get(FUTURE), Some(&2));
        // A host claim stamped in the future is not recorded.
        let info = |ts: i64| {
            series(
                &[("__name__", "domesday_host_info"), ("site", "s"), ("host", "h1"), ("machine_id", "abc")],
                &[(1.0, ts)],
            )
        };
        let r = req(vec![info(NOW + bound + 1), info(NOW)]);
        let a = split(&(&r).into(), "s", NOW, &limits).expect("accepted");
        assert_eq!(a.batch.claims.iter().map(|c| c.ts_ms).collect::<Vec<_>>(), vec![NOW]);
        // A NaN in the future is refused as NaN, not kept.
        let r = req(vec![energy("s", &[(f64::NAN, NOW + 2 * bound)])]);
        let a = split(&(&r).into(), "s", NOW, &limits).expect("accepted");
        assert!(a.batch.quarantine.is_empty());
        assert_eq!(a.suspect.get("nan"), Some(&1));
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
        // A method that cannot be attributed: missing, empty, or not shaped like a vocabulary value.
        for method in [None, Some(""), Some("bmc dcmi"), Some("a\u{1f}b"), Some(&*"x".repeat(65))] {
            let mut labels = vec![("__name__", HOST_ENERGY_METRIC), ("site", "s"), ("host", "h")];
            labels.extend(method.map(|m| ("method", m)));
            let r = req(vec![energy("s", &[(1.0, NOW)]), series(&labels, &[(1.0, NOW)])]);
            let e = split(&(&r).into(), "s", NOW, &limits).expect_err("malformed method");
            assert!(matches!(&e, Refusal::BadRequest(m) if m.contains("series 1") && m.contains("`method`")), "{e}");
        }
        let small = IngestConfig { max_series_per_request: 1, ..IngestConfig::default() };
        let two = req(vec![energy("s", &[(1.0, NOW)]), energy("s", &[(2.0, NOW)])]);
        assert!(matches!(split(&(&two).into(), "s", NOW, &small), Err(Refusal::TooLarge(_))));
    }

    fn with_method(method: &str, quality: Option<&str>, samples: &[(f64, i64)]) -> TimeSeries {
        let mut labels = vec![("__name__", HOST_ENERGY_METRIC), ("host", "h1"), ("method", method), ("site", "s")];
        labels.extend(quality.map(|q| ("quality", q)));
        series(&labels, samples)
    }

    #[test]
    fn an_unknown_method_is_booked_under_its_name_with_the_quality_it_states() {
        let r = req(vec![
            with_method("psu_input", Some("measured"), &[(1.0, NOW - 2000), (2.0, NOW - 1000)]),
            with_method("cxl_meter", Some("measured"), &[(5.0, NOW - 2000), (7.0, NOW - 1000)]),
            with_method("gpu_model", Some("estimated"), &[(1.0, NOW - 1000)]),
            // No quality, or one this collector does not know: estimated, never claimed measured.
            with_method("future_a", None, &[(1.0, NOW - 1000)]),
            with_method("future_b", Some("calibrated"), &[(1.0, NOW - 1000), (2.0, NOW)]),
            // A known method keeps its vocabulary quality; its unknown quality label is still counted.
            with_method("model", Some("calibrated"), &[(3.0, NOW)]),
        ]);
        let a = split(&(&r).into(), "s", NOW, &IngestConfig::default()).expect("accepted");
        let booked: Vec<(&str, &str, i64)> = a
            .batch
            .samples
            .iter()
            .map(|s| (&*s.series.method, &*s.series.quality, s.value_micro.unwrap_or(-1)))
            .collect();
        assert_eq!(
            booked,
            vec![
                ("cxl_meter", "measured", 5_000_000),
                ("cxl_meter", "measured", 7_000_000),
                ("future_a", "estimated", 1_000_000),
                ("future_b", "estimated", 1_000_000),
                ("future_b", "estimated", 2_000_000),
                ("gpu_model", "estimated", 1_000_000),
                ("model", "estimated", 3_000_000),
                ("psu_input", "measured", 1_000_000),
                ("psu_input", "measured", 2_000_000),
            ]
        );
        let unknown: Vec<(&str, &str, u64)> = a.unknown.iter().map(|((l, v), n)| (*l, v.as_str(), *n)).collect();
        assert_eq!(
            unknown,
            vec![
                ("method", "cxl_meter", 2),
                ("method", "future_a", 1),
                ("method", "future_b", 2),
                ("method", "gpu_model", 1),
                ("quality", "calibrated", 3),
            ]
        );
        // A quality value that is not vocabulary-shaped is counted as `other`, not refused.
        let r = req(vec![with_method("x_y", Some("very measured"), &[(1.0, NOW)])]);
        let a = split(&(&r).into(), "s", NOW, &IngestConfig::default()).expect("accepted");
        assert_eq!(&*a.batch.samples[0].series.quality, "estimated");
        assert_eq!(a.unknown.get(&("quality", UNKNOWN_OVERFLOW.to_string())), Some(&1));
    }

    #[test]
    fn unknown_values_tracked_are_capped_per_label() {
        let mut t = BTreeMap::new();
        for i in 0..UNKNOWN_VALUES_PER_LABEL {
            assert!(track_unknown(&mut t, "method", &format!("m{i}"), 1));
        }
        assert!(!track_unknown(&mut t, "method", "m0", 2), "a tracked value is not new");
        assert!(!track_unknown(&mut t, "method", "one_too_many", 5));
        assert!(!track_unknown(&mut t, "method", "another", 1));
        assert_eq!(t.get(&("method", UNKNOWN_OVERFLOW.to_string())), Some(&6));
        assert_eq!(t.get(&("method", "m0".to_string())), Some(&3));
        // Another label has its own room.
        assert!(track_unknown(&mut t, "quality", "calibrated", 1));
    }

    proptest::proptest! {
        /// Whatever values arrive, in whatever order: at most the cap plus `other` per label,
        /// and every sample counted exactly once.
        #[test]
        fn unknown_tracking_is_bounded_and_loses_no_count(
            seen in proptest::collection::vec((0usize..2, "[a-z]{1,3}", 1u64..5), 0..200)
        ) {
            let mut t = BTreeMap::new();
            let mut total = 0;
            for (l, v, n) in &seen {
                track_unknown(&mut t, ["method", "quality"][*l], v, *n);
                total += n;
            }
            for label in ["method", "quality"] {
                proptest::prop_assert!(t.keys().filter(|k| k.0 == label).count() <= UNKNOWN_VALUES_PER_LABEL + 1);
            }
            proptest::prop_assert_eq!(t.values().sum::<u64>(), total);
        }
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
