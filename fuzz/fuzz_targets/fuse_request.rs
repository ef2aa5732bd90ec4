//! Parses arbitrary bytes as a request read from `/dev/fuse`, as the FUSE session loop does:
//! nothing panics, a WRITE's size is exactly the payload that follows its headers, and
//! parsing only the first bytes (all the loop copies out of shared memory) gives the same
//! answer as parsing the whole request.
#![no_main]

use gateway::fuse::wire::{self, Op, WRITE_PAYLOAD};
use libfuzzer_sys::fuzz_target;

/// What the session loop copies out for parsing.
const HEAD_BYTES: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let got = data.len();
    let whole = wire::parse(data, got);
    let head = wire::parse(&data[..got.min(HEAD_BYTES)], got);
    if let Ok((_, Op::Write { size, .. })) = &whole {
        assert_eq!(WRITE_PAYLOAD + *size as usize, got);
        // The headers alone decide a WRITE.
        assert_eq!(wire::parse(&data[..WRITE_PAYLOAD], got), whole);
    }
    if got <= HEAD_BYTES {
        assert_eq!(head, whole);
    }
    if let Ok((h, _)) = &whole {
        assert_eq!(h.len as usize, got);
        assert_eq!(wire::unique(data), Some(h.unique));
    }
});
