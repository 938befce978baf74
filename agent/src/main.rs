//! `domesday-agent` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use domesday_agent::config::{AgentConfig, Overrides, parse_duration};

#[derive(Parser)]
#[command(name = "domesday-agent", version, about = "Energy, power, load and thermals of this server, for Prometheus")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TOML config file (without one: site "local", every default).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Root of sysfs (fixture trees for tests).
    #[arg(long, global = true)]
    sysfs_root: Option<PathBuf>,
    /// Root of procfs.
    #[arg(long, global = true)]
    procfs_root: Option<PathBuf>,
    /// Address of /metrics (default 127.0.0.1:9955).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Prometheus exporter web configuration (YAML: TLS, basic auth) for /metrics.
    #[arg(long, global = true)]
    web_config_file: Option<PathBuf>,
    /// Sampling interval, e.g. 5s.
    #[arg(long, global = true, value_parser = parse_duration)]
    interval: Option<std::time::Duration>,
    /// Site label.
    #[arg(long, global = true)]
    site: Option<String>,
    /// Host label (default: hostname).
    #[arg(long, global = true)]
    host: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Sample every interval and serve /metrics until SIGTERM.
    Run,
    /// Sample twice, one interval apart, and print the exposition.
    Once,
    /// Print every sensor, whether it is readable, and how to fix it.
    Probe,
    /// Validate the configuration and print the effective one.
    CheckConfig,
    /// Emulate N agents pushing the default series set to a collector, then
    /// print what it acknowledged per host.
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Number of simulated hosts (sim-00001, sim-00002, ...).
    #[arg(long)]
    hosts: usize,
    /// remote_write URL of the collector, e.g. http://127.0.0.1:9956/api/v1/write. Given several times: the
    /// hosts are split over the collectors and fail over between them as agents with a URL list do.
    #[arg(long, required = true)]
    push: Vec<String>,
    /// File holding the site's write token (else env DOMESDAY_PUSH_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// How long to run (default: until Ctrl-C / SIGTERM). The push interval is --interval (default 15s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Keep-alive connections (one request in flight on each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Write the per-host lines (CSV) to this file instead of stdout.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Simulated time between a host's two samples (timestamps and counter
    /// steps), to compress time: `--interval 100ms --sample-interval 5m` sends
    /// 5 minutes of samples every 100 ms (default: --interval).
    #[arg(long, value_parser = parse_duration)]
    sample_interval: Option<std::time::Duration>,
    /// Timestamp of the first sample, RFC 3339 (e.g. 2026-11-01T00:00:00Z; default: now).
    #[arg(long, value_parser = parse_start)]
    start: Option<i64>,
    /// Deadline of one request.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: std::time::Duration,
}

fn main() -> ExitCode {
    domesday_runtime::init_tracing();
    let cli = Cli::parse();
    if let Command::Simulate(args) = &cli.command {
        return simulate(args, cli.site.clone(), cli.interval);
    }
    let ov = Overrides {
        site: cli.site,
        host: cli.host,
        listen: cli.listen,
        web_config_file: cli.web_config_file,
        interval: cli.interval,
        sysfs_root: cli.sysfs_root,
        procfs_root: cli.procfs_root,
    };
    let cfg = match AgentConfig::load(cli.config.as_deref(), &ov) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig => {
            print!("{}", cfg.to_toml());
            Ok(())
        }
        Command::Once => domesday_agent::agent::once(cfg).map(|text| print!("{text}")),
        Command::Probe => domesday_agent::agent::probe(cfg).map(|text| print!("{text}")),
        Command::Run => domesday_agent::agent::run(cfg),
        Command::Simulate(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--start`: RFC 3339 → milliseconds since the epoch.
fn parse_start(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e} (expected e.g. 2026-11-01T00:00:00Z)"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| "a time before 1970 (expected e.g. 2026-11-01T00:00:00Z)".to_string())
}

fn simulate(args: &SimulateArgs, site: Option<String>, interval: Option<std::time::Duration>) -> ExitCode {
    use domesday_agent::config::{DEFAULT_PUSH_INTERVAL, load_token, parse_push_url};
    use domesday_agent::push::simulate::{SimOptions, run};
    let mut urls = Vec::new();
    for push in &args.push {
        match parse_push_url(push) {
            Ok(u) => urls.push(u.to_string()),
            Err(e) => {
                eprintln!("error: --push: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let token = match load_token(args.token_file.as_deref(), &|k| std::env::var(k).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --token-file: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = SimOptions {
        hosts: args.hosts,
        urls,
        token,
        interval: interval.unwrap_or(DEFAULT_PUSH_INTERVAL),
        sample_interval: args.sample_interval,
        start_ms: args.start,
        duration: args.duration,
        connections: args.connections,
        site: site.unwrap_or_else(|| "sim".into()),
        report: args.report.clone(),
        timeout: args.timeout,
    };
    match run(opts) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
