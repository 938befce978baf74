//! Golden-file tests of the complete `/metrics` exposition for every fixture
//! tree: sample, advance the tree to its `t1` state (5 s later), sample again,
//! render, and compare byte for byte. `UPDATE_GOLDEN=1` rewrites the files;
//! review the diff. Every exposition must also pass `promtool check metrics`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use domesday_agent::config::{AgentConfig, Overrides};
use domesday_agent::render::render;
use domesday_agent::sampler::Sampler;
use domesday_agent::snapshot::constant_labels;
use domesday_tests::{apply_overlay, fixture_copy, promtool_check_metrics, series_value};

fn exposition(tree: &str) -> String {
    let (_tmp, root) = fixture_copy(tree);
    let ov = Overrides {
        site: Some("caen-1".into()),
        host: Some(tree.into()),
        interval: Some(Duration::from_secs(5)),
        sysfs_root: Some(root.join("sys")),
        procfs_root: Some(root.join("proc")),
        ..Default::default()
    };
    let mut cfg = AgentConfig::load(None, &ov).expect("config");
    cfg.machine_id_file = root.join("etc/machine-id");
    // The clock state of the machine running the test varies: a synchronised one, fixed.
    std::fs::write(root.join("clock"), "status=0x2001 maxerror=12000 state=0\n").expect("clock fixture");
    cfg.clock_fixture = Some(root.join("clock"));
    cfg.labels.insert("region".into(), "normandie".into());
    let cfg = Arc::new(cfg);
    let mut sampler = Sampler::new(cfg.clone(), false).expect("sampler");
    sampler.tick(Duration::ZERO);
    apply_overlay(tree, &root).expect("overlay");
    let snap = sampler.tick(Duration::from_secs(5));
    let text = render(&snap, &constant_labels(&cfg));
    // The only value that depends on the machine running the test.
    text.lines()
        .map(|l| if l.starts_with("domesday_sample_duration_seconds{") { normalize_duration(l) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn normalize_duration(line: &str) -> String {
    match line.rsplit_once(' ') {
        Some((series, _)) => format!("{series} 0.001"),
        None => line.to_string(),
    }
}

fn check(tree: &str) -> String {
    let text = exposition(tree);
    let complaints = promtool_check_metrics(&text);
    assert!(complaints.is_empty(), "promtool check metrics on {tree}:\n{complaints}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden").join(format!("{tree}.prom"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "{tree}: exposition differs from {} ({} vs {} lines):\n{}",
            path.display(),
            want.lines().count(),
            text.lines().count(),
            diff.join("\n")
        );
    }
    text
}

#[test]
fn intel_two_sockets() {
    let t = check("intel-2s");
    // Independent of the golden file: the facts the fixture README states.
    let rapl = |zone: &str| {
        series_value(&t, "domesday_energy_joules_total", &[&format!("zone=\"{zone}\""), "source=\"rapl\""])
    };
    assert_eq!(rapl("intel-rapl:1"), Some((262_143_000_000u64 + 550_000_000) as f64 / 1e6), "wrap-corrected");
    assert_eq!(rapl("intel-rapl:0"), Some(101_834_567_890_f64 / 1e6));
    assert!(!t.contains("intel-rapl-mmio"), "mmio repeats the package counter");
    let power = |zone: &str| series_value(&t, "domesday_power_watts", &[&format!("zone=\"{zone}\"")]);
    assert_eq!(power("intel-rapl:1"), Some(110.0));
    assert_eq!(power("intel-rapl:0:0"), Some(18.0));
    // PSU inputs 180 + 140 W win over the ACPI meter; outputs are never added.
    assert_eq!(
        series_value(&t, "domesday_host_power_watts", &["method=\"psu_input\"", "quality=\"measured\""]),
        Some(320.0)
    );
    // Trapezoid over 5 s: (312 + 320) / 2 × 5.
    assert_eq!(series_value(&t, "domesday_host_energy_joules_total", &["method=\"psu_input\""]), Some(1580.0));
    assert_eq!(series_value(&t, "domesday_cpu_utilization_ratio", &[]), Some(0.4));
    assert!(t.contains("chip=\"platform_coretemp_0\"") && t.contains("chip=\"platform_coretemp_1\""));
}

#[test]
fn amd_epyc() {
    let t = check("amd-epyc");
    // No PSU, no power meter: RAPL package sum (1250 + 1100 J) × uplift 1.33 over 5 s.
    let w = series_value(&t, "domesday_host_power_watts", &["method=\"rapl_uplift\"", "quality=\"estimated\""]);
    assert_eq!(w, Some(2350.0 / 5.0 * 1.33));
    assert_eq!(series_value(&t, "domesday_host_energy_joules_total", &["method=\"rapl_uplift\""]), Some(2350.0 * 1.33));
    // The amd_energy counter that reset counts from its new value.
    let e = series_value(&t, "domesday_energy_joules_total", &["source=\"hwmon\"", "energy4\""]);
    assert_eq!(e, Some((5_262_190_571_411u64 + 1_873_445_120) as f64 / 1e6));
    assert!(!t.contains("source=\"thermal\""), "no thermal zones on this machine");
}

#[test]
fn vm_minimal_is_estimated() {
    let t = check("vm-minimal");
    assert_eq!(series_value(&t, "domesday_cpu_utilization_ratio", &[]), Some(0.5));
    // CCF Cascade Lake per-thread coefficients × 4 vCPUs at 50 %.
    let want = 0.64 * 4.0 + (3.97 - 0.64) * 4.0 * 0.5;
    let got = series_value(&t, "domesday_host_power_watts", &["method=\"model\"", "quality=\"estimated\""]);
    assert!(got.is_some_and(|g| (g - want).abs() < 1e-9), "{got:?} vs {want}");
    assert!(!t.contains("domesday_energy_joules_total"));
}

#[test]
fn broken_tree_reports_every_failure() {
    let t = check("broken");
    for (sensor, up) in [
        ("intel-rapl:0", 1.0),
        ("intel-rapl:1", 0.0),
        ("intel-rapl:0:0", 0.0),
        ("intel-rapl:1:0", 0.0),
        ("platform_nct6775_656/temp1", 0.0),
        ("platform_nct6775_656/temp2", 0.0),
        ("platform_nct6775_656/temp3", 1.0),
        ("hwmon2/temp1", 1.0),
        ("acpitz_hwmon3/temp1", 1.0),
        ("acpitz_hwmon4/temp1", 1.0),
        ("thermal_zone1", 0.0),
    ] {
        assert_eq!(series_value(&t, "domesday_sensor_up", &[&format!("sensor=\"{sensor}\"")]), Some(up), "{sensor}");
    }
    for (source, reason, n) in
        [("rapl", "parse", 2.0), ("rapl", "io", 2.0), ("rapl", "missing", 2.0), ("hwmon", "parse", 4.0)]
    {
        let v = series_value(
            &t,
            "domesday_sensor_errors_total",
            &[&format!("source=\"{source}\""), &format!("reason=\"{reason}\"")],
        );
        assert_eq!(v, Some(n), "{source}/{reason}");
    }
    // A socket unreadable: no RAPL host sum; the ACPI meter (old device/ layout) wins.
    assert_eq!(series_value(&t, "domesday_host_power_watts", &["method=\"acpi_power_meter\""]), Some(251.0));
}
