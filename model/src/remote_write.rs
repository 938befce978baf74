//! Prometheus remote_write 1.0 wire format
//! (<https://prometheus.io/docs/specs/prw/remote_write_spec/>): the four protobuf
//! messages of `prompb` written by hand with prost derives (no protoc), and the
//! snappy block framing, and [`WriteRequestView`], the receiver's borrowing
//! decoder of 1.0 bodies and (in [`crate::remote_write2`]) of 2.0 bodies.
//! Decoding checks the length snappy declares before allocating, so a 7-byte
//! body cannot ask for gigabytes.

use prost::Message;

/// Header values of a remote_write 1.0 request.
pub const CONTENT_ENCODING: &str = "snappy";
pub const CONTENT_TYPE: &str = "application/x-protobuf";
pub const VERSION_HEADER: &str = "X-Prometheus-Remote-Write-Version";
pub const VERSION: &str = "0.1.0";

/// Prometheus' stale marker: a NaN with this exact bit pattern ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The stale marker as an f64.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether a value is the stale marker (not any NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

impl TimeSeries {
    /// Value of a label, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|l| l.name == name).map(|l| l.value.as_str())
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("body is not snappy block-compressed: {0}")]
    Snappy(String),
    #[error("snappy declares {declared} bytes uncompressed, above the limit of {limit}")]
    TooLarge { declared: usize, limit: usize },
    #[error("body is not a remote_write WriteRequest: {0}")]
    Protobuf(String),
    /// Valid protobuf, but not a valid Remote-Write 2.0 request (a label
    /// reference outside the symbols table, an odd number of references).
    #[error("body is not a valid Remote-Write 2.0 request: {0}")]
    Request2(String),
}

/// Serialises and snappy-compresses a request.
pub fn encode(req: &WriteRequest) -> Vec<u8> {
    let raw = req.encode_to_vec();
    // Compressing into a Vec cannot fail for inputs below snappy's 4 GiB limit,
    // which a request capped at 1 MiB never approaches.
    snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default()
}

/// Decompresses (at most `max_uncompressed` bytes, checked before allocating)
/// and decodes a request.
pub fn decode(body: &[u8], max_uncompressed: usize) -> Result<WriteRequest, DecodeError> {
    let raw = decompress(body, max_uncompressed)?;
    Ok(WriteRequest::decode(raw.as_slice())?)
}

/// Decompresses a snappy block of at most `max_uncompressed` bytes, checking
/// the length it declares before allocating.
pub fn decompress(body: &[u8], max_uncompressed: usize) -> Result<Vec<u8>, DecodeError> {
    let declared = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if declared > max_uncompressed {
        return Err(DecodeError::TooLarge { declared, limit: max_uncompressed });
    }
    snap::raw::Decoder::new().decompress_vec(body).map_err(|e| DecodeError::Snappy(e.to_string()))
}

/// A decoded [`WriteRequest`] whose label names and values borrow the
/// decompressed bytes: three vectors per request where prost's owned decode
/// allocates two strings per label and two vectors per series (the receiver's
/// hot path). It accepts and refuses exactly what [`WriteRequest::decode`]
/// does: unknown fields are skipped with prost's own `skip_field`, strings must
/// be UTF-8, a repeated scalar keeps its last value.
#[derive(Debug, Default)]
pub struct WriteRequestView<'a> {
    pub(crate) labels: Vec<(&'a str, &'a str)>,
    pub(crate) samples: Vec<Sample>,
    /// Per series, where its labels and its samples end in the two vectors.
    pub(crate) ends: Vec<(usize, usize)>,
}

/// One series of a [`WriteRequestView`].
#[derive(Debug, Clone, Copy)]
pub struct SeriesView<'v, 'a> {
    /// (name, value) pairs in wire order.
    pub labels: &'v [(&'a str, &'a str)],
    pub samples: &'v [Sample],
}

impl SeriesView<'_, '_> {
    /// Value of a label, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError::Protobuf(e.to_string())
    }
}

pub(crate) fn malformed(what: &str) -> DecodeError {
    DecodeError::Protobuf(what.to_string())
}

impl<'a> WriteRequestView<'a> {
    /// Decodes an uncompressed WriteRequest.
    pub fn parse(raw: &'a [u8]) -> Result<Self, DecodeError> {
        let mut buf = raw;
        let mut v = WriteRequestView::default();
        while !buf.is_empty() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
            if tag == 1 {
                let series = delimited(&mut buf, wire_type)?;
                v.parse_series(series)?;
            } else {
                prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default())?;
            }
        }
        Ok(v)
    }

    fn parse_series(&mut self, mut buf: &'a [u8]) -> Result<(), DecodeError> {
        while !buf.is_empty() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
            match tag {
                1 => {
                    let label = delimited(&mut buf, wire_type)?;
                    self.labels.push(parse_label(label)?);
                }
                2 => {
                    let sample = delimited(&mut buf, wire_type)?;
                    self.samples.push(parse_sample(sample)?);
                }
                _ => prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default())?,
            }
        }
        self.ends.push((self.labels.len(), self.samples.len()));
        Ok(())
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Samples in all series.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// The series in wire order.
    pub fn series(&self) -> impl ExactSizeIterator<Item = SeriesView<'_, 'a>> + '_ {
        (0..self.ends.len()).map(move |i| {
            let (l0, s0) = if i == 0 { (0, 0) } else { self.ends[i - 1] };
            let (l1, s1) = self.ends[i];
            SeriesView { labels: &self.labels[l0..l1], samples: &self.samples[s0..s1] }
        })
    }
}

/// A view of an owned request (requests built in memory, such as pull mode's).
impl<'a> From<&'a WriteRequest> for WriteRequestView<'a> {
    fn from(req: &'a WriteRequest) -> Self {
        let mut v = WriteRequestView::default();
        for t in &req.timeseries {
            v.labels.extend(t.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())));
            v.samples.extend_from_slice(&t.samples);
            v.ends.push((v.labels.len(), v.samples.len()));
        }
        v
    }
}

/// The bytes of a length-delimited field, checked against what is left.
pub(crate) fn delimited<'a>(buf: &mut &'a [u8], wire_type: prost::encoding::WireType) -> Result<&'a [u8], DecodeError> {
    prost::encoding::check_wire_type(prost::encoding::WireType::LengthDelimited, wire_type)?;
    let len = prost::encoding::decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(malformed("buffer underflow"));
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

fn parse_label(mut buf: &[u8]) -> Result<(&str, &str), DecodeError> {
    let (mut name, mut value) = ("", "");
    while !buf.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
        match tag {
            1 | 2 => {
                let s = std::str::from_utf8(delimited(&mut buf, wire_type)?)
                    .map_err(|_| malformed("invalid string value: data is not UTF-8 encoded"))?;
                if tag == 1 {
                    name = s;
                } else {
                    value = s;
                }
            }
            _ => prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default())?,
        }
    }
    Ok((name, value))
}

pub(crate) fn parse_sample(mut buf: &[u8]) -> Result<Sample, DecodeError> {
    use prost::encoding::{WireType, check_wire_type};
    let mut sample = Sample::default();
    while !buf.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
        match tag {
            1 => {
                check_wire_type(WireType::SixtyFourBit, wire_type)?;
                let Some((bytes, rest)) = buf.split_first_chunk::<8>() else {
                    return Err(malformed("buffer underflow"));
                };
                sample.value = f64::from_le_bytes(*bytes);
                buf = rest;
            }
            2 => {
                check_wire_type(WireType::Varint, wire_type)?;
                sample.timestamp = prost::encoding::decode_varint(&mut buf)? as i64;
            }
            _ => prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default())?,
        }
    }
    Ok(sample)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid encoding damaged for the view-against-prost properties: the
    /// byte at `flip` xored with `byte`, then the bytes cut at `cut`.
    pub(crate) fn damaged(
        mut raw: Vec<u8>,
        cut: proptest::sample::Index,
        flip: proptest::sample::Index,
        byte: u8,
    ) -> Vec<u8> {
        if !raw.is_empty() {
            let i = flip.index(raw.len());
            raw[i] ^= byte;
            raw.truncate(cut.index(raw.len() + 1));
        }
        raw
    }

    fn series(name: &str, v: f64, t: i64) -> TimeSeries {
        TimeSeries {
            labels: vec![Label { name: "__name__".into(), value: name.into() }],
            samples: vec![Sample { value: v, timestamp: t }],
        }
    }

    #[test]
    fn round_trip_and_stale_marker() {
        let req = WriteRequest { timeseries: vec![series("a", 1.5, 1000), series("b", stale_nan(), 2000)] };
        let back = decode(&encode(&req), 1 << 20).expect("decode");
        assert_eq!(back.timeseries.len(), 2);
        assert!(is_stale_nan(back.timeseries[1].samples[0].value));
        assert!(!is_stale_nan(f64::NAN));
        assert_eq!(back.timeseries[0].label("__name__"), Some("a"));
    }

    #[test]
    fn snappy_bomb_is_refused_before_allocating() {
        // Found by fuzzing: declares 3,171,857,466 bytes in a 7-byte body.
        let bomb = [186u8, 232, 186, 232, 11, 0, 0];
        assert!(matches!(decode(&bomb, 32 << 20), Err(DecodeError::TooLarge { .. })));
        assert!(matches!(decode(b"", 32 << 20), Err(DecodeError::Snappy(_))));
        let not_proto = snap::raw::Encoder::new().compress_vec(&[0xff; 16]).expect("compress");
        assert!(matches!(decode(&not_proto, 32 << 20), Err(DecodeError::Protobuf(_))));
    }

    /// What prost's owned decode and the borrowed view make of the same bytes, comparably.
    type Decoded = Vec<(Vec<(String, String)>, Vec<(u64, i64)>)>;

    fn owned(raw: &[u8]) -> Option<Decoded> {
        WriteRequest::decode(raw).ok().map(|r| {
            r.timeseries
                .into_iter()
                .map(|t| {
                    (
                        t.labels.into_iter().map(|l| (l.name, l.value)).collect(),
                        t.samples.iter().map(|s| (s.value.to_bits(), s.timestamp)).collect(),
                    )
                })
                .collect()
        })
    }

    fn viewed(raw: &[u8]) -> Option<Decoded> {
        WriteRequestView::parse(raw).ok().map(|v| {
            v.series()
                .map(|t| {
                    (
                        t.labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                        t.samples.iter().map(|s| (s.value.to_bits(), s.timestamp)).collect(),
                    )
                })
                .collect()
        })
    }

    fn any_request() -> impl Strategy<Value = WriteRequest> {
        let label = ("[a-z_]{0,6}", "\\PC{0,6}").prop_map(|(name, value)| Label { name, value });
        let sample = (any::<f64>(), any::<i64>()).prop_map(|(value, timestamp)| Sample { value, timestamp });
        let series = (proptest::collection::vec(label, 0..5), proptest::collection::vec(sample, 0..4))
            .prop_map(|(labels, samples)| TimeSeries { labels, samples });
        proptest::collection::vec(series, 0..6).prop_map(|timeseries| WriteRequest { timeseries })
    }

    #[test]
    fn view_skips_unknown_fields_as_prost_does() {
        // A series with an exemplar (field 3) and a label with an unknown varint field 7.
        let mut raw = Vec::new();
        let label = [0x0a, 1, b'a', 0x12, 1, b'b', 0x38, 5];
        let sample = [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 42];
        let mut series = vec![0x0a, label.len() as u8];
        series.extend(label);
        series.extend([0x1a, 2, 0x08, 1, 0x12, sample.len() as u8]);
        series.extend(sample);
        raw.extend([0x0a, series.len() as u8]);
        raw.extend(series);
        raw.extend([0x1a, 0]); // WriteRequest.metadata, empty
        let v = WriteRequestView::parse(&raw).expect("valid");
        let s = v.series().next().expect("one series");
        assert_eq!(s.labels, &[("a", "b")]);
        assert_eq!((s.samples[0].value, s.samples[0].timestamp), (1.0, 42));
        assert_eq!(viewed(&raw), owned(&raw));
        // A label with invalid UTF-8 is refused by both.
        let bad = [0x0a, 5, 0x0a, 3, 0x0a, 1, 0xff];
        assert!(WriteRequestView::parse(&bad).is_err() && WriteRequest::decode(&bad[..]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&body, 1 << 20);
            let _ = WriteRequestView::parse(&body);
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
