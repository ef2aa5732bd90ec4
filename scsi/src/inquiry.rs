//! INQUIRY data: the standard page and the VPD pages 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2
//! (SPC-4 6.6, 7.8; SBC-3 6.6).

use crate::config::LunConfig;
use crate::sense::Sense;

/// T10 vendor identification reported in INQUIRY and the T10 designator.
pub const VENDOR: &[u8; 8] = b"PANGATE ";
/// Product revision level.
pub const REVISION: &[u8; 4] = b"0001";
/// VPD pages this target supports, in ascending order.
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Company ID used in NAA designators: an IEEE CID (the locally administered "X" bit set),
/// so it can never collide with a registered OUI.
const NAA_COMPANY_ID: u32 = 0x0A_5047;

fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, c) in out.iter_mut().zip(text.bytes().filter(|c| (0x20..0x7F).contains(c))) {
        *o = c;
    }
    out
}

/// Standard INQUIRY data (96 bytes before truncation).
pub fn standard(cfg: &LunConfig) -> Vec<u8> {
    let mut b = vec![0u8; 96];
    b[0] = 0x00; // connected, direct access block device
    b[2] = 0x06; // SPC-4
    b[3] = 0x12; // HISUP, response data format 2
    b[4] = (b.len() - 5) as u8;
    b[5] = 0x10; // TPGS 01b: implicit ALUA
    b[7] = 0x02; // CMDQUE
    b[8..16].copy_from_slice(VENDOR);
    b[16..32].copy_from_slice(&padded::<16>(&cfg.identity.product));
    b[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-5, SPC-4, SBC-3.
    for (i, v) in [0x00A0u16, 0x0460, 0x04C0].iter().enumerate() {
        b[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    b
}

/// The standard data for a LUN that does not exist: peripheral qualifier 011b, type 1Fh.
pub fn not_connected() -> Vec<u8> {
    let mut b = vec![0u8; 36];
    b[0] = 0x7F;
    b[2] = 0x06;
    b[3] = 0x12;
    b[4] = 31;
    b[8..16].copy_from_slice(VENDOR);
    b
}

fn page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + body.len());
    b.extend_from_slice(&[0x00, code]);
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(body);
    b
}

/// The 16-byte NAA IEEE Registered Extended (type 6) identifier for a LUN.
pub fn naa_designator(cfg: &LunConfig) -> [u8; 16] {
    let d = cfg.identity.digest();
    // 4 bits NAA, 24 bits company ID, 36 + 64 bits vendor specific from the digest.
    let value: u128 = (6u128 << 124) | (u128::from(NAA_COMPANY_ID) << 100) | (d & ((1u128 << 100) - 1));
    value.to_be_bytes()
}

fn device_identification(cfg: &LunConfig, port: Option<(u16, u16)>) -> Vec<u8> {
    let mut body = Vec::new();
    // NAA designator: binary code set, LU association, type 3 (NAA).
    body.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    body.extend_from_slice(&naa_designator(cfg));
    // T10 vendor ID designator: ASCII, LU association, type 1.
    let serial = cfg.identity.serial();
    body.extend_from_slice(&[0x02, 0x01, 0x00, (8 + serial.len()) as u8]);
    body.extend_from_slice(VENDOR);
    body.extend_from_slice(serial.as_bytes());
    if let Some((relative, group)) = port {
        // Relative target port (type 4) and target port group (type 5): binary, target
        // port association; the port the command came through.
        body.extend_from_slice(&[0x01, 0x14, 0x00, 4, 0, 0]);
        body.extend_from_slice(&relative.to_be_bytes());
        body.extend_from_slice(&[0x01, 0x15, 0x00, 4, 0, 0]);
        body.extend_from_slice(&group.to_be_bytes());
    }
    page(0x83, &body)
}

fn block_limits(cfg: &LunConfig) -> Vec<u8> {
    let mut b = [0u8; 60];
    b[0] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused
    b[1] = cfg.limits.max_compare_and_write_blocks;
    let optimal_granularity = (4096 / cfg.block_size).max(1) as u16;
    b[2..4].copy_from_slice(&optimal_granularity.to_be_bytes());
    b[4..8].copy_from_slice(&cfg.max_transfer_blocks().to_be_bytes());
    b[8..12].copy_from_slice(&(cfg.limits.optimal_transfer_bytes / cfg.block_size).to_be_bytes());
    if cfg.thin_provisioning {
        b[16..20].copy_from_slice(&cfg.max_unmap_blocks().to_be_bytes());
        b[20..24].copy_from_slice(&cfg.limits.max_unmap_descriptors.to_be_bytes());
        b[24..28].copy_from_slice(&u32::from(optimal_granularity).to_be_bytes());
        b[28] = 0x80; // UGAVALID, alignment 0
    }
    b[32..40].copy_from_slice(&cfg.max_write_same_blocks().to_be_bytes());
    page(0xB0, &b)
}

fn block_device_characteristics() -> Vec<u8> {
    let mut b = [0u8; 60];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
    page(0xB1, &b)
}

fn logical_block_provisioning(cfg: &LunConfig) -> Vec<u8> {
    let mut b = [0u8; 4];
    if cfg.thin_provisioning {
        // LBPU, LBPWS, LBPWS10, LBPRZ=001b (deallocated blocks read as zeros).
        b[1] = 0x80 | 0x40 | 0x20 | 0x04;
        b[2] = 0x02; // provisioning type: thin
    }
    page(0xB2, &b)
}

/// One VPD page, or INVALID FIELD IN CDB for a page this target does not have. `port` is
/// the relative target port the command came through and its target port group, if it is
/// in one (page 0x83 names them).
pub fn vpd(cfg: &LunConfig, code: u8, port: Option<(u16, u16)>) -> Result<Vec<u8>, Sense> {
    Ok(match code {
        0x00 => page(0x00, &VPD_PAGES),
        0x80 => page(0x80, cfg.identity.serial().as_bytes()),
        0x83 => device_identification(cfg, port),
        0xB0 => block_limits(cfg),
        0xB1 => block_device_characteristics(),
        0xB2 => logical_block_provisioning(cfg),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LunIdentity;

    fn cfg() -> LunConfig {
        LunConfig::new(LunIdentity::new("serial-1/pan-a/img-0"), 4096, 1 << 30).unwrap()
    }

    #[test]
    fn standard_data_layout() {
        let b = standard(&cfg());
        assert_eq!(b[0], 0);
        assert_eq!(b[4] as usize + 5, b.len());
        assert_eq!(&b[8..16], b"PANGATE ");
        assert_eq!(&b[16..28], b"pangate disk");
        assert_eq!(b[7] & 0x02, 0x02);
    }

    #[test]
    fn supported_pages_page_lists_all_pages() {
        assert_eq!(vpd(&cfg(), 0, None).unwrap(), vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
        assert_eq!(vpd(&cfg(), 0x86, None), Err(Sense::invalid_cdb_field(2, None)));
    }

    #[test]
    fn device_identification_is_stable_naa6() {
        let a = vpd(&cfg(), 0x83, None).unwrap();
        assert_eq!(a, vpd(&cfg(), 0x83, None).unwrap());
        assert_eq!(&a[4..8], &[0x01, 0x03, 0x00, 16]);
        assert_eq!(a[8] >> 4, 6);
        assert_eq!(
            ((u32::from(a[8]) & 0xF) << 20)
                | (u32::from(a[9]) << 12)
                | (u32::from(a[10]) << 4)
                | (u32::from(a[11]) >> 4),
            NAA_COMPANY_ID
        );
        let mut other = cfg();
        other.identity = LunIdentity::new("serial-1/pan-b/img-0");
        assert_ne!(a, vpd(&other, 0x83, None).unwrap());
    }

    #[test]
    fn device_identification_names_the_port_and_its_group() {
        let a = vpd(&cfg(), 0x83, Some((2, 1))).unwrap();
        let plain = vpd(&cfg(), 0x83, None).unwrap();
        assert_eq!(&a[plain.len()..], &[0x01, 0x14, 0, 4, 0, 0, 0, 2, 0x01, 0x15, 0, 4, 0, 0, 0, 1]);
        assert_eq!(usize::from(u16::from_be_bytes([a[2], a[3]])), a.len() - 4);
        assert_eq!(standard(&cfg())[5] & 0x30, 0x10, "TPGS: implicit ALUA");
    }

    #[test]
    fn block_limits_reflect_config() {
        let b = vpd(&cfg(), 0xB0, None).unwrap();
        assert_eq!(u16::from_be_bytes([b[2], b[3]]), 0x3C);
        assert_eq!(u32::from_be_bytes([b[8], b[9], b[10], b[11]]), (8 << 20) / 4096);
        assert_eq!(b[5], 16);
        let p = vpd(&cfg(), 0xB2, None).unwrap();
        assert_eq!(p[5], 0xE4);
    }
}
