//! The FUSE filesystem: a flat directory with one file per LUN the node maps, named
//! `t<target>-l<lun>`, whose reads and writes become SCSI commands over the rings.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{Filesystem, InitFlags, KernelConfig, Request};

use super::session::Reply;
use super::span::{chunks, verdict, Span, Verdict};
use super::wire::{self, Attr, Header, Op, Statfs, DT_DIR, DT_REG, FOPEN_DIRECT_IO, FOPEN_PARALLEL_DIRECT_WRITES};
use crate::ring::backoff::PollBackoff;
use crate::ring::handshake::LunInfo;
use crate::ring::link::{Command, Lent, LentData, Link, LinkError, Outcome, Placed, Polled, QueuePair};
use crate::ring::proto::Region;
use crate::ring::shm::SharedMemory;
use scsi::build::{self, parse_capacity_16, rw16, unmap_one_list, UNMAP_ONE};

/// The largest read or write the kernel sends in one request, and so in one command.
pub const MAX_IO: u32 = 1 << 20;
/// How long the kernel may cache names and attributes; capacity changes show within it.
const TTL: Duration = Duration::from_secs(1);
/// Blocks per UNMAP descriptor or WRITE SAME, well inside the gateway's advertised limits.
const MAX_RANGE_BLOCKS: u64 = 1 << 20;

/// The root directory's inode.
const ROOT: u64 = 1;

/// Inode of the LUN at (target, lun); the root is 1.
fn ino_of(target: u16, lun: u16) -> u64 {
    2 + ((u64::from(target) << 16) | u64::from(lun))
}

/// The file name of the LUN at (target, lun).
pub fn file_name(target: u16, lun: u16) -> String {
    format!("t{target}-l{lun}")
}

fn parse_name(name: &OsStr) -> Option<(u16, u16)> {
    let s = name.to_str()?.strip_prefix('t')?;
    let (t, l) = s.split_once("-l")?;
    let (target, lun) = (t.parse().ok()?, l.parse().ok()?);
    (file_name(target, lun) == name.to_str()?).then_some((target, lun))
}

/// One LUN file's state.
#[derive(Debug)]
struct LunFile {
    target: u16,
    lun: u16,
    block_size: u32,
    read_only: bool,
    /// (blocks, when last confirmed by READ CAPACITY).
    capacity: Mutex<(u64, Instant)>,
    /// Block ranges with writes in flight: a read-modify-write must not interleave with
    /// another write to the same blocks, or one of them would be lost.
    writing: Mutex<Vec<(u64, u64)>>,
    writing_done: Condvar,
}

impl LunFile {
    fn new(info: &LunInfo) -> LunFile {
        LunFile {
            target: info.target,
            lun: info.lun,
            block_size: info.block_size,
            read_only: info.read_only,
            capacity: Mutex::new((info.blocks, Instant::now())),
            writing: Mutex::new(Vec::new()),
            writing_done: Condvar::new(),
        }
    }

    /// Makes the next attribute lookup ask the gateway for the capacity again, after a
    /// unit attention said it changed.
    fn note(&self, o: &Outcome) {
        if o.capacity_changed {
            let mut c = self.capacity.lock().unwrap_or_else(|p| p.into_inner());
            c.1 = Instant::now().checked_sub(TTL).unwrap_or(c.1);
        }
    }

    fn bytes(&self) -> u64 {
        self.capacity.lock().unwrap_or_else(|p| p.into_inner()).0 * u64::from(self.block_size)
    }

    /// Waits until no write in flight overlaps blocks [first, end), then claims them.
    fn lock_blocks(self: &Arc<Self>, first: u64, end: u64) -> BlockGuard {
        let mut held = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        while held.iter().any(|&(a, b)| a < end && first < b) {
            held = self.writing_done.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.push((first, end));
        BlockGuard { file: self.clone(), range: (first, end) }
    }
}

/// Blocks claimed by a write; released on drop, whichever thread completes the write.
struct BlockGuard {
    file: Arc<LunFile>,
    range: (u64, u64),
}

impl Drop for BlockGuard {
    fn drop(&mut self) {
        let mut held = self.file.writing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = held.iter().position(|r| *r == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.file.writing_done.notify_all();
    }
}

/// The filesystem over a node's LUNs.
#[derive(Debug)]
pub struct LunFiles {
    link: Arc<Link>,
    files: RwLock<BTreeMap<u64, Arc<LunFile>>>,
    uid: u32,
    gid: u32,
    mounted: SystemTime,
    polling: Arc<Polling>,
}

/// When a FUSE thread waits for its own command to complete, polling the rings,
/// instead of going back for the next request and leaving the reply to the completion
/// thread: when the command is alone in flight and no other request is waiting in the
/// kernel. At queue depth 1 that saves a thread wakeup per I/O; under load the thread is
/// better spent reading the next request. Where the gateway is slower than `spin` (a disk
/// image, a busy host), polls keep running out and polling backs off ([`PollBackoff`]).
#[derive(Debug, Default)]
pub struct Polling {
    /// How long to poll; zero never does.
    pub spin: Duration,
    /// A duplicate of the session's `/dev/fuse` fd, set once mounted. It is readable while
    /// requests wait in the connection's queue, which its clones share.
    pub device: OnceLock<OwnedFd>,
    backoff: PollBackoff,
}

impl Polling {
    /// Polling for up to `spin` (zero: never), once the device is set.
    pub fn new(spin: Duration) -> Polling {
        Polling { spin, ..Polling::default() }
    }

    /// Whether a FUSE thread should poll for its command now: polling is on and pays, the
    /// device is known, and no request is waiting.
    fn worth_it(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let Some(device) = self.device.get().filter(|_| !self.spin.is_zero() && self.backoff.worth_trying()) else {
            return false;
        };
        let mut fds = [PollFd::new(device, PollFlags::IN)];
        matches!(poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(0))
    }

    /// Records how a poll went.
    pub fn note(&self, polled: Polled) {
        match polled {
            Polled::NotTried => {}
            Polled::Completed => self.backoff.paid(),
            Polled::GaveUp => self.backoff.missed(),
        }
    }
}

/// Whether a command's data stays in the data area rather than being copied.
#[derive(Debug)]
enum InArea {
    /// Copied in (`cmd.out`) and out (`Outcome::data`).
    No,
    /// Data-out already there.
    Out(Placed),
    /// Data-in left there for the reply.
    In,
    /// Data-out from, or data-in into, a FUSE ring entry's buffer, mapped in `home` at the
    /// offset.
    Lent(Lent, Arc<SharedMemory>, u64),
}

/// A SCSI outcome as a result: the response's data, or the errno to reply with.
fn checked(o: Outcome, what: &str) -> Result<Vec<u8>, i32> {
    match o.result {
        Err(e) => {
            tracing::warn!(error = %e, "{what} failed");
            Err(match e {
                LinkError::TooLarge => libc::EINVAL,
                _ => libc::EIO,
            })
        }
        Ok(r) => match verdict(r.status, &r.sense) {
            Verdict::Done => Ok(o.data),
            Verdict::Fail(errno) => {
                tracing::warn!(status = r.status, sense = ?r.sense, errno, "{what} failed");
                Err(errno)
            }
            Verdict::Retry => {
                tracing::warn!(status = r.status, sense = ?r.sense, "{what} failed after retries");
                Err(libc::EIO)
            }
        },
    }
}

impl LunFiles {
    /// The filesystem over `link`'s LUNs; files belong to `uid`/`gid`.
    pub fn new(link: Arc<Link>, uid: u32, gid: u32, polling: Arc<Polling>) -> LunFiles {
        let fs = LunFiles { link, files: RwLock::new(BTreeMap::new()), uid, gid, mounted: SystemTime::now(), polling };
        fs.refresh();
        fs
    }

    /// Sends a command; see [`Polling`] for whether this thread polls for it.
    fn send(&self, cmd: Command<'_>, data: InArea, done: Box<dyn FnOnce(Outcome) + Send>) {
        let queue = self.link.queue();
        let spin = if self.polling.worth_it() { self.polling.spin } else { Duration::ZERO };
        let polled = match data {
            InArea::No => queue.submit_polling(cmd, done, spin),
            InArea::Out(p) => queue.submit_placed(cmd, p, done, spin),
            InArea::In => queue.submit_read_in_place(cmd, done, spin),
            InArea::Lent(lent, home, at) => queue.submit_lent(cmd, lent, (&home, at), done, spin),
        };
        self.polling.note(polled);
    }

    /// Sends a command and waits for it, polling first as [`LunFiles::send`] does.
    fn execute(&self, cmd: Command<'_>) -> Outcome {
        let queue = self.link.queue();
        match self.polling.worth_it() {
            true => {
                let (outcome, polled) = queue.execute_polling(cmd, self.polling.spin);
                self.polling.note(polled);
                outcome
            }
            false => queue.execute(cmd),
        }
    }

    /// Brings the file list in line with the node's LUN map as of the latest connect.
    fn refresh(&self) {
        let luns = self.link.luns();
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        files.retain(|_, f| luns.iter().any(|l| (l.target, l.lun) == (f.target, f.lun)));
        for l in &luns {
            let f = files.entry(ino_of(l.target, l.lun)).or_insert_with(|| Arc::new(LunFile::new(l)));
            if f.block_size != l.block_size || f.read_only != l.read_only {
                *f = Arc::new(LunFile::new(l));
            }
        }
    }

    fn file(&self, ino: u64) -> Result<Arc<LunFile>, i32> {
        self.files.read().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned().ok_or(libc::ENOENT)
    }

    /// Asks the gateway for the LUN's capacity when the cached one is older than the
    /// attribute TTL (or `force`). On failure the cached value stands.
    fn check_capacity(&self, f: &LunFile, force: bool) {
        let stale = f.capacity.lock().unwrap_or_else(|p| p.into_inner()).1.elapsed() >= TTL;
        if !(stale || force) {
            return;
        }
        let cmd = Command {
            target: f.target,
            lun: f.lun,
            cdb: &build::read_capacity_16(),
            out: &[],
            in_len: build::READ_CAPACITY_16_LEN,
        };
        let o = self.execute(cmd);
        if let Some((blocks, _)) = checked(o, "READ CAPACITY").ok().as_deref().and_then(parse_capacity_16) {
            *f.capacity.lock().unwrap_or_else(|p| p.into_inner()) = (blocks, Instant::now());
        }
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT,
            size: 0,
            blocks: 0,
            time: self.mounted,
            mode: libc::S_IFDIR | 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            blksize: 4096,
        }
    }

    fn attr(&self, f: &LunFile) -> Attr {
        let size = f.bytes();
        Attr {
            ino: ino_of(f.target, f.lun),
            size,
            blocks: size.div_ceil(512),
            time: self.mounted,
            mode: libc::S_IFREG | if f.read_only { 0o444 } else { 0o644 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            blksize: f.block_size.max(4096),
        }
    }

    /// Writes `data` over `span` when its ends are not block-aligned: reads the partial
    /// blocks at either end, merges, and writes whole blocks, holding the blocks against
    /// other writes throughout. Used for unaligned writes and for zeroing partial blocks.
    fn write_unaligned(&self, f: &Arc<LunFile>, span: Span, data: &[u8], fua: bool) -> Result<(), i32> {
        let bs = span.block_size;
        let _guard = f.lock_blocks(span.first_block(), span.end_block());
        let mut buf = vec![0u8; (span.blocks() * bs) as usize];
        for block in span.partial_blocks() {
            let cdb = rw16(0x88, block, 1, false);
            let o = self.execute(Command { target: f.target, lun: f.lun, cdb: &cdb, out: &[], in_len: bs as u32 });
            let old = checked(o, "READ for read-modify-write")?;
            if old.len() != bs as usize {
                return Err(libc::EIO);
            }
            let at = ((block - span.first_block()) * bs) as usize;
            buf[at..at + bs as usize].copy_from_slice(&old);
        }
        let skip = span.head_skip() as usize;
        buf[skip..skip + data.len()].copy_from_slice(data);
        let cdb = rw16(0x8A, span.first_block(), span.blocks() as u32, fua);
        let o = self.execute(Command { target: f.target, lun: f.lun, cdb: &cdb, out: &buf, in_len: 0 });
        checked(o, "WRITE").map(drop)
    }

    /// Zeroes a byte range: whole blocks with WRITE SAME (UNMAP when `unmap`), partial
    /// blocks by read-modify-write.
    fn zero_range(&self, f: &Arc<LunFile>, span: Span, unmap: bool) -> Result<(), i32> {
        let bs = span.block_size;
        for block in span.partial_blocks() {
            let start = (block * bs).max(span.offset);
            let end = ((block + 1) * bs).min(span.end());
            let part = Span { offset: start, len: end - start, block_size: bs };
            self.write_unaligned(f, part, &vec![0u8; part.len as usize], false)?;
        }
        let (first, count) = span.inner_blocks();
        for (lba, n) in chunks(first, count, MAX_RANGE_BLOCKS) {
            let _guard = f.lock_blocks(lba, lba + n);
            let o = if unmap {
                let list = unmap_one_list(lba, n as u32);
                self.execute(Command { target: f.target, lun: f.lun, cdb: &UNMAP_ONE, out: &list, in_len: 0 })
            } else {
                // WRITE SAME (16) with NDOB: zeros without a data-out buffer.
                let mut cdb = [0u8; 16];
                cdb[0] = 0x93;
                cdb[1] = 0x01;
                cdb[2..10].copy_from_slice(&lba.to_be_bytes());
                cdb[10..14].copy_from_slice(&(n as u32).to_be_bytes());
                self.execute(Command { target: f.target, lun: f.lun, cdb: &cdb, out: &[], in_len: 0 })
            };
            checked(o, if unmap { "UNMAP" } else { "WRITE SAME" }).map_err(|e| {
                // A LUN that is not thin refuses UNMAP: hole punching is not supported there.
                if unmap && e == libc::EINVAL {
                    libc::EOPNOTSUPP
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }
}

/// Answers fuser's INIT handshake with the mount's settings; the session loop serves
/// everything after it.
#[derive(Debug)]
pub struct Handshake {
    /// Ask for FUSE over io_uring.
    pub uring: bool,
    /// Set when the kernel agreed to it.
    pub negotiated: Arc<std::sync::atomic::AtomicBool>,
}

impl Filesystem for Handshake {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.uring {
            // Offered only where the kernel has it and `enable_uring` is on.
            let flag = InitFlags::from_bits_retain(super::uring::FUSE_OVER_IO_URING);
            let agreed = config.add_capabilities(flag).is_ok();
            self.negotiated.store(agreed, std::sync::atomic::Ordering::Release);
        }
        let _ = config.set_max_write(MAX_IO);
        // Let the kernel send several direct reads and writes of one file at once.
        for flag in [InitFlags::FUSE_ASYNC_DIO, InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_background(256);
        Ok(())
    }
}

/// A WRITE's payload as the session loop read it.
#[derive(Debug)]
pub enum Payload<'a> {
    /// Not a WRITE.
    None,
    /// The bytes, in private memory.
    Bytes(&'a [u8]),
    /// In the data area of the calling thread's queue pair, ready to be sent as it lies.
    InPlace(InPlace<'a>),
    /// In the buffer of the FUSE ring entry the request came in ([`Reply::lent`]).
    Lent,
}

/// Data-area pages holding a WRITE's payload. Sent with the command, or given back to the
/// queue pair when dropped, so no page is lost on an error path.
#[derive(Debug)]
pub struct InPlace<'a> {
    queue: &'a QueuePair,
    area: &'a SharedMemory,
    placed: Option<Placed>,
}

impl<'a> InPlace<'a> {
    /// Pages of `queue`'s data area (mapped as `area`) holding the payload `placed.data`.
    pub fn new(queue: &'a QueuePair, area: &'a SharedMemory, placed: Placed) -> InPlace<'a> {
        InPlace { queue, area, placed: Some(placed) }
    }

    /// The pages, for a command that takes them over.
    fn take(mut self) -> Placed {
        self.placed.take().expect("taken once")
    }

    /// The payload copied out; the pages go back.
    fn copy_out(self) -> Result<Vec<u8>, i32> {
        let data = self.placed.as_ref().expect("taken once").data;
        let mut bytes = vec![0u8; data.len as usize];
        self.area.read(data.offset, &mut bytes).map_err(|_| libc::EIO)?;
        Ok(bytes)
    }
}

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.placed.take() {
            self.queue.release(p.generation, &[p.hold]);
        }
    }
}

impl LunFiles {
    /// Serves one request; `reply` answers it, here or when its command completes.
    pub fn dispatch(&self, h: &Header, op: Op<'_>, payload: Payload<'_>, reply: Reply) {
        let ino = h.nodeid;
        match op {
            Op::Lookup { name } => self.lookup(ino, name, reply),
            Op::Getattr | Op::Setattr => self.getattr(ino, reply),
            Op::Open { flags } => self.open(ino, flags, reply),
            Op::Read { offset, size } => self.read(ino, offset, size, reply),
            Op::Write { offset, size, flags } => self.write(ino, offset, size, payload, flags, reply),
            // close(2) promises nothing about durability; fsync does.
            Op::Flush | Op::Release | Op::Releasedir | Op::Destroy => reply.ok(),
            Op::Opendir if ino == ROOT => reply.data(&wire::open_out(0, 0)),
            Op::Opendir => reply.error(libc::ENOTDIR),
            // fdatasync and fsync alike: a LUN has no metadata of its own to leave out.
            Op::Fsync { .. } => self.fsync(ino, reply),
            Op::Fallocate { offset, length, mode } => self.fallocate(ino, offset, length, mode, reply),
            Op::Readdir { offset, size } => self.readdir(ino, offset, size, reply),
            Op::Statfs => self.statfs(reply),
            // FORGET and INTERRUPT are never answered and stop in the session loop; INIT was
            // answered before it started; anything else is not implemented here.
            Op::Forget | Op::Interrupt | Op::Init | Op::Other(_) => reply.error(libc::ENOSYS),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr, reply: Reply) {
        if parent != ROOT {
            return reply.error(libc::ENOENT);
        }
        let Some((target, lun)) = parse_name(name) else {
            return reply.error(libc::ENOENT);
        };
        self.refresh();
        match self.file(ino_of(target, lun)) {
            Ok(f) => {
                self.check_capacity(&f, false);
                reply.data(&wire::entry_out(&self.attr(&f), TTL))
            }
            Err(e) => reply.error(e),
        }
    }

    /// GETATTR, and SETATTR answered with the attributes unchanged: like a block device,
    /// truncation and mode changes leave the LUN as it is, so tools that open with O_TRUNC
    /// (cp, dd without conv=notrunc) still work.
    fn getattr(&self, ino: u64, reply: Reply) {
        if ino == ROOT {
            return reply.data(&wire::attr_out(&self.root_attr(), TTL));
        }
        match self.file(ino) {
            Ok(f) => {
                self.check_capacity(&f, false);
                reply.data(&wire::attr_out(&self.attr(&f), TTL))
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, ino: u64, flags: u32, reply: Reply) {
        let f = match self.file(ino) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if f.read_only && flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        // Direct I/O, so the page cache never hides the gateway; parallel direct writes, so
        // the kernel does not serialise them on the inode lock.
        reply.data(&wire::open_out(0, FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES))
    }

    fn read(&self, ino: u64, offset: u64, size: u32, reply: Reply) {
        let f = match self.file(ino) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let Some(span) = Span::clip(offset, u64::from(size), f.bytes(), f.block_size) else {
            return reply.data(&[]);
        };
        let bytes = span.blocks() * span.block_size;
        let Ok(in_len) = u32::try_from(bytes) else {
            return reply.error(libc::EINVAL);
        };
        let cdb = rw16(0x88, span.first_block(), (span.blocks()) as u32, false);
        let (skip, len) = (span.head_skip() as u32, span.len as u32);
        let cmd = Command { target: f.target, lun: f.lun, cdb: &cdb, out: &[], in_len };
        if let Some(pages) = reply.lent().filter(|_| skip == 0 && len == in_len) {
            // Straight into the ring entry's buffer, where the kernel takes the reply from.
            let lent = pages.data(|r| LentData::In(Region { offset: r.offset, len: in_len.min(r.len) }));
            let area = InArea::Lent(lent, pages.home, pages.home_offset);
            return self.send(
                cmd,
                area,
                Box::new(move |o| {
                    f.note(&o);
                    let (lent, got) = (o.lent, o.result.as_ref().map_or(0, |r| r.transferred));
                    match checked(o, "READ") {
                        Ok(_) if lent => reply.data_lent(got.min(len)),
                        Ok(d) => reply.data(&d[..d.len().min(len as usize)]),
                        Err(e) => reply.error(e),
                    }
                }),
            );
        }
        // The data goes to the kernel from where the gateway put it: no copy on the way.
        self.send(
            cmd,
            InArea::In,
            Box::new(move |mut o| {
                f.note(&o);
                let in_area = o.in_area.take();
                match (checked(o, "READ"), in_area) {
                    (Ok(_), Some(d)) => reply.data_in_area(d, skip, len),
                    (Ok(d), None) => {
                        let (skip, len) = (skip as usize, len as usize);
                        reply.data(&d[skip.min(d.len())..(skip + len).min(d.len())])
                    }
                    (Err(e), _) => reply.error(e),
                }
            }),
        );
    }

    fn write(&self, ino: u64, offset: u64, size: u32, payload: Payload<'_>, flags: u32, reply: Reply) {
        let f = match self.file(ino) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if f.read_only {
            return reply.error(libc::EROFS);
        }
        if size == 0 {
            return reply.written(0);
        }
        let Some(span) = Span::clip(offset, u64::from(size), f.bytes(), f.block_size) else {
            // Past the end of the disk, as a block device answers.
            return reply.error(libc::ENOSPC);
        };
        // O_SYNC and O_DSYNC writes are forced to stable storage, as for a block device.
        let fua = flags as i32 & libc::O_DSYNC != 0;
        let owned;
        let data = match payload {
            Payload::InPlace(p) if span.aligned() => return self.write_in_place(f, span, p, fua, reply),
            Payload::InPlace(p) => match p.copy_out() {
                Ok(bytes) => {
                    owned = bytes;
                    &owned[..]
                }
                Err(e) => return reply.error(e),
            },
            Payload::Bytes(b) => b,
            Payload::Lent => match reply.lent() {
                Some(pages) if span.aligned() => {
                    let guard = f.lock_blocks(span.first_block(), span.end_block());
                    let cdb = rw16(0x8A, span.first_block(), span.blocks() as u32, fua);
                    // Clipped at the end of the LUN: send only what fits.
                    let lent = pages.data(|r| LentData::Out(Region { offset: r.offset, len: span.len as u32 }));
                    let cmd = Command { target: f.target, lun: f.lun, cdb: &cdb, out: &[], in_len: 0 };
                    let area = InArea::Lent(lent, pages.home, pages.home_offset);
                    return self.send(cmd, area, write_done(guard, span.len as u32, reply));
                }
                Some(pages) => match pages.copy_out(size) {
                    Some(bytes) => {
                        owned = bytes;
                        &owned[..]
                    }
                    None => return reply.error(libc::EIO),
                },
                None => return reply.error(libc::EIO),
            },
            Payload::None => return reply.error(libc::EIO),
        };
        let data = &data[..span.len as usize];
        if !span.aligned() {
            return match self.write_unaligned(&f, span, data, fua) {
                Ok(()) => reply.written(span.len as u32),
                Err(e) => reply.error(e),
            };
        }
        let guard = f.lock_blocks(span.first_block(), span.end_block());
        let cdb = rw16(0x8A, span.first_block(), span.blocks() as u32, fua);
        let cmd = Command { target: f.target, lun: f.lun, cdb: &cdb, out: data, in_len: 0 };
        self.send(cmd, InArea::No, write_done(guard, span.len as u32, reply));
    }

    /// An aligned write whose payload is already in the data area: sent as it lies.
    fn write_in_place(&self, f: Arc<LunFile>, span: Span, p: InPlace<'_>, fua: bool, reply: Reply) {
        let guard = f.lock_blocks(span.first_block(), span.end_block());
        let cdb = rw16(0x8A, span.first_block(), span.blocks() as u32, fua);
        let mut placed = p.take();
        // Clipped at the end of the LUN: send only what fits.
        placed.data.len = span.len as u32;
        let cmd = Command { target: f.target, lun: f.lun, cdb: &cdb, out: &[], in_len: 0 };
        self.send(cmd, InArea::Out(placed), write_done(guard, span.len as u32, reply));
    }

    fn fsync(&self, ino: u64, reply: Reply) {
        let f = match self.file(ino) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut cdb = [0u8; 16];
        cdb[0] = 0x91;
        self.send(
            Command { target: f.target, lun: f.lun, cdb: &cdb, out: &[], in_len: 0 },
            InArea::No,
            Box::new(move |o| match checked(o, "SYNCHRONIZE CACHE") {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            }),
        );
    }

    fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: u32, reply: Reply) {
        let f = match self.file(ino) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let capacity = f.bytes();
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let result = match mode as i32 {
            // Every block of a LUN exists already; growing it is not possible.
            m @ (0 | libc::FALLOC_FL_KEEP_SIZE) => {
                if offset.saturating_add(length) <= capacity || m == libc::FALLOC_FL_KEEP_SIZE {
                    Ok(())
                } else {
                    Err(libc::EOPNOTSUPP)
                }
            }
            _ if f.read_only => Err(libc::EROFS),
            PUNCH => match Span::clip(offset, length, capacity, f.block_size) {
                Some(span) => self.zero_range(&f, span, true),
                None => Ok(()),
            },
            m if m & !libc::FALLOC_FL_KEEP_SIZE == libc::FALLOC_FL_ZERO_RANGE => {
                match Span::clip(offset, length, capacity, f.block_size) {
                    Some(span) => self.zero_range(&f, span, false),
                    None => Ok(()),
                }
            }
            _ => Err(libc::EOPNOTSUPP),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, ino: u64, offset: u64, size: u32, reply: Reply) {
        if ino != ROOT {
            return reply.error(libc::ENOTDIR);
        }
        if offset == 0 {
            self.refresh();
        }
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        let mut entries = vec![(ROOT, DT_DIR, ".".to_string()), (ROOT, DT_DIR, "..".into())];
        entries.extend(files.values().map(|f| (ino_of(f.target, f.lun), DT_REG, file_name(f.target, f.lun))));
        drop(files);
        let mut out = Vec::with_capacity(size as usize);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if !wire::push_dirent(&mut out, size as usize, ino, (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.data(&out)
    }

    fn statfs(&self, reply: Reply) {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        let bytes: u64 = files.values().map(|f| f.bytes()).sum();
        // The LUNs fill the filesystem: every byte belongs to one of them.
        let s = Statfs {
            blocks: bytes / 4096,
            bfree: 0,
            bavail: 0,
            files: files.len() as u64,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        };
        drop(files);
        reply.data(&wire::statfs_out(&s))
    }
}

/// Completes a WRITE: releases its blocks for other writers and answers.
fn write_done(guard: BlockGuard, written: u32, reply: Reply) -> Box<dyn FnOnce(Outcome) + Send> {
    Box::new(move |o| {
        guard.file.note(&o);
        drop(guard);
        match checked(o, "WRITE") {
            Ok(_) => reply.written(written),
            Err(e) => reply.error(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(0, 3), "t0-l3");
        assert_eq!(parse_name(OsStr::new("t0-l3")), Some((0, 3)));
        assert_eq!(parse_name(OsStr::new("t65535-l65535")), Some((65535, 65535)));
        for bad in ["t0-l", "t-l0", "t00-l1", "x0-l1", "t0-l1x", "t0-l+1", "t70000-l0"] {
            assert_eq!(parse_name(OsStr::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn inodes_are_unique_and_never_the_root() {
        assert_ne!(ino_of(0, 0), 1);
        assert_ne!(ino_of(0, 1), ino_of(1, 0));
    }
}
