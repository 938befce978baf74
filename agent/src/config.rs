//! Agent configuration: the TOML file of contract §4 parsed into typed structs,
//! merged with command-line overrides and validated before anything binds or
//! starts. Errors name the file, line and column, the key and the fix.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::catalog::is_reserved_label;
use domesday_model::config_text::{find_key, locate};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration error, already formatted for the operator.
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
    #[error("{0}")]
    Value(String),
}

/// Longest gap between two RAPL reads: AMD's 65.5 kJ package range wraps in
/// about 4 minutes at 270 W, so 30 s leaves a wide margin (contract §3).
pub const RAPL_MAX_READ_GAP: Duration = Duration::from_secs(30);

/// A duration written as `"5s"`, `"15m"`, `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// Parses a positive duration string; the error says what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); write a number and a unit, e.g. \"5s\", \"250ms\", \"15m\"")
    })?;
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(d)
}

/// An extra label name, checked against the contract's rules at parse time.
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
    pub sysfs_root: PathBuf,
    pub procfs_root: PathBuf,
    pub machine_id_file: PathBuf,
    pub state_dir: PathBuf,
    pub sensor_timeout: Dur,
    pub rescan_interval: Dur,
    pub labels: BTreeMap<String, String>,
    pub sources: Sources,
    pub estimation: Estimation,
}

/// Command-line overrides (contract §4 flags).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub site: Option<String>,
    pub host: Option<String>,
    pub listen: Option<SocketAddr>,
    pub interval: Option<Duration>,
    pub sysfs_root: Option<PathBuf>,
    pub procfs_root: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9955";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/domesday-agent";

impl AgentConfig {
    /// Loads `path` (if any), applies the overrides and validates the result.
    pub fn load(path: Option<&Path>, ov: &Overrides) -> Result<Self, ConfigError> {
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
            sysfs_root: None,
            procfs_root: None,
            machine_id_file: None,
            state_dir: None,
            sensor_timeout: None,
            rescan_interval: None,
            labels: BTreeMap::new(),
            sources: FileSources::default(),
            estimation: FileEstimation::default(),
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
        // Default: 2 s, but never more than half the interval.
        let sensor_timeout = f.sensor_timeout.unwrap_or(Dur(Duration::from_secs(2).min(interval.0 / 2)));
        let cfg = AgentConfig {
            site,
            host,
            interval,
            listen,
            sysfs_root: ov.sysfs_root.clone().or(f.sysfs_root).unwrap_or_else(|| "/sys".into()),
            procfs_root: ov.procfs_root.clone().or(f.procfs_root).unwrap_or_else(|| "/proc".into()),
            machine_id_file: f.machine_id_file.unwrap_or_else(|| "/etc/machine-id".into()),
            state_dir: f.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
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

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn default_hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into())
}

fn located(path: &Path, text: &str, offset: usize, message: String) -> ConfigError {
    let (line, column, snippet) = locate(text, offset);
    ConfigError::Invalid { path: path.to_path_buf(), line, column, message, snippet }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(text: &str) -> Result<AgentConfig, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        AgentConfig::load(Some(f.path()), &Overrides::default())
    }

    fn err(text: &str) -> String {
        match load_str(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_without_a_file() {
        let c = AgentConfig::load(None, &Overrides::default()).expect("defaults");
        assert_eq!(c.site, "local");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.interval.0, Duration::from_secs(5));
        assert_eq!(c.sysfs_root, PathBuf::from("/sys"));
        assert!(!c.host.is_empty());
    }

    #[test]
    fn the_generated_example_with_every_key_parses() {
        let c = load_str(&domesday_model::config_keys::example_toml()).expect("example");
        assert_eq!(c.site, "caen-1");
        assert_eq!(c.labels.get("region").map(String::as_str), Some("normandie"));
        assert_eq!(c.estimation.idle_watts, Some(110.0));
        assert_eq!(c.estimation.rapl_uplift, 1.25);
    }

    #[test]
    fn every_documented_key_is_known_and_every_known_key_documented() {
        // A key missing from the struct would make the example fail above; a key
        // missing from the table is caught by the unknown-key error below.
        for k in domesday_model::config_keys::AGENT_KEYS {
            let (t, name) = k.key.split_once('.').unwrap_or(("", k.key));
            let name = if name == "*" { "region" } else { name };
            let text = if t.is_empty() {
                if name == "site" {
                    "site = \"x\"\n".to_string()
                } else {
                    format!("site = \"x\"\n{name} = {}\n", k.example)
                }
            } else {
                format!("site = \"x\"\n[{t}]\n{name} = {}\n", k.example)
            };
            load_str(&text).unwrap_or_else(|e| panic!("{}: {e}", k.key));
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
}
