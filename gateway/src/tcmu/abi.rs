//! The target_core_user shared-memory ABI (`linux/target_core_user.h`): the mailbox, command
//! ring entries (request and response forms) and task-management entries, as byte offsets.
//!
//! The kernel's structs are packed, so the layout is spelled out here rather than borrowed
//! from a `#[repr(C)]` struct; the tests check every offset against `offset_of!` on mirror
//! structs and against the installed kernel header itself.

/// `TCMU_MAILBOX_VERSION` this handler speaks.
pub const MAILBOX_VERSION: u16 = 2;

/// Mailbox field offsets.
pub mod mailbox {
    /// `__u16 version`.
    pub const VERSION: usize = 0;
    /// `__u16 flags`: the kernel's capabilities.
    pub const FLAGS: usize = 2;
    /// `__u32 cmdr_off`: where the command ring starts in the mapping.
    pub const CMDR_OFF: usize = 4;
    /// `__u32 cmdr_size`: the command ring's size in bytes.
    pub const CMDR_SIZE: usize = 8;
    /// `__u32 cmd_head`: written by the kernel.
    pub const CMD_HEAD: usize = 12;
    /// `__u32 cmd_tail`: written by userspace, on its own cache line.
    pub const CMD_TAIL: usize = 64;
    /// `sizeof(struct tcmu_mailbox)`.
    pub const SIZE: usize = 128;
}

/// Mailbox capability flags.
pub mod cap {
    /// `TCMU_MAILBOX_FLAG_CAP_OOOC`: commands may complete out of order.
    pub const OOOC: u16 = 1 << 0;
    /// `TCMU_MAILBOX_FLAG_CAP_READ_LEN`: the response may give the bytes read.
    pub const READ_LEN: u16 = 1 << 1;
    /// `TCMU_MAILBOX_FLAG_CAP_TMR`: the kernel queues task-management entries.
    pub const TMR: u16 = 1 << 2;
}

/// Entry header (`struct tcmu_cmd_entry_hdr`) offsets.
pub mod hdr {
    /// `__u32 len_op`: length (a multiple of 8) with the opcode in the low 3 bits.
    pub const LEN_OP: usize = 0;
    /// `__u16 cmd_id`.
    pub const CMD_ID: usize = 4;
    /// `__u8 kflags`.
    pub const KFLAGS: usize = 6;
    /// `__u8 uflags`.
    pub const UFLAGS: usize = 7;
    /// `sizeof(struct tcmu_cmd_entry_hdr)`.
    pub const SIZE: usize = 8;
    /// `TCMU_OP_MASK`.
    pub const OP_MASK: u32 = 0x7;
}

/// Entry opcodes (`enum tcmu_opcode`).
pub mod op {
    /// Padding up to the end of the ring; skip it.
    pub const PAD: u32 = 0;
    /// A SCSI command.
    pub const CMD: u32 = 1;
    /// A task-management notification.
    pub const TMR: u32 = 2;
}

/// Flags userspace sets in `hdr.uflags` of a response.
pub mod uflag {
    /// `TCMU_UFLAG_UNKNOWN_OP`: the handler does not know the opcode.
    pub const UNKNOWN_OP: u8 = 0x1;
    /// `TCMU_UFLAG_READ_LEN`: `rsp.read_len` is valid.
    pub const READ_LEN: u8 = 0x2;
}

/// `struct tcmu_cmd_entry` offsets (from the start of the entry).
pub mod cmd {
    /// `req.iov_cnt`.
    pub const IOV_CNT: usize = 8;
    /// `req.iov_bidi_cnt`.
    pub const IOV_BIDI_CNT: usize = 12;
    /// `req.iov_dif_cnt`.
    pub const IOV_DIF_CNT: usize = 16;
    /// `req.cdb_off`: offset of the CDB in the mapping.
    pub const CDB_OFF: usize = 24;
    /// `req.iov[]`: `struct iovec` entries whose bases are offsets in the mapping.
    pub const IOV: usize = 48;
    /// `sizeof(struct iovec)`.
    pub const IOV_SIZE: usize = 16;
    /// `rsp.scsi_status`.
    pub const STATUS: usize = 8;
    /// `rsp.read_len`.
    pub const READ_LEN: usize = 12;
    /// `rsp.sense_buffer`.
    pub const SENSE: usize = 16;
    /// `TCMU_SENSE_BUFFERSIZE`.
    pub const SENSE_SIZE: usize = 96;
    /// `sizeof(struct tcmu_cmd_entry)`: every CMD entry is at least this long.
    pub const SIZE: usize = 112;
}

/// `struct tcmu_tmr_entry` offsets.
pub mod tmr {
    /// `__u8 tmr_type`.
    pub const TYPE: usize = 8;
    /// `__u32 cmd_cnt`.
    pub const CMD_CNT: usize = 12;
    /// `__u16 cmd_ids[]`.
    pub const CMD_IDS: usize = 32;
    /// `sizeof(struct tcmu_tmr_entry)`.
    pub const SIZE: usize = 32;
    /// `TCMU_TMR_ABORT_TASK`.
    pub const ABORT_TASK: u8 = 1;
    /// `TCMU_TMR_LUN_RESET`.
    pub const LUN_RESET: u8 = 5;
}

/// `TCMU_OP_ALIGN_SIZE`: entry lengths are multiples of this.
pub const ENTRY_ALIGN: u32 = 8;

/// Splits `len_op` into (length, opcode).
pub fn len_op(v: u32) -> (u32, u32) {
    (v & !hdr::OP_MASK, v & hdr::OP_MASK)
}

/// A task-management type's name, for logs.
pub fn tmr_name(t: u8) -> &'static str {
    match t {
        tmr::ABORT_TASK => "ABORT TASK",
        2 => "ABORT TASK SET",
        3 => "CLEAR ACA",
        4 => "CLEAR TASK SET",
        tmr::LUN_RESET => "LUN RESET",
        6 => "TARGET WARM RESET",
        7 => "TARGET COLD RESET",
        128 => "LUN RESET (PR OUT)",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    // Mirrors of the kernel's structs, laid out as the C compiler lays out the header.
    #[repr(C, packed)]
    struct Mailbox {
        version: u16,
        flags: u16,
        cmdr_off: u32,
        cmdr_size: u32,
        cmd_head: u32,
        _align: [u8; 48],
        cmd_tail: u32,
        _tail_line: [u8; 60],
    }

    #[repr(C, packed)]
    struct Hdr {
        len_op: u32,
        cmd_id: u16,
        kflags: u8,
        uflags: u8,
    }

    // The union's request arm is an unpacked struct inside a packed one.
    #[repr(C)]
    struct Req {
        iov_cnt: u32,
        iov_bidi_cnt: u32,
        iov_dif_cnt: u32,
        cdb_off: u64,
        _pad1: u64,
        _pad2: u64,
    }

    #[repr(C)]
    struct Rsp {
        scsi_status: u8,
        _pad1: u8,
        _pad2: u16,
        read_len: u32,
        sense_buffer: [u8; 96],
    }

    #[repr(C, packed)]
    struct CmdEntryReq {
        hdr: Hdr,
        req: Req,
    }

    #[repr(C, packed)]
    struct CmdEntryRsp {
        hdr: Hdr,
        rsp: Rsp,
    }

    #[repr(C, packed)]
    struct TmrEntry {
        hdr: Hdr,
        tmr_type: u8,
        _pad1: u8,
        _pad2: u16,
        cmd_cnt: u32,
        _pad3: u64,
        _pad4: u64,
    }

    #[test]
    fn mailbox_layout() {
        assert_eq!(size_of::<Mailbox>(), mailbox::SIZE);
        assert_eq!(offset_of!(Mailbox, version), mailbox::VERSION);
        assert_eq!(offset_of!(Mailbox, flags), mailbox::FLAGS);
        assert_eq!(offset_of!(Mailbox, cmdr_off), mailbox::CMDR_OFF);
        assert_eq!(offset_of!(Mailbox, cmdr_size), mailbox::CMDR_SIZE);
        assert_eq!(offset_of!(Mailbox, cmd_head), mailbox::CMD_HEAD);
        assert_eq!(offset_of!(Mailbox, cmd_tail), mailbox::CMD_TAIL);
        assert_eq!(mailbox::CMD_TAIL % 64, 0, "cmd_tail is on its own cache line");
    }

    #[test]
    fn entry_layouts() {
        assert_eq!(size_of::<Hdr>(), hdr::SIZE);
        assert_eq!(offset_of!(Hdr, len_op), hdr::LEN_OP);
        assert_eq!(offset_of!(Hdr, cmd_id), hdr::CMD_ID);
        assert_eq!(offset_of!(Hdr, kflags), hdr::KFLAGS);
        assert_eq!(offset_of!(Hdr, uflags), hdr::UFLAGS);
        let req = offset_of!(CmdEntryReq, req);
        assert_eq!(req + offset_of!(Req, iov_cnt), cmd::IOV_CNT);
        assert_eq!(req + offset_of!(Req, iov_bidi_cnt), cmd::IOV_BIDI_CNT);
        assert_eq!(req + offset_of!(Req, iov_dif_cnt), cmd::IOV_DIF_CNT);
        assert_eq!(req + offset_of!(Req, cdb_off), cmd::CDB_OFF);
        assert_eq!(size_of::<CmdEntryReq>(), cmd::IOV);
        let rsp = offset_of!(CmdEntryRsp, rsp);
        assert_eq!(rsp + offset_of!(Rsp, scsi_status), cmd::STATUS);
        assert_eq!(rsp + offset_of!(Rsp, read_len), cmd::READ_LEN);
        assert_eq!(rsp + offset_of!(Rsp, sense_buffer), cmd::SENSE);
        assert_eq!(size_of::<CmdEntryRsp>(), cmd::SIZE, "the union's larger arm sets the size");
        assert_eq!(size_of::<libc::iovec>(), cmd::IOV_SIZE);
        assert_eq!(offset_of!(TmrEntry, tmr_type), tmr::TYPE);
        assert_eq!(offset_of!(TmrEntry, cmd_cnt), tmr::CMD_CNT);
        assert_eq!(size_of::<TmrEntry>(), tmr::SIZE);
        assert_eq!(tmr::CMD_IDS, tmr::SIZE);
    }

    #[test]
    fn len_op_splits() {
        assert_eq!(len_op(0x1001), (0x1000, op::CMD));
        assert_eq!(len_op(0x40), (0x40, op::PAD));
        assert_eq!(len_op(0x22), (0x20, op::TMR));
    }
}
