//! The sampler: one tick reads every source, arbitrates host power and yields a
//! [`Snapshot`] that the exporter only formats.
//!
//! Each source lives on its own worker thread and is driven by commands over a
//! bounded channel. The tick waits for each worker at most `sensor_timeout`; a
//! worker that blocks (a hung driver, an I2C bus stuck) is reported down with
//! `reason="timeout"` for the sensor it was reading, and the tick goes on. It
//! gets no new command until it answers, so a stuck file never piles up threads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use domesday_model::catalog::{
    AGENT_INFO, HOST_ENERGY, HOST_INFO, HOST_POWER, SAMPLE_DURATION, SENSOR_ERRORS, SENSOR_UP,
};
use domesday_model::vocab::{Reason, Source};

use crate::config::{AgentConfig, RAPL_MAX_READ_GAP};
use crate::estimation::PowerModel;
use crate::fsread::ReadError;
use crate::host_power::{HostPower, HostReading, StateFile};
use crate::inventory::Inventory;
use crate::snapshot::{PushStats, Snapshot};
use crate::sources::{HostFacts, Output, Progress, Sample, SensorSource, Status};

/// Capacity of a worker's command queue: a tick's command plus a rescan and a
/// RAPL keep-alive read; when full the worker is stuck and commands are dropped.
const COMMAND_QUEUE: usize = 4;

enum Command {
    Sample(Duration),
    Accumulate,
    Discover,
}

struct Worker {
    kind: Source,
    commands: SyncSender<Command>,
    outputs: Receiver<Output>,
    progress: Progress,
    /// A sample was requested and not answered yet.
    waiting: bool,
}

impl Worker {
    fn spawn(mut source: Box<dyn SensorSource>) -> std::io::Result<Self> {
        let kind = source.kind();
        let (ctx, crx) = sync_channel::<Command>(COMMAND_QUEUE);
        let (otx, orx) = sync_channel::<Output>(1);
        let progress = Progress::default();
        let p = progress.clone();
        std::thread::Builder::new().name(format!("sensor-{kind}")).spawn(move || {
            source.discover();
            while let Ok(cmd) = crx.recv() {
                match cmd {
                    Command::Sample(now) => {
                        if otx.send(source.sample(now, &p)).is_err() {
                            break;
                        }
                    }
                    Command::Accumulate => source.accumulate(&p),
                    Command::Discover => source.discover(),
                }
            }
        })?;
        Ok(Worker { kind, commands: ctx, outputs: orx, progress, waiting: false })
    }
}

/// Drives the sources and owns the host energy counters.
pub struct Sampler {
    cfg: Arc<AgentConfig>,
    workers: Vec<Worker>,
    host: HostPower,
    inventory: Inventory,
    errors: BTreeMap<(Source, Reason), u64>,
    last_rescan: Duration,
    last_accumulate: Duration,
    push: Option<Arc<PushStats>>,
    /// Waits for each BMC source's first poll (`probe`).
    bmc_waiters: Vec<Box<dyn Fn(Duration) + Send>>,
    /// Time zero of the agent's monotonic clock (`tick(now)` is time since it);
    /// BMC readings are stamped on the same clock.
    epoch: Instant,
    /// Stop the Redfish poll threads and wait for their sessions' logout.
    bmc_closers: Vec<Box<dyn Fn(Instant) + Send>>,
    close_within: Duration,
}

impl Sampler {
    /// Starts the enabled sources. `persist` keeps host counters in `state_dir`
    /// (`run`); `once` and `probe` do not.
    pub fn new(cfg: Arc<AgentConfig>, persist: bool) -> std::io::Result<Self> {
        use crate::sources::{hwmon::Hwmon, procfs::Procfs, rapl::Rapl, thermal::Thermal};
        let epoch = Instant::now();
        let mut sources: Vec<Box<dyn SensorSource>> = vec![
            Box::new(Procfs::new(&cfg.procfs_root)),
            Box::new(crate::sources::clock::Clock::for_fixture(cfg.clock_fixture.as_deref())),
        ];
        if cfg.sources.rapl {
            sources.push(Box::new(Rapl::new(&cfg.sysfs_root)));
        }
        if cfg.sources.hwmon {
            sources.push(Box::new(Hwmon::new(&cfg.sysfs_root)));
        }
        if cfg.sources.thermal {
            sources.push(Box::new(Thermal::new(&cfg.sysfs_root)));
        }
        let mut bmc_waiters: Vec<Box<dyn Fn(Duration) + Send>> = Vec::new();
        let mut bmc_closers: Vec<Box<dyn Fn(Instant) + Send>> = Vec::new();
        let mut close_within = Duration::ZERO;
        if cfg.ipmi.enabled {
            let ipmi = crate::sources::ipmi::Ipmi::new(&cfg.ipmi, epoch)?;
            bmc_waiters.push(Box::new(ipmi.waiter()));
            sources.push(Box::new(ipmi));
        }
        // Several BMCs: each one's chassis label is prefixed by its URL's host
        // (the first with a fresh reading is the host's `bmc_redfish` power).
        let several = cfg.redfish.len() > 1;
        for r in cfg.redfish.iter().filter(|r| r.enabled) {
            let prefix = if several { crate::sources::redfish::label_prefix(&r.url) } else { String::new() };
            let redfish = crate::sources::redfish::Redfish::new(r, prefix, epoch)?;
            bmc_waiters.push(Box::new(redfish.waiter()));
            bmc_closers.push(Box::new(redfish.closer()));
            // A poll in flight (one request), then the session's DELETE.
            close_within = close_within.max(r.timeout.0 * 2 + Duration::from_millis(500));
            sources.push(Box::new(redfish));
        }
        if crate::sources::nvml::decide(&cfg.nvml, &cfg.sysfs_root).is_ok() {
            let nvml = crate::sources::nvml::Nvml::new(&cfg.nvml)?;
            bmc_waiters.push(Box::new(nvml.waiter()));
            sources.push(Box::new(nvml));
        }
        let workers = sources.into_iter().map(Worker::spawn).collect::<std::io::Result<Vec<_>>>()?;
        let inventory = Inventory::read(&cfg);
        let model = PowerModel::new(
            &cfg.estimation,
            &inventory.cpu_model,
            inventory.sockets,
            inventory.threads,
            inventory.memory_bytes,
        );
        let state = if persist {
            match StateFile::open(&cfg.state_dir) {
                Ok(s) => {
                    tracing::info!(path = %s.path().display(), "host energy counters persist here");
                    Some(s)
                }
                Err(e) => {
                    tracing::warn!("{e}; host energy counters will restart from zero at each start");
                    None
                }
            }
        } else {
            None
        };
        let max_gap = (cfg.interval.0 * 4).max(Duration::from_secs(20));
        let host = HostPower::new(model, cfg.estimation.rapl_uplift, max_gap, state);
        Ok(Sampler {
            cfg,
            workers,
            host,
            inventory,
            errors: BTreeMap::new(),
            last_rescan: Duration::ZERO,
            last_accumulate: Duration::ZERO,
            push: None,
            bmc_waiters,
            epoch,
            bmc_closers,
            close_within,
        })
    }

    /// Waits, at most `within` each, for the BMC sources' first polls (`probe`).
    pub fn wait_for_bmc(&self, within: Duration) {
        for w in &self.bmc_waiters {
            w(within);
        }
    }

    /// Time zero of the agent's clock: the caller's `now` must be time since it.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Exports the pusher's self-metrics with every tick (only when pushing).
    pub fn set_push_stats(&mut self, stats: Arc<PushStats>) {
        self.push = Some(stats);
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Keeps RAPL counters read at least every 30 s when the interval is longer.
    pub fn keep_alive(&mut self, now: Duration) {
        if self.cfg.interval.0 > RAPL_MAX_READ_GAP && now.saturating_sub(self.last_accumulate) >= RAPL_MAX_READ_GAP {
            self.last_accumulate = now;
            for w in self.workers.iter().filter(|w| w.kind == Source::Rapl && !w.waiting) {
                let _ = w.commands.try_send(Command::Accumulate);
            }
        }
    }

    /// One sampling tick at monotonic time `now`.
    pub fn tick(&mut self, now: Duration) -> Snapshot {
        let started = Instant::now();
        if now.saturating_sub(self.last_rescan) >= self.cfg.rescan_interval.0 {
            self.last_rescan = now;
            self.inventory = Inventory::read(&self.cfg);
            for w in &self.workers {
                let _ = w.commands.try_send(Command::Discover);
            }
        }
        for w in &mut self.workers {
            if w.waiting {
                // A late answer to an earlier tick: too old to export, drop it.
                match w.outputs.try_recv() {
                    Ok(_) | Err(TryRecvError::Disconnected) => w.waiting = false,
                    Err(TryRecvError::Empty) => continue,
                }
            }
            w.waiting = w.commands.try_send(Command::Sample(now)).is_ok();
        }
        let deadline = started + self.cfg.sensor_timeout.0;
        let mut snap = Snapshot::default();
        let mut facts = HostFacts::default();
        for w in &mut self.workers {
            let answer = if w.waiting {
                w.outputs.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            } else {
                Err(RecvTimeoutError::Timeout)
            };
            match answer {
                Ok(out) => {
                    w.waiting = false;
                    facts.merge(&out.facts);
                    snap.samples.extend(out.samples);
                    snap.statuses.extend(out.statuses);
                    snap.off.extend(out.off.map(|why| (w.kind, why)));
                    for k in out.errors {
                        *self.errors.entry(k).or_insert(0) += 1;
                    }
                }
                Err(e) => {
                    let (sensor, path) = w.progress.current().unwrap_or_else(|| (w.kind.to_string(), String::new()));
                    let detail = match e {
                        RecvTimeoutError::Timeout => format!(
                            "{path}: no answer within sensor_timeout ({}); the source is skipped until it answers",
                            self.cfg.sensor_timeout
                        ),
                        RecvTimeoutError::Disconnected => format!("{} worker stopped", w.kind),
                    };
                    let reason = if matches!(e, RecvTimeoutError::Timeout) { Reason::Timeout } else { Reason::Io };
                    snap.statuses.push(Status {
                        source: w.kind,
                        sensor,
                        unit: "",
                        path,
                        result: Err(ReadError::new(reason, detail)),
                    });
                }
            }
        }
        // Sources refuse impossible readings where they read them; a sample
        // still outside the bounds is dropped here and counted.
        for source in crate::plausible::screen(&mut snap.samples) {
            let source = Source::ALL.iter().copied().find(|s| s.as_str() == source).unwrap_or(Source::Estimated);
            tracing::warn!(%source, "a sample outside the physical bounds was dropped");
            *self.errors.entry((source, Reason::Implausible)).or_insert(0) += 1;
        }
        let (host, host_errors) = self.host.update(now, &facts);
        for s in &snap.statuses {
            if let Err(e) = &s.result {
                *self.errors.entry((s.source, e.reason)).or_insert(0) += 1;
            }
        }
        for k in host_errors {
            *self.errors.entry(k).or_insert(0) += 1;
        }
        self.self_samples(&mut snap, host.as_ref(), started.elapsed());
        snap.host = host;
        snap
    }

    fn self_samples(&self, snap: &mut Snapshot, host: Option<&HostReading>, took: Duration) {
        if let Some(h) = host {
            let labels = vec![h.method.to_string(), h.method.quality().to_string()];
            snap.samples.push(Sample::new(&HOST_POWER, labels.clone(), h.watts));
            snap.samples.push(Sample::new(&HOST_ENERGY, labels, self.host.total(h.method)));
        }
        let inv = &self.inventory;
        snap.samples.push(Sample::new(
            &HOST_INFO,
            vec![
                inv.vendor.clone(),
                inv.product.clone(),
                inv.cpu_model.clone(),
                inv.sockets.to_string(),
                inv.threads.to_string(),
                inv.machine_id.clone(),
            ],
            1.0,
        ));
        for s in &snap.statuses {
            let up = if s.result.is_ok() { 1.0 } else { 0.0 };
            snap.samples.push(Sample::new(&SENSOR_UP, vec![s.source.to_string(), s.sensor.clone()], up));
        }
        for ((source, reason), n) in &self.errors {
            snap.samples.push(Sample::new(&SENSOR_ERRORS, vec![source.to_string(), reason.to_string()], *n as f64));
        }
        snap.samples.push(Sample::new(&AGENT_INFO, vec![env!("CARGO_PKG_VERSION").to_string()], 1.0));
        snap.samples.push(Sample::new(&SAMPLE_DURATION, vec![], took.as_secs_f64()));
        if let Some(p) = &self.push {
            snap.samples.extend(p.samples());
        }
    }

    /// Persists the host counters (shutdown).
    pub fn flush(&mut self) {
        self.host.flush();
    }

    /// Stops the Redfish poll threads and waits, bounded, for each to delete
    /// its session (a BMC has few session slots). Done once, on drop at the latest.
    pub fn close_bmc(&mut self) {
        // Stop them all first (a deadline of now only signals), then wait.
        for close in &self.bmc_closers {
            close(Instant::now());
        }
        let deadline = Instant::now() + self.close_within;
        for close in self.bmc_closers.drain(..) {
            close(deadline);
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.close_bmc();
    }
}
