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
use crate::leader::{Leadership, Timing};
use crate::ledger::pg::{read::PgReader, reconnect_to, store::PgWriter};
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
    // On PostgreSQL several collectors may share the ledger: the site-wide work is the elected leader's.
    let (store, reader, sqlite_db, leadership): (Box<dyn LedgerWriter>, Arc<dyn LedgerReader>, Option<PathBuf>, _) =
        match &cfg.db {
            LedgerDb::Sqlite(path) => {
                let db = path.clone();
                let store =
                    SqliteWriter::open(&db, policy).with_context(|| format!("opening the ledger {}", db.display()))?;
                if let Err(e) = store.preallocate_wal() {
                    // Only a speed-up (commits overwrite instead of append): not a reason to refuse to start.
                    tracing::warn!(db = %db.display(), error = %e, "could not preallocate the ledger's write-ahead log; commits append to it");
                }
                (Box::new(store), Arc::new(SqliteReader::new(&db, policy)), Some(db), Leadership::always())
            }
            LedgerDb::Postgres(target) => {
                let store = PgWriter::open(target, policy).context("opening the ledger")?;
                let reader = PgReader::open(target, policy).context("opening the ledger's reader")?;
                let leadership = Leadership::elect(reconnect_to(target), Timing::default())
                    .context("starting the leader election")?;
                (Box::new(store), Arc::new(reader), None, leadership)
            }
        };
    let stats = Arc::new(Mutex::new(Stats::with_totals(reader.site_totals().context("reading ledger totals")?)));
    let (s, t) = (stats.clone(), stats.clone());
    let leading = leadership.watch();
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
        // Retention is site-wide work: only the leader prunes.
        Box::new({
            let leading = leading.clone();
            move || *leading.borrow()
        }),
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
    let meter_stats = Arc::new(crate::meters::reader::MeterStats::default());
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
    let (stop_site_work, site_work_stopped) = tokio::sync::watch::channel(false);
    let site_work = tokio::spawn(site_work(
        SiteWork {
            cfg: cfg.clone(),
            sites: sites.clone(),
            writer: handle.clone(),
            reader: reader.clone(),
            meter_stats: meter_stats.clone(),
            carbon: carbon.clone(),
            site_samples: site_samples.clone(),
        },
        leading.clone(),
        site_work_stopped,
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
        leading,
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
    sync.abort();
    let _ = sync.await;
    if let Some((handle, task)) = forward {
        // Closing the queue lets the forwarder finish what is queued (to upstream or the spool).
        drop(handle);
        let left = stop_by.saturating_duration_since(Instant::now()).saturating_sub(WRITER_RESERVE);
        let _ = tokio::time::timeout(left, task).await;
    }
    let _ = stop_site_work.send(true);
    let _ = site_work.await;
    // Closing the lock's session frees the lock for the other collectors at once.
    // Bounded: a database that no longer answers must not hold the shutdown up.
    let _ = tokio::time::timeout(LEADERSHIP_STOP_WITHIN, tokio::task::spawn_blocking(move || leadership.stop())).await;
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

/// What the site-wide work needs.
struct SiteWork {
    cfg: CollectorConfig,
    sites: Vec<Site>,
    writer: writer::WriterHandle,
    reader: Arc<dyn LedgerReader>,
    meter_stats: Arc<crate::meters::reader::MeterStats>,
    carbon: Option<Arc<crate::carbon::service::CarbonService>>,
    site_samples: Arc<Mutex<Vec<domesday_model::exposition::Sample>>>,
}

impl SiteWork {
    /// Starts the facility meter readers, the `[pull]` jobs and the site gauges.
    fn start(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .cfg
            .pull
            .iter()
            .cloned()
            .map(|p| tokio::spawn(crate::pull::run(p, self.cfg.ingest.clone(), self.writer.clone())))
            .collect();
        tasks.extend(crate::meters::reader::spawn_all(
            &self.sites,
            self.cfg.ledger.gap.0,
            &self.writer,
            &self.meter_stats,
            &self.reader,
        ));
        tasks.push(tokio::spawn(crate::site_metrics::run(
            self.reader.clone(),
            self.cfg.clone(),
            self.sites.clone(),
            self.carbon.clone(),
            self.site_samples.clone(),
        )));
        tasks
    }
}

/// Runs the site-wide work while `leading` says so, until `stop`: started on gaining the leadership, stopped at
/// once on losing it (its site gauges withdrawn, so that only the leader exports them). A closed `leading` (the
/// election ended) counts as not leading.
async fn site_work(
    work: SiteWork,
    mut leading: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            l = leading.wait_for(|l| *l) => if l.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        tracing::info!("leading the site-wide work: facility meter readers, pulls, site gauges, retention");
        let tasks = work.start();
        let lost = tokio::select! {
            l = leading.wait_for(|l| !*l) => l.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        };
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        if let Ok(mut s) = work.site_samples.lock() {
            s.clear();
        }
        if !lost {
            return;
        }
        tracing::warn!(
            "no longer leading the site-wide work: meter readers, pulls and site gauges stopped until this collector leads again"
        );
    }
}

/// The longest a shutdown takes, from the signal to the exit (systemd's stop
/// timeout is longer).
pub const SHUTDOWN_WITHIN: Duration = Duration::from_secs(10);
/// How long the requests in flight get to finish after the signal.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);
/// How long the leader election gets to close its session at shutdown.
const LEADERSHIP_STOP_WITHIN: Duration = Duration::from_secs(2);
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
