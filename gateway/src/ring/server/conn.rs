//! One queue pair as its worker serves it: the node's rings and memory, its LUN map, the
//! commands it has outstanding, and the STATs and BUFs waiting for room in its rings.

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use metrics::{LunStats, Metrics, RingStats, Transfer};
use scsi::{Completion, Status};

use super::admission::{Closed, MapEntry, Violation};
use super::{Accepted, Capacities, NodeEntry};
use crate::engine::host::{FixedMemory, UringHost};
use crate::registry::Access;
use crate::ring::alloc::RegionAllocator;
use crate::ring::proto::{self, Cmd, Message as RingMessage, Region, Stat};
use crate::ring::shm::{Doorbell, SharedMemory};
use crate::ring::spsc::{Consumer, Producer, RingError, RingId};

/// The maps a worker consults for every command: keyed by values a node chooses
/// (sequence numbers, LUN addresses), hashed with a random seed per map, and far
/// cheaper than SipHash. A node can hold at most its queue depth of entries.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A command the gateway has accepted and not yet answered.
#[derive(Debug)]
pub(super) enum Pending {
    /// Waiting for the node to fill staging buffers (staged write).
    Staged { lun: MappedLun, cmd: Box<Cmd>, staged: Vec<Region>, received: Vec<bool> },
    /// With the image's owner.
    Backend { ticket: Ticket, staged: Vec<Region> },
}

/// What a command's STAT and its LUN's metrics need besides its completion.
#[derive(Debug)]
pub(super) struct Ticket {
    pub(super) seq: u32,
    /// Bytes the CMD's segments name.
    pub(super) expected: u64,
    data_out: bool,
    opcode: u8,
    started_ns: u64,
    stats: Arc<LunStats>,
}

impl Ticket {
    pub(super) fn new(cmd: &Cmd, data_out: bool, started_ns: u64, stats: Arc<LunStats>) -> Ticket {
        stats.started(started_ns);
        Ticket { seq: cmd.seq, expected: cmd.segments.total(), data_out, opcode: cmd.cdb()[0], started_ns, stats }
    }

    /// Counts the finished command in its LUN's metrics and makes its STAT; `data_in` is
    /// how many bytes of data-in reached the node.
    pub(super) fn answer(&self, completion: &Completion, data_in: usize, now_ns: u64) -> Stat {
        let (status, expected) = (completion.status, self.expected);
        let transferred = match (self.data_out, status) {
            (true, Status::Good) => expected as usize,
            (true, _) => 0,
            (false, _) => data_in,
        };
        let transfer = match status {
            Status::Good if self.data_out && writes_data(self.opcode) => Transfer::Written(expected),
            Status::Good if scsi::opcodes::reads_medium(self.opcode) => Transfer::Read(transferred as u64),
            _ => Transfer::None,
        };
        self.stats.finished(self.opcode, status as u8, transfer, self.started_ns, now_ns);
        stat_from(self.seq, completion, transferred as u32, expected)
    }
}

/// One entry of a queue pair's map.
#[derive(Debug, Clone)]
pub(super) struct MappedLun {
    pub(super) image: usize,
    pub(super) access: Access,
    pub(super) block_size: u32,
    pub(super) stats: Arc<LunStats>,
}

impl MapEntry for MappedLun {
    fn access(&self) -> Access {
        self.access
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }
}

/// The node's LUN map as its queue pair uses it; `caps` gives each image's block size and
/// capacity (an image without one, which only a control-plane bug makes, is left out).
pub(super) fn lun_map(entry: &NodeEntry, metrics: &Metrics, caps: &Capacities) -> Map<(u16, u16), MappedLun> {
    let caps = caps.lock().unwrap_or_else(|p| p.into_inner());
    entry
        .luns
        .iter()
        .filter_map(|&(target, lun, image, access)| {
            let shape = caps.get(image)?;
            let stats = metrics.lun_for(&shape.pan, &shape.name, &entry.node, target, lun);
            Some(((target, lun), MappedLun { image, access, block_size: shape.block_size, stats }))
        })
        .collect()
}

fn target_luns(map: &Map<(u16, u16), MappedLun>) -> Map<u16, Arc<[u16]>> {
    let mut out: HashMap<u16, Vec<u16>> = HashMap::new();
    for &(t, l) in map.keys() {
        out.entry(t).or_default().push(l);
    }
    out.into_iter()
        .map(|(t, mut luns)| {
            luns.sort_unstable();
            (t, luns.into())
        })
        .collect()
}

pub(super) struct Conn {
    pub(super) id: u64,
    /// The initiator port its commands come from, and the target port they come in on.
    pub(super) port: Arc<scsi::InitiatorPort>,
    pub(super) target_port: u16,
    pub(super) entry: NodeEntry,
    pub(super) sock: UnixStream,
    pub(super) data: Arc<SharedMemory>,
    pub(super) staging: Arc<SharedMemory>,
    pub(super) cmd: Consumer,
    pub(super) stat: Producer,
    pub(super) buf: Producer,
    pub(super) tran: Consumer,
    pub(super) to_gateway: Doorbell,
    pub(super) to_node: Doorbell,
    pub(super) slots: u32,
    pub(super) map: Map<(u16, u16), MappedLun>,
    /// Each target's LUNs in order (REPORT LUNS answers from it), kept with `map`.
    pub(super) target_luns: Map<u16, Arc<[u16]>>,
    /// What a target without LUNs reports.
    pub(super) no_luns: Arc<[u16]>,
    pub(super) pending: Map<u32, Pending>,
    pub(super) ring_stats: Arc<RingStats>,
    /// Commands accepted whose STAT has not gone into the ring.
    pub(super) unanswered: u64,
    /// `unanswered` as last added to the node's outstanding gauge.
    pub(super) reported: u64,
    /// STATs and BUFs waiting for room in their rings, as they will be written.
    pub(super) out_stat: VecDeque<RingMessage>,
    pub(super) out_buf: VecDeque<RingMessage>,
    pub(super) staging_alloc: RegionAllocator,
    /// Bytes named by the segments of commands not yet answered, capped at the size of the
    /// node's data area so a node cannot make the gateway hold more data than it could send.
    pub(super) bytes_in_flight: u64,
    pub(super) dead: Option<Closed>,
    /// Names this queue pair's polls in the worker's ring: `2 * token` its doorbell,
    /// `2 * token + 1` its socket.
    pub(super) token: u32,
    /// Which of those polls are armed (one-shot: each fires once).
    pub(super) bell_armed: bool,
    pub(super) sock_armed: bool,
    /// The data area registered as a fixed buffer of the worker's ring, so engine I/O on
    /// it skips pinning pages every time; given back when the queue pair closes.
    data_fixed: Fixed,
    /// The front-end inside the gateway that is the node side, if it is one
    /// ([`super::attach`]); its socket is polled instead of `sock`.
    pub(super) attached: Option<Box<dyn super::attach::Attachment>>,
    /// The poll armed on the attachment's socket in the worker's ring: its token and mask.
    pub(super) attached_poll: Option<(u32, i16)>,
    /// Whether the attachment's socket may have something to read (false once a read found
    /// it empty, true again when its poll fires).
    pub(super) attached_readable: bool,
    /// The queue pair's share of its node's limits, given back when it is dropped.
    _lease: super::quota::Lease,
    /// Counts it among its FUSE mount's queue pairs until it is dropped.
    _fuse: Option<metrics::FuseQueuePair>,
}

impl Conn {
    pub(super) fn new(
        id: u64,
        token: u32,
        a: Accepted,
        metrics: &Metrics,
        caps: &Capacities,
        host: Option<&Arc<UringHost>>,
    ) -> Conn {
        let map = lun_map(&a.entry, metrics, caps);
        let ring_stats = metrics.ring(&a.entry.pan, &a.entry.node);
        ring_stats.connected();
        let staging_alloc = RegionAllocator::new(a.staging.len() as u64);
        let cmd = Consumer::new(a.ring.clone(), RingId::Cmd, a.slots);
        let tran = Consumer::new(a.ring.clone(), RingId::Tran, a.slots);
        // The worker is awake right now: nodes need not ring until it says otherwise.
        cmd.set_polling(true);
        tran.set_polling(true);
        // Registering pins (and so allocates) the whole area: only areas up to
        // FIXED_DATA_MAX are, so a node asking for a large one does not make the gateway
        // hold all of it at once; larger ones take plain reads and writes.
        let data_fixed = match host {
            Some(h) if a.data.len() <= FIXED_DATA_MAX => Fixed::Later(h.clone()),
            _ => Fixed::Never,
        };
        Conn {
            _lease: a.lease,
            _fuse: a.fuse,
            attached: a.attached,
            attached_poll: None,
            attached_readable: true,
            data_fixed,
            id,
            port: a.port,
            target_port: a.target_port,
            sock: a.sock,
            data: a.data,
            staging: a.staging,
            stat: Producer::new(a.ring.clone(), RingId::Stat, a.slots),
            buf: Producer::new(a.ring.clone(), RingId::Buf, a.slots),
            cmd,
            tran,
            to_gateway: a.to_gateway,
            to_node: a.to_node,
            slots: a.slots,
            target_luns: target_luns(&map),
            no_luns: Arc::new([]),
            map,
            pending: Map::default(),
            ring_stats,
            unanswered: 0,
            reported: 0,
            out_stat: VecDeque::new(),
            out_buf: VecDeque::new(),
            staging_alloc,
            bytes_in_flight: 0,
            dead: None,
            token,
            bell_armed: false,
            sock_armed: false,
            entry: a.entry,
        }
    }

    /// The fixed buffer over the data area, registered the first time a command with data
    /// goes to an engine: pinning takes milliseconds, which a queue pair that only
    /// connects (or an iSCSI login that runs nothing) should not cost the worker.
    pub(super) fn data_fixed(&mut self) -> Option<u16> {
        match &self.data_fixed {
            Fixed::Registered(_, index) => return Some(*index),
            Fixed::Never => return None,
            Fixed::Later(_) => {}
        }
        let Fixed::Later(h) = std::mem::replace(&mut self.data_fixed, Fixed::Never) else { unreachable!() };
        // The host holds the area while it is registered; `Drop` unregisters it, and the
        // kernel keeps the pages for any request still using them.
        let area: Arc<dyn FixedMemory> = self.data.clone();
        let index = h.register_buffer(|_| area)?;
        self.data_fixed = Fixed::Registered(h, index);
        Some(index)
    }

    pub(super) fn luns_of_target(&self, target: u16) -> &Arc<[u16]> {
        self.target_luns.get(&target).unwrap_or(&self.no_luns)
    }

    /// Queues a STAT for the node.
    pub(super) fn answer(&mut self, s: Stat) {
        self.out_stat.push_back(RingMessage::Stat(s));
    }

    pub(super) fn set_map(&mut self, map: Map<(u16, u16), MappedLun>) {
        self.target_luns = target_luns(&map);
        self.map = map;
    }

    /// The node went away normally.
    pub(super) fn hang_up(&mut self) {
        if self.dead.is_none() {
            tracing::info!(pan = %self.entry.pan, node = %self.entry.node, outstanding = self.pending.len(), "queue pair disconnected");
            self.dead = Some(Closed::HungUp);
        }
    }

    /// The node broke the protocol: close its queue pair, count the violation and say why.
    pub(super) fn kill(&mut self, why: Violation) {
        if self.dead.is_none() {
            tracing::warn!(pan = %self.entry.pan, node = %self.entry.node, reason = %why, "closing queue pair");
            self.ring_stats.protocol_error(why.label());
            self.dead = Some(Closed::Violation(why));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Fixed::Registered(host, index) = std::mem::replace(&mut self.data_fixed, Fixed::Never) {
            host.unregister_buffer(index);
        }
        self.ring_stats.disconnected(self.reported);
    }
}

pub(super) fn stat_from(seq: u32, c: &Completion, transferred: u32, expected: u64) -> Stat {
    let residual = expected.saturating_sub(u64::from(transferred)).min(u64::from(u32::MAX)) as u32;
    Stat::new(seq, c.status as u8, &c.sense, transferred, residual)
}

pub(super) fn control_stat(seq: u32, result: u16, transferred: u32) -> Stat {
    let mut s = Stat::new(seq, Status::Good as u8, &[], transferred, 0);
    s.flags = proto::FLAG_CONTROL;
    s.control_result = result;
    s
}

/// The data area as a fixed buffer of the worker's ring.
enum Fixed {
    /// Not yet registered; it will be at the first command with data.
    Later(Arc<UringHost>),
    Registered(Arc<UringHost>, u16),
    /// No ring, an area too large, or registering failed.
    Never,
}

/// Largest data area registered as a fixed buffer of the worker's ring.
const FIXED_DATA_MAX: usize = 64 << 20;

/// Whether a command's data-out is data for the medium (not UNMAP's parameter list).
fn writes_data(opcode: u8) -> bool {
    scsi::opcodes::writes_medium(opcode) && opcode != scsi::opcodes::op::UNMAP
}

/// Moves queued messages into a ring while it has room, then shows them to the node with
/// one cursor store; returns how many moved.
fn drain_into(queue: &mut VecDeque<RingMessage>, ring: &mut Producer) -> Result<u64, RingError> {
    let mut moved = 0;
    while let Some(m) = queue.front() {
        if !ring.stage(m)? {
            break;
        }
        queue.pop_front();
        moved += 1;
    }
    if moved > 0 {
        ring.publish()?;
    }
    Ok(moved)
}

/// Moves queued STATs and BUFs into the rings and rings the node's doorbell if it is not
/// polling. Returns whether anything moved.
pub(super) fn flush(c: &mut Conn) -> bool {
    let stats = drain_into(&mut c.out_stat, &mut c.stat);
    let bufs = drain_into(&mut c.out_buf, &mut c.buf);
    let moved = match (stats, bufs) {
        (Ok(a), Ok(b)) => {
            c.unanswered -= a;
            a + b > 0
        }
        (Err(e), _) | (_, Err(e)) => {
            c.kill(e.into());
            return true;
        }
    };
    if c.unanswered != c.reported {
        c.ring_stats.outstanding_moved(c.reported, c.unanswered);
        c.reported = c.unanswered;
    }
    if moved {
        let ring = !(c.stat.consumer_polling() && c.buf.consumer_polling());
        c.ring_stats.doorbell(ring);
        if ring {
            if let Err(e) = c.to_node.ring() {
                c.kill(Violation::DoorbellFailed(e));
            }
        }
    }
    moved
}
