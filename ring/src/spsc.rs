//! Single-producer single-consumer rings of fixed-size slots in a shared ring region.
//!
//! A queue pair's ring region holds four rings (CMD, STAT, BUF, TRAN). Each has a control
//! block with the producer cursor, the consumer cursor and the consumer's "polling" flag on
//! separate cache lines, and `slots` slots of [`SLOT_SIZE`] bytes. Cursors are free-running
//! `u32`s: the producer alone writes the producer cursor, the consumer alone the consumer
//! cursor, with release stores and acquire loads. Each side keeps its own cursor locally and
//! never reads it back from shared memory, and validates the peer's: a cursor that moves
//! backwards or more than a ring's worth ahead is a protocol error.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use thiserror::Error;

use super::proto::{self, Message, ProtoError, SLOT_SIZE};
use super::shm::{SharedMemory, ShmError};

/// The four rings of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingId {
    /// CMD, node → gateway.
    Cmd = 0,
    /// STAT, gateway → node.
    Stat = 1,
    /// BUF, gateway → node.
    Buf = 2,
    /// TRAN, node → gateway.
    Tran = 3,
}

const CONTROL_BLOCK: usize = 256;
const PROD: usize = 0;
const CONS: usize = 64;
const CONS_FLAGS: usize = 128;
/// Consumer flag: polling, so the producer need not ring the doorbell.
const POLLING: u32 = 1;
const SLOTS_BASE: usize = 4096;
/// Bytes of a slot read before its length is known: one cache line.
const HEAD: usize = 64;

/// Most slots whose first line a consumer prefetches when it finds them published.
const PREFETCH_SLOTS: u32 = 64;

/// Least and most slots per ring a queue pair may negotiate.
pub const MIN_SLOTS: u32 = 256;
/// See [`MIN_SLOTS`].
pub const MAX_SLOTS: u32 = 4096;

/// Bytes of ring region for `slots` slots per ring.
#[inline]
pub fn region_size(slots: u32) -> usize {
    SLOTS_BASE + 4 * slots as usize * SLOT_SIZE
}

/// A ring whose peer broke the protocol.
#[derive(Debug, Error)]
pub enum RingError {
    /// The peer's cursor went backwards.
    #[error("{ring:?} cursor moved backwards from {was} to {now}")]
    Backwards {
        /// Which ring.
        ring: RingId,
        /// Last value seen.
        was: u32,
        /// Value now.
        now: u32,
    },
    /// The peer's cursor is more than a ring's worth away from ours.
    #[error("{ring:?} cursor {peer} is beyond the ring (ours is {ours}, {slots} slots)")]
    Beyond {
        /// Which ring.
        ring: RingId,
        /// Peer's cursor.
        peer: u32,
        /// Our cursor.
        ours: u32,
        /// Ring size.
        slots: u32,
    },
    /// A slot held a malformed message.
    #[error("{ring:?} slot: {err}")]
    Malformed {
        /// Which ring.
        ring: RingId,
        /// What is wrong.
        err: ProtoError,
    },
    /// A message of the wrong kind for the ring.
    #[error("{0:?} ring carried a message of another kind")]
    WrongKind(RingId),
    /// Shared memory access failed (a bug: offsets are computed, not received).
    #[error(transparent)]
    Shm(#[from] ShmError),
}

impl RingError {
    /// A short, fixed label for metrics.
    #[inline]
    pub fn label(&self) -> &'static str {
        match self {
            RingError::Backwards { .. } => "cursor_backwards",
            RingError::Beyond { .. } => "cursor_beyond_ring",
            RingError::Malformed { .. } => "malformed_message",
            RingError::WrongKind(_) => "wrong_message_kind",
            RingError::Shm(_) => "shared_memory",
        }
    }
}

#[inline]
fn base(ring: RingId) -> usize {
    ring as usize * CONTROL_BLOCK
}

/// Offsets of a ring's producer and consumer cursors in the ring region (for conformance
/// tests that play a misbehaving peer).
#[inline]
pub fn cursor_offsets(ring: RingId) -> (usize, usize) {
    (base(ring) + PROD, base(ring) + CONS)
}

/// Offset of the slot a cursor value selects.
#[inline]
pub fn slot_offset(ring: RingId, slots: u32, cursor: u32) -> u64 {
    (SLOTS_BASE + (ring as usize * slots as usize + (cursor % slots) as usize) * SLOT_SIZE) as u64
}

/// The producing end of one ring.
#[derive(Debug)]
pub struct Producer {
    shm: Arc<SharedMemory>,
    ring: RingId,
    slots: u32,
    prod: u32,
    cons_seen: u32,
    /// Where messages are built before they are copied into their slot.
    scratch: Box<[u8; SLOT_SIZE]>,
}

impl Producer {
    /// The producer of `ring` in a region laid out for `slots` (a power of two).
    #[inline]
    pub fn new(shm: Arc<SharedMemory>, ring: RingId, slots: u32) -> Producer {
        debug_assert!(slots.is_power_of_two() && shm.len() >= region_size(slots));
        Producer { shm, ring, slots, prod: 0, cons_seen: 0, scratch: Box::new([0; SLOT_SIZE]) }
    }

    #[inline]
    fn free(&mut self) -> Result<u32, RingError> {
        let cons = self.shm.load_acquire(base(self.ring) + CONS)?;
        if cons.wrapping_sub(self.cons_seen) > self.slots {
            return Err(RingError::Backwards { ring: self.ring, was: self.cons_seen, now: cons });
        }
        let used = self.prod.wrapping_sub(cons);
        if used > self.slots {
            return Err(RingError::Beyond { ring: self.ring, peer: cons, ours: self.prod, slots: self.slots });
        }
        self.cons_seen = cons;
        Ok(self.slots - used)
    }

    /// Puts a message in the next slot; `Ok(false)` when the ring is full.
    #[inline]
    pub fn push(&mut self, msg: &Message) -> Result<bool, RingError> {
        let pushed = self.stage(msg)?;
        if pushed {
            self.publish()?;
        }
        Ok(pushed)
    }

    /// Writes a message into the next slot without showing it to the consumer yet;
    /// `Ok(false)` when the ring is full. [`Producer::publish`] shows every staged message
    /// at once, so a batch moves the cursor's line between cores once, not per message.
    #[inline]
    pub fn stage(&mut self, msg: &Message) -> Result<bool, RingError> {
        // The consumer's cursor lives on a line it writes: read it only when the last value
        // seen leaves no room.
        if self.prod.wrapping_sub(self.cons_seen) >= self.slots && self.free()? == 0 {
            return Ok(false);
        }
        let len = msg.wire_len();
        if len > SLOT_SIZE {
            // Only a CMD assembled by hand can get here (more segments than a slot holds).
            let err = ProtoError::BadLength { len: len as u32, expected: SLOT_SIZE as u32 };
            return Err(RingError::Malformed { ring: self.ring, err });
        }
        msg.emit(&mut self.scratch);
        self.shm.write(slot_offset(self.ring, self.slots, self.prod), &self.scratch[..len])?;
        self.prod = self.prod.wrapping_add(1);
        Ok(true)
    }

    /// Shows the consumer every message staged so far (a release store of the cursor).
    #[inline]
    pub fn publish(&mut self) -> Result<(), RingError> {
        self.shm.store_release(base(self.ring) + PROD, self.prod)?;
        Ok(())
    }

    /// Whether the consumer says it is polling, so no doorbell is needed. Call after
    /// pushing; the fence pairs with the consumer's in [`Consumer::set_polling`].
    #[inline]
    pub fn consumer_polling(&self) -> bool {
        fence(Ordering::SeqCst);
        self.shm.load_acquire(base(self.ring) + CONS_FLAGS).is_ok_and(|f| f & POLLING != 0)
    }

    /// Messages pushed and perhaps not yet consumed, from the consumer cursor last seen:
    /// an upper bound that costs no read of the consumer's line.
    #[inline]
    pub fn unconsumed_upper(&self) -> u32 {
        self.prod.wrapping_sub(self.cons_seen)
    }

    /// Slots that can be filled now.
    #[inline]
    pub fn room(&mut self) -> Result<u32, RingError> {
        self.free()
    }
}

/// The consuming end of one ring.
#[derive(Debug)]
pub struct Consumer {
    shm: Arc<SharedMemory>,
    ring: RingId,
    slots: u32,
    cons: u32,
    prod_seen: u32,
    /// The copy of the slot being parsed.
    scratch: Box<[u8; SLOT_SIZE]>,
}

impl Consumer {
    /// The consumer of `ring` in a region laid out for `slots` (a power of two).
    #[inline]
    pub fn new(shm: Arc<SharedMemory>, ring: RingId, slots: u32) -> Consumer {
        debug_assert!(slots.is_power_of_two() && shm.len() >= region_size(slots));
        Consumer { shm, ring, slots, cons: 0, prod_seen: 0, scratch: Box::new([0; SLOT_SIZE]) }
    }

    /// Messages waiting.
    #[inline]
    pub fn pending(&mut self) -> Result<u32, RingError> {
        self.refresh(0)
    }

    /// Reads the producer's cursor and returns the messages waiting, prefetching the first
    /// line of each newly published slot but the first `prefetched` after ours.
    #[inline]
    fn refresh(&mut self, prefetched: u32) -> Result<u32, RingError> {
        let prod = self.shm.load_acquire(base(self.ring) + PROD)?;
        if prod.wrapping_sub(self.prod_seen) > self.slots {
            return Err(RingError::Backwards { ring: self.ring, was: self.prod_seen, now: prod });
        }
        let n = prod.wrapping_sub(self.cons);
        if n > self.slots {
            return Err(RingError::Beyond { ring: self.ring, peer: prod, ours: self.cons, slots: self.slots });
        }
        // Start every new slot's first line on its way at once: read one by one as they
        // are parsed, a batch of slots the other core just wrote would miss in turn.
        let first = self.prod_seen.wrapping_sub(self.cons).max(prefetched).min(n);
        for k in first..n.min(PREFETCH_SLOTS) {
            self.shm.prefetch(slot_offset(self.ring, self.slots, self.cons.wrapping_add(k)));
        }
        self.prod_seen = prod;
        Ok(n)
    }

    /// Takes the next message, copying the slot out once and parsing the copy; regions are
    /// checked against `area` bytes.
    #[inline]
    pub fn pop(&mut self, area: u64) -> Result<Option<Message>, RingError> {
        // The producer's cursor lives on a line it writes: read it only when the messages
        // already seen are used up.
        if self.cons == self.prod_seen {
            // The next slot's line is fetched alongside the cursor's: when the cursor shows
            // a new message, its slot is already on the way instead of missing after it.
            self.shm.prefetch(slot_offset(self.ring, self.slots, self.cons));
            if self.refresh(1)? == 0 {
                return Ok(None);
            }
        }
        // Copy the first cache line (the header and, for most messages, all of it), then
        // the rest of what that copy's length claims; parsing sees only the copy. Bytes
        // past the length are stale, and parsing never looks at them.
        let slot = &mut *self.scratch;
        let at = slot_offset(self.ring, self.slots, self.cons);
        self.shm.read(at, &mut slot[..HEAD])?;
        let len = u32::from_le_bytes([slot[8], slot[9], slot[10], slot[11]]) as usize;
        if len > HEAD {
            let end = len.min(SLOT_SIZE);
            self.shm.read(at + HEAD as u64, &mut slot[HEAD..end])?;
        }
        self.cons = self.cons.wrapping_add(1);
        self.shm.store_release(base(self.ring) + CONS, self.cons)?;
        let msg = proto::parse(slot, area).map_err(|err| RingError::Malformed { ring: self.ring, err })?;
        let expected = match self.ring {
            RingId::Cmd => proto::Kind::Cmd,
            RingId::Stat => proto::Kind::Stat,
            RingId::Buf => proto::Kind::Buf,
            RingId::Tran => proto::Kind::Tran,
        };
        if msg.kind() != expected {
            return Err(RingError::WrongKind(self.ring));
        }
        Ok(Some(msg))
    }

    /// Tells the producer whether we are polling (no doorbell needed). After clearing it,
    /// check [`Consumer::pending`] once more before sleeping, or a message pushed in between
    /// is missed.
    #[inline]
    pub fn set_polling(&self, on: bool) {
        let _ = self.shm.store_release(base(self.ring) + CONS_FLAGS, u32::from(on) * POLLING);
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Stat, Tran};

    fn pair(ring: RingId, slots: u32) -> (Producer, Consumer, Arc<SharedMemory>) {
        let shm = Arc::new(SharedMemory::create("r", region_size(slots)).unwrap());
        (Producer::new(shm.clone(), ring, slots), Consumer::new(shm.clone(), ring, slots), shm)
    }

    #[test]
    fn fills_drains_and_wraps_the_cursors() {
        let (mut p, mut c, shm) = pair(RingId::Tran, 256);
        // Start both cursors just below u32::MAX so they wrap during the test.
        let start = u32::MAX - 100;
        shm.store_release(base(RingId::Tran) + PROD, start).unwrap();
        shm.store_release(base(RingId::Tran) + CONS, start).unwrap();
        (p.prod, p.cons_seen, c.cons, c.prod_seen) = (start, start, start, start);
        for round in 0..3u32 {
            for i in 0..256u32 {
                assert!(p.push(&Message::Tran(Tran { seq: round * 1000 + i, index: 0 })).unwrap());
            }
            assert!(!p.push(&Message::Tran(Tran { seq: 0, index: 0 })).unwrap(), "full");
            for i in 0..256u32 {
                assert_eq!(c.pop(0).unwrap(), Some(Message::Tran(Tran { seq: round * 1000 + i, index: 0 })));
            }
            assert_eq!(c.pop(0).unwrap(), None);
        }
    }

    #[test]
    fn hostile_cursors_are_detected() {
        let (mut p, mut c, shm) = pair(RingId::Tran, 256);
        p.push(&Message::Tran(Tran { seq: 1, index: 0 })).unwrap();
        p.push(&Message::Tran(Tran { seq: 2, index: 0 })).unwrap();
        assert_eq!(c.pending().unwrap(), 2);
        // The producer (peer) moves its cursor back.
        shm.store_release(base(RingId::Tran) + PROD, 1).unwrap();
        assert!(matches!(c.pending(), Err(RingError::Backwards { .. }) | Err(RingError::Beyond { .. })));
        // Far past the ring size.
        let (_, mut c2, shm2) = pair(RingId::Tran, 256);
        shm2.store_release(base(RingId::Tran) + PROD, 1000).unwrap();
        assert!(matches!(c2.pending(), Err(RingError::Backwards { .. }) | Err(RingError::Beyond { .. })));
        // The consumer (peer) claims to have consumed more than was produced: seen as soon
        // as its cursor is read, by `room`, or by `push` once the ring looks full.
        let (mut p3, _, shm3) = pair(RingId::Stat, 256);
        shm3.store_release(base(RingId::Stat) + CONS, 5).unwrap();
        assert!(matches!(p3.room(), Err(RingError::Beyond { .. })));
        let (mut p4, _, shm4) = pair(RingId::Stat, 256);
        for seq in 0..256 {
            assert!(p4.push(&Message::Stat(Stat::new(seq, 0, &[], 0, 0))).unwrap());
        }
        shm4.store_release(base(RingId::Stat) + CONS, 300).unwrap();
        assert!(matches!(
            p4.push(&Message::Stat(Stat::new(256, 0, &[], 0, 0))),
            Err(RingError::Backwards { .. }) | Err(RingError::Beyond { .. })
        ));
    }

    #[test]
    fn a_message_longer_than_a_slot_is_refused_not_written() {
        use crate::proto::{Cmd, Region, Segments};
        let (mut p, mut c, _shm) = pair(RingId::Cmd, 256);
        // A CMD assembled by hand with a BUF's worth of segments: 64 + 16 * 30 > 512.
        let mut cmd = Cmd::scsi(1, 0, 0, &[0x28; 10], 0, &[]).unwrap();
        cmd.segments = Segments::new(&[Region { offset: 0, len: 512 }; 30]).unwrap();
        assert!(matches!(p.push(&Message::Cmd(cmd)), Err(RingError::Malformed { .. })));
        assert_eq!(c.pop(1 << 20).unwrap(), None, "nothing was published");
    }

    #[test]
    fn garbage_and_wrong_kinds_are_errors() {
        let (mut p, mut c, shm) = pair(RingId::Tran, 256);
        p.push(&Message::Stat(Stat::new(1, 0, &[], 0, 0))).unwrap();
        assert!(matches!(c.pop(0), Err(RingError::WrongKind(RingId::Tran))));
        shm.write(slot_offset(RingId::Tran, 256, 1), &[0xFF; SLOT_SIZE]).unwrap();
        shm.store_release(base(RingId::Tran) + PROD, 2).unwrap();
        assert!(matches!(c.pop(0), Err(RingError::Malformed { .. })));
    }

    #[test]
    fn only_the_message_travels_and_stale_bytes_after_it_are_ignored() {
        let (mut p, mut c, shm) = pair(RingId::Stat, 256);
        let at = slot_offset(RingId::Stat, 256, 0);
        shm.write(at, &[0xEE; SLOT_SIZE]).unwrap();
        let sense = [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0];
        let stat = Stat::new(7, 2, &sense, 0, 512);
        p.push(&Message::Stat(stat)).unwrap();
        let mut slot = [0u8; SLOT_SIZE];
        shm.read(at, &mut slot).unwrap();
        assert_eq!(u32::from_le_bytes(slot[8..12].try_into().unwrap()) as usize, 32 + sense.len());
        assert!(slot[32 + sense.len()..].iter().all(|&b| b == 0xEE), "bytes after the message are not written");
        assert_eq!(c.pop(0).unwrap(), Some(Message::Stat(stat)));
        // A length past the slot is refused, whatever follows it.
        shm.write(at, &[0xEE; SLOT_SIZE]).unwrap();
        p.push(&Message::Stat(Stat::new(8, 0, &[], 0, 0))).unwrap();
        shm.write(slot_offset(RingId::Stat, 256, 1) + 8, &4096u32.to_le_bytes()).unwrap();
        assert!(matches!(c.pop(0), Err(RingError::Malformed { .. })));
    }

    #[test]
    fn polling_flag_is_visible_to_the_producer() {
        let (p, c, _) = pair(RingId::Cmd, 256);
        assert!(!p.consumer_polling());
        c.set_polling(true);
        assert!(p.consumer_polling());
        c.set_polling(false);
        assert!(!p.consumer_polling());
    }
}
