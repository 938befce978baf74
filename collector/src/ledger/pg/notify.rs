//! Commits of other sessions told to the writer of `serve`: a write transaction that books energy sends
//! `NOTIFY domesday_ledger`, delivered at its commit; the writer listens, and when another session (the
//! `import-meters`, `correct` and `swap-meter` commands, another collector) sent one it reads the totals again,
//! as SQLite's writer does when `PRAGMA data_version` moves.

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, SimpleQueryMessage, Transaction};

use super::PgError;

/// Inside a transaction that booked energy: the listeners hear of it at its commit (not at all on a rollback).
pub fn announce(tx: &mut Transaction<'_>) -> Result<(), PgError> {
    tx.batch_execute("NOTIFY domesday_ledger")?;
    Ok(())
}

/// Listens on `client` (again each time: a new connection after a reconnection listens too) and says whether
/// another session announced a commit since the last call. The first call on a connection starts listening.
pub fn changed_elsewhere(client: &mut Client) -> Result<bool, PgError> {
    let mut me = None;
    for m in client.simple_query("LISTEN domesday_ledger; SELECT pg_backend_pid()")? {
        if let SimpleQueryMessage::Row(r) = m {
            me = r.get(0).and_then(|v| v.parse::<i32>().ok());
        }
    }
    let mut changed = false;
    let mut notifications = client.notifications();
    let mut pending = notifications.iter();
    while let Some(n) = pending.next()? {
        changed |= Some(n.process_id()) != me;
    }
    Ok(changed)
}
