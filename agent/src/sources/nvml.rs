//! NVIDIA GPUs: per-GPU power, energy counter, temperature and utilisation,
//! read on a poll thread of their own ([`super::bmc::Poller`]) so a slow or
//! hung driver never holds the tick. Two backends:
//!
//! - `nvml` (default): `libnvidia-ml.so.1` loaded at runtime by `nvml-wrapper`
//!   (libloading underneath). Nothing NVIDIA is needed to build the agent, and
//!   the FFI `unsafe` stays in that crate: the workspace keeps
//!   `unsafe_code = "forbid"`. NVML is initialised once on the poll thread and
//!   kept; a failed poll drops it and the next poll (after the poller's
//!   backoff) initialises it again. With `enabled = "auto"`, a host where the
//!   library or the kernel driver is absent has the source off, and `probe`
//!   says why.
//! - `nvidia-smi`: runs the command at each poll (power and temperature only),
//!   for configs written before NVML was loaded in-process.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::catalog::{ENERGY, GPU_UTILIZATION, POWER, TEMPERATURE};
use domesday_model::vocab::{Domain, Location, Reason, Source};
use nvml_wrapper::Nvml as NvmlLib;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;

use super::bmc::{Poller, run_command};
use super::{Output, Progress, Sample, SensorSource};
use crate::config::{NvmlBackend, NvmlConfig, Switch};
use crate::energy::Accumulator;
use crate::fsread::ReadError;
use crate::plausible::{Quantity, check};

/// The query the `nvidia-smi` backend runs at each poll.
pub const QUERY: &[&str] = &["--query-gpu=index,uuid,name,power.draw,temperature.gpu", "--format=csv,noheader,nounits"];

/// The library the dynamic loader is asked for when `library` is not set.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// One GPU's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub watts: Result<f64, ReadError>,
    pub celsius: Result<f64, ReadError>,
    /// Energy since the first reading's raw value, reset-corrected, J; `None`
    /// when the backend does not read it (`nvidia-smi`).
    pub joules: Option<Result<f64, ReadError>>,
    /// Share of time a kernel ran, 0 to 1; `None` as for `joules`.
    pub utilization: Option<Result<f64, ReadError>>,
    /// This poll found the raw energy counter lower than the previous one (a
    /// driver reload or GPU reset): counted once as `reason="reset"`.
    pub counter_reset: bool,
}

/// What one poll found.
#[derive(Debug, Clone, PartialEq)]
pub enum Polled {
    /// `enabled = "auto"` on a host without the NVIDIA library or driver: the
    /// source is off, and this says why (for `probe`).
    Off(String),
    Gpus(Vec<Gpu>),
}

/// A value of the query: a number (its bounds are checked with the GPU's
/// readings), `[N/A]`/`[Not Supported]`/`[Unknown Error]` (no reading), or
/// anything else (an answer that is not what the query asks: `parse`).
fn field(s: &str) -> Result<f64, ReadError> {
    let t = s.trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ if t.starts_with('[') && t.ends_with(']') || t.eq_ignore_ascii_case("n/a") => {
            Err(ReadError::new(Reason::Missing, format!("no reading ({t})")))
        }
        _ => Err(ReadError::new(Reason::Parse, format!("not a number: {t:?}"))),
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
            joules: None,
            utilization: None,
            counter_reset: false,
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

/// Whether the source runs, and if not, why (for `probe`). With the `nvml`
/// backend `auto` always starts it: whether the library loads is found out on
/// the poll thread, and reported as [`Polled::Off`].
pub fn decide(cfg: &NvmlConfig, sysfs_root: &Path) -> Result<(), String> {
    match (cfg.enabled, cfg.backend) {
        (Switch::Off, _) => Err("off: [nvml] enabled = false".into()),
        (Switch::On, _) | (Switch::Auto, NvmlBackend::Nvml) => Ok(()),
        (Switch::Auto, NvmlBackend::NvidiaSmi) => {
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

/// One `nvidia-smi` poll.
pub fn poll_smi(cfg: &NvmlConfig) -> Result<Vec<Gpu>, ReadError> {
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

/// The reason label of an NVML error.
pub fn reason_of(e: &NvmlError) -> Reason {
    match e {
        NvmlError::NotSupported
        | NvmlError::NotFound
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::LibloadingError(_)
        | NvmlError::LibraryNotFound
        | NvmlError::DriverNotLoaded
        | NvmlError::GpuLost
        | NvmlError::NoData => Reason::Missing,
        NvmlError::NoPermission => Reason::Permission,
        NvmlError::Timeout => Reason::Timeout,
        NvmlError::Utf8Error(_) | NvmlError::NulError(_) | NvmlError::UnexpectedVariant(_) => Reason::Parse,
        _ => Reason::Io,
    }
}

/// Errors of a per-GPU call after which the NVML handle is not trusted any
/// more: the next poll initialises NVML again. (Not `Unknown`: a board that
/// always fails one call would otherwise re-initialise NVML at every poll.)
fn needs_reinit(e: &NvmlError) -> bool {
    matches!(e, NvmlError::Uninitialized | NvmlError::DriverNotLoaded | NvmlError::GpuLost)
}

fn call_error(call: &str, e: &NvmlError) -> ReadError {
    ReadError::new(reason_of(e), format!("{call}: {e}"))
}

/// Why NVML could not start, and whether that means "no NVIDIA driver here"
/// (off under `auto`) rather than a broken one.
fn init_error(library: &str, e: &NvmlError) -> (ReadError, bool) {
    match e {
        NvmlError::LibloadingError(le) => {
            let msg = le.to_string();
            if msg.contains("No such file") {
                // The loader's message only repeats the name: the fix column says what to do.
                let why = format!("{library} not found: the NVIDIA driver is not installed");
                (ReadError::new(Reason::Missing, why), true)
            } else {
                (ReadError::new(Reason::Io, format!("cannot load {library}: {msg}")), false)
            }
        }
        NvmlError::FailedToLoadSymbol(msg) => {
            (ReadError::new(Reason::Io, format!("{library} is not a usable NVML library: {msg}")), false)
        }
        NvmlError::DriverNotLoaded => (
            ReadError::new(
                Reason::Missing,
                format!(
                    "nvmlInit: the NVIDIA kernel driver is not loaded ({library} is installed): no NVIDIA GPU here"
                ),
            ),
            true,
        ),
        e => (call_error("nvmlInit", e), false),
    }
}

/// The `nvml` backend's poll state, owned by the poll thread: the NVML handle
/// (initialised once, reused) and each GPU's energy accumulator by UUID, kept
/// across re-initialisations so the counter never goes back.
pub struct NvmlReader {
    enabled: Switch,
    library: Option<PathBuf>,
    nvml: Option<NvmlLib>,
    counters: BTreeMap<String, Accumulator>,
    last_off: Option<String>,
}

impl NvmlReader {
    pub fn new(cfg: &NvmlConfig) -> Self {
        NvmlReader {
            enabled: cfg.enabled,
            library: cfg.library.clone(),
            nvml: None,
            counters: BTreeMap::new(),
            last_off: None,
        }
    }

    fn library_name(&self) -> String {
        self.library.as_ref().map_or_else(|| DEFAULT_LIBRARY.to_string(), |p| p.display().to_string())
    }

    /// One poll: initialises NVML if needed, then reads every GPU.
    pub fn poll(&mut self) -> Result<Polled, ReadError> {
        if self.nvml.is_none() {
            let lib = self.library.as_deref().map_or(OsStr::new(DEFAULT_LIBRARY), Path::as_os_str);
            match NvmlLib::builder().lib_path(lib).init() {
                Ok(n) => {
                    tracing::info!(library = %self.library_name(), "NVML initialised");
                    self.last_off = None;
                    self.nvml = Some(n);
                }
                Err(e) => {
                    let (err, absent) = init_error(&self.library_name(), &e);
                    if absent && self.enabled == Switch::Auto {
                        // Quiet: a host without NVIDIA GPUs is the normal case.
                        let why = format!("off (auto): {}", err.detail);
                        if self.last_off.as_ref() != Some(&why) {
                            tracing::info!("NVIDIA GPUs: {why}");
                            self.last_off = Some(why.clone());
                        }
                        return Ok(Polled::Off(why));
                    }
                    return Err(err);
                }
            }
        }
        let Some(nvml) = &self.nvml else {
            return Err(ReadError::new(Reason::Io, "NVML not initialised"));
        };
        let (result, reinit) = read_gpus(nvml, &mut self.counters);
        if reinit {
            // Dropping the handle calls nvmlShutdown; the next poll starts afresh.
            self.nvml = None;
        }
        result.map(Polled::Gpus)
    }
}

/// Reads every GPU; a failing call makes that reading an error, a failing
/// count the whole poll. The flag asks for a new NVML initialisation.
fn read_gpus(nvml: &NvmlLib, counters: &mut BTreeMap<String, Accumulator>) -> (Result<Vec<Gpu>, ReadError>, bool) {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => return (Err(call_error("nvmlDeviceGetCount", &e)), true),
    };
    let mut reinit = false;
    let mut gpus = Vec::new();
    for index in 0..count {
        let dev = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                reinit |= needs_reinit(&e);
                let err = call_error("nvmlDeviceGetHandleByIndex", &e);
                gpus.push(Gpu {
                    index,
                    uuid: String::new(),
                    name: String::new(),
                    watts: Err(err.clone()),
                    celsius: Err(err.clone()),
                    joules: Some(Err(err.clone())),
                    utilization: Some(Err(err)),
                    counter_reset: false,
                });
                continue;
            }
        };
        let uuid = dev.uuid().unwrap_or_else(|_| format!("gpu{index}"));
        let name = dev.name().unwrap_or_default();
        let watts = dev.power_usage().map(|mw| f64::from(mw) / 1000.0);
        let mut counter_reset = false;
        let joules = dev.total_energy_consumption().map(|mj| {
            // NVML counts mJ since the driver loaded; a drop is a driver reload.
            let acc = counters.entry(uuid.clone()).or_default();
            counter_reset = acc.update(mj.saturating_mul(1000), None).is_some() && acc.last_raw_dropped();
            acc.joules()
        });
        let celsius = dev.temperature(TemperatureSensor::Gpu).map(f64::from);
        let utilization = dev.utilization_rates().map(|u| f64::from(u.gpu.min(100)) / 100.0);
        reinit |= [&watts, &joules, &celsius, &utilization].iter().any(|r| r.as_ref().is_err_and(needs_reinit));
        gpus.push(Gpu {
            index,
            uuid,
            name,
            watts: watts.map_err(|e| call_error("nvmlDeviceGetPowerUsage", &e)),
            celsius: celsius.map_err(|e| call_error("nvmlDeviceGetTemperature", &e)),
            joules: Some(joules.map_err(|e| call_error("nvmlDeviceGetTotalEnergyConsumption", &e))),
            utilization: Some(utilization.map_err(|e| call_error("nvmlDeviceGetUtilizationRates", &e))),
            counter_reset,
        });
    }
    (Ok(gpus), reinit)
}

/// The GPU source.
pub struct Nvml {
    poller: Poller<Polled>,
    /// What `probe` shows as the path of the source as a whole.
    path: String,
    /// Under `auto`, a tick before the first poll answers says nothing: most
    /// hosts have no GPU, and "no answer yet" is not a failure of anything.
    quiet_until_first_poll: bool,
    /// The poll whose counter resets were counted.
    resets_counted: Option<std::time::Instant>,
}

impl Nvml {
    pub fn new(cfg: &NvmlConfig) -> std::io::Result<Self> {
        let (poller, path) = match cfg.backend {
            NvmlBackend::Nvml => {
                let mut reader = NvmlReader::new(cfg);
                let path = reader.library_name();
                (Poller::spawn("nvml", cfg.interval.0, move || reader.poll())?, path)
            }
            NvmlBackend::NvidiaSmi => {
                let c = cfg.clone();
                let poller = Poller::spawn("nvml", cfg.interval.0, move || poll_smi(&c).map(Polled::Gpus))?;
                (poller, format!("{} {}", cfg.command, QUERY.join(" ")))
            }
        };
        Ok(Nvml { poller, path, quiet_until_first_poll: cfg.enabled == Switch::Auto, resets_counted: None })
    }

    pub fn waiter(&self) -> impl Fn(Duration) + Send + 'static {
        self.poller.waiter()
    }
}

/// Samples and statuses of the GPUs of one poll; power and temperature
/// outside the physical bounds are no reading.
pub fn gpu_output(gpus: &[Gpu], out: &mut Output) {
    let src = Source::Nvml.to_string();
    for g in gpus {
        let g = &Gpu {
            watts: g.watts.clone().and_then(|w| check(Quantity::Power(Domain::Gpu), w)),
            celsius: g.celsius.clone().and_then(|c| check(Quantity::Temperature, c)),
            ..g.clone()
        };
        let zone = format!("gpu{}", g.index);
        let zone_labels = || vec![src.clone(), zone.clone(), Domain::Gpu.to_string(), String::new()];
        if let Ok(w) = g.watts {
            out.samples.push(Sample::new(&POWER, zone_labels(), w));
        }
        if let Some(Ok(j)) = g.joules {
            out.samples.push(Sample::new(&ENERGY, zone_labels(), j));
        }
        if let Ok(c) = g.celsius {
            out.samples.push(Sample::new(
                &TEMPERATURE,
                vec![src.clone(), zone.clone(), "gpu".into(), g.name.clone(), Location::Gpu.to_string()],
                c,
            ));
        }
        if let Some(Ok(u)) = g.utilization {
            out.samples.push(Sample::new(&GPU_UTILIZATION, vec![src.clone(), zone.clone()], u));
        }
        let readings = [
            ("power", "watts", Some(&g.watts)),
            ("energy", "joules", g.joules.as_ref()),
            ("temp", "celsius", Some(&g.celsius)),
            ("utilization", "ratio", g.utilization.as_ref()),
        ];
        for (what, unit, r) in readings {
            if let Some(r) = r {
                out.status(Source::Nvml, format!("{zone}/{what}"), unit, g.uuid.clone(), r.clone());
            }
        }
    }
}

impl SensorSource for Nvml {
    fn kind(&self) -> Source {
        Source::Nvml
    }

    fn discover(&mut self) {}

    fn sample(&mut self, _now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        progress.enter("nvml", &self.path);
        let st = self.poller.state();
        let fail = match (st.polls, &st.last_err, self.poller.fresh(&st)) {
            (0, _, _) if self.quiet_until_first_poll => None,
            (0, _, _) => Some(ReadError::new(Reason::Missing, "no answer yet (first poll running)")),
            (_, Some(e), _) => Some(e.clone()),
            (_, None, None) => Some(ReadError::new(Reason::Gap, "the last reading is older than 3 intervals")),
            (_, None, Some(Polled::Off(why))) => {
                out.off = Some(why);
                None
            }
            (_, None, Some(Polled::Gpus(gpus))) => {
                gpu_output(&gpus, &mut out);
                // Each poll's counter resets once, however many ticks copy it.
                let taken = st.last_ok.as_ref().map(|(at, _)| *at);
                if taken != self.resets_counted {
                    self.resets_counted = taken;
                    out.errors.extend(gpus.iter().filter(|g| g.counter_reset).map(|_| (Source::Nvml, Reason::Reset)));
                }
                None
            }
        };
        if let Some(e) = fail {
            out.status(Source::Nvml, "nvml".into(), "", self.path.clone(), Err(e));
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
    fn auto_needs_the_module_and_the_command_for_nvidia_smi() {
        let root = tempfile::tempdir().expect("tmp");
        let smi = |command: &str| NvmlConfig {
            backend: NvmlBackend::NvidiaSmi,
            command: command.into(),
            ..Default::default()
        };
        assert!(decide(&smi("/bin/sh"), root.path()).expect_err("no module").contains("nvidia kernel module"));
        std::fs::create_dir_all(root.path().join("module/nvidia")).expect("mkdir");
        assert_eq!(decide(&smi("/bin/sh"), root.path()), Ok(()));
        assert!(decide(&smi("/nonexistent/nvidia-smi"), root.path()).expect_err("no command").contains("not found"));
        let cfg = NvmlConfig { enabled: Switch::Off, ..Default::default() };
        assert!(decide(&cfg, root.path()).is_err());
        // The NVML backend finds out on its poll thread.
        assert_eq!(decide(&NvmlConfig::default(), tempfile::tempdir().expect("tmp").path()), Ok(()));
    }

    /// Builds the fake NVML library (tests/fixtures/nvml/fake_nvml.c) into a
    /// fresh directory; its state file and call log sit beside it.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new(state: &str) -> Fake {
            let dir = tempfile::tempdir().expect("tmp");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nvml/fake_nvml.c");
            let out = std::process::Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(dir.path().join("libnvidia-ml.so.1"))
                .arg(&src)
                .arg("-ldl")
                .output()
                .unwrap_or_else(|e| panic!("cannot run `cc` to build the fake NVML library ({e}): install gcc"));
            assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
            let f = Fake { dir };
            f.set(state);
            f
        }

        fn set(&self, state: &str) {
            std::fs::write(self.dir.path().join("fake-nvml-state"), state).expect("state");
        }

        fn calls(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("fake-nvml.log")).unwrap_or_default()
        }

        fn reader(&self, enabled: Switch) -> NvmlReader {
            NvmlReader::new(&NvmlConfig {
                enabled,
                library: Some(self.dir.path().join("libnvidia-ml.so.1")),
                ..Default::default()
            })
        }
    }

    const TWO_GPUS: &str = "\
gpu uuid=GPU-aaaa power=61330 energy=1000000 temp=34 util=87 name=NVIDIA A100-SXM4-40GB
gpu uuid=GPU-bbbb power=not_supported energy=5000 temp=29 util=0 name=Tesla K80
";

    fn gpus(r: &mut NvmlReader) -> Vec<Gpu> {
        match r.poll() {
            Ok(Polled::Gpus(g)) => g,
            other => panic!("expected GPUs, got {other:?}"),
        }
    }

    #[test]
    fn nvml_reads_every_gpu_and_an_unsupported_call_is_a_down_sensor() {
        let fake = Fake::new(TWO_GPUS);
        let mut r = fake.reader(Switch::Auto);
        let g = gpus(&mut r);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].index, g[0].uuid.as_str(), g[0].name.as_str()), (0, "GPU-aaaa", "NVIDIA A100-SXM4-40GB"));
        assert_eq!(g[0].watts, Ok(61.33));
        assert_eq!(g[0].joules, Some(Ok(1000.0)), "the counter starts at its raw value (mJ → J)");
        assert_eq!(g[0].celsius, Ok(34.0));
        assert_eq!(g[0].utilization, Some(Ok(0.87)));
        let e = g[1].watts.clone().expect_err("not supported");
        assert_eq!(e.reason, Reason::Missing);
        assert!(e.detail.contains("nvmlDeviceGetPowerUsage") && e.detail.contains("not available"), "{e:?}");

        let mut out = Output::default();
        gpu_output(&g, &mut out);
        let find = |name: &str, zone: &str| {
            out.samples.iter().find(|s| s.def.name == name && s.labels.get(1).map(String::as_str) == Some(zone))
        };
        let power = find("domesday_power_watts", "gpu0").expect("gpu0 power");
        assert_eq!(power.labels, ["nvml", "gpu0", "gpu", ""]);
        assert_eq!(power.value, 61.33);
        assert!(find("domesday_power_watts", "gpu1").is_none(), "no reading is no sample, never 0 W");
        assert_eq!(find("domesday_energy_joules_total", "gpu1").map(|s| s.value), Some(5.0));
        assert_eq!(find("domesday_gpu_utilization_ratio", "gpu1").map(|s| s.value), Some(0.0));
        let temp = find("domesday_temperature_celsius", "gpu0").expect("temp");
        assert_eq!(temp.labels, ["nvml", "gpu0", "gpu", "NVIDIA A100-SXM4-40GB", "gpu"]);
        let status = |id: &str| out.statuses.iter().find(|s| s.sensor == id).map(|s| s.result.clone());
        assert_eq!(status("gpu0/power"), Some(Ok(61.33)));
        assert_eq!(status("gpu1/power").map(|r| r.map_err(|e| e.reason)), Some(Err(Reason::Missing)));
        assert_eq!(out.statuses.len(), 8, "power, energy, temp, utilization per GPU");
    }

    #[test]
    fn the_energy_counter_stays_monotonic_across_a_driver_reset_and_nvml_is_initialised_once() {
        let fake = Fake::new(TWO_GPUS);
        let mut r = fake.reader(Switch::On);
        assert_eq!(gpus(&mut r)[0].joules, Some(Ok(1000.0)));
        fake.set(&TWO_GPUS.replace("energy=1000000", "energy=1000500"));
        assert_eq!(gpus(&mut r)[0].joules, Some(Ok(1000.5)));
        // The driver reloaded: the raw counter restarts near zero and counts from there.
        fake.set(&TWO_GPUS.replace("energy=1000000", "energy=200"));
        assert_eq!(gpus(&mut r)[0].joules, Some(Ok(1000.7)));
        assert_eq!(fake.calls(), "init\n", "one nvmlInit for every poll");
    }

    #[test]
    fn a_failed_poll_reinitialises_nvml_and_keeps_the_counters() {
        let fake = Fake::new(TWO_GPUS);
        let mut r = fake.reader(Switch::On);
        gpus(&mut r);
        fake.set(&format!("count unknown\n{TWO_GPUS}"));
        let e = r.poll().expect_err("count fails");
        assert!(e.detail.contains("nvmlDeviceGetCount"), "{e:?}");
        assert_eq!(fake.calls(), "init\nshutdown\n", "the handle is dropped after a failed poll");
        fake.set(&TWO_GPUS.replace("energy=1000000", "energy=1002000"));
        assert_eq!(gpus(&mut r)[0].joules, Some(Ok(1002.0)));
        assert_eq!(fake.calls(), "init\nshutdown\ninit\n");
        // A lost GPU: its readings are errors now, and NVML restarts at the next poll.
        fake.set(&TWO_GPUS.replace(
            "power=61330 energy=1000000 temp=34 util=87",
            "power=gpu_lost energy=gpu_lost temp=gpu_lost util=gpu_lost",
        ));
        let g = gpus(&mut r);
        assert!(g[0].watts.is_err() && g[1].celsius == Ok(29.0), "{g:?}");
        assert!(fake.calls().ends_with("init\nshutdown\n"), "{}", fake.calls());
        // A call that keeps failing otherwise is that reading down, not an NVML restart at every poll.
        fake.set(&TWO_GPUS.replace("temp=29", "temp=unknown"));
        for _ in 0..3 {
            let g = gpus(&mut r);
            assert_eq!(g[1].celsius.clone().map_err(|e| e.reason), Err(Reason::Io));
        }
        assert_eq!(fake.calls().matches("init").count(), 3, "{}", fake.calls());
        assert!(fake.calls().ends_with("shutdown\ninit\n"), "{}", fake.calls());
    }

    /// A library that never finishes loading (a FIFO nobody writes: `dlopen`
    /// blocks reading it) holds the first poll: under `auto` the ticks say
    /// nothing meanwhile, forced on they report that no answer came yet.
    /// Until the poll thread has finished (bounded): opens `fifo` for writing
    /// whenever a reader has it open, then closes it (the reader sees an empty
    /// file). `close` stops the thread and waits for it until the instant given.
    fn release_fifo_readers(fifo: &std::path::Path, close: impl Fn(std::time::Instant)) {
        use std::os::unix::fs::OpenOptionsExt;
        use std::time::Instant;
        // O_NONBLOCK on Linux (x86-64, aarch64): fails with ENXIO while no reader has it open.
        const O_NONBLOCK: i32 = 0o4000;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let _ = std::fs::OpenOptions::new().write(true).custom_flags(O_NONBLOCK).open(fifo);
            let t = Instant::now();
            close(t + Duration::from_millis(50));
            if t.elapsed() < Duration::from_millis(50) {
                return;
            }
        }
    }

    #[test]
    fn before_the_first_answer_auto_is_quiet_and_forced_on_is_a_missing_reading() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("libnvidia-ml.so.1");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        for (enabled, want_error) in [(Switch::Auto, false), (Switch::On, true)] {
            let cfg = NvmlConfig { enabled, library: Some(fifo.clone()), ..Default::default() };
            let mut n = Nvml::new(&cfg).expect("spawn");
            let out = n.sample(Duration::ZERO, &Progress::default());
            let errors: Vec<_> = out.statuses.iter().filter_map(|s| s.result.as_ref().err()).collect();
            assert_eq!(!errors.is_empty(), want_error, "{enabled:?}: {errors:?}");
            assert!(errors.iter().all(|e| e.reason == Reason::Missing), "{errors:?}");
            assert!(out.off.is_none());
            // Release the poll thread: while it is blocked inside `dlopen` it holds
            // the dynamic loader's lock, which starting any thread may need (a
            // deadlock of the whole test binary when the harness starts its next
            // test). A writer that opens and closes the FIFO makes the library
            // read empty; opened without blocking (and without a new thread), it
            // fails with ENXIO until the poll thread has the FIFO open.
            let close = n.poller.closer();
            drop(n);
            release_fifo_readers(&fifo, close);
        }
    }

    #[test]
    fn no_library_or_driver_is_off_under_auto_and_an_error_when_forced_on() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("libnvidia-ml.so.1");
        let cfg = |enabled| NvmlConfig { enabled, library: Some(missing.clone()), ..Default::default() };
        match NvmlReader::new(&cfg(Switch::Auto)).poll() {
            Ok(Polled::Off(why)) => {
                assert!(why.contains("not found: the NVIDIA driver is not installed"), "{why}");
                assert!(why.contains(&missing.display().to_string()), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let e = NvmlReader::new(&cfg(Switch::On)).poll().expect_err("forced on");
        assert_eq!(e.reason, Reason::Missing);
        assert!(e.detail.contains("not found"), "{e:?}");
        // The library is there but the kernel driver is not.
        let fake = Fake::new("init driver_not_loaded\n");
        match fake.reader(Switch::Auto).poll() {
            Ok(Polled::Off(why)) => assert!(why.contains("driver is not loaded"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.reader(Switch::On).poll().map_err(|e| e.reason), Err(Reason::Missing));
        // Any other init failure is an error even under auto.
        fake.set("init no_permission\n");
        assert_eq!(fake.reader(Switch::Auto).poll().map_err(|e| e.reason), Err(Reason::Permission));
        // A file that is not NVML is an error, not an absent driver.
        std::fs::write(&missing, "not an ELF file").expect("write");
        let e = NvmlReader::new(&cfg(Switch::Auto)).poll().expect_err("not a library");
        assert_eq!(e.reason, Reason::Io, "{e:?}");
    }
}
