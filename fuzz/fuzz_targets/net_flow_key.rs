//! Arbitrary bytes as a frame the switch relayed to a service cluster backend: naming its
//! flow for the kernel must never panic, and a key must name the wire and the frame's own
//! MACs and protocol, or there is none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netvirt::fastpath::offload::{flow_key, key_is_tcp, key_wire};

fuzz_target!(|data: &[u8]| {
    let Some((&wire, frame)) = data.split_first() else { return };
    if let Some((key, syn)) = flow_key(u32::from(wire), frame) {
        assert_eq!(key_wire(&key), u32::from(wire));
        assert_eq!(&key[4..16], &frame[..12]);
        assert_eq!(key_is_tcp(&key), frame[23] == 6);
        assert!(!syn || key_is_tcp(&key));
    }
});
