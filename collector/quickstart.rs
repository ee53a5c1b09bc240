//! `quickstart`: a collector on the embedded SQLite store plus an enrolled local agent, for a first look.
//!
//! It runs the real pieces: the collector serves in this process, and the agent is the real
//! `bannin-agent` binary (found beside this one) enrolled with a fresh token over mutual TLS.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use bannin::time::Timestamp;
use tokio::process::{Child, Command};

use crate::config::CollectorConfig;
use crate::detection::Observed;
use crate::present;
use crate::serve::{self, CA_CERT};
use crate::store;

#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Where the collector keeps its store and keys; the agent's state goes in DIR/agent.
    #[arg(long)]
    data_dir: PathBuf,
    /// Paths the local agent watches, recursively.
    #[arg(long, required = true)]
    watch: Vec<PathBuf>,
    /// Address for the collector (default: a free port on loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Address for the web console (default: a free port on loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    console_listen: String,
}

/// The operator quickstart signs in to the console.
const OPERATOR: &str = "quickstart";

fn agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BANNIN_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let path = exe.with_file_name(format!("bannin-agent{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "bannin-agent not found at {}; build both binaries (cargo build) or set BANNIN_AGENT_BIN",
            path.display()
        );
    }
    Ok(path)
}

pub async fn run(args: QuickstartArgs) -> Result<()> {
    let agent = agent_binary()?;
    for path in &args.watch {
        if !path.exists() {
            bail!("watch path {} does not exist", path.display());
        }
    }
    let mut config = CollectorConfig::default();
    config.console.listen = Some(args.console_listen.clone());
    let collector = serve::Collector::bind(&args.data_dir, config.clone(), &args.listen).await?;
    let addr = collector.local_addr()?;
    let console_url = collector.console_url().map(str::to_string);
    serve::load_or_create_pki(&args.data_dir, &config.server.server_names)?;

    let (notices_tx, notices_rx) = std::sync::mpsc::sync_channel::<Observed>(1024);
    std::thread::spawn(move || {
        while let Ok(observed) = notices_rx.recv() {
            let mut out = std::io::stdout().lock();
            if let Err(error) = present::table::observed(&mut out, &observed) {
                tracing::warn!(%error, "cannot print to standard output");
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(collector.run(Some(notices_tx), async {
        let _ = stop_rx.await;
    }));

    let state_dir = args.data_dir.join("agent");
    if !state_dir.join("identity.toml").exists() {
        let conn = store::open_writer(&args.data_dir)?;
        // As random as `token create`'s: a guessable token would let anyone on the network enroll
        // during the ten minutes it is valid.
        let token = serve::new_token()?;
        store::add_token(
            &conn,
            &token,
            Timestamp::now().saturating_add(std::time::Duration::from_secs(600)),
        )?;
        drop(conn);
        let status = Command::new(&agent)
            .arg("enroll")
            .arg("--collector")
            .arg(format!("https://{addr}"))
            // The environment, not the command line, which every local user can read in ps.
            .env("BANNIN_TOKEN", &token)
            .arg("--ca-cert")
            .arg(args.data_dir.join(CA_CERT))
            .arg("--state-dir")
            .arg(&state_dir)
            .status()
            .await
            .with_context(|| format!("cannot run {}", agent.display()))?;
        if !status.success() {
            bail!("the local agent could not enroll ({status})");
        }
    }
    let mut command = Command::new(&agent);
    command
        .arg("run")
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--collector")
        .arg(format!("https://{addr}"))
        .kill_on_drop(true)
        .stdin(Stdio::null());
    for path in &args.watch {
        command.arg("--watch").arg(path);
    }
    let mut child: Child = command
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;
    println!(
        "bannin quickstart: collector on {addr}, store {}, agent watching {}",
        store::db_path(&args.data_dir).display(),
        args.watch
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "try: touch a file under a watched path; query with: bannin-collector events --data-dir {}",
        args.data_dir.display()
    );
    if let Some(base) = console_url {
        let dir = args.data_dir.clone();
        let link = tokio::task::spawn_blocking(move || {
            crate::console::issue_link(
                &crate::store::StoreAt::Sqlite(dir),
                OPERATOR,
                std::time::Duration::from_secs(600),
                &base,
            )
        })
        .await
        .context("the sign-in link task failed")?;
        match link {
            Ok(url) => println!(
                "console: sign in within 10 minutes at {url} (the browser will warn about the collector's own CA, {}; a new link: bannin-collector console link --data-dir {} --operator {OPERATOR})",
                args.data_dir.join(CA_CERT).display(),
                args.data_dir.display()
            ),
            Err(error) => eprintln!(
                "bannin quickstart: no console sign-in link: {}",
                bannin::error_line(&error)
            ),
        }
    }

    tokio::select! {
        _ = bannin::signals::shutdown() => {}
        status = child.wait() => {
            match status {
                Ok(status) => eprintln!("bannin quickstart: the agent exited ({status})"),
                Err(error) => eprintln!("bannin quickstart: cannot wait for the agent: {error}"),
            }
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = stop_tx.send(());
    server.await.context("collector task failed")??;
    Ok(())
}
