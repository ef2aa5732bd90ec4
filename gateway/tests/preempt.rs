//! PREEMPT AND ABORT against a nexus with a write at the backend: the write ends with TASK
//! ABORTED, and the PERSISTENT RESERVE OUT completes only after it, so nothing the
//! preempted nexus sent is still under way once the preemption is reported.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gateway::engine::{AlignedBuf, Backend, EngineError, IoCompletion, IoRequest, RamEngine};
use gateway::lun::Finished;
use scsi::build::{persistent_reserve_out, persistent_reserve_out_params, write16};
use scsi::pr::sa_out;
use scsi::{InitiatorPort, Nexus, Status};
use support::*;

/// The RAM engine with its completions held back until the gate opens.
#[derive(Debug)]
struct Gated {
    inner: RamEngine,
    open: Arc<AtomicBool>,
}

impl Backend for Gated {
    fn submit(&mut self, req: IoRequest) -> Result<(), (IoRequest, EngineError)> {
        self.inner.submit(req)
    }
    fn reap(&mut self, out: &mut Vec<IoCompletion>, min: usize) -> std::io::Result<()> {
        if self.open.load(Ordering::Relaxed) {
            self.inner.reap(out, min)
        } else {
            Ok(())
        }
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn buffer(&mut self, len: usize) -> AlignedBuf {
        AlignedBuf::zeroed(len)
    }
    fn name(&self) -> &'static str {
        "gated"
    }
}

#[test]
fn preempt_and_abort_ends_the_preempted_writes_first() {
    let open = Arc::new(AtomicBool::new(false));
    let mut d = driver(config(512, 1 << 20), Box::new(Gated { inner: RamEngine::new(1 << 20), open: open.clone() }));
    let (pa, pb) = (InitiatorPort::new("iqn.2026-12.test:a", 1), InitiatorPort::new("iqn.2026-12.test:b", 2));
    let a = Nexus { id: 1, luns: &[0], read_only: false, port: &pa, target_port: 1 };
    let b = Nexus { id: 2, luns: &[0], read_only: false, port: &pb, target_port: 1 };
    let mut out: Vec<Finished> = Vec::new();
    let pr_out = |d: &mut gateway::lun::LunDriver, tag, n: &Nexus<'_>, sa, key, sa_key| {
        let p = persistent_reserve_out_params(key, sa_key, false, false);
        d.submit(tag, n, &persistent_reserve_out(sa, 1, p.len() as u32), &p);
    };
    // Power-on attentions out of the way, then both register and a reserves.
    d.submit(100, &a, &[0; 6], &[]);
    d.submit(101, &b, &[0; 6], &[]);
    pr_out(&mut d, 102, &a, sa_out::REGISTER, 0, 0xA);
    pr_out(&mut d, 103, &b, sa_out::REGISTER, 0, 0xB);
    pr_out(&mut d, 104, &a, sa_out::RESERVE, 0xA, 0);
    d.poll(&mut out, false).unwrap();
    let good: Vec<u64> =
        out.iter().filter(|f| f.tag >= 102 && f.completion.status == Status::Good).map(|f| f.tag).collect();
    assert_eq!(good, [102, 103, 104], "{out:?}");
    out.clear();

    // a's write reaches the backend and stays there; b preempts a and aborts its tasks.
    d.submit(1, &a, &write16(0, 1, false), &[0xAB; 512]);
    pr_out(&mut d, 2, &b, sa_out::PREEMPT_AND_ABORT, 0xB, 0xA);
    d.poll(&mut out, false).unwrap();
    assert!(out.is_empty(), "nothing may complete while a's write is at the backend: {out:?}");

    open.store(true, Ordering::Relaxed);
    for _ in 0..100 {
        if out.len() == 2 {
            break;
        }
        d.poll(&mut out, true).unwrap();
    }
    let seen: Vec<(u64, Status)> = out.iter().map(|f| (f.tag, f.completion.status)).collect();
    assert_eq!(seen, [(1, Status::TaskAborted), (2, Status::Good)], "the abort ends first");
    // a is no longer registered: its next write conflicts with b's reservation.
    out.clear();
    d.submit(3, &a, &write16(0, 1, false), &[0xCD; 512]);
    for _ in 0..100 {
        if !out.is_empty() {
            break;
        }
        d.poll(&mut out, true).unwrap();
    }
    let c = &out[0].completion;
    assert!(c.status == Status::ReservationConflict || c.status == Status::CheckCondition, "{c:?}");
}
