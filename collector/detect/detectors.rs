//! Named stateful detectors: rules whose state is richer than Sigma correlations can express.
//! Each is parameterised from its rule document (`detector:` + `parameters:`), so thresholds stay
//! data; only the state machine is code.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use bannin::event::{Body, ExportInfo, FileAction, FileEvent, ProcessInfo, Record, SensorStatus};
use bannin::time::Timestamp;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::{Map, Value as Json, json};

use super::config::Limits;
use super::rules::DetectorSpec;
use super::state::{HostWindows, Losses, Window};
use crate::alert::{EvidenceRef, Severity};

/// At most this many evidence references and renames are kept per tracked file.
const MAX_FILE_EVIDENCE: usize = 16;

/// What a detector concluded, before allow-lists and de-duplication.
pub(crate) struct Candidate {
    pub(crate) ts: Timestamp,
    pub(crate) host: String,
    pub(crate) summary: String,
    pub(crate) evidence: Vec<EvidenceRef>,
    pub(crate) fields: Map<String, Json>,
    /// What makes two findings "the same alert" for de-duplication (with the rule and host).
    pub(crate) key: String,
    /// Overrides the rule's level, e.g. a silence after a clean stop is less alarming.
    pub(crate) severity: Option<Severity>,
}

pub(crate) fn evidence(record: &Record) -> EvidenceRef {
    EvidenceRef {
        agent_id: record.agent_id.clone(),
        seq: record.event.seq,
    }
}

fn process_fields(fields: &mut Map<String, Json>, prefix: &str, process: &ProcessInfo) {
    fields.insert(format!("{prefix}pid"), json!(process.pid));
    fields.insert(format!("{prefix}exe"), json!(process.exe));
    fields.insert(format!("{prefix}user"), json!(process.user));
    if !process.cmdline.is_empty() {
        fields.insert(format!("{prefix}cmdline"), json!(process.cmdline));
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        set.add(Glob::new(pattern).map_err(|e| format!("bad glob {pattern:?}: {e}"))?);
    }
    set.build().map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// export_lifecycle

struct Tracked {
    host: String,
    /// Where the file is now, after any renames.
    path: String,
    created_ts: Timestamp,
    created_path: String,
    /// Whether the create itself was seen; if not, `created_ts` is the first write seen.
    create_seen: bool,
    max_size: u64,
    export: Option<ExportInfo>,
    creator: Option<ProcessInfo>,
    renames: Vec<String>,
    evidence: Vec<EvidenceRef>,
}

fn file_key(host: &str, path: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (host, path).hash(&mut hasher);
    hasher.finish()
}

impl Tracked {
    fn new(host: &str, file: &FileEvent, ts: Timestamp, create_seen: bool) -> Self {
        Tracked {
            host: host.to_string(),
            path: file.path.clone(),
            created_ts: ts,
            created_path: file.from_path.clone().unwrap_or_else(|| file.path.clone()),
            create_seen,
            max_size: 0,
            export: None,
            creator: None,
            renames: Vec::new(),
            evidence: Vec::new(),
        }
    }

    fn push_evidence(&mut self, record: &Record) {
        if self.evidence.len() >= MAX_FILE_EVIDENCE {
            // Keep the create; the newest events replace the middle ones.
            self.evidence.remove(1);
        }
        self.evidence.push(evidence(record));
    }

    fn absorb(&mut self, file: &FileEvent) {
        // What the agent found in the file at its largest describes the export; a decoy written
        // over it later must not replace the rows and counts the alert reports.
        let largest = file.size.is_none_or(|size| size >= self.max_size);
        if let Some(size) = file.size {
            self.max_size = self.max_size.max(size);
        }
        if let Some(export) = &file.export {
            if largest || self.export.is_none() {
                self.export = Some(export.clone());
            }
        }
        if self.creator.is_none() {
            // The alert names the process, not its parents: no ancestry kept per tracked file.
            self.creator = file.process.as_ref().map(|p| ProcessInfo {
                pid: p.pid,
                ppid: p.ppid,
                exe: p.exe.clone(),
                cmdline: p.cmdline.clone(),
                user: p.user.clone(),
                uid: p.uid,
                ancestry: Vec::new(),
            });
        }
    }
}

/// When an export-like file was created, remembered while it is still small: enough to date the
/// export if it grows past the threshold, and cheap (no strings), since any number of small files
/// may come and go. Losing one only makes an alert date the export from its first large write.
#[derive(Clone, Copy)]
struct Created {
    ts: Timestamp,
    seq: u64,
}

/// Large export-like files created and then deleted, renamed away and deleted, replaced by a
/// rename over them, renamed out of the watched trees, or truncated, within a window; tracked by
/// (host, path) and followed through renames.
///
/// Only files that are (or become) at least `min_size` are tracked, so no number of small files
/// can push a real export out; state is bounded per host ([`HostWindows`]) and what is pushed out
/// is reported as `detection-state-evicted`.
pub(crate) struct ExportLifecycle {
    min_size: u64,
    window: Duration,
    truncated_below: u64,
    exclude: GlobSet,
    /// Extensions tracked from their create on, before the agent has seen any content.
    extensions: Vec<String>,
    /// Keyed by a hash of (host, path), so looking a file up costs no allocation; the entry holds
    /// both to rule out collisions.
    files: HostWindows<u64, Tracked>,
    /// Export-like files created but not (yet) large.
    created: HostWindows<u64, Created>,
    /// The trees each agent's file sensor watches, from its status report: a tracked export
    /// renamed outside them is out of sight, and its delete will never be reported.
    roots: Window<String, Vec<String>>,
}

/// What became of a tracked export.
enum Fate {
    Deleted,
    Truncated,
    /// Another file was renamed over it (or exchanged with it).
    Replaced,
    /// Renamed out of the watched trees.
    Renamed,
}

impl Fate {
    fn as_str(&self) -> &'static str {
        match self {
            Fate::Deleted => "deleted",
            Fate::Truncated => "truncated",
            Fate::Replaced => "replaced",
            Fate::Renamed => "renamed",
        }
    }
}

/// The watched roots in a files sensor status message: "...; watching [/a, /b]".
fn watched_roots(message: &str) -> Option<Vec<String>> {
    let list = message.rsplit_once("watching [")?.1.strip_suffix(']')?;
    Some(
        list.split(", ")
            .filter(|r| !r.is_empty())
            .map(|r| r.trim_end_matches('/').to_string())
            .collect(),
    )
}

fn under(path: &str, root: &str) -> bool {
    root.is_empty()
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl ExportLifecycle {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        let mut extensions = spec.strings("extensions")?;
        if extensions.is_empty() {
            extensions = [
                "csv", "tsv", "json", "ndjson", "jsonl", "sql", "dump", "xlsx", "xls", "parquet",
                "sqlite", "zip", "gz", "tgz", "bz2", "xz", "zst", "7z", "rar", "tar", "bak",
            ]
            .map(String::from)
            .to_vec();
        }
        let per_host = limits.per_host.min(limits.tracked_files);
        Ok(ExportLifecycle {
            min_size: spec.u64("min_size", 10 * 1024 * 1024)?,
            window: spec.duration("window", Duration::from_secs(86_400))?,
            truncated_below: spec.u64("truncated_below", 64 * 1024)?,
            exclude: globs(&spec.strings("exclude_paths")?)?,
            extensions,
            files: HostWindows::new(per_host, limits.tracked_files, Duration::from_secs(1)),
            created: HostWindows::new(per_host, limits.tracked_files, Duration::from_secs(1)),
            roots: Window::new(limits.agents),
        })
    }

    pub(crate) fn tracked(&self) -> usize {
        self.files.len()
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.files.losses.total()
    }

    /// Tracked exports pushed out since the last call, by host. Creation times pushed out of the
    /// small-file tier are not losses: the export is still tracked once it is large.
    pub(crate) fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.created.losses.take();
        self.files.losses.take()
    }

    /// Forgets files created longer than the window before `now`, the collector's clock: an agent
    /// whose clock runs ahead must not flush every other host's files.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        let before = now.saturating_sub(self.window);
        self.files.expire(before);
        self.created.expire(before);
    }

    fn export_like_name(&self, path: &str) -> bool {
        let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
        // "export.csv.tmp" is staged export data too: look at every extension, not just the last.
        name.split('.')
            .skip(1)
            .any(|ext| self.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
    }

    /// Whether a file not tracked yet is a large export worth tracking.
    fn worth_tracking(&self, file: &FileEvent) -> bool {
        file.size.is_some_and(|size| size >= self.min_size)
            && (file.export.is_some() || self.export_like_name(&file.path))
            && !self.exclude.is_match(&file.path)
    }

    /// Starts tracking `file`, dated from its create if that was seen.
    fn start_tracking(&mut self, host: &str, record: &Record, file: &FileEvent) -> u64 {
        let key = file_key(host, &file.path);
        let ts = record.event.ts;
        let tracked = match self.created.remove(host, &key) {
            Some(created) => {
                let mut tracked = Tracked::new(host, file, created.ts, true);
                tracked.evidence.push(EvidenceRef {
                    agent_id: record.agent_id.clone(),
                    seq: created.seq,
                });
                tracked
            }
            None => Tracked::new(host, file, ts, false),
        };
        self.files.insert(host, key, tracked, ts);
        key
    }

    /// The large export a rename replaced, as the agent last knew it (`replaced_size`,
    /// `replaced_export`), when this detector did not track it.
    fn replaced_by_agent(&self, host: &str, file: &FileEvent, ts: Timestamp) -> Option<Tracked> {
        let size = file.replaced_size.filter(|size| *size >= self.min_size)?;
        let export = file.replaced_export.clone()?;
        if self.exclude.is_match(&file.path) {
            return None;
        }
        let mut tracked = Tracked::new(host, file, ts, false);
        tracked.created_path.clone_from(&file.path);
        tracked.max_size = size;
        tracked.export = Some(export);
        Some(tracked)
    }

    fn outside_watch(&self, agent_id: &str, path: &str) -> bool {
        self.roots
            .get(&agent_id.to_string())
            .is_some_and(|roots| !roots.iter().any(|root| under(path, root)))
    }

    pub(crate) fn observe(&mut self, record: &Record) -> Vec<Candidate> {
        let mut found = Vec::new();
        let file = match &record.event.body {
            Body::File(file) => file,
            Body::Sensor(sensor)
                if sensor.sensor == "files" && sensor.status == SensorStatus::Status =>
            {
                if let Some(roots) = watched_roots(&sensor.message) {
                    self.roots
                        .insert(record.agent_id.clone(), roots, record.event.ts);
                }
                return found;
            }
            _ => return found,
        };
        let ts = record.event.ts;
        let host = &record.event.host;
        match file.action {
            FileAction::Create => {
                if self.worth_tracking(file) {
                    let key = self.start_tracking(host, record, file);
                    if let Some(tracked) = self.files.get_mut(host, &key) {
                        tracked.create_seen = true;
                        tracked.absorb(file);
                        tracked.push_evidence(record);
                    }
                } else if (file.export.is_some() || self.export_like_name(&file.path))
                    && !self.exclude.is_match(&file.path)
                {
                    let created = Created {
                        ts,
                        seq: record.event.seq,
                    };
                    self.created
                        .insert(host, file_key(host, &file.path), created, ts);
                }
            }
            FileAction::Write => {
                let key = match self.find(host, &file.path) {
                    Some(key) => {
                        self.files.touch(host, &key, ts);
                        key
                    }
                    // Untracked and still not a large export: nothing to follow.
                    None if self.worth_tracking(file) => self.start_tracking(host, record, file),
                    None => return found,
                };
                let Some(tracked) = self.files.get_mut(host, &key) else {
                    return found;
                };
                let was_large = tracked.max_size >= self.min_size;
                tracked.absorb(file);
                tracked.push_evidence(record);
                let Some(size) = file.size else {
                    return found;
                };
                if was_large && size < self.truncated_below && tracked.export.is_some() {
                    if let Some(tracked) = self.files.remove(host, &key) {
                        found.extend(self.candidate(tracked, record, file, Fate::Truncated));
                    }
                }
            }
            FileAction::Rename if file.exchange => {
                // RENAME_EXCHANGE: the two names swap their files, nothing is destroyed; each
                // tracked export is followed to its new name.
                let from = file.from_path.as_deref().unwrap_or_default();
                let at_from = self
                    .find(host, from)
                    .and_then(|key| self.files.remove(host, &key));
                let at_path = self
                    .find(host, &file.path)
                    .and_then(|key| self.files.remove(host, &key));
                self.created.remove(host, &file_key(host, from));
                self.created.remove(host, &file_key(host, &file.path));
                for (tracked, to) in [(at_from, file.path.as_str()), (at_path, from)] {
                    let Some(mut tracked) = tracked else { continue };
                    if to == file.path {
                        tracked.absorb(file);
                    }
                    tracked.push_evidence(record);
                    tracked.path = to.to_string();
                    if tracked.renames.len() < MAX_FILE_EVIDENCE {
                        tracked.renames.push(to.to_string());
                    }
                    self.files.insert(host, file_key(host, to), tracked, ts);
                }
            }
            FileAction::Rename => {
                let from = file.from_path.as_deref().unwrap_or_default();
                // Whatever was tracked at the destination is gone under that name: a rename over
                // an export replaces it. The agent also says what it replaced, which covers an
                // export it knew and this detector did not (written before it was watched).
                if from != file.path {
                    let replaced = match self.find(host, &file.path) {
                        Some(key) => self.files.remove(host, &key),
                        None => self.replaced_by_agent(host, file, ts),
                    };
                    if let Some(mut replaced) = replaced {
                        replaced.push_evidence(record);
                        found.extend(self.candidate(replaced, record, file, Fate::Replaced));
                    }
                    let to_key = file_key(host, &file.path);
                    let from_key = file_key(host, from);
                    self.created.remove(host, &to_key);
                    if let Some(created) = self.created.remove(host, &from_key) {
                        self.created.insert(host, to_key, created, ts);
                    }
                }
                let mut tracked = match self.find(host, from) {
                    Some(old) => match self.files.remove(host, &old) {
                        Some(tracked) => tracked,
                        None => return found,
                    },
                    None if self.worth_tracking(file) => Tracked::new(host, file, ts, false),
                    None => return found,
                };
                tracked.absorb(file);
                tracked.push_evidence(record);
                tracked.path.clone_from(&file.path);
                if tracked.renames.len() < MAX_FILE_EVIDENCE {
                    tracked.renames.push(file.path.clone());
                }
                if self.outside_watch(&record.agent_id, &file.path) {
                    // Out of sight: its delete will never be reported, so this is the last word.
                    found.extend(self.candidate(tracked, record, file, Fate::Renamed));
                } else {
                    self.files
                        .insert(host, file_key(host, &file.path), tracked, ts);
                }
            }
            FileAction::Delete => {
                self.created.remove(host, &file_key(host, &file.path));
                let Some(key) = self.find(host, &file.path) else {
                    return found;
                };
                if let Some(mut tracked) = self.files.remove(host, &key) {
                    tracked.absorb(file);
                    tracked.push_evidence(record);
                    found.extend(self.candidate(tracked, record, file, Fate::Deleted));
                }
            }
        }
        found
    }

    /// The key of the tracked file at `path` on `host`, if there is one.
    fn find(&self, host: &str, path: &str) -> Option<u64> {
        let key = file_key(host, path);
        self.files
            .get(host, &key)
            .is_some_and(|t| t.host == host && t.path == path)
            .then_some(key)
    }

    fn candidate(
        &self,
        tracked: Tracked,
        record: &Record,
        file: &FileEvent,
        fate: Fate,
    ) -> Option<Candidate> {
        let how = fate.as_str();
        let ts = record.event.ts;
        let export = tracked.export.as_ref()?;
        let in_window = ts.as_nanos().saturating_sub(tracked.created_ts.as_nanos())
            <= i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX);
        if tracked.max_size < self.min_size || !in_window {
            return None;
        }
        let mut fields = Map::new();
        fields.insert("path".into(), json!(tracked.created_path));
        if tracked.path != tracked.created_path {
            fields.insert("final_path".into(), json!(tracked.path));
        }
        if !tracked.renames.is_empty() {
            fields.insert("renamed_to".into(), json!(tracked.renames));
        }
        fields.insert("size".into(), json!(tracked.max_size));
        fields.insert("created_ts".into(), json!(tracked.created_ts));
        fields.insert("create_seen".into(), json!(tracked.create_seen));
        fields.insert("deleted_ts".into(), json!(ts));
        fields.insert("how".into(), json!(how));
        if let Fate::Replaced = fate {
            if let Some(from) = &file.from_path {
                fields.insert("replaced_by".into(), json!(from));
            }
        }
        if let Some(creator) = &tracked.creator {
            process_fields(&mut fields, "", creator);
        }
        if let Some(deleter) = &file.process {
            process_fields(&mut fields, "deleted_by_", deleter);
        }
        fields.insert("class".into(), json!(export.class));
        fields.insert("format".into(), json!(export.format));
        if let Some(rows) = export.est_rows {
            fields.insert("est_rows".into(), json!(rows));
        }
        fields.insert("emails".into(), json!(export.emails));
        fields.insert("phones".into(), json!(export.phones));
        fields.insert("passports".into(), json!(export.passports));
        fields.insert("cards".into(), json!(export.cards));
        // The agent counts personal data in a head sample; scaled to the whole file, as the row
        // count is, it says roughly how many people are in it.
        let scale = |count: u64| {
            if export.sampled_bytes == 0 || export.sampled_bytes >= tracked.max_size {
                count
            } else {
                let scaled = u128::from(count) * u128::from(tracked.max_size)
                    / u128::from(export.sampled_bytes);
                u64::try_from(scaled).unwrap_or(u64::MAX)
            }
        };
        let est_emails = scale(export.emails);
        fields.insert("sampled_bytes".into(), json!(export.sampled_bytes));
        fields.insert("est_emails".into(), json!(est_emails));
        fields.insert("est_phones".into(), json!(scale(export.phones)));
        fields.insert("est_passports".into(), json!(scale(export.passports)));
        fields.insert("est_cards".into(), json!(scale(export.cards)));
        let rows = export
            .est_rows
            .map(|r| format!(", ~{r} rows"))
            .unwrap_or_default();
        let by = tracked
            .creator
            .as_ref()
            .map(|p| format!(" by {} ({})", p.user, p.exe))
            .unwrap_or_default();
        let lived = (ts.as_nanos() - tracked.created_ts.as_nanos()) / 1_000_000_000;
        Some(Candidate {
            ts,
            host: record.event.host.clone(),
            summary: format!(
                "{} export {} ({} bytes{rows}, ~{est_emails} e-mail addresses) {how} {lived}s after it was written on {}{by}",
                export.format, tracked.created_path, tracked.max_size, record.event.host
            ),
            evidence: tracked.evidence,
            key: tracked.created_path,
            fields,
            severity: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// first_seen_destination

/// Outbound connections to an address no host of the fleet has connected to before.
pub(crate) struct FirstSeen {
    scopes: Vec<String>,
    /// Fleet-wide; a destination pushed out would alert again as new, which is counted against
    /// the host whose connection pushed it out.
    seen: Window<String, ()>,
    losses: Losses,
}

impl FirstSeen {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        let mut scopes = spec.strings("scopes")?;
        if scopes.is_empty() {
            scopes.push("public".into());
        }
        Ok(FirstSeen {
            scopes,
            seen: Window::new(limits.seen_destinations),
            losses: Losses::default(),
        })
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.losses.total()
    }

    pub(crate) fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.losses.take()
    }

    pub(crate) fn observe(&mut self, record: &Record) -> Option<Candidate> {
        let Body::Net(net) = &record.event.body else {
            return None;
        };
        if !self.scopes.contains(&net.remote_scope) {
            return None;
        }
        let ts = record.event.ts;
        // Looked up without touching: the cap forgets the destinations first seen longest ago,
        // and a lookup that allocates nothing keeps the common case (a known address) cheap.
        if self.seen.get(&net.remote_addr).is_some() {
            return None;
        }
        let pushed_out = self.seen.insert(net.remote_addr.clone(), (), ts);
        self.losses.add(
            &record.event.host,
            u64::try_from(pushed_out.len()).unwrap_or(u64::MAX),
        );
        let mut fields = Map::new();
        fields.insert("remote_addr".into(), json!(net.remote_addr));
        fields.insert("remote_port".into(), json!(net.remote_port));
        fields.insert("remote_scope".into(), json!(net.remote_scope));
        fields.insert("protocol".into(), json!(net.protocol));
        if let Some(sent) = net.bytes_sent {
            fields.insert("bytes_sent".into(), json!(sent));
        }
        let mut who = String::new();
        if let Some(process) = &net.process {
            process_fields(&mut fields, "", process);
            if !process.ancestry.is_empty() {
                fields.insert("ancestry".into(), json!(process.ancestry));
            }
            let chain: Vec<&str> = std::iter::once(process.exe.as_str())
                .chain(process.ancestry.iter().map(|a| a.exe.as_str()))
                .collect();
            who = format!(" by {}", chain.join(" < "));
        }
        Some(Candidate {
            ts,
            host: record.event.host.clone(),
            summary: format!(
                "first connection of the fleet to {}:{} from {}{who}",
                net.remote_addr, net.remote_port, record.event.host
            ),
            evidence: vec![evidence(record)],
            key: net.remote_addr.clone(),
            fields,
            severity: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// agent_silent

struct Liveness {
    host: String,
    last_heard: Timestamp,
    last_seq: u64,
    last_event_ts: Timestamp,
    stopped: bool,
    alerted: bool,
}

/// Agents that have sent nothing for a while, measured on the collector's clock so that an agent
/// with a wrong clock is judged by when its events arrive.
pub(crate) struct AgentSilent {
    after: Duration,
    /// Set by a replay: the next tick restarts every agent's silence from the collector's start.
    grace_pending: bool,
    agents: Window<String, Liveness>,
    losses: Losses,
}

impl AgentSilent {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        Ok(AgentSilent {
            after: spec.duration("after", Duration::from_secs(60))?,
            grace_pending: false,
            agents: Window::coarse(limits.agents, Duration::from_secs(1)),
            losses: Losses::default(),
        })
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.losses.total()
    }

    pub(crate) fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.losses.take()
    }

    pub(crate) fn window(&self) -> Duration {
        self.after
    }

    /// Notes that the agent talked at `at`. In a replay `at` is the event's own time and events of
    /// several agents interleave, so only a later time counts; live, `at` is the collector's clock.
    pub(crate) fn heard(&mut self, record: &Record, at: Timestamp, replaying: bool) {
        let stopped = matches!(&record.event.body, Body::Agent(a) if a.action == bannin::event::AgentAction::Stop);
        match self.agents.touch(&record.agent_id, at) {
            Some(entry) => {
                if !replaying || at >= entry.last_heard {
                    if entry.host != record.event.host {
                        entry.host.clone_from(&record.event.host);
                    }
                    entry.last_heard = at;
                    entry.last_seq = record.event.seq;
                    entry.last_event_ts = record.event.ts;
                    entry.stopped = stopped;
                    entry.alerted = false;
                }
            }
            None => {
                let liveness = Liveness {
                    host: record.event.host.clone(),
                    last_heard: at,
                    last_seq: record.event.seq,
                    last_event_ts: record.event.ts,
                    stopped,
                    alerted: false,
                };
                for (_, lost) in self.agents.insert(record.agent_id.clone(), liveness, at) {
                    self.losses.add(&lost.host, 1);
                }
            }
        }
    }

    /// After a replay: agents already silent when the collector stopped were reported then, so
    /// they are not reported again until they talk and fall silent anew. The others could not
    /// talk while the collector was down: their silence is counted from the first tick.
    pub(crate) fn settle(&mut self, replay_end: Timestamp) {
        self.grace_pending = true;
        let after = self.after;
        let keys: Vec<String> = self.agents.iter().map(|(k, _)| k.clone()).collect();
        for key in keys {
            if let Some(entry) = self.agents.get_mut(&key) {
                if entry.last_heard.saturating_add(after) <= replay_end {
                    entry.alerted = true;
                }
            }
        }
    }

    pub(crate) fn tick(&mut self, now: Timestamp) -> Vec<Candidate> {
        if std::mem::take(&mut self.grace_pending) {
            let keys: Vec<String> = self.agents.iter().map(|(k, _)| k.clone()).collect();
            for key in keys {
                if let Some(entry) = self.agents.get_mut(&key) {
                    entry.last_heard = entry.last_heard.max(now);
                }
            }
        }
        let mut findings = Vec::new();
        let keys: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, l)| !l.alerted && l.last_heard.saturating_add(self.after) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for agent_id in keys {
            let Some(entry) = self.agents.get_mut(&agent_id) else {
                continue;
            };
            entry.alerted = true;
            let silent = (now.as_nanos() - entry.last_heard.as_nanos()) / 1_000_000_000;
            let mut fields = Map::new();
            fields.insert("agent_id".into(), json!(agent_id));
            fields.insert("last_seen".into(), json!(entry.last_heard));
            fields.insert("last_event_ts".into(), json!(entry.last_event_ts));
            fields.insert("last_seq".into(), json!(entry.last_seq));
            fields.insert("silent_secs".into(), json!(silent));
            fields.insert("stopped".into(), json!(entry.stopped));
            let why = if entry.stopped {
                " after a clean stop"
            } else {
                ""
            };
            findings.push(Candidate {
                ts: now,
                host: entry.host.clone(),
                summary: format!(
                    "agent {agent_id} on {} silent for {silent}s{why}",
                    entry.host
                ),
                evidence: vec![EvidenceRef {
                    agent_id: agent_id.clone(),
                    seq: entry.last_seq,
                }],
                key: agent_id,
                fields,
                severity: entry.stopped.then_some(Severity::Low),
            });
        }
        findings
    }
}

// ---------------------------------------------------------------------------------------------
// sensitive_read_volume

/// At most this many evidence references are attached to one bulk-read alert.
const MAX_READ_EVIDENCE: usize = 32;

struct ReadTrack {
    last_total: u64,
    /// Rows added by each event within the window, with the event.
    points: VecDeque<(Timestamp, u64, EvidenceRef)>,
    sum: u64,
}

/// Rows read from sensitive tables by one session or one database user within a window.
///
/// The agent's running totals (`session_sensitive_rows`, `user_sensitive_rows`) only grow, over
/// the agent's whole life, so a threshold on them would end up firing for every ordinary account.
/// This detector turns them back into rows added per event (the difference from the previous
/// total of the same session or user) and adds those up over the window. It also reports a read of
/// a whole sensitive table (`export_method: full_table_read`) at once.
pub(crate) struct SensitiveReadVolume {
    rows: u64,
    window: Duration,
    full_table_reads: bool,
    per_key: usize,
    /// Per host; reads dropped because a track held `per_key` already are losses too.
    tracks: HostWindows<u64, ReadTrack>,
}

impl SensitiveReadVolume {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        Ok(SensitiveReadVolume {
            rows: spec.u64("rows", 10_000)?,
            window: spec.duration("window", Duration::from_secs(3600))?,
            full_table_reads: spec
                .parameters
                .get("full_table_reads")
                .map(|v| {
                    v.as_bool()
                        .ok_or("parameter full_table_reads is not a boolean")
                })
                .transpose()?
                .unwrap_or(true),
            per_key: limits.matches_per_group.max(1),
            tracks: HostWindows::new(
                limits.per_host.min(limits.correlation_groups),
                limits.correlation_groups,
                Duration::from_secs(1),
            ),
        })
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.tracks.losses.total()
    }

    pub(crate) fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.tracks.losses.take()
    }

    pub(crate) fn expire(&mut self, now: Timestamp) {
        self.tracks.expire(now.saturating_sub(self.window));
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn observe(&mut self, record: &Record) -> Option<Candidate> {
        let Body::Db(db) = &record.event.body else {
            return None;
        };
        if db.action != bannin::event::DbAction::Query || db.failed {
            return None;
        }
        let ts = record.event.ts;
        let host = record.event.host.as_str();
        let since = ts.saturating_sub(self.window);
        let mut best: Option<(&str, u64, Vec<u64>)> = None;
        for (scope, name, total) in [
            ("session", &db.session, db.session_sensitive_rows),
            ("user", &db.db_user, db.user_sensitive_rows),
        ] {
            let Some(total) = total else { continue };
            let key = {
                let mut hasher = std::hash::DefaultHasher::new();
                (&record.agent_id, scope, name).hash(&mut hasher);
                hasher.finish()
            };
            if self.tracks.touch(host, &key, ts).is_none() {
                let track = ReadTrack {
                    // First sight: only this event's own rows are known to be new.
                    last_total: total.saturating_sub(db.rows.unwrap_or(0)),
                    points: VecDeque::new(),
                    sum: 0,
                };
                self.tracks.insert(host, key, track, ts);
            }
            let mut dropped = false;
            let track = self.tracks.get_mut(host, &key)?;
            // A total that went down is a restarted agent counting afresh.
            let added = total.checked_sub(track.last_total).unwrap_or(total);
            track.last_total = total;
            while track.points.front().is_some_and(|(t, _, _)| *t < since) {
                if let Some((_, rows, _)) = track.points.pop_front() {
                    track.sum -= rows;
                }
            }
            if added > 0 {
                if track.points.len() >= self.per_key {
                    if let Some((_, rows, _)) = track.points.pop_front() {
                        track.sum -= rows;
                    }
                    dropped = true;
                }
                track.points.push_back((ts, added, evidence(record)));
                track.sum += added;
            }
            if track.sum >= self.rows && best.as_ref().is_none_or(|(_, sum, _)| track.sum > *sum) {
                let mut keys = best.map(|(_, _, keys)| keys).unwrap_or_default();
                keys.push(key);
                best = Some((scope, track.sum, keys));
            } else if let Some((_, _, keys)) = &mut best {
                keys.push(key);
            }
            if dropped {
                self.tracks.losses.add(host, 1);
            }
        }
        let full = self.full_table_reads
            && db.export_method == "full_table_read"
            && !db.sensitive_tables.is_empty();
        let (scope, rows, keys) = match best {
            Some(found) => found,
            None if full => ("full_table", db.rows.unwrap_or(0), Vec::new()),
            None => return None,
        };
        // The window's reads are reported now; the next alert needs another `rows` on top.
        let mut proof = Vec::new();
        let mut first_ts = ts;
        for key in keys {
            if let Some(track) = self.tracks.get_mut(host, &key) {
                for (t, _, e) in track.points.drain(..) {
                    first_ts = first_ts.min(t);
                    if !proof.contains(&e) {
                        proof.push(e);
                    }
                }
                track.sum = 0;
            }
        }
        if proof.is_empty() {
            proof.push(evidence(record));
        }
        if proof.len() > MAX_READ_EVIDENCE {
            let tail = proof.split_off(proof.len() - MAX_READ_EVIDENCE / 2);
            proof.truncate(MAX_READ_EVIDENCE / 2);
            proof.extend(tail);
        }
        let mut fields = Map::new();
        for (name, value) in [
            ("db_system", json!(db.db_system)),
            ("db_user", json!(db.db_user)),
            ("database", json!(db.database)),
            ("client_addr", json!(db.client_addr)),
            ("application", json!(db.application)),
            ("session", json!(db.session)),
            ("tables", json!(db.tables)),
            ("sensitive_tables", json!(db.sensitive_tables)),
            ("scope", json!(scope)),
            ("rows_in_window", json!(rows)),
            ("window_secs", json!(self.window.as_secs())),
            ("first_ts", json!(first_ts)),
            ("statement", json!(db.statement)),
        ] {
            fields.insert(name.into(), value);
        }
        if let Some(total) = db.session_sensitive_rows {
            fields.insert("session_sensitive_rows".into(), json!(total));
        }
        if let Some(total) = db.user_sensitive_rows {
            fields.insert("user_sensitive_rows".into(), json!(total));
        }
        if !db.export_method.is_empty() {
            fields.insert("export_method".into(), json!(db.export_method));
        }
        let what = match scope {
            "full_table" => "read all of".to_string(),
            scope => format!(
                "read {rows} rows in {}s ({scope}) from",
                (ts.as_nanos() - first_ts.as_nanos()) / 1_000_000_000
            ),
        };
        Some(Candidate {
            ts,
            host: record.event.host.clone(),
            summary: format!(
                "{} {what} sensitive {} on {} (client {})",
                db.db_user,
                db.sensitive_tables.join(","),
                record.event.host,
                db.client_addr
            ),
            evidence: proof,
            key: db.db_user.clone(),
            fields,
            severity: None,
        })
    }
}
