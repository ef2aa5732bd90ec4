//! SCSI block operations to NVMe NVM commands and NVMe status to SCSI sense, without I/O.
//!
//! The engine hands this module what an [`IoOp`](crate::engine::IoOp) asks for, in blocks,
//! and gets back the NVMe commands that do it, in the namespace's limits; each command's
//! 72-byte `struct nvme_uring_cmd` is encoded here too. The identify structures the engine
//! reads at open are parsed here, and so is every status a command can finish with. The
//! offsets and codes are those of the NVM Express Base and NVM Command Set specifications;
//! the status-to-sense table follows the NVM Express SCSI Translation Reference.

use scsi::{Asc, IoFailure, Sense, SenseKey};

/// Most blocks one Read, Write or Write Zeroes can carry: NLB is a 16-bit 0's based count.
pub const MAX_BLOCKS_PER_COMMAND: u64 = 1 << 16;

/// Most ranges in one Dataset Management command (NR is an 8-bit 0's based count).
pub const MAX_DSM_RANGES: usize = 256;

/// Bytes of one Dataset Management range.
pub const DSM_RANGE_BYTES: usize = 16;

/// Bytes of an identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

/// NVM command set opcodes (NVM Command Set specification, figure "Opcodes for NVM Commands").
pub mod opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Identify (admin).
    pub const IDENTIFY: u8 = 0x06;
}

/// Identify CNS values.
pub mod cns {
    /// Identify Namespace (NVM command set).
    pub const NAMESPACE: u32 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u32 = 0x01;
    /// I/O command set specific Identify Controller (with CSI 0: the NVM command set's).
    pub const CONTROLLER_CSI: u32 = 0x06;
}

/// What Identify Controller says that the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Controller {
    /// Maximum Data Transfer Size: a power of two in units of the minimum memory page size,
    /// 0 for no limit.
    pub mdts: u8,
    /// Optional NVM Command Support (ONCS).
    pub oncs: u16,
    /// Fused Operation Support (FUSES).
    pub fuses: u16,
    /// A volatile write cache is present (VWC bit 0).
    pub volatile_cache: bool,
}

impl Controller {
    /// Parses Identify Controller data (CNS 01h).
    pub fn parse(id: &[u8]) -> Result<Controller, String> {
        if id.len() < IDENTIFY_BYTES {
            return Err(format!("identify controller data is {} bytes, not {IDENTIFY_BYTES}", id.len()));
        }
        Ok(Controller { mdts: id[77], oncs: le16(id, 520), fuses: le16(id, 522), volatile_cache: id[525] & 1 != 0 })
    }
}

/// The NVM command set's Identify Controller (CNS 06h, CSI 00h) limits; each 0 means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NvmLimits {
    /// Write Zeroes Size Limit, a power of two in units of the minimum memory page size.
    pub wzsl: u8,
    /// Dataset Management Ranges Limit.
    pub dmrl: u8,
    /// Dataset Management Range Size Limit, in blocks.
    pub dmrsl: u32,
}

impl NvmLimits {
    /// Parses the NVM command set's Identify Controller data.
    pub fn parse(id: &[u8]) -> Result<NvmLimits, String> {
        if id.len() < IDENTIFY_BYTES {
            return Err(format!("NVM identify controller data is {} bytes, not {IDENTIFY_BYTES}", id.len()));
        }
        Ok(NvmLimits { wzsl: id[1], dmrl: id[3], dmrsl: le32(id, 4) })
    }
}

/// What Identify Namespace says that the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceData {
    /// Namespace Size, in blocks.
    pub nsze: u64,
    /// The formatted LBA size, as a power of two.
    pub lba_shift: u8,
    /// Metadata bytes per block of the formatted LBA format.
    pub metadata: u16,
    /// End-to-end protection type (DPS bits 2:0), 0 for none.
    pub protection: u8,
    /// Deallocate Logical Block Features (DLFEAT).
    pub dlfeat: u8,
}

impl NamespaceData {
    /// Parses Identify Namespace data (CNS 00h).
    pub fn parse(id: &[u8]) -> Result<NamespaceData, String> {
        if id.len() < IDENTIFY_BYTES {
            return Err(format!("identify namespace data is {} bytes, not {IDENTIFY_BYTES}", id.len()));
        }
        let nlbaf = usize::from(id[25]) + 1;
        let flbas = id[26];
        // FLBAS bits 3:0 are the format's low bits, bits 6:5 its high bits (with more than
        // 16 formats).
        let format = usize::from(flbas & 0xf) | usize::from((flbas >> 5) & 0x3) << 4;
        if format >= nlbaf.min(64) {
            return Err(format!("the namespace's LBA format {format} is not among its {nlbaf} formats"));
        }
        let lbaf = 128 + 4 * format;
        let lba_shift = id[lbaf + 2];
        if !(9..=16).contains(&lba_shift) {
            return Err(format!("the namespace's LBA size 2^{lba_shift} is not one a LUN can have"));
        }
        Ok(NamespaceData {
            nsze: le64(id, 0),
            lba_shift,
            metadata: le16(id, lbaf),
            protection: id[29] & 0x7,
            dlfeat: id[33],
        })
    }
}

/// One namespace, as the engine drives it: its size and format and what its controller
/// can do, within the limits of the host's passthrough path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// Blocks in the namespace.
    pub blocks: u64,
    /// Block size as a power of two.
    pub lba_shift: u8,
    /// Most blocks one Read or Write carries.
    pub max_transfer_blocks: u32,
    /// Most blocks one Write Zeroes carries.
    pub max_zeroes_blocks: u32,
    /// Dataset Management (deallocate) is supported.
    pub dsm: bool,
    /// Most ranges per Dataset Management command.
    pub dsm_ranges: usize,
    /// Most blocks per Dataset Management range.
    pub dsm_range_blocks: u32,
    /// Write Zeroes is supported.
    pub write_zeroes: bool,
    /// Write Zeroes with DEAC deallocates.
    pub zeroes_deallocate: bool,
    /// Deallocated blocks read as zeros.
    pub deallocated_reads_zeroes: bool,
    /// Compare is supported.
    pub compare: bool,
    /// Compare and Write can be fused.
    pub fused_compare_write: bool,
    /// A volatile write cache is present: Flush has work to do.
    pub volatile_cache: bool,
}

impl Namespace {
    /// Combines what identify said. `page_shift` is the controller's minimum memory page
    /// size (CAP.MPSMIN + 12) that MDTS and WZSL count in; `host_max_bytes` is the most the
    /// host's passthrough path moves in one command, if it is known. A namespace formatted
    /// with metadata or protection information is refused: the engine moves data only.
    pub fn new(
        nsid: u32,
        ctrl: &Controller,
        nvm: Option<&NvmLimits>,
        ns: &NamespaceData,
        page_shift: u8,
        host_max_bytes: Option<u64>,
    ) -> Result<Namespace, String> {
        if ns.metadata != 0 || ns.protection != 0 {
            return Err(format!(
                "namespace {nsid} is formatted with {} bytes of metadata per block and protection type {}; \
                 pangate serves namespaces without either",
                ns.metadata, ns.protection
            ));
        }
        if ns.nsze == 0 {
            return Err(format!("namespace {nsid} has no blocks"));
        }
        let shift = ns.lba_shift;
        // A limit in pages of 2^page_shift, as blocks (0: none).
        let pages_to_blocks = |exp: u8| -> u64 {
            match exp {
                0 => u64::MAX,
                e => 1u64.checked_shl(u32::from(e) + u32::from(page_shift)).map_or(u64::MAX, |b| b >> shift),
            }
        };
        let host = host_max_bytes.map_or(u64::MAX, |b| b >> shift);
        let max_transfer = pages_to_blocks(ctrl.mdts).min(host).clamp(1, MAX_BLOCKS_PER_COMMAND);
        let nvm = nvm.copied().unwrap_or_default();
        let max_zeroes = pages_to_blocks(nvm.wzsl).clamp(1, MAX_BLOCKS_PER_COMMAND);
        Ok(Namespace {
            nsid,
            blocks: ns.nsze,
            lba_shift: shift,
            max_transfer_blocks: max_transfer as u32,
            max_zeroes_blocks: max_zeroes as u32,
            dsm: ctrl.oncs & (1 << 2) != 0,
            dsm_ranges: match nvm.dmrl {
                0 => MAX_DSM_RANGES,
                n => usize::from(n),
            },
            dsm_range_blocks: match nvm.dmrsl {
                0 => u32::MAX,
                n => n,
            },
            write_zeroes: ctrl.oncs & (1 << 3) != 0,
            zeroes_deallocate: ns.dlfeat & (1 << 3) != 0,
            deallocated_reads_zeroes: ns.dlfeat & 0x7 == 1,
            compare: ctrl.oncs & 1 != 0,
            fused_compare_write: ctrl.fuses & 1 != 0,
            volatile_cache: ctrl.volatile_cache,
        })
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u32 {
        1 << self.lba_shift
    }

    /// Bytes in the namespace.
    pub fn bytes(&self) -> u64 {
        self.blocks << self.lba_shift
    }

    /// Most bytes one Read or Write carries.
    pub fn max_transfer_bytes(&self) -> u64 {
        u64::from(self.max_transfer_blocks) << self.lba_shift
    }
}

/// A block operation to translate: what an engine request asks for, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read `blocks` at `lba` into the request's buffer.
    Read {
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u64,
    },
    /// Write `blocks` at `lba` from the request's buffer.
    Write {
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Make completed writes durable.
    Flush,
    /// Deallocate: the range reads as zeros afterwards.
    Deallocate {
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u64,
    },
    /// Zero the range, keeping it allocated.
    WriteZeroes {
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u64,
    },
}

/// The data one command moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// None.
    None,
    /// `len` bytes of the request's buffer, `at` bytes into the request's transfer.
    Buffer {
        /// Offset into the transfer.
        at: usize,
        /// Byte count.
        len: usize,
    },
    /// Dataset Management ranges (16 bytes each) the command carries.
    Ranges(Vec<u8>),
    /// `len` bytes of zeros (writes standing in for an unsupported Write Zeroes).
    Zeroes {
        /// Byte count.
        len: usize,
    },
}

/// One NVMe I/O command: its opcode and namespace, command dwords 10 to 15, and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Opcode.
    pub opcode: u8,
    /// Namespace ID.
    pub nsid: u32,
    /// CDW10 to CDW15.
    pub cdw: [u32; 6],
    /// What the command moves.
    pub data: Data,
}

/// CDW12's Force Unit Access bit.
const FUA: u32 = 1 << 30;
/// Write Zeroes' CDW12 Deallocate bit.
const DEAC: u32 = 1 << 25;
/// Dataset Management's CDW11 Attribute - Deallocate bit.
const ATTR_DEALLOCATE: u32 = 1 << 2;

impl Command {
    /// A command on a block range: SLBA in CDW10/11, the 0's based count and `flags` in CDW12.
    fn blocks(opcode: u8, nsid: u32, lba: u64, blocks: u64, flags: u32, data: Data) -> Command {
        debug_assert!((1..=MAX_BLOCKS_PER_COMMAND).contains(&blocks));
        let nlb = (blocks - 1) as u32;
        Command { opcode, nsid, cdw: [lba as u32, (lba >> 32) as u32, nlb | flags, 0, 0, 0], data }
    }

    /// Bytes of data the command moves.
    pub fn data_len(&self) -> usize {
        match &self.data {
            Data::None => 0,
            Data::Buffer { len, .. } | Data::Zeroes { len } => *len,
            Data::Ranges(r) => r.len(),
        }
    }

    /// Whether the data goes to the device (otherwise it comes from it, or there is none).
    pub fn writes_data(&self) -> bool {
        self.opcode != opcode::READ
    }

    /// The command as `struct nvme_uring_cmd` (72 bytes, in the 80-byte command area of a
    /// 128-byte SQE), with its data at `addr`.
    pub fn encode(&self, addr: u64) -> [u8; 80] {
        let mut b = [0u8; 80];
        b[0] = self.opcode;
        // flags, rsvd1: 0. The kernel refuses any flags, fused ones included.
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        // cdw2, cdw3, metadata: 0.
        let len = self.data_len();
        if len > 0 {
            b[24..32].copy_from_slice(&addr.to_le_bytes());
        }
        // metadata_len: 0.
        b[36..40].copy_from_slice(&(len as u32).to_le_bytes());
        for (i, dw) in self.cdw.iter().enumerate() {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&dw.to_le_bytes());
        }
        // timeout_ms: 0, the driver's default.
        b
    }
}

/// Why a request cannot be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The range is outside the namespace (or empty where a range is required).
    OutOfRange,
}

/// The commands that perform `req` on `ns`, in order. They are independent of one another:
/// the engine may have them all in flight at once. A Flush on a namespace without a
/// volatile write cache needs no command at all.
pub fn plan(ns: &Namespace, req: Request) -> Result<Vec<Command>, Refusal> {
    let nsid = ns.nsid;
    let bs = ns.block_size() as usize;
    let check = |lba: u64, blocks: u64| match lba.checked_add(blocks) {
        Some(end) if end <= ns.blocks => Ok(()),
        _ => Err(Refusal::OutOfRange),
    };
    let mut out = Vec::new();
    match req {
        Request::Read { lba, blocks } | Request::Write { lba, blocks, .. } => {
            check(lba, blocks)?;
            let (op, flags) = match req {
                Request::Write { fua: true, .. } => (opcode::WRITE, FUA),
                Request::Write { .. } => (opcode::WRITE, 0),
                _ => (opcode::READ, 0),
            };
            for (at, n) in chunks(lba, blocks, u64::from(ns.max_transfer_blocks)) {
                let data = Data::Buffer { at: ((at - lba) as usize) * bs, len: n as usize * bs };
                out.push(Command::blocks(op, nsid, at, n, flags, data));
            }
        }
        Request::Flush => {
            if ns.volatile_cache {
                out.push(Command { opcode: opcode::FLUSH, nsid, cdw: [0; 6], data: Data::None });
            }
        }
        Request::Deallocate { lba, blocks } => {
            // Deallocated blocks must read as zeros afterwards. Dataset Management is only
            // advice the controller may ignore (QEMU's drive does, unless its backend
            // discards), so Write Zeroes with DEAC, which both deallocates and zeroes, goes
            // first where the controller has it.
            check(lba, blocks)?;
            if ns.write_zeroes && ns.zeroes_deallocate {
                zero(ns, lba, blocks, true, &mut out);
            } else if ns.dsm && ns.deallocated_reads_zeroes {
                deallocate(ns, lba, blocks, &mut out);
            } else {
                zero(ns, lba, blocks, false, &mut out);
            }
        }
        Request::WriteZeroes { lba, blocks } => {
            check(lba, blocks)?;
            zero(ns, lba, blocks, false, &mut out);
        }
    }
    Ok(out)
}

/// Dataset Management commands deallocating `[lba, lba+blocks)`, each with at most the
/// namespace's ranges of at most its range size.
fn deallocate(ns: &Namespace, lba: u64, blocks: u64, out: &mut Vec<Command>) {
    let ranges: Vec<(u64, u64)> = chunks(lba, blocks, u64::from(ns.dsm_range_blocks)).collect();
    for group in ranges.chunks(ns.dsm_ranges.clamp(1, MAX_DSM_RANGES)) {
        let mut list = Vec::with_capacity(group.len() * DSM_RANGE_BYTES);
        for &(at, n) in group {
            list.extend_from_slice(&0u32.to_le_bytes()); // context attributes
            list.extend_from_slice(&(n as u32).to_le_bytes());
            list.extend_from_slice(&at.to_le_bytes());
        }
        let nr = (group.len() - 1) as u32;
        out.push(Command {
            opcode: opcode::DATASET_MANAGEMENT,
            nsid: ns.nsid,
            cdw: [nr, ATTR_DEALLOCATE, 0, 0, 0, 0],
            data: Data::Ranges(list),
        });
    }
}

/// Write Zeroes commands over `[lba, lba+blocks)` (deallocating with `deac`), or writes of
/// zeros where the controller has no Write Zeroes.
fn zero(ns: &Namespace, lba: u64, blocks: u64, deac: bool, out: &mut Vec<Command>) {
    let bs = ns.block_size() as usize;
    if ns.write_zeroes {
        let flags = if deac { DEAC } else { 0 };
        for (at, n) in chunks(lba, blocks, u64::from(ns.max_zeroes_blocks)) {
            out.push(Command::blocks(opcode::WRITE_ZEROES, ns.nsid, at, n, flags, Data::None));
        }
    } else {
        for (at, n) in chunks(lba, blocks, u64::from(ns.max_transfer_blocks)) {
            out.push(Command::blocks(opcode::WRITE, ns.nsid, at, n, 0, Data::Zeroes { len: n as usize * bs }));
        }
    }
}

/// `[lba, lba+blocks)` in pieces of at most `most` blocks, as (first block, count).
fn chunks(lba: u64, blocks: u64, most: u64) -> impl Iterator<Item = (u64, u64)> {
    let most = most.max(1);
    (0..blocks.div_ceil(most)).map(move |i| {
        let at = lba + i * most;
        (at, most.min(lba + blocks - at))
    })
}

/// An NVMe completion status as Linux's passthrough reports it in the CQE's result: the
/// status field without its phase bit (SC in bits 7:0, SCT in 10:8, CRD, More, DNR above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// Status Code Type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Status Code.
    pub fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Successful completion.
    pub fn ok(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }

    /// Whether retrying might succeed (Do Not Retry is clear).
    pub fn retryable(self) -> bool {
        self.0 & (1 << 14) == 0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NVMe status SCT {:#x} SC {:#04x}", self.sct(), self.sc())
    }
}

/// The SCSI meaning of a failed NVMe status, after the NVM Express SCSI Translation
/// Reference; what it does not name gets the nearest SPC sense.
pub fn failure(status: Status) -> IoFailure {
    let sense = |key, asc| IoFailure::Sense(Sense::new(key, asc));
    match (status.sct(), status.sc()) {
        // Generic command status.
        (0, 0x01) => sense(SenseKey::IllegalRequest, Asc::INVALID_OPCODE),
        (0, 0x02) => sense(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB),
        (0, 0x04) => IoFailure::Medium,
        (0, 0x05) => sense(SenseKey::AbortedCommand, Asc::POWER_LOSS_EXPECTED),
        (0, 0x06) => IoFailure::Internal,
        (0, 0x07..=0x0A) => sense(SenseKey::AbortedCommand, Asc::NO_ADDITIONAL_SENSE),
        (0, 0x0B) => sense(SenseKey::IllegalRequest, Asc::ACCESS_DENIED),
        (0, 0x80) => IoFailure::Sense(Sense::lba_out_of_range()),
        (0, 0x81) => IoFailure::NoSpace,
        (0, 0x82) => sense(SenseKey::NotReady, Asc::NOT_READY),
        (0, 0x84) => sense(SenseKey::NotReady, Asc::FORMAT_IN_PROGRESS),
        // Command specific: writes to a read-only range, and the rest of its codes.
        (1, 0x82) => IoFailure::ReadOnly,
        (1, _) => sense(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB),
        // Media and data integrity errors.
        (2, 0x80) => sense(SenseKey::MediumError, Asc::WRITE_FAULT),
        (2, 0x81) => sense(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR),
        (2, 0x82..=0x84) => sense(SenseKey::MediumError, Asc::GUARD_CHECK_FAILED),
        (2, 0x85) => sense(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY),
        (2, 0x86) => sense(SenseKey::DataProtect, Asc::ACCESS_DENIED),
        (2, 0x87) => sense(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR),
        (2, _) => IoFailure::Medium,
        // Path related: the command may not have reached the controller.
        (3, _) => sense(SenseKey::AbortedCommand, Asc::NO_ADDITIONAL_SENSE),
        _ => IoFailure::Internal,
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's emulated drive as the engine sees it: 512-byte blocks, MDTS 7 (512 KiB),
    /// every optional command, deallocated blocks reading as zeros.
    fn ns() -> Namespace {
        Namespace {
            nsid: 1,
            blocks: 1 << 21,
            lba_shift: 9,
            max_transfer_blocks: 1024,
            max_zeroes_blocks: 1 << 16,
            dsm: true,
            dsm_ranges: 256,
            dsm_range_blocks: u32::MAX,
            write_zeroes: true,
            zeroes_deallocate: true,
            deallocated_reads_zeroes: true,
            compare: true,
            fused_compare_write: false,
            volatile_cache: true,
        }
    }

    fn identify_controller(mdts: u8, oncs: u16, vwc: u8) -> Vec<u8> {
        let mut id = vec![0u8; IDENTIFY_BYTES];
        id[77] = mdts;
        id[520..522].copy_from_slice(&oncs.to_le_bytes());
        id[522..524].copy_from_slice(&1u16.to_le_bytes());
        id[525] = vwc;
        id
    }

    fn identify_namespace(nsze: u64, formats: &[(u16, u8)], flbas: u8, dlfeat: u8) -> Vec<u8> {
        let mut id = vec![0u8; IDENTIFY_BYTES];
        id[0..8].copy_from_slice(&nsze.to_le_bytes());
        id[25] = (formats.len() - 1) as u8;
        id[26] = flbas;
        id[33] = dlfeat;
        for (i, &(ms, lbads)) in formats.iter().enumerate() {
            id[128 + 4 * i..130 + 4 * i].copy_from_slice(&ms.to_le_bytes());
            id[130 + 4 * i] = lbads;
        }
        id
    }

    #[test]
    fn identify_fields_come_from_their_offsets() {
        let c = Controller::parse(&identify_controller(7, 0x5f, 1)).unwrap();
        assert_eq!(c, Controller { mdts: 7, oncs: 0x5f, fuses: 1, volatile_cache: true });
        let mut nvm = vec![0u8; IDENTIFY_BYTES];
        nvm[1] = 3;
        nvm[3] = 128;
        nvm[4..8].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(NvmLimits::parse(&nvm).unwrap(), NvmLimits { wzsl: 3, dmrl: 128, dmrsl: 4096 });
        // Format 1 of two (512 and 4096 bytes), chosen by FLBAS.
        let n = NamespaceData::parse(&identify_namespace(1000, &[(0, 9), (0, 12)], 1, 0x09)).unwrap();
        assert_eq!(n, NamespaceData { nsze: 1000, lba_shift: 12, metadata: 0, protection: 0, dlfeat: 9 });
        assert!(Controller::parse(&[0; 100]).is_err(), "short data");
        let bad = identify_namespace(1000, &[(0, 9)], 3, 0);
        assert!(NamespaceData::parse(&bad).unwrap_err().contains("LBA format 3"));
    }

    #[test]
    fn limits_come_from_mdts_wzsl_dmrl_and_the_host() {
        let c = Controller::parse(&identify_controller(7, 0x0c, 0)).unwrap();
        let n = NamespaceData::parse(&identify_namespace(1 << 20, &[(0, 9)], 0, 0x09)).unwrap();
        let ns = Namespace::new(1, &c, None, &n, 12, None).unwrap();
        // MDTS 7 in 4 KiB pages: 512 KiB, 1024 blocks of 512 bytes.
        assert_eq!(ns.max_transfer_blocks, 1024);
        assert_eq!(ns.max_zeroes_blocks, 1 << 16, "no WZSL: the 16-bit count is the limit");
        assert!(ns.dsm && ns.write_zeroes && !ns.compare && !ns.volatile_cache);
        assert!(ns.deallocated_reads_zeroes && ns.zeroes_deallocate);
        assert_eq!(ns.dsm_ranges, 256);
        // The host's path moves less than MDTS allows.
        let ns = Namespace::new(1, &c, None, &n, 12, Some(128 << 10)).unwrap();
        assert_eq!(ns.max_transfer_blocks, 256);
        // No MDTS: 65,536 blocks.
        let c0 = Controller { mdts: 0, ..c };
        assert_eq!(Namespace::new(1, &c0, None, &n, 12, None).unwrap().max_transfer_blocks, 1 << 16);
        let nvm = NvmLimits { wzsl: 1, dmrl: 2, dmrsl: 8 };
        let ns = Namespace::new(1, &c, Some(&nvm), &n, 12, None).unwrap();
        assert_eq!((ns.max_zeroes_blocks, ns.dsm_ranges, ns.dsm_range_blocks), (16, 2, 8));
        // Metadata and protection are refused.
        let md = NamespaceData { metadata: 8, ..n };
        assert!(Namespace::new(1, &c, None, &md, 12, None).unwrap_err().contains("metadata"));
        let pi = NamespaceData { protection: 1, ..n };
        assert!(Namespace::new(1, &c, None, &pi, 12, None).is_err());
    }

    #[test]
    fn a_write_splits_at_the_transfer_limit_with_fua_on_every_piece() {
        // 1,100 KiB at an LBA past 2^32: 1024 + 1024 + 152 blocks.
        let ns = Namespace { blocks: 1 << 40, ..ns() };
        let lba = (1u64 << 32) + 2;
        let cmds = plan(&ns, Request::Write { lba, blocks: 2200, fua: true }).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].opcode, 0x01);
        assert_eq!(cmds[0].cdw, [2, 1, 1023 | 1 << 30, 0, 0, 0]);
        assert_eq!(cmds[0].data, Data::Buffer { at: 0, len: 1024 * 512 });
        assert_eq!(cmds[1].cdw[0], 1026);
        assert_eq!(cmds[1].data, Data::Buffer { at: 1024 * 512, len: 1024 * 512 });
        assert_eq!(cmds[2].cdw, [2050, 1, 151 | 1 << 30, 0, 0, 0]);
        // Without FUA, and a read: CDW12 holds only the count.
        let r = plan(&ns, Request::Read { lba: 7, blocks: 1 }).unwrap();
        assert_eq!((r[0].opcode, r[0].cdw), (0x02, [7, 0, 0, 0, 0, 0]));
        assert!(!r[0].writes_data());
    }

    #[test]
    fn no_command_carries_more_than_65536_blocks() {
        let big = Namespace { max_transfer_blocks: 1 << 16, blocks: 1 << 30, ..ns() };
        let cmds = plan(&big, Request::Read { lba: 0, blocks: (1 << 16) + 1 }).unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].cdw[2], 0xffff);
        assert_eq!(cmds[1].cdw[2], 0);
        let z = plan(&big, Request::WriteZeroes { lba: 0, blocks: 3 << 16 }).unwrap();
        assert_eq!(z.len(), 3);
        assert!(z.iter().all(|c| c.opcode == 0x08 && c.cdw[2] == 0xffff));
    }

    #[test]
    fn deallocation_is_dataset_management_of_at_most_256_ranges() {
        // Without Write Zeroes that deallocates. Ranges limited to 100 blocks: 30,000
        // blocks are 300 ranges, so two commands.
        let ns = Namespace { dsm_range_blocks: 100, zeroes_deallocate: false, ..ns() };
        let cmds = plan(&ns, Request::Deallocate { lba: 5, blocks: 30_000 }).unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].opcode, 0x09);
        assert_eq!(cmds[0].cdw[..2], [255, 1 << 2]);
        assert_eq!(cmds[1].cdw[0], 43);
        let Data::Ranges(r) = &cmds[0].data else { panic!("ranges") };
        assert_eq!(r.len(), 256 * 16);
        // The first range: no context attributes, 100 blocks, starting at LBA 5.
        assert_eq!(r[..16], [0, 0, 0, 0, 100, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(cmds[0].data_len(), 4096);
    }

    #[test]
    fn deallocation_prefers_write_zeroes_with_deac_and_falls_back_to_writes() {
        // Write Zeroes that deallocates: it, with DEAC, even where DSM would do.
        let cmds = plan(&ns(), Request::Deallocate { lba: 0, blocks: 8 }).unwrap();
        assert_eq!((cmds[0].opcode, cmds[0].cdw[2]), (0x08, 7 | 1 << 25));
        // Neither DEAC nor deallocated blocks reading as zeros: plain Write Zeroes.
        let ns1 = Namespace { deallocated_reads_zeroes: false, zeroes_deallocate: false, ..ns() };
        let cmds = plan(&ns1, Request::Deallocate { lba: 0, blocks: 8 }).unwrap();
        assert_eq!((cmds[0].opcode, cmds[0].cdw[2]), (0x08, 7));
        // Zeroing keeps the blocks: no DEAC.
        let cmds = plan(&ns(), Request::WriteZeroes { lba: 0, blocks: 8 }).unwrap();
        assert_eq!((cmds[0].opcode, cmds[0].cdw[2]), (0x08, 7));
        // Neither command: writes of zeros, split like writes.
        let bare = Namespace { dsm: false, write_zeroes: false, ..ns() };
        let cmds = plan(&bare, Request::Deallocate { lba: 0, blocks: 1500 }).unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].opcode, 0x01);
        assert_eq!(cmds[1].data, Data::Zeroes { len: 476 * 512 });
    }

    #[test]
    fn flush_is_a_command_only_with_a_volatile_cache() {
        let cmds = plan(&ns(), Request::Flush).unwrap();
        assert_eq!(cmds, vec![Command { opcode: 0, nsid: 1, cdw: [0; 6], data: Data::None }]);
        let no_cache = Namespace { volatile_cache: false, ..ns() };
        assert!(plan(&no_cache, Request::Flush).unwrap().is_empty());
    }

    #[test]
    fn ranges_outside_the_namespace_are_refused() {
        let ns = ns();
        assert_eq!(plan(&ns, Request::Read { lba: ns.blocks, blocks: 1 }), Err(Refusal::OutOfRange));
        assert_eq!(plan(&ns, Request::Deallocate { lba: u64::MAX, blocks: 2 }), Err(Refusal::OutOfRange));
        assert_eq!(plan(&ns, Request::Read { lba: ns.blocks - 1, blocks: 1 }).unwrap().len(), 1);
    }

    #[test]
    fn the_uring_command_has_the_kernel_layout() {
        let c = plan(&ns(), Request::Write { lba: 0x1_0000_0010, blocks: 8, fua: false });
        assert_eq!(c, Err(Refusal::OutOfRange), "past the namespace");
        let c = &plan(&ns(), Request::Write { lba: 0x10, blocks: 8, fua: true }).unwrap()[0];
        let b = c.encode(0x1122_3344_5566_7788);
        let mut want = [0u8; 80];
        want[0] = 0x01; // opcode
        want[4] = 1; // nsid
        want[24..32].copy_from_slice(&[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]); // addr
        want[36..40].copy_from_slice(&4096u32.to_le_bytes()); // data_len
        want[40] = 0x10; // cdw10: SLBA low
        want[48..52].copy_from_slice(&(7u32 | 1 << 30).to_le_bytes()); // cdw12
        assert_eq!(b, want);
        // No data: no address.
        let f = Command { opcode: 0, nsid: 3, cdw: [0; 6], data: Data::None }.encode(0xdead);
        assert_eq!(f[24..40], [0; 16]);
    }

    #[test]
    fn statuses_map_to_the_nearest_sense() {
        let key_asc = |s: u16| match failure(Status(s)) {
            IoFailure::Sense(s) => Some((s.key, s.asc)),
            _ => None,
        };
        assert_eq!(key_asc(0x0080), Some((SenseKey::IllegalRequest, Asc::LBA_OUT_OF_RANGE)));
        assert_eq!(key_asc(0x0285), Some((SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY)));
        assert_eq!(key_asc(0x0281), Some((SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR)));
        assert_eq!(key_asc(0x0280), Some((SenseKey::MediumError, Asc::WRITE_FAULT)));
        assert_eq!(key_asc(0x0001), Some((SenseKey::IllegalRequest, Asc::INVALID_OPCODE)));
        assert_eq!(key_asc(0x0082), Some((SenseKey::NotReady, Asc::NOT_READY)));
        assert_eq!(failure(Status(0x0081)), IoFailure::NoSpace);
        assert_eq!(failure(Status(0x0182)), IoFailure::ReadOnly);
        assert_eq!(failure(Status(0x0006)), IoFailure::Internal);
        // DNR and More do not change the meaning.
        assert_eq!(failure(Status(0x4000 | 0x0285)), failure(Status(0x0285)));
        assert!(!Status(0x4002).retryable() && Status(0x0002).retryable());
        assert!(Status(0).ok() && !Status(0x0100).ok());
    }
}
