//! The PostgreSQL ledger store: the connection (the `db` URL and its password, through the rust-postgres project's
//! synchronous client, for a writer that is a dedicated thread like SQLite's), the versioned schema ([`schema`]),
//! the writer ([`store::PgWriter`], the same booking rules as SQLite's, one transaction per call, safe with several
//! collectors on one database) and the reader ([`read::PgReader`]).
//!
//! The connection is plain TCP (`NoTls`): run the database on the collector's machine (127.0.0.1) or reach it
//! over a private network or tunnel. The password travels only inside the SCRAM exchange when the server asks
//! for `scram-sha-256`, which it should (docs/scaling.md).

pub mod read;
pub mod schema;
pub mod store;
#[cfg(test)]
pub mod test_cluster;
pub mod totals;

use postgres::{Client, NoTls};

use crate::db::PgTarget;

/// PostgreSQL ledger errors. The password is never in them.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "PostgreSQL ledger {target}: cannot connect ({source}); check that the server listens there, and the \
             user, database and password (db_password_file or PGPASSWORD)"
    )]
    Connect {
        target: String,
        #[source]
        source: postgres::Error,
    },
    #[error("PostgreSQL ledger: {0}")]
    Db(#[from] postgres::Error),
    #[error(
        "PostgreSQL ledger schema version {found} is newer than this collector knows ({known}): a newer \
         domesday-collector migrated it; run that version or a newer one"
    )]
    NewerSchema { found: i32, known: i32 },
    #[error("PostgreSQL ledger: {0}; restore the database from a backup")]
    Corrupt(String),
}

/// Runs `f`, which uses the synchronous client, where it may: the client drives its connection with a runtime of
/// its own, which cannot start on a thread already inside one (an async task of `serve`). There, `f` runs on a
/// scoped thread of its own, which the calling thread waits for (as it would for a SQLite read).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Opens a new connection to the ledger's database: how a writer or a reader replaces one the server closed.
pub type Reconnect = Box<dyn Fn() -> Result<Client, PgError> + Send + Sync>;

/// A [`Reconnect`] to `target`.
pub fn reconnect_to(target: &PgTarget) -> Reconnect {
    let target = target.clone();
    Box::new(move || connect(&target))
}

/// `client`, or a new connection from `reconnect` when it is missing or the server closed it (a restart, a
/// terminated backend). After a failed call (`suspect`) the connection is probed first: the client may not know
/// yet that the server closed it. The request that failed is retried by its sender; the next one runs on the new
/// connection.
fn live<'a>(
    client: &'a mut Option<Client>,
    suspect: bool,
    reconnect: Option<&Reconnect>,
) -> Result<&'a mut Client, PgError> {
    let broken = |c: &mut Client| c.is_closed() || suspect && c.is_valid(PROBE_WITHIN).is_err();
    if client.as_mut().is_none_or(broken)
        && let Some(r) = reconnect
    {
        let old = client.take();
        off_runtime(move || drop(old));
        *client = Some(r()?);
        tracing::info!("reconnected to the PostgreSQL ledger");
    }
    client.as_mut().ok_or_else(|| PgError::Corrupt("the ledger's connection is closed".into()))
}

/// How long the probe of a suspect connection may take.
const PROBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to the database `target` names, with its password.
pub fn connect(target: &PgTarget) -> Result<Client, PgError> {
    off_runtime(|| {
        target.config().connect(NoTls).map_err(|source| PgError::Connect { target: target.to_string(), source })
    })
}

/// Connects and brings the schema to this build's version (see [`schema::migrate`]).
pub fn open(target: &PgTarget) -> Result<(Client, schema::Migrated), PgError> {
    off_runtime(|| {
        let mut client = connect(target)?;
        let migrated = schema::migrate(&mut client)?;
        Ok((client, migrated))
    })
}
