//! Follows a database log as it grows, rotates and is truncated, cutting it into records.
//!
//! A [`Follower`] keeps the log file open, so after a rename it still drains the old file to its
//! end before it moves to the new one. Its [`Position`] (file identity by device and inode, plus the
//! offset where the first unfinished record starts) is what the sensor saves: after a restart the
//! follower reopens that file, or finds it among its rotated siblings by inode, and continues at the
//! same byte. Records are bounded: a field (CSV) or line longer than the cap keeps its head (and a
//! line its tail) and is marked truncated.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The most of one CSV field or one line kept in memory.
pub const MAX_RECORD: usize = 1 << 20;
/// How much of an over-long line's end is kept (it holds the fields after the statement).
const TAIL_KEEP: usize = 4096;
/// CSV records with more fields than this are garbage; the extra fields are dropped.
const MAX_FIELDS: usize = 64;
/// At most this much is read from a log in one poll, so a backlog is worked off in bounded steps.
pub const READ_BUDGET: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no log file found in {dir} (is logging_collector on and the format right?)")]
    NoLog { dir: PathBuf },
}

/// Where the follower is: which file (by identity) and the offset of the first byte not yet
/// turned into a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

/// How the follower finds the file to read now.
#[derive(Debug, Clone)]
pub enum Locator {
    /// One file, rotated by renaming it away and creating a new one (server_audit.log → .1).
    File(PathBuf),
    /// PostgreSQL's logging collector: the file `current_logfiles` names for one of `formats`
    /// (first found wins), or else the newest file with that format's extension in `dir`.
    Postgres {
        dir: PathBuf,
        current_logfiles: Option<PathBuf>,
        formats: Vec<&'static str>,
    },
}

impl Locator {
    /// The file the server writes now.
    fn resolve(&self) -> Result<PathBuf, TailError> {
        match self {
            Locator::File(path) => Ok(path.clone()),
            Locator::Postgres {
                dir,
                current_logfiles,
                formats,
            } => {
                if let Some(list) = current_logfiles {
                    if let Ok(text) = std::fs::read_to_string(list) {
                        let base = list.parent().unwrap_or(Path::new("/"));
                        for format in formats {
                            let named = text
                                .lines()
                                .find_map(|line| line.strip_prefix(format)?.strip_prefix(' '));
                            if let Some(relative) = named {
                                return Ok(base.join(relative.trim()));
                            }
                        }
                    }
                }
                newest_with_extension(dir, formats)
            }
        }
    }
}

fn newest_with_extension(dir: &Path, formats: &[&'static str]) -> Result<PathBuf, TailError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TailError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    let extensions: Vec<&str> = formats
        .iter()
        .map(|f| if *f == "jsonlog" { "json" } else { "csv" })
        .collect();
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.path()
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| extensions.contains(&x))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, path)| path)
        .ok_or_else(|| TailError::NoLog {
            dir: dir.to_path_buf(),
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 4180 records; a quoted field may hold newlines.
    Csv,
    /// One record per line.
    Lines,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Fields(Vec<String>),
    /// A line without its newline. `tail` is empty unless the line was cut, when it holds the
    /// line's last bytes.
    Line {
        head: Vec<u8>,
        tail: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub body: Body,
    pub truncated: bool,
}

/// Something about the log the sensor should tell.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The follower finished one file and moved on to the next.
    Rotated { from: PathBuf, to: PathBuf },
    /// The file shrank under the follower; it starts again at the beginning.
    Truncated { path: PathBuf },
    /// The saved position's file is gone; reading starts at the beginning of the current file.
    PositionLost { path: PathBuf },
}

#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub notes: Vec<Note>,
    /// The read budget ran out before the end of the file: poll again soon.
    pub more: bool,
}

struct Open {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Bytes of the file handed to the framer.
    consumed: u64,
}

pub struct Follower {
    locator: Locator,
    framer: Framer,
    open: Option<Open>,
    /// The position to resume from when nothing is open (first poll after a start).
    saved: Option<Position>,
    start_at_end: bool,
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

impl Follower {
    /// A follower that resumes at `saved`, or else starts at the end (or beginning) of the log.
    pub fn new(
        locator: Locator,
        framing: Framing,
        saved: Option<Position>,
        start_at_end: bool,
    ) -> Self {
        Follower {
            locator,
            framer: Framer::new(framing),
            open: None,
            saved,
            start_at_end,
        }
    }

    /// Where to resume after a restart: the start of the first record not yet returned.
    pub fn position(&self) -> Option<Position> {
        match &self.open {
            Some(open) => Some(Position {
                path: open.path.clone(),
                dev: open.dev,
                ino: open.ino,
                offset: open.consumed - self.framer.pending_bytes(),
            }),
            None => self.saved.clone(),
        }
    }

    /// Reads what was written since the last poll, following rotation and truncation.
    pub fn poll(&mut self) -> Result<Batch, TailError> {
        let mut batch = Batch::default();
        if self.open.is_none() {
            self.reopen(&mut batch)?;
        }
        let mut budget = READ_BUDGET;
        // At most a few switches per poll: each drains one finished file.
        for _ in 0..4 {
            let Some(open) = self.open.as_mut() else {
                break;
            };
            // While the locator cannot say (current_logfiles being rewritten), keep reading.
            let current = self.locator.resolve().ok();
            let meta = open.file.metadata().map_err(|source| TailError::Read {
                path: open.path.clone(),
                source,
            })?;
            if meta.len() < open.consumed {
                batch.notes.push(Note::Truncated {
                    path: open.path.clone(),
                });
                open.consumed = 0;
                self.framer.reset();
            }
            let read = drain(open, &mut self.framer, &mut batch.records, budget)?;
            budget = budget.saturating_sub(read);
            if budget == 0 {
                batch.more = true;
                break;
            }
            let Some(current) = current else {
                break;
            };
            let same = std::fs::metadata(&current)
                .map(|m| identity(&m) == (open.dev, open.ino))
                .unwrap_or(true);
            if same {
                break;
            }
            // The server writes elsewhere now and this file was read to its end: move on.
            let Ok(next) = open_at(&current, 0) else {
                break;
            };
            self.framer.finish(&mut batch.records);
            batch.notes.push(Note::Rotated {
                from: open.path.clone(),
                to: current,
            });
            self.open = Some(next);
        }
        Ok(batch)
    }

    fn reopen(&mut self, batch: &mut Batch) -> Result<(), TailError> {
        let current = self.locator.resolve()?;
        self.framer.reset();
        if let Some(saved) = self.saved.clone() {
            if let Some(open) = find_by_identity(&saved, &current) {
                self.open = Some(open);
                return Ok(());
            }
            batch.notes.push(Note::PositionLost {
                path: saved.path.clone(),
            });
            self.open = Some(open_at(&current, 0)?);
            return Ok(());
        }
        let mut open = open_at(&current, 0)?;
        if self.start_at_end {
            open.consumed = open
                .file
                .metadata()
                .map_err(|source| TailError::Read {
                    path: current.clone(),
                    source,
                })?
                .len();
        }
        self.open = Some(open);
        Ok(())
    }
}

fn open_at(path: &Path, offset: u64) -> Result<Open, TailError> {
    let open_error = |source| TailError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    let (dev, ino) = identity(&meta);
    Ok(Open {
        file,
        path: path.to_path_buf(),
        dev,
        ino,
        consumed: offset.min(meta.len()),
    })
}

/// The saved file: at its old path, at the current path, or renamed next to either (`x.1`).
fn find_by_identity(saved: &Position, current: &Path) -> Option<Open> {
    let mut candidates = vec![saved.path.clone(), current.to_path_buf()];
    for dir in [saved.path.parent(), current.parent()]
        .into_iter()
        .flatten()
    {
        if let Ok(entries) = std::fs::read_dir(dir) {
            candidates.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    candidates.into_iter().find_map(|path| {
        let meta = std::fs::metadata(&path).ok()?;
        if identity(&meta) != (saved.dev, saved.ino) || meta.len() < saved.offset {
            return None;
        }
        open_at(&path, saved.offset).ok()
    })
}

/// Reads from `open` to its end or until `budget` bytes, framing records; returns bytes read.
fn drain(
    open: &mut Open,
    framer: &mut Framer,
    out: &mut Vec<Record>,
    budget: u64,
) -> Result<u64, TailError> {
    let read_error = |path: &Path, source| TailError::Read {
        path: path.to_path_buf(),
        source,
    };
    open.file
        .seek(SeekFrom::Start(open.consumed))
        .map_err(|e| read_error(&open.path, e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while total < budget {
        let want = usize::try_from((budget - total).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match open.file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(&open.path, e)),
        };
        framer.feed(&buf[..n], out);
        open.consumed += n as u64;
        total += n as u64;
    }
    Ok(total)
}

/// csv-core's parser as PostgreSQL writes csvlog: records end at `\n` only (a `\r` is data), `""`
/// is a quote inside a quoted field, no comments. A blank line is no record.
fn csv_reader() -> csv_core::Reader {
    csv_core::ReaderBuilder::new()
        .terminator(csv_core::Terminator::Any(b'\n'))
        .build()
}

/// Cuts a byte stream into records, carrying an unfinished record across reads.
pub struct Framer {
    framing: Framing,
    /// Bytes of the unfinished record seen so far (for the saved position).
    pending: u64,
    truncated: bool,
    // Lines
    head: Vec<u8>,
    tail: Vec<u8>,
    // Csv: csv-core unquotes; the framer caps what it keeps of each field and of the field count.
    csv: csv_core::Reader,
    fields: Vec<String>,
    field: Vec<u8>,
    /// Bytes of the current record csv-core has written so far: its field ends count from the
    /// record's start across calls.
    record_out: usize,
}

impl Framer {
    pub fn new(framing: Framing) -> Self {
        Framer {
            framing,
            pending: 0,
            truncated: false,
            head: Vec::new(),
            tail: Vec::new(),
            csv: csv_reader(),
            fields: Vec::new(),
            field: Vec::new(),
            record_out: 0,
        }
    }

    fn pending_bytes(&self) -> u64 {
        self.pending
    }

    fn reset(&mut self) {
        *self = Framer::new(self.framing);
    }

    /// Hands over an unfinished last record of a file that will not grow any more.
    fn finish(&mut self, out: &mut Vec<Record>) {
        if self.pending > 0 {
            match self.framing {
                Framing::Lines => self.emit_line(out),
                // An empty input tells csv-core the data has ended: it hands over the last record.
                Framing::Csv => self.run_csv(&[], out),
            }
        }
        self.reset();
    }

    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Record>) {
        match self.framing {
            Framing::Lines => self.feed_lines(data, out),
            Framing::Csv => self.feed_csv(data, out),
        }
    }

    fn feed_lines(&mut self, mut data: &[u8], out: &mut Vec<Record>) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.push_line_bytes(&data[..end]);
                    self.emit_line(out);
                    data = &data[end + 1..];
                }
                None => {
                    self.push_line_bytes(data);
                    self.pending += data.len() as u64;
                    return;
                }
            }
        }
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        let room = (MAX_RECORD - TAIL_KEEP).saturating_sub(self.head.len());
        let (keep, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(keep);
        if !rest.is_empty() {
            self.truncated = true;
            self.tail.extend_from_slice(rest);
            if self.tail.len() > TAIL_KEEP {
                let excess = self.tail.len() - TAIL_KEEP;
                self.tail.drain(..excess);
            }
        }
    }

    fn emit_line(&mut self, out: &mut Vec<Record>) {
        let mut head = std::mem::take(&mut self.head);
        if head.last() == Some(&b'\r') && self.tail.is_empty() {
            head.pop();
        }
        out.push(Record {
            body: Body::Line {
                head,
                tail: std::mem::take(&mut self.tail),
            },
            truncated: std::mem::take(&mut self.truncated),
        });
        self.pending = 0;
    }

    fn feed_csv(&mut self, data: &[u8], out: &mut Vec<Record>) {
        // An empty input would mean the end of the data to csv-core.
        if !data.is_empty() {
            self.run_csv(data, out);
        }
    }

    /// Runs csv-core over `data` (all of it, or the end of the data when empty), keeping each field
    /// as it is written and emitting each record it completes.
    fn run_csv(&mut self, mut data: &[u8], out: &mut Vec<Record>) {
        use csv_core::ReadRecordResult;
        let at_end = data.is_empty();
        let mut output = [0u8; 8192];
        let mut ends = [0usize; 16];
        loop {
            // What happened, bytes read, bytes written, field ends written.
            let (result, read, written, ended) = self.csv.read_record(data, &mut output, &mut ends);
            data = &data[read..];
            self.pending += read as u64;
            self.take_csv_output(&output[..written], &ends[..ended]);
            match result {
                ReadRecordResult::Record => {
                    self.emit_csv(out);
                    // Called again with nothing left, csv-core would take the data to have ended.
                    if data.is_empty() && !at_end {
                        return;
                    }
                }
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::InputEmpty | ReadRecordResult::End => return,
            }
        }
    }

    /// Splits what csv-core wrote into the current field and the ones it ended.
    fn take_csv_output(&mut self, bytes: &[u8], ends: &[usize]) {
        let mut start = 0;
        for &end in ends {
            let end = end
                .saturating_sub(self.record_out)
                .clamp(start, bytes.len());
            self.push_field(&bytes[start..end]);
            self.end_field();
            start = end;
        }
        self.push_field(&bytes[start..]);
        self.record_out += bytes.len();
    }

    fn push_field(&mut self, bytes: &[u8]) {
        let room = MAX_RECORD.saturating_sub(self.field.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.field
            .extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    fn end_field(&mut self) {
        let field = std::mem::take(&mut self.field);
        if self.fields.len() < MAX_FIELDS {
            let text = match String::from_utf8(field) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            self.fields.push(text);
        } else {
            self.truncated = true;
        }
    }

    /// Hands over the record csv-core just completed (it has ended every field of it).
    fn emit_csv(&mut self, out: &mut Vec<Record>) {
        let fields = std::mem::take(&mut self.fields);
        out.push(Record {
            body: Body::Fields(fields),
            truncated: std::mem::take(&mut self.truncated),
        });
        self.pending = 0;
        self.record_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(batch: &Batch) -> Vec<String> {
        batch
            .records
            .iter()
            .map(|r| match &r.body {
                Body::Line { head, .. } => String::from_utf8_lossy(head).into_owned(),
                Body::Fields(f) => f.join("|"),
            })
            .collect()
    }

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn csv_records_span_quoted_newlines_and_split_reads() {
        let text = "a,\"x\ny\",\"q\"\"q\",\n2,,\"\",z\n";
        let mut records = Vec::new();
        let mut framer = Framer::new(Framing::Csv);
        for byte in text.as_bytes() {
            framer.feed(std::slice::from_ref(byte), &mut records);
        }
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].body,
            Body::Fields(vec!["a".into(), "x\ny".into(), "q\"q".into(), "".into()])
        );
        assert_eq!(
            records[1].body,
            Body::Fields(vec!["2".into(), "".into(), "".into(), "z".into()])
        );
    }

    #[test]
    fn csv_keeps_an_unfinished_record_pending_and_hands_it_over_at_the_end() {
        let mut records = Vec::new();
        let mut framer = Framer::new(Framing::Csv);
        framer.feed(b"1,\"a\"\n2,\"b", &mut records);
        assert_eq!(records.len(), 1);
        // `2,"b` is where a restart must resume.
        assert_eq!(framer.pending_bytes(), 4);
        framer.feed(b"c\"\nnot csv at all\n\x01,\"\n", &mut records);
        assert_eq!(framer.pending_bytes(), 4);
        framer.feed(b"3,x", &mut records);
        assert_eq!(framer.pending_bytes(), 7);
        framer.finish(&mut records);
        let bodies: Vec<_> = records.iter().map(|r| r.body.clone()).collect();
        assert_eq!(
            bodies,
            [
                Body::Fields(vec!["1".into(), "a".into()]),
                Body::Fields(vec!["2".into(), "bc".into()]),
                // Garbage stays a record of its own, for the parser to refuse and count.
                Body::Fields(vec!["not csv at all".into()]),
                // A quote left open at the end of the file keeps the rest as the field.
                Body::Fields(vec!["\u{1}".into(), "\n3,x".into()]),
            ]
        );
        assert_eq!(framer.pending_bytes(), 0);
    }

    #[test]
    fn csv_fields_and_field_counts_are_capped_and_marked() {
        let mut text = b"\"".to_vec();
        text.extend(std::iter::repeat_n(b'q', MAX_RECORD + 10));
        text.extend_from_slice(b"\",end\n");
        text.extend_from_slice(&[b','; 70]);
        text.extend_from_slice(b"\nok\n");
        let mut records = Vec::new();
        let mut framer = Framer::new(Framing::Csv);
        for chunk in text.chunks(7000) {
            framer.feed(chunk, &mut records);
        }
        assert_eq!(records.len(), 3);
        assert!(records[0].truncated);
        match &records[0].body {
            Body::Fields(fields) => {
                assert_eq!(fields[0].len(), MAX_RECORD);
                assert_eq!(fields[1], "end");
            }
            other => panic!("{other:?}"),
        }
        assert!(records[1].truncated);
        assert!(matches!(&records[1].body, Body::Fields(f) if f.len() == MAX_FIELDS));
        assert!(!records[2].truncated);
        assert_eq!(records[2].body, Body::Fields(vec!["ok".into()]));
    }

    #[test]
    fn an_over_long_line_keeps_head_and_tail_and_is_marked() {
        let mut line = vec![b'h'; MAX_RECORD * 2];
        line.extend_from_slice(b"END\nnext\n");
        let mut records = Vec::new();
        let mut framer = Framer::new(Framing::Lines);
        for chunk in line.chunks(7000) {
            framer.feed(chunk, &mut records);
        }
        assert_eq!(records.len(), 2);
        assert!(records[0].truncated);
        match &records[0].body {
            Body::Line { head, tail } => {
                assert_eq!(head.len(), MAX_RECORD - TAIL_KEEP);
                assert!(tail.ends_with(b"END"));
                assert_eq!(tail.len(), TAIL_KEEP);
            }
            other => panic!("{other:?}"),
        }
        assert!(!records[1].truncated);
    }

    #[test]
    fn follows_rename_rotation_truncation_and_resumes_from_a_saved_position() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server_audit.log");
        append(&log, "old1\n");
        let mut follower = Follower::new(Locator::File(log.clone()), Framing::Lines, None, true);
        assert!(
            follower.poll().unwrap().records.is_empty(),
            "starts at the end"
        );
        append(&log, "a\nb");
        assert_eq!(lines(&follower.poll().unwrap()), vec!["a"]);
        // The unfinished "b" is where a restart must resume.
        let saved = follower.position().unwrap();
        assert_eq!(saved.offset, 7);

        append(&log, "\nc\n");
        std::fs::rename(&log, dir.path().join("server_audit.log.1")).unwrap();
        append(&log, "dddd\n");
        let batch = follower.poll().unwrap();
        assert_eq!(lines(&batch), vec!["b", "c", "dddd"]);
        assert!(matches!(batch.notes[0], Note::Rotated { .. }));

        // A restart from the saved position finds the renamed file by inode.
        let mut resumed = Follower::new(
            Locator::File(log.clone()),
            Framing::Lines,
            Some(saved),
            true,
        );
        assert_eq!(lines(&resumed.poll().unwrap()), vec!["b", "c", "dddd"]);

        std::fs::write(&log, "").unwrap();
        append(&log, "e\n");
        let batch = follower.poll().unwrap();
        assert_eq!(lines(&batch), vec!["e"]);
        assert_eq!(batch.notes, vec![Note::Truncated { path: log.clone() }]);
    }

    #[test]
    fn postgres_locator_follows_current_logfiles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        let list = dir.path().join("current_logfiles");
        std::fs::write(&list, "stderr log/a.log\ncsvlog log/a.csv\n").unwrap();
        append(&dir.path().join("log/a.csv"), "1,x\n");
        let locator = Locator::Postgres {
            dir: dir.path().join("log"),
            current_logfiles: Some(list.clone()),
            formats: vec!["csvlog"],
        };
        let mut follower = Follower::new(locator, Framing::Csv, None, false);
        assert_eq!(lines(&follower.poll().unwrap()), vec!["1|x"]);
        append(&dir.path().join("log/a.csv"), "2,\"multi\nline\"\n");
        append(&dir.path().join("log/b.csv"), "3,y\n");
        std::fs::write(&list, "csvlog log/b.csv\n").unwrap();
        assert_eq!(
            lines(&follower.poll().unwrap()),
            vec!["2|multi\nline", "3|y"]
        );
    }
}
