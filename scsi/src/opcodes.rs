//! The supported command table: one row per (opcode, service action) with its CDB usage
//! mask. The mask is both what REPORT SUPPORTED OPERATION CODES reports and what decoding
//! enforces: a bit set in a CDB where the mask has 0 is a reserved or unsupported field.

use crate::sense::Sense;

/// Operation codes this target knows.
#[allow(missing_docs)]
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;

    /// SERVICE ACTION IN(16) / READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    /// SERVICE ACTION IN(16) / GET LBA STATUS.
    pub const SA_GET_LBA_STATUS: u16 = 0x12;
    /// MAINTENANCE IN / REPORT TARGET PORT GROUPS.
    pub const SA_REPORT_TARGET_PORT_GROUPS: u16 = 0x0A;
    /// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
}

/// The standard name of an opcode this target knows (`READ_10`, `SERVICE_ACTION_IN_16`…),
/// for logs and metric labels.
pub fn name(opcode: u8) -> Option<&'static str> {
    Some(match opcode {
        op::TEST_UNIT_READY => "TEST_UNIT_READY",
        op::REQUEST_SENSE => "REQUEST_SENSE",
        op::READ_6 => "READ_6",
        op::WRITE_6 => "WRITE_6",
        op::INQUIRY => "INQUIRY",
        op::MODE_SELECT_6 => "MODE_SELECT_6",
        op::RESERVE_6 => "RESERVE_6",
        op::RELEASE_6 => "RELEASE_6",
        op::MODE_SENSE_6 => "MODE_SENSE_6",
        op::START_STOP_UNIT => "START_STOP_UNIT",
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => "PREVENT_ALLOW_MEDIUM_REMOVAL",
        op::READ_CAPACITY_10 => "READ_CAPACITY_10",
        op::READ_10 => "READ_10",
        op::WRITE_10 => "WRITE_10",
        op::WRITE_AND_VERIFY_10 => "WRITE_AND_VERIFY_10",
        op::VERIFY_10 => "VERIFY_10",
        op::PRE_FETCH_10 => "PRE_FETCH_10",
        op::SYNCHRONIZE_CACHE_10 => "SYNCHRONIZE_CACHE_10",
        op::READ_DEFECT_DATA_10 => "READ_DEFECT_DATA_10",
        op::WRITE_SAME_10 => "WRITE_SAME_10",
        op::UNMAP => "UNMAP",
        op::MODE_SELECT_10 => "MODE_SELECT_10",
        op::RESERVE_10 => "RESERVE_10",
        op::RELEASE_10 => "RELEASE_10",
        op::MODE_SENSE_10 => "MODE_SENSE_10",
        op::PERSISTENT_RESERVE_IN => "PERSISTENT_RESERVE_IN",
        op::PERSISTENT_RESERVE_OUT => "PERSISTENT_RESERVE_OUT",
        op::READ_16 => "READ_16",
        op::COMPARE_AND_WRITE => "COMPARE_AND_WRITE",
        op::WRITE_16 => "WRITE_16",
        op::ORWRITE_16 => "ORWRITE_16",
        op::WRITE_AND_VERIFY_16 => "WRITE_AND_VERIFY_16",
        op::VERIFY_16 => "VERIFY_16",
        op::PRE_FETCH_16 => "PRE_FETCH_16",
        op::SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE_CACHE_16",
        op::WRITE_SAME_16 => "WRITE_SAME_16",
        op::SERVICE_ACTION_IN_16 => "SERVICE_ACTION_IN_16",
        op::REPORT_LUNS => "REPORT_LUNS",
        op::MAINTENANCE_IN => "MAINTENANCE_IN",
        op::READ_12 => "READ_12",
        op::WRITE_12 => "WRITE_12",
        op::WRITE_AND_VERIFY_12 => "WRITE_AND_VERIFY_12",
        op::VERIFY_12 => "VERIFY_12",
        op::READ_DEFECT_DATA_12 => "READ_DEFECT_DATA_12",
        _ => return None,
    })
}

/// One supported command.
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for opcodes that have one.
    pub service_action: Option<u16>,
    /// CDB usage data: bit set = field is used; its length is the CDB length.
    pub usage: &'static [u8],
    /// Nominal and recommended timeouts in seconds, for the timeouts descriptor.
    pub timeout_secs: u32,
}

const fn row(opcode: u8, usage: &'static [u8], timeout_secs: u32) -> CommandInfo {
    CommandInfo { opcode, service_action: None, usage, timeout_secs }
}

const fn sa_row(opcode: u8, sa: u16, usage: &'static [u8], timeout_secs: u32) -> CommandInfo {
    CommandInfo { opcode, service_action: Some(sa), usage, timeout_secs }
}

/// Every command this target executes, in opcode order.
pub static COMMANDS: &[CommandInfo] = &[
    row(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0], 1),
    row(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, 0xFF, 0], 1),
    row(op::READ_6, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0], 30),
    row(op::WRITE_6, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0], 30),
    row(op::INQUIRY, &[0x12, 0x01, 0xFF, 0xFF, 0xFF, 0], 1),
    row(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, 0xFF, 0], 1),
    // SPC-2 reservations of the whole unit: no third-party or extent reservations.
    row(op::RESERVE_6, &[0x16, 0, 0, 0, 0, 0], 1),
    row(op::RELEASE_6, &[0x17, 0, 0, 0, 0, 0], 1),
    row(op::MODE_SENSE_6, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0], 1),
    row(op::START_STOP_UNIT, &[0x1B, 0x01, 0, 0x0F, 0xF7, 0], 60),
    row(op::PREVENT_ALLOW_MEDIUM_REMOVAL, &[0x1E, 0, 0, 0, 0x03, 0], 1),
    row(op::READ_CAPACITY_10, &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0], 1),
    row(op::READ_10, &[0x28, 0x1C, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], 30),
    row(op::WRITE_10, &[0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], 30),
    row(op::WRITE_AND_VERIFY_10, &[0x2E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], 60),
    row(op::VERIFY_10, &[0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], 60),
    row(op::PRE_FETCH_10, &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], 60),
    row(op::SYNCHRONIZE_CACHE_10, &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], 60),
    row(op::READ_DEFECT_DATA_10, &[0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0], 1),
    row(op::WRITE_SAME_10, &[0x41, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0], 120),
    row(op::UNMAP, &[0x42, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0], 120),
    row(op::MODE_SELECT_10, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], 1),
    row(op::RESERVE_10, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1),
    row(op::RELEASE_10, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1),
    row(op::MODE_SENSE_10, &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0], 1),
    // PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL
    // STATUS; OUT: REGISTER through REGISTER AND MOVE. Each service action is its own row.
    sa_row(op::PERSISTENT_RESERVE_IN, 0, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_IN, 1, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_IN, 2, &[0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_IN, 3, &[0x5E, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 0, &[0x5F, 0x00, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 1, &[0x5F, 0x01, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 2, &[0x5F, 0x02, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 3, &[0x5F, 0x03, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 4, &[0x5F, 0x04, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 5, &[0x5F, 0x05, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 6, &[0x5F, 0x06, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    sa_row(op::PERSISTENT_RESERVE_OUT, 7, &[0x5F, 0x07, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], 1),
    row(
        op::READ_16,
        &[0x88, 0x1C, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        30,
    ),
    row(
        op::COMPARE_AND_WRITE,
        &[0x89, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, 0],
        30,
    ),
    row(
        op::WRITE_16,
        &[0x8A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        30,
    ),
    row(
        op::ORWRITE_16,
        &[0x8B, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        30,
    ),
    row(
        op::WRITE_AND_VERIFY_16,
        &[0x8E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        60,
    ),
    row(
        op::VERIFY_16,
        &[0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        60,
    ),
    row(
        op::PRE_FETCH_16,
        &[0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        60,
    ),
    row(
        op::SYNCHRONIZE_CACHE_16,
        &[0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        60,
    ),
    row(
        op::WRITE_SAME_16,
        &[0x93, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0],
        120,
    ),
    sa_row(
        op::SERVICE_ACTION_IN_16,
        op::SA_READ_CAPACITY_16,
        &[0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0],
        1,
    ),
    sa_row(
        op::SERVICE_ACTION_IN_16,
        op::SA_GET_LBA_STATUS,
        &[0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
        10,
    ),
    row(op::REPORT_LUNS, &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], 1),
    sa_row(
        op::MAINTENANCE_IN,
        op::SA_REPORT_TARGET_PORT_GROUPS,
        &[0xA3, 0x2A, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
        1,
    ),
    sa_row(
        op::MAINTENANCE_IN,
        op::SA_REPORT_SUPPORTED_OPCODES,
        &[0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
        1,
    ),
    row(op::READ_12, &[0xA8, 0x1C, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], 30),
    row(op::WRITE_12, &[0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], 30),
    row(op::WRITE_AND_VERIFY_12, &[0xAE, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], 60),
    row(op::VERIFY_12, &[0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0], 60),
    row(op::READ_DEFECT_DATA_12, &[0xB7, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0], 1),
];

/// Opcodes whose second byte carries a five-bit service action.
pub fn has_service_action(opcode: u8) -> bool {
    matches!(
        opcode,
        op::SERVICE_ACTION_IN_16 | op::MAINTENANCE_IN | op::PERSISTENT_RESERVE_IN | op::PERSISTENT_RESERVE_OUT
    )
}

/// Whether a command with this opcode moves data from the initiator to the target (for
/// transports that give buffers without a direction, like TCMU): everything that writes the
/// medium, plus MODE SELECT and VERIFY (whose BYTCHK data is compared).
pub fn carries_data_out(opcode: u8) -> bool {
    writes_medium(opcode)
        || matches!(
            opcode,
            op::MODE_SELECT_6
                | op::MODE_SELECT_10
                | op::VERIFY_10
                | op::VERIFY_12
                | op::VERIFY_16
                | op::PERSISTENT_RESERVE_OUT
        )
}

/// Whether an opcode returns data read from the medium (the READ family).
pub fn reads_medium(opcode: u8) -> bool {
    matches!(opcode, op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16)
}

/// Whether an opcode changes the medium; a node with read-only access may not send it.
pub fn writes_medium(opcode: u8) -> bool {
    matches!(
        opcode,
        op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_AND_VERIFY_10
            | op::WRITE_AND_VERIFY_12
            | op::WRITE_AND_VERIFY_16
            | op::ORWRITE_16
            | op::WRITE_SAME_10
            | op::WRITE_SAME_16
            | op::UNMAP
            | op::COMPARE_AND_WRITE
    )
}

/// Looks up a command by opcode and service action.
pub fn lookup(opcode: u8, service_action: Option<u16>) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.opcode == opcode && c.service_action == service_action)
}

/// Finds the row for a CDB and checks its length and reserved bits. On success the CDB is
/// exactly as long as the command's and uses no field the target does not support.
pub fn check(cdb: &[u8]) -> Result<&'static CommandInfo, Sense> {
    let opcode = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    let info = if has_service_action(opcode) {
        let sa = u16::from(*cdb.get(1).ok_or_else(Sense::invalid_opcode)? & 0x1F);
        if !COMMANDS.iter().any(|c| c.opcode == opcode) {
            return Err(Sense::invalid_opcode());
        }
        lookup(opcode, Some(sa)).ok_or(Sense::invalid_cdb_field(1, Some(4)))?
    } else {
        lookup(opcode, None).ok_or_else(Sense::invalid_opcode)?
    };
    if cdb.len() < info.usage.len() {
        return Err(Sense::invalid_opcode());
    }
    for (i, (&byte, &mask)) in cdb.iter().zip(info.usage).enumerate() {
        let stray = byte & !mask;
        if stray != 0 {
            let bit = 7 - stray.leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(i as u16, Some(bit)));
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_usage_mask_starts_with_its_opcode_and_has_a_standard_length() {
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.opcode);
            assert!([6, 10, 12, 16].contains(&c.usage.len()), "{:#x}", c.opcode);
            if let Some(sa) = c.service_action {
                assert_eq!(u16::from(c.usage[1] & 0x1F), sa);
            }
        }
    }

    #[test]
    fn writes_medium_agrees_with_decoded_commands() {
        let cfg = crate::LunConfig::new(crate::LunIdentity::new("w"), 512, 1 << 20).unwrap();
        for c in COMMANDS {
            let mut cdb = vec![0u8; c.usage.len()];
            cdb[0] = c.opcode;
            if let Some(sa) = c.service_action {
                cdb[1] = sa as u8;
            }
            // Give length fields a non-zero value where the command needs one.
            if matches!(c.opcode, op::WRITE_SAME_10) {
                cdb[8] = 1;
            }
            if matches!(c.opcode, op::WRITE_SAME_16) {
                cdb[13] = 1;
            }
            if matches!(c.opcode, op::REPORT_LUNS) {
                cdb[9] = 16;
            }
            if let Ok(cmd) = crate::cdb::decode(&cdb, &cfg) {
                assert_eq!(cmd.writes_medium(), writes_medium(c.opcode), "{:#04x}", c.opcode);
            }
        }
    }

    #[test]
    fn reserved_bit_is_reported_with_its_position() {
        // READ(10) with RDPROTECT=1 (byte 1 bit 5) is refused.
        let err = check(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(err, Sense::invalid_cdb_field(1, Some(5)));
        // NACA in the control byte is refused.
        let err = check(&[0x00, 0, 0, 0, 0, 0x04]).unwrap_err();
        assert_eq!(err, Sense::invalid_cdb_field(5, Some(2)));
    }

    #[test]
    fn unknown_opcodes_and_service_actions() {
        assert_eq!(check(&[0xC0, 0, 0, 0, 0, 0]).unwrap_err(), Sense::invalid_opcode());
        assert_eq!(
            check(&[0x9E, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            Sense::invalid_cdb_field(1, Some(4))
        );
        assert_eq!(check(&[0x28, 0, 0]).unwrap_err(), Sense::invalid_opcode());
    }
}
