//! The TCMU command ring: reading entries the kernel queued and writing responses back.
//!
//! The mapping is written by the kernel and, through it, by whatever drives LIO, so nothing
//! in it is trusted: each entry is copied out once and parsed from the copy, every offset
//! and length is checked against the mapping, and a malformed command entry becomes a
//! failed command rather than a failed handler. Only an entry whose length makes the next
//! entry unfindable stops the ring.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use thiserror::Error;

use super::abi::{self, cap, cmd, hdr, mailbox, op, tmr, uflag};
use crate::ring::shm::{SharedMemory, ShmError};

/// Why the ring cannot be used any more.
#[derive(Debug, Error)]
pub enum RingFault {
    /// The mailbox describes a ring that does not fit the mapping, or an unknown version.
    #[error("bad mailbox: {0}")]
    Mailbox(String),
    /// An entry header whose length makes the rest of the ring unreadable.
    #[error("bad entry at ring offset {at:#x}: {why}")]
    Entry {
        /// Where in the ring.
        at: u32,
        /// What is wrong.
        why: String,
    },
    /// The kernel's head moved somewhere impossible.
    #[error("cmd_head {0:#x} is outside the ring")]
    Head(u32),
    /// A mapping access failed (a bug: offsets are checked first).
    #[error(transparent)]
    Shm(#[from] ShmError),
}

/// A region of the mapping named by an iovec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iov {
    /// Offset in the mapping.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A SCSI command read from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdRequest {
    /// The kernel's command id.
    pub cmd_id: u16,
    /// The CDB.
    pub cdb: Vec<u8>,
    /// Data buffers in the data area.
    pub iovs: Vec<Iov>,
    /// Sum of the buffers' lengths.
    pub total: u64,
}

/// What an entry turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A command to execute.
    Cmd(CmdRequest),
    /// A command entry that cannot be executed; it must still be answered.
    Malformed {
        /// The kernel's command id.
        cmd_id: u16,
        /// What is wrong.
        why: String,
    },
    /// A task-management notification.
    Tmr {
        /// `TCMU_TMR_*`.
        kind: u8,
        /// The commands it affects.
        cmd_ids: Vec<u16>,
    },
}

/// An answer to a command entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The command id it answers.
    pub cmd_id: u16,
    /// SCSI status.
    pub status: u8,
    /// Sense data (up to 96 bytes are kept).
    pub sense: Vec<u8>,
    /// Bytes of data-in actually produced, reported when the kernel allows it.
    pub read_len: Option<u32>,
}

/// An entry between the tail and our read position.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: u32,
    len: u32,
    /// `Some(cmd_id)` for a command entry, `None` for padding and TMR entries.
    cmd: Option<u16>,
}

/// The handler's view of one device's command ring.
#[derive(Debug)]
pub struct CommandRing {
    map: Arc<SharedMemory>,
    cmdr_off: u64,
    cmdr_size: u32,
    data_off: u64,
    flags: u16,
    /// Where we stopped reading (the kernel's head as of our last fetch).
    read: u32,
    /// Our tail: everything before it is answered.
    tail: u32,
    /// The tail the kernel has been told.
    published: u32,
    slots: VecDeque<Slot>,
    /// In-order mode: answers waiting for their entry to reach the tail.
    waiting: HashMap<u16, Response>,
}

impl CommandRing {
    /// Reads the mailbox and takes over the ring from its current tail: entries queued
    /// before we attached are fetched like new ones.
    pub fn attach(map: Arc<SharedMemory>) -> Result<CommandRing, RingFault> {
        let mut head = [0u8; 16];
        map.read(0, &mut head)?;
        let version = u16::from_le_bytes([head[mailbox::VERSION], head[mailbox::VERSION + 1]]);
        let flags = u16::from_le_bytes([head[mailbox::FLAGS], head[mailbox::FLAGS + 1]]);
        let cmdr_off = u32::from_le_bytes(head[mailbox::CMDR_OFF..mailbox::CMDR_OFF + 4].try_into().expect("4 bytes"));
        let cmdr_size =
            u32::from_le_bytes(head[mailbox::CMDR_SIZE..mailbox::CMDR_SIZE + 4].try_into().expect("4 bytes"));
        if version != abi::MAILBOX_VERSION {
            return Err(RingFault::Mailbox(format!("version {version}, expected {}", abi::MAILBOX_VERSION)));
        }
        let data_off = u64::from(cmdr_off) + u64::from(cmdr_size);
        if (cmdr_off as usize) < mailbox::SIZE
            || cmdr_size < cmd::SIZE as u32
            || cmdr_size % abi::ENTRY_ALIGN != 0
            || data_off > map.len() as u64
        {
            return Err(RingFault::Mailbox(format!(
                "ring at {cmdr_off:#x}+{cmdr_size:#x} does not fit a {:#x}-byte mapping",
                map.len()
            )));
        }
        let tail = map.load_acquire(mailbox::CMD_TAIL)?;
        if tail >= cmdr_size || tail % abi::ENTRY_ALIGN != 0 {
            return Err(RingFault::Mailbox(format!("cmd_tail {tail:#x} is outside the ring")));
        }
        Ok(CommandRing {
            map,
            cmdr_off: u64::from(cmdr_off),
            cmdr_size,
            data_off,
            flags,
            read: tail,
            tail,
            published: tail,
            slots: VecDeque::new(),
            waiting: HashMap::new(),
        })
    }

    /// The kernel's capability flags.
    pub fn caps(&self) -> u16 {
        self.flags
    }

    /// Commands read and not yet answered, plus padding and TMR entries not yet passed.
    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    /// Reads every entry the kernel queued since the last call.
    pub fn fetch(&mut self, out: &mut Vec<Entry>) -> Result<(), RingFault> {
        let head = self.map.load_acquire(mailbox::CMD_HEAD)?;
        if head >= self.cmdr_size || head % abi::ENTRY_ALIGN != 0 {
            return Err(RingFault::Head(head));
        }
        // Every entry is at least 8 bytes, so this many steps cover the whole ring.
        for _ in 0..=self.cmdr_size / abi::ENTRY_ALIGN {
            if self.read == head {
                break;
            }
            let at = self.read;
            let queued = head.wrapping_sub(at).wrapping_add(self.cmdr_size) % self.cmdr_size;
            let mut h = [0u8; hdr::SIZE];
            if at > self.cmdr_size - hdr::SIZE as u32 {
                return Err(RingFault::Entry { at, why: "header runs past the end of the ring".into() });
            }
            self.map.read(self.cmdr_off + u64::from(at), &mut h)?;
            let (len, opcode) = abi::len_op(u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")));
            if len < hdr::SIZE as u32 || len > self.cmdr_size - at || len > queued {
                return Err(RingFault::Entry { at, why: format!("length {len:#x} with {queued:#x} queued") });
            }
            let cmd_id = u16::from_le_bytes([h[hdr::CMD_ID], h[hdr::CMD_ID + 1]]);
            let slot = match opcode {
                op::PAD => Slot { at, len, cmd: None },
                op::TMR => {
                    out.push(self.parse_tmr(at, len)?);
                    Slot { at, len, cmd: None }
                }
                op::CMD => {
                    if (len as usize) < cmd::SIZE {
                        return Err(RingFault::Entry { at, why: format!("command entry of {len} bytes") });
                    }
                    out.push(self.parse_cmd(at, len, cmd_id)?);
                    Slot { at, len, cmd: Some(cmd_id) }
                }
                other => return Err(RingFault::Entry { at, why: format!("unknown entry opcode {other}") }),
            };
            self.slots.push_back(slot);
            self.read = (at + len) % self.cmdr_size;
        }
        self.retire();
        Ok(())
    }

    fn entry(&self, at: u32, len: u32) -> Result<Vec<u8>, RingFault> {
        let mut e = vec![0u8; len as usize];
        self.map.read(self.cmdr_off + u64::from(at), &mut e)?;
        Ok(e)
    }

    fn parse_tmr(&self, at: u32, len: u32) -> Result<Entry, RingFault> {
        if (len as usize) < tmr::SIZE {
            return Err(RingFault::Entry { at, why: format!("TMR entry of {len} bytes") });
        }
        let e = self.entry(at, len)?;
        let count = u32::from_le_bytes(e[tmr::CMD_CNT..tmr::CMD_CNT + 4].try_into().expect("4 bytes")) as usize;
        // A count larger than the entry holds is cut to what it holds.
        let room = (e.len() - tmr::CMD_IDS) / 2;
        let cmd_ids = (0..count.min(room))
            .map(|i| u16::from_le_bytes([e[tmr::CMD_IDS + 2 * i], e[tmr::CMD_IDS + 2 * i + 1]]))
            .collect();
        Ok(Entry::Tmr { kind: e[tmr::TYPE], cmd_ids })
    }

    fn parse_cmd(&self, at: u32, len: u32, cmd_id: u16) -> Result<Entry, RingFault> {
        let e = self.entry(at, len)?;
        let word = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().expect("4 bytes"));
        let dword = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().expect("8 bytes"));
        let malformed = |why: String| Ok(Entry::Malformed { cmd_id, why });
        let (iov_cnt, bidi, dif) = (word(cmd::IOV_CNT), word(cmd::IOV_BIDI_CNT), word(cmd::IOV_DIF_CNT));
        let iovs_total = u64::from(iov_cnt) + u64::from(bidi) + u64::from(dif);
        if cmd::IOV as u64 + iovs_total * cmd::IOV_SIZE as u64 > u64::from(len) {
            return malformed(format!("{iovs_total} iovecs do not fit a {len}-byte entry"));
        }
        if bidi != 0 {
            return malformed("bidirectional commands are not supported".into());
        }
        let map_len = self.map.len() as u64;
        let mut iovs = Vec::with_capacity(iov_cnt as usize);
        let mut total = 0u64;
        for i in 0..iov_cnt as usize {
            let o = cmd::IOV + i * cmd::IOV_SIZE;
            let iov = Iov { offset: dword(o), len: dword(o + 8) };
            let end = iov.offset.checked_add(iov.len);
            if iov.offset < self.data_off || end.is_none_or(|end| end > map_len) {
                return malformed(format!("iovec {i} ({:#x}+{:#x}) is outside the data area", iov.offset, iov.len));
            }
            total = match total.checked_add(iov.len) {
                Some(t) if t <= u64::from(u32::MAX) => t,
                _ => return malformed("data length overflows".into()),
            };
            iovs.push(iov);
        }
        let cdb_off = dword(cmd::CDB_OFF);
        let mut first = [0u8; 1];
        if cdb_off >= map_len {
            return malformed(format!("CDB offset {cdb_off:#x} is outside the mapping"));
        }
        self.map.read(cdb_off, &mut first)?;
        let cdb_len = match cdb_length(&self.map, cdb_off, first[0])? {
            Some(n) if cdb_off + n as u64 <= map_len => n,
            Some(_) => return malformed("CDB runs past the end of the mapping".into()),
            None => 1,
        };
        let mut cdb = vec![0u8; cdb_len];
        self.map.read(cdb_off, &mut cdb)?;
        Ok(Entry::Cmd(CmdRequest { cmd_id, cdb, iovs, total }))
    }

    /// Records the answer to a command. With out-of-order completion the answer goes into
    /// the first unanswered command entry at the tail (whose own command was already copied
    /// out), taking its id; otherwise it waits until its own entry reaches the tail.
    pub fn complete(&mut self, r: Response) -> Result<(), RingFault> {
        if self.flags & cap::OOOC != 0 {
            self.retire();
            let Some(slot) = self.slots.pop_front() else {
                return Err(RingFault::Mailbox(format!("an answer to command {} with none queued", r.cmd_id)));
            };
            self.write_response(slot, &r)?;
            self.tail = (slot.at + slot.len) % self.cmdr_size;
        } else {
            self.waiting.insert(r.cmd_id, r);
        }
        self.retire();
        Ok(())
    }

    /// Passes the tail over padding and TMR entries, and (in order) over answered commands.
    fn retire(&mut self) {
        while let Some(&slot) = self.slots.front() {
            match slot.cmd {
                None => {}
                Some(id) => match self.waiting.remove(&id) {
                    Some(r) => {
                        if let Err(e) = self.write_response(slot, &r) {
                            tracing::error!(error = %e, "cannot write a TCMU response");
                        }
                    }
                    None => break,
                },
            }
            self.slots.pop_front();
            self.tail = (slot.at + slot.len) % self.cmdr_size;
        }
    }

    fn write_response(&self, slot: Slot, r: &Response) -> Result<(), RingFault> {
        let base = self.cmdr_off + u64::from(slot.at);
        // TCMU_UFLAG_UNKNOWN_OP is never set: LIO completes such a command with no sense,
        // which initiators see as LOGICAL UNIT COMMUNICATION FAILURE. An unknown opcode is
        // answered with CHECK CONDITION and INVALID COMMAND OPERATION CODE instead.
        let mut uflags = 0u8;
        let mut body = [0u8; cmd::SIZE - cmd::STATUS];
        body[0] = r.status;
        if let (Some(n), true) = (r.read_len, self.flags & cap::READ_LEN != 0) {
            uflags |= uflag::READ_LEN;
            body[cmd::READ_LEN - cmd::STATUS..][..4].copy_from_slice(&n.to_le_bytes());
        }
        let sense = &r.sense[..r.sense.len().min(cmd::SENSE_SIZE)];
        body[cmd::SENSE - cmd::STATUS..][..sense.len()].copy_from_slice(sense);
        self.map.write(base + hdr::CMD_ID as u64, &r.cmd_id.to_le_bytes())?;
        self.map.write(base + hdr::UFLAGS as u64, &[uflags])?;
        self.map.write(base + cmd::STATUS as u64, &body)?;
        Ok(())
    }

    /// Publishes the tail (release ordering, after the responses); returns whether it moved,
    /// so the caller knows to notify the kernel.
    pub fn publish(&mut self) -> Result<bool, RingFault> {
        if self.tail == self.published {
            return Ok(false);
        }
        self.map.store_release(mailbox::CMD_TAIL, self.tail)?;
        self.published = self.tail;
        Ok(true)
    }

    /// Copies a command's data-out out of its buffers.
    pub fn gather(&self, iovs: &[Iov], total: u64) -> Result<Vec<u8>, RingFault> {
        let mut out = vec![0u8; total as usize];
        let mut at = 0usize;
        for iov in iovs {
            self.map.read(iov.offset, &mut out[at..at + iov.len as usize])?;
            at += iov.len as usize;
        }
        Ok(out)
    }

    /// Copies data-in into a command's buffers, in order, as far as both go.
    pub fn scatter(&self, iovs: &[Iov], mut data: &[u8]) -> Result<(), RingFault> {
        for iov in iovs {
            if data.is_empty() {
                break;
            }
            let n = (iov.len as usize).min(data.len());
            self.map.write(iov.offset, &data[..n])?;
            data = &data[n..];
        }
        Ok(())
    }
}

/// The length of the CDB starting with `opcode` (by its group code), reading the additional
/// length of a variable-length CDB; `None` for vendor-specific groups.
fn cdb_length(map: &SharedMemory, at: u64, opcode: u8) -> Result<Option<usize>, RingFault> {
    Ok(match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        3 if opcode == 0x7F => {
            let mut add = [0u8; 1];
            if at + 8 > map.len() as u64 {
                return Ok(Some(8));
            }
            map.read(at + 7, &mut add)?;
            Some(8 + usize::from(add[0]))
        }
        _ => None,
    })
}
