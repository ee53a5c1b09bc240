//! `export_archived`: an archiver or compressor read a large export and an archive was written.
//!
//! The alert names the bytes the archiver read where the agent counted them (`bytes_read`); an
//! archiver reported while it still held the export open (`still_open`) has its total in a later
//! `file.read` at its close (`closed`), folded into the read and into the alert it raised.

use std::path::Path;
use std::time::Duration;

use bannin::event::{Body, FileAction, FileEvent, ProcessInfo, Record};
use bannin::time::Timestamp;
use serde_json::{Map, json};

use super::{Candidate, Seen, StatefulDetector, evidence, process_fields};
use crate::alert::EvidenceRef;
use crate::detect::config::Limits;
use crate::detect::rules::DetectorSpec;
use crate::detect::state::HostWindows;

/// Programs that pack or compress, by executable name (a version suffix such as `7zz` or
/// `python3.11` aside, names are compared whole).
const ARCHIVERS: &[&str] = &[
    "zip", "7z", "7za", "7zr", "7zz", "tar", "bsdtar", "gzip", "pigz", "bzip2", "pbzip2", "lbzip2",
    "xz", "pixz", "zstd", "zstdmt", "pzstd", "lz4", "lzip", "lzma", "lzop", "rar", "brotli",
];

/// Names an archive has before the agent has seen its content.
const ARCHIVE_EXTENSIONS: &[&str] = &[
    "zip", "7z", "rar", "tar", "gz", "tgz", "bz2", "tbz2", "xz", "txz", "zst", "lz4", "lz", "lzma",
    "br",
];

/// A large export an archiver read, or an archive one process wrote.
#[derive(Clone)]
struct Sighting {
    ts: Timestamp,
    host: String,
    file: FileEvent,
    process: ProcessInfo,
    proof: EvidenceRef,
}

pub(crate) struct ExportArchived {
    min_size: u64,
    window: Duration,
    archivers: Vec<String>,
    /// Large exports read by an archiver, by agent and pid.
    reads: HostWindows<(String, u32), Sighting>,
    /// Archives written, by agent and pid: the agent may report the write before the read it
    /// followed, when both reach it in one turn.
    archives: HostWindows<(String, u32), Sighting>,
    /// The latest archiver read per host, for an archive written by another process of the
    /// pipe (`tar c export.csv | gzip > out.tgz`).
    latest: HostWindows<String, Sighting>,
    /// Reads, by agent and pid, that an alert was raised for, with the archive it was raised
    /// with: not lent to another writer.
    used: HostWindows<(String, u32), Sighting>,
    /// Matches whose archive is known only by its content, under a name that is not an
    /// archive's (`zip` writes `ziXXXXXX` and renames it to `out.zip`), by agent and that name:
    /// raised on the rename under the final name, or after `RENAME_GRACE` without writes.
    pending: HostWindows<(String, String), (Sighting, Sighting)>,
    /// (agent, writer pid, export path) already raised: one alert per archiver and export.
    raised: HostWindows<(String, u32, String), ()>,
}

/// How long a match under a temporary name waits, after its last write, for the rename that
/// gives the archive its final name.
const RENAME_GRACE: Duration = Duration::from_secs(5);

impl ExportArchived {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        let mut archivers = spec.strings("archivers")?;
        if archivers.is_empty() {
            archivers = ARCHIVERS.iter().map(|s| s.to_string()).collect();
        }
        let per_host = limits.per_host.min(limits.tracked_files);
        Ok(ExportArchived {
            min_size: spec.u64("min_size", 10 * 1024 * 1024)?,
            window: spec.duration("window", Duration::from_secs(600))?,
            archivers,
            reads: HostWindows::new(per_host, limits.tracked_files, Duration::from_secs(1)),
            archives: HostWindows::new(per_host, limits.tracked_files, Duration::from_secs(1)),
            latest: HostWindows::new(16, limits.agents, Duration::from_secs(1)),
            used: HostWindows::new(per_host, limits.tracked_files, Duration::from_secs(1)),
            pending: HostWindows::new(per_host, limits.tracked_files, Duration::from_secs(1)),
            raised: HostWindows::new(per_host, limits.tracked_files, Duration::from_secs(1)),
        })
    }

    fn is_archiver(&self, exe: &str) -> bool {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        self.archivers.iter().any(|archiver| archiver == name)
    }

    fn within(&self, earlier: Timestamp, later: Timestamp) -> bool {
        later.as_nanos().abs_diff(earlier.as_nanos()) <= self.window.as_nanos() as u64
    }

    fn observe_file(&mut self, record: &Record, file: &FileEvent) -> Option<Candidate> {
        let process = file.process.as_ref()?;
        let host = record.event.host.to_string();
        let key = (record.agent_id.clone(), process.pid);
        let seen = Sighting {
            ts: record.event.ts,
            host: host.clone(),
            file: file.clone(),
            process: ProcessInfo::clone(process),
            proof: evidence(record),
        };
        match file.action {
            FileAction::Read if file.closed => self.read_closed(&record.agent_id, seen),
            FileAction::Read => {
                if !self.is_archiver(&process.exe)
                    || file.size.unwrap_or(0) < self.min_size
                    || file.export.is_none()
                {
                    return None;
                }
                self.reads.insert(&host, key.clone(), seen.clone(), seen.ts);
                self.latest
                    .insert(&host, record.agent_id.clone(), seen.clone(), seen.ts);
                // Written before its read was reported: the same process, so the same job.
                let archive = self.archives.get(&host, &key)?.clone();
                if !self.within(archive.ts, seen.ts) {
                    return None;
                }
                self.matched(&record.agent_id, seen, archive)
            }
            FileAction::Create | FileAction::Write | FileAction::Rename => {
                if file.action == FileAction::Rename
                    && let Some(from) = &file.from_path
                    && let Some((read, mut archive)) = self
                        .pending
                        .remove(&host, &(record.agent_id.clone(), from.clone()))
                {
                    // The archive under its final name: its content is the pending one's.
                    let export = archive.file.export.take();
                    archive.file = file.clone();
                    archive.file.export = archive.file.export.take().or(export);
                    archive.ts = seen.ts;
                    archive.proof = seen.proof;
                    return self.raise_once(&record.agent_id, &read, &archive);
                }
                if !is_archive(file) {
                    return None;
                }
                self.archives
                    .insert(&host, key.clone(), seen.clone(), seen.ts);
                let read = match self.reads.get(&host, &key) {
                    Some(read) => read.clone(),
                    None => {
                        // Not a read that made an archive already, its reader's own or its
                        // pipe's: `zip` then `gzip -k`, whose read may be reported after its
                        // archive, is gzip's job, not zip's.
                        let latest = self.latest.get(&host, &record.agent_id)?;
                        let reader = (record.agent_id.clone(), latest.process.pid);
                        if latest.ts > seen.ts
                            || self.archives.get(&host, &reader).is_some()
                            || self.used.get(&host, &reader).is_some()
                        {
                            return None;
                        }
                        latest.clone()
                    }
                };
                if !self.within(read.ts, seen.ts) {
                    return None;
                }
                self.matched(&record.agent_id, read, seen)
            }
            FileAction::Delete => None,
        }
    }

    /// The close of an archiver reported while it still read: its total goes into its read and,
    /// when that read raised an alert, into the alert (folded into it, not another one).
    fn read_closed(&mut self, agent: &str, close: Sighting) -> Option<Candidate> {
        let key = (agent.to_string(), close.process.pid);
        let host = close.host.clone();
        let read = self.reads.get_mut(&host, &key)?;
        if read.file.path != close.file.path || read.process.exe != close.process.exe {
            return None;
        }
        read.file.bytes_read = close.file.bytes_read;
        read.file.still_open = false;
        let read = read.clone();
        if let Some(latest) = self.latest.get_mut(&host, &agent.to_string())
            && latest.process.pid == read.process.pid
        {
            latest.file = read.file.clone();
        }
        let archive = self.used.get(&host, &key)?.clone();
        let mut candidate = self.candidate(&read, &archive);
        candidate.ts = close.ts;
        candidate.evidence.push(close.proof);
        candidate.continues = true;
        Some(candidate)
    }

    /// An archiver's read and an archive matched: raised now, or held for the rename when the
    /// archive's name is not an archive's (a temporary name).
    fn matched(&mut self, agent: &str, read: Sighting, archive: Sighting) -> Option<Candidate> {
        if archive.file.action != FileAction::Rename && !has_archive_name(&archive.file.path) {
            let key = (agent.to_string(), archive.file.path.clone());
            let (host, ts) = (archive.host.clone(), archive.ts);
            self.pending.insert(&host, key, (read, archive), ts);
            return None;
        }
        self.raise_once(agent, &read, &archive)
    }

    /// The alert for this writer and export, unless it was raised already.
    fn raise_once(
        &mut self,
        agent: &str,
        read: &Sighting,
        archive: &Sighting,
    ) -> Option<Candidate> {
        let key = (
            agent.to_string(),
            archive.process.pid,
            read.file.path.clone(),
        );
        if self.raised.get(&archive.host, &key).is_some() {
            return None;
        }
        self.raised.insert(&archive.host, key, (), archive.ts);
        Some(self.raise(agent, read, archive))
    }

    /// The alert for `read` and `archive`; the read is marked as having made an archive.
    fn raise(&mut self, agent: &str, read: &Sighting, archive: &Sighting) -> Candidate {
        let reader = (agent.to_string(), read.process.pid);
        self.used
            .insert(&read.host, reader, archive.clone(), archive.ts.max(read.ts));
        self.candidate(read, archive)
    }

    fn candidate(&self, read: &Sighting, archive: &Sighting) -> Candidate {
        let mut fields = Map::new();
        fields.insert("path".into(), json!(read.file.path));
        if let Some(size) = read.file.size {
            fields.insert("size".into(), json!(size));
        }
        if let Some(export) = &read.file.export {
            fields.insert("export".into(), json!(export));
        }
        if let Some(bytes) = read.file.bytes_read {
            fields.insert("bytes_read".into(), json!(bytes));
        }
        fields.insert("archive_path".into(), json!(archive.file.path));
        if let Some(size) = archive.file.size {
            fields.insert("archive_size".into(), json!(size));
        }
        if let Some(format) = archive.file.export.as_ref().map(|e| &e.format) {
            fields.insert("archive_format".into(), json!(format));
        }
        fields.insert("read_ts".into(), json!(read.ts));
        process_fields(&mut fields, "", &read.process);
        if archive.process.pid != read.process.pid {
            process_fields(&mut fields, "writer_", &archive.process);
        }
        if !read.process.ancestry.is_empty() {
            fields.insert("ancestry".into(), json!(read.process.ancestry));
        }
        let host = archive.host.clone();
        Candidate {
            ts: archive.ts.max(read.ts),
            host: host.clone(),
            summary: format!(
                "{}[{}] read {} ({} bytes{}) and {} was written on {host}",
                read.process.exe,
                read.process.pid,
                read.file.path,
                read.file.size.unwrap_or(0),
                super::export_sent::bytes_read(&read.file),
                archive.file.path
            ),
            evidence: vec![read.proof.clone(), archive.proof.clone()],
            key: format!("{}\u{0}{}", read.file.path, archive.file.path),
            fields,
            severity: None,
            continues: false,
        }
    }
}

/// Whether a written file is an archive: by its content, or by its name before it has any.
fn is_archive(file: &FileEvent) -> bool {
    if let Some(export) = &file.export {
        return export.class == "archive";
    }
    has_archive_name(&file.path)
}

/// Whether `path` is named as an archive is (`out.zip`, not `ziXXXXXX`).
fn has_archive_name(path: &str) -> bool {
    Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ARCHIVE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

impl StatefulDetector for ExportArchived {
    fn state(&self) -> &'static str {
        "archiver reads"
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn observe(&mut self, record: &Record, _seen: Seen) -> Vec<Candidate> {
        match &record.event.body {
            Body::File(file) => self.observe_file(record, file).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    fn tick(&mut self, now: Timestamp) -> Vec<Candidate> {
        let before = now.saturating_sub(self.window);
        self.reads.expire(before);
        self.archives.expire(before);
        self.latest.expire(before);
        self.used.expire(before);
        self.raised.expire(before);
        // No rename came: the archive keeps the name it was written under.
        let due = self.pending.expire(now.saturating_sub(RENAME_GRACE));
        due.into_iter()
            .filter_map(|((agent, _), (read, archive))| self.raise_once(&agent, &read, &archive))
            .collect()
    }

    fn evicted(&self) -> u64 {
        self.reads.losses.total()
            + self.archives.losses.total()
            + self.latest.losses.total()
            + self.used.losses.total()
            + self.pending.losses.total()
            + self.raised.losses.total()
    }

    fn take_losses(&mut self) -> Vec<(String, u64)> {
        let mut losses = self.reads.losses.take();
        losses.extend(self.archives.losses.take());
        losses.extend(self.latest.losses.take());
        losses.extend(self.used.losses.take());
        losses.extend(self.pending.losses.take());
        losses.extend(self.raised.losses.take());
        losses
    }
}

#[cfg(test)]
mod tests {
    //! `export-archived`: an archiver's read of a large export, then an archive.

    use crate::detect::testkit::*;

    fn read(path: &str, size: u64, who: &ProcessInfo) -> Body {
        file(FileAction::Read, path, Some(size), Some(csv(100_000)), who)
    }

    fn zip_info() -> ExportInfo {
        ExportInfo {
            class: "archive".into(),
            format: "zip".into(),
            ..ExportInfo::default()
        }
    }

    #[test]
    fn zip_reading_an_export_and_writing_an_archive_alerts_in_either_order() {
        let mut fleet = Fleet::default();
        let zip = process(6001, "/usr/bin/zip", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web1", 0, read("/srv/exports/c.csv", 17 * MIB, &zip));
        updates.extend(fleet.send(
            "web1",
            1,
            rename("/srv/exports/zi1234", "/srv/exports/c.zip", 2 * MIB, &zip),
        ));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        assert_eq!(alerts[0].rule, "export-archived");
        assert_eq!(alerts[0].fields["path"], "/srv/exports/c.csv");
        assert_eq!(alerts[0].fields["archive_path"], "/srv/exports/c.zip");
        assert_eq!(alerts[0].fields["exe"], "/usr/bin/zip");
        assert_eq!(alerts[0].severity, Severity::Medium);

        // The archive reported before the read (both reached the agent in one turn).
        let tar = process(6101, "/usr/bin/tar", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send(
            "web2",
            0,
            file(
                FileAction::Write,
                "/tmp/out.7z",
                Some(MIB),
                Some(zip_info()),
                &tar,
            ),
        );
        updates.extend(fleet.send("web2", 0, read("/srv/exports/d.csv", 20 * MIB, &tar)));
        assert_eq!(rules_of(&updates), vec!["export-archived"]);
    }

    /// The archiver's bytes read are named; an archiver reported while it still read has its
    /// total folded into the alert at its close.
    #[test]
    fn the_bytes_an_archiver_read_are_named_and_its_close_gives_the_alert_its_total() {
        let mut fleet = Fleet::default();
        let tar = process(6101, "/usr/bin/tar", "sato", &["/usr/bin/bash"]);
        let counted = |bytes: u64, still_open: bool| {
            let Body::File(mut event) = read("/srv/exports/c.csv", 17 * MIB, &tar) else {
                unreachable!()
            };
            event.bytes_read = Some(bytes);
            event.still_open = still_open;
            event.closed = !still_open;
            Body::File(event)
        };
        let mut updates = fleet.send("web1", 0, counted(4 * MIB, true));
        updates.extend(fleet.send(
            "web1",
            1,
            file(
                FileAction::Write,
                "/srv/exports/c.tgz",
                Some(MIB),
                None,
                &tar,
            ),
        ));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        let alert = alerts[0].clone();
        assert_eq!(alert.fields["bytes_read"], 4 * MIB);
        assert!(
            alert.summary.contains(&format!("{} read so far", 4 * MIB)),
            "{}",
            alert.summary
        );
        let updates = fleet.send("web1", 2, counted(17 * MIB, false));
        let repeat = only_repeat_of(&alert, &updates);
        assert_eq!(repeat.count, 1);
        assert_eq!(repeat.fields["bytes_read"], 17 * MIB);
        assert!(
            repeat.evidence.iter().any(|e| e.seq == 3),
            "{:?}",
            repeat.evidence
        );
        assert!(
            repeat
                .summary
                .is_some_and(|s| s.contains(&format!("{} read)", 17 * MIB))),
            "{:?}",
            repeat.summary
        );
    }

    #[test]
    fn a_pipe_counts_but_non_archivers_small_files_and_late_archives_do_not() {
        let mut fleet = Fleet::default();
        let cat = process(5001, "/usr/bin/cat", "sato", &["/usr/bin/bash"]);
        let tar = process(5002, "/usr/bin/tar", "sato", &["/usr/bin/bash"]);
        let gzip = process(5003, "/usr/bin/gzip", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web1", 0, read("/srv/a.csv", 64 * MIB, &cat));
        updates.extend(fleet.send("web1", 1, read("/srv/small.csv", MIB, &tar)));
        updates.extend(fleet.send(
            "web1",
            2,
            file(FileAction::Create, "/tmp/x.tgz", Some(0), None, &gzip),
        ));
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
        // tar reads a large export; gzip, the other end of its pipe, writes the archive.
        updates.extend(fleet.send("web1", 10, read("/srv/a.csv", 64 * MIB, &tar)));
        updates.extend(fleet.send(
            "web1",
            11,
            file(FileAction::Write, "/tmp/a.tgz", Some(MIB), None, &gzip),
        ));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        assert_eq!(alerts[0].fields["writer_exe"], "/usr/bin/gzip");
        // Long after the window (10 minutes), an archive is unrelated.
        let updates = fleet.send(
            "web1",
            5000,
            file(
                FileAction::Write,
                "/tmp/later.zip",
                Some(MIB),
                Some(zip_info()),
                &gzip,
            ),
        );
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
    }

    #[test]
    fn an_archivers_archive_written_before_its_read_is_not_pinned_on_an_earlier_archiver() {
        // zip packs the export, then tar czf does; tar's archive reaches the collector before
        // tar's read of the export. The alerts name zip for the zip and tar for the tgz.
        let mut fleet = Fleet::default();
        let zip = process(8001, "/usr/bin/zip", "sato", &["/usr/bin/bash"]);
        let tar = process(8002, "/usr/bin/tar", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web1", 0, read("/srv/c.csv", 17 * MIB, &zip));
        updates.extend(fleet.send(
            "web1",
            1,
            file(
                FileAction::Write,
                "/srv/c.zip",
                Some(MIB),
                Some(zip_info()),
                &zip,
            ),
        ));
        updates.extend(fleet.send(
            "web1",
            2,
            file(FileAction::Create, "/srv/c.tgz", Some(0), None, &tar),
        ));
        updates.extend(fleet.send("web1", 2, read("/srv/c.csv", 17 * MIB, &tar)));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 2, "{updates:?}");
        assert_eq!(alerts[0].fields["archive_path"], "/srv/c.zip");
        assert_eq!(alerts[0].fields["exe"], "/usr/bin/zip");
        assert_eq!(alerts[1].fields["archive_path"], "/srv/c.tgz");
        assert_eq!(alerts[1].fields["exe"], "/usr/bin/tar");
        assert!(
            !alerts[1].fields.contains_key("writer_exe"),
            "{:?}",
            alerts[1]
        );
        // tar czf's gzip child writes the tgz with tar's read; then gzip -k writes its archive
        // before its read is reported. tar's read made its archive already.
        let tar = process(8003, "/usr/bin/tar", "sato", &["/usr/bin/bash"]);
        let child = process(8004, "/usr/bin/gzip", "sato", &["/usr/bin/tar"]);
        let gzip = process(8005, "/usr/bin/gzip", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web1", 10, read("/srv/c.csv", 17 * MIB, &tar));
        updates.extend(fleet.send(
            "web1",
            11,
            file(FileAction::Write, "/srv/d.tgz", Some(MIB), None, &child),
        ));
        updates.extend(fleet.send(
            "web1",
            12,
            file(FileAction::Create, "/srv/c.csv.gz", Some(0), None, &gzip),
        ));
        updates.extend(fleet.send("web1", 12, read("/srv/c.csv", 17 * MIB, &gzip)));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 2, "{updates:?}");
        assert_eq!(alerts[0].fields["archive_path"], "/srv/d.tgz");
        assert_eq!(alerts[0].fields["writer_exe"], "/usr/bin/gzip");
        assert_eq!(alerts[1].fields["archive_path"], "/srv/c.csv.gz");
        assert_eq!(alerts[1].fields["pid"], 8005);
        assert_eq!(updates.len(), 2, "no repeat either: {updates:?}");
    }

    #[test]
    fn an_archive_written_under_a_temporary_name_alerts_once_under_its_final_name() {
        let mut fleet = Fleet::default();
        let zip = process(7001, "/usr/bin/zip", "sato", &["/usr/bin/bash"]);
        let tmp = "/srv/exports/ziAb12Cd";
        let mut updates = fleet.send("web1", 0, read("/srv/exports/c.csv", 17 * MIB, &zip));
        updates.extend(fleet.send(
            "web1",
            0,
            file(FileAction::Create, tmp, Some(0), None, &zip),
        ));
        for (secs, size) in [(1, MIB), (2, 2 * MIB)] {
            updates.extend(fleet.send(
                "web1",
                secs,
                file(FileAction::Write, tmp, Some(size), Some(zip_info()), &zip),
            ));
        }
        // Held for the rename: nothing yet, not even when ticks come within the grace.
        updates.extend(archiving(fleet.engine.tick(at(3))));
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
        updates.extend(fleet.send("web1", 4, rename(tmp, "/srv/exports/c.zip", 2 * MIB, &zip)));
        // zip writing the same export again into another archive is the same job.
        updates.extend(fleet.send(
            "web1",
            5,
            file(
                FileAction::Write,
                "/srv/exports/d.zip",
                Some(MIB),
                Some(zip_info()),
                &zip,
            ),
        ));
        updates.extend(archiving(fleet.engine.tick(at(60))));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        assert_eq!(alerts[0].fields["archive_path"], "/srv/exports/c.zip");
        assert_eq!(alerts[0].fields["archive_format"], "zip");
        assert!(
            alerts[0].summary.contains("/srv/exports/c.zip"),
            "{}",
            alerts[0].summary
        );
        assert_eq!(updates.len(), 1, "no repeat either: {updates:?}");

        // An archive known only by its content and never renamed still alerts, under its name,
        // once the grace after its last write is over.
        let tar = process(7101, "/usr/bin/tar", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web2", 100, read("/srv/exports/e.csv", 20 * MIB, &tar));
        updates.extend(fleet.send(
            "web2",
            101,
            file(
                FileAction::Write,
                "/tmp/notes.dat",
                Some(MIB),
                Some(zip_info()),
                &tar,
            ),
        ));
        updates.extend(archiving(fleet.engine.tick(at(103))));
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
        updates.extend(archiving(fleet.engine.tick(at(107))));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        assert_eq!(alerts[0].fields["archive_path"], "/tmp/notes.dat");
        assert!(archiving(fleet.engine.tick(at(120))).is_empty());

        // The agent reports the rename as a create under the final name (zip's temporary file
        // renamed before the agent looked): the final name's alert, and the held one dropped.
        let zip = process(7201, "/usr/bin/zip", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web3", 200, read("/srv/exports/f.csv", 17 * MIB, &zip));
        updates.extend(fleet.send(
            "web3",
            200,
            file(
                FileAction::Write,
                "/srv/exports/ziQq",
                Some(MIB),
                Some(zip_info()),
                &zip,
            ),
        ));
        updates.extend(fleet.send(
            "web3",
            201,
            file(
                FileAction::Create,
                "/srv/exports/f.zip",
                Some(MIB),
                Some(zip_info()),
                &zip,
            ),
        ));
        updates.extend(archiving(fleet.engine.tick(at(260))));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{updates:?}");
        assert_eq!(alerts[0].fields["archive_path"], "/srv/exports/f.zip");
        assert_eq!(updates.len(), 1, "{updates:?}");
    }

    /// The `export-archived` updates of a tick (agent silence also ticks).
    fn archiving(updates: Vec<AlertUpdate>) -> Vec<AlertUpdate> {
        updates
            .into_iter()
            .filter(|update| match update {
                AlertUpdate::New(alert) => alert.rule == "export-archived",
                AlertUpdate::Repeat { rule, .. } => rule == "export-archived",
            })
            .collect()
    }
}
