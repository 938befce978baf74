//! Host power arbitration and the per-method host energy counters.
//!
//! Each tick the best available method wins (contract §3 order; the BMC methods
//! are the BMC's wall readings): `bmc_dcmi`, `bmc_redfish`, `psu_input`, then `acpi_power_meter`, then
//! `rapl_uplift`, then `model`. The energy of the interval since the previous tick is booked on the
//! winner's counter only, computed from the winner's own data (trapezoid of its
//! power readings over the actual elapsed time, RAPL counter increments × uplift,
//! or the model at the interval's mean utilisation), so switching methods never
//! doubles or loses an interval. Counters persist in `state_dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::vocab::{Method, Reason, Source};
use serde::{Deserialize, Serialize};

use crate::energy::{trapezoid_joules, uj_to_joules};
use crate::estimation::PowerModel;
use crate::sources::HostFacts;

/// What the arbitration decided this tick.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    pub method: Method,
    pub watts: f64,
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
    last: Option<(Duration, Option<(Method, f64)>)>,
    state: Option<StateFile>,
}

/// Picks the best available method and its instantaneous power.
pub fn choose(facts: &HostFacts, dt: Option<Duration>, model: &PowerModel, uplift: f64) -> Option<HostReading> {
    if let Some(w) = facts.bmc_dcmi_watts {
        return Some(HostReading { method: Method::BmcDcmi, watts: w });
    }
    if let Some(w) = facts.bmc_redfish_watts {
        return Some(HostReading { method: Method::BmcRedfish, watts: w });
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

/// Energy of one interval for the chosen method.
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

impl HostPower {
    pub fn new(model: PowerModel, rapl_uplift: f64, max_gap: Duration, mut state: Option<StateFile>) -> Self {
        let totals = state.as_mut().map(|s| s.load()).unwrap_or_default();
        HostPower { model, rapl_uplift, max_gap, totals, last: None, state }
    }

    /// Books the interval ending at `now`; returns the reading and any errors to count.
    pub fn update(&mut self, now: Duration, facts: &HostFacts) -> (Option<HostReading>, Vec<(Source, Reason)>) {
        let mut errors = Vec::new();
        let dt = self.last.as_ref().map(|(t, _)| now.saturating_sub(*t));
        let reading = choose(facts, dt, &self.model, self.rapl_uplift);
        if let (Some(r), Some(dt)) = (&reading, dt) {
            if dt > self.max_gap {
                errors.push((method_source(r.method), Reason::Gap));
            } else {
                let prev = self.last.as_ref().and_then(|(_, p)| p.as_ref());
                let j = interval_joules(r, prev, facts, dt, self.rapl_uplift);
                if j.is_finite() && j >= 0.0 {
                    *self.totals.entry(r.method).or_insert(0.0) += j;
                } else {
                    errors.push((method_source(r.method), Reason::Rejected));
                }
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

    /// Cumulative joules of a method.
    pub fn total(&self, m: Method) -> f64 {
        self.totals.get(&m).copied().unwrap_or(0.0)
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

    #[test]
    fn order_of_methods() {
        let all = HostFacts {
            bmc_dcmi_watts: Some(400.0),
            bmc_redfish_watts: Some(390.0),
            rapl_host_delta_uj: Some(1_000_000),
            psu_input_watts: Some(350.0),
            acpi_power_watts: Some(300.0),
            cpu_utilization: Some(0.5),
        };
        let dt = Some(Duration::from_secs(1));
        assert_eq!(choose(&all, dt, &model(), 1.25), Some(HostReading { method: Method::BmcDcmi, watts: 400.0 }));
        let f = HostFacts { bmc_dcmi_watts: None, ..all.clone() };
        assert_eq!(choose(&f, dt, &model(), 1.25), Some(HostReading { method: Method::BmcRedfish, watts: 390.0 }));
        let f = HostFacts { bmc_redfish_watts: None, ..f };
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
             proptest::option::of(0u128..10_000_000_000), proptest::option::of(0.0f64..=1.0),
             proptest::option::of(0.0f64..2000.0)), 1..40)) {
            let mut h = hp(None);
            let mut now = Duration::ZERO;
            let mut prev: BTreeMap<Method, f64> = BTreeMap::new();
            let mut booked = 0.0;
            let mut last: Option<(Method, f64)> = None;
            let mut first = true;
            for (dt, psu, acpi, rapl, util, bmc) in steps {
                now += Duration::from_secs(dt);
                let f = HostFacts { bmc_dcmi_watts: bmc, bmc_redfish_watts: None, psu_input_watts: psu, acpi_power_watts: acpi, rapl_host_delta_uj: rapl, cpu_utilization: util };
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
    }
}
