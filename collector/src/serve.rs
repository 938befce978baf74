//! `serve`: opens the ledger, starts the writer thread, the pulls and the
//! facility meter readers, binds and serves until SIGTERM/SIGINT, then lets
//! in-flight requests finish and the writer commit what is queued before
//! exiting.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::api::{AppState, Stats, router};
use crate::config::{CollectorConfig, Site};
use crate::ledger::LedgerReader;
use crate::ledger::sqlite::{SqliteReader, SqliteWriter};
use crate::ledger::{checkpoint, writer};

/// Runs the collector with validated config until `shutdown` completes.
pub async fn serve(
    cfg: CollectorConfig,
    sites: Vec<Site>,
    read_hash: Option<[u8; 32]>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let policy = cfg.ledger.policy();
    let store =
        SqliteWriter::open(&cfg.db, policy).with_context(|| format!("opening the ledger {}", cfg.db.display()))?;
    if let Err(e) = store.preallocate_wal() {
        // Only a speed-up (commits overwrite instead of append): not a reason to refuse to start.
        tracing::warn!(db = %cfg.db.display(), error = %e, "could not preallocate the ledger's write-ahead log; commits append to it");
    }
    let reader = Arc::new(SqliteReader::new(&cfg.db, policy));
    let stats = Arc::new(Mutex::new(Stats::with_totals(reader.site_totals().context("reading ledger totals")?)));
    let (s, t) = (stats.clone(), stats.clone());
    let (handle, writer_thread) = writer::spawn(
        Box::new(store),
        Box::new(move |b, o| {
            if let Ok(mut st) = s.lock() {
                st.committed(b, o);
            }
        }),
        Box::new(move |totals| {
            if let Ok(mut st) = t.lock() {
                st.ledger_totals(totals);
            }
        }),
        cfg.ledger.prune_every.0,
    )
    .context("starting the ledger writer")?;
    // The WAL is copied into the database off the writer's thread: its commits never wait for that copy.
    let checkpointer = match checkpoint::spawn(&cfg.db, policy.fsync_each_commit) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(db = %cfg.db.display(), error = %e, "no background checkpoints: the writer checkpoints itself");
            None
        }
    };
    // Commits of other processes (`import-meters`, `correct`, `swap-meter`) reach the
    // site energy counters at the writer's next group; this wakes it when no data comes.
    let sync = {
        let (h, every) = (handle.clone(), cfg.gauges_refresh.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                if h.sync().await == Err(writer::SubmitError::Stopped) {
                    break;
                }
            }
        })
    };
    let pulls: Vec<_> = cfg
        .pull
        .iter()
        .cloned()
        .map(|p| tokio::spawn(crate::pull::run(p, cfg.ingest.clone(), handle.clone())))
        .collect();
    let meter_stats = Arc::new(crate::meters::reader::MeterStats::default());
    let ledger: Arc<dyn LedgerReader> = reader.clone();
    let readers = crate::meters::reader::spawn_all(&sites, cfg.ledger.gap.0, &handle, &meter_stats, &ledger);
    let carbon = match &cfg.carbon {
        Some(c) => Some(Arc::new(c.build().map_err(|e| anyhow::anyhow!("{e}"))?)),
        None => None,
    };
    let forward = match &cfg.forward {
        Some(f) => {
            let default_dir =
                cfg.db.parent().map(|p| p.join("forward-spool")).unwrap_or_else(|| "forward-spool".into());
            Some(crate::forward::spawn(f.clone(), default_dir)?)
        }
        None => None,
    };
    let site_samples = Arc::new(Mutex::new(Vec::new()));
    let gauges = tokio::spawn(crate::site_metrics::run(
        reader.clone(),
        cfg.clone(),
        sites.clone(),
        carbon.clone(),
        site_samples.clone(),
    ));
    let state = Arc::new(AppState {
        sites,
        read_hash,
        host_silence_ms: cfg.ledger.gap.0.as_millis() as i64,
        limits: cfg.ingest.clone(),
        writer: handle,
        reader,
        stats,
        db_path: cfg.db.clone(),
        carbon_config: cfg.carbon.clone(),
        carbon,
        site_samples,
        meter_stats,
        declarations: cfg.reports.declarations.clone(),
        forward: forward.as_ref().map(|(h, _)| h.clone()),
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(listen = %listener.local_addr()?, db = %cfg.db.display(), "domesday-collector serving");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("HTTP server failed")?;
    gauges.abort();
    sync.abort();
    let _ = sync.await;
    if let Some((handle, task)) = forward {
        // Closing the queue lets the forwarder finish what is queued (to upstream or the spool).
        drop(handle);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    }
    for p in pulls.into_iter().chain(readers) {
        p.abort();
        let _ = p.await;
    }
    // The router (and with it the last writer handle) is gone: the writer drains and stops.
    tokio::task::spawn_blocking(move || writer_thread.join()).await.ok();
    tokio::task::spawn_blocking(move || drop(checkpointer)).await.ok();
    tracing::info!("ledger writer stopped; bye");
    Ok(())
}

/// Binds the configured address with a clear error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (set `listen` or --listen)"))
}

/// Whether `path` looks like an existing ledger (for the read-only `energy` command).
pub fn ledger_exists(path: &Path) -> bool {
    path.is_file()
}
