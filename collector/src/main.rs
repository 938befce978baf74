//! `domesday-collector` command line.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command as Process;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use domesday_collector::api::parse_range;
use domesday_collector::config::{CollectorConfig, Loaded, hash_token, hex};
use domesday_collector::db::LedgerDb;
use domesday_collector::ledger::pg::{self, read::PgReader, store::PgWriter};
use domesday_collector::ledger::query::EnergyQuery;
use domesday_collector::ledger::sqlite::{SqliteReader, SqliteWriter};
use domesday_collector::ledger::writer::now_ms;
use domesday_collector::ledger::{LedgerReader, LedgerWriter, Provenance, Retire};
use domesday_collector::serve;

#[derive(Parser)]
#[command(
    name = "domesday-collector",
    version,
    about = "Energy ledger of domesday: remote_write ingest and energy API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TOML config file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to serve on (default 127.0.0.1:9956).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Ledger database: a SQLite file (default ./domesday.db) or postgres://user@host:port/dbname.
    #[arg(long, global = true)]
    db: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ingest and the API until SIGTERM.
    Serve,
    /// Validate the configuration and print the effective one (secrets omitted).
    CheckConfig,
    /// Read a token on stdin and print its SHA-256 for `token_sha256`.
    HashToken,
    /// Import meter readings from CSV (registers `timestamp,meter,value` or intervals `start,end,meter,value`).
    ImportMeters {
        #[arg(long)]
        site: String,
        /// The CSV file.
        file: PathBuf,
        /// Field separator (French Excel: ';').
        #[arg(long, default_value = ",")]
        delimiter: char,
        /// Decimal comma (1234,5).
        #[arg(long)]
        decimal_comma: bool,
        /// Time zone of naive timestamps (e.g. Europe/Paris).
        #[arg(long)]
        timezone: Option<String>,
    },
    /// Record a manual correction of a meter's consumption over [from, to) (signed, in the meter's unit).
    Correct {
        #[arg(long)]
        site: String,
        #[arg(long)]
        meter: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Signed amount in the meter's unit, e.g. -12.5 (kWh).
        #[arg(long, allow_hyphen_values = true)]
        value: String,
        /// Who makes the correction.
        #[arg(long)]
        by: String,
        /// Why (kept with the correction).
        #[arg(long)]
        reason: String,
    },
    /// Record a meter swap: the old meter's final reading and the new one's initial reading at a time.
    SwapMeter {
        #[arg(long)]
        site: String,
        #[arg(long)]
        meter: String,
        /// When the swap happened (RFC 3339).
        #[arg(long)]
        at: String,
        /// The old meter's final register reading, in the meter's unit.
        #[arg(long = "final")]
        final_reading: String,
        /// The new meter's initial register reading.
        #[arg(long)]
        initial: String,
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
    },
    /// Retire a decommissioned host: it is no longer expected to report (`domesday_host_retired` = 1, so
    /// "host silent" alerts stop), while its energy stays in the ledger. Works while `serve` runs.
    RetireHost {
        #[arg(long)]
        site: String,
        #[arg(long)]
        host: String,
        /// Who retires the host.
        #[arg(long)]
        by: String,
        /// Why (kept with the retirement).
        #[arg(long)]
        reason: String,
    },
    /// Write a consistent copy of the ledger (SQLite online backup; works while `serve` runs).
    Backup {
        /// Destination file (must not exist).
        to: PathBuf,
    },
    /// Move the SQLite ledger (`db` of --config, or --db) into an empty PostgreSQL database, every table, and
    /// check that both answer the same energy. Stop the collector first.
    Migrate {
        /// The PostgreSQL database: postgres://user@host:port/dbname (no password in it).
        #[arg(long)]
        to: String,
        /// A file holding the PostgreSQL password (default: the PGPASSWORD environment variable).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Run a local site: the collector and, if found, an agent on this machine pushing to it.
    Demo {
        /// Directory for the demo's config, token, ledger and agent state.
        #[arg(long, default_value = "./domesday-demo")]
        dir: PathBuf,
        /// Address of the demo agent's /metrics.
        #[arg(long, default_value = "127.0.0.1:9955")]
        agent_listen: SocketAddr,
    },
    /// Regulatory reports from the ledger and the site configuration (docs/reports.md).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Print the ledger's energy over [from, to) (read-only; works while `serve` runs).
    Energy {
        #[arg(long)]
        site: String,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        meter: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "json")]
        format: String,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// The EED declaration of one site (Delegated Regulation (EU) 2024/1364 Annexes I–III).
    Eed {
        #[arg(long)]
        site: String,
        /// Calendar year of the site's time zone (the declaration to file).
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        year: Option<i16>,
        /// Start of an interim period (RFC 3339), with --to.
        #[arg(long, requires = "to")]
        from: Option<String>,
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// json, csv or xlsx.
        #[arg(long, default_value = "json")]
        format: String,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the declaration even when mandatory fields are missing.
        #[arg(long)]
        draft: bool,
    },
    /// The French public sheet (Code de l'énergie D.236-3): an HTML page, JSON and CSV in a directory.
    Publication {
        #[arg(long)]
        site: String,
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        year: Option<i16>,
        #[arg(long, requires = "to")]
        from: Option<String>,
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Directory to write `<site>-<year>.html`, `.json` and `.csv` into (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Publish even when mandatory fields are missing.
        #[arg(long)]
        draft: bool,
    },
    /// The Region's report: its ledger sites and other operators' declarations (docs/reports.md).
    Region {
        /// The region: the `region` key of the sites taken from the ledger.
        #[arg(long)]
        region: String,
        /// Calendar year (each site's time zone).
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        year: Option<i16>,
        /// Start of an interim period (RFC 3339), with --to.
        #[arg(long, requires = "to")]
        from: Option<String>,
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// html, xlsx, csv or json.
        #[arg(long, default_value = "html")]
        format: String,
        /// An EED declaration (the JSON of `report eed`) of another operator: a file or an https URL; repeatable.
        #[arg(long = "declaration")]
        declarations: Vec<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The region's open data: data.csv, data.json and schema.json (a Table Schema) in --out.
    Opendata {
        #[arg(long)]
        region: String,
        #[arg(long)]
        year: i16,
        /// An EED declaration of another operator (file or https URL); repeatable.
        #[arg(long = "declaration")]
        declarations: Vec<String>,
        /// Directory to write the three files into (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Exit status of `report eed` when mandatory fields are missing (without `--draft`).
const EXIT_INCOMPLETE: u8 = 3;

/// A declaration refused because mandatory fields are missing.
#[derive(Debug)]
struct Incomplete(String);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Incomplete {}

/// The ingest path allocates and frees many small buffers per request (decoded
/// labels, samples, group-commit batches); mimalloc's thread-local free lists
/// cost a fraction of glibc malloc's there (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    domesday_runtime::init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Incomplete>() {
                Some(_) => ExitCode::from(EXIT_INCOMPLETE),
                None => ExitCode::from(2),
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Global options a command would otherwise ignore in silence.
    let ignores = match cli.command {
        Command::Demo { .. } => Some((
            "demo",
            "it writes its own configuration and SQLite ledger in --dir (try `serve` for a ledger of yours)",
        )),
        Command::HashToken => Some(("hash-token", "it only hashes the token read on stdin")),
        _ => None,
    };
    if let Some((name, why)) = ignores
        && (cli.db.is_some() || cli.config.is_some())
    {
        bail!("`{name}` takes no --config or --db: {why}");
    }
    if let Command::HashToken = cli.command {
        let mut token = String::new();
        std::io::stdin().read_to_string(&mut token).context("reading the token on stdin")?;
        if token.trim().is_empty() {
            bail!("empty token on stdin");
        }
        println!("{}", hex(&hash_token(&token)));
        return Ok(());
    }
    if let Command::Demo { dir, agent_listen } = &cli.command {
        return demo(dir.clone(), cli.listen, *agent_listen);
    }
    let Loaded { config: mut cfg, sites, read_hash } =
        CollectorConfig::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(d) = &cli.db {
        cfg.set_db(d).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    }
    if let Command::CheckConfig = cli.command {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    // Every other command reads or writes the ledger, on SQLite or PostgreSQL (see `open_ledger`, `open_reader`);
    // `backup` is SQLite's alone.
    match cli.command {
        Command::HashToken | Command::Demo { .. } | Command::CheckConfig => Ok(()),
        Command::Serve => {
            if sites.is_empty() {
                bail!(
                    "no [[sites]] configured: nothing could write (see docs/collector.md, or run `domesday-collector demo`)"
                );
            }
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async {
                let listener = serve::bind(cfg.listen).await?;
                serve::serve(cfg, sites, read_hash, listener, domesday_runtime::shutdown_signal()).await
            })
        }
        Command::ImportMeters { site, file, delimiter, decimal_comma, timezone } => {
            use domesday_collector::meters::csv_import::{CsvOptions, parse};
            let Some(s) = sites.iter().find(|s| s.config.id == site) else {
                bail!("no site {site:?} in the configuration");
            };
            if !delimiter.is_ascii() {
                bail!("--delimiter must be one ASCII character");
            }
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let text = String::from_utf8_lossy(&bytes);
            let opts = CsvOptions { delimiter: delimiter as u8, decimal_comma, timezone };
            let batch = match parse(&text, &site, &s.config.meters, &opts) {
                Ok(b) => b,
                Err(errors) => {
                    for e in errors.iter().take(50) {
                        eprintln!("{}:{e}", file.display());
                    }
                    bail!("{} error(s) in {}; nothing was imported", errors.len(), file.display());
                }
            };
            let rows = batch.samples.len() + batch.intervals.len();
            let mut w = open_ledger(&cfg)?;
            let o = w.apply(&[batch], domesday_collector::ledger::writer::now_ms())?;
            let o = &o[0];
            println!(
                "{rows} rows: {} booked, {} already there (identical), {} conflicting (kept the first)",
                o.booked, o.duplicate, o.conflict
            );
            Ok(())
        }
        Command::Correct { site, meter, from, to, value, by, reason } => {
            let m = find_meter(&sites, &site, &meter)?;
            let (from_ms, to_ms) = parse_range(Some(&from), Some(&to)).map_err(|e| anyhow::anyhow!(e))?;
            let (negative, digits) = match value.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, value.as_str()),
            };
            let micro = domesday_collector::meters::csv_import::parse_micro(digits, false)
                .map_err(|e| anyhow::anyhow!("--value: {e}"))?;
            let micro = if negative { -micro } else { micro };
            require_reason(&by, &reason)?;
            let mut w = open_ledger(&cfg)?;
            let who = Provenance { author: by, reason, recorded_ms: now_ms() };
            w.correct(&site, &m.id, &m.role, &m.unit, from_ms, to_ms, micro, &who)?;
            println!("recorded: {value} {} on meter {} over [{from}, {to})", m.unit, m.id);
            Ok(())
        }
        Command::SwapMeter { site, meter, at, final_reading, initial, by, reason } => {
            use domesday_collector::meters::csv_import::{parse_micro, parse_time};
            let m = find_meter(&sites, &site, &meter)?;
            let at_ms = parse_time(&at, None).map_err(|e| anyhow::anyhow!("--at: {e}"))?;
            let f = parse_micro(&final_reading, false).map_err(|e| anyhow::anyhow!("--final: {e}"))?;
            let i = parse_micro(&initial, false).map_err(|e| anyhow::anyhow!("--initial: {e}"))?;
            require_reason(&by, &reason)?;
            let mut w = open_ledger(&cfg)?;
            let who = Provenance { author: by, reason, recorded_ms: now_ms() };
            w.swap_meter(&site, &m.id, &m.role, &m.unit, at_ms, f, i, &who)?;
            println!("recorded: meter {} swapped at {at} (final {final_reading}, initial {initial} {})", m.id, m.unit);
            Ok(())
        }
        Command::RetireHost { site, host, by, reason } => {
            let s = sites
                .iter()
                .find(|s| s.config.id == site)
                .ok_or_else(|| anyhow::anyhow!("no site {site:?} in the configuration"))?;
            require_reason(&by, &reason)?;
            let expected = s.config.expected_hosts.contains(&host);
            let who = Provenance { author: by, reason, recorded_ms: now_ms() };
            match open_ledger(&cfg)?.retire_host(&site, &host, expected, &who)? {
                Retire::Retired => {
                    println!("recorded: host {host} of site {site} retired by {} ({})", who.author, who.reason);
                    Ok(())
                }
                Retire::Already(r) => {
                    println!(
                        "host {host} of site {site} was already retired by {} at {} ({}); nothing changed",
                        r.by,
                        domesday_collector::ledger::query::rfc3339(r.retired_ms),
                        r.reason
                    );
                    Ok(())
                }
                Retire::UnknownHost => bail!(
                    "the ledger has no host {host:?} at site {site:?} and it is not in the site's expected_hosts; \
                     check the name (GET /api/v1/sites/{site}/hosts lists them)"
                ),
            }
        }
        Command::Backup { to } => {
            if to.exists() {
                bail!("{} exists; choose a new file", to.display());
            }
            let db = cfg.db.sqlite_path()?;
            let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("opening {}", db.display()))?;
            // VACUUM INTO writes a consistent, compacted snapshot while writers go on.
            conn.execute("VACUUM INTO ?1", [to.display().to_string()]).context("writing the backup")?;
            println!("backup written to {}", to.display());
            Ok(())
        }
        Command::Migrate { to, password_file } => migrate(&cfg, cli.config.as_deref(), &to, password_file.as_deref()),
        Command::Report(ReportCommand::Eed { site, year, from, to, format, out, draft }) => {
            report_eed(&cfg, &sites, &site, year, from.zip(to), Some(&format), out, draft)
        }
        Command::Report(ReportCommand::Publication { site, year, from, to, out, draft }) => {
            report_eed(&cfg, &sites, &site, year, from.zip(to), None, Some(out), draft)
        }
        Command::Report(ReportCommand::Region { region, year, from, to, format, declarations, out }) => {
            report_region(&cfg, &sites, region, year, from.zip(to), &format, declarations, out)
        }
        Command::Report(ReportCommand::Opendata { region, year, declarations, out }) => {
            report_opendata(&cfg, &sites, region, year, declarations, out)
        }
        Command::Energy { site, host, meter, role, from, to, format } => {
            let Some(reader) = open_reader(&cfg)? else { bail!("no ledger at {} (set --db or `db`)", cfg.db) };
            let (from_ms, to_ms) = parse_range(Some(&from), Some(&to)).map_err(|e| anyhow::anyhow!(e))?;
            let r = reader.energy(&EnergyQuery { site, host, meter, role, from_ms, to_ms })?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&r)?),
                "csv" => {
                    println!(
                        "site,host,meter,role,from,to,energy_joules,energy_microjoules,measured_joules,estimated_joules,coverage_ratio,samples,first_sample,last_sample"
                    );
                    println!(
                        "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                        r.site,
                        r.host.clone().unwrap_or_default(),
                        r.meter.clone().unwrap_or_default(),
                        r.role,
                        r.from,
                        r.to,
                        r.energy_joules,
                        r.energy_microjoules,
                        r.measured_joules,
                        r.estimated_joules,
                        r.coverage_ratio,
                        r.samples,
                        r.first_sample.clone().unwrap_or_default(),
                        r.last_sample.clone().unwrap_or_default()
                    );
                }
                other => bail!("--format {other:?}: use json or csv"),
            }
            Ok(())
        }
    }
}

/// `migrate --to`: the SQLite ledger `db` names moved into an empty PostgreSQL database and checked
/// (`ledger::pg::copy`), with what to change in the configuration afterwards.
fn migrate(
    cfg: &CollectorConfig,
    config_file: Option<&std::path::Path>,
    to: &str,
    password_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let LedgerDb::Sqlite(path) = &cfg.db else {
        bail!(
            "the ledger to move is `db` = {}, already on PostgreSQL: migrate moves a SQLite ledger; give its file \
             with --db or the `db` of --config",
            cfg.db
        );
    };
    let mut dest = LedgerDb::parse(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let LedgerDb::Postgres(_) = dest else {
        bail!("--to must be a PostgreSQL database: postgres://user@host:port/dbname");
    };
    dest.resolve_password(password_file, std::env::var(domesday_collector::db::PGPASSWORD).ok())
        .map_err(|e| anyhow::anyhow!("--password-file: {e}"))?;
    let LedgerDb::Postgres(target) = &dest else { bail!("--to must be a PostgreSQL database") };
    // A collector serving on this configuration's address would go on booking into the SQLite file.
    if let Err(e) = std::net::TcpListener::bind(cfg.listen)
        && e.kind() == std::io::ErrorKind::AddrInUse
    {
        bail!(
            "{} is in use, most likely by a collector still running on this configuration: stop it (systemctl \
             stop domesday-collector) so that nothing is booked into {} during the move, then run migrate again \
             (if another program holds that address, give --listen a free one)",
            cfg.listen,
            path.display()
        );
    }
    println!("moving the SQLite ledger {} to {target} (the collector must stay stopped until the end)", path.display());
    let mut progress = |line: &str| println!("{line}");
    let s = pg::copy::migrate(path, target, cfg.ledger.policy(), &mut progress)?;
    let secs = s.copy.as_secs_f64().max(1e-3);
    println!("moved and checked:");
    for (table, rows) in &s.tables {
        println!("  {table:<15} {rows:>12} rows");
    }
    println!(
        "  {} tables, {} rows copied in {:.1} s ({:.0} rows/s; journal and schema: {:.1} s)",
        s.tables.len(),
        s.rows(),
        s.copy.as_secs_f64(),
        s.rows() as f64 / secs,
        s.prepare.as_secs_f64()
    );
    println!(
        "  {} series (hosts and meters), {} answers identical in both ledgers, compared in {:.1} s",
        s.series_checked,
        s.answers_checked,
        s.verify.as_secs_f64()
    );
    let file = config_file.map(|p| p.display().to_string()).unwrap_or_else(|| "the configuration".into());
    println!(
        "next: in {file}, set db = \"{target}\" and db_password_file = \"<a file holding the password>\" (or give \
         the collector PGPASSWORD), then start the collector; keep {} as the backup of the move",
        path.display()
    );
    Ok(())
}

/// `report eed` (`format` given: one file, or standard output) and `report
/// publication` (`format` none: the public sheet's files into the `out`
/// directory), as `reports::document` makes them; an incomplete declaration
/// is refused with exit status 3.
#[allow(clippy::too_many_arguments)]
fn report_eed(
    cfg: &CollectorConfig,
    sites: &[domesday_collector::config::Site],
    site: &str,
    year: Option<i16>,
    range: Option<(String, String)>,
    format: Option<&str>,
    out: Option<PathBuf>,
    draft: bool,
) -> anyhow::Result<()> {
    use domesday_collector::reports::document::{DocumentError, declaration};
    use domesday_collector::reports::eed::ReportPeriod;
    use domesday_collector::reports::render::{OutputFormat, render};
    let format = match format {
        Some(f) => {
            Some(OutputFormat::parse(f).ok_or_else(|| anyhow::anyhow!("--format {f:?}: use json, csv or xlsx"))?)
        }
        None => None,
    };
    let s = sites
        .iter()
        .find(|s| s.config.id == site)
        .ok_or_else(|| anyhow::anyhow!("no site {site:?} in the configuration"))?;
    let Some(reader) = open_reader(cfg)? else { bail!("no ledger at {} (set --db or `db`)", cfg.db) };
    let period = match (year, range) {
        (Some(y), _) => ReportPeriod::year(&s.config, y).map_err(|e| anyhow::anyhow!("--year {y}: {e}"))?,
        (None, Some((f, t))) => {
            let (from_ms, to_ms) = parse_range(Some(&f), Some(&t)).map_err(|e| anyhow::anyhow!("--from/--to: {e}"))?;
            ReportPeriod { from_ms, to_ms, year: None }
        }
        (None, None) => bail!("give --year, or --from and --to"),
    };
    let carbon = match &cfg.carbon {
        Some(c) => Some(c.build().map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let d =
        rt.block_on(declaration(&*reader, &s.config, cfg.carbon.as_ref(), carbon.as_ref(), period, draft, now_ms()));
    let d = match d {
        Ok(d) => d,
        Err(e @ DocumentError::Incomplete { .. }) => return Err(Incomplete(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    let Some(format) = format else {
        let dir = out.ok_or_else(|| anyhow::anyhow!("--out DIR is required"))?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, bytes) in domesday_collector::reports::publication::files(&d)? {
            let p = dir.join(&name);
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
            println!("{}", p.display());
        }
        return Ok(());
    };
    let bytes = render(&d, format)?;
    match out {
        Some(p) => std::fs::write(&p, &bytes).with_context(|| format!("writing {}", p.display()))?,
        None => {
            std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes).context("writing to standard output")?
        }
    }
    Ok(())
}

/// `report region`: the Region's report as `reports::region` makes it.
#[allow(clippy::too_many_arguments)]
fn report_region(
    cfg: &CollectorConfig,
    sites: &[domesday_collector::config::Site],
    region: String,
    year: Option<i16>,
    range: Option<(String, String)>,
    format: &str,
    declarations: Vec<String>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use domesday_collector::reports::region::{RegionRequest, region_document};
    use domesday_collector::reports::region_render::RegionFormat;
    let Some(format) = RegionFormat::parse(format) else { bail!("--format {format:?}: use html, xlsx, csv or json") };
    let range = match range {
        Some((f, t)) => Some(parse_range(Some(&f), Some(&t)).map_err(|e| anyhow::anyhow!("--from/--to: {e}"))?),
        None => None,
    };
    let site_cfgs: Vec<_> = sites.iter().map(|s| s.config.clone()).collect();
    let reader = open_reader(cfg)?;
    let carbon = match &cfg.carbon {
        Some(c) => Some(c.build().map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let mut all = cfg.reports.declarations.clone();
    all.extend(declarations);
    let req = RegionRequest { region, year, range };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let bytes = rt.block_on(region_document(
        reader.as_deref(),
        &site_cfgs,
        &all,
        cfg.carbon.as_ref(),
        carbon.as_ref(),
        &req,
        format,
        now_ms(),
    ))?;
    match out {
        Some(p) => std::fs::write(&p, &bytes).with_context(|| format!("writing {}", p.display()))?,
        None => {
            std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes).context("writing to standard output")?
        }
    }
    Ok(())
}

/// `report opendata`: the public subset of the region report and its Table Schema.
fn report_opendata(
    cfg: &CollectorConfig,
    sites: &[domesday_collector::config::Site],
    region: String,
    year: i16,
    declarations: Vec<String>,
    out: PathBuf,
) -> anyhow::Result<()> {
    use domesday_collector::reports::opendata::files;
    use domesday_collector::reports::region::{RegionRequest, region_report};
    let site_cfgs: Vec<_> = sites.iter().map(|s| s.config.clone()).collect();
    let reader = open_reader(cfg)?;
    let carbon = match &cfg.carbon {
        Some(c) => Some(c.build().map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let mut all = cfg.reports.declarations.clone();
    all.extend(declarations);
    let req = RegionRequest { region, year: Some(year), range: None };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let r = rt.block_on(region_report(
        reader.as_deref(),
        &site_cfgs,
        &all,
        cfg.carbon.as_ref(),
        carbon.as_ref(),
        &req,
        now_ms(),
    ))?;
    let files = files(&r)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (name, bytes) in files {
        let p = out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("open data of {} {year}: {} rows in {}", r.region, r.sites.len(), out.display());
    Ok(())
}

/// The ledger's store for a one-shot command that writes (`import-meters`,
/// `correct`, `swap-meter`, `retire-host`): the one place such a command picks
/// its store, used only through [`LedgerWriter`].
/// The ledger's writer for a one-shot command, on the store `db` names (a PostgreSQL schema is migrated first).
fn open_ledger(cfg: &CollectorConfig) -> anyhow::Result<Box<dyn LedgerWriter>> {
    Ok(match &cfg.db {
        LedgerDb::Sqlite(path) => Box::new(SqliteWriter::open(path, cfg.ledger.policy())?),
        LedgerDb::Postgres(target) => Box::new(PgWriter::open(target, cfg.ledger.policy())?),
    })
}

/// The ledger's reader for a command that only reads, or `None` when there is no ledger yet (no SQLite file, or
/// a PostgreSQL database no collector has migrated).
fn open_reader(cfg: &CollectorConfig) -> anyhow::Result<Option<Box<dyn LedgerReader>>> {
    Ok(match &cfg.db {
        LedgerDb::Sqlite(path) => {
            serve::ledger_exists(path).then(|| Box::new(SqliteReader::new(path, cfg.ledger.policy())) as Box<_>)
        }
        LedgerDb::Postgres(target) => {
            let mut client = pg::connect(target)?;
            (pg::schema::version(&mut client)? > 0)
                .then(|| Box::new(PgReader::with_policy(client, cfg.ledger.policy())) as Box<_>)
        }
    })
}

fn find_meter<'a>(
    sites: &'a [domesday_collector::config::Site],
    site: &str,
    meter: &str,
) -> anyhow::Result<&'a domesday_collector::config::MeterConfig> {
    let s = sites
        .iter()
        .find(|s| s.config.id == site)
        .ok_or_else(|| anyhow::anyhow!("no site {site:?} in the configuration"))?;
    s.config
        .meters
        .iter()
        .find(|m| m.id == meter)
        .ok_or_else(|| anyhow::anyhow!("site {site:?} has no meter {meter:?}"))
}

fn require_reason(by: &str, reason: &str) -> anyhow::Result<()> {
    if by.trim().is_empty() || reason.trim().len() < 3 {
        bail!("a change to the ledger needs --by (who) and --reason (why)");
    }
    Ok(())
}

/// The start of the current UTC hour plus `hours`, as RFC 3339 for a URL.
fn hour_url_bound(hours: i64) -> String {
    let now = jiff::Timestamp::now().as_millisecond();
    let ms = now.div_euclid(3_600_000) * 3_600_000 + hours * 3_600_000;
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

fn demo(dir: PathBuf, listen: Option<SocketAddr>, agent_listen: SocketAddr) -> anyhow::Result<()> {
    use domesday_collector::demo::{DemoOptions, load, prepare, spawn_agent};
    let opts =
        DemoOptions { dir, listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9956))), agent_listen };
    let (collector_cfg, agent_cfg) = prepare(&opts)?;
    let Loaded { config, sites, read_hash } = load(&collector_cfg)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = serve::bind(config.listen).await?;
        let mut agent = spawn_agent(&agent_cfg);
        println!("domesday demo (files in {})", opts.dir.display());
        println!("  collector   http://{}/metrics", opts.listen);
        println!("  hosts       http://{}/api/v1/sites/local/hosts", opts.listen);
        println!("  energy      http://{}/api/v1/energy?site=local&from=<RFC 3339>&to=<RFC 3339>", opts.listen);
        println!(
            "  indicators  http://{}/api/v1/sites/local/indicators?from={}&to={}&step=1h",
            opts.listen,
            hour_url_bound(0),
            hour_url_bound(1)
        );
        let year = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::now()).year();
        println!(
            "  reports     http://{}/reports/publication?site=local&year={year}  (this year so far: interim)",
            opts.listen
        );
        println!("              http://{}/api/v1/reports/eed?site=local&year={year}&format=json", opts.listen);
        println!("              http://{}/reports/region?region=demo&year={year}", opts.listen);
        println!("  site        {} (site id local)", domesday_collector::demo::SITE_NAME);
        println!(
            "  meters      SIMULATED from this machine's IT energy: {}",
            domesday_collector::demo::SIMULATED_METERS.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
        );
        println!("  carbon      static factor for France (shipped table, life cycle)");
        match &agent {
            Some(_) => println!(
                "  agent       http://{}/metrics (pushing every {})",
                opts.agent_listen,
                domesday_collector::demo::PUSH_INTERVAL
            ),
            None => {
                println!("  agent       not found beside this binary or on PATH: build it with `cargo build --release`")
            }
        }
        println!("Ctrl-C stops both.");
        let result = serve::serve(config, sites, read_hash, listener, domesday_runtime::shutdown_signal()).await;
        if let Some(a) = agent.as_mut() {
            let _ = Process::new("kill").arg("-TERM").arg(a.id().to_string()).status();
            let _ = a.wait();
        }
        result
    })
}
