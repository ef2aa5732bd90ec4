//! The direct path: a plain READ or WRITE of one region, on an in-memory image this
//! worker owns, is decoded and executed as usual and then copied by the worker itself
//! between the image and the node's memory, with no job, engine request or completion.
//! WRITEs are copied when taken; READs after the rest of their batch, so the reads of a
//! batch find their data on its way into the cache; then the batch is answered in order.

use scsi::{Completion, Nexus};

use super::Worker;
use crate::lun::{Direct, DirectRead};
use crate::ring::proto::{Cmd, Region, Segments};
use crate::ring::server::conn::{MappedLun, Ticket};
use crate::ring::shm::PeerSlice;

/// A command of the queue pair being served that took the direct path
/// ([`crate::ring::server::owned::Owned::start_direct`]): answered once the batch of CMDs it came in is taken.
#[derive(Debug)]
pub(super) struct Local {
    image: usize,
    pub(super) ticket: Ticket,
    state: LocalState,
    /// The staging buffers of a staged WRITE, given back once it is answered.
    staged: Vec<Region>,
}

#[derive(Debug)]
pub(super) enum LocalState {
    /// A READ whose copy, into its region of the node's data area, waits for the end of
    /// the batch, so the reads of a batch find their data on its way into the cache.
    Read(DirectRead, Region),
    /// Finished, with the data-in bytes that arrived.
    Done(Completion, usize),
}

impl LocalState {
    /// The READ still to copy, if this is one, leaving it done with nothing moved until the
    /// copy says otherwise.
    pub(super) fn take_read(&mut self) -> Option<(DirectRead, Region)> {
        match std::mem::replace(self, LocalState::Done(Completion::good(), 0)) {
            LocalState::Read(read, region) => Some((read, region)),
            done => {
                *self = done;
                None
            }
        }
    }
}

impl Worker {
    /// Runs a command on the direct path when it can take it ([`crate::ring::server::owned::Owned::start_direct`]):
    /// a plain READ or WRITE on an in-memory image this worker owns, its data in one region
    /// of the node's data area or, for a staged WRITE, in one staging buffer (`staged`).
    /// Otherwise hands back the LUN and the staging buffers untouched.
    pub(super) fn start_local(
        &mut self,
        i: usize,
        lun: MappedLun,
        cmd: &Cmd,
        data_out: bool,
        staged: Vec<Region>,
    ) -> Result<(), (MappedLun, Vec<Region>)> {
        if self.mesh.owner(lun.image) != self.index {
            return Err((lun, staged));
        }
        let c = &self.conns[i];
        let nexus = Nexus {
            id: c.id,
            luns: c.luns_of_target(cmd.target),
            read_only: lun.access.is_read_only(),
            port: &c.port,
            target_port: c.target_port,
        };
        let direct = if staged.is_empty() {
            self.owned.start_direct(lun.image, &nexus, cmd.cdb(), &c.data, &cmd.segments, data_out)
        } else {
            match Segments::new(&staged) {
                Some(regions) => self.owned.start_direct(lun.image, &nexus, cmd.cdb(), &c.staging, &regions, data_out),
                None => Direct::Declined,
            }
        };
        let state = match direct {
            Direct::Declined => return Err((lun, staged)),
            Direct::Done(completion) => LocalState::Done(completion, 0),
            // Only unstaged commands read, from their one region.
            Direct::Read(read) => match cmd.segments.as_slice() {
                [region] => LocalState::Read(read, *region),
                _ => unreachable!("the direct path takes commands of one region"),
            },
        };
        let started_ns = *self.batch_ns.get_or_insert_with(metrics::now_ns);
        let ticket = Ticket::new(cmd, data_out, started_ns, lun.stats);
        self.local.push(Local { image: lun.image, ticket, state, staged });
        Ok(())
    }

    /// Copies the data of the direct-path READs taken from queue pair `i`, and answers every
    /// direct-path command it sent, in order.
    pub(super) fn settle_local(&mut self, i: usize) {
        if self.local.is_empty() {
            return;
        }
        let mut local = std::mem::take(&mut self.local);
        for k in 0..local.len() {
            // While one read copies, the next one's data is fetched.
            if let Some(Local { image, state: LocalState::Read(next, _), .. }) = local.get(k + 1) {
                self.owned.prefetch_read(*image, next);
            }
            let l = &mut local[k];
            if let Some((read, region)) = l.state.take_read() {
                let mut none = [];
                let dst = self.conns[i].data.slice(region.offset, u64::from(region.len));
                let dst = dst.unwrap_or_else(|_| PeerSlice::from_mut(&mut none));
                let (completion, moved) = self.owned.finish_read(l.image, read, dst);
                l.state = LocalState::Done(completion, moved);
            }
        }
        // One clock reading for the batch: these commands finished together.
        let now_ns = metrics::now_ns();
        let c = &mut self.conns[i];
        for l in local.drain(..) {
            let LocalState::Done(completion, moved) = l.state else { unreachable!("every read was copied above") };
            c.bytes_in_flight -= l.ticket.expected;
            for s in l.staged {
                c.staging_alloc.free(s);
            }
            c.answer(l.ticket.answer(&completion, moved, now_ns));
        }
        self.local = local;
    }
}
