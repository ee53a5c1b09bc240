//! The eBPF sensor's shared half: loading the programs in `bpf/` against the running kernel's BTF,
//! reading their ring buffer, and counting what the kernel could not hand over. The process
//! sensor ([`crate::sensors::process`]) and the network sensor ([`crate::sensors::net`]) each load
//! their own object and decode their own records ([`records`]); the file sensor's byte counter
//! (`reads.bpf.c`) keeps its counts in maps the sensor reads itself ([`load_maps`]).
//!
//! The programs are C, compiled by clang into the objects committed beside their source
//! (`bpf/build.sh`; a test proves the objects are what the source compiles to), and embedded in the
//! agent, so building the agent needs no clang. They attach as raw tracepoints, which need neither
//! tracefs nor fentry support, and read kernel structs through CO-RE relocations that aya applies
//! from `/sys/kernel/btf/vmlinux`. aya's API is safe: ring buffer records are parsed from bytes.
//! The loading happens in a short-lived child process ([`loader`]), which hands the agent only
//! descriptors: the memory the load takes is the child's.
//!
//! Both sensors read their ring buffer with one loop ([`Loaded::read_until_stopped`]) that sleeps,
//! with no timeout, until records arrive, the sensor stops, or its [`Reader`] has something due.

mod loader;
pub mod records;
mod ring;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use aya::maps::{Array, Map, MapData};
use aya::programs::{BtfTracePoint, RawTracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::time::Instant;

use self::ring::Ring;
use super::Stop;

/// The process sensor's programs (`bpf/process.bpf.c`).
pub static PROCESS_OBJECT: &[u8] = aya::include_bytes_aligned!("bpf/process.bpf.o");
/// The network sensor's program (`bpf/network.bpf.c`).
pub static NETWORK_OBJECT: &[u8] = aya::include_bytes_aligned!("bpf/network.bpf.o");
/// The file sensor's byte counter for reads of exports (`bpf/reads.bpf.c`).
pub static READS_OBJECT: &[u8] = aya::include_bytes_aligned!("bpf/reads.bpf.o");

/// Why the programs could not run; the sensor falls back to its older source and says this.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("not root")]
    NotRoot,
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux): {source}")]
    NoBtf { source: aya::BtfError },
    #[error("cannot load the BPF object: {source}")]
    Load { source: aya::EbpfError },
    #[error("the object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("the kernel refused program {name}: {detail}")]
    Program { name: &'static str, detail: String },
    #[error("cannot use map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("cannot map or watch the ring buffer: {source}")]
    Fd { source: io::Error },
    /// The load ran in a child process, which said this (or of which this is said).
    #[error("{message}")]
    Loader { message: String },
}

/// Loaded and attached programs with their ring buffer and loss counters. The programs stay
/// attached as long as this lives.
pub struct Loaded {
    /// The links that keep the programs attached: closing them detaches the programs.
    _links: Vec<OwnedFd>,
    ring: Ring,
    /// The ring buffer's descriptor, to wait on it.
    ring_fd: OwnedFd,
    lost: Array<MapData, u64>,
    /// What each loss counter said when last read.
    lost_seen: Vec<u64>,
}

/// How long the loading child may take: the verifier takes well under a second for these
/// programs, and a child that hangs must not hold the sensor's start for long.
const LOADER_PATIENCE: Duration = Duration::from_secs(30);

/// Where a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// The raw tracepoint of this name: arguments are read through helper calls.
    RawTracePoint(&'static str),
    /// The tracepoint of this name, typed by the kernel's BTF (`tp_btf`): the program may read
    /// its arguments and the current task directly, which costs less per call.
    BtfTracePoint(&'static str),
}

/// Programs loaded and attached whose maps their sensor reads itself, without a ring buffer.
/// The programs stay loaded as long as this lives, and attached until [`Attached::detach`].
pub struct Attached {
    /// The links that keep the programs attached: closing them detaches the programs.
    links: Vec<OwnedFd>,
    /// The loaded programs, with where each attaches, to attach them again.
    programs: Vec<(OwnedFd, Attach)>,
}

impl Attached {
    pub fn is_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Detaches the programs: they stay loaded with their maps, and cost the kernel nothing
    /// until attached again.
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// The kernel's ids of the programs, from their descriptors.
    #[cfg(test)]
    pub fn program_ids(&self) -> Vec<u32> {
        self.programs
            .iter()
            .filter_map(|(program, _)| {
                let info =
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", program.as_raw_fd()))
                        .ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("prog_id:"))?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Attaches the programs again, if they are not.
    pub fn attach(&mut self) -> io::Result<()> {
        if self.is_attached() {
            return Ok(());
        }
        let mut links = Vec::with_capacity(self.programs.len());
        for (program, attach) in &self.programs {
            let name = match attach {
                Attach::RawTracePoint(name) => {
                    Some(std::ffi::CString::new(*name).map_err(io::Error::other)?)
                }
                // The kernel knows where a BTF tracepoint's program attaches.
                Attach::BtfTracePoint(_) => None,
            };
            links.push(loader::raw_tracepoint_open(
                program.as_fd(),
                name.as_deref(),
            )?);
        }
        self.links = links;
        Ok(())
    }
}

/// Loads `object` with the maps in `sizes` resized, attaches each `(program, attach)` pair and
/// hands back the maps named in `maps`, in that order. The load runs in a child process
/// ([`loader`]): the agent only receives the descriptors.
pub fn load_maps(
    object: &'static [u8],
    programs: &[(&'static str, Attach)],
    sizes: &[(&'static str, u32)],
    maps: &[&'static str],
) -> Result<(Attached, Vec<Map>), EbpfError> {
    let handed = load_in_child(object, programs, sizes, maps)?;
    let maps = maps
        .iter()
        .zip(handed.maps)
        .map(|(&name, fd)| typed_map(name, fd))
        .collect::<Result<Vec<_>, _>>()?;
    let programs = handed
        .programs
        .into_iter()
        .zip(programs.iter().map(|&(_, attach)| attach))
        .collect();
    let links = handed.links;
    Ok((Attached { links, programs }, maps))
}

/// Loads `object` with a ring buffer of `ring_bytes` and attaches each `(program, raw tracepoint)`
/// pair, in a child process ([`loader`]): the agent only receives the descriptors.
pub fn load(
    object: &'static [u8],
    programs: &[(&'static str, &'static str)],
    ring_bytes: u32,
) -> Result<Loaded, EbpfError> {
    let programs: Vec<(&'static str, Attach)> = programs
        .iter()
        .map(|&(name, tracepoint)| (name, Attach::RawTracePoint(tracepoint)))
        .collect();
    let handed = load_in_child(
        object,
        &programs,
        &[("events", ring_bytes)],
        &["events", "lost"],
    )?;
    let links = handed.links;
    let [ring_fd, lost]: [OwnedFd; 2] = handed
        .maps
        .try_into()
        .map_err(|_| EbpfError::MissingMap { name: "events" })?;
    let ring = Ring::new(ring_fd.as_fd(), ring_bytes as usize)
        .map_err(|source| EbpfError::Fd { source })?;
    let lost: Array<MapData, u64> =
        Array::try_from(typed_map("lost", lost)?).map_err(|source| EbpfError::Map {
            name: "lost",
            source,
        })?;
    let lost_seen = vec![0; lost.len() as usize];
    Ok(Loaded {
        _links: links,
        ring,
        ring_fd,
        lost,
        lost_seen,
    })
}

/// Runs [`load_attached`] in a child process; hands back the descriptors of the maps named in
/// `maps`, in that order, of the programs, in their order, and of the links that keep the
/// programs attached.
fn load_in_child(
    object: &'static [u8],
    programs: &[(&'static str, Attach)],
    sizes: &[(&'static str, u32)],
    maps: &[&'static str],
) -> Result<loader::Handed, EbpfError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(EbpfError::NotRoot);
    }
    let handed = loader::in_child(
        || {
            let ebpf = load_attached(object, programs, sizes).map_err(|e| e.to_string())?;
            let fds = maps
                .iter()
                .map(|&name| {
                    ebpf.map(name)
                        .map(|map| map_data(map).fd().as_fd().as_raw_fd())
                        .ok_or_else(|| EbpfError::MissingMap { name }.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let loaded = programs
                .iter()
                .map(|&(name, _)| {
                    ebpf.program(name)
                        .and_then(|program| program.fd().ok())
                        .map(|fd| fd.as_fd().as_raw_fd())
                        .ok_or_else(|| EbpfError::MissingProgram { name }.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            // The child exits without detaching: its descriptors close with it, once the
            // agent holds its own.
            std::mem::forget(ebpf);
            Ok((fds, loaded))
        },
        LOADER_PATIENCE,
    )
    .map_err(|message| EbpfError::Loader { message })?;
    // Every program attaches with one link. Fewer (the child could not list its descriptors in
    // /proc) would leave the programs detached the moment the child exits: a sensor that looks
    // started and sees nothing, which must fail instead, so the sensor falls back and says why.
    if handed.maps.len() != maps.len()
        || handed.programs.len() != programs.len()
        || handed.links.len() != programs.len()
    {
        return Err(EbpfError::Loader {
            message: format!(
                "the loader handed back {} maps of {}, {} programs of {} and {} links of {}",
                handed.maps.len(),
                maps.len(),
                handed.programs.len(),
                programs.len(),
                handed.links.len(),
                programs.len()
            ),
        });
    }
    Ok(handed)
}

/// A map handed back by the loader, as aya's kind for its type (the kinds these programs use).
fn typed_map(name: &'static str, fd: OwnedFd) -> Result<Map, EbpfError> {
    use aya::maps::MapType;
    let data = MapData::from_fd(fd).map_err(|source| EbpfError::Map { name, source })?;
    let kind = data
        .info()
        .and_then(|info| info.map_type())
        .map_err(|source| EbpfError::Map { name, source })?;
    Ok(match kind {
        MapType::Array => Map::Array(data),
        MapType::Hash => Map::HashMap(data),
        MapType::LruHash => Map::LruHashMap(data),
        MapType::RingBuf => Map::RingBuf(data),
        MapType::PerCpuArray => Map::PerCpuArray(data),
        _ => Map::Unsupported(data),
    })
}

/// The map's data, whatever its kind.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(data)
        | Map::BloomFilter(data)
        | Map::CpuMap(data)
        | Map::DevMap(data)
        | Map::DevMapHash(data)
        | Map::HashMap(data)
        | Map::LpmTrie(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::PerfEventArray(data)
        | Map::ProgramArray(data)
        | Map::Queue(data)
        | Map::RingBuf(data)
        | Map::SockHash(data)
        | Map::SockMap(data)
        | Map::Stack(data)
        | Map::StackTraceMap(data)
        | Map::XskMap(data)
        | Map::Unsupported(data) => data,
    }
}

/// Loads `object` against the kernel's BTF, with the maps in `sizes` resized, and attaches each
/// program (in the loading child).
fn load_attached(
    object: &[u8],
    programs: &[(&'static str, Attach)],
    sizes: &[(&'static str, u32)],
) -> Result<Ebpf, EbpfError> {
    let btf = Btf::from_sys_fs().map_err(|source| EbpfError::NoBtf { source })?;
    let mut ebpf = {
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf));
        for &(map, size) in sizes {
            loader.set_max_entries(map, size);
        }
        loader
            .load(object)
            .map_err(|source| EbpfError::Load { source })?
    };
    for &(name, attach) in programs {
        let program = ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram { name })?;
        let refused = |error: &aya::programs::ProgramError| EbpfError::Program {
            name,
            detail: program_error(error),
        };
        match attach {
            Attach::RawTracePoint(tracepoint) => {
                let program: &mut RawTracePoint = program.try_into().map_err(|e| refused(&e))?;
                retry_load(|| program.load()).map_err(|e| refused(&e))?;
                program.attach(tracepoint).map_err(|e| refused(&e))?;
            }
            Attach::BtfTracePoint(tracepoint) => {
                let program: &mut BtfTracePoint = program.try_into().map_err(|e| refused(&e))?;
                retry_load(|| program.load(tracepoint, &btf)).map_err(|e| refused(&e))?;
                program.attach().map_err(|e| refused(&e))?;
            }
        }
    }
    Ok(ebpf)
}

/// Runs a program's `load`. The verifier gives up with EAGAIN when a signal arrives for this
/// thread while it works: signals wait while it does, and an interrupted load is tried again as
/// libbpf does. (The loading child holds its signals anyway; this keeps the load right wherever
/// it runs.)
fn retry_load(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    with_signals_held(|| {
        loop {
            match load() {
                Err(error) if tries < 5 && interrupted(&error) => tries += 1,
                done => return done,
            }
        }
    })
}

/// Runs `work` with every signal blocked in this thread; the process's signals go to its other
/// threads meanwhile, and this thread's own are delivered once they are unblocked.
fn with_signals_held<T>(work: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut before = SigSet::empty();
    let held = pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut before),
    );
    let result = work();
    if held.is_ok() {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
    }
    result
}

fn interrupted(error: &aya::programs::ProgramError) -> bool {
    matches!(error, aya::programs::ProgramError::LoadError { io_error, .. }
        if io_error.raw_os_error() == Some(nix::errno::Errno::EAGAIN as i32))
}

/// The verifier's log is long; its last lines say why a program was refused.
fn program_error(error: &aya::programs::ProgramError) -> String {
    match error {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{io_error}: {}", tail.join(" / "))
        }
        other => other.to_string(),
    }
}

/// How long after records arrived the loss counters are read, so that what the kernel drops in
/// a burst is summed into one report.
const LOSSES_AFTER: Duration = Duration::from_secs(1);

/// The spool, or the thread between it and the reader, has gone: nobody listens any more.
#[derive(Debug)]
pub struct Gone;

/// What a sensor does with its ring buffer's records; [`Loaded::read_until_stopped`] feeds it.
pub trait Reader {
    /// Handles one record as the ring buffer holds it.
    fn record(&mut self, bytes: &[u8]) -> Result<(), Gone>;
    /// Does what has fallen due by `now` and says when something next will (`None`: nothing
    /// until more records arrive).
    fn due(&mut self, now: Instant) -> Result<Option<Instant>, Gone>;
    /// Reports what the kernel could not hand over: how much each of the programs' loss counters
    /// grew, at least one of them.
    fn lost(&mut self, grown: &[u64]) -> Result<(), Gone>;
    /// Reports that the ring buffer could not be waited on; reading ends after this.
    fn failed(&mut self, error: io::Error);
}

impl Loaded {
    /// Hands `reader` every record until `stop` is set, its listener is gone or the ring buffer
    /// cannot be waited on. Between rounds the thread sleeps with no timeout unless the reader
    /// has something due or losses are to be read: the programs count a loss only when the ring
    /// is full, which leaves records to read and so wakes the thread.
    pub fn read_until_stopped(&mut self, reader: &mut impl Reader, stop: &Stop) {
        // The reader's duties are asked for once at the start, before any record.
        let mut due = Some(Instant::now());
        let mut losses_due: Option<Instant> = None;
        loop {
            let wake = match (due, losses_due) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
            let timeout = wake.map(|at: Instant| at.saturating_duration_since(Instant::now()));
            if let Err(error) = stop.wait_readable(&[self.ring_fd.as_fd()], timeout) {
                reader.failed(error);
                return;
            }
            if stop.is_set() {
                return;
            }
            let mut gone = false;
            let arrived = self.ring.drain(|record| {
                gone = reader.record(record).is_err();
                !gone
            }) > 0;
            if gone {
                return;
            }
            let now = Instant::now();
            if arrived && losses_due.is_none() {
                losses_due = Some(now + LOSSES_AFTER);
            }
            if losses_due.is_some_and(|at| at <= now) {
                losses_due = None;
                let grown = self.new_losses();
                if grown.iter().any(|&n| n > 0) && reader.lost(&grown).is_err() {
                    return;
                }
            }
            match reader.due(now) {
                Ok(next) => due = next,
                Err(Gone) => return,
            }
        }
    }

    /// Hands every record waiting in the ring buffer to `each`, without waiting; returns how many.
    #[cfg(test)]
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> usize {
        self.ring.drain(|record| {
            each(record);
            true
        })
    }

    /// How much each of the programs' loss counters grew since the last call.
    pub fn new_losses(&mut self) -> Vec<u64> {
        self.lost_seen
            .iter_mut()
            .enumerate()
            .map(|(index, seen)| {
                let now = self.lost.get(&(index as u32), 0).unwrap_or(*seen);
                let grown = now.saturating_sub(*seen);
                *seen = now;
                grown
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    use super::*;
    use crate::sensors::ebpf::records::ConnRecord;

    /// What the loop handed the test's reader.
    enum Seen {
        Ours,
        Lost(Vec<u64>),
        Ended,
    }

    struct Probe {
        port: u16,
        seen: mpsc::SyncSender<Seen>,
    }

    impl Reader for Probe {
        fn record(&mut self, bytes: &[u8]) -> Result<(), Gone> {
            if ConnRecord::decode(bytes).is_some_and(|r| r.remote.1 == self.port) {
                self.seen.send(Seen::Ours).map_err(|_| Gone)?;
            }
            Ok(())
        }

        fn due(&mut self, _now: Instant) -> Result<Option<Instant>, Gone> {
            Ok(None)
        }

        fn lost(&mut self, grown: &[u64]) -> Result<(), Gone> {
            self.seen.send(Seen::Lost(grown.to_vec())).map_err(|_| Gone)
        }

        fn failed(&mut self, error: io::Error) {
            panic!("the ring buffer could not be waited on: {error}");
        }
    }

    /// A ring buffer of one page that nobody read while 200 connections opened has lost records;
    /// the loop hands over what it holds, then reports the loss with the kernel's count (a
    /// reader that has nothing due sleeps until then with no timeout), and ends at the stop.
    #[test]
    fn the_reader_loop_reports_a_full_rings_losses_with_the_kernels_count_and_ends_at_the_stop() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let programs = [("inet_sock_set_state", "inet_sock_set_state")];
        let mut loaded = load(NETWORK_OBJECT, &programs, 4096).expect("the program loads");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Each connection's handshake is a 112-byte record in the ring: 200 are five pages.
        let connections = 200;
        let mut open = Vec::new();
        for _ in 0..connections {
            let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            open.push((client, listener.accept().unwrap().0));
        }

        let stop = Stop::default();
        let (seen, heard) = mpsc::sync_channel(1024);
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut probe = Probe {
                    port,
                    seen: seen.clone(),
                };
                loaded.read_until_stopped(&mut probe, &stop);
                let _ = seen.send(Seen::Ended);
            })
        };
        let patience = Duration::from_secs(20);
        let mut ours = 0;
        let lost = loop {
            match heard.recv_timeout(patience).expect("no loss reported") {
                Seen::Ours => ours += 1,
                Seen::Lost(grown) => break grown,
                Seen::Ended => panic!("the loop ended before the stop"),
            }
        };
        assert!(
            ours < connections,
            "all {ours} records fit: the ring did not fill"
        );
        assert!(lost[0] > 0, "{lost:?}");
        // Every handshake is a record or counted lost (the count also holds other connections).
        assert!(
            ours + lost[0] >= connections,
            "{ours} records, {lost:?} lost"
        );
        stop.set();
        loop {
            match heard
                .recv_timeout(patience)
                .expect("the loop did not end at the stop")
            {
                Seen::Ended => break,
                _ => continue,
            }
        }
        reader.join().unwrap();
        drop(open);
    }

    /// The loading child's links are the agent's alone once it is gone: the programs stay
    /// attached while [`Loaded`] lives and are detached when it is dropped, nothing left behind.
    #[test]
    fn the_programs_stay_attached_while_loaded_lives_and_no_longer() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let programs = [("inet_sock_set_state", "inet_sock_set_state")];
        let loaded = load(NETWORK_OBJECT, &programs, 4096).expect("the program loads");
        let ids: Vec<u32> = loaded
            ._links
            .iter()
            .map(|fd| {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                    .unwrap();
                info.lines()
                    .find_map(|l| l.strip_prefix("link_id:"))
                    .expect("a BPF link")
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 1, "one link for one program");
        let attached = || -> Vec<u32> {
            aya::programs::loaded_links()
                .filter_map(Result::ok)
                .map(|info| info.id)
                .filter(|id| ids.contains(id))
                .collect()
        };
        assert_eq!(attached(), ids, "the child's link outlives the child");
        drop(loaded);
        assert!(attached().is_empty(), "the link is gone with Loaded");
    }

    /// The committed objects are what `bpf/build.sh` makes of the committed source: rebuilt here
    /// with the pinned Debian compiler (scripts/test installs clang, llvm and libbpf-dev), they must
    /// be byte for byte the objects the agent embeds.
    #[test]
    fn objects_match_their_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("agent/sensors/ebpf/bpf");
        let out = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("bash")
            .arg(dir.join("build.sh"))
            .arg(out.path())
            .status()
            .expect("bash runs");
        assert!(
            status.success(),
            "bpf/build.sh failed: it needs clang, llvm and libbpf-dev (scripts/test installs them)"
        );
        for (name, embedded) in [
            ("process.bpf.o", super::PROCESS_OBJECT),
            ("network.bpf.o", super::NETWORK_OBJECT),
            ("reads.bpf.o", super::READS_OBJECT),
        ] {
            let built = std::fs::read(out.path().join(name)).unwrap();
            assert!(
                built == embedded,
                "{name} differs from what its source compiles to: run agent/sensors/ebpf/bpf/build.sh and commit the result"
            );
        }
    }
}
