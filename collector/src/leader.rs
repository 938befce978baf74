//! Which collector does the site-wide work (the facility meter readers, the `[pull]` jobs, the site gauges and the
//! ledger's retention pruning) when several `serve` share one PostgreSQL ledger: the one holding a session-level
//! PostgreSQL advisory lock on [`LEADER_LOCK_KEY`], taken with `pg_try_advisory_lock` on a connection of its own.
//! The others retry every [`RETRY_EVERY`]; the leader checks its connection every [`CHECK_EVERY`] and stops
//! leading as soon as a check fails. PostgreSQL frees the lock when the session ends: at once when the collector
//! dies and its kernel closes the socket (a crash, SIGKILL), and, when its machine vanishes without closing it, once
//! the server's TCP keepalives (set for that session, [`KEEPALIVES`]) give up on it. On a SQLite ledger there is
//! one collector, which always leads ([`Leadership::always`]).
//!
//! The worst takeover: the server notices a vanished leader after [`SERVER_GIVES_UP_WITHIN`] of silence, and a
//! follower tries again within [`RETRY_EVERY`] after that: 30 s, well under a minute.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::Client;
use tokio::sync::watch;

use crate::ledger::pg::{PgError, Reconnect};

/// The advisory lock's key (the one-key, `bigint` form): "dmsdlead" in ASCII, 7236567051406762340. In `pg_locks`
/// it shows as `locktype = 'advisory'`, `classid = 1684894564` (its high 32 bits), `objid = 1818583396` (its low
/// 32 bits), `objsubid = 1`. The ledger's own transaction-level locks use series ids (small numbers) in this form and the
/// two-key form for host names, so they never take this one.
pub const LEADER_LOCK_KEY: i64 = 0x646d_7364_6c65_6164;

/// How often a follower tries to take the lock.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);
/// How often the leader checks the connection that holds the lock.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long that check may take before the leader counts its connection as lost.
pub const CHECK_WITHIN: Duration = Duration::from_secs(5);

/// The server-side TCP settings of the lock's session, so that the server ends it (and frees the lock) when the
/// collector's machine vanishes without closing its socket: keepalive probes after 10 s of silence, every 5 s,
/// 3 unanswered ones end the connection; data left unacknowledged for 25 s ends it too.
pub const KEEPALIVES: &str = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
     SET tcp_keepalives_count = 3; SET tcp_user_timeout = 25000";
/// The longest the server keeps the lock of a vanished leader, from [`KEEPALIVES`].
pub const SERVER_GIVES_UP_WITHIN: Duration = Duration::from_secs(25);

/// The `application_name` of the lock's session, to find the leader in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "domesday-collector leader election";

/// The election's intervals; [`Timing::default`] is the collector's, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub retry_every: Duration,
    pub check_every: Duration,
    pub check_within: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { retry_every: RETRY_EVERY, check_every: CHECK_EVERY, check_within: CHECK_WITHIN }
    }
}

/// Whether this collector leads, as a watch (`true` while it does the site-wide work). Dropping it (or
/// [`Leadership::stop`]) ends the election and closes the lock's session, which frees the lock.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// SQLite's: kept so that the watch stays open (a closed one means the election ended).
    _always: Option<watch::Sender<bool>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Leadership {
    /// The single collector of a SQLite ledger: it always leads.
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        Leadership { rx, _always: Some(tx), stop: None, thread: None }
    }

    /// Starts the election on PostgreSQL, on a thread of its own (the synchronous client's connections run their
    /// own runtime), with connections from `connect`.
    pub fn elect(connect: Reconnect, timing: Timing) -> std::io::Result<Leadership> {
        let (tx, rx) = watch::channel(false);
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("leader-election".into())
            .spawn(move || run(connect, timing, tx, stopped))?;
        Ok(Leadership { rx, _always: None, stop: Some(stop), thread: Some(thread) })
    }

    /// Whether this collector leads now.
    pub fn is_leading(&self) -> bool {
        *self.rx.borrow()
    }

    /// A receiver that sees each change.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Ends the election: closes the lock's session (the lock is free at once for the others). Blocks up to one
    /// check's time; in async code call it from `spawn_blocking`.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.end();
    }
}

/// Waits `d` unless the election is stopped meanwhile (`true`: stopped).
fn stopped_within(stop: &mpsc::Receiver<()>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

/// The election's loop: try, lead while the connection lives, try again.
fn run(connect: Reconnect, timing: Timing, leading: watch::Sender<bool>, stop: mpsc::Receiver<()>) {
    let mut session: Option<Client> = None;
    // The last failure is logged once, not at each retry.
    let mut failing = false;
    loop {
        match try_lead(&connect, &mut session) {
            Ok(true) => {
                failing = false;
                leading.send_replace(true);
                tracing::info!(lock = LEADER_LOCK_KEY, "leader election: this collector holds the leader lock");
                loop {
                    if stopped_within(&stop, timing.check_every) {
                        leading.send_replace(false);
                        return;
                    }
                    let check = match session.as_mut() {
                        Some(c) => c.is_valid(timing.check_within).map_err(|e| e.to_string()),
                        None => Err("no connection".into()),
                    };
                    if let Err(error) = check {
                        // Stop the work first: the lock may already be another collector's.
                        leading.send_replace(false);
                        tracing::warn!(%error, "leader election: lost the connection that holds the leader lock");
                        drop(session.take());
                        break;
                    }
                }
            }
            Ok(false) => failing = false,
            Err(e) => {
                drop(session.take());
                if !failing {
                    tracing::warn!(error = %e, retry_in = ?timing.retry_every, "leader election: cannot reach the database; retrying");
                }
                failing = true;
            }
        }
        if stopped_within(&stop, timing.retry_every) {
            return;
        }
    }
}

/// Takes the lock if it is free, on `session` (connected first when missing).
fn try_lead(connect: &Reconnect, session: &mut Option<Client>) -> Result<bool, PgError> {
    let client = match session {
        Some(c) if !c.is_closed() => c,
        _ => {
            let mut c = connect()?;
            c.batch_execute(&format!("{KEEPALIVES}; SET application_name = '{APPLICATION_NAME}'"))?;
            session.insert(c)
        }
    };
    Ok(client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK_KEY])?.get(0))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::ledger::pg::test_cluster::Cluster;

    /// Intervals short enough for a test; the order between them is the collector's.
    const FAST: Timing = Timing {
        retry_every: Duration::from_millis(200),
        check_every: Duration::from_millis(200),
        check_within: Duration::from_secs(2),
    };
    /// Far longer than any wait below needs.
    const BOUND: Duration = Duration::from_secs(30);

    fn elector(connect: &(impl Fn() -> Client + Send + Sync + Clone + 'static), timing: Timing) -> Leadership {
        let c = connect.clone();
        Leadership::elect(Box::new(move || Ok(c())), timing).expect("election thread")
    }

    /// Waits (bounded) until `f` holds.
    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + BOUND;
        while !f() {
            assert!(Instant::now() < deadline, "{what} within {BOUND:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The backend holding the leader lock, if any.
    fn holder(admin: &mut Client) -> Option<i32> {
        admin
            .query_opt(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1",
                &[&LEADER_LOCK_KEY],
            )
            .expect("pg_locks")
            .map(|r| r.get(0))
    }

    fn shared(cluster: &Cluster) -> impl Fn() -> Client + Send + Sync + Clone + 'static {
        let connect = std::sync::Arc::new(cluster.database());
        move || connect()
    }

    #[test]
    fn sqlite_always_leads() {
        let l = Leadership::always();
        assert!(l.is_leading());
        // The watch stays open: a closed one would read as the end of the leadership.
        let mut w = l.watch();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let changed = rt.block_on(async { tokio::time::timeout(Duration::from_millis(200), w.changed()).await });
        assert!(changed.is_err(), "no change and no close: {changed:?}");
    }

    #[test]
    fn of_two_electors_on_one_database_exactly_one_leads_and_the_other_takes_over_when_its_session_ends() {
        let cluster = Cluster::start();
        let connect = shared(&cluster);
        let mut admin = connect();
        // The first retries more slowly than the second, so that once it lost the lock the second is first to try.
        let a = elector(&connect, Timing { retry_every: Duration::from_secs(1), ..FAST });
        until("the first elector leads", || a.is_leading());
        let b = elector(&connect, FAST);
        // Several of the follower's retries: it never leads while the first holds the lock.
        for _ in 0..10 {
            std::thread::sleep(FAST.retry_every);
            assert!(a.is_leading() && !b.is_leading(), "exactly one leads");
        }
        let pid = holder(&mut admin).expect("the leader holds the lock");
        // The leader's session is ended by the server (as when its machine vanished and the keepalives gave up,
        // or an administrator terminated it): the follower takes over, and the old leader stops leading.
        let done: bool = admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).expect("terminate").get(0);
        assert!(done);
        until("the follower leads", || b.is_leading());
        until("the old leader stops", || !a.is_leading());
        // And it does not take the lock back while the new leader holds it.
        for _ in 0..10 {
            std::thread::sleep(FAST.retry_every);
            assert!(b.is_leading() && !a.is_leading(), "exactly one leads");
        }
        // A leader that stops (its collector shuts down) frees the lock at once for the other.
        b.stop();
        until("the first leads again", || a.is_leading());
    }

    #[test]
    fn a_leader_whose_connection_fails_stops_leading() {
        let cluster = Cluster::start();
        let connect = shared(&cluster);
        let mut admin = connect();
        // Alone, with a long retry: the stop is seen before it could lead again.
        let slow_retry = Timing { retry_every: Duration::from_secs(3600), ..FAST };
        let a = elector(&connect, slow_retry);
        until("it leads", || a.is_leading());
        let changes = a.watch();
        let pid = holder(&mut admin).expect("the leader holds the lock");
        let _: bool = admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).expect("terminate").get(0);
        until("it stops leading", || !a.is_leading());
        assert!(changes.has_changed().expect("the election runs"));
        assert_eq!(holder(&mut admin), None, "nobody holds the lock");
    }

    #[test]
    fn the_lock_session_has_the_server_side_keepalives() {
        let cluster = Cluster::start();
        let connect = shared(&cluster);
        let mut admin = connect();
        let a = elector(&connect, FAST);
        until("it leads", || a.is_leading());
        let pid = holder(&mut admin).expect("the leader holds the lock");
        let app: String = admin
            .query_one("SELECT application_name FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .expect("pg_stat_activity")
            .get(0);
        assert_eq!(app, APPLICATION_NAME);
        // The settings of another session cannot be read from outside; the elector's own `SET`s are checked on a
        // session that ran them the same way.
        let mut c = connect();
        c.batch_execute(KEEPALIVES).expect("the keepalive settings are valid on this server");
        for (name, want) in [
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
            ("tcp_user_timeout", "25000"),
        ] {
            // In the setting's own unit (seconds; milliseconds for the user timeout).
            let got: String =
                c.query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name]).expect("setting").get(0);
            assert_eq!(got, want, "{name}");
        }
        // The key as docs/scaling.md gives it, and as `pg_locks` shows it.
        assert_eq!(LEADER_LOCK_KEY, 7_236_567_051_406_762_340);
        let (classid, objid): (u32, u32) = admin
            .query_one(
                "SELECT classid::text::bigint, objid::text::bigint FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'",
                &[&pid],
            )
            .map(|r| (r.get::<_, i64>(0) as u32, r.get::<_, i64>(1) as u32))
            .expect("the lock");
        assert_eq!((classid, objid), (1_684_894_564, 1_818_583_396));
        let worst = Duration::from_secs(10 + 5 * 3);
        assert_eq!(worst, SERVER_GIVES_UP_WITHIN);
        assert!(SERVER_GIVES_UP_WITHIN + RETRY_EVERY < Duration::from_secs(60));
    }
}
