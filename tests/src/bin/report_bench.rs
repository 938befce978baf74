//! Report benchmark: builds a region's year of data in a ledger through the
//! ledger writer's `apply` (host energy counter samples and facility meter
//! register readings, as ingest and `import-meters` book them), writes the
//! collector config of its sites, then times `domesday-collector report
//! region` and `report eed` on it.
//!
//! Usage:
//!   domesday-report-bench generate --dir DIR [--sites N] [--hosts H] [--year Y] [--step-min M]
//!   domesday-report-bench time --collector PATH --dir DIR [--year Y] [--runs N] [--sites N]
//!                              [--formats json,html,xlsx] [--step-min M]
//!
//! `generate` samples every host and meter every `--step-min` minutes (60:
//! hourly) over the calendar year `--year` (Europe/Paris), one `apply` per
//! site and day, then materializes the journal. `time` prints a markdown table
//! (median and min wall time of `--runs` runs of each report, the median CPU
//! time, its target, met or not).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use domesday_collector::ledger::sqlite::SqliteWriter;
use domesday_collector::ledger::{Batch, CounterSample, LedgerWriter, Policy, SeriesLabels};

const REGION: &str = "bench";
const TOKEN: &str = "report-bench-token";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(args: &[String], name: &str, default: i64) -> anyhow::Result<i64> {
    match arg(args, name) {
        Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name} {v:?}: {e}")),
        None => Ok(default),
    }
}

/// (meter id, role, unit, register units per kWh of IT energy)
const METERS: [(&str, &str, &str, f64); 5] = [
    ("utility", "utility_in", "kWh", 1.35),
    ("ups", "ups_out", "kWh", 1.02),
    ("heat", "heat_reused_out", "kWh", 0.20),
    ("water", "water_in", "m3", 0.0004),
    ("water-potable", "water_potable_in", "m3", 0.0001),
];

fn site_id(i: i64) -> String {
    format!("dc{i:03}")
}

/// Writes `file` in `dir`: the config of the first `sites` sites.
fn write_config(dir: &Path, file: &str, sites: i64, year: i64, step_min: i64) -> anyhow::Result<PathBuf> {
    let gap = step_min * 2;
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\ndb = {:?}\n\n[ledger]\ngap = \"{gap}m\"\nsynchronous = \"normal\"\n\n\
         [carbon]\nsource = \"static\"\ngrid_zone = \"FR\"\nbasis = \"lifecycle\"\n",
        dir.join("domesday.db").display().to_string()
    );
    for s in 0..sites {
        let id = site_id(s);
        text.push_str(&format!(
            "\n[[sites]]\nid = \"{id}\"\nname = \"Data centre {id}\"\noperator = \"Operator {}\"\nregion = \"{REGION}\"\n\
             timezone = \"Europe/Paris\"\ntoken_sha256 = \"{}\"\n{}",
            s % 7,
            // Each site its own write token: the collector refuses two sites sharing one.
            domesday_collector::config::hex(&domesday_collector::config::hash_token(&format!("{TOKEN}-{id}"))),
            domesday_tests::declaration_keys(year)
        ));
        for (m, role, unit, _) in METERS {
            text.push_str(&format!(
                "\n[[sites.meters]]\nid = \"{m}\"\nrole = \"{role}\"\nkind = \"csv\"\nunit = \"{unit}\"\n"
            ));
        }
    }
    let p = dir.join(file);
    std::fs::write(&p, text)?;
    Ok(p)
}

fn generate(args: &[String]) -> anyhow::Result<()> {
    let dir = PathBuf::from(arg(args, "--dir").ok_or_else(|| anyhow::anyhow!("--dir DIR is required"))?);
    let sites = num(args, "--sites", 100)?;
    let hosts = num(args, "--hosts", 200)?;
    let year = num(args, "--year", 2025)?;
    let step_min = num(args, "--step-min", 60)?;
    anyhow::ensure!(
        step_min > 0 && 60 % step_min == 0 || step_min % 60 == 0,
        "--step-min divides or is a multiple of 60"
    );
    std::fs::create_dir_all(&dir)?;
    let cfg = write_config(&dir, "collector.toml", sites, year, step_min)?;
    let db = dir.join("domesday.db");
    let policy = Policy { gap_ms: step_min * 2 * 60_000, fsync_each_commit: false, ..Policy::default() };
    let tz = jiff::tz::TimeZone::get("Europe/Paris")?;
    let y = i16::try_from(year)?;
    let at = |y: i16| -> anyhow::Result<i64> {
        Ok(jiff::civil::date(y, 1, 1).to_zoned_datetime(tz.clone())?.timestamp().as_millisecond())
    };
    let (from, to) = (at(y)?, at(y + 1)?);
    let step_ms = step_min * 60_000;
    let day_ms = 86_400_000;
    let mut w = SqliteWriter::open(&db, policy)?;
    let started = Instant::now();
    let mut samples = 0u64;
    for s in 0..sites {
        let site: Arc<str> = site_id(s).into();
        let series: Vec<Arc<SeriesLabels>> =
            (0..hosts).map(|h| SeriesLabels::host(site.clone(), &format!("h{h:04}"), "rapl", "measured")).collect();
        // Host h draws a constant 150 + (h·7 mod 200) W, plus 10 W in each site's own pattern by hour.
        let watts = |h: i64, t: i64| 150 + (h * 7 + s) % 200 + ((t / 3_600_000 + s) % 24) / 3;
        let mut counters: Vec<i64> = vec![0; hosts as usize];
        let mut it_uj: i128 = 0;
        let mut t = from;
        let mut first = true;
        while t <= to {
            let end = (t + day_ms).min(to + 1);
            let mut batch = Batch::default();
            while t < end {
                for (h, c) in counters.iter_mut().enumerate() {
                    if !first {
                        let add = watts(h as i64, t) * step_ms * 1000; // W · ms · 1000 = µJ
                        *c += add;
                        it_uj += i128::from(add);
                    }
                    batch.samples.push(CounterSample::of_series(&series[h], t, Some(*c)));
                }
                let it_kwh = it_uj as f64 / 3.6e12;
                for (m, role, unit, k) in METERS {
                    let v = (it_kwh * k * 1e6).round() as i64;
                    batch.samples.push(CounterSample::meter(&site, m, role, unit, t, v));
                }
                first = false;
                t += step_ms;
            }
            samples += batch.samples.len() as u64;
            w.apply(&[batch], to + day_ms)?;
            w.housekeeping(false)?;
        }
        w.housekeeping(true)?;
        eprintln!("site {site}: {samples} samples so far, {:.1} s", started.elapsed().as_secs_f64());
    }
    w.housekeeping(true)?;
    drop(w);
    let gen_s = started.elapsed().as_secs_f64();
    let size: u64 = ["domesday.db", "domesday.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "generated {sites} sites × {hosts} hosts, a sample every {step_min} min over {year}: {samples} samples in {gen_s:.1} s, \
         ledger {:.1} MiB ({:.1} B/sample); config {}",
        size as f64 / 1048576.0,
        size as f64 / samples.max(1) as f64,
        cfg.display()
    );
    Ok(())
}

fn time(args: &[String]) -> anyhow::Result<()> {
    let collector = arg(args, "--collector").ok_or_else(|| anyhow::anyhow!("--collector PATH is required"))?;
    let dir = PathBuf::from(arg(args, "--dir").ok_or_else(|| anyhow::anyhow!("--dir DIR is required"))?);
    let year = num(args, "--year", 2025)?.to_string();
    let runs = num(args, "--runs", 5)?.max(1);
    let formats = arg(args, "--formats").unwrap_or_else(|| "json,html,xlsx".into());
    // `--sites N`: a config of the ledger's first N sites only (the region report reads the configured sites).
    let cfg = match arg(args, "--sites") {
        Some(n) => {
            let n: i64 = n.parse().map_err(|e| anyhow::anyhow!("--sites {n:?}: {e}"))?;
            write_config(&dir, &format!("collector-{n}.toml"), n, year.parse()?, num(args, "--step-min", 60)?)?
        }
        None => dir.join("collector.toml"),
    };
    let cfg = cfg.to_string_lossy().to_string();
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let site = site_id(0);
    let region_out = |ext: &str| out.join(format!("region.{ext}")).to_string_lossy().to_string();
    let eed_out = out.join("eed.json").to_string_lossy().to_string();
    let cases: Vec<(String, Vec<String>, f64)> = formats
        .split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            let a = ["report", "region", "--region", REGION, "--year", &year, "--format", f, "--out", &region_out(f)];
            (format!("report region --format {f}"), a.iter().map(|s| s.to_string()).collect(), 1.0)
        })
        .chain(std::iter::once((
            format!("report eed --site {site} --format json"),
            ["report", "eed", "--site", &site, "--year", &year, "--format", "json", "--out", &eed_out]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            0.2,
        )))
        .collect();
    println!("| measure | median | min | CPU (median) | target | met? |\n|---|---:|---:|---:|---:|---|");
    for (name, a, target) in cases {
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..runs {
            let c0 = children_cpu_s();
            let t = Instant::now();
            let o = Command::new(&collector).args(&a).arg("--config").arg(&cfg).output()?;
            let dt = t.elapsed().as_secs_f64();
            anyhow::ensure!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
            times.push(dt);
            if let (Some(c0), Some(c1)) = (c0, children_cpu_s()) {
                cpu.push(c1 - c0);
            }
        }
        times.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        let (median, min) = (times[times.len() / 2], times[0]);
        let cpu = cpu.get(cpu.len() / 2).map(|c| format!("{c:.2} s")).unwrap_or_else(|| "?".into());
        let met = if median < target { "yes" } else { "no" };
        println!("| `{name}` | {median:.3} s | {min:.3} s | {cpu} | < {target} s | {met} |");
    }
    Ok(())
}

/// CPU seconds (user + system) of this process's waited-for children, from
/// `/proc/self/stat` (`cutime`, `cstime`; in USER_HZ ticks, 100 per second on
/// Linux): on a shared machine the wall time of a run says as much about the
/// other processes as about the report, its CPU time does not. `None` off Linux.
fn children_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((ticks(16 - 3)? + ticks(17 - 3)?) as f64 / 100.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("generate") => generate(&args),
        Some("time") => time(&args),
        _ => anyhow::bail!("usage: domesday-report-bench generate|time … (see the file's header)"),
    }
}
