//! Host power arbitration and the per-method host energy counters.
//!
//! Each tick the best available method wins (in this order; the BMC methods
//! are the BMC's wall readings): `bmc_dcmi`, `bmc_redfish`, `psu_input`, then `acpi_power_meter`, then
//! `rapl_uplift`, then `model`. The host's timeline on the agent's monotonic clock is booked once:
//! every span goes to exactly one method's counter, computed from that method's own data, or is
//! counted as a gap (`reason="gap"`), so switching methods never doubles or loses a span.
//!
//! - Tick methods (`psu_input`, `acpi_power_meter`, `rapl_uplift`, `model`) book the interval since the
//!   previous tick: trapezoid of their power readings over the actual elapsed time, RAPL counter
//!   increments × uplift, or the model at the interval's mean utilisation.
//! - BMC methods book between their own readings, which carry the instant the BMC was read (its
//!   poll thread runs at its own interval): the trapezoid of successive readings over their actual
//!   times, or the increments of the BMC's own energy counter when it has one (`EnergyJoules`, or
//!   `EnergykWh` when fine enough, see [`counter_usable`]); a counter that goes down was reset by the
//!   BMC and that span falls back to the trapezoid. Two readings further apart than the BMC's gap
//!   bound are not interpolated across. The time after a BMC's last reading is booked by the method
//!   that takes over, or counted as a gap when too long.
//!
//! Counters persist in `state_dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::vocab::{Method, Reason, Source};
use serde::{Deserialize, Serialize};

use crate::energy::{trapezoid_joules, uj_to_joules};
use crate::estimation::PowerModel;
use crate::sources::{BmcEnergy, BmcPower, HostFacts};

/// What the arbitration decided this tick.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    pub method: Method,
    pub watts: f64,
}

/// How the host's timeline was accounted, in time (for tests and `probe`-style checks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timeline {
    /// Booked on some method's counter.
    pub booked: Duration,
    /// Counted as gaps (too long to interpolate across).
    pub gaps: Duration,
    /// No method at all, or an energy that was not a finite non-negative number.
    pub skipped: Duration,
}

/// The current method's power and every method's cumulative energy.
#[derive(Debug)]
pub struct HostPower {
    model: PowerModel,
    rapl_uplift: f64,
    /// Longest interval integrated; a longer one (agent stalled, VM paused) is
    /// not bridged by interpolation but counted as a gap.
    max_gap: Duration,
    totals: BTreeMap<Method, f64>,
    /// The previous tick and the reading it chose.
    last: Option<(Duration, Option<(Method, f64)>)>,
    /// The timeline is booked (or counted) up to here; it only moves forward.
    booked_until: Option<Duration>,
    /// The last reading of the BMC run in progress (the BMC method carried every tick since).
    bmc_last: Option<(Method, BmcPower)>,
    timeline: Timeline,
    state: Option<StateFile>,
}

/// An `EnergykWh` counter is used only when its step is at most this share of
/// the energy of the span between two readings (the trapezoid of their power):
/// each span's energy is then right to 1 %, and over a run the counter's
/// quantisation does not accumulate (increments telescope). Coarser (a whole
/// kWh is 3.6 MJ, hours of a server's power) the power readings are integrated instead.
pub const KWH_MAX_STEP_SHARE: f64 = 0.01;

/// Whether a BMC energy counter may carry a span whose power trapezoid is
/// `segment_j`: `EnergyJoules` always (J resolution), `EnergykWh` when its step is
/// fine enough ([`KWH_MAX_STEP_SHARE`]).
pub fn counter_usable(e: &BmcEnergy, segment_j: f64) -> bool {
    e.native_joules || (e.resolution_j > 0.0 && e.resolution_j <= KWH_MAX_STEP_SHARE * segment_j)
}

/// Energy of the span `[from, b.at]` between BMC readings `a` and `b`
/// (`a.at <= from < b.at`): the BMC's counter increment when usable (pro rata
/// when only part of the span is booked), else the trapezoid of the power
/// readings over their actual times (linear between them). `true` when the
/// counter went down (reset by the BMC): the trapezoid is used then.
pub fn segment_joules(a: &BmcPower, b: &BmcPower, from: Duration) -> (f64, bool) {
    let full = b.at.saturating_sub(a.at).as_secs_f64();
    if full <= 0.0 || from >= b.at {
        return (0.0, false);
    }
    let part = b.at.saturating_sub(from.max(a.at)).as_secs_f64();
    let share = part / full;
    let w_from = a.watts + (b.watts - a.watts) * (1.0 - share);
    let trapezoid = trapezoid_joules(w_from, b.watts, part);
    match (&a.energy, &b.energy) {
        (Some(ea), Some(eb))
            if ea.native_joules == eb.native_joules && counter_usable(eb, trapezoid_joules(a.watts, b.watts, full)) =>
        {
            if eb.joules >= ea.joules {
                ((eb.joules - ea.joules) * share, false)
            } else {
                (trapezoid, true)
            }
        }
        _ => (trapezoid, false),
    }
}

/// Picks the best available method and its instantaneous power.
pub fn choose(facts: &HostFacts, dt: Option<Duration>, model: &PowerModel, uplift: f64) -> Option<HostReading> {
    if let Some(b) = &facts.bmc_dcmi {
        return Some(HostReading { method: Method::BmcDcmi, watts: b.watts });
    }
    if let Some(b) = &facts.bmc_redfish {
        return Some(HostReading { method: Method::BmcRedfish, watts: b.watts });
    }
    if let Some(w) = facts.psu_input_watts {
        return Some(HostReading { method: Method::PsuInput, watts: w });
    }
    if let Some(w) = facts.acpi_power_watts {
        return Some(HostReading { method: Method::AcpiPowerMeter, watts: w });
    }
    if let (Some(uj), Some(dt)) = (facts.rapl_host_delta_uj, dt)
        && !dt.is_zero()
    {
        return Some(HostReading { method: Method::RaplUplift, watts: uj_to_joules(uj) / dt.as_secs_f64() * uplift });
    }
    facts.cpu_utilization.map(|u| HostReading { method: Method::Model, watts: model.watts(u) })
}

/// The BMC reading behind a BMC method.
fn bmc_fact(facts: &HostFacts, m: Method) -> Option<&BmcPower> {
    match m {
        Method::BmcDcmi => facts.bmc_dcmi.as_ref(),
        Method::BmcRedfish => facts.bmc_redfish.as_ref(),
        _ => None,
    }
}

/// Energy of one tick interval for a tick method (not the BMC methods, which
/// book between their own readings).
pub fn interval_joules(
    chosen: &HostReading,
    previous: Option<&(Method, f64)>,
    facts: &HostFacts,
    dt: Duration,
    uplift: f64,
) -> f64 {
    let secs = dt.as_secs_f64();
    match chosen.method {
        Method::RaplUplift => facts.rapl_host_delta_uj.map(|uj| uj_to_joules(uj) * uplift).unwrap_or(0.0),
        // The model's input is already the interval's mean utilisation.
        Method::Model => chosen.watts * secs,
        _ => match previous {
            Some((m, w)) if *m == chosen.method => trapezoid_joules(*w, chosen.watts, secs),
            _ => chosen.watts * secs,
        },
    }
}

enum Span {
    Booked,
    Gap,
    Skipped,
}

impl HostPower {
    pub fn new(model: PowerModel, rapl_uplift: f64, max_gap: Duration, mut state: Option<StateFile>) -> Self {
        let totals = state.as_mut().map(|s| s.load()).unwrap_or_default();
        HostPower {
            model,
            rapl_uplift,
            max_gap,
            totals,
            last: None,
            booked_until: None,
            bmc_last: None,
            timeline: Timeline::default(),
            state,
        }
    }

    /// Books what is known at tick `now`; returns the reading and any errors to count.
    pub fn update(&mut self, now: Duration, facts: &HostFacts) -> (Option<HostReading>, Vec<(Source, Reason)>) {
        let mut errors = Vec::new();
        let last_tick = self.last.as_ref().map(|(t, _)| *t);
        let dt = last_tick.map(|t| now.saturating_sub(t));
        let reading = choose(facts, dt, &self.model, self.rapl_uplift);
        match (&reading, reading.as_ref().and_then(|r| bmc_fact(facts, r.method))) {
            (Some(r), Some(p)) => self.book_bmc(r.method, p, &mut errors),
            (Some(r), None) => {
                self.bmc_last = None;
                self.book_tick(r, now, last_tick, facts, &mut errors);
            }
            (None, _) => {
                self.bmc_last = None;
                if self.booked_until.is_none() {
                    self.booked_until = Some(now);
                }
                self.advance(now, Span::Skipped);
            }
        }
        // Make sure the active method has a counter even before its first interval.
        if let Some(r) = &reading {
            self.totals.entry(r.method).or_insert(0.0);
        }
        self.last = Some((now, reading.as_ref().map(|r| (r.method, r.watts))));
        if let Some(s) = &mut self.state {
            s.save(&self.totals, false);
        }
        (reading, errors)
    }

    /// Moves the booked edge forward to `to` (never back), tallying the span.
    fn advance(&mut self, to: Duration, kind: Span) {
        let Some(from) = self.booked_until else {
            self.booked_until = Some(to);
            return;
        };
        if to <= from {
            return;
        }
        let span = to - from;
        match kind {
            Span::Booked => self.timeline.booked += span,
            Span::Gap => self.timeline.gaps += span,
            Span::Skipped => self.timeline.skipped += span,
        }
        self.booked_until = Some(to);
    }

    /// Adds `joules` to `m` for the span up to `to`, if it is a sane energy.
    fn book(&mut self, m: Method, joules: f64, to: Duration, errors: &mut Vec<(Source, Reason)>) {
        if joules.is_finite() && joules >= 0.0 {
            *self.totals.entry(m).or_insert(0.0) += joules;
            self.advance(to, Span::Booked);
        } else {
            errors.push((method_source(m), Reason::Rejected));
            self.advance(to, Span::Skipped);
        }
    }

    /// A tick method carries the interval since the previous tick, and before
    /// it whatever a BMC run left unbooked after its last reading.
    fn book_tick(
        &mut self,
        r: &HostReading,
        now: Duration,
        last_tick: Option<Duration>,
        facts: &HostFacts,
        errors: &mut Vec<(Source, Reason)>,
    ) {
        let (Some(from), Some(lt)) = (self.booked_until, last_tick) else {
            // The first tick is the baseline.
            self.booked_until = Some(now);
            return;
        };
        if from < lt {
            // A BMC carried the previous ticks but booked only up to its last reading.
            let tail = lt - from;
            if now.saturating_sub(from) <= self.max_gap {
                self.book(r.method, r.watts * tail.as_secs_f64(), lt, errors);
            } else {
                let by = self.last.as_ref().and_then(|(_, p)| p.as_ref()).map(|(m, _)| *m).unwrap_or(r.method);
                errors.push((method_source(by), Reason::Gap));
                self.advance(lt, Span::Gap);
            }
        }
        let dt = now.saturating_sub(lt);
        if dt.is_zero() {
            return;
        }
        if dt > self.max_gap {
            errors.push((method_source(r.method), Reason::Gap));
            self.advance(now, Span::Gap);
            return;
        }
        let prev = self.last.as_ref().and_then(|(_, p)| p.as_ref());
        let j = interval_joules(r, prev, facts, dt, self.rapl_uplift);
        // A BMC reading taken after the previous tick already booked the start of this interval.
        let booked = self.booked_until.unwrap_or(lt).max(lt);
        let share = now.saturating_sub(booked).as_secs_f64() / dt.as_secs_f64();
        if share > 0.0 {
            self.book(r.method, j * share, now, errors);
        }
    }

    /// A BMC method: books between the run's previous reading and this one.
    fn book_bmc(&mut self, m: Method, p: &BmcPower, errors: &mut Vec<(Source, Reason)>) {
        let Some(from) = self.booked_until else {
            // The first update: this reading is the baseline.
            self.booked_until = Some(p.at);
            self.bmc_last = Some((m, p.clone()));
            return;
        };
        let run = self.bmc_last.take().filter(|(lm, q)| *lm == m && q.bmc == p.bmc).map(|(_, q)| q);
        match run {
            Some(q) if p.at <= q.at => {
                // No new reading since the previous tick.
                self.bmc_last = Some((m, q));
                return;
            }
            Some(q) => {
                if p.at.saturating_sub(q.at) > p.max_gap {
                    // Too long between two readings: an outage, not interpolated.
                    errors.push((method_source(m), Reason::Gap));
                    self.advance(p.at, Span::Gap);
                } else if p.at > from {
                    let (j, reset) = segment_joules(&q, p, from);
                    if reset {
                        // Counted by the source that saw it (`reason="reset"`), whichever method is active.
                        tracing::info!(method = %m, bmc = %p.bmc, from = q.energy.map(|e| e.joules), to = p.energy.map(|e| e.joules),
                            "the BMC's energy counter went down (reset by the BMC): this span is integrated from its power readings");
                    }
                    self.book(m, j, p.at, errors);
                }
            }
            None => {
                // A BMC run starts: its first reading, held back to the booked edge.
                if p.at > from {
                    let span = p.at - from;
                    if span > self.max_gap.max(p.max_gap) {
                        errors.push((method_source(m), Reason::Gap));
                        self.advance(p.at, Span::Gap);
                    } else {
                        self.book(m, p.watts * span.as_secs_f64(), p.at, errors);
                    }
                }
            }
        }
        self.bmc_last = Some((m, p.clone()));
    }

    /// Cumulative joules of a method.
    pub fn total(&self, m: Method) -> f64 {
        self.totals.get(&m).copied().unwrap_or(0.0)
    }

    /// How the timeline has been accounted so far.
    pub fn timeline(&self) -> Timeline {
        self.timeline
    }

    /// Writes the state and syncs it (shutdown).
    pub fn flush(&mut self) {
        if let Some(s) = &mut self.state {
            s.save(&self.totals, true);
        }
    }
}

/// The `source` label errors of a method are counted under.
pub fn method_source(m: Method) -> Source {
    match m {
        Method::BmcDcmi => Source::Ipmi,
        Method::BmcRedfish => Source::Redfish,
        Method::PsuInput | Method::AcpiPowerMeter => Source::Hwmon,
        Method::RaplUplift => Source::Rapl,
        Method::Model => Source::Estimated,
    }
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct StateDoc {
    version: u32,
    /// Joules per method label.
    host_energy_joules: BTreeMap<String, f64>,
}

/// The persisted host counters, in two checksummed slots of one file written
/// in place (`host-energy.state`): each save writes the older slot and
/// `fdatasync`s it, so a torn write leaves the other slot intact. The sampler
/// saves before it publishes a tick, so the value any scrape or push has seen
/// is on disk: after a crash or a power loss the counter resumes at or above it
/// and never goes backwards (a drop would be a reset for Prometheus and the
/// ledger, which would count the whole value again).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    seq: u64,
    last: Option<BTreeMap<Method, f64>>,
}

/// Bytes per slot; a document is a few hundred bytes.
const SLOT: usize = 1024;
const MAGIC: &[u8; 4] = b"DDH1";

/// Encodes a slot: magic, sequence, length, CRC-32 of the JSON, the JSON, zero padding.
fn encode_slot(seq: u64, json: &[u8]) -> Option<Vec<u8>> {
    if json.len() > SLOT - 20 {
        return None;
    }
    let mut b = Vec::with_capacity(SLOT);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(json.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    b.extend_from_slice(json);
    b.resize(SLOT, 0);
    Some(b)
}

/// Decodes a slot: `(seq, json)` if it is whole.
fn decode_slot(b: &[u8]) -> Option<(u64, &[u8])> {
    if b.len() < 20 || &b[..4] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(b[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    let json = b.get(20..20 + len)?;
    (crc32fast::hash(json) == crc).then_some((seq, json))
}

fn parse_doc(json: &[u8]) -> Option<BTreeMap<Method, f64>> {
    let doc: StateDoc = serde_json::from_slice(json).ok()?;
    Some(
        doc.host_energy_joules
            .into_iter()
            .filter_map(|(k, v)| {
                Method::ALL
                    .iter()
                    .find(|m| m.as_str() == k)
                    .map(|m| (*m, v))
                    .filter(|(_, v)| v.is_finite() && *v >= 0.0)
            })
            .collect(),
    )
}

impl StateFile {
    /// Uses `dir` if it can be created and written, else the user's state directory.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let candidates = [Some(dir.to_path_buf()), user_state_dir()];
        let mut errors = Vec::new();
        for d in candidates.into_iter().flatten() {
            match std::fs::create_dir_all(&d).and_then(|()| probe_writable(&d)) {
                Ok(()) => {
                    return Ok(StateFile { path: d.join("host-energy.state"), file: None, seq: 0, last: None });
                }
                Err(e) => errors.push(format!("{}: {e}", d.display())),
            }
        }
        Err(format!("no writable state directory ({}); set state_dir", errors.join("; ")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest whole slot; a file with no whole slot is set aside.
    pub(crate) fn load(&mut self) -> BTreeMap<Method, f64> {
        let Ok(bytes) = std::fs::read(&self.path) else { return BTreeMap::new() };
        let best = bytes
            .chunks(SLOT)
            .filter_map(decode_slot)
            .filter_map(|(seq, json)| parse_doc(json).map(|d| (seq, d)))
            .max_by_key(|(seq, _)| *seq);
        match best {
            Some((seq, doc)) => {
                self.seq = seq;
                doc
            }
            None => {
                let aside = self.path.with_extension("state.corrupt");
                tracing::warn!(path = %self.path.display(), aside = %aside.display(),
                    "host energy state unreadable; counters restart from zero (Prometheus sees a reset)");
                let _ = std::fs::rename(&self.path, aside);
                BTreeMap::new()
            }
        }
    }

    /// Writes the older slot and syncs it; nothing to do when nothing changed.
    pub(crate) fn save(&mut self, totals: &BTreeMap<Method, f64>, _force_sync: bool) {
        if self.last.as_ref() == Some(totals) {
            return;
        }
        let doc = StateDoc {
            version: 1,
            host_energy_joules: totals.iter().map(|(m, v)| (m.as_str().to_string(), *v)).collect(),
        };
        let result = (|| -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            if self.file.is_none() {
                self.file = Some(
                    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path)?,
                );
            }
            let Some(f) = self.file.as_ref() else { return Err(std::io::Error::other("state file not open")) };
            let json = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
            let seq = self.seq + 1;
            let slot = encode_slot(seq, &json).ok_or_else(|| std::io::Error::other("state document too large"))?;
            f.write_all_at(&slot, (seq % 2) * SLOT as u64)?;
            f.sync_data()?;
            self.seq = seq;
            Ok(())
        })();
        match result {
            Ok(()) => self.last = Some(totals.clone()),
            Err(e) => {
                self.file = None;
                tracing::warn!(path = %self.path.display(), error = %e, "cannot persist host energy");
            }
        }
    }
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(".write-test");
    std::fs::write(&p, b"")?;
    std::fs::remove_file(p)
}

/// `$XDG_STATE_HOME/domesday-agent` or `~/.local/state/domesday-agent`.
pub(crate) fn user_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("domesday-agent"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model() -> PowerModel {
        PowerModel::Linear { idle_watts: 100.0, max_watts: 300.0 }
    }

    fn hp(state: Option<StateFile>) -> HostPower {
        HostPower::new(model(), 1.25, Duration::from_secs(60), state)
    }

    /// A BMC reading of `watts` taken at `at_ms` (agent clock), gap bound 90 s.
    fn bmc(watts: f64, at_ms: u64, joules: Option<f64>) -> BmcPower {
        BmcPower {
            watts,
            at: Duration::from_millis(at_ms),
            max_gap: Duration::from_secs(90),
            bmc: "bmc".into(),
            energy: joules.map(|j| BmcEnergy { joules: j, resolution_j: 1.0, native_joules: true }),
        }
    }

    fn redfish(p: BmcPower) -> HostFacts {
        HostFacts {
            bmc_redfish: Some(p),
            psu_input_watts: Some(1000.0),
            cpu_utilization: Some(0.5),
            ..Default::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn bmc_energy_is_the_trapezoid_between_its_own_readings_not_the_ticks() {
        let mut h = hp(None);
        let psu = HostFacts { psu_input_watts: Some(1000.0), ..Default::default() };
        // Ticks every 10 s; the BMC is read at 13 s, 43 s and 73 s (every 30 s).
        h.update(secs(0), &psu);
        h.update(secs(10), &psu);
        assert_eq!(h.total(Method::PsuInput), 10_000.0);
        // The BMC's first reading (13 s): held back to the booked edge (10 s) only.
        h.update(secs(20), &redfish(bmc(100.0, 13_000, None)));
        assert_eq!(h.total(Method::BmcRedfish), 300.0);
        // The same reading seen again: nothing booked (no sample-and-hold between readings).
        h.update(secs(30), &redfish(bmc(100.0, 13_000, None)));
        h.update(secs(40), &redfish(bmc(100.0, 13_000, None)));
        assert_eq!(h.total(Method::BmcRedfish), 300.0);
        // 43 s: the trapezoid 100 → 400 W over the readings' 30 s, whatever the ticks.
        h.update(secs(50), &redfish(bmc(400.0, 43_000, None)));
        assert_eq!(h.total(Method::BmcRedfish), 300.0 + 7_500.0);
        h.update(secs(80), &redfish(bmc(200.0, 73_000, None)));
        assert_eq!(h.total(Method::BmcRedfish), 300.0 + 7_500.0 + 9_000.0);
        assert_eq!(h.total(Method::PsuInput), 10_000.0, "never double-booked on the psu");
        let t = h.timeline();
        assert_eq!((t.booked, t.gaps, t.skipped), (secs(73), Duration::ZERO, Duration::ZERO));

        // A reading taken before the booked edge (8 s < 10 s) is a baseline only:
        // the next span is booked from the edge, on the line between the readings.
        let mut h = hp(None);
        h.update(secs(0), &psu);
        h.update(secs(10), &psu);
        h.update(secs(20), &redfish(bmc(100.0, 8_000, None)));
        assert_eq!(h.total(Method::BmcRedfish), 0.0);
        h.update(secs(40), &redfish(bmc(400.0, 38_000, None)));
        let w10 = 100.0 + 300.0 * 2.0 / 30.0;
        let want = (w10 + 400.0) / 2.0 * 28.0;
        assert!((h.total(Method::BmcRedfish) - want).abs() < 1e-9, "{}", h.total(Method::BmcRedfish));
        assert_eq!(h.timeline().booked, secs(38));
    }

    #[test]
    fn readings_too_far_apart_are_a_gap_and_the_bmc_tail_goes_to_the_next_method() {
        let mut h = hp(None);
        h.update(secs(0), &redfish(bmc(300.0, 0, None)));
        h.update(secs(30), &redfish(bmc(300.0, 30_000, None)));
        assert_eq!(h.total(Method::BmcRedfish), 9000.0);
        // Next reading 100 s later (> 90 s gap bound): counted, not interpolated.
        let (_, errs) = h.update(secs(130), &redfish(bmc(300.0, 130_000, None)));
        assert_eq!(errs, vec![(Source::Redfish, Reason::Gap)]);
        assert_eq!(h.total(Method::BmcRedfish), 9000.0);
        assert_eq!(h.timeline().gaps, secs(100));
        // The BMC goes stale at 140 s: psu carries [130, 140] (tail, held back) and [140, 150].
        let psu = HostFacts { psu_input_watts: Some(500.0), ..Default::default() };
        h.update(secs(140), &redfish(bmc(300.0, 130_000, None)));
        let (r, errs) = h.update(secs(150), &psu);
        assert_eq!(r.map(|r| r.method), Some(Method::PsuInput));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(h.total(Method::PsuInput), 500.0 * 20.0);
        // A tail longer than max_gap (60 s) is a gap of the BMC, the interval is booked.
        h.update(secs(160), &redfish(bmc(300.0, 160_000, None)));
        h.update(secs(200), &redfish(bmc(300.0, 160_000, None)));
        let (_, errs) = h.update(secs(230), &psu);
        assert_eq!(errs, vec![(Source::Redfish, Reason::Gap)]);
        assert_eq!(h.total(Method::PsuInput), 500.0 * 20.0 + 500.0 * 30.0);
        let t = h.timeline();
        assert_eq!(t.booked + t.gaps + t.skipped, secs(230));
    }

    #[test]
    fn the_bmc_energy_counter_is_preferred_and_its_resets_fall_back_to_power() {
        let mut h = hp(None);
        h.update(secs(0), &redfish(bmc(100.0, 0, Some(5_000.0))));
        // Power says 3000 J, the BMC's counter 3100 J: the counter wins.
        h.update(secs(30), &redfish(bmc(100.0, 30_000, Some(8_100.0))));
        assert_eq!(h.total(Method::BmcRedfish), 3100.0);
        // Reset by the BMC: the span is the power trapezoid, never negative (the
        // source that saw the reset counts it, not the arbitration).
        let (_, errs) = h.update(secs(60), &redfish(bmc(100.0, 60_000, Some(50.0))));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(h.total(Method::BmcRedfish), 6100.0);
        // The new baseline counts on.
        h.update(secs(90), &redfish(bmc(100.0, 90_000, Some(3_050.0))));
        assert_eq!(h.total(Method::BmcRedfish), 9100.0);
    }

    #[test]
    fn energy_kwh_only_when_its_step_is_fine_enough() {
        let kwh = |j: f64, step: f64| Some(BmcEnergy { joules: j, resolution_j: step, native_joules: false });
        let at = |w: f64, ms: u64, e: Option<BmcEnergy>| BmcPower { energy: e, ..bmc(w, ms, None) };
        // 400 W for 30 s is 12 kJ: a 36 J step (0.01 Wh) is fine, a 3.6 kJ step (1 Wh) is not.
        let (j, _) = segment_joules(&at(400.0, 0, kwh(0.0, 36.0)), &at(400.0, 30_000, kwh(12_096.0, 36.0)), secs(0));
        assert_eq!(j, 12_096.0);
        let (j, _) =
            segment_joules(&at(400.0, 0, kwh(0.0, 3600.0)), &at(400.0, 30_000, kwh(14_400.0, 3600.0)), secs(0));
        assert_eq!(j, 12_000.0);
        // EnergyJoules and EnergykWh are never differenced with each other.
        let (j, _) = segment_joules(&bmc(400.0, 0, Some(0.0)), &at(400.0, 30_000, kwh(12_096.0, 36.0)), secs(0));
        assert_eq!(j, 12_000.0);
        // Part of a span (the psu booked its start): pro rata.
        let (j, _) = segment_joules(&bmc(400.0, 0, Some(0.0)), &bmc(400.0, 30_000, Some(12_600.0)), secs(10));
        assert!((j - 8_400.0).abs() < 1e-9, "{j}");
        assert!(counter_usable(&BmcEnergy { joules: 0.0, resolution_j: 1.0, native_joules: true }, 0.5));
        assert!(!counter_usable(&BmcEnergy { joules: 0.0, resolution_j: 0.0, native_joules: false }, 1e9));
    }

    #[test]
    fn several_bmcs_are_never_paired_and_dcmi_to_redfish_is_exact() {
        let mut h = hp(None);
        h.update(secs(0), &redfish(bmc(100.0, 0, None)));
        h.update(secs(30), &redfish(bmc(100.0, 30_000, None)));
        // The second BMC takes over: its first reading starts a run, held back to 30 s.
        let other = BmcPower { bmc: "bmc2".into(), ..bmc(200.0, 40_000, Some(1e6)) };
        h.update(secs(45), &redfish(other.clone()));
        assert_eq!(h.total(Method::BmcRedfish), 3000.0 + 2000.0);
        // DCMI appears: it starts its own run from the booked edge (40 s).
        let dcmi = HostFacts { bmc_dcmi: Some(bmc(300.0, 50_000, None)), ..redfish(other) };
        h.update(secs(55), &dcmi);
        assert_eq!(h.total(Method::BmcDcmi), 3000.0);
        assert_eq!(h.timeline().booked, secs(50));
    }

    #[test]
    fn order_of_methods() {
        let all = HostFacts {
            bmc_dcmi: Some(bmc(400.0, 0, None)),
            bmc_redfish: Some(bmc(390.0, 0, None)),
            rapl_host_delta_uj: Some(1_000_000),
            psu_input_watts: Some(350.0),
            acpi_power_watts: Some(300.0),
            cpu_utilization: Some(0.5),
        };
        let dt = Some(Duration::from_secs(1));
        assert_eq!(choose(&all, dt, &model(), 1.25), Some(HostReading { method: Method::BmcDcmi, watts: 400.0 }));
        let f = HostFacts { bmc_dcmi: None, ..all.clone() };
        assert_eq!(choose(&f, dt, &model(), 1.25), Some(HostReading { method: Method::BmcRedfish, watts: 390.0 }));
        let f = HostFacts { bmc_redfish: None, ..f };
        assert_eq!(choose(&f, dt, &model(), 1.25).map(|r| r.method), Some(Method::PsuInput));
        let f = HostFacts { psu_input_watts: None, ..f };
        assert_eq!(choose(&f, dt, &model(), 1.25).map(|r| r.method), Some(Method::AcpiPowerMeter));
        let f = HostFacts { acpi_power_watts: None, ..f };
        assert_eq!(choose(&f, dt, &model(), 1.25), Some(HostReading { method: Method::RaplUplift, watts: 1.25 }));
        let f = HostFacts { rapl_host_delta_uj: None, ..f };
        assert_eq!(choose(&f, dt, &model(), 1.25), Some(HostReading { method: Method::Model, watts: 200.0 }));
        assert_eq!(choose(&HostFacts::default(), dt, &model(), 1.25), None);
    }

    #[test]
    fn trapezoid_on_the_same_method_and_no_double_count_on_switch() {
        let mut h = hp(None);
        let psu = |w| HostFacts { psu_input_watts: Some(w), cpu_utilization: Some(0.5), ..Default::default() };
        h.update(Duration::from_secs(0), &psu(100.0));
        h.update(Duration::from_secs(10), &psu(200.0));
        assert_eq!(h.total(Method::PsuInput), 1500.0);
        // PSUs vanish: the model carries the next interval, the PSU counter stays.
        h.update(Duration::from_secs(20), &HostFacts { cpu_utilization: Some(0.5), ..Default::default() });
        assert_eq!(h.total(Method::PsuInput), 1500.0);
        assert_eq!(h.total(Method::Model), 2000.0);
        // A gap longer than max_gap is counted, not integrated.
        let (_, errs) = h.update(Duration::from_secs(200), &psu(100.0));
        assert_eq!(errs, vec![(Source::Hwmon, Reason::Gap)]);
        assert_eq!(h.total(Method::PsuInput), 1500.0);
    }

    #[test]
    fn rapl_uplift_books_counter_increments_exactly() {
        let mut h = hp(None);
        h.update(Duration::from_secs(0), &HostFacts::default());
        let f = HostFacts { rapl_host_delta_uj: Some(400_000_000), ..Default::default() };
        let (r, _) = h.update(Duration::from_secs(4), &f);
        assert_eq!(r, Some(HostReading { method: Method::RaplUplift, watts: 125.0 }));
        assert_eq!(h.total(Method::RaplUplift), 500.0);
    }

    #[test]
    fn a_counter_that_serde_json_misparsed_by_default_reloads_exactly() {
        // Found by the e2e restart test: read back 1 ulp low without float_roundtrip.
        let v: f64 = "124.84655258400001".parse().expect("f64");
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StateFile::open(dir.path()).expect("state");
        s.save(&BTreeMap::from([(Method::PsuInput, v)]), true);
        assert_eq!(s.load().get(&Method::PsuInput).map(|x| x.to_bits()), Some(v.to_bits()));
    }

    #[test]
    fn counters_persist_across_restarts() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut h = hp(Some(StateFile::open(dir.path()).expect("state")));
        let psu = HostFacts { psu_input_watts: Some(300.0), ..Default::default() };
        h.update(Duration::from_secs(0), &psu);
        h.update(Duration::from_secs(10), &psu);
        h.update(Duration::from_secs(20), &psu);
        h.flush();
        let h2 = hp(Some(StateFile::open(dir.path()).expect("state")));
        assert_eq!(h2.total(Method::PsuInput), 6000.0);
        // A torn write of the newest slot: the older slot still answers, a lower but
        // valid value (the save before it), never garbage.
        let path = dir.path().join("host-energy.state");
        let mut bytes = std::fs::read(&path).expect("read");
        let newest = (0..2).max_by_key(|i| decode_slot(&bytes[i * SLOT..(i + 1) * SLOT]).map(|(s, _)| s)).unwrap_or(0);
        bytes[newest * SLOT + 30] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let h3 = hp(Some(StateFile::open(dir.path()).expect("state")));
        assert_eq!(h3.total(Method::PsuInput), 3000.0);
        std::fs::write(&path, "{garbage").expect("w");
        let h4 = hp(Some(StateFile::open(dir.path()).expect("state")));
        assert_eq!(h4.total(Method::PsuInput), 0.0);
        assert!(dir.path().join("host-energy.state.corrupt").exists());
    }

    #[test]
    fn unchanged_counters_are_not_rewritten() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StateFile::open(dir.path()).expect("state");
        let t = BTreeMap::from([(Method::Model, 5.0)]);
        s.save(&t, false);
        s.save(&t, false);
        assert_eq!(s.seq, 1);
        s.save(&BTreeMap::from([(Method::Model, 6.0)]), false);
        assert_eq!(s.seq, 2);
    }

    proptest! {
        /// A counter reloaded after a restart is the same f64, bit for bit: one
        /// ulp lower would be a counter reset for Prometheus and the ledger
        /// (serde_json parses floats exactly only with `float_roundtrip`).
        #[test]
        fn saved_counters_reload_bit_exact(joules in 0.0f64..1e12) {
            let dir = tempfile::tempdir().expect("tmp");
            let mut s = StateFile::open(dir.path()).expect("state");
            s.save(&BTreeMap::from([(Method::PsuInput, joules)]), false);
            let back = s.load().get(&Method::PsuInput).copied().unwrap_or(-1.0);
            prop_assert_eq!(back.to_bits(), joules.to_bits(), "{} reloaded as {}", joules, back);
        }

        /// Whatever sequence of available facts, every method's counter is
        /// monotonic and the sum over methods equals the sum of the booked
        /// intervals (nothing doubled, nothing lost).
        #[test]
        fn counters_monotonic_and_additive(steps in proptest::collection::vec(
            (1u64..30, proptest::option::of(0.0f64..2000.0), proptest::option::of(0.0f64..2000.0),
             proptest::option::of(0u128..10_000_000_000), proptest::option::of(0.0f64..=1.0)), 1..40)) {
            let mut h = hp(None);
            let mut now = Duration::ZERO;
            let mut prev: BTreeMap<Method, f64> = BTreeMap::new();
            let mut booked = 0.0;
            let mut last: Option<(Method, f64)> = None;
            let mut first = true;
            for (dt, psu, acpi, rapl, util) in steps {
                now += Duration::from_secs(dt);
                let f = HostFacts { bmc_dcmi: None, bmc_redfish: None, psu_input_watts: psu, acpi_power_watts: acpi, rapl_host_delta_uj: rapl, cpu_utilization: util };
                let expect = if first { None } else { choose(&f, Some(Duration::from_secs(dt)), &model(), 1.25) };
                if let Some(r) = &expect {
                    booked += interval_joules(r, last.as_ref(), &f, Duration::from_secs(dt), 1.25);
                }
                let (r, _) = h.update(now, &f);
                last = r.map(|r| (r.method, r.watts));
                first = false;
                for m in Method::ALL {
                    prop_assert!(h.total(*m) >= prev.get(m).copied().unwrap_or(0.0));
                    prev.insert(*m, h.total(*m));
                }
            }
            let sum: f64 = Method::ALL.iter().map(|m| h.total(*m)).sum();
            prop_assert!((sum - booked).abs() <= 1e-6 * (1.0 + booked));
        }

        /// BMC readings alone, seen by ticks at any times: the booked energy is
        /// the trapezoid of the readings over their own times; with an
        /// `EnergyJoules` counter, the counter's increase.
        #[test]
        fn bmc_energy_equals_the_trapezoid_of_its_readings(readings in proptest::collection::vec(
            (1u64..30_000, 0.0f64..2000.0, 0.0f64..5000.0, 0u8..3), 2..40), counter in any::<bool>()) {
            let mut h = hp(None);
            let mut at = 0u64;
            let mut raw = 1e6;
            let mut expect = 0.0;
            let mut prev: Option<BmcPower> = None;
            for (i, (step, watts, inc, ticks)) in readings.into_iter().enumerate() {
                if i > 0 {
                    at += step;
                    raw += inc;
                }
                let p = bmc(watts, at, counter.then_some(raw));
                if let Some(q) = &prev {
                    expect += if counter { p.energy.map(|e| e.joules).unwrap_or(0.0) - q.energy.map(|e| e.joules).unwrap_or(0.0) }
                        else { trapezoid_joules(q.watts, p.watts, (p.at - q.at).as_secs_f64()) };
                }
                // One to three ticks see this reading, at or after the instant it was taken.
                for k in 0..=ticks {
                    h.update(p.at + Duration::from_millis(u64::from(k) * 7), &redfish(p.clone()));
                }
                prev = Some(p);
            }
            let got = h.total(Method::BmcRedfish);
            prop_assert!((got - expect).abs() <= 1e-9 * (1.0 + expect), "{} vs {}", got, expect);
            prop_assert_eq!(h.total(Method::PsuInput), 0.0);
        }

        /// Any mix of BMC readings (new, repeated, late, from two BMCs, with
        /// counters that reset), power methods and outages: every counter is
        /// monotonic, the timeline is accounted exactly once (booked + gaps +
        /// skipped = elapsed), and the energy stays within the power range
        /// times the booked time (nothing doubled).
        #[test]
        fn counters_monotonic_and_timeline_exact_across_bmc_switches(steps in proptest::collection::vec(
            (1u64..40_000, 0u8..6, 100.0f64..500.0, 0u64..3000, any::<bool>(), proptest::option::of(0.0f64..1e6)), 1..60)) {
            let mut h = hp(None);
            let mut now = 0u64;
            let mut last_at = [0u64; 3];
            let mut prev: BTreeMap<Method, f64> = BTreeMap::new();
            let mut first = None;
            let mut counters = false;
            for (dt, which, watts, lag, new_reading, counter) in steps {
                now += dt;
                counters |= counter.is_some() && which < 3;
                let mut f = HostFacts { cpu_utilization: Some(0.5), ..Default::default() };
                let mut reading = |slot: usize, name: &str| {
                    if new_reading {
                        last_at[slot] = last_at[slot].max(now.saturating_sub(lag));
                    }
                    BmcPower { bmc: name.into(), energy: counter.map(|j| BmcEnergy { joules: j, resolution_j: 1.0, native_joules: true }), ..bmc(watts, last_at[slot], None) }
                };
                match which {
                    0 => f.bmc_dcmi = Some(reading(0, "ipmi")),
                    1 => f.bmc_redfish = Some(reading(1, "bmc1")),
                    2 => f.bmc_redfish = Some(reading(2, "bmc2")),
                    3 => f.psu_input_watts = Some(watts),
                    4 => f.acpi_power_watts = Some(watts),
                    _ => {}
                }
                h.update(Duration::from_millis(now), &f);
                first = first.or(h.booked_until);
                for m in Method::ALL {
                    prop_assert!(h.total(*m) >= prev.get(m).copied().unwrap_or(0.0));
                    prev.insert(*m, h.total(*m));
                }
                let t = h.timeline();
                let edge = h.booked_until.unwrap_or_default();
                prop_assert!(edge <= Duration::from_millis(now));
                prop_assert_eq!(t.booked + t.gaps + t.skipped, edge.saturating_sub(first.unwrap_or_default()));
            }
            if !counters {
                let sum: f64 = Method::ALL.iter().map(|m| h.total(*m)).sum();
                let booked = h.timeline().booked.as_secs_f64();
                prop_assert!(sum <= 500.0 * booked + 1e-6 && sum >= 100.0 * booked - 1e-6, "{} J in {} s", sum, booked);
            }
        }
    }
}
