//! `domesday-agent probe`: one table of every sensor found, readable or not,
//! and for each failure the fix an operator can apply.

use domesday_model::vocab::{Reason, Source};

use crate::snapshot::Snapshot;

/// The fix for a failure, by source and reason.
pub fn fix(source: Source, reason: Reason) -> &'static str {
    match (source, reason) {
        (Source::Rapl, Reason::Permission) => {
            "energy_uj is root-only since Linux 5.10 (CVE-2020-8694): run the agent with CAP_DAC_READ_SEARCH \
             (the shipped systemd unit does), as root, or install the udev rule of docs/permissions.md"
        }
        (Source::Ipmi, Reason::Permission) => {
            "in-band IPMI needs /dev/ipmi0 readable: run as root or add the udev rule of docs/bmc.md"
        }
        (Source::Ipmi, Reason::Missing) => {
            "in-band needs /dev/ipmi0 (modprobe ipmi_devintf ipmi_si) or use -I lanplus args in [ipmi]; a deactivated DCMI reading is the BMC's own (docs/bmc.md)"
        }
        (Source::Ipmi, Reason::Timeout) => {
            "the BMC did not answer within [ipmi] timeout; the command was killed, retried with backoff"
        }
        (Source::Ipmi, Reason::Gap) => "the last BMC reading is older than 3 intervals; see the agent log",
        (Source::Ipmi, Reason::Parse) => {
            "ipmitool printed something that is not its usual output: check its version and [ipmi] args (see the agent log)"
        }
        (Source::Ipmi, Reason::Io) => {
            "ipmitool failed: out of band (-I lanplus), check the BMC address, user and IPMI_PASSWORD (see the agent log)"
        }
        (Source::Redfish, Reason::Permission) => {
            "the BMC refused the credentials: check [redfish] username and password_file, and the account's role"
        }
        (Source::Redfish, Reason::Timeout) => "the BMC did not answer within [redfish] timeout; retried with backoff",
        (Source::Redfish, Reason::Parse) => "the BMC's answer is not the expected Redfish JSON (see the agent log)",
        (Source::Redfish, Reason::Io) => "cannot reach the BMC: check [redfish] url, the network and TLS (ca_file)",
        (Source::Nvml, Reason::Missing) => {
            "the GPU or its driver does not offer this reading (older GPUs: no power or energy), or the NVIDIA driver is not installed ([nvml] library) (docs/bmc.md)"
        }
        (Source::Nvml, Reason::Permission) => {
            "NVML needs /dev/nvidiactl and /dev/nvidia* readable by the agent's user (docs/bmc.md)"
        }
        (_, Reason::Implausible) => {
            "the sensor reads a physically impossible value (a broken sensor or firmware; bounds in docs/bmc.md); down until it reads a possible one"
        }
        (_, Reason::Permission) => "make the file readable by the agent's user (docs/permissions.md)",
        (_, Reason::Parse) => "the driver returned a value that is not a number; reported down until it reads back",
        (_, Reason::Missing) => {
            "the sensor is gone or disabled (device removed, driver unloaded); rescanned every rescan_interval"
        }
        (_, Reason::Timeout) => "the driver did not answer within sensor_timeout; check dmesg for the device",
        (_, Reason::Io) => "the read failed in the driver or the path is not a file; check dmesg",
        _ => "",
    }
}

/// What a source found nothing of means, for the sources with no row.
fn absent_hint(source: Source) -> &'static str {
    match source {
        Source::Rapl => {
            "no RAPL zones under <sysfs>/class/powercap: load intel_rapl_msr (Intel, AMD since Linux 5.11); VMs have none"
        }
        Source::Hwmon => {
            "no hwmon chips under <sysfs>/class/hwmon: load the drivers (coretemp, k10temp, acpi_power_meter, pmbus)"
        }
        Source::Thermal => "no thermal zones (normal on many servers)",
        Source::Ipmi | Source::Redfish => "no answer from the BMC yet (slow BMC: see the agent log)",
        Source::Nvml => "the NVIDIA driver lists no GPU (`nvidia-smi -L`), or no answer yet (see the agent log)",
        _ => "",
    }
}

/// Formats the probe table.
/// `enabled` lists each source with why it is off (`None`: on).
pub fn table(snap: &Snapshot, enabled: &[(Source, Option<String>)]) -> String {
    let mut rows: Vec<[String; 5]> =
        vec![["SOURCE".into(), "SENSOR".into(), "UNIT".into(), "STATUS".into(), "FIX / PATH".into()]];
    for s in &snap.statuses {
        let (status, note) = match &s.result {
            Ok(v) => (format!("ok {v}"), s.path.clone()),
            Err(e) => (format!("{}: {}", e.reason, e.detail), fix(s.source, e.reason).to_string()),
        };
        rows.push([s.source.to_string(), s.sensor.clone(), s.unit.to_string(), status, note]);
    }
    for (source, off) in enabled {
        if let Some(why) = off {
            let fix = match source {
                Source::Ipmi => "add [ipmi] to read BMC wall power and temperatures (docs/bmc.md)",
                Source::Redfish => {
                    "add [redfish] url/username/password_file to read the BMC over Redfish (docs/bmc.md)"
                }
                Source::Nvml => {
                    "install the NVIDIA driver or set [nvml] library; enabled = true reports its absence as an error (docs/bmc.md)"
                }
                _ => "",
            };
            rows.push([source.to_string(), "-".into(), "".into(), why.clone(), fix.into()]);
        } else if !snap.statuses.iter().any(|s| s.source == *source) {
            rows.push([source.to_string(), "-".into(), "".into(), "none found".into(), absent_hint(*source).into()]);
        }
    }
    let widths: Vec<usize> = (0..4).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", r[i], w = *w));
        }
        out.push_str(&r[4]);
        out.push('\n');
    }
    match &snap.host {
        Some(h) => {
            out.push_str(&format!("\nhost power: {:.1} W by method {} ({})\n", h.watts, h.method, h.method.quality()))
        }
        None => out.push_str("\nhost power: not available yet (needs two samples)\n"),
    }
    out
}
