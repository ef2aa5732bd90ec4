//! The Basic Header Segment (RFC 7143 11.2): 48 bytes at the start of every PDU. Each
//! field is named once here, with its offset and width; PDUs read and write through these.

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// An opcode (byte 0, bits 5-0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// NOP-Out (initiator).
    NopOut = 0x00,
    /// SCSI Command.
    ScsiCommand = 0x01,
    /// SCSI Task Management Function Request.
    TaskMgmtRequest = 0x02,
    /// Login Request.
    LoginRequest = 0x03,
    /// Text Request.
    TextRequest = 0x04,
    /// SCSI Data-Out.
    DataOut = 0x05,
    /// Logout Request.
    LogoutRequest = 0x06,
    /// SNACK Request.
    SnackRequest = 0x10,
    /// NOP-In (target).
    NopIn = 0x20,
    /// SCSI Response.
    ScsiResponse = 0x21,
    /// SCSI Task Management Function Response.
    TaskMgmtResponse = 0x22,
    /// Login Response.
    LoginResponse = 0x23,
    /// Text Response.
    TextResponse = 0x24,
    /// SCSI Data-In.
    DataIn = 0x25,
    /// Logout Response.
    LogoutResponse = 0x26,
    /// Ready To Transfer.
    R2t = 0x31,
    /// Asynchronous Message.
    AsyncMessage = 0x32,
    /// Reject.
    Reject = 0x3f,
}

impl Opcode {
    /// The opcode of a byte-0 value (bits 5-0), if it is one RFC 7143 defines.
    pub fn from_byte(b: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match b & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }

    /// Whether an initiator sends this opcode.
    pub fn from_initiator(self) -> bool {
        (self as u8) < 0x20
    }

    /// A name for logs and metric labels.
    pub fn name(self) -> &'static str {
        use Opcode::*;
        match self {
            NopOut => "nop_out",
            ScsiCommand => "scsi_command",
            TaskMgmtRequest => "task_mgmt_request",
            LoginRequest => "login_request",
            TextRequest => "text_request",
            DataOut => "data_out",
            LogoutRequest => "logout_request",
            SnackRequest => "snack_request",
            NopIn => "nop_in",
            ScsiResponse => "scsi_response",
            TaskMgmtResponse => "task_mgmt_response",
            LoginResponse => "login_response",
            TextResponse => "text_response",
            DataIn => "data_in",
            LogoutResponse => "logout_response",
            R2t => "r2t",
            AsyncMessage => "async_message",
            Reject => "reject",
        }
    }
}

/// A field of the BHS: where it starts and how many bytes it has (1, 2, 3, 4, 6 or 8),
/// big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// First byte.
    pub at: usize,
    /// Width in bytes.
    pub len: usize,
}

const fn f(at: usize, len: usize) -> Field {
    Field { at, len }
}

/// The fields, by the names RFC 7143 gives them. Fields that differ by opcode share places;
/// each PDU type reads only its own.
#[allow(missing_docs)]
pub mod field {
    use super::{f, Field};

    // Common to every PDU.
    pub const OPCODE_BYTE: Field = f(0, 1);
    pub const FLAGS: Field = f(1, 1);
    pub const TOTAL_AHS_LENGTH: Field = f(4, 1);
    pub const DATA_SEGMENT_LENGTH: Field = f(5, 3);
    pub const LUN: Field = f(8, 8);
    pub const ITT: Field = f(16, 4);

    // Bytes 2 and 3.
    pub const RESPONSE: Field = f(2, 1);
    pub const STATUS: Field = f(3, 1);
    pub const VERSION_MAX: Field = f(2, 1);
    pub const VERSION_MIN_OR_ACTIVE: Field = f(3, 1);
    pub const REJECT_REASON: Field = f(2, 1);

    // Login.
    pub const ISID: Field = f(8, 6);
    pub const TSIH: Field = f(14, 2);
    pub const CID: Field = f(20, 2);
    pub const STATUS_CLASS: Field = f(36, 1);
    pub const STATUS_DETAIL: Field = f(37, 1);

    // Bytes 20 and on.
    pub const EXPECTED_DATA_TRANSFER_LENGTH: Field = f(20, 4);
    pub const TTT: Field = f(20, 4);
    pub const REFERENCED_TASK_TAG: Field = f(20, 4);
    pub const SNACK_TAG: Field = f(20, 4);
    pub const CMD_SN: Field = f(24, 4);
    pub const STAT_SN: Field = f(24, 4);
    pub const EXP_STAT_SN: Field = f(28, 4);
    pub const EXP_CMD_SN: Field = f(28, 4);
    pub const MAX_CMD_SN: Field = f(32, 4);
    pub const REF_CMD_SN: Field = f(32, 4);
    pub const CDB: Field = f(32, 16);
    pub const DATA_SN: Field = f(36, 4);
    pub const EXP_DATA_SN: Field = f(36, 4);
    pub const R2T_SN: Field = f(36, 4);
    pub const ASYNC_EVENT: Field = f(36, 1);
    pub const ASYNC_VCODE: Field = f(37, 1);
    pub const ASYNC_PARAMETER1: Field = f(38, 2);
    pub const ASYNC_PARAMETER2: Field = f(40, 2);
    pub const ASYNC_PARAMETER3: Field = f(42, 2);
    pub const BUFFER_OFFSET: Field = f(40, 4);
    pub const BIDI_RESIDUAL_COUNT: Field = f(40, 4);
    pub const TIME2WAIT: Field = f(40, 2);
    pub const TIME2RETAIN: Field = f(42, 2);
    pub const RESIDUAL_COUNT: Field = f(44, 4);
    pub const DESIRED_DATA_TRANSFER_LENGTH: Field = f(44, 4);
}

/// A Basic Header Segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bhs({:02x?})", &self.0[..])
    }
}

impl Default for Bhs {
    fn default() -> Bhs {
        Bhs([0; BHS_LEN])
    }
}

impl Bhs {
    /// A zeroed BHS with `opcode`.
    pub fn new(opcode: Opcode) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = opcode as u8;
        b
    }

    /// A field's value (fields up to 8 bytes).
    pub fn get(&self, f: Field) -> u64 {
        self.0[f.at..f.at + f.len].iter().fold(0u64, |v, &b| (v << 8) | u64::from(b))
    }

    /// Sets a field (the low `f.len` bytes of `v`).
    pub fn set(&mut self, f: Field, v: u64) {
        for (i, b) in self.0[f.at..f.at + f.len].iter_mut().enumerate() {
            *b = (v >> (8 * (f.len - 1 - i))) as u8;
        }
    }

    /// A 4-byte field.
    pub fn get32(&self, f: Field) -> u32 {
        debug_assert!(f.len <= 4);
        self.get(f) as u32
    }

    /// The opcode, if it is a defined one.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_byte(self.0[0])
    }

    /// The immediate-delivery bit (byte 0, bit 6).
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }

    /// Sets the immediate-delivery bit.
    pub fn set_immediate(&mut self, on: bool) {
        self.0[0] = (self.0[0] & !0x40) | if on { 0x40 } else { 0 };
    }

    /// The final bit (byte 1, bit 7).
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }

    /// Byte 1.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// Additional header segments, in bytes.
    pub fn ahs_len(&self) -> usize {
        usize::from(self.0[4]) * 4
    }

    /// The data segment's length, without padding.
    pub fn data_len(&self) -> usize {
        self.get(field::DATA_SEGMENT_LENGTH) as usize
    }

    /// Sets the data segment's length.
    pub fn set_data_len(&mut self, n: usize) {
        self.set(field::DATA_SEGMENT_LENGTH, n as u64);
    }

    /// The Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        self.get32(field::ITT)
    }
}

/// The data segment padded to a multiple of four bytes.
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_and_write_big_endian_at_their_places() {
        let mut b = Bhs::new(Opcode::ScsiCommand);
        b.set(field::DATA_SEGMENT_LENGTH, 0x0001_0203);
        b.set(field::LUN, 0x0001_0000_0000_0000);
        b.set(field::CMD_SN, 0xdead_beef);
        assert_eq!(&b.0[5..8], &[1, 2, 3]);
        assert_eq!(&b.0[8..10], &[0, 1]);
        assert_eq!(&b.0[24..28], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!((b.data_len(), b.get32(field::CMD_SN)), (0x10203, 0xdead_beef));
        b.set_immediate(true);
        assert_eq!(b.0[0], 0x41);
        assert_eq!(b.opcode(), Some(Opcode::ScsiCommand));
    }

    #[test]
    fn every_opcode_round_trips_and_undefined_ones_are_none() {
        for b in 0..=0x3fu8 {
            if let Some(op) = Opcode::from_byte(b) {
                assert_eq!(op as u8, b);
                assert_eq!(op.from_initiator(), b < 0x20);
            }
        }
        assert_eq!(Opcode::from_byte(0x07), None);
        assert_eq!(Opcode::from_byte(0x43), Some(Opcode::LoginRequest), "the I bit is not part of it");
    }
}
