//! Conversion between the domain event model and its protobuf wire form.
//!
//! This is the only place, with the collector's gRPC service, where generated types appear.

use prost::Message;

use crate::event::*;
use crate::pb;
use crate::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("event bytes do not decode: {source}")]
    Decode {
        #[from]
        source: prost::DecodeError,
    },
    #[error("event {seq} has no body")]
    NoBody { seq: u64 },
    #[error("event {seq} has an unknown {field} value {value}")]
    UnknownEnum {
        seq: u64,
        field: &'static str,
        value: i32,
    },
    #[error("event {seq} has {field} {value} out of range")]
    OutOfRange {
        seq: u64,
        field: &'static str,
        value: u32,
    },
}

/// The bytes that are hashed, sent and stored for one event.
pub fn encode_event(event: &Event) -> Vec<u8> {
    to_pb(event).encode_to_vec()
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, ProtoError> {
    from_pb(pb::Event::decode(bytes)?)
}

fn process_to_pb(p: &ProcessInfo) -> pb::ProcessInfo {
    pb::ProcessInfo {
        pid: p.pid,
        ppid: p.ppid,
        exe: p.exe.clone(),
        cmdline: p.cmdline.clone(),
        user: p.user.clone(),
        uid: p.uid,
        ancestry: p
            .ancestry
            .iter()
            .map(|a| pb::Ancestor {
                pid: a.pid,
                exe: a.exe.clone(),
                cmdline: a.cmdline.clone(),
                user: a.user.clone(),
            })
            .collect(),
    }
}

fn process_from_pb(p: pb::ProcessInfo) -> ProcessInfo {
    ProcessInfo {
        pid: p.pid,
        ppid: p.ppid,
        exe: p.exe,
        cmdline: p.cmdline,
        user: p.user,
        uid: p.uid,
        ancestry: p
            .ancestry
            .into_iter()
            .map(|a| Ancestor {
                pid: a.pid,
                exe: a.exe,
                cmdline: a.cmdline,
                user: a.user,
            })
            .collect(),
    }
}

fn export_to_pb(e: &ExportInfo) -> pb::ExportInfo {
    pb::ExportInfo {
        class: e.class.clone(),
        format: e.format.clone(),
        est_rows: e.est_rows,
        sampled_bytes: e.sampled_bytes,
        emails: e.emails,
        phones: e.phones,
        passports: e.passports,
        cards: e.cards,
    }
}

fn export_from_pb(e: pb::ExportInfo) -> ExportInfo {
    ExportInfo {
        class: e.class,
        format: e.format,
        est_rows: e.est_rows,
        sampled_bytes: e.sampled_bytes,
        emails: e.emails,
        phones: e.phones,
        passports: e.passports,
        cards: e.cards,
    }
}

pub fn to_pb(event: &Event) -> pb::Event {
    use pb::event::Body as B;
    let body = match &event.body {
        Body::File(f) => B::File(pb::FileEvent {
            action: match f.action {
                FileAction::Create => pb::FileAction::Create,
                FileAction::Write => pb::FileAction::Write,
                FileAction::Rename => pb::FileAction::Rename,
                FileAction::Delete => pb::FileAction::Delete,
            } as i32,
            path: f.path.clone(),
            from_path: f.from_path.clone(),
            size: f.size,
            inode: f.inode,
            mode: f.mode,
            owner_uid: f.owner_uid,
            owner: f.owner.clone(),
            process: f.process.as_ref().map(process_to_pb),
            backend: f.backend.clone(),
            incomplete: f.incomplete,
            export: f.export.as_ref().map(export_to_pb),
            rescan: f.rescan,
            path_escaped: f.path_escaped,
            replaced_size: f.replaced_size,
            replaced_export: f.replaced_export.as_ref().map(export_to_pb),
            exchange: f.exchange,
            links_left: f.links_left,
        }),
        Body::Process(p) => B::Process(pb::ProcessEvent {
            action: match p.action {
                ProcessAction::Start => pb::ProcessAction::Start,
                ProcessAction::Exit => pb::ProcessAction::Exit,
            } as i32,
            process: Some(process_to_pb(&p.process)),
            cwd: p.cwd.clone(),
            start_ts_nanos: p.start_ts.map(Timestamp::as_nanos),
            exit_code: p.exit_code,
            read_bytes: p.read_bytes,
            write_bytes: p.write_bytes,
            source: p.source.clone(),
        }),
        Body::Net(n) => B::Net(pb::NetEvent {
            process: n.process.as_ref().map(process_to_pb),
            protocol: n.protocol.clone(),
            local_addr: n.local_addr.clone(),
            local_port: u32::from(n.local_port),
            remote_addr: n.remote_addr.clone(),
            remote_port: u32::from(n.remote_port),
            remote_scope: n.remote_scope.clone(),
            bytes_sent: n.bytes_sent,
            bytes_received: n.bytes_received,
        }),
        Body::Db(d) => B::Db(pb::DbEvent {
            action: match d.action {
                DbAction::Connect => pb::DbAction::Connect,
                DbAction::Disconnect => pb::DbAction::Disconnect,
                DbAction::Query => pb::DbAction::Query,
            } as i32,
            db_system: d.db_system.clone(),
            db_user: d.db_user.clone(),
            database: d.database.clone(),
            client_addr: d.client_addr.clone(),
            client_port: d.client_port.map(u32::from),
            application: d.application.clone(),
            session: d.session.clone(),
            statement: d.statement.clone(),
            statement_kind: d.statement_kind.clone(),
            tables: d.tables.clone(),
            rows: d.rows,
            export_method: d.export_method.clone(),
            failed: d.failed,
            error: d.error.clone(),
            sensitive_tables: d.sensitive_tables.clone(),
            session_sensitive_rows: d.session_sensitive_rows,
            user_sensitive_rows: d.user_sensitive_rows,
            server: d.server.clone(),
        }),
        Body::Agent(a) => B::Agent(pb::AgentEvent {
            action: match a.action {
                AgentAction::Start => pb::AgentAction::Start,
                AgentAction::Heartbeat => pb::AgentAction::Heartbeat,
                AgentAction::Stop => pb::AgentAction::Stop,
                AgentAction::Dropped => pb::AgentAction::Dropped,
            } as i32,
            version: a.version.clone(),
            message: a.message.clone(),
            dropped: a.dropped,
            first_dropped_seq: a.first_dropped_seq,
            last_dropped_seq: a.last_dropped_seq,
            spool_events: a.spool_events,
            spool_bytes: a.spool_bytes,
            sensors: a.sensors.clone(),
        }),
        Body::Sensor(s) => B::Sensor(pb::SensorEvent {
            status: match s.status {
                SensorStatus::Overflow => "overflow",
                SensorStatus::Error => "error",
                SensorStatus::Recovered => "recovered",
                SensorStatus::Status => "status",
            }
            .to_string(),
            sensor: s.sensor.clone(),
            message: s.message.clone(),
            count: s.count,
            path: s.path.clone(),
            count_unknown: s.count_unknown,
        }),
    };
    pb::Event {
        seq: event.seq,
        ts_nanos: event.ts.as_nanos(),
        host: event.host.clone(),
        body: Some(body),
    }
}

fn port(seq: u64, field: &'static str, value: u32) -> Result<u16, ProtoError> {
    u16::try_from(value).map_err(|_| ProtoError::OutOfRange { seq, field, value })
}

pub fn from_pb(event: pb::Event) -> Result<Event, ProtoError> {
    use pb::event::Body as B;
    let seq = event.seq;
    let unknown = |field: &'static str, value: i32| ProtoError::UnknownEnum { seq, field, value };
    let body = match event.body.ok_or(ProtoError::NoBody { seq })? {
        B::File(f) => Body::File(FileEvent {
            action: match pb::FileAction::try_from(f.action) {
                Ok(pb::FileAction::Create) => FileAction::Create,
                Ok(pb::FileAction::Write) => FileAction::Write,
                Ok(pb::FileAction::Rename) => FileAction::Rename,
                Ok(pb::FileAction::Delete) => FileAction::Delete,
                _ => return Err(unknown("file action", f.action)),
            },
            path: f.path,
            from_path: f.from_path,
            size: f.size,
            inode: f.inode,
            mode: f.mode,
            owner_uid: f.owner_uid,
            owner: f.owner,
            process_known: f.process.is_some(),
            process: f.process.map(process_from_pb),
            backend: f.backend,
            incomplete: f.incomplete,
            export: f.export.map(export_from_pb),
            rescan: f.rescan,
            path_escaped: f.path_escaped,
            replaced_size: f.replaced_size,
            replaced_export: f.replaced_export.map(export_from_pb),
            exchange: f.exchange,
            links_left: f.links_left,
        }),
        B::Process(p) => Body::Process(ProcessEvent {
            action: match pb::ProcessAction::try_from(p.action) {
                Ok(pb::ProcessAction::Start) => ProcessAction::Start,
                Ok(pb::ProcessAction::Exit) => ProcessAction::Exit,
                _ => return Err(unknown("process action", p.action)),
            },
            process: p.process.map(process_from_pb).unwrap_or_default(),
            cwd: p.cwd,
            start_ts: p.start_ts_nanos.map(Timestamp::from_nanos),
            exit_code: p.exit_code,
            read_bytes: p.read_bytes,
            write_bytes: p.write_bytes,
            source: p.source,
        }),
        B::Net(n) => Body::Net(NetEvent {
            process: n.process.map(process_from_pb),
            protocol: n.protocol,
            local_addr: n.local_addr,
            local_port: port(seq, "local_port", n.local_port)?,
            remote_addr: n.remote_addr,
            remote_port: port(seq, "remote_port", n.remote_port)?,
            remote_scope: n.remote_scope,
            bytes_sent: n.bytes_sent,
            bytes_received: n.bytes_received,
        }),
        B::Db(d) => Body::Db(DbEvent {
            action: match pb::DbAction::try_from(d.action) {
                Ok(pb::DbAction::Connect) => DbAction::Connect,
                Ok(pb::DbAction::Disconnect) => DbAction::Disconnect,
                Ok(pb::DbAction::Query) => DbAction::Query,
                _ => return Err(unknown("db action", d.action)),
            },
            db_system: d.db_system,
            db_user: d.db_user,
            database: d.database,
            client_addr: d.client_addr,
            client_port: d
                .client_port
                .map(|p| port(seq, "client_port", p))
                .transpose()?,
            application: d.application,
            session: d.session,
            statement: d.statement,
            statement_kind: d.statement_kind,
            tables: d.tables,
            rows: d.rows,
            export_method: d.export_method,
            failed: d.failed,
            error: d.error,
            sensitive_tables: d.sensitive_tables,
            session_sensitive_rows: d.session_sensitive_rows,
            user_sensitive_rows: d.user_sensitive_rows,
            server: d.server,
        }),
        B::Agent(a) => Body::Agent(AgentEvent {
            action: match pb::AgentAction::try_from(a.action) {
                Ok(pb::AgentAction::Start) => AgentAction::Start,
                Ok(pb::AgentAction::Heartbeat) => AgentAction::Heartbeat,
                Ok(pb::AgentAction::Stop) => AgentAction::Stop,
                Ok(pb::AgentAction::Dropped) => AgentAction::Dropped,
                _ => return Err(unknown("agent action", a.action)),
            },
            version: a.version,
            message: a.message,
            dropped: a.dropped,
            first_dropped_seq: a.first_dropped_seq,
            last_dropped_seq: a.last_dropped_seq,
            spool_events: a.spool_events,
            spool_bytes: a.spool_bytes,
            sensors: a.sensors,
        }),
        B::Sensor(s) => Body::Sensor(SensorEvent {
            status: match s.status.as_str() {
                "overflow" => SensorStatus::Overflow,
                "error" => SensorStatus::Error,
                "recovered" => SensorStatus::Recovered,
                _ => SensorStatus::Status,
            },
            sensor: s.sensor,
            message: s.message,
            count: s.count,
            path: s.path,
            count_unknown: s.count_unknown,
        }),
    };
    Ok(Event {
        seq,
        ts: Timestamp::from_nanos(event.ts_nanos),
        host: event.host,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_the_wire_form() {
        let mut file = FileEvent::new(FileAction::Rename, "/a/b.csv", "notify");
        file.from_path = Some("/a/b.csv.tmp".into());
        file.size = Some(10);
        file.export = Some(ExportInfo {
            class: "data".into(),
            format: "csv".into(),
            est_rows: Some(3),
            sampled_bytes: 10,
            emails: 1,
            ..ExportInfo::default()
        });
        let mut db = DbEvent::new(DbAction::Query, "postgresql");
        db.tables = vec!["public.customers".into()];
        db.client_port = Some(5432);
        let bodies: Vec<Body> = vec![
            file.into(),
            ProcessEvent {
                action: ProcessAction::Exit,
                process: ProcessInfo {
                    pid: 1,
                    ..ProcessInfo::default()
                },
                cwd: "/".into(),
                start_ts: Some(Timestamp::from_secs(1)),
                exit_code: Some(3),
                read_bytes: Some(1),
                write_bytes: Some(2),
                source: "poll".into(),
            }
            .into(),
            NetEvent {
                remote_port: 443,
                ..NetEvent::default()
            }
            .into(),
            db.into(),
            AgentEvent::new(AgentAction::Dropped).into(),
            SensorEvent::new(SensorStatus::Overflow, "files", "queue overflow").into(),
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let event = Event {
                seq: i as u64 + 1,
                ts: Timestamp::from_nanos(123),
                host: "h".into(),
                body,
            };
            let back = decode_event(&encode_event(&event)).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn garbage_bytes_are_a_clear_error() {
        assert!(decode_event(&[0xff, 0xff, 0xff]).is_err());
    }
}
