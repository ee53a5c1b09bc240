//! The query subcommands (`events`, `agents`, `alerts`, `timeline`, `scope`), operator credentials and
//! revocation. Each query reads the data directory directly, or a remote collector over gRPC with an
//! operator identity (`--server URL --identity FILE`); both paths run the same store and report code.

pub mod client;
pub mod identity;
pub mod local;
pub mod service;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bannin::pki::Principal;
use bannin::securefs::{self, Access};
use bannin::time::{Timestamp, parse_duration};
use local::ReadConn;

use crate::present::{self, Alerts, Format};
use crate::report::{scope, timeline};
use crate::store::alerts::AlertFilter;
use crate::store::query::EventFilter;
use crate::{serve, store};

/// Where a query reads: a data directory, or a remote collector with an operator identity.
#[derive(clap::Args, Debug, Clone)]
pub struct Location {
    /// The collector's data directory (read directly; works while `serve` runs).
    #[arg(long, required_unless_present_any = ["server", "store"], conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store shared by several collectors (postgres://USER@HOST/DB).
    #[arg(long, conflicts_with_all = ["server", "data_dir"])]
    pub store: Option<String>,
    /// A remote collector, e.g. https://collector.example:50051 (needs --identity).
    #[arg(long, requires = "identity")]
    pub server: Option<String>,
    /// The operator identity file written by `bannin-collector operator create`.
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub location: Location,
    /// Event kind, or a glob over kinds such as file.*.
    #[arg(long)]
    pub kind: Option<String>,
    /// Agent name or host name.
    #[arg(long)]
    pub host: Option<String>,
    /// Agent id.
    #[arg(long)]
    pub agent: Option<String>,
    /// Glob over file paths (* also matches /).
    #[arg(long)]
    pub path: Option<String>,
    /// RFC 3339 time or a duration back from now (90s, 10m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Return at most the newest N events.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub location: Location,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(clap::Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub location: Location,
    /// Rule id, or a glob over rule ids.
    #[arg(long)]
    pub rule: Option<String>,
    /// Agent name or host name the alert is about.
    #[arg(long)]
    pub host: Option<String>,
    /// RFC 3339 time or a duration back from now (90s, 10m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// At most the newest N alerts.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(clap::Args)]
pub struct TimelineArgs {
    #[command(flatten)]
    pub location: Location,
    /// The agent name or host name.
    #[arg(long)]
    pub host: String,
    /// RFC 3339 time or a duration back from now.
    #[arg(long)]
    pub since: String,
    /// Default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many events, the oldest first.
    #[arg(long, default_value_t = 100_000)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(clap::Args)]
pub struct ScopeArgs {
    #[command(flatten)]
    pub location: Location,
    /// RFC 3339 time or a duration back from now (required unless --alert).
    #[arg(long, required_unless_present = "alert")]
    pub since: Option<String>,
    /// Default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only these agent or host names (repeatable).
    #[arg(long)]
    pub host: Vec<String>,
    /// Scope an alert: its time ± --margin and its hosts.
    #[arg(long, conflicts_with_all = ["since", "until", "host"])]
    pub alert: Option<String>,
    /// How far around an alert's time to look.
    #[arg(long, default_value = "1h")]
    pub margin: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(clap::Subcommand)]
pub enum OperatorCommand {
    /// Issue an operator identity file (client certificate, key and the collector's CA; mode 0600).
    Create {
        /// The collector's data directory (its CA signs the identity).
        #[arg(long)]
        data_dir: PathBuf,
        /// A PostgreSQL store (postgres://USER@HOST/DB) to record the operator in, instead of the
        /// data directory's SQLite store.
        #[arg(long)]
        store: Option<String>,
        /// The operator's name (letters, digits, . _ @ -).
        #[arg(long)]
        name: String,
        /// Where to write the identity file (default: NAME.pem in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List operators and whether they are active or revoked.
    List {
        #[arg(long, required_unless_present = "store")]
        data_dir: Option<PathBuf>,
        /// A PostgreSQL store (postgres://USER@HOST/DB).
        #[arg(long, conflicts_with = "data_dir")]
        store: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["agent", "operator"])))]
pub struct RevokeArgs {
    #[arg(long, required_unless_present = "store")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store (postgres://USER@HOST/DB).
    #[arg(long, conflicts_with = "data_dir")]
    pub store: Option<String>,
    /// The agent id to refuse from now on.
    #[arg(long)]
    pub agent: Option<String>,
    /// The operator name to refuse from now on.
    #[arg(long)]
    pub operator: Option<String>,
}

/// Where a query's answers come from.
enum Source {
    Local(ReadConn),
    Remote(Box<client::Remote>),
}

impl Source {
    fn open(location: &Location) -> Result<Source> {
        if let Some(url) = &location.store {
            let at = store::StoreAt::Postgres(Box::new(store::pg::Target::parse(url)?));
            return Ok(Source::Local(ReadConn::open(&at)?));
        }
        match (&location.data_dir, &location.server, &location.identity) {
            (Some(dir), _, _) => Ok(Source::Local(ReadConn::Sqlite(store::open_reader(dir)?))),
            (None, Some(server), Some(identity)) => Ok(Source::Remote(Box::new(
                client::Remote::connect(server, identity)?,
            ))),
            _ => bail!("give --data-dir DIR, or --server URL with --identity FILE"),
        }
    }
}

fn bound(text: Option<&str>, now: Timestamp) -> Result<Option<Timestamp>> {
    Ok(match text {
        Some(t) => Some(Timestamp::parse_bound(t, now)?),
        None => None,
    })
}

/// Writes to standard output through `print`, then flushes.
fn print(
    print: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    print(&mut out)?;
    out.flush()?;
    Ok(())
}

pub fn events(args: EventsArgs) -> Result<ExitCode> {
    let now = Timestamp::now();
    let filter = EventFilter {
        kind: args.kind,
        host: args.host,
        agent: args.agent,
        path: args.path,
        since: bound(args.since.as_deref(), now)?,
        until: bound(args.until.as_deref(), now)?,
        limit: args.limit,
    };
    let records = match Source::open(&args.location)? {
        Source::Local(conn) => conn.events(&filter)?,
        Source::Remote(mut remote) => remote.events(&filter)?,
    };
    print(|out| present::events(out, &records, args.format))?;
    Ok(ExitCode::SUCCESS)
}

pub fn agents(args: AgentsArgs, silent_after: std::time::Duration) -> Result<ExitCode> {
    let rows = match Source::open(&args.location)? {
        Source::Local(conn) => conn.agents(Timestamp::now(), silent_after)?,
        Source::Remote(mut remote) => remote.agents()?,
    };
    print(|out| present::agents(out, &rows, args.format))?;
    Ok(ExitCode::SUCCESS)
}

pub fn alerts(args: AlertsArgs) -> Result<ExitCode> {
    let filter = AlertFilter {
        rule: args.rule,
        since: bound(args.since.as_deref(), Timestamp::now())?,
        host: args.host,
        limit: args.limit,
    };
    let alerts = match Source::open(&args.location)? {
        Source::Local(conn) => Alerts::Stored(local::alerts(&conn, &filter)?),
        Source::Remote(mut remote) => Alerts::Remote(remote.alerts(&filter)?),
    };
    print(|out| present::alerts(out, &alerts, args.format))?;
    Ok(ExitCode::SUCCESS)
}

pub fn timeline(args: TimelineArgs) -> Result<ExitCode> {
    let now = Timestamp::now();
    let since = Timestamp::parse_bound(&args.since, now)?;
    let until = bound(args.until.as_deref(), now)?.unwrap_or(now);
    let query = timeline::Query {
        host: &args.host,
        since,
        until,
        limit: args.limit,
    };
    let entries = match Source::open(&args.location)? {
        Source::Local(conn) => local::timeline(&conn, &query)?,
        Source::Remote(mut remote) => remote.timeline(&query)?,
    };
    print(|out| present::timeline(out, &entries, args.format))?;
    Ok(ExitCode::SUCCESS)
}

pub fn scope(args: ScopeArgs) -> Result<ExitCode> {
    let now = Timestamp::now();
    let query = scope::Query {
        since: bound(args.since.as_deref(), now)?.unwrap_or(now),
        until: bound(args.until.as_deref(), now)?.unwrap_or(now),
        hosts: args.host,
        alert: args.alert,
        margin: parse_duration(&args.margin)?,
    };
    let (report, evidence) = match Source::open(&args.location)? {
        Source::Local(conn) => local::scope(&conn, &query)?,
        Source::Remote(mut remote) => remote.scope(&query)?,
    };
    print(|out| present::scope(out, &report, &evidence, args.format))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn valid_operator_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

pub fn operator(command: OperatorCommand) -> Result<ExitCode> {
    match command {
        OperatorCommand::Create {
            data_dir,
            store: url,
            name,
            out,
        } => {
            if !valid_operator_name(&name) {
                bail!(
                    "operator name {name:?} must be 1 to 64 letters, digits, '.', '_', '@' or '-'"
                );
            }
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{name}.pem")));
            // Refused before the name is spent; the write below refuses again, atomically.
            if std::fs::symlink_metadata(&path).is_ok() {
                bail!(
                    "{} already exists; remove it or choose another --out",
                    path.display()
                );
            }
            serve::prepare_data_dir(&data_dir)?;
            let (authority, _) = serve::load_or_create_pki(&data_dir, &[])?;
            let material = authority
                .issue_client(&Principal::Operator(name.clone()))
                .context("cannot issue the operator certificate")?;
            match &url {
                Some(url) => {
                    let reader =
                        store::pg::read::Reader::open_writer(&store::pg::Target::parse(url)?)?;
                    reader.block_on(store::pg::add_operator(reader.client(), &name))?;
                }
                None => {
                    let conn = store::open_writer(&data_dir)?;
                    store::operators::add_operator(&conn, &name)?;
                }
            }
            let text = identity::bundle(&name, &material, &authority.cert_pem);
            securefs::create_new_file(&path, text.as_bytes(), Access::Private)?;
            println!(
                "wrote the identity of operator {name} to {} (keep it secret: it holds the private key)",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        OperatorCommand::List {
            data_dir,
            store: url,
            format,
        } => {
            let rows = match (&url, &data_dir) {
                (Some(url), _) => {
                    let reader = store::pg::read::Reader::open(&store::pg::Target::parse(url)?)?;
                    reader.block_on(store::pg::operators(reader.client()))?
                }
                (None, Some(dir)) => store::operators::operators(&store::open_reader(dir)?)?,
                (None, None) => bail!("give --data-dir DIR or --store URL"),
            };
            print(|out| present::operators(out, &rows, format))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn revoke(args: RevokeArgs) -> Result<ExitCode> {
    if let Some(url) = &args.store {
        let reader = store::pg::read::Reader::open(&store::pg::Target::parse(url)?)?;
        if let Some(agent) = &args.agent {
            reader.block_on(store::pg::revoke_agent(reader.client(), agent))?;
            println!("revoked agent {agent}; running collectors refuse it within a second");
        }
        if let Some(name) = &args.operator {
            reader.block_on(store::pg::revoke_operator(reader.client(), name))?;
            println!("revoked operator {name}; running collectors refuse it from its next call");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(data_dir) = &args.data_dir else {
        bail!("give --data-dir DIR or --store URL");
    };
    let conn = store::open_writer(data_dir)?;
    if let Some(agent) = &args.agent {
        store::operators::revoke_agent(&conn, agent)?;
        println!("revoked agent {agent}; a running collector refuses it within a second");
    }
    if let Some(name) = &args.operator {
        store::operators::revoke_operator(&conn, name)?;
        println!("revoked operator {name}; a running collector refuses it from its next call");
    }
    Ok(ExitCode::SUCCESS)
}
