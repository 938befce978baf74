//! Load from procfs under `--procfs-root`: CPU utilisation (`stat`), memory
//! (`meminfo`) and load averages (`loadavg`). Read here rather than through
//! `sysinfo`, whose `/proc` path is hard-coded, so load and the estimation that
//! depends on it are testable on fixture trees.

use std::path::{Path, PathBuf};
use std::time::Duration;

use domesday_model::catalog::{CPU_UTILIZATION, LOAD_AVERAGE, MEMORY_TOTAL, MEMORY_USED};
use domesday_model::vocab::{Reason, Source};

use super::{Output, Progress, Sample, SensorSource};
use crate::fsread::{ReadError, SysFile};

/// Aggregate CPU times from the `cpu` line of `/proc/stat`, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub idle: u64,
}

/// Parses the `cpu ` line: idle = idle + iowait; busy = user + nice + system +
/// irq + softirq + steal (guest time is already inside user/nice).
pub fn parse_stat(text: &str) -> Result<CpuTimes, String> {
    let line = text.lines().find(|l| l.starts_with("cpu ")).ok_or("no aggregate \"cpu\" line")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().map_err(|_| format!("bad number {v:?} in the cpu line")))
        .collect::<Result<_, _>>()?;
    if f.len() < 4 {
        return Err(format!("cpu line has {} fields, expected at least 4", f.len()));
    }
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // Checked: counters summing past u64 are garbage, not a utilisation (and would panic in a debug build).
    let sum = |idx: &[usize]| idx.iter().try_fold(0u64, |acc, i| acc.checked_add(get(*i)));
    match (sum(&[0, 1, 2, 5, 6, 7]), sum(&[3, 4])) {
        (Some(busy), Some(idle)) => Ok(CpuTimes { busy, idle }),
        _ => Err("the cpu line's counters add up past 2^64".into()),
    }
}

/// Utilisation between two readings; `None` when no time passed or counters went back.
pub fn utilization(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let busy = cur.busy.checked_sub(prev.busy)?;
    let idle = cur.idle.checked_sub(prev.idle)?;
    let total = busy.checked_add(idle)?;
    (total > 0).then(|| busy as f64 / total as f64)
}

/// `(MemTotal, MemAvailable)` in bytes.
pub fn parse_meminfo(text: &str) -> Result<(u64, u64), String> {
    let field = |name: &str| -> Result<u64, String> {
        let line = text.lines().find(|l| l.starts_with(name)).ok_or(format!("no {name} line"))?;
        let kb = line[name.len()..]
            .trim_start_matches(':')
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!("bad {name} value"))?;
        kb.checked_mul(1024).ok_or(format!("{name} value {kb} kB is out of range"))
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}

/// The three load averages.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], String> {
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Ok([a, b, c]),
        _ => Err(format!("expected three load averages, found {:?}", text.trim())),
    }
}

/// The procfs load source.
#[derive(Debug)]
pub struct Procfs {
    stat: SysFile,
    meminfo: SysFile,
    loadavg: SysFile,
    last_cpu: Option<CpuTimes>,
}

impl Procfs {
    pub fn new(procfs_root: &Path) -> Self {
        let f = |n: &str| SysFile::new(PathBuf::from(procfs_root).join(n));
        Procfs { stat: f("stat"), meminfo: f("meminfo"), loadavg: f("loadavg"), last_cpu: None }
    }
}

fn parsed<T>(file: &mut SysFile, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, ReadError> {
    let text = file.read()?;
    parse(&text).map_err(|d| ReadError::new(Reason::Parse, format!("{}: {d}", file.path().display())))
}

impl SensorSource for Procfs {
    fn kind(&self) -> Source {
        Source::Procfs
    }

    fn discover(&mut self) {}

    fn sample(&mut self, _now: Duration, progress: &Progress) -> Output {
        let mut out = Output::default();
        let path = |f: &SysFile| f.path().display().to_string();

        progress.enter("stat", &path(&self.stat));
        let cpu = parsed(&mut self.stat, parse_stat);
        let util = match (&cpu, self.last_cpu) {
            (Ok(cur), Some(prev)) => utilization(prev, *cur),
            _ => None,
        };
        self.last_cpu = cpu.as_ref().ok().copied();
        if let Some(u) = util {
            out.samples.push(Sample::new(&CPU_UTILIZATION, vec![], u));
        }
        out.facts.cpu_utilization = util;
        out.status(Source::Procfs, "stat".into(), "ratio", path(&self.stat), cpu.map(|_| util.unwrap_or(0.0)));

        progress.enter("meminfo", &path(&self.meminfo));
        let mem = parsed(&mut self.meminfo, parse_meminfo);
        if let Ok((total, avail)) = mem {
            out.samples.push(Sample::new(&MEMORY_USED, vec![], total.saturating_sub(avail) as f64));
            out.samples.push(Sample::new(&MEMORY_TOTAL, vec![], total as f64));
        }
        out.status(Source::Procfs, "meminfo".into(), "bytes", path(&self.meminfo), mem.map(|(t, _)| t as f64));

        progress.enter("loadavg", &path(&self.loadavg));
        let load = parsed(&mut self.loadavg, parse_loadavg);
        if let Ok(l) = load {
            for (w, v) in ["1m", "5m", "15m"].iter().zip(l) {
                out.samples.push(Sample::new(&LOAD_AVERAGE, vec![w.to_string()], v));
            }
        }
        out.status(Source::Procfs, "loadavg".into(), "", path(&self.loadavg), load.map(|l| l[0]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stat_and_utilization() {
        let a = parse_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").expect("parse");
        assert_eq!(a, CpuTimes { busy: 150, idle: 850 });
        let b = parse_stat("cpu  200 0 100 1600 100 0 0 0 0 0\n").expect("parse");
        assert_eq!(utilization(a, b), Some(150.0 / 1000.0));
        assert_eq!(utilization(b, a), None);
        assert!(parse_stat("intr 0\n").is_err());
        assert!(parse_stat("cpu  x y\n").is_err());
    }

    #[test]
    fn meminfo_and_loadavg() {
        let m = "MemTotal:       16384000 kB\nMemFree: 1 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(parse_meminfo(m), Ok((16384000 * 1024, 8192000 * 1024)));
        assert!(parse_meminfo("MemTotal: 5 kB\n").is_err());
        assert_eq!(parse_loadavg("3.52 2.87 2.41 4/1523 48211\n"), Ok([3.52, 2.87, 2.41]));
        assert!(parse_loadavg("garbage").is_err());
    }

    /// Found by the `sysfs_value` fuzz target (`fuzz/corpus/sysfs_value/meminfo-kb-overflow`): values whose bytes
    /// or sums do not fit in 64 bits are errors, not a panic (debug) or a wrapped figure (release).
    #[test]
    fn values_past_64_bits_are_errors() {
        let m = "MemTotal:       527985356389001180 kB\nMemAvailable: 1 kB\n";
        assert_eq!(parse_meminfo(m), Err("MemTotal value 527985356389001180 kB is out of range".into()));
        let max = u64::MAX;
        assert!(parse_stat(&format!("cpu  {max} 1 0 0 0 0 0 0\n")).is_err());
        assert!(parse_stat(&format!("cpu  0 0 0 {max} 1 0 0 0\n")).is_err());
        let a = CpuTimes { busy: 0, idle: 0 };
        assert_eq!(utilization(a, CpuTimes { busy: max, idle: max }), None);
    }

    proptest! {
        #[test]
        fn utilization_is_a_ratio(b0 in 0u64..1<<40, i0 in 0u64..1<<40, db in 0u64..1<<30, di in 0u64..1<<30) {
            let u = utilization(CpuTimes { busy: b0, idle: i0 }, CpuTimes { busy: b0 + db, idle: i0 + di });
            match u {
                Some(u) => prop_assert!((0.0..=1.0).contains(&u)),
                None => prop_assert_eq!(db + di, 0),
            }
        }
    }
}
