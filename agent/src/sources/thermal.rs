//! Thermal zones (`<sysfs>/class/thermal/thermal_zone*/{type,temp}`). Zero
//! zones is normal (many servers expose none) and not an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::catalog::TEMPERATURE;
use domesday_model::vocab::{Location, Source};

use super::{Output, Progress, Sample, SensorSource, class_entries};
use crate::energy::millicelsius;
use crate::fsread::{SysFile, read_trimmed};
use crate::plausible::{Quantity, check};

#[derive(Debug)]
struct Zone {
    id: String,
    kind: String,
    location: Location,
    temp: SysFile,
}

/// The thermal-zone source.
#[derive(Debug)]
pub struct Thermal {
    root: PathBuf,
    zones: Vec<Zone>,
}

/// Location of a zone from its `type`.
pub fn zone_location(kind: &str) -> Location {
    match kind {
        "x86_pkg_temp" | "cpu-thermal" | "cpu_thermal" | "k10temp" => Location::Cpu,
        k if k.contains("inlet") => Location::Inlet,
        _ => Location::Other,
    }
}

impl Thermal {
    pub fn new(sysfs_root: &Path) -> Self {
        Thermal { root: sysfs_root.join("class/thermal"), zones: Vec::new() }
    }
}

impl SensorSource for Thermal {
    fn kind(&self) -> Source {
        Source::Thermal
    }

    fn discover(&mut self) {
        self.zones = class_entries(&self.root, "thermal_zone")
            .into_iter()
            .map(|(id, dir)| {
                let kind = read_trimmed(&dir.join("type")).unwrap_or_default();
                Zone { location: zone_location(&kind), kind, temp: SysFile::new(dir.join("temp")), id }
            })
            .collect();
    }

    fn sample(&mut self, _now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        for z in &mut self.zones {
            let path = z.temp.path().display().to_string();
            progress.enter(&z.id, &path);
            let result = z.temp.read_i64().map(millicelsius).and_then(|v| check(Quantity::Temperature, v));
            if let Ok(v) = result {
                out.samples.push(Sample::new(
                    &TEMPERATURE,
                    vec![
                        Source::Thermal.to_string(),
                        String::new(),
                        z.id.clone(),
                        z.kind.clone(),
                        z.location.to_string(),
                    ],
                    v,
                ));
            }
            out.status(Source::Thermal, z.id.clone(), "celsius", path, result);
        }
        out
    }
}
