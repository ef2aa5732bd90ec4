//! Parses arbitrary ring slots as the gateway and the node do; whatever parses must emit
//! and parse back to the same message, every region must lie inside the area, and the
//! bytes after the message's length (never copied out of the ring) must not matter.
#![no_main]

use gateway::ring::proto::{self, Message, SLOT_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut slot = [0u8; SLOT_SIZE];
    let n = data.len().min(SLOT_SIZE);
    slot[..n].copy_from_slice(&data[..n]);
    let area = 1u64 << 20;
    if let Ok(msg) = proto::parse(&slot, area) {
        let regions = match &msg {
            Message::Cmd(c) => c.segments.as_slice().to_vec(),
            Message::Buf(b) => b.segments.as_slice().to_vec(),
            _ => vec![],
        };
        assert!(regions.iter().all(|r| r.offset + u64::from(r.len) <= area));
        let mut again = [0u8; SLOT_SIZE];
        msg.emit(&mut again);
        assert_eq!(proto::parse(&again, area), Ok(msg.clone()));
        let mut stale = slot;
        stale[msg.wire_len()..].iter_mut().for_each(|b| *b ^= 0x5A);
        assert_eq!(proto::parse(&stale, area), Ok(msg));
    }
});
