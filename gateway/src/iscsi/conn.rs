//! One iSCSI connection's socket, and its login, on a thread of its own. Once the login
//! succeeds, the connection gets a ring queue pair of its node and moves to the worker
//! that serves it ([`super::link`]), so its commands meet the same SCSI target, access
//! checks, unit attentions, engines and metrics as every other front-end.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi::login::{Login, Status, Step};
use iscsi::pdu::Sns;
use iscsi::session::{Session, SessionConfig};
use iscsi::{Framer, Pdu, RawPdu};
use rustix::event::{poll, PollFd, PollFlags};

use super::link::{Link, Start};
use super::{Established, Shared, Slot};

/// Commands the CmdSN window admits.
const DEPTH: u32 = 128;
/// The queue pair's data area, where data-out and data-in stay while commands run: room
/// for one transfer of the SCSI target's maximum (8 MiB) beside others. The ring server
/// pins it whole, so it is kept small; a discovery session, which runs no commands, gets
/// the smallest the ring server makes.
const DATA_AREA: u64 = 16 << 20;
const DISCOVERY_DATA_AREA: u64 = 1 << 20;
/// Slots of the queue pair's rings: the CmdSN window and the resets of a task management
/// function fit.
const SLOTS: u32 = 256;
/// Largest transfer one command may have: the SCSI target's maximum (8 MiB) and room.
const MAX_TASK_BYTES: u32 = 9 << 20;
/// Past this much unsent output the connection stops reading until the initiator reads.
pub(super) const WRITE_BACKLOG: usize = 8 << 20;
/// The read buffer; a PDU with a larger data segment grows it.
const READ_BUFFER: usize = 256 << 10;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum Ended {
    #[error("the initiator closed the connection")]
    PeerClosed,
    #[error("logged out")]
    Logout,
    #[error("the login failed: status {0:02x}{1:02x}")]
    LoginFailed(u8, u8),
    #[error("the login did not finish in time")]
    LoginTimeout,
    #[error("{0}")]
    Protocol(String, &'static str),
    #[error("no answer to a NOP-In ping")]
    PingTimeout,
    #[error("dropped by the admin or replaced by a new login with the same ISID")]
    Dropped,
    #[error("the gateway is stopping")]
    Stopping,
    #[error("target cold reset")]
    ColdReset,
    #[error("the gateway's queue pair failed: {0}")]
    Ring(String),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

impl Ended {
    /// The label for the disconnect metric.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Ended::PeerClosed => "peer_closed",
            Ended::Logout => "logout",
            Ended::LoginFailed(..) => "login_failed",
            Ended::LoginTimeout => "login_timeout",
            Ended::Protocol(_, label) => label,
            Ended::PingTimeout => "ping_timeout",
            Ended::Dropped => "dropped",
            Ended::Stopping => "stopping",
            Ended::ColdReset => "cold_reset",
            Ended::Ring(_) => "ring",
            Ended::Io(_) => "io",
        }
    }
}

/// The socket with its read and write buffers.
pub(super) struct Wire {
    pub(super) stream: TcpStream,
    rbuf: Vec<u8>,
    /// `rbuf[start..end]` is read and not yet parsed.
    start: usize,
    end: usize,
    pub(super) wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    pub(super) sent: usize,
}

impl Wire {
    /// Reads what the socket has; `false` when it had nothing. The buffer is zeroed once
    /// and reused: parsed bytes are dropped by moving the rest to the front, and it grows
    /// only when a PDU is larger than it.
    pub(super) fn fill(&mut self) -> Result<bool, Ended> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.rbuf.len() {
            if self.start > 0 {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // A PDU longer than the buffer: a bigger one (data segments are bounded
                // by the framer, so this stops).
                let grown = (self.rbuf.len() * 2).max(READ_BUFFER);
                self.rbuf.resize(grown, 0);
            }
        }
        match self.stream.read(&mut self.rbuf[self.end..]) {
            Ok(0) => Err(Ended::PeerClosed),
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The next whole PDU read so far.
    pub(super) fn next_pdu(&mut self, framer: &Framer) -> Result<Option<RawPdu>, Ended> {
        match framer.parse(&self.rbuf[self.start..self.end]) {
            Ok(Some((pdu, n))) => {
                self.start += n;
                Ok(Some(pdu))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Ended::Protocol(e.to_string(), e.label())),
        }
    }

    /// Writes what it can of the output; `true` when all of it went.
    pub(super) fn flush(&mut self) -> Result<bool, Ended> {
        while self.sent < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.sent..]) {
                Ok(0) => return Err(Ended::PeerClosed),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.wbuf.clear();
        self.sent = 0;
        Ok(true)
    }

    /// Closes gently: what was queued goes out, then the sending side shuts, and what the
    /// initiator still sends is read and dropped for a moment, so its last PDUs do not
    /// turn the close into a reset that could lose the target's final answer.
    pub(super) fn linger(&mut self) {
        let _ = self.flush_by(Instant::now() + Duration::from_millis(500));
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let until = Instant::now() + Duration::from_millis(200);
        let mut sink = [0u8; 16 << 10];
        let mut left = 4usize << 20;
        while Instant::now() < until && left > 0 {
            match self.stream.read(&mut sink) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(Duration::from_millis(20)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    pub(super) fn backlog(&self) -> usize {
        self.wbuf.len() - self.sent
    }

    /// Waits until the socket can be read (or written, with output pending), or `timeout`
    /// passes.
    fn wait(&self, timeout: Duration) {
        let mut flags = PollFlags::IN;
        if self.backlog() > 0 {
            flags |= PollFlags::OUT;
        }
        let mut fds = [PollFd::new(&self.stream, flags)];
        let ts =
            rustix::time::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
        let _ = poll(&mut fds, Some(&ts));
    }

    /// Blocks (until `deadline`) for the next PDU of the login.
    fn read_login_pdu(&mut self, framer: &Framer, deadline: Instant) -> Result<RawPdu, Ended> {
        loop {
            if let Some(p) = self.next_pdu(framer)? {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ended::LoginTimeout);
            }
            if !self.fill()? {
                self.wait(left.min(Duration::from_millis(200)));
            }
        }
    }

    /// Sends everything queued, blocking up to `deadline`.
    fn flush_by(&mut self, deadline: Instant) -> Result<(), Ended> {
        while !self.flush()? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ended::Io(io::ErrorKind::TimedOut.into()));
            }
            self.wait(left.min(Duration::from_millis(200)));
        }
        Ok(())
    }
}

/// Random bytes for the initial StatSN and CHAP challenges; a login fails without them
/// rather than challenge with predictable bytes.
fn random<const N: usize>() -> Result<[u8; N], Ended> {
    let mut b = [0u8; N];
    crate::persist::random_bytes(&mut b)?;
    Ok(b)
}

/// Logs an accepted connection in and hands it to the worker that serves its queue pair;
/// a connection that fails or is refused is closed here. `slot` is its place among the
/// target's connections, held until the socket closes.
pub(super) fn serve(stream: TcpStream, portal: SocketAddr, shared: Arc<Shared>, slot: Slot) -> Result<(), Ended> {
    let peer = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    let mut wire = Wire { stream, rbuf: vec![0; READ_BUFFER], start: 0, end: 0, wbuf: Vec::new(), sent: 0 };
    let deadline = Instant::now() + shared.timeout;
    let (est, answer) = match login(&mut wire, &shared, portal, deadline) {
        Ok(Some(done)) => done,
        Ok(None) => {
            wire.linger();
            return Ok(());
        }
        Err(e) => {
            wire.linger();
            return Err(e);
        }
    };
    let node = &est.admitted.node;
    let data_area = if est.params.discovery { DISCOVERY_DATA_AREA } else { DATA_AREA };
    let name = node.iscsi.as_ref().map_or_else(|| crate::nexus::default_name(&node.pan, &node.node), |i| i.iqn.clone());
    let port = scsi::InitiatorPort::new(&name, est.isid);
    let opened = shared.attacher.open(
        &node.pan,
        &node.node,
        &node.credential,
        SLOTS,
        data_area,
        port,
        crate::nexus::iscsi_target_port(),
    );
    let (ring, opened) = match opened {
        Ok(q) => q,
        Err(why) => {
            // The node is at its limits (or the gateway is stopping): the login fails with
            // "out of resources" rather than succeed into a session that cannot run.
            wire.wbuf = answer.refusal;
            let _ = wire.flush_by(deadline);
            shared.stats(portal).login(Status::OUT_OF_RESOURCES);
            wire.linger();
            return Err(Ended::Ring(why.to_string()));
        }
    };
    wire.wbuf = answer.accept;
    shared.stats(portal).login(Status::SUCCESS);
    let kind = if est.params.discovery { "discovery" } else { "normal" };
    shared.events.record(
        metrics::Level::Info,
        "iscsi_login",
        format!("{}/{}", est.admitted.node.pan, est.admitted.node.node),
        format!("iSCSI {kind} session of {name} from {peer} on {portal}"),
    );
    let reg = shared.register(&est, portal, peer, &wire.stream);
    let session = Session::new(session_config(&shared, &est));
    let link = Link::new(Start {
        wire,
        session,
        ring,
        target: est.admitted.target,
        discovery: est.params.discovery,
        target_name: est.params.target_name.clone().unwrap_or_default(),
        portal,
        peer,
        shared: shared.clone(),
        reg,
        slot,
    });
    shared.attacher.place(opened, Box::new(link));
    Ok(())
}

/// The session of an established login: the node's LUNs of its target with their block
/// sizes, and the targets its SendTargets may list.
fn session_config(shared: &Shared, est: &Established) -> SessionConfig {
    let target = est.admitted.target;
    let luns = est
        .admitted
        .node
        .luns
        .iter()
        .filter(|&&(t, ..)| t == target)
        .map(|&(_, lun, image, _)| (lun, shared.images.capacity(image).map_or(512, |(bs, _)| bs)))
        .collect();
    SessionConfig {
        params: est.params.clone(),
        max_recv_data: shared.limits.max_recv_data,
        depth: DEPTH,
        max_task_bytes: MAX_TASK_BYTES,
        luns,
        stat_sn: est.stat_sn,
        exp_cmd_sn: est.exp_cmd_sn,
        targets: shared.directory().targets_for(&est.admitted.node),
    }
}

/// The last Login Response of a successful login, and the refusal sent instead when the
/// session cannot be given a queue pair.
struct Answer {
    accept: Vec<u8>,
    refusal: Vec<u8>,
}

/// The login phase: Login Requests until the session is established or refused.
/// Records a refused login (the initiator's name may be anything: it is not the subject).
fn refused_event(shared: &Shared, portal: SocketAddr, status: Status) {
    shared.events.record(
        metrics::Level::Warning,
        "iscsi_login_refused",
        "iscsi",
        format!("an iSCSI login on {portal} was refused (status {:#04x}/{:#04x})", status.0, status.1),
    );
}

fn login(
    wire: &mut Wire,
    shared: &Shared,
    portal: SocketAddr,
    deadline: Instant,
) -> Result<Option<(Established, Answer)>, Ended> {
    let framer = Framer::default();
    let tsih = shared.next_tsih();
    let mut login = Login::new(shared.limits, tsih).with_portal_group(shared.portal_group);
    let mut stat_sn = u32::from_be_bytes(random::<4>()?) & 0x00ff_ffff;
    loop {
        let raw = wire.read_login_pdu(&framer, deadline)?;
        let req = match Pdu::parse(raw) {
            Ok(Pdu::Login(r)) => r,
            Ok(_) => {
                return Err(Ended::Protocol("a PDU other than Login before the login ended".into(), "login_protocol"))
            }
            Err(e) => return Err(Ended::Protocol(e.to_string(), "login_protocol")),
        };
        let sns = Sns { stat_sn, exp_cmd_sn: req.cmd_sn, max_cmd_sn: req.cmd_sn.wrapping_add(DEPTH - 1) };
        let refuse = |wire: &mut Wire, status: Status| -> Result<Option<(Established, Answer)>, Ended> {
            framer.emit(iscsi::login::refusal(&req, status, sns).bhs(), &[], &mut wire.wbuf);
            wire.flush_by(deadline)?;
            shared.stats(portal).login(status);
            refused_event(shared, portal, status);
            Err(Ended::LoginFailed(status.0, status.1))
        };
        if req.tsih != 0 {
            // MaxConnections=1: there is no session to add a connection to.
            return refuse(wire, Status(2, 0x0a));
        }
        let directory = shared.directory();
        let step = login.step(&req, &directory, random::<17>()?, sns);
        stat_sn = stat_sn.wrapping_add(1);
        match step {
            Step::Continue(pdu, body) => {
                framer.emit(pdu.bhs(), &body, &mut wire.wbuf);
                wire.flush_by(deadline)?;
            }
            Step::Fail(pdu, status) => {
                framer.emit(pdu.bhs(), &[], &mut wire.wbuf);
                wire.flush_by(deadline)?;
                shared.stats(portal).login(status);
                refused_event(shared, portal, status);
                tracing::info!(%portal, isid = req.isid, ?status, "iSCSI login refused");
                return Err(Ended::LoginFailed(status.0, status.1));
            }
            Step::Complete(pdu, body, params) => {
                let initiator = params.initiator_name.clone().unwrap_or_default();
                let admitted = match directory.resolve(&initiator, params.target_name.as_deref()) {
                    Ok(a) => a,
                    Err(status) => return refuse(wire, status),
                };
                let mut answer = Answer { accept: Vec::new(), refusal: Vec::new() };
                framer.emit(pdu.bhs(), &body, &mut answer.accept);
                framer.emit(iscsi::login::refusal(&req, Status::OUT_OF_RESOURCES, sns).bhs(), &[], &mut answer.refusal);
                let est =
                    Established { params: *params, isid: req.isid, tsih, admitted, stat_sn, exp_cmd_sn: req.cmd_sn };
                return Ok(Some((est, answer)));
            }
        }
    }
}

impl AsFd for Wire {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
