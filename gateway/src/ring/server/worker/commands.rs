//! A CMD's way through the worker: taken from the ring, admitted
//! ([`crate::ring::server::admission`]), answered at once, staged, run on the direct path or
//! sent as a job to its image's owner; and a finished job turned into its STAT.

use metrics::Transfer;
use scsi::DataIn;

use super::Worker;
use crate::ring::proto::{self, Buf, Cmd, Message as RingMessage, Region, Segments};
use crate::ring::server::admission::{self, Decision, QueueState, TranDecision};
use crate::ring::server::conn::{stat_from, MappedLun, Pending, Ticket};
use crate::ring::server::mesh::{Done, Job, Source};
use crate::ring::server::owned::scatter;
use crate::ring::spsc::RingId;

impl Worker {
    pub(super) fn take(&mut self, i: usize) -> bool {
        let mut progress = false;
        self.batch_ns = None;
        for ring in [RingId::Cmd, RingId::Tran] {
            for _ in 0..64 {
                let c = &mut self.conns[i];
                let popped = match ring {
                    RingId::Cmd => c.cmd.pop(c.data.len() as u64),
                    _ => c.tran.pop(0),
                };
                match popped {
                    Ok(Some(RingMessage::Cmd(cmd))) => self.on_cmd(i, cmd),
                    Ok(Some(RingMessage::Tran(t))) => self.on_tran(i, t.seq, t.index),
                    Ok(Some(_)) => unreachable!("the consumer checks kinds"),
                    Ok(None) => break,
                    Err(e) => {
                        self.conns[i].kill(e.into());
                        return true;
                    }
                }
                progress = true;
                if self.conns[i].dead.is_some() {
                    return true;
                }
            }
        }
        progress
    }

    /// Admits a CMD ([`admission::admit`]) and carries out the decision.
    pub(super) fn on_cmd(&mut self, i: usize, cmd: Cmd) {
        let c = &mut self.conns[i];
        // Outstanding: accepted and unanswered, answered but queued, and answered in the
        // STAT ring but not yet consumed by the node. The node's STAT cursor is read only
        // when the last value seen says the limit may be reached: it sits on a line the
        // node writes for every STAT it takes.
        let queued = c.pending.len() + self.local.len() + c.out_stat.len();
        let in_ring = if queued + c.stat.unconsumed_upper() as usize >= c.slots as usize {
            match c.stat.room() {
                Ok(room) => c.slots - room,
                Err(e) => return c.kill(e.into()),
            }
        } else {
            0
        };
        let q = QueueState {
            slots: c.slots,
            outstanding: queued + in_ring as usize,
            seq_in_use: c.pending.contains_key(&cmd.seq) || self.local.iter().any(|l| l.ticket.seq == cmd.seq),
            bytes_in_flight: c.bytes_in_flight,
            data_area: c.data.len() as u64,
        };
        let expected = cmd.segments.total();
        let (lun, data_out, data_in) = match admission::admit(&cmd, q, &c.map, c.luns_of_target(cmd.target)) {
            Decision::Kill(why) => return c.kill(why),
            Decision::Control(op) => {
                c.unanswered += 1;
                return self.on_control(i, cmd, op);
            }
            Decision::Answer { completion, counted } => {
                c.unanswered += 1;
                if let Some(lun) = counted {
                    lun.stats.answered(cmd.cdb()[0], completion.status as u8, Transfer::None);
                }
                let n = match (&completion.data_in, cmd.flags & proto::FLAG_DATA_IN != 0) {
                    (DataIn::Bytes(data), true) => scatter(&c.data, &cmd.segments, data),
                    _ => Ok(0),
                };
                return match n {
                    Ok(n) => c.answer(stat_from(cmd.seq, &completion, n as u32, expected)),
                    Err(e) => c.kill(e.into()),
                };
            }
            Decision::Stage(lun) => {
                c.unanswered += 1;
                let lun = lun.clone();
                let Some(staged) = admission::stage(cmd.segments.as_slice(), &mut c.staging_alloc) else {
                    let busy = admission::busy();
                    lun.stats.answered(cmd.cdb()[0], busy.status as u8, Transfer::None);
                    return c.answer(stat_from(cmd.seq, &busy, 0, expected));
                };
                c.bytes_in_flight += expected;
                for (index, s) in staged.iter().enumerate() {
                    let segments = Segments::new(&[*s]).expect("one segment fits");
                    c.out_buf.push_back(RingMessage::Buf(Buf { seq: cmd.seq, index: index as u16, segments }));
                }
                let received = vec![false; staged.len()];
                let (seq, no_data) = (cmd.seq, cmd.segments.as_slice().is_empty());
                c.pending.insert(seq, Pending::Staged { lun, cmd: Box::new(cmd), staged, received });
                if no_data {
                    self.submit_staged(i, seq);
                }
                return;
            }
            Decision::Execute { lun, data_out, data_in } => (lun.clone(), data_out, data_in),
        };
        c.unanswered += 1;
        c.bytes_in_flight += expected;
        let lun = if data_out || data_in {
            match self.start_local(i, lun, &cmd, data_out, Vec::new()) {
                Ok(()) => return,
                Err((lun, _)) => lun,
            }
        } else {
            lun
        };
        let c = &mut self.conns[i];
        let source = if data_out {
            Source::Out(c.data.clone())
        } else if data_in {
            Source::In(c.data.clone())
        } else {
            Source::None
        };
        self.submit(i, lun, cmd, source, Vec::new());
    }

    pub(super) fn submit(&mut self, i: usize, lun: MappedLun, cmd: Cmd, source: Source, staged: Vec<Region>) {
        // One clock reading per batch of CMDs: they sat in the ring together.
        let started_ns = *self.batch_ns.get_or_insert_with(metrics::now_ns);
        let c = &mut self.conns[i];
        let data_out = matches!(source, Source::Out(_) | Source::Staged { .. });
        let fixed = if matches!(source, Source::Out(_) | Source::In(_)) { c.data_fixed() } else { None };
        c.pending
            .insert(cmd.seq, Pending::Backend { ticket: Ticket::new(&cmd, data_out, started_ns, lun.stats), staged });
        let job = Job {
            fixed,
            tag: (c.id << 32) | u64::from(cmd.seq),
            image: lun.image,
            luns: c.luns_of_target(cmd.target).clone(),
            read_only: lun.access.is_read_only(),
            port: c.port.clone(),
            target_port: c.target_port,
            cmd,
            source,
        };
        self.start_job(job);
    }

    pub(super) fn on_tran(&mut self, i: usize, seq: u32, index: u16) {
        let c = &mut self.conns[i];
        let received = match c.pending.get_mut(&seq) {
            Some(Pending::Staged { received, .. }) => Some(&mut received[..]),
            _ => None,
        };
        match admission::admit_tran(seq, index, received) {
            Ok(TranDecision::Wait) => {}
            Ok(TranDecision::Run) => self.submit_staged(i, seq),
            Err(why) => c.kill(why),
        }
    }

    pub(super) fn submit_staged(&mut self, i: usize, seq: u32) {
        let c = &mut self.conns[i];
        let Some(Pending::Staged { lun, cmd, staged, .. }) = c.pending.remove(&seq) else { return };
        let (lun, staged) = match self.start_local(i, lun, &cmd, true, staged) {
            Ok(()) => return,
            Err(back) => back,
        };
        let c = &mut self.conns[i];
        let source = Source::Staged { mem: c.staging.clone(), regions: staged.clone() };
        self.submit(i, lun, *cmd, source, staged);
    }

    /// Turns a finished job into its STAT. Jobs of queue pairs that are gone are dropped.
    pub(super) fn complete(&mut self, d: Done, now_ns: u64) {
        let (conn_id, seq) = (d.tag >> 32, d.tag as u32);
        let Some(c) = self.conns.iter_mut().find(|c| c.id == conn_id) else { return };
        let Some(Pending::Backend { ticket, staged }) = c.pending.remove(&seq) else { return };
        c.bytes_in_flight -= ticket.expected;
        for s in staged {
            c.staging_alloc.free(s);
        }
        if let Some(fault) = d.fault {
            return c.kill(fault.into());
        }
        c.answer(ticket.answer(&d.completion, d.transferred, now_ns));
    }
}
