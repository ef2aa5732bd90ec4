//! CDB and parameter-list builders for initiators: the node side, the FUSE mount, TCMU's
//! capacity probe and the tests build their commands here rather than from byte literals.
//!
//! Each builder makes a CDB that this crate's own [`decode`](crate::cdb::decode) accepts; the
//! tests below hold them to that.

use crate::opcodes::op;

/// Allocation length [`read_capacity_16`] asks for: the whole READ CAPACITY (16) data.
pub const READ_CAPACITY_16_LEN: u32 = 32;

/// A READ(16) (`op::READ_16`) or WRITE(16) (`op::WRITE_16`), or another 16-byte CDB of the
/// same shape (WRITE SAME(16), VERIFY(16)): `blocks` blocks at `lba`, FUA when asked.
pub fn rw16(opcode: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = if fua { 0x08 } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// READ(16) of `blocks` blocks at `lba`.
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(op::READ_16, lba, blocks, false)
}

/// WRITE(16) of `blocks` blocks at `lba`.
pub fn write16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    rw16(op::WRITE_16, lba, blocks, fua)
}

/// READ CAPACITY (16) asking for [`READ_CAPACITY_16_LEN`] bytes.
pub const fn read_capacity_16() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::SERVICE_ACTION_IN_16;
    c[1] = op::SA_READ_CAPACITY_16 as u8;
    c[13] = READ_CAPACITY_16_LEN as u8;
    c
}

/// (blocks, block size) from READ CAPACITY (16) data, if long enough.
pub fn parse_capacity_16(d: &[u8]) -> Option<(u64, u32)> {
    let last = u64::from_be_bytes(d.get(0..8)?.try_into().ok()?);
    let bs = u32::from_be_bytes(d.get(8..12)?.try_into().ok()?);
    Some((last.checked_add(1)?, bs))
}

/// INQUIRY: standard data, or the VPD page `vpd`, with allocation length `alloc`.
pub fn inquiry(vpd: Option<u8>, alloc: u16) -> [u8; 6] {
    let [hi, lo] = alloc.to_be_bytes();
    [op::INQUIRY, u8::from(vpd.is_some()), vpd.unwrap_or(0), hi, lo, 0]
}

/// SYNCHRONIZE CACHE (10) of the whole LUN.
pub const fn synchronize_cache_10() -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op::SYNCHRONIZE_CACHE_10;
    c
}

/// SYNCHRONIZE CACHE (16) of the whole LUN.
pub const fn synchronize_cache_16() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::SYNCHRONIZE_CACHE_16;
    c
}

/// Bytes of an UNMAP parameter list with one descriptor ([`unmap_one_list`]).
pub const UNMAP_ONE_LEN: usize = 24;

/// UNMAP with a parameter list of `param_len` bytes (8 + 16 per descriptor).
pub const fn unmap(param_len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op::UNMAP;
    let b = param_len.to_be_bytes();
    c[7] = b[0];
    c[8] = b[1];
    c
}

/// UNMAP of one descriptor: the CDB for an [`unmap_one_list`].
pub const UNMAP_ONE: [u8; 10] = unmap(UNMAP_ONE_LEN as u16);

/// An UNMAP parameter list with one (lba, blocks) descriptor.
pub fn unmap_one_list(lba: u64, blocks: u32) -> [u8; UNMAP_ONE_LEN] {
    unmap_list(&[(lba, blocks)]).try_into().expect("one descriptor")
}

/// An UNMAP parameter list of (lba, blocks) descriptors, in the order given.
pub fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let desc = 16 * ranges.len();
    let mut p = vec![0u8; 8 + desc];
    p[0..2].copy_from_slice(&((6 + desc) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&(desc as u16).to_be_bytes());
    for (i, &(lba, blocks)) in ranges.iter().enumerate() {
        let d = &mut p[8 + 16 * i..8 + 16 * (i + 1)];
        d[0..8].copy_from_slice(&lba.to_be_bytes());
        d[8..12].copy_from_slice(&blocks.to_be_bytes());
    }
    p
}

/// PERSISTENT RESERVE IN with service action `action` ([`crate::pr::sa_in`]).
pub fn persistent_reserve_in(action: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [op::PERSISTENT_RESERVE_IN, action & 0x1F, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

/// PERSISTENT RESERVE OUT with service action `action` ([`crate::pr::sa_out`]), TYPE
/// `kind` (LU scope) and a parameter list of `len` bytes.
pub fn persistent_reserve_out(action: u8, kind: u8, len: u32) -> [u8; 10] {
    let l = len.to_be_bytes();
    [op::PERSISTENT_RESERVE_OUT, action & 0x1F, kind & 0x0F, 0, 0, l[0], l[1], l[2], l[3], 0]
}

/// The 24-byte PERSISTENT RESERVE OUT parameter list: reservation key, service action
/// reservation key, and the ALL_TG_PT and APTPL flags.
pub fn persistent_reserve_out_params(key: u64, sa_key: u64, all_tg_pt: bool, aptpl: bool) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(all_tg_pt) << 2 | u8::from(aptpl);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::Extent;
    use crate::cdb::{decode, Command};
    use crate::config::{LunConfig, LunIdentity};

    fn cfg() -> LunConfig {
        LunConfig::new(LunIdentity::new("t"), 512, 1 << 20).unwrap()
    }

    #[test]
    fn built_cdbs_decode_to_what_they_say() {
        let c = decode(&write16(7, 8, true), &cfg()).unwrap();
        assert_eq!(c, Command::Write { extent: Extent { lba: 7, blocks: 8 }, fua: true });
        let c = decode(&read16(9, 1), &cfg()).unwrap();
        assert_eq!(c, Command::Read { extent: Extent { lba: 9, blocks: 1 }, fua: false });
        assert!(decode(&read_capacity_16(), &cfg()).is_ok());
        assert!(decode(&inquiry(None, 96), &cfg()).is_ok());
        assert!(decode(&inquiry(Some(0x83), 255), &cfg()).is_ok());
        assert!(decode(&synchronize_cache_10(), &cfg()).is_ok());
        assert!(decode(&synchronize_cache_16(), &cfg()).is_ok());
        assert!(decode(&UNMAP_ONE, &cfg()).is_ok());
    }

    #[test]
    fn fixed_cdbs_have_their_standard_bytes() {
        assert_eq!(read_capacity_16(), [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        assert_eq!(UNMAP_ONE, [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
        assert_eq!(inquiry(Some(0x80), 0x1000), [0x12, 1, 0x80, 0x10, 0, 0]);
    }

    #[test]
    fn unmap_lists_carry_their_lengths_and_descriptors() {
        let p = unmap_one_list(0x0102, 3);
        assert_eq!(&p[..8], &[0, 22, 0, 16, 0, 0, 0, 0]);
        assert_eq!(&p[8..16], &0x0102u64.to_be_bytes());
        assert_eq!(&p[16..20], &3u32.to_be_bytes());
        let two = unmap_list(&[(1, 2), (3, 4)]);
        assert_eq!(two.len(), 40);
        assert_eq!(&two[..4], &[0, 38, 0, 32]);
        assert_eq!(parse_capacity_16(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 2, 0]), Some((10, 512)));
        assert_eq!(parse_capacity_16(&[0; 11]), None);
    }
}
