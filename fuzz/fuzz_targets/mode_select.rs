//! Feeds arbitrary MODE SELECT parameter lists to the mode page parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scsi::mode::{self, ModeState};
use scsi::{LunConfig, LunIdentity};

fuzz_target!(|data: &[u8]| {
    let cfg = LunConfig::new(LunIdentity::new("fuzz"), 512, 1 << 20).unwrap();
    let state = ModeState::defaults(&cfg);
    for ten in [false, true] {
        let _ = mode::select(ten, data, &cfg, &state);
    }
});
