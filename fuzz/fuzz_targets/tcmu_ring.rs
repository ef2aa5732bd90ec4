//! A TCMU command ring full of arbitrary bytes, as a hostile or broken kernel-side peer
//! could leave it: the handler must parse, answer and publish without panicking, and every
//! command it accepts must name buffers inside the data area.
#![no_main]

use std::sync::Arc;

use gateway::ring::shm::SharedMemory;
use gateway::tcmu::abi::mailbox;
use gateway::tcmu::ring::{CommandRing, Entry, Response};
use libfuzzer_sys::fuzz_target;

const CMDR_SIZE: usize = 4096;
const DATA: usize = 8192;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let len = mailbox::SIZE + CMDR_SIZE + DATA;
    let map = Arc::new(SharedMemory::create("fuzz", len).unwrap());
    map.write(0, &2u16.to_le_bytes()).unwrap();
    map.write(2, &u16::from(data[0] & 7).to_le_bytes()).unwrap();
    map.write(4, &(mailbox::SIZE as u32).to_le_bytes()).unwrap();
    map.write(8, &(CMDR_SIZE as u32).to_le_bytes()).unwrap();
    let head = u32::from(u16::from_le_bytes([data[1], data[2]])) & (CMDR_SIZE as u32 - 1) & !7;
    let body = &data[3..];
    map.write(mailbox::SIZE as u64, &body[..body.len().min(CMDR_SIZE + DATA)]).unwrap();
    map.store_release(mailbox::CMD_HEAD, head).unwrap();
    let Ok(mut ring) = CommandRing::attach(map.clone()) else { return };
    let mut entries = Vec::new();
    let _ = ring.fetch(&mut entries);
    for e in entries {
        let id = match e {
            Entry::Cmd(c) => {
                for iov in &c.iovs {
                    assert!(iov.offset >= (mailbox::SIZE + CMDR_SIZE) as u64 && iov.offset + iov.len <= len as u64);
                }
                assert!(!c.cdb.is_empty());
                let _ = ring.gather(&c.iovs, c.total);
                c.cmd_id
            }
            Entry::Malformed { cmd_id, .. } => cmd_id,
            Entry::Tmr { .. } => continue,
        };
        let r = Response { cmd_id: id, status: 2, sense: vec![0x70; 200], read_len: Some(7) };
        let _ = ring.complete(r);
    }
    let _ = ring.publish();
});
