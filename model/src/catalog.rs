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
    "Energy counted by a zone (RAPL, hwmon energy, NVIDIA GPU energy since driver load), wrap-corrected (a drop with no known range is a reset); starts at the raw counter value."
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
    "Temperature reported by a hwmon chip, thermal zone, BMC or GPU."
);
metric!(
    FAN,
    "domesday_fan_speed_rpm",
    Gauge,
    "rpm",
    ["source", "chip", "sensor", "label"],
    "Fan speed reported by a hwmon chip or a BMC (chip bmc: IPMI sensors in RPM, Redfish fans read in RPM; a fan reported only in percent is not exported); 0 is a stopped fan."
);
metric!(
    CPU_UTILIZATION,
    "domesday_cpu_utilization_ratio",
    Gauge,
    "ratio",
    [],
    "Share of CPU time not idle (idle + iowait) over the last sampling interval, all CPUs, 0 to 1."
);
metric!(
    GPU_UTILIZATION,
    "domesday_gpu_utilization_ratio",
    Gauge,
    "ratio",
    ["source", "zone"],
    "Share of time over the driver's last sample period (1/6 s to 1 s) during which a kernel ran on the GPU, 0 to 1."
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
    "Failed sensor reads and unusable samples, by reason: missing, permission, parse (an answer that is not what the protocol says), timeout, io (the transport failed), gap, wrap_overrun, rejected, implausible (a reading that parses but is physically impossible, see docs/bmc.md), reset (a counter seen going backwards)."
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
    CLOCK_SYNCHRONIZED,
    "domesday_clock_synchronized",
    Gauge,
    "",
    [],
    "1 if the kernel says the system clock is synchronised (adjtimex: STA_UNSYNC clear, clock state not TIME_ERROR, maximum error under 16 s), 0 if not; absent when the state cannot be read (domesday_sensor_up{source=\"clock\"} is then 0). See docs/clocks.md."
);
metric!(
    CLOCK_MAX_ERROR,
    "domesday_clock_max_error_seconds",
    Gauge,
    "seconds",
    [],
    "The kernel's maximum error of the system clock (adjtimex maxerror), which the NTP daemon keeps low and which grows by 500 µs per second without it."
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
    PUSH_ERRORS,
    "domesday_push_errors_total",
    Counter,
    "",
    ["reason"],
    "Push requests that failed and go to the spool to be retried (only with [push]), by reason: tls (handshake or certificate refused, e.g. a client certificate missing), connect (no connection, or it broke), timeout, http (a 429 or 5xx answer). The log says more."
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
    "Unix time of the last request the collector acknowledged."
);
metric!(
    PUSH_URL_INDEX,
    "domesday_push_url_index",
    Gauge,
    "",
    [],
    "Position in push.url (0 = the first) of the collector the agent pushes to now: it moves on when one gives no answer, a 429 or a 5xx, and stays on the one that answered (only with [push])."
);

metric!(
    SITE_ENERGY,
    Collector,
    "domesday_site_energy_joules_total",
    Counter,
    "joules",
    ["site", "role"],
    "Energy booked in the ledger per site and boundary role (it_in: the sum of the agents' host energy)."
);
metric!(
    HOST_LAST_SEEN,
    Collector,
    "domesday_host_last_seen_timestamp_seconds",
    Gauge,
    "seconds",
    ["site", "host"],
    "Unix time of the newest sample received from a host."
);
metric!(
    HOST_CLOCK_SKEW,
    Collector,
    "domesday_host_clock_skew_seconds",
    Gauge,
    "seconds",
    ["site", "host"],
    "A sender's clock offset as the collector measures it (positive: ahead): the largest (newest sample time - receive time) of its live requests over the last 10 minutes; spool replays do not count. Samples stamped more than ingest.max_future ahead are quarantined. See docs/clocks.md."
);
metric!(
    INGEST_REQUESTS,
    Collector,
    "domesday_ingest_requests_total",
    Counter,
    "",
    ["code"],
    "remote_write requests answered, by HTTP status code."
);
metric!(
    INGEST_SAMPLES,
    Collector,
    "domesday_ingest_samples_total",
    Counter,
    "",
    ["result"],
    "Samples of accepted requests: booked, duplicate (counted once), conflict (same timestamp, other value: first wins), host_conflict (another machine claims the host), too_old, not_booked (series the ledger does not sum), quarantined (stamped beyond ingest.max_future: kept aside in the ledger's quarantine table, not booked), suspect (see domesday_ingest_rejected_total)."
);
metric!(
    INGEST_REJECTED,
    Collector,
    "domesday_ingest_rejected_total",
    Counter,
    "",
    ["reason"],
    "Refused requests (invalid, unauthorized, wrong_site, too_large, unsupported: a Content-Type or Content-Encoding the collector does not read, busy) and suspect samples not booked (nan, inf, negative, absurd, future: stamped beyond ingest.max_future and quarantined, past: older than ingest.max_past, no_site), by reason."
);
metric!(
    INGEST_UNKNOWN_VALUES,
    Collector,
    "domesday_ingest_unknown_values_total",
    Counter,
    "",
    ["label", "value"],
    "Host energy samples booked although a closed-vocabulary label (method, quality) had a value this collector does not know (a sender newer than the collector), by label and value. At most 16 distinct values per label are tracked; further values, and values not shaped like a vocabulary value, are counted as value=\"other\"."
);
metric!(
    LEDGER_LAG,
    Collector,
    "domesday_ledger_lag_seconds",
    Gauge,
    "seconds",
    [],
    "How long the oldest request of the last commit waited for the ledger writer."
);
metric!(
    COLLECTOR_LEADER,
    Collector,
    "domesday_collector_leader",
    Gauge,
    "",
    [],
    "1 while this collector does the site-wide work (facility meter readers, pulls, site gauges, ledger retention), 0 otherwise. With a SQLite ledger the one collector always does; on a PostgreSQL ledger shared by several collectors, the one holding the leader lock does (see docs/scaling.md). Summed over the collectors of one ledger it is 1, 0 only while a dead leader is being replaced (30 s at most)."
);
metric!(
    LEDGER_DB_BYTES,
    Collector,
    "domesday_ledger_db_bytes",
    Gauge,
    "bytes",
    [],
    "Size of the ledger database files (database and write-ahead log)."
);
metric!(
    METER_READINGS,
    Collector,
    "domesday_meter_readings_total",
    Counter,
    "",
    ["site", "meter"],
    "Register readings a facility meter reader (modbus, redfish, prometheus) took and handed to the ledger."
);
metric!(
    METER_READ_ERRORS,
    Collector,
    "domesday_meter_read_errors_total",
    Counter,
    "",
    ["site", "meter", "reason"],
    "Failed meter reads (timeout, io, permission, missing, parse) and refused values (rejected: negative, NaN, overflow), by reason."
);
metric!(
    METER_LAST_READING,
    Collector,
    "domesday_meter_last_reading_timestamp_seconds",
    Gauge,
    "seconds",
    ["site", "meter"],
    "Time of the last reading a meter reader handed to the ledger (Unix seconds)."
);

metric!(
    SITE_POWER,
    Collector,
    "domesday_site_power_watts",
    Gauge,
    "watts",
    ["site", "role"],
    "Mean power per site and role over the last 5 minutes of the ledger."
);
metric!(
    SITE_PUE,
    Collector,
    "domesday_site_pue",
    Gauge,
    "",
    ["site", "category", "window"],
    "Power usage effectiveness (ISO/IEC 30134-2): E_DC / E_IT summed over the window; absent when refused (see the indicators API for the reason)."
);
metric!(
    SITE_DCIE,
    Collector,
    "domesday_site_dcie_ratio",
    Gauge,
    "ratio",
    ["site", "category", "window"],
    "Data centre infrastructure efficiency: E_IT / E_DC over the window (1 / PUE)."
);
metric!(
    SITE_CUE,
    Collector,
    "domesday_site_cue_kg_per_kwh",
    Gauge,
    "kg_per_kwh",
    ["site", "category", "basis", "window"],
    "Carbon usage effectiveness (ISO/IEC 30134-8): kgCO2e of E_DC per kWh of E_IT over the window, location- or market-based."
);
metric!(
    SITE_WUE,
    Collector,
    "domesday_site_wue_liters_per_kwh",
    Gauge,
    "liters_per_kwh",
    ["site", "category", "water", "window"],
    "Water usage effectiveness (ISO/IEC 30134-9): litres of water input per kWh of E_IT over the window."
);
metric!(
    SITE_ERF,
    Collector,
    "domesday_site_erf_ratio",
    Gauge,
    "ratio",
    ["site", "window"],
    "Energy reuse factor (ISO/IEC 30134-6): reused heat / E_DC over the window."
);
metric!(
    SITE_REF,
    Collector,
    "domesday_site_ref_ratio",
    Gauge,
    "ratio",
    ["site", "window"],
    "Renewable energy factor (ISO/IEC 30134-3): renewable energy / E_DC over the window, capped at 1."
);
metric!(
    SITE_COVERAGE,
    Collector,
    "domesday_site_coverage_ratio",
    Gauge,
    "ratio",
    ["site", "role", "window"],
    "Observed share of the window for a role's meters (it_in: the agents)."
);
metric!(
    SITE_EMISSIONS,
    Collector,
    "domesday_site_emissions_grams_total",
    Counter,
    "grams",
    ["site", "basis"],
    "Time-matched grid emissions of the site's utility energy since its first reading (location-based)."
);
metric!(
    SITE_INFO,
    Collector,
    "domesday_site_info",
    Gauge,
    "",
    ["site", "name", "region", "operator", "timezone", "pue_target"],
    "Site identity; value 1."
);
metric!(
    SITE_PUE_TARGET,
    Collector,
    "domesday_site_pue_target",
    Gauge,
    "",
    ["site"],
    "The site's PUE target (pue_target in the collector config), for alert rules to compare domesday_site_pue with; absent when not configured."
);
metric!(
    HOST_POWER_BUDGET,
    Collector,
    "domesday_host_power_budget_watts",
    Gauge,
    "watts",
    ["site", "host"],
    "A host's power budget (host_power_budget_watts in the collector config), for alert rules to compare domesday_host_power_watts with."
);
metric!(
    HOST_RETIRED,
    Collector,
    "domesday_host_retired",
    Gauge,
    "",
    ["site", "host"],
    "1 for a host retired with `domesday-collector retire-host` (decommissioned: silence is expected; its energy stays in the ledger)."
);
metric!(
    GRID_INTENSITY,
    Collector,
    "domesday_grid_carbon_intensity_grams_per_kwh",
    Gauge,
    "grams_per_kwh",
    ["grid_zone", "source", "basis"],
    "Current grid carbon intensity of the configured source (or its fallback)."
);

metric!(
    FORWARD_REQUESTS,
    Collector,
    "domesday_forward_requests_total",
    Counter,
    "",
    ["result"],
    "Accepted requests passed on by [forward]: sent (upstream 2xx), spooled (kept on disk while the upstream was away), rejected (other 4xx; not retried), dropped (spool full or unwritable)."
);
metric!(
    FORWARD_SPOOL_BYTES,
    Collector,
    "domesday_forward_spool_bytes",
    Gauge,
    "bytes",
    [],
    "Bytes waiting in the [forward] spool on disk."
);

/// Every family, in exposition order.
pub const CATALOG: &[MetricDef] = &[
    ENERGY,
    POWER,
    TEMPERATURE,
    FAN,
    CPU_UTILIZATION,
    GPU_UTILIZATION,
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
    CLOCK_SYNCHRONIZED,
    CLOCK_MAX_ERROR,
    PUSH_SAMPLES,
    PUSH_ERRORS,
    SPOOL_BYTES,
    PUSH_LAST_SUCCESS,
    PUSH_URL_INDEX,
    SITE_ENERGY,
    HOST_LAST_SEEN,
    HOST_CLOCK_SKEW,
    INGEST_REQUESTS,
    INGEST_SAMPLES,
    INGEST_REJECTED,
    INGEST_UNKNOWN_VALUES,
    LEDGER_LAG,
    COLLECTOR_LEADER,
    LEDGER_DB_BYTES,
    METER_READINGS,
    METER_READ_ERRORS,
    METER_LAST_READING,
    SITE_POWER,
    SITE_PUE,
    SITE_DCIE,
    SITE_CUE,
    SITE_WUE,
    SITE_ERF,
    SITE_REF,
    SITE_COVERAGE,
    SITE_EMISSIONS,
    SITE_INFO,
    SITE_PUE_TARGET,
    HOST_POWER_BUDGET,
    HOST_RETIRED,
    GRID_INTENSITY,
    FORWARD_REQUESTS,
    FORWARD_SPOOL_BYTES,
];

/// Looks a family up by name.
pub fn lookup(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().find(|m| m.name == name)
}

/// Whether a label name is reserved (a label of an agent family, a constant
/// label, Prometheus target labels or `__` internals), so it cannot be an
/// agent's extra constant label. Collector families' labels (`region` of
/// `domesday_site_info`) are free: they never sit on agent series.
pub fn is_reserved_label(name: &str) -> bool {
    name.starts_with("__")
        || matches!(name, "job" | "instance")
        || CONSTANT_LABELS.contains(&name)
        || CATALOG.iter().filter(|m| m.component == Component::Agent).any(|m| m.labels.contains(&name))
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
    fn the_sensor_errors_help_names_every_reason() {
        for r in crate::vocab::Reason::ALL {
            assert!(SENSOR_ERRORS.help.contains(r.as_str()), "{r} is not described");
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
