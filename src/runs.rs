//! Runs: consecutive encoded events, each behind its length (u32, little-endian), packed with LZ4
//! (block format) behind the run's unpacked length (u32, little-endian). The agent's spool keeps
//! its events so, and sends whole runs as they are kept to a collector that accepts them.
//!
//! A burst's events repeat one process and its ancestry, most of their bytes, so a run packs to a
//! tenth of its size or less. Unpacking is bounded before anything is allocated: a run never
//! claims more than [`MAX_UNPACKED`] bytes.

use crate::proto::limits::MAX_EVENT_BYTES;

/// The bytes of each event's length prefix, and of a packed run's.
pub const LENGTH_PREFIX: usize = 4;

/// About the most bytes of events a run is given: it ends once it reaches this, so its last event
/// takes it past it by at most one event.
pub const RUN_BYTES: usize = 64 * 1024;

/// The most bytes a run may unpack to.
pub const MAX_UNPACKED: usize = RUN_BYTES + LENGTH_PREFIX + MAX_EVENT_BYTES;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("shorter than its length")]
    NoLength,
    #[error("claims {claimed} bytes unpacked; a run holds at most {limit}")]
    TooLarge { claimed: usize, limit: usize },
    #[error("does not unpack to the {claimed} bytes it claims")]
    BadPacking { claimed: usize },
    #[error("an event's length runs past the run's end")]
    BadFraming,
}

/// Packs a run's length-prefixed events.
pub fn pack(plain: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(plain)
}

/// How many bytes a packed run claims to unpack to, within [`MAX_UNPACKED`].
pub fn unpacked_len(packed: &[u8]) -> Result<usize, RunError> {
    let length = packed.get(..LENGTH_PREFIX).ok_or(RunError::NoLength)?;
    let mut bytes = [0u8; LENGTH_PREFIX];
    bytes.copy_from_slice(length);
    let claimed = u32::from_le_bytes(bytes) as usize;
    if claimed > MAX_UNPACKED {
        return Err(RunError::TooLarge {
            claimed,
            limit: MAX_UNPACKED,
        });
    }
    Ok(claimed)
}

/// A packed run's length-prefixed events, exactly as many bytes as it claims.
pub fn unpack(packed: &[u8]) -> Result<Vec<u8>, RunError> {
    let claimed = unpacked_len(packed)?;
    let plain = lz4_flex::block::decompress(&packed[LENGTH_PREFIX..], claimed)
        .map_err(|_| RunError::BadPacking { claimed })?;
    if plain.len() != claimed {
        return Err(RunError::BadPacking { claimed });
    }
    Ok(plain)
}

/// The events of a run's unpacked bytes, in order.
pub fn events(plain: &[u8]) -> Result<Vec<&[u8]>, RunError> {
    let mut events = Vec::new();
    let mut rest = plain;
    while !rest.is_empty() {
        let (length, tail) = rest
            .split_at_checked(LENGTH_PREFIX)
            .ok_or(RunError::BadFraming)?;
        let mut bytes = [0u8; LENGTH_PREFIX];
        bytes.copy_from_slice(length);
        let length = u32::from_le_bytes(bytes) as usize;
        let (event, tail) = tail.split_at_checked(length).ok_or(RunError::BadFraming)?;
        events.push(event);
        rest = tail;
    }
    Ok(events)
}

/// Appends `event` to a run's unpacked bytes, behind its length.
pub fn push(plain: &mut Vec<u8>, event: &[u8]) {
    plain.extend_from_slice(&(event.len() as u32).to_le_bytes());
    plain.extend_from_slice(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_packs_and_unpacks_to_its_events() {
        let mut plain = Vec::new();
        for event in [&b"first"[..], b"", &[7u8; 3000]] {
            push(&mut plain, event);
        }
        let packed = pack(&plain);
        assert!(packed.len() < plain.len() / 4);
        let unpacked = unpack(&packed).unwrap();
        assert_eq!(unpacked, plain);
        assert_eq!(
            events(&unpacked).unwrap(),
            vec![&b"first"[..], b"", &[7u8; 3000]]
        );
    }

    /// A packed run that claims more than any run holds is refused before anything is allocated
    /// for it; one that does not unpack to what it claims, or whose events run past its end, is
    /// refused too.
    #[test]
    fn bad_runs_are_clear_errors() {
        assert_eq!(unpack(&[1, 0]), Err(RunError::NoLength));
        let bomb = (u32::MAX).to_le_bytes();
        assert!(matches!(unpack(&bomb), Err(RunError::TooLarge { .. })));
        let mut short = pack(b"\x05\x00\x00\x00hello");
        short[0] = 20;
        assert_eq!(unpack(&short), Err(RunError::BadPacking { claimed: 20 }));
        assert_eq!(events(b"\x05\x00\x00\x00hell"), Err(RunError::BadFraming));
        assert_eq!(events(b"\x05\x00"), Err(RunError::BadFraming));
    }
}
