//! `export_archived`: an archiver or compressor read a large export and an archive was written.

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
}

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
        let host = record.event.host.clone();
        let key = (record.agent_id.clone(), process.pid);
        let seen = Sighting {
            ts: record.event.ts,
            host: host.clone(),
            file: file.clone(),
            process: process.clone(),
            proof: evidence(record),
        };
        match file.action {
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
                self.within(archive.ts, seen.ts)
                    .then(|| self.candidate(&seen, &archive))
            }
            FileAction::Create | FileAction::Write | FileAction::Rename => {
                if !is_archive(file) {
                    return None;
                }
                self.archives
                    .insert(&host, key.clone(), seen.clone(), seen.ts);
                let read = match self.reads.get(&host, &key) {
                    Some(read) => read.clone(),
                    None => {
                        let latest = self.latest.get(&host, &record.agent_id)?;
                        (latest.ts <= seen.ts).then(|| latest.clone())?
                    }
                };
                self.within(read.ts, seen.ts)
                    .then(|| self.candidate(&read, &seen))
            }
            FileAction::Delete => None,
        }
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
                "{}[{}] read {} ({} bytes) and {} was written on {host}",
                read.process.exe,
                read.process.pid,
                read.file.path,
                read.file.size.unwrap_or(0),
                archive.file.path
            ),
            evidence: vec![read.proof.clone(), archive.proof.clone()],
            key: format!("{}\u{0}{}", read.file.path, archive.file.path),
            fields,
            severity: None,
        }
    }
}

/// Whether a written file is an archive: by its content, or by its name before it has any.
fn is_archive(file: &FileEvent) -> bool {
    if let Some(export) = &file.export {
        return export.class == "archive";
    }
    Path::new(&file.path)
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
        Vec::new()
    }

    fn evicted(&self) -> u64 {
        self.reads.losses.total() + self.archives.losses.total() + self.latest.losses.total()
    }

    fn take_losses(&mut self) -> Vec<(String, u64)> {
        let mut losses = self.reads.losses.take();
        losses.extend(self.archives.losses.take());
        losses.extend(self.latest.losses.take());
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
}
