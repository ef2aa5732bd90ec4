//! The payloads of protocol-control replies: the result codes a STAT carries, and the
//! entries of a REPORT CONFIG reply.

use super::field::{self, get_u16, get_u32, get_u64, put};

/// Control results in STAT replies to protocol-control messages.
pub mod control_result {
    /// Done.
    pub const DONE: u16 = 0;
    /// The task is with the backend and will complete normally.
    pub const IN_PROGRESS: u16 = 1;
    /// No such task or LUN.
    pub const NOT_FOUND: u16 = 2;
}

/// One LUN of a REPORT CONFIG reply: the data the gateway writes into the request's
/// segments is a list of these, sorted by (target, LUN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportEntry {
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// Whether the node's map grants read-only access.
    pub read_only: bool,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Capacity in blocks.
    pub blocks: u64,
}

impl ReportEntry {
    /// Bytes of one entry on the wire.
    pub const SIZE: usize = field::report::SIZE;

    /// Reads one entry (reserved bytes are ignored, as a reader of a newer gateway should).
    #[inline]
    pub fn parse(b: &[u8; Self::SIZE]) -> ReportEntry {
        use field::report;
        ReportEntry {
            target: get_u16(b, report::TARGET),
            lun: get_u16(b, report::LUN),
            read_only: b[report::READ_ONLY] != 0,
            block_size: get_u32(b, report::BLOCK_SIZE),
            blocks: get_u64(b, report::BLOCKS),
        }
    }

    /// Writes the entry, reserved bytes zeroed.
    #[inline]
    pub fn emit(&self, b: &mut [u8; Self::SIZE]) {
        use field::report;
        put(b, report::TARGET, &self.target.to_le_bytes());
        put(b, report::LUN, &self.lun.to_le_bytes());
        b[report::READ_ONLY] = u8::from(self.read_only);
        b[report::RESERVED].fill(0);
        put(b, report::BLOCK_SIZE, &self.block_size.to_le_bytes());
        put(b, report::BLOCKS, &self.blocks.to_le_bytes());
    }

    /// The entries of a reply's `data`; a trailing partial entry is not one.
    #[inline]
    pub fn parse_list(data: &[u8]) -> impl Iterator<Item = ReportEntry> + '_ {
        data.chunks_exact(Self::SIZE).map(|e| ReportEntry::parse(e.try_into().expect("a whole entry")))
    }

    /// The reply data for `entries`, in the order given.
    #[inline]
    pub fn emit_list(entries: &[ReportEntry]) -> Vec<u8> {
        let mut out = vec![0u8; entries.len() * Self::SIZE];
        for (e, b) in entries.iter().zip(out.chunks_exact_mut(Self::SIZE)) {
            e.emit(b.try_into().expect("a whole entry"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_entries_round_trip_at_their_documented_offsets() {
        let entries = [
            ReportEntry { target: 1, lun: 0x0203, read_only: true, block_size: 4096, blocks: 1 << 40 },
            ReportEntry { target: 0xFFFF, lun: 0, read_only: false, block_size: 512, blocks: 7 },
        ];
        let bytes = ReportEntry::emit_list(&entries);
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[..12], &[1, 0, 3, 2, 1, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(&bytes[12..20], &(1u64 << 40).to_le_bytes());
        let mut with_tail = bytes.clone();
        with_tail.extend_from_slice(&[9; 7]);
        assert_eq!(ReportEntry::parse_list(&with_tail).collect::<Vec<_>>(), entries);
    }
}
