//! Parsing what one read of the `names` group returns: event metadata and its file handle
//! records, from bytes, so a short or odd buffer ends the parse instead of reading past it.

use nix::libc;

pub(super) const FSID_LEN: usize = 8;
pub(super) const METADATA_LEN: usize = 24;

/// A file handle as an event reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Handle {
    pub(super) fsid: [u8; FSID_LEN],
    pub(super) handle_type: i32,
    pub(super) bytes: Vec<u8>,
}

/// One `names` event, parsed.
#[derive(Debug, Default, PartialEq)]
pub(super) struct NameEvent {
    pub(super) mask: u64,
    pub(super) pid: i32,
    /// The object itself (`FAN_REPORT_FID`).
    pub(super) object: Option<Handle>,
    /// The directory and entry name (`FAN_EVENT_INFO_TYPE_DFID_NAME`).
    pub(super) entry: Option<(Handle, Vec<u8>)>,
    /// For `FAN_RENAME`: where it was and where it is now.
    pub(super) old_entry: Option<(Handle, Vec<u8>)>,
    pub(super) new_entry: Option<(Handle, Vec<u8>)>,
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// One event of a group that reports descriptors (`writes`): its mask, the descriptor the kernel
/// opened for it (`FAN_NOFD`, -1, for an overflow) and the pid that acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FdEvent {
    pub(super) mask: u64,
    pub(super) fd: i32,
    pub(super) pid: i32,
}

/// Parses what one read of a group that reports descriptors returned, appending to `events` (a
/// list kept from read to read: see [`parse_names_into`]). Every descriptor the buffer holds is
/// in the list, so the caller can take ownership of each, whatever it then does with the event.
pub(super) fn parse_fds_into(buf: &[u8], events: &mut Vec<FdEvent>) {
    let mut offset = 0;
    while let (Some(event_len), Some(mask), Some(fd), Some(pid)) = (
        read_u32(buf, offset),
        read_u64(buf, offset + 8),
        read_i32(buf, offset + 16),
        read_i32(buf, offset + 20),
    ) {
        let event_len = event_len as usize;
        if event_len < METADATA_LEN || offset + event_len > buf.len() {
            break;
        }
        events.push(FdEvent { mask, fd, pid });
        offset += event_len;
    }
}

/// Parses what one read of a `FAN_REPORT_DFID_NAME | FAN_REPORT_FID` group returned: event
/// metadata, each followed by its information records. Parsed from bytes, so a short or odd
/// buffer ends the parse instead of reading past it.
pub(super) fn parse_names(buf: &[u8]) -> Vec<NameEvent> {
    let mut events = Vec::new();
    parse_names_into(buf, &mut events);
    events
}

/// [`parse_names`], appending to `events`: a list kept from read to read. A fresh list per read
/// (some 250 bytes an event) was a large allocation every read, and with it the C allocator's
/// consolidation of every small block freed since: 7% of the sensor thread in a burst.
pub(super) fn parse_names_into(buf: &[u8], events: &mut Vec<NameEvent>) {
    let mut offset = 0;
    while let (Some(event_len), Some(metadata_len)) =
        (read_u32(buf, offset), read_u16(buf, offset + 6))
    {
        let event_len = event_len as usize;
        let metadata_len = metadata_len as usize;
        if event_len < METADATA_LEN || metadata_len < METADATA_LEN || offset + event_len > buf.len()
        {
            break;
        }
        let event = &buf[offset..offset + event_len];
        let mut parsed = NameEvent {
            mask: read_u64(event, 8).unwrap_or(0),
            pid: read_i32(event, 20).unwrap_or(0),
            ..NameEvent::default()
        };
        let mut info = metadata_len;
        while let (Some(&info_type), Some(len)) = (event.get(info), read_u16(event, info + 2)) {
            let len = len as usize;
            if len < 4 || info + len > event.len() {
                break;
            }
            if let Some((handle, name)) = parse_handle_record(&event[info + 4..info + len]) {
                match info_type {
                    libc::FAN_EVENT_INFO_TYPE_FID => parsed.object = Some(handle),
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME => parsed.entry = Some((handle, name)),
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => {
                        parsed.old_entry = Some((handle, name))
                    }
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => {
                        parsed.new_entry = Some((handle, name))
                    }
                    libc::FAN_EVENT_INFO_TYPE_DFID => parsed.entry = Some((handle, Vec::new())),
                    _ => {}
                }
            }
            info += len;
        }
        events.push(parsed);
        offset += event_len;
    }
}

/// A record body after its header: fsid, `struct file_handle`, then for the name-carrying types
/// a NUL-terminated entry name.
fn parse_handle_record(body: &[u8]) -> Option<(Handle, Vec<u8>)> {
    let fsid: [u8; FSID_LEN] = body.get(..FSID_LEN)?.try_into().ok()?;
    let handle_bytes = read_u32(body, FSID_LEN)? as usize;
    let handle_type = read_i32(body, FSID_LEN + 4)?;
    let start = FSID_LEN + 8;
    let bytes = body.get(start..start + handle_bytes)?.to_vec();
    let rest = &body[start + handle_bytes..];
    let name = rest.split(|&b| b == 0).next().unwrap_or_default().to_vec();
    Some((
        Handle {
            fsid,
            handle_type,
            bytes,
        },
        name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(info_type: u8, fsid: [u8; 8], handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid);
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&1i32.to_ne_bytes());
        body.extend_from_slice(handle);
        if !name.is_empty() {
            body.extend_from_slice(name);
            body.push(0);
        }
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut rec = vec![info_type, 0];
        rec.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        rec.extend_from_slice(&body);
        rec
    }

    fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let info: Vec<u8> = records.concat();
        let mut buf = Vec::new();
        buf.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        buf.push(libc::FANOTIFY_METADATA_VERSION);
        buf.push(0);
        buf.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        buf.extend_from_slice(&mask.to_ne_bytes());
        buf.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        buf.extend_from_slice(&pid.to_ne_bytes());
        buf.extend_from_slice(&info);
        buf
    }

    /// A `writes` read: each event's mask, descriptor and pid, the overflow's `FAN_NOFD` too,
    /// appended to what the list held; a record cut short by the buffer's end ends the parse.
    #[test]
    fn parses_descriptor_events_up_to_a_cut_record() {
        let with_fd = |mask: u64, fd: i32, pid: i32| {
            let mut buf = event(mask, pid, &[]);
            buf[16..20].copy_from_slice(&fd.to_ne_bytes());
            buf
        };
        let mut buf = with_fd(libc::FAN_CLOSE_WRITE, 7, 42);
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        buf.extend(with_fd(libc::FAN_CLOSE_WRITE, 9, 43));
        buf.extend(&with_fd(libc::FAN_CLOSE_WRITE, 11, 44)[..20]);
        let kept = FdEvent {
            mask: 0,
            fd: 3,
            pid: 1,
        };
        let mut events = vec![kept];
        parse_fds_into(&buf, &mut events);
        assert_eq!(
            events,
            vec![
                kept,
                FdEvent {
                    mask: libc::FAN_CLOSE_WRITE,
                    fd: 7,
                    pid: 42
                },
                FdEvent {
                    mask: libc::FAN_Q_OVERFLOW,
                    fd: libc::FAN_NOFD,
                    pid: 0
                },
                FdEvent {
                    mask: libc::FAN_CLOSE_WRITE,
                    fd: 9,
                    pid: 43
                },
            ]
        );
    }

    #[test]
    fn parses_rename_records_and_the_overflow_event() {
        let fsid = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut buf = event(
            libc::FAN_RENAME,
            42,
            &[
                record(
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    fsid,
                    b"dirA0000",
                    b"a.csv",
                ),
                record(
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    fsid,
                    b"dirB0000",
                    b"b.csv",
                ),
                record(libc::FAN_EVENT_INFO_TYPE_FID, fsid, b"file0000", b""),
            ],
        );
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        // A truncated trailing event is ignored rather than read past.
        buf.extend_from_slice(&[0xff; 10]);
        let events = parse_names(&buf);
        assert_eq!(events.len(), 2);
        let rename = &events[0];
        assert_eq!(rename.pid, 42);
        let (old_dir, old_name) = rename.old_entry.as_ref().unwrap();
        assert_eq!(old_dir.bytes, b"dirA0000");
        assert_eq!(old_dir.fsid, fsid);
        assert_eq!(old_name, b"a.csv");
        assert_eq!(rename.new_entry.as_ref().unwrap().1, b"b.csv");
        assert_eq!(rename.object.as_ref().unwrap().bytes, b"file0000");
        assert_eq!(events[1].mask, libc::FAN_Q_OVERFLOW);
    }
}
