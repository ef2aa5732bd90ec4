//! Data that stays in a queue pair's data area instead of being copied: pages a caller
//! reserves and fills in place before sending them as a command's data-out, and data-in
//! left where the gateway put it for the caller to pass on.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{failed, Carried, Command, Done, LinkError, Polled, QueuePair, State};
use crate::initiator::Data;
use crate::proto::Region;
use crate::shm::SharedMemory;

/// Data-in left in the data area for the caller to read from where it lies; its pages go
/// back to the queue pair when this is dropped.
pub struct AreaData {
    pub(super) queue: Arc<QueuePair>,
    pub(super) area: Arc<SharedMemory>,
    pub(super) pages: Region,
    pub(super) len: u32,
    pub(super) generation: u64,
}

impl AreaData {
    /// The data area the bytes are in.
    pub fn area(&self) -> &SharedMemory {
        &self.area
    }

    /// Where the bytes start in the area.
    pub fn offset(&self) -> u64 {
        self.pages.offset
    }

    /// How many bytes the gateway transferred.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether no bytes were transferred.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for AreaData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AreaData").field("pages", &self.pages).field("len", &self.len).finish_non_exhaustive()
    }
}

impl Drop for AreaData {
    fn drop(&mut self) {
        self.queue.release(self.generation, &[self.pages]);
    }
}

/// Pages of a queue pair's data area taken with [`QueuePair::reserve`].
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The pages.
    pub region: Region,
    /// The connection they belong to; stale once it is dropped.
    pub generation: u64,
    /// The data area, mapped for as long as this is held.
    pub area: Arc<SharedMemory>,
}

/// Pages of the live connection's data area that the caller keeps for itself and lends to
/// one command at a time (see [`QueuePair::submit_lent`]): a FUSE ring entry's buffer,
/// whose address the kernel holds for the life of the mount.
#[derive(Debug, Clone, Copy)]
pub struct Lent {
    /// Where the data goes or comes from.
    pub data: LentData,
    /// The connection the pages belong to ([`Reservation::generation`]).
    pub generation: u64,
}

/// Which way a [`Lent`] command's data moves.
#[derive(Debug, Clone, Copy)]
pub enum LentData {
    /// Data-out: these bytes are sent.
    Out(Region),
    /// Data-in: the gateway writes up to the command's length here.
    In(Region),
}

/// A command's data-out already in the data area (see [`QueuePair::submit_placed`]).
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    /// The data-out bytes.
    pub data: Region,
    /// The reserved pages the command takes over and frees when it completes.
    pub hold: Region,
    /// [`Reservation::generation`].
    pub generation: u64,
}

impl QueuePair {
    /// A placed command's data-out, from the live connection's area or, for one made just
    /// before the connection broke, from the area it had.
    fn placed_bytes(&self, placed: &Placed) -> Option<Vec<u8>> {
        let mut bytes = vec![0u8; placed.data.len as usize];
        let st = self.lock();
        let read = match (&st.conn, &st.old_area) {
            (Some(conn), _) if st.generation == placed.generation => conn.read_data(placed.data, &mut bytes).is_ok(),
            (_, Some((generation, area))) if *generation == placed.generation => {
                area.read(placed.data.offset, &mut bytes).is_ok()
            }
            _ => false,
        };
        read.then_some(bytes)
    }

    /// Sends a data-in command like [`QueuePair::submit_polling`], but its outcome carries
    /// the data where the gateway put it ([`super::Outcome::in_area`]) instead of a copy, for a
    /// caller that passes it on (a FUSE reply) without looking at it.
    pub fn submit_read_in_place(&self, cmd: Command<'_>, done: Done, spin: Duration) -> Polled {
        self.submit_from(cmd, true, done, spin)
    }

    /// Takes a run of data-area pages for the caller to fill in place, then send with
    /// [`QueuePair::submit_placed`] or give back with [`QueuePair::release`]. Never waits:
    /// `None` when the gateway is not connected or the area has no such run free.
    pub fn reserve(&self, len: u32) -> Option<Reservation> {
        let mut st = self.lock();
        let generation = st.generation;
        let conn = st.conn.as_mut()?;
        let region = conn.alloc(len)?;
        Some(Reservation { region, generation, area: conn.shared_data_area() })
    }

    /// Whether pages reserved under `generation` still belong to the live connection.
    pub fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    /// Gives back pages of a [`Reservation`] (all of it, or the part not sent). Pages of a
    /// connection that has since gone went with it.
    pub fn release(&self, generation: u64, regions: &[Region]) {
        let mut st = self.lock();
        if st.generation == generation {
            if let Some(conn) = st.conn.as_mut() {
                regions.iter().for_each(|&r| conn.free(r));
            }
        }
        self.unlock_and_wake(st);
    }

    /// Sends a command whose data-out the caller already put in the data area, in pages of
    /// a [`Reservation`] that the command now owns (freed when it completes). Otherwise
    /// as [`QueuePair::submit_polling`]; `cmd.out` must be empty. If the reservation's
    /// connection has gone, or another gateway serves the LUN, the data-out is copied
    /// from where it lies and sent as any other command's.
    pub fn submit_placed(&self, cmd: Command<'_>, placed: Placed, done: Done, spin: Duration) -> Polled {
        debug_assert!(cmd.out.is_empty(), "a placed command carries its data in the area");
        let elsewhere = self.routed_elsewhere(cmd.target, cmd.lun);
        if elsewhere.is_some() || !self.is_current(placed.generation) {
            // Another gateway serves the LUN, or the pages belong to a connection that has
            // gone: the data-out is sent as a copy, from the area it is in.
            let bytes = self.placed_bytes(&placed);
            self.release(placed.generation, &[placed.hold]);
            let Some(bytes) = bytes else {
                return failed(done, LinkError::Down);
            };
            let cmd = Command { out: &bytes, ..cmd };
            return match elsewhere {
                Some(q) => q.submit_polling(cmd, done, spin),
                None => self.submit_polling(cmd, done, spin),
            };
        }
        let st = match self.wait_for_slot(placed.generation) {
            Ok(st) => st,
            Err(why) => {
                if why != LinkError::Down {
                    self.release(placed.generation, &[placed.hold]);
                }
                return failed(done, why);
            }
        };
        let data = Data::Out { region: placed.data, staged: false };
        self.send(st, cmd, Carried { data, region: Some(placed.hold), in_place: false, lent: false }, done, spin)
    }

    /// Sends a READ or WRITE whose data lies in pages the caller keeps ([`Lent`]): the
    /// command sends its data-out from them or leaves its data-in in them (the outcome
    /// says so with [`super::Outcome::lent`]), and never frees them. `cmd.out` must be
    /// empty. If the pages' connection has gone, or another gateway serves the LUN, the
    /// command is sent as any other: its data-out copied from `from` (the caller's own
    /// mapping of the pages: area and offset), its data-in returned as bytes.
    pub fn submit_lent(
        &self,
        cmd: Command<'_>,
        lent: Lent,
        from: (&SharedMemory, u64),
        done: Done,
        spin: Duration,
    ) -> Polled {
        debug_assert!(cmd.out.is_empty(), "a lent command carries its data in the area");
        let elsewhere = self.routed_elsewhere(cmd.target, cmd.lun);
        if elsewhere.is_some() || !self.is_current(lent.generation) {
            let q = elsewhere.as_deref().unwrap_or(self);
            let LentData::Out(region) = lent.data else {
                return q.submit_polling(cmd, done, spin);
            };
            let mut bytes = vec![0u8; region.len as usize];
            if from.0.read(from.1, &mut bytes).is_err() {
                return failed(done, LinkError::Down);
            }
            return q.submit_polling(Command { out: &bytes, ..cmd }, done, spin);
        }
        let st = match self.wait_for_slot(lent.generation) {
            Ok(st) => st,
            Err(why) => return failed(done, why),
        };
        let data = match lent.data {
            LentData::Out(region) => Data::Out { region, staged: false },
            LentData::In(region) => Data::In(Region { offset: region.offset, len: cmd.in_len.min(region.len) }),
        };
        self.send(st, cmd, Carried { data, region: None, in_place: false, lent: true }, done, spin)
    }

    /// Waits, within the I/O timeout, for a free ring slot on the connection of
    /// `generation`; fails with [`LinkError::Down`] once that connection is gone.
    fn wait_for_slot(&self, generation: u64) -> Result<MutexGuard<'_, State>, LinkError> {
        let deadline = Instant::now() + self.opts.io_timeout;
        let mut st = self.lock();
        loop {
            if self.closing.load(Ordering::Acquire) {
                return Err(LinkError::Closing);
            }
            let Some(conn) = st.conn.as_ref().filter(|_| st.generation == generation) else {
                return Err(LinkError::Down);
            };
            if conn.outstanding() < conn.queue_depth() as usize {
                return Ok(st);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LinkError::Timeout);
            }
            st = self.wait_for_space(st, left);
        }
    }
}
