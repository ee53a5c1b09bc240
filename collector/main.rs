//! bannin-collector: enrolls agents, verifies and stores their events, detects and alerts.
#![forbid(unsafe_code)]

mod alert;
mod checkpoint;
mod config;
mod console;
mod detect;
mod detection;
mod enrollment;
mod finding;
#[cfg(test)]
mod golden;
mod hooks;
mod leader;
mod listen;
mod metrics;
mod present;
mod query;
mod quickstart;
mod report;
mod retention;
mod seal;
mod serve;
mod service;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use bannin::time::{Timestamp, parse_duration};
use clap::{Parser, Subcommand};

use crate::config::CollectorConfig;

#[derive(Parser)]
#[command(
    name = "bannin-collector",
    version,
    about = "bannin's collector: enrolls agents, verifies and stores their events, detects and alerts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector: enrollment and ingest over gRPC with mutual TLS.
    Serve(ServeArgs),
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List enrolled agents with their last contact and chain position.
    Agents(query::AgentsArgs),
    /// Query stored events.
    Events(query::EventsArgs),
    /// Query stored alerts.
    Alerts(query::AlertsArgs),
    /// Everything one host did in a window, in order, with each process's lineage.
    Timeline(query::TimelineArgs),
    /// Which hosts read sensitive records, which then sent data out, which files and processes.
    Scope(query::ScopeArgs),
    /// Operator credentials for remote queries.
    Operator {
        #[command(subcommand)]
        command: query::OperatorCommand,
    },
    /// Refuse an agent or an operator from now on (a running collector applies it within a second).
    Revoke(query::RevokeArgs),
    /// Re-verify every stored event's hash chain and signatures; exit 1 naming each problem.
    Verify(VerifyArgs),
    /// Development mode: a collector and an enrolled local agent watching PATHs, printing events.
    Quickstart(quickstart::QuickstartArgs),
    /// Sigma rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The web console: one-time sign-in links.
    Console {
        #[command(subcommand)]
        command: console::ConsoleCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Load a directory of Sigma rules as `[detection] rule_dirs` would and print, per rule,
    /// `loaded` or the one reason it cannot run; exit 1 if any cannot.
    Check {
        /// A directory (walked recursively) or one rule file.
        path: PathBuf,
        /// The collector's configuration, for the `[detection]` thresholds rules may refer to.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a one-time enrollment token (printed on one line).
    Create {
        #[arg(long, required_unless_present = "store")]
        data_dir: Option<PathBuf>,
        /// A PostgreSQL store (postgres://USER@HOST/DB) instead of the data directory's.
        #[arg(long, conflicts_with = "data_dir")]
        store: Option<String>,
        /// How long the token stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The collector's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// A file of signed checkpoints (`[checkpoints] file`): also prove the store still holds
    /// everything they vouch for.
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// Verify this PostgreSQL store (postgres://USER@HOST/DB); --data-dir still supplies the keys
    /// it is checked against (collector.pub, ca.pem).
    #[arg(long)]
    store: Option<String>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on (default 127.0.0.1:50051, or the config's server.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// A TOML configuration file (see examples/collector.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Send alerts as JSON to this URL (repeatable), in addition to the config's webhooks.
    #[arg(long)]
    pub webhook: Vec<String>,
    /// Serve Prometheus metrics and /healthz on this address (overrides the config's metrics.listen).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Keep events in this PostgreSQL store, shared with other collectors
    /// (postgres://USER@HOST/DB; overrides the config's store.url). Default: SQLite in --data-dir.
    #[arg(long)]
    pub store: Option<String>,
    /// Serve the web console over HTTPS on this address (overrides the config's console.listen).
    #[arg(long)]
    pub console_listen: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bannin-collector: {}", bannin::error_line(&error));
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BANNIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_config(path: Option<&Path>) -> Result<CollectorConfig> {
    match path {
        Some(path) => Ok(CollectorConfig::load(path)?),
        None => Ok(CollectorConfig::default()),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(args.config.as_deref())?;
            config.alerts.add_cli_webhooks(args.webhook.clone());
            config.alerts.validate().context("invalid --webhook")?;
            if let Some(metrics) = &args.metrics_listen {
                config.metrics.listen = Some(metrics.clone());
            }
            if let Some(url) = &args.store {
                config.store.url = Some(url.clone());
            }
            if let Some(console) = &args.console_listen {
                config.console.listen = Some(console.clone());
            }
            let listen = args
                .listen
                .clone()
                .unwrap_or_else(|| config.server.listen.clone());
            runtime()?.block_on(async {
                let collector = serve::Collector::bind(&args.data_dir, config, &listen).await?;
                collector.run(None, bannin::signals::shutdown()).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    data_dir,
                    store: url,
                    ttl,
                },
        } => {
            let ttl = parse_duration(&ttl)?;
            let token = serve::new_token()?;
            let expires = Timestamp::now().saturating_add(ttl);
            match (url, data_dir) {
                (Some(url), _) => {
                    let reader =
                        store::pg::read::Reader::open_writer(&store::pg::Target::parse(&url)?)?;
                    reader.block_on(store::pg::add_token(reader.client(), &token, expires))?;
                }
                (None, Some(data_dir)) => {
                    serve::prepare_data_dir(&data_dir)?;
                    let conn = store::open_writer(&data_dir)?;
                    store::add_token(&conn, &token, expires)?;
                }
                (None, None) => anyhow::bail!("give --data-dir DIR or --store URL"),
            }
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents(args) => {
            query::agents(args, CollectorConfig::default().server.silent_after)
        }
        Command::Events(args) => query::events(args),
        Command::Alerts(args) => query::alerts(args),
        Command::Timeline(args) => query::timeline(args),
        Command::Scope(args) => query::scope(args),
        Command::Operator { command } => query::operator(command),
        Command::Revoke(args) => query::revoke(args),
        Command::Verify(args) => {
            let trust = store::verify::Trust {
                seal: seal::SealKey::load(&args.data_dir).map_err(|error| error.to_string()),
                ca_pem: std::fs::read_to_string(args.data_dir.join(serve::CA_CERT))
                    .map_err(|error| format!("cannot read {}: {error}", serve::CA_CERT)),
            };
            // Read before the store, so a file that cannot be read is a usage error, not a finding.
            let checkpoints = args
                .checkpoints
                .as_deref()
                .map(checkpoint::read)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let report = match &args.store {
                Some(url) => {
                    let reader = store::pg::read::Reader::open(&store::pg::Target::parse(url)?)?;
                    let source = store::pg::verify::PgSource::begin(&reader)?;
                    let mut report = store::verify::verify_source(&source, &trust)?;
                    if let Some(lines) = &checkpoints {
                        store::verify::verify_checkpoints_source(
                            &source,
                            &trust,
                            lines,
                            &mut report,
                        )?;
                    }
                    report
                }
                None => {
                    let conn = store::open_reader(&args.data_dir)?;
                    let mut report = store::verify::verify(&conn, &trust)?;
                    if let Some(lines) = &checkpoints {
                        store::verify::verify_checkpoints(&conn, &trust, lines, &mut report)?;
                    }
                    report
                }
            };
            let mut out = std::io::stdout().lock();
            present::table::verify(&mut out, &report)?;
            std::io::Write::flush(&mut out)?;
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Quickstart(args) => {
            runtime()?.block_on(quickstart::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules {
            command: RulesCommand::Check { path, config },
        } => {
            let config = load_config(config.as_deref())?;
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let report = detect::check_rules(&path, &config.detection);
            if report.is_empty() {
                anyhow::bail!("no rule files (*.yml, *.yaml) under {}", path.display());
            }
            let mut out = std::io::stdout().lock();
            present::table::rules_check(&mut out, &report)?;
            std::io::Write::flush(&mut out)?;
            Ok(if report.iter().all(|entry| entry.outcome.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Console { command } => console::command(command),
    }
}
