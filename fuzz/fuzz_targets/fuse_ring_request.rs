//! Lays out arbitrary bytes as a FUSE ring entry's headers plus payload, as the io_uring
//! queue thread does, then parses the result: nothing panics, the layout's length is what
//! the parser accepts, and a WRITE counts its payload without copying it.
#![no_main]

use gateway::fuse::wire::{self, Op, RING_HEADERS, WRITE_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (headers, payload) = data.split_at(data.len().min(RING_HEADERS));
    let mut into = Vec::new();
    let Ok(got) = wire::ring_layout(headers, payload, &mut into) else {
        assert!(headers.len() < RING_HEADERS);
        return;
    };
    let req = wire::ring_request(headers).expect("laid out, so readable");
    if wire::is_write(req.opcode) {
        assert_eq!(got, into.len() + req.payload as usize);
    } else {
        assert_eq!(got, into.len());
        assert!(into.len() <= wire::IN_HEADER + 128 + payload.len());
    }
    if let Ok((h, op)) = wire::parse(&into, got) {
        assert_eq!(h.len as usize, got);
        if let Op::Write { size, .. } = op {
            assert_eq!(WRITE_PAYLOAD + size as usize, got);
        }
    }
});
