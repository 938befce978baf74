//! `serve`: opens the ledger, starts the writer thread, the pulls and the
//! facility meter readers, binds and serves until SIGTERM/SIGINT, then lets
//! in-flight requests finish (5 s at most), the forwarder spool what it holds
//! and the writer commit what is queued, materialize its journal and
//! checkpoint the WAL, exiting within [`SHUTDOWN_WITHIN`] of the signal.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::{AppState, Stats, router};
use crate::config::{CollectorConfig, Site};
use crate::db::LedgerDb;
use crate::ledger::pg::{read::PgReader, store::PgWriter};
use crate::ledger::sqlite::{SqliteReader, SqliteWriter};
use crate::ledger::{LedgerReader, LedgerWriter};
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
    // The store `db` names. SQLite's write-ahead log is preallocated and checkpointed off the writer's thread;
    // PostgreSQL does its own.
    let (store, reader, sqlite_db): (Box<dyn LedgerWriter>, Arc<dyn LedgerReader>, Option<PathBuf>) = match &cfg.db {
        LedgerDb::Sqlite(path) => {
            let db = path.clone();
            let store =
                SqliteWriter::open(&db, policy).with_context(|| format!("opening the ledger {}", db.display()))?;
            if let Err(e) = store.preallocate_wal() {
                // Only a speed-up (commits overwrite instead of append): not a reason to refuse to start.
                tracing::warn!(db = %db.display(), error = %e, "could not preallocate the ledger's write-ahead log; commits append to it");
            }
            (Box::new(store), Arc::new(SqliteReader::new(&db, policy)), Some(db))
        }
        LedgerDb::Postgres(target) => {
            let store = PgWriter::open(target, policy).context("opening the ledger")?;
            let reader = PgReader::open(target, policy).context("opening the ledger's reader")?;
            (Box::new(store), Arc::new(reader), None)
        }
    };
    let stats = Arc::new(Mutex::new(Stats::with_totals(reader.site_totals().context("reading ledger totals")?)));
    let (s, t) = (stats.clone(), stats.clone());
    let (handle, writer_thread) = writer::spawn(
        store,
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
    let checkpointer = match &sqlite_db {
        Some(db) => match checkpoint::spawn(db, policy.fsync_each_commit) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(db = %db.display(), error = %e, "no background checkpoints: the writer checkpoints itself");
                None
            }
        },
        None => None,
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
            // Next to a SQLite ledger; in the working directory with PostgreSQL, unless `forward.spool_dir` says.
            let beside = sqlite_db.as_deref().and_then(Path::parent);
            let default_dir = beside.map(|p| p.join("forward-spool")).unwrap_or_else(|| "forward-spool".into());
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
        db_path: sqlite_db.clone(),
        carbon_config: cfg.carbon.clone(),
        carbon,
        site_samples,
        meter_stats,
        declarations: cfg.reports.declarations.clone(),
        forward: forward.as_ref().map(|(h, _)| h.clone()),
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let tls = cfg.tls.as_ref().and_then(|t| t.loaded.clone());
    let hangup = tokio::spawn(domesday_runtime::tls::reload_on_hangup(tls.clone()));
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %listener.local_addr()?, scheme, db = %cfg.db, "domesday-collector serving");
    // The signal starts the drain; `stop_by` bounds the whole shutdown.
    let (signalled_tx, signalled) = tokio::sync::oneshot::channel::<Instant>();
    let signal = async move {
        shutdown.await;
        tracing::info!("stopping: finishing the requests in flight");
        let _ = signalled_tx.send(Instant::now());
    };
    // Boxed so that it can be dropped (with the router and its writer handle) after a timed-out drain,
    // and so that the plain and the TLS server are one type.
    let mut server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match tls {
        Some(tls) => {
            use axum::serve::ListenerExt;
            // `tap_io` gives the TLS listener axum's `ConnectInfo<SocketAddr>` (the peer address).
            let listener = domesday_runtime::tls::TlsListener::new(listener, tls)?.tap_io(|_| ());
            Box::pin(axum::serve(listener, app).with_graceful_shutdown(signal).into_future())
        }
        None => Box::pin(axum::serve(listener, app).with_graceful_shutdown(signal).into_future()),
    };
    let mut signalled = std::pin::pin!(signalled);
    let stop_by = tokio::select! {
        served = &mut server => {
            served.context("HTTP server failed")?;
            signalled.await.unwrap_or_else(|_| Instant::now()) + SHUTDOWN_WITHIN
        }
        at = &mut signalled => {
            let stop_by = at.unwrap_or_else(|_| Instant::now()) + SHUTDOWN_WITHIN;
            match tokio::time::timeout(DRAIN_WITHIN, &mut server).await {
                Ok(served) => served.context("HTTP server failed")?,
                // A request still in flight is one the sender has not had an answer to:
                // it retries it, and what was committed is committed.
                Err(_) => tracing::warn!(within = ?DRAIN_WITHIN, "requests still in flight at shutdown: their connections are closed"),
            }
            stop_by
        }
    };
    hangup.abort();
    gauges.abort();
    sync.abort();
    let _ = sync.await;
    if let Some((handle, task)) = forward {
        // Closing the queue lets the forwarder finish what is queued (to upstream or the spool).
        drop(handle);
        let left = stop_by.saturating_duration_since(Instant::now()).saturating_sub(WRITER_RESERVE);
        let _ = tokio::time::timeout(left, task).await;
    }
    for p in pulls.into_iter().chain(readers) {
        p.abort();
        let _ = p.await;
    }
    // The router (and with it the last writer handle) is gone: the writer commits what
    // is queued, writes its journal to the tables, checkpoints the WAL and stops.
    drop(server);
    while !writer_thread.is_finished() && Instant::now() < stop_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if writer_thread.is_finished() {
        let _ = writer_thread.join();
        // The writer's last checkpoint is done: the checkpointer's thread stops with it.
        tokio::task::spawn_blocking(move || drop(checkpointer)).await.ok();
        tracing::info!("ledger writer stopped; bye");
    } else {
        // Every answered request is committed (2xx only after the commit); what is left
        // (the journal's materialization) is done by the next start.
        tracing::warn!(within = ?SHUTDOWN_WITHIN, "the ledger writer has not finished; exiting, the next start completes its work");
    }
    Ok(())
}

/// The longest a shutdown takes, from the signal to the exit (systemd's stop
/// timeout is longer).
pub const SHUTDOWN_WITHIN: Duration = Duration::from_secs(10);
/// How long the requests in flight get to finish after the signal.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);
/// Time kept for the ledger writer at the end of the shutdown.
const WRITER_RESERVE: Duration = Duration::from_secs(2);

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
