//! Arbitrary reservation files (`DATA_DIR/reservations/<pan>/<image>.pr`, which a redundant
//! gateway reads when it takes a LUN over): decoding must not panic, and whatever decodes
//! must encode to a file that decodes to the same state.
#![no_main]

use gateway::reservations::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((pr, events)) = decode(text) else { return };
    let again = decode(&encode(&pr, &events)).expect("an encoded state decodes");
    assert_eq!(again, (pr, events));
});
