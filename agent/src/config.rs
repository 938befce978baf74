//! Agent configuration: the TOML file parsed into typed structs,
//! merged with command-line overrides and validated before anything binds or
//! starts. Errors name the file, line and column, the key and the fix.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::catalog::is_reserved_label;
use domesday_model::config_text::find_key;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use domesday_model::config_text::ConfigError;

/// Longest gap between two RAPL reads: AMD's 65.5 kJ package range wraps in
/// about 4 minutes at 270 W, so 30 s leaves a wide margin.
pub const RAPL_MAX_READ_GAP: Duration = Duration::from_secs(30);

pub use domesday_model::duration::{Dur, parse_duration};
pub use domesday_model::secret::Secret;

/// An extra label name, checked against the label rules at parse time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LabelName(pub String);

impl<'de> Deserialize<'de> for LabelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate_label_name(&s).map_err(serde::de::Error::custom)?;
        Ok(LabelName(s))
    }
}

/// `[a-z_][a-z0-9_]*`, not a catalog label, `site`, `host`, `job`, `instance` or `__*`.
pub fn validate_label_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("label name {s:?} must match [a-z_][a-z0-9_]*"));
    }
    if is_reserved_label(s) {
        return Err(format!(
            "label name {s:?} collides with a label domesday or Prometheus sets itself; choose another name"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Linear,
    Boavizta,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSources {
    rapl: Option<bool>,
    hwmon: Option<bool>,
    thermal: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileEstimation {
    model: Option<ModelKind>,
    idle_watts: Option<f64>,
    max_watts: Option<f64>,
    rapl_uplift: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    site: String,
    host: Option<String>,
    interval: Option<Dur>,
    listen: Option<SocketAddr>,
    web_config_file: Option<PathBuf>,
    sysfs_root: Option<PathBuf>,
    procfs_root: Option<PathBuf>,
    machine_id_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    sensor_timeout: Option<Dur>,
    rescan_interval: Option<Dur>,
    #[serde(default)]
    labels: BTreeMap<LabelName, String>,
    #[serde(default)]
    sources: FileSources,
    #[serde(default)]
    estimation: FileEstimation,
    push: Option<FilePush>,
    ipmi: Option<FileIpmi>,
    redfish: Option<OneOrMany<FileRedfish>>,
    nvml: Option<FileNvml>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileNvml {
    enabled: Option<Switch>,
    backend: Option<NvmlBackend>,
    library: Option<PathBuf>,
    command: Option<String>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
}

/// `true`, `false` or `"auto"` (on where the hardware is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Switch {
    On,
    Off,
    #[default]
    Auto,
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Switch::On),
            Raw::Bool(false) => Ok(Switch::Off),
            Raw::Text(t) if t == "auto" => Ok(Switch::Auto),
            Raw::Text(t) => Err(serde::de::Error::custom(format!("{t:?} is not true, false or \"auto\""))),
        }
    }
}

impl Serialize for Switch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Switch::On => s.serialize_bool(true),
            Switch::Off => s.serialize_bool(false),
            Switch::Auto => s.serialize_str("auto"),
        }
    }
}

pub const DEFAULT_NVML_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_NVML_TIMEOUT: Duration = Duration::from_secs(5);

/// How the agent talks to NVIDIA GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NvmlBackend {
    /// `libnvidia-ml.so.1` loaded at runtime in-process (through `nvml-wrapper`).
    #[default]
    Nvml,
    /// `nvidia-smi --query-gpu=…` run at each poll (power and temperature only).
    NvidiaSmi,
}

/// The effective `[nvml]` table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NvmlConfig {
    pub enabled: Switch,
    pub backend: NvmlBackend,
    /// NVML library to load (`nvml` backend); `None`: `libnvidia-ml.so.1`
    /// through the dynamic loader's search path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
    pub command: String,
    pub interval: Dur,
    pub timeout: Dur,
}

impl Default for NvmlConfig {
    fn default() -> Self {
        NvmlConfig {
            enabled: Switch::Auto,
            backend: NvmlBackend::Nvml,
            library: None,
            command: "nvidia-smi".into(),
            interval: Dur(DEFAULT_NVML_INTERVAL),
            timeout: Dur(DEFAULT_NVML_TIMEOUT),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedfish {
    enabled: Option<bool>,
    url: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    insecure_skip_verify: Option<bool>,
    allow_plain_http: Option<bool>,
    chassis: Option<String>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    auth: Option<RedfishAuth>,
}

/// How the agent authenticates to a Redfish BMC (with `username`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedfishAuth {
    /// One Redfish session (`X-Auth-Token`, DSP0266 §13.3), re-created on 401,
    /// deleted at shutdown; Basic when the BMC has no session service.
    #[default]
    Session,
    /// HTTP Basic on every request.
    Basic,
}

/// A `[redfish]` table or `[[redfish]]` tables.
#[derive(Debug, Clone)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table or an array of tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One `[redfish]` table written back as a table, several as `[[redfish]]`.
fn one_or_many<S: Serializer>(v: &[RedfishConfig], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

/// The effective `[redfish]` table (one of the `[[redfish]]` tables).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RedfishConfig {
    pub enabled: bool,
    /// Scheme and authority of the BMC, without a trailing slash.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Never serialised nor logged.
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The PEM read from `ca_file`.
    #[serde(skip)]
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    pub allow_plain_http: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chassis: Option<String>,
    pub interval: Dur,
    pub timeout: Dur,
    pub auth: RedfishAuth,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileIpmi {
    enabled: Option<bool>,
    backend: Option<IpmiBackend>,
    command: Option<String>,
    args: Option<Vec<String>>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    sensors: Option<bool>,
}

/// Which IPMI tool the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpmiBackend {
    /// `ipmitool dcmi power reading` and `ipmitool sdr elist`.
    #[default]
    Ipmitool,
    /// FreeIPMI `ipmi-dcmi --get-system-power-statistics` (power only).
    Freeipmi,
}

/// Shortest BMC polling interval (tests poll every second).
pub const MIN_BMC_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_BMC_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_BMC_TIMEOUT: Duration = Duration::from_secs(10);

/// The effective `[ipmi]` table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IpmiConfig {
    pub enabled: bool,
    pub backend: IpmiBackend,
    pub command: String,
    pub args: Vec<String>,
    pub interval: Dur,
    pub timeout: Dur,
    pub sensors: bool,
}

impl Default for IpmiConfig {
    fn default() -> Self {
        IpmiConfig {
            enabled: false,
            backend: IpmiBackend::Ipmitool,
            command: "ipmitool".into(),
            args: Vec::new(),
            interval: Dur(DEFAULT_BMC_INTERVAL),
            timeout: Dur(DEFAULT_BMC_TIMEOUT),
            sensors: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePush {
    url: UrlList,
    token_file: Option<PathBuf>,
    interval: Option<Dur>,
    series: Option<SeriesSet>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<ByteSize>,
    timeout: Option<Dur>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// `[push] url`: one URL, or a list tried in order.
#[derive(Debug, Clone)]
struct UrlList(Vec<String>);

impl<'de> Deserialize<'de> for UrlList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UrlList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL or a list of URLs")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UrlList, E> {
                Ok(UrlList(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<UrlList, A::Error> {
                Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(UrlList)
            }
        }
        d.deserialize_any(V)
    }
}

/// One push URL written back as a string, several as a list.
fn url_or_list<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

/// Which series are pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeriesSet {
    /// Host energy and power, sensor health, RAPL zones, inlet temperature,
    /// CPU utilisation, host and agent info.
    #[default]
    Default,
    /// Every series of the snapshot.
    All,
}

/// A size in bytes, written as an integer or a string with a unit (`"256MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => u64::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom(format!("size {n} must not be negative"))),
            Raw::Text(s) => parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parses `"256MiB"`, `"1GB"`, `"512 KiB"`, `"1048576"` into bytes (binary units
/// are powers of 1024, decimal ones powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let hint = "write bytes as an integer or a number and a unit, e.g. \"256MiB\", \"1GB\", \"65536\"";
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}; {hint}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(format!("invalid size unit in {s:?}; {hint}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// The push token's environment variable.
pub const PUSH_TOKEN_ENV: &str = "DOMESDAY_PUSH_TOKEN";
/// Smallest spool: one request of the largest size fits (1 MiB).
pub const MIN_SPOOL_BYTES: u64 = 1 << 20;
/// Largest spool accepted (a typo guard).
pub const MAX_SPOOL_BYTES: u64 = 1 << 40;
pub const DEFAULT_SPOOL_BYTES: u64 = 256 << 20;
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The effective `[push]` table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PushConfig {
    /// The collectors' remote_write URLs, tried in order (at least one, no
    /// duplicate); written back as `url`, a string when there is one.
    #[serde(rename = "url", serialize_with = "url_or_list")]
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Never serialised: `check-config` says where it came from instead.
    #[serde(skip)]
    pub token: Secret,
    pub interval: Dur,
    pub series: SeriesSet,
    pub spool_dir: PathBuf,
    /// Whether `spool_dir` was set (else it may fall back with `state_dir`).
    #[serde(skip)]
    pub spool_dir_explicit: bool,
    pub spool_max_bytes: ByteSize,
    pub timeout: Dur,
    /// PEM CA(s) the collector's certificate must chain to, instead of the bundled public roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mTLS), with `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// What the files held, read and checked at load.
    #[serde(skip)]
    pub tls: PushTls,
}

/// The push client's TLS material, read at load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushTls {
    /// The PEM of `ca_file`.
    pub ca_pem: Option<Vec<u8>>,
    /// `cert_file` then `key_file`, as one PEM: a secret (the key).
    pub identity_pem: Option<Secret>,
}

/// Which sources are enabled.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sources {
    pub rapl: bool,
    pub hwmon: bool,
    pub thermal: bool,
}

/// Estimation parameters; `None` means "the default for this CPU class".
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimation {
    pub model: ModelKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_watts: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watts: Option<f64>,
    pub rapl_uplift: f64,
}

/// Default RAPL-to-wall factor: BoaviztAPI adds `other_consumption_ratio` = 0.33
/// to CPU + RAM power for the rest of a server (boaviztapi/models/device/server.py).
pub const DEFAULT_RAPL_UPLIFT: f64 = 1.33;

/// The effective configuration.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentConfig {
    pub site: String,
    pub host: String,
    pub interval: Dur,
    pub listen: SocketAddr,
    /// Prometheus' exporter web configuration (YAML): TLS and basic auth for `/metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_config_file: Option<PathBuf>,
    /// What `web_config_file` holds, checked at load.
    #[serde(skip)]
    pub web: Option<crate::web_config::WebConfig>,
    pub sysfs_root: PathBuf,
    pub procfs_root: PathBuf,
    pub machine_id_file: PathBuf,
    pub state_dir: PathBuf,
    pub sensor_timeout: Dur,
    pub rescan_interval: Dur,
    pub labels: BTreeMap<String, String>,
    pub sources: Sources,
    pub estimation: Estimation,
    pub ipmi: IpmiConfig,
    /// The `[redfish]` table or the `[[redfish]]` tables; empty without any.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "one_or_many")]
    pub redfish: Vec<RedfishConfig>,
    pub nvml: NvmlConfig,
    /// Tests only: a file read instead of the kernel's clock state, from the
    /// environment variable `DOMESDAY_CLOCK_FIXTURE` (see `sources::clock`).
    #[serde(skip)]
    pub clock_fixture: Option<PathBuf>,
    /// `None` without a `[push]` table: nothing is pushed. Last, so that
    /// `to_toml`'s token comment lands in its table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
}

/// Command-line overrides (the shared flags).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub site: Option<String>,
    pub host: Option<String>,
    pub listen: Option<SocketAddr>,
    pub web_config_file: Option<PathBuf>,
    pub interval: Option<Duration>,
    pub sysfs_root: Option<PathBuf>,
    pub procfs_root: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9955";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/domesday-agent";

impl AgentConfig {
    /// Loads `path` (if any), applies the overrides and validates the result.
    /// The push token may come from the process environment.
    pub fn load(path: Option<&Path>, ov: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(path, ov, |k| std::env::var(k).ok())
    }

    /// [`AgentConfig::load`] with the environment given as a lookup (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        ov: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (file, text) = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
                let file: FileConfig = toml::from_str(&text).map_err(|e| {
                    let start = e.span().map(|s| s.start).unwrap_or(0);
                    located(p, &text, start, e.message().to_string())
                })?;
                (Some(file), text)
            }
            None => (None, String::new()),
        };
        let located_key = |key: &str, msg: String| match path {
            Some(p) => located(p, &text, find_key(&text, key), format!("key `{key}`: {msg}")),
            None => ConfigError::Value(msg),
        };
        let f = file.unwrap_or_else(|| FileConfig {
            site: "local".into(),
            host: None,
            interval: None,
            listen: None,
            web_config_file: None,
            sysfs_root: None,
            procfs_root: None,
            machine_id_file: None,
            state_dir: None,
            sensor_timeout: None,
            rescan_interval: None,
            labels: BTreeMap::new(),
            sources: FileSources::default(),
            estimation: FileEstimation::default(),
            push: None,
            ipmi: None,
            redfish: None,
            nvml: None,
        });
        let site = ov.site.clone().unwrap_or(f.site);
        if site.trim().is_empty() {
            return Err(located_key("site", "must not be empty; name the site, e.g. site = \"caen-1\"".into()));
        }
        let host = match ov.host.clone().or(f.host) {
            Some(h) if h.trim().is_empty() => {
                return Err(located_key("host", "must not be empty; remove it to use the hostname".into()));
            }
            Some(h) => h,
            None => default_hostname(),
        };
        let listen = match ov.listen.or(f.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse().map_err(|e| ConfigError::Value(format!("{e}")))?,
        };
        let web_config_file = ov.web_config_file.clone().or(f.web_config_file);
        let web = match &web_config_file {
            Some(w) => Some(crate::web_config::WebConfig::load(w)?),
            None => None,
        };
        let est = &f.estimation;
        for (key, v) in [("idle_watts", est.idle_watts), ("max_watts", est.max_watts)] {
            if let Some(v) = v
                && !(v.is_finite() && (0.0..100_000.0).contains(&v))
            {
                return Err(located_key(key, format!("{v} W is not a plausible server power (0 to 100 kW)")));
            }
        }
        if let (Some(i), Some(m)) = (est.idle_watts, est.max_watts)
            && i > m
        {
            return Err(located_key("max_watts", format!("max_watts ({m}) is below idle_watts ({i})")));
        }
        let rapl_uplift = est.rapl_uplift.unwrap_or(DEFAULT_RAPL_UPLIFT);
        if !(rapl_uplift.is_finite() && (1.0..=4.0).contains(&rapl_uplift)) {
            return Err(located_key(
                "rapl_uplift",
                format!("{rapl_uplift} is outside 1.0..=4.0 (wall power is at least the RAPL power)"),
            ));
        }
        let interval = ov.interval.map(Dur).or(f.interval).unwrap_or(Dur(Duration::from_secs(5)));
        let state_dir = f.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let push = match f.push {
            None => None,
            Some(p) => Some(push_config(p, &state_dir, path, &text, &env)?),
        };
        let ipmi = match f.ipmi {
            None => IpmiConfig::default(),
            Some(i) => ipmi_config(i, path, &text)?,
        };
        let redfish = match f.redfish {
            None => Vec::new(),
            Some(OneOrMany::One(r)) => vec![redfish_config(r, path, &text)?],
            Some(OneOrMany::Many(rs)) => {
                let mut v: Vec<RedfishConfig> = Vec::new();
                for r in rs {
                    let r = redfish_config(r, path, &text)?;
                    if v.iter().any(|o| o.url == r.url && o.chassis == r.chassis) {
                        return Err(ConfigError::Value(format!(
                            "[[redfish]]: {} is listed twice (with the same chassis); list each BMC once",
                            r.url
                        )));
                    }
                    v.push(r);
                }
                v
            }
        };
        let nvml = match f.nvml {
            None => NvmlConfig::default(),
            Some(n) => {
                let at = |key: &str, msg: String| match path {
                    Some(file) => {
                        located(file, &text, find_key_in_table(&text, "nvml", key), format!("key `nvml.{key}`: {msg}"))
                    }
                    None => ConfigError::Value(format!("nvml.{key}: {msg}")),
                };
                let interval = n.interval.unwrap_or(Dur(DEFAULT_NVML_INTERVAL));
                if interval.0 < MIN_BMC_INTERVAL {
                    return Err(at("interval", format!("{interval} is below the 1s minimum")));
                }
                let timeout = n.timeout.unwrap_or(Dur(DEFAULT_NVML_TIMEOUT.min(interval.0)));
                if timeout.0 > interval.0 {
                    return Err(at("timeout", format!("{timeout} is longer than the interval ({interval})")));
                }
                // A `command` without `backend` is a config written for the
                // nvidia-smi source that preceded NVML: it keeps its meaning.
                let backend = match (n.backend, &n.command, &n.library) {
                    (Some(b), _, _) => b,
                    (None, Some(_), Some(_)) => {
                        return Err(at(
                            "library",
                            "and `command` belong to different backends; set backend = \"nvml\" (library) or \"nvidia-smi\" (command)".into(),
                        ));
                    }
                    (None, Some(_), None) => NvmlBackend::NvidiaSmi,
                    (None, None, _) => NvmlBackend::Nvml,
                };
                if n.library.as_ref().is_some_and(|l| l.as_os_str().is_empty()) {
                    return Err(at("library", "must not be empty; omit it to use libnvidia-ml.so.1".into()));
                }
                NvmlConfig {
                    enabled: n.enabled.unwrap_or_default(),
                    backend,
                    library: n.library,
                    command: n.command.unwrap_or_else(|| "nvidia-smi".into()),
                    interval,
                    timeout,
                }
            }
        };
        // Default: 2 s, but never more than half the interval.
        let sensor_timeout = f.sensor_timeout.unwrap_or(Dur(Duration::from_secs(2).min(interval.0 / 2)));
        let cfg = AgentConfig {
            site,
            host,
            interval,
            listen,
            web_config_file,
            web,
            sysfs_root: ov.sysfs_root.clone().or(f.sysfs_root).unwrap_or_else(|| "/sys".into()),
            procfs_root: ov.procfs_root.clone().or(f.procfs_root).unwrap_or_else(|| "/proc".into()),
            machine_id_file: f.machine_id_file.unwrap_or_else(|| "/etc/machine-id".into()),
            state_dir,
            sensor_timeout,
            rescan_interval: f.rescan_interval.unwrap_or(Dur(Duration::from_secs(60))),
            labels: f.labels.into_iter().map(|(k, v)| (k.0, v)).collect(),
            sources: Sources {
                rapl: f.sources.rapl.unwrap_or(true),
                hwmon: f.sources.hwmon.unwrap_or(true),
                thermal: f.sources.thermal.unwrap_or(true),
            },
            estimation: Estimation {
                model: est.model.unwrap_or_default(),
                idle_watts: est.idle_watts,
                max_watts: est.max_watts,
                rapl_uplift,
            },
            push,
            ipmi,
            redfish,
            nvml,
            clock_fixture: env(crate::sources::clock::FIXTURE_ENV).filter(|p| !p.is_empty()).map(PathBuf::from),
        };
        if cfg.sensor_timeout.0 > cfg.interval.0 {
            return Err(located_key(
                "sensor_timeout",
                format!(
                    "{} is longer than the interval ({}); a blocked sensor would stall the tick",
                    humantime::format_duration(cfg.sensor_timeout.0),
                    humantime::format_duration(cfg.interval.0)
                ),
            ));
        }
        Ok(cfg)
    }

    /// The effective configuration as TOML, for `check-config`. Secrets are
    /// never in it: a comment says where each comes from (the push token, the
    /// Redfish passwords), spelled as the collector's `check-config` does.
    pub fn to_toml(&self) -> String {
        let mut out = toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"));
        if let Some(p) = &self.push {
            // `[push]` is the last table, so the comment lands in it.
            let from = match &p.token_file {
                Some(f) => format!("token_file {}", f.display()),
                None => format!("environment variable {PUSH_TOKEN_ENV}"),
            };
            out.push_str(&format!("# token: {}\n", p.token.describe(&from)));
        }
        for r in &self.redfish {
            if let (Some(pw), Some(f)) = (&r.password, &r.password_file) {
                let d = pw.describe(&format!("password_file {}", f.display()));
                out.push_str(&format!("# redfish {} password: {d}\n", r.url));
            }
        }
        out
    }
}

/// Validates the `[push]` table; errors point at the key's line in the file.
fn push_config(
    p: FilePush,
    state_dir: &Path,
    path: Option<&Path>,
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<PushConfig, ConfigError> {
    let at = |key: &str, msg: String| match path {
        Some(file) => {
            let off = find_key_in_table(text, "push", key);
            located(file, text, off, format!("key `push.{key}`: {msg}"))
        }
        None => ConfigError::Value(format!("push.{key}: {msg}")),
    };
    let urls = push_urls(&p.url.0).map_err(|why| {
        // The snippet would quote a password given in the URL: hide it.
        let mut e = at("url", why);
        if let ConfigError::Invalid { snippet, .. } = &mut e
            && snippet.contains('@')
        {
            *snippet = "url = <redacted>".into();
        }
        e
    })?;
    let token = load_token(p.token_file.as_deref(), env).map_err(|why| at("token_file", why))?;
    let spool_max_bytes = p.spool_max_bytes.unwrap_or(ByteSize(DEFAULT_SPOOL_BYTES));
    if !(MIN_SPOOL_BYTES..=MAX_SPOOL_BYTES).contains(&spool_max_bytes.0) {
        return Err(at(
            "spool_max_bytes",
            format!(
                "{spool_max_bytes} is outside {}..={} (the spool must hold at least one 1 MiB request)",
                ByteSize(MIN_SPOOL_BYTES),
                ByteSize(MAX_SPOOL_BYTES)
            ),
        ));
    }
    let interval = p.interval.unwrap_or(Dur(DEFAULT_PUSH_INTERVAL));
    let timeout = p.timeout.unwrap_or(Dur(DEFAULT_PUSH_TIMEOUT));
    let tls_err = |e: domesday_runtime::tls::TlsError| at(e.key, format!("{e} (give PEM files; see docs/security.md)"));
    let mut tls = PushTls::default();
    if let Some(f) = &p.ca_file {
        tls.ca_pem = Some(domesday_runtime::tls::read_ca_bundle("ca_file", f).map_err(tls_err)?);
    }
    match (&p.cert_file, &p.key_file) {
        (Some(c), Some(k)) => {
            tls.identity_pem = Some(Secret::new(domesday_runtime::tls::read_client_identity(c, k).map_err(tls_err)?));
        }
        (Some(_), None) => return Err(at("cert_file", "needs key_file (the client certificate's private key)".into())),
        (None, Some(_)) => return Err(at("key_file", "needs cert_file (the client certificate)".into())),
        (None, None) => {}
    }
    if (tls.ca_pem.is_some() || tls.identity_pem.is_some()) && urls.iter().any(|u| !u.starts_with("https://")) {
        let key = if p.ca_file.is_some() { "ca_file" } else { "cert_file" };
        return Err(at(key, "applies to https only: make every `url` https://".into()));
    }
    Ok(PushConfig {
        urls,
        token_file: p.token_file,
        token,
        interval,
        series: p.series.unwrap_or_default(),
        spool_dir_explicit: p.spool_dir.is_some(),
        spool_dir: p.spool_dir.unwrap_or_else(|| state_dir.join("spool")),
        spool_max_bytes,
        timeout,
        ca_file: p.ca_file,
        cert_file: p.cert_file,
        key_file: p.key_file,
        tls,
    })
}

/// Validates the `[ipmi]` table.
fn ipmi_config(i: FileIpmi, path: Option<&Path>, text: &str) -> Result<IpmiConfig, ConfigError> {
    let at = |key: &str, msg: String| match path {
        Some(file) => located(file, text, find_key_in_table(text, "ipmi", key), format!("key `ipmi.{key}`: {msg}")),
        None => ConfigError::Value(format!("ipmi.{key}: {msg}")),
    };
    let backend = i.backend.unwrap_or_default();
    let interval = i.interval.unwrap_or(Dur(DEFAULT_BMC_INTERVAL));
    if interval.0 < MIN_BMC_INTERVAL {
        return Err(at("interval", format!("{interval} is below the 1s minimum; BMCs answer in seconds")));
    }
    let timeout = i.timeout.unwrap_or(Dur(DEFAULT_BMC_TIMEOUT.min(interval.0)));
    if timeout.0 > interval.0 {
        return Err(at("timeout", format!("{timeout} is longer than the interval ({interval})")));
    }
    let command = i.command.unwrap_or_else(|| {
        match backend {
            IpmiBackend::Ipmitool => "ipmitool",
            IpmiBackend::Freeipmi => "ipmi-dcmi",
        }
        .to_string()
    });
    if command.trim().is_empty() {
        return Err(at("command", "must not be empty; e.g. \"ipmitool\" or a full path".into()));
    }
    Ok(IpmiConfig {
        enabled: i.enabled.unwrap_or(true),
        backend,
        command,
        args: i.args.unwrap_or_default(),
        interval,
        timeout,
        sensors: i.sensors.unwrap_or(true),
    })
}

/// Validates the `[redfish]` table; reads the password and the CA file.
fn redfish_config(r: FileRedfish, path: Option<&Path>, text: &str) -> Result<RedfishConfig, ConfigError> {
    let at = |key: &str, msg: String| match path {
        Some(file) => {
            let mut e =
                located(file, text, find_key_in_table(text, "redfish", key), format!("key `redfish.{key}`: {msg}"));
            if let ConfigError::Invalid { snippet, .. } = &mut e
                && snippet.contains('@')
            {
                *snippet = "<redacted>".into();
            }
            e
        }
        None => ConfigError::Value(format!("redfish.{key}: {msg}")),
    };
    let allow_plain_http = r.allow_plain_http.unwrap_or(false);
    let url = reqwest::Url::parse(r.url.trim()).map_err(|e| {
        let shown = if r.url.contains('@') { "<redacted>" } else { r.url.as_str() };
        at("url", format!("{shown:?} is not a URL ({e}); e.g. \"https://bmc.example\""))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if allow_plain_http => {}
        "http" => {
            return Err(at(
                "url",
                "http:// sends the BMC password in clear: use https://, or set allow_plain_http = true".into(),
            ));
        }
        other => return Err(at("url", format!("scheme {other:?} is not supported; use https://"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(at("url", "the URL has no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(at("url", "must not carry credentials; use username and password_file".into()));
    }
    let insecure_skip_verify = r.insecure_skip_verify.unwrap_or(false);
    if insecure_skip_verify && r.ca_file.is_some() {
        return Err(at("insecure_skip_verify", "contradicts ca_file; keep one".into()));
    }
    let ca_pem = match &r.ca_file {
        Some(f) => Some(std::fs::read(f).map_err(|e| at("ca_file", format!("cannot read {}: {e}", f.display())))?),
        None => None,
    };
    let password = match &r.password_file {
        Some(f) => {
            let raw = std::fs::read_to_string(f)
                .map_err(|e| at("password_file", format!("cannot read {}: {e}", f.display())))?;
            let p = raw.trim_end_matches(['\r', '\n']);
            if p.is_empty() {
                return Err(at("password_file", format!("{} is empty", f.display())));
            }
            Some(Secret::new(p))
        }
        None => None,
    };
    if password.is_some() && r.username.is_none() {
        return Err(at("username", "password_file is set but username is not".into()));
    }
    let interval = r.interval.unwrap_or(Dur(DEFAULT_BMC_INTERVAL));
    if interval.0 < MIN_BMC_INTERVAL {
        return Err(at("interval", format!("{interval} is below the 1s minimum; BMCs answer in seconds")));
    }
    let timeout = r.timeout.unwrap_or(Dur(DEFAULT_BMC_TIMEOUT.min(interval.0)));
    if timeout.0 > interval.0 {
        return Err(at("timeout", format!("{timeout} is longer than the interval ({interval})")));
    }
    Ok(RedfishConfig {
        enabled: r.enabled.unwrap_or(true),
        url: url.as_str().trim_end_matches('/').to_string(),
        username: r.username,
        password_file: r.password_file,
        password,
        ca_file: r.ca_file,
        ca_pem,
        insecure_skip_verify,
        allow_plain_http,
        chassis: r.chassis,
        interval,
        timeout,
        auth: r.auth.unwrap_or_default(),
    })
}

/// Validates the `[push] url` list: at least one URL, each valid, none twice
/// (compared after parsing, so `http://C:80/w` and `http://c/w` are one).
/// Returns the URLs in their parsed, normalised form, in the given order.
pub fn push_urls(list: &[String]) -> Result<Vec<String>, String> {
    if list.is_empty() {
        return Err("the list is empty; give one URL or several, e.g. \"http://collector:9956/api/v1/write\"".into());
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let url =
            parse_push_url(s).map_err(|why| if list.len() > 1 { format!("URL {}: {why}", i + 1) } else { why })?;
        let url = url.to_string();
        if let Some(j) = out.iter().position(|u| *u == url) {
            return Err(format!("URL {} ({url}) repeats URL {}; list each collector once", i + 1, j + 1));
        }
        out.push(url);
    }
    Ok(out)
}

/// Validates a remote_write URL: http or https, a host, no credentials.
pub fn parse_push_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| {
        let shown = if s.contains('@') { "<redacted>" } else { s };
        format!("{shown:?} is not a URL ({e}); e.g. \"http://collector:9956/api/v1/write\"")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not supported; use http:// or https://", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; put the token in token_file".into());
    }
    Ok(url)
}

/// Reads the push token from `file`, else from `DOMESDAY_PUSH_TOKEN` (looked up
/// with `env`). Errors never quote the token.
pub fn load_token(file: Option<&Path>, env: &impl Fn(&str) -> Option<String>) -> Result<Secret, String> {
    match file {
        Some(file) => {
            let raw = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            check_token(raw.trim()).map_err(|why| format!("the token in {}: {why}", file.display()))
        }
        None => match env(PUSH_TOKEN_ENV) {
            Some(v) => check_token(v.trim()).map_err(|why| format!("the token in {PUSH_TOKEN_ENV}: {why}")),
            None => {
                Err(format!("[push] needs a write token: set token_file or the environment variable {PUSH_TOKEN_ENV}"))
            }
        },
    }
}

/// A token must be non-empty visible ASCII (a valid header value). The reason
/// never quotes the token.
fn check_token(t: &str) -> Result<Secret, String> {
    if t.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(i) = t.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(format!("character {} is not printable ASCII, which an Authorization header cannot carry", i + 1));
    }
    Ok(Secret::new(t))
}

/// Offset of `key` inside `[table]` (or of the table header when the key is
/// absent), for messages.
fn find_key_in_table(text: &str, table: &str, key: &str) -> usize {
    let header = format!("[{table}]");
    let mut offset = 0;
    let mut in_table = false;
    let mut header_at = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_table = t.trim_end().starts_with(&header);
            if in_table && header_at.is_none() {
                header_at = Some(offset + (line.len() - t.len()));
            }
        } else if in_table
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return offset + (line.len() - t.len());
        }
        offset += line.len();
    }
    header_at.unwrap_or(0)
}

fn default_hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into())
}

fn located(path: &Path, text: &str, offset: usize, message: String) -> ConfigError {
    ConfigError::at(path, text, offset, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(text: &str) -> Result<AgentConfig, ConfigError> {
        load_env(text, None)
    }

    /// Loads `text` with `DOMESDAY_PUSH_TOKEN` set to `token` (or unset).
    fn load_env(text: &str, token: Option<&str>) -> Result<AgentConfig, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        AgentConfig::load_with_env(Some(f.path()), &Overrides::default(), |k| {
            (k == PUSH_TOKEN_ENV).then(|| token.map(str::to_string)).flatten()
        })
    }

    fn err(text: &str) -> String {
        match load_str(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    /// A token file for the examples (their `/etc/domesday/push.token` does not exist here).
    fn token_file(dir: &tempfile::TempDir, token: &str) -> String {
        let p = dir.path().join("push.token");
        std::fs::write(&p, token).expect("token");
        p.display().to_string()
    }

    const EXAMPLE_TOKEN_FILE: &str = "/etc/domesday/push.token";
    const EXAMPLE_PASSWORD_FILE: &str = "/etc/domesday/bmc.password";
    const EXAMPLE_CA_FILE: &str = "/etc/domesday/bmc-ca.pem";
    const EXAMPLE_PUSH_CA: &str = "/etc/domesday/collector-ca.pem";
    const EXAMPLE_PUSH_CERT: &str = "/etc/domesday/agent.crt";
    const EXAMPLE_PUSH_KEY: &str = "/etc/domesday/agent.key";
    const EXAMPLE_WEB_CONFIG: &str = "/etc/domesday/web.yml";

    /// Replaces the example's TLS file paths with real files in `dir`: a
    /// generated certificate (as CA and client certificate), its key, an empty web config.
    fn tls_files(dir: &tempfile::TempDir, text: &str) -> String {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let (crt, key, web) = (dir.path().join("t.crt"), dir.path().join("t.key"), dir.path().join("web.yml"));
        std::fs::write(&crt, c.cert.pem()).expect("crt");
        std::fs::write(&key, c.signing_key.serialize_pem()).expect("key");
        std::fs::write(&web, "").expect("web");
        text.replace(EXAMPLE_PUSH_CA, &crt.display().to_string())
            .replace(EXAMPLE_PUSH_CERT, &crt.display().to_string())
            .replace(EXAMPLE_PUSH_KEY, &key.display().to_string())
            .replace(EXAMPLE_WEB_CONFIG, &web.display().to_string())
    }

    fn password_file(dir: &tempfile::TempDir, pw: &str) -> String {
        let p = dir.path().join("bmc.password");
        std::fs::write(&p, pw).expect("password");
        p.display().to_string()
    }

    #[test]
    fn defaults_without_a_file() {
        let c = AgentConfig::load(None, &Overrides::default()).expect("defaults");
        assert_eq!(c.site, "local");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.interval.0, Duration::from_secs(5));
        assert_eq!(c.sysfs_root, PathBuf::from("/sys"));
        assert!(!c.host.is_empty());
        assert!(c.push.is_none());
    }

    #[test]
    fn the_generated_example_with_every_key_parses() {
        let dir = tempfile::tempdir().expect("tmp");
        let example = domesday_model::config_keys::example_toml();
        assert!(example.contains(EXAMPLE_TOKEN_FILE));
        let text = example
            .replace(EXAMPLE_TOKEN_FILE, &token_file(&dir, "tok-123\n"))
            .replace(EXAMPLE_PASSWORD_FILE, &password_file(&dir, "pw\n"))
            .replace(EXAMPLE_CA_FILE, &password_file(&dir, "pem"));
        let text = tls_files(&dir, &text);
        let c = load_str(&text).expect("example");
        assert_eq!(c.site, "caen-1");
        assert_eq!(c.labels.get("region").map(String::as_str), Some("normandie"));
        assert_eq!(c.estimation.idle_watts, Some(110.0));
        assert_eq!(c.estimation.rapl_uplift, 1.25);
        let p = c.push.expect("push");
        assert_eq!(p.token.expose(), "tok-123");
        assert_eq!(p.interval.0, Duration::from_secs(15));
        assert_eq!(p.spool_max_bytes, ByteSize(256 << 20));
        assert_eq!(p.series, SeriesSet::Default);
        assert!(p.tls.ca_pem.is_some() && p.tls.identity_pem.is_some());
        assert!(c.web.is_some());
    }

    #[test]
    fn every_documented_key_is_known_and_every_known_key_documented() {
        // A key missing from the struct would make the example fail above; a key
        // missing from the table is caught by the unknown-key error below.
        let dir = tempfile::tempdir().expect("tmp");
        let tok = token_file(&dir, "t");
        for k in domesday_model::config_keys::AGENT_KEYS {
            let (t, name) = k.key.split_once('.').unwrap_or(("", k.key));
            let name = if name == "*" { "region" } else { name };
            let pw = password_file(&dir, "pw");
            let example = k
                .example
                .replace(EXAMPLE_TOKEN_FILE, &tok)
                .replace(EXAMPLE_PASSWORD_FILE, &pw)
                .replace(EXAMPLE_CA_FILE, &pw);
            let example = tls_files(&dir, &example);
            let text = if t.is_empty() {
                if name == "site" {
                    "site = \"x\"\n".to_string()
                } else {
                    format!("site = \"x\"\n{name} = {example}\n")
                }
            } else if t == "push" && name == "cert_file" {
                let key = tls_files(&dir, &format!("{EXAMPLE_PUSH_KEY:?}"));
                format!(
                    "site = \"x\"\n[push]\nurl = \"https://c:9956/api/v1/write\"\n{name} = {example}\nkey_file = {key}\n"
                )
            } else if t == "push" && name == "key_file" {
                let crt = tls_files(&dir, &format!("{EXAMPLE_PUSH_CERT:?}"));
                format!(
                    "site = \"x\"\n[push]\nurl = \"https://c:9956/api/v1/write\"\n{name} = {example}\ncert_file = {crt}\n"
                )
            } else if t == "push" && name != "url" {
                // `url` is required in [push]; the token comes from the environment.
                format!("site = \"x\"\n[push]\nurl = \"https://c:9956/api/v1/write\"\n{name} = {example}\n")
            } else if t == "redfish" && name != "url" {
                let user = if name == "password_file" { "username = \"u\"\n" } else { "" };
                format!("site = \"x\"\n[redfish]\nurl = \"https://bmc\"\n{user}{name} = {example}\n")
            } else {
                format!("site = \"x\"\n[{t}]\n{name} = {example}\n")
            };
            load_env(&text, Some("t")).unwrap_or_else(|e| panic!("{}: {e}", k.key));
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("site = \"a\"\ninterval = \"5s\"\ninterwal = \"5s\"\n");
        assert!(e.contains(":3:1:"), "{e}");
        assert!(e.contains("interwal"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_line_and_the_fix() {
        let e = err("site = \"a\"\n\ninterval = \"5 parsecs\"\n");
        assert!(e.contains(":3:"), "{e}");
        assert!(e.contains("e.g. \"5s\""), "{e}");
        let e = err("site = \"a\"\ninterval = \"0s\"\n");
        assert!(e.contains("greater than zero"), "{e}");
    }

    #[test]
    fn colliding_and_malformed_labels_are_refused() {
        for bad in ["zone", "job", "instance", "site", "__meta", "Region", "9x", "a-b"] {
            let e = err(&format!("site = \"a\"\n[labels]\n\"{bad}\" = \"x\"\n"));
            assert!(e.contains(":3:"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_file_must_set_site() {
        let e = err("host = \"h\"\n");
        assert!(e.contains("site"), "{e}");
    }

    #[test]
    fn estimation_values_are_checked() {
        let e = err("site = \"a\"\n[estimation]\nidle_watts = 300.0\nmax_watts = 200.0\n");
        assert!(e.contains(":4:") && e.contains("max_watts"), "{e}");
        let e = err("site = \"a\"\n[estimation]\nrapl_uplift = 0.5\n");
        assert!(e.contains(":3:") && e.contains("rapl_uplift"), "{e}");
        let e = err("site = \"a\"\n[estimation]\nmodel = \"magic\"\n");
        assert!(e.contains(":3:") && e.contains("magic"), "{e}");
    }

    #[test]
    fn timeout_longer_than_interval_is_refused() {
        let e = err("site = \"a\"\ninterval = \"1s\"\nsensor_timeout = \"2s\"\n");
        assert!(e.contains("sensor_timeout") && e.contains(":3:"), "{e}");
    }

    #[test]
    fn overrides_win() {
        let ov =
            Overrides { site: Some("s2".into()), interval: Some(Duration::from_millis(500)), ..Default::default() };
        let c = AgentConfig::load(None, &ov).expect("cfg");
        assert_eq!(c.site, "s2");
        assert_eq!(c.interval.0, Duration::from_millis(500));
    }

    #[test]
    fn effective_config_renders_as_toml() {
        let c = load_str("site = \"a\"\nhost = \"h\"\n[labels]\nregion = \"normandie\"\n").expect("cfg");
        let t = c.to_toml();
        assert!(
            t.contains("site = \"a\"") && t.contains("region = \"normandie\"") && t.contains("interval = \"5s\""),
            "{t}"
        );
    }

    const PUSH: &str = "site = \"a\"\n[push]\nurl = \"http://127.0.0.1:9956/api/v1/write\"\n";

    #[test]
    fn push_token_from_file_or_environment_never_printed() {
        let dir = tempfile::tempdir().expect("tmp");
        let secret = "s3cr3t-Token_value";
        let file = token_file(&dir, &format!("  {secret}\n"));
        let c = load_str(&format!("{PUSH}token_file = {file:?}\n")).expect("file token");
        let p = c.push.as_ref().expect("push");
        assert_eq!(p.token.expose(), secret);
        let shown = format!("{}\n{c:?}", c.to_toml());
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains(&file), "{shown}");
        let tail = shown.rsplit_once("[push]").map(|(_, t)| t).unwrap_or("");
        assert!(tail.contains("# token: <redacted>") && !tail.contains("\n["), "comment outside [push]: {shown}");
        // The environment, when no file is named.
        let c = load_env(PUSH, Some(secret)).expect("env token");
        assert_eq!(c.push.as_ref().map(|p| p.token.expose()), Some(secret));
        let shown = format!("{}\n{c:?}", c.to_toml());
        assert!(!shown.contains(secret) && shown.contains(PUSH_TOKEN_ENV), "{shown}");
        // The printed config is itself a valid config.
        load_env(&c.to_toml(), Some(secret)).expect("effective config reloads");
    }

    #[test]
    fn push_without_a_token_is_refused_at_the_push_table() {
        let e = load_env(PUSH, None).map(|_| ()).expect_err("no token");
        let e = e.to_string();
        assert!(e.contains(":2:") && e.contains(PUSH_TOKEN_ENV), "{e}");
        let e = err(&format!("{PUSH}token_file = \"/nonexistent/push.token\"\n"));
        assert!(e.contains(":4:") && e.contains("cannot read /nonexistent/push.token"), "{e}");
    }

    #[test]
    fn bad_tokens_are_refused_without_quoting_them() {
        let dir = tempfile::tempdir().expect("tmp");
        for bad in ["", "   \n", "two words-SECRETPART"] {
            let file = token_file(&dir, bad);
            let e = err(&format!("{PUSH}token_file = {file:?}\n"));
            assert!(e.contains(":4:") && e.contains("token"), "{e}");
            assert!(!e.contains("SECRETPART"), "{e}");
        }
    }

    #[test]
    fn push_tls_files_are_checked_at_load_with_their_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = tls_files(&dir, &format!("{EXAMPLE_PUSH_CA:?} {EXAMPLE_PUSH_CERT:?} {EXAMPLE_PUSH_KEY:?}"));
        let f: Vec<&str> = files.split(' ').collect();
        let (ca, crt, key) = (f[0], f[1], f[2]);
        let https = "site = \"a\"\n[push]\nurl = \"https://c:9956/api/v1/write\"\n";
        let c = load_env(&format!("{https}ca_file = {ca}\ncert_file = {crt}\nkey_file = {key}\n"), Some("t"))
            .expect("valid");
        let p = c.push.clone().expect("push");
        assert!(p.tls.ca_pem.is_some());
        // The identity holds the key: never in Debug, nor in check-config.
        let id = p.tls.identity_pem.as_ref().expect("identity");
        assert!(id.expose().contains("PRIVATE KEY"));
        assert!(!format!("{p:?}").contains("PRIVATE KEY"));
        assert!(!c.to_toml().contains("PRIVATE KEY"));
        let err = |t: &str| load_env(t, Some("t")).expect_err("invalid").to_string();
        let e = err(&format!("{https}cert_file = {crt}\n"));
        assert!(e.contains(":4:") && e.contains("push.cert_file") && e.contains("needs key_file"), "{e}");
        let e = err(&format!("{https}ca_file = \"/nonexistent/ca.pem\"\n"));
        assert!(e.contains(":4:") && e.contains("push.ca_file") && e.contains("cannot read"), "{e}");
        let e = err(&format!("{https}ca_file = {key}\n"));
        assert!(e.contains("holds no CA certificate") && !e.contains("BEGIN PRIVATE"), "{e}");
        let e = err(&format!("{https}cert_file = {key}\nkey_file = {key}\n"));
        assert!(e.contains("push.cert_file") && e.contains("holds no certificate"), "{e}");
        let e = err(&format!("{PUSH}ca_file = {ca}\n"));
        assert!(e.contains("push.ca_file") && e.contains("https only"), "{e}");
    }

    #[test]
    fn push_url_and_sizes_are_validated_with_their_line() {
        let t = |rest: &str| load_env(&format!("site = \"a\"\n[push]\n{rest}"), Some("t")).map(|c| c.push);
        let e = |rest: &str| t(rest).map(|_| ()).expect_err(rest).to_string();
        let bad = e("url = \"ftp://c/x\"\n");
        assert!(bad.contains(":3:") && bad.contains("http://"), "{bad}");
        let bad = e("url = \"not a url\"\n");
        assert!(bad.contains(":3:") && bad.contains("push.url"), "{bad}");
        let bad = e("url = \"http://u:pw@c/x\"\n");
        assert!(bad.contains(":3:") && bad.contains("credentials") && !bad.contains("pw@"), "{bad}");
        let bad = e("url = \"http://c/x\"\nspool_max_bytes = \"10KiB\"\n");
        assert!(bad.contains(":4:") && bad.contains("spool_max_bytes"), "{bad}");
        let bad = e("url = \"http://c/x\"\nspool_max_bytes = \"12 parsecs\"\n");
        assert!(bad.contains(":4:") && bad.contains("e.g. \"256MiB\""), "{bad}");
        let bad = e("url = \"http://c/x\"\nspool_max_bytes = -5\n");
        assert!(bad.contains(":4:") && bad.contains("negative"), "{bad}");
        let bad = e("url = \"http://c/x\"\nseries = \"some\"\n");
        assert!(bad.contains(":4:") && bad.contains("some"), "{bad}");
        let bad = e("url = \"http://c/x\"\nbatch = 3\n");
        assert!(bad.contains(":4:") && bad.contains("batch"), "{bad}");
        let bad = e("interval = \"5s\"\n");
        assert!(bad.contains("url"), "{bad}");
        let p =
            t("url = \"https://c/x\"\nspool_max_bytes = 2097152\nseries = \"all\"\n").expect("valid").expect("push");
        assert_eq!(p.spool_max_bytes, ByteSize(2 << 20));
        assert_eq!(p.series, SeriesSet::All);
        assert_eq!(p.spool_dir, PathBuf::from(DEFAULT_STATE_DIR).join("spool"));
        assert!(!p.spool_dir_explicit);
    }

    #[test]
    fn push_url_may_be_a_list_tried_in_order_validated_at_load() {
        let t = |rest: &str| load_env(&format!("site = \"a\"\n[push]\n{rest}"), Some("t")).map(|c| c.push);
        let e = |rest: &str| t(rest).map(|_| ()).expect_err(rest).to_string();
        let one = t("url = \"http://c1:9956/api/v1/write\"\n").expect("one").expect("push");
        assert_eq!(one.urls, ["http://c1:9956/api/v1/write"]);
        let two = t("url = [\"http://c1:9956/api/v1/write\", \"https://c2/api/v1/write\"]\n").expect("list");
        let two = two.expect("push");
        assert_eq!(two.urls, ["http://c1:9956/api/v1/write", "https://c2/api/v1/write"]);
        let bad = e("url = []\n");
        assert!(bad.contains(":3:") && bad.contains("push.url") && bad.contains("empty"), "{bad}");
        let bad = e("url = [\"http://c1/w\", \"ftp://c2/w\"]\n");
        assert!(bad.contains(":3:") && bad.contains("URL 2") && bad.contains("http://"), "{bad}");
        let bad = e("url = [\"http://c1/w\", \"http://u:pw@c2/w\"]\n");
        assert!(bad.contains("credentials") && !bad.contains("pw@"), "{bad}");
        // The same collector twice, even spelled differently, is refused.
        let bad = e("url = [\"http://c1:9956/w\", \"http://C1:9956/w\"]\n");
        assert!(bad.contains(":3:") && bad.contains("URL 2") && bad.contains("repeats URL 1"), "{bad}");
        let bad = e("url = 5\n");
        assert!(bad.contains("a URL or a list of URLs"), "{bad}");
        // check-config writes a list back as a list, one URL as a string; both reload.
        let c = load_env(
            "site = \"a\"\n[push]\nurl = [\"http://c1:9956/api/v1/write\", \"http://c2:9956/api/v1/write\"]\n",
            Some("t"),
        )
        .expect("list");
        let shown = c.to_toml();
        assert!(shown.contains("url = [\"http://c1:9956/api/v1/write\", \"http://c2:9956/api/v1/write\"]"), "{shown}");
        assert_eq!(load_env(&shown, Some("t")).expect("reloads").push.map(|p| p.urls), c.push.map(|p| p.urls));
        let shown = load_env(PUSH, Some("t")).expect("one").to_toml();
        assert!(shown.contains("url = \"http://127.0.0.1:9956/api/v1/write\""), "{shown}");
    }

    #[test]
    fn several_redfish_targets_and_the_single_table() {
        let c = load_str("site = \"a\"\n[redfish]\nurl = \"https://bmc1\"\n").expect("one table");
        assert_eq!(c.redfish.len(), 1);
        assert!(c.to_toml().contains("[redfish]\n"), "{}", c.to_toml());
        let two = "site = \"a\"\n[[redfish]]\nurl = \"https://bmc1\"\n[[redfish]]\nurl = \"https://bmc2:8443\"\nchassis = \"1U\"\n";
        let c = load_str(two).expect("two tables");
        assert_eq!(c.redfish.iter().map(|r| r.url.as_str()).collect::<Vec<_>>(), ["https://bmc1", "https://bmc2:8443"]);
        assert_eq!(c.redfish[1].chassis.as_deref(), Some("1U"));
        assert!(c.to_toml().contains("[[redfish]]"), "{}", c.to_toml());
        let e = err("site = \"a\"\n[[redfish]]\nurl = \"https://bmc1\"\n[[redfish]]\nurl = \"https://bmc1/\"\n");
        assert!(e.contains("listed twice"), "{e}");
        let e = err("site = \"a\"\n[[redfish]]\nurl = \"https://bmc1\"\nchasis = \"x\"\n");
        assert!(e.contains("chasis"), "{e}");
        let e = err("site = \"a\"\n[[redfish]]\nurl = \"http://bmc1\"\n");
        assert!(e.contains("allow_plain_http"), "{e}");
    }

    #[test]
    fn redfish_tls_plain_http_and_password_rules() {
        let dir = tempfile::tempdir().expect("tmp");
        let pw = password_file(&dir, "s3cret-pw\n");
        let c = load_str(&format!(
            "site = \"a\"\n[redfish]\nurl = \"https://bmc.example/\"\nusername = \"monitor\"\npassword_file = {pw:?}\n"
        ))
        .expect("redfish");
        let r = c.redfish.first().expect("table");
        assert_eq!(r.url, "https://bmc.example");
        assert_eq!(r.password.as_ref().map(Secret::expose), Some("s3cret-pw"));
        assert_eq!((r.interval.0, r.timeout.0), (DEFAULT_BMC_INTERVAL, DEFAULT_BMC_TIMEOUT));
        assert_eq!(r.auth, RedfishAuth::Session, "sessions by default");
        let basic = load_str("site = \"a\"\n[redfish]\nurl = \"https://bmc\"\nauth = \"basic\"\n").expect("basic");
        assert_eq!(basic.redfish.first().map(|r| r.auth), Some(RedfishAuth::Basic));
        let e = err("site = \"a\"\n[redfish]\nurl = \"https://bmc\"\nauth = \"digest\"\n");
        assert!(e.contains("digest") || e.contains("auth"), "{e}");
        let shown = format!("{}\n{c:?}", c.to_toml());
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(
            shown.contains(&format!(
                "# redfish https://bmc.example password: <redacted>, 9 bytes, from password_file {pw}"
            )),
            "{shown}"
        );
        let e = err("site = \"a\"\n[redfish]\nurl = \"http://bmc\"\n");
        assert!(e.contains(":3:") && e.contains("allow_plain_http"), "{e}");
        load_str("site = \"a\"\n[redfish]\nurl = \"http://bmc\"\nallow_plain_http = true\n").expect("opt-in");
        let e = err("site = \"a\"\n[redfish]\nurl = \"https://bmc\"\nca_file = \"/x\"\ninsecure_skip_verify = true\n");
        assert!(e.contains(":5:") && e.contains("contradicts"), "{e}");
        let e = err(
            "site = \"a\"\n[redfish]\nurl = \"https://bmc\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
        );
        assert!(e.contains(":5:") && e.contains("cannot read"), "{e}");
        let e = err("site = \"a\"\n[redfish]\nurl = \"https://bmc\"\ninterval = \"500ms\"\n");
        assert!(e.contains(":4:") && e.contains("1s minimum"), "{e}");
        let e = err("site = \"a\"\n[redfish]\nurl = \"https://u:pw@bmc\"\n");
        assert!(e.contains("credentials") && !e.contains("pw@"), "{e}");
        let e = err("site = \"a\"\n[ipmi]\ninterval = \"1s\"\ntimeout = \"2s\"\n");
        assert!(e.contains(":4:") && e.contains("ipmi.timeout"), "{e}");
        let c = load_str("site = \"a\"\n[ipmi]\ninterval = \"1s\"\n").expect("ipmi");
        assert_eq!((c.ipmi.enabled, c.ipmi.timeout.0), (true, Duration::from_secs(1)));
        assert!(!AgentConfig::load(None, &Overrides::default()).expect("defaults").ipmi.enabled);
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256 mib"), Ok(256 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1_000_000).to_string(), "1000000B");
    }

    #[test]
    fn nvml_backend_follows_the_keys_given() {
        let nvml = |table: &str| load_str(&format!("site = \"s\"\n[nvml]\n{table}")).map(|c| c.nvml);
        let c = nvml("").expect("empty table");
        assert_eq!((c.backend, c.library), (NvmlBackend::Nvml, None));
        let c = nvml("library = \"/opt/nvidia/libnvidia-ml.so.1\"\n").expect("library");
        assert_eq!((c.backend, c.library), (NvmlBackend::Nvml, Some(PathBuf::from("/opt/nvidia/libnvidia-ml.so.1"))));
        // A config of the nvidia-smi source keeps working.
        let c = nvml("command = \"/usr/bin/nvidia-smi\"\n").expect("command");
        assert_eq!((c.backend, c.command.as_str()), (NvmlBackend::NvidiaSmi, "/usr/bin/nvidia-smi"));
        let c = nvml("backend = \"nvidia-smi\"\n").expect("backend");
        assert_eq!((c.backend, c.command.as_str()), (NvmlBackend::NvidiaSmi, "nvidia-smi"));
        let e = nvml("command = \"nvidia-smi\"\nlibrary = \"/l.so\"\n").expect_err("both").to_string();
        assert!(e.contains("nvml.library") && e.contains("set backend"), "{e}");
        assert!(nvml("backend = \"cuda\"\n").is_err());
        assert!(nvml("library = \"\"\n").is_err());
    }
}
