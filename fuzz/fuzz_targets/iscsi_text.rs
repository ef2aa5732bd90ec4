//! Parses arbitrary login and text data and negotiates what parses: never a panic; what
//! parses emits back to text that parses to the same pairs; negotiated values stay within
//! the target's limits.
#![no_main]

use iscsi::negotiate::{answer, Limits, Params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = iscsi::text::parse(data) {
        let again = iscsi::text::parse(&iscsi::text::emit(&pairs)).expect("emitted text parses");
        assert_eq!(again, pairs);
        let limits = Limits::default();
        let mut p = Params::default();
        if answer(&pairs, &limits, &mut p).is_ok() && !p.discovery {
            assert!(p.max_burst <= limits.max_burst.max(262_144));
            assert!(p.first_burst <= p.max_burst);
            assert_eq!(p.error_recovery_level, 0);
        }
    }
});
