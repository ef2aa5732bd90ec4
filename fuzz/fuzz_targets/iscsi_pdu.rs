//! Frames arbitrary bytes as iSCSI PDUs under every digest setting and parses each PDU
//! framed: neither may panic, a framed PDU uses no more bytes than it was given, and what
//! the framer emits for a parsed PDU frames again to the same BHS and data.
#![no_main]

use iscsi::{Digests, Framer, Pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (header, data_digest) in [(false, false), (true, false), (false, true), (true, true)] {
        let f = Framer { digests: Digests { header, data: data_digest }, max_data: 16384 };
        let mut at = 0;
        // Each round consumes at least a BHS, so the loop ends.
        while let Ok(Some((raw, used))) = f.parse(&data[at..]) {
            assert!(used >= iscsi::BHS_LEN && used <= data.len() - at);
            at += used;
            if raw.ahs.is_empty() {
                let mut wire = Vec::new();
                f.emit(raw.bhs, &raw.data, &mut wire);
                let (again, n) = f.parse(&wire).unwrap().unwrap();
                assert_eq!((again.bhs, &again.data, n), (raw.bhs, &raw.data, wire.len()));
            }
            let _ = Pdu::parse(raw);
        }
    }
});
