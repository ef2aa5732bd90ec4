//! Typed PDUs. What an initiator sends is parsed here from a framed [`RawPdu`] and checked
//! for the rules that need no session state (reserved opcodes, flag combinations, AHS
//! types); what a target sends is built as a value in [`target`] and turned into a BHS
//! with [`TargetPdu::bhs`].

mod target;

pub use target::{sense_segment, Residual, Sns, TargetPdu, RESERVED_TAG};

use thiserror::Error;

use crate::bhs::{field, Opcode};
use crate::frame::RawPdu;

/// A PDU an initiator may not send, or one whose fields break RFC 7143. The target answers
/// with a Reject carrying [`PduError::reject_reason`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PduError {
    /// An opcode RFC 7143 does not define, or one only a target sends.
    #[error("opcode {0:#04x} is not one an initiator sends")]
    Opcode(u8),
    /// SNACK, which error recovery level 0 does not support.
    #[error("SNACK is not supported at ErrorRecoveryLevel=0")]
    Snack,
    /// A SCSI Command with both the read and write bits but no bidirectional AHS, or
    /// another impossible flag combination.
    #[error("SCSI Command flags {0:#04x} are inconsistent")]
    CommandFlags(u8),
    /// An additional header segment of a type the PDU may not carry.
    #[error("additional header segment of type {0} is not supported")]
    AhsType(u8),
    /// A data segment on a PDU that may not carry one.
    #[error("{0} carries a data segment it may not have")]
    UnexpectedData(&'static str),
    /// A Login Request with a stage RFC 7143 does not define.
    #[error("login stage {0} is reserved")]
    LoginStage(u8),
}

impl PduError {
    /// The Reject reason code (RFC 7143 11.17.1).
    pub fn reject_reason(&self) -> u8 {
        match self {
            PduError::Opcode(_) | PduError::Snack => 0x05, // command not supported
            _ => 0x04,                                     // protocol error
        }
    }
}

/// A SCSI Command (RFC 7143 11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    /// Immediate delivery.
    pub immediate: bool,
    /// F: no unsolicited Data-Out follows.
    pub final_bit: bool,
    /// R: data flows to the initiator.
    pub read: bool,
    /// W: data flows to the target.
    pub write: bool,
    /// Task attribute (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA).
    pub attr: u8,
    /// The LUN field as sent.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub expected_len: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The CDB: 16 bytes, or more with an extended-CDB AHS.
    pub cdb: Vec<u8>,
    /// Expected bidirectional read length, from its AHS.
    pub bidi_read_len: Option<u32>,
    /// Immediate data.
    pub data: Vec<u8>,
}

/// A SCSI Data-Out (RFC 7143 11.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    /// F: the last of a sequence.
    pub final_bit: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag of the command.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff for unsolicited data).
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN within the sequence.
    pub data_sn: u32,
    /// Where the data goes in the command's buffer.
    pub offset: u32,
    /// The data.
    pub data: Vec<u8>,
}

/// A NOP-Out (RFC 7143 11.18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    /// Immediate delivery.
    pub immediate: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag (0xffffffff: no answer wanted).
    pub itt: u32,
    /// Target Transfer Tag (answering a NOP-In, or 0xffffffff).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Ping data, echoed back.
    pub data: Vec<u8>,
}

/// A Task Management Function Request (RFC 7143 11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmt {
    /// Immediate delivery.
    pub immediate: bool,
    /// Function (1 ABORT TASK, 2 ABORT TASK SET, 5 LUN RESET, 6 TARGET WARM RESET, ...).
    pub function: u8,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// The task an ABORT TASK names.
    pub referenced_itt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN.
    pub ref_cmd_sn: u32,
}

/// A Login Request (RFC 7143 11.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// T: the initiator wants to go to `next_stage`.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub continue_bit: bool,
    /// Current stage (0 security, 1 operational).
    pub current_stage: u8,
    /// Next stage (1 operational, 3 full feature).
    pub next_stage: u8,
    /// Highest version the initiator supports.
    pub version_max: u8,
    /// Lowest version the initiator supports.
    pub version_min: u8,
    /// Initiator Session ID.
    pub isid: u64,
    /// Target Session Identifying Handle (0 for a new session).
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection ID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Text.
    pub data: Vec<u8>,
}

/// A Text Request (RFC 7143 11.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    /// Immediate delivery.
    pub immediate: bool,
    /// F: the last of the exchange.
    pub final_bit: bool,
    /// C: the text continues.
    pub continue_bit: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (continuing an exchange, or 0xffffffff).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Text.
    pub data: Vec<u8>,
}

/// A Logout Request (RFC 7143 11.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    /// Immediate delivery.
    pub immediate: bool,
    /// Reason (0 close the session, 1 close the connection, 2 remove it for recovery).
    pub reason: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection ID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// A PDU from an initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// NOP-Out.
    NopOut(NopOut),
    /// SCSI Command.
    ScsiCommand(ScsiCommand),
    /// Task Management Function Request.
    TaskMgmt(TaskMgmt),
    /// Login Request.
    Login(LoginRequest),
    /// Text Request.
    Text(TextRequest),
    /// SCSI Data-Out.
    DataOut(DataOut),
    /// Logout Request.
    Logout(LogoutRequest),
}

/// AHS types (RFC 7143 11.2.2.1).
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LENGTH: u8 = 2;

impl Pdu {
    /// Parses what an initiator sent.
    pub fn parse(raw: RawPdu) -> Result<Pdu, PduError> {
        let RawPdu { bhs, ahs, data } = raw;
        let b = &bhs;
        let op = b.opcode().filter(|o| o.from_initiator()).ok_or(PduError::Opcode(b.0[0] & 0x3f))?;
        let imm = b.immediate();
        let (lun, itt) = (b.get(field::LUN), b.itt());
        let no_ahs = || match ahs.get(2) {
            Some(&kind) => Err(PduError::AhsType(kind)),
            None if ahs.is_empty() => Ok(()),
            None => Err(PduError::AhsType(0)),
        };
        Ok(match op {
            Opcode::NopOut => {
                no_ahs()?;
                Pdu::NopOut(NopOut {
                    immediate: imm,
                    lun,
                    itt,
                    ttt: b.get32(field::TTT),
                    cmd_sn: b.get32(field::CMD_SN),
                    exp_stat_sn: b.get32(field::EXP_STAT_SN),
                    data,
                })
            }
            Opcode::ScsiCommand => {
                let flags = b.flags();
                let (read, write) = (flags & 0x40 != 0, flags & 0x20 != 0);
                let (mut cdb, mut bidi_read_len) = (b.0[32..48].to_vec(), None);
                let mut at = 0;
                while at < ahs.len() {
                    // Each: AHSLength (2 bytes, counting from the reserved byte), type, a
                    // reserved byte, then the rest; padded to four bytes.
                    let head = ahs.get(at..at + 4).ok_or(PduError::AhsType(0))?;
                    let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
                    let kind = head[2];
                    let body = ahs.get(at + 4..at + 3 + len).filter(|_| len > 0).ok_or(PduError::AhsType(kind))?;
                    match kind {
                        AHS_EXTENDED_CDB => cdb.extend_from_slice(body),
                        AHS_BIDI_READ_LENGTH if body.len() == 4 => {
                            bidi_read_len = Some(u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
                        }
                        other => return Err(PduError::AhsType(other)),
                    }
                    at += (3 + len).next_multiple_of(4);
                }
                // Reserved bits 4-3, and R+W without a bidirectional read length.
                if flags & 0x18 != 0 || (read && write && bidi_read_len.is_none()) {
                    return Err(PduError::CommandFlags(flags));
                }
                Pdu::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_bit: b.final_bit(),
                    read,
                    write,
                    attr: flags & 0x07,
                    lun,
                    itt,
                    expected_len: b.get32(field::EXPECTED_DATA_TRANSFER_LENGTH),
                    cmd_sn: b.get32(field::CMD_SN),
                    exp_stat_sn: b.get32(field::EXP_STAT_SN),
                    cdb,
                    bidi_read_len,
                    data,
                })
            }
            Opcode::TaskMgmtRequest => {
                no_ahs()?;
                if !data.is_empty() {
                    return Err(PduError::UnexpectedData("Task Management Request"));
                }
                Pdu::TaskMgmt(TaskMgmt {
                    immediate: imm,
                    function: b.flags() & 0x7f,
                    lun,
                    itt,
                    referenced_itt: b.get32(field::REFERENCED_TASK_TAG),
                    cmd_sn: b.get32(field::CMD_SN),
                    exp_stat_sn: b.get32(field::EXP_STAT_SN),
                    ref_cmd_sn: b.get32(field::REF_CMD_SN),
                })
            }
            Opcode::LoginRequest => {
                no_ahs()?;
                let flags = b.flags();
                let (csg, nsg) = ((flags >> 2) & 0x3, flags & 0x3);
                if csg == 2 || (flags & 0x80 != 0 && (nsg == 2 || nsg <= csg)) {
                    return Err(PduError::LoginStage(if csg == 2 { csg } else { nsg }));
                }
                Pdu::Login(LoginRequest {
                    transit: flags & 0x80 != 0,
                    continue_bit: flags & 0x40 != 0,
                    current_stage: csg,
                    next_stage: nsg,
                    version_max: b.get(field::VERSION_MAX) as u8,
                    version_min: b.get(field::VERSION_MIN_OR_ACTIVE) as u8,
                    isid: b.get(field::ISID),
                    tsih: b.get(field::TSIH) as u16,
                    itt,
                    cid: b.get(field::CID) as u16,
                    cmd_sn: b.get32(field::CMD_SN),
                    exp_stat_sn: b.get32(field::EXP_STAT_SN),
                    data,
                })
            }
            Opcode::TextRequest => {
                no_ahs()?;
                Pdu::Text(TextRequest {
                    immediate: imm,
                    final_bit: b.final_bit(),
                    continue_bit: b.flags() & 0x40 != 0,
                    lun,
                    itt,
                    ttt: b.get32(field::TTT),
                    cmd_sn: b.get32(field::CMD_SN),
                    exp_stat_sn: b.get32(field::EXP_STAT_SN),
                    data,
                })
            }
            Opcode::DataOut => {
                no_ahs()?;
                Pdu::DataOut(DataOut {
                    final_bit: b.final_bit(),
                    lun,
                    itt,
                    ttt: b.get32(field::TTT),
                    exp_stat_sn: b.get32(field::EXP_STAT_SN),
                    data_sn: b.get32(field::DATA_SN),
                    offset: b.get32(field::BUFFER_OFFSET),
                    data,
                })
            }
            Opcode::LogoutRequest => {
                no_ahs()?;
                if !data.is_empty() {
                    return Err(PduError::UnexpectedData("Logout Request"));
                }
                Pdu::Logout(LogoutRequest {
                    immediate: imm,
                    reason: b.flags() & 0x7f,
                    itt,
                    cid: b.get(field::CID) as u16,
                    cmd_sn: b.get32(field::CMD_SN),
                    exp_stat_sn: b.get32(field::EXP_STAT_SN),
                })
            }
            Opcode::SnackRequest => return Err(PduError::Snack),
            _ => return Err(PduError::Opcode(b.0[0] & 0x3f)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(bytes: [u8; 48], ahs: &[u8], data: &[u8]) -> RawPdu {
        RawPdu { bhs: crate::bhs::Bhs(bytes), ahs: ahs.to_vec(), data: data.to_vec() }
    }

    /// A READ(10) of 8 blocks at LBA 0x20, LUN 0, ITT 0x11, 4096 bytes, CmdSN 5, ExpStatSN 2,
    /// as Linux's open-iscsi sends it.
    fn read10() -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = 0x01;
        b[1] = 0xc1; // F, R, simple
        b[16..20].copy_from_slice(&0x11u32.to_be_bytes());
        b[20..24].copy_from_slice(&4096u32.to_be_bytes());
        b[24..28].copy_from_slice(&5u32.to_be_bytes());
        b[28..32].copy_from_slice(&2u32.to_be_bytes());
        b[32..42].copy_from_slice(&[0x28, 0, 0, 0, 0, 0x20, 0, 0, 8, 0]);
        b
    }

    #[test]
    fn a_scsi_command_parses_field_by_field() {
        let Pdu::ScsiCommand(c) = Pdu::parse(raw(read10(), &[], &[])).unwrap() else { panic!() };
        assert!(c.final_bit && c.read && !c.write && !c.immediate);
        assert_eq!((c.attr, c.itt, c.expected_len, c.cmd_sn, c.exp_stat_sn), (1, 0x11, 4096, 5, 2));
        assert_eq!(&c.cdb[..10], &[0x28, 0, 0, 0, 0, 0x20, 0, 0, 8, 0]);
        // An extended CDB in a type-1 AHS lengthens it; R+W needs a bidirectional AHS.
        let ahs = [0, 5, 1, 0, 0xaa, 0xbb, 0xcc, 0xdd];
        let Pdu::ScsiCommand(c) = Pdu::parse(raw(read10(), &ahs, &[])).unwrap() else { panic!() };
        assert_eq!(&c.cdb[16..], &[0xaa, 0xbb, 0xcc, 0xdd]);
        let mut rw = read10();
        rw[1] |= 0x20;
        assert_eq!(Pdu::parse(raw(rw, &[], &[])), Err(PduError::CommandFlags(0xe1)));
        assert_eq!(Pdu::parse(raw(read10(), &[0, 1, 9, 0], &[])), Err(PduError::AhsType(9)));
    }

    #[test]
    fn target_opcodes_snack_and_bad_login_stages_are_refused_with_a_reject_reason() {
        let mut b = read10();
        b[0] = 0x21;
        assert_eq!(Pdu::parse(raw(b, &[], &[])), Err(PduError::Opcode(0x21)));
        b[0] = 0x10;
        let e = Pdu::parse(raw(b, &[], &[])).unwrap_err();
        assert_eq!((e.clone(), e.reject_reason()), (PduError::Snack, 0x05));
        let mut login = [0u8; 48];
        login[0] = 0x43;
        login[1] = 0x80 | (1 << 2); // T, CSG 1, NSG 0: going backwards
        assert_eq!(Pdu::parse(raw(login, &[], &[])).unwrap_err().reject_reason(), 0x04);
        login[1] = 0x87; // T, CSG 1, NSG 3
        login[8..14].copy_from_slice(&[0x80, 0, 0, 0x12, 0x34, 0x56]);
        let Pdu::Login(l) = Pdu::parse(raw(login, &[], b"A=B\0")).unwrap() else { panic!() };
        assert_eq!((l.transit, l.current_stage, l.next_stage, l.isid), (true, 1, 3, 0x8000_0012_3456));
    }
}
