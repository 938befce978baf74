//! The agent's loops: `run` (sampler thread + HTTP server + pusher until
//! SIGTERM/SIGINT, then a last sample pushed or spooled) and `once` (two
//! samples an interval apart, printed).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use domesday_model::vocab::Source;

use crate::config::AgentConfig;
use crate::push::PushHandle;
use crate::render::render;
use crate::sampler::Sampler;
use crate::server::{Exposition, Shared, router};
use crate::snapshot::{Snapshot, constant_labels};

/// Samples twice, `interval` apart, and returns the exposition (`once`).
pub fn once(cfg: AgentConfig) -> anyhow::Result<String> {
    let cfg = Arc::new(cfg);
    let mut sampler = Sampler::new(cfg.clone(), false).context("starting sensor workers")?;
    let start = sampler.epoch();
    sampler.tick(start.elapsed());
    std::thread::sleep(cfg.interval.0);
    sampler.wait_for_bmc(bmc_wait(&cfg));
    let snap = sampler.tick(start.elapsed());
    Ok(render(&snap, &constant_labels(&cfg)))
}

/// How long `once` and `probe` wait for the BMC and GPU sources' first polls.
fn bmc_wait(cfg: &AgentConfig) -> Duration {
    let redfish_timeout = cfg.redfish.iter().map(|r| r.timeout.0 * 3).max().unwrap_or_default();
    (cfg.ipmi.timeout.0 * 2).max(redfish_timeout).max(cfg.nvml.timeout.0) + Duration::from_millis(500)
}

/// Samples twice (at most a second apart) and returns the probe table.
pub fn probe(cfg: AgentConfig) -> anyhow::Result<String> {
    let cfg = Arc::new(cfg);
    let mut sampler = Sampler::new(cfg.clone(), false).context("starting sensor workers")?;
    let start = sampler.epoch();
    sampler.tick(start.elapsed());
    std::thread::sleep(cfg.interval.0.min(Duration::from_secs(1)));
    // A BMC answers in seconds: give its first poll the time its timeout allows.
    sampler.wait_for_bmc(bmc_wait(&cfg));
    let snap: Snapshot = sampler.tick(start.elapsed());
    let off = |on: bool, why: &str| if on { None } else { Some(why.to_string()) };
    // A source that runs can still find no driver (NVML under `auto`).
    let snap_off = |source: Source| snap.off.iter().find(|(s, _)| *s == source).map(|(_, why)| why.clone());
    let enabled = [
        (Source::Rapl, off(cfg.sources.rapl, "disabled in [sources]")),
        (Source::Hwmon, off(cfg.sources.hwmon, "disabled in [sources]")),
        (Source::Thermal, off(cfg.sources.thermal, "disabled in [sources]")),
        (Source::Ipmi, off(cfg.ipmi.enabled, "off: no [ipmi] table (or enabled = false)")),
        (Source::Redfish, off(cfg.redfish.iter().any(|r| r.enabled), "off: no [redfish] table (or enabled = false)")),
        (
            Source::Nvml,
            crate::sources::nvml::decide(&cfg.nvml, &cfg.sysfs_root).err().or_else(|| snap_off(Source::Nvml)),
        ),
    ];
    let inv = sampler.inventory();
    let mut out = format!(
        "host {} (site {}): {} {}, {} × {} socket(s), {} threads\n\n",
        cfg.host, cfg.site, inv.vendor, inv.product, inv.cpu_model, inv.sockets, inv.threads
    );
    out.push_str(&crate::probe::table(&snap, &enabled));
    Ok(out)
}

/// Runs until SIGTERM or SIGINT: the sampler on its own thread, `/metrics` on
/// tokio, and with `[push]` the pusher on its own thread.
pub fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Bind before sampling so a taken port fails fast, before any state is touched.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(cfg.listen))
        .with_context(|| format!("cannot listen on {} (set `listen` or --listen)", cfg.listen))?;
    let mut sampler = Sampler::new(cfg.clone(), true).context("starting sensor workers")?;
    let pushing = match &cfg.push {
        Some(p) => Some(crate::push::start(&cfg, p).context("starting the push to the collector")?),
        None => None,
    };
    let (mut push, push_thread, push_stopping) = match pushing {
        Some(p) => {
            sampler.set_push_stats(p.stats);
            (Some(p.handle), Some(p.thread), Some(p.stopping))
        }
        None => (None, None, None),
    };
    let constant = constant_labels(&cfg);
    // The agent's clock is the sampler's, on which BMC readings are stamped.
    let start = sampler.epoch();
    let wall = SystemTime::now();
    let t0 = start.elapsed();
    let first = sampler.tick(t0);
    if let Some(p) = push.as_mut() {
        p.offer(&first, t0, wall);
    }
    let shared: Shared = Arc::new(RwLock::new(Exposition::new(render(&first, &constant))));
    let (stop_tx, stop_rx) = channel::<()>();
    let sampler_shared = shared.clone();
    let interval = cfg.interval.0;
    let sampler_thread = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || {
            sample_loop(&mut sampler, &sampler_shared, &constant, start, interval, &stop_rx, push);
            sampler.flush();
            sampler.close_bmc();
        })
        .context("starting the sampler thread")?;
    let scheme = if cfg.web.as_ref().is_some_and(|w| w.tls.is_some()) { "https" } else { "http" };
    let basic_auth = cfg.web.as_ref().is_some_and(|w| !w.users.is_empty());
    tracing::info!(listen = %cfg.listen, scheme, basic_auth, site = %cfg.site, host = %cfg.host, interval = %cfg.interval, "domesday-agent running");
    let served = rt.block_on(serve_metrics(&cfg, listener, shared));
    tracing::info!("shutting down: a last sample, pushed or spooled; flushing host energy counters");
    if let Some(s) = &push_stopping {
        // Ticks still queued, and the last one, get one bounded attempt, else go to the spool.
        s.store(true, Ordering::Relaxed);
    }
    let _ = stop_tx.send(());
    if sampler_thread.join().is_err() {
        tracing::error!("sampler thread panicked");
    }
    // The sampler thread dropped its push handle: the pusher drains and returns.
    if let Some(t) = push_thread
        && t.join().is_err()
    {
        tracing::error!("pusher thread panicked");
    }
    served.context("HTTP server failed")
}

/// Serves `/metrics` until SIGTERM/SIGINT: plain, or with the web
/// configuration's TLS and basic auth (the file read again on SIGHUP).
async fn serve_metrics(cfg: &AgentConfig, listener: tokio::net::TcpListener, shared: Shared) -> std::io::Result<()> {
    let mut app = router(shared);
    let web = match (&cfg.web, &cfg.web_config_file) {
        (Some(web), Some(path)) => {
            // The gate is there even without users, so that a reload can add some.
            let auth = crate::web_config::BasicAuth::new(web.users.clone());
            app = app.layer(axum::middleware::from_fn_with_state(auth.clone(), crate::web_config::require_basic_auth));
            let tls = match web.tls.clone().map(domesday_runtime::tls::TlsReloader::load).transpose() {
                Ok(t) => t,
                // Checked at load; only a file changed since then can fail here.
                Err(e) => return Err(std::io::Error::other(format!("web_config_file: {e}"))),
            };
            Some(crate::web_config::WebReloader { path: path.clone(), auth, tls })
        }
        _ => None,
    };
    let tls = web.as_ref().and_then(|w| w.tls.clone());
    let hangup = tokio::spawn(crate::web_config::reload_on_hangup(web));
    let served = match tls {
        Some(tls) => {
            use axum::serve::ListenerExt;
            let listener = domesday_runtime::tls::TlsListener::new(listener, tls)?.tap_io(|_| ());
            axum::serve(listener, app).with_graceful_shutdown(domesday_runtime::shutdown_signal()).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(domesday_runtime::shutdown_signal()).await,
    };
    hangup.abort();
    served
}

fn sample_loop(
    sampler: &mut Sampler,
    shared: &Shared,
    constant: &[(String, String)],
    start: Instant,
    interval: Duration,
    stop: &Receiver<()>,
    mut push: Option<PushHandle>,
) {
    let mut next = interval;
    loop {
        // Wake for the tick, or earlier for RAPL keep-alive reads on long intervals.
        let now = start.elapsed();
        let wait = next.saturating_sub(now).min(crate::config::RAPL_MAX_READ_GAP);
        match stop.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                final_tick(sampler, shared, constant, start, push);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = start.elapsed();
        sampler.keep_alive(now);
        if now < next {
            continue;
        }
        let wall = SystemTime::now();
        let snap = sampler.tick(now);
        if let Some(p) = push.as_mut() {
            p.offer(&snap, now, wall);
        }
        let exp = Exposition::new(render(&snap, constant));
        match shared.write() {
            Ok(mut g) => *g = exp,
            Err(_) => tracing::error!("exposition lock poisoned"),
        }
        // Skip missed ticks rather than bursting to catch up.
        while next <= start.elapsed() {
            next += interval;
        }
    }
}

/// At shutdown: one last tick, pushed whatever `push.interval` says, so the
/// collector gets the energy up to the stop (with a push interval of an hour,
/// up to an hour of it would otherwise wait for the next start). The pusher is
/// already stopping: it gets one bounded attempt, else it goes to the spool and
/// is sent at the next start.
fn final_tick(
    sampler: &mut Sampler,
    shared: &Shared,
    constant: &[(String, String)],
    start: Instant,
    push: Option<PushHandle>,
) {
    let now = start.elapsed();
    let wall = SystemTime::now();
    let snap = sampler.tick(now);
    if let Some(mut p) = push {
        p.offer_now(&snap, now, wall);
    }
    match shared.write() {
        Ok(mut g) => *g = Exposition::new(render(&snap, constant)),
        Err(_) => tracing::error!("exposition lock poisoned"),
    }
}
