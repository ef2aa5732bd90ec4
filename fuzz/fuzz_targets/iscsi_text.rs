//! Parses arbitrary login and text data: never a panic, and what parses emits back to text
//! that parses to the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = iscsi::text::parse(data) {
        let again = iscsi::text::parse(&iscsi::text::emit(&pairs)).expect("emitted text parses");
        assert_eq!(again, pairs);
    }
});
