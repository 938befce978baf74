//! `demo`: the README's "run it" command. A local site with a fresh write
//! token, the collector on its defaults, and — when `domesday-agent` is found
//! beside this binary or on PATH — an agent on this machine pushing to it
//! (estimation where there are no sensors). The site gets simulated facility
//! meters (utility, UPS output, water, heat reuse: `meters::simulated`, driven
//! by the IT energy the ledger books for the agent) and a static carbon
//! factor, so every indicator has figures; the site's name and the meters'
//! ids say they are simulated. Ctrl-C stops both.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::Context;

use crate::config::{CollectorConfig, hex};

/// Where the demo keeps its files, and how it listens.
pub struct DemoOptions {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub agent_listen: SocketAddr,
}

fn random_token() -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom")?;
    Ok(hex(&b))
}

/// `domesday-agent` beside this executable, else on PATH.
pub fn find_agent() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.parent()?.join("domesday-agent");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("domesday-agent")).find(|p| p.is_file())
}

/// How often the demo's agent pushes (and samples): short, so the first
/// figures come within a minute.
pub const PUSH_INTERVAL: &str = "5s";

/// The demo site's name: its figures come from simulated meters, and say so.
pub const SITE_NAME: &str = "Demo site (simulated meters)";

/// The demo site's simulated facility meters: (id, role, unit, units per kWh
/// of the site's IT energy, what it stands for). Chosen so the indicators look
/// like a plausible air-cooled site with heat recovery: PUE 1.4 at the servers
/// (category 3), 1.4 / 1.06 ≈ 1.32 at the UPS output (category 1), WUE
/// 0.5 L/kWh, ERF 0.25 / 1.4 ≈ 0.18.
pub const SIMULATED_METERS: &[(&str, &str, &str, f64, &str)] = &[
    ("sim-utility", "utility_in", "kWh", 1.4, "utility intake (IT × simulated PUE 1.4)"),
    ("sim-ups-out", "ups_out", "kWh", 1.06, "UPS output (IT + 6 % distribution losses)"),
    ("sim-water", "water_in", "L", 0.5, "water intake, litres (0.5 L per kWh of IT)"),
    ("sim-heat-reuse", "heat_reused_out", "kWh", 0.25, "heat handed to a heat network (0.25 kWh per kWh of IT)"),
    ("sim-water-potable", "water_potable_in", "L", 0.1, "potable part of the water intake (0.1 L per kWh of IT)"),
];

/// How often the simulated meters are read: each read books the agents' latest push.
const SIMULATED_INTERVAL: &str = "1s";

/// The site's identity keys, as TOML lines of its `[[sites]]` table.
///
/// The keys the EU EED declaration (Delegated Regulation (EU) 2024/1364,
/// Annex I) needs are written here, with values marked as the demo's, so
/// reports can be produced on the demo site. Keys added to `SiteConfig` for
/// the declaration belong in this list too.
fn site_keys() -> String {
    [
        "operator = \"Demo operator (simulated)\"",
        "operator_contact = \"operator@demo.example\"",
        "owner = \"Demo owner (simulated)\"",
        "owner_contact = \"owner@demo.example\"",
        "region = \"demo\"",
        "country = \"FR\"",
        "lau_code = \"14118\"",
        "dc_type = \"enterprise\"",
        "dc_structure = \"structure\"",
        "entry_into_operation = \"2024-01\"",
        "installed_it_power_kw = 500.0",
        "total_floor_area_m2 = 800.0",
        "computer_room_floor_area_m2 = 300.0",
        "intake_air_set_point_c = 24.0",
        // A made-up SIRET that passes the check digit; no real company has it.
        "siret = [\"12345678900007\"]",
        "contact_name = \"Demo contact (simulated)\"",
        "contact_email = \"energy@demo.example\"",
        "commissioning_date = \"2024-01-15\"",
        "public_disclosure_url = \"https://demo.example/energy\"",
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect()
}

/// The site's sub-tables the declaration needs: redundancy (Annex I 2) and
/// the figures no meter gives, declared for `year` (Annex II), all marked as
/// the demo's own so that no one mistakes them for a real site's.
fn site_tables(year: i16) -> String {
    format!(
        "\n[sites.redundancy]\nelectrical_hv = \"N\"\nelectrical_lv = \"N\"\nelectrical_rack = \"N\"\n\
         cooling_room = \"N\"\ncooling_rack = \"N\"\n\n\
         # SIMULATED: the demo's declared annual figures.\n[[sites.annual]]\nyear = {year}\ngrid_functions = []\n\
         cbtg_kw = 0.0\ntwh_c = 30.0\nrefrigerant_types = [\"R-1234ze(E)\"]\ncdd_degree_days = 100.0\n\
         cdd_source = \"simulated (demo)\"\neres_goo_kwh = 0.0\neres_ppa_kwh = 0.0\ncserv_sert = 0.0\n\
         cserv_floor_coverage_pct = 0.0\ncstor_pb = 0.0\ncstor_floor_coverage_pct = 0.0\n"
    )
}

/// The `[[sites.meters]]` tables of the simulated meters.
fn simulated_meters() -> String {
    SIMULATED_METERS
        .iter()
        .map(|(id, role, unit, per, what)| {
            format!(
                "\n# SIMULATED: {what}.\n[[sites.meters]]\nid = \"{id}\"\nrole = \"{role}\"\nkind = \"simulated\"\nunit = \"{unit}\"\nper_it_kwh = {per:?}\ninterval = \"{SIMULATED_INTERVAL}\"\n"
            )
        })
        .collect()
}

/// Writes the demo's configs and returns (collector config path, agent config path).
pub fn prepare(opts: &DemoOptions) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    let token_file = opts.dir.join("push.token");
    if !token_file.exists() {
        std::fs::write(&token_file, random_token()? + "\n").context("writing the demo token")?;
    }
    let tz = std::fs::read_to_string("/etc/timezone")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| jiff::tz::TimeZone::get(s).is_ok());
    let collector = opts.dir.join("collector.toml");
    std::fs::write(
        &collector,
        format!(
            "# Generated by `domesday-collector demo`. Its meters are SIMULATED from this machine's IT energy;\n\
             # kind \"simulated\" is refused by `serve` and `check-config`.\n\
             listen = \"{}\"\ndb = {:?}\n\
             # Site gauges of /metrics recomputed every 5 s (default 1 min): figures at once.\n\
             gauges_refresh = \"5s\"\n\n\
             # A static grid factor for France, from the shipped table (BoaviztAPI electrical mix, life cycle).\n\
             [carbon]\nsource = \"static\"\ngrid_zone = \"FR\"\nbasis = \"lifecycle\"\n\n\
             [[sites]]\nid = \"local\"\nname = {:?}\ntimezone = {:?}\ntoken_file = {:?}\n{}{}{}",
            opts.listen,
            opts.dir.join("domesday.db").display().to_string(),
            SITE_NAME,
            tz.unwrap_or_else(|| "UTC".into()),
            token_file.display().to_string(),
            site_keys(),
            site_tables(jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::now()).year()),
            simulated_meters(),
        ),
    )?;
    let agent = opts.dir.join("agent.toml");
    std::fs::write(
        &agent,
        format!(
            "# Generated by `domesday-collector demo`.\nsite = \"local\"\nlisten = \"{}\"\ninterval = \"{PUSH_INTERVAL}\"\nstate_dir = {:?}\n\n[push]\nurl = \"http://{}/api/v1/write\"\ntoken_file = {:?}\ninterval = \"{PUSH_INTERVAL}\"\n",
            opts.agent_listen,
            opts.dir.join("agent-state").display().to_string(),
            opts.listen,
            token_file.display().to_string()
        ),
    )?;
    Ok((collector, agent))
}

/// Starts the agent, if one is found.
pub fn spawn_agent(agent_config: &Path) -> Option<Child> {
    let bin = find_agent()?;
    match Command::new(&bin).arg("run").arg("--config").arg(agent_config).spawn() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(agent = %bin.display(), error = %e, "cannot start the agent");
            None
        }
    }
}

/// Loads the generated collector config, validated like any other except
/// that its simulated meters are accepted.
pub fn load(collector_config: &Path) -> anyhow::Result<crate::config::Loaded> {
    CollectorConfig::load_demo(collector_config).map_err(|e| anyhow::anyhow!("demo config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_has_simulated_meters_that_only_the_demo_accepts() {
        let dir = tempfile::tempdir().expect("tmp");
        let opts = DemoOptions {
            dir: dir.path().join("demo"),
            listen: "127.0.0.1:9956".parse().expect("addr"),
            agent_listen: "127.0.0.1:9100".parse().expect("addr"),
        };
        let (collector, _) = prepare(&opts).expect("prepare");
        let l = load(&collector).expect("the demo loads its config");
        let site = &l.sites[0].config;
        assert!(site.name.contains("simulated"), "{}", site.name);
        let roles: Vec<&str> = site.meters.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["utility_in", "ups_out", "water_in", "heat_reused_out", "water_potable_in"]);
        assert!(site.meters.iter().all(|m| m.id.starts_with("sim-") && m.kind.as_str() == "simulated"));
        assert_eq!(site.country.as_deref(), Some("FR"));
        assert!(l.config.carbon.as_ref().is_some_and(|c| c.grid_zone == "FR"));
        let e = CollectorConfig::load(Some(&collector)).map(|_| ()).expect_err("serve refuses it").to_string();
        assert!(e.contains("simulated"), "{e}");
    }
}
