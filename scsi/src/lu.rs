//! One logical unit: its settings, mode state and per-initiator unit attentions, and the
//! execution of decoded commands into immediate completions or backend tasks.

use std::collections::{HashMap, VecDeque};

use crate::alua::{AccessState, Alua};
use crate::cdb::{self, Command, Extent};
use crate::config::LunConfig;
use crate::inquiry;
use crate::mode::{self, ModeState};
use crate::opcodes::op;
use crate::pr::{self, InitiatorPort, ItNexus, Persistent, PrError};
use crate::report;
use crate::sense::{Asc, Sense, SenseKey, Status};
use crate::task::{BackendOp, Buf, Completion, DataIn, Finish, LockMode, LockRequest, Step, Task};

/// Identifies an I_T nexus (an initiator's connection), chosen by the transport.
pub type InitiatorId = u64;

/// The initiator a command comes from, and the LUNs its map shows it (for REPORT LUNS).
#[derive(Debug, Clone, Copy)]
pub struct Nexus<'a> {
    /// The I_T nexus.
    pub id: InitiatorId,
    /// LUN numbers visible to this initiator on this target.
    pub luns: &'a [u16],
    /// This initiator's map gives it the LUN read-only: writes fail with DATA PROTECT and
    /// MODE SENSE reports WP, whatever the LUN allows others.
    pub read_only: bool,
    /// The initiator port, as persistent reservations know it.
    pub port: &'a InitiatorPort,
    /// The relative target port the nexus came in on.
    pub target_port: u16,
}

impl Nexus<'_> {
    fn it(&self) -> ItNexus<'_> {
        ItNexus { port: self.port, target_port: self.target_port }
    }
}

/// Most scratch a single step uses, so long VERIFY and WRITE SAME work in bounded memory.
pub const SCRATCH_CHUNK: usize = 1 << 20;

/// Most unit attentions queued per initiator; older ones are dropped past it.
const MAX_PENDING_UA: usize = 8;

/// What executing a command needs next.
#[derive(Debug)]
pub enum Action {
    /// The command is complete without touching the backing image.
    Complete(Completion),
    /// The command needs the backing image; drive the task to completion.
    Backend(Task),
}

/// A logical unit's state. Deterministic and free of I/O.
#[derive(Debug)]
pub struct LogicalUnit {
    cfg: LunConfig,
    mode: ModeState,
    saved: ModeState,
    /// Looked up for every command, so hashed with foldhash rather than SipHash (the ids are
    /// the transport's, not an initiator's choice).
    attentions: HashMap<InitiatorId, VecDeque<Asc>, foldhash::fast::RandomState>,
    /// The initiator holding an SPC-2 RESERVE of the whole unit.
    reserved_by: Option<InitiatorId>,
    /// Persistent reservations.
    pr: Persistent,
    /// The target port groups it is reached through, and their states.
    alua: Alua,
    /// The initiator port and target port of each nexus seen, so unit attentions for a
    /// registration reach the nexuses it covers.
    ports: HashMap<InitiatorId, (InitiatorPort, u16), foldhash::fast::RandomState>,
    /// Every target port group is active, so no command is refused for its state.
    alua_active: bool,
    /// Nexuses a PREEMPT AND ABORT preempted, whose tasks the transport aborts
    /// ([`LogicalUnit::take_aborted`]).
    aborted: Vec<InitiatorId>,
    /// The nexus whose port `ports` was last made sure to know.
    last_nexus: Option<InitiatorId>,
    /// Persistent reservation state changed with APTPL set (or just cleared) since
    /// [`LogicalUnit::take_pr_to_persist`] was last asked.
    pr_dirty: bool,
    /// Every change of the reservation state is to be saved, APTPL or not: redundant
    /// gateways hand it over through the saved copy.
    pr_shared: bool,
    /// With `pr_shared`: the latest unit attentions PR OUT raised, saved with the state.
    pr_events: Vec<pr::PrEvent>,
    /// Attentions another gateway raised while it served the unit, taken over with it
    /// ([`LogicalUnit::take_over_persistent`]): also raised for nexuses first seen here
    /// afterwards, a node's path to this gateway being its nexus too.
    carried: Vec<pr::PrEvent>,
}

impl LogicalUnit {
    /// A logical unit at power on.
    pub fn new(cfg: LunConfig) -> LogicalUnit {
        let mode = ModeState::defaults(&cfg);
        LogicalUnit {
            cfg,
            mode,
            saved: mode,
            attentions: HashMap::default(),
            reserved_by: None,
            pr: Persistent::default(),
            alua: Alua::single(&[]),
            alua_active: true,
            aborted: Vec::new(),
            last_nexus: None,
            ports: HashMap::default(),
            pr_dirty: false,
            pr_shared: false,
            pr_events: Vec::new(),
            carried: Vec::new(),
        }
    }

    /// The unit's settings.
    pub fn config(&self) -> &LunConfig {
        &self.cfg
    }

    /// The current mode state (WCE, D_SENSE).
    pub fn mode(&self) -> ModeState {
        self.mode
    }

    /// The saved mode state, for the transport to persist across restarts.
    pub fn saved_mode(&self) -> ModeState {
        self.saved
    }

    /// Restores saved mode pages at start-up; they become current too.
    pub fn restore_saved_mode(&mut self, saved: ModeState) {
        self.saved = saved;
        self.mode = saved;
    }

    fn queue_attention(&mut self, asc: Asc, except: Option<InitiatorId>) {
        for (id, q) in self.attentions.iter_mut() {
            if Some(*id) == except || q.contains(&asc) {
                continue;
            }
            if q.len() == MAX_PENDING_UA {
                q.pop_front();
            }
            q.push_back(asc);
        }
    }

    /// Queues `asc` for every nexus seen that `to` covers.
    fn attention_to(&mut self, to: &pr::AttentionTo, asc: Asc) {
        for (id, (port, target_port)) in &self.ports {
            if !to.covers(&ItNexus { port, target_port: *target_port }) {
                continue;
            }
            let q = self.attentions.entry(*id).or_insert_with(|| VecDeque::from([Asc::POWER_ON_RESET]));
            if q.contains(&asc) {
                continue;
            }
            if q.len() == MAX_PENDING_UA {
                q.pop_front();
            }
            q.push_back(asc);
        }
    }

    /// Queues the carried attentions that cover a nexus seen for the first time.
    fn raise_carried(&mut self, initiator: InitiatorId, nexus: &Nexus<'_>) {
        let it = ItNexus { port: nexus.port, target_port: nexus.target_port };
        let due: Vec<Asc> = self.carried.iter().filter(|e| e.to.covers(&it)).map(|e| e.asc).collect();
        let q = self.attentions_of(initiator);
        for asc in due {
            if !q.contains(&asc) {
                if q.len() == MAX_PENDING_UA {
                    q.pop_front();
                }
                q.push_back(asc);
            }
        }
    }

    /// Changes capacity (after the image was resized): every initiator that has seen the
    /// unit gets CAPACITY DATA HAS CHANGED.
    pub fn set_capacity(&mut self, blocks: u64) {
        self.cfg.blocks = blocks.max(1);
        self.queue_attention(Asc::CAPACITY_CHANGED, None);
    }

    /// Marks a LOGICAL UNIT RESET: mode pages return to saved values, an SPC-2
    /// reservation is released, and every initiator gets BUS DEVICE RESET FUNCTION
    /// OCCURRED.
    pub fn reset(&mut self) {
        self.mode = self.saved;
        self.reserved_by = None;
        self.queue_attention(Asc::LUN_RESET, None);
    }

    /// Sets the target port groups the unit is reached through (by default one group with
    /// no ports, whose commands all execute).
    pub fn set_alua(&mut self, alua: Alua) {
        self.alua = alua;
        self.alua_active = self.alua.all_active();
    }

    /// The target port groups.
    pub fn alua(&self) -> &Alua {
        &self.alua
    }

    /// Changes target port group `group`'s access state; every initiator that has seen the
    /// unit gets ASYMMETRIC ACCESS STATE CHANGED.
    pub fn set_access_state(&mut self, group: u16, state: AccessState) {
        if self.alua.set_state(group, state) {
            self.alua_active = self.alua.all_active();
            self.queue_attention(Asc::ASYMMETRIC_ACCESS_STATE_CHANGED, None);
        }
    }

    /// The nexuses whose tasks the last PREEMPT AND ABORT aborts (SPC-4 5.13.11.4.5): the
    /// caller ends their tasks with TASK ABORTED and completes the PERSISTENT RESERVE OUT
    /// only once none is left running.
    pub fn take_aborted(&mut self) -> Vec<InitiatorId> {
        std::mem::take(&mut self.aborted)
    }

    /// The persistent reservation state.
    pub fn persistent(&self) -> &Persistent {
        &self.pr
    }

    /// Restores persisted reservation state at start-up (APTPL).
    pub fn restore_persistent(&mut self, pr: Persistent) {
        self.pr = pr;
    }

    /// Has [`LogicalUnit::take_pr_to_persist`] return the state after every PERSISTENT
    /// RESERVE OUT that succeeds, APTPL or not: for a unit another gateway may take over,
    /// which must find the state as it was.
    pub fn persist_every_change(&mut self, on: bool) {
        self.pr_shared = on;
    }

    /// The reservation state to write out, if it changed with APTPL set (or APTPL was just
    /// cleared, so the saved copy must go; or with [`LogicalUnit::persist_every_change`],
    /// at all); `None` when nothing needs saving.
    pub fn take_pr_to_persist(&mut self) -> Option<(&Persistent, &[pr::PrEvent])> {
        std::mem::take(&mut self.pr_dirty).then_some((&self.pr, &self.pr_events))
    }

    /// Marks saved attentions as known without raising them: those a gateway finds at its
    /// start were raised, by whoever served the unit then, before it came.
    pub fn know_events(&mut self, events: Vec<pr::PrEvent>) {
        self.pr_events = events;
    }

    /// Takes the unit over from another gateway: its saved reservation state, and the
    /// attentions it raised since this unit last knew (by number), raised here for every
    /// nexus they cover, now or when first seen.
    pub fn take_over_persistent(&mut self, pr: Persistent, events: Vec<pr::PrEvent>) {
        let known = self.pr_events.last().map_or(0, |e| e.seq);
        let new: Vec<pr::PrEvent> = events.iter().filter(|e| e.seq > known).cloned().collect();
        for e in &new {
            self.attention_to(&e.to, e.asc);
        }
        self.carried = new;
        self.pr_events = events;
        self.pr = pr;
    }

    /// The initiator holding an SPC-2 reservation of the unit.
    pub fn reserved_by(&self) -> Option<InitiatorId> {
        self.reserved_by
    }

    /// Forgets an initiator (its nexus is gone); a new one starts with a power-on attention.
    pub fn forget(&mut self, initiator: InitiatorId) {
        self.attentions.remove(&initiator);
        self.ports.remove(&initiator);
        if self.last_nexus == Some(initiator) {
            self.last_nexus = None;
        }
        // I_T nexus loss releases its reservation (SPC-2 5.5.1).
        if self.reserved_by == Some(initiator) {
            self.reserved_by = None;
        }
    }

    fn attentions_of(&mut self, initiator: InitiatorId) -> &mut VecDeque<Asc> {
        self.attentions.entry(initiator).or_insert_with(|| VecDeque::from([Asc::POWER_ON_RESET]))
    }

    /// Decodes a CDB from `nexus`, reporting a pending unit attention first (SAM-5 5.14,
    /// except for INQUIRY, REPORT LUNS and REQUEST SENSE).
    pub fn decode(&mut self, nexus: &Nexus<'_>, cdb: &[u8]) -> Result<Command, Completion> {
        let initiator = nexus.id;
        if !self.carried.is_empty() && !self.ports.contains_key(&initiator) {
            // A nexus new since a takeover: it hears of what happened at the last owner.
            self.ports.insert(initiator, (nexus.port.clone(), nexus.target_port));
            self.raise_carried(initiator, nexus);
        }
        let descriptor = self.mode.descriptor_sense;
        let exempt = matches!(cdb.first(), Some(&(op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)));
        if !exempt {
            if let Some(asc) = self.attentions_of(initiator).pop_front() {
                return Err(Completion::check(&Sense::new(SenseKey::UnitAttention, asc), descriptor));
            }
        }
        cdb::decode(cdb, &self.cfg).map_err(|s| Completion::check(&s, descriptor))
    }

    /// Decodes and executes in one go. `params` is the command's parameter data
    /// ([`Command::parameter_len`] bytes of data-out); bulk data stays with the transport.
    pub fn command(&mut self, nexus: &Nexus<'_>, cdb: &[u8], params: &[u8]) -> Action {
        match self.decode(nexus, cdb) {
            Ok(cmd) => self.execute(nexus, &cmd, params),
            Err(c) => Action::Complete(c),
        }
    }

    fn fail(&self, sense: &Sense) -> Action {
        Action::Complete(Completion::check(sense, self.mode.descriptor_sense))
    }

    fn task(&self, steps: Vec<Step>, finish: Finish, writing: bool) -> Task {
        Task::new(steps, finish, self.mode.descriptor_sense, writing)
    }

    /// A one-step task (the common case: no allocation).
    fn task_of(&self, step: Step, finish: Finish, writing: bool) -> Task {
        Task::single(Some(step), finish, self.mode.descriptor_sense, writing)
    }

    fn bytes(&self, e: Extent) -> (u64, usize) {
        (e.lba << self.cfg.block_shift(), (e.blocks as usize) << self.cfg.block_shift())
    }

    fn lock(&self, lba: u64, blocks: u64, mode: LockMode) -> LockRequest {
        LockRequest { start: lba, end: lba + blocks, mode }
    }

    /// Executes a decoded command.
    pub fn execute(&mut self, nexus: &Nexus<'_>, cmd: &Command, params: &[u8]) -> Action {
        let initiator = nexus.id;
        let conflict = || {
            Action::Complete(Completion {
                status: Status::ReservationConflict,
                sense: Vec::new(),
                data_in: DataIn::None,
            })
        };
        if self.reserved_by.is_some_and(|holder| holder != initiator) && !cmd.allowed_under_reservation() {
            return conflict();
        }
        if !self.alua_active {
            if let Some(sense) = self.alua.refuses(nexus.target_port, cmd) {
                return self.fail(&sense);
            }
        }
        // Commands come in runs from one nexus: only a new one is looked up.
        if self.last_nexus != Some(initiator) {
            self.ports.entry(initiator).or_insert_with(|| (nexus.port.clone(), nexus.target_port));
            self.last_nexus = Some(initiator);
        }
        let it = nexus.it();
        match cmd {
            _ if self.pr.reservation.is_none() => {}
            // Compatible reservation handling (SPC-4 5.13.3): under a persistent
            // reservation, RESERVE is GOOD without effect for its holder and RELEASE for
            // any registrant; from anyone else both conflict.
            Command::Reserve => {
                return if self.pr.holds(&it) { Action::Complete(Completion::good()) } else { conflict() };
            }
            Command::Release => {
                return if self.pr.registered(&it) { Action::Complete(Completion::good()) } else { conflict() };
            }
            _ if self.pr.conflicts(&it, cmd.pr_access()) => return conflict(),
            _ => {}
        }
        let read_only = self.cfg.read_only || nexus.read_only;
        if cmd.writes_medium() && read_only {
            return self.fail(&Sense::write_protected());
        }
        if cmd.writes_medium() && self.mode.software_write_protect {
            return self.fail(&Sense::new(SenseKey::DataProtect, Asc::SOFTWARE_WRITE_PROTECTED));
        }
        let want = cmd.parameter_len(self.cfg.block_size);
        if params.len() < want {
            return self.fail(&Sense::parameter_list_length());
        }
        let params = &params[..want];
        let cfg = &self.cfg;
        let done = |bytes: Vec<u8>, alloc: usize| Action::Complete(Completion::data(bytes, alloc));
        match *cmd {
            Command::TestUnitReady | Command::PreventAllowMediumRemoval => Action::Complete(Completion::good()),
            Command::Reserve => {
                // Another holder was refused above; the holder may reserve again.
                self.reserved_by = Some(initiator);
                Action::Complete(Completion::good())
            }
            Command::Release => {
                // A release by an initiator that holds nothing is GOOD and changes nothing.
                if self.reserved_by == Some(initiator) {
                    self.reserved_by = None;
                }
                Action::Complete(Completion::good())
            }
            Command::ReadDefectData { twelve, request, alloc } => {
                // No defects: valid, empty lists of whichever kinds were asked for.
                let flags = request & 0x1F;
                let header = if twelve { vec![0, flags, 0, 0, 0, 0, 0, 0] } else { vec![0, flags, 0, 0] };
                done(header, alloc as usize)
            }
            Command::RequestSense { desc, alloc } => {
                let sense = match self.attentions_of(initiator).pop_front() {
                    Some(asc) => Sense::new(SenseKey::UnitAttention, asc),
                    None => Sense::new(SenseKey::NoSense, Asc::NO_ADDITIONAL_SENSE),
                };
                done(sense.encode(desc), usize::from(alloc))
            }
            Command::Inquiry { vpd: None, alloc } => done(inquiry::standard(cfg), usize::from(alloc)),
            Command::Inquiry { vpd: Some(page), alloc } => {
                let port = self.alua.group_of(nexus.target_port).map(|g| (nexus.target_port, g.id));
                match inquiry::vpd(cfg, page, port) {
                    Ok(b) => done(b, usize::from(alloc)),
                    Err(s) => self.fail(&s),
                }
            }
            Command::ReportTargetPortGroups { extended, alloc } => done(self.alua.report(extended), alloc as usize),
            Command::ModeSense(req) => match mode::sense(&req, cfg, read_only, &self.mode, &self.saved) {
                Ok(b) => done(b, usize::from(req.alloc)),
                Err(s) => self.fail(&s),
            },
            Command::ModeSelect { ten, save, .. } => match mode::select(ten, params, cfg, &self.mode) {
                Ok(next) => {
                    if next != self.mode {
                        self.queue_attention(Asc::MODE_PARAMETERS_CHANGED, Some(initiator));
                    }
                    self.mode = next;
                    if save {
                        self.saved = next;
                    }
                    Action::Complete(Completion::good())
                }
                Err(s) => self.fail(&s),
            },
            Command::StartStopUnit { start, no_flush } => {
                if start || no_flush {
                    Action::Complete(Completion::good())
                } else {
                    Action::Backend(self.task_of(Step::Io(BackendOp::Flush), Finish::Good, false))
                }
            }
            Command::PersistentReserveIn { action, alloc } => match self.pr.read(action) {
                Ok(b) => done(b, usize::from(alloc)),
                Err(s) => self.fail(&s),
            },
            Command::PersistentReserveOut { action, scope_type, .. } => {
                if self.reserved_by.is_some() {
                    // An SPC-2 reservation (the holder's own, since others were refused
                    // above) excludes persistent ones.
                    return conflict();
                }
                match self.pr.out(&it, action, scope_type, params) {
                    Ok(fx) => {
                        for (to, asc) in fx.attentions {
                            self.attention_to(&to, asc);
                            if self.pr_shared {
                                let seq = self.pr_events.last().map_or(0, |e| e.seq) + 1;
                                if self.pr_events.len() == pr::MAX_PR_EVENTS {
                                    self.pr_events.remove(0);
                                }
                                self.pr_events.push(pr::PrEvent { seq, to, asc });
                            }
                        }
                        // What this unit does now supersedes what it took over.
                        self.carried.clear();
                        for to in &fx.aborted {
                            let hit = self.ports.iter().filter(|(id, (port, target_port))| {
                                **id != initiator && to.covers(&ItNexus { port, target_port: *target_port })
                            });
                            self.aborted.extend(hit.map(|(id, _)| *id));
                        }
                        self.pr_dirty |= fx.persist || self.pr_shared;
                        Action::Complete(Completion::good())
                    }
                    Err(PrError::Conflict) => conflict(),
                    Err(PrError::Check(s)) => self.fail(&s),
                }
            }
            Command::ReadCapacity10 => done(report::read_capacity10(cfg), 8),
            Command::ReadCapacity16 { alloc } => done(report::read_capacity16(cfg), alloc as usize),
            Command::ReportLuns { select, alloc } => done(report::report_luns(nexus.luns, select), alloc as usize),
            Command::ReportSupportedOpcodes { rctd, options, opcode, service_action, alloc } => {
                match report::supported_opcodes(rctd, options, opcode, service_action) {
                    Ok(b) => done(b, alloc as usize),
                    Err(s) => self.fail(&s),
                }
            }
            Command::GetLbaStatus { lba, alloc } => {
                let bs = cfg.block_size;
                let offset = lba << cfg.block_shift();
                // Ask for no more than the allocation length can describe, at 1 MiB a
                // descriptor: finding where a run ends walks the backend's allocation
                // (SEEK_HOLE scans a full tmpfs file page by page), and initiators that ask
                // before each read (QEMU) want one descriptor about the next few blocks.
                let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 1024);
                let per_desc = ((1u64 << 20) >> cfg.block_shift()).max(1);
                let span = (cfg.blocks - lba).min(u64::from(max_desc) * per_desc);
                let op = BackendOp::BlockStatus { offset, len: span << cfg.block_shift() };
                let finish = Finish::LbaStatus { lba, alloc, block_size: bs };
                Action::Backend(self.task_of(Step::Io(op), finish, false))
            }
            Command::SynchronizeCache => Action::Backend(self.task_of(Step::Io(BackendOp::Flush), Finish::Good, false)),
            Command::Read { extent, .. } => {
                let (offset, len) = self.bytes(extent);
                if len == 0 {
                    return Action::Complete(Completion::good());
                }
                let op = BackendOp::Read { offset, len, into: Buf::DataIn(0) };
                Action::Backend(self.task_of(Step::Io(op), Finish::ReadData(len), false))
            }
            Command::Write { extent, fua } => {
                let (offset, len) = self.bytes(extent);
                if len == 0 {
                    return Action::Complete(Completion::good());
                }
                let fua = fua || !self.mode.write_cache;
                let op = BackendOp::Write { offset, len, from: Buf::DataOut(0), fua };
                let lock = self.lock(extent.lba, u64::from(extent.blocks), LockMode::Shared);
                Action::Backend(self.task_of(Step::Io(op), Finish::Good, true).with_lock(lock))
            }
            Command::WriteAndVerify { extent, bytchk } => {
                let (offset, len) = self.bytes(extent);
                if len == 0 {
                    return Action::Complete(Completion::good());
                }
                let mut steps = vec![Step::Io(BackendOp::Write { offset, len, from: Buf::DataOut(0), fua: true })];
                steps.extend(self.verify_steps(offset, len, bytchk));
                let lock = self.lock(extent.lba, u64::from(extent.blocks), LockMode::Exclusive);
                let scratch = len.min(SCRATCH_CHUNK);
                Action::Backend(self.task(steps, Finish::Good, true).with_scratch(scratch, None).with_lock(lock))
            }
            Command::Verify { extent, bytchk } => {
                let (offset, len) = self.bytes(extent);
                if len == 0 {
                    return Action::Complete(Completion::good());
                }
                let steps = self.verify_steps(offset, len, bytchk);
                Action::Backend(self.task(steps, Finish::Good, false).with_scratch(len.min(SCRATCH_CHUNK), None))
            }
            Command::PreFetch { extent } => {
                // What fits in one transfer is read ahead (into the page cache, for a
                // buffered image). GOOD rather than CONDITION MET: SBC-3 5.9 allows it when
                // the blocks may not all stay cached, and pangate keeps no cache of its own.
                let blocks = extent.blocks.min(cfg.max_transfer_blocks());
                let (offset, len) = self.bytes(Extent { lba: extent.lba, blocks });
                if len == 0 {
                    return Action::Complete(Completion::good());
                }
                let steps = self.verify_steps(offset, len, false);
                Action::Backend(self.task(steps, Finish::Good, false).with_scratch(len.min(SCRATCH_CHUNK), None))
            }
            // Both read the blocks into scratch, combine them with the data-out, and write
            // back, under an exclusive lock: ORWRITE ORs and writes the result; COMPARE AND
            // WRITE compares and writes the data-out's second half.
            Command::OrWrite { extent, fua } => {
                let len = self.bytes(extent).1;
                self.read_modify_write(extent, fua, Step::Or { scratch: 0, data_out: 0, len }, Buf::Scratch(0))
            }
            Command::CompareAndWrite { extent, fua } => {
                let len = self.bytes(extent).1;
                self.read_modify_write(extent, fua, Step::Compare { scratch: 0, data_out: 0, len }, Buf::DataOut(len))
            }
            Command::WriteSame { lba, blocks, unmap, ndob } => {
                let offset = lba << cfg.block_shift();
                let total = blocks << cfg.block_shift();
                let zero = ndob || params.iter().all(|&b| b == 0);
                let lock = self.lock(lba, blocks, LockMode::Shared);
                let mut steps = Vec::new();
                let task = if zero {
                    let op = if unmap {
                        BackendOp::Unmap { offset, len: total }
                    } else {
                        BackendOp::WriteZeroes { offset, len: total }
                    };
                    steps.push(Step::Io(op));
                    self.task(steps, Finish::Good, true)
                } else {
                    let chunk = (total as usize).min(SCRATCH_CHUNK);
                    let fua = !self.mode.write_cache;
                    let mut at = 0u64;
                    while at < total {
                        let len = (total - at).min(chunk as u64) as usize;
                        steps.push(Step::Io(BackendOp::Write { offset: offset + at, len, from: Buf::Scratch(0), fua }));
                        at += len as u64;
                    }
                    self.task(steps, Finish::Good, true).with_scratch(chunk, Some(params.to_vec()))
                };
                Action::Backend(task.with_lock(lock))
            }
            Command::Unmap { .. } => match self.unmap_ranges(params) {
                Ok(ranges) if ranges.is_empty() => Action::Complete(Completion::good()),
                Ok(ranges) => {
                    let start = ranges.iter().map(|r| r.0).min().unwrap_or(0);
                    let end = ranges.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
                    let shift = self.cfg.block_shift();
                    let steps = ranges
                        .iter()
                        .map(|&(lba, n)| Step::Io(BackendOp::Unmap { offset: lba << shift, len: n << shift }))
                        .collect();
                    let lock = self.lock(start, end - start, LockMode::Shared);
                    Action::Backend(self.task(steps, Finish::Good, true).with_lock(lock))
                }
                Err(s) => self.fail(&s),
            },
        }
    }

    /// Reads `extent` into scratch, runs `combine` (a compare or an OR with the data-out),
    /// then writes `from` back over it, all under an exclusive range lock.
    fn read_modify_write(&self, extent: Extent, fua: bool, combine: Step, from: Buf) -> Action {
        let (offset, len) = self.bytes(extent);
        if len == 0 {
            return Action::Complete(Completion::good());
        }
        let fua = fua || !self.mode.write_cache;
        let steps = vec![
            Step::Io(BackendOp::Read { offset, len, into: Buf::Scratch(0) }),
            combine,
            Step::Io(BackendOp::Write { offset, len, from, fua }),
        ];
        let lock = self.lock(extent.lba, u64::from(extent.blocks), LockMode::Exclusive);
        Action::Backend(self.task(steps, Finish::Good, true).with_scratch(len, None).with_lock(lock))
    }

    /// Reads `[offset, offset+len)` in scratch-sized chunks, comparing each with data-out
    /// when `bytchk` is set.
    fn verify_steps(&self, offset: u64, len: usize, bytchk: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut at = 0usize;
        while at < len {
            let n = (len - at).min(SCRATCH_CHUNK);
            steps.push(Step::Io(BackendOp::Read { offset: offset + at as u64, len: n, into: Buf::Scratch(0) }));
            if bytchk {
                steps.push(Step::Compare { scratch: 0, data_out: at, len: n });
            }
            at += n;
        }
        steps
    }

    /// Parses and validates an UNMAP parameter list (SBC-3 5.28.2) into (lba, blocks) pairs.
    fn unmap_ranges(&self, p: &[u8]) -> Result<Vec<(u64, u64)>, Sense> {
        if p.is_empty() {
            return Ok(Vec::new());
        }
        if p.len() < 8 {
            return Err(Sense::parameter_list_length());
        }
        let data_len = usize::from(u16::from_be_bytes([p[0], p[1]]));
        let desc_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if data_len + 2 > p.len() || desc_len + 8 > p.len() {
            return Err(Sense::parameter_list_length());
        }
        // A trailing partial descriptor is ignored, as SBC-3 allows.
        let count = desc_len / 16;
        if count > self.cfg.limits.max_unmap_descriptors as usize {
            return Err(Sense::invalid_parameter(2, None));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut total = 0u64;
        for i in 0..count {
            let d = &p[8 + 16 * i..24 + 16 * i];
            let lba = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            let blocks = u64::from(u32::from_be_bytes([d[8], d[9], d[10], d[11]]));
            // SBC-4 5.31.2: out of range when LBA plus NUMBER OF LOGICAL BLOCKS exceeds the
            // capacity; a descriptor of zero blocks at LBA = capacity does not, and is a
            // no-op (as LIO and libiscsi's test_unmap_0blocks have it).
            if blocks == 0 && lba <= self.cfg.blocks {
                continue;
            }
            cdb::check_range(&self.cfg, lba, blocks)?;
            total += blocks;
            if total > u64::from(self.cfg.max_unmap_blocks()) {
                return Err(Sense::invalid_parameter((8 + 16 * i + 8) as u16, None));
            }
            ranges.push((lba, blocks));
        }
        Ok(ranges)
    }
}

/// Executes a command addressed to a LUN that does not exist for this initiator (SPC-4
/// 5.8): INQUIRY reports an unconnected unit, REPORT LUNS lists `luns`, REQUEST SENSE and
/// everything else report LOGICAL UNIT NOT SUPPORTED.
pub fn absent_lun(cdb: &[u8], luns: &[u16]) -> Completion {
    let fail = |s: &Sense| Completion::check(s, false);
    match cdb.first() {
        Some(&op::INQUIRY) if cdb.len() >= 6 => {
            let alloc = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
            if cdb[1] & 1 != 0 {
                fail(&Sense::lun_not_supported())
            } else {
                Completion::data(inquiry::not_connected(), alloc)
            }
        }
        Some(&op::REPORT_LUNS) => match crate::opcodes::check(cdb).and_then(|_| cdb::report_luns_fields(cdb)) {
            Ok((select, alloc)) => Completion::data(report::report_luns(luns, select), alloc as usize),
            Err(s) => fail(&s),
        },
        Some(&op::REQUEST_SENSE) if cdb.len() >= 6 => {
            let desc = cdb[1] & 1 != 0;
            Completion::data(Sense::lun_not_supported().encode(desc), usize::from(cdb[4]))
        }
        _ => fail(&Sense::lun_not_supported()),
    }
}
