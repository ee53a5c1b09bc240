//! The records the programs write into their ring buffers (`bpf/records.h`), decoded from bytes at
//! the offsets that header fixes. A record too short for what it claims decodes to `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const HEADER_LEN: usize = 56;
const CONN_RECORD_LEN: usize = 104;

const RECORD_EXEC: u32 = 1;
const RECORD_FORK: u32 = 2;
const RECORD_EXIT: u32 = 3;
const RECORD_OPEN: u32 = 1;
const RECORD_CLOSE: u32 = 2;

const FLAG_EXE_TRUNCATED: u8 = 1;
const FLAG_CWD_TRUNCATED: u8 = 2;
const FLAG_ARGS_TRUNCATED: u8 = 4;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The kernel's fixed-size command name, up to its NUL.
fn comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A path the program cut at the top because it was too deep or too long.
fn path(bytes: &[u8], truncated: bool) -> String {
    let text = String::from_utf8_lossy(bytes);
    if truncated {
        format!("...{text}")
    } else {
        text.into_owned()
    }
}

/// Who a process record is about, as the kernel saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The thread group id: what user space calls the pid.
    pub pid: u32,
    pub ppid: u32,
    /// The real uid.
    pub uid: u32,
    /// `start_boottime`: nanoseconds after boot, what `/proc`'s start time is counted from.
    pub started_ns: u64,
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessRecord {
    /// A program replaced the process's image: read at exec time, before the process can go.
    Exec {
        task: Task,
        exe: String,
        cwd: String,
        /// The arguments as the kernel holds them, NUL-separated.
        args: Vec<u8>,
        args_truncated: bool,
    },
    /// A new process (not a thread); `task.ppid` is its parent.
    Fork { task: Task },
    /// The process (its thread group leader) exited; `status` is the wait status.
    Exit { task: Task, status: u32 },
}

impl ProcessRecord {
    pub fn decode(bytes: &[u8]) -> Option<ProcessRecord> {
        let task = Task {
            pid: u32_at(bytes, 4)?,
            ppid: u32_at(bytes, 8)?,
            uid: u32_at(bytes, 12)?,
            started_ns: u64_at(bytes, 16)?,
            comm: comm(bytes.get(36..52)?),
        };
        match u32_at(bytes, 0)? {
            RECORD_EXEC => {
                let exe_len = usize::from(u16_at(bytes, 28)?);
                let cwd_len = usize::from(u16_at(bytes, 30)?);
                let args_len = usize::from(u16_at(bytes, 32)?);
                let flags = *bytes.get(34)?;
                let exe_at = HEADER_LEN;
                let cwd_at = exe_at + exe_len;
                let args_at = cwd_at + cwd_len;
                Some(ProcessRecord::Exec {
                    task,
                    exe: path(bytes.get(exe_at..cwd_at)?, flags & FLAG_EXE_TRUNCATED != 0),
                    cwd: path(bytes.get(cwd_at..args_at)?, flags & FLAG_CWD_TRUNCATED != 0),
                    args: bytes.get(args_at..args_at + args_len)?.to_vec(),
                    args_truncated: flags & FLAG_ARGS_TRUNCATED != 0,
                })
            }
            RECORD_FORK => Some(ProcessRecord::Fork { task }),
            RECORD_EXIT => Some(ProcessRecord::Exit {
                task,
                status: u32_at(bytes, 24)?,
            }),
            _ => None,
        }
    }
}

/// A TCP connection this host opened, at its handshake or at its close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRecord {
    /// Open (handshake done) or close.
    pub closed: bool,
    /// The process that called connect().
    pub pid: u32,
    pub uid: u32,
    pub started_ns: u64,
    pub comm: String,
    /// The socket's kernel address: one connection from handshake to close.
    pub sock: u64,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// Close records: bytes the peer acknowledged, and bytes received.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Close records: whether the handshake completed (the state it closed from was not SYN_SENT).
    pub established: bool,
}

const TCP_SYN_SENT: u16 = 2;

fn address(family: u16, raw: &[u8]) -> Option<IpAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw.get(..4)?).ok()?)),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(..16)?).ok()?)),
        _ => return None,
    };
    Some(ip.to_canonical())
}

impl ConnRecord {
    pub fn decode(bytes: &[u8]) -> Option<ConnRecord> {
        if bytes.len() < CONN_RECORD_LEN {
            return None;
        }
        let closed = match u32_at(bytes, 0)? {
            RECORD_OPEN => false,
            RECORD_CLOSE => true,
            _ => return None,
        };
        let family = u16_at(bytes, 12)?;
        Some(ConnRecord {
            closed,
            pid: u32_at(bytes, 4)?,
            uid: u32_at(bytes, 8)?,
            started_ns: u64_at(bytes, 16)?,
            comm: comm(bytes.get(84..100)?),
            sock: u64_at(bytes, 24)?,
            local: (address(family, bytes.get(48..64)?)?, u16_at(bytes, 14)?),
            remote: (address(family, bytes.get(64..80)?)?, u16_at(bytes, 80)?),
            bytes_sent: u64_at(bytes, 32)?,
            bytes_received: u64_at(bytes, 40)?,
            established: !closed || u16_at(bytes, 82)? != TCP_SYN_SENT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32, pid: u32) -> Vec<u8> {
        let mut record = vec![0u8; HEADER_LEN];
        record[0..4].copy_from_slice(&kind.to_ne_bytes());
        record[4..8].copy_from_slice(&pid.to_ne_bytes());
        record[8..12].copy_from_slice(&1u32.to_ne_bytes());
        record[12..16].copy_from_slice(&1000u32.to_ne_bytes());
        record[16..24].copy_from_slice(&5_000_000_000u64.to_ne_bytes());
        record[36..40].copy_from_slice(b"true");
        record
    }

    #[test]
    fn an_exec_record_carries_its_paths_and_arguments() {
        let mut record = header(RECORD_EXEC, 42);
        let (exe, cwd, args) = (b"/usr/bin/true", b"/tmp", b"/bin/true\0x\0");
        record[28..30].copy_from_slice(&(exe.len() as u16).to_ne_bytes());
        record[30..32].copy_from_slice(&(cwd.len() as u16).to_ne_bytes());
        record[32..34].copy_from_slice(&(args.len() as u16).to_ne_bytes());
        record[34] = FLAG_ARGS_TRUNCATED;
        record.extend_from_slice(exe);
        record.extend_from_slice(cwd);
        record.extend_from_slice(args);
        let task = Task {
            pid: 42,
            ppid: 1,
            uid: 1000,
            started_ns: 5_000_000_000,
            comm: "true".into(),
        };
        assert_eq!(
            ProcessRecord::decode(&record),
            Some(ProcessRecord::Exec {
                task,
                exe: "/usr/bin/true".into(),
                cwd: "/tmp".into(),
                args: args.to_vec(),
                args_truncated: true,
            })
        );
        // A record shorter than its lengths claim is refused, not read past.
        assert_eq!(ProcessRecord::decode(&record[..record.len() - 1]), None);
        record[34] = FLAG_EXE_TRUNCATED;
        let Some(ProcessRecord::Exec { exe, .. }) = ProcessRecord::decode(&record) else {
            panic!("an exec record");
        };
        assert_eq!(exe, ".../usr/bin/true");
    }

    #[test]
    fn exit_and_fork_records_and_unknown_kinds() {
        let mut exit = header(RECORD_EXIT, 7);
        exit[24..28].copy_from_slice(&(3u32 << 8).to_ne_bytes());
        assert!(matches!(
            ProcessRecord::decode(&exit),
            Some(ProcessRecord::Exit { status, task }) if status == 3 << 8 && task.pid == 7
        ));
        assert!(matches!(
            ProcessRecord::decode(&header(RECORD_FORK, 8)),
            Some(ProcessRecord::Fork { .. })
        ));
        assert_eq!(ProcessRecord::decode(&header(99, 8)), None);
        assert_eq!(ProcessRecord::decode(&[1, 0, 0]), None);
    }

    #[test]
    fn a_close_record_carries_both_ends_and_bytes() {
        let mut record = vec![0u8; CONN_RECORD_LEN];
        record[0..4].copy_from_slice(&RECORD_CLOSE.to_ne_bytes());
        record[4..8].copy_from_slice(&99u32.to_ne_bytes());
        record[12..14].copy_from_slice(&AF_INET6.to_ne_bytes());
        record[14..16].copy_from_slice(&40000u16.to_ne_bytes());
        record[24..32].copy_from_slice(&0xffff_8880_0000_1000u64.to_ne_bytes());
        record[32..40].copy_from_slice(&1001u64.to_ne_bytes());
        record[40..48].copy_from_slice(&3u64.to_ne_bytes());
        // An IPv4-mapped address on an IPv6 socket reads as the IPv4 address.
        record[48..64].copy_from_slice(&"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        record[64..80].copy_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        record[80..82].copy_from_slice(&443u16.to_ne_bytes());
        record[82..84].copy_from_slice(&1u16.to_ne_bytes());
        record[84..88].copy_from_slice(b"curl");
        let conn = ConnRecord::decode(&record).unwrap();
        assert!(conn.closed && conn.established);
        assert_eq!(conn.local, ("127.0.0.1".parse().unwrap(), 40000));
        assert_eq!(conn.remote, ("::1".parse().unwrap(), 443));
        assert_eq!((conn.bytes_sent, conn.bytes_received), (1001, 3));
        assert_eq!(conn.comm, "curl");
        record[82..84].copy_from_slice(&TCP_SYN_SENT.to_ne_bytes());
        assert!(!ConnRecord::decode(&record).unwrap().established);
        assert_eq!(ConnRecord::decode(&record[..50]), None);
    }
}
