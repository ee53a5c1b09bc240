//! How many bytes each reader of a watched export read: the eBPF program of
//! `sensors/ebpf/bpf/reads.bpf.c`, which counts the bytes the system calls that read files
//! return for the files in its `watched` map, per process.
//!
//! The reads group ([`super::reads`]) puts an export in `watched` when it marks it and takes it
//! out when the export goes; it asks for a reader's count when it reports the reader. A file's
//! key is the kernel's (device, inode), learned from the kernel itself rather than from `stat`,
//! whose device differs from the kernel's on btrfs and overlayfs: the agent reads zero bytes from
//! its own descriptor on the export, and the program records the key of that read.

use std::fs::File;

use aya::Pod;
use aya::maps::{Array, HashMap, MapData};

use crate::sensors::ebpf::{self, Attach, Attached, EbpfError};

/// The program and the tracepoint it attaches to.
const PROGRAMS: &[(&str, Attach)] = &[("sys_exit", Attach::BtfTracePoint("sys_exit"))];

/// Readers (process and export) counted at once at most. The counter forgets the least recently
/// used first: readers long reported (whose counts are also removed as they are reported) or
/// long idle; one forgotten and then reported says its bytes are unknown, or counts only what it
/// read afterwards.
const READERS: u32 = 16_384;

/// A file as the programs key it, with the reading process (0 in `watched`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    ino: u64,
    dev: u32,
    tgid: u32,
}

// SAFETY: `Key` is `repr(C)` with fields of 8, 4 and 4 bytes, so it has no padding, and any bit
// pattern is a valid value; it is the C program's `struct read_key`.
#[allow(unsafe_code)]
unsafe impl Pod for Key {}

/// A reader's count (`struct read_count`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    bytes: u64,
    mapped: u64,
}

// SAFETY: two u64 fields, `repr(C)`: no padding, any bit pattern valid.
#[allow(unsafe_code)]
unsafe impl Pod for Count {}

/// What a reader's count says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bytes {
    /// The bytes read through the paths the programs follow.
    Read(u64),
    /// Not known: the reader mapped the file (its page faults are not counted), or it read
    /// through a path the programs do not follow, or there was no room to count it.
    Unknown,
}

impl Bytes {
    pub fn known(self) -> Option<u64> {
        match self {
            Bytes::Read(bytes) => Some(bytes),
            Bytes::Unknown => None,
        }
    }
}

pub struct ReadBytes {
    /// Attached only while there is something to count: the program runs at every system
    /// call's exit on the host, so with no export watched it is detached and costs nothing.
    attached: Attached,
    /// Why attaching the program failed, not reported yet.
    failure: Option<String>,
    watched: HashMap<MapData, Key, u8>,
    counts: HashMap<MapData, Key, Count>,
    agent: Array<MapData, u64>,
    learned: Array<MapData, Key>,
    lost: Array<MapData, u64>,
    lost_seen: u64,
}

/// Loads the programs, with room for `max` watched exports; the error says why bytes read are
/// not known.
pub fn open(max: usize) -> Result<ReadBytes, EbpfError> {
    // The program knows x86_64's system call numbers and registers only: elsewhere it would
    // count the wrong calls, so it is not loaded at all.
    if !cfg!(target_arch = "x86_64") {
        return Err(EbpfError::Loader {
            message: "the byte counter knows x86_64's system calls only".into(),
        });
    }
    let watched_max = u32::try_from(max.max(1)).unwrap_or(u32::MAX);
    let (attached, maps) = ebpf::load_maps(
        ebpf::READS_OBJECT,
        PROGRAMS,
        &[("watched", watched_max), ("read_bytes", READERS)],
        &["watched", "read_bytes", "agent", "learned", "lost"],
    )?;
    let mut maps = maps.into_iter();
    let mut next = |name: &'static str| maps.next().ok_or(EbpfError::MissingMap { name });
    let map_error = |name: &'static str| move |source| EbpfError::Map { name, source };
    let watched = HashMap::try_from(next("watched")?).map_err(map_error("watched"))?;
    let counts = HashMap::try_from(next("read_bytes")?).map_err(map_error("read_bytes"))?;
    let agent = Array::try_from(next("agent")?).map_err(map_error("agent"))?;
    let learned = Array::try_from(next("learned")?).map_err(map_error("learned"))?;
    let lost = Array::try_from(next("lost")?).map_err(map_error("lost"))?;
    let mut attached = attached;
    // Nothing is watched yet: the program waits, loaded, for the first export.
    attached.detach();
    Ok(ReadBytes {
        attached,
        failure: None,
        watched,
        counts,
        agent,
        learned,
        lost,
        lost_seen: 0,
    })
}

impl ReadBytes {
    /// Starts counting reads of the file `file` is open on, attaching the program if it rests;
    /// returns the file's key, or `None` when the kernel did not say it (the file cannot be
    /// read, the map is full, or the program could not be attached: see
    /// [`ReadBytes::take_failure`]).
    pub fn watch(&mut self, file: &File) -> Option<Key> {
        if let Err(error) = self.attached.attach() {
            self.failure = Some(format!(
                "cannot attach the eBPF byte counter: {error}; reads of this export have no bytes_read"
            ));
            return None;
        }
        let thread = (u64::from(std::process::id()) << 32) | u64::from(gettid());
        self.agent.set(0, thread, 0).ok()?;
        let blank = Key {
            ino: 0,
            dev: 0,
            tgid: 0,
        };
        self.learned.set(0, blank, 0).ok()?;
        // pread(2) of zero bytes returns at once: nothing is read, no access is reported to
        // fanotify, and the program records the file's key.
        let _ = std::os::unix::fs::FileExt::read_at(file, &mut [], 0);
        let _ = self.agent.set(0, 0, 0);
        let key = self.learned.get(&0, 0).ok()?;
        if key == blank {
            return None;
        }
        self.watched.insert(key, 1, 0).ok()?;
        Some(key)
    }

    /// Stops counting reads of the file with this key. Its readers' counts stay for those
    /// still to be reported at their close, and are forgotten then or as the least recently
    /// used.
    pub fn unwatch(&mut self, key: Key) {
        let _ = self.watched.remove(&key);
    }

    /// Whether the program runs now (see [`ReadBytes::watch`] and [`ReadBytes::rest`]).
    pub fn is_attached(&self) -> bool {
        self.attached.is_attached()
    }

    /// Detaches the program: nothing is watched and no reader waits for its count, so the host's
    /// system calls stop paying for it. The next [`ReadBytes::watch`] attaches it again.
    pub fn rest(&mut self) {
        self.attached.detach();
    }

    /// Why the program could not be attached, once.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// What `pid` read of the file with this key so far.
    pub fn read_by(&self, key: Key, pid: u32) -> Bytes {
        let reader = Key { tgid: pid, ..key };
        match self.counts.get(&reader, 0) {
            Ok(count) if count.mapped == 0 => Bytes::Read(count.bytes),
            _ => Bytes::Unknown,
        }
    }

    /// Forgets `pid`'s count of the file with this key, once its total is reported.
    pub fn forget(&mut self, key: Key, pid: u32) {
        let _ = self.counts.remove(&Key { tgid: pid, ..key });
    }

    /// Readers the programs had no room to count since the last call.
    pub fn new_losses(&mut self) -> u64 {
        let now = self.lost.get(&0, 0).unwrap_or(self.lost_seen);
        let grown = now.saturating_sub(self.lost_seen);
        self.lost_seen = now;
        grown
    }
}

fn gettid() -> u32 {
    u32::try_from(nix::unistd::gettid().as_raw()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// How many links the kernel holds for the counter's program.
    fn links(bytes: &ReadBytes) -> usize {
        let ids = bytes.attached.program_ids();
        assert_eq!(ids.len(), 1, "one program");
        aya::programs::loaded_links()
            .filter_map(Result::ok)
            .filter(|link| ids.contains(&link.prog_id))
            .count()
    }

    fn read_all(path: &std::path::Path) -> usize {
        let mut data = Vec::new();
        File::open(path).unwrap().read_to_end(&mut data).unwrap()
    }

    /// The program runs at every system call's exit on the host, so it is attached only while
    /// there is something to count: loaded but resting at first, attached by the first watch,
    /// counting reads, and detached again at rest, after which reads cost nothing and count
    /// nothing, until the next watch.
    #[test]
    fn the_counter_runs_only_while_there_is_something_to_count() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let mut bytes = open(16).expect("the counter loads");
        assert!(!bytes.is_attached());
        assert_eq!(links(&bytes), 0, "attached before anything is watched");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        std::fs::write(&path, vec![b'x'; 100_000]).unwrap();
        let file = File::open(&path).unwrap();
        let key = bytes.watch(&file).expect("the kernel says the file's key");
        assert!(bytes.is_attached());
        assert_eq!(links(&bytes), 1);
        assert_eq!(read_all(&path), 100_000);
        let me = std::process::id();
        assert_eq!(bytes.read_by(key, me), Bytes::Read(100_000));

        bytes.rest();
        assert_eq!(links(&bytes), 0, "still attached at rest");
        assert_eq!(read_all(&path), 100_000);
        assert_eq!(
            bytes.read_by(key, me),
            Bytes::Read(100_000),
            "counted at rest"
        );

        assert_eq!(bytes.watch(&file), Some(key), "the same file, the same key");
        assert_eq!(links(&bytes), 1);
        assert_eq!(read_all(&path), 100_000);
        assert_eq!(bytes.read_by(key, me), Bytes::Read(200_000));
        assert!(bytes.take_failure().is_none());
    }
}
