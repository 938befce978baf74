//! The `/metrics` endpoint. A scrape never reads a sensor: it copies the body
//! rendered by the last tick (pre-compressed with gzip when the client asks).

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::render::CONTENT_TYPE;

/// The last rendered exposition, plain and gzip-compressed.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub plain: Bytes,
    pub gzip: Bytes,
}

impl Exposition {
    pub fn new(text: String) -> Self {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let gzip = enc.write_all(text.as_bytes()).and_then(|()| enc.finish()).unwrap_or_default();
        Exposition { plain: Bytes::from(text), gzip: Bytes::from(gzip) }
    }
}

/// Shared between the sampler thread (writer) and the HTTP handlers (readers).
pub type Shared = Arc<RwLock<Exposition>>;

pub fn router(shared: Shared) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/", get(index)).with_state(shared)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |enc| {
            let mut parts = enc.trim().split(';');
            parts.next().is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"))
                && !parts.any(|p| p.trim().replace(' ', "") == "q=0")
        },
    )
}

async fn metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let exp = match shared.read() {
        Ok(g) => g.clone(),
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "exposition lock poisoned").into_response(),
    };
    let ct = [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))];
    if accepts_gzip(&headers) && !exp.gzip.is_empty() {
        (ct, [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))], exp.gzip).into_response()
    } else {
        (ct, exp.plain).into_response()
    }
}

async fn index() -> &'static str {
    "domesday-agent: metrics at /metrics\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("deflate, gzip;q=1.0, *;q=0.5"));
        assert!(accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0"));
        assert!(!accepts_gzip(&h));
    }
}
