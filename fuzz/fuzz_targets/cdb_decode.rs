//! Decodes arbitrary CDBs against a few LUN geometries; decoding must never panic, and a
//! command it accepts must describe transfers that fit the LUN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scsi::{cdb, Command, LunConfig, LunIdentity};

fuzz_target!(|data: &[u8]| {
    for (bs, bytes) in [(512u32, 1u64 << 20), (4096, 1 << 30), (512, 512)] {
        let cfg = LunConfig::new(LunIdentity::new("fuzz"), bs, bytes).unwrap();
        if let Ok(cmd) = cdb::decode(data, &cfg) {
            if let Command::Read { extent, .. } | Command::Write { extent, .. } = cmd {
                assert!(extent.lba + u64::from(extent.blocks) <= cfg.blocks);
                assert!(extent.blocks <= cfg.max_transfer_blocks());
            }
            let _ = (cmd.data_out_len(bs), cmd.data_in_len(bs), cmd.parameter_len(bs));
        }
    }
});
