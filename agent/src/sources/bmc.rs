//! What the BMC sources share: a BMC answers in seconds (sometimes never), so
//! each BMC source polls on its own thread at its own interval and the tick only
//! copies the last result. A reading older than [`STALE_INTERVALS`] intervals
//! is not used; failures back off exponentially up to [`MAX_BACKOFF`]
//! intervals. Commands (`ipmitool`) run in their own process group, killed with
//! the whole group when they overrun their timeout.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use domesday_model::vocab::Reason;

use crate::fsread::ReadError;

/// A reading older than this many intervals is not used.
pub const STALE_INTERVALS: u32 = 3;
/// Longest backoff after failures, in intervals.
pub const MAX_BACKOFF: u32 = 8;

/// What the poll thread has seen so far.
#[derive(Debug, Clone)]
pub struct PollState<T> {
    /// Polls completed (successful or not).
    pub polls: u64,
    /// The last successful reading and when it was taken.
    pub last_ok: Option<(Instant, T)>,
    /// The error of the last poll, `None` when it succeeded.
    pub last_err: Option<ReadError>,
    /// Consecutive failures.
    pub failures: u32,
}

impl<T> Default for PollState<T> {
    fn default() -> Self {
        PollState { polls: 0, last_ok: None, last_err: None, failures: 0 }
    }
}

struct Shared<T> {
    state: Mutex<PollState<T>>,
    changed: Condvar,
    stop: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    /// Set once the thread has left its loop and dropped its poll closure
    /// (a Redfish client logs out of its session then).
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl<T> Shared<T> {
    fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Under the lock, so a thread between its check and its wait cannot miss it.
        let _g = self.wake_lock.lock();
        self.wake.notify_all();
    }
}

/// Delay before the next poll after `failures` consecutive failures.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(MAX_BACKOFF.trailing_zeros());
    interval * factor.min(MAX_BACKOFF)
}

/// A poll thread; dropping the handle stops it after its current poll.
pub struct Poller<T> {
    shared: Arc<Shared<T>>,
    interval: Duration,
}

impl<T: Clone + Send + 'static> Poller<T> {
    /// Starts polling at once, then every `interval` (backing off on failures).
    pub fn spawn(
        name: &str,
        interval: Duration,
        mut poll: impl FnMut() -> Result<T, ReadError> + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(PollState::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
        });
        let s = shared.clone();
        let name = name.to_string();
        std::thread::Builder::new().name(format!("bmc-{name}")).spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                let result = poll();
                let at = Instant::now();
                let failures = {
                    let Ok(mut st) = s.state.lock() else { return };
                    st.polls += 1;
                    match result {
                        Ok(v) => {
                            st.last_ok = Some((at, v));
                            st.last_err = None;
                            st.failures = 0;
                        }
                        Err(e) => {
                            st.failures = st.failures.saturating_add(1);
                            tracing::warn!(source = %name, reason = %e.reason, failures = st.failures, "BMC poll failed: {}", e.detail);
                            st.last_err = Some(e);
                        }
                    }
                    st.failures
                };
                s.changed.notify_all();
                let delay = backoff(interval, failures);
                let Ok(g) = s.wake_lock.lock() else { return };
                let _ = s.wake.wait_timeout_while(g, delay, |_| !s.stop.load(Ordering::Relaxed));
            }
            drop(poll);
            if let Ok(mut d) = s.done.lock() {
                *d = true;
            }
            s.done_cv.notify_all();
        })?;
        Ok(Poller { shared, interval })
    }

    /// A copy of the state now.
    pub fn state(&self) -> PollState<T> {
        self.shared.state.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The last successful reading if it is younger than [`STALE_INTERVALS`] intervals.
    pub fn fresh(&self, st: &PollState<T>) -> Option<T> {
        st.last_ok.as_ref().filter(|(at, _)| at.elapsed() <= self.interval * STALE_INTERVALS).map(|(_, v)| v.clone())
    }

    /// Waits (bounded) until the first poll is done; for `probe`.
    pub fn waiter(&self) -> impl Fn(Duration) + Send + 'static {
        let s = self.shared.clone();
        move |within| {
            if let Ok(g) = s.state.lock() {
                let _ = s.changed.wait_timeout_while(g, within, |st| st.polls == 0);
            }
        }
    }
}

impl<T: Send + 'static> Poller<T> {
    /// Stops the thread and waits, until `deadline` at most, for it to finish
    /// its poll and drop its closure (shutdown: a Redfish session is deleted).
    pub fn closer(&self) -> impl Fn(Instant) + Send + 'static {
        let s = self.shared.clone();
        move |deadline| {
            s.signal_stop();
            if let Ok(g) = s.done.lock() {
                let within = deadline.saturating_duration_since(Instant::now());
                let _ = s.done_cv.wait_timeout_while(g, within, |done| !*done);
            }
        }
    }
}

impl<T> Drop for Poller<T> {
    fn drop(&mut self) {
        self.shared.signal_stop();
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

/// Runs `program args…` in its own process group with `LC_ALL=C`, killing the
/// whole group (a shell script's children included) if it runs past `timeout`.
pub fn run_command(program: &str, args: &[String], timeout: Duration) -> Result<CommandOutput, ReadError> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            let reason = crate::fsread::classify(&e);
            let hint = match reason {
                Reason::Missing => ": install it or set its path in `command`",
                _ => "",
            };
            ReadError::new(reason, format!("cannot run {program}: {e}{hint}"))
        })?;
    let (tx, rx) = channel::<(bool, Vec<u8>)>();
    for (is_out, pipe) in [
        (true, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        (false, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
    ] {
        if let Some(pipe) = pipe {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.take(4 << 20).read_to_end(&mut buf);
                let _ = tx.send((is_out, buf));
            });
        }
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                return Err(ReadError::new(
                    Reason::Timeout,
                    format!("{program} did not finish within {}; killed with its process group", fmt_dur(timeout)),
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill_group(&mut child);
                return Err(ReadError::new(Reason::Io, format!("waiting for {program}: {e}")));
            }
        }
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    // A grandchild that left the group could hold a pipe open: wait a little only.
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((true, b)) => stdout = b,
            Ok((false, b)) => stderr = b,
            Err(_) => break,
        }
    }
    Ok(CommandOutput {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        success: status.success(),
    })
}

fn kill_group(child: &mut std::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    match pid {
        Some(pid) => {
            if rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).is_err() {
                let _ = child.kill();
            }
        }
        None => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_eight_intervals() {
        let i = Duration::from_secs(30);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), i * 2);
        assert_eq!(backoff(i, 2), i * 4);
        assert_eq!(backoff(i, 3), i * 8);
        assert_eq!(backoff(i, 50), i * 8);
    }

    #[test]
    fn a_hung_command_and_its_children_are_killed_on_timeout() {
        let dir = tempfile::tempdir().expect("tmp");
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let t = Instant::now();
        let e = run_command("sh", &["-c".into(), script], Duration::from_millis(300)).expect_err("hang");
        assert_eq!(e.reason, Reason::Timeout);
        assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
        let pid = std::fs::read_to_string(&pidfile).expect("pid");
        // The grandchild `sleep` is gone too (or a zombie about to be reaped).
        std::thread::sleep(Duration::from_millis(200));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z"), "sleep survived: {stat}");
    }

    #[test]
    fn output_status_and_a_missing_program() {
        let o = run_command("sh", &["-c".into(), "echo out; echo err >&2; exit 3".into()], Duration::from_secs(5))
            .expect("runs");
        assert_eq!((o.stdout.as_str(), o.stderr.as_str(), o.success), ("out\n", "err\n", false));
        let e = run_command("/nonexistent/ipmitool", &[], Duration::from_secs(1)).expect_err("missing");
        assert_eq!(e.reason, Reason::Missing);
    }

    #[test]
    fn the_closer_waits_for_the_poll_closure_to_be_dropped() {
        struct OnDrop(Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(100));
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = OnDrop(dropped.clone());
        let p = Poller::spawn("t", Duration::from_secs(60), move || {
            let _keep = &guard;
            Ok(1.0)
        })
        .expect("spawn");
        p.waiter()(Duration::from_secs(2));
        let t = Instant::now();
        // The thread sleeps for its 60 s interval: the closer wakes it.
        p.closer()(Instant::now() + Duration::from_secs(5));
        assert!(dropped.load(Ordering::Relaxed), "the closure was dropped before the closer returned");
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    }

    #[test]
    fn the_poller_keeps_the_last_reading_and_counts_failures() {
        let mut n = 0;
        let p = Poller::spawn("t", Duration::from_millis(20), move || {
            n += 1;
            if n == 1 { Ok(42.0) } else { Err(ReadError::new(Reason::Io, "down")) }
        })
        .expect("spawn");
        p.waiter()(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(2);
        while p.state().failures == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = p.state();
        assert!(st.failures >= 1 && st.last_err.is_some(), "{st:?}");
        assert_eq!(st.last_ok.as_ref().map(|(_, v)| *v), Some(42.0));
        // Stale after 3 intervals.
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(p.fresh(&p.state()), None);
    }
}
