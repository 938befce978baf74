//! The system clock's synchronisation state, from the kernel's NTP state
//! (`adjtimex(2)` with no mode bits: a read, allowed to any user):
//! `domesday_clock_synchronized` and `domesday_clock_max_error_seconds`. A
//! server whose clock drifts puts its energy in the wrong hour of a report; this
//! says so on the server itself, before the collector sees the skew.
//!
//! The reading comes from a [`KernelClock`]: the kernel ([`Adjtimex`]), or in
//! tests a fixture file ([`FixtureClock`], named by the environment variable
//! [`FIXTURE_ENV`] when the config is loaded) so that an end-to-end test can show both states. What the
//! fields mean is decided by [`interpret`], a pure function. A failed read is a
//! sensor status like any other (`domesday_sensor_up{source="clock"}=0` and
//! `domesday_sensor_errors_total{source="clock",reason}`), and the two series
//! are absent that tick.

use std::path::PathBuf;
use std::time::Duration;

use domesday_model::catalog::{CLOCK_MAX_ERROR, CLOCK_SYNCHRONIZED};
use domesday_model::vocab::{Reason, Source};

use super::{Output, Progress, Sample, SensorSource};
use crate::fsread::{ReadError, classify};

/// Test-only: a file holding the kernel's answer (see [`parse_fixture`]) read
/// instead of calling `adjtimex(2)`.
pub const FIXTURE_ENV: &str = "DOMESDAY_CLOCK_FIXTURE";

/// `STA_UNSYNC` in `timex.status`: the clock is not synchronised (set by the
/// kernel when the maximum error reaches 16 s, cleared by the NTP daemon).
pub const STA_UNSYNC: i64 = 0x0040;
/// `STA_CLOCKERR`: clock hardware fault.
pub const STA_CLOCKERR: i64 = 0x1000;
/// The `adjtimex` return value for a clock that is not synchronised.
pub const TIME_ERROR: i64 = 5;
/// The kernel's bound of the maximum error (NTP_PHASE_LIMIT, 16 s in µs): at
/// or above it the clock is unsynchronised whatever the status says. systemd
/// (`timedatectl`'s "System clock synchronized") uses the same bound.
pub const MAX_ERROR_LIMIT_US: i64 = 16_000_000;

/// The kernel's answer: the `timex` fields domesday reads and the return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timex {
    /// `timex.status` (`STA_*` bits).
    pub status: i64,
    /// `timex.maxerror`, µs.
    pub maxerror_us: i64,
    /// The return value: the clock state (`TIME_OK` 0 … `TIME_ERROR` 5).
    pub state: i64,
}

/// What the two series say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockState {
    pub synchronized: bool,
    pub max_error_seconds: f64,
}

/// Reads the kernel's fields as `ntp_adjtime(3)`, RFC 5905 and the kernel
/// describe them: synchronised when the return value is not `TIME_ERROR`,
/// neither `STA_UNSYNC` nor `STA_CLOCKERR` is set and the maximum error is
/// below 16 s. A negative maximum error (never written by a kernel) is 0.
pub fn interpret(t: &Timex) -> ClockState {
    let synchronized =
        t.state != TIME_ERROR && t.status & (STA_UNSYNC | STA_CLOCKERR) == 0 && t.maxerror_us < MAX_ERROR_LIMIT_US;
    ClockState { synchronized, max_error_seconds: t.maxerror_us.max(0) as f64 / 1e6 }
}

/// Where the clock state is read from.
pub trait KernelClock: Send + 'static {
    fn read(&mut self) -> Result<Timex, ReadError>;
    /// What `probe` shows as the sensor's path.
    fn describe(&self) -> String;
}

/// The kernel, through `adjtimex(2)` (read-only: `modes` = 0).
#[derive(Debug, Default)]
pub struct Adjtimex;

impl KernelClock for Adjtimex {
    fn read(&mut self) -> Result<Timex, ReadError> {
        let mut tx = rtime_clock::adjtime::Timex::new();
        match rtime_clock::adjtime::adjtimex(&mut tx) {
            Ok(state) => {
                Ok(Timex { status: i64::from(tx.0.status), maxerror_us: tx.0.maxerror, state: i64::from(state) })
            }
            Err(e) => Err(ReadError::new(
                classify(&e),
                format!("adjtimex(2): {e} (a seccomp filter such as systemd's ProtectClock= denies it)"),
            )),
        }
    }

    fn describe(&self) -> String {
        "adjtimex(2)".into()
    }
}

/// A file standing for the kernel (tests): `status=0x40 maxerror=16000000
/// state=5`, in any order, whitespace or newlines between; read at each tick,
/// so a test can change the state while the agent runs.
#[derive(Debug)]
pub struct FixtureClock {
    pub path: PathBuf,
}

impl KernelClock for FixtureClock {
    fn read(&mut self) -> Result<Timex, ReadError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| ReadError::new(classify(&e), format!("{}: {e}", self.path.display())))?;
        parse_fixture(&text).map_err(|d| ReadError::new(Reason::Parse, format!("{}: {d}", self.path.display())))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Parses a fixture: `status`, `maxerror` (µs) and `state`, each `key=value`,
/// decimal or `0x` hexadecimal.
pub fn parse_fixture(text: &str) -> Result<Timex, String> {
    let (mut status, mut maxerror, mut state) = (None, None, None);
    for word in text.split_whitespace() {
        let (k, v) = word.split_once('=').ok_or_else(|| format!("{word:?} is not key=value"))?;
        let n = match v.strip_prefix("0x") {
            Some(h) => i64::from_str_radix(h, 16),
            None => v.parse(),
        }
        .map_err(|e| format!("{k}: {v:?} is not an integer ({e})"))?;
        let slot = match k {
            "status" => &mut status,
            "maxerror" => &mut maxerror,
            "state" => &mut state,
            _ => return Err(format!("unknown key {k:?} (status, maxerror, state)")),
        };
        *slot = Some(n);
    }
    match (status, maxerror, state) {
        (Some(status), Some(maxerror_us), Some(state)) => Ok(Timex { status, maxerror_us, state }),
        _ => Err("needs status=, maxerror= and state=".into()),
    }
}

/// The clock as a sensor source (one sensor, `system`).
pub struct Clock {
    kernel: Box<dyn KernelClock>,
}

impl Clock {
    /// The kernel, or the fixture file the config names (from [`FIXTURE_ENV`]).
    pub fn for_fixture(fixture: Option<&std::path::Path>) -> Self {
        match fixture {
            Some(p) => {
                tracing::warn!(path = %p.display(), "{FIXTURE_ENV} is set: the clock state is read from this file (tests only)");
                Clock::new(Box::new(FixtureClock { path: p.to_path_buf() }))
            }
            None => Clock::new(Box::new(Adjtimex)),
        }
    }

    pub fn new(kernel: Box<dyn KernelClock>) -> Self {
        Clock { kernel }
    }
}

impl SensorSource for Clock {
    fn kind(&self) -> Source {
        Source::Clock
    }

    fn discover(&mut self) {}

    fn sample(&mut self, _now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        let path = self.kernel.describe();
        progress.enter("system", &path);
        let state = self.kernel.read().map(|t| interpret(&t));
        if let Ok(s) = &state {
            out.samples.push(Sample::new(&CLOCK_SYNCHRONIZED, vec![], if s.synchronized { 1.0 } else { 0.0 }));
            out.samples.push(Sample::new(&CLOCK_MAX_ERROR, vec![], s.max_error_seconds));
        }
        out.status(Source::Clock, "system".into(), "seconds", path, state.map(|s| s.max_error_seconds));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(status: i64, maxerror_us: i64, state: i64) -> Timex {
        Timex { status, maxerror_us, state }
    }

    #[test]
    fn chrony_synchronised() {
        // STA_PLL | STA_NANO, 12 ms maximum error, TIME_OK.
        let s = interpret(&t(0x2001, 12_000, 0));
        assert!(s.synchronized);
        assert_eq!(s.max_error_seconds, 0.012);
    }

    #[test]
    fn no_ntp_daemon() {
        // What a kernel boots with: STA_UNSYNC, 16 s, TIME_ERROR.
        let s = interpret(&t(0x0040, 16_000_000, 5));
        assert!(!s.synchronized);
        assert_eq!(s.max_error_seconds, 16.0);
    }

    #[test]
    fn each_sign_of_trouble_alone_is_unsynchronised() {
        assert!(!interpret(&t(STA_UNSYNC, 1_000, 0)).synchronized);
        assert!(!interpret(&t(STA_CLOCKERR, 1_000, 0)).synchronized);
        assert!(!interpret(&t(0, 1_000, TIME_ERROR)).synchronized);
        assert!(!interpret(&t(0, MAX_ERROR_LIMIT_US, 0)).synchronized);
        // A leap second pending (TIME_INS) is still synchronised.
        assert!(interpret(&t(0x0011, 1_000, 1)).synchronized);
    }

    #[test]
    fn fixtures_parse_and_refuse() {
        assert_eq!(parse_fixture("status=0x40 maxerror=16000000\nstate=5\n"), Ok(t(0x40, 16_000_000, 5)));
        assert!(parse_fixture("status=0x40 maxerror=1").is_err());
        assert!(parse_fixture("status=0x40 maxerror=1 state=0 offset=3").is_err());
        assert!(parse_fixture("status=zz maxerror=1 state=0").is_err());
    }

    #[test]
    fn a_failed_read_is_a_status_without_samples() {
        struct Broken;
        impl KernelClock for Broken {
            fn read(&mut self) -> Result<Timex, ReadError> {
                Err(ReadError::new(Reason::Permission, "adjtimex(2): Operation not permitted"))
            }
            fn describe(&self) -> String {
                "adjtimex(2)".into()
            }
        }
        let out = Clock::new(Box::new(Broken)).sample(Duration::ZERO, &Progress::default());
        assert!(out.samples.is_empty());
        assert_eq!(out.statuses.len(), 1);
        assert_eq!(out.statuses[0].result.as_ref().map_err(|e| e.reason), Err(Reason::Permission));
    }

    #[test]
    fn this_kernel_answers() {
        // Whatever the state of the machine running the tests, the call itself works
        // unprivileged and the maximum error is within the kernel's range.
        let r = Adjtimex.read().expect("adjtimex(2) read-only");
        let s = interpret(&r);
        assert!((0.0..=16.0).contains(&s.max_error_seconds), "{r:?}");
    }

    proptest! {
        /// Synchronised exactly when no sign of trouble is present, and the maximum
        /// error is passed on in seconds.
        #[test]
        fn interpretation(status in 0i64..0x8000, maxerror in -10i64..40_000_000, state in 0i64..6) {
            let s = interpret(&t(status, maxerror, state));
            let trouble = status & 0x0040 != 0 || status & 0x1000 != 0 || state == 5 || maxerror >= 16_000_000;
            prop_assert_eq!(s.synchronized, !trouble);
            prop_assert!(s.max_error_seconds >= 0.0);
            prop_assert!((s.max_error_seconds * 1e6 - maxerror.max(0) as f64).abs() < 1e-3);
        }
    }
}
