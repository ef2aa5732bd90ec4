//! A model of the kernel's side of TCMU for the TCMU tests: the command ring and data area
//! of one device as target_core_user lays them out, and the uio devices handed to the
//! controller.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::ring::shm::{Doorbell, SharedMemory};
use gateway::tcmu::abi::{cmd, hdr, mailbox, op, tmr, uflag};
use gateway::tcmu::device::KernelBell;
use gateway::tcmu::sys::{UioDevice, UioSource};

/// Where the command ring starts in the mapping.
pub const CMDR_OFF: usize = mailbox::SIZE;

/// What the kernel reads back from a completed entry.
#[derive(Debug, Clone)]
pub struct Completed {
    pub cmd_id: u16,
    pub status: u8,
    pub sense: Vec<u8>,
    pub read_len: Option<u32>,
    pub unknown_op: bool,
    pub data: Vec<u8>,
}

impl Completed {
    pub fn sense_key(&self) -> u8 {
        self.sense[2] & 0x0F
    }

    #[track_caller]
    pub fn good(&self) -> &Self {
        assert_eq!(self.status, 0, "command {} failed: sense {:02x?}", self.cmd_id, self.sense);
        self
    }
}

/// The kernel's side: it queues entries and reaps responses.
pub struct KernelModel {
    pub map: Arc<SharedMemory>,
    pub bell: Arc<Doorbell>,
    pub cmdr_size: u32,
    pub data_off: usize,
    pub data_size: usize,
    pub head: u32,
    pub cleaned: u32,
    pub next_id: u16,
    /// Data-area bytes handed out (a bump allocator, reset when nothing is in flight).
    pub data_used: usize,
    /// cmd_id -> (iovecs, data-in length) of commands in flight.
    pub in_flight: HashMap<u16, (Vec<(usize, usize)>, usize)>,
}

impl KernelModel {
    pub fn new(cmdr_size: u32, data_size: usize, flags: u16) -> KernelModel {
        let data_off = CMDR_OFF + cmdr_size as usize;
        let map = Arc::new(SharedMemory::create("tcmu-model", data_off + data_size).unwrap());
        map.write(mailbox::VERSION as u64, &2u16.to_le_bytes()).unwrap();
        map.write(mailbox::FLAGS as u64, &flags.to_le_bytes()).unwrap();
        map.write(mailbox::CMDR_OFF as u64, &(CMDR_OFF as u32).to_le_bytes()).unwrap();
        map.write(mailbox::CMDR_SIZE as u64, &cmdr_size.to_le_bytes()).unwrap();
        KernelModel {
            map,
            bell: Arc::new(Doorbell::new().unwrap()),
            cmdr_size,
            data_off,
            data_size,
            head: 0,
            cleaned: 0,
            next_id: 1,
            data_used: 0,
            in_flight: HashMap::new(),
        }
    }

    pub fn tail(&self) -> u32 {
        self.map.load_acquire(mailbox::CMD_TAIL).unwrap()
    }

    pub fn free_space(&self) -> u32 {
        // One byte short of full, as the kernel keeps head from catching the tail.
        (self.tail() + self.cmdr_size - self.head - 1) % self.cmdr_size
    }

    pub fn alloc_data(&mut self, len: usize) -> usize {
        assert!(self.data_used + len <= self.data_size, "model data area exhausted");
        let at = self.data_off + self.data_used;
        self.data_used += len.next_multiple_of(4096).max(4096);
        at
    }

    /// Reserves `size` bytes at the head, padding to the start of the ring if needed.
    pub fn reserve(&mut self, size: u32) -> u32 {
        if self.head + size > self.cmdr_size {
            let pad = self.cmdr_size - self.head;
            assert!(self.free_space() >= pad + size, "model ring full");
            let at = CMDR_OFF as u64 + u64::from(self.head);
            self.map.write(at, &(pad | op::PAD).to_le_bytes()).unwrap();
            self.map.write(at + 4, &[0u8; 4]).unwrap();
            self.head = 0;
        }
        assert!(self.free_space() >= size, "model ring full");
        let at = self.head;
        self.head = (self.head + size) % self.cmdr_size;
        at
    }

    pub fn publish(&self) {
        self.map.store_release(mailbox::CMD_HEAD, self.head).unwrap();
        self.bell.ring().unwrap();
    }

    /// Queues a command whose data-out (or data-in buffer) is split over `pieces` iovecs.
    pub fn queue_split(&mut self, cdb: &[u8], out: Option<&[u8]>, in_len: usize, pieces: usize) -> u16 {
        let total = out.map_or(in_len, <[u8]>::len);
        if self.in_flight.is_empty() {
            self.data_used = 0;
        }
        let mut iovs = Vec::new();
        if total > 0 {
            let piece = total.div_ceil(pieces);
            let mut done = 0;
            while done < total {
                let n = piece.min(total - done);
                iovs.push((self.alloc_data(n), n));
                done += n;
            }
        }
        let mut at = 0;
        for &(off, n) in &iovs {
            // Data-in buffers start zeroed, so stale data never passes for an answer.
            let zeros = vec![0u8; n];
            self.map.write(off as u64, out.map_or(&zeros[..], |o| &o[at..at + n])).unwrap();
            at += n;
        }
        let raw: Vec<(u64, u64)> = iovs.iter().map(|&(o, n)| (o as u64, n as u64)).collect();
        let id = self.write_cmd(cdb, &raw, 0, 0, None);
        self.in_flight.insert(id, (iovs, if out.is_some() { 0 } else { in_len }));
        id
    }

    pub fn queue(&mut self, cdb: &[u8], out: Option<&[u8]>, in_len: usize) -> u16 {
        self.queue_split(cdb, out, in_len, 1)
    }

    /// Writes a command entry as the kernel does; `cdb_off` overrides where the CDB is said
    /// to be (for malformed entries).
    pub fn write_cmd(&mut self, cdb: &[u8], iovs: &[(u64, u64)], bidi: u32, dif: u32, cdb_off: Option<u64>) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let body = cmd::IOV + cmd::IOV_SIZE * iovs.len();
        let size = ((body + cdb.len()).next_multiple_of(8)).max(cmd::SIZE) as u32;
        let at = self.reserve(size);
        let mut e = vec![0u8; size as usize];
        e[hdr::LEN_OP..4].copy_from_slice(&(size | op::CMD).to_le_bytes());
        e[hdr::CMD_ID..hdr::CMD_ID + 2].copy_from_slice(&id.to_le_bytes());
        e[cmd::IOV_CNT..cmd::IOV_CNT + 4].copy_from_slice(&(iovs.len() as u32).to_le_bytes());
        e[cmd::IOV_BIDI_CNT..cmd::IOV_BIDI_CNT + 4].copy_from_slice(&bidi.to_le_bytes());
        e[cmd::IOV_DIF_CNT..cmd::IOV_DIF_CNT + 4].copy_from_slice(&dif.to_le_bytes());
        let cdb_at = cdb_off.unwrap_or((CMDR_OFF + at as usize + body) as u64);
        e[cmd::CDB_OFF..cmd::CDB_OFF + 8].copy_from_slice(&cdb_at.to_le_bytes());
        for (i, &(base, len)) in iovs.iter().enumerate() {
            let o = cmd::IOV + i * cmd::IOV_SIZE;
            e[o..o + 8].copy_from_slice(&base.to_le_bytes());
            e[o + 8..o + 16].copy_from_slice(&len.to_le_bytes());
        }
        e[body..body + cdb.len()].copy_from_slice(cdb);
        self.map.write((CMDR_OFF + at as usize) as u64, &e).unwrap();
        id
    }

    pub fn queue_tmr(&mut self, kind: u8, ids: &[u16]) {
        let size = (tmr::SIZE + 2 * ids.len()).next_multiple_of(8) as u32;
        let at = self.reserve(size);
        let mut e = vec![0u8; size as usize];
        e[0..4].copy_from_slice(&(size | op::TMR).to_le_bytes());
        e[tmr::TYPE] = kind;
        e[tmr::CMD_CNT..tmr::CMD_CNT + 4].copy_from_slice(&(ids.len() as u32).to_le_bytes());
        for (i, id) in ids.iter().enumerate() {
            e[tmr::CMD_IDS + 2 * i..tmr::CMD_IDS + 2 * i + 2].copy_from_slice(&id.to_le_bytes());
        }
        self.map.write((CMDR_OFF + at as usize) as u64, &e).unwrap();
    }

    /// Reads the responses between the last cleaned entry and the tail, as the kernel does.
    pub fn reap(&mut self) -> Vec<Completed> {
        let tail = self.tail();
        let mut out = Vec::new();
        while self.cleaned != tail {
            let at = CMDR_OFF as u64 + u64::from(self.cleaned);
            let mut e = [0u8; cmd::SIZE];
            self.map.read(at, &mut e[..8]).unwrap();
            let len_op = u32::from_le_bytes(e[0..4].try_into().unwrap());
            let (len, opcode) = (len_op & !7, len_op & 7);
            assert!(len >= 8, "the handler moved the tail onto garbage");
            if opcode == op::CMD {
                self.map.read(at, &mut e).unwrap();
                let id = u16::from_le_bytes([e[hdr::CMD_ID], e[hdr::CMD_ID + 1]]);
                let uflags = e[hdr::UFLAGS];
                let (iovs, in_len) =
                    self.in_flight.remove(&id).unwrap_or_else(|| panic!("response for unknown id {id}"));
                let read_len = (uflags & uflag::READ_LEN != 0)
                    .then(|| u32::from_le_bytes(e[cmd::READ_LEN..cmd::READ_LEN + 4].try_into().unwrap()));
                let mut data = Vec::new();
                for (off, n) in iovs {
                    let mut b = vec![0u8; n];
                    self.map.read(off as u64, &mut b).unwrap();
                    data.extend_from_slice(&b);
                }
                data.truncate(read_len.map_or(in_len, |r| r as usize).min(in_len));
                out.push(Completed {
                    cmd_id: id,
                    status: e[cmd::STATUS],
                    sense: e[cmd::SENSE..cmd::SENSE + cmd::SENSE_SIZE].to_vec(),
                    read_len,
                    unknown_op: uflags & uflag::UNKNOWN_OP != 0,
                    data,
                });
            }
            self.cleaned = (self.cleaned + len) % self.cmdr_size;
        }
        out
    }

    /// Waits until `n` responses arrived; bounded by 20 s.
    pub fn wait(&mut self, n: usize) -> Vec<Completed> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.reap());
            assert!(Instant::now() < deadline, "only {} of {n} responses within 20 s", got.len());
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(got.len(), n, "more responses than commands");
        got
    }

    /// Queues one command, publishes, and waits for its answer.
    pub fn run(&mut self, cdb: &[u8], out: Option<&[u8]>, in_len: usize) -> Completed {
        let id = self.queue(cdb, out, in_len);
        self.publish();
        let c = self.wait(1).remove(0);
        assert_eq!(c.cmd_id, id);
        c
    }
}

/// The model's uio devices, handed to the controller.
#[derive(Clone, Default)]
pub struct ModelUio(pub Arc<Mutex<HashMap<u32, ModelDevice>>>);

/// A model device: its uio name, mapping and stand-in uio fd.
pub type ModelDevice = (String, Arc<SharedMemory>, Arc<Doorbell>);

impl UioSource for ModelUio {
    fn open(&self, minor: u32) -> io::Result<UioDevice> {
        let devs = self.0.lock().unwrap();
        let (name, map, bell) = devs.get(&minor).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let fd: OwnedFd = bell.fd().try_clone_to_owned()?;
        Ok(UioDevice { name: name.clone(), map: map.clone(), bell: KernelBell::eventfd(fd) })
    }

    fn existing(&self) -> Vec<(u32, String)> {
        self.0.lock().unwrap().iter().map(|(m, (n, _, _))| (*m, n.clone())).collect()
    }
}
