//! CDB decoding: bytes in, a fully validated [`Command`] out (SPC-4, SBC-3).
//!
//! Everything that can be checked from the CDB and the LUN's settings is checked here, so
//! execution only ever sees valid commands: reserved bits, field values, LBA plus length
//! against capacity with checked arithmetic, and transfer lengths against the Block Limits
//! VPD page.

use crate::config::LunConfig;
use crate::opcodes::{self, op};
use crate::sense::Sense;

/// A range of logical blocks, validated against capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub lba: u64,
    /// Number of blocks; may be zero.
    pub blocks: u32,
}

/// A MODE SENSE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSense {
    /// MODE SENSE(10) rather than (6).
    pub ten: bool,
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA block descriptors (10-byte form only).
    pub llbaa: bool,
    /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
    pub page_control: u8,
    /// Page code (0x3F for all).
    pub page: u8,
    /// Subpage code.
    pub subpage: u8,
    /// Allocation length.
    pub alloc: u16,
}

/// A decoded, validated command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Descriptor-format sense requested.
        desc: bool,
        /// Allocation length.
        alloc: u16,
    },
    /// INQUIRY, standard data or a VPD page.
    Inquiry {
        /// The VPD page, or `None` for standard data.
        vpd: Option<u8>,
        /// Allocation length.
        alloc: u16,
    },
    /// MODE SENSE (6) or (10).
    ModeSense(ModeSense),
    /// MODE SELECT (6) or (10).
    ModeSelect {
        /// MODE SELECT(10) rather than (6).
        ten: bool,
        /// Save pages.
        save: bool,
        /// Parameter list length.
        len: u16,
    },
    /// START STOP UNIT.
    StartStopUnit {
        /// START bit.
        start: bool,
        /// NO_FLUSH bit: skip the implicit cache flush on stop.
        no_flush: bool,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL (a no-op on non-removable media).
    PreventAllowMediumRemoval,
    /// RESERVE (6) or (10): an SPC-2 reservation of the whole unit.
    Reserve,
    /// RELEASE (6) or (10).
    Release,
    /// READ DEFECT DATA (10) or (12): the (empty) defect lists.
    ReadDefectData {
        /// The 12-byte CDB (its header is 8 bytes, with a 4-byte length).
        twelve: bool,
        /// REQ_PLIST, REQ_GLIST and DEFECT LIST FORMAT, as the CDB has them.
        request: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// READ CAPACITY (10).
    ReadCapacity10,
    /// READ CAPACITY (16).
    ReadCapacity16 {
        /// Allocation length.
        alloc: u32,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// Starting LBA.
        lba: u64,
        /// Allocation length.
        alloc: u32,
    },
    /// READ (6/10/12/16).
    Read {
        /// Blocks to read.
        extent: Extent,
        /// Force unit access (read from the medium).
        fua: bool,
    },
    /// WRITE (6/10/12/16).
    Write {
        /// Blocks to write.
        extent: Extent,
        /// Force unit access: durable before status.
        fua: bool,
    },
    /// WRITE AND VERIFY (10/16).
    WriteAndVerify {
        /// Blocks to write.
        extent: Extent,
        /// Compare what was written with the data-out buffer.
        bytchk: bool,
    },
    /// VERIFY (10/16).
    Verify {
        /// Blocks to verify.
        extent: Extent,
        /// Compare the medium with the data-out buffer (BYTCHK=1) rather than only reading it.
        bytchk: bool,
    },
    /// PRE-FETCH (10/16): read blocks ahead of use.
    PreFetch {
        /// Blocks to fetch.
        extent: Extent,
    },
    /// ORWRITE (16): OR the data-out into the blocks (SBC-3 5.8), atomically for the range.
    OrWrite {
        /// Blocks to update.
        extent: Extent,
        /// Force unit access: durable before status.
        fua: bool,
    },
    /// SYNCHRONIZE CACHE (10/16).
    SynchronizeCache,
    /// UNMAP with a parameter list of this length.
    Unmap {
        /// Parameter list length.
        len: u16,
    },
    /// WRITE SAME (10/16).
    WriteSame {
        /// Blocks to write.
        lba: u64,
        /// Number of blocks (never zero).
        blocks: u64,
        /// Deallocate where possible.
        unmap: bool,
        /// No data-out buffer: the block is all zeros.
        ndob: bool,
    },
    /// COMPARE AND WRITE.
    CompareAndWrite {
        /// Blocks to compare and write.
        extent: Extent,
        /// Force unit access for the write.
        fua: bool,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action ([`crate::pr::sa_in`]).
        action: u8,
        /// Allocation length.
        alloc: u16,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action ([`crate::pr::sa_out`]).
        action: u8,
        /// The SCOPE and TYPE byte.
        scope_type: u8,
        /// Parameter list length.
        len: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT field.
        select: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// REPORT TARGET PORT GROUPS.
    ReportTargetPortGroups {
        /// PARAMETER DATA FORMAT 001b: the extended header.
        extended: bool,
        /// Allocation length.
        alloc: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// Include command timeouts descriptors.
        rctd: bool,
        /// REPORTING OPTIONS field.
        options: u8,
        /// Requested operation code.
        opcode: u8,
        /// Requested service action.
        service_action: u16,
        /// Allocation length.
        alloc: u32,
    },
}

impl Command {
    /// Bytes of data-out the initiator sends with this command.
    pub fn data_out_len(&self, block_size: u32) -> usize {
        let bs = block_size as usize;
        match *self {
            Command::ModeSelect { len, .. } | Command::Unmap { len } => usize::from(len),
            Command::PersistentReserveOut { len, .. } => len as usize,
            Command::Write { extent, .. }
            | Command::WriteAndVerify { extent, .. }
            | Command::OrWrite { extent, .. } => extent.blocks as usize * bs,
            Command::Verify { extent, bytchk: true } => extent.blocks as usize * bs,
            Command::WriteSame { ndob: false, .. } => bs,
            Command::CompareAndWrite { extent, .. } => 2 * extent.blocks as usize * bs,
            _ => 0,
        }
    }

    /// Whether the data-out is blocks for the medium, whose length the CDB fixes exactly
    /// (rather than a parameter list, which may come with more than its length field says).
    pub fn data_out_is_blocks(&self) -> bool {
        matches!(
            self,
            Command::Write { .. }
                | Command::WriteAndVerify { .. }
                | Command::Verify { bytchk: true, .. }
                | Command::WriteSame { ndob: false, .. }
                | Command::CompareAndWrite { .. }
                | Command::OrWrite { .. }
        )
    }

    /// Checks the data-out the transport delivered, `have` bytes, against what the CDB
    /// says, before anything else looks at it: block data must match exactly (COMPARE AND
    /// WRITE of zero blocks with data is refused, as is a WRITE SAME with two blocks of
    /// data), and a parameter list must be complete.
    pub fn check_data_out(&self, block_size: u32, have: usize) -> Result<(), Sense> {
        let want = self.data_out_len(block_size);
        if self.data_out_is_blocks() && have != want {
            return Err(Sense::data_length_mismatch());
        }
        if have < want {
            return Err(Sense::parameter_list_length());
        }
        Ok(())
    }

    /// Bytes of data-out the target must inspect itself (parameter lists and the WRITE SAME
    /// block); bulk write data is moved by the backend and never parsed.
    pub fn parameter_len(&self, block_size: u32) -> usize {
        match self {
            Command::ModeSelect { .. }
            | Command::Unmap { .. }
            | Command::WriteSame { .. }
            | Command::PersistentReserveOut { .. } => self.data_out_len(block_size),
            _ => 0,
        }
    }

    /// Most bytes of data-in this command can return.
    pub fn data_in_len(&self, block_size: u32) -> usize {
        match *self {
            Command::Read { extent, .. } => extent.blocks as usize * block_size as usize,
            Command::RequestSense { alloc, .. } | Command::Inquiry { alloc, .. } => usize::from(alloc),
            Command::ModeSense(m) => usize::from(m.alloc),
            Command::PersistentReserveIn { alloc, .. } => usize::from(alloc),
            Command::ReadCapacity10 => 8,
            Command::ReadDefectData { alloc, .. } => alloc as usize,
            Command::ReadCapacity16 { alloc }
            | Command::GetLbaStatus { alloc, .. }
            | Command::ReportLuns { alloc, .. }
            | Command::ReportTargetPortGroups { alloc, .. }
            | Command::ReportSupportedOpcodes { alloc, .. } => alloc as usize,
            _ => 0,
        }
    }

    /// Whether the command changes the medium (refused on read-only LUNs).
    pub fn writes_medium(&self) -> bool {
        matches!(
            self,
            Command::Write { .. }
                | Command::WriteAndVerify { .. }
                | Command::Unmap { .. }
                | Command::WriteSame { .. }
                | Command::CompareAndWrite { .. }
                | Command::OrWrite { .. }
        )
    }

    /// Whether a pending unit attention is reported instead of executing (SPC-4 5.14: not
    /// for INQUIRY, REPORT LUNS and REQUEST SENSE).
    pub fn reports_unit_attention(&self) -> bool {
        !matches!(self, Command::Inquiry { .. } | Command::ReportLuns { .. } | Command::RequestSense { .. })
    }

    /// How a persistent reservation treats it (SPC-4 table 66, SBC-3 table 13): commands
    /// that only describe the unit pass any reservation; reads of the medium or its state
    /// are refused by the exclusive-access types; anything that changes the medium or the
    /// unit by every type, to those the type does not admit.
    pub fn pr_access(&self) -> crate::pr::Access {
        use crate::pr::Access;
        match self {
            Command::Read { .. }
            | Command::Verify { .. }
            | Command::PreFetch { .. }
            | Command::GetLbaStatus { .. }
            | Command::ReadDefectData { .. }
            | Command::ModeSense(_) => Access::Read,
            Command::Write { .. }
            | Command::WriteAndVerify { .. }
            | Command::OrWrite { .. }
            | Command::SynchronizeCache
            | Command::Unmap { .. }
            | Command::WriteSame { .. }
            | Command::CompareAndWrite { .. }
            | Command::ModeSelect { .. }
            | Command::StartStopUnit { start: false, .. } => Access::Write,
            _ => Access::Any,
        }
    }

    /// Whether an initiator may send it while another holds an SPC-2 reservation of the
    /// unit (SPC-2 5.5.1; the set LIO allows): INQUIRY, REPORT LUNS, REQUEST SENSE and
    /// RELEASE. Anything else gets RESERVATION CONFLICT.
    pub fn allowed_under_reservation(&self) -> bool {
        matches!(
            self,
            Command::Inquiry { .. } | Command::ReportLuns { .. } | Command::RequestSense { .. } | Command::Release
        )
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// Checks `lba..lba+blocks` against capacity (SBC-3 4.5): a range that ends past the last
/// block, or starts past it, is LOGICAL BLOCK ADDRESS OUT OF RANGE.
pub fn check_range(cfg: &LunConfig, lba: u64, blocks: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= cfg.blocks && lba < cfg.blocks => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// Builds an extent for a data transfer: checks the transfer length against the Block
/// Limits maximum (pointing at `len_byte`) and the range against capacity.
fn transfer(cfg: &LunConfig, lba: u64, blocks: u32, len_byte: u16) -> Result<Extent, Sense> {
    if blocks > cfg.max_transfer_blocks() {
        return Err(Sense::invalid_cdb_field(len_byte, None));
    }
    check_range(cfg, lba, u64::from(blocks))?;
    Ok(Extent { lba, blocks })
}

/// Where a 10-, 12- or 16-byte block command keeps its LBA and length.
fn lba_len(cdb: &[u8]) -> (u64, u32, u16) {
    match cdb.len() {
        10 => (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), 7),
        12 => (u64::from(be32(cdb, 2)), be32(cdb, 6), 6),
        _ => (be64(cdb, 2), be32(cdb, 10), 10),
    }
}

/// BYTCHK (byte 1 bits 2:1) of VERIFY and WRITE AND VERIFY: 00 and 01 are supported.
fn bytchk(cdb: &[u8]) -> Result<bool, Sense> {
    match (cdb[1] >> 1) & 0x3 {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Sense::invalid_cdb_field(1, Some(2))),
    }
}

/// Bytes a READ (6/10/12/16) CDB asks for, from its TRANSFER LENGTH alone (no capacity or
/// limit checks), so a transport can check the buffer it was given before decoding; `None`
/// for other opcodes or a CDB too short for its opcode.
pub fn read_transfer_bytes(cdb: &[u8], block_size: u32) -> Option<u64> {
    let blocks = match *cdb.first()? {
        op::READ_6 if cdb.len() >= 6 => match cdb[4] {
            0 => 256,
            n => u32::from(n),
        },
        op::READ_10 if cdb.len() >= 10 => u32::from(be16(cdb, 7)),
        op::READ_12 if cdb.len() >= 12 => be32(cdb, 6),
        op::READ_16 if cdb.len() >= 16 => be32(cdb, 10),
        _ => return None,
    };
    Some(u64::from(blocks) * u64::from(block_size))
}

/// Bytes of block data-out a writing CDB carries, from its TRANSFER LENGTH alone, so a
/// transport can hold it against the length the initiator says it sends: the WRITEs,
/// WRITE AND VERIFY, ORWRITE, COMPARE AND WRITE (compare and write blocks) and WRITE SAME
/// (one block, none with NDOB). `None` for other opcodes (parameter lists, which may come
/// with more than their length field says) or a CDB too short for its opcode.
pub fn write_transfer_bytes(cdb: &[u8], block_size: u32) -> Option<u64> {
    let blocks = match *cdb.first()? {
        op::WRITE_6 if cdb.len() >= 6 => match cdb[4] {
            0 => 256,
            n => u64::from(n),
        },
        op::WRITE_10 | op::WRITE_AND_VERIFY_10 if cdb.len() >= 10 => u64::from(be16(cdb, 7)),
        op::WRITE_12 | op::WRITE_AND_VERIFY_12 if cdb.len() >= 12 => u64::from(be32(cdb, 6)),
        op::WRITE_16 | op::WRITE_AND_VERIFY_16 | op::ORWRITE_16 if cdb.len() >= 16 => u64::from(be32(cdb, 10)),
        op::COMPARE_AND_WRITE if cdb.len() >= 16 => 2 * u64::from(cdb[13]),
        op::WRITE_SAME_10 if cdb.len() >= 10 => 1,
        op::WRITE_SAME_16 if cdb.len() >= 16 => u64::from(cdb[1] & 0x01 == 0),
        _ => return None,
    };
    Some(blocks * u64::from(block_size))
}

/// A copy of a WRITE or WRITE AND VERIFY CDB asking for `blocks` blocks instead, so a
/// transport can write only what the initiator said it sends (SAM's choice when the
/// expected transfer length falls short of the CDB's); `None` for other opcodes, or where
/// the field cannot say `blocks` (WRITE(6) reads 0 as 256).
pub fn with_transfer_blocks(cdb: &[u8], blocks: u32) -> Option<Vec<u8>> {
    let mut c = cdb.to_vec();
    match *cdb.first()? {
        op::WRITE_6 if cdb.len() >= 6 && (1..=255).contains(&blocks) => c[4] = blocks as u8,
        op::WRITE_10 | op::WRITE_AND_VERIFY_10 if cdb.len() >= 10 => {
            c[7..9].copy_from_slice(&u16::try_from(blocks).ok()?.to_be_bytes());
        }
        op::WRITE_12 | op::WRITE_AND_VERIFY_12 if cdb.len() >= 12 => c[6..10].copy_from_slice(&blocks.to_be_bytes()),
        op::WRITE_16 | op::WRITE_AND_VERIFY_16 if cdb.len() >= 16 => c[10..14].copy_from_slice(&blocks.to_be_bytes()),
        _ => return None,
    }
    Some(c)
}

/// SELECT REPORT and ALLOCATION LENGTH of a REPORT LUNS CDB whose reserved bits were
/// checked. REPORT LUNS is addressed to the target, so it needs no LUN settings.
pub fn report_luns_fields(cdb: &[u8]) -> Result<(u8, u32), Sense> {
    let alloc = be32(cdb, 6);
    // SPC-4 6.33: an allocation length under 16 is an error.
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, None));
    }
    if !matches!(cdb[2], 0x00..=0x02 | 0x10..=0x12) {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    Ok((cdb[2], alloc))
}

/// Decodes and validates a CDB against a LUN's settings.
pub fn decode(cdb: &[u8], cfg: &LunConfig) -> Result<Command, Sense> {
    let info = opcodes::check(cdb)?;
    let cdb = &cdb[..info.usage.len()];
    let fua = cdb.len() >= 10 && cdb[1] & 0x08 != 0;
    let cmd = match cdb[0] {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense { desc: cdb[1] & 1 != 0, alloc: u16::from(cdb[4]) },
        op::INQUIRY => {
            let evpd = cdb[1] & 1 != 0;
            if !evpd && cdb[2] != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Command::Inquiry { vpd: evpd.then_some(cdb[2]), alloc: be16(cdb, 3) }
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let ten = cdb[0] == op::MODE_SENSE_10;
            Command::ModeSense(ModeSense {
                ten,
                dbd: cdb[1] & 0x08 != 0,
                llbaa: ten && cdb[1] & 0x10 != 0,
                page_control: cdb[2] >> 6,
                page: cdb[2] & 0x3F,
                subpage: cdb[3],
                alloc: if ten { be16(cdb, 7) } else { u16::from(cdb[4]) },
            })
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = cdb[0] == op::MODE_SELECT_10;
            let len = if ten { be16(cdb, 7) } else { u16::from(cdb[4]) };
            // Only the page format is supported; PF=0 with parameters is vendor specific.
            if cdb[1] & 0x10 == 0 && len != 0 {
                return Err(Sense::invalid_cdb_field(1, Some(4)));
            }
            Command::ModeSelect { ten, save: cdb[1] & 1 != 0, len }
        }
        op::START_STOP_UNIT => {
            // Only the START_VALID power condition; no power condition modifiers.
            if cdb[4] >> 4 != 0 {
                return Err(Sense::invalid_cdb_field(4, Some(7)));
            }
            if cdb[3] & 0x0F != 0 {
                return Err(Sense::invalid_cdb_field(3, Some(3)));
            }
            Command::StartStopUnit { start: cdb[4] & 1 != 0, no_flush: cdb[4] & 0x04 != 0 }
        }
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => Command::PreventAllowMediumRemoval,
        op::PERSISTENT_RESERVE_IN => Command::PersistentReserveIn { action: cdb[1] & 0x1F, alloc: be16(cdb, 7) },
        op::PERSISTENT_RESERVE_OUT => Command::PersistentReserveOut {
            action: cdb[1] & 0x1F,
            scope_type: cdb[2],
            len: u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]),
        },
        op::RESERVE_6 | op::RESERVE_10 => Command::Reserve,
        op::RELEASE_6 | op::RELEASE_10 => Command::Release,
        op::READ_DEFECT_DATA_10 => {
            Command::ReadDefectData { twelve: false, request: cdb[2], alloc: u32::from(be16(cdb, 7)) }
        }
        op::READ_DEFECT_DATA_12 => Command::ReadDefectData { twelve: true, request: cdb[1], alloc: be32(cdb, 6) },
        op::READ_CAPACITY_10 => {
            // SBC-3: with PMI clear the LOGICAL BLOCK ADDRESS field must be zero.
            if cdb[8] & 1 == 0 && be32(cdb, 2) != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Command::ReadCapacity10
        }
        op::SERVICE_ACTION_IN_16 => match u16::from(cdb[1] & 0x1F) {
            op::SA_READ_CAPACITY_16 => {
                if cdb[14] & 1 == 0 && be64(cdb, 2) != 0 {
                    return Err(Sense::invalid_cdb_field(2, None));
                }
                Command::ReadCapacity16 { alloc: be32(cdb, 10) }
            }
            _ => {
                let lba = be64(cdb, 2);
                if lba >= cfg.blocks {
                    return Err(Sense::lba_out_of_range());
                }
                Command::GetLbaStatus { lba, alloc: be32(cdb, 10) }
            }
        },
        op::READ_6 | op::WRITE_6 => {
            let lba = u64::from(be32(cdb, 0) & 0x001F_FFFF);
            let blocks = if cdb[4] == 0 { 256 } else { u32::from(cdb[4]) };
            let extent = transfer(cfg, lba, blocks, 4)?;
            if cdb[0] == op::READ_6 {
                Command::Read { extent, fua: false }
            } else {
                Command::Write { extent, fua: false }
            }
        }
        op::READ_10 | op::READ_12 | op::READ_16 => {
            let (lba, blocks, at) = lba_len(cdb);
            Command::Read { extent: transfer(cfg, lba, blocks, at)?, fua }
        }
        op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
            let (lba, blocks, at) = lba_len(cdb);
            Command::Write { extent: transfer(cfg, lba, blocks, at)?, fua }
        }
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            let (lba, blocks, at) = lba_len(cdb);
            let bytchk = bytchk(cdb)?;
            Command::WriteAndVerify { extent: transfer(cfg, lba, blocks, at)?, bytchk }
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            let (lba, blocks, at) = lba_len(cdb);
            let bytchk = bytchk(cdb)?;
            Command::Verify { extent: transfer(cfg, lba, blocks, at)?, bytchk }
        }
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
            // Not a transfer, so no Block Limits maximum; only the range is checked.
            let (lba, blocks, _) = lba_len(cdb);
            check_range(cfg, lba, u64::from(blocks))?;
            Command::PreFetch { extent: Extent { lba, blocks } }
        }
        op::ORWRITE_16 => {
            let (lba, blocks, at) = lba_len(cdb);
            Command::OrWrite { extent: transfer(cfg, lba, blocks, at)?, fua }
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            let (lba, blocks, _) = lba_len(cdb);
            // NUMBER OF LOGICAL BLOCKS zero means "to the end of the medium".
            let blocks = if blocks == 0 { cfg.blocks.saturating_sub(lba) } else { u64::from(blocks) };
            if lba >= cfg.blocks {
                return Err(Sense::lba_out_of_range());
            }
            check_range(cfg, lba, blocks)?;
            Command::SynchronizeCache
        }
        op::UNMAP => {
            if !cfg.thin_provisioning {
                return Err(Sense::invalid_opcode());
            }
            Command::Unmap { len: be16(cdb, 7) }
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            let (lba, blocks, at) = lba_len(cdb);
            let unmap = cdb[1] & 0x08 != 0;
            let ndob = cdb[0] == op::WRITE_SAME_16 && cdb[1] & 0x01 != 0;
            if unmap && !cfg.thin_provisioning {
                return Err(Sense::invalid_cdb_field(1, Some(3)));
            }
            // WSNZ is set in the Block Limits VPD page: zero blocks is not "to the end".
            if blocks == 0 || u64::from(blocks) > cfg.max_write_same_blocks() {
                return Err(Sense::invalid_cdb_field(at, None));
            }
            check_range(cfg, lba, u64::from(blocks))?;
            Command::WriteSame { lba, blocks: u64::from(blocks), unmap, ndob }
        }
        op::COMPARE_AND_WRITE => {
            let lba = be64(cdb, 2);
            let blocks = u32::from(cdb[13]);
            if blocks > u32::from(cfg.limits.max_compare_and_write_blocks) {
                return Err(Sense::invalid_cdb_field(13, None));
            }
            check_range(cfg, lba, u64::from(blocks))?;
            Command::CompareAndWrite { extent: Extent { lba, blocks }, fua }
        }
        op::REPORT_LUNS => {
            let (select, alloc) = report_luns_fields(cdb)?;
            Command::ReportLuns { select, alloc }
        }
        op::MAINTENANCE_IN if u16::from(cdb[1] & 0x1F) == op::SA_REPORT_TARGET_PORT_GROUPS => {
            Command::ReportTargetPortGroups { extended: cdb[1] >> 5 == 1, alloc: be32(cdb, 6) }
        }
        op::MAINTENANCE_IN => {
            let options = cdb[2] & 0x07;
            if options > 3 {
                return Err(Sense::invalid_cdb_field(2, Some(2)));
            }
            Command::ReportSupportedOpcodes {
                rctd: cdb[2] & 0x80 != 0,
                options,
                opcode: cdb[3],
                service_action: be16(cdb, 4),
                alloc: be32(cdb, 6),
            }
        }
        other => unreachable!("opcode {other:#04x} is in the command table but has no decoder"),
    };
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LunIdentity;

    fn cfg() -> LunConfig {
        LunConfig::new(LunIdentity::new("t"), 512, 1 << 20).unwrap()
    }

    #[test]
    fn read10_decodes_lba_length_and_fua() {
        let c = decode(&[0x28, 0x08, 0, 0, 0, 10, 0, 0, 4, 0], &cfg()).unwrap();
        assert_eq!(c, Command::Read { extent: Extent { lba: 10, blocks: 4 }, fua: true });
    }

    #[test]
    fn write_transfer_bytes_counts_block_data_out() {
        assert_eq!(write_transfer_bytes(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 3, 0], 512), Some(1536));
        assert_eq!(write_transfer_bytes(&[0x0A, 0, 0, 0, 0, 0], 512), Some(256 * 512));
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[13] = 2;
        assert_eq!(write_transfer_bytes(&caw, 4096), Some(4 * 4096));
        let mut ws = [0u8; 16];
        ws[0] = 0x93;
        ws[13] = 100;
        assert_eq!(write_transfer_bytes(&ws, 512), Some(512));
        ws[1] = 0x01;
        assert_eq!(write_transfer_bytes(&ws, 512), Some(0));
        assert_eq!(write_transfer_bytes(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512), None);
        assert_eq!(write_transfer_bytes(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], 512), None);
        assert_eq!(write_transfer_bytes(&[0x2A, 0, 0], 512), None);
        let shorter = with_transfer_blocks(&[0x2A, 0, 0, 0, 0, 9, 0, 0, 3, 0], 1).unwrap();
        assert_eq!(shorter, [0x2A, 0, 0, 0, 0, 9, 0, 0, 1, 0]);
        assert_eq!(with_transfer_blocks(&[0x0A, 0, 0, 0, 4, 0], 0), None, "WRITE(6) cannot say zero");
        assert_eq!(with_transfer_blocks(&caw, 1), None);
    }

    #[test]
    fn read6_zero_length_means_256_blocks() {
        let c = decode(&[0x08, 0, 0, 1, 0, 0], &cfg()).unwrap();
        assert_eq!(c, Command::Read { extent: Extent { lba: 1, blocks: 256 }, fua: false });
    }

    #[test]
    fn range_checks_use_checked_arithmetic() {
        let mut cdb = [0x88u8, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 2, 0, 0];
        assert_eq!(decode(&cdb, &cfg()), Err(Sense::lba_out_of_range()));
        cdb[2..10].copy_from_slice(&2047u64.to_be_bytes());
        assert!(decode(&cdb, &cfg()).is_err());
        cdb[2..10].copy_from_slice(&2046u64.to_be_bytes());
        assert!(decode(&cdb, &cfg()).is_ok());
    }

    #[test]
    fn transfer_over_block_limits_points_at_length() {
        let mut c = cfg();
        c.limits.max_transfer_bytes = 4096;
        assert_eq!(decode(&[0x28, 0, 0, 0, 0, 0, 0, 0, 9, 0], &c), Err(Sense::invalid_cdb_field(7, None)));
    }

    #[test]
    fn inquiry_page_code_without_evpd_is_invalid() {
        assert_eq!(decode(&[0x12, 0, 0x80, 0, 255, 0], &cfg()), Err(Sense::invalid_cdb_field(2, None)));
    }
}
