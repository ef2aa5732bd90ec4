//! Admission: what the ring server does with a CMD or TRAN a node sent, decided from
//! values alone (the message, what the queue pair has outstanding, the node's LUN map), so
//! that every rule is a unit test away. The worker performs the decision: it answers, stages,
//! tries the direct path, starts a job, runs a control request, or closes the queue pair
//! for a [`Violation`].

use std::collections::HashMap;

use scsi::{absent_lun, Completion, DataIn, Sense, Status};
use thiserror::Error;

use crate::registry::Access;
use crate::ring::alloc::RegionAllocator;
use crate::ring::proto::{self, ControlOp, Region};
use crate::ring::shm::ShmError;
use crate::ring::spsc::RingError;

/// What a node did that costs it its queue pair. Each has a fixed label for the
/// `pangate_ring_protocol_errors_total{reason}` metric.
#[derive(Debug, Error)]
pub enum Violation {
    /// More commands outstanding than the queue pair has slots.
    #[error("more than {slots} commands outstanding")]
    QueueOverflow {
        /// The queue depth.
        slots: u32,
    },
    /// A sequence number used again while its command is still outstanding.
    #[error("sequence number {seq} reused while outstanding")]
    SequenceReused {
        /// The sequence number.
        seq: u32,
    },
    /// A TRAN for a command that awaits no data.
    #[error("TRAN for sequence number {seq}, which awaits no data")]
    TranForNothing {
        /// The sequence number.
        seq: u32,
    },
    /// A TRAN whose index names no BUF of the command, or one already confirmed.
    #[error("TRAN index {index} for sequence number {seq} is unknown or repeated")]
    TranIndex {
        /// The sequence number.
        seq: u32,
        /// The index.
        index: u16,
    },
    /// A region the data could not be moved to or from.
    #[error("bad region: {0}")]
    BadRegion(#[from] ShmError),
    /// The rings themselves: a cursor or message that breaks the protocol.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// Bytes on the socket after the handshake.
    #[error("the node sent data on its socket after the handshake")]
    SocketChatter,
    /// The node's doorbell could not be rung.
    #[error("ringing the node's doorbell failed: {0}")]
    DoorbellFailed(std::io::Error),
}

impl Violation {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Violation::QueueOverflow { .. } => "queue_overflow",
            Violation::SequenceReused { .. } => "sequence_reused",
            Violation::TranForNothing { .. } | Violation::TranIndex { .. } => "unexpected_tran",
            Violation::BadRegion(_) => "bad_region",
            Violation::Ring(e) => e.label(),
            Violation::SocketChatter => "socket_chatter",
            Violation::DoorbellFailed(_) => "doorbell_failed",
        }
    }
}

/// Why a queue pair closed.
#[derive(Debug, Error)]
pub enum Closed {
    /// The node broke the protocol.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// The node hung up (its socket closed).
    #[error("disconnected")]
    HungUp,
    /// The administrator deleted the node.
    #[error("the node was deleted")]
    NodeDeleted,
    /// The node was fenced: it is being failed over to a spare.
    #[error("the node was fenced for a failover")]
    Fenced,
    /// The front-end connection that is the node side ended.
    #[error("the front-end's connection ended")]
    Ended,
    /// The gateway stopped.
    #[error("the gateway stopped")]
    Stopped,
}

/// A LUN as the node's map has it.
pub trait MapEntry {
    /// The access the map grants.
    fn access(&self) -> Access;
    /// The LUN's logical block size.
    fn block_size(&self) -> u32;
}

/// The queue pair as admission sees it when a CMD arrives.
#[derive(Debug, Clone, Copy)]
pub struct QueueState {
    /// The queue depth.
    pub slots: u32,
    /// Commands accepted and not yet consumed by the node: unanswered, answered but not
    /// yet in the STAT ring, and STATs in the ring.
    pub outstanding: usize,
    /// Whether the CMD's sequence number is already outstanding.
    pub seq_in_use: bool,
    /// Bytes the outstanding commands' segments name.
    pub bytes_in_flight: u64,
    /// Size of the node's data area.
    pub data_area: u64,
}

/// What to do with a CMD.
#[derive(Debug)]
pub enum Decision<'m, L> {
    /// Close the queue pair.
    Kill(Violation),
    /// A protocol-control request.
    Control(ControlOp),
    /// Answer now, without the image: `data_in` bytes (if any) go into the CMD's regions.
    /// `counted` says whether the LUN's statistics count the command.
    Answer {
        /// The answer.
        completion: Completion,
        /// The LUN, when it exists and its statistics count the answer.
        counted: Option<&'m L>,
    },
    /// A staged write: the worker allocates staging buffers (BUSY when it cannot), sends
    /// a BUF per segment and waits for the TRANs.
    Stage(&'m L),
    /// Execute: on the direct path if it takes the command, else as a job for the image's
    /// owner.
    Execute {
        /// The LUN.
        lun: &'m L,
        /// Whether data moves node → gateway.
        data_out: bool,
        /// Whether data moves gateway → node.
        data_in: bool,
    },
}

/// BUSY: the node should retry the command later.
pub fn busy() -> Completion {
    Completion { status: Status::Busy, sense: Vec::new(), data_in: DataIn::None }
}

/// Decides what to do with `cmd` from queue pair `q`, whose node maps `map`; `luns` lists the
/// LUNs the node sees on the command's target (REPORT LUNS of an unmapped LUN answers it).
pub fn admit<'m, L: MapEntry>(
    cmd: &proto::Cmd,
    q: QueueState,
    map: &'m HashMap<(u16, u16), L, impl std::hash::BuildHasher>,
    luns: &[u16],
) -> Decision<'m, L> {
    if q.outstanding >= q.slots as usize {
        return Decision::Kill(Violation::QueueOverflow { slots: q.slots });
    }
    if q.seq_in_use {
        return Decision::Kill(Violation::SequenceReused { seq: cmd.seq });
    }
    if let Some(op) = cmd.control {
        return Decision::Control(op);
    }
    let Some(lun) = map.get(&(cmd.target, cmd.lun)) else {
        return Decision::Answer { completion: absent_lun(cmd.cdb(), luns), counted: None };
    };
    if lun.access().is_read_only() && scsi::opcodes::writes_medium(cmd.cdb()[0]) {
        return Decision::Answer {
            completion: Completion::check(&Sense::write_protected(), false),
            counted: Some(lun),
        };
    }
    if let Err(sense) = check_data(cmd, lun.block_size()) {
        return Decision::Answer { completion: Completion::check(&sense, false), counted: Some(lun) };
    }
    if q.bytes_in_flight + cmd.segments.total() > q.data_area {
        // More data in flight than the node's whole data area: ask it to retry later.
        return Decision::Answer { completion: busy(), counted: Some(lun) };
    }
    if cmd.flags & proto::FLAG_STAGED != 0 {
        return Decision::Stage(lun);
    }
    let data_out = cmd.flags & proto::FLAG_DATA_OUT != 0;
    let data_in = cmd.flags & proto::FLAG_DATA_IN != 0;
    Decision::Execute { lun, data_out, data_in }
}

/// Checks a CMD's data against its CDB before anything runs: the direction flag must be
/// the CDB's (DATA_OUT only for commands that carry data to the target, DATA_IN never for
/// them), and a READ's regions must hold all the blocks it asks for. Both are refused
/// alike; a short WRITE is refused by the LUN itself, which sees its data-out.
fn check_data(cmd: &proto::Cmd, block_size: u32) -> Result<(), Sense> {
    let cdb = cmd.cdb();
    let opcode = cdb[0];
    let out = scsi::opcodes::carries_data_out(opcode);
    let mismatch = if out { cmd.flags & proto::FLAG_DATA_IN != 0 } else { cmd.flags & proto::FLAG_DATA_OUT != 0 };
    if mismatch {
        return Err(Sense::data_length_mismatch());
    }
    match scsi::cdb::read_transfer_bytes(cdb, block_size) {
        Some(want) if cmd.segments.total() < want => Err(Sense::data_length_mismatch()),
        _ => Ok(()),
    }
}

/// What to do with a TRAN.
#[derive(Debug, PartialEq, Eq)]
pub enum TranDecision {
    /// Recorded; the command still waits for other segments.
    Wait,
    /// The last segment: the command's data is all staged, so it runs.
    Run,
}

/// Records TRAN `index` of a staged command whose segments so far are `received` (`None`
/// when the sequence number awaits no data).
pub fn admit_tran(seq: u32, index: u16, received: Option<&mut [bool]>) -> Result<TranDecision, Violation> {
    let received = received.ok_or(Violation::TranForNothing { seq })?;
    match received.get_mut(usize::from(index)) {
        Some(r) if !*r => *r = true,
        _ => return Err(Violation::TranIndex { seq, index }),
    }
    Ok(if received.iter().all(|&r| r) { TranDecision::Run } else { TranDecision::Wait })
}

/// Staging space for each segment of a staged CMD, of the same size (a BUF each); `None`,
/// with everything taken given back, when the staging area has no room: the command is
/// then answered BUSY.
pub fn stage(segments: &[Region], alloc: &mut RegionAllocator) -> Option<Vec<Region>> {
    let mut staged = Vec::with_capacity(segments.len());
    for r in segments {
        match alloc.alloc(r.len) {
            Some(s) => staged.push(s),
            None => {
                staged.into_iter().for_each(|s| alloc.free(s));
                return None;
            }
        }
    }
    Some(staged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::proto::{Cmd, FLAG_DATA_IN, FLAG_DATA_OUT, FLAG_STAGED};

    #[derive(Debug, PartialEq)]
    struct Lun(Access);

    impl MapEntry for Lun {
        fn access(&self) -> Access {
            self.0
        }

        fn block_size(&self) -> u32 {
            512
        }
    }

    fn map() -> HashMap<(u16, u16), Lun> {
        HashMap::from([((0, 0), Lun(Access::Rw)), ((0, 1), Lun(Access::Ro))])
    }

    fn idle() -> QueueState {
        QueueState { slots: 4, outstanding: 0, seq_in_use: false, bytes_in_flight: 0, data_area: 1 << 20 }
    }

    const WRITE16: [u8; 16] = [0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 255, 0];
    const READ16: [u8; 16] = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];

    fn cmd(lun: u16, cdb: &[u8], flags: u8, len: u32) -> Cmd {
        let regions: &[Region] = if len > 0 { &[Region { offset: 0, len }] } else { &[] };
        Cmd::scsi(7, 0, lun, cdb, flags, regions).unwrap()
    }

    #[test]
    fn a_full_queue_and_a_reused_sequence_number_cost_the_queue_pair() {
        let m = map();
        let c = cmd(0, &READ16, FLAG_DATA_IN, 4096);
        let full = QueueState { outstanding: 4, ..idle() };
        let d = admit(&c, full, &m, &[0, 1]);
        assert!(
            matches!(d, Decision::Kill(v @ Violation::QueueOverflow { slots: 4 }) if v.label() == "queue_overflow")
        );
        let reused = QueueState { seq_in_use: true, ..idle() };
        let d = admit(&c, reused, &m, &[0, 1]);
        assert!(
            matches!(d, Decision::Kill(v @ Violation::SequenceReused { seq: 7 }) if v.label() == "sequence_reused")
        );
        assert!(matches!(admit(&c, QueueState { outstanding: 3, ..idle() }, &m, &[0, 1]), Decision::Execute { .. }));
    }

    #[test]
    fn unmapped_luns_are_answered_without_counting_and_read_only_refuses_writes() {
        let m = map();
        let d = admit(&cmd(5, &READ16, FLAG_DATA_IN, 4096), idle(), &m, &[0, 1]);
        let Decision::Answer { completion, counted: None } = d else { panic!("{d:?}") };
        assert_eq!(completion.status, Status::CheckCondition);
        let d = admit(&cmd(1, &WRITE16, FLAG_DATA_OUT, 4096), idle(), &m, &[0, 1]);
        let Decision::Answer { completion, counted: Some(Lun(Access::Ro)) } = d else { panic!("{d:?}") };
        assert_eq!(completion.sense, Completion::check(&Sense::write_protected(), false).sense);
        let d = admit(&cmd(1, &READ16, FLAG_DATA_IN, 4096), idle(), &m, &[0, 1]);
        assert!(matches!(d, Decision::Execute { data_in: true, data_out: false, .. }), "reads of a read-only LUN run");
    }

    #[test]
    fn data_beyond_the_area_is_busy_and_staged_writes_stage() {
        let m = map();
        let q = QueueState { bytes_in_flight: (1 << 20) - 4095, ..idle() };
        let d = admit(&cmd(0, &WRITE16, FLAG_DATA_OUT, 4096), q, &m, &[0]);
        let Decision::Answer { completion, counted: Some(_) } = d else { panic!("{d:?}") };
        assert_eq!(completion.status, Status::Busy);
        let d = admit(&cmd(0, &WRITE16, FLAG_DATA_OUT | FLAG_STAGED, 4096), idle(), &m, &[0]);
        assert!(matches!(d, Decision::Stage(Lun(Access::Rw))));
        let heartbeat = Cmd::control(9, ControlOp::Heartbeat, 0, 0, 0, &[]).unwrap();
        assert!(matches!(admit(&heartbeat, idle(), &m, &[0]), Decision::Control(ControlOp::Heartbeat)));
    }

    #[test]
    fn a_short_read_and_a_direction_against_the_cdb_are_refused() {
        let m = map();
        let refused = |d: Decision<'_, Lun>| match d {
            Decision::Answer { completion, counted: Some(_) } => {
                completion.sense == Completion::check(&Sense::data_length_mismatch(), false).sense
            }
            _ => false,
        };
        // READ(16) of 8 blocks into 2 KiB: refused, as the WRITE would be.
        assert!(refused(admit(&cmd(0, &READ16, FLAG_DATA_IN, 2048), idle(), &m, &[0])));
        assert!(refused(admit(&cmd(0, &READ16, 0, 0), idle(), &m, &[0])));
        // A READ sent as DATA_OUT, and a WRITE sent as DATA_IN.
        assert!(refused(admit(&cmd(0, &READ16, FLAG_DATA_OUT, 4096), idle(), &m, &[0])));
        assert!(refused(admit(&cmd(0, &WRITE16, FLAG_DATA_IN, 4096), idle(), &m, &[0])));
        assert!(refused(admit(&cmd(0, &INQUIRY, FLAG_DATA_OUT, 255), idle(), &m, &[0])));
        // Exact or larger regions run; INQUIRY may have less room than its allocation length.
        assert!(matches!(admit(&cmd(0, &READ16, FLAG_DATA_IN, 8192), idle(), &m, &[0]), Decision::Execute { .. }));
        assert!(matches!(admit(&cmd(0, &INQUIRY, FLAG_DATA_IN, 36), idle(), &m, &[0]), Decision::Execute { .. }));
    }

    #[test]
    fn trans_must_name_a_waiting_segment_once() {
        let mut received = vec![false, false];
        assert_eq!(admit_tran(3, 1, Some(&mut received)).unwrap(), TranDecision::Wait);
        assert!(matches!(admit_tran(3, 1, Some(&mut received)), Err(Violation::TranIndex { seq: 3, index: 1 })));
        assert!(matches!(admit_tran(3, 2, Some(&mut received)), Err(Violation::TranIndex { .. })));
        assert_eq!(admit_tran(3, 0, Some(&mut received)).unwrap(), TranDecision::Run);
        let e = admit_tran(4, 0, None).unwrap_err();
        assert_eq!(
            (e.label(), e.to_string().as_str()),
            ("unexpected_tran", "TRAN for sequence number 4, which awaits no data")
        );
    }

    #[test]
    fn staging_gives_back_what_it_took_when_the_area_is_full() {
        let page = crate::ring::alloc::PAGE as u32;
        let mut alloc = RegionAllocator::new(2 * u64::from(page));
        let three = [Region { offset: 0, len: page }; 3];
        assert!(stage(&three, &mut alloc).is_none(), "two pages do not hold three");
        let two = stage(&three[..2], &mut alloc).expect("both pages were given back");
        assert_eq!(two.len(), 2);
        assert!(stage(&three[..1], &mut alloc).is_none());
    }
}
