//! `export_lifecycle`: large export-like files destroyed soon after they were written.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use bannin::event::{Body, ExportInfo, FileAction, FileEvent, ProcessInfo, Record, SensorStatus};
use bannin::time::Timestamp;
use globset::GlobSet;
use serde_json::{Map, json};

use super::{Candidate, Seen, StatefulDetector, evidence, globs, process_fields};
use crate::alert::EvidenceRef;
use crate::detect::config::Limits;
use crate::detect::rules::DetectorSpec;
use crate::detect::state::{HostWindows, Window};

/// At most this many evidence references and renames are kept per tracked file.
const MAX_FILE_EVIDENCE: usize = 16;

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
                ancestry: Default::default(),
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

    /// Follows one event of a file, or learns the watched trees from a files sensor's status.
    fn follow(&mut self, record: &Record) -> Vec<Candidate> {
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
            // A read changes nothing in a file's life; `export_read` follows reads.
            FileAction::Read => {}
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
            host: record.event.host.to_string(),
            summary: format!(
                "{} export {} ({} bytes{rows}, ~{est_emails} e-mail addresses) {how} {lived}s after it was written on {}{by}",
                export.format, tracked.created_path, tracked.max_size, record.event.host
            ),
            evidence: tracked.evidence,
            key: tracked.created_path,
            fields,
            severity: None,
            continues: false,
        })
    }
}

impl StatefulDetector for ExportLifecycle {
    fn state(&self) -> &'static str {
        "tracked exports"
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn observe(&mut self, record: &Record, _seen: Seen) -> Vec<Candidate> {
        self.follow(record)
    }

    /// Forgets files created longer than the window before `now`, the collector's clock: an agent
    /// whose clock runs ahead must not flush every other host's files.
    fn tick(&mut self, now: Timestamp) -> Vec<Candidate> {
        let before = now.saturating_sub(self.window);
        self.files.expire(before);
        self.created.expire(before);
        Vec::new()
    }

    fn tracked_files(&self) -> usize {
        self.files.len()
    }

    fn evicted(&self) -> u64 {
        self.files.losses.total()
    }

    /// Tracked exports pushed out since the last call, by host. Creation times pushed out of the
    /// small-file tier are not losses: the export is still tracked once it is large.
    fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.created.losses.take();
        self.files.losses.take()
    }
}

#[cfg(test)]
mod tests {
    //! The `large-export-created-then-deleted` rule on the incidents it exists for, and the benign file work that must stay quiet.

    use crate::detect::testkit::*;

    #[test]
    fn large_csv_created_then_deleted_the_same_day_alerts_once_with_its_facts() {
        let mut fleet = Fleet::default();
        let who = attacker();
        let rm = process(5000, "/usr/bin/rm", "www-data", &["/bin/sh"]);
        let path = "/srv/share/tmp/customers_all.csv";
        let updates = run(
            &mut fleet,
            vec![
                (
                    "fs2",
                    0,
                    file(FileAction::Create, path, Some(0), None, &who),
                ),
                (
                    "fs2",
                    60,
                    file(
                        FileAction::Write,
                        path,
                        Some(400 * MIB),
                        Some(csv(6_790_000)),
                        &who,
                    ),
                ),
                (
                    "fs2",
                    61,
                    file(
                        FileAction::Write,
                        path,
                        Some(800 * MIB),
                        Some(csv(6_790_000)),
                        &who,
                    ),
                ),
                (
                    "fs2",
                    3 * 3600,
                    file(FileAction::Delete, path, Some(800 * MIB), None, &rm),
                ),
            ],
        );
        assert_eq!(
            rules_of(&updates),
            vec!["large-export-created-then-deleted"]
        );
        assert_eq!(updates.len(), 1);
        let alert = new_alerts(&updates)[0];
        assert_eq!(alert.host, "fs2");
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.fields["path"], path);
        assert_eq!(alert.fields["size"], 800 * MIB);
        assert_eq!(alert.fields["created_ts"], at(0).to_rfc3339());
        assert_eq!(alert.fields["deleted_ts"], at(3 * 3600).to_rfc3339());
        assert_eq!(alert.fields["pid"], 4242);
        assert_eq!(alert.fields["exe"], "/usr/bin/python3");
        assert_eq!(alert.fields["user"], "www-data");
        assert_eq!(alert.fields["deleted_by_exe"], "/usr/bin/rm");
        assert_eq!(alert.fields["est_rows"], 6_790_000);
        assert_eq!(alert.fields["emails"], 6_790_000);
        assert_eq!(alert.fields["passports"], 679_000);
        let seqs: Vec<u64> = alert.evidence.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert!(alert.summary.contains(path), "{}", alert.summary);
        // The alert object keeps docs/interface.md's shape: rule fields flat beside the common
        // ones.
        let json = serde_json::to_value(alert).unwrap();
        assert_eq!(json["rule"], "large-export-created-then-deleted");
        assert_eq!(json["size"], 800 * MIB);
    }

    #[test]
    fn export_followed_through_renames_until_deleted() {
        let mut fleet = Fleet::default();
        let who = attacker();
        let updates = run(
            &mut fleet,
            vec![
                (
                    "fs2",
                    0,
                    file(FileAction::Create, "/srv/out/a.csv", Some(0), None, &who),
                ),
                (
                    "fs2",
                    5,
                    file(
                        FileAction::Write,
                        "/srv/out/a.csv",
                        Some(20 * MIB),
                        Some(csv(200_000)),
                        &who,
                    ),
                ),
                (
                    "fs2",
                    10,
                    rename("/srv/out/a.csv", "/var/tmp/.cache1", 20 * MIB, &who),
                ),
                (
                    "fs2",
                    20,
                    rename("/var/tmp/.cache1", "/var/tmp/.cache2", 20 * MIB, &who),
                ),
                (
                    "fs2",
                    30,
                    file(
                        FileAction::Delete,
                        "/var/tmp/.cache2",
                        Some(20 * MIB),
                        None,
                        &who,
                    ),
                ),
            ],
        );
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{updates:?}");
        assert_eq!(alerts[0].fields["path"], "/srv/out/a.csv");
        assert_eq!(alerts[0].fields["final_path"], "/var/tmp/.cache2");
        assert_eq!(
            alerts[0].fields["renamed_to"],
            serde_json::json!(["/var/tmp/.cache1", "/var/tmp/.cache2"])
        );
    }

    #[test]
    fn an_export_replaced_exchanged_or_renamed_out_of_sight_alerts_with_how() {
        let mut fleet = Fleet::default();
        let who = attacker();
        let big = |path: &str| {
            file(
                FileAction::Write,
                path,
                Some(64 * MIB),
                Some(csv(1_000_000)),
                &attacker(),
            )
        };
        // Rename over a tracked export: replaced, with the export's own facts.
        fleet.send("pc1", 0, big("/srv/a.csv"));
        let updates = fleet.send("pc1", 10, rename("/srv/notes.csv", "/srv/a.csv", 16, &who));
        let alert = new_alerts(&updates)[0];
        assert_eq!(alert.fields["how"], "replaced");
        assert_eq!(alert.fields["replaced_by"], "/srv/notes.csv");
        assert_eq!(alert.fields["size"], 64 * MIB);
        assert_eq!(alert.fields["est_rows"], 1_000_000);
        // An exchange destroys nothing: the export is followed to the other name until deleted.
        fleet.send("pc1", 20, big("/srv/b.csv"));
        let Body::File(mut swap) = rename("/srv/decoy.csv", "/srv/b.csv", 16, &who) else {
            unreachable!()
        };
        swap.exchange = true;
        assert!(fleet.send("pc1", 21, swap.into()).is_empty());
        assert!(
            fleet
                .send(
                    "pc1",
                    22,
                    file(FileAction::Delete, "/srv/b.csv", Some(16), None, &who)
                )
                .is_empty(),
            "only the decoy sat at b.csv"
        );
        let updates = fleet.send(
            "pc1",
            23,
            file(
                FileAction::Delete,
                "/srv/decoy.csv",
                Some(64 * MIB),
                None,
                &who,
            ),
        );
        let alert = new_alerts(&updates)[0];
        assert_eq!(alert.fields["how"], "deleted");
        assert_eq!(alert.fields["path"], "/srv/b.csv");
        assert_eq!(alert.fields["final_path"], "/srv/decoy.csv");
        // What the agent says a rename replaced counts too, tracked here or not.
        let Body::File(mut over) = rename("/srv/x.txt", "/srv/old.csv", 16, &who) else {
            unreachable!()
        };
        over.replaced_size = Some(50 * MIB);
        over.replaced_export = Some(csv(700_000));
        let updates = fleet.send("pc1", 30, over.into());
        let alert = new_alerts(&updates)[0];
        assert_eq!(alert.fields["how"], "replaced");
        assert_eq!(alert.fields["size"], 50 * MIB);
        // Renamed out of the trees the file sensor watches: its delete will never be seen.
        let mut status = SensorEvent::new(
            SensorStatus::Status,
            "files",
            "fanotify: root; watching [/srv, /home/a]",
        );
        status.count = 0;
        fleet.send("pc1", 39, status.into());
        fleet.send("pc1", 40, big("/srv/c.csv"));
        assert!(
            fleet
                .send(
                    "pc1",
                    41,
                    rename("/srv/c.csv", "/home/a/c.csv", 64 * MIB, &who)
                )
                .is_empty()
        );
        let updates = fleet.send(
            "pc1",
            42,
            rename("/home/a/c.csv", "/tmp/c.csv", 64 * MIB, &who),
        );
        let alert = new_alerts(&updates)[0];
        assert_eq!(alert.fields["how"], "renamed");
        assert_eq!(alert.fields["final_path"], "/tmp/c.csv");
    }

    #[test]
    fn large_export_truncated_counts_as_destroyed() {
        let mut fleet = Fleet::default();
        let who = attacker();
        let updates = run(
            &mut fleet,
            vec![
                (
                    "fs2",
                    0,
                    file(FileAction::Create, "/srv/out/b.json", Some(0), None, &who),
                ),
                (
                    "fs2",
                    5,
                    file(
                        FileAction::Write,
                        "/srv/out/b.json",
                        Some(30 * MIB),
                        Some(csv(100_000)),
                        &who,
                    ),
                ),
                (
                    "fs2",
                    50,
                    file(FileAction::Write, "/srv/out/b.json", Some(0), None, &who),
                ),
                (
                    "fs2",
                    60,
                    file(FileAction::Delete, "/srv/out/b.json", Some(0), None, &who),
                ),
            ],
        );
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{updates:?}");
        assert_eq!(alerts[0].fields["how"], "truncated");
    }

    #[test]
    fn small_exports_builds_logs_and_old_files_stay_quiet() {
        let mut fleet = Fleet::default();
        let who = process(900, "/usr/bin/cc", "dev", &["/usr/bin/make", "/bin/bash"]);
        let mut events = Vec::new();
        // A build: thousands of objects, some large, no export content.
        for i in 0..2000 {
            let path = format!("/home/dev/proj/target/obj{i}.o");
            let size = if i % 100 == 0 { 50 * MIB } else { 4096 };
            events.push((
                "pc1",
                i,
                file(FileAction::Create, &path, Some(0), None, &who),
            ));
            events.push((
                "pc1",
                i,
                file(FileAction::Write, &path, Some(size), None, &who),
            ));
            events.push((
                "pc1",
                i + 1,
                file(FileAction::Delete, &path, Some(size), None, &who),
            ));
        }
        // Small exports come and go all day.
        for i in 0..50 {
            let path = format!("/home/dev/report{i}.csv");
            events.push((
                "pc1",
                3000 + i,
                file(FileAction::Create, &path, Some(0), None, &who),
            ));
            events.push((
                "pc1",
                3000 + i,
                file(FileAction::Write, &path, Some(MIB), Some(csv(5000)), &who),
            ));
            events.push((
                "pc1",
                3100 + i,
                file(FileAction::Delete, &path, Some(MIB), None, &who),
            ));
        }
        // Log rotation: big compressed logs, recognised as archives, deleted on schedule.
        let gz = ExportInfo {
            class: "archive".into(),
            format: "gzip".into(),
            ..ExportInfo::default()
        };
        let logrotate = process(
            700,
            "/usr/sbin/logrotate",
            "root",
            &["/usr/lib/systemd/systemd"],
        );
        for path in [
            "/var/log/nginx/access.log.2.gz",
            "/srv/app/logs/app.log.1.gz",
            "/srv/app/logs/app.log",
        ] {
            events.push((
                "web1",
                4000,
                file(FileAction::Create, path, Some(0), None, &logrotate),
            ));
            events.push((
                "web1",
                4001,
                file(
                    FileAction::Write,
                    path,
                    Some(300 * MIB),
                    Some(gz.clone()),
                    &logrotate,
                ),
            ));
            events.push((
                "web1",
                5000,
                file(FileAction::Delete, path, Some(300 * MIB), None, &logrotate),
            ));
        }
        // A large export deleted after more than a day is retention, not a cover-up.
        events.push((
            "fs1",
            0,
            file(
                FileAction::Create,
                "/srv/reports/q3.csv",
                Some(0),
                None,
                &who,
            ),
        ));
        events.push((
            "fs1",
            10,
            file(
                FileAction::Write,
                "/srv/reports/q3.csv",
                Some(90 * MIB),
                Some(csv(900_000)),
                &who,
            ),
        ));
        events.push((
            "fs1",
            25 * 3600,
            file(
                FileAction::Delete,
                "/srv/reports/q3.csv",
                Some(90 * MIB),
                None,
                &who,
            ),
        ));
        let updates = run(&mut fleet, events);
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
        // Only the small exports' names were tracked, and their deletes ended that.
        assert_eq!(fleet.engine.stats().tracked_files, 0);
    }

    #[test]
    fn tracked_files_expire_on_the_collector_clock() {
        let mut fleet = Fleet::default();
        let who = attacker();
        fleet.send(
            "fs2",
            0,
            file(FileAction::Create, "/srv/a.csv", Some(0), None, &who),
        );
        fleet.send(
            "fs2",
            5,
            file(
                FileAction::Write,
                "/srv/a.csv",
                Some(64 * MIB),
                Some(csv(1)),
                &who,
            ),
        );
        // An agent with a clock two days ahead does not flush other hosts' files.
        fleet.send(
            "skewed",
            2 * 86_400,
            file(
                FileAction::Write,
                "/srv/b.csv",
                Some(64 * MIB),
                Some(csv(1)),
                &who,
            ),
        );
        fleet.engine.tick(at(3600));
        assert_eq!(fleet.engine.stats().tracked_files, 2);
        fleet.engine.tick(at(86_400 + 10));
        assert_eq!(
            fleet.engine.stats().tracked_files,
            1,
            "a.csv is past the 24 h window"
        );
        let updates = fleet.send(
            "fs2",
            86_400 + 20,
            file(FileAction::Delete, "/srv/a.csv", Some(64 * MIB), None, &who),
        );
        assert!(updates.is_empty());
    }
}
