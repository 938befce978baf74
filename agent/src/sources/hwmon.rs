//! hwmon chips (`<sysfs>/class/hwmon/hwmon*`): temperatures, fans, power
//! (ACPI power meters, PMBus PSUs, GPUs) and energy counters.
//!
//! Chip ids are stable across boots: built from the resolved `device` link as
//! node_exporter does (`platform_coretemp_0`), then the `name` file, then
//! `hwmonN`; ids that would still collide get their `hwmonN` appended, so two
//! chips never produce the same series. Attributes are looked up in `hwmonN/`
//! and, for older drivers, in `hwmonN/device/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::catalog::{ENERGY, FAN, POWER, TEMPERATURE};
use domesday_model::vocab::{Domain, Location, Reason, Source};

use super::{Output, Progress, Sample, SensorSource, class_entries, natural_key};
use crate::energy::{Accumulator, millicelsius, uj_to_joules, uw_to_watts};
use crate::fsread::{SysFile, read_trimmed};
use crate::plausible::{Quantity, check, is_plausible};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Temp,
    Fan,
    Power,
    Energy,
}

#[derive(Debug)]
struct Attr {
    kind: Kind,
    /// Attribute base, `temp3`, `power1`.
    base: String,
    label: String,
    file: SysFile,
    acc: Accumulator,
    domain: Domain,
    location: Location,
    socket: String,
    last_tick: Option<(Duration, u128)>,
}

#[derive(Debug)]
struct Chip {
    /// `hwmonN`.
    entry: String,
    dir: PathBuf,
    id: String,
    name: String,
    attrs: Vec<Attr>,
}

/// The hwmon source.
#[derive(Debug)]
pub struct Hwmon {
    root: PathBuf,
    chips: Vec<Chip>,
}

/// Lower-cases and replaces anything but `[a-z0-9:_]` with `_`, trimming `_`
/// (node_exporter's `cleanMetricName`).
pub fn clean_name(s: &str) -> String {
    let lower = s.to_lowercase();
    let replaced: String = lower
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '_' { c } else { '_' })
        .collect();
    replaced.trim_matches('_').to_string()
}

/// The chip id of `hwmon_dir` (node_exporter's `hwmonName`).
pub fn chip_id(hwmon_dir: &Path, entry: &str, name: Option<&str>) -> String {
    if let Ok(device) = std::fs::canonicalize(hwmon_dir.join("device")) {
        let dev_name = device.file_name().map(|n| clean_name(&n.to_string_lossy())).unwrap_or_default();
        let dev_type =
            device.parent().and_then(|p| p.file_name()).map(|n| clean_name(&n.to_string_lossy())).unwrap_or_default();
        if !dev_type.is_empty() && !dev_name.is_empty() {
            return format!("{dev_type}_{dev_name}");
        }
        if !dev_name.is_empty() {
            return dev_name;
        }
    }
    if let Some(n) = name.map(clean_name).filter(|n| !n.is_empty()) {
        return n;
    }
    clean_name(entry)
}

/// Where a temperature is taken, from the chip's name and the sensor's label.
pub fn temperature_location(chip_name: &str, label: &str) -> Location {
    let l = label.to_lowercase();
    if l.contains("inlet") || l.contains("intake") {
        return Location::Inlet;
    }
    if l.contains("exhaust") || l.contains("outlet") {
        return Location::Exhaust;
    }
    if l.contains("ambient") {
        return Location::Ambient;
    }
    match chip_name {
        "coretemp" | "k10temp" | "zenpower" | "cpu_thermal" => Location::Cpu,
        "nvme" | "drivetemp" => Location::Disk,
        "amdgpu" | "nouveau" | "radeon" => Location::Gpu,
        "jc42" | "spd5118" => Location::Memory,
        _ if l.contains("dimm") || l.starts_with("mem") => Location::Memory,
        _ if l.contains("psu") || is_psu_chip(chip_name) => Location::Psu,
        _ if l.contains("cpu") || l.starts_with("package") || l.starts_with("core") => Location::Cpu,
        _ => Location::Other,
    }
}

fn is_psu_chip(chip_name: &str) -> bool {
    chip_name == "pmbus" || chip_name.starts_with("dps") || chip_name.starts_with("pfe") || chip_name.contains("psu")
}

/// Domain of a power or energy attribute. PMBus `pin` is the PSU's input and
/// `pout` its output: never added together.
pub fn power_domain(chip_name: &str, label: &str) -> Domain {
    let l = label.to_lowercase();
    if chip_name == "power_meter" {
        Domain::Platform
    } else if l == "pin" || (l.starts_with("pin") && l[3..].chars().all(|c| c.is_ascii_digit())) {
        Domain::PsuInput
    } else if l.starts_with("pout") {
        Domain::PsuOutput
    } else if chip_name == "amdgpu" {
        Domain::Gpu
    } else if l.starts_with("ecore") {
        Domain::Core
    } else if l.starts_with("esocket") {
        Domain::Package
    } else {
        Domain::Other
    }
}

fn socket_from_label(label: &str) -> String {
    label.to_lowercase().strip_prefix("esocket").map(str::to_string).unwrap_or_default()
}

/// Lists `(base, kind, value file)` of the attributes in `dir`.
fn list_attrs(dir: &Path) -> Vec<(String, Kind, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut by_base: BTreeMap<String, (Kind, PathBuf, u8)> = BTreeMap::new();
    for e in rd.filter_map(Result::ok) {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some((base, item)) = file.split_once('_') else { continue };
        let kind = match base.trim_end_matches(|c: char| c.is_ascii_digit()) {
            "temp" => Kind::Temp,
            "fan" => Kind::Fan,
            "power" => Kind::Power,
            "energy" => Kind::Energy,
            _ => continue,
        };
        if base.len() == base.trim_end_matches(|c: char| c.is_ascii_digit()).len() {
            continue;
        }
        // Prefer the instantaneous `power*_input` over `power*_average`.
        let rank = match (kind, item) {
            (_, "input") => 0,
            (Kind::Power, "average") => 1,
            _ => continue,
        };
        let keep = by_base.get(base).is_none_or(|(_, _, r)| rank < *r);
        if keep {
            by_base.insert(base.to_string(), (kind, e.path(), rank));
        }
    }
    let mut v: Vec<_> = by_base.into_iter().map(|(b, (k, p, _))| (b, k, p)).collect();
    v.sort_by_key(|a| natural_key(&a.0));
    v
}

impl Hwmon {
    pub fn new(sysfs_root: &Path) -> Self {
        Hwmon { root: sysfs_root.join("class/hwmon"), chips: Vec::new() }
    }

    fn build_chip(entry: &str, dir: &Path) -> Chip {
        let mut attr_dir = dir.to_path_buf();
        let mut attrs = list_attrs(dir);
        if attrs.is_empty() {
            attrs = list_attrs(&dir.join("device"));
            attr_dir = dir.join("device");
        }
        let name = read_trimmed(&dir.join("name")).or_else(|| read_trimmed(&dir.join("device/name")));
        let chip_name = name.clone().unwrap_or_default();
        let id = chip_id(dir, entry, name.as_deref());
        let attrs = attrs
            .into_iter()
            .map(|(base, kind, path)| {
                let label = read_trimmed(&attr_dir.join(format!("{base}_label"))).unwrap_or_default();
                Attr {
                    kind,
                    domain: power_domain(&chip_name, &label),
                    location: temperature_location(&chip_name, &label),
                    socket: socket_from_label(&label),
                    base,
                    label,
                    file: SysFile::new(path),
                    acc: Accumulator::default(),
                    last_tick: None,
                }
            })
            .collect();
        Chip { entry: entry.to_string(), dir: dir.to_path_buf(), id, name: chip_name, attrs }
    }
}

impl SensorSource for Hwmon {
    fn kind(&self) -> Source {
        Source::Hwmon
    }

    fn discover(&mut self) {
        let mut old: BTreeMap<PathBuf, Chip> = self.chips.drain(..).map(|c| (c.dir.clone(), c)).collect();
        let mut chips: Vec<Chip> = class_entries(&self.root, "hwmon")
            .into_iter()
            .map(|(entry, dir)| match old.remove(&dir) {
                Some(c) => c,
                None => Self::build_chip(&entry, &dir),
            })
            .collect();
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for c in &chips {
            *count
                .entry(chip_id(&c.dir, &c.entry, Some(&c.name).filter(|n| !n.is_empty()).map(|s| s.as_str())))
                .or_default() += 1;
        }
        for c in &mut chips {
            let base = chip_id(&c.dir, &c.entry, Some(&c.name).filter(|n| !n.is_empty()).map(|s| s.as_str()));
            c.id = if count.get(&base).copied().unwrap_or(0) > 1 { format!("{base}_{}", c.entry) } else { base };
        }
        self.chips = chips;
    }

    fn sample(&mut self, now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        // A chip removed since the last scan: its series stop (no crash, no stale value).
        self.chips.retain(|c| c.dir.exists());
        let mut psu_in: Option<f64> = None;
        let mut psu_ok = true;
        let mut acpi: Option<f64> = None;
        for chip in &mut self.chips {
            for a in &mut chip.attrs {
                let sensor = format!("{}/{}", chip.id, a.base);
                let path = a.file.path().display().to_string();
                progress.enter(&sensor, &path);
                let domain = a.domain;
                let (unit, result) = match a.kind {
                    Kind::Temp => {
                        ("celsius", a.file.read_i64().map(millicelsius).and_then(|v| check(Quantity::Temperature, v)))
                    }
                    Kind::Fan => {
                        ("rpm", a.file.read_u64().map(|v| v as f64).and_then(|v| check(Quantity::FanSpeed, v)))
                    }
                    Kind::Power => {
                        ("watts", a.file.read_u64().map(uw_to_watts).and_then(|v| check(Quantity::Power(domain), v)))
                    }
                    Kind::Energy => (
                        "joules",
                        a.file.read_u64().map(|raw| {
                            // No known range: a drop is the chip resetting its counter.
                            if a.acc.update(raw, None).is_some() && a.acc.last_raw_dropped() {
                                out.errors.push((Source::Hwmon, Reason::Reset));
                            }
                            a.acc.joules()
                        }),
                    ),
                };
                if a.domain == Domain::PsuInput && a.kind == Kind::Power {
                    match &result {
                        Ok(w) => psu_in = Some(psu_in.unwrap_or(0.0) + w),
                        Err(_) => psu_ok = false,
                    }
                }
                if let Ok(v) = result {
                    let zone = sensor.clone();
                    let src = Source::Hwmon.to_string();
                    match a.kind {
                        Kind::Temp => out.samples.push(Sample::new(
                            &TEMPERATURE,
                            vec![src, chip.id.clone(), a.base.clone(), a.label.clone(), a.location.to_string()],
                            v,
                        )),
                        Kind::Fan => out.samples.push(Sample::new(
                            &FAN,
                            vec![src, chip.id.clone(), a.base.clone(), a.label.clone()],
                            v,
                        )),
                        Kind::Power => {
                            if a.domain == Domain::Platform && acpi.is_none() {
                                acpi = Some(v);
                            }
                            out.samples.push(Sample::new(
                                &POWER,
                                vec![src, zone, a.domain.to_string(), a.socket.clone()],
                                v,
                            ));
                        }
                        Kind::Energy => {
                            let labels = vec![src, zone, a.domain.to_string(), a.socket.clone()];
                            let total = a.acc.total_uj();
                            if let Some((t0, e0)) = a.last_tick
                                && now > t0
                                && total >= e0
                            {
                                let w = uj_to_joules(total - e0) / (now - t0).as_secs_f64();
                                // The counter's own rules govern the counter; a power
                                // derived from it that cannot be true is dropped and counted.
                                if is_plausible(Quantity::Power(a.domain), w) {
                                    out.samples.push(Sample::new(&POWER, labels.clone(), w));
                                } else {
                                    out.errors.push((Source::Hwmon, Reason::Implausible));
                                }
                            }
                            a.last_tick = Some((now, total));
                            out.samples.push(Sample::new(&ENERGY, labels, v));
                        }
                    }
                }
                out.status(Source::Hwmon, sensor, unit, path, result);
            }
        }
        out.facts.psu_input_watts = if psu_ok { psu_in } else { None };
        out.facts.acpi_power_watts = acpi;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names_like_node_exporter() {
        assert_eq!(clean_name("coretemp.0"), "coretemp_0");
        assert_eq!(clean_name("0000:00:18.3"), "0000:00:18_3");
        assert_eq!(clean_name("ACPI000D:00"), "acpi000d:00");
        assert_eq!(clean_name("--x--"), "x");
    }

    #[test]
    fn domains_and_locations() {
        assert_eq!(power_domain("pmbus", "pin"), Domain::PsuInput);
        assert_eq!(power_domain("pmbus", "PIN"), Domain::PsuInput);
        assert_eq!(power_domain("pmbus", "pout1"), Domain::PsuOutput);
        assert_eq!(power_domain("power_meter", ""), Domain::Platform);
        assert_eq!(power_domain("amd_energy", "Esocket0"), Domain::Package);
        assert_eq!(temperature_location("coretemp", "Package id 0"), Location::Cpu);
        assert_eq!(temperature_location("nvme", "Composite"), Location::Disk);
        assert_eq!(temperature_location("nct6779", "Inlet Temp"), Location::Inlet);
        assert_eq!(temperature_location("pmbus", ""), Location::Psu);
        assert_eq!(temperature_location("acpitz", ""), Location::Other);
    }

    /// An AMD GPU (`amdgpu` hwmon chip, PCI device): its power is `domain="gpu"`,
    /// its temperatures `location="gpu"`, and it never counts as PSU or platform power.
    #[test]
    fn an_amdgpu_chip_is_gpu_power_and_gpu_temperature() {
        let root = tempfile::tempdir().expect("tmp");
        let dev = root.path().join("devices/pci0000:00/0000:00:01.1/0000:03:00.0");
        let hw = dev.join("hwmon/hwmon4");
        std::fs::create_dir_all(&hw).expect("mkdir");
        for (f, v) in [
            ("name", "amdgpu"),
            ("power1_average", "45000000"),
            ("power1_label", "PPT"),
            ("temp1_input", "52000"),
            ("temp1_label", "edge"),
            ("temp2_input", "61000"),
            ("temp2_label", "junction"),
        ] {
            std::fs::write(hw.join(f), format!("{v}\n")).expect("write");
        }
        std::os::unix::fs::symlink(&dev, hw.join("device")).expect("device link");
        let class = root.path().join("class/hwmon");
        std::fs::create_dir_all(&class).expect("class");
        std::os::unix::fs::symlink(&hw, class.join("hwmon4")).expect("class link");
        let mut h = Hwmon::new(root.path());
        h.discover();
        let out = h.sample(Duration::ZERO, &Progress::default());
        let power: Vec<_> = out.samples.iter().filter(|s| s.def.name == POWER.name).collect();
        assert_eq!(power.len(), 1, "{:?}", out.samples);
        assert_eq!(power[0].labels[2], "gpu");
        assert_eq!(power[0].value, 45.0);
        let temps: Vec<_> = out.samples.iter().filter(|s| s.def.name == TEMPERATURE.name).collect();
        assert_eq!(temps.len(), 2);
        assert!(temps.iter().all(|t| t.labels[4] == "gpu"), "{temps:?}");
        assert_eq!(out.facts.psu_input_watts, None);
        assert_eq!(out.facts.acpi_power_watts, None);
    }

    #[test]
    fn attributes_prefer_input_over_average() {
        let d = tempfile::tempdir().expect("tmp");
        for f in [
            "power1_average",
            "power1_input",
            "power2_average",
            "temp1_input",
            "temp1_label",
            "fan1_input",
            "in0_input",
            "temp_input",
        ] {
            std::fs::write(d.path().join(f), "1\n").expect("w");
        }
        let a: Vec<(String, Kind, String)> = list_attrs(d.path())
            .into_iter()
            .map(|(b, k, p)| (b, k, p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()))
            .collect();
        assert_eq!(
            a,
            vec![
                ("fan1".into(), Kind::Fan, "fan1_input".into()),
                ("power1".into(), Kind::Power, "power1_input".into()),
                ("power2".into(), Kind::Power, "power2_average".into()),
                ("temp1".into(), Kind::Temp, "temp1_input".into()),
            ]
        );
    }
}
