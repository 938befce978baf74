//! Prometheus Remote-Write 2.0 (`io.prometheus.write.v2.Request`,
//! <https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/>): the content
//! negotiation on `Content-Type`, the response header names, the messages
//! written by hand with prost derives (for senders and tests), and the
//! receiver's borrowing decoder, which resolves each series' `labels_refs`
//! into the `symbols` table and yields the same [`WriteRequestView`] as a 1.0
//! body, so both versions go through the same ingest rules.
//!
//! The body is snappy-compressed like 1.0's ([`crate::remote_write::decompress`]).

use prost::Message;

use crate::remote_write::{DecodeError, Sample, WriteRequestView, delimited, malformed, parse_sample};

/// The `proto` parameter of the 1.0 message's `Content-Type`.
pub const PROTO_V1: &str = "prometheus.WriteRequest";
/// The `proto` parameter of the 2.0 message's `Content-Type`.
pub const PROTO_V2: &str = "io.prometheus.write.v2.Request";
/// `Content-Type` of a 2.0 request.
pub const CONTENT_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
/// `X-Prometheus-Remote-Write-Version` a 2.0 sender sends.
pub const VERSION: &str = "2.0.0";
/// Response headers: how many of each were written (accepted) by the receiver.
pub const SAMPLES_WRITTEN: &str = "X-Prometheus-Remote-Write-Samples-Written";
pub const HISTOGRAMS_WRITTEN: &str = "X-Prometheus-Remote-Write-Histograms-Written";
pub const EXEMPLARS_WRITTEN: &str = "X-Prometheus-Remote-Write-Exemplars-Written";

/// The message a request's `Content-Type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `prometheus.WriteRequest` (Remote-Write 1.0).
    V1,
    /// `io.prometheus.write.v2.Request` (Remote-Write 2.0).
    V2,
}

/// Which message a `Content-Type` names, or why it names none this receiver
/// reads (to be answered 415). `application/x-protobuf` without `proto` is 1.0,
/// as the specification says; so is a request without `Content-Type` (1.0
/// senders that omit it; a 2.0 sender always names its message). Media type and
/// parameter names are case-insensitive; the value may be quoted.
pub fn negotiate(content_type: Option<&str>) -> Result<Proto, String> {
    let Some(ct) = content_type else {
        return Ok(Proto::V1);
    };
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(format!(
            "Content-Type {ct:?} is not supported: send application/x-protobuf (Remote-Write 1.0) or {CONTENT_TYPE} (2.0)"
        ));
    }
    let mut proto = Proto::V1;
    for p in parts {
        let Some((k, v)) = p.split_once('=') else { continue };
        if !k.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        proto = match v {
            PROTO_V1 => Proto::V1,
            PROTO_V2 => Proto::V2,
            other => {
                return Err(format!(
                    "Content-Type proto={other:?} is not supported: this receiver reads proto={PROTO_V1} and proto={PROTO_V2}"
                ));
            }
        };
    }
    Ok(proto)
}

/// `io.prometheus.write.v2.Request` (fields 1 to 3 are reserved).
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    /// Deduplicated strings the series refer to by index; the first is `""`.
    #[prost(string, repeated, tag = "4")]
    pub symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// (name, value) pairs of indices into `symbols`.
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<Histogram>,
    #[prost(message, repeated, tag = "4")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<Metadata>,
    /// When the counter started (ms); 0 is unset.
    #[prost(int64, tag = "6")]
    pub created_timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Exemplar {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metadata {
    /// `MetricType` (0 unspecified, 1 counter, 2 gauge, 3 histogram, 4 gauge
    /// histogram, 5 summary, 6 info, 7 stateset), as its varint.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "3")]
    pub help_ref: u32,
    #[prost(uint32, tag = "4")]
    pub unit_ref: u32,
}

/// A native histogram sample (the same field numbers as in 1.0's `prompb`).
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(oneof = "histogram::Count", tags = "1, 2")]
    pub count: Option<histogram::Count>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(oneof = "histogram::ZeroCount", tags = "6, 7")]
    pub zero_count: Option<histogram::ZeroCount>,
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "10")]
    pub negative_counts: Vec<f64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "13")]
    pub positive_counts: Vec<f64>,
    /// `ResetHint` as its varint.
    #[prost(int32, tag = "14")]
    pub reset_hint: i32,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
    #[prost(double, repeated, tag = "16")]
    pub custom_values: Vec<f64>,
}

pub mod histogram {
    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum Count {
        #[prost(uint64, tag = "1")]
        CountInt(u64),
        #[prost(double, tag = "2")]
        CountFloat(f64),
    }

    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum ZeroCount {
        #[prost(uint64, tag = "6")]
        ZeroCountInt(u64),
        #[prost(double, tag = "7")]
        ZeroCountFloat(f64),
    }
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

/// Serialises and snappy-compresses a 2.0 request.
pub fn encode(req: &Request) -> Vec<u8> {
    let raw = req.encode_to_vec();
    // As for 1.0: compressing into a Vec only fails above snappy's 4 GiB limit.
    snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default()
}

/// What a 2.0 request holds besides its float samples, counted for the
/// `X-Prometheus-Remote-Write-*-Written` response headers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub samples: u64,
    pub histograms: u64,
    pub exemplars: u64,
}

fn symbol<'a>(symbols: &[&'a str], r: u64, what: &str) -> Result<&'a str, DecodeError> {
    usize::try_from(r).ok().and_then(|i| symbols.get(i)).copied().ok_or_else(|| {
        DecodeError::Request2(format!("{what} refers to symbol {r}; the symbols table has {} entries", symbols.len()))
    })
}

/// Checks that a list of label references pairs up and points into the table.
fn check_refs(symbols: &[&str], refs: &[u32], what: &str) -> Result<(), DecodeError> {
    if !refs.len().is_multiple_of(2) {
        return Err(DecodeError::Request2(format!("{what} has an odd number ({}) of label references", refs.len())));
    }
    refs.iter().try_for_each(|r| symbol(symbols, u64::from(*r), what).map(|_| ()))
}

impl<'a> WriteRequestView<'a> {
    /// Decodes an uncompressed `io.prometheus.write.v2.Request`: each series'
    /// labels resolved into `symbols` (borrowing `raw`), its float samples, and
    /// the counts of samples, histogram samples and exemplars. It accepts what
    /// prost's [`Request::decode`] accepts, and refuses in addition a label,
    /// exemplar or metadata reference outside the symbols table and an odd
    /// number of label references (the specification's MUSTs that decide what
    /// a series is). Histograms, exemplars and metadata are checked, counted
    /// and not kept; `created_timestamp` is read and not used.
    pub fn parse_v2(raw: &'a [u8]) -> Result<(Self, Counts), DecodeError> {
        use prost::encoding::{WireType, decode_key, skip_field};
        // Symbols first: a sender may write them after the series.
        let mut symbols: Vec<&'a str> = Vec::new();
        let mut series: Vec<&'a [u8]> = Vec::new();
        let mut buf = raw;
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            match tag {
                4 => symbols.push(
                    std::str::from_utf8(delimited(&mut buf, wire_type)?)
                        .map_err(|_| malformed("invalid string value: data is not UTF-8 encoded"))?,
                ),
                5 => series.push(delimited(&mut buf, wire_type)?),
                _ => skip_field(wire_type, tag, &mut buf, Default::default())?,
            }
        }
        let mut v = WriteRequestView::default();
        let mut counts = Counts::default();
        for (i, mut buf) in series.into_iter().enumerate() {
            let what = format!("series {i}");
            // A name waiting for its value: refs pair up across packed runs.
            let mut name: Option<&'a str> = None;
            let mut metadata: Option<Metadata> = None;
            while !buf.is_empty() {
                let (tag, wire_type) = decode_key(&mut buf)?;
                match tag {
                    1 => {
                        let mut push = |r: u64| -> Result<(), DecodeError> {
                            // prost reads a uint32 as the varint's low 32 bits.
                            let s = symbol(&symbols, u64::from(r as u32), &what)?;
                            match name.take() {
                                None => name = Some(s),
                                Some(n) => v.labels.push((n, s)),
                            }
                            Ok(())
                        };
                        match wire_type {
                            WireType::LengthDelimited => {
                                let mut packed = delimited(&mut buf, wire_type)?;
                                while !packed.is_empty() {
                                    push(prost::encoding::decode_varint(&mut packed)?)?;
                                }
                            }
                            _ => {
                                prost::encoding::check_wire_type(WireType::Varint, wire_type)?;
                                push(prost::encoding::decode_varint(&mut buf)?)?;
                            }
                        }
                    }
                    2 => v.samples.push(parse_sample(delimited(&mut buf, wire_type)?)?),
                    3 => {
                        Histogram::decode(delimited(&mut buf, wire_type)?)?;
                        counts.histograms += 1;
                    }
                    4 => {
                        let e = Exemplar::decode(delimited(&mut buf, wire_type)?)?;
                        check_refs(&symbols, &e.labels_refs, &format!("{what}: an exemplar"))?;
                        counts.exemplars += 1;
                    }
                    // A message field seen twice is merged, as prost does.
                    5 => metadata.get_or_insert_default().merge(delimited(&mut buf, wire_type)?)?,
                    6 => {
                        prost::encoding::check_wire_type(WireType::Varint, wire_type)?;
                        prost::encoding::decode_varint(&mut buf)?;
                    }
                    _ => skip_field(wire_type, tag, &mut buf, Default::default())?,
                }
            }
            if name.is_some() {
                return Err(DecodeError::Request2(format!("{what} has an odd number of label references")));
            }
            if let Some(m) = metadata {
                check_refs(&symbols, &[m.help_ref, m.unit_ref], &format!("{what}: its metadata"))?;
            }
            v.ends.push((v.labels.len(), v.samples.len()));
        }
        counts.samples = v.samples.len() as u64;
        Ok((v, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_write::tests::damaged;
    use crate::remote_write::{decompress, stale_nan};
    use proptest::prelude::*;

    #[test]
    fn content_types() {
        assert_eq!(negotiate(None), Ok(Proto::V1));
        assert_eq!(negotiate(Some("application/x-protobuf")), Ok(Proto::V1));
        assert_eq!(negotiate(Some("application/x-protobuf;proto=prometheus.WriteRequest")), Ok(Proto::V1));
        assert_eq!(negotiate(Some(CONTENT_TYPE)), Ok(Proto::V2));
        assert_eq!(negotiate(Some("Application/X-Protobuf; Proto=\"io.prometheus.write.v2.Request\"")), Ok(Proto::V2));
        let e = negotiate(Some("application/x-protobuf;proto=io.prometheus.write.v3.Request")).expect_err("v3");
        assert!(e.contains("io.prometheus.write.v3.Request") && e.contains(PROTO_V2), "{e}");
        assert!(negotiate(Some("application/json")).is_err());
        assert!(negotiate(Some("")).is_err());
    }

    fn request() -> Request {
        let symbols = ["", "__name__", "up", "job", "a", "trace_id", "t1", "help text"];
        Request {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            timeseries: vec![
                TimeSeries {
                    labels_refs: vec![1, 2, 3, 4],
                    samples: vec![Sample { value: 1.0, timestamp: 10 }, Sample { value: stale_nan(), timestamp: 20 }],
                    exemplars: vec![Exemplar { labels_refs: vec![5, 6], value: 0.5, timestamp: 10 }],
                    metadata: Some(Metadata { r#type: 2, help_ref: 7, unit_ref: 0 }),
                    created_timestamp: 5,
                    ..Default::default()
                },
                TimeSeries {
                    labels_refs: vec![1, 2],
                    histograms: vec![
                        Histogram { count: Some(histogram::Count::CountInt(3)), timestamp: 10, ..Default::default() },
                        Histogram {
                            count: Some(histogram::Count::CountFloat(3.0)),
                            timestamp: 20,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn resolves_labels_and_counts_what_it_does_not_keep() {
        let body = encode(&request());
        let raw = decompress(&body, 1 << 20).expect("snappy");
        let (v, counts) = WriteRequestView::parse_v2(&raw).expect("valid");
        assert_eq!(counts, Counts { samples: 2, histograms: 2, exemplars: 1 });
        let s: Vec<_> = v.series().collect();
        assert_eq!(s[0].labels, &[("__name__", "up"), ("job", "a")]);
        assert_eq!(s[0].samples.len(), 2);
        assert_eq!(s[1].labels, &[("__name__", "up")]);
        assert!(s[1].samples.is_empty());
        // A 1.0 decoder reads a 2.0 body as an empty request (fields 1 to 3 reserved).
        assert!(WriteRequestView::parse(&raw).expect("1.0 view").is_empty());
    }

    #[test]
    fn references_pair_up_across_packed_and_unpacked_runs() {
        let mut raw = Vec::new();
        for s in ["", "__name__", "up", "job", "a"] {
            raw.extend([0x22, s.len() as u8]);
            raw.extend(s.as_bytes());
        }
        // labels_refs: 1 unpacked, then 2 and 3 packed, then 4 unpacked; created_timestamp 7.
        let series = [0x08, 1, 0x0a, 2, 2, 3, 0x08, 4, 0x30, 7];
        raw.extend([0x2a, series.len() as u8]);
        raw.extend(series);
        let (v, _) = WriteRequestView::parse_v2(&raw).expect("valid");
        assert_eq!(v.series().next().map(|s| s.labels.to_vec()), Some(vec![("__name__", "up"), ("job", "a")]));
        assert_eq!(viewed(&raw), owned(&raw));
    }

    #[test]
    fn bad_references_are_refused() {
        let mut odd = request();
        odd.timeseries[0].labels_refs.pop();
        let mut outside = request();
        outside.timeseries[1].labels_refs[1] = 8;
        let mut exemplar = request();
        exemplar.timeseries[0].exemplars[0].labels_refs = vec![5];
        let mut help = request();
        help.timeseries[0].metadata = Some(Metadata { r#type: 1, help_ref: 99, unit_ref: 0 });
        let mut no_symbols = request();
        no_symbols.symbols.clear();
        for (what, r) in
            [("odd", odd), ("outside", outside), ("exemplar", exemplar), ("help", help), ("none", no_symbols)]
        {
            let raw = r.encode_to_vec();
            assert!(Request::decode(raw.as_slice()).is_ok(), "{what}: valid protobuf");
            let e = WriteRequestView::parse_v2(&raw).expect_err(what);
            assert!(matches!(e, DecodeError::Request2(_)), "{what}: {e}");
        }
    }

    /// What prost's owned decode, with the same reference checks, and the view make of the same bytes.
    type Decoded = (Vec<(Vec<(String, String)>, Vec<(u64, i64)>)>, Counts);

    fn owned(raw: &[u8]) -> Option<Decoded> {
        let r = Request::decode(raw).ok()?;
        let sym = |i: u32| r.symbols.get(i as usize).cloned();
        let mut out = Vec::new();
        let mut counts = Counts::default();
        for t in &r.timeseries {
            if !t.labels_refs.len().is_multiple_of(2) {
                return None;
            }
            let mut labels = Vec::new();
            for p in t.labels_refs.chunks(2) {
                labels.push((sym(p[0])?, sym(p[1])?));
            }
            for e in &t.exemplars {
                if !e.labels_refs.len().is_multiple_of(2) || e.labels_refs.iter().any(|i| sym(*i).is_none()) {
                    return None;
                }
            }
            if let Some(m) = &t.metadata {
                sym(m.help_ref)?;
                sym(m.unit_ref)?;
            }
            counts.samples += t.samples.len() as u64;
            counts.histograms += t.histograms.len() as u64;
            counts.exemplars += t.exemplars.len() as u64;
            out.push((labels, t.samples.iter().map(|s| (s.value.to_bits(), s.timestamp)).collect()));
        }
        Some((out, counts))
    }

    fn viewed(raw: &[u8]) -> Option<Decoded> {
        WriteRequestView::parse_v2(raw).ok().map(|(v, counts)| {
            let series = v
                .series()
                .map(|t| {
                    (
                        t.labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                        t.samples.iter().map(|s| (s.value.to_bits(), s.timestamp)).collect(),
                    )
                })
                .collect();
            (series, counts)
        })
    }

    fn any_request() -> impl Strategy<Value = Request> {
        proptest::collection::vec("\\PC{0,6}", 0..9).prop_flat_map(|symbols| {
            let n = symbols.len() as u32;
            // Mostly references into the table, now and then one just past its end.
            let one = move || prop_oneof![9 => 0..n.max(1), 1 => Just(n)];
            // Mostly whole pairs, now and then a lone reference.
            let refs = move || {
                (proptest::collection::vec((one(), one()), 0..4), proptest::option::weighted(0.1, one())).prop_map(
                    |(pairs, lone)| pairs.into_iter().flat_map(|(a, b)| [a, b]).chain(lone).collect::<Vec<u32>>(),
                )
            };
            let sample = (any::<f64>(), any::<i64>()).prop_map(|(value, timestamp)| Sample { value, timestamp });
            let histogram = (any::<u64>(), any::<f64>(), -4i32..9, proptest::collection::vec(any::<i64>(), 0..3))
                .prop_map(|(c, sum, schema, positive_deltas)| Histogram {
                    count: Some(histogram::Count::CountInt(c)),
                    sum,
                    schema,
                    positive_spans: vec![BucketSpan { offset: 0, length: positive_deltas.len() as u32 }],
                    positive_deltas,
                    ..Default::default()
                });
            let exemplar = (refs(), any::<f64>(), any::<i64>()).prop_map(|(labels_refs, value, timestamp)| Exemplar {
                labels_refs,
                value,
                timestamp,
            });
            let metadata = proptest::option::of((0i32..8, one(), one()).prop_map(|(t, h, u)| Metadata {
                r#type: t,
                help_ref: h,
                unit_ref: u,
            }));
            let series = (
                refs(),
                proptest::collection::vec(sample, 0..4),
                proptest::collection::vec(histogram, 0..2),
                proptest::collection::vec(exemplar, 0..2),
                metadata,
                any::<i64>(),
            )
                .prop_map(|(labels_refs, samples, histograms, exemplars, metadata, created_timestamp)| TimeSeries {
                    labels_refs,
                    samples,
                    histograms,
                    exemplars,
                    metadata,
                    created_timestamp,
                });
            proptest::collection::vec(series, 0..5)
                .prop_map(move |timeseries| Request { symbols: symbols.clone(), timeseries })
        })
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = WriteRequestView::parse_v2(&body);
        }

        #[test]
        fn view_decodes_what_prost_encodes(req in any_request()) {
            let raw = req.encode_to_vec();
            prop_assert_eq!(viewed(&raw), owned(&raw));
        }

        /// Any bytes, including a valid request cut or flipped anywhere: both accept or both refuse, alike.
        #[test]
        fn view_agrees_with_prost_on_any_bytes(
            req in any_request(),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let raw = damaged(req.encode_to_vec(), cut, flip, byte);
            prop_assert_eq!(viewed(&raw), owned(&raw));
            prop_assert_eq!(viewed(&garbage), owned(&garbage));
        }
    }
}
