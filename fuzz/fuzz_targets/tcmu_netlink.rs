//! Arbitrary datagrams on the TCM-USER netlink socket: decoding must not panic, and every
//! message of attributes pangate knows must encode and decode back to itself (unknown
//! attributes are only ever read).
#![no_main]

use gateway::tcmu::netlink::{self, DeviceEvent, Incoming, TcmuAttr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msgs) = netlink::decode(data) else { return };
    for m in msgs {
        if let Incoming::Message(m) = m {
            if let Some(ev) = DeviceEvent::from_message(&m) {
                let _ = ev.reply(-5);
            }
            if m.attrs.iter().any(|a| matches!(a, TcmuAttr::Other(_))) {
                continue;
            }
            let again = netlink::decode(&netlink::encode(m.clone(), 30, 1)).unwrap();
            assert_eq!(again, vec![Incoming::Message(m)]);
        }
    }
});
