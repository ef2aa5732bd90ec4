//! Arbitrary text as a config file: `Config::parse` must answer with a config or an error
//! naming a key, never panic; and a config it accepts must serialise (as the gateway does
//! when it saves a run-time change) and parse back to the same config.
#![no_main]

use gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, None) {
        Ok(cfg) => {
            let saved = cfg.to_toml();
            match Config::parse(&saved, None) {
                Ok(again) => assert_eq!(again, cfg, "a saved config reads back differently:\n{saved}"),
                Err(e) => panic!("a saved config does not parse: {e}\n{saved}"),
            }
        }
        Err(e) => assert!(!e.key.is_empty(), "an error names no key: {e}"),
    }
});
