//! A hostile ring client: arbitrary writes to its port region (cursors, slot lengths,
//! frame bytes) interleaved with the gateway taking frames, delivering frames and flushing.
//! The gateway must never panic or hand out a frame longer than a slot holds, must never
//! let its RX ring hold more than the ring's slots, and once it has judged the client
//! broken it must stay so and take nothing more.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use netvirt::mac::Mac;
use netvirt::ringport::{field, port_region_len, slot_size, BcastRing, RingPort, HDR, SLOT_HDR};
use netvirt::vnet::{VnetHdr, VNET_HDR_LEN};
use shmem::SharedMemory;

const SLOTS: u32 = 8;
const MTU: usize = 1500;

fuzz_target!(|data: &[u8]| {
    let bcast = Arc::new(BcastRing::create("fuzz", SLOTS, MTU).expect("broadcast ring"));
    let mut port = RingPort::create(Mac([2, 0, 0, 0, 0, 1]), SLOTS, MTU, bcast).expect("ring port");
    let size = slot_size(MTU);
    let len = port_region_len(SLOTS, size);
    let fd = port.fds().region.try_clone_to_owned().expect("dup");
    let node = SharedMemory::open(fd, len).expect("the node's mapping");
    let mut frame = Vec::new();
    let mut scratch = Vec::new();
    // Whether every RX_TAIL the node wrote lay between its previous one and RX_HEAD: then
    // the gateway must never have more than SLOTS frames outstanding in the RX ring.
    let (mut honest, mut tail) = (true, 0u32);
    let mut ops = data;
    while let [op, rest @ ..] = ops {
        ops = rest;
        let mut word = [0u8; 4];
        let n = ops.len().min(4);
        word[..n].copy_from_slice(&ops[..n]);
        let value = u32::from_le_bytes(word);
        match op % 7 {
            0 => {
                ops = &ops[n..];
                node.store_release(field::TX_HEAD, value).unwrap();
            }
            1 => {
                ops = &ops[n..];
                let head = node.load_acquire(field::RX_HEAD).unwrap();
                honest &= value.wrapping_sub(tail) <= head.wrapping_sub(tail);
                tail = value;
                node.store_release(field::RX_TAIL, value).unwrap();
            }
            2 => {
                // A slot's length word: slot index in the low bits, length in the rest.
                ops = &ops[n..];
                let at = HDR + (value as usize % (2 * SLOTS as usize)) * size;
                node.write(at as u64, &(value >> 4).to_le_bytes()).unwrap();
            }
            3 => {
                let was_failed = port.failed();
                let took = port.next_tx(&mut frame).is_some();
                if took {
                    assert!(frame.len() <= size - SLOT_HDR, "a {}-byte frame from a {size}-byte slot", frame.len());
                }
                assert!(!(was_failed && (took || !port.failed())), "a broken client was served again");
            }
            4 => {
                // A frame to the node (unicast or group-addressed, possibly a super-frame to
                // segment): a virtio-net header, then the frame, from the next bytes.
                let mut hdr = [0u8; VNET_HDR_LEN];
                let h = ops.len().min(VNET_HDR_LEN);
                hdr[..h].copy_from_slice(&ops[..h]);
                ops = &ops[h..];
                let k = (value as usize % 4096).min(ops.len());
                let mut f = ops[..k].to_vec();
                ops = &ops[k..];
                f.resize(f.len().max(14), 0);
                let _ = port.push_frame(u64::from(value), &VnetHdr::parse(&hdr), &f, &mut scratch);
            }
            5 => {
                port.flush();
                let head = node.load_acquire(field::RX_HEAD).unwrap();
                assert!(!honest || head.wrapping_sub(tail) <= SLOTS, "RX ring over-filled: head {head}, tail {tail}");
            }
            _ => {
                let _ = port.arm_doorbell();
            }
        }
    }
});
