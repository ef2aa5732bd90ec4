//! Queue pairs whose node side is a front-end inside the gateway, such as an iSCSI
//! connection. They are set up without the socket's hello and welcome, and the worker that
//! serves the queue pair also runs the front-end. A command then goes from the peer's
//! socket through the rings to the SCSI target and back on one thread, with no hand-off
//! and no doorbell.
//!
//! The front-end is an [`Attachment`]. On each pass the worker calls
//! [`Attachment::pump`], which answers the peer from the STAT ring and moves the peer's
//! requests into the CMD ring. It must not block. Once a read finds the socket empty, the
//! worker stops asking it to read and arms a poll on the socket in its io_uring, which
//! says when there is more: a `recv` that finds nothing costs a few microseconds and
//! the socket lock the peer's packets need, a look at the completion queue nothing. While
//! the worker sleeps, the same poll (for [`Attachment::interest`]) wakes it. The queue pair
//! closes when the attachment ends, when the node is
//! deleted, or when the gateway stops. The attachment is then closed, once.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ring::initiator::{Initiator, Parts};

use super::admission::Closed;
use super::conn::Conn;
use super::{open_queue_pair, Accepted, Admit, Refused};
use crate::ring::shm::Doorbell;

/// What one pass of an attachment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Nothing moved.
    Idle,
    /// Something moved: the worker keeps polling.
    Busy,
    /// The front-end's connection is over: the worker closes the queue pair.
    Ended,
}

/// A front-end connection served by the worker that serves its queue pair.
pub trait Attachment: Send {
    /// One pass: the node side's answers go to the peer, and the peer's requests go into
    /// the queue pair; the socket is read only when `readable`. It never blocks.
    fn pump(&mut self, readable: bool) -> Pumped;
    /// Whether the last pass read the socket and found nothing.
    fn drained(&self) -> bool;
    /// The peer's socket, which the worker polls while it sleeps.
    fn fd(&self) -> BorrowedFd<'_>;
    /// The `poll(2)` events to wait for on [`Attachment::fd`] (`POLLIN`, `POLLOUT`).
    fn interest(&self) -> i16;
    /// The queue pair is closing, for `why`; called once, on the worker's thread, so it
    /// must not block either.
    fn close(self: Box<Self>, why: &Closed);
}

/// A queue pair opened for an attachment and not yet placed on a worker.
#[derive(Debug)]
pub struct Opened {
    accepted: Accepted,
}

/// Opens queue pairs for attachments and places them on workers; cheap to clone.
#[derive(Clone)]
pub struct Attacher(pub(super) Arc<Admit>);

impl std::fmt::Debug for Attacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attacher").finish_non_exhaustive()
    }
}

impl Attacher {
    /// Opens a queue pair for node `node` of `pan`, authenticated by `credential`, as a
    /// hello would (the node's limits apply), and returns its node side. Its commands come
    /// from initiator port `port` on target port `target_port` (an iSCSI session's name and
    /// ISID on the iSCSI port). The queue pair waits for [`Attacher::place`].
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        pan: &str,
        node: &str,
        credential: &str,
        slots: u32,
        data_bytes: u64,
        port: scsi::InitiatorPort,
        target_port: u16,
    ) -> Result<(Initiator, Opened), Refused> {
        let a = &self.0;
        if a.stop.load(Ordering::SeqCst) {
            return Err(Refused::Socket(std::io::Error::other("the gateway is stopping")));
        }
        let entry = a.authenticate(pan, node, credential)?;
        // The socket pair only carries the closing of either side.
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        theirs.set_nonblocking(true)?;
        let (mut accepted, welcome) = open_queue_pair(&ours, entry, slots, data_bytes, a)?;
        accepted.port = Arc::new(port);
        accepted.target_port = target_port;
        let dup = |d: &Doorbell| d.fd().try_clone_to_owned().map(Doorbell::from_fd);
        let parts = Parts {
            sock: theirs,
            welcome,
            ring: accepted.ring.clone(),
            data: accepted.data.clone(),
            staging: accepted.staging.clone(),
            to_gateway: dup(&accepted.to_gateway)?,
            to_node: dup(&accepted.to_node)?,
        };
        let initiator = Initiator::from_parts(parts).map_err(|e| Refused::Socket(std::io::Error::other(e)))?;
        Ok((initiator, Opened { accepted }))
    }

    /// Hands the queue pair and its attachment to a worker, near the image of the node's
    /// first LUN. When the workers are gone the attachment is closed at once.
    pub fn place(&self, opened: Opened, attachment: Box<dyn Attachment>) {
        let mut acc = opened.accepted;
        acc.attached = Some(attachment);
        let w = self.0.mesh.place(acc.entry.luns.first().map(|l| l.2));
        tracing::debug!(pan = %acc.entry.pan, node = %acc.entry.node, worker = w, "attached queue pair placed");
        match self.0.workers[w].send(acc) {
            Ok(()) => {
                let _ = self.0.mesh.wake(w).ring();
            }
            Err(std::sync::mpsc::SendError(acc)) => {
                if let Some(a) = acc.attached {
                    a.close(&Closed::HungUp);
                }
            }
        }
    }
}

impl Conn {
    /// One pass of the attachment, if the node side is one; whether anything moved. With
    /// `gate`, a socket found empty is not read again until its poll says it is readable.
    pub(super) fn pump(&mut self, gate: bool) -> bool {
        let Some(a) = self.attached.as_mut().filter(|_| self.dead.is_none()) else { return false };
        let moved = match a.pump(self.attached_readable) {
            Pumped::Idle => false,
            Pumped::Busy => true,
            Pumped::Ended => {
                self.dead = Some(Closed::Ended);
                return true;
            }
        };
        if gate && a.drained() {
            self.attached_readable = false;
        }
        moved
    }

    /// Closes the attachment, if there is one, with the reason the queue pair closes.
    pub(super) fn detach(&mut self) {
        if let Some(a) = self.attached.take() {
            a.close(self.dead.as_ref().unwrap_or(&Closed::Stopped));
        }
    }
}
