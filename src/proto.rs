//! Conversion between the domain event model and its protobuf wire form.
//!
//! This is the only place, with the collector's gRPC service, where generated types appear.

use std::borrow::Cow;
use std::sync::Arc;

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
    #[error("event is {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("event {seq} has {count} {field} entries; the limit is {limit}")]
    TooMany {
        seq: u64,
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("event {seq} has a {field} of {len} bytes; the limit is {limit}")]
    TooLong {
        seq: u64,
        field: &'static str,
        len: usize,
        limit: usize,
    },
}

/// Bounds on one event, shared by both sides: the agent fits its events to them before spooling
/// ([`fit`]) and the collector refuses an event that exceeds them ([`decode_event`]). Every repeated
/// field and string is bounded, so no event can make the collector allocate more than a small
/// multiple of [`MAX_EVENT_BYTES`], however it is crafted.
pub mod limits {
    /// The most bytes of one encoded event. An empty repeated entry costs two bytes on the wire and
    /// about 80 once decoded, so this also caps what one event can cost before it is checked.
    pub const MAX_EVENT_BYTES: usize = 256 * 1024;
    /// The deepest process ancestry kept (the agent's process table stops at 64 as well).
    pub const MAX_ANCESTRY: usize = 64;
    /// The most entries of a list of names (tables, sensitive tables, sensors).
    pub const MAX_LIST: usize = 256;
    /// The longest single string (paths, command lines, statements).
    pub const MAX_STRING: usize = 64 * 1024;
    /// The highest sequence number accepted: far above any real agent's lifetime, and low enough
    /// that the store's signed 64-bit columns and `seq + 1` never overflow.
    pub const MAX_SEQ: u64 = 1 << 62;
}

/// One bounded part of an event, as [`visit`] hands it out.
enum Part<'a> {
    Text(&'static str, &'a mut String),
    /// A string shared between events (the host, an owner's name): replaced, never changed in
    /// place, when a bound requires.
    Shared(&'static str, &'a mut Arc<str>),
    /// A name that is usually a constant (a backend's), copied only when a bound requires.
    Named(&'static str, &'a mut Cow<'static, str>),
    List(&'static str, &'a mut Vec<String>),
    /// An ancestry with its ancestors' strings. It is shared between events, so a visitor reads
    /// it and changes it (making it this event's own copy) only when a bound requires.
    Ancestry(&'a mut Ancestry),
    /// A file event's process, shared like an ancestry: a visitor that must change it calls
    /// [`visit_process`] on `Arc::make_mut` of it, and only then.
    Process(&'a mut Arc<ProcessInfo>),
}

impl Part<'_> {
    /// A string's field name and length, whichever way the string is held.
    fn text(&self) -> Option<(&'static str, usize)> {
        match self {
            Part::Text(field, text) => Some((field, text.len())),
            Part::Shared(field, text) => Some((field, text.len())),
            Part::Named(field, text) => Some((field, text.len())),
            _ => None,
        }
    }
}

fn visit_process(p: &mut ProcessInfo, f: &mut dyn FnMut(Part<'_>)) {
    f(Part::Ancestry(&mut p.ancestry));
    f(Part::Text("exe", &mut p.exe));
    f(Part::Text("cmdline", &mut p.cmdline));
    f(Part::Text("user", &mut p.user));
}

/// A process's own strings, named as the bounds report them.
fn process_texts(p: &ProcessInfo) -> [(&'static str, &String); 3] {
    [("exe", &p.exe), ("cmdline", &p.cmdline), ("user", &p.user)]
}

/// Each ancestor's strings, named as the bounds report them.
fn ancestor_texts(a: &Ancestor) -> [(&'static str, &String); 3] {
    [
        ("ancestor exe", &a.exe),
        ("ancestor cmdline", &a.cmdline),
        ("ancestor user", &a.user),
    ]
}

/// Every string and list of an event, so the bounds cannot miss a field.
fn visit(event: &mut Event, f: &mut dyn FnMut(Part<'_>)) {
    f(Part::Shared("host", &mut event.host));
    match &mut event.body {
        Body::File(e) => {
            f(Part::Text("path", &mut e.path));
            if let Some(text) = &mut e.from_path {
                f(Part::Text("file field", text));
            }
            if let Some(text) = &mut e.owner {
                f(Part::Shared("file field", text));
            }
            f(Part::Named("backend", &mut e.backend));
            if let Some(p) = &mut e.process {
                f(Part::Process(p));
            }
            if let Some(x) = &mut e.export {
                f(Part::Text("export class", &mut x.class));
                f(Part::Text("export format", &mut x.format));
            }
        }
        Body::Process(e) => {
            visit_process(&mut e.process, f);
            f(Part::Text("cwd", &mut e.cwd));
            f(Part::Text("source", &mut e.source));
        }
        Body::Net(e) => {
            if let Some(p) = &mut e.process {
                visit_process(p, f);
            }
            for (name, text) in [
                ("protocol", &mut e.protocol),
                ("local_addr", &mut e.local_addr),
                ("remote_addr", &mut e.remote_addr),
                ("remote_scope", &mut e.remote_scope),
            ] {
                f(Part::Text(name, text));
            }
        }
        Body::Db(e) => {
            f(Part::List("tables", &mut e.tables));
            f(Part::List("sensitive_tables", &mut e.sensitive_tables));
            for (name, text) in [
                ("db_system", &mut e.db_system),
                ("db_user", &mut e.db_user),
                ("database", &mut e.database),
                ("client_addr", &mut e.client_addr),
                ("application", &mut e.application),
                ("session", &mut e.session),
                ("statement", &mut e.statement),
                ("statement_kind", &mut e.statement_kind),
                ("export_method", &mut e.export_method),
                ("error", &mut e.error),
                ("server", &mut e.server),
            ] {
                f(Part::Text(name, text));
            }
            for table in e.tables.iter_mut().chain(e.sensitive_tables.iter_mut()) {
                f(Part::Text("table", table));
            }
        }
        Body::Agent(e) => {
            f(Part::List("sensors", &mut e.sensors));
            f(Part::Text("version", &mut e.version));
            f(Part::Text("message", &mut e.message));
            for sensor in &mut e.sensors {
                f(Part::Text("sensor", sensor));
            }
        }
        Body::Sensor(e) => {
            f(Part::Text("sensor", &mut e.sensor));
            f(Part::Text("message", &mut e.message));
            f(Part::Text("path", &mut e.path));
        }
    }
}

/// The first bound a decoded event exceeds, if any.
fn check_bounds(event: &mut Event) -> Result<(), ProtoError> {
    use limits::*;
    let seq = event.seq;
    let mut found = None;
    visit(event, &mut |part| {
        if found.is_some() {
            return;
        }
        found = match part {
            Part::Ancestry(list) => process_beyond(seq, list, []),
            Part::List(field, list) if list.len() > MAX_LIST => Some(ProtoError::TooMany {
                seq,
                field,
                count: list.len(),
                limit: MAX_LIST,
            }),
            Part::Process(p) => process_beyond(seq, &p.ancestry, process_texts(p)),
            other => match other.text() {
                Some((field, len)) if len > MAX_STRING => Some(ProtoError::TooLong {
                    seq,
                    field,
                    len,
                    limit: MAX_STRING,
                }),
                _ => None,
            },
        };
    });
    found.map_or(Ok(()), Err)
}

/// The first bound a process's ancestry and `texts` (its own strings, none for an ancestry
/// alone) exceed, in the order [`visit_process`] visits them.
fn process_beyond<'a>(
    seq: u64,
    ancestry: &'a [Ancestor],
    texts: impl IntoIterator<Item = (&'static str, &'a String)>,
) -> Option<ProtoError> {
    use limits::*;
    if ancestry.len() > MAX_ANCESTRY {
        return Some(ProtoError::TooMany {
            seq,
            field: "ancestry",
            count: ancestry.len(),
            limit: MAX_ANCESTRY,
        });
    }
    ancestry
        .iter()
        .flat_map(ancestor_texts)
        .chain(texts)
        .find(|(_, text)| text.len() > MAX_STRING)
        .map(|(field, text)| ProtoError::TooLong {
            seq,
            field,
            len: text.len(),
            limit: MAX_STRING,
        })
}

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

/// Cuts an event down to the shared bounds, so the collector never refuses what the agent spooled:
/// lists and ancestry are shortened, then strings, halving their allowance until the encoded event
/// fits [`limits::MAX_EVENT_BYTES`]. Returns whether anything was cut.
pub fn fit(event: &mut Event) -> bool {
    use limits::*;
    let mut cut = false;
    let mut max_string = MAX_STRING;
    loop {
        visit(event, &mut |part| fit_part(part, max_string, &mut cut));
        if to_pb(event).encoded_len() <= MAX_EVENT_BYTES || max_string == 0 {
            return cut;
        }
        max_string /= 2;
    }
}

/// [`fit`]'s cut of one part to `max_string`; a shared process is copied only if it must change.
fn fit_part(part: Part<'_>, max_string: usize, cut: &mut bool) {
    use limits::*;
    let too_long = |a: &Ancestor| {
        ancestor_texts(a)
            .iter()
            .any(|(_, text)| text.len() > max_string)
    };
    match part {
        Part::Ancestry(list) => {
            if list.len() > MAX_ANCESTRY {
                list.truncate(MAX_ANCESTRY);
                *cut = true;
            }
            if list.iter().any(too_long) {
                for a in list.iter_mut() {
                    for text in [&mut a.exe, &mut a.cmdline, &mut a.user] {
                        truncate_at_char(text, max_string);
                    }
                }
                *cut = true;
            }
        }
        Part::List(_, list) if list.len() > MAX_LIST => {
            list.truncate(MAX_LIST);
            *cut = true;
        }
        Part::Text(_, text) if text.len() > max_string => {
            truncate_at_char(text, max_string);
            *cut = true;
        }
        Part::Shared(_, text) if text.len() > max_string => {
            let mut own = text.to_string();
            truncate_at_char(&mut own, max_string);
            *text = Arc::from(own);
            *cut = true;
        }
        Part::Named(_, text) if text.len() > max_string => {
            truncate_at_char(text.to_mut(), max_string);
            *cut = true;
        }
        Part::Process(p) => {
            let must_change = p.ancestry.len() > MAX_ANCESTRY
                || p.ancestry.iter().any(too_long)
                || process_texts(p)
                    .iter()
                    .any(|(_, text)| text.len() > max_string);
            if must_change {
                visit_process(Arc::make_mut(p), &mut |part| {
                    fit_part(part, max_string, cut)
                });
            }
        }
        _ => {}
    }
}

/// The bytes that are hashed, sent and stored for `event`, cut to the shared bounds first if it
/// exceeds them ([`fit`]). An event within them (nearly all) is encoded once.
pub fn fit_and_encode(event: &mut Event) -> Vec<u8> {
    let mut bytes = Vec::new();
    fit_and_encode_into(event, &mut ProcessBytes::default(), &mut bytes);
    bytes
}

/// [`fit_and_encode`] for a stream of events, appending the bytes to `out`, with the encoding of
/// the last file event's process kept in `cache` for the next.
pub fn fit_and_encode_into(event: &mut Event, cache: &mut ProcessBytes, out: &mut Vec<u8>) {
    let start = out.len();
    if check_bounds(event).is_ok() {
        cache.encode_into(event, out);
        if out.len() - start <= limits::MAX_EVENT_BYTES {
            return;
        }
        out.truncate(start);
    }
    fit(event);
    to_pb(event).encode_raw(out);
}

/// The encoded form of the process the last file event carried. A burst's file events share one
/// process (the same `Arc`, ancestry and all, most of each event's bytes): its encoding is then
/// copied in, not converted and encoded again for each event.
#[derive(Default)]
pub struct ProcessBytes {
    /// The process, held so that its allocation is not reused by another while it is compared
    /// by address, and its bytes (`ProcessInfo`, field 9 of `FileEvent`, without tag or length).
    last: Option<(Arc<ProcessInfo>, Vec<u8>)>,
    /// A file event's body, encoded before its length is known; kept from event to event.
    body: Vec<u8>,
}

impl ProcessBytes {
    /// Appends to `out` the same bytes as [`encode_event`] gives, but for where a file event's
    /// process sits among its fields (last): protobuf readers take fields in any order, and the
    /// chain hashes the bytes as they are.
    ///
    /// Fields the generated message would add are written by [`encode_file_fields`], which a
    /// test holds to prost's bytes.
    fn encode_into(&mut self, event: &Event, out: &mut Vec<u8>) {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let Body::File(
            file @ FileEvent {
                process: Some(process),
                ..
            },
        ) = &event.body
        else {
            return to_pb(event).encode_raw(out);
        };
        let hit = matches!(&self.last, Some((last, _)) if Arc::ptr_eq(last, process));
        if !hit {
            let bytes = process_to_pb(process).encode_to_vec();
            self.last = Some((Arc::clone(process), bytes));
        }
        let process_bytes = self.last.as_ref().map_or(&[][..], |(_, bytes)| bytes);
        // The file's fields are encoded from the event as it is, borrowed: converting it to the
        // generated message first copied each of its strings for every event.
        let body = &mut self.body;
        body.clear();
        encode_file_fields(file, body);
        encode_key(9, WireType::LengthDelimited, body);
        encode_varint(process_bytes.len() as u64, body);
        body.extend_from_slice(process_bytes);
        out.reserve(
            event.host.len()
                + 32
                + key_len(10)
                + encoded_len_varint(body.len() as u64)
                + body.len(),
        );
        if event.seq != 0 {
            prost::encoding::uint64::encode(1, &event.seq, out);
        }
        let ts = event.ts.as_nanos();
        if ts != 0 {
            prost::encoding::int64::encode(2, &ts, out);
        }
        if !event.host.is_empty() {
            encode_str(3, &event.host, out);
        }
        encode_key(10, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
}

/// A string field, as prost writes one: key, length, bytes.
fn encode_str(tag: u32, value: &str, out: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value.as_bytes());
}

/// The fields of `pb::FileEvent` but its process, in the order and form prost gives them (the
/// chain hashes the bytes as they are, and a test holds the two to the same bytes).
fn encode_file_fields(file: &FileEvent, out: &mut Vec<u8>) {
    use prost::encoding::{bool as boolean, message, uint32, uint64};
    let action = file_action_to_pb(file.action) as i32;
    if action != 0 {
        prost::encoding::int32::encode(1, &action, out);
    }
    if !file.path.is_empty() {
        encode_str(2, &file.path, out);
    }
    if let Some(from_path) = &file.from_path {
        encode_str(3, from_path, out);
    }
    if let Some(size) = &file.size {
        uint64::encode(4, size, out);
    }
    if let Some(inode) = &file.inode {
        uint64::encode(5, inode, out);
    }
    if let Some(mode) = &file.mode {
        uint32::encode(6, mode, out);
    }
    if let Some(owner_uid) = &file.owner_uid {
        uint32::encode(7, owner_uid, out);
    }
    if let Some(owner) = &file.owner {
        encode_str(8, owner, out);
    }
    if !file.backend.is_empty() {
        encode_str(10, &file.backend, out);
    }
    if file.incomplete {
        boolean::encode(11, &true, out);
    }
    if let Some(export) = &file.export {
        message::encode(12, &export_to_pb(export), out);
    }
    if file.rescan {
        boolean::encode(13, &true, out);
    }
    if file.path_escaped {
        boolean::encode(14, &true, out);
    }
    if let Some(replaced_size) = &file.replaced_size {
        uint64::encode(16, replaced_size, out);
    }
    if let Some(replaced_export) = &file.replaced_export {
        message::encode(17, &export_to_pb(replaced_export), out);
    }
    if file.exchange {
        boolean::encode(18, &true, out);
    }
    if let Some(links_left) = &file.links_left {
        uint64::encode(19, links_left, out);
    }
    if let Some(bytes_read) = &file.bytes_read {
        uint64::encode(20, bytes_read, out);
    }
    if file.still_open {
        boolean::encode(21, &true, out);
    }
    if file.closed {
        boolean::encode(22, &true, out);
    }
}

fn file_action_to_pb(action: FileAction) -> pb::FileAction {
    match action {
        FileAction::Create => pb::FileAction::Create,
        FileAction::Write => pb::FileAction::Write,
        FileAction::Rename => pb::FileAction::Rename,
        FileAction::Delete => pb::FileAction::Delete,
        FileAction::Read => pb::FileAction::Read,
    }
}

/// About how many bytes a decoded event occupies, so a batch's decoded size can be budgeted.
pub fn footprint(event: &mut Event) -> usize {
    let mut bytes = std::mem::size_of::<Event>();
    visit(event, &mut |part| {
        bytes += match part {
            Part::Text(_, text) => text.capacity(),
            Part::Shared(_, text) => text.len(),
            Part::Named(_, Cow::Owned(text)) => text.capacity(),
            Part::Named(_, Cow::Borrowed(_)) => 0,
            Part::List(_, list) => list.capacity() * std::mem::size_of::<String>(),
            Part::Ancestry(list) => ancestry_footprint(list),
            Part::Process(p) => {
                std::mem::size_of::<ProcessInfo>()
                    + process_texts(p)
                        .iter()
                        .map(|(_, text)| text.capacity())
                        .sum::<usize>()
                    + ancestry_footprint(&p.ancestry)
            }
        }
    });
    bytes
}

fn ancestry_footprint(list: &[Ancestor]) -> usize {
    std::mem::size_of_val(list)
        + list
            .iter()
            .flat_map(ancestor_texts)
            .map(|(_, text)| text.capacity())
            .sum::<usize>()
}

/// Reads only an event's sequence number; every other field is skipped without being allocated.
pub fn peek_seq(bytes: &[u8]) -> Result<u64, ProtoError> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct SeqOnly {
        #[prost(uint64, tag = "1")]
        seq: u64,
    }
    Ok(SeqOnly::decode(bytes)?.seq)
}

/// The bytes that are hashed, sent and stored for one event.
pub fn encode_event(event: &Event) -> Vec<u8> {
    to_pb(event).encode_to_vec()
}

/// Decodes one event within [`limits`]: its size is checked before decoding and every list and
/// string after, so an oversized or crafted event is a clear error, never a large allocation.
pub fn decode_event(bytes: &[u8]) -> Result<Event, ProtoError> {
    if bytes.len() > limits::MAX_EVENT_BYTES {
        return Err(ProtoError::TooLarge {
            bytes: bytes.len(),
            limit: limits::MAX_EVENT_BYTES,
        });
    }
    let mut event = from_pb(pb::Event::decode(bytes)?)?;
    check_bounds(&mut event)?;
    Ok(event)
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
    to_pb_with(event, true)
}

/// [`to_pb`], leaving a file event's process out unless `file_process`.
fn to_pb_with(event: &Event, file_process: bool) -> pb::Event {
    use pb::event::Body as B;
    let body = match &event.body {
        // A field added here is added to `encode_file_fields` too, which writes file events
        // for the spool without this conversion.
        Body::File(f) => B::File(pb::FileEvent {
            action: file_action_to_pb(f.action) as i32,
            path: f.path.clone(),
            from_path: f.from_path.clone(),
            size: f.size,
            inode: f.inode,
            mode: f.mode,
            owner_uid: f.owner_uid,
            owner: f.owner.as_deref().map(str::to_string),
            process: f
                .process
                .as_deref()
                .filter(|_| file_process)
                .map(process_to_pb),
            backend: f.backend.to_string(),
            incomplete: f.incomplete,
            export: f.export.as_ref().map(export_to_pb),
            rescan: f.rescan,
            path_escaped: f.path_escaped,
            replaced_size: f.replaced_size,
            replaced_export: f.replaced_export.as_ref().map(export_to_pb),
            exchange: f.exchange,
            links_left: f.links_left,
            bytes_read: f.bytes_read,
            still_open: f.still_open,
            closed: f.closed,
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
            action: match n.action {
                NetAction::Connect => pb::NetAction::Connect,
                NetAction::Close => pb::NetAction::Close,
            } as i32,
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
        host: event.host.to_string(),
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
                Ok(pb::FileAction::Read) => FileAction::Read,
                _ => return Err(unknown("file action", f.action)),
            },
            path: f.path,
            from_path: f.from_path,
            size: f.size,
            inode: f.inode,
            mode: f.mode,
            owner_uid: f.owner_uid,
            owner: f.owner.map(Arc::from),
            process_known: f.process.is_some(),
            process: f.process.map(|p| Arc::new(process_from_pb(p))),
            backend: Cow::Owned(f.backend),
            incomplete: f.incomplete,
            export: f.export.map(export_from_pb),
            rescan: f.rescan,
            path_escaped: f.path_escaped,
            replaced_size: f.replaced_size,
            replaced_export: f.replaced_export.map(export_from_pb),
            exchange: f.exchange,
            links_left: f.links_left,
            bytes_read: f.bytes_read,
            still_open: f.still_open,
            closed: f.closed,
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
            action: match pb::NetAction::try_from(n.action) {
                // Agents from before `net.close` sent no action.
                Ok(pb::NetAction::Unspecified | pb::NetAction::Connect) => NetAction::Connect,
                Ok(pb::NetAction::Close) => NetAction::Close,
                _ => return Err(unknown("net action", n.action)),
            },
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
        host: Arc::from(event.host),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events encoded in a stream, the process of each file event copied from the last one's
    /// encoding where it is the same, decode exactly as when each is encoded alone; a process
    /// that is not the same (another allocation, even with the same pid) is encoded anew.
    #[test]
    fn a_stream_of_file_events_encodes_as_each_alone() {
        let process = |cmdline: &str| {
            Arc::new(ProcessInfo {
                pid: 7,
                ppid: Some(1),
                exe: "/usr/bin/perl".into(),
                cmdline: cmdline.into(),
                user: "alice".into(),
                uid: Some(1000),
                ancestry: Ancestry::from(vec![Ancestor {
                    pid: 1,
                    exe: "/sbin/init".into(),
                    cmdline: "init splash".into(),
                    user: "root".into(),
                }]),
            })
        };
        let (perl, other) = (process("perl -e burst"), process("perl -e other"));
        let file = |n: u32, process: Option<&Arc<ProcessInfo>>| {
            let mut file = FileEvent::new(FileAction::Create, format!("/w/f{n}"), "fanotify");
            file.size = Some(u64::from(n));
            file.owner = Some("alice".into());
            file.links_left = Some(2);
            file.process = process.cloned();
            let mut event = Event::now("h", file);
            event.seq = u64::from(n) + 1;
            event
        };
        let mut events = vec![
            file(0, Some(&perl)),
            file(1, Some(&perl)),
            Event::now("h", AgentEvent::new(AgentAction::Heartbeat)),
            file(2, Some(&perl)),
            file(3, Some(&other)),
            file(4, None),
            file(5, Some(&perl)),
        ];
        let mut cache = ProcessBytes::default();
        for event in &mut events {
            let alone = encode_event(event);
            // After what the buffer held: only the new bytes are the event's.
            let mut streamed = b"before".to_vec();
            fit_and_encode_into(event, &mut cache, &mut streamed);
            let streamed = streamed.split_off(6);
            assert_eq!(streamed.len(), alone.len());
            assert_eq!(
                decode_event(&streamed).unwrap(),
                decode_event(&alone).unwrap()
            );
        }
        let mut bytes = Vec::new();
        fit_and_encode_into(&mut events[4], &mut cache, &mut bytes);
        let decoded = decode_event(&bytes).unwrap();
        let Body::File(decoded) = decoded.body else {
            panic!("not a file event")
        };
        assert_eq!(decoded.process.unwrap().cmdline, "perl -e other");
    }

    /// What `ProcessBytes::encode_into` wrote before it encoded a file event's fields itself:
    /// the generated message without its process, then the process.
    fn through_the_generated_message(event: &Event) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let Body::File(FileEvent {
            process: Some(process),
            ..
        }) = &event.body
        else {
            panic!("a file event with its process")
        };
        let mut head = to_pb_with(event, false);
        let Some(pb::event::Body::File(file)) = head.body.take() else {
            panic!("not a file event")
        };
        let mut body = file.encode_to_vec();
        let process = process_to_pb(process).encode_to_vec();
        encode_key(9, WireType::LengthDelimited, &mut body);
        encode_varint(process.len() as u64, &mut body);
        body.extend_from_slice(&process);
        let mut out = Vec::new();
        head.encode_raw(&mut out);
        encode_key(10, WireType::LengthDelimited, &mut out);
        encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(&body);
        out
    }

    /// A file event's fields, written from the event as it is, are the bytes prost gives them,
    /// every field set or none, whatever the action.
    #[test]
    fn a_file_event_encodes_to_the_generated_messages_bytes() {
        let process = Arc::new(ProcessInfo {
            pid: 77,
            exe: "/usr/bin/perl".into(),
            cmdline: "perl -e burst".into(),
            ..ProcessInfo::default()
        });
        let export = ExportInfo {
            class: "data".into(),
            format: "csv".into(),
            est_rows: Some(170_000),
            sampled_bytes: 65_536,
            emails: 12,
            ..ExportInfo::default()
        };
        let mut events = Vec::new();
        for action in [
            FileAction::Create,
            FileAction::Write,
            FileAction::Rename,
            FileAction::Delete,
            FileAction::Read,
        ] {
            let mut bare = FileEvent::new(action, "", "");
            bare.process = Some(Arc::clone(&process));
            let mut bare = Event::now("", bare);
            bare.seq = 0;
            bare.ts = crate::time::Timestamp::from_nanos(0);
            events.push(bare);
            let mut full = FileEvent::new(action, "/エクスポート/顧客.csv", "fanotify");
            full.from_path = Some(String::new());
            full.size = Some(u64::MAX);
            full.inode = Some(0);
            full.mode = Some(0o100_644);
            full.owner_uid = Some(u32::MAX);
            full.owner = Some("alice".into());
            full.process = Some(Arc::clone(&process));
            full.incomplete = true;
            full.export = Some(export.clone());
            full.rescan = true;
            full.path_escaped = true;
            full.replaced_size = Some(300);
            full.replaced_export = Some(ExportInfo::default());
            full.exchange = true;
            full.links_left = Some(1);
            full.bytes_read = Some(1 << 40);
            full.still_open = true;
            full.closed = true;
            let mut full = Event::now("host-1", full);
            full.seq = u64::MAX;
            events.push(full);
        }
        let mut cache = ProcessBytes::default();
        for event in &events {
            let mut direct = Vec::new();
            cache.encode_into(event, &mut direct);
            assert_eq!(direct, through_the_generated_message(event), "{event:?}");
        }
    }

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
        let mut read = FileEvent::new(FileAction::Read, "/a/b.csv", "fanotify");
        read.process_known = true;
        read.process = Some(Arc::new(ProcessInfo {
            pid: 9,
            exe: "/usr/bin/cat".into(),
            ..ProcessInfo::default()
        }));
        let bodies: Vec<Body> = vec![
            file.into(),
            read.into(),
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
            NetEvent {
                action: NetAction::Close,
                remote_port: 443,
                bytes_sent: Some(3_000_000),
                bytes_received: Some(2),
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
    fn events_beyond_the_bounds_are_refused_and_fit_brings_them_within() {
        let mut process = ProcessInfo {
            cmdline: "x".repeat(limits::MAX_STRING + 10),
            ..ProcessInfo::default()
        };
        process.ancestry = vec![Ancestor::default(); limits::MAX_ANCESTRY + 1].into();
        let mut event = start_of(process);
        let error = decode_event(&encode_event(&event)).unwrap_err();
        assert!(
            matches!(
                error,
                ProtoError::TooMany {
                    field: "ancestry",
                    ..
                }
            ),
            "{error}"
        );
        assert!(fit(&mut event));
        let back = decode_event(&encode_event(&event)).unwrap();
        assert_eq!(back, event);

        let mut db = DbEvent::new(DbAction::Query, "postgresql");
        db.tables = vec!["t".into(); limits::MAX_LIST + 1];
        db.statement = "s".repeat(limits::MAX_EVENT_BYTES);
        let mut event = Event {
            seq: 8,
            ts: Timestamp::from_nanos(1),
            host: "h".into(),
            body: db.into(),
        };
        let bytes = encode_event(&event);
        assert!(matches!(
            decode_event(&bytes),
            Err(ProtoError::TooLarge { .. })
        ));
        assert!(fit(&mut event));
        assert!(encode_event(&event).len() <= limits::MAX_EVENT_BYTES);
        decode_event(&encode_event(&event)).unwrap();
        assert_eq!(peek_seq(&bytes).unwrap(), 8);
    }

    /// A `process.start` of `process`, numbered 9.
    fn start_of(process: ProcessInfo) -> Event {
        Event {
            seq: 9,
            ts: Timestamp::from_nanos(1),
            host: "h".into(),
            body: ProcessEvent {
                action: ProcessAction::Start,
                process,
                cwd: "/".into(),
                start_ts: None,
                exit_code: None,
                read_bytes: None,
                write_bytes: None,
                source: "connector".into(),
            }
            .into(),
        }
    }

    #[test]
    fn an_ancestor_beyond_the_string_bound_is_refused_and_cut_in_this_event_only() {
        let line: Ancestry = vec![Ancestor {
            pid: 1,
            cmdline: "y".repeat(limits::MAX_STRING + 1),
            ..Ancestor::default()
        }]
        .into();
        let shared = line.clone();
        let mut event = start_of(ProcessInfo {
            ancestry: line,
            ..ProcessInfo::default()
        });
        let error = decode_event(&encode_event(&event)).unwrap_err();
        assert!(
            matches!(
                error,
                ProtoError::TooLong {
                    field: "ancestor cmdline",
                    ..
                }
            ),
            "{error}"
        );
        let bytes = fit_and_encode(&mut event);
        let back = decode_event(&bytes).unwrap();
        assert_eq!(back, event);
        let Body::Process(start) = &event.body else {
            unreachable!()
        };
        assert_eq!(start.process.ancestry[0].cmdline.len(), limits::MAX_STRING);
        // The line another event holds is untouched.
        assert_eq!(shared[0].cmdline.len(), limits::MAX_STRING + 1);
    }

    #[test]
    fn encoding_an_event_within_bounds_keeps_its_ancestry_shared() {
        let line: Ancestry = vec![Ancestor::default(); 3].into();
        let mut event = start_of(ProcessInfo {
            ancestry: line.clone(),
            ..ProcessInfo::default()
        });
        let bytes = fit_and_encode(&mut event);
        assert_eq!(bytes, encode_event(&event));
        let Body::Process(start) = &event.body else {
            unreachable!()
        };
        assert!(std::ptr::eq(start.process.ancestry.as_ptr(), line.as_ptr()));
    }

    /// A file event of `process`, numbered 10.
    fn write_by(process: &Arc<ProcessInfo>) -> Event {
        let mut file = FileEvent::new(FileAction::Write, "/srv/x.csv", "fanotify");
        file.process = Some(Arc::clone(process));
        file.process_known = true;
        Event {
            seq: 10,
            ts: Timestamp::from_nanos(1),
            host: "h".into(),
            body: file.into(),
        }
    }

    /// The host, an owner's name and a backend's name are shared between events: each is held
    /// to the string bound, and cut in this event only, leaving what the others share whole.
    #[test]
    fn shared_strings_are_bounded_and_cut_in_this_event_only() {
        let long: Arc<str> = Arc::from("o".repeat(limits::MAX_STRING + 1));
        let process = Arc::new(ProcessInfo::default());
        for field in ["host", "owner", "backend"] {
            let mut event = write_by(&process);
            let Body::File(file) = &mut event.body else {
                unreachable!()
            };
            match field {
                "host" => event.host = Arc::clone(&long),
                "owner" => file.owner = Some(Arc::clone(&long)),
                _ => file.backend = Cow::Owned(long.to_string()),
            }
            let error = check_bounds(&mut event).unwrap_err();
            assert!(
                matches!(error, ProtoError::TooLong { len, .. } if len == long.len()),
                "{field}: {error}"
            );
            let bytes = fit_and_encode(&mut event);
            let back = decode_event(&bytes).unwrap();
            assert_eq!(back, event, "{field}");
            let Body::File(file) = &back.body else {
                unreachable!()
            };
            let cut = match field {
                "host" => back.host.len(),
                "owner" => file.owner.as_deref().map_or(0, str::len),
                _ => file.backend.len(),
            };
            assert_eq!(cut, limits::MAX_STRING, "{field}");
            assert_eq!(long.len(), limits::MAX_STRING + 1, "{field}: cut in place");
        }
    }

    #[test]
    fn a_shared_process_is_checked_cut_in_this_event_only_and_otherwise_left_shared() {
        let within = Arc::new(ProcessInfo {
            pid: 3,
            cmdline: "perl -e 1".into(),
            ancestry: vec![Ancestor::default(); 2].into(),
            ..ProcessInfo::default()
        });
        let mut event = write_by(&within);
        let bytes = fit_and_encode(&mut event);
        assert_eq!(decode_event(&bytes).unwrap(), event);
        let Body::File(file) = &event.body else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(file.process.as_ref().unwrap(), &within));

        for (field, process) in [
            (
                "cmdline",
                ProcessInfo {
                    cmdline: "z".repeat(limits::MAX_STRING + 1),
                    ..ProcessInfo::default()
                },
            ),
            (
                "ancestor exe",
                ProcessInfo {
                    ancestry: vec![Ancestor {
                        exe: "e".repeat(limits::MAX_STRING + 1),
                        ..Ancestor::default()
                    }]
                    .into(),
                    ..ProcessInfo::default()
                },
            ),
        ] {
            let beyond = Arc::new(process);
            let mut event = write_by(&beyond);
            let error = decode_event(&encode_event(&event)).unwrap_err();
            assert!(
                matches!(error, ProtoError::TooLong { field: f, .. } if f == field),
                "{error}"
            );
            let bytes = fit_and_encode(&mut event);
            assert_eq!(decode_event(&bytes).unwrap(), event);
            let Body::File(file) = &event.body else {
                unreachable!()
            };
            let cut = file.process.as_ref().unwrap();
            assert!(!Arc::ptr_eq(cut, &beyond), "{field}: cut in place");
            // The process the other events hold is untouched.
            assert!(
                beyond.cmdline.len() > limits::MAX_STRING
                    || beyond.ancestry[0].exe.len() > limits::MAX_STRING
            );
        }

        let many = Arc::new(ProcessInfo {
            ancestry: vec![Ancestor::default(); limits::MAX_ANCESTRY + 1].into(),
            ..ProcessInfo::default()
        });
        let mut event = write_by(&many);
        assert!(matches!(
            decode_event(&encode_event(&event)),
            Err(ProtoError::TooMany {
                field: "ancestry",
                ..
            })
        ));
        assert!(fit(&mut event));
        decode_event(&encode_event(&event)).unwrap();
        assert_eq!(many.ancestry.len(), limits::MAX_ANCESTRY + 1);
    }

    /// Agents from before `net.close` sent no action: their events are connects, and a close
    /// keeps its kind through the wire.
    #[test]
    fn a_net_event_without_an_action_is_a_connect() {
        let mut old = pb::Event {
            seq: 4,
            ts_nanos: 1,
            host: "h".into(),
            body: Some(pb::event::Body::Net(pb::NetEvent {
                remote_port: 443,
                bytes_sent: Some(7),
                ..Default::default()
            })),
        };
        let event = decode_event(&old.encode_to_vec()).unwrap();
        assert_eq!(event.kind(), "net.connect");
        if let Some(pb::event::Body::Net(net)) = &mut old.body {
            net.action = pb::NetAction::Close as i32;
        }
        let event = decode_event(&old.encode_to_vec()).unwrap();
        assert_eq!(event.kind(), "net.close");
        if let Some(pb::event::Body::Net(net)) = &mut old.body {
            net.action = 9;
        }
        assert!(matches!(
            decode_event(&old.encode_to_vec()),
            Err(ProtoError::UnknownEnum {
                field: "net action",
                ..
            })
        ));
    }

    #[test]
    fn garbage_bytes_are_a_clear_error() {
        assert!(decode_event(&[0xff, 0xff, 0xff]).is_err());
    }
}
