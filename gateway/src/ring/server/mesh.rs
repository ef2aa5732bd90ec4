//! How workers talk to each other. Each worker owns a share of the images (image `i`
//! belongs to worker `i % n`, so its SCSI state and its engine live on one thread) and a
//! share of the queue pairs. A command for an image another worker owns goes there as a
//! [`Job`] and comes back as a [`Done`]. Nothing here takes a lock: the queues are
//! lock-free channels, and a worker is woken through its doorbell only when it has said
//! that it is going to sleep.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use scsi::Completion;

use crate::ring::proto::{Cmd, Region};
use crate::ring::shm::{Doorbell, SharedMemory, ShmError};

/// What placing a queue pair away from its image's worker counts as, in queue pairs.
const AWAY_COST: usize = 3;

/// Where a command's data is, in the memory the node shares with the gateway. The owner of
/// the image moves it, so a command crosses workers without a copy of its data.
#[derive(Debug)]
pub(super) enum Source {
    /// No data, or data-in the LUN produces itself and that nobody reads.
    None,
    /// Data-out in the node's data area, in the command's segments.
    Out(Arc<SharedMemory>),
    /// Data-in lands in the command's segments of the node's data area.
    In(Arc<SharedMemory>),
    /// Data-out the node put into the staging buffers the gateway gave it.
    Staged { mem: Arc<SharedMemory>, regions: Vec<Region> },
}

/// A command for the worker that owns `image`.
#[derive(Debug)]
pub(super) struct Job {
    /// The queue pair's id in the high 32 bits, the node's sequence number in the low.
    pub tag: u64,
    pub image: usize,
    pub cmd: Cmd,
    /// The LUNs of the command's target that the node sees (REPORT LUNS answers from it).
    pub luns: Arc<[u16]>,
    /// The node's map gives it the LUN read-only (MODE SENSE reports WP).
    pub read_only: bool,
    /// The initiator port and target port of the queue pair (persistent reservations).
    pub port: Arc<scsi::InitiatorPort>,
    pub target_port: u16,
    pub source: Source,
    /// The fixed buffer of the owner's io_uring registered over the node's data area; kept
    /// only while the job stays on the worker serving the queue pair (one ring for both).
    pub fixed: Option<u16>,
}

/// A finished [`Job`], for the worker that serves its queue pair.
#[derive(Debug)]
pub(super) struct Done {
    pub tag: u64,
    /// Status and sense (data-in is already in the node's memory).
    pub completion: Completion,
    /// Data-in bytes placed in the node's regions.
    pub transferred: usize,
    /// The node named memory the data could not be moved to or from: its queue pair is cut.
    pub fault: Option<ShmError>,
}

/// A message between workers.
#[derive(Debug)]
pub(super) enum Message {
    Job(Box<Job>),
    Done(Done),
    /// LUN RESET for an image the receiver owns.
    Reset {
        image: usize,
    },
    /// A queue pair that mapped an image the receiver owns has closed: its nexus's unit
    /// attentions go. It follows the queue pair's last job, as each sender's messages
    /// arrive in order.
    Forget {
        image: usize,
        nexus: u64,
    },
}

/// The workers' shared wiring: one inbox and doorbell each, and flags they publish.
#[derive(Debug)]
pub(super) struct Mesh {
    inboxes: Vec<Sender<Message>>,
    wakes: Vec<Arc<Doorbell>>,
    /// Set by a worker just before it sleeps: senders ring its doorbell.
    sleeping: Vec<AtomicBool>,
    /// Set by a stopping worker with nothing in flight and nothing of its own outstanding
    /// elsewhere; all set means no command can appear anywhere again.
    idle: Vec<AtomicBool>,
    /// Queue pairs per worker, for placing new ones.
    loads: Vec<AtomicUsize>,
    /// When each node last sent a heartbeat, by (PAN, node).
    heartbeats: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

impl Mesh {
    /// Wiring for `wakes.len()` workers, and each worker's inbox.
    pub(super) fn new(wakes: Vec<Arc<Doorbell>>) -> (Arc<Mesh>, Vec<Receiver<Message>>) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) = wakes.iter().map(|_| mpsc::channel()).unzip();
        let n = wakes.len();
        let flags = || (0..n).map(|_| AtomicBool::new(false)).collect();
        let mesh = Mesh {
            inboxes,
            wakes,
            sleeping: flags(),
            idle: flags(),
            loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            heartbeats: Default::default(),
        };
        (Arc::new(mesh), receivers)
    }

    /// Node `pan`/`node` sent a heartbeat now.
    pub(super) fn heard(&self, pan: &str, node: &str) {
        let mut beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        beats.insert((pan.to_string(), node.to_string()), std::time::Instant::now());
    }

    /// When the node last sent a heartbeat, if it ever did.
    pub(super) fn last_heartbeat(&self, pan: &str, node: &str) -> Option<std::time::Instant> {
        let beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        beats.get(&(pan.to_string(), node.to_string())).copied()
    }

    /// Forgets the node's heartbeats (it was failed over: the spare starts afresh).
    pub(super) fn forget_heartbeats(&self, pan: &str, node: &str) {
        self.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).remove(&(pan.to_string(), node.to_string()));
    }

    /// How many workers there are.
    pub(super) fn workers(&self) -> usize {
        self.wakes.len()
    }

    /// The worker that owns image `image`.
    pub(super) fn owner(&self, image: usize) -> usize {
        image % self.workers()
    }

    /// The worker that serves the queue pair a tag belongs to.
    pub(super) fn origin(&self, tag: u64) -> usize {
        ((tag >> 32) % self.workers() as u64) as usize
    }

    /// Worker `w`'s doorbell.
    pub(super) fn wake(&self, w: usize) -> &Arc<Doorbell> {
        &self.wakes[w]
    }

    /// Queues `msg` for worker `to` and wakes it if it sleeps. A worker that has exited
    /// drops the message, which only happens once nothing can be outstanding.
    pub(super) fn send(&self, to: usize, msg: Message) {
        if self.inboxes[to].send(msg).is_err() {
            return;
        }
        // Orders the queueing before the look at the flag; `set_sleeping` orders the flag
        // before the receiver's last look at its inbox, so one of the two sees the other.
        fence(Ordering::SeqCst);
        if self.sleeping[to].load(Ordering::SeqCst) {
            let _ = self.wakes[to].ring();
        }
    }

    /// Worker `w` is about to sleep (`true`) or has woken (`false`). A worker that sets it
    /// must look at its inbox once more before it sleeps: a sender that queued earlier may
    /// not have seen the flag.
    pub(super) fn set_sleeping(&self, w: usize, sleeping: bool) {
        self.sleeping[w].store(sleeping, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Publishes whether stopping worker `w` is idle; true when every worker is.
    pub(super) fn all_idle(&self, w: usize, idle: bool) -> bool {
        self.idle[w].store(idle, Ordering::SeqCst);
        idle && self.idle.iter().all(|f| f.load(Ordering::SeqCst))
    }

    /// Picks the worker for a new queue pair of a node whose first image is `home`: the
    /// image's owner, unless another worker has at least [`AWAY_COST`] + 1 queue pairs
    /// fewer. A queue pair beside its image never crosses workers; one away from it costs
    /// a message each way per command and keeps two workers polling for one node, which
    /// on a machine without a spare core leaves three threads on two cores. Spreading pays
    /// only once a worker is clearly busier, and a count can be briefly stale: a queue
    /// pair that just closed is counted until its worker sees the hang-up.
    pub(super) fn place(&self, home: Option<usize>) -> usize {
        let home = home.map(|i| self.owner(i));
        let w = (0..self.workers())
            .min_by_key(|&w| {
                let away = Some(w) != home;
                (self.loads[w].load(Ordering::Relaxed) + if away { AWAY_COST } else { 0 }, away)
            })
            .unwrap_or(0);
        self.loads[w].fetch_add(1, Ordering::Relaxed);
        w
    }

    /// Worker `w` closed `n` queue pairs.
    pub(super) fn closed(&self, w: usize, n: usize) {
        self.loads[w].fetch_sub(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(n: usize) -> (Arc<Mesh>, Vec<Receiver<Message>>) {
        Mesh::new((0..n).map(|_| Arc::new(Doorbell::new().unwrap())).collect())
    }

    #[test]
    fn images_and_queue_pairs_are_owned_round_robin() {
        let (m, _inboxes) = mesh(3);
        assert_eq!((0..7).map(|i| m.owner(i)).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2, 0]);
        // Queue pair ids are index + n * k.
        assert_eq!(m.origin((7 << 32) | 99), 1);
        assert_eq!(m.origin(3 << 32), 0);
    }

    #[test]
    fn a_queue_pair_stays_beside_its_image_until_another_worker_has_four_fewer() {
        let (m, _inboxes) = mesh(3);
        // Image 1 belongs to worker 1.
        let placed: Vec<usize> = (0..7).map(|_| m.place(Some(1))).collect();
        assert_eq!(placed, [1, 1, 1, 1, 0, 2, 1]);
        m.closed(1, 3);
        assert_eq!(m.place(Some(1)), 1, "back home once its worker is no busier");
        // A node without LUNs goes to the least loaded worker (loads are now 1, 3, 1).
        assert_eq!(m.place(None), 0);
    }

    #[test]
    fn a_sleeping_worker_is_rung_and_an_awake_one_is_not() {
        let (m, inboxes) = mesh(2);
        m.send(1, Message::Reset { image: 1 });
        assert!(!m.wake(1).wait(std::time::Duration::ZERO).unwrap(), "an awake worker is not rung");
        m.set_sleeping(1, true);
        m.send(1, Message::Reset { image: 3 });
        assert!(m.wake(1).wait(std::time::Duration::ZERO).unwrap(), "a sleeping worker is rung");
        let got: Vec<_> = inboxes[1].try_iter().collect();
        assert!(matches!(got[..], [Message::Reset { image: 1 }, Message::Reset { image: 3 }]), "{got:?}");
    }

    #[test]
    fn workers_stop_only_when_all_are_idle() {
        let (m, _inboxes) = mesh(2);
        assert!(!m.all_idle(0, true));
        assert!(!m.all_idle(1, false));
        assert!(m.all_idle(1, true));
        assert!(m.all_idle(0, true));
    }
}
