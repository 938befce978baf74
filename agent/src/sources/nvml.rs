//! NVIDIA GPUs through NVML, by running `nvidia-smi` (which links NVML) on a
//! poll thread of its own ([`super::bmc`]): nothing NVIDIA is needed to build
//! the agent, and a host without the driver simply has the source off.
//! (Loading `libnvidia-ml.so` in-process would need `unsafe`, which the
//! workspace forbids.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::catalog::{POWER, TEMPERATURE};
use domesday_model::vocab::{Domain, Location, Reason, Source};

use super::bmc::{Poller, run_command};
use super::{Output, Progress, Sample, SensorSource};
use crate::config::{NvmlConfig, Switch};
use crate::fsread::ReadError;

/// The query run at each poll.
pub const QUERY: &[&str] = &["--query-gpu=index,uuid,name,power.draw,temperature.gpu", "--format=csv,noheader,nounits"];

/// One GPU's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub watts: Result<f64, String>,
    pub celsius: Result<f64, String>,
}

fn field(s: &str) -> Result<f64, String> {
    let t = s.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("no reading ({t})")),
    }
}

/// `index, uuid, name, power.draw, temperature.gpu` lines (names may hold commas).
pub fn parse_query(text: &str) -> Result<Vec<Gpu>, ReadError> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 5 {
            return Err(ReadError::new(Reason::Parse, format!("unexpected nvidia-smi line {line:?}")));
        }
        let index =
            f[0].parse().map_err(|_| ReadError::new(Reason::Parse, format!("unexpected GPU index in {line:?}")))?;
        let n = f.len();
        out.push(Gpu {
            index,
            uuid: f[1].to_string(),
            name: f[2..n - 2].join(", "),
            watts: field(f[n - 2]),
            celsius: field(f[n - 1]),
        });
    }
    Ok(out)
}

/// The command's path if it can be run: a path that exists, or a name found in `PATH`.
pub fn find_command(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        return Path::new(command).is_file().then(|| PathBuf::from(command));
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(command)).find(|p| p.is_file()))
        .unwrap_or(None)
}

/// Whether the source runs, and if not, why (for `probe`).
pub fn decide(cfg: &NvmlConfig, sysfs_root: &Path) -> Result<(), String> {
    match cfg.enabled {
        Switch::Off => Err("off: [nvml] enabled = false".into()),
        Switch::On => Ok(()),
        Switch::Auto => {
            if !sysfs_root.join("module/nvidia").exists() {
                Err(format!(
                    "off (auto): no nvidia kernel module ({}/module/nvidia); no NVIDIA GPU or driver",
                    sysfs_root.display()
                ))
            } else if find_command(&cfg.command).is_none() {
                Err(format!("off (auto): {} not found in PATH; install the NVIDIA driver utilities", cfg.command))
            } else {
                Ok(())
            }
        }
    }
}

/// One poll.
pub fn poll(cfg: &NvmlConfig) -> Result<Vec<Gpu>, ReadError> {
    let args: Vec<String> = QUERY.iter().map(|s| s.to_string()).collect();
    let out = run_command(&cfg.command, &args, cfg.timeout.0)?;
    if !out.success {
        let first = out.stderr.lines().chain(out.stdout.lines()).map(str::trim).find(|l| !l.is_empty());
        let first = first.unwrap_or("no message");
        let reason = if first.contains("couldn't communicate") || first.contains("No devices") {
            Reason::Missing
        } else {
            Reason::Io
        };
        return Err(ReadError::new(reason, format!("{} failed: {first}", cfg.command)));
    }
    parse_query(&out.stdout)
}

/// The GPU source.
pub struct Nvml {
    poller: Poller<Vec<Gpu>>,
    command: String,
}

impl Nvml {
    pub fn new(cfg: &NvmlConfig) -> std::io::Result<Self> {
        let c = cfg.clone();
        let poller = Poller::spawn("nvml", cfg.interval.0, move || poll(&c))?;
        Ok(Nvml { poller, command: cfg.command.clone() })
    }

    pub fn waiter(&self) -> impl Fn(Duration) + Send + 'static {
        self.poller.waiter()
    }
}

impl SensorSource for Nvml {
    fn kind(&self) -> Source {
        Source::Nvml
    }

    fn discover(&mut self) {}

    fn sample(&mut self, _now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        let path = format!("{} {}", self.command, QUERY.join(" "));
        progress.enter("nvml", &path);
        let st = self.poller.state();
        let fail = match (st.polls, &st.last_err, self.poller.fresh(&st)) {
            (0, _, _) => Some(ReadError::new(Reason::Missing, "no answer yet (first poll running)")),
            (_, Some(e), _) => Some(e.clone()),
            (_, None, None) => Some(ReadError::new(Reason::Gap, "the last reading is older than 3 intervals")),
            (_, None, Some(gpus)) => {
                let src = Source::Nvml.to_string();
                for g in &gpus {
                    let zone = format!("gpu{}", g.index);
                    if let Ok(w) = g.watts {
                        out.samples.push(Sample::new(
                            &POWER,
                            vec![src.clone(), zone.clone(), Domain::Gpu.to_string(), String::new()],
                            w,
                        ));
                    }
                    if let Ok(c) = g.celsius {
                        out.samples.push(Sample::new(
                            &TEMPERATURE,
                            vec![src.clone(), zone.clone(), "gpu".into(), g.name.clone(), Location::Gpu.to_string()],
                            c,
                        ));
                    }
                    let miss = |why: &String| ReadError::new(Reason::Missing, why.clone());
                    out.status(
                        Source::Nvml,
                        format!("{zone}/power"),
                        "watts",
                        g.uuid.clone(),
                        g.watts.as_ref().map(|w| *w).map_err(miss),
                    );
                    out.status(
                        Source::Nvml,
                        format!("{zone}/temp"),
                        "celsius",
                        g.uuid.clone(),
                        g.celsius.as_ref().map(|c| *c).map_err(miss),
                    );
                }
                None
            }
        };
        if let Some(e) = fail {
            out.status(Source::Nvml, "nvml".into(), "", path, Err(e));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_lines_with_unsupported_fields_and_commas_in_names() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nvml/nvidia-smi.csv"),
        )
        .expect("fixture");
        let g = parse_query(&text).expect("parse");
        assert_eq!(g.len(), 3);
        assert_eq!(
            (g[0].index, g[0].name.as_str(), g[0].watts.clone(), g[0].celsius.clone()),
            (0, "NVIDIA A100-SXM4-40GB", Ok(61.33), Ok(34.0))
        );
        assert!(g[1].watts.is_err(), "[N/A] is no reading, not 0 W");
        assert_eq!(g[1].celsius, Ok(29.0));
        assert_eq!(g[2].name, "Tesla T4, rev 2");
        assert!(parse_query("garbage\n").is_err());
        assert_eq!(parse_query(""), Ok(vec![]));
    }

    #[test]
    fn auto_needs_the_module_and_the_command() {
        let root = tempfile::tempdir().expect("tmp");
        let cfg = NvmlConfig { command: "/bin/sh".into(), ..Default::default() };
        assert!(decide(&cfg, root.path()).expect_err("no module").contains("nvidia kernel module"));
        std::fs::create_dir_all(root.path().join("module/nvidia")).expect("mkdir");
        assert_eq!(decide(&cfg, root.path()), Ok(()));
        let cfg = NvmlConfig { command: "/nonexistent/nvidia-smi".into(), ..Default::default() };
        assert!(decide(&cfg, root.path()).expect_err("no command").contains("not found"));
        let cfg = NvmlConfig { enabled: Switch::Off, ..Default::default() };
        assert!(decide(&cfg, root.path()).is_err());
    }
}
