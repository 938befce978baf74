//! The shipped deployment: the hardened systemd units (`deploy/systemd/`), checked
//! with `systemd-analyze verify` and scored with `systemd-analyze security
//! --offline=yes`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use domesday_tests::{binary, workspace_root};

/// Highest accepted `systemd-analyze security` exposure (0–10 scale) per unit.
const EXPOSURE_LIMITS: [(&str, f64); 2] = [("domesday-agent", 4.5), ("domesday-collector", 3.0)];

fn unit_path(name: &str) -> PathBuf {
    workspace_root().join("deploy/systemd").join(format!("{name}.service"))
}

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(unit_path(name)).expect("unit file")
}

/// Every `Key=value` of a unit's `[Service]` section, in order (keys repeat).
fn service_keys(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut keys = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line.split_once('=').expect("Key=value");
            keys.push((k.to_string(), v.to_string()));
        }
    }
    keys
}

fn key<'a>(keys: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    keys.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A copy of the unit whose `/usr/bin/<binary>` is the built binary, so that
/// `systemd-analyze` finds the executable it checks.
fn unit_for_analysis(dir: &Path, name: &str) -> PathBuf {
    let unit = unit_text(name).replace(&format!("/usr/bin/{name}"), &binary(name).display().to_string());
    let p = dir.join(format!("{name}.service"));
    std::fs::write(&p, unit).expect("write unit");
    p
}

/// The "Overall exposure level for X.service: 1.7 OK" score.
fn exposure(unit: &Path) -> f64 {
    let out = run(Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(unit));
    let all = text(&out);
    let line = all.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score: {all}"));
    let after = line.rsplit_once(": ").map(|(_, s)| s).expect("score");
    after.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad score line {line}"))
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units: Vec<PathBuf> = EXPOSURE_LIMITS.iter().map(|(n, _)| unit_for_analysis(dir.path(), n)).collect();
    let out = run(Command::new("systemd-analyze").arg("verify").args(&units));
    assert!(out.status.success(), "systemd-analyze verify failed:\n{}", text(&out));
    let all = text(&out);
    assert!(!all.contains("domesday"), "systemd-analyze verify complains about our units:\n{all}");
}

#[test]
fn systemd_units_exposure_within_limits_and_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deploy_doc = std::fs::read_to_string(workspace_root().join("docs/deploy.md")).expect("docs/deploy.md");
    for (name, limit) in EXPOSURE_LIMITS {
        let score = exposure(&unit_for_analysis(dir.path(), name));
        assert!(score <= limit, "{name}.service exposure {score} is above {limit}");
        let row = format!("| `{name}.service` | {score:.1} |");
        assert!(deploy_doc.contains(&row), "docs/deploy.md must record the measured score: {row}");
    }
}

#[test]
fn systemd_units_grant_least_privilege() {
    let agent = service_keys(&unit_text("domesday-agent"));
    let collector = service_keys(&unit_text("domesday-collector"));
    // RAPL energy_uj is root-only: the agent keeps exactly one capability, the collector none.
    assert_eq!(key(&agent, "AmbientCapabilities"), ["CAP_DAC_READ_SEARCH"]);
    assert_eq!(key(&agent, "CapabilityBoundingSet"), ["CAP_DAC_READ_SEARCH"]);
    assert_eq!(key(&collector, "CapabilityBoundingSet"), [""]);
    assert_eq!(key(&collector, "AmbientCapabilities"), [""]);
    for (name, keys) in [("domesday-agent", &agent), ("domesday-collector", &collector)] {
        for (k, v) in [
            ("User", name),
            ("StateDirectory", name),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("NoNewPrivileges", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("Restart", "on-failure"),
        ] {
            assert_eq!(key(keys, k), [v], "{name}.service {k}");
        }
        assert_eq!(key(keys, "SystemCallFilter").first(), Some(&"@system-service"), "{name}.service");
        let exec = key(keys, "ExecStart");
        assert_eq!(
            exec,
            [format!(
                "/usr/bin/{name} {} --config /etc/domesday/{}.toml",
                if name == "domesday-agent" { "run" } else { "serve" },
                &name[9..]
            )
            .as_str()]
        );
        // Neither binary reloads on SIGHUP nor speaks sd_notify: no ExecReload, no watchdog.
        assert!(key(keys, "ExecReload").is_empty() && key(keys, "WatchdogSec").is_empty(), "{name}.service");
    }
}
