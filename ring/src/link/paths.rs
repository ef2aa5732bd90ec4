//! Redundant gateways: one set of queue pairs per gateway socket (a path), and each LUN's
//! commands sent on the path whose gateway serves it.
//!
//! The link learns the routes from the gateways' answers, as an ALUA-aware initiator does:
//! a gateway that does not serve a LUN answers NOT READY with TARGET PORT IN STANDBY STATE
//! (another gateway serves it) or ASYMMETRIC ACCESS STATE TRANSITION (it is moving). Such a
//! command is sent again on the next path that is connected, at once after a standby
//! answer and after a short pause after a transitioning one, and the LUN's route follows
//! it. A path whose gateway hangs up hands what it had in flight to a connected path the
//! same way. Failback needs nothing more: the gateway giving a LUN back answers
//! transitioning, then standby, and the commands follow to the one taking it.
//!
//! A command keeps moving between paths for at most the reconnect timeout (or the I/O
//! timeout, if longer); then its last answer goes to the caller.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use scsi::sense::parse_sense;
use scsi::Asc;

use super::{lost, Data, Done, LinkError, Outcome, Peers, Pending, QueuePair, State};
use crate::initiator::Response;

/// How long a command waits before it is sent again after a transitioning answer (or a
/// standby one with no other path to try).
const TRANSITION_PAUSE: Duration = Duration::from_millis(10);

/// Where each LUN's commands go.
#[derive(Debug)]
pub(super) struct Router {
    /// Per path, its queue pairs by index; set once the link has made them.
    queues: OnceLock<Vec<Vec<Weak<QueuePair>>>>,
    /// Per path, what its queue pairs know of each other (how many are connected).
    peers: Vec<Arc<Peers>>,
    /// The path of each (target, LUN) that has been refused somewhere; the others take
    /// the first path that is connected.
    routes: RwLock<HashMap<(u16, u16), usize>>,
}

/// A command on its way from one queue pair to another: its data-out copied out of the
/// area it was in, which it no longer holds.
pub(super) struct Moved {
    pub(super) pending: Pending,
    pub(super) out: Vec<u8>,
    pub(super) in_len: u32,
}

impl Router {
    pub(super) fn new(peers: Vec<Arc<Peers>>) -> Router {
        Router { queues: OnceLock::new(), peers, routes: RwLock::new(HashMap::new()) }
    }

    pub(super) fn set_queues(&self, queues: Vec<Vec<Weak<QueuePair>>>) {
        let _ = self.queues.set(queues);
    }

    fn up(&self, path: usize) -> bool {
        self.peers[path].connected.load(Ordering::Acquire) > 0
    }

    /// The path for a command to (target, lun) now.
    pub(super) fn path_for(&self, target: u16, lun: u16) -> usize {
        let route = self.routes.read().unwrap_or_else(|p| p.into_inner()).get(&(target, lun)).copied().unwrap_or(0);
        if self.up(route) {
            return route;
        }
        (0..self.peers.len()).find(|&p| self.up(p)).unwrap_or(route)
    }

    /// The next connected path after `from`, or `from` when no other is.
    fn next_after(&self, from: usize) -> usize {
        let n = self.peers.len();
        (1..n).map(|k| (from + k) % n).find(|&p| self.up(p)).unwrap_or(from)
    }

    /// (target, lun) was refused on `from`: it goes to the next connected path.
    fn refused(&self, target: u16, lun: u16, from: usize) -> usize {
        let to = self.next_after(from);
        self.routes.write().unwrap_or_else(|p| p.into_inner()).insert((target, lun), to);
        to
    }

    pub(super) fn queue(&self, path: usize, index: usize) -> Option<Arc<QueuePair>> {
        self.queues.get()?.get(path)?.get(index)?.upgrade()
    }
}

/// Whether a response is an ALUA refusal: `Some(true)` for standby or unavailable (another
/// gateway serves the LUN), `Some(false)` for transitioning.
fn alua_refusal(r: &Response) -> Option<bool> {
    const CHECK_CONDITION: u8 = 0x02;
    if r.status != CHECK_CONDITION {
        return None;
    }
    match parse_sense(&r.sense) {
        Some((0x2, asc, _)) if asc == Asc::TARGET_PORT_IN_STANDBY_STATE => Some(true),
        Some((0x2, asc, _)) if asc == Asc::TARGET_PORT_IN_UNAVAILABLE_STATE => Some(true),
        Some((0x2, asc, _)) if asc == Asc::ASYMMETRIC_ACCESS_STATE_TRANSITION => Some(false),
        _ => None,
    }
}

impl QueuePair {
    /// The queue pair of the same index on the path (target, lun) takes now, when that is
    /// not this one.
    pub(super) fn routed_elsewhere(&self, target: u16, lun: u16) -> Option<Arc<QueuePair>> {
        let router = self.router.as_ref()?;
        let path = router.path_for(target, lun);
        if path == self.path {
            return None;
        }
        router.queue(path, self.index)
    }

    /// Takes a pending command out of this queue pair's connection: its data-out copied
    /// out of the area, its pages freed.
    fn unload(&self, st: &mut State, mut p: Pending) -> Moved {
        let conn = st.conn.as_mut().expect("only called while connected");
        let (mut out, mut in_len) = (Vec::new(), 0);
        match p.data {
            Data::Out { region, .. } => {
                out = vec![0u8; region.len as usize];
                if let Err(e) = conn.read_data(region, &mut out) {
                    tracing::warn!(queue = self.index, error = %e, "cannot read the data area");
                }
            }
            Data::In(region) => in_len = region.len,
            Data::None => {}
        }
        if let Some(r) = p.region.take() {
            conn.free(r);
        }
        // Lent pages stay with the caller; the data went out above, or comes back as bytes.
        p.lent = false;
        p.data = Data::None;
        Moved { pending: p, out, in_len }
    }

    /// Handles an ALUA refusal with redundant gateways: the command moves to the next
    /// connected path (or waits here) and `true` is returned; `false` leaves the response
    /// to the caller (no other gateway, or it has moved for long enough).
    pub(super) fn reroute(&self, st: &mut State, r: &Response, p: &mut Option<Pending>) -> bool {
        let (Some(router), Some(standby)) = (self.router.as_ref(), alua_refusal(r)) else { return false };
        let Some(mut pending) = p.take() else { return false };
        let since = *pending.refused_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.opts.reconnect_timeout.max(self.opts.io_timeout) {
            *p = Some(pending);
            return false;
        }
        let to = router.refused(pending.target, pending.lun, self.path);
        let pause = if standby && to != self.path { Duration::ZERO } else { TRANSITION_PAUSE };
        let moved = self.unload(st, pending);
        st.moving.push((to, Instant::now() + pause, moved));
        true
    }

    /// Moves what a broken connection had in flight (and what waited here) to another
    /// connected path; `false` when this link has no other path up (the commands are then
    /// held here as usual).
    pub(super) fn evacuate(&self, st: &mut State) -> bool {
        let Some(router) = self.router.as_ref() else { return false };
        let to = router.next_after(self.path);
        if to == self.path {
            return false;
        }
        let pending: Vec<Pending> = st.pending.drain().map(|(_, p)| p).collect();
        let mut pending = pending;
        pending.sort_by_key(|p| p.since);
        for p in pending {
            let moved = self.unload(st, p);
            st.moving.push((to, Instant::now(), moved));
        }
        let waiting: Vec<_> = st.deferred.drain(..).collect();
        st.moving.extend(waiting.into_iter().map(|(due, m)| (to, due, m)));
        tracing::info!(
            queue = self.index,
            path = self.path,
            to,
            moved = st.moving.len(),
            "gateway lost: its commands go to another"
        );
        true
    }

    /// Hands the commands leaving this queue pair to their new ones (this one among
    /// them, for those that wait here), outside this one's lock.
    pub(super) fn forward(&self, moving: Vec<(usize, Instant, Moved)>) {
        for (path, due, moved) in moving {
            match self.router.as_ref().and_then(|r| r.queue(path, self.index)) {
                Some(q) => q.accept(due, moved),
                None => (moved.pending.done)(lost(LinkError::Down)),
            }
        }
    }

    /// Hands over whatever a tear-down left leaving, outside the lock.
    pub(super) fn forward_moving(&self) {
        let moving = std::mem::take(&mut self.lock().moving);
        self.forward(moving);
    }

    /// Takes a command from another queue pair of the link, to send at `due`.
    fn accept(&self, due: Instant, moved: Moved) {
        let mut st = self.lock();
        st.deferred.push((due, moved));
        // Wake the completion thread, which may be asleep on the doorbell.
        if let Some(conn) = st.conn.as_ref() {
            let _ = rustix::io::write(conn.wait_fds().0, &1u64.to_ne_bytes());
            return;
        }
        // This path went down meanwhile (its other queue pairs had not noticed yet).
        drop(st);
        self.redispatch();
    }

    /// Passes the commands waiting on this disconnected queue pair to another path that
    /// is connected, if there is one; otherwise they wait for this one's reconnect.
    pub(super) fn redispatch(&self) {
        let Some(router) = self.router.as_ref() else { return };
        let mut st = self.lock();
        if st.deferred.is_empty() || st.conn.is_some() {
            return;
        }
        let to = router.next_after(self.path);
        if to == self.path {
            return;
        }
        let waiting: Vec<_> = st.deferred.drain(..).map(|(due, m)| (to, due, m)).collect();
        drop(st);
        self.forward(waiting);
    }

    /// When the next command waiting here is due.
    pub(super) fn next_due(st: &State) -> Option<Instant> {
        st.deferred.iter().map(|(due, _)| *due).min()
    }

    /// Sends the commands waiting here whose time has come and that fit; fails those that
    /// have waited out the reconnect timeout with nowhere to go. Says whether any was
    /// sent (the gateway needs a kick).
    pub(super) fn send_deferred(&self, st: &mut State, finished: &mut Vec<(Done, Outcome)>) -> bool {
        if st.deferred.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut sent = false;
        let waiting = std::mem::take(&mut st.deferred);
        for (due, mut m) in waiting {
            let since = m.pending.refused_since.unwrap_or(m.pending.since);
            let Some(conn) = st.conn.as_mut().filter(|_| due <= now) else {
                if st.conn.is_none() && since.elapsed() > self.opts.reconnect_timeout {
                    finished.push((m.pending.done, lost(LinkError::Down)));
                } else {
                    st.deferred.push((due, m));
                }
                continue;
            };
            let need = (m.out.len() as u32).max(m.in_len);
            let region = match need {
                0 => None,
                n => match conn.alloc(n) {
                    Some(r) => Some(r),
                    None => {
                        st.deferred.push((due, m));
                        continue;
                    }
                },
            };
            if conn.outstanding() >= conn.queue_depth() as usize {
                if let Some(r) = region {
                    conn.free(r);
                }
                st.deferred.push((due, m));
                continue;
            }
            m.pending.data = match region {
                None => Data::None,
                Some(r) if m.out.is_empty() => Data::In(r),
                Some(r) => {
                    if conn.write_data(r, &m.out).is_err() {
                        conn.free(r);
                        finished.push((m.pending.done, lost(LinkError::Down)));
                        continue;
                    }
                    Data::Out { region: r, staged: false }
                }
            };
            m.pending.region = region;
            m.pending.since = now;
            let p = m.pending;
            match conn.queue(p.target, p.lun, &p.cdb, p.data) {
                Ok(seq) => {
                    st.pending.insert(seq, p);
                    sent = true;
                }
                Err(e) => {
                    tracing::warn!(queue = self.index, error = %e, "cannot send a command moved from another gateway");
                    if let Some(r) = p.region {
                        conn.free(r);
                    }
                    finished.push((p.done, lost(LinkError::Down)));
                }
            }
        }
        sent
    }
}
