//! The event model shared by the agent and the collector.
//!
//! Sensors build [`Event`]s; the agent's spool numbers and encodes them; the collector decodes them
//! back into the same types. Protobuf types never appear here: `crate::proto` converts at the edge.
//! `Serialize` gives the JSON of docs/interface.md (one flat object per event, `kind` included).

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// One observation from one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the agent's spool: 1, 2, 3... for the agent's whole life. Zero until spooled.
    pub seq: u64,
    pub ts: Timestamp,
    /// Shared, not copied: every event of an agent names the same host.
    pub host: Arc<str>,
    #[serde(flatten)]
    pub body: Body,
}

impl Event {
    /// An event that happened now on this host, not yet numbered.
    pub fn now(host: impl Into<Arc<str>>, body: impl Into<Body>) -> Self {
        Event {
            seq: 0,
            ts: Timestamp::now(),
            host: host.into(),
            body: body.into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }

    /// The path a file event is about, for indexing and `--path` queries.
    pub fn path(&self) -> Option<&str> {
        match &self.body {
            Body::File(file) => Some(&file.path),
            _ => None,
        }
    }
}

/// An event as the collector keeps it: which agent sent it, and the event itself.
///
/// Its JSON is the event object of docs/interface.md: `agent_id`, `host`, `seq`, `ts`, `kind` and
/// the kind's own fields, flat.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub agent_id: String,
    pub event: Event,
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            agent_id: &'a str,
            kind: &'static str,
            #[serde(flatten)]
            event: &'a Event,
        }
        Flat {
            agent_id: &self.agent_id,
            kind: self.event.kind(),
            event: &self.event,
        }
        .serialize(serializer)
    }
}

/// What happened; the variant and its action together make the event's `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Body {
    File(FileEvent),
    Process(ProcessEvent),
    Net(NetEvent),
    Db(DbEvent),
    Agent(AgentEvent),
    Sensor(SensorEvent),
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::File(f) => match f.action {
                FileAction::Create => "file.create",
                FileAction::Write => "file.write",
                FileAction::Rename => "file.rename",
                FileAction::Delete => "file.delete",
                FileAction::Read => "file.read",
            },
            Body::Process(p) => match p.action {
                ProcessAction::Start => "process.start",
                ProcessAction::Exit => "process.exit",
            },
            Body::Net(n) => match n.action {
                NetAction::Connect => "net.connect",
                NetAction::Close => "net.close",
            },
            Body::Db(d) => match d.action {
                DbAction::Connect => "db.connect",
                DbAction::Disconnect => "db.disconnect",
                DbAction::Query => "db.query",
            },
            Body::Agent(a) => match a.action {
                AgentAction::Start => "agent.start",
                AgentAction::Heartbeat => "agent.heartbeat",
                AgentAction::Stop => "agent.stop",
                AgentAction::Dropped => "agent.dropped",
            },
            Body::Sensor(s) => match s.status {
                SensorStatus::Overflow => "sensor.overflow",
                SensorStatus::Error => "sensor.error",
                SensorStatus::Recovered => "sensor.recovered",
                SensorStatus::Status => "sensor.status",
            },
        }
    }
}

macro_rules! body_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Body {
            fn from(value: $ty) -> Self {
                Body::$variant(value)
            }
        })*
    };
}
body_from!(
    File(FileEvent),
    Process(ProcessEvent),
    Net(NetEvent),
    Db(DbEvent),
    Agent(AgentEvent),
    Sensor(SensorEvent),
);

/// The process behind an event. Its fields are flattened into the event's JSON (`pid`, `exe`...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub exe: String,
    pub cmdline: String,
    /// The account name of `uid` (on Windows, of the process's owner; the number when the
    /// account database does not know it).
    pub user: String,
    /// The **real** uid: the account that started the process, not the rights it runs with. A
    /// setuid program run by alice is alice's; `sudo` itself sets every uid, so its children are
    /// root's. Every sensor reports the same uid for the same process (one reader, the agent's
    /// process table). `None` where the platform has no numeric uids (Windows) or the process
    /// was gone before it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Parent first, then its parent, and so on.
    #[serde(skip_serializing_if = "Ancestry::is_empty", default)]
    pub ancestry: Ancestry,
}

/// A process's ancestry, parent first. Shared rather than copied: a sensor hands the same line to
/// every event of one process, so cloning an event costs a reference count, not a string per
/// ancestor. Changing it (through `DerefMut`) copies it first if another event holds it too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ancestry(std::sync::Arc<Vec<Ancestor>>);

impl Ancestry {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Ancestry {
    type Target = Vec<Ancestor>;

    fn deref(&self) -> &Vec<Ancestor> {
        &self.0
    }
}

impl std::ops::DerefMut for Ancestry {
    fn deref_mut(&mut self) -> &mut Vec<Ancestor> {
        std::sync::Arc::make_mut(&mut self.0)
    }
}

impl From<Vec<Ancestor>> for Ancestry {
    fn from(line: Vec<Ancestor>) -> Self {
        Ancestry(std::sync::Arc::new(line))
    }
}

impl FromIterator<Ancestor> for Ancestry {
    fn from_iter<I: IntoIterator<Item = Ancestor>>(iter: I) -> Self {
        Ancestry::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl IntoIterator for Ancestry {
    type Item = Ancestor;
    type IntoIter = std::vec::IntoIter<Ancestor>;

    fn into_iter(self) -> Self::IntoIter {
        std::sync::Arc::unwrap_or_clone(self.0).into_iter()
    }
}

impl<'a> IntoIterator for &'a Ancestry {
    type Item = &'a Ancestor;
    type IntoIter = std::slice::Iter<'a, Ancestor>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: String,
    pub cmdline: String,
    pub user: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    Create,
    Write,
    Rename,
    Delete,
    /// A process read a watched export: once per process and file (see the files sensor).
    Read,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEvent {
    #[serde(skip, default = "default_file_action")]
    pub action: FileAction,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_path: Option<String>,
    /// For a delete or rename: the last size the agent saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Arc<str>>,
    /// Shared, not copied: a burst from one process gives the same process to thousands of
    /// events, and a copy of its command lines for each cost more than the rest of the event.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub process: Option<Arc<ProcessInfo>>,
    /// Whether `pid`/`exe`/`user` are known: the portable backend cannot tell who acted.
    pub process_known: bool,
    /// The backend's name, not copied for each event.
    pub backend: Cow<'static, str>,
    pub incomplete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportInfo>,
    /// Found by the walk after a kernel queue overflow lost the kernel's own event.
    #[serde(skip_serializing_if = "is_false", default)]
    pub rescan: bool,
    /// `path`/`from_path` escape bytes that are not UTF-8 as `\xNN` and a backslash as `\\`, so
    /// two distinct names never share one path.
    #[serde(skip_serializing_if = "is_false", default)]
    pub path_escaped: bool,
    /// A rename onto an existing file: the last size of the file it replaced (for an exchange,
    /// of the file that now sits at `from_path`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub replaced_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub replaced_export: Option<ExportInfo>,
    /// The two names swapped places (`RENAME_EXCHANGE`): nothing was replaced or destroyed.
    #[serde(skip_serializing_if = "is_false", default)]
    pub exchange: bool,
    /// A delete of one name of a file that is still linked elsewhere: the links left.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub links_left: Option<u64>,
    /// A `file.read`: the bytes the process read from the file (through read, readv,
    /// copy_file_range, sendfile or splice, counted by eBPF); `None` when unknown (no eBPF, or
    /// the reader mapped the file), never a guess.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes_read: Option<u64>,
    /// A `file.read` reported while the reader still held the file open: `bytes_read` is what
    /// it had read by then, and its total follows in a `file.read` with `closed` at its close.
    #[serde(skip_serializing_if = "is_false", default)]
    pub still_open: bool,
    /// The close of a reader reported earlier with `still_open`: `bytes_read` is its total.
    #[serde(skip_serializing_if = "is_false", default)]
    pub closed: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn default_file_action() -> FileAction {
    FileAction::Write
}

impl FileEvent {
    /// A file event with only what every backend knows.
    pub fn new(
        action: FileAction,
        path: impl Into<String>,
        backend: impl Into<Cow<'static, str>>,
    ) -> Self {
        FileEvent {
            action,
            path: path.into(),
            from_path: None,
            size: None,
            inode: None,
            mode: None,
            owner_uid: None,
            owner: None,
            process: None,
            process_known: false,
            backend: backend.into(),
            incomplete: false,
            export: None,
            rescan: false,
            path_escaped: false,
            replaced_size: None,
            replaced_export: None,
            exchange: false,
            links_left: None,
            bytes_read: None,
            still_open: false,
            closed: false,
        }
    }
}

/// What the agent could tell about a bulk-data or archive file: counts only, never content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// "data" for row-oriented bulk data, "archive" for compressed containers.
    pub class: String,
    /// "csv", "tsv", "json", "ndjson", "sql", "dump", "xlsx", "parquet", "zip", "gzip"...
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub est_rows: Option<u64>,
    pub sampled_bytes: u64,
    pub emails: u64,
    pub phones: u64,
    pub passports: u64,
    pub cards: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessAction {
    Start,
    Exit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessEvent {
    #[serde(skip, default = "default_process_action")]
    pub action: ProcessAction,
    #[serde(flatten)]
    pub process: ProcessInfo,
    pub cwd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_ts: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bytes: Option<u64>,
    /// "proc_connector" sees every exec and exit; "poll" may miss short-lived processes.
    pub source: String,
}

fn default_process_action() -> ProcessAction {
    ProcessAction::Start
}

/// A connection opened, or closed after it was reported open (then with what it carried).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetAction {
    #[default]
    Connect,
    /// The close of a connection an earlier `net.connect` reported without its bytes (it was
    /// still open then): the same ends and process, with the bytes that went each way.
    Close,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetEvent {
    #[serde(skip, default)]
    pub action: NetAction,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    pub protocol: String,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    /// "public", "private", "loopback", "link_local", "multicast" or "unspecified".
    pub remote_scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbAction {
    Connect,
    Disconnect,
    Query,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbEvent {
    #[serde(skip, default = "default_db_action")]
    pub action: DbAction,
    /// "postgresql" or "mariadb".
    pub db_system: String,
    pub db_user: String,
    pub database: String,
    pub client_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_port: Option<u16>,
    pub application: String,
    pub session: String,
    pub statement: String,
    /// "read", "write", "ddl", "dcl", "export" or "other".
    pub statement_kind: String,
    pub tables: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// For exports: "copy_to_file", "copy_to_program", "copy_to_stdout", "into_outfile",
    /// "dump_tool" or "full_table_read".
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub export_method: String,
    pub failed: bool,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub error: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sensitive_tables: Vec<String>,
    /// Running totals of rows read from sensitive tables, carried forward so chunked reads add up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_sensitive_rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_sensitive_rows: Option<u64>,
    /// The database server's own name for itself, where the log says it.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub server: String,
}

fn default_db_action() -> DbAction {
    DbAction::Query
}

impl DbEvent {
    pub fn new(action: DbAction, db_system: impl Into<String>) -> Self {
        DbEvent {
            action,
            db_system: db_system.into(),
            db_user: String::new(),
            database: String::new(),
            client_addr: String::new(),
            client_port: None,
            application: String::new(),
            session: String::new(),
            statement: String::new(),
            statement_kind: String::new(),
            tables: Vec::new(),
            rows: None,
            export_method: String::new(),
            failed: false,
            error: String::new(),
            sensitive_tables: Vec::new(),
            session_sensitive_rows: None,
            user_sensitive_rows: None,
            server: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAction {
    Start,
    Heartbeat,
    Stop,
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    #[serde(skip, default = "default_agent_action")]
    pub action: AgentAction,
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub message: String,
    /// agent.dropped: how many events were lost and the sequence numbers they had.
    pub dropped: u64,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub first_dropped_seq: u64,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub last_dropped_seq: u64,
    pub spool_events: u64,
    pub spool_bytes: u64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sensors: Vec<String>,
}

fn default_agent_action() -> AgentAction {
    AgentAction::Heartbeat
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl AgentEvent {
    pub fn new(action: AgentAction) -> Self {
        AgentEvent {
            action,
            version: env!("CARGO_PKG_VERSION").to_string(),
            message: String::new(),
            dropped: 0,
            first_dropped_seq: 0,
            last_dropped_seq: 0,
            spool_events: 0,
            spool_bytes: 0,
            sensors: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorStatus {
    /// The kernel or a queue dropped events; `count` says how many where known.
    Overflow,
    /// A source cannot be read or parsed; the sensor keeps retrying.
    Error,
    /// A source that was failing works again.
    Recovered,
    /// Which backend a sensor runs and why.
    Status,
}

/// Its JSON says `"count": "unknown"` when the kernel did not count what it lost, never a 0
/// that reads as "nothing lost".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "SensorEventJson", from = "SensorEventJson")]
pub struct SensorEvent {
    pub status: SensorStatus,
    pub sensor: String,
    pub message: String,
    pub count: u64,
    pub path: String,
    /// `count` is not known (a kernel queue overflow says only that events were lost).
    pub count_unknown: bool,
}

impl SensorEvent {
    /// The count as people read it: a number, or `unknown`.
    pub fn count_text(&self) -> String {
        if self.count_unknown {
            "unknown".to_string()
        } else {
            self.count.to_string()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SensorEventJson {
    #[serde(skip, default = "default_sensor_status")]
    status: SensorStatus,
    sensor: String,
    message: String,
    count: SensorCount,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    path: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SensorCount {
    Known(u64),
    /// Always `"unknown"` when written.
    Unknown(String),
}

impl From<SensorEvent> for SensorEventJson {
    fn from(event: SensorEvent) -> Self {
        SensorEventJson {
            status: event.status,
            sensor: event.sensor,
            message: event.message,
            count: if event.count_unknown {
                SensorCount::Unknown("unknown".to_string())
            } else {
                SensorCount::Known(event.count)
            },
            path: event.path,
        }
    }
}

impl From<SensorEventJson> for SensorEvent {
    fn from(json: SensorEventJson) -> Self {
        let (count, count_unknown) = match json.count {
            SensorCount::Known(count) => (count, false),
            SensorCount::Unknown(_) => (0, true),
        };
        SensorEvent {
            status: json.status,
            sensor: json.sensor,
            message: json.message,
            count,
            path: json.path,
            count_unknown,
        }
    }
}

fn default_sensor_status() -> SensorStatus {
    SensorStatus::Status
}

impl SensorEvent {
    pub fn new(
        status: SensorStatus,
        sensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        SensorEvent {
            status,
            sensor: sensor.into(),
            message: message.into(),
            count: 0,
            path: String::new(),
            count_unknown: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_event_json_is_flat_with_kind_fields_and_process() {
        let mut file = FileEvent::new(FileAction::Delete, "/srv/x.csv", "fanotify");
        file.size = Some(42);
        file.process_known = true;
        file.process = Some(std::sync::Arc::new(ProcessInfo {
            pid: 7,
            exe: "/usr/bin/rm".into(),
            user: "alice".into(),
            ..ProcessInfo::default()
        }));
        let event = Event {
            seq: 3,
            ts: Timestamp::from_nanos(1_700_000_000_123_456_789),
            host: "db1".into(),
            body: file.into(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["path"], "/srv/x.csv");
        assert_eq!(json["size"], 42);
        assert_eq!(json["pid"], 7);
        assert_eq!(json["exe"], "/usr/bin/rm");
        assert_eq!(json["ts"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(event.kind(), "file.delete");
    }

    #[test]
    fn an_uncounted_loss_reads_unknown_never_zero() {
        let mut lost = SensorEvent::new(SensorStatus::Overflow, "files", "queue overflowed");
        lost.count_unknown = true;
        let json = serde_json::to_value(Body::from(lost.clone())).unwrap();
        assert_eq!(json["count"], "unknown");
        let back: SensorEvent = serde_json::from_value(json).unwrap();
        assert!(back.count_unknown);
        assert_eq!(lost.count_text(), "unknown");
        let counted = SensorEvent {
            count: 3,
            ..SensorEvent::new(SensorStatus::Overflow, "files", "dropped")
        };
        assert_eq!(serde_json::to_value(&counted).unwrap()["count"], 3);
    }
}
