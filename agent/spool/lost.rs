//! `spool.lost`: how many events were lost before they could be spooled, kept outside SQLite.
//!
//! Events are lost only when the spool cannot take them (a full disk with nothing left to drop, a
//! spool that keeps failing), which is exactly when SQLite cannot record the count either. So the
//! running total lives in this small file beside the spool: created with real bytes while there is
//! room, then rewritten in place (one 512-byte write at offset 0 and `fdatasync`), which needs no new
//! block even on a full disk. The spool's `meta` table keeps how much of the total its
//! `agent.dropped` notices have reported, committed in the notice's own transaction, so the
//! difference — what is still to report — survives a crash or restart and is reported exactly once.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const LOST_FILE: &str = "spool.lost";

/// The file's size, written in full at creation so later updates overwrite allocated blocks.
const FILE_SIZE: usize = 4096;
/// The record: magic, total, reason length and reason, checksum in the last 8 bytes.
const RECORD: usize = 512;
const MAGIC: &[u8; 8] = b"BNNLOST1";
const REASON_MAX: usize = RECORD - 8 - 8 - 2 - 8;

/// What the file said at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// No file yet, or one whose creation never completed: nothing was counted.
    Nothing,
    /// The running total and why the last events were lost.
    Total { total: u64, reason: String },
    /// The record does not check out (a torn write or tampering): how many is unknown.
    Damaged,
}

pub struct LostFile {
    path: PathBuf,
    file: Option<File>,
    /// When [`Self::ensure`] last tried to create a missing file.
    last_try: Option<std::time::Instant>,
}

/// How often [`LostFile::ensure`] tries again to create a file it could not.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl LostFile {
    /// Opens (creating when missing) the counter beside the spool in `state_dir`, and reads it.
    /// A file that cannot be created now (a full disk) is created by a later [`Self::write`].
    pub fn open(state_dir: &Path) -> (LostFile, Recorded) {
        let path = state_dir.join(LOST_FILE);
        let mut lost = LostFile {
            path,
            file: None,
            last_try: None,
        };
        let recorded = match open_existing(&lost.path) {
            Ok(Some((file, recorded))) => {
                lost.file = Some(file);
                recorded
            }
            Ok(None) => Recorded::Nothing,
            Err(error) => {
                tracing::error!(%error, path = %lost.path.display(), "cannot read the count of lost events");
                Recorded::Damaged
            }
        };
        (lost, recorded)
    }

    /// Records the running `total` and the last `reason`; durable when it returns `Ok`.
    pub fn write(&mut self, total: u64, reason: &str) -> io::Result<()> {
        let record = encode(total, reason);
        if self.file.is_none() {
            self.file = Some(create(&self.path, &record)?);
            return Ok(());
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no file"))?;
        write_at(file, &record, 0)?;
        file.sync_data()
    }

    /// Creates the file now if it is missing (there is room again), recording `total`.
    pub fn ensure(&mut self, total: u64, reason: &str) {
        if self.file.is_some() || self.last_try.is_some_and(|t| t.elapsed() < RETRY) {
            return;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the spool works on its own blocking thread, outside the runtime's clock"
        )]
        let now = std::time::Instant::now();
        self.last_try = Some(now);
        if let Err(error) = self.write(total, reason) {
            tracing::debug!(%error, "cannot create the lost-events counter yet");
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the file without following a link planted at its name; `None` when there is none.
fn open_existing(path: &Path) -> io::Result<Option<(File, Recorded)>> {
    let mut file = match no_follow().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut record = Vec::with_capacity(RECORD);
    (&mut file).take(RECORD as u64).read_to_end(&mut record)?;
    let recorded = decode(&record);
    if meta.len() < FILE_SIZE as u64 {
        // Its creation was cut short: make it whole, keeping what it says.
        drop(file);
        let total = match &recorded {
            Recorded::Total { total, reason } => Some((*total, reason.clone())),
            _ => None,
        };
        let (total, reason) = total.unwrap_or_default();
        return Ok(Some((create(path, &encode(total, &reason))?, recorded)));
    }
    Ok(Some((file, recorded)))
}

/// Writes the whole file under a fresh name and renames it into place, so a crash leaves either
/// the old file or the complete new one.
fn create(path: &Path, record: &[u8]) -> io::Result<File> {
    use std::io::Write;
    let fresh = path.with_extension("lost.new");
    let _ = std::fs::remove_file(&fresh);
    let mut file = no_follow()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&fresh)?;
    let mut block = vec![0u8; FILE_SIZE];
    block[..record.len()].copy_from_slice(record);
    let written = file
        .write_all(&block)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&fresh, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&fresh);
        return Err(error);
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Options that do not follow a link planted at the name and create the file for its owner only
/// (on Unix; Windows has neither concern for a file in the agent's own state directory).
fn no_follow() -> std::fs::OpenOptions {
    #[cfg_attr(not(unix), expect(unused_mut, reason = "only Unix adds flags"))]
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(nix::libc::O_NOFOLLOW);
    }
    options
}

/// Writes all of `buf` at `offset` without moving the file's cursor.
#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.seek_write(&buf[done..], offset + done as u64)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => done += n,
        }
    }
    Ok(())
}

/// Makes a rename in `dir` durable (Unix; NTFS journals the rename itself).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn encode(total: u64, reason: &str) -> [u8; RECORD] {
    let mut record = [0u8; RECORD];
    let mut reason = reason.as_bytes();
    if reason.len() > REASON_MAX {
        let mut end = REASON_MAX;
        while std::str::from_utf8(&reason[..end]).is_err() {
            end -= 1;
        }
        reason = &reason[..end];
    }
    record[..8].copy_from_slice(MAGIC);
    record[8..16].copy_from_slice(&total.to_be_bytes());
    record[16..18].copy_from_slice(&(reason.len() as u16).to_be_bytes());
    record[18..18 + reason.len()].copy_from_slice(reason);
    let sum = checksum(&record[..RECORD - 8]);
    record[RECORD - 8..].copy_from_slice(&sum.to_be_bytes());
    record
}

fn decode(record: &[u8]) -> Recorded {
    if record.iter().all(|&b| b == 0) {
        return Recorded::Nothing;
    }
    if record.len() < RECORD
        || &record[..8] != MAGIC
        || record[RECORD - 8..] != checksum(&record[..RECORD - 8]).to_be_bytes()
    {
        return Recorded::Damaged;
    }
    let total = u64::from_be_bytes(record[8..16].try_into().unwrap_or_default());
    let len = usize::from(u16::from_be_bytes([record[16], record[17]])).min(REASON_MAX);
    let reason = String::from_utf8_lossy(&record[18..18 + len]).into_owned();
    Recorded::Total { total, reason }
}

/// FNV-1a: enough to tell a torn or stray write from a record this module wrote.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_survives_reopening_and_damage_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lost, recorded) = LostFile::open(dir.path());
        assert_eq!(recorded, Recorded::Nothing);
        lost.write(0, "").unwrap();
        lost.write(42, "the spool is locked by another process")
            .unwrap();
        drop(lost);
        let (_, recorded) = LostFile::open(dir.path());
        assert_eq!(
            recorded,
            Recorded::Total {
                total: 42,
                reason: "the spool is locked by another process".into()
            }
        );
        assert_eq!(
            std::fs::metadata(dir.path().join(LOST_FILE)).unwrap().len(),
            FILE_SIZE as u64
        );
        // A stray byte in the record.
        let path = dir.path().join(LOST_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(LostFile::open(dir.path()).1, Recorded::Damaged);
    }

    #[test]
    fn a_link_planted_at_its_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOST_FILE)).unwrap();
        let (_, recorded) = LostFile::open(dir.path());
        assert_eq!(recorded, Recorded::Damaged);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(400);
        match decode(&encode(7, &reason)) {
            Recorded::Total { total, reason } => {
                assert_eq!(total, 7);
                assert!(reason.len() <= REASON_MAX && reason.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
    }
}
