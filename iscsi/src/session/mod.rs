//! The full feature phase of one connection (ErrorRecoveryLevel 0, one connection per
//! session): PDUs in, wire bytes and work for the SCSI target out.
//!
//! - **Ordering.** Non-immediate PDUs run in CmdSN order inside the window
//!   `[ExpCmdSN, MaxCmdSN]`; one ahead of a gap waits for it, one outside the window is
//!   dropped unanswered (RFC 7143 4.2.2.1). MaxCmdSN moves on as commands finish, so at
//!   most `depth` commands are ever outstanding.
//! - **Data-Out.** Immediate data, then unsolicited Data-Out up to FirstBurstLength, then
//!   one R2T at a time for at most MaxBurstLength each ([`write`]). Every Data-Out must be
//!   for a task collecting data, at the next offset, with the next DataSN, inside its
//!   sequence; anything else is a protocol error that ends the connection, as ERL 0 has it.
//! - **Data-In.** Split to the initiator's MaxRecvDataSegmentLength, F at the end of each
//!   MaxBurstLength sequence, status in the last PDU when there is no sense, residuals
//!   against the expected transfer length.
//! - **Task management** ([`tmf`]): ABORT TASK, ABORT/CLEAR TASK SET, LUN RESET and
//!   TARGET WARM/COLD RESET; an aborted task gets no response, and the function's
//!   response waits until every task it aborted has left the SCSI target.
//!
//! The transport feeds parsed PDUs to [`Session::receive`] and command results to
//! [`Session::complete`], writes [`Session::out`] to the socket and carries out
//! [`Session::work`].

mod control;
mod tmf;
mod write;

use std::collections::{HashMap, VecDeque};

use thiserror::Error;

use crate::bhs::Bhs;
use crate::frame::{Digests, Framer};
use crate::negotiate::Params;
use crate::pdu::{sense_segment, DataOut, Pdu, Residual, ScsiCommand, Sns, TargetPdu, RESERVED_TAG};

pub use tmf::TmfResponse;
use write::Collect;

/// SCSI status TASK SET FULL: an immediate command beyond [`MAX_IMMEDIATE`].
const TASK_SET_FULL: u8 = 0x28;
/// SCSI status CHECK CONDITION.
const CHECK_CONDITION: u8 = 0x02;
/// Immediate commands (outside the CmdSN window) a session may have at once.
pub const MAX_IMMEDIATE: u32 = 16;
/// Aborted or refused tasks whose late Data-Out is dropped quietly rather than taken for
/// a protocol error.
const FORGOTTEN: usize = 64;

/// Reject reasons (RFC 7143 11.17.1).
pub mod reject {
    /// Data (payload) digest error.
    pub const DATA_DIGEST: u8 = 0x02;
    /// Protocol error.
    pub const PROTOCOL: u8 = 0x04;
    /// Command not supported.
    pub const NOT_SUPPORTED: u8 = 0x05;
    /// Invalid PDU field.
    pub const INVALID_FIELD: u8 = 0x09;
}

/// What a session is set up with once login completes.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The negotiated parameters.
    pub params: Params,
    /// Largest data segment the target accepts (its declared MaxRecvDataSegmentLength).
    pub max_recv_data: u32,
    /// Commands the CmdSN window admits at once.
    pub depth: u32,
    /// Largest transfer one command may have (the data area it is staged in).
    pub max_task_bytes: u32,
    /// The LUNs of the target (number, logical block size).
    pub luns: Vec<(u16, u32)>,
    /// StatSN of the next status (after the login response).
    pub stat_sn: u32,
    /// ExpCmdSN after login.
    pub exp_cmd_sn: u32,
    /// What SendTargets answers: target name and its addresses (`host:port,tpgt`).
    pub targets: Vec<(String, Vec<String>)>,
}

/// A SCSI command ready for the SCSI target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// Initiator Task Tag, to name it in [`Session::complete`].
    pub itt: u32,
    /// Logical unit (decoded from the 8-byte LUN field; `u16::MAX` when undecodable).
    pub lun: u16,
    /// The CDB.
    pub cdb: Vec<u8>,
    /// Data-out, complete.
    pub data_out: Vec<u8>,
    /// Room for data-in.
    pub data_in: u32,
}

/// Why the session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// The initiator logged out; the response is in [`Session::out`].
    Logout,
    /// TARGET COLD RESET: the connection closes after the response.
    ColdReset,
}

/// Work for the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Run this command; answer with [`Session::complete`].
    Execute(Exec),
    /// Reset these logical units (a LUN or target reset), then call
    /// [`Session::reset_done`] with `tmf`.
    Reset {
        /// The task management request's ITT.
        tmf: u32,
        /// The units to reset.
        luns: Vec<u16>,
    },
    /// Flush [`Session::out`] and close the connection.
    Close(Closing),
}

/// A PDU that breaks the protocol in a way ERL 0 cannot recover from: the connection ends.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    /// A Data-Out for a task that is not collecting data.
    #[error("Data-Out for task {itt:#x}, which is not waiting for data")]
    UnknownTask {
        /// Its ITT.
        itt: u32,
    },
    /// A Data-Out at the wrong offset, past its sequence, or with the wrong tag.
    #[error("Data-Out for task {itt:#x}: {what}")]
    DataOut {
        /// Its ITT.
        itt: u32,
        /// What was wrong.
        what: String,
    },
    /// A Data-Out whose DataSN is not the next.
    #[error("Data-Out for task {itt:#x} has DataSN {got}, expected {expected}")]
    DataSn {
        /// Its ITT.
        itt: u32,
        /// The DataSN it should have had.
        expected: u32,
        /// The one it had.
        got: u32,
    },
    /// Immediate data the session did not agree to, or more than allowed.
    #[error("SCSI Command {itt:#x}: {what}")]
    Command {
        /// Its ITT.
        itt: u32,
        /// What was wrong.
        what: String,
    },
    /// A PDU that has no place in the full feature phase.
    #[error("{0} is not allowed in the full feature phase")]
    OutOfPhase(&'static str),
}

impl Violation {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Violation::UnknownTask { .. } => "data_out_unknown_task",
            Violation::DataOut { .. } => "data_out_sequence",
            Violation::DataSn { .. } => "data_sn",
            Violation::Command { .. } => "command",
            Violation::OutOfPhase(_) => "out_of_phase",
        }
    }
}

/// A command taken but not yet answered.
#[derive(Debug)]
struct Task {
    lun_raw: u64,
    lun: u16,
    cdb: Vec<u8>,
    read: bool,
    write: bool,
    /// Expected Data Transfer Length.
    edtl: u32,
    /// Bytes of data-out the command itself wants (the CDB's, else the EDTL).
    write_wanted: u32,
    /// Of the data-out received, only this much is written (the CDB asked for less).
    keep: Option<u32>,
    immediate: bool,
    /// Data-out being gathered; `None` once executing.
    collect: Option<Collect>,
    /// ABORT TASK or a reset took it while it ran: no response.
    aborted: bool,
}

/// A non-immediate PDU held until the CmdSN gap before it fills.
#[derive(Debug)]
enum Held {
    Pdu(Box<Pdu>),
    /// Aborted while held: delivering it only moves the window on.
    Void,
}

/// One connection's full feature phase.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    out_framer: Framer,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    held: HashMap<u32, Held>,
    tasks: HashMap<u32, Task>,
    immediate: u32,
    forgotten: VecDeque<u32>,
    tmfs: Vec<tmf::Pending>,
    next_ttt: u32,
    /// Text left to send for a SendTargets answer longer than one PDU: (TTT, rest).
    text_rest: Option<(u32, Vec<u8>)>,
    /// The target's own NOP-In ping awaiting its answer (its TTT).
    ping: Option<u32>,
    /// A logout waiting for running tasks: (ITT, response).
    logout: Option<(u32, u8)>,
    /// Wire bytes to send, in order.
    pub out: Vec<u8>,
    /// Work for the transport, in order.
    pub work: Vec<Work>,
}

/// `a` before `b` in serial number arithmetic (RFC 1982, 32 bits).
fn sn_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The logical unit an 8-byte LUN field names (peripheral and flat addressing).
pub fn decode_lun(raw: u64) -> u16 {
    let b = raw.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return u16::MAX;
    }
    match b[0] >> 6 {
        0 if b[0] == 0 => u16::from(b[1]),
        1 => u16::from_be_bytes([b[0] & 0x3f, b[1]]),
        _ => u16::MAX,
    }
}

impl Session {
    /// A session entering the full feature phase.
    pub fn new(cfg: SessionConfig) -> Session {
        let digests = Digests { header: cfg.params.header_digest, data: cfg.params.data_digest };
        let out_framer = Framer { digests, max_data: cfg.params.initiator_max_recv_data as usize };
        let depth = cfg.depth.max(1);
        Session {
            stat_sn: cfg.stat_sn,
            exp_cmd_sn: cfg.exp_cmd_sn,
            max_cmd_sn: cfg.exp_cmd_sn.wrapping_add(depth - 1),
            out_framer,
            cfg,
            held: HashMap::new(),
            tasks: HashMap::new(),
            immediate: 0,
            forgotten: VecDeque::new(),
            tmfs: Vec::new(),
            next_ttt: 1,
            text_rest: None,
            ping: None,
            logout: None,
            out: Vec::new(),
            work: Vec::new(),
        }
    }

    /// The framer for what the initiator sends: the target's own receive limit and the
    /// negotiated digests.
    pub fn in_framer(&self) -> Framer {
        Framer { digests: *self.out_framer_digests(), max_data: self.cfg.max_recv_data as usize }
    }

    fn out_framer_digests(&self) -> &Digests {
        &self.out_framer.digests
    }

    /// Sets the LUNs of the target (number, logical block size), once the transport knows
    /// them.
    pub fn set_luns(&mut self, luns: Vec<(u16, u32)>) {
        self.cfg.luns = luns;
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &Params {
        &self.cfg.params
    }

    /// Commands taken and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.tasks.len()
    }

    /// The sequence numbers as they stand (StatSN unadvanced).
    fn sns(&self) -> Sns {
        Sns { stat_sn: self.stat_sn, exp_cmd_sn: self.exp_cmd_sn, max_cmd_sn: self.max_cmd_sn }
    }

    /// The sequence numbers for a PDU that carries status: StatSN advances.
    fn status_sns(&mut self) -> Sns {
        let s = self.sns();
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    fn emit(&mut self, pdu: TargetPdu, data: &[u8]) {
        self.out_framer.emit(pdu.bhs(), data, &mut self.out);
    }

    /// Answers a PDU that cannot be processed with a Reject carrying its header.
    pub fn reject(&mut self, reason: u8, rejected: &Bhs) {
        let sns = self.status_sns();
        self.emit(TargetPdu::Reject { reason, sns }, &rejected.0);
    }

    /// Takes one PDU from the initiator.
    pub fn receive(&mut self, pdu: Pdu) -> Result<(), Violation> {
        let (immediate, cmd_sn) = match &pdu {
            Pdu::DataOut(d) => return self.data_out(d),
            Pdu::Login(_) => return Err(Violation::OutOfPhase("Login Request")),
            Pdu::NopOut(n) => (n.immediate || n.itt == RESERVED_TAG, n.cmd_sn),
            Pdu::ScsiCommand(c) => (c.immediate, c.cmd_sn),
            Pdu::TaskMgmt(t) => (t.immediate, t.cmd_sn),
            Pdu::Text(t) => (t.immediate, t.cmd_sn),
            Pdu::Logout(l) => (l.immediate, l.cmd_sn),
        };
        if immediate {
            return self.run(pdu, true);
        }
        if sn_lt(cmd_sn, self.exp_cmd_sn) || sn_lt(self.max_cmd_sn, cmd_sn) {
            // Outside the window: silently ignored (RFC 7143 4.2.2.1).
            return Ok(());
        }
        if cmd_sn != self.exp_cmd_sn {
            self.held.entry(cmd_sn).or_insert(Held::Pdu(Box::new(pdu)));
            return Ok(());
        }
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        self.run(pdu, false)?;
        while let Some(next) = self.held.remove(&self.exp_cmd_sn) {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            match next {
                Held::Pdu(p) => self.run(*p, false)?,
                Held::Void => self.credit(false),
            }
        }
        Ok(())
    }

    /// A non-immediate command is finished with: the window moves on by one.
    fn credit(&mut self, immediate: bool) {
        if immediate {
            self.immediate = self.immediate.saturating_sub(1);
        } else {
            self.max_cmd_sn = self.max_cmd_sn.wrapping_add(1);
        }
    }

    fn run(&mut self, pdu: Pdu, immediate: bool) -> Result<(), Violation> {
        match pdu {
            Pdu::ScsiCommand(c) => self.command(c, immediate),
            Pdu::NopOut(n) => {
                self.nop_out(n);
                self.credit_unless(immediate);
                Ok(())
            }
            Pdu::TaskMgmt(t) => {
                self.credit_unless(immediate);
                self.task_mgmt(t);
                Ok(())
            }
            Pdu::Text(t) => {
                self.credit_unless(immediate);
                self.text(t);
                Ok(())
            }
            Pdu::Logout(l) => {
                self.credit_unless(immediate);
                self.logout_request(l.itt, l.reason);
                Ok(())
            }
            Pdu::DataOut(_) | Pdu::Login(_) => Err(Violation::OutOfPhase("Data-Out or Login")),
        }
    }

    fn credit_unless(&mut self, immediate: bool) {
        if !immediate {
            self.credit(false);
        }
    }

    fn block_size(&self, lun: u16) -> u32 {
        self.cfg.luns.iter().find(|(l, _)| *l == lun).map_or(512, |(_, bs)| *bs)
    }

    fn forget(&mut self, itt: u32) {
        if self.forgotten.len() == FORGOTTEN {
            self.forgotten.pop_front();
        }
        self.forgotten.push_back(itt);
    }

    fn command(&mut self, c: ScsiCommand, immediate: bool) -> Result<(), Violation> {
        let itt = c.itt;
        if self.tasks.contains_key(&itt) {
            // A tag still in use: refused, the one in use goes on.
            let mut b = Bhs::new(crate::Opcode::ScsiCommand);
            b.set(crate::bhs::field::ITT, u64::from(itt));
            self.reject(reject::INVALID_FIELD, &b);
            self.credit_unless(immediate);
            return Ok(());
        }
        if !c.data.is_empty() {
            let what = if !c.write {
                Some("data with a command that has no data-out".to_string())
            } else if !self.cfg.params.immediate_data {
                Some("immediate data, which was not negotiated".to_string())
            } else if c.data.len() as u64 > u64::from(c.expected_len.min(self.cfg.params.first_burst)) {
                Some(format!("{} bytes of immediate data, more than FirstBurstLength or the transfer", c.data.len()))
            } else {
                None
            };
            if let Some(what) = what {
                return Err(Violation::Command { itt, what });
            }
        }
        if c.write && !c.final_bit && self.cfg.params.initial_r2t {
            return Err(Violation::Command { itt, what: "unsolicited data-out with InitialR2T=Yes".into() });
        }
        if immediate {
            if self.immediate >= MAX_IMMEDIATE {
                if c.write && !c.final_bit {
                    self.forget(itt);
                }
                let sns = self.status_sns();
                let pdu = TargetPdu::ScsiResponse {
                    itt,
                    status: TASK_SET_FULL,
                    residual: Residual::None,
                    sns,
                    exp_data_sn: 0,
                };
                self.emit(pdu, &[]);
                return Ok(());
            }
            self.immediate += 1;
        }
        let lun = decode_lun(c.lun);
        let bs = self.block_size(lun);
        let opcode = c.cdb.first().copied().unwrap_or(0);
        let carries_out = scsi::opcodes::carries_data_out(opcode);
        let spdtl = scsi::cdb::write_transfer_bytes(&c.cdb, bs);
        let write_wanted = match spdtl {
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
            None if carries_out => c.expected_len,
            None => 0,
        };
        // EDTL and the CDB disagree on a block write: move what both allow (SAM-5 5.4.3,
        // FCP-4's choice (a)): more expected than the CDB says, write the CDB's blocks;
        // fewer, write the whole blocks expected. A partial block cannot be written.
        let mut cdb = c.cdb;
        let mut keep = None;
        let mut partial = false;
        // Other commands (COMPARE AND WRITE, WRITE SAME, ORWRITE) get the data as sent, and
        // the SCSI target refuses a length that is not the CDB's.
        let rewritable = scsi::cdb::with_transfer_blocks(&cdb, 1).is_some();
        if let (true, true, Some(sp)) = (c.write && !c.read, rewritable, spdtl) {
            let edtl = u64::from(c.expected_len);
            if edtl > sp {
                keep = Some(sp as u32);
            } else if edtl < sp {
                match (edtl % u64::from(bs), scsi::cdb::with_transfer_blocks(&cdb, (edtl / u64::from(bs)) as u32)) {
                    (0, Some(shorter)) => cdb = shorter,
                    _ => partial = true,
                }
            }
        }
        let mut task = Task {
            lun_raw: c.lun,
            lun,
            cdb,
            keep,
            read: c.read,
            write: c.write,
            edtl: c.expected_len,
            write_wanted,
            immediate,
            collect: None,
            aborted: false,
        };
        if c.write {
            let refuse = if c.read {
                // No bidirectional command is implemented.
                Some(scsi::Sense::data_length_mismatch())
            } else if partial {
                // Neither length is one that can be written: no data is (FCP-4's choice (b)).
                Some(scsi::Sense::new(scsi::SenseKey::IllegalRequest, scsi::Asc(0x0E, 0x03)))
            } else if c.expected_len > self.cfg.max_task_bytes {
                Some(scsi::Sense::invalid_cdb_field(0, None))
            } else {
                None
            };
            let unsolicited =
                if c.final_bit { c.data.len() as u32 } else { c.expected_len.min(self.cfg.params.first_burst) };
            let collect = Collect::new(c.expected_len, unsolicited, refuse, c.data);
            task.collect = Some(collect);
            self.tasks.insert(itt, task);
            return self.progress(itt);
        }
        self.tasks.insert(itt, task);
        self.execute(itt, Vec::new());
        Ok(())
    }

    /// Hands a task whose data-out is complete to the SCSI target.
    fn execute(&mut self, itt: u32, data: Vec<u8>) {
        let Some(lun) = self.tasks.get(&itt).map(|t| t.lun) else { return };
        let bs = self.block_size(lun);
        let max_task = self.cfg.max_task_bytes;
        let task = self.tasks.get_mut(&itt).expect("looked up");
        task.collect = None;
        let opcode = task.cdb.first().copied().unwrap_or(0);
        let (data_out, data_in) = if scsi::opcodes::carries_data_out(opcode) {
            let mut data = data;
            if let Some(keep) = task.keep {
                data.truncate(keep as usize);
            }
            (data, 0)
        } else {
            let edtl = if task.read { task.edtl } else { 0 };
            let cdb_wants = scsi::cdb::read_transfer_bytes(&task.cdb, bs).unwrap_or(0);
            let want = u64::from(edtl).max(cdb_wants).min(u64::from(max_task));
            (Vec::new(), want as u32)
        };
        // The task needs its CDB no more.
        let cdb = std::mem::take(&mut task.cdb);
        self.work.push(Work::Execute(Exec { itt, lun: task.lun, cdb, data_out, data_in }));
    }

    /// The SCSI target's answer to an [`Exec`]: its status, sense and data-in.
    pub fn complete(&mut self, itt: u32, status: u8, sense: &[u8], data_in: &[u8]) {
        self.complete_with(itt, status, sense, data_in.len(), |at, dst| {
            dst.copy_from_slice(&data_in[at..at + dst.len()]);
        });
    }

    /// [`Session::complete`] with `len` bytes of data-in that `fill(offset, dst)` copies
    /// into the Data-In PDUs as they are built, straight from where the data is.
    pub fn complete_with(
        &mut self,
        itt: u32,
        status: u8,
        sense: &[u8],
        len: usize,
        fill: impl FnMut(usize, &mut [u8]),
    ) {
        let Some(task) = self.tasks.remove(&itt) else { return };
        self.credit(task.immediate);
        if task.aborted {
            self.tmf_progress();
            self.logout_progress();
            return;
        }
        self.respond(&task, itt, status, sense, len, fill);
        self.logout_progress();
    }

    /// Sends a task's data-in (`len` bytes, copied in by `fill`) and status.
    fn respond(
        &mut self,
        task: &Task,
        itt: u32,
        status: u8,
        sense: &[u8],
        len: usize,
        mut fill: impl FnMut(usize, &mut [u8]),
    ) {
        let data_len = len;
        let residual = if task.read {
            Residual::of(task.edtl, u32::try_from(data_len).unwrap_or(u32::MAX))
        } else if task.write {
            Residual::of(task.edtl, task.write_wanted)
        } else {
            Residual::of(task.edtl, 0)
        };
        let send = if task.read { data_len.min(task.edtl as usize) } else { 0 };
        let with_status = status == 0 && sense.is_empty() && send > 0;
        let seg = (self.cfg.params.initiator_max_recv_data as usize).max(512);
        let burst = (self.cfg.params.max_burst as usize).max(seg);
        let mut offset = 0usize;
        let mut data_sn = 0u32;
        while offset < send {
            let in_burst = burst - offset % burst;
            let len = seg.min(send - offset).min(in_burst);
            let last = offset + len == send;
            let final_bit = last || len == in_burst;
            let status = if last && with_status { Some((status, residual)) } else { None };
            let sns = if status.is_some() { self.status_sns() } else { self.sns() };
            let lun = if final_bit { task.lun_raw } else { 0 };
            let pdu = TargetPdu::DataIn { lun, itt, data_sn, offset: offset as u32, final_bit, status, sns };
            let at = offset;
            self.out_framer.emit_with(pdu.bhs(), len, &mut self.out, |dst| fill(at, dst));
            offset += len;
            data_sn += 1;
        }
        if !with_status {
            let sns = self.status_sns();
            let pdu = TargetPdu::ScsiResponse { itt, status, residual, sns, exp_data_sn: data_sn };
            let seg = if sense.is_empty() { Vec::new() } else { sense_segment(sense) };
            self.emit(pdu, &seg);
        }
    }

    /// Answers a task refused before it ran (CHECK CONDITION with `sense`).
    fn refuse(&mut self, itt: u32, sense: &scsi::Sense) {
        let Some(task) = self.tasks.remove(&itt) else { return };
        self.credit(task.immediate);
        self.respond(&task, itt, CHECK_CONDITION, &sense.fixed(), 0, |_, _| {});
        self.logout_progress();
    }

    fn data_out(&mut self, d: &DataOut) -> Result<(), Violation> {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            if self.forgotten.contains(&d.itt) {
                return Ok(());
            }
            return Err(Violation::UnknownTask { itt: d.itt });
        };
        let Some(collect) = task.collect.as_mut() else {
            if task.aborted {
                return Ok(());
            }
            return Err(Violation::UnknownTask { itt: d.itt });
        };
        match collect.take(d) {
            Ok(()) => {}
            Err(Violation::DataSn { .. }) => {
                // A data sequence error ends the task, not the connection: CHECK
                // CONDITION, and the rest of its Data-Out is dropped.
                self.forget(d.itt);
                self.refuse(d.itt, &scsi::Sense::new(scsi::SenseKey::AbortedCommand, scsi::Asc(0x4B, 0x00)));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.progress(d.itt)
    }

    /// Moves a task gathering data-out on: more to wait for, an R2T to send, a refusal to
    /// answer, or all there and ready to run.
    fn progress(&mut self, itt: u32) -> Result<(), Violation> {
        let max_burst = self.cfg.params.max_burst;
        let Some(task) = self.tasks.get_mut(&itt) else { return Ok(()) };
        let lun = task.lun_raw;
        let Some(collect) = task.collect.as_mut() else { return Ok(()) };
        match collect.next(max_burst) {
            write::Next::Wait => Ok(()),
            write::Next::Refuse(sense) => {
                self.refuse(itt, &sense);
                Ok(())
            }
            write::Next::Run(data) => {
                self.execute(itt, data);
                Ok(())
            }
            write::Next::Solicit { offset, len } => {
                let ttt = self.take_ttt();
                let r2t_sn = {
                    let c = self.tasks.get_mut(&itt).and_then(|t| t.collect.as_mut()).expect("collecting");
                    c.solicited(ttt, offset, len)
                };
                let sns = self.sns();
                self.emit(TargetPdu::R2t { lun, itt, ttt, r2t_sn, offset, len, sns }, &[]);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
