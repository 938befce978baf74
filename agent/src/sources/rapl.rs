//! RAPL energy through the powercap class (`<sysfs>/class/powercap`): every
//! `intel-rapl:*` zone and sub-zone, Intel and AMD (AMD package energy uses the
//! same control type since Linux 5.11).
//!
//! Each zone is a wrap-corrected counter that starts at the raw value. The host
//! sum (for `rapl_uplift`) is Σ package + Σ dram: `core`/`uncore` lie inside the
//! package, `psys` overlaps package + dram, and `intel-rapl-mmio` repeats the
//! package counter, so none of those are added, and no sum is given when any
//! summed zone failed (a socket missing would under-count the host).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use domesday_model::catalog::{ENERGY, POWER};
use domesday_model::vocab::{Domain, Source};

use super::{Output, Progress, Sample, SensorSource, class_entries};
use crate::energy::{Accumulator, uj_to_joules};
use crate::fsread::{ReadError, SysFile, read_trimmed};

#[derive(Debug)]
struct Zone {
    id: String,
    domain: Domain,
    socket: String,
    energy: SysFile,
    max_range: Option<u64>,
    acc: Accumulator,
    /// Increment since the last tick, µJ, and whether every read since then succeeded.
    pending_uj: u128,
    pending_ok: bool,
    /// Cumulative µJ and time at the last tick, for the power gauge.
    last_tick: Option<(Duration, u128)>,
}

/// The RAPL source.
#[derive(Debug)]
pub struct Rapl {
    root: std::path::PathBuf,
    zones: Vec<Zone>,
}

/// Domain and socket of a zone from its `name` file and its parent's name.
pub fn zone_domain(name: &str, parent_name: Option<&str>) -> (Domain, String) {
    let socket_of = |n: &str| {
        n.strip_prefix("package-").map(|rest| rest.split('-').next().unwrap_or("").to_string()).unwrap_or_default()
    };
    match name {
        n if n.starts_with("package-") => (Domain::Package, socket_of(n)),
        "dram" => (Domain::Dram, parent_name.map(socket_of).unwrap_or_default()),
        "core" => (Domain::Core, parent_name.map(socket_of).unwrap_or_default()),
        "uncore" => (Domain::Uncore, parent_name.map(socket_of).unwrap_or_default()),
        "psys" => (Domain::Psys, String::new()),
        _ => (Domain::Other, parent_name.map(socket_of).unwrap_or_default()),
    }
}

impl Rapl {
    pub fn new(sysfs_root: &Path) -> Self {
        Rapl { root: sysfs_root.join("class/powercap"), zones: Vec::new() }
    }

    fn read_zone(zone: &mut Zone, progress: &Progress) -> Result<(), ReadError> {
        progress.enter(&zone.id, &zone.energy.path().display().to_string());
        let raw = zone.energy.read_u64()?;
        if let Some(d) = zone.acc.update(raw, zone.max_range) {
            zone.pending_uj += u128::from(d);
        } else {
            zone.pending_ok = false; // baseline only: no increment to report yet
        }
        Ok(())
    }
}

impl SensorSource for Rapl {
    fn kind(&self) -> Source {
        Source::Rapl
    }

    fn discover(&mut self) {
        let mut old: BTreeMap<String, Zone> = self.zones.drain(..).map(|z| (z.id.clone(), z)).collect();
        let entries = class_entries(&self.root, "intel-rapl:");
        let names: BTreeMap<String, String> =
            entries.iter().filter_map(|(id, p)| read_trimmed(&p.join("name")).map(|n| (id.clone(), n))).collect();
        for (id, path) in entries {
            let name = names.get(&id).cloned().unwrap_or_default();
            let parent = id.rsplit_once(':').map(|(p, _)| p.to_string()).filter(|p| p.contains(':'));
            let (domain, socket) = zone_domain(&name, parent.as_ref().and_then(|p| names.get(p)).map(String::as_str));
            if let Some(z) = old.remove(&id) {
                self.zones.push(z);
                continue;
            }
            let max_range = read_trimmed(&path.join("max_energy_range_uj")).and_then(|s| s.parse().ok());
            self.zones.push(Zone {
                id,
                domain,
                socket,
                energy: SysFile::new(path.join("energy_uj")),
                max_range,
                acc: Accumulator::default(),
                pending_uj: 0,
                pending_ok: true,
                last_tick: None,
            });
        }
    }

    fn accumulate(&mut self, progress: &Progress) {
        for z in &mut self.zones {
            if Self::read_zone(z, progress).is_err() {
                z.pending_ok = false;
            }
        }
    }

    fn sample(&mut self, now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        let mut host_uj: Option<u128> = Some(0);
        let mut summed_any = false;
        for z in &mut self.zones {
            let result = Self::read_zone(z, progress);
            let read_ok = result.is_ok();
            let ok = read_ok && z.pending_ok;
            if matches!(z.domain, Domain::Package | Domain::Dram) {
                summed_any = true;
                host_uj = match (host_uj, ok) {
                    (Some(h), true) => Some(h + z.pending_uj),
                    _ => None,
                };
            }
            let labels = || vec![Source::Rapl.to_string(), z.id.clone(), z.domain.to_string(), z.socket.clone()];
            match result {
                Ok(()) => {
                    let total = z.acc.total_uj();
                    out.samples.push(Sample::new(&ENERGY, labels(), uj_to_joules(total)));
                    if let Some((t0, e0)) = z.last_tick
                        && now > t0
                        && z.pending_ok
                    {
                        let watts = uj_to_joules(total - e0) / (now - t0).as_secs_f64();
                        // A power the counter's increase cannot mean (a wrong
                        // `max_energy_range_uj`) is dropped and counted.
                        if crate::plausible::is_plausible(crate::plausible::Quantity::Power(z.domain), watts) {
                            out.samples.push(Sample::new(&POWER, labels(), watts));
                        } else {
                            out.errors.push((Source::Rapl, domesday_model::vocab::Reason::Implausible));
                        }
                    }
                    z.last_tick = Some((now, total));
                    out.status(
                        Source::Rapl,
                        z.id.clone(),
                        "joules",
                        z.energy.path().display().to_string(),
                        Ok(uj_to_joules(total)),
                    );
                }
                Err(e) => {
                    z.last_tick = None;
                    out.status(Source::Rapl, z.id.clone(), "joules", z.energy.path().display().to_string(), Err(e));
                }
            }
            z.pending_uj = 0;
            // The next increment covers exactly one tick only if this read succeeded;
            // after a failure another method carried the host, so don't count twice.
            z.pending_ok = read_ok;
        }
        out.facts.rapl_host_delta_uj = if summed_any { host_uj } else { None };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_from_zone_names() {
        assert_eq!(zone_domain("package-0", None), (Domain::Package, "0".into()));
        assert_eq!(zone_domain("package-1-die-1", None), (Domain::Package, "1".into()));
        assert_eq!(zone_domain("dram", Some("package-1")), (Domain::Dram, "1".into()));
        assert_eq!(zone_domain("core", Some("package-0")), (Domain::Core, "0".into()));
        assert_eq!(zone_domain("psys", None), (Domain::Psys, "".into()));
        assert_eq!(zone_domain("weird", None), (Domain::Other, "".into()));
    }

    fn zone_dir(root: &Path, id: &str, name: &str, uj: u64) -> std::path::PathBuf {
        let d = root.join("class/powercap").join(id);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("name"), format!("{name}\n")).expect("w");
        std::fs::write(d.join("energy_uj"), format!("{uj}\n")).expect("w");
        std::fs::write(d.join("max_energy_range_uj"), "1000000000\n").expect("w");
        d
    }

    #[test]
    fn a_derived_power_no_socket_can_draw_is_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tmp");
        let p0 = zone_dir(dir.path(), "intel-rapl:0", "package-0", 100);
        let mut r = Rapl::new(dir.path());
        r.discover();
        let pr = Progress::default();
        r.sample(Duration::from_secs(0), &pr);
        // 900 J in 10 ms: 90 kW for one socket.
        std::fs::write(p0.join("energy_uj"), "900000100\n").expect("w");
        let out = r.sample(Duration::from_millis(10), &pr);
        assert!(!out.samples.iter().any(|s| s.def.name == POWER.name), "{:?}", out.samples);
        assert!(out.samples.iter().any(|s| s.def.name == ENERGY.name), "the counter follows its own rules");
        assert_eq!(out.errors, vec![(Source::Rapl, domesday_model::vocab::Reason::Implausible)]);
        std::fs::write(p0.join("energy_uj"), "900000200\n").expect("w");
        let out = r.sample(Duration::from_secs(1), &pr);
        assert!(out.samples.iter().any(|s| s.def.name == POWER.name) && out.errors.is_empty());
    }

    #[test]
    fn host_sum_is_package_plus_dram_and_absent_when_a_socket_fails() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let p0 = zone_dir(root, "intel-rapl:0", "package-0", 100);
        zone_dir(root, "intel-rapl:0:0", "dram", 100);
        zone_dir(root, "intel-rapl:0:1", "core", 100);
        let p1 = zone_dir(root, "intel-rapl:1", "package-1", 999_000_000);
        zone_dir(root, "intel-rapl:2", "psys", 100);
        let mut r = Rapl::new(root);
        r.discover();
        let pr = Progress::default();
        let first = r.sample(Duration::from_secs(0), &pr);
        assert_eq!(first.facts.rapl_host_delta_uj, None, "baseline only");
        std::fs::write(p0.join("energy_uj"), "1100\n").expect("w");
        std::fs::write(root.join("class/powercap/intel-rapl:0:0/energy_uj"), "600\n").expect("w");
        std::fs::write(root.join("class/powercap/intel-rapl:0:1/energy_uj"), "50000\n").expect("w");
        std::fs::write(p1.join("energy_uj"), "1000\n").expect("w"); // wrapped: +1_001_000
        std::fs::write(root.join("class/powercap/intel-rapl:2/energy_uj"), "90000\n").expect("w");
        let second = r.sample(Duration::from_secs(5), &pr);
        assert_eq!(second.facts.rapl_host_delta_uj, Some(1000 + 500 + 1_001_000));
        let p1_energy =
            second.samples.iter().find(|s| s.def.name == ENERGY.name && s.labels[1] == "intel-rapl:1").map(|s| s.value);
        assert_eq!(p1_energy, Some(uj_to_joules(999_000_000 + 1_001_000)));
        std::fs::write(p1.join("energy_uj"), "").expect("w");
        let third = r.sample(Duration::from_secs(10), &pr);
        assert_eq!(third.facts.rapl_host_delta_uj, None);
        assert!(third.statuses.iter().any(|s| s.sensor == "intel-rapl:1" && s.result.is_err()));
    }

    #[test]
    fn keep_alive_reads_catch_a_wrap_that_one_long_interval_would_hide() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let p0 = zone_dir(root, "intel-rapl:0", "package-0", 900_000_000);
        let pr = Progress::default();
        let run = |keep_alive: bool| {
            std::fs::write(p0.join("energy_uj"), "900000000\n").expect("w");
            let mut r = Rapl::new(root);
            r.discover();
            r.sample(Duration::ZERO, &pr);
            // Two wraps of the 1e9 µJ range within one long interval: +200e6, then +950e6.
            std::fs::write(p0.join("energy_uj"), "100000000\n").expect("w");
            if keep_alive {
                r.accumulate(&pr);
            }
            std::fs::write(p0.join("energy_uj"), "50000000\n").expect("w");
            r.sample(Duration::from_secs(60), &pr).facts.rapl_host_delta_uj
        };
        assert_eq!(run(true), Some(200_000_000 + 950_000_000));
        assert_eq!(run(false), Some(150_000_000), "without the keep-alive read the first wrap is lost");
    }
}
