//! Process plumbing that `domesday-agent` and `domesday-collector` share and
//! that has no place in `model/` (which does no I/O): the signal that starts a
//! graceful shutdown, the log set-up, and TLS serving (`tls`). Nothing here knows about sensors,
//! ledgers or metrics.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes, `kill`), the
/// signals on which both binaries stop gracefully: what is in flight is
/// flushed, host counters are persisted, the ledger writer drains.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Logs to stderr at the level `DOMESDAY_LOG` sets (an `EnvFilter` directive
/// such as `debug` or `domesday_collector=trace`; `info` by default), with
/// colours only on a terminal so that journald and log files get plain text.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOMESDAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub mod tls;
