//! The kernel's BPF ring buffer, read through one mapping of its data pages.
//!
//! The kernel lets a reader map the data pages twice in a row, so that a record wrapping around
//! the end reads as one slice; libbpf and aya do that. The kernel maps every page of such a
//! mapping at once, so each data page then counts twice in the agent's resident memory (1.5 MiB
//! for the default rings, at idle as under load). Here the data is mapped once and the rare record
//! that wraps is copied out in its two parts.
//!
//! The layout, from the kernel (`kernel/bpf/ringbuf.c`): a page holding the consumer position,
//! the only page user space may write; then a page holding the producer position; then the data
//! pages. Each record starts with an 8-byte header, whose first 32 bits are its length with a
//! busy bit (still being written) and a discard bit (dropped by the program), padded to 8 bytes.
//! The kernel publishes the producer position and each header with release stores, so reading
//! them with acquire loads makes the record they cover visible; the consumer position is stored
//! back with release once a record is handled, which hands its space back to the kernel.

#![allow(unsafe_code)]

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;

/// One mapping, unmapped when dropped.
struct Mapping {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; `Ring` reads and writes it only through atomics and
// slices of records the kernel has finished writing, from whichever one thread owns the ring.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: ProtFlags, offset: usize) -> io::Result<Self> {
        let length = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("empty mapping"))?;
        let offset = i64::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a fresh shared mapping of the map's descriptor at an address the kernel picks;
        // nothing else in this process refers to it.
        let ptr = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, offset) }?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` with this length, and no reference into
        // it outlives the `Ring` that owns it.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// A ring buffer map's records, as they arrive.
pub struct Ring {
    /// The consumer position's page, read-write.
    consumer: Mapping,
    /// The producer position's page followed by the data pages, once, read-only.
    producer: Mapping,
    page: usize,
    size: usize,
    /// Where reading is: what the consumer position says once a record is handled.
    pos: usize,
    /// A record that wraps around the end, put together.
    wrapped: Vec<u8>,
}

impl Ring {
    /// Maps the ring buffer map `fd`, whose data area is `size` bytes (a power of two, a whole
    /// number of pages, as the kernel requires of a ring buffer's size).
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> io::Result<Self> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        if !size.is_power_of_two() || size % page != 0 {
            return Err(io::Error::other(format!(
                "a ring buffer of {size} bytes is not a power of two of whole pages"
            )));
        }
        let consumer = Mapping::new(fd, page, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + size, ProtFlags::PROT_READ, page)?;
        let mut ring = Ring {
            consumer,
            producer,
            page,
            size,
            pos: 0,
            wrapped: Vec::new(),
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the consumer page starts with the kernel's `unsigned long consumer_pos`,
        // page-aligned, and lives as long as `self`.
        unsafe { self.consumer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: as above, for the producer page and `producer_pos`.
        unsafe { self.producer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    /// The data area's base.
    fn data(&self) -> *const u8 {
        // SAFETY: the producer mapping is one page and then `size` bytes of data.
        unsafe { self.producer.ptr.cast::<u8>().as_ptr().add(self.page) }
    }

    /// Hands `each` every record the kernel has finished writing, oldest first, until there are
    /// none or `each` says to stop (returns false); returns how many it was handed. A record's
    /// space goes back to the kernel once `each` returns.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8]) -> bool) -> usize {
        let mask = self.size - 1;
        let mut handed = 0;
        let mut produced = self.producer_pos().load(Ordering::Acquire);
        loop {
            if self.pos == produced {
                // Records may have been committed meanwhile.
                produced = self.producer_pos().load(Ordering::Acquire);
                if self.pos == produced {
                    return handed;
                }
            }
            let offset = self.pos & mask;
            // SAFETY: headers are 8-byte aligned and never cross the end of the data area (its
            // size is a multiple of 8), so this is an aligned u32 inside the mapping.
            let header = unsafe { &*(self.data().add(offset) as *const AtomicU32) };
            let header = header.load(Ordering::Acquire);
            if header & BUSY != 0 {
                // The oldest record is still being written: the rest wait for it.
                return handed;
            }
            let len = (header & !(BUSY | DISCARD)) as usize;
            let mut go_on = true;
            if header & DISCARD == 0 && len <= self.size - HEADER {
                let start = (offset + HEADER) & mask;
                let first = len.min(self.size - start);
                // SAFETY: the record is committed (not busy) and lies between the consumer and
                // producer positions, which the kernel does not write until the consumer
                // position moves past it; `first` bytes from `start` and the rest from the base
                // are inside the data area.
                let record: &[u8] = unsafe {
                    let head = std::slice::from_raw_parts(self.data().add(start), first);
                    if first == len {
                        head
                    } else {
                        let tail = std::slice::from_raw_parts(self.data(), len - first);
                        self.wrapped.clear();
                        self.wrapped.extend_from_slice(head);
                        self.wrapped.extend_from_slice(tail);
                        &self.wrapped
                    }
                };
                handed += 1;
                go_on = each(record);
            }
            self.pos = self.pos.wrapping_add((len + HEADER).next_multiple_of(8));
            self.consumer_pos().store(self.pos, Ordering::Release);
            if !go_on {
                return handed;
            }
        }
    }
}

#[cfg(test)]
mod tests {

    /// The ring's mappings count each data page once in the agent's resident memory.
    #[test]
    fn the_data_pages_are_mapped_once() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let loaded = crate::sensors::ebpf::load(
            crate::sensors::ebpf::NETWORK_OBJECT,
            &[("inet_sock_set_state", "inet_sock_set_state")],
            64 * 1024,
        )
        .expect("the program loads");
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // This test's ring is the one mapping of its size plus a page; other tests' rings are
        // other sizes.
        let mut sizes = Vec::new();
        let mut in_map = false;
        for line in smaps.lines() {
            if line.contains("anon_inode:bpf-map") {
                in_map = true;
            } else if let Some(kib) = line.strip_prefix("Size:") {
                if in_map {
                    sizes.push(
                        kib.trim()
                            .trim_end_matches(" kB")
                            .trim()
                            .parse::<u64>()
                            .unwrap(),
                    );
                }
                in_map = false;
            }
        }
        assert!(sizes.contains(&(64 + 4)), "{sizes:?}");
        assert!(!sizes.contains(&(2 * 64 + 4)), "{sizes:?}");
        drop(loaded);
    }

    /// Records that wrap around the end of the data area come out whole: a one-page ring
    /// carries 120 connections' records (112 bytes each, so every 37th straddles the end), read
    /// in rounds, each decoding to the connection it describes, in order.
    #[test]
    fn records_that_wrap_around_the_end_come_out_whole() {
        use crate::sensors::ebpf::records::ConnRecord;
        use std::net::{TcpListener, TcpStream};

        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let mut loaded = crate::sensors::ebpf::load(
            crate::sensors::ebpf::NETWORK_OBJECT,
            &[("inet_sock_set_state", "inet_sock_set_state")],
            4096,
        )
        .expect("the program loads");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut ports = Vec::new();
        let mut open = Vec::new();
        for _round in 0..12 {
            // Ten connections at a time fit the ring whatever else the host does meanwhile.
            for _ in 0..10 {
                let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
                ports.push(client.local_addr().unwrap().port());
                open.push((client, listener.accept().unwrap().0));
            }
            loaded.drain(|record| {
                let record = ConnRecord::decode(record).expect("a whole record");
                if record.remote.1 == port && !record.closed {
                    assert_eq!(record.local.1, ports.remove(0), "records out of order");
                }
            });
        }
        assert!(ports.is_empty(), "records never read for ports {ports:?}");
    }
}
