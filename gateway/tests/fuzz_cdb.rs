//! A bounded fuzz run inside the test suite: arbitrary CDBs (biased towards the opcodes the
//! target knows) with arbitrary data-out, executed against RAM LUNs. The unbounded version
//! is `cargo fuzz run cdb_execute` under `fuzz/`.

use gateway::engine::RamEngine;
use gateway::lun::LunDriver;
use proptest::prelude::*;
use scsi::{LunConfig, LunIdentity, Status};

fn cdb() -> impl Strategy<Value = Vec<u8>> {
    let known: Vec<u8> = scsi::opcodes::COMMANDS.iter().map(|c| c.opcode).collect();
    (prop::sample::select(known), prop::collection::vec(any::<u8>(), 0..17), any::<bool>()).prop_map(
        |(op, mut rest, keep_op)| {
            if keep_op || rest.is_empty() {
                rest.insert(0, op);
            }
            rest
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_commands_never_panic_and_always_complete(
        cdb in cdb(),
        data_out in prop::collection::vec(any::<u8>(), 0..9000),
        big_blocks in any::<bool>(),
        read_only in any::<bool>(),
    ) {
        let bs = if big_blocks { 4096 } else { 512 };
        let mut cfg = LunConfig::new(LunIdentity::new("fuzz"), bs, 256 << 10).unwrap();
        cfg.read_only = read_only;
        let mut d = LunDriver::new(cfg, Box::new(RamEngine::new(256 << 10))).unwrap();
        for initiator in [1u64, 1] {
            let f = d.run(initiator, &[0], &cdb, &data_out).unwrap();
            if f.completion.status == Status::CheckCondition {
                prop_assert!(scsi::sense::parse_sense(&f.completion.sense).is_some());
            } else {
                prop_assert!(f.completion.sense.is_empty());
            }
        }
        prop_assert_eq!(d.outstanding(), 0);
    }
}
