//! The PostgreSQL ledger store: the connection (the `db` URL and its password, through the rust-postgres project's
//! synchronous client, for a writer that is a dedicated thread like SQLite's), the versioned schema ([`schema`]),
//! the writer ([`store::PgWriter`], the same booking rules as SQLite's, one transaction per call, safe with several
//! collectors on one database) and the reader ([`read::PgReader`]).
//!
//! The connection is plain TCP (`NoTls`): run the database on the collector's machine (127.0.0.1) or reach it
//! over a private network or tunnel. The password travels only inside the SCRAM exchange when the server asks
//! for `scram-sha-256`, which it should (docs/scaling.md).

pub mod copy;
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
    #[error("PostgreSQL ledger: {}", server_message(.0))]
    Db(#[from] postgres::Error),
    #[error(
        "PostgreSQL ledger schema version {found} is newer than this collector knows ({known}): a newer \
         domesday-collector migrated it; run that version or a newer one"
    )]
    NewerSchema { found: i32, known: i32 },
    #[error("PostgreSQL ledger: {0}; restore the database from a backup")]
    Corrupt(String),
}

/// What the server said (its message and SQLSTATE code), when it said something: the client's own `Display` is
/// only "db error" then.
fn server_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
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

/// How long a statement waits for a lock another session holds (PostgreSQL's `lock_timeout`) before it fails, its
/// request answered "503, retry": SQLite's busy timeout, the same 10 s.
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the probe of a suspect connection may take.
const PROBE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to the database `target` names, with its password; the session's statements wait at most
/// [`LOCK_TIMEOUT`] for a lock.
pub fn connect(target: &PgTarget) -> Result<Client, PgError> {
    let mut config = target.config();
    config.options(&format!("-c lock_timeout={}", LOCK_TIMEOUT.as_millis()));
    off_runtime(|| config.connect(NoTls).map_err(|source| PgError::Connect { target: target.to_string(), source }))
}

/// Connects and brings the schema to this build's version (see [`schema::migrate`]).
pub fn open(target: &PgTarget) -> Result<(Client, schema::Migrated), PgError> {
    off_runtime(|| {
        let mut client = connect(target)?;
        let migrated = schema::migrate(&mut client)?;
        Ok((client, migrated))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::store::PgWriter;
    use super::test_cluster::Cluster;
    use crate::ledger::{Batch, CounterSample, LedgerWriter, Policy};

    /// Another session holding the ledger's tables (an operator's `LOCK TABLE`, a transaction left open in `psql`)
    /// makes a write fail after the lock timeout, as SQLite's busy timeout does, so that the request is answered
    /// "503, retry" and the writer goes on, instead of waiting for that session forever with every request queued
    /// behind it; once the lock is released the retry is booked.
    #[test]
    fn a_write_blocked_by_another_session_fails_after_the_lock_timeout_and_its_retry_is_booked() {
        let cluster = Cluster::start();
        let target = cluster.target();
        let mut w = PgWriter::open(&target, Policy::default()).expect("open");
        let t0 = 1_767_225_600_000;
        let batch = move |i: i64| Batch {
            samples: vec![CounterSample::host("s", "h0", "rapl", "measured", t0 + i * 10_000, Some(i * 1_000_000))],
            ..Batch::default()
        };
        w.apply(&[batch(0)], t0 + 3_600_000).expect("apply");
        let mut other = super::connect(&target).expect("connect");
        let tables: Vec<String> = other
            .query("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'", &[])
            .expect("tables")
            .iter()
            .map(|r| r.get(0))
            .collect();
        other.batch_execute(&format!("BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE", tables.join(", "))).expect("lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let r = w.apply(&[batch(1)], t0 + 3_600_000).map(|o| o[0].booked);
            let _ = tx.send(r.map_err(|e| e.to_string()));
            w
        });
        let blocked = rx.recv_timeout(super::LOCK_TIMEOUT + Duration::from_secs(20));
        other.batch_execute("ROLLBACK").expect("release");
        let mut w = writer.join().expect("writer");
        match blocked {
            Ok(Err(e)) => assert!(e.contains("lock timeout"), "{e}"),
            other => panic!("the blocked write did not fail after the lock timeout: {other:?}"),
        }
        assert_eq!(w.apply(&[batch(1)], t0 + 3_600_000).expect("the retry")[0].booked, 1);
    }
}
