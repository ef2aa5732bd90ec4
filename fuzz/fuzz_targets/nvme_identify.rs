//! Arbitrary identify data (controller, NVM limits, namespace) and an arbitrary request:
//! parsing never panics, and every command planned for an accepted namespace stays inside
//! it, within its transfer and range limits, and covers the request exactly.
#![no_main]

use gateway::engine::nvme::translate::{
    self, Controller, Data, Namespace, NamespaceData, NvmLimits, Request, DSM_RANGE_BYTES, IDENTIFY_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw bytes as each structure, then the fields the engine reads set from the input, so
    // that namespaces it accepts are reached.
    let _ = (Controller::parse(data), NvmLimits::parse(data), NamespaceData::parse(data));
    if data.len() < 48 {
        return;
    }
    let (f, rest) = data.split_at(28);
    let mut ctrl = vec![0u8; IDENTIFY_BYTES];
    ctrl[77] = f[0];
    ctrl[520..524].copy_from_slice(&f[1..5]);
    ctrl[525] = f[5];
    let mut nvm = vec![0u8; IDENTIFY_BYTES];
    nvm[1] = f[6];
    nvm[3] = f[7];
    nvm[4..8].copy_from_slice(&f[8..12]);
    let mut ns = vec![0u8; IDENTIFY_BYTES];
    ns[0..8].copy_from_slice(&[f[12], f[13], f[14], f[15] & 0x3f, 0, 0, 0, 0]);
    ns[25] = f[16] & 3;
    ns[26] = f[17];
    ns[29] = f[18] & 0x1;
    ns[33] = f[19];
    for i in 0..4 {
        ns[128 + 4 * i..132 + 4 * i].copy_from_slice(&[f[20 + 2 * i] & 0x1, 0, f[21 + 2 * i] % 20, 0]);
    }
    let (Ok(ctrl), Ok(ns)) = (Controller::parse(&ctrl), NamespaceData::parse(&ns)) else { return };
    let nvm = NvmLimits::parse(&nvm).ok();
    let host = u64::from(u32::from_le_bytes(rest[..4].try_into().unwrap()));
    let Ok(ns) = Namespace::new(1, &ctrl, nvm.as_ref(), &ns, 12, Some(host)) else { return };
    let lba = u64::from_le_bytes(rest[4..12].try_into().unwrap()) % (ns.blocks.saturating_add(8));
    let blocks = u64::from(u32::from_le_bytes(rest[12..16].try_into().unwrap()) % (1 << 20));
    let req = match rest[16] % 5 {
        0 => Request::Read { lba, blocks },
        1 => Request::Write { lba, blocks, fua: rest[17] & 1 != 0 },
        2 => Request::Flush,
        3 => Request::Deallocate { lba, blocks },
        _ => Request::WriteZeroes { lba, blocks },
    };
    let Ok(cmds) = translate::plan(&ns, req) else {
        assert!(lba.checked_add(blocks).is_none_or(|end| end > ns.blocks));
        return;
    };
    let mut covered = 0u64;
    for c in &cmds {
        match &c.data {
            Data::Ranges(r) => {
                assert!(r.len() % DSM_RANGE_BYTES == 0 && r.len() / DSM_RANGE_BYTES <= ns.dsm_ranges);
                for range in r.chunks(DSM_RANGE_BYTES) {
                    let n = u64::from(u32::from_le_bytes(range[4..8].try_into().unwrap()));
                    let at = u64::from_le_bytes(range[8..16].try_into().unwrap());
                    assert!(n >= 1 && at + n <= ns.blocks && n <= u64::from(ns.dsm_range_blocks));
                    covered += n;
                }
            }
            Data::None if c.opcode == translate::opcode::FLUSH => {}
            _ => {
                let at = u64::from(c.cdw[0]) | u64::from(c.cdw[1]) << 32;
                let n = u64::from(c.cdw[2] & 0xffff) + 1;
                assert!(at + n <= ns.blocks);
                if c.opcode != translate::opcode::WRITE_ZEROES {
                    assert!(n <= u64::from(ns.max_transfer_blocks));
                    assert_eq!(c.data_len() as u64, n << ns.lba_shift);
                }
                covered += n;
            }
        }
    }
    if !matches!(req, Request::Flush) {
        assert_eq!(covered, blocks);
    }
});
