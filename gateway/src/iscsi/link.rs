//! A logged-in iSCSI connection in the full feature phase, served by the gateway worker
//! that serves its ring queue pair ([`crate::ring::server::attach`]).
//!
//! On every pass of the worker, [`Link::pump`] turns the queue pair's STATs into iSCSI
//! responses and Data-In, writes what the socket takes, reads what the initiator sent, runs
//! it through the sans-IO [`iscsi::session`] and queues the session's commands as CMDs.
//! The worker takes those CMDs on its next pass. A command therefore goes from socket to
//! SCSI target and back on one thread. Nothing here blocks. The close, which may wait for
//! the initiator's last bytes, runs on a short thread of its own.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi::session::{reject, Closing, Exec, Session, Work};
use iscsi::{Framer, Pdu};
use ring::initiator::{Data, Initiator, Response};
use ring::proto::{ControlOp, Region};

use super::conn::{Ended, Wire, WRITE_BACKLOG};
use super::{Registration, Shared, Slot};
use crate::ring::server::admission::Closed;
use crate::ring::server::attach::{Attachment, Pumped};

/// How long a session asked to log out at shutdown has to do so.
const LOGOUT_GRACE: Duration = Duration::from_secs(3);
/// Busy passes between readings of the clock (keepalive, logout deadline); an idle pass,
/// which comes before the worker sleeps, always reads it.
const CLOCK_EVERY: u32 = 64;

/// What a queue-pair sequence number stands for.
enum Pending {
    /// A command with the SCSI target, and its region of the data area.
    Command { itt: u32, region: Option<Region> },
    /// One LUN RESET of a task management function.
    Reset(u32),
}

/// One connection in the full feature phase.
pub(super) struct Link {
    wire: Wire,
    session: Session,
    framer: Framer,
    ring: Initiator,
    target: u16,
    discovery: bool,
    target_name: String,
    pending: HashMap<u32, Pending>,
    /// LUN resets still running, per task management function.
    resets: HashMap<u32, usize>,
    /// Commands waiting for room in the data area.
    waiting: VecDeque<Exec>,
    responses: Vec<Response>,
    last_heard: Instant,
    logout_deadline: Option<Instant>,
    /// Why the connection is closing, once it is: it ends when the session's work is done.
    closing: Option<Ended>,
    /// Why it ended, for the close.
    ended: Option<Ended>,
    passes: u32,
    /// Whether the initiator has sent something since the clock was last read.
    heard: bool,
    /// Whether the last pass read the socket and found nothing.
    drained: bool,
    portal: SocketAddr,
    peer: SocketAddr,
    shared: Arc<Shared>,
    reg: Registration,
    slot: Slot,
}

/// What a [`Link`] starts from.
pub(super) struct Start {
    pub wire: Wire,
    pub session: Session,
    pub ring: Initiator,
    pub target: u16,
    pub discovery: bool,
    pub target_name: String,
    pub portal: SocketAddr,
    pub peer: SocketAddr,
    pub shared: Arc<Shared>,
    pub reg: Registration,
    pub slot: Slot,
}

impl Link {
    pub(super) fn new(s: Start) -> Link {
        let mut ring = s.ring;
        // The worker looks at the rings on every pass: it never needs a doorbell.
        ring.announce_polling();
        Link {
            framer: s.session.in_framer(),
            wire: s.wire,
            session: s.session,
            ring,
            target: s.target,
            discovery: s.discovery,
            target_name: s.target_name,
            pending: HashMap::new(),
            resets: HashMap::new(),
            waiting: VecDeque::new(),
            responses: Vec::new(),
            last_heard: Instant::now(),
            logout_deadline: None,
            closing: None,
            ended: None,
            passes: 0,
            heard: false,
            drained: false,
            portal: s.portal,
            peer: s.peer,
            shared: s.shared,
            reg: s.reg,
            slot: s.slot,
        }
    }

    /// One pass; whether anything moved. An error ends the connection.
    fn step(&mut self, readable: bool) -> Result<bool, Ended> {
        if self.reg.kill.load(Ordering::Acquire) {
            return Err(Ended::Dropped);
        }
        let mut busy = self.answer()?;
        self.drained = false;
        if readable && self.closing.is_none() && self.wire.backlog() < WRITE_BACKLOG {
            busy |= self.read()?;
        }
        busy |= self.run_work()?;
        busy |= self.queue_waiting()?;
        self.passes = self.passes.wrapping_add(1);
        if !busy || self.passes.is_multiple_of(CLOCK_EVERY) || self.logout_deadline.is_some() {
            self.tick()?;
        }
        if !self.session.out.is_empty() {
            busy = true;
            if self.wire.backlog() == 0 {
                // Nothing queued: take the session's buffer whole rather than copy it.
                self.wire.wbuf.clear();
                self.wire.sent = 0;
                std::mem::swap(&mut self.wire.wbuf, &mut self.session.out);
            } else {
                self.wire.wbuf.append(&mut self.session.out);
            }
        }
        if self.wire.backlog() > 0 {
            self.wire.flush()?;
        }
        if self.closing.is_some() && self.session.work.is_empty() {
            // The last answers are queued; the close sends them.
            return Err(self.closing.take().expect("closing"));
        }
        Ok(busy)
    }

    /// Keepalive and shutdown, which need the clock.
    fn tick(&mut self) -> Result<(), Ended> {
        let now = Instant::now();
        if std::mem::take(&mut self.heard) {
            self.last_heard = now;
        }
        if self.shared.stopping.load(Ordering::Acquire) && self.logout_deadline.is_none() {
            self.session.request_logout(LOGOUT_GRACE.as_secs() as u16);
            self.logout_deadline = Some(now + LOGOUT_GRACE);
        }
        if self.logout_deadline.is_some_and(|d| now >= d) {
            return Err(Ended::Stopping);
        }
        // Ping a silent initiator; give up on one that does not answer.
        if now.duration_since(self.last_heard) >= self.shared.timeout {
            if !self.session.ping() {
                return Err(Ended::PingTimeout);
            }
            self.last_heard = now;
        }
        Ok(())
    }

    /// Reads what the initiator sent and gives its PDUs to the session.
    fn read(&mut self) -> Result<bool, Ended> {
        let stats = self.shared.stats(self.portal);
        let mut busy = self.wire.fill()?;
        self.heard |= busy;
        self.drained = !busy;
        while let Some(raw) = self.wire.next_pdu(&self.framer).inspect_err(|e| stats.error(e.label()))? {
            busy = true;
            let bhs = raw.bhs;
            stats.pdu(bhs.0[0]);
            self.reg.pdus.fetch_add(1, Ordering::Relaxed);
            let pdu = match Pdu::parse(raw) {
                Ok(p) => p,
                Err(e) => {
                    self.session.reject(e.reject_reason(), &bhs);
                    if e.reject_reason() == reject::NOT_SUPPORTED {
                        continue;
                    }
                    stats.error("malformed_pdu");
                    self.closing = Some(Ended::Protocol(e.to_string(), "malformed_pdu"));
                    break;
                }
            };
            if self.discovery && !matches!(pdu, Pdu::Text(_) | Pdu::Logout(_) | Pdu::NopOut(_)) {
                self.session.reject(reject::PROTOCOL, &bhs);
                stats.error("discovery_session");
                self.closing = Some(Ended::Protocol("a SCSI PDU in a discovery session".into(), "discovery_session"));
                break;
            }
            if let Err(v) = self.session.receive(pdu) {
                self.session.reject(reject::PROTOCOL, &bhs);
                stats.error(v.label());
                self.closing = Some(Ended::Protocol(v.to_string(), v.label()));
                break;
            }
        }
        Ok(busy)
    }

    /// Carries out the session's work: commands wait for the data area, resets and closes
    /// go at once.
    fn run_work(&mut self) -> Result<bool, Ended> {
        if self.session.work.is_empty() {
            return Ok(false);
        }
        for w in std::mem::take(&mut self.session.work) {
            match w {
                Work::Execute(e) => self.waiting.push_back(e),
                Work::Reset { tmf, luns } => {
                    self.resets.insert(tmf, luns.len());
                    for lun in luns {
                        let seq =
                            self.ring.control(ControlOp::LunReset, self.target, lun, 0, None).map_err(ring_err)?;
                        self.pending.insert(seq, Pending::Reset(tmf));
                    }
                    if self.resets.get(&tmf) == Some(&0) {
                        self.resets.remove(&tmf);
                        self.session.reset_done(tmf);
                    }
                }
                Work::Close(Closing::Logout) => self.closing = Some(Ended::Logout),
                Work::Close(Closing::ColdReset) => {
                    // A cold reset ends every session of the target (RFC 7143 11.5.1).
                    self.shared.drop_target(&self.target_name, &self.reg.kill);
                    self.closing = Some(Ended::ColdReset);
                }
            }
        }
        Ok(true)
    }

    /// Queues waiting commands as CMDs while their data fits the data area.
    fn queue_waiting(&mut self) -> Result<bool, Ended> {
        let mut queued = false;
        while let Some(e) = self.waiting.front() {
            let len = e.data_out.len().max(e.data_in as usize) as u32;
            let region = if len == 0 {
                None
            } else {
                match self.ring.alloc(len) {
                    Some(reg) => Some(reg),
                    // The data area is full: wait for completions.
                    None if !self.pending.is_empty() => break,
                    None => return Err(Ended::Ring(format!("a {len}-byte command does not fit the data area"))),
                }
            };
            let e = self.waiting.pop_front().expect("front");
            let data = match region {
                None => Data::None,
                Some(reg) if !e.data_out.is_empty() => {
                    self.ring.write_data(reg, &e.data_out).map_err(ring_err)?;
                    Data::Out { region: reg, staged: false }
                }
                Some(reg) => Data::In(reg),
            };
            let seq = self.ring.queue(self.target, e.lun, &e.cdb, data).map_err(ring_err)?;
            self.pending.insert(seq, Pending::Command { itt: e.itt, region });
            queued = true;
        }
        Ok(queued)
    }

    /// Turns the SCSI target's answers into the session's responses.
    fn answer(&mut self) -> Result<bool, Ended> {
        self.ring.poll(&mut self.responses, Duration::ZERO).map_err(ring_err)?;
        if self.responses.is_empty() {
            return Ok(false);
        }
        let mut responses = std::mem::take(&mut self.responses);
        for resp in responses.drain(..) {
            match self.pending.remove(&resp.seq) {
                Some(Pending::Command { itt, region }) => {
                    // Data-in goes from the data area straight into the Data-In PDUs.
                    let n = match region {
                        Some(reg) if resp.sense.is_empty() => (resp.transferred as usize).min(reg.len as usize),
                        _ => 0,
                    };
                    let mut failed = None;
                    let ring = &self.ring;
                    self.session.complete_with(itt, resp.status, &resp.sense, n, |at, dst| {
                        let Some(reg) = region else { return };
                        let from = Region { offset: reg.offset + at as u64, len: dst.len() as u32 };
                        if let Err(e) = ring.read_data(from, dst) {
                            failed.get_or_insert(e);
                        }
                    });
                    if let Some(reg) = region {
                        self.ring.free(reg);
                    }
                    if let Some(e) = failed {
                        return Err(ring_err(e));
                    }
                }
                Some(Pending::Reset(tmf)) => {
                    let left = self.resets.get_mut(&tmf).map(|n| {
                        *n -= 1;
                        *n
                    });
                    if left == Some(0) {
                        self.resets.remove(&tmf);
                        self.session.reset_done(tmf);
                    }
                }
                None => {}
            }
        }
        self.responses = responses;
        Ok(true)
    }
}

impl Attachment for Link {
    fn pump(&mut self, readable: bool) -> Pumped {
        match self.step(readable) {
            Ok(true) => Pumped::Busy,
            Ok(false) => Pumped::Idle,
            Err(e) => {
                self.ended = Some(e);
                Pumped::Ended
            }
        }
    }

    fn drained(&self) -> bool {
        self.drained
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.wire.stream.as_fd()
    }

    fn interest(&self) -> i16 {
        let mut events = libc::POLLRDHUP;
        if self.wire.backlog() < WRITE_BACKLOG {
            events |= libc::POLLIN;
        }
        if self.wire.backlog() > 0 {
            events |= libc::POLLOUT;
        }
        events
    }

    fn close(self: Box<Self>, why: &Closed) {
        let mut link = *self;
        let ended = link.ended.take().unwrap_or_else(|| match why {
            Closed::Stopped => Ended::Stopping,
            Closed::NodeDeleted => Ended::Dropped,
            other => Ended::Ring(other.to_string()),
        });
        let (portal, peer) = (link.portal, link.peer);
        match &ended {
            Ended::Logout | Ended::PeerClosed => {
                tracing::debug!(%portal, %peer, reason = %ended, "iSCSI connection ended")
            }
            _ => {
                if matches!(ended, Ended::PingTimeout) {
                    link.shared.stats(portal).error(ended.label());
                }
                tracing::warn!(%portal, %peer, reason = %ended, "iSCSI connection ended")
            }
        }
        link.shared.unregister(link.reg.id);
        let mut wire = link.wire;
        wire.wbuf.append(&mut link.session.out);
        // The initiator's last bytes are waited for off the worker; the connection slot is
        // held until the socket is closed.
        let slot = link.slot;
        let spawned = std::thread::Builder::new().name("pangate-iscsi-close".into()).spawn(move || {
            wire.linger();
            drop(slot);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "closing an iSCSI connection at once: no thread to linger on");
        }
    }
}

fn ring_err(e: ring::initiator::InitiatorError) -> Ended {
    Ended::Ring(e.to_string())
}
