//! PDUs a target sends: built as values, turned into a BHS (the data segment goes to
//! [`crate::Framer::emit`] alongside).

use crate::bhs::{field, Bhs, Opcode};

/// The sequence numbers every target PDU that carries them reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sns {
    /// StatSN (for PDUs that carry status; otherwise the current one, unadvanced).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

/// Residual over- or underflow of a command's data (RFC 7143 11.4.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Residual {
    /// Exactly the expected length moved.
    #[default]
    None,
    /// The command wanted more than the initiator expected; this many bytes did not move.
    Overflow(u32),
    /// The command moved less than expected, by this much.
    Underflow(u32),
}

impl Residual {
    /// The residual of a command that would move `wanted` bytes when `expected` were.
    pub fn of(expected: u32, wanted: u32) -> Residual {
        match wanted.cmp(&expected) {
            std::cmp::Ordering::Equal => Residual::None,
            std::cmp::Ordering::Greater => Residual::Overflow(wanted - expected),
            std::cmp::Ordering::Less => Residual::Underflow(expected - wanted),
        }
    }

    fn flags(self) -> u8 {
        match self {
            Residual::None => 0,
            Residual::Overflow(_) => 0x04,
            Residual::Underflow(_) => 0x02,
        }
    }

    fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Overflow(n) | Residual::Underflow(n) => n,
        }
    }
}

/// A PDU a target sends, without its data segment (which the transport passes to
/// [`crate::Framer::emit`] alongside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPdu {
    /// SCSI Response: status and sense (the sense goes in the data segment, after its
    /// 2-byte length: see [`sense_segment`]).
    ScsiResponse {
        /// Initiator Task Tag.
        itt: u32,
        /// SCSI status.
        status: u8,
        /// Residual.
        residual: Residual,
        /// Sequence numbers.
        sns: Sns,
        /// ExpDataSN: Data-In PDUs sent for the command.
        exp_data_sn: u32,
    },
    /// SCSI Data-In, with status when `status` is set (it is then the last).
    DataIn {
        /// LUN (set only when `ack` is requested; zero otherwise).
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// DataSN.
        data_sn: u32,
        /// Buffer offset.
        offset: u32,
        /// F: the last Data-In of the command (or of the sequence, for bidirectional).
        final_bit: bool,
        /// The status, with the S bit, and the residual; StatSN is then meaningful.
        status: Option<(u8, Residual)>,
        /// Sequence numbers (StatSN only with `status`).
        sns: Sns,
    },
    /// Ready To Transfer.
    R2t {
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag the Data-Outs must carry.
        ttt: u32,
        /// R2TSN.
        r2t_sn: u32,
        /// Where the data goes.
        offset: u32,
        /// How much.
        len: u32,
        /// Sequence numbers (StatSN unadvanced).
        sns: Sns,
    },
    /// NOP-In: an answer to a NOP-Out (`itt` its ITT), or a ping of the target's own
    /// (`itt` 0xffffffff, `ttt` its tag).
    NopIn {
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag.
        ttt: u32,
        /// Sequence numbers.
        sns: Sns,
    },
    /// Task Management Function Response.
    TaskMgmtResponse {
        /// Initiator Task Tag.
        itt: u32,
        /// Response (0 complete, 1 task does not exist, 2 LUN does not exist, 5 not
        /// supported, 255 rejected).
        response: u8,
        /// Sequence numbers.
        sns: Sns,
    },
    /// Login Response.
    Login {
        /// T.
        transit: bool,
        /// C.
        continue_bit: bool,
        /// Current stage.
        current_stage: u8,
        /// Next stage.
        next_stage: u8,
        /// Version-active (0).
        version: u8,
        /// ISID echoed.
        isid: u64,
        /// TSIH (the session's, once full feature is reached).
        tsih: u16,
        /// Initiator Task Tag.
        itt: u32,
        /// Status class (0 success, 1 redirection, 2 initiator error, 3 target error).
        status_class: u8,
        /// Status detail.
        status_detail: u8,
        /// Sequence numbers.
        sns: Sns,
    },
    /// Text Response.
    Text {
        /// F.
        final_bit: bool,
        /// C.
        continue_bit: bool,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag (0xffffffff when final).
        ttt: u32,
        /// Sequence numbers.
        sns: Sns,
    },
    /// Logout Response.
    Logout {
        /// Initiator Task Tag.
        itt: u32,
        /// Response (0 closed successfully).
        response: u8,
        /// Sequence numbers.
        sns: Sns,
    },
    /// Asynchronous Message (event 1: the target asks for a logout within `parameter3`
    /// seconds).
    Async {
        /// Event.
        event: u8,
        /// Parameter 3 (Time2Wait-like seconds for event 1).
        parameter3: u16,
        /// Sequence numbers.
        sns: Sns,
    },
    /// Reject; the data segment is the rejected PDU's BHS.
    Reject {
        /// Reason.
        reason: u8,
        /// Sequence numbers.
        sns: Sns,
    },
}

/// The ITT reserved to mean "none".
pub const RESERVED_TAG: u32 = 0xffff_ffff;

fn put_sns(b: &mut Bhs, sns: Sns) {
    b.set(field::STAT_SN, u64::from(sns.stat_sn));
    b.set(field::EXP_CMD_SN, u64::from(sns.exp_cmd_sn));
    b.set(field::MAX_CMD_SN, u64::from(sns.max_cmd_sn));
}

impl TargetPdu {
    /// The BHS (data segment length left zero; [`crate::Framer::emit`] sets it).
    pub fn bhs(&self) -> Bhs {
        match *self {
            TargetPdu::ScsiResponse { itt, status, residual, sns, exp_data_sn } => {
                let mut b = Bhs::new(Opcode::ScsiResponse);
                b.0[1] = 0x80 | residual.flags();
                b.set(field::STATUS, u64::from(status));
                b.set(field::ITT, u64::from(itt));
                put_sns(&mut b, sns);
                b.set(field::EXP_DATA_SN, u64::from(exp_data_sn));
                b.set(field::RESIDUAL_COUNT, u64::from(residual.count()));
                b
            }
            TargetPdu::DataIn { lun, itt, data_sn, offset, final_bit, status, sns } => {
                let mut b = Bhs::new(Opcode::DataIn);
                let mut flags = if final_bit { 0x80 } else { 0 };
                b.set(field::LUN, lun);
                b.set(field::ITT, u64::from(itt));
                b.set(field::TTT, u64::from(RESERVED_TAG));
                b.set(field::EXP_CMD_SN, u64::from(sns.exp_cmd_sn));
                b.set(field::MAX_CMD_SN, u64::from(sns.max_cmd_sn));
                if let Some((st, residual)) = status {
                    flags |= 0x01 | residual.flags();
                    b.set(field::STATUS, u64::from(st));
                    b.set(field::STAT_SN, u64::from(sns.stat_sn));
                    b.set(field::RESIDUAL_COUNT, u64::from(residual.count()));
                }
                b.0[1] = flags;
                b.set(field::DATA_SN, u64::from(data_sn));
                b.set(field::BUFFER_OFFSET, u64::from(offset));
                b
            }
            TargetPdu::R2t { lun, itt, ttt, r2t_sn, offset, len, sns } => {
                let mut b = Bhs::new(Opcode::R2t);
                b.0[1] = 0x80;
                b.set(field::LUN, lun);
                b.set(field::ITT, u64::from(itt));
                b.set(field::TTT, u64::from(ttt));
                put_sns(&mut b, sns);
                b.set(field::R2T_SN, u64::from(r2t_sn));
                b.set(field::BUFFER_OFFSET, u64::from(offset));
                b.set(field::DESIRED_DATA_TRANSFER_LENGTH, u64::from(len));
                b
            }
            TargetPdu::NopIn { lun, itt, ttt, sns } => {
                let mut b = Bhs::new(Opcode::NopIn);
                b.0[1] = 0x80;
                b.set(field::LUN, lun);
                b.set(field::ITT, u64::from(itt));
                b.set(field::TTT, u64::from(ttt));
                put_sns(&mut b, sns);
                b
            }
            TargetPdu::TaskMgmtResponse { itt, response, sns } => {
                let mut b = Bhs::new(Opcode::TaskMgmtResponse);
                b.0[1] = 0x80;
                b.set(field::RESPONSE, u64::from(response));
                b.set(field::ITT, u64::from(itt));
                put_sns(&mut b, sns);
                b
            }
            TargetPdu::Login {
                transit,
                continue_bit,
                current_stage,
                next_stage,
                version,
                isid,
                tsih,
                itt,
                status_class,
                status_detail,
                sns,
            } => {
                let mut b = Bhs::new(Opcode::LoginResponse);
                b.0[1] = if transit { 0x80 } else { 0 }
                    | if continue_bit { 0x40 } else { 0 }
                    | (current_stage & 3) << 2
                    | (next_stage & 3);
                b.set(field::VERSION_MAX, u64::from(version));
                b.set(field::VERSION_MIN_OR_ACTIVE, u64::from(version));
                b.set(field::ISID, isid);
                b.set(field::TSIH, u64::from(tsih));
                b.set(field::ITT, u64::from(itt));
                put_sns(&mut b, sns);
                b.set(field::STATUS_CLASS, u64::from(status_class));
                b.set(field::STATUS_DETAIL, u64::from(status_detail));
                b
            }
            TargetPdu::Text { final_bit, continue_bit, lun, itt, ttt, sns } => {
                let mut b = Bhs::new(Opcode::TextResponse);
                b.0[1] = if final_bit { 0x80 } else { 0 } | if continue_bit { 0x40 } else { 0 };
                b.set(field::LUN, lun);
                b.set(field::ITT, u64::from(itt));
                b.set(field::TTT, u64::from(ttt));
                put_sns(&mut b, sns);
                b
            }
            TargetPdu::Logout { itt, response, sns } => {
                let mut b = Bhs::new(Opcode::LogoutResponse);
                b.0[1] = 0x80;
                b.set(field::RESPONSE, u64::from(response));
                b.set(field::ITT, u64::from(itt));
                put_sns(&mut b, sns);
                b
            }
            TargetPdu::Async { event, parameter3, sns } => {
                let mut b = Bhs::new(Opcode::AsyncMessage);
                b.0[1] = 0x80;
                b.set(field::ITT, u64::from(RESERVED_TAG));
                put_sns(&mut b, sns);
                b.set(field::ASYNC_EVENT, u64::from(event));
                b.set(field::ASYNC_PARAMETER3, u64::from(parameter3));
                b
            }
            TargetPdu::Reject { reason, sns } => {
                let mut b = Bhs::new(Opcode::Reject);
                b.0[1] = 0x80;
                b.set(field::REJECT_REASON, u64::from(reason));
                b.set(field::ITT, u64::from(RESERVED_TAG));
                put_sns(&mut b, sns);
                b
            }
        }
    }
}

/// The data segment of a SCSI Response carrying sense: its 2-byte length, then the sense.
pub fn sense_segment(sense: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + sense.len());
    out.extend_from_slice(&(sense.len() as u16).to_be_bytes());
    out.extend_from_slice(sense);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bhs::field;

    #[test]
    fn a_final_data_in_carries_status_residual_and_every_sequence_number() {
        let sns = Sns { stat_sn: 9, exp_cmd_sn: 6, max_cmd_sn: 37 };
        let b = TargetPdu::DataIn {
            lun: 0,
            itt: 0x11,
            data_sn: 2,
            offset: 8192,
            final_bit: true,
            status: Some((0, Residual::Underflow(512))),
            sns,
        }
        .bhs();
        assert_eq!((b.0[0], b.0[1], b.0[3]), (0x25, 0x83, 0));
        assert_eq!(b.get32(field::STAT_SN), 9);
        assert_eq!((b.get32(field::EXP_CMD_SN), b.get32(field::MAX_CMD_SN)), (6, 37));
        assert_eq!((b.get32(field::DATA_SN), b.get32(field::BUFFER_OFFSET)), (2, 8192));
        assert_eq!(b.get32(field::RESIDUAL_COUNT), 512);
        assert_eq!(b.get32(field::TTT), RESERVED_TAG);
        // Without status the S bit and StatSN stay clear.
        let b = TargetPdu::DataIn { lun: 0, itt: 1, data_sn: 0, offset: 0, final_bit: false, status: None, sns }.bhs();
        assert_eq!((b.0[1], b.get32(field::STAT_SN)), (0, 0));
        assert_eq!(Residual::of(4096, 8192), Residual::Overflow(4096));
        assert_eq!(Residual::of(4096, 512), Residual::Underflow(3584));
        let r =
            TargetPdu::ScsiResponse { itt: 3, status: 2, residual: Residual::Overflow(8), sns, exp_data_sn: 0 }.bhs();
        assert_eq!((r.0[0], r.0[1], r.0[3], r.get32(field::RESIDUAL_COUNT)), (0x21, 0x84, 2, 8));
        assert_eq!(sense_segment(&[0x70, 0, 5]), vec![0, 3, 0x70, 0, 5]);
    }

    #[test]
    fn a_login_response_puts_stages_status_and_tsih_in_place() {
        let b = TargetPdu::Login {
            transit: true,
            continue_bit: false,
            current_stage: 1,
            next_stage: 3,
            version: 0,
            isid: 0x8000_0012_3456,
            tsih: 7,
            itt: 1,
            status_class: 2,
            status_detail: 1,
            sns: Sns::default(),
        }
        .bhs();
        assert_eq!((b.0[0], b.0[1]), (0x23, 0x87));
        assert_eq!(&b.0[8..16], &[0x80, 0, 0, 0x12, 0x34, 0x56, 0, 7]);
        assert_eq!((b.0[36], b.0[37]), (2, 1));
    }
}
