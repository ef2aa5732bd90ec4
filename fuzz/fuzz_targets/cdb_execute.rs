//! Decodes and executes arbitrary CDBs with arbitrary data-out against a RAM LUN, as the
//! transport would: the first byte picks the CDB length, the rest is CDB then data-out.
//! Nothing may panic or overflow, and every command completes exactly once. The same CDB
//! then goes to the direct path, with the data-out as the caller's memory: a READ never
//! copies more than that memory holds.
#![no_main]

use gateway::engine::RamEngine;
use gateway::lun::{Direct, LunDriver};
use libfuzzer_sys::fuzz_target;
use scsi::{LunConfig, LunIdentity, Nexus};
use shmem::PeerSlice;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let cdb_len = [6usize, 10, 12, 16][usize::from(sel & 3)].min(rest.len());
    let (cdb, data_out) = rest.split_at(cdb_len);
    let bs = if sel & 4 != 0 { 4096 } else { 512 };
    let mut cfg = LunConfig::new(LunIdentity::new("fuzz"), bs, 256 << 10).unwrap();
    cfg.read_only = sel & 8 != 0;
    cfg.thin_provisioning = sel & 16 == 0;
    let mut d = LunDriver::new(cfg, Box::new(RamEngine::new(256 << 10))).unwrap();
    for initiator in [1u64, 1, 2] {
        let f = d.run(initiator, &[0, 1], cdb, data_out).expect("RAM engine never fails to poll");
        assert!(f.data().len() <= 8 << 20);
    }
    assert_eq!(d.outstanding(), 0);
    let mut mem = data_out.to_vec();
    let len = mem.len();
    let nexus = Nexus {
        id: 3,
        luns: &[0, 1],
        read_only: false,
        port: &scsi::InitiatorPort::new("iqn.2026-12.test:i", 1),
        target_port: 1,
    };
    match d.start_direct(&nexus, cdb, PeerSlice::from_mut(&mut mem), sel & 32 != 0) {
        Direct::Declined | Direct::Done(_) => {}
        Direct::Read(read) => {
            let (_, moved) = d.finish_read(read, PeerSlice::from_mut(&mut mem));
            assert!(moved <= len);
        }
    }
    assert_eq!(d.outstanding(), 0);
});
