//! Drives one full-feature-phase session with arbitrary PDUs, interleaved with the SCSI
//! target answering whatever the session handed it: nothing may panic, every command the
//! session executes is answered at most once, what it writes frames as whole PDUs, and the
//! number of commands it holds stays within its window and immediate allowance.
#![no_main]

use iscsi::negotiate::Params;
use iscsi::session::{Session, SessionConfig, Work, MAX_IMMEDIATE};
use iscsi::{Digests, Framer, Pdu};
use libfuzzer_sys::fuzz_target;

const DEPTH: u32 = 8;

fuzz_target!(|data: &[u8]| {
    let params = Params {
        initiator_max_recv_data: 1024,
        max_burst: 4096,
        first_burst: 2048,
        immediate_data: true,
        initial_r2t: data.first().is_some_and(|b| b & 1 != 0),
        ..Params::default()
    };
    let mut s = Session::new(SessionConfig {
        params,
        max_recv_data: 4096,
        depth: DEPTH,
        max_task_bytes: 64 << 10,
        luns: vec![(0, 512), (1, 4096)],
        stat_sn: 1,
        exp_cmd_sn: 0,
        targets: vec![("iqn.t:x.t0".into(), vec!["127.0.0.1:3260,1".into()])],
    });
    let framer = Framer { digests: Digests::default(), max_data: 4096 };
    let out_framer = Framer { digests: Digests::default(), max_data: 1 << 20 };
    let mut running: Vec<u32> = Vec::new();
    let mut at = 0;
    while let Ok(Some((raw, used))) = framer.parse(&data[at..]) {
        at += used;
        let answer_now = raw.bhs.0[2] & 1 != 0;
        let Ok(pdu) = Pdu::parse(raw) else { continue };
        if s.receive(pdu).is_err() {
            break;
        }
        for w in std::mem::take(&mut s.work) {
            if let Work::Execute(e) = w {
                assert!(!running.contains(&e.itt), "task {:#x} handed over twice", e.itt);
                running.push(e.itt);
            }
        }
        assert!(s.outstanding() <= (DEPTH + MAX_IMMEDIATE) as usize);
        if answer_now {
            if let Some(itt) = running.pop() {
                s.complete(itt, 0, &[], &[0xaa; 700]);
            }
        }
        // Everything written is whole PDUs.
        let mut o = 0;
        while let Ok(Some((_, n))) = out_framer.parse(&s.out[o..]) {
            o += n;
        }
        assert_eq!(o, s.out.len(), "a partial PDU was written");
        s.out.clear();
    }
    for itt in running {
        s.complete(itt, 2, &[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0], &[]);
    }
});
