//! bannin-agent: watches a host and streams signed, hash-chained events to the collector.
// deny rather than forbid: the fanotify module must call the kernel and opts in with allow(unsafe_code).
#![deny(unsafe_code)]

mod config;
mod identity;
mod pipeline;
mod run;
mod sender;
mod sensors;
mod spool;
#[cfg(test)]
mod testing;
mod whereabouts;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::AgentConfig;

#[derive(Parser)]
#[command(
    name = "bannin-agent",
    version,
    about = "bannin's agent: watches files, processes, connections and database logs, and streams signed events to the collector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll with a collector: generate keys locally and obtain a client certificate.
    Enroll {
        /// The collector, as https://HOST:PORT.
        #[arg(long)]
        collector: String,
        /// A one-time token from `bannin-collector token create`. Prefer the BANNIN_TOKEN variable:
        /// every local user can read a command line in ps.
        #[arg(long, env = "BANNIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The collector's CA certificate (its data directory's ca.pem), pinned from now on.
        #[arg(long)]
        ca_cert: PathBuf,
        /// Where the agent keeps its keys, identity and spool.
        #[arg(long)]
        state_dir: PathBuf,
        /// The name this agent reports as its host (default: the machine's host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Run the agent: sensors, durable spool, and streaming to the collector.
    Run {
        #[arg(long)]
        state_dir: PathBuf,
        /// A TOML configuration file (see examples/agent.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Watch this path recursively, on top of the configuration's [files] watch list.
        #[arg(long)]
        watch: Vec<PathBuf>,
        /// Send to this collector instead of the one enrolled with; repeat it for several
        /// collectors sharing one store (the agent fails over between them).
        #[arg(long)]
        collector: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BANNIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bannin-agent: {}", bannin::error_line(&error));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // One thread runs every task: the agent's tasks are short hand-offs between the sensors'
    // own threads, the spool's blocking calls and the network, and a second worker only added
    // wake-ups between the two (and a thread's memory) at idle.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Enroll {
            collector,
            token,
            ca_cert,
            state_dir,
            name,
        } => {
            let enrolled = runtime.block_on(identity::enroll(identity::EnrollArgs {
                collector: &collector,
                token: &token,
                ca_cert: &ca_cert,
                state_dir: &state_dir,
                name: name.as_deref(),
            }))?;
            println!(
                "enrolled as {} ({}) with {}",
                enrolled.agent_id, enrolled.name, enrolled.collector
            );
            Ok(())
        }
        Command::Run {
            state_dir,
            config,
            watch,
            collector,
        } => {
            let config = match config {
                Some(path) => AgentConfig::load(&path)?,
                None => AgentConfig::default().settings(Path::new("(defaults)"))?,
            };
            runtime.block_on(run::run(run::RunArgs {
                state_dir,
                config,
                watch,
                collector,
            }))
        }
    }
}
