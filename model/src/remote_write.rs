//! Prometheus remote_write 1.0 wire format (contract §5): the four protobuf
//! messages of `prompb` written by hand with prost derives (no protoc), and the
//! snappy block framing. Decoding checks the length snappy declares before
//! allocating, so a 7-byte body cannot ask for gigabytes.

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
    let declared = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if declared > max_uncompressed {
        return Err(DecodeError::TooLarge { declared, limit: max_uncompressed });
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    WriteRequest::decode(raw.as_slice()).map_err(|e| DecodeError::Protobuf(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&body, 1 << 20);
        }
    }
}
