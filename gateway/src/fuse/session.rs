//! The session loop. fuser mounts and answers INIT; then each FUSE thread, with its own
//! cloned `/dev/fuse` fd and its own queue pair, reads requests straight into pages of
//! that queue pair's data area. A large WRITE's payload is then already where the gateway
//! reads it, and is sent as it lies: one copy fewer than reading into private memory and
//! copying into the area (the kernel copies into the area, the gateway out of it).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::files::{InPlace, LunFiles, Payload};
use super::uring::{Fill, LentPages, Slot};
use super::wire::{self, Op, WRITE_PAYLOAD};
use crate::ring::alloc::PAGE;
use crate::ring::link::{AreaData, Link, Placed, Reservation};
use crate::ring::proto::Region;

/// A receive buffer: a page for the headers, then room for the largest WRITE payload.
const RECV_BYTES: usize = PAGE as usize + super::MAX_IO as usize;
/// Where in its buffer a request is read, so a WRITE's payload starts on a page boundary
/// (as the gateway's `O_DIRECT` images want it).
const READ_AT: usize = PAGE as usize - WRITE_PAYLOAD;
/// Request bytes copied out for parsing: every request but a WRITE fits.
const HEAD_BYTES: usize = 8192;
/// Writes of at least a page are sent from where they were read; smaller ones are copied
/// out (cheaply) and the buffer is kept for the next request.
const IN_PLACE_MIN: u32 = PAGE as u32;

/// A reply to one request, written to the `/dev/fuse` fd the request came from or committed
/// to the FUSE ring entry it came in. It is sent exactly once: a reply dropped unsent
/// answers EIO, so no request is left hanging.
#[derive(Debug)]
pub struct Reply {
    to: Sink,
    unique: u64,
    sent: bool,
}

/// Where a reply goes.
#[derive(Debug)]
enum Sink {
    Device(Arc<OwnedFd>),
    Ring(Slot),
}

impl Reply {
    /// The reply to request `unique`, read from `dev`.
    fn device(dev: Arc<OwnedFd>, unique: u64) -> Reply {
        Reply { to: Sink::Device(dev), unique, sent: false }
    }

    /// The reply to request `unique`, which came in a FUSE ring entry.
    pub(super) fn ring(slot: Slot, unique: u64) -> Reply {
        Reply { to: Sink::Ring(slot), unique, sent: false }
    }

    /// Answers with an errno.
    pub fn error(mut self, errno: i32) {
        self.send(-errno, &[]);
    }

    /// Answers success with no payload.
    pub fn ok(mut self) {
        self.send(0, &[]);
    }

    /// Answers success with `bytes`.
    pub fn data(mut self, bytes: &[u8]) {
        self.send(0, &[bytes]);
    }

    /// Answers success with up to `len` bytes from `skip` into data-in left in the data
    /// area, sent from where they lie; the area's pages go back once sent.
    pub fn data_in_area(mut self, data: AreaData, skip: u32, len: u32) {
        let n = data.len().saturating_sub(skip).min(len);
        // `data` keeps the pages mapped and reserved until after the call.
        let sent = match data.area().slice(data.offset() + u64::from(skip), u64::from(n)) {
            Ok(view) => match &self.to {
                Sink::Device(dev) => {
                    super::sys::write_with(dev, &wire::out_header(self.unique, 0, n as usize), view).map(drop)
                }
                Sink::Ring(slot) => slot.commit(self.unique, 0, Fill::View(view)),
            },
            Err(e) => Err(std::io::Error::other(e)),
        };
        drop(data);
        // Not delivered: dropping the reply answers EIO instead.
        self.sent = self.delivered(sent);
    }

    /// The FUSE ring entry's buffer this request came in, for a READ's data-in to land in
    /// or a WRITE's payload to be sent from; `None` for a request read from `/dev/fuse`.
    pub fn lent(&self) -> Option<LentPages> {
        match &self.to {
            Sink::Ring(slot) => Some(slot.lent()),
            Sink::Device(_) => None,
        }
    }

    /// Answers a READ whose `len` bytes the gateway left at the start of the ring entry's
    /// buffer ([`Reply::lent`]).
    pub fn data_lent(mut self, len: u32) {
        let sent = match &self.to {
            Sink::Ring(slot) => slot.commit(self.unique, 0, Fill::InPlace(len)),
            Sink::Device(_) => Err(std::io::Error::other("no ring entry to answer from")),
        };
        self.sent = self.delivered(sent);
    }

    /// Answers a WRITE: `size` bytes written.
    pub fn written(self, size: u32) {
        self.data(&wire::write_out(size));
    }

    fn send(&mut self, error: i32, payload: &[&[u8]]) {
        let sent = match &self.to {
            Sink::Device(dev) => {
                let len = payload.iter().map(|p| p.len()).sum();
                let header = wire::out_header(self.unique, error, len);
                let mut iov = [IoSlice::new(&header), IoSlice::new(&[]), IoSlice::new(&[])];
                for (slot, p) in iov[1..].iter_mut().zip(payload) {
                    *slot = IoSlice::new(p);
                }
                rustix::io::writev(&**dev, &iov[..1 + payload.len().min(2)]).map(drop).map_err(std::io::Error::from)
            }
            Sink::Ring(slot) => slot.commit(self.unique, error, Fill::Bytes(payload)),
        };
        // Not delivered: a reply that was not yet the EIO of `drop` answers EIO instead.
        self.sent = self.delivered(sent);
    }

    /// Whether a reply reached the kernel, or no longer needs to: the request was
    /// interrupted and is gone, or the filesystem was unmounted. A ring entry is committed
    /// once whatever happens: a second commit would name a request the kernel no longer
    /// has there.
    fn delivered(&self, sent: std::io::Result<()>) -> bool {
        let e = match sent {
            Ok(()) => return true,
            Err(e) => e,
        };
        if let Some(rustix::io::Errno::NOENT | rustix::io::Errno::NODEV) = rustix::io::Errno::from_io_error(&e) {
            return true;
        }
        tracing::warn!(unique = self.unique, error = %e, "cannot reply to the kernel");
        matches!(self.to, Sink::Ring(_))
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            self.send(-libc::EIO, &[]);
        }
    }
}

/// One FUSE thread: reads and dispatches requests until the filesystem is unmounted.
pub(super) fn serve(fs: &LunFiles, link: &Link, session: BorrowedFd<'_>) -> std::io::Result<()> {
    let dev = Arc::new(super::sys::clone_device(session)?);
    let queue = link.queue();
    let mut private = vec![0u8; RECV_BYTES];
    let mut head = vec![0u8; HEAD_BYTES];
    let mut held: Option<Reservation> = None;
    let result = loop {
        // Pages of a connection that has since gone are no use: the gateway cannot see them.
        if held.as_ref().is_some_and(|r| !queue.is_current(r.generation)) {
            held = None;
        }
        if held.is_none() {
            held = queue.reserve(RECV_BYTES as u32);
        }
        let room = RECV_BYTES - READ_AT;
        let got = match &held {
            // The pages are reserved for this thread.
            Some(r) => match r.area.slice(r.region.offset + READ_AT as u64, room as u64) {
                Ok(view) => super::sys::read_into(&dev, view),
                Err(e) => break Err(std::io::Error::other(e)),
            },
            None => rustix::io::read(&*dev, &mut private[READ_AT..]).map_err(std::io::Error::from),
        };
        let got = match got {
            Ok(n) => n,
            Err(e) => match rustix::io::Errno::from_io_error(&e) {
                // A signal, or a request interrupted before it was read: read again.
                Some(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN | rustix::io::Errno::NOENT) => continue,
                // Unmounted, or the connection was aborted.
                Some(rustix::io::Errno::NODEV | rustix::io::Errno::CONNABORTED) => break Ok(()),
                _ => break Err(e),
            },
        };
        // Parse a copy: the data area is shared with the gateway.
        let take = got.min(HEAD_BYTES);
        match &held {
            Some(r) => {
                if let Err(e) = r.area.read(r.region.offset + READ_AT as u64, &mut head[..take]) {
                    break Err(std::io::Error::other(e));
                }
            }
            None => head[..take].copy_from_slice(&private[READ_AT..READ_AT + take]),
        }
        let (h, op) = match wire::parse(&head[..take], got) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::error!(error = %e, "malformed FUSE request");
                if let Some(unique) = wire::unique(&head[..take]) {
                    Reply::device(dev.clone(), unique).error(libc::EIO);
                }
                continue;
            }
        };
        if op.unanswered() {
            continue;
        }
        let reply = Reply::device(dev.clone(), h.unique);
        if matches!(op, Op::Destroy) {
            reply.ok();
            break Ok(());
        }
        let Op::Write { size, .. } = op else {
            fs.dispatch(&h, op, Payload::None, reply);
            continue;
        };
        let payload_at = READ_AT + WRITE_PAYLOAD;
        match held.take() {
            Some(r) if size >= IN_PLACE_MIN && queue.is_current(r.generation) => {
                // The payload's pages go with the command; the header page and the pages
                // past the payload go back.
                let base = r.region.offset;
                let pages = u64::from(size).div_ceil(PAGE);
                let data = Region { offset: base + PAGE, len: size };
                let tail =
                    Region { offset: base + PAGE * (1 + pages), len: (RECV_BYTES as u64 - PAGE * (1 + pages)) as u32 };
                let spare = [Region { offset: base, len: PAGE as u32 }, tail];
                queue.release(r.generation, &spare[..if tail.len > 0 { 2 } else { 1 }]);
                let placed = Placed { data, hold: data, generation: r.generation };
                fs.dispatch(&h, op, Payload::InPlace(InPlace::new(queue, &r.area, placed)), reply);
            }
            held_back => {
                // Small, or in pages the gateway can no longer see: copied into private
                // memory and sent from there, the reservation kept for the next request.
                let payload = &mut private[payload_at..payload_at + size as usize];
                if let Some(r) = &held_back {
                    if let Err(e) = r.area.read(r.region.offset + payload_at as u64, payload) {
                        break Err(std::io::Error::other(e));
                    }
                }
                held = held_back;
                fs.dispatch(&h, op, Payload::Bytes(payload), reply);
            }
        }
    };
    if let Some(r) = held {
        queue.release(r.generation, &[r.region]);
    }
    tracing::debug!(fd = dev.as_raw_fd(), "FUSE thread done");
    result
}
