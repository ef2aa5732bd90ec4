//! The node side of the ring protocol: a library other programs link to send SCSI commands
//! to the gateway over one queue pair.
//!
//! Commands are submitted with buffers in the queue pair's data area ([`Initiator::alloc`]),
//! singly or in batches, and completed out of order by sequence number. Writes use the
//! direct path by default (the gateway reads the regions itself) or the staged path
//! (BUF/TRAN: the gateway names staging buffers, the node copies the data there and
//! confirms each segment).

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scsi::build;
use thiserror::Error;

use super::alloc::RegionAllocator;
use super::handshake::{self, Answer, Hello, LunInfo, Welcome};
use super::proto::{self, Cmd, ControlOp, Message, Region, ReportEntry, Stat};
use super::shm::{Doorbell, SharedMemory, ShmError};
use super::spsc::{Consumer, Producer, RingError, RingId};

/// How long a node waits for the gateway's answer to its hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an initiator operation failed.
#[derive(Debug, Error)]
pub enum InitiatorError {
    /// The gateway refused the handshake.
    #[error("the gateway refused the connection: {0}")]
    Refused(String),
    /// The gateway broke the protocol.
    #[error("protocol error from the gateway: {0}")]
    Protocol(String),
    /// The gateway went away.
    #[error("the gateway closed the connection")]
    Closed,
    /// No reply within the time allowed.
    #[error("timed out waiting for the gateway")]
    Timeout,
    /// The gateway did not finish the handshake in time.
    #[error("the gateway did not answer the handshake within {} s", .0.as_secs())]
    HandshakeTimeout(Duration),
    /// The command cannot be sent (too many segments, no ring room, bad CDB).
    #[error("cannot send: {0}")]
    Invalid(String),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<RingError> for InitiatorError {
    fn from(e: RingError) -> Self {
        InitiatorError::Protocol(e.to_string())
    }
}

impl From<ShmError> for InitiatorError {
    fn from(e: ShmError) -> Self {
        InitiatorError::Protocol(e.to_string())
    }
}

/// Connection parameters.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// PAN name.
    pub pan: String,
    /// Node name.
    pub node: String,
    /// The node's credential.
    pub credential: String,
    /// Slots per ring to ask for.
    pub slots: u32,
    /// Data area bytes to ask for.
    pub data_bytes: u64,
    /// What the node side is (see [`Hello::client`]).
    pub client: Option<String>,
}

/// Which way data moves, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// No data phase.
    None,
    /// The gateway writes up to `len` bytes into the region (a read).
    In(Region),
    /// The gateway reads the region (a write); `staged` uses BUF/TRAN.
    Out {
        /// Where the data is.
        region: Region,
        /// Deliver through the staged path.
        staged: bool,
    },
}

/// A completed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Sequence number.
    pub seq: u32,
    /// SCSI status byte.
    pub status: u8,
    /// Sense data.
    pub sense: Vec<u8>,
    /// Bytes moved.
    pub transferred: u32,
    /// Bytes of the expected transfer not moved.
    pub residual: u32,
    /// For control requests: the result code.
    pub control_result: u16,
}

impl Response {
    fn from_stat(s: &Stat) -> Response {
        Response {
            seq: s.seq,
            status: s.status,
            sense: s.sense().to_vec(),
            transferred: s.transferred,
            residual: s.residual,
            control_result: s.control_result,
        }
    }

    /// Whether the status is GOOD.
    pub fn good(&self) -> bool {
        self.status == scsi::Status::Good as u8
    }
}

/// What a handshake gives a node: the welcome, the memories and doorbells it names, and the
/// connection whose closing tells each side the other is gone.
#[derive(Debug)]
pub struct Parts {
    pub sock: UnixStream,
    pub welcome: Welcome,
    pub ring: Arc<SharedMemory>,
    pub data: Arc<SharedMemory>,
    pub staging: Arc<SharedMemory>,
    pub to_gateway: Doorbell,
    pub to_node: Doorbell,
}

/// One queue pair to the gateway.
#[derive(Debug)]
pub struct Initiator {
    sock: UnixStream,
    ring: Arc<SharedMemory>,
    data: Arc<SharedMemory>,
    staging: Arc<SharedMemory>,
    cmd: Producer,
    stat: Consumer,
    buf: Consumer,
    tran: Producer,
    to_gateway: Doorbell,
    to_node: Doorbell,
    welcome: Welcome,
    next_seq: u32,
    alloc: RegionAllocator,
    /// Source regions of staged writes still being transferred, by sequence number.
    staged: HashMap<u32, Region>,
    done: HashMap<u32, Response>,
    outstanding: usize,
    /// Doorbells rung (for tests and metrics).
    pub doorbells: u64,
    /// How long `poll` spins on the rings before sleeping on the doorbell.
    spin: Duration,
    /// Whether the STAT and BUF rings say we poll them, so the gateway need not ring. True
    /// whenever we are sure to look at the rings before sleeping; cleared by every path
    /// that sleeps.
    announced: bool,
}

impl Initiator {
    /// Connects to the gateway's socket and sets up a queue pair.
    pub fn connect(socket: &Path, opts: &ConnectOptions) -> Result<Initiator, InitiatorError> {
        let sock = loop {
            match UnixStream::connect(socket) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let hello = Hello {
            version: proto::VERSION,
            pan: opts.pan.clone(),
            node: opts.node.clone(),
            credential: opts.credential.clone(),
            slots: opts.slots,
            data_bytes: opts.data_bytes,
            client: opts.client.clone(),
        };
        // SO_RCVTIMEO running out shows as EAGAIN ("os error 11"): say what it means.
        let timed_out = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => InitiatorError::HandshakeTimeout(HANDSHAKE_TIMEOUT),
            _ => InitiatorError::Io(e),
        };
        handshake::send(&sock, &hello, &[]).map_err(timed_out)?;
        let (answer, fds): (Answer, _) = handshake::recv(&sock).map_err(timed_out)?;
        let welcome = match answer {
            Answer::Welcome(w) => w,
            Answer::Refused(r) => return Err(InitiatorError::Refused(r.error)),
        };
        let [ring, data, staging, to_gateway, to_node]: [_; 5] =
            fds.try_into().map_err(|f: Vec<_>| InitiatorError::Protocol(format!("expected 5 fds, got {}", f.len())))?;
        let slots = welcome.slots;
        if !slots.is_power_of_two() || !(super::spsc::MIN_SLOTS..=super::spsc::MAX_SLOTS).contains(&slots) {
            return Err(InitiatorError::Protocol(format!("bad slot count {slots}")));
        }
        let ring = Arc::new(SharedMemory::open(ring, super::spsc::region_size(slots))?);
        let data = Arc::new(SharedMemory::open(data, welcome.data_bytes as usize)?);
        let staging = Arc::new(SharedMemory::open(staging, welcome.staging_bytes as usize)?);
        sock.set_nonblocking(true)?;
        let (to_gateway, to_node) = (Doorbell::from_fd(to_gateway), Doorbell::from_fd(to_node));
        Initiator::from_parts(Parts { sock, welcome, ring, data, staging, to_gateway, to_node })
    }

    /// A queue pair from what a handshake produced, for a front-end inside the gateway's
    /// own process that sets its queue pairs up without the socket's messages. The
    /// memories must have the sizes the welcome names, and the socket must be
    /// non-blocking.
    pub fn from_parts(p: Parts) -> Result<Initiator, InitiatorError> {
        let slots = p.welcome.slots;
        if !slots.is_power_of_two() || !(super::spsc::MIN_SLOTS..=super::spsc::MAX_SLOTS).contains(&slots) {
            return Err(InitiatorError::Protocol(format!("bad slot count {slots}")));
        }
        let sizes = [
            (p.ring.len() as u64, super::spsc::region_size(slots) as u64),
            (p.data.len() as u64, p.welcome.data_bytes),
            (p.staging.len() as u64, p.welcome.staging_bytes),
        ];
        if sizes.iter().any(|(got, want)| got != want) {
            return Err(InitiatorError::Protocol("shared memory of the wrong size".into()));
        }
        let ring = p.ring;
        let stat = Consumer::new(ring.clone(), RingId::Stat, slots);
        let buf = Consumer::new(ring.clone(), RingId::Buf, slots);
        Ok(Initiator {
            sock: p.sock,
            ring: ring.clone(),
            alloc: RegionAllocator::new(p.welcome.data_bytes),
            cmd: Producer::new(ring.clone(), RingId::Cmd, slots),
            tran: Producer::new(ring.clone(), RingId::Tran, slots),
            stat,
            buf,
            data: p.data,
            staging: p.staging,
            to_gateway: p.to_gateway,
            to_node: p.to_node,
            welcome: p.welcome,
            next_seq: 1,
            staged: HashMap::new(),
            done: HashMap::new(),
            outstanding: 0,
            doorbells: 0,
            spin: Duration::ZERO,
            announced: false,
        })
    }

    /// Connects, retrying with exponential backoff (from 10 ms, doubling to 1 s) until
    /// `deadline`; for callers that reconnect after a gateway restart.
    pub fn connect_with_retry(
        socket: &Path,
        opts: &ConnectOptions,
        within: Duration,
    ) -> Result<Initiator, InitiatorError> {
        let deadline = Instant::now() + within;
        let mut delay = Duration::from_millis(10);
        loop {
            match Initiator::connect(socket, opts) {
                Ok(i) => return Ok(i),
                Err(e @ InitiatorError::Refused(_)) => return Err(e),
                Err(e) if Instant::now() + delay > deadline => return Err(e),
                Err(_) => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Makes `poll` spin on the rings for up to `spin` before sleeping: polling mode, in
    /// which the gateway need not ring the node's doorbell while it spins.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// The node's LUNs, from the handshake.
    pub fn luns(&self) -> &[LunInfo] {
        &self.welcome.luns
    }

    /// Slots per ring, the most commands that may be outstanding.
    pub fn queue_depth(&self) -> u32 {
        self.welcome.slots
    }

    /// Commands submitted and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Allocates a buffer in the data area.
    pub fn alloc(&mut self, len: u32) -> Option<Region> {
        self.alloc.alloc(len)
    }

    /// Frees a buffer from [`Initiator::alloc`].
    pub fn free(&mut self, r: Region) {
        self.alloc.free(r)
    }

    /// Copies bytes into the data area.
    pub fn write_data(&self, r: Region, bytes: &[u8]) -> Result<(), InitiatorError> {
        if bytes.len() > r.len as usize {
            return Err(InitiatorError::Invalid("data larger than its region".into()));
        }
        Ok(self.data.write(r.offset, bytes)?)
    }

    /// Copies bytes out of the data area.
    pub fn read_data(&self, r: Region, out: &mut [u8]) -> Result<(), InitiatorError> {
        if out.len() > r.len as usize {
            return Err(InitiatorError::Invalid("read larger than its region".into()));
        }
        Ok(self.data.read(r.offset, out)?)
    }

    /// The ring region, for protocol conformance tests that play a misbehaving node.
    /// Writing to it breaks the protocol.
    pub fn raw_ring(&self) -> &SharedMemory {
        &self.ring
    }

    /// The data area, shared, for callers that fill regions they allocated without holding
    /// the initiator (another thread's lock, say).
    pub fn shared_data_area(&self) -> Arc<SharedMemory> {
        self.data.clone()
    }

    /// Raw access to the data area mapping, for zero-copy users.
    pub fn data_area(&self) -> &SharedMemory {
        &self.data
    }

    fn seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    fn push(&mut self, cmd: Cmd) -> Result<u32, InitiatorError> {
        if self.outstanding >= self.welcome.slots as usize {
            return Err(InitiatorError::Invalid("queue full: reap completions first".into()));
        }
        let seq = cmd.seq;
        if !self.cmd.push(&Message::Cmd(cmd))? {
            return Err(InitiatorError::Invalid("CMD ring full".into()));
        }
        self.outstanding += 1;
        Ok(seq)
    }

    /// Queues a SCSI command without ringing the doorbell; call [`Initiator::kick`] after
    /// a batch. Returns its sequence number.
    pub fn queue(&mut self, target: u16, lun: u16, cdb: &[u8], data: Data) -> Result<u32, InitiatorError> {
        let seq = self.seq();
        let (flags, regions) = match data {
            Data::None => (0, None),
            Data::In(r) => (proto::FLAG_DATA_IN, Some(r)),
            Data::Out { region, staged } => {
                if staged {
                    self.staged.insert(seq, region);
                }
                (proto::FLAG_DATA_OUT | if staged { proto::FLAG_STAGED } else { 0 }, Some(region))
            }
        };
        let cmd = Cmd::scsi(seq, target, lun, cdb, flags, regions.as_slice())
            .ok_or_else(|| InitiatorError::Invalid("CDB must be 1-32 bytes".into()))?;
        self.push(cmd).inspect_err(|_| {
            self.staged.remove(&seq);
        })
    }

    /// Rings the gateway's doorbell unless it says it is polling.
    pub fn kick(&mut self) -> Result<(), InitiatorError> {
        if !self.cmd.consumer_polling() {
            self.to_gateway.ring()?;
            self.doorbells += 1;
        }
        Ok(())
    }

    /// Submits one command (queue and kick).
    pub fn submit(&mut self, target: u16, lun: u16, cdb: &[u8], data: Data) -> Result<u32, InitiatorError> {
        let seq = self.queue(target, lun, cdb, data)?;
        self.kick()?;
        Ok(seq)
    }

    /// Sends a protocol-control request.
    pub fn control(
        &mut self,
        op: ControlOp,
        target: u16,
        lun: u16,
        arg: u32,
        reply: Option<Region>,
    ) -> Result<u32, InitiatorError> {
        let seq = self.seq();
        let regions: Vec<Region> = reply.into_iter().collect();
        let cmd = Cmd::control(seq, op, target, lun, arg, &regions).expect("one region fits");
        self.push(cmd)?;
        self.kick()?;
        Ok(seq)
    }

    /// Handles what the gateway sent: STATs become responses, BUFs are filled and answered
    /// with TRAN. Waits up to `wait` for something to arrive when nothing has.
    pub fn poll(&mut self, out: &mut Vec<Response>, wait: Duration) -> Result<(), InitiatorError> {
        if wait.is_zero() {
            // A look, no more: no clock, no polling announcement.
            self.drain(out)?;
            return Ok(());
        }
        let start = Instant::now();
        let deadline = start + wait;
        let mut spins = 0u32;
        if !self.spin.is_zero() && !self.announced {
            // Polling mode: until we sleep, STATs and BUFs need no doorbell (a syscall each).
            self.announce(true);
        }
        loop {
            let before = out.len();
            let moved = self.drain(out)?;
            if out.len() > before || wait.is_zero() {
                return Ok(());
            }
            if moved {
                continue;
            }
            // Reading the clock costs more than a look at the rings: spin on the rings and
            // check the time every few rounds.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(32) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            if now - start < self.spin {
                if spins.is_multiple_of(1024) {
                    // Let the gateway's worker run first if it shares this core.
                    std::thread::yield_now();
                }
                continue;
            }
            // Say we will sleep, check once more, then wait on the doorbell.
            self.announce(false);
            let pending = self.stat.pending()? + self.buf.pending()?;
            if pending == 0 {
                self.check_connected()?;
                let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
                self.to_node.wait(left)?;
                self.to_node.drain()?;
            }
            self.announce(true);
        }
    }

    /// Says the node polls the STAT and BUF rings, so the gateway need not ring. The caller
    /// must look at the rings until it calls [`Initiator::arm_doorbell`].
    pub fn announce_polling(&mut self) {
        self.announce(true);
    }

    fn announce(&mut self, polling: bool) {
        self.stat.set_polling(polling);
        self.buf.set_polling(polling);
        self.announced = polling;
    }

    fn drain(&mut self, out: &mut Vec<Response>) -> Result<bool, InitiatorError> {
        let mut moved = false;
        let mut trans = 0;
        while let Some(m) = self.buf.pop(self.welcome.staging_bytes)? {
            let Message::Buf(b) = m else { unreachable!("the consumer checks kinds") };
            let src = self
                .staged
                .get(&b.seq)
                .copied()
                .ok_or_else(|| InitiatorError::Protocol(format!("BUF for unknown sequence number {}", b.seq)))?;
            if b.index != 0 {
                return Err(InitiatorError::Protocol(format!("BUF index {} for a one-segment command", b.index)));
            }
            // Copy the command's segment into the staging regions, in order.
            let mut at = 0u64;
            let mut chunk = vec![0u8; 64 << 10];
            for r in b.segments.as_slice() {
                let mut done = 0u64;
                while done < u64::from(r.len) {
                    let n = (u64::from(r.len) - done).min(chunk.len() as u64) as usize;
                    if at + n as u64 > u64::from(src.len) {
                        return Err(InitiatorError::Protocol("BUF asks for more than the command carries".into()));
                    }
                    self.data.read(src.offset + at, &mut chunk[..n])?;
                    self.staging.write(r.offset + done, &chunk[..n])?;
                    done += n as u64;
                    at += n as u64;
                }
            }
            let tran = Message::Tran(proto::Tran { seq: b.seq, index: b.index });
            // TRAN never outnumbers outstanding commands, so the ring has room.
            if !self.tran.push(&tran)? {
                return Err(InitiatorError::Protocol("TRAN ring full".into()));
            }
            trans += 1;
            moved = true;
        }
        if trans > 0 && !self.tran_polling() {
            self.to_gateway.ring()?;
            self.doorbells += 1;
        }
        while let Some(m) = self.stat.pop(0)? {
            let Message::Stat(s) = m else { unreachable!("the consumer checks kinds") };
            if !self.staged.is_empty() {
                self.staged.remove(&s.seq);
            }
            self.outstanding = self.outstanding.saturating_sub(1);
            out.push(Response::from_stat(&s));
            moved = true;
        }
        Ok(moved)
    }

    fn tran_polling(&self) -> bool {
        self.tran.consumer_polling()
    }

    /// Prepares to sleep outside [`Initiator::poll`]: says the node is not polling, then
    /// reports whether STAT or BUF messages arrived meanwhile (if so, drain before sleeping).
    /// Callers that wait on [`Initiator::wait_fds`] themselves use this to close the race
    /// between their last drain and the gateway's decision not to ring.
    pub fn arm_doorbell(&mut self) -> Result<bool, InitiatorError> {
        self.announce(false);
        Ok(self.stat.pending()? + self.buf.pending()? > 0)
    }

    /// The node's doorbell and the connection's socket, for callers that wait on them
    /// themselves: the doorbell becomes readable when the gateway rings, the socket when
    /// the gateway goes away.
    pub fn wait_fds(&self) -> (std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>) {
        use std::os::fd::AsFd;
        (self.to_node.fd(), self.sock.as_fd())
    }

    /// Checks, without touching the rings, whether the gateway still holds the connection.
    pub fn check_connected(&self) -> Result<(), InitiatorError> {
        let mut b = [0u8; 1];
        match rustix::net::recv(&self.sock, &mut b, rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => Err(InitiatorError::Closed),
            Ok(_) => Err(InitiatorError::Protocol("unexpected data on the socket".into())),
            Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(InitiatorError::Io(e.into())),
        }
    }

    /// Waits for the response to `seq`, keeping others for later calls.
    pub fn wait_for(&mut self, seq: u32, timeout: Duration) -> Result<Response, InitiatorError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            if let Some(r) = self.done.remove(&seq) {
                return Ok(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(InitiatorError::Timeout);
            }
            self.poll(&mut out, left)?;
            for r in out.drain(..) {
                self.done.insert(r.seq, r);
            }
        }
    }

    /// Runs one command to completion.
    pub fn execute(&mut self, target: u16, lun: u16, cdb: &[u8], data: Data) -> Result<Response, InitiatorError> {
        let seq = self.submit(target, lun, cdb, data)?;
        self.wait_for(seq, Duration::from_secs(30))
    }

    /// Reads `blocks` blocks at `lba` with READ(16), returning the bytes.
    pub fn read(&mut self, target: u16, lun: u16, lba: u64, bytes: u32) -> Result<(Response, Vec<u8>), InitiatorError> {
        let bs = self.block_size(target, lun);
        let r = self.alloc(bytes).ok_or_else(|| InitiatorError::Invalid("data area exhausted".into()))?;
        let cdb = build::read16(lba, bytes / bs);
        let result = self.execute(target, lun, &cdb, Data::In(r));
        let mut out = vec![0u8; bytes as usize];
        let copied = self.read_data(r, &mut out);
        self.free(r);
        let resp = result?;
        copied?;
        out.truncate(resp.transferred as usize);
        Ok((resp, out))
    }

    /// Writes `data` at `lba` with WRITE(16).
    pub fn write(
        &mut self,
        target: u16,
        lun: u16,
        lba: u64,
        data: &[u8],
        fua: bool,
        staged: bool,
    ) -> Result<Response, InitiatorError> {
        let bs = self.block_size(target, lun);
        let r = self.alloc(data.len() as u32).ok_or_else(|| InitiatorError::Invalid("data area exhausted".into()))?;
        self.write_data(r, data)?;
        let cdb = build::write16(lba, data.len() as u32 / bs, fua);
        let result = self.execute(target, lun, &cdb, Data::Out { region: r, staged });
        self.free(r);
        result
    }

    /// SYNCHRONIZE CACHE (16) of the whole LUN.
    pub fn flush(&mut self, target: u16, lun: u16) -> Result<Response, InitiatorError> {
        self.execute(target, lun, &build::synchronize_cache_16(), Data::None)
    }

    /// UNMAP of `blocks` blocks at `lba`.
    pub fn unmap(&mut self, target: u16, lun: u16, lba: u64, blocks: u32) -> Result<Response, InitiatorError> {
        let p = build::unmap_one_list(lba, blocks);
        let r = self.alloc(p.len() as u32).ok_or_else(|| InitiatorError::Invalid("data area exhausted".into()))?;
        self.write_data(r, &p)?;
        let result = self.execute(
            target,
            lun,
            &build::UNMAP_ONE,
            Data::Out { region: Region { offset: r.offset, len: p.len() as u32 }, staged: false },
        );
        self.free(r);
        result
    }

    /// A command with `params` as its data-out (a parameter list: MODE SELECT, PERSISTENT
    /// RESERVE OUT…).
    pub fn data_out(&mut self, target: u16, lun: u16, cdb: &[u8], params: &[u8]) -> Result<Response, InitiatorError> {
        let r = self.alloc(params.len() as u32).ok_or_else(|| InitiatorError::Invalid("data area exhausted".into()))?;
        self.write_data(r, params)?;
        let region = Region { offset: r.offset, len: params.len() as u32 };
        let result = self.execute(target, lun, cdb, Data::Out { region, staged: false });
        self.free(r);
        result
    }

    /// A data-in command with an allocation-length-sized buffer (INQUIRY, READ CAPACITY…).
    pub fn data_in(
        &mut self,
        target: u16,
        lun: u16,
        cdb: &[u8],
        len: u32,
    ) -> Result<(Response, Vec<u8>), InitiatorError> {
        let r = self.alloc(len).ok_or_else(|| InitiatorError::Invalid("data area exhausted".into()))?;
        let result = self.execute(target, lun, cdb, Data::In(Region { offset: r.offset, len }));
        let mut out = vec![0u8; len as usize];
        let copied = self.read_data(Region { offset: r.offset, len }, &mut out);
        self.free(r);
        let resp = result?;
        copied?;
        out.truncate(resp.transferred as usize);
        Ok((resp, out))
    }

    /// INQUIRY (standard data, or a VPD page).
    pub fn inquiry(&mut self, target: u16, lun: u16, vpd: Option<u8>) -> Result<(Response, Vec<u8>), InitiatorError> {
        self.data_in(target, lun, &build::inquiry(vpd, 4096), 4096)
    }

    /// READ CAPACITY (16): (blocks, block size).
    pub fn read_capacity(&mut self, target: u16, lun: u16) -> Result<(Response, Option<(u64, u32)>), InitiatorError> {
        let (resp, d) = self.data_in(target, lun, &build::read_capacity_16(), build::READ_CAPACITY_16_LEN)?;
        Ok((resp, build::parse_capacity_16(&d)))
    }

    /// REPORT CONFIG: the node's (target, LUN, read-only, block size, blocks) list.
    pub fn report_config(&mut self) -> Result<Vec<LunInfo>, InitiatorError> {
        let len = 64 << 10;
        let r = self.alloc(len).ok_or_else(|| InitiatorError::Invalid("data area exhausted".into()))?;
        let seq = self.control(ControlOp::ReportConfig, 0, 0, 0, Some(r))?;
        let resp = self.wait_for(seq, Duration::from_secs(30));
        let mut b = vec![0u8; len as usize];
        let copied = self.read_data(r, &mut b);
        self.free(r);
        let resp = resp?;
        copied?;
        let n = (resp.transferred as usize).min(b.len());
        Ok(ReportEntry::parse_list(&b[..n])
            .map(|e| LunInfo {
                target: e.target,
                lun: e.lun,
                read_only: e.read_only,
                block_size: e.block_size,
                blocks: e.blocks,
            })
            .collect())
    }

    /// A heartbeat round trip.
    pub fn heartbeat(&mut self) -> Result<Response, InitiatorError> {
        let seq = self.control(ControlOp::Heartbeat, 0, 0, 0, None)?;
        self.wait_for(seq, Duration::from_secs(10))
    }

    fn block_size(&self, target: u16, lun: u16) -> u32 {
        self.welcome.luns.iter().find(|l| l.target == target && l.lun == lun).map_or(512, |l| l.block_size)
    }
}
