//! `serve`'s WAL checkpointer: a thread with a connection of its own that
//! copies the write-ahead log into the database (`PRAGMA
//! wal_checkpoint(PASSIVE)`) every [`CHECKPOINT_EVERY`].
//!
//! Why: SQLite's automatic checkpoint runs inside the commit that takes the WAL
//! past its threshold, on the ledger writer's thread, and copies every page
//! written since the last one into the database, then fsyncs it (16,384 pages,
//! 64 MiB, with `synchronous=FULL`), while every request in the writer's queue
//! waits. Done here, a little at a time, the copying and its fsync leave the
//! writer's thread: a passive checkpoint takes no write lock and waits for no
//! reader or writer, so the writer commits meanwhile. The writer keeps its
//! automatic checkpoint, which then finds almost every frame already copied
//! (only the commits since the last pass), and which is what lets SQLite start
//! the WAL over from its beginning, so it stays within its preallocated size.

use std::path::Path;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// How often the WAL is copied into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// A pass longer than this is logged (it delayed no request, but the disk was slow).
const SLOW_PASS: Duration = Duration::from_secs(1);

/// The running checkpointer; dropping it stops the thread and waits for it.
pub struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the checkpointer of the ledger at `db` (already opened and migrated
/// by its writer). `full_sync`: the database is fsynced after each pass, as
/// `synchronous=FULL` does for the writer's own checkpoints.
pub fn spawn(db: &Path, full_sync: bool) -> Result<Checkpointer, StoreError> {
    let open_err = |e: String| StoreError::Open { path: db.display().to_string(), message: e };
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.pragma_update(None, "synchronous", if full_sync { "FULL" } else { "NORMAL" })?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("ledger-checkpoint".into())
        .spawn(move || {
            // Until stopped: the writer's last commit and SQLite's checkpoint at its close do the rest.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                let t = Instant::now();
                let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                match pass {
                    Ok((frames, copied)) if t.elapsed() >= SLOW_PASS => {
                        tracing::info!(
                            took_ms = t.elapsed().as_millis() as u64,
                            frames,
                            copied,
                            "ledger checkpoint: slow pass (off the writer's thread)"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger checkpoint failed; the writer's own checkpoint takes over")
                    }
                }
            }
        })
        .map_err(|e| open_err(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows in table `t` of the database file alone (a copy without its WAL).
    fn rows_in_file(db: &Path, copy: &Path) -> i64 {
        std::fs::copy(db, copy).expect("copy");
        let c = Connection::open(copy).expect("open copy");
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap_or(-1)
    }

    #[test]
    fn commits_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("ledger.db");
        let w = Connection::open(&db).expect("open");
        w.pragma_update(None, "journal_mode", "WAL").expect("wal");
        // The writer never checkpoints: whatever reaches the file was copied by the checkpointer.
        w.pragma_update(None, "wal_autocheckpoint", 0).expect("no autocheckpoint");
        w.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (0);").expect("schema");
        let copy = dir.path().join("copy.db");
        assert!(rows_in_file(&db, &copy) < 1, "nothing is in the file before a checkpoint");
        let cp = spawn(&db, true).expect("checkpointer");
        let tx = w.unchecked_transaction().expect("tx");
        for i in 1..1000 {
            tx.execute("INSERT INTO t VALUES (?1)", [i]).expect("insert");
        }
        tx.commit().expect("commit");
        let deadline = Instant::now() + Duration::from_secs(20);
        while rows_in_file(&db, &copy) != 1000 {
            assert!(Instant::now() < deadline, "the checkpointer did not copy the WAL into the file");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(cp);
        // The writer goes on committing after it.
        w.execute("INSERT INTO t VALUES (1000)", []).expect("insert after");
        let n: i64 = w.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
        assert_eq!(n, 1001);
    }
}
