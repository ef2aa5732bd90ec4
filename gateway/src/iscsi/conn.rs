//! One iSCSI connection: the login, then the full feature phase, on a thread of its own.
//!
//! A normal session connects to the gateway's ring server as its node, so its commands
//! meet the same SCSI target, access checks, unit attentions, engines and metrics as every
//! other front-end. The thread moves PDUs between the socket and [`iscsi::session`], and
//! commands between the session and the queue pair, with nothing shared but counters.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi::login::{Login, Status, Step};
use iscsi::pdu::Sns;
use iscsi::session::{reject, Session, SessionConfig, Work};
use iscsi::{Framer, Pdu, RawPdu};
use ring::initiator::{ConnectOptions, Data, Initiator, Response};
use ring::proto::ControlOp;
use ring::proto::Region;
use rustix::event::{poll, PollFd, PollFlags};

use super::{Established, Shared};

/// How long a session asked to log out at shutdown has to do so.
const LOGOUT_GRACE: Duration = Duration::from_secs(3);
/// Commands the CmdSN window admits.
const DEPTH: u32 = 128;
/// The queue pair's data area, where data-out and data-in stay while commands run: room
/// for one transfer of the SCSI target's maximum (8 MiB) beside others. The ring server
/// pins it whole, so it is kept small.
const DATA_AREA: u64 = 16 << 20;
/// Largest transfer one command may have: the SCSI target's maximum (8 MiB) and room.
const MAX_TASK_BYTES: u32 = 9 << 20;
/// Past this much unsent output the connection stops reading until the initiator reads.
const WRITE_BACKLOG: usize = 8 << 20;
/// The read buffer; a PDU with a larger data segment grows it.
const READ_BUFFER: usize = 256 << 10;
/// How long the thread polls for completions before it sleeps, with commands in flight.
const SPIN: Duration = Duration::from_micros(50);

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
struct Wire {
    stream: TcpStream,
    rbuf: Vec<u8>,
    /// `rbuf[start..end]` is read and not yet parsed.
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    sent: usize,
}

impl Wire {
    /// Reads what the socket has; `false` when it had nothing. The buffer is zeroed once
    /// and reused: parsed bytes are dropped by moving the rest to the front, and it grows
    /// only when a PDU is larger than it.
    fn fill(&mut self) -> Result<bool, Ended> {
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
    fn next_pdu(&mut self, framer: &Framer) -> Result<Option<RawPdu>, Ended> {
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
    fn flush(&mut self) -> Result<bool, Ended> {
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
    fn linger(&mut self) {
        let _ = self.flush_by(Instant::now() + Duration::from_millis(500));
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let until = Instant::now() + Duration::from_millis(200);
        let mut sink = [0u8; 16 << 10];
        let mut left = 4usize << 20;
        while Instant::now() < until && left > 0 {
            match self.stream.read(&mut sink) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(&[], Duration::from_millis(20)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn backlog(&self) -> usize {
        self.wbuf.len() - self.sent
    }

    /// Waits until the socket can be read (or written, with output pending), `extra` is
    /// readable, or `timeout` passes.
    fn wait(&self, extra: &[std::os::fd::BorrowedFd<'_>], timeout: Duration) {
        let mut flags = PollFlags::IN;
        if self.backlog() > 0 {
            flags |= PollFlags::OUT;
        }
        let mut fds = vec![PollFd::new(&self.stream, flags)];
        fds.extend(extra.iter().map(|fd| PollFd::new(fd, PollFlags::IN)));
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
                self.wait(&[], left.min(Duration::from_millis(200)));
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
            self.wait(&[], left.min(Duration::from_millis(200)));
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

/// Serves one accepted connection to its end.
pub(super) fn serve(stream: TcpStream, portal: SocketAddr, shared: Arc<Shared>) -> Result<(), Ended> {
    let peer = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    let mut wire = Wire { stream, rbuf: vec![0; READ_BUFFER], start: 0, end: 0, wbuf: Vec::new(), sent: 0 };
    let deadline = Instant::now() + shared.timeout;
    let result = match login(&mut wire, &shared, portal, deadline) {
        Ok(Some(est)) => {
            let reg = shared.register(&est, portal, peer, &wire.stream);
            let result = full_feature(&mut wire, &shared, portal, est, &reg);
            shared.unregister(reg.id);
            result
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    wire.linger();
    result
}

/// The login phase: Login Requests until the session is established or refused.
fn login(
    wire: &mut Wire,
    shared: &Shared,
    portal: SocketAddr,
    deadline: Instant,
) -> Result<Option<Established>, Ended> {
    let framer = Framer::default();
    let tsih = shared.next_tsih();
    let mut login = Login::new(shared.limits, tsih);
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
        let refuse = |wire: &mut Wire, status: Status| -> Result<Option<Established>, Ended> {
            framer.emit(iscsi::login::refusal(&req, status, sns).bhs(), &[], &mut wire.wbuf);
            wire.flush_by(deadline)?;
            shared.stats(portal).login(status);
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
                tracing::info!(%portal, isid = req.isid, ?status, "iSCSI login refused");
                return Err(Ended::LoginFailed(status.0, status.1));
            }
            Step::Complete(pdu, body, params) => {
                let initiator = params.initiator_name.clone().unwrap_or_default();
                let admitted = match directory.resolve(&initiator, params.target_name.as_deref()) {
                    Ok(a) => a,
                    Err(status) => return refuse(wire, status),
                };
                framer.emit(pdu.bhs(), &body, &mut wire.wbuf);
                shared.stats(portal).login(Status::SUCCESS);
                return Ok(Some(Established {
                    params: *params,
                    isid: req.isid,
                    tsih,
                    admitted,
                    stat_sn,
                    exp_cmd_sn: req.cmd_sn,
                }));
            }
        }
    }
}

fn connect_ring(
    shared: &Shared,
    node: &crate::registry::NodeEntry,
) -> Result<Initiator, ring::initiator::InitiatorError> {
    let opts = ConnectOptions {
        pan: node.pan.clone(),
        node: node.node.clone(),
        credential: node.credential.clone(),
        slots: 256,
        data_bytes: DATA_AREA,
    };
    Initiator::connect(&shared.socket, &opts)
}

/// A command with the SCSI target.
struct InFlight {
    itt: u32,
    region: Option<Region>,
}

/// What a queue-pair sequence number stands for.
enum Pending {
    Command(InFlight),
    /// One LUN RESET of a task management function.
    Reset(u32),
}

/// The full feature phase of a normal or discovery session.
fn full_feature(
    wire: &mut Wire,
    shared: &Shared,
    portal: SocketAddr,
    est: Established,
    reg: &super::Registration,
) -> Result<(), Ended> {
    let kill = &*reg.kill;
    let target = est.admitted.target;
    let discovery = est.params.discovery;
    let targets = shared.directory().targets_for(&est.admitted.node);
    let luns = est
        .admitted
        .node
        .luns
        .iter()
        .filter(|&&(t, ..)| t == target)
        .map(|&(_, lun, image, _)| (lun, shared.images.capacity(image).map_or(512, |(bs, _)| bs)))
        .collect();
    let mut session = Session::new(SessionConfig {
        params: est.params.clone(),
        max_recv_data: shared.limits.max_recv_data,
        depth: DEPTH,
        max_task_bytes: MAX_TASK_BYTES,
        luns,
        stat_sn: est.stat_sn,
        exp_cmd_sn: est.exp_cmd_sn,
        targets,
    });
    let framer = session.in_framer();
    // The queue pair is made when the first command is ready to run, so a connection that
    // only logs in, or misbehaves before that, costs the workers nothing.
    let mut ring: Option<Initiator> = None;
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    let mut resets: HashMap<u32, usize> = HashMap::new();
    let mut waiting: VecDeque<iscsi::session::Exec> = VecDeque::new();
    let mut responses: Vec<Response> = Vec::new();
    let mut last_heard = Instant::now();
    let mut logout_deadline: Option<Instant> = None;
    let mut closing = None;
    let stats = shared.stats(portal);
    loop {
        let mut busy = false;
        if kill.load(Ordering::Acquire) {
            return Err(Ended::Dropped);
        }
        if shared.stopping.load(Ordering::Acquire) && logout_deadline.is_none() {
            session.request_logout(LOGOUT_GRACE.as_secs() as u16);
            logout_deadline = Some(Instant::now() + LOGOUT_GRACE);
        }
        if logout_deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = wire.flush();
            return Err(Ended::Stopping);
        }

        // The initiator's PDUs.
        if closing.is_none() && wire.backlog() < WRITE_BACKLOG {
            if wire.fill()? {
                busy = true;
                last_heard = Instant::now();
            }
            while let Some(raw) = wire.next_pdu(&framer).inspect_err(|e| stats.error(e.label()))? {
                busy = true;
                let bhs = raw.bhs;
                stats.pdu(bhs.0[0]);
                reg.pdus.fetch_add(1, Ordering::Relaxed);
                let pdu = match Pdu::parse(raw) {
                    Ok(p) => p,
                    Err(e) => {
                        session.reject(e.reject_reason(), &bhs);
                        if e.reject_reason() == reject::NOT_SUPPORTED {
                            continue;
                        }
                        stats.error("malformed_pdu");
                        closing = Some(Ended::Protocol(e.to_string(), "malformed_pdu"));
                        break;
                    }
                };
                if discovery && !matches!(pdu, Pdu::Text(_) | Pdu::Logout(_) | Pdu::NopOut(_)) {
                    session.reject(reject::PROTOCOL, &bhs);
                    stats.error("discovery_session");
                    closing = Some(Ended::Protocol("a SCSI PDU in a discovery session".into(), "discovery_session"));
                    break;
                }
                if let Err(v) = session.receive(pdu) {
                    session.reject(reject::PROTOCOL, &bhs);
                    stats.error(v.label());
                    closing = Some(Ended::Protocol(v.to_string(), v.label()));
                    break;
                }
            }
        }

        // Work for the SCSI target.
        let work = std::mem::take(&mut session.work);
        if ring.is_none() && work.iter().any(|w| matches!(w, Work::Execute(_) | Work::Reset { .. })) {
            ring = Some(connect_ring(shared, &est.admitted.node).map_err(ring_err)?);
        }
        for w in work {
            match w {
                Work::Execute(e) => waiting.push_back(e),
                Work::Reset { tmf, luns } => {
                    let Some(r) = ring.as_mut() else { continue };
                    resets.insert(tmf, luns.len());
                    for lun in luns {
                        let seq = r.control(ControlOp::LunReset, target, lun, 0, None).map_err(ring_err)?;
                        pending.insert(seq, Pending::Reset(tmf));
                    }
                    if resets.get(&tmf) == Some(&0) {
                        resets.remove(&tmf);
                        session.reset_done(tmf);
                    }
                }
                Work::Close(c) => {
                    closing = Some(match c {
                        iscsi::session::Closing::Logout => Ended::Logout,
                        iscsi::session::Closing::ColdReset => {
                            // A cold reset ends every session of the target (RFC 7143 11.5.1).
                            shared.drop_target(est.params.target_name.as_deref().unwrap_or_default(), kill);
                            Ended::ColdReset
                        }
                    })
                }
            }
        }
        if let Some(r) = ring.as_mut() {
            let mut queued = false;
            while let Some(e) = waiting.front() {
                let len = e.data_out.len().max(e.data_in as usize) as u32;
                let region = if len == 0 {
                    None
                } else {
                    match r.alloc(len) {
                        Some(reg) => Some(reg),
                        // The data area is full: wait for completions.
                        None if !pending.is_empty() => break,
                        None => return Err(Ended::Ring(format!("a {len}-byte command does not fit the data area"))),
                    }
                };
                let e = waiting.pop_front().expect("front");
                let data = match region {
                    None => Data::None,
                    Some(reg) if !e.data_out.is_empty() => {
                        r.write_data(reg, &e.data_out).map_err(ring_err)?;
                        Data::Out { region: reg, staged: false }
                    }
                    Some(reg) => Data::In(reg),
                };
                let seq = r.queue(target, e.lun, &e.cdb, data).map_err(ring_err)?;
                pending.insert(seq, Pending::Command(InFlight { itt: e.itt, region }));
                queued = true;
            }
            if queued {
                r.kick().map_err(ring_err)?;
                busy = true;
            }
            // Answers from the SCSI target.
            r.poll(&mut responses, Duration::ZERO).map_err(ring_err)?;
            if responses.is_empty() && !pending.is_empty() && !busy {
                let spin_until = Instant::now() + SPIN;
                let mut spins = 0u32;
                while responses.is_empty() {
                    r.poll(&mut responses, Duration::ZERO).map_err(ring_err)?;
                    spins = spins.wrapping_add(1);
                    // Reading the clock costs more than a look at the ring.
                    if spins.is_multiple_of(32) && Instant::now() >= spin_until {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            for resp in responses.drain(..) {
                busy = true;
                match pending.remove(&resp.seq) {
                    Some(Pending::Command(f)) => {
                        // Data-in goes from the data area straight into the Data-In PDUs.
                        let n = match f.region {
                            Some(reg) if resp.sense.is_empty() => (resp.transferred as usize).min(reg.len as usize),
                            _ => 0,
                        };
                        let mut failed = None;
                        session.complete_with(f.itt, resp.status, &resp.sense, n, |at, dst| {
                            let Some(reg) = f.region else { return };
                            let from = Region { offset: reg.offset + at as u64, len: dst.len() as u32 };
                            if let Err(e) = r.read_data(from, dst) {
                                failed.get_or_insert(e);
                            }
                        });
                        if let Some(reg) = f.region {
                            r.free(reg);
                        }
                        if let Some(e) = failed {
                            return Err(ring_err(e));
                        }
                    }
                    Some(Pending::Reset(tmf)) => {
                        let left = resets.get_mut(&tmf).map(|n| {
                            *n -= 1;
                            *n
                        });
                        if left == Some(0) {
                            resets.remove(&tmf);
                            session.reset_done(tmf);
                        }
                    }
                    None => {}
                }
            }
        }

        // Keepalive: ping a silent initiator, give up on one that does not answer.
        if last_heard.elapsed() >= shared.timeout {
            if !session.ping() {
                return Err(Ended::PingTimeout);
            }
            last_heard = Instant::now();
        }

        if !session.out.is_empty() {
            if wire.backlog() == 0 {
                // Nothing queued: take the session's buffer whole rather than copy it.
                wire.wbuf.clear();
                wire.sent = 0;
                std::mem::swap(&mut wire.wbuf, &mut session.out);
            } else {
                wire.wbuf.append(&mut session.out);
            }
        }
        wire.flush()?;
        if let Some(c) = closing.take() {
            if session.work.is_empty() {
                wire.flush_by(Instant::now() + Duration::from_secs(2))?;
                return Err(c);
            }
            closing = Some(c);
        }
        if !busy {
            let mut fds = Vec::new();
            if let Some(r) = ring.as_mut() {
                if r.arm_doorbell().map_err(ring_err)? {
                    continue;
                }
                let (bell, sock) = r.wait_fds();
                fds.push(bell);
                fds.push(sock);
            }
            wire.wait(&fds, Duration::from_millis(500));
            if let Some(r) = ring.as_mut() {
                r.announce_polling();
            }
        }
    }
}

fn ring_err(e: ring::initiator::InitiatorError) -> Ended {
    Ended::Ring(e.to_string())
}

impl AsFd for Wire {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}
