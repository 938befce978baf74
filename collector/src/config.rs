//! Collector configuration: typed, validated before anything
//! binds or starts; errors name the file, line, key and fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::config_text::find_key;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger::Policy;
use domesday_model::vocab::Role;

pub use domesday_model::config_text::ConfigError;

pub use domesday_model::duration::{Dur, parse_duration};
pub use domesday_model::secret::Secret;

use crate::db::LedgerDb;
use crate::secret_file::read_secret_file;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9956))
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
    /// How often the writer prunes what `minute_retention` no longer keeps.
    pub prune_every: Dur,
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
            prune_every: Dur(Duration::from_secs(3600)),
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
            ..Policy::default()
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
    /// Samples older than this are suspect (a clock reset to 1970, a garbage
    /// timestamp): booked, one would spread its series' energy back to its
    /// date. A spool replaying hours or days after an outage stays well within.
    pub max_past: Dur,
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
            max_past: Dur(Duration::from_secs(90 * 86_400)),
        }
    }
}

/// A site.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    // Identity and characteristics for the EED report (Delegated Regulation
    // (EU) 2024/1364, Annex I and Annex II 1(a)–(c), (l)); all optional here,
    // mapping in docs/collector.md.
    /// Annex I 1(b): owner of the data centre (name).
    #[serde(default)]
    pub owner: Option<String>,
    /// Annex I 1(b): owner's contact details.
    #[serde(default)]
    pub owner_contact: Option<String>,
    /// Annex I 1(b): operator's contact details (`operator` is the name).
    #[serde(default)]
    pub operator_contact: Option<String>,
    /// Postal address (building or site).
    #[serde(default)]
    pub address: Option<String>,
    /// ISO 3166-1 alpha-2 country code (`FR`).
    #[serde(default)]
    pub country: Option<String>,
    /// Annex I 1(c): Eurostat LAU code of the location.
    #[serde(default)]
    pub lau_code: Option<String>,
    /// Annex I 1(c) as amended in 2026: NUTS 3 code of the location (`FRD11`).
    #[serde(default)]
    pub nuts3_code: Option<String>,
    /// Annex I 1(d): enterprise, colocation or co-hosting data centre.
    #[serde(default)]
    pub dc_type: Option<DcType>,
    /// Annex I 1(d): one structure or a group of structures.
    #[serde(default)]
    pub dc_structure: Option<DcStructure>,
    /// Annex I 1(d): a colocation DC also offering co-hosting, or the reverse.
    #[serde(default)]
    pub offers_other_type_services: Option<bool>,
    /// Annex I 1(e): year and month of entry into operation, `"YYYY-MM"`.
    #[serde(default)]
    pub entry_into_operation: Option<String>,
    /// Annex I 2(a)–(b): redundancy levels (`N`, `N+1`, `2N`, `2N+1`…).
    #[serde(default)]
    pub redundancy: Option<Redundancy>,
    /// Annex II 1(a) PDIT: installed IT power demand, kW.
    #[serde(default)]
    pub installed_it_power_kw: Option<f64>,
    /// Annex II 1(b) SDC: data centre total floor area, m².
    #[serde(default)]
    pub total_floor_area_m2: Option<f64>,
    /// Annex II 1(c) SCR: computer room floor area, m².
    #[serde(default)]
    pub computer_room_floor_area_m2: Option<f64>,
    /// Annex II 1(l): set point of the IT equipment intake (supply) air temperature, °C.
    #[serde(default)]
    pub intake_air_set_point_c: Option<f64>,
    /// Annex II 1(a): whether `installed_it_power_kw` is the installed (default) or the rated IT power.
    #[serde(default)]
    pub pdit_basis: Option<crate::reports::declared::PditBasis>,
    // Keys of the French declaration and public sheet (Code de l'énergie
    // D.236-1 to D.236-3) and the declared annual figures; types and checks in
    // `reports::declared`, mapping in docs/reports.md.
    /// D.236-1/D.236-2: SIRET number(s) of the establishment(s) (14 digits).
    #[serde(default)]
    pub siret: Vec<String>,
    /// D.236-2: name of the person to contact.
    #[serde(default)]
    pub contact_name: Option<String>,
    /// D.236-2: e-mail of the person to contact.
    #[serde(default)]
    pub contact_email: Option<String>,
    /// D.236-2: commissioning date, "YYYY-MM-DD".
    #[serde(default)]
    pub commissioning_date: Option<String>,
    /// D.236-3: https address of the page where the data are made public.
    #[serde(default)]
    pub public_disclosure_url: Option<String>,
    /// Annual figures no meter gives (`[[sites.annual]]`, one table per year).
    #[serde(default)]
    pub annual: Vec<crate::reports::declared::AnnualValues>,
    /// Expected IT inventory: hosts whose agents should report.
    #[serde(default)]
    pub expected_hosts: Vec<String>,
    /// Expected IT inventory: IT loads without an agent (network, storage…).
    #[serde(default)]
    pub it_loads: Vec<ItLoadConfig>,
    /// Power budget per host, watts (`host = watts`), exported as
    /// `domesday_host_power_budget_watts` for alert rules.
    #[serde(default)]
    pub host_power_budget_watts: std::collections::BTreeMap<String, f64>,
}

/// Annex I 1(d) type of data centre (Art. 2(1)–(3) of 2024/1364).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DcType {
    Enterprise,
    Colocation,
    CoHosting,
}

/// Annex I 1(d): `structure` or `group_of_structures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DcStructure {
    Structure,
    GroupOfStructures,
}

/// Annex I 2: redundancy levels (`[sites.redundancy]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redundancy {
    /// 2(a) electrical, high voltage level.
    #[serde(default)]
    pub electrical_hv: Option<String>,
    /// 2(a) electrical, low voltage level (line-up).
    #[serde(default)]
    pub electrical_lv: Option<String>,
    /// 2(a) electrical, rack level.
    #[serde(default)]
    pub electrical_rack: Option<String>,
    /// 2(b) cooling, room level.
    #[serde(default)]
    pub cooling_room: Option<String>,
    /// 2(b) cooling, rack level.
    #[serde(default)]
    pub cooling_rack: Option<String>,
}

impl Redundancy {
    fn levels(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("electrical_hv", self.electrical_hv.as_deref()),
            ("electrical_lv", self.electrical_lv.as_deref()),
            ("electrical_rack", self.electrical_rack.as_deref()),
            ("cooling_room", self.cooling_room.as_deref()),
            ("cooling_rack", self.cooling_rack.as_deref()),
        ]
    }
}

/// Whether `s` is a redundancy level against a baseline N: `N`, `N+1`, `2N`, `2N+2`, `3N/2`…
pub fn valid_redundancy(s: &str) -> bool {
    let (base, plus) = match s.split_once('+') {
        Some((b, p)) => (b, Some(p)),
        None => (s, None),
    };
    let digits = |d: &str| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit());
    let base_ok = match base.split_once('/') {
        Some((n, d)) => n.strip_suffix('N').is_some_and(|k| k.is_empty() || digits(k)) && digits(d),
        None => base.strip_suffix('N').is_some_and(|k| k.is_empty() || digits(k)),
    };
    base_ok && plus.is_none_or(digits)
}

/// What an IT load without an agent is (`[[sites.it_loads]]` `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItLoadKind {
    Network,
    Storage,
    Other,
}

/// An IT load without an agent: metered (a PDU outlet meter of role `it_in`)
/// or estimated from its nameplate power.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ItLoadConfig {
    pub id: String,
    pub kind: ItLoadKind,
    /// Id of a `[[sites.meters]]` entry of role `it_in` (e.g. the PDU outlet).
    #[serde(default)]
    pub meter: Option<String>,
    /// Nameplate (or measured-once) power, W; booked as estimated energy.
    #[serde(default)]
    pub nameplate_watts: Option<f64>,
    /// Must be `"estimated"` with `nameplate_watts`.
    #[serde(default)]
    pub quality: Option<String>,
}

/// How a meter is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterKind {
    Modbus,
    Redfish,
    Csv,
    Prometheus,
    /// Invented readings: a fixed multiple of the site's IT energy booked in
    /// the ledger. Accepted only in the configuration `domesday-collector demo`
    /// generates, never by `serve` or `check-config`.
    Simulated,
}

impl MeterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MeterKind::Modbus => "modbus",
            MeterKind::Redfish => "redfish",
            MeterKind::Csv => "csv",
            MeterKind::Prometheus => "prometheus",
            MeterKind::Simulated => "simulated",
        }
    }
}

/// What a `prometheus` meter's series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// A cumulative register in the meter's unit (default).
    Energy,
    /// An instantaneous power gauge in watts, integrated into energy.
    Power,
}

/// The value type of a Modbus register (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    Float32,
    Int32,
    Uint32,
    Int64,
    Uint64,
}

impl RegisterType {
    /// 16-bit words the value spans.
    pub fn words(self) -> u16 {
        match self {
            RegisterType::Float32 | RegisterType::Int32 | RegisterType::Uint32 => 2,
            RegisterType::Int64 | RegisterType::Uint64 => 4,
        }
    }
}

/// Order of the 16-bit words of a multi-word Modbus value (bytes within a word are always big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first (Modbus convention; Schneider, Socomec, Janitza, Eastron).
    #[default]
    Big,
    /// Low word first ("word-swapped" devices).
    Little,
}

/// Which Modbus table a register lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterFunction {
    /// Holding registers, function code 03 (4xxxx).
    #[default]
    Holding,
    /// Input registers, function code 04 (3xxxx).
    Input,
}

/// Default polling interval of meter readers.
pub const DEFAULT_METER_INTERVAL: Duration = Duration::from_secs(60);
/// Default timeout of one meter read (connect and answer).
pub const DEFAULT_METER_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Modbus: `host:port` of the meter or gateway.
    #[serde(default)]
    pub address: Option<String>,
    /// Modbus: unit (slave) id; default 1.
    #[serde(default)]
    pub unit_id: Option<u8>,
    /// Modbus: 0-based protocol address of the first word (vendor register number − 1).
    #[serde(default)]
    pub register: Option<u16>,
    #[serde(default, rename = "type")]
    pub value_type: Option<RegisterType>,
    /// Modbus: multiplier from the raw value to `unit`; default 1.
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub word_order: Option<WordOrder>,
    /// Modbus: `holding` (FC03, default) or `input` (FC04).
    #[serde(default)]
    pub function: Option<RegisterFunction>,
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
    /// Prometheus: `energy` (a register, default) or `power` (a gauge in W, integrated).
    #[serde(default)]
    pub measure: Option<Measure>,
    /// Simulated (demo only): units of the meter per kWh of the site's IT energy.
    #[serde(default)]
    pub per_it_kwh: Option<f64>,
    /// Polling interval of readers; default 60 s.
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Timeout of one read; default 10 s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// The password read from `password_file` at load.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// The PEM read from `ca_file` at load.
    #[serde(skip)]
    pub ca_pem: Option<Vec<u8>>,
}

impl MeterConfig {
    pub fn interval(&self) -> Duration {
        self.interval.map(|d| d.0).unwrap_or(DEFAULT_METER_INTERVAL)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.map(|d| d.0).unwrap_or(DEFAULT_METER_TIMEOUT)
    }
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
    pub bearer_token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the ledger is: a SQLite file (default `./domesday.db`) or `postgres://user@host:port/dbname`.
    #[serde(default)]
    pub db: LedgerDb,
    /// The PostgreSQL password's file (else `PGPASSWORD`); read at load into `db`.
    #[serde(default)]
    pub db_password_file: Option<PathBuf>,
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
    /// Pass every accepted request on to an upstream remote_write receiver.
    #[serde(default)]
    pub forward: Option<crate::forward::ForwardConfig>,
    /// Grid carbon intensity (`[carbon]`).
    #[serde(default)]
    pub carbon: Option<crate::carbon::config::CarbonConfig>,
    /// `[reports]`: inputs of the Region's report.
    #[serde(default)]
    pub reports: ReportsConfig,
    /// `[tls]`: serve https (and require client certificates with `client_ca_file`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[tls]`: the collector's certificate, key and optional client CA (PEM
/// files), read and checked at load, read again on SIGHUP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, every connection must present a client certificate signed by one of these CAs (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// The configuration built from the files at load.
    #[serde(skip)]
    pub loaded: Option<domesday_runtime::tls::TlsReloader>,
}

impl TlsConfig {
    pub fn files(&self) -> domesday_runtime::tls::TlsFiles {
        use domesday_runtime::tls::{ClientAuth, TlsFiles};
        let mut f = TlsFiles::new(&self.cert_file, &self.key_file);
        if let Some(ca) = &self.client_ca_file {
            f.client_ca_file = Some(ca.clone());
            f.client_auth = ClientAuth::Require;
        }
        f
    }
}

/// `[reports]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// Other operators' EED declarations (the JSON of `report eed`) counted in
    /// `report region`: file paths (relative to the config file) or https URLs.
    #[serde(default)]
    pub declarations: Vec<String>,
    /// CSV files of annual figures (`site,year,` + `[[sites.annual]]` keys),
    /// relative to the config file; read and checked at load.
    #[serde(default)]
    pub annual_csv: Vec<String>,
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

/// Byte offset of `key = …` in site `id`'s `[[sites]]` table (including its
/// sub-tables, up to the next `[[sites]]`), else of the site's `id` line.
fn find_site_key(text: &str, id: &str, key: &str) -> usize {
    let start = text.find(&format!("id = \"{id}\"")).unwrap_or(0);
    let head = text[..start].rfind("[[sites]]").unwrap_or(0);
    let end = text[start..].find("\n[[sites]]").map(|i| start + i + 1).unwrap_or(text.len());
    match find_key(&text[head..end], key) {
        0 => start,
        o => head + o,
    }
}

/// Byte offset of `key = …` after the line `id = "<item>"` inside site `site`'s table.
fn find_item_key(text: &str, site: &str, item: &str, key: &str) -> usize {
    let site_at = find_site_key(text, site, "id");
    let start = text[site_at..].find(&format!("id = \"{item}\"")).map(|i| site_at + i).unwrap_or(site_at);
    let end = text[start..].find("\n[").map(|i| start + i + 1).unwrap_or(text.len());
    match find_key(&text[start..end], key) {
        0 => start,
        o => start + o,
    }
}

/// Checks the Annex I fields and the expected IT inventory of a site.
fn validate_site_details(
    s: &SiteConfig,
    text: &str,
    err: &dyn Fn(usize, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let id = s.id.as_str();
    let at = |key: &str, msg: String| err(find_site_key(text, id, key), format!("site {id:?}: key `{key}`: {msg}"));
    if let Some(c) = &s.country
        && !(c.len() == 2 && c.chars().all(|c| c.is_ascii_uppercase()))
    {
        return Err(at("country", format!("{c:?} must be an ISO 3166-1 alpha-2 code in capitals, e.g. \"FR\"")));
    }
    if let Some(n) = &s.nuts3_code
        && !(n.len() == 5 && n.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
    {
        return Err(at("nuts3_code", format!("{n:?} must be a 5-character NUTS 3 code, e.g. \"FRD11\"")));
    }
    if let Some(e) = &s.entry_into_operation {
        let ok = e.len() == 7
            && e.as_bytes()[4] == b'-'
            && e[..4].parse::<u16>().is_ok_and(|y| (1950..=2100).contains(&y))
            && e[5..].parse::<u8>().is_ok_and(|m| (1..=12).contains(&m));
        if !ok {
            return Err(at(
                "entry_into_operation",
                format!("{e:?} must be year and month \"YYYY-MM\", e.g. \"2019-06\""),
            ));
        }
    }
    if let Some(r) = &s.redundancy {
        for (key, v) in r.levels() {
            if let Some(v) = v
                && !valid_redundancy(v)
            {
                return Err(at(
                    key,
                    format!(
                        "{v:?} is not a redundancy level: write it against N, e.g. \"N\", \"N+1\", \"2N\", \"2N+1\""
                    ),
                ));
            }
        }
    }
    let positive = [
        ("installed_it_power_kw", s.installed_it_power_kw),
        ("total_floor_area_m2", s.total_floor_area_m2),
        ("computer_room_floor_area_m2", s.computer_room_floor_area_m2),
    ];
    for (key, v) in positive {
        if let Some(v) = v
            && !(v.is_finite() && v > 0.0)
        {
            return Err(at(key, format!("{v} must be a positive number")));
        }
    }
    if let (Some(total), Some(room)) = (s.total_floor_area_m2, s.computer_room_floor_area_m2)
        && room > total
    {
        return Err(at(
            "computer_room_floor_area_m2",
            format!("{room} m² exceeds total_floor_area_m2 ({total} m²), which includes the computer rooms"),
        ));
    }
    if let Some(t) = s.intake_air_set_point_c
        && !(t.is_finite() && (5.0..=45.0).contains(&t))
    {
        return Err(at("intake_air_set_point_c", format!("{t} °C is not a plausible intake air set point (5–45 °C)")));
    }
    crate::reports::declared::validate_site(s, text, &at, err)?;
    let mut seen: Vec<&str> = Vec::new();
    for h in &s.expected_hosts {
        if !valid_host(h) || seen.contains(&h.as_str()) {
            return Err(at(
                "expected_hosts",
                format!("host {h:?} must be unique and a non-empty host name without spaces or quotes"),
            ));
        }
        seen.push(h);
    }
    for (h, w) in &s.host_power_budget_watts {
        // The host's own line in a `[sites.host_power_budget_watts]` table, else the key's.
        let key = "host_power_budget_watts";
        let site_line = find_site_key(text, id, "id");
        let place = [format!("\"{h}\""), h.clone(), key.to_string()]
            .iter()
            .map(|k| find_site_key(text, id, k))
            .find(|o| *o != site_line)
            .unwrap_or(site_line);
        let msg = |m: String| err(place, format!("site {id:?}: key `{key}`: {m}"));
        if !valid_host(h) {
            return Err(msg(format!("host {h:?} must be a non-empty host name without spaces or quotes")));
        }
        if !(w.is_finite() && *w > 0.0) {
            return Err(msg(format!("host {h:?}: {w} W must be a positive number of watts")));
        }
    }
    let mut ids: Vec<&str> = Vec::new();
    for l in &s.it_loads {
        let lat = |key: &str, msg: String| {
            err(find_item_key(text, id, &l.id, key), format!("site {id:?}: it_load {:?}: {msg}", l.id))
        };
        if !valid_id(&l.id) || ids.contains(&l.id.as_str()) {
            return Err(lat(
                "id",
                "ids must be unique in the site and made of letters, digits, '-', '_' or '.'".into(),
            ));
        }
        ids.push(&l.id);
        match (&l.meter, l.nameplate_watts) {
            (Some(m), None) => {
                let Some(meter) = s.meters.iter().find(|x| &x.id == m) else {
                    return Err(lat("meter", format!("meter {m:?} is not one of the site's [[sites.meters]]")));
                };
                if meter.role != "it_in" {
                    return Err(lat(
                        "meter",
                        format!(
                            "meter {m:?} has role {}; an IT load's meter measures IT input energy (role it_in, e.g. a PDU outlet)",
                            meter.role
                        ),
                    ));
                }
                if l.quality.is_some() {
                    return Err(lat("quality", "applies to nameplate_watts only (a meter is measured)".into()));
                }
            }
            (None, Some(w)) => {
                if !(w.is_finite() && w > 0.0) {
                    return Err(lat("nameplate_watts", format!("{w} must be a positive number of watts")));
                }
                if l.quality.as_deref() != Some("estimated") {
                    return Err(lat(
                        "nameplate_watts",
                        "needs quality = \"estimated\" (nameplate power is an estimate, booked as such)".into(),
                    ));
                }
            }
            _ => {
                return Err(lat("id", "needs exactly one of `meter` (a PDU outlet meter) or `nameplate_watts`".into()));
            }
        }
    }
    Ok(())
}

fn valid_host(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\'' && c != '\\')
}

/// Byte offset of the `id = "<meter>"` line, for messages about a meter.
fn find_meter(text: &str, id: &str) -> usize {
    text.find(&format!("id = \"{id}\"")).unwrap_or(0)
}

/// Byte offset of `key = …` inside meter `id`'s table (else the meter's `id` line).
fn find_meter_key(text: &str, id: &str, key: &str) -> usize {
    let start = find_meter(text, id);
    // The table runs from its `[[sites.meters]]` header (before the `id` line) to the next header.
    let head = text[..start].rfind("\n[").map(|i| i + 1).unwrap_or(0);
    let end = text[start..].find("\n[").map(|i| start + i + 1).unwrap_or(text.len());
    match find_key(&text[head..end], key) {
        0 => start, // not found (the region starts with its header, never with a key)
        o => head + o,
    }
}

/// Keys of `[[sites.meters]]` that only readers use, and whether `m` sets them.
fn reader_keys(m: &MeterConfig) -> [(&'static str, bool); 18] {
    [
        ("address", m.address.is_some()),
        ("unit_id", m.unit_id.is_some()),
        ("register", m.register.is_some()),
        ("type", m.value_type.is_some()),
        ("scale", m.scale.is_some()),
        ("word_order", m.word_order.is_some()),
        ("function", m.function.is_some()),
        ("url", m.url.is_some()),
        ("username", m.username.is_some()),
        ("password_file", m.password_file.is_some()),
        ("ca_file", m.ca_file.is_some()),
        ("insecure_skip_verify", m.insecure_skip_verify),
        ("allow_plain_http", m.allow_plain_http),
        ("query", m.query.is_some()),
        ("measure", m.measure.is_some()),
        ("per_it_kwh", m.per_it_kwh.is_some()),
        ("interval", m.interval.is_some()),
        ("timeout", m.timeout.is_some()),
    ]
}

/// The reader keys each kind accepts.
fn kind_keys(kind: MeterKind) -> &'static [&'static str] {
    match kind {
        MeterKind::Modbus => {
            &["address", "unit_id", "register", "type", "scale", "word_order", "function", "interval", "timeout"]
        }
        MeterKind::Redfish => &[
            "url",
            "username",
            "password_file",
            "ca_file",
            "insecure_skip_verify",
            "allow_plain_http",
            "interval",
            "timeout",
        ],
        MeterKind::Prometheus => &[
            "url",
            "query",
            "measure",
            "username",
            "password_file",
            "ca_file",
            "insecure_skip_verify",
            "allow_plain_http",
            "interval",
            "timeout",
        ],
        MeterKind::Simulated => &["per_it_kwh", "interval", "timeout"],
        MeterKind::Csv => &[],
    }
}

/// The prefix every simulated meter's id carries, so that its figures are
/// recognisable as invented wherever the id appears.
pub const SIMULATED_ID_PREFIX: &str = "sim-";

/// PromQL functions that extrapolate or differentiate: a meter query must read raw samples.
const REFUSED_FUNCTIONS: &[&str] = &["rate", "irate", "increase", "delta", "idelta", "deriv"];

/// Whether `query` calls function `name` (`name(` or `name (`, not part of a longer identifier).
pub fn calls_function(query: &str, name: &str) -> bool {
    let q = query.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = q[from..].find(name) {
        let at = from + i;
        let before_ok =
            q[..at].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let after = q[at + name.len()..].trim_start();
        if before_ok && after.starts_with('(') {
            return true;
        }
        from = at + name.len();
    }
    false
}

/// The duration of the last `[…]` range of a query, when it parses.
fn query_range(query: &str) -> Option<&str> {
    let open = query.rfind('[')?;
    let close = open + query[open..].find(']')?;
    Some(&query[open + 1..close])
}

/// Per-kind checks of a meter's reader settings; reads `password_file` and `ca_file`.
fn validate_reader(
    m: &mut MeterConfig,
    text: &str,
    err: &dyn Fn(usize, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let kind = m.kind.as_str();
    let id = m.id.clone();
    let at = |key: &str, msg: String| err(find_meter_key(text, &id, key), format!("meter {id:?} (kind {kind}): {msg}"));
    if m.kind == MeterKind::Csv {
        if m.measure.is_some() {
            return Err(at("measure", "key `measure` applies to kind prometheus only".into()));
        }
        if m.per_it_kwh.is_some() {
            return Err(at("per_it_kwh", "key `per_it_kwh` applies to kind simulated only".into()));
        }
        return Ok(());
    }
    let allowed = kind_keys(m.kind);
    for (key, set) in reader_keys(m) {
        if set && !allowed.contains(&key) {
            return Err(at(
                key,
                format!("key `{key}` does not apply to kind {kind} (its keys: {})", allowed.join(", ")),
            ));
        }
    }
    if let Some(i) = m.interval
        && i.0 < Duration::from_secs(1)
    {
        return Err(at("interval", "must be at least \"1s\"".into()));
    }
    let energy_unit = matches!(m.unit.as_str(), "Wh" | "kWh" | "MWh");
    match m.kind {
        MeterKind::Modbus => {
            let Some(address) = &m.address else {
                return Err(at(
                    "id",
                    "`address` is required: host:port of the meter or gateway, e.g. \"10.0.0.5:502\"".into(),
                ));
            };
            let port_ok =
                address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(at("address", format!("{address:?} must be host:port, e.g. \"10.0.0.5:502\"")));
            }
            let Some(register) = m.register else {
                return Err(at(
                    "id",
                    "`register` is required: the 0-based protocol address of the value's first word (vendor tables often list 1-based register numbers: subtract 1)".into(),
                ));
            };
            let Some(t) = m.value_type else {
                return Err(at("id", "`type` is required: float32, int32, uint32, int64 or uint64".into()));
            };
            if u32::from(register) + u32::from(t.words()) > 65_536 {
                return Err(at("register", format!("{register} + {} words runs past address 65535", t.words())));
            }
            if let Some(sc) = m.scale
                && !(sc.is_finite() && sc > 0.0)
            {
                return Err(at("scale", format!("{sc} must be a positive number (raw × scale = value in {})", m.unit)));
            }
        }
        MeterKind::Redfish | MeterKind::Prometheus => {
            let Some(url) = &m.url else {
                let what = if m.kind == MeterKind::Redfish {
                    "the PowerDistribution resource or its Metrics, Mains/Branches circuit or Outlet URI, e.g. \"https://pdu-a1/redfish/v1/PowerEquipment/RackPDUs/1/Metrics\""
                } else {
                    "the base URL of Prometheus or VictoriaMetrics, e.g. \"http://prometheus:9090\""
                };
                return Err(at("id", format!("`url` is required: {what}")));
            };
            let parsed = reqwest::Url::parse(url).map_err(|e| at("url", format!("{url:?} is not a URL ({e})")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(at("url", format!("{url:?} must be an http:// or https:// URL with a host")));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(at("url", "must not carry credentials: use `username` and `password_file`".into()));
            }
            let plain = parsed.scheme() == "http";
            if m.kind == MeterKind::Redfish && plain && !m.allow_plain_http {
                return Err(at(
                    "url",
                    format!(
                        "{url:?} is plain http: use https://, or set allow_plain_http = true (credentials then travel in clear)"
                    ),
                ));
            }
            if m.kind == MeterKind::Prometheus && plain && m.username.is_some() && !m.allow_plain_http {
                return Err(at(
                    "url",
                    format!(
                        "{url:?} is plain http and the meter has credentials: use https://, or set allow_plain_http = true"
                    ),
                ));
            }
            if m.kind == MeterKind::Redfish && !energy_unit {
                return Err(at(
                    "unit",
                    format!(
                        "a redfish meter reads energy (EnergyJoules/EnergykWh): unit {:?} must be Wh, kWh or MWh",
                        m.unit
                    ),
                ));
            }
            match (&m.username, &m.password_file) {
                (Some(_), Some(f)) => {
                    m.password = Some(read_secret_file(f, false).map_err(|why| at("password_file", why))?);
                }
                (Some(_), None) => {
                    return Err(at("username", "needs `password_file` (a file holding the password)".into()));
                }
                (None, Some(_)) => return Err(at("password_file", "needs `username`".into())),
                (None, None) => {}
            }
            if let Some(f) = &m.ca_file {
                let pem = std::fs::read(f).map_err(|e| at("ca_file", format!("cannot read {}: {e}", f.display())))?;
                if reqwest::Certificate::from_pem_bundle(&pem).map(|c| c.is_empty()).unwrap_or(true) {
                    return Err(at("ca_file", format!("{} holds no PEM certificate", f.display())));
                }
                m.ca_pem = Some(pem);
            }
            if m.kind == MeterKind::Prometheus && m.measure == Some(Measure::Power) && !energy_unit {
                return Err(at(
                    "measure",
                    format!(
                        "measure = \"power\" integrates a gauge in watts into energy: unit {:?} must be Wh, kWh or MWh",
                        m.unit
                    ),
                ));
            }
            if m.kind == MeterKind::Prometheus {
                let Some(q) = &m.query else {
                    return Err(at(
                        "id",
                        "`query` is required: a range selector of the raw register, e.g. 'meter_energy_kwh_total{meter=\"tgbt\"}[5m]'".into(),
                    ));
                };
                if let Some(f) = REFUSED_FUNCTIONS.iter().find(|f| calls_function(q, f)) {
                    return Err(at(
                        "query",
                        format!(
                            "{f}() extrapolates; give the raw samples with a range selector (the ledger computes increases exactly)"
                        ),
                    ));
                }
                let Some(range) = query_range(q).filter(|r| !r.contains(':')) else {
                    return Err(at(
                        "query",
                        format!(
                            "{q:?} is not a range selector of raw samples: write e.g. 'meter_energy_kwh_total{{meter=\"tgbt\"}}[5m]'"
                        ),
                    ));
                };
                if let Ok(r) = humantime::parse_duration(range.trim())
                    && r < m.interval()
                {
                    return Err(at(
                        "query",
                        format!(
                            "range [{range}] is shorter than the interval ({}): samples between polls would be missed",
                            humantime::format_duration(m.interval())
                        ),
                    ));
                }
            }
        }
        MeterKind::Simulated => {
            if !m.id.starts_with(SIMULATED_ID_PREFIX) {
                return Err(at("id", format!("a simulated meter's id must start with {SIMULATED_ID_PREFIX:?}")));
            }
            if !m.per_it_kwh.is_some_and(|f| f.is_finite() && f > 0.0 && f <= 1000.0) {
                return Err(at(
                    "per_it_kwh",
                    format!("`per_it_kwh` is required: a positive number of {} per kWh of IT energy", m.unit),
                ));
            }
        }
        MeterKind::Csv => {}
    }
    Ok(())
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
    /// Simulated meters are refused: only the demo may invent readings.
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::load_with(path, false)
    }

    /// [`load`](Self::load) for `domesday-collector demo`, which accepts
    /// meters of kind `simulated`.
    pub fn load_demo(path: &Path) -> Result<Loaded, ConfigError> {
        Self::load_with(Some(path), true)
    }

    fn load_with(path: Option<&Path>, allow_simulated: bool) -> Result<Loaded, ConfigError> {
        let (text, path) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?,
                p.to_path_buf(),
            ),
            None => (String::new(), PathBuf::from("<defaults>")),
        };
        let err = |offset: usize, message: String| ConfigError::at(&path, &text, offset, message);
        let cfg: CollectorConfig =
            toml::from_str(&text).map_err(|e| err(e.span().map(|s| s.start).unwrap_or(0), e.message().to_string()))?;
        let at = |key: &str, msg: String| err(find_key(&text, key), format!("key `{key}`: {msg}"));
        let mut cfg = cfg;
        // The PostgreSQL password is read now, like every secret: a bad file fails `check-config` and `serve` alike.
        cfg.db
            .resolve_password(cfg.db_password_file.as_deref(), std::env::var(crate::db::PGPASSWORD).ok())
            .map_err(|why| at("db_password_file", why.to_string()))?;
        let read_hash = match &cfg.read_token_sha256 {
            Some(h) => Some(parse_hex32(h).ok_or_else(|| {
                at("read_token_sha256", "must be 64 hex digits (domesday-collector hash-token < token)".into())
            })?),
            None => None,
        };
        if cfg.ledger.prune_every.0 < Duration::from_secs(1) {
            // Each prune first writes the whole journal to the tables: not after every commit.
            return Err(at(
                "prune_every",
                format!("{} is shorter than 1s", humantime::format_duration(cfg.ledger.prune_every.0)),
            ));
        }
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
                    let token = read_secret_file(f, true).map_err(|why| at("token_file", why))?;
                    hash_token(token.expose())
                }
                _ => {
                    return Err(at("id", format!("site {:?} needs exactly one of token_sha256 or token_file", s.id)));
                }
            };
            let mut site_cfg = s.clone();
            let mut ids: Vec<String> = Vec::new();
            for m in &mut site_cfg.meters {
                let loc = |msg: String| err(find_meter(&text, &m.id), msg);
                if !valid_id(&m.id) || ids.contains(&m.id) {
                    return Err(loc(format!(
                        "meter id {:?} must be unique in site {:?} and made of letters, digits, '-', '_' or '.'",
                        m.id, s.id
                    )));
                }
                ids.push(m.id.clone());
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
                if m.kind == MeterKind::Simulated && !allow_simulated {
                    return Err(err(
                        find_meter_key(&text, &m.id, "kind"),
                        format!(
                            "meter {:?}: kind \"simulated\" invents readings and exists only in the configuration `domesday-collector demo` generates; use modbus, redfish, prometheus or csv",
                            m.id
                        ),
                    ));
                }
                validate_reader(m, &text, &err)?;
            }
            validate_site_details(&site_cfg, &text, &err)?;
            // One token, one door: a token shared by two sites would write either site's
            // data, and a write token equal to the read token would also read every site.
            if let Some(o) = sites.iter().find(|o: &&Site| o.token_hash == token_hash) {
                return Err(at(
                    "id",
                    format!(
                        "sites {:?} and {:?} have the same write token: give each site its own (openssl rand -hex 32)",
                        o.config.id, s.id
                    ),
                ));
            }
            if read_hash == Some(token_hash) {
                return Err(at(
                    "read_token_sha256",
                    format!(
                        "the read token is also site {:?}'s write token: readers could write; give them different tokens",
                        s.id
                    ),
                ));
            }
            crate::reports::declared::locate_declared(&mut site_cfg, &text, &err);
            sites.push(Site { config: site_cfg, token_hash });
        }
        // The sites as validated: their meters hold the passwords and CA files read above.
        cfg.sites = sites.iter().map(|s| s.config.clone()).collect();
        if let Some(c) = &mut cfg.carbon {
            // The API key too is read now, before anything binds: a bad key file fails `check-config` and `serve` alike.
            c.validate().and_then(|()| c.load_key()).map_err(|e| at(e.key, e.message.clone()))?;
        }
        if let Some(f) = &mut cfg.forward {
            if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
                return Err(at("url", format!("[forward] url {:?} must start with http:// or https://", f.url)));
            }
            crate::forward::check_headers(&f.headers).map_err(|why| at("headers", format!("[forward] {why}")))?;
            if let Some(t) = &f.token_file {
                f.token = Some(read_secret_file(t, true).map_err(|why| at("token_file", format!("[forward] {why}")))?);
            }
        }
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
                p.bearer_token = Some(read_secret_file(f, true).map_err(|why| at("bearer_token_file", why))?);
            }
        }
        if let Some(t) = &mut cfg.tls {
            // Read now, like every file the configuration names: a bad certificate or key fails
            // `check-config` and `serve` before anything binds.
            let loaded = domesday_runtime::tls::TlsReloader::load(t.files()).map_err(|e| {
                at(e.key, format!("[tls] {e} (give PEM files: `openssl x509 -in FILE -noout` and `openssl pkey -in FILE -noout` check them; see docs/security.md)"))
            })?;
            t.loaded = Some(loaded);
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for d in &mut cfg.reports.declarations {
            if (d.starts_with("http://") || d.starts_with("https://"))
                && let Err(e) = crate::reports::region::fetchable(d)
            {
                return Err(at("declarations", format!("[reports] {d:?}: {e}")));
            }
            if d.trim().is_empty() {
                return Err(at("declarations", "[reports] an entry is empty: give a file path or an https URL".into()));
            }
            if !d.starts_with("https://") && !d.starts_with("http://") && Path::new(d.as_str()).is_relative() {
                *d = base.join(d.as_str()).display().to_string();
            }
        }
        // Annual figures kept in spreadsheets: merged into the sites' `[[sites.annual]]`.
        let csv_at = |msg: String| at("annual_csv", format!("[reports] {msg}"));
        crate::reports::annual_csv::import(&mut cfg.reports.annual_csv, &base, &mut sites, &csv_at)?;
        cfg.sites = sites.iter().map(|s| s.config.clone()).collect();
        Ok(Loaded { config: cfg, sites, read_hash })
    }

    /// `--db`: the ledger given on the command line, its PostgreSQL password read as at load.
    pub fn set_db(&mut self, raw: &str) -> Result<(), ConfigError> {
        let mut db = LedgerDb::parse(raw).map_err(|why| ConfigError::Value(format!("--db: {why}")))?;
        db.resolve_password(self.db_password_file.as_deref(), std::env::var(crate::db::PGPASSWORD).ok())
            .map_err(|why| ConfigError::Value(format!("--db with `db_password_file`: {why}")))?;
        self.db = db;
        Ok(())
    }

    /// The effective configuration as TOML, for `check-config`. Secrets are
    /// never in it: a closing comment says, for each, where it was read from.
    pub fn to_toml(&self) -> String {
        let mut out = toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        let mut secrets: Vec<String> = Vec::new();
        if let Some(d) = self.db.describe_password() {
            secrets.push(format!("db password: {d}"));
        }
        let from = |key: &str, f: &Option<PathBuf>| match f {
            Some(f) => format!("{key} {}", f.display()),
            None => key.to_string(),
        };
        for s in &self.sites {
            for m in &s.meters {
                if let Some(p) = &m.password {
                    let d = p.describe(&from("password_file", &m.password_file));
                    secrets.push(format!("sites.{}.meters.{}.password: {d}", s.id, m.id));
                }
            }
        }
        for p in &self.pull {
            if let Some(t) = &p.bearer_token {
                secrets.push(format!(
                    "pull.{}.bearer_token: {}",
                    p.site,
                    t.describe(&from("bearer_token_file", &p.bearer_token_file))
                ));
            }
        }
        if let Some(t) = self.forward.as_ref().and_then(|f| f.token.as_ref().map(|t| (t, f))) {
            secrets.push(format!("forward.token: {}", t.0.describe(&from("token_file", &t.1.token_file))));
        }
        if let Some(c) = &self.carbon
            && let Some(k) = &c.api_key
        {
            secrets.push(format!("carbon.api_key: {}", k.describe(&from("api_key_file", &c.api_key_file))));
        }
        if !secrets.is_empty() {
            out.push_str("\n# secrets, read at load and never shown:\n");
            for s in secrets {
                out.push_str(&format!("# {s}\n"));
            }
        }
        out
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
    fn forward_headers_are_checked_at_load() {
        let site = format!("[[sites]]\nid = \"a\"\ntimezone = \"UTC\"\ntoken_sha256 = \"{HASH}\"\n");
        let fwd = |h: &str| load(&format!("[forward]\nurl = \"http://m:9009/api/v1/push\"\nheaders = {h}\n\n{site}"));
        let ok = fwd("{ \"X-Scope-OrgID\" = \"tenant-1\" }").expect("valid");
        let headers = ok.config.forward.expect("forward").headers;
        assert_eq!(headers.get("X-Scope-OrgID").map(String::as_str), Some("tenant-1"));
        for (bad, why) in [
            ("{ \"Authorization\" = \"Bearer x\" }", "token_file"),
            ("{ \"Content-Type\" = \"x\" }", "set by the collector"),
            ("{ \"bad name\" = \"x\" }", "not a valid HTTP header name"),
            ("{ \"X-Scope-OrgID\" = \"a\\nb\" }", "not a valid HTTP header value"),
        ] {
            let e = fwd(bad).map(|_| ()).expect_err(bad).to_string();
            assert!(e.contains(":3:") && e.contains("headers") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn one_token_opens_one_door() {
        let site =
            |id: &str, h: &str| format!("[[sites]]\nid = \"{id}\"\ntimezone = \"UTC\"\ntoken_sha256 = \"{h}\"\n");
        let other = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"; // "test2"
        assert!(load(&format!("{}{}", site("a", HASH), site("b", other))).is_ok());
        let e = load(&format!("{}{}", site("a", HASH), site("b", HASH))).expect_err("shared write token").to_string();
        assert!(e.contains("\"a\" and \"b\" have the same write token"), "{e}");
        let e = load(&format!("read_token_sha256 = \"{HASH}\"\n{}", site("a", HASH)))
            .expect_err("read token = write token")
            .to_string();
        assert!(e.contains("read_token_sha256") && e.contains("readers could write"), "{e}");
        assert!(load(&format!("read_token_sha256 = \"{other}\"\n{}", site("a", HASH))).is_ok());
    }

    #[test]
    fn tls_files_are_checked_at_load_with_the_key_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, c.cert.pem()).expect("write");
        std::fs::write(&key, c.signing_key.serialize_pem()).expect("write");
        let tls = |cert: &Path, key: &Path| {
            format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", cert.display(), key.display())
        };
        let l = load(&tls(&cert, &key)).expect("valid");
        assert!(l.config.tls.as_ref().and_then(|t| t.loaded.as_ref()).is_some());
        let e = load(&tls(&cert, &dir.path().join("nope.pem"))).expect_err("missing key").to_string();
        assert!(e.contains("key `key_file`") && e.contains("nope.pem") && e.contains(":3:"), "{e}");
        let e = load(&tls(&key, &key)).expect_err("key as certificate").to_string();
        assert!(e.contains("key `cert_file`") && e.contains("holds no certificate"), "{e}");
        let e = load(&format!("{}client_ca_file = \"{}\"\n", tls(&cert, &key), key.display()))
            .expect_err("key as CA")
            .to_string();
        assert!(e.contains("key `client_ca_file`"), "{e}");
        let text = load(&tls(&cert, &key)).expect("valid").config.to_toml();
        assert!(text.contains("[tls]") && !text.contains("PRIVATE KEY"), "{text}");
    }

    #[test]
    fn the_ledger_keys_of_the_reference_are_accepted() {
        let dir = tempfile::tempdir().expect("tmp");
        let pw = dir.path().join("pg.password");
        std::fs::write(&pw, "pg-pw-77421\n").expect("write");
        let mut text = String::new();
        for k in domesday_model::config_keys::COLLECTOR_LEDGER_KEYS {
            let v =
                if k.key == "db_password_file" { format!("{:?}", pw.display().to_string()) } else { k.example.into() };
            text.push_str(&format!("{} = {v}\n", k.key));
        }
        let c = load(&text).expect("the reference's keys").config;
        let crate::db::LedgerDb::Postgres(t) = &c.db else { panic!("{:?}", c.db) };
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("pg-pw-77421"));
        let shown = format!("{}{c:?}", c.to_toml());
        assert!(!shown.contains("pg-pw-77421"), "{shown}");
        assert!(shown.contains("db = \"postgres://domesday@127.0.0.1:5432/domesday\""), "{shown}");
        assert!(shown.contains("# db password: <redacted>, 11 bytes, from db_password_file"), "{shown}");
    }

    #[test]
    fn a_bad_db_or_password_file_is_refused_at_its_line_without_the_password() {
        for (text, key, why) in [
            ("listen = \"127.0.0.1:1\"\ndb = \"postgres://u:pg-pw-77421@h/l\"\n", "db", "db_password_file"),
            ("db = \"postgres://u@h/l?password=pg-pw-77421\"\n", "db", "PGPASSWORD"),
            ("db = \"postgres://u@h:70000/l\"\n", "db", "port"),
            (
                "db = \"postgres://u@h/l\"\ndb_password_file = \"/nonexistent/pw\"\n",
                "db_password_file",
                "/nonexistent/pw",
            ),
            ("db = \"./l.db\"\ndb_password_file = \"/nonexistent/pw\"\n", "db_password_file", "SQLite"),
        ] {
            let e = load(text).map(|_| ()).expect_err(text).to_string();
            assert!(e.contains(&format!("key `{key}`")) && e.contains(why), "{text}: {e}");
            assert!(!e.contains("pg-pw-77421"), "{e}");
        }
    }

    #[test]
    fn defaults_and_a_site() {
        let Loaded { config: c, sites, .. } =
            load(&format!("[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_sha256 = \"{HASH}\"\n"))
                .expect("load");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9956");
        assert_eq!(c.db, LedgerDb::default());
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

    /// `[reports] declarations`: files are relative to the config file; URLs are https or loopback http.
    #[test]
    fn report_declarations_are_checked_and_resolved() {
        let Loaded { config: c, .. } =
            load("[reports]\ndeclarations = [\"d/a.json\", \"/abs/b.json\", \"https://dc.example/c.json\"]\n")
                .expect("load");
        let d = &c.reports.declarations;
        assert!(d[0].ends_with("d/a.json") && std::path::Path::new(&d[0]).is_absolute(), "{d:?}");
        assert_eq!(d[1..], ["/abs/b.json", "https://dc.example/c.json"]);
        let e = refused("[reports]\ndeclarations = [\"http://dc.example/c.json\"]\n");
        assert!(e.contains(":2:") && e.contains("only https"), "{e}");
        let e = refused("[reports]\ndeclarations = [\"\"]\n");
        assert!(e.contains("empty"), "{e}");
        let e = refused("[reports]\nfiles = []\n");
        assert!(e.contains("files"), "{e}");
    }

    fn site_with(meter: &str) -> String {
        format!(
            "[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_sha256 = \"{HASH}\"\n\n[[sites.meters]]\n{meter}"
        )
    }

    fn refused(text: &str) -> String {
        load(text).map(|_| ()).expect_err("must be refused").to_string()
    }

    #[test]
    fn simulated_meters_are_accepted_only_in_the_demo() {
        let sim =
            "id = \"sim-utility\"\nrole = \"utility_in\"\nkind = \"simulated\"\nunit = \"kWh\"\nper_it_kwh = 1.4\n";
        let e = refused(&site_with(sim));
        assert!(e.contains(":9:") && e.contains("simulated") && e.contains("domesday-collector demo"), "{e}");
        let demo = |text: &str| {
            let mut f = tempfile::NamedTempFile::new().expect("tmp");
            f.write_all(text.as_bytes()).expect("write");
            CollectorConfig::load_demo(f.path()).map(|l| l.sites[0].config.meters[0].per_it_kwh)
        };
        assert_eq!(demo(&site_with(sim)).expect("demo"), Some(1.4));
        let e = demo(&site_with(&sim.replace("sim-utility", "tgbt"))).expect_err("no sim- prefix").to_string();
        assert!(e.contains("must start with \"sim-\""), "{e}");
        let e = demo(&site_with(&sim.replace("per_it_kwh = 1.4\n", ""))).expect_err("no factor").to_string();
        assert!(e.contains("`per_it_kwh` is required"), "{e}");
        let e = demo(&site_with(&format!("{sim}url = \"http://x\"\n"))).expect_err("reader key").to_string();
        assert!(e.contains("does not apply to kind simulated"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"csv\"\nunit = \"kWh\"\nper_it_kwh = 1.4\n",
        ));
        assert!(e.contains("per_it_kwh") && e.contains("simulated only"), "{e}");
    }

    #[test]
    fn modbus_meters_need_their_keys_and_get_defaults() {
        let ok = site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"10.0.0.5:502\"\nregister = 3203\ntype = \"int64\"\nscale = 0.001\n",
        );
        let l = load(&ok).expect("load");
        let m = &l.sites[0].config.meters[0];
        assert_eq!(m.value_type, Some(RegisterType::Int64));
        assert_eq!((m.function, m.word_order, m.unit_id), (None, None, None));
        assert_eq!((m.interval(), m.timeout()), (DEFAULT_METER_INTERVAL, DEFAULT_METER_TIMEOUT));
        // Line 9 is `kind = "modbus"`, 7 the meter's id: a missing key points at the meter.
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\nregister = 1\ntype = \"int64\"\n",
        ));
        assert!(e.contains(":7:") && e.contains("`address` is required"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"meter\"\nregister = 1\ntype = \"int64\"\n",
        ));
        assert!(e.contains(":11:") && e.contains("host:port"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"m:502\"\nregister = 1\ntype = \"float64\"\n",
        ));
        assert!(e.contains(":13:") && e.contains("float64") && e.contains("float32"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"m:502\"\nregister = 65534\ntype = \"int64\"\n",
        ));
        assert!(e.contains(":12:") && e.contains("65535"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"m:502\"\nregister = 1\ntype = \"int64\"\nscale = -1.0\n",
        ));
        assert!(e.contains(":14:") && e.contains("positive"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"m:502\"\nregister = 1\ntype = \"int64\"\nurl = \"http://x\"\n",
        ));
        assert!(e.contains(":14:") && e.contains("does not apply to kind modbus"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"m:502\"\nregister = 1\ntype = \"int64\"\nfunction = \"coil\"\n",
        ));
        assert!(e.contains(":14:") && e.contains("holding"), "{e}");
        let e = refused(&site_with(
            "id = \"tgbt\"\nrole = \"utility_in\"\nkind = \"modbus\"\nunit = \"kWh\"\naddress = \"m:502\"\nregister = 1\ntype = \"int64\"\ninterval = \"500ms\"\n",
        ));
        assert!(e.contains(":14:") && e.contains("1s"), "{e}");
    }

    #[test]
    fn redfish_meters_refuse_plain_http_and_read_their_secrets() {
        let dir = tempfile::tempdir().expect("tmp");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").expect("pw");
        let meter = |url: &str, extra: &str| {
            site_with(&format!(
                "id = \"pdu-a1\"\nrole = \"pdu_out\"\nkind = \"redfish\"\nunit = \"kWh\"\nurl = \"{url}\"\n{extra}"
            ))
        };
        let e = refused(&meter("http://pdu/redfish/v1/PowerEquipment/RackPDUs/1", ""));
        assert!(e.contains(":11:") && e.contains("allow_plain_http"), "{e}");
        load(&meter("http://pdu/redfish/v1/PowerEquipment/RackPDUs/1", "allow_plain_http = true\n")).expect("allowed");
        let l = load(&meter(
            "https://pdu/redfish/v1/PowerEquipment/RackPDUs/1",
            &format!("username = \"monitor\"\npassword_file = {:?}\n", pw.display().to_string()),
        ))
        .expect("load");
        let m = &l.sites[0].config.meters[0];
        assert_eq!(m.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{m:?}").contains("s3cret"), "Debug must not show the password");
        let shown = l.config.to_toml();
        let line =
            format!("# sites.caen-1.meters.pdu-a1.password: <redacted>, 6 bytes, from password_file {}", pw.display());
        assert!(shown.contains(&line) && !shown.contains("s3cret"), "{shown}");
        assert!(!l.config.to_toml().contains("s3cret"));
        let e = refused(&meter("https://pdu/x", "username = \"monitor\"\n"));
        assert!(e.contains(":12:") && e.contains("password_file"), "{e}");
        let e = refused(&meter("https://admin:pw@pdu/x", ""));
        assert!(e.contains(":11:") && e.contains("credentials"), "{e}");
        let bad_ca = dir.path().join("ca.pem");
        std::fs::write(&bad_ca, "not a certificate").expect("ca");
        let e = refused(&meter("https://pdu/x", &format!("ca_file = {:?}\n", bad_ca.display().to_string())));
        assert!(e.contains(":12:") && e.contains("no PEM certificate"), "{e}");
        let e = refused(&site_with(
            "id = \"eau\"\nrole = \"water_in\"\nkind = \"redfish\"\nunit = \"m3\"\nurl = \"https://x/y\"\n",
        ));
        assert!(e.contains("EnergyJoules"), "{e}");
        let e = refused(&site_with("id = \"pdu\"\nrole = \"pdu_out\"\nkind = \"redfish\"\nunit = \"kWh\"\n"));
        assert!(e.contains(":7:") && e.contains("`url` is required"), "{e}");
    }

    #[test]
    fn prometheus_meters_take_raw_range_selectors_only() {
        let meter = |q: &str| {
            site_with(&format!(
                "id = \"eau\"\nrole = \"water_in\"\nkind = \"prometheus\"\nunit = \"m3\"\nurl = \"http://prom:9090\"\nquery = '{q}'\n"
            ))
        };
        load(&meter("water_m3_total{meter=\"eau\"}[5m]")).expect("raw range selector");
        for q in ["rate(water_m3_total[5m])", "sum(increase (water_m3_total[1h]))", "IRATE(x[5m])", "delta(x[5m])"] {
            let e = refused(&meter(q));
            assert!(e.contains(":12:") && e.contains("extrapolates"), "{q}: {e}");
        }
        // Names that merely contain a refused function are fine.
        load(&meter("pump_rate_total[5m]")).expect("not a call");
        let e = refused(&meter("water_m3_total"));
        assert!(e.contains("not a range selector"), "{e}");
        let e = refused(&meter("water_m3_total[1h:1m]"));
        assert!(e.contains("not a range selector"), "{e}");
        let e = refused(&meter("water_m3_total[30s]"));
        assert!(e.contains("shorter than the interval"), "{e}");
        // Credentials over plain http need the explicit opt-in.
        let dir = tempfile::tempdir().expect("tmp");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "x").expect("pw");
        let e =
            refused(&format!("{}username = \"u\"\npassword_file = {:?}\n", meter("x[5m]"), pw.display().to_string()));
        assert!(e.contains("plain http"), "{e}");
    }

    #[test]
    fn power_gauges_need_prometheus_and_an_energy_unit() {
        let meter =
            |kind_unit: &str, extra: &str| site_with(&format!("id = \"ups\"\nrole = \"pdu_out\"\n{kind_unit}{extra}"));
        let prom =
            "kind = \"prometheus\"\nunit = \"kWh\"\nurl = \"http://prom:9090\"\nquery = 'upsOutputTruePower[5m]'\n";
        let l = load(&meter(prom, "measure = \"power\"\n")).expect("power gauge");
        assert_eq!(l.sites[0].config.meters[0].measure, Some(Measure::Power));
        load(&meter(prom, "measure = \"energy\"\n")).expect("energy register");
        let water = prom.replace("kWh", "m3");
        let e = refused(&meter(&water, "measure = \"power\"\n").replace("pdu_out", "water_in"));
        assert!(e.contains(":13:") && e.contains("must be Wh, kWh or MWh"), "{e}");
        let e = refused(&meter("kind = \"csv\"\nunit = \"kWh\"\n", "measure = \"power\"\n"));
        assert!(e.contains(":11:") && e.contains("prometheus only"), "{e}");
        let e =
            refused(&meter("kind = \"redfish\"\nunit = \"kWh\"\nurl = \"https://pdu/x\"\n", "measure = \"power\"\n"));
        assert!(e.contains(":12:") && e.contains("does not apply to kind redfish"), "{e}");
        let e = refused(&meter(prom, "measure = \"watts\"\n"));
        assert!(e.contains("measure"), "{e}");
    }

    fn site(extra: &str) -> String {
        format!("[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_sha256 = \"{HASH}\"\n{extra}")
    }

    #[test]
    fn annex_i_fields_are_typed_and_checked() {
        let l = load(&site(
            "owner = \"Caen Metropole\"\naddress = \"1 rue X, 14000 Caen\"\ncountry = \"FR\"\nnuts3_code = \"FRD11\"\n\
             dc_type = \"co_hosting\"\ndc_structure = \"group_of_structures\"\nentry_into_operation = \"2019-06\"\n\
             installed_it_power_kw = 640.0\ntotal_floor_area_m2 = 1200.0\ncomputer_room_floor_area_m2 = 450.0\n\
             intake_air_set_point_c = 24.0\n[sites.redundancy]\nelectrical_hv = \"2N\"\ncooling_room = \"N+1\"\n",
        ))
        .expect("load");
        let c = &l.sites[0].config;
        assert_eq!((c.dc_type, c.dc_structure), (Some(DcType::CoHosting), Some(DcStructure::GroupOfStructures)));
        assert_eq!(c.redundancy.as_ref().and_then(|r| r.cooling_room.as_deref()), Some("N+1"));
        for ok in ["N", "N+1", "2N", "2N+2", "3N/2"] {
            assert!(valid_redundancy(ok), "{ok}");
        }
        for bad in ["", "N+", "1+1", "n+1", "2N+x", "Tier III"] {
            assert!(!valid_redundancy(bad), "{bad}");
        }
        // Errors name the line and the key.
        let e = refused(&site("dc_type = \"hyperscale\"\n"));
        assert!(e.contains(":5:") && e.contains("colocation"), "{e}");
        let e = refused(&site("country = \"France\"\n"));
        assert!(e.contains(":5:") && e.contains("alpha-2"), "{e}");
        let e = refused(&site("name = \"x\"\nentry_into_operation = \"2019\"\n"));
        assert!(e.contains(":6:") && e.contains("YYYY-MM"), "{e}");
        let e = refused(&site("installed_it_power_kw = -5.0\n"));
        assert!(e.contains(":5:") && e.contains("positive"), "{e}");
        let e = refused(&site("total_floor_area_m2 = 100.0\ncomputer_room_floor_area_m2 = 200.0\n"));
        assert!(e.contains(":6:") && e.contains("exceeds"), "{e}");
        let e = refused(&site("intake_air_set_point_c = 80.0\n"));
        assert!(e.contains(":5:") && e.contains("set point"), "{e}");
        let e = refused(&site("[sites.redundancy]\nelectrical_hv = \"2N\"\nelectrical_rack = \"Tier 3\"\n"));
        assert!(e.contains(":7:") && e.contains("N+1"), "{e}");
        let e = refused(&site("[sites.redundancy]\nwater = \"N\"\n"));
        assert!(e.contains(":6:") && e.contains("water"), "{e}");
        // The second site's errors point into the second site.
        let two = format!("{}{}", site(""), site("country = \"fr\"\n").replace("caen-1", "caen-2"));
        let e = refused(&two);
        assert!(e.contains(":9:") && e.contains("caen-2"), "{e}");
    }

    #[test]
    fn the_expected_inventory_is_checked() {
        let meter = "[[sites.meters]]\nid = \"pdu-a1-o7\"\nrole = \"it_in\"\nkind = \"csv\"\nunit = \"kWh\"\n";
        let l = load(&site(&format!(
            "expected_hosts = [\"srv-1\", \"srv-2\"]\n{meter}\
             [[sites.it_loads]]\nid = \"core-switch\"\nkind = \"network\"\nnameplate_watts = 350.0\nquality = \"estimated\"\n\
             [[sites.it_loads]]\nid = \"san-a\"\nkind = \"storage\"\nmeter = \"pdu-a1-o7\"\n"
        )))
        .expect("load");
        let c = &l.sites[0].config;
        assert_eq!(c.expected_hosts, vec!["srv-1".to_string(), "srv-2".to_string()]);
        assert_eq!(c.it_loads[1].kind, ItLoadKind::Storage);
        let e = refused(&site("expected_hosts = [\"srv-1\", \"srv-1\"]\n"));
        assert!(e.contains(":5:") && e.contains("unique"), "{e}");
        // Line 5 is the load's header, 6 its id, 8 `nameplate_watts`.
        let e = refused(&site("[[sites.it_loads]]\nid = \"sw\"\nkind = \"network\"\nnameplate_watts = 350.0\n"));
        assert!(e.contains(":8:") && e.contains("estimated"), "{e}");
        let e = refused(&site("[[sites.it_loads]]\nid = \"sw\"\nkind = \"network\"\n"));
        assert!(e.contains(":6:") && e.contains("exactly one"), "{e}");
        let e = refused(&site("[[sites.it_loads]]\nid = \"sw\"\nkind = \"router\"\n"));
        assert!(e.contains(":7:") && e.contains("network"), "{e}");
        let e = refused(&site("[[sites.it_loads]]\nid = \"sw\"\nkind = \"network\"\nmeter = \"nope\"\n"));
        assert!(e.contains(":8:") && e.contains("nope"), "{e}");
        let ups = "[[sites.meters]]\nid = \"ups\"\nrole = \"pdu_out\"\nkind = \"csv\"\nunit = \"kWh\"\n";
        let e = refused(&site(&format!("{ups}[[sites.it_loads]]\nid = \"sw\"\nkind = \"network\"\nmeter = \"ups\"\n")));
        assert!(e.contains(":13:") && e.contains("role it_in"), "{e}");
        let e = refused(&site(&format!(
            "{meter}[[sites.it_loads]]\nid = \"sw\"\nkind = \"network\"\nmeter = \"pdu-a1-o7\"\nquality = \"estimated\"\n"
        )));
        assert!(e.contains(":14:") && e.contains("nameplate_watts only"), "{e}");
    }

    #[test]
    fn host_power_budgets_are_checked() {
        let l = load(&site("[sites.host_power_budget_watts]\n\"srv-1\" = 450.0\n\"srv-2\" = 600\n")).expect("load");
        let b = &l.sites[0].config.host_power_budget_watts;
        assert_eq!(b.get("srv-1"), Some(&450.0));
        assert_eq!(b.get("srv-2"), Some(&600.0));
        let e = refused(&site("[sites.host_power_budget_watts]\n\"srv-1\" = -5.0\n"));
        assert!(e.contains(":6:") && e.contains("positive number of watts") && e.contains("srv-1"), "{e}");
        let e = refused(&site("host_power_budget_watts = { \"srv 1\" = 300.0 }\n"));
        assert!(e.contains(":5:") && e.contains("host name"), "{e}");
        let e = refused(&site("host_power_budget_watts = { \"srv-1\" = \"300 W\" }\n"));
        assert!(e.contains(":5:"), "{e}");
    }

    #[test]
    fn function_calls_are_recognised() {
        assert!(calls_function("rate(x[5m])", "rate"));
        assert!(calls_function("sum by (a) (Rate (x[5m]))", "rate"));
        assert!(!calls_function("x_rate_total[5m]", "rate"));
        assert!(!calls_function("rate_total[5m]", "rate"));
        assert!(!calls_function("irate(x[5m])", "rate"));
    }
}
