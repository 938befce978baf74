//! The metric catalog: every family domesday exports, declared once with its
//! type, unit, help text and labels. Exporters take names and help from here;
//! `docs/metrics.md` is generated from it.

/// Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Which program exports a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Agent,
    Collector,
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    /// Base unit as in the name (`joules`, `watts`, `celsius`, `bytes`, `seconds`,
    /// `ratio`, `rpm`), or `""` for info and dimensionless families.
    pub unit: &'static str,
    pub help: &'static str,
    /// Labels besides the constant ones (`site`, `host` and `[labels]` extras).
    pub labels: &'static [&'static str],
    pub component: Component,
}

/// Labels every agent series carries, before the configured extras.
pub const CONSTANT_LABELS: &[&str] = &["site", "host"];

macro_rules! metric {
    ($ident:ident, $name:literal, $kind:ident, $unit:literal, [$($label:literal),*], $help:literal) => {
        metric!($ident, Agent, $name, $kind, $unit, [$($label),*], $help);
    };
    ($ident:ident, $component:ident, $name:literal, $kind:ident, $unit:literal, [$($label:literal),*], $help:literal) => {
        pub const $ident: MetricDef = MetricDef {
            name: $name,
            kind: Kind::$kind,
            unit: $unit,
            help: $help,
            labels: &[$($label),*],
            component: Component::$component,
        };
    };
}

metric!(
    ENERGY,
    "domesday_energy_joules_total",
    Counter,
    "joules",
    ["source", "zone", "domain", "socket"],
    "Energy counted by a zone (RAPL, hwmon energy), wrap-corrected; starts at the raw counter value."
);
metric!(
    POWER,
    "domesday_power_watts",
    Gauge,
    "watts",
    ["source", "zone", "domain", "socket"],
    "Power of a zone: read from the sensor, or for energy counters the increase over the last sampling interval."
);
metric!(
    TEMPERATURE,
    "domesday_temperature_celsius",
    Gauge,
    "celsius",
    ["source", "chip", "sensor", "label", "location"],
    "Temperature reported by a hwmon chip or thermal zone."
);
metric!(
    FAN,
    "domesday_fan_speed_rpm",
    Gauge,
    "rpm",
    ["source", "chip", "sensor", "label"],
    "Fan speed reported by a hwmon chip."
);
metric!(
    CPU_UTILIZATION,
    "domesday_cpu_utilization_ratio",
    Gauge,
    "ratio",
    [],
    "Share of CPU time not idle (idle + iowait) over the last sampling interval, all CPUs, 0 to 1."
);
metric!(MEMORY_USED, "domesday_memory_used_bytes", Gauge, "bytes", [], "Memory in use: MemTotal minus MemAvailable.");
metric!(MEMORY_TOTAL, "domesday_memory_total_bytes", Gauge, "bytes", [], "Total usable memory (MemTotal).");
metric!(
    LOAD_AVERAGE,
    "domesday_load_average",
    Gauge,
    "",
    ["window"],
    "System load average over the window (1m, 5m, 15m)."
);
metric!(
    HOST_POWER,
    "domesday_host_power_watts",
    Gauge,
    "watts",
    ["method", "quality"],
    "Power of the whole host by the best available method; quality says whether it is measured or estimated."
);
metric!(
    HOST_ENERGY,
    "domesday_host_energy_joules_total",
    Counter,
    "joules",
    ["method", "quality"],
    "Energy of the whole host, one counter per method, each advancing only while its method is active; the sum over methods is the host's energy. Persisted across restarts."
);
metric!(
    HOST_INFO,
    "domesday_host_info",
    Gauge,
    "",
    ["vendor", "product", "cpu_model", "sockets", "threads", "machine_id"],
    "Host inventory; value 1."
);
metric!(
    SENSOR_UP,
    "domesday_sensor_up",
    Gauge,
    "",
    ["source", "sensor"],
    "1 if the sensor was read in the last tick, 0 if it failed (see domesday_sensor_errors_total)."
);
metric!(
    SENSOR_ERRORS,
    "domesday_sensor_errors_total",
    Counter,
    "",
    ["source", "reason"],
    "Failed sensor reads and unusable samples, by reason."
);
metric!(AGENT_INFO, "domesday_agent_info", Gauge, "", ["version"], "Agent build information; value 1.");
metric!(
    SAMPLE_DURATION,
    "domesday_sample_duration_seconds",
    Gauge,
    "seconds",
    [],
    "Wall time the last sampling tick took."
);

metric!(
    PUSH_SAMPLES,
    "domesday_push_samples_total",
    Counter,
    "",
    ["result"],
    "Samples handled by the remote_write pusher (only with [push]): sent (acknowledged with 2xx), rejected (any other answer than 2xx, 429 or 5xx; never retried), dropped (lost: spool full, oldest first, or spool unwritable, or push queue full); spooled counts in addition those that went through the disk spool."
);
metric!(
    SPOOL_BYTES,
    "domesday_spool_bytes",
    Gauge,
    "bytes",
    [],
    "Bytes waiting in the push spool on disk (only with [push])."
);
metric!(
    PUSH_LAST_SUCCESS,
    "domesday_push_last_success_timestamp_seconds",
    Gauge,
    "seconds",
    [],
    "Unix time of the last request the collector acknowledged; 0 before the first (only with [push])."
);

/// Every family, in exposition order.
pub const CATALOG: &[MetricDef] = &[
    ENERGY,
    POWER,
    TEMPERATURE,
    FAN,
    CPU_UTILIZATION,
    MEMORY_USED,
    MEMORY_TOTAL,
    LOAD_AVERAGE,
    HOST_POWER,
    HOST_ENERGY,
    HOST_INFO,
    SENSOR_UP,
    SENSOR_ERRORS,
    AGENT_INFO,
    SAMPLE_DURATION,
    PUSH_SAMPLES,
    SPOOL_BYTES,
    PUSH_LAST_SUCCESS,
];

/// Looks a family up by name.
pub fn lookup(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().find(|m| m.name == name)
}

/// Whether a label name is reserved (catalog label, constant label, Prometheus
/// target labels or `__` internals), so it cannot be an extra constant label.
pub fn is_reserved_label(name: &str) -> bool {
    name.starts_with("__")
        || matches!(name, "job" | "instance")
        || CONSTANT_LABELS.contains(&name)
        || CATALOG.iter().any(|m| m.labels.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for m in CATALOG {
            assert!(m.name.starts_with("domesday_"), "{}", m.name);
            assert_eq!(m.kind == Kind::Counter, m.name.ends_with("_total"), "{}", m.name);
            if !m.unit.is_empty() {
                assert!(m.name.contains(&format!("_{}", m.unit)), "{} lacks unit {}", m.name, m.unit);
            }
            if m.name.ends_with("_info") {
                assert_eq!(m.kind, Kind::Gauge);
            }
            assert!(m.help.ends_with('.'), "{}", m.name);
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, m) in CATALOG.iter().enumerate() {
            assert!(CATALOG[i + 1..].iter().all(|o| o.name != m.name), "{}", m.name);
        }
    }

    #[test]
    fn reserved_labels() {
        assert!(is_reserved_label("zone"));
        assert!(is_reserved_label("site"));
        assert!(is_reserved_label("instance"));
        assert!(is_reserved_label("__name__"));
        assert!(!is_reserved_label("region"));
    }
}
