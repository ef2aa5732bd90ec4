//! The FUSE kernel protocol as bytes and values: requests parsed from what a read of
//! `/dev/fuse` returned, replies built for one write back. Sans-IO, so it is fuzzed and
//! tested without a mount. Layouts are those of `<linux/fuse.h>` (ABI 7.9 and later, all
//! little-endian on the hosts pangate runs on); only the operations a flat directory of
//! LUN files needs are decoded, the rest are kept as [`Op::Other`] and answered ENOSYS.
//!
//! fuser, which mounts and performs the INIT handshake, keeps its own codec private; the
//! session loop is pangate's so a WRITE's payload can land straight in shared memory.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// `struct fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;
/// `struct fuse_write_in`: a WRITE's payload starts this far past the in-header.
pub const WRITE_IN: usize = 40;
/// Where a WRITE's payload starts in the request.
pub const WRITE_PAYLOAD: usize = IN_HEADER + WRITE_IN;

/// Opcodes pangate serves (`enum fuse_opcode`).
mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
}

/// `FOPEN_DIRECT_IO`: bypass the page cache.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FOPEN_PARALLEL_DIRECT_WRITES`: direct writes to one file need not be serialised.
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;

/// A request the kernel sent that does not hold together. The kernel never sends one; a
/// parse failure means a protocol mismatch, answered EIO when the unique id is known.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the in-header.
    #[error("request of {0} bytes is shorter than its header")]
    Short(usize),
    /// The header's length field disagrees with what was read.
    #[error("request header says {said} bytes, {got} were read")]
    Length {
        /// The header's `len`.
        said: u32,
        /// Bytes read.
        got: usize,
    },
    /// The arguments of the operation are cut short.
    #[error("opcode {opcode} of request {unique} has truncated arguments")]
    Truncated {
        /// The operation.
        opcode: u32,
        /// The request.
        unique: u64,
    },
    /// A WRITE whose `size` is not the payload it carries.
    #[error("WRITE of request {unique} says {size} bytes, carries {carried}")]
    WriteSize {
        /// The request.
        unique: u64,
        /// `fuse_write_in.size`.
        size: u32,
        /// Payload bytes present.
        carried: usize,
    },
}

/// `struct fuse_in_header`, the fields pangate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total request length.
    pub len: u32,
    /// The operation.
    pub opcode: u32,
    /// Matches the reply to the request.
    pub unique: u64,
    /// The inode the operation is on.
    pub nodeid: u64,
}

/// A decoded operation. A WRITE carries only the payload's place, so the payload can stay
/// where it was read (in shared memory) instead of being copied into the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Look up a name in a directory.
    Lookup {
        /// The name, without its NUL.
        name: &'a OsStr,
    },
    /// Inode references dropped (FORGET and BATCH_FORGET); never answered.
    Forget,
    /// Attributes of an inode.
    Getattr,
    /// Change attributes (answered with the unchanged ones).
    Setattr,
    /// Open a file.
    Open {
        /// `open(2)` flags.
        flags: u32,
    },
    /// Read from a file.
    Read {
        /// Byte offset.
        offset: u64,
        /// Bytes wanted.
        size: u32,
    },
    /// Write to a file; the payload is `size` bytes at [`WRITE_PAYLOAD`] in the request.
    Write {
        /// Byte offset.
        offset: u64,
        /// Payload bytes.
        size: u32,
        /// `open(2)` flags of the file.
        flags: u32,
    },
    /// Filesystem statistics.
    Statfs,
    /// A file closed for the last time.
    Release,
    /// Make a file's data durable.
    Fsync {
        /// fdatasync rather than fsync.
        datasync: bool,
    },
    /// A file descriptor closed.
    Flush,
    /// The INIT handshake (fuser answers it before the session loop starts).
    Init,
    /// Open a directory.
    Opendir,
    /// List a directory from an offset.
    Readdir {
        /// The offset from the previous batch's last entry.
        offset: u64,
        /// Room in the reply.
        size: u32,
    },
    /// A directory closed.
    Releasedir,
    /// Interrupt a request in flight; never answered.
    Interrupt,
    /// The filesystem is going away.
    Destroy,
    /// Allocate, punch or zero a range.
    Fallocate {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u64,
        /// `fallocate(2)` mode.
        mode: u32,
    },
    /// Anything else, answered ENOSYS.
    Other(u32),
}

impl Op<'_> {
    /// Whether the kernel expects no reply.
    pub fn unanswered(&self) -> bool {
        matches!(self, Op::Forget | Op::Interrupt)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the header of a request of `got` bytes (of which `b` holds at least the header).
pub fn header(b: &[u8], got: usize) -> Result<Header, WireError> {
    if b.len() < IN_HEADER || got < IN_HEADER {
        return Err(WireError::Short(got));
    }
    let h = Header { len: u32_at(b, 0), opcode: u32_at(b, 4), unique: u64_at(b, 8), nodeid: u64_at(b, 16) };
    if h.len as usize != got {
        return Err(WireError::Length { said: h.len, got });
    }
    Ok(h)
}

/// The unique id of whatever request `b` starts with, to answer even one that does not parse.
pub fn unique(b: &[u8]) -> Option<u64> {
    (b.len() >= IN_HEADER).then(|| u64_at(b, 8))
}

/// Parses a request. `b` holds the request's first bytes (all of it but, for a WRITE,
/// possibly the payload); `got` is the request's full length as read.
pub fn parse(b: &[u8], got: usize) -> Result<(Header, Op<'_>), WireError> {
    let h = header(b, got)?;
    let args = &b[IN_HEADER..b.len().min(got)];
    let need = |n: usize| match args.len() >= n {
        true => Ok(()),
        false => Err(WireError::Truncated { opcode: h.opcode, unique: h.unique }),
    };
    let op = match h.opcode {
        opcode::LOOKUP => {
            let end = args.iter().position(|&c| c == 0).unwrap_or(args.len());
            Op::Lookup { name: OsStr::from_bytes(&args[..end]) }
        }
        opcode::FORGET | opcode::BATCH_FORGET => Op::Forget,
        opcode::GETATTR => Op::Getattr,
        opcode::SETATTR => Op::Setattr,
        opcode::OPEN => {
            need(8)?;
            Op::Open { flags: u32_at(args, 0) }
        }
        opcode::READ => {
            need(40)?;
            Op::Read { offset: u64_at(args, 8), size: u32_at(args, 16) }
        }
        opcode::WRITE => {
            need(WRITE_IN)?;
            let size = u32_at(args, 16);
            let carried = got - WRITE_PAYLOAD;
            if size as usize != carried {
                return Err(WireError::WriteSize { unique: h.unique, size, carried });
            }
            Op::Write { offset: u64_at(args, 8), size, flags: u32_at(args, 32) }
        }
        opcode::STATFS => Op::Statfs,
        opcode::RELEASE => Op::Release,
        opcode::FSYNC => {
            need(16)?;
            Op::Fsync { datasync: u32_at(args, 8) & FUSE_FSYNC_FDATASYNC != 0 }
        }
        opcode::FLUSH => Op::Flush,
        opcode::INIT => Op::Init,
        opcode::OPENDIR => Op::Opendir,
        opcode::READDIR => {
            need(40)?;
            Op::Readdir { offset: u64_at(args, 8), size: u32_at(args, 16) }
        }
        opcode::RELEASEDIR => Op::Releasedir,
        opcode::INTERRUPT => Op::Interrupt,
        opcode::DESTROY => Op::Destroy,
        opcode::FALLOCATE => {
            need(32)?;
            Op::Fallocate { offset: u64_at(args, 8), length: u64_at(args, 16), mode: u32_at(args, 24) }
        }
        other => Op::Other(other),
    };
    Ok((h, op))
}

/// `struct fuse_uring_req_header`: the in- or out-header, the operation's own header,
/// then `struct fuse_uring_ent_in_out`.
pub const RING_HEADERS: usize = 288;
const RING_OP_IN: usize = 128;
const RING_ENT_IN_OUT: usize = 256;

/// What a FUSE ring entry's headers say of the request the kernel put in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingRequest {
    /// The operation.
    pub opcode: u32,
    /// The request's unique id, which the commit names.
    pub commit_id: u64,
    /// Bytes the kernel put in the entry's payload buffer.
    pub payload: u32,
}

/// Reads a FUSE ring entry's headers (at least [`RING_HEADERS`] bytes).
pub fn ring_request(headers: &[u8]) -> Result<RingRequest, WireError> {
    if headers.len() < RING_HEADERS {
        return Err(WireError::Short(headers.len()));
    }
    Ok(RingRequest {
        opcode: u32_at(headers, 4),
        commit_id: u64_at(headers, RING_ENT_IN_OUT + 8),
        payload: u32_at(headers, RING_ENT_IN_OUT + 16),
    })
}

/// How many bytes of an operation's arguments FUSE over io_uring puts in the entry's
/// `op_in` (its first argument, the operation's header), the rest going to the payload
/// buffer. Operations whose first argument is a name, or that have none, put nothing
/// there; so do those pangate does not serve, which are answered ENOSYS unread.
pub fn ring_op_in(opcode: u32) -> usize {
    match opcode {
        opcode::GETATTR | opcode::FSYNC => 16,
        opcode::SETATTR => 88,
        opcode::OPEN | opcode::OPENDIR => 8,
        opcode::READ | opcode::READDIR | opcode::WRITE => 40,
        opcode::RELEASE | opcode::RELEASEDIR | opcode::FLUSH => 24,
        opcode::FALLOCATE => 32,
        _ => 0,
    }
}

/// Lays out a request from a FUSE ring entry as a read of `/dev/fuse` returns it, into
/// `into`, for [`parse`]: the in-header, the operation's header, then `payload` (the
/// payload buffer's bytes; empty for a WRITE, whose data stays in the buffer). Returns the
/// request's length as [`parse`] wants it, a WRITE's data included.
pub fn ring_layout(headers: &[u8], payload: &[u8], into: &mut Vec<u8>) -> Result<usize, WireError> {
    let r = ring_request(headers)?;
    into.clear();
    into.extend_from_slice(&headers[..IN_HEADER]);
    into.extend_from_slice(&headers[RING_OP_IN..RING_OP_IN + ring_op_in(r.opcode)]);
    let got = if r.opcode == opcode::WRITE {
        into.len() + r.payload as usize
    } else {
        into.extend_from_slice(&payload[..payload.len().min(r.payload as usize)]);
        into.len()
    };
    into[0..4].copy_from_slice(&u32::try_from(got).unwrap_or(u32::MAX).to_le_bytes());
    Ok(got)
}

/// Fills a FUSE ring entry's headers for a reply of `payload` bytes (already in the
/// payload buffer) to request `unique`: the out-header, and the payload's size.
pub fn ring_reply(headers: &mut [u8; RING_HEADERS], unique: u64, error: i32, payload: u32) {
    headers[..OUT_HEADER].copy_from_slice(&out_header(unique, error, payload as usize));
    headers[RING_ENT_IN_OUT..RING_ENT_IN_OUT + 8].fill(0);
    headers[RING_ENT_IN_OUT + 8..RING_ENT_IN_OUT + 16].copy_from_slice(&unique.to_le_bytes());
    headers[RING_ENT_IN_OUT + 16..RING_ENT_IN_OUT + 20].copy_from_slice(&payload.to_le_bytes());
}

/// Whether an operation is WRITE.
pub fn is_write(opcode: u32) -> bool {
    opcode == opcode::WRITE
}

/// `struct fuse_out_header` for a reply of `payload` bytes; `error` is a negated errno or 0.
pub fn out_header(unique: u64, error: i32, payload: usize) -> [u8; OUT_HEADER] {
    let mut b = [0u8; OUT_HEADER];
    b[0..4].copy_from_slice(&((OUT_HEADER + payload) as u32).to_le_bytes());
    b[4..8].copy_from_slice(&error.to_le_bytes());
    b[8..16].copy_from_slice(&unique.to_le_bytes());
    b
}

/// What a file or directory looks like (`struct fuse_attr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// atime, mtime and ctime.
    pub time: SystemTime,
    /// File type and permission bits (`S_IFREG | 0o644`).
    pub mode: u32,
    /// Links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl Attr {
    fn emit(&self, out: &mut Vec<u8>) {
        let t = self.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        for v in [self.ino, self.size, self.blocks, t.as_secs(), t.as_secs(), t.as_secs()] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let ns = t.subsec_nanos();
        for v in [ns, ns, ns, self.mode, self.nlink, self.uid, self.gid, 0, self.blksize, 0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn emit_valid(out: &mut Vec<u8>, ttl: Duration) {
    out.extend_from_slice(&ttl.as_secs().to_le_bytes());
}

/// `struct fuse_entry_out`: a LOOKUP's answer.
pub fn entry_out(attr: &Attr, ttl: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&attr.ino.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // generation
    emit_valid(&mut out, ttl);
    emit_valid(&mut out, ttl);
    out.extend_from_slice(&ttl.subsec_nanos().to_le_bytes());
    out.extend_from_slice(&ttl.subsec_nanos().to_le_bytes());
    attr.emit(&mut out);
    out
}

/// `struct fuse_attr_out`: a GETATTR's or SETATTR's answer.
pub fn attr_out(attr: &Attr, ttl: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    emit_valid(&mut out, ttl);
    out.extend_from_slice(&ttl.subsec_nanos().to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    attr.emit(&mut out);
    out
}

/// `struct fuse_open_out`.
pub fn open_out(fh: u64, open_flags: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&fh.to_le_bytes());
    b[8..12].copy_from_slice(&open_flags.to_le_bytes());
    b
}

/// `struct fuse_write_out`.
pub fn write_out(size: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&size.to_le_bytes());
    b
}

/// `struct fuse_statfs_out` (a `struct fuse_kstatfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statfs {
    /// Blocks of `bsize`.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// The bytes of a STATFS answer.
pub fn statfs_out(s: &Statfs) -> [u8; 80] {
    let mut b = [0u8; 80];
    for (i, v) in [s.blocks, s.bfree, s.bavail, s.files, s.ffree].into_iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    for (i, v) in [s.bsize, s.namelen, s.frsize].into_iter().enumerate() {
        b[40 + i * 4..44 + i * 4].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// `DT_DIR` and `DT_REG`, a directory entry's type.
pub const DT_DIR: u32 = 4;
/// A regular file's directory-entry type.
pub const DT_REG: u32 = 8;

/// Appends a `struct fuse_dirent` to a READDIR answer of at most `room` bytes; returns
/// false, appending nothing, when it would not fit.
pub fn push_dirent(out: &mut Vec<u8>, room: usize, ino: u64, next_offset: u64, kind: u32, name: &str) -> bool {
    let len = (24 + name.len()).next_multiple_of(8);
    if out.len() + len > room {
        return false;
    }
    out.extend_from_slice(&ino.to_le_bytes());
    out.extend_from_slice(&next_offset.to_le_bytes());
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.resize(out.len() + len - 24 - name.len(), 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring entry's headers as the kernel fills them: `args` split into the operation's
    /// header (`op_in`) and the payload.
    fn ring_entry(opcode: u32, unique: u64, nodeid: u64, op_in: &[u8], payload: u32) -> Vec<u8> {
        let mut h = vec![0u8; RING_HEADERS];
        h[..IN_HEADER].copy_from_slice(&request(opcode, unique, nodeid, &[])[..IN_HEADER]);
        h[0..4].fill(0xee); // the length the kernel leaves here is not relied on
        h[RING_OP_IN..RING_OP_IN + op_in.len()].copy_from_slice(op_in);
        h[RING_ENT_IN_OUT + 8..RING_ENT_IN_OUT + 16].copy_from_slice(&unique.to_le_bytes());
        h[RING_ENT_IN_OUT + 16..RING_ENT_IN_OUT + 20].copy_from_slice(&payload.to_le_bytes());
        h
    }

    #[test]
    fn ring_requests_parse_as_device_requests_do() {
        let mut into = Vec::new();
        // A WRITE: its header from op_in, its data left in the buffer but counted.
        let h = ring_entry(16, 7, 9, &rw_in(4096, 8192, 0), 8192);
        let got = ring_layout(&h, &[], &mut into).unwrap();
        assert_eq!(got, WRITE_PAYLOAD + 8192);
        let (hd, op) = parse(&into, got).unwrap();
        assert_eq!((hd.unique, hd.nodeid), (7, 9));
        assert_eq!(op, Op::Write { offset: 4096, size: 8192, flags: 0 });
        // A LOOKUP: nothing in op_in, the name in the payload.
        let h = ring_entry(1, 8, 1, &[], 6);
        let got = ring_layout(&h, b"t0-l0\0", &mut into).unwrap();
        assert_eq!(parse(&into, got).unwrap().1, Op::Lookup { name: OsStr::new("t0-l0") });
        // A READ, an FSYNC and a FALLOCATE: all in op_in.
        let h = ring_entry(15, 9, 2, &rw_in(1 << 20, 65536, 0), 0);
        let got = ring_layout(&h, &[], &mut into).unwrap();
        assert_eq!(parse(&into, got).unwrap().1, Op::Read { offset: 1 << 20, size: 65536 });
        let mut fsync = [0u8; 16];
        fsync[8] = 1;
        let h = ring_entry(20, 10, 2, &fsync, 0);
        let got = ring_layout(&h, &[], &mut into).unwrap();
        assert_eq!(parse(&into, got).unwrap().1, Op::Fsync { datasync: true });
        assert_eq!(ring_request(&h).unwrap(), RingRequest { opcode: 20, commit_id: 10, payload: 0 });
        // Headers cut short are refused.
        assert_eq!(ring_request(&h[..100]), Err(WireError::Short(100)));
        // A reply: out-header, then the commit id and the payload size.
        let mut out = [0u8; RING_HEADERS];
        ring_reply(&mut out, 10, -5, 8);
        assert_eq!(&out[..OUT_HEADER], &out_header(10, -5, 8));
        assert_eq!(u64_at(&out, RING_ENT_IN_OUT + 8), 10);
        assert_eq!(u32_at(&out, RING_ENT_IN_OUT + 16), 8);
    }

    fn request(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((IN_HEADER + args.len()) as u32).to_le_bytes());
        b.extend_from_slice(&opcode.to_le_bytes());
        b.extend_from_slice(&unique.to_le_bytes());
        b.extend_from_slice(&nodeid.to_le_bytes());
        b.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
        b.extend_from_slice(args);
        b
    }

    fn rw_in(offset: u64, size: u32, flags: u32) -> Vec<u8> {
        let mut a = vec![0u8; 40];
        a[8..16].copy_from_slice(&offset.to_le_bytes());
        a[16..20].copy_from_slice(&size.to_le_bytes());
        a[32..36].copy_from_slice(&flags.to_le_bytes());
        a
    }

    #[test]
    fn lookup_read_and_write_decode() {
        let b = request(1, 7, 1, b"t0-l3\0");
        let (h, op) = parse(&b, b.len()).unwrap();
        assert_eq!(h, Header { len: 46, opcode: 1, unique: 7, nodeid: 1 });
        assert_eq!(op, Op::Lookup { name: OsStr::new("t0-l3") });

        let b = request(15, 8, 2, &rw_in(4096, 8192, 0));
        assert_eq!(parse(&b, b.len()).unwrap().1, Op::Read { offset: 4096, size: 8192 });

        let mut args = rw_in(1 << 20, 5, libc::O_DSYNC as u32);
        args.extend_from_slice(b"hello");
        let b = request(16, 9, 2, &args);
        assert_eq!(parse(&b, b.len()).unwrap().1, Op::Write { offset: 1 << 20, size: 5, flags: libc::O_DSYNC as u32 });
        assert_eq!(&b[WRITE_PAYLOAD..], b"hello");
        // Only the headers may be at hand, the payload elsewhere.
        assert!(matches!(parse(&b[..WRITE_PAYLOAD], b.len()).unwrap().1, Op::Write { size: 5, .. }));
    }

    #[test]
    fn lying_lengths_and_short_arguments_are_errors() {
        assert_eq!(parse(&[0u8; 10], 10), Err(WireError::Short(10)));
        let b = request(3, 1, 1, &[]);
        assert_eq!(parse(&b, b.len() + 1), Err(WireError::Length { said: 40, got: 41 }));
        let b = request(15, 2, 2, &[0u8; 12]);
        assert_eq!(parse(&b, b.len()), Err(WireError::Truncated { opcode: 15, unique: 2 }));
        let mut args = rw_in(0, 4096, 0);
        args.extend_from_slice(&[1u8; 100]);
        let b = request(16, 3, 2, &args);
        assert_eq!(parse(&b, b.len()), Err(WireError::WriteSize { unique: 3, size: 4096, carried: 100 }));
    }

    #[test]
    fn unknown_opcodes_are_kept_and_forgets_go_unanswered() {
        let b = request(52, 4, 2, &[0u8; 16]);
        assert_eq!(parse(&b, b.len()).unwrap().1, Op::Other(52));
        let b = request(42, 5, 0, &[0u8; 8]);
        assert!(parse(&b, b.len()).unwrap().1.unanswered());
        let mut fsync = vec![0u8; 16];
        fsync[8] = 1;
        let b = request(20, 6, 2, &fsync);
        assert_eq!(parse(&b, b.len()).unwrap().1, Op::Fsync { datasync: true });
    }

    #[test]
    fn replies_have_the_kernel_layouts() {
        let attr = Attr {
            ino: 2,
            size: 1 << 30,
            blocks: 1 << 21,
            time: UNIX_EPOCH + Duration::new(5, 6),
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
            uid: 3,
            gid: 4,
            blksize: 4096,
        };
        let e = entry_out(&attr, Duration::from_secs(1));
        assert_eq!(e.len(), 128);
        assert_eq!(u64_at(&e, 0), 2);
        assert_eq!(u64_at(&e, 16), 1);
        assert_eq!(u64_at(&e, 40 + 8), 1 << 30); // attr.size
        assert_eq!(u32_at(&e, 40 + 48), 6); // attr.atimensec
        assert_eq!(u32_at(&e, 40 + 60), libc::S_IFREG | 0o644); // attr.mode
        assert_eq!(attr_out(&attr, Duration::from_secs(1)).len(), 104);
        assert_eq!(out_header(9, -libc::EIO, 8), {
            let mut h = [0u8; 16];
            h[0] = 24;
            h[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
            h[8] = 9;
            h
        });
        let mut d = Vec::new();
        assert!(push_dirent(&mut d, 64, 2, 3, DT_REG, "t0-l0"));
        assert_eq!(d.len(), 32);
        assert_eq!(&d[24..29], b"t0-l0");
        assert!(!push_dirent(&mut d, 63, 3, 4, DT_REG, "t0-l1"));
        assert_eq!(d.len(), 32);
    }
}
