//! Per-LUN settings: geometry, provisioning, caching, limits and identity.

use thiserror::Error;

/// A configuration that cannot describe a logical unit.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LunConfigError {
    /// Only 512- and 4096-byte logical blocks are offered.
    #[error("block size {0} is not supported; use 512 or 4096")]
    BlockSize(u32),
    /// A LUN must hold at least one block.
    #[error("capacity of {0} bytes is smaller than one block")]
    TooSmall(u64),
    /// Capacity must be whole blocks.
    #[error("capacity of {bytes} bytes is not a multiple of the {block_size}-byte block size")]
    Unaligned {
        /// The requested capacity.
        bytes: u64,
        /// The block size it must be a multiple of.
        block_size: u32,
    },
}

/// A logical block size this target offers: 512 or 4096 bytes. Every place that takes a
/// block size from outside (the config, the admin API, TCMU) checks it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    /// 512-byte blocks, the default.
    pub const B512: BlockSize = BlockSize(512);
    /// 4096-byte blocks.
    pub const B4096: BlockSize = BlockSize(4096);

    /// `bytes` as a block size, if it is one this target offers.
    pub fn new(bytes: u32) -> Result<BlockSize, LunConfigError> {
        match bytes {
            512 | 4096 => Ok(BlockSize(bytes)),
            other => Err(LunConfigError::BlockSize(other)),
        }
    }

    /// Bytes per block.
    pub fn bytes(self) -> u32 {
        self.0
    }
}

impl Default for BlockSize {
    fn default() -> BlockSize {
        BlockSize::B512
    }
}

/// The most blocks one UNMAP may deallocate, whatever the byte limit: 1 Mi blocks (512 MiB
/// of 512-byte blocks). Initiators size UNMAPs by this field, and one command should not
/// hold a LUN's range lock for longer than a large WRITE would; libiscsi's Block Limits check
/// also takes more as a sign of a bogus page.
pub const MAX_UNMAP_LBA_COUNT: u32 = 1 << 20;

/// The limits advertised in the Block Limits VPD page (0xB0) and enforced by decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLimits {
    /// Largest READ/WRITE/VERIFY transfer, in bytes.
    pub max_transfer_bytes: u32,
    /// Preferred I/O size, in bytes.
    pub optimal_transfer_bytes: u32,
    /// Largest sum of blocks in one UNMAP, in bytes.
    pub max_unmap_bytes: u64,
    /// Most block descriptors in one UNMAP parameter list.
    pub max_unmap_descriptors: u32,
    /// Largest WRITE SAME, in bytes.
    pub max_write_same_bytes: u64,
    /// Most blocks in one COMPARE AND WRITE (at most 255).
    pub max_compare_and_write_blocks: u8,
}

impl Default for BlockLimits {
    fn default() -> Self {
        BlockLimits {
            max_transfer_bytes: 8 << 20,
            optimal_transfer_bytes: 128 << 10,
            max_unmap_bytes: 1 << 30,
            max_unmap_descriptors: 256,
            max_write_same_bytes: 1 << 30,
            max_compare_and_write_blocks: 16,
        }
    }
}

/// What identifies a logical unit across restarts: the source of its VPD 0x80 serial and
/// VPD 0x83 designators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunIdentity {
    /// A string unique to the LUN within the control node and stable over its life,
    /// for example `"<serial>/<pan>/<image>"`.
    pub key: String,
    /// PRODUCT IDENTIFICATION in standard INQUIRY data (at most 16 ASCII bytes are used).
    pub product: String,
}

impl LunIdentity {
    /// An identity from a stable key, with pangate's default product name.
    pub fn new(key: impl Into<String>) -> LunIdentity {
        LunIdentity { key: key.into(), product: "pangate disk".into() }
    }

    /// A 128-bit digest of the key (two FNV-1a 64 passes with different offsets), from which
    /// the serial number and the NAA designator derive. Stable across builds and platforms.
    pub fn digest(&self) -> u128 {
        let hash =
            |basis: u64| self.key.bytes().fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3));
        (u128::from(hash(0xCBF2_9CE4_8422_2325)) << 64) | u128::from(hash(0x6C62_272E_07BB_0142))
    }

    /// Unit serial number (VPD 0x80): 16 hex digits.
    pub fn serial(&self) -> String {
        format!("{:016x}", (self.digest() >> 64) as u64)
    }
}

/// Settings of one logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunConfig {
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Writes fail with DATA PROTECT.
    pub read_only: bool,
    /// Logical block provisioning management (UNMAP, WRITE SAME with UNMAP, GET LBA STATUS
    /// with deallocated extents) is enabled.
    pub thin_provisioning: bool,
    /// Write cache enabled (WCE) at power on; with it off every write is forced to media.
    pub write_cache: bool,
    /// Advertised limits.
    pub limits: BlockLimits,
    /// Stable identity.
    pub identity: LunIdentity,
}

impl LunConfig {
    /// A read-write, thin, write-back LUN of `bytes` capacity.
    pub fn new(identity: LunIdentity, block_size: u32, bytes: u64) -> Result<LunConfig, LunConfigError> {
        BlockSize::new(block_size)?;
        if bytes < u64::from(block_size) {
            return Err(LunConfigError::TooSmall(bytes));
        }
        if !bytes.is_multiple_of(u64::from(block_size)) {
            return Err(LunConfigError::Unaligned { bytes, block_size });
        }
        Ok(LunConfig {
            block_size,
            blocks: bytes / u64::from(block_size),
            read_only: false,
            thin_provisioning: true,
            write_cache: true,
            limits: BlockLimits::default(),
            identity,
        })
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }

    /// The largest transfer in blocks (at least one).
    pub fn max_transfer_blocks(&self) -> u32 {
        (self.limits.max_transfer_bytes / self.block_size).max(1)
    }

    /// The largest UNMAP sum, in blocks: at most [`MAX_UNMAP_LBA_COUNT`].
    pub fn max_unmap_blocks(&self) -> u32 {
        let blocks = self.limits.max_unmap_bytes / u64::from(self.block_size);
        u32::try_from(blocks.min(u64::from(MAX_UNMAP_LBA_COUNT))).unwrap_or(MAX_UNMAP_LBA_COUNT)
    }

    /// The largest WRITE SAME, in blocks: the byte limit, and at most 65535 blocks, as LIO
    /// reports. Initiators treat a larger limit as leave to move as many blocks by other
    /// commands too (libiscsi's WriteSame16.Unmap writes 65536 blocks with one WRITE(16)
    /// when the limit allows a WRITE SAME that long, past any MAXIMUM TRANSFER LENGTH).
    pub fn max_write_same_blocks(&self) -> u64 {
        (self.limits.max_write_same_bytes / u64::from(self.block_size)).clamp(1, 0xFFFF)
    }

    /// log2 of the block size.
    pub fn block_shift(&self) -> u32 {
        self.block_size.trailing_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_geometry() {
        let id = LunIdentity::new("x");
        assert_eq!(LunConfig::new(id.clone(), 1024, 1 << 20), Err(LunConfigError::BlockSize(1024)));
        assert_eq!(LunConfig::new(id.clone(), 512, 100), Err(LunConfigError::TooSmall(100)));
        assert!(matches!(LunConfig::new(id, 4096, 4097 * 2), Err(LunConfigError::Unaligned { .. })));
    }

    #[test]
    fn identity_is_stable_and_distinct() {
        let a = LunIdentity::new("node-1/pan0/img0");
        assert_eq!(a.digest(), LunIdentity::new("node-1/pan0/img0").digest());
        assert_ne!(a.digest(), LunIdentity::new("node-1/pan0/img1").digest());
        assert_eq!(a.serial().len(), 16);
    }
}
