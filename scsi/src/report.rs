//! Responses built from tables: READ CAPACITY, REPORT LUNS, REPORT SUPPORTED OPERATION
//! CODES and GET LBA STATUS parameter data.

use crate::config::LunConfig;
use crate::opcodes::{self, CommandInfo, COMMANDS};
use crate::sense::Sense;
use crate::task::AllocExtent;

/// READ CAPACITY (10) data: last LBA (saturated) and block length.
pub fn read_capacity10(cfg: &LunConfig) -> Vec<u8> {
    let last = u32::try_from(cfg.blocks - 1).unwrap_or(u32::MAX);
    let mut b = last.to_be_bytes().to_vec();
    b.extend_from_slice(&cfg.block_size.to_be_bytes());
    b
}

/// READ CAPACITY (16) data, with the physical block exponent and LBPME/LBPRZ.
pub fn read_capacity16(cfg: &LunConfig) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    b[0..8].copy_from_slice(&(cfg.blocks - 1).to_be_bytes());
    b[8..12].copy_from_slice(&cfg.block_size.to_be_bytes());
    // One logical block per physical block. Images do live on 4 KiB pages, and the Block
    // Limits page says so (optimal transfer and unmap granularity), which is what the
    // kernel aligns to; but a physical block larger than the logical one makes GET LBA
    // STATUS's answers, which start at the LBA asked about, look misaligned to initiators
    // that expect physical-block extents (libiscsi's GetLBAStatus.UnmapSingle).
    b[13] = 0;
    if cfg.thin_provisioning {
        b[14] = 0x80 | 0x40;
    }
    b
}

/// The 8-byte LUN field for a LUN number: peripheral addressing below 256, flat above.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        b[0] = 0x40 | ((lun >> 8) as u8 & 0x3F);
        b[1] = lun as u8;
    }
    b
}

/// The LUN number in an 8-byte LUN field, for peripheral and flat addressing.
pub fn decode_lun(field: [u8; 8]) -> Option<u16> {
    if field[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match field[0] >> 6 {
        0 if field[0] == 0 => Some(u16::from(field[1])),
        1 => Some((u16::from(field[0] & 0x3F) << 8) | u16::from(field[1])),
        _ => None,
    }
}

/// REPORT LUNS parameter data for `luns` with the SELECT REPORT field `select`. There are
/// no well-known LUNs, so select 0x01 and 0x11 report an empty list.
pub fn report_luns(luns: &[u16], select: u8) -> Vec<u8> {
    let listed: &[u16] = if matches!(select, 0x01 | 0x11) { &[] } else { luns };
    let mut b = Vec::with_capacity(8 + 8 * listed.len());
    b.extend_from_slice(&((listed.len() * 8) as u32).to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    for &lun in listed {
        b.extend_from_slice(&encode_lun(lun));
    }
    b
}

fn timeouts(info: &CommandInfo) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t[4..8].copy_from_slice(&info.timeout_secs.to_be_bytes());
    t[8..12].copy_from_slice(&info.timeout_secs.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35).
pub fn supported_opcodes(rctd: bool, options: u8, opcode: u8, service_action: u16) -> Result<Vec<u8>, Sense> {
    if options == 0 {
        let mut list = Vec::new();
        for c in COMMANDS {
            list.push(c.opcode);
            list.push(0);
            list.extend_from_slice(&c.service_action.unwrap_or(0).to_be_bytes());
            list.push(0);
            list.push(u8::from(rctd) << 1 | u8::from(c.service_action.is_some()));
            list.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            if rctd {
                list.extend_from_slice(&timeouts(c));
            }
        }
        let mut b = (list.len() as u32).to_be_bytes().to_vec();
        b.extend(list);
        return Ok(b);
    }
    let with_sa = opcodes::has_service_action(opcode);
    let found = match options {
        // Opcode only: an opcode with service actions needs options 2 or 3.
        1 if with_sa => return Err(Sense::invalid_cdb_field(2, Some(2))),
        1 => opcodes::lookup(opcode, None),
        2 if !with_sa => return Err(Sense::invalid_cdb_field(2, Some(2))),
        2 => opcodes::lookup(opcode, Some(service_action)),
        _ if with_sa => opcodes::lookup(opcode, Some(service_action)),
        _ => {
            if service_action != 0 {
                None
            } else {
                opcodes::lookup(opcode, None)
            }
        }
    };
    let mut b = vec![0u8; 4];
    match found {
        Some(c) => {
            b[1] = u8::from(rctd) << 7 | 0x03;
            b[2..4].copy_from_slice(&(c.usage.len() as u16).to_be_bytes());
            b.extend_from_slice(c.usage);
            if rctd {
                b.extend_from_slice(&timeouts(c));
            }
        }
        None => b[1] = 0x01,
    }
    Ok(b)
}

/// GET LBA STATUS parameter data from extents that start at `lba`.
pub fn lba_status(lba: u64, block_size: u32, extents: &[AllocExtent]) -> Vec<u8> {
    let mut descriptors: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = lba;
    for e in extents {
        let blocks = e.len / u64::from(block_size);
        if blocks == 0 {
            continue;
        }
        match descriptors.last_mut() {
            Some(last) if last.2 == e.mapped && last.1 + blocks <= u64::from(u32::MAX) => last.1 += blocks,
            _ => descriptors.push((at, blocks, e.mapped)),
        }
        at += blocks;
    }
    let mut b = vec![0u8; 8];
    for (start, blocks, mapped) in &descriptors {
        b.extend_from_slice(&start.to_be_bytes());
        b.extend_from_slice(&(*blocks as u32).to_be_bytes());
        b.push(if *mapped { 0 } else { 1 });
        b.extend_from_slice(&[0; 3]);
    }
    let len = (b.len() - 4) as u32;
    b[0..4].copy_from_slice(&len.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LunIdentity;

    #[test]
    fn lun_encoding_round_trips() {
        for lun in [0u16, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
        }
        assert_eq!(encode_lun(300), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_lun([0x80, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn report_luns_lists_and_well_known_is_empty() {
        let b = report_luns(&[0, 7], 0);
        assert_eq!(&b[0..4], &16u32.to_be_bytes());
        assert_eq!(b[8 + 8 + 1], 7);
        assert_eq!(report_luns(&[0, 7], 1), vec![0; 8]);
    }

    #[test]
    fn read_capacity16_reports_exponent_and_lbpme() {
        let c = LunConfig::new(LunIdentity::new("r"), 512, 1 << 20).unwrap();
        let b = read_capacity16(&c);
        assert_eq!(&b[0..8], &2047u64.to_be_bytes());
        assert_eq!(b[13], 0);
        assert_eq!(b[14], 0xC0);
        assert_eq!(read_capacity10(&c), vec![0, 0, 7, 0xFF, 0, 0, 2, 0]);
    }

    #[test]
    fn one_command_report_has_usage_mask() {
        let b = supported_opcodes(true, 1, 0x28, 0).unwrap();
        assert_eq!(b[1], 0x83);
        assert_eq!(&b[2..4], &[0, 10]);
        assert_eq!(b[4], 0x28);
        assert_eq!(b.len(), 4 + 10 + 12);
        assert_eq!(supported_opcodes(false, 1, 0xC1, 0).unwrap()[1], 0x01);
        assert!(supported_opcodes(false, 1, 0x9E, 0x10).is_err());
        assert_eq!(supported_opcodes(false, 2, 0x9E, 0x10).unwrap()[1], 0x03);
    }

    #[test]
    fn lba_status_merges_adjacent_runs() {
        let e = [
            AllocExtent { len: 4096, mapped: true },
            AllocExtent { len: 4096, mapped: true },
            AllocExtent { len: 8192, mapped: false },
        ];
        let b = lba_status(10, 512, &e);
        assert_eq!(&b[0..4], &36u32.to_be_bytes());
        assert_eq!(&b[8..16], &10u64.to_be_bytes());
        assert_eq!(&b[16..20], &16u32.to_be_bytes());
        assert_eq!(b[20], 0);
        assert_eq!(&b[24..32], &26u64.to_be_bytes());
        assert_eq!(b[36], 1);
    }
}
