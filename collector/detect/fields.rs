//! The field taxonomy rules match on: the flat JSON names of an event (docs/interface.md), plus a
//! few derived names for nested data (`parent_exe`, `ancestry.exe`, `export.format`...).
//!
//! Field names are resolved once, when a rule is compiled, so a typo in a rule is a load error and
//! matching an event never looks a name up in a map.

use bannin::event::{Body, ProcessInfo, Record, SensorStatus};
use serde_json::Value as Json;

use crate::finding::Finding;

/// What a rule looks at: an agent's event or one of the collector's own findings.
#[derive(Clone, Copy)]
pub(crate) enum Subject<'a> {
    Record(&'a Record),
    Finding(&'a Finding),
}

impl<'a> Subject<'a> {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Subject::Record(record) => record.event.kind(),
            Subject::Finding(finding) => finding.kind.as_str(),
        }
    }

    pub(crate) fn host(&self) -> &'a str {
        match self {
            Subject::Record(record) => &record.event.host,
            Subject::Finding(finding) => &finding.host,
        }
    }

    fn process(&self) -> Option<&'a ProcessInfo> {
        match self {
            Subject::Record(record) => match &record.event.body {
                Body::File(file) => file.process.as_deref(),
                Body::Process(process) => Some(&process.process),
                Body::Net(net) => net.process.as_ref(),
                _ => None,
            },
            Subject::Finding(_) => None,
        }
    }

    fn body(&self) -> Option<&'a Body> {
        match self {
            Subject::Record(record) => Some(&record.event.body),
            Subject::Finding(_) => None,
        }
    }
}

/// One value of a field. Lists (`tables`, `ancestry.exe`) yield one value per element.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Str(&'a str),
    Num(i64),
    Bool(bool),
}

impl Val<'_> {
    fn to_json(self) -> Json {
        match self {
            Val::Str(text) => Json::from(text),
            Val::Num(n) => Json::from(n),
            Val::Bool(b) => Json::from(b),
        }
    }
}

macro_rules! fields {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// Every field name a rule may use; `rules/README.md` documents them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum Field {
            $($variant),*
        }

        impl Field {
            pub(crate) fn parse(name: &str) -> Option<Field> {
                match name {
                    $($name => Some(Field::$variant),)*
                    _ => None,
                }
            }

            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Field::$variant => $name),*
                }
            }
        }
    };
}

fields!(
    AgentId = "agent_id",
    Host = "host",
    Kind = "kind",
    Seq = "seq",
    // Any process-carrying event (file, process, net).
    Pid = "pid",
    Ppid = "ppid",
    Exe = "exe",
    Cmdline = "cmdline",
    User = "user",
    Uid = "uid",
    ParentExe = "parent_exe",
    ParentCmdline = "parent_cmdline",
    ParentUser = "parent_user",
    Ancestry = "ancestry",
    AncestryExe = "ancestry.exe",
    AncestryCmdline = "ancestry.cmdline",
    // Files.
    Path = "path",
    FromPath = "from_path",
    Size = "size",
    Owner = "owner",
    Backend = "backend",
    ProcessKnown = "process_known",
    Incomplete = "incomplete",
    ExportClass = "export.class",
    ExportFormat = "export.format",
    ExportEstRows = "export.est_rows",
    ExportEmails = "export.emails",
    ExportPhones = "export.phones",
    ExportPassports = "export.passports",
    ExportCards = "export.cards",
    BytesRead = "bytes_read",
    // Processes.
    Cwd = "cwd",
    ExitCode = "exit_code",
    ReadBytes = "read_bytes",
    WriteBytes = "write_bytes",
    Source = "source",
    // Network.
    Protocol = "protocol",
    LocalAddr = "local_addr",
    LocalPort = "local_port",
    RemoteAddr = "remote_addr",
    RemotePort = "remote_port",
    RemoteScope = "remote_scope",
    BytesSent = "bytes_sent",
    BytesReceived = "bytes_received",
    // Derived for Sigma's network_connection taxonomy: the agent reports outbound connections only.
    Initiated = "initiated",
    RemoteIsIpv6 = "remote_is_ipv6",
    LocalIsIpv6 = "local_is_ipv6",
    // Databases.
    DbSystem = "db_system",
    DbUser = "db_user",
    Database = "database",
    ClientAddr = "client_addr",
    ClientPort = "client_port",
    Application = "application",
    Session = "session",
    Statement = "statement",
    StatementKind = "statement_kind",
    Tables = "tables",
    Rows = "rows",
    ExportMethod = "export_method",
    Failed = "failed",
    Error = "error",
    SensitiveTables = "sensitive_tables",
    SessionSensitiveRows = "session_sensitive_rows",
    UserSensitiveRows = "user_sensitive_rows",
    Server = "server",
    // Agents and sensors.
    Version = "version",
    Message = "message",
    Dropped = "dropped",
    SpoolEvents = "spool_events",
    SpoolBytes = "spool_bytes",
    Sensor = "sensor",
    Count = "count",
    // How many events a sensor lost: the count, or "unknown" where the kernel does not say (an
    // overflow that reports 0). Alerts use it; `count` is the alert's own de-duplication count.
    Lost = "lost",
    // Collector findings.
    Detail = "detail",
);

fn num(n: u64) -> Val<'static> {
    Val::Num(i64::try_from(n).unwrap_or(i64::MAX))
}

impl Field {
    /// Calls `f` with each value of the field until it returns true; says whether one did.
    /// A field the subject does not have yields nothing.
    pub(crate) fn any<'a>(self, subject: Subject<'a>, f: &mut dyn FnMut(Val<'a>) -> bool) -> bool {
        let one = |value: Option<Val<'a>>, f: &mut dyn FnMut(Val<'a>) -> bool| value.is_some_and(f);
        match self {
            Field::AgentId => match subject {
                Subject::Record(record) => f(Val::Str(&record.agent_id)),
                Subject::Finding(finding) => f(Val::Str(&finding.agent_id)),
            },
            Field::Host => f(Val::Str(subject.host())),
            Field::Kind => f(Val::Str(subject.kind())),
            Field::Seq => match subject {
                Subject::Record(record) => f(num(record.event.seq)),
                Subject::Finding(_) => false,
            },
            Field::Detail => match subject {
                Subject::Finding(finding) => f(Val::Str(&finding.detail)),
                Subject::Record(_) => false,
            },
            Field::Pid
            | Field::Ppid
            | Field::Exe
            | Field::Cmdline
            | Field::User
            | Field::Uid
            | Field::ParentExe
            | Field::ParentCmdline
            | Field::ParentUser
            | Field::Ancestry
            | Field::AncestryExe
            | Field::AncestryCmdline => match subject.process() {
                Some(process) => self.any_process(process, f),
                None => false,
            },
            _ => match subject.body() {
                Some(body) => one(self.body_value(body), f) || self.body_list(body, f),
                None => false,
            },
        }
    }

    fn any_process<'a>(self, process: &'a ProcessInfo, f: &mut dyn FnMut(Val<'a>) -> bool) -> bool {
        match self {
            Field::Pid => f(num(u64::from(process.pid))),
            Field::Ppid => process.ppid.is_some_and(|ppid| f(num(u64::from(ppid)))),
            Field::Exe => f(Val::Str(&process.exe)),
            Field::Cmdline => f(Val::Str(&process.cmdline)),
            Field::User => f(Val::Str(&process.user)),
            Field::Uid => process.uid.is_some_and(|uid| f(num(u64::from(uid)))),
            Field::ParentExe => process
                .ancestry
                .first()
                .is_some_and(|a| f(Val::Str(&a.exe))),
            Field::ParentCmdline => process
                .ancestry
                .first()
                .is_some_and(|a| f(Val::Str(&a.cmdline))),
            Field::ParentUser => process
                .ancestry
                .first()
                .is_some_and(|a| f(Val::Str(&a.user))),
            Field::Ancestry | Field::AncestryExe => {
                process.ancestry.iter().any(|a| f(Val::Str(&a.exe)))
            }
            Field::AncestryCmdline => process.ancestry.iter().any(|a| f(Val::Str(&a.cmdline))),
            _ => false,
        }
    }

    /// Single-valued fields of the event body.
    fn body_value(self, body: &Body) -> Option<Val<'_>> {
        let opt = |n: Option<u64>| n.map(num);
        match body {
            Body::File(file) => {
                let export = file.export.as_ref();
                match self {
                    Field::Path => Some(Val::Str(&file.path)),
                    Field::FromPath => file.from_path.as_deref().map(Val::Str),
                    Field::Size => opt(file.size),
                    Field::Owner => file.owner.as_deref().map(Val::Str),
                    Field::Backend => Some(Val::Str(&file.backend)),
                    Field::ProcessKnown => Some(Val::Bool(file.process_known)),
                    Field::Incomplete => Some(Val::Bool(file.incomplete)),
                    Field::ExportClass => export.map(|e| Val::Str(&e.class)),
                    Field::ExportFormat => export.map(|e| Val::Str(&e.format)),
                    Field::ExportEstRows => opt(export.and_then(|e| e.est_rows)),
                    Field::ExportEmails => export.map(|e| num(e.emails)),
                    Field::ExportPhones => export.map(|e| num(e.phones)),
                    Field::ExportPassports => export.map(|e| num(e.passports)),
                    Field::ExportCards => export.map(|e| num(e.cards)),
                    Field::BytesRead => opt(file.bytes_read),
                    _ => None,
                }
            }
            Body::Process(process) => match self {
                Field::Cwd => Some(Val::Str(&process.cwd)),
                Field::ExitCode => process.exit_code.map(|c| Val::Num(i64::from(c))),
                Field::ReadBytes => opt(process.read_bytes),
                Field::WriteBytes => opt(process.write_bytes),
                Field::Source => Some(Val::Str(&process.source)),
                _ => None,
            },
            Body::Net(net) => match self {
                Field::Protocol => Some(Val::Str(&net.protocol)),
                Field::LocalAddr => Some(Val::Str(&net.local_addr)),
                Field::LocalPort => Some(num(u64::from(net.local_port))),
                Field::RemoteAddr => Some(Val::Str(&net.remote_addr)),
                Field::RemotePort => Some(num(u64::from(net.remote_port))),
                Field::RemoteScope => Some(Val::Str(&net.remote_scope)),
                Field::BytesSent => opt(net.bytes_sent),
                Field::BytesReceived => opt(net.bytes_received),
                Field::Initiated => Some(Val::Bool(true)),
                Field::RemoteIsIpv6 => Some(Val::Bool(net.remote_addr.contains(':'))),
                Field::LocalIsIpv6 => Some(Val::Bool(net.local_addr.contains(':'))),
                _ => None,
            },
            Body::Db(db) => match self {
                Field::DbSystem => Some(Val::Str(&db.db_system)),
                Field::DbUser => Some(Val::Str(&db.db_user)),
                Field::Database => Some(Val::Str(&db.database)),
                Field::ClientAddr => Some(Val::Str(&db.client_addr)),
                Field::ClientPort => db.client_port.map(|p| num(u64::from(p))),
                Field::Application => Some(Val::Str(&db.application)),
                Field::Session => Some(Val::Str(&db.session)),
                Field::Statement => Some(Val::Str(&db.statement)),
                Field::StatementKind => Some(Val::Str(&db.statement_kind)),
                Field::Rows => opt(db.rows),
                Field::ExportMethod => Some(Val::Str(&db.export_method)),
                Field::Failed => Some(Val::Bool(db.failed)),
                Field::Error => Some(Val::Str(&db.error)),
                Field::SessionSensitiveRows => opt(db.session_sensitive_rows),
                Field::UserSensitiveRows => opt(db.user_sensitive_rows),
                Field::Server => Some(Val::Str(&db.server)),
                _ => None,
            },
            Body::Agent(agent) => match self {
                Field::Version => Some(Val::Str(&agent.version)),
                Field::Message => Some(Val::Str(&agent.message)),
                Field::Dropped => Some(num(agent.dropped)),
                Field::SpoolEvents => Some(num(agent.spool_events)),
                Field::SpoolBytes => Some(num(agent.spool_bytes)),
                _ => None,
            },
            Body::Sensor(sensor) => match self {
                Field::Sensor => Some(Val::Str(&sensor.sensor)),
                Field::Message => Some(Val::Str(&sensor.message)),
                Field::Count => Some(num(sensor.count)),
                Field::Lost
                    if sensor.count_unknown
                        || (sensor.count == 0 && sensor.status == SensorStatus::Overflow) =>
                {
                    Some(Val::Str("unknown"))
                }
                Field::Lost => Some(num(sensor.count)),
                Field::Path => Some(Val::Str(&sensor.path)),
                _ => None,
            },
        }
    }

    /// List-valued fields of the event body.
    fn body_list<'a>(self, body: &'a Body, f: &mut dyn FnMut(Val<'a>) -> bool) -> bool {
        match (self, body) {
            (Field::Tables, Body::Db(db)) => db.tables.iter().any(|t| f(Val::Str(t))),
            (Field::SensitiveTables, Body::Db(db)) => {
                db.sensitive_tables.iter().any(|t| f(Val::Str(t)))
            }
            _ => false,
        }
    }

    fn is_list(self) -> bool {
        matches!(
            self,
            Field::Tables | Field::SensitiveTables | Field::AncestryExe | Field::AncestryCmdline
        )
    }

    /// The field as JSON for an alert: lists as arrays, `ancestry` as the full parent chain.
    pub(crate) fn json(self, subject: Subject<'_>) -> Option<Json> {
        if self == Field::Ancestry {
            let process = subject.process()?;
            if process.ancestry.is_empty() {
                return None;
            }
            return serde_json::to_value(&process.ancestry).ok();
        }
        let mut values = Vec::new();
        self.any(subject, &mut |v| {
            values.push(v.to_json());
            false
        });
        if self.is_list() {
            Some(Json::Array(values))
        } else {
            values.into_iter().next()
        }
    }
}

#[cfg(test)]
mod tests {
    //! The collector's findings and sensor overflows as rule subjects.

    use crate::detect::testkit::*;

    #[test]
    fn chain_findings_and_sensor_overflow_alert() {
        let mut fleet = Fleet::default();
        let gap = Finding {
            agent_id: "agent-pc1".into(),
            host: "pc1".into(),
            kind: FindingKind::ChainGap,
            ts: at(0),
            detail: "seq 41..57 missing".into(),
            first_seq: 41,
            last_seq: 57,
        };
        let updates = fleet.engine.observe_finding(&gap);
        assert_eq!(rules_of(&updates), vec!["chain-gap"]);
        // The alert points at the first stored event after the missing ones.
        assert_eq!(
            new_alerts(&updates)[0].evidence,
            vec![EvidenceRef {
                agent_id: "agent-pc1".into(),
                seq: 58,
            }]
        );
        assert!(
            new_alerts(&updates)[0]
                .summary
                .contains("seq 41..57 missing")
        );
        let tamper = Finding {
            kind: FindingKind::ChainTamper,
            detail: "signature of seq 58 invalid".into(),
            ..gap
        };
        let updates = fleet.engine.observe_finding(&tamper);
        assert_eq!(rules_of(&updates), vec!["chain-tamper"]);
        assert_eq!(new_alerts(&updates)[0].severity, Severity::Critical);

        let mut overflow =
            SensorEvent::new(SensorStatus::Overflow, "files", "fanotify queue overflow");
        overflow.count = 1200;
        let updates = fleet.send("pc1", 5, overflow.into());
        assert_eq!(rules_of(&updates), vec!["sensor-overflow"]);
        assert_eq!(new_alerts(&updates)[0].fields["lost"], 1200);
        assert!(new_alerts(&updates)[0].summary.contains("lost 1200 events"));
        // The alert object parses back: no rule field repeats one of its own keys.
        let json = serde_json::to_string(new_alerts(&updates)[0]).unwrap();
        assert_eq!(serde_json::from_str::<Alert>(&json).unwrap().count, 1);
        // An overflow the kernel did not count says so, never "0".
        let unknown = SensorEvent::new(SensorStatus::Overflow, "network", "socket queue overflow");
        let updates = fleet.send("pc1", 6, unknown.into());
        assert_eq!(new_alerts(&updates)[0].fields["lost"], "unknown");
        assert!(
            new_alerts(&updates)[0]
                .summary
                .contains("lost unknown events")
        );
        let status = SensorEvent::new(SensorStatus::Status, "files", "fanotify");
        assert!(fleet.send("pc1", 6, status.into()).is_empty());
    }
}
