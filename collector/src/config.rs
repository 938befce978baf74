//! Collector configuration (contract §6): typed, validated before anything
//! binds or starts; errors name the file, line, key and fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::config_text::{find_key, locate};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger::sqlite::Policy;
use domesday_model::vocab::Role;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}\n  | {snippet}")]
    Invalid { path: PathBuf, line: usize, column: usize, message: String, snippet: String },
}

/// A duration string (`"5m"`, `"90d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"5m\", \"90d\""))
        })?;
        if v.is_zero() {
            return Err(serde::de::Error::custom(format!("duration {s:?} must be greater than zero")));
        }
        Ok(Dur(v))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9956))
}

fn default_db() -> PathBuf {
    PathBuf::from("./domesday.db")
}

/// Ledger rules and retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Intervals between samples longer than this count as gaps in coverage.
    pub gap: Dur,
    /// Per-host minutes and raw samples are kept this long; hourly roll-ups forever.
    pub minute_retention: Dur,
    /// A machine silent this long yields its host name to another machine.
    pub host_takeover: Dur,
    /// `full` (default): every commit is fsynced before the 2xx, so a power loss
    /// loses nothing acknowledged. `normal`: faster; survives a collector crash,
    /// but a power loss can lose the last acknowledged requests.
    pub synchronous: Synchronous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            gap: Dur(Duration::from_secs(300)),
            minute_retention: Dur(Duration::from_secs(90 * 86_400)),
            host_takeover: Dur(Duration::from_secs(3600)),
            synchronous: Synchronous::Full,
        }
    }
}

impl LedgerConfig {
    pub fn policy(&self) -> Policy {
        Policy {
            gap_ms: self.gap.0.as_millis() as i64,
            minute_retention_ms: self.minute_retention.0.as_millis() as i64,
            host_takeover_ms: self.host_takeover.0.as_millis() as i64,
            fsync_each_commit: self.synchronous == Synchronous::Full,
        }
    }
}

/// Limits applied to each remote_write request before and while decoding.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_body_bytes: usize,
    /// Checked against the length snappy declares, before decompressing.
    pub max_uncompressed_bytes: usize,
    pub max_series_per_request: usize,
    pub max_samples_per_request: usize,
    pub max_labels_per_series: usize,
    pub max_label_bytes: usize,
    /// Samples further in the future than this are suspect (clock skew).
    pub max_future: Dur,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 16 << 20,
            max_uncompressed_bytes: 64 << 20,
            max_series_per_request: 100_000,
            max_samples_per_request: 1_000_000,
            max_labels_per_series: 64,
            max_label_bytes: 4096,
            max_future: Dur(Duration::from_secs(600)),
        }
    }
}

/// A site.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub region: String,
    pub timezone: String,
    /// SHA-256 (hex) of the site's write token (`domesday-collector hash-token`).
    #[serde(default, skip_serializing)]
    pub token_sha256: Option<String>,
    /// A file holding the token itself (hashed at load).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub pue_target: Option<f64>,
    #[serde(default)]
    pub meters: Vec<MeterConfig>,
}

/// How a meter is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterKind {
    Modbus,
    Redfish,
    Csv,
    Prometheus,
}

/// A facility meter (`[[sites.meters]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    pub id: String,
    pub role: String,
    pub kind: MeterKind,
    /// `Wh`, `kWh`, `MWh` for energy; `m3`, `L` for water; `L` for fuel.
    pub unit: String,
    /// The hall (zone) of the site the meter belongs to, for pPUE and per-hall PUE.
    #[serde(default)]
    pub hall: Option<String>,
    /// Generator fuel energy content (`fuel_in` meters).
    #[serde(default)]
    pub kwh_per_litre: Option<f64>,
    // Reader settings (modbus, redfish, prometheus), validated per kind.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub unit_id: Option<u8>,
    #[serde(default)]
    pub register: Option<u16>,
    #[serde(default, rename = "type")]
    pub value_type: Option<String>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub word_order: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub allow_plain_http: bool,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub interval: Option<Dur>,
}

fn default_gauges_refresh() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_pull_interval() -> Dur {
    Dur(Duration::from_secs(60))
}

fn default_lookback() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// Pull mode: read agents' raw counters from a Prometheus-compatible query API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// The site these series belong to (their `site` label must match).
    pub site: String,
    /// Base URL of Prometheus or VictoriaMetrics (`http://prometheus:9090`).
    pub url: String,
    #[serde(default = "default_pull_interval")]
    pub interval: Dur,
    /// Range of each query; longer than `interval` so a missed pull loses nothing.
    #[serde(default = "default_lookback")]
    pub lookback: Dur,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Series selector; default `domesday_host_energy_joules_total{site="<site>"}`.
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(skip)]
    pub bearer_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_db")]
    pub db: PathBuf,
    /// SHA-256 (hex) of the token that read endpoints need on non-loopback addresses.
    #[serde(default, skip_serializing)]
    pub read_token_sha256: Option<String>,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    #[serde(default)]
    pub pull: Vec<PullConfig>,
    /// How often the site gauges of `/metrics` are recomputed from the ledger.
    #[serde(default = "default_gauges_refresh")]
    pub gauges_refresh: Dur,
    /// Grid carbon intensity (contract §6–7 `[carbon]`).
    #[serde(default)]
    pub carbon: Option<crate::carbon::config::CarbonConfig>,
}

/// A site with its token hash resolved.
#[derive(Debug, Clone)]
pub struct Site {
    pub config: SiteConfig,
    pub token_hash: [u8; 32],
}

/// SHA-256 of a token (trimmed of surrounding whitespace).
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let h = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(h, 16).ok()?;
    }
    Some(out)
}

/// Byte offset of the `id = "<meter>"` line, for messages about a meter.
fn find_meter(text: &str, id: &str) -> usize {
    text.find(&format!("id = \"{id}\"")).unwrap_or(0)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A validated configuration with its secrets resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: CollectorConfig,
    pub sites: Vec<Site>,
    pub read_hash: Option<[u8; 32]>,
}

impl CollectorConfig {
    /// Loads and validates; `None` gives the defaults (no site: `demo` adds one).
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let (text, path) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?,
                p.to_path_buf(),
            ),
            None => (String::new(), PathBuf::from("<defaults>")),
        };
        let err = |offset: usize, message: String| {
            let (line, column, snippet) = locate(&text, offset);
            ConfigError::Invalid { path: path.clone(), line, column, message, snippet }
        };
        let cfg: CollectorConfig =
            toml::from_str(&text).map_err(|e| err(e.span().map(|s| s.start).unwrap_or(0), e.message().to_string()))?;
        let at = |key: &str, msg: String| err(find_key(&text, key), format!("key `{key}`: {msg}"));
        let read_hash = match &cfg.read_token_sha256 {
            Some(h) => Some(parse_hex32(h).ok_or_else(|| {
                at("read_token_sha256", "must be 64 hex digits (domesday-collector hash-token < token)".into())
            })?),
            None => None,
        };
        let mut sites = Vec::new();
        for s in &cfg.sites {
            if !valid_id(&s.id) {
                return Err(at("id", format!("site id {:?} must be non-empty letters, digits, '-', '_' or '.'", s.id)));
            }
            if sites.iter().any(|o: &Site| o.config.id == s.id) {
                return Err(at("id", format!("site id {:?} is defined twice", s.id)));
            }
            if jiff::tz::TimeZone::get(&s.timezone).is_err() {
                return Err(at(
                    "timezone",
                    format!("{:?} is not an IANA time zone (e.g. \"Europe/Paris\")", s.timezone),
                ));
            }
            if let Some(t) = s.pue_target
                && !(t.is_finite() && t >= 1.0)
            {
                return Err(at("pue_target", format!("{t} is below 1.0, which no PUE can be")));
            }
            let token_hash = match (&s.token_sha256, &s.token_file) {
                (Some(h), None) => parse_hex32(h).ok_or_else(|| {
                    at("token_sha256", "must be 64 hex digits (domesday-collector hash-token < token)".into())
                })?,
                (None, Some(f)) => {
                    let token = std::fs::read_to_string(f)
                        .map_err(|e| at("token_file", format!("cannot read {}: {e}", f.display())))?;
                    if token.trim().is_empty() {
                        return Err(at("token_file", format!("{} is empty", f.display())));
                    }
                    hash_token(&token)
                }
                _ => {
                    return Err(at("id", format!("site {:?} needs exactly one of token_sha256 or token_file", s.id)));
                }
            };
            let mut ids: Vec<&str> = Vec::new();
            for m in &s.meters {
                let loc = |msg: String| err(find_meter(&text, &m.id), msg);
                if !valid_id(&m.id) || ids.contains(&m.id.as_str()) {
                    return Err(loc(format!(
                        "meter id {:?} must be unique in site {:?} and made of letters, digits, '-', '_' or '.'",
                        m.id, s.id
                    )));
                }
                ids.push(&m.id);
                let Some(role) = Role::parse(&m.role) else {
                    let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                    return Err(loc(format!("meter {:?}: role {:?} is not one of {}", m.id, m.role, all.join(", "))));
                };
                if !role.units().contains(&m.unit.as_str()) {
                    return Err(loc(format!(
                        "meter {:?}: unit {:?} does not fit role {} (use {})",
                        m.id,
                        m.unit,
                        m.role,
                        role.units().join(" or ")
                    )));
                }
                if role == Role::FuelIn && !m.kwh_per_litre.is_some_and(|k| k.is_finite() && k > 0.0) {
                    return Err(loc(format!(
                        "meter {:?}: a fuel_in meter needs kwh_per_litre (diesel ≈ 9.8–10 kWh/L)",
                        m.id
                    )));
                }
                match m.kind {
                    MeterKind::Csv => {}
                    other => {
                        return Err(loc(format!(
                            "meter {:?}: kind {:?} is not supported by this version yet; feed it with kind = \"csv\" (import-meters or POST /api/v1/sites/{}/meter-readings)",
                            m.id, other, s.id
                        )));
                    }
                }
            }
            sites.push(Site { config: s.clone(), token_hash });
        }
        if let Some(c) = &cfg.carbon
            && let Err(e) = c.validate()
        {
            return Err(at(e.key, e.message.clone()));
        }
        let mut cfg = cfg;
        for p in &mut cfg.pull {
            if !sites.iter().any(|s| s.config.id == p.site) {
                return Err(at("site", format!("[[pull]] names site {:?}, which no [[sites]] defines", p.site)));
            }
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                return Err(at("url", format!("{:?} must start with http:// or https://", p.url)));
            }
            if p.lookback.0 < p.interval.0 {
                return Err(at(
                    "lookback",
                    "must be at least the pull interval, or samples between pulls are missed".into(),
                ));
            }
            if let Some(f) = &p.bearer_token_file {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| at("bearer_token_file", format!("cannot read {}: {e}", f.display())))?;
                p.bearer_token = Some(t.trim().to_string());
            }
        }
        Ok(Loaded { config: cfg, sites, read_hash })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(text.as_bytes()).expect("write");
        CollectorConfig::load(Some(f.path()))
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // "test"

    #[test]
    fn defaults_and_a_site() {
        let Loaded { config: c, sites, .. } =
            load(&format!("[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_sha256 = \"{HASH}\"\n"))
                .expect("load");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9956");
        assert_eq!(c.db, PathBuf::from("./domesday.db"));
        assert_eq!(sites[0].token_hash, hash_token("test"));
        assert_eq!(hex(&hash_token("test")), HASH);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = load("[[sites]]\nid = \"a\"\ntimezone = \"Mars/Olympus\"\ntoken_sha256 = \"x\"\n")
            .map(|_| ())
            .expect_err("must be refused")
            .to_string();
        assert!(e.contains(":3:") && e.contains("IANA"), "{e}");
        let e = load(&format!("[[sites]]\nid = \"a\"\ntimezone = \"UTC\"\ntoken_sha256 = \"{HASH}\"\ncolour = 1\n"))
            .map(|_| ())
            .expect_err("must be refused")
            .to_string();
        assert!(e.contains(":5:") && e.contains("colour"), "{e}");
        let e =
            load("[[sites]]\nid = \"a\"\ntimezone = \"UTC\"\n").map(|_| ()).expect_err("must be refused").to_string();
        assert!(e.contains("token_sha256 or token_file"), "{e}");
        let e = load("[ledger]\ngap = \"soon\"\n").map(|_| ()).expect_err("must be refused").to_string();
        assert!(e.contains(":2:") && e.contains("5m"), "{e}");
    }
}
