//! SCSI status, sense keys, additional sense codes and their fixed and descriptor encodings
//! (SPC-4 4.5).

/// The SCSI status byte returned with every completed command (SAM-5 5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The command completed successfully.
    Good = 0x00,
    /// Sense data describes why the command failed.
    CheckCondition = 0x02,
    /// The logical unit is busy; retry later.
    Busy = 0x08,
    /// A reservation held by another I_T nexus forbids the command.
    ReservationConflict = 0x18,
    /// The task set is full.
    TaskSetFull = 0x28,
    /// The command was aborted by a task management function.
    TaskAborted = 0x40,
}

/// Sense keys (SPC-4 table 45).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    /// Nothing to report.
    NoSense = 0x0,
    /// The logical unit cannot be accessed now.
    NotReady = 0x2,
    /// An unrecovered error from the medium (the backing image).
    MediumError = 0x3,
    /// A non-recoverable hardware failure.
    HardwareError = 0x4,
    /// The command or its parameters are invalid.
    IllegalRequest = 0x5,
    /// A condition the initiator must learn of, such as a reset or a capacity change.
    UnitAttention = 0x6,
    /// A write to a write-protected logical unit.
    DataProtect = 0x7,
    /// The command was aborted.
    AbortedCommand = 0xB,
    /// Source data did not match the medium.
    Miscompare = 0xE,
}

/// An additional sense code and qualifier pair (SPC-4 table 46).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    /// NO ADDITIONAL SENSE INFORMATION.
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x00, 0x00);
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY: Asc = Asc(0x04, 0x00);
    /// LOGICAL UNIT NOT READY, FORMAT IN PROGRESS.
    pub const FORMAT_IN_PROGRESS: Asc = Asc(0x04, 0x04);
    /// PERIPHERAL DEVICE WRITE FAULT.
    pub const WRITE_FAULT: Asc = Asc(0x03, 0x00);
    /// WARNING - POWER LOSS EXPECTED.
    pub const POWER_LOSS_EXPECTED: Asc = Asc(0x0B, 0x08);
    /// WRITE ERROR.
    pub const WRITE_ERROR: Asc = Asc(0x0C, 0x00);
    /// LOGICAL BLOCK GUARD CHECK FAILED.
    pub const GUARD_CHECK_FAILED: Asc = Asc(0x10, 0x01);
    /// UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A, 0x00);
    /// MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1D, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Asc = Asc(0x20, 0x00);
    /// ACCESS DENIED - INVALID LU IDENTIFIER.
    pub const ACCESS_DENIED: Asc = Asc(0x20, 0x09);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    /// WRITE PROTECTED.
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    /// LOGICAL UNIT SOFTWARE WRITE PROTECTED (the control mode page's SWP).
    pub const SOFTWARE_WRITE_PROTECTED: Asc = Asc(0x27, 0x02);
    /// SPACE ALLOCATION FAILED WRITE PROTECT (thin provisioning ran out of space).
    pub const SPACE_ALLOCATION_FAILED: Asc = Asc(0x27, 0x07);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: Asc = Asc(0x29, 0x00);
    /// BUS DEVICE RESET FUNCTION OCCURRED (a LOGICAL UNIT RESET).
    pub const LUN_RESET: Asc = Asc(0x29, 0x03);
    /// MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2A, 0x01);
    /// CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_CHANGED: Asc = Asc(0x2A, 0x09);
    /// ASYMMETRIC ACCESS STATE CHANGED.
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2A, 0x06);
    /// LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
    pub const ASYMMETRIC_ACCESS_STATE_TRANSITION: Asc = Asc(0x04, 0x0A);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
    pub const TARGET_PORT_IN_STANDBY_STATE: Asc = Asc(0x04, 0x0B);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
    pub const TARGET_PORT_IN_UNAVAILABLE_STATE: Asc = Asc(0x04, 0x0C);
    /// RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2A, 0x03);
    /// RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2A, 0x04);
    /// REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2A, 0x05);
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE_OF_PR: Asc = Asc(0x26, 0x04);
    /// INSUFFICIENT REGISTRATION RESOURCES.
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
}

/// Where in the CDB or parameter list an invalid field sits (sense-key specific bytes,
/// SPC-4 4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the field is in the CDB, false when it is in the parameter data.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit of the field's most significant bit, when it is narrower than a byte.
    pub bit: Option<u8>,
}

/// Sense data for one failed command, before it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// The sense key.
    pub key: SenseKey,
    /// The additional sense code and qualifier.
    pub asc: Asc,
    /// The INFORMATION field (the failing LBA, or the miscompare offset), when valid.
    pub information: Option<u64>,
    /// The field pointer for ILLEGAL REQUEST sense.
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data this crate produces.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// Sense with a key and code and nothing else.
    pub const fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense { key, asc, information: None, field: None }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`, if any).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_CDB,
            information: None,
            field: Some(FieldPointer { in_cdb: true, byte, bit }),
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte`.
    pub const fn invalid_parameter(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            information: None,
            field: Some(FieldPointer { in_cdb: false, byte, bit }),
        }
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_OPCODE,
            information: None,
            field: Some(FieldPointer { in_cdb: true, byte: 0, bit: None }),
        }
    }

    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(SenseKey::IllegalRequest, Asc::LBA_OUT_OF_RANGE)
    }

    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub const fn parameter_list_length() -> Sense {
        Sense::new(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB without a field pointer: the data the
    /// transport delivered is not the length the CDB gives (as LIO answers an overflow or
    /// underflow of a data CDB).
    pub const fn data_length_mismatch() -> Sense {
        Sense::new(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB)
    }

    /// DATA PROTECT / WRITE PROTECTED.
    pub const fn write_protected() -> Sense {
        Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED)
    }

    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
    pub const fn lun_not_supported() -> Sense {
        Sense::new(SenseKey::IllegalRequest, Asc::LUN_NOT_SUPPORTED)
    }

    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION, with the offset of the first
    /// differing byte in the INFORMATION field.
    pub const fn miscompare(offset: u64) -> Sense {
        Sense { key: SenseKey::Miscompare, asc: Asc::MISCOMPARE_DURING_VERIFY, information: Some(offset), field: None }
    }

    /// Encodes fixed-format sense data (response code 0x70, SPC-4 4.5.3).
    pub fn fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        b[2] = self.key as u8;
        if let Some(info) = self.information {
            // The fixed INFORMATION field holds 32 bits; a larger value cannot be valid there.
            if let Ok(info) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&info.to_be_bytes());
            }
        }
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc.0;
        b[13] = self.asc.1;
        if let Some(sks) = self.sense_key_specific() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Encodes descriptor-format sense data (response code 0x72, SPC-4 4.5.2), with an
    /// information descriptor and a sense-key specific descriptor when they apply.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key as u8, self.asc.0, self.asc.1, 0, 0, 0, 0];
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific() {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&sks);
            b.push(0);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// Encodes in the format the initiator asked for.
    pub fn encode(&self, descriptor_format: bool) -> Vec<u8> {
        if descriptor_format {
            self.descriptor()
        } else {
            self.fixed().to_vec()
        }
    }

    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut first = 0x80; // SKSV
        if f.in_cdb {
            first |= 0x40;
        }
        if let Some(bit) = f.bit {
            first |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([first, hi, lo])
    }
}

/// Decoded key, code and information of encoded sense data, for initiators and tests.
pub fn parse_sense(bytes: &[u8]) -> Option<(u8, Asc, Option<u64>)> {
    let code = *bytes.first()? & 0x7F;
    match code {
        0x70 | 0x71 => {
            let key = bytes.get(2)? & 0x0F;
            let asc = Asc(*bytes.get(12)?, *bytes.get(13)?);
            let info = (bytes[0] & 0x80 != 0)
                .then(|| bytes.get(3..7).map(|s| u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))))
                .flatten();
            Some((key, asc, info))
        }
        0x72 | 0x73 => {
            let key = bytes.get(1)? & 0x0F;
            let asc = Asc(*bytes.get(2)?, *bytes.get(3)?);
            let mut info = None;
            let mut at = 8usize;
            let end = 8usize.saturating_add(usize::from(*bytes.get(7)?)).min(bytes.len());
            while at + 2 <= end {
                let len = usize::from(bytes[at + 1]);
                if bytes[at] == 0x00 && len == 0x0A && at + 12 <= end {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&bytes[at + 4..at + 12]);
                    info = Some(u64::from_be_bytes(v));
                }
                at += 2 + len;
            }
            Some((key, asc, info))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_field_carries_field_pointer() {
        let s = Sense::invalid_cdb_field(4, Some(3)).fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 3, 0, 4]);
    }

    #[test]
    fn fixed_miscompare_sets_valid_and_information() {
        let s = Sense::miscompare(0x1234).fixed();
        assert_eq!(s[0], 0xF0);
        assert_eq!(s[2], 0x0E);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(parse_sense(&s), Some((0x0E, Asc::MISCOMPARE_DURING_VERIFY, Some(0x1234))));
    }

    #[test]
    fn descriptor_format_has_information_and_sks_descriptors() {
        let s = Sense { information: Some(7), ..Sense::invalid_cdb_field(2, None) }.descriptor();
        assert_eq!(&s[..4], &[0x72, 0x05, 0x24, 0x00]);
        assert_eq!(usize::from(s[7]), s.len() - 8);
        assert_eq!(&s[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(&s[12..20], &7u64.to_be_bytes());
        assert_eq!(&s[20..27], &[0x02, 0x06, 0, 0, 0xC0, 0, 2]);
        assert_eq!(parse_sense(&s), Some((0x05, Asc::INVALID_FIELD_IN_CDB, Some(7))));
    }
}
