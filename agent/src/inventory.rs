//! Host inventory for `domesday_host_info`: DMI vendor and product (sysfs),
//! CPU model, sockets and threads (`cpuinfo` under the procfs root), memory and
//! the machine id. Read once at start and at each rescan.

use std::path::Path;

use crate::config::AgentConfig;
use crate::fsread::read_trimmed;
use crate::sources::procfs::parse_meminfo;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub vendor: String,
    pub product: String,
    pub cpu_model: String,
    pub sockets: u32,
    pub threads: u32,
    pub memory_bytes: u64,
    pub machine_id: String,
}

/// `(model name, sockets, threads)` from `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> (String, u32, u32) {
    let mut model = String::new();
    let mut threads = 0u32;
    let mut sockets = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        match k.trim() {
            "processor" => threads += 1,
            "model name" if model.is_empty() => model = v.trim().to_string(),
            "physical id" => {
                sockets.insert(v.trim().to_string());
            }
            _ => {}
        }
    }
    (model, (sockets.len() as u32).max(1), threads.max(1))
}

impl Inventory {
    pub fn read(cfg: &AgentConfig) -> Self {
        let dmi = |f: &str| read_trimmed(&cfg.sysfs_root.join("class/dmi/id").join(f)).unwrap_or_default();
        let cpuinfo = std::fs::read(cfg.procfs_root.join("cpuinfo")).map(|b| String::from_utf8_lossy(&b).into_owned());
        let (cpu_model, sockets, threads) = parse_cpuinfo(&cpuinfo.unwrap_or_default());
        let memory_bytes = std::fs::read_to_string(cfg.procfs_root.join("meminfo"))
            .ok()
            .and_then(|t| parse_meminfo(&t).ok())
            .map(|(t, _)| t)
            .unwrap_or(0);
        Inventory {
            vendor: dmi("sys_vendor"),
            product: dmi("product_name"),
            cpu_model,
            sockets,
            threads,
            memory_bytes,
            machine_id: read_trimmed(Path::new(&cfg.machine_id_file)).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_counts_sockets_and_threads() {
        let mut t = String::new();
        for p in 0..8 {
            t.push_str(&format!(
                "processor\t: {p}\nmodel name\t: AMD EPYC 7763 64-Core Processor\nphysical id\t: {}\n\n",
                p / 4
            ));
        }
        assert_eq!(parse_cpuinfo(&t), ("AMD EPYC 7763 64-Core Processor".into(), 2, 8));
        assert_eq!(parse_cpuinfo(""), (String::new(), 1, 1));
    }
}
