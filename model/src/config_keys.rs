//! Reference of the agent's configuration keys (the `domesday-agent` TOML file) and of the collector's ledger
//! database keys: key, type, default and meaning. The agent's typed config must accept exactly these keys
//! (a test in the agent parses a file generated from this table; one in the collector does the same with its
//! ledger keys), and `docs/configuration.md` is generated from them.

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDef {
    /// Dotted path, e.g. `estimation.idle_watts`; `labels.*` stands for any name.
    pub key: &'static str,
    pub ty: &'static str,
    /// Default as TOML, or a sentence when it is computed.
    pub default: &'static str,
    /// A valid TOML value, used by the generated example and its test.
    pub example: &'static str,
    pub doc: &'static str,
}

macro_rules! keys {
    ($($key:literal, $ty:literal, $default:literal, $example:literal, $doc:literal;)+) => {
        &[$(KeyDef { key: $key, ty: $ty, default: $default, example: $example, doc: $doc }),+]
    };
}

/// Every agent key, grouped by table in file order.
pub const AGENT_KEYS: &[KeyDef] = keys! {
    "site", "string", "required in a file (`local` without a file)", "\"caen-1\"",
        "Site identifier, the `site` label of every series.";
    "host", "string", "the machine's hostname", "\"srv-r01-01\"",
        "Host name, the `host` label of every series.";
    "interval", "duration", "\"5s\"", "\"5s\"",
        "Sampling and exposition interval. RAPL is read at least every 30 s internally whatever this is, so a counter wrap is never missed.";
    "listen", "socket address", "\"127.0.0.1:9955\"", "\"127.0.0.1:9955\"",
        "Address of the `/metrics` endpoint.";
    "web_config_file", "path", "none: `/metrics` over plain http, without authentication", "\"/etc/domesday/web.yml\"",
        "Prometheus' exporter web configuration (YAML, the `--web.config.file` of node_exporter) for `/metrics`: `tls_server_config` (`cert_file`, `key_file`, `client_auth_type` `NoClientCert`, `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`, `client_ca_file`, `min_version`, `max_version`) and `basic_auth_users` (user: bcrypt hash). Relative paths are relative to that file; keys it does not implement are refused. Read and checked at start, and the whole file again on SIGHUP (a bad one keeps the configuration in use). Also `--web-config-file`. See docs/security.md.";
    "sysfs_root", "path", "\"/sys\"", "\"/sys\"",
        "Root of sysfs; point it at a fixture tree to test.";
    "procfs_root", "path", "\"/proc\"", "\"/proc\"",
        "Root of procfs (`stat`, `meminfo`, `loadavg`, `cpuinfo`).";
    "machine_id_file", "path", "\"/etc/machine-id\"", "\"/etc/machine-id\"",
        "File holding the machine id reported in `domesday_host_info`.";
    "state_dir", "path", "\"/var/lib/domesday-agent\" (falls back to $XDG_STATE_HOME/domesday-agent or ~/.local/state/domesday-agent when not writable)", "\"/var/lib/domesday-agent\"",
        "Where host energy counters persist across restarts.";
    "sensor_timeout", "duration", "\"2s\", at most half the interval", "\"2s\"",
        "Deadline for one source's reads in a tick; a source that blocks longer is marked down (`reason=\"timeout\"`) and the tick goes on without it.";
    "rescan_interval", "duration", "\"60s\"", "\"60s\"",
        "How often sensors are rediscovered (hot-plugged PSUs, loaded drivers).";
    "labels.*", "string", "none", "\"normandie\"",
        "Extra constant labels on every series. Names match `[a-z_][a-z0-9_]*` and must not collide with catalog labels, `site`, `host`, `job`, `instance` or `__*`.";
    "sources.rapl", "bool", "true", "true",
        "Read RAPL powercap zones (Intel, and AMD since Linux 5.11).";
    "sources.hwmon", "bool", "true", "true",
        "Read hwmon chips (temperatures, fans, power meters, PSUs, energy counters).";
    "sources.thermal", "bool", "true", "true",
        "Read thermal zones.";
    "estimation.model", "string", "\"linear\"", "\"linear\"",
        "Power model used when no sensor measures the host: `linear` (idle + (max − idle) × utilisation) or `boavizta` (BoaviztAPI logarithmic CPU curve).";
    "estimation.idle_watts", "float", "per CPU class (docs/estimation.md)", "110.0",
        "Host power at idle for the `linear` model.";
    "estimation.max_watts", "float", "per CPU class (docs/estimation.md)", "420.0",
        "Host power at full CPU load for the `linear` model.";
    "estimation.rapl_uplift", "float", "1.33", "1.25",
        "Factor from RAPL package + DRAM power to wall power for the `rapl_uplift` method (source: BoaviztAPI other_consumption_ratio 0.33).";
    "push.url", "URL or list of URLs", "none: without a `[push]` table nothing is pushed", "\"https://collector.example:9956/api/v1/write\"",
        "Prometheus remote_write 1.0 endpoint of the collector (`http://` or `https://`, no credentials in the URL), or a list of them tried in order (`[\"http://c1:9956/api/v1/write\", \"http://c2:9956/api/v1/write\"]`, each once): a request that gets no answer, a 429 or a 5xx goes at once to the next, and the agent stays on the collector that answered until it fails (see README.md#several-collectors-failover). Setting `[push]` turns pushing on.";
    "push.token_file", "path", "none: the token comes from the environment variable `DOMESDAY_PUSH_TOKEN`", "\"/etc/domesday/push.token\"",
        "File holding the site's write token (surrounding whitespace ignored), sent as `Authorization: Bearer`. One of `token_file` or `DOMESDAY_PUSH_TOKEN` is required; the file wins. The token is never printed or logged.";
    "push.interval", "duration", "\"15s\"", "\"15s\"",
        "How often a tick's samples are pushed (every tick when shorter than `interval`). Each sample carries its tick's timestamp.";
    "push.series", "string", "\"default\"", "\"default\"",
        "`default`: host energy and power, `domesday_sensor_up`, RAPL zone energy, inlet temperature, CPU utilisation, host and agent info (about 20 series per host). `all`: every series of `/metrics`.";
    "push.spool_dir", "path", "\"<state_dir>/spool\"", "\"/var/lib/domesday-agent/spool\"",
        "Disk spool for batches the collector could not take (unreachable, 5xx, 429); replayed in order, also after a restart.";
    "push.spool_max_bytes", "size", "\"256MiB\"", "\"256MiB\"",
        "Bound of the spool on disk, in bytes or as a string (`\"512MiB\"`, `\"1GB\"`), at least 1 MiB. When full the oldest batches are dropped (counted in `domesday_push_samples_total{result=\"dropped\"}`).";
    "push.timeout", "duration", "\"10s\"", "\"10s\"",
        "Deadline of one request to the collector (connect included); a request that times out is retried from the spool.";
    "push.ca_file", "path", "none: the bundled public roots (webpki-roots)", "\"/etc/domesday/collector-ca.pem\"",
        "PEM bundle of the CA(s) that sign the collector's certificate (a private CA). When set it replaces the public roots: only these CAs are trusted. `https://` URLs only.";
    "push.cert_file", "path", "none: no client certificate", "\"/etc/domesday/agent.crt\"",
        "PEM client certificate (then any intermediates) presented to a collector that requires one (`[tls] client_ca_file`). With `key_file`; both read and checked against each other at start.";
    "push.key_file", "path", "none", "\"/etc/domesday/agent.key\"",
        "PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Readable by the agent only; never printed or logged.";
    "ipmi.enabled", "bool", "false without an `[ipmi]` table, true with one", "true",
        "Read the BMC over IPMI: DCMI wall power (host power method `bmc_dcmi`, above `psu_input`) and the BMC's temperature and power sensors. See docs/bmc.md for permissions (`/dev/ipmi0`).";
    "ipmi.backend", "string", "\"ipmitool\"", "\"ipmitool\"",
        "`ipmitool` (`dcmi power reading`, `sdr elist`) or `freeipmi` (`ipmi-dcmi --get-system-power-statistics`, power only).";
    "ipmi.command", "string", "\"ipmitool\" (`\"ipmi-dcmi\"` with `backend = \"freeipmi\"`)", "\"ipmitool\"",
        "Program run for each poll, looked up in PATH unless a path is given. It runs in its own process group, killed with the group on timeout.";
    "ipmi.args", "array of strings", "[] (in-band, /dev/ipmi0)", "[\"-I\", \"lanplus\", \"-H\", \"bmc\", \"-U\", \"monitor\", \"-E\"]",
        "Arguments put before the subcommand, e.g. `-I lanplus -H bmc -U monitor -E` for out-of-band access (the password from `IPMI_PASSWORD`, never on the command line).";
    "ipmi.interval", "duration", "\"30s\"", "\"30s\"",
        "BMC polling interval (at least 1s). The BMC is polled on its own thread; a tick uses the last reading, and a reading older than 3 intervals is not used.";
    "ipmi.timeout", "duration", "\"10s\", at most the interval", "\"10s\"",
        "Deadline of one poll; a command still running then is killed with its process group (`reason=\"timeout\"`). Failures back off up to 8 intervals.";
    "ipmi.sensors", "bool", "true", "true",
        "Also read the sensor listing (temperatures and power in `degrees C`/`Watts`); ipmitool backend only.";
    "redfish.enabled", "bool", "true with a `[redfish]` table", "true",
        "Read the BMC over Redfish (`EnvironmentMetrics`/`Sensors`, else legacy `Chassis/{id}/Power` and `/Thermal`): wall power (host power method `bmc_redfish`, below `bmc_dcmi`) and temperatures. Several BMCs: `[[redfish]]` tables, each with these keys. See docs/bmc.md.";
    "redfish.url", "URL", "none: without a `[redfish]` table Redfish is off", "\"https://bmc.example\"",
        "Base URL of the BMC (`https://`; `http://` only with `allow_plain_http = true`). No credentials in the URL.";
    "redfish.username", "string", "none", "\"monitor\"",
        "BMC account (a read-only role is enough); without it requests carry no credentials.";
    "redfish.password_file", "path", "none", "\"/etc/domesday/bmc.password\"",
        "File holding the account's password (trailing newline ignored). Never printed or logged.";
    "redfish.ca_file", "path", "none: the system's roots", "\"/etc/domesday/bmc-ca.pem\"",
        "PEM bundle trusted for the BMC's certificate, instead of the system roots (self-signed BMC certificates).";
    "redfish.insecure_skip_verify", "bool", "false", "false",
        "Accept any certificate (explicit opt-in; exclusive with `ca_file`).";
    "redfish.allow_plain_http", "bool", "false", "false",
        "Allow an `http://` URL (the password then travels in clear).";
    "redfish.chassis", "string", "the first member of `/redfish/v1/Chassis` not contained by another", "\"1U\"",
        "Chassis id read (its `EnvironmentMetrics` and `Sensors`, else its legacy `Power` and `Thermal`).";
    "redfish.interval", "duration", "\"30s\"", "\"30s\"",
        "Polling interval (at least 1s), on the Redfish source's own thread; a reading older than 3 intervals is not used.";
    "redfish.timeout", "duration", "\"10s\", at most the interval", "\"10s\"",
        "Deadline of one HTTP request (connect included).";
    "redfish.auth", "`session` or `basic`", "\"session\"", "\"session\"",
        "With `username`: `session` logs in once (`POST /redfish/v1/SessionService/Sessions`), sends `X-Auth-Token`, logs in again on 401 and deletes the session at shutdown (HTTP Basic when the BMC has no session service); `basic` sends HTTP Basic on every request. The token is never logged.";
    "nvml.enabled", "bool or \"auto\"", "\"auto\"", "\"auto\"",
        "Read NVIDIA GPUs: power and energy (`domain=\"gpu\"`), temperature, utilisation. Nothing NVIDIA is needed at build time. `auto`: on when the NVML library loads and the driver answers, else off quietly (`probe` says why); `true`: a missing library or driver is reported as a sensor error.";
    "nvml.backend", "string", "\"nvml\" (`\"nvidia-smi\"` when only `command` is set)", "\"nvml\"",
        "`nvml`: the NVML library loaded at runtime, in-process, on the GPU poll thread (power, energy counter, temperature, utilisation). `nvidia-smi`: runs `command` at each poll (power and temperature only).";
    "nvml.library", "path", "`libnvidia-ml.so.1` through the dynamic loader's search path", "\"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\"",
        "NVML library loaded by the `nvml` backend, for driver installs outside the loader's path.";
    "nvml.command", "string", "\"nvidia-smi\"", "\"nvidia-smi\"",
        "Program run for each poll by the `nvidia-smi` backend (`--query-gpu=index,uuid,name,power.draw,temperature.gpu --format=csv,noheader,nounits`), in its own process group, killed on timeout.";
    "nvml.interval", "duration", "\"10s\"", "\"10s\"",
        "GPU polling interval (at least 1s), on its own thread; a reading older than 3 intervals is not used.";
    "nvml.timeout", "duration", "\"5s\", at most the interval", "\"5s\"",
        "Deadline of one `nvidia-smi` run; with the `nvml` backend, how long `probe` and `once` wait for the first poll (an NVML call cannot be interrupted: a hung one holds only the poll thread, and its reading goes stale).";
};

/// The collector's keys that choose and open its ledger database (top level of the collector's TOML file). The
/// collector's other keys are documented in docs/collector.md.
pub const COLLECTOR_LEDGER_KEYS: &[KeyDef] = keys! {
    "db", "string", "\"./domesday.db\"", "\"postgres://domesday@127.0.0.1:5432/domesday\"",
        "Where the ledger is: a SQLite file path (created when missing), or a PostgreSQL database as `postgres://user@host:port/dbname` (also `postgresql://`; port 5432 when left out). A password in the URL (`user:password@` or `?password=`) is refused: use `db_password_file` or `PGPASSWORD`. Every command that opens the ledger works on either store except `backup` (SQLite only; see docs/scaling.md). Also `--db`.";
    "db_password_file", "path", "none: the `PGPASSWORD` environment variable, else no password", "\"/etc/domesday/postgres.password\"",
        "File holding the PostgreSQL password (its line end stripped), read at load; it wins over `PGPASSWORD`. Refused with a SQLite `db`. The password is never printed: `check-config` says only its length and where it came from.";
};

/// The TOML example config: every key with its example value.
pub fn example_toml() -> String {
    let mut out = String::new();
    let mut table = "";
    for k in AGENT_KEYS {
        let (t, name) = match k.key.split_once('.') {
            Some((t, n)) => (t, if n == "*" { "region" } else { n }),
            None => ("", k.key),
        };
        if t != table {
            out.push_str(&format!("\n[{t}]\n"));
            table = t;
        }
        out.push_str(&format!("{name} = {}\n", k.example));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_has_every_table_once() {
        let ex = example_toml();
        for t in ["[labels]", "[sources]", "[estimation]", "[push]"] {
            assert_eq!(ex.matches(t).count(), 1, "{t}");
        }
        assert!(ex.starts_with("site = \"caen-1\"\n"));
    }
}
