//! `domesday-agent` command line (contract §4).

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOMESDAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let ov = Overrides {
        site: cli.site,
        host: cli.host,
        listen: cli.listen,
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
