//! The HTTP side shared by the meter readers that speak HTTP (Redfish,
//! Prometheus): the client of a meter (timeout, CA pinning, TLS
//! verification), a JSON GET whose statuses become reasons, and transport
//! errors that name the URL and never the credentials.

use std::time::Duration;

use serde_json::Value;

use super::reading::ReadError;
use crate::config::{MeterConfig, Secret};

/// Builds the HTTP client of a meter (timeout, CA pinning, TLS verification).
pub fn http_client(m: &MeterConfig) -> Result<reqwest::Client, ReadError> {
    let mut b = reqwest::Client::builder()
        .timeout(m.timeout())
        .connect_timeout(m.timeout())
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &m.ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ReadError::Config(format!("ca_file: {e}")))?;
        // Pinning: only the configured CA is trusted for this meter.
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if m.insecure_skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| ReadError::Config(format!("HTTP client: {e}")))
}

/// GETs `url` as JSON with optional Basic auth; statuses become reasons.
pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
    auth: Option<(&str, Option<&Secret>)>,
    timeout: Duration,
) -> Result<Value, ReadError> {
    let mut req = client.get(url).header("Accept", "application/json").header("OData-Version", "4.0");
    if let Some((user, password)) = auth {
        req = req.basic_auth(user, password.map(Secret::expose));
    }
    let resp = req.send().await.map_err(|e| http_error(url, &e, timeout))?;
    let status = resp.status();
    match status.as_u16() {
        200..=299 => {}
        401 | 403 => {
            return Err(ReadError::Permission(format!(
                "{url} answered {status}: check `username` and `password_file` (and the account's role)"
            )));
        }
        404 => return Err(ReadError::Missing(format!("{url} answered 404: check `url`"))),
        _ => return Err(ReadError::Io(format!("{url} answered {status}"))),
    }
    let body = resp.text().await.map_err(|e| http_error(url, &e, timeout))?;
    serde_json::from_str(&body).map_err(|e| ReadError::Parse(format!("{url}: not JSON ({e})")))
}

/// A transport error, without anything but the URL (which holds no credentials).
pub fn http_error(url: &str, e: &reqwest::Error, timeout: Duration) -> ReadError {
    if e.is_timeout() {
        return ReadError::Timeout(timeout);
    }
    // reqwest's own message repeats the URL; its sources say what went wrong.
    let mut msg = format!("GET {url} failed");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ReadError::Io(msg)
}
