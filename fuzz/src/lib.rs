//! The fuzz targets' bodies: each feeds bytes to the public parse entry points
//! production calls on that input, in the order production calls them. The
//! cargo-fuzz targets (`fuzz_targets/*.rs`) and the corpus replay on stable
//! (`tests/tests/fuzz_corpus.rs`, which includes this file) share them, so
//! what the fuzzer explores and what the test command replays are the same
//! code. A body returns normally for any input: a parser that refuses gives an
//! error, and a panic is the bug the fuzzer looks for.

use std::path::PathBuf;

use domesday_agent::energy::{millicelsius, uw_to_watts};
use domesday_agent::fsread::{parse_i64, parse_u64};
use domesday_agent::plausible::{Quantity, check};
use domesday_agent::sources::{hwmon, ipmi, procfs, rapl, redfish, thermal};
use domesday_collector::carbon::{FactorBasis, electricitymaps, rte};
use domesday_collector::config::{CollectorConfig, IngestConfig, MeterConfig};
use domesday_collector::ingest;
use domesday_collector::meters::csv_import::{self, CsvOptions};
use domesday_collector::meters::prometheus as meter_prometheus;
use domesday_collector::pull;
use domesday_model::remote_write::WriteRequestView;
use domesday_model::vocab::Domain;

/// A target's body.
pub type Body = fn(&[u8]);

/// Every target: its name (also its corpus folder, `fuzz/corpus/<name>/`) and body.
pub const TARGETS: &[(&str, Body)] = &[
    ("sysfs_value", sysfs_value),
    ("ipmi_output", ipmi_output),
    ("redfish_json", redfish_json),
    ("remote_write_1", remote_write_1),
    ("remote_write_2", remote_write_2),
    ("meter_csv", meter_csv),
    ("agent_config", agent_config),
    ("collector_config", collector_config),
    ("grid_json", grid_json),
    ("prometheus_json", prometheus_json),
];

/// A sysfs or procfs file's content, read as `SysFile::read` does (the first
/// 4096 bytes, lossy UTF-8), through the value parsers and physical bounds of
/// the hwmon, powercap (RAPL) and thermal readers, the names they classify,
/// and the procfs parsers.
pub fn sysfs_value(data: &[u8]) {
    let text = String::from_utf8_lossy(&data[..data.len().min(4096)]);
    // hwmon tempN_input and thermal_zone temp: m°C, signed.
    if let Ok(m) = parse_i64(&text) {
        let _ = check(Quantity::Temperature, millicelsius(m));
    }
    if let Ok(v) = parse_u64(&text) {
        // hwmon fanN_input: RPM.
        let _ = check(Quantity::FanSpeed, v as f64);
        // hwmon powerN_input/average: µW, per domain.
        for d in Domain::ALL {
            let _ = check(Quantity::Power(*d), uw_to_watts(v));
        }
    }
    // Names and labels (hwmon `name`, `tempN_label`, RAPL zone `name`, thermal `type`).
    let name = text.trim();
    let _ = hwmon::clean_name(name);
    let _ = hwmon::temperature_location(name, name);
    let _ = hwmon::power_domain(name, name);
    let _ = rapl::zone_domain(name, Some(name));
    let _ = rapl::zone_domain(name, None);
    let _ = thermal::zone_location(name);
    // procfs: /proc/stat, /proc/meminfo, /proc/loadavg.
    let _ = procfs::parse_stat(&text);
    let _ = procfs::parse_meminfo(&text);
    let _ = procfs::parse_loadavg(&text);
}

/// The output of `ipmitool dcmi power reading`, `ipmi-dcmi
/// --get-system-power-statistics` (FreeIPMI) and `ipmitool sdr elist`/`sensor`
/// (lossy UTF-8, as the BMC source reads a command's stdout).
pub fn ipmi_output(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = ipmi::parse_ipmitool_dcmi(&text);
    let _ = ipmi::parse_freeipmi_dcmi(&text);
    let _ = ipmi::parse_ipmitool_sensors(&text);
}

/// A Redfish answer, through every document parser of the agent's Redfish
/// client (chassis, Power, Thermal, EnvironmentMetrics, Sensors, PowerSubsystem,
/// PSUs, fans) and of the collector's PowerDistribution meter reader.
pub fn redfish_json(data: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = redfish::members(&doc);
    let _ = redfish::contained_by(&doc);
    let _ = redfish::shared_by_nodes(&doc);
    let _ = redfish::power_consumed(&doc);
    let _ = redfish::environment_power(&doc);
    if let Ok(mut temps) = redfish::temperatures(&doc) {
        redfish::single_inlet(&mut temps);
    }
    let mut summary = redfish::temperature_summary(&doc);
    redfish::single_inlet(&mut summary);
    let _ = redfish::sensor_temperature(&doc);
    let _ = redfish::legacy_fans(&doc);
    let _ = redfish::subsystem_fan(&doc, "Fan");
    let _ = redfish::energy_sensor_rank(&doc);
    let _ = redfish::sensor_energy(&doc);
    let enabled = redfish::psu_state(&doc).is_ok();
    let input_watts = redfish::psu_input_watts(&doc);
    let psu = redfish::Psu { id: "PSU1".into(), path: "/redfish/v1/psu1".into(), enabled, input_watts };
    let _ = redfish::psu_sum(&[psu.clone(), psu]);
    let _ = domesday_collector::meters::redfish::energy_of(&doc);
}

/// A remote_write 1.0 request as the collector's write handler takes it: the
/// body snappy-decompressed within the default limits, decoded, then the ingest
/// rules applied. The raw bytes are also decoded as an already decompressed
/// body, so that the fuzzer reaches the protobuf decoder without having to
/// find valid snappy framing.
pub fn remote_write_1(data: &[u8]) {
    let limits = IngestConfig::default();
    if let Ok(raw) = ingest::decompress_body(data, &limits)
        && let Ok(req) = ingest::parse(&raw)
    {
        let _ = ingest::split(&req, "site", NOW_MS, &limits);
    }
    if let Ok(req) = ingest::parse(data) {
        let _ = ingest::split(&req, "site", NOW_MS, &limits);
    }
    // The owned (prost) decoder, the same limits.
    let _ = domesday_model::remote_write::decode(data, limits.max_uncompressed_bytes);
}

/// A Remote-Write 2.0 request, as [`remote_write_1`]: decompressed, decoded
/// (symbols table, `labels_refs`), then the same ingest rules.
pub fn remote_write_2(data: &[u8]) {
    let limits = IngestConfig::default();
    if let Ok(raw) = ingest::decompress_body(data, &limits)
        && let Ok((req, _)) = ingest::parse_v2(&raw)
    {
        let _ = ingest::split(&req, "site", NOW_MS, &limits);
    }
    if let Ok((req, _)) = ingest::parse_v2(data) {
        let _ = ingest::split(&req, "site", NOW_MS, &limits);
    }
}

/// The receive instant the ingest rules compare timestamps with: 2026-06-01T00:00:00Z.
const NOW_MS: i64 = 1_780_272_000_000;

/// A meter CSV (`import-meters` and the upload endpoint), for a site with an
/// electricity register, a water meter and a fuel meter. The first byte picks
/// the options (delimiter, decimal comma, time zone) the way the CLI flags would.
pub fn meter_csv(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let opts = CsvOptions {
        delimiter: if flags & 1 == 0 { b',' } else { b';' },
        decimal_comma: flags & 2 != 0,
        timezone: (flags & 4 != 0).then(|| "Europe/Paris".to_string()),
    };
    let _ = csv_import::parse(text, "site", &csv_meters(), &opts);
}

fn csv_meters() -> Vec<MeterConfig> {
    [("edf", "utility_in", "kWh"), ("water", "water_in", "m3"), ("gen", "fuel_in", "L")]
        .iter()
        .filter_map(|(id, role, unit)| {
            serde_json::from_value(serde_json::json!({ "id": id, "role": role, "kind": "csv", "unit": unit })).ok()
        })
        .collect()
}

/// The agent's TOML config file, loaded and validated as `domesday-agent`
/// loads it (without the process environment).
pub fn agent_config(data: &[u8]) {
    with_file("agent.toml", data, |p| {
        let _ = domesday_agent::config::AgentConfig::load_with_env(
            Some(p),
            &domesday_agent::config::Overrides::default(),
            |_| None,
        );
    });
}

/// The collector's TOML config file, loaded and validated as `serve` and
/// `check-config` load it.
pub fn collector_config(data: &[u8]) {
    with_file("collector.toml", data, |p| {
        let _ = CollectorConfig::load(Some(p));
    });
}

/// Writes `data` to a file of this process and thread (the config loaders take
/// a path: they read the file themselves), calls `f`, removes the file.
fn with_file(name: &str, data: &[u8], f: impl FnOnce(&std::path::Path)) {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let path: PathBuf = std::env::temp_dir().join(format!("domesday-fuzz-{}-{thread}-{name}", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        f(&path);
    }
    let _ = std::fs::remove_file(&path);
}

/// The grid operators' answers: RTE éCO2mix (`records` v2.1) and Electricity
/// Maps (`past-range`/`history`/`latest`, both bases).
pub fn grid_json(data: &[u8]) {
    let _ = rte::parse_records(data, 15 * 60_000);
    let _ = electricitymaps::parse_answer(data, FactorBasis::Lifecycle);
    let _ = electricitymaps::parse_answer(data, FactorBasis::Direct);
}

/// A Prometheus query API answer (matrix), as pull mode turns it into a write
/// request (then the ingest rules) and as the Prometheus meter reader turns it
/// into register readings or integrates a power series.
pub fn prometheus_json(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else { return };
    if let Ok(req) = pull::matrix_to_request(body, "http://127.0.0.1:9090/api/v1/query") {
        let view = WriteRequestView::from(&req);
        let _ = ingest::split(&view, "site", NOW_MS, &IngestConfig::default());
    }
    let _ = meter_prometheus::matrix_to_poll(body, "kWh");
    if let Ok(mut integrator) = meter_prometheus::PowerIntegrator::new("kWh", 3_600_000) {
        let _ = meter_prometheus::power_matrix_to_poll(body, &mut integrator);
    }
}
