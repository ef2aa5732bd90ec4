//! Riding out a broken connection: tearing it down, holding what was in flight, failing it
//! once the hold is over, reconnecting with backoff, and sending the held commands again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    dup_wait_fds, lost, run, take_all, Data, Done, Initiator, InitiatorError, LinkError, Outcome, Pending, QueuePair,
    State, WaitFds, BACKOFF_MAX, BACKOFF_MIN, IDLE_WAIT,
};

/// How much longer than the reconnect timeout a queue pair holds I/O while another queue
/// pair of its link is back: two backoff periods and a handshake.
const PEER_GRACE: Duration = Duration::from_secs(14);

/// A command whose connection broke before its answer, to send again once reconnected.
pub(super) struct Held {
    pub(super) pending: Pending,
    /// The data area its region was in: mapped until the command is sent again, its
    /// data-out copied from it then.
    pub(super) area: Arc<crate::shm::SharedMemory>,
}

impl QueuePair {
    /// Drops the connection. When the gateway went away ([`LinkError::Down`]) and the link
    /// holds I/O through outages, every pending command is held to be sent again;
    /// otherwise (and for a gateway that stopped answering) they are taken to fail with
    /// `why`.
    pub(super) fn tear_down(&self, st: &mut State, why: LinkError) -> Vec<(Done, Outcome)> {
        if st.conn.is_some() {
            // Not counted as connected from here on, so nothing is moved back to it.
            self.peers.connected.fetch_sub(1, Ordering::AcqRel);
            if matches!(why, LinkError::Down | LinkError::Timeout) {
                // Redundant gateways: what was in flight goes to one that is connected.
                self.evacuate(st);
            }
        }
        let conn = st.conn.take();
        if let Some(c) = &conn {
            st.old_area = Some((st.generation, c.shared_data_area()));
        }
        st.generation += 1;
        st.heartbeats.clear();
        self.generation.store(st.generation, Ordering::Release);
        st.backoff = BACKOFF_MIN;
        st.next_attempt = Instant::now() + BACKOFF_MIN;
        st.refused = false;
        st.down_since.get_or_insert_with(Instant::now);
        if st.waiting > 0 {
            // Waiters find the connection gone once this thread unlocks.
            self.space.notify_all();
        }
        if why != LinkError::Down || self.opts.reconnect_timeout.is_zero() {
            let mut failed = take_all(st, why);
            failed.extend(take_held(st, why));
            return failed;
        }
        // Pending commands exist only while connected: a second tear-down finds none.
        if let Some(conn) = conn {
            let area = conn.shared_data_area();
            let mut held: Vec<Held> =
                st.pending.drain().map(|(_, pending)| Held { pending, area: area.clone() }).collect();
            held.sort_by_key(|h| h.pending.since);
            st.held.extend(held);
            if !st.held.is_empty() {
                tracing::info!(queue = self.index, held = st.held.len(), timeout = ?self.opts.reconnect_timeout, "holding in-flight I/O until the gateway is back");
            }
        }
        Vec::new()
    }

    /// Whether I/O is still held while the connection is down: within the reconnect
    /// timeout of the break; or, while another queue pair of the link is connected (the
    /// gateway is back) and the gateway has not refused this one, for [`PEER_GRACE`] more,
    /// one more full round of attempts. Never longer: a queue pair that cannot get back
    /// while its peers are connected (its socket gone, say) must not hold I/O for ever.
    pub(super) fn holding(&self, st: &State) -> bool {
        if self.opts.reconnect_timeout.is_zero() {
            return false;
        }
        let Some(since) = st.down_since else { return true };
        let down = since.elapsed();
        down < self.opts.reconnect_timeout
            || (self.peers.connected.load(Ordering::Acquire) > 0
                && !st.refused
                && down < self.opts.reconnect_timeout + PEER_GRACE)
    }

    /// Fails the held commands once the hold is over.
    pub(super) fn expire_held(&self) -> Vec<(Done, Outcome)> {
        let mut st = self.lock();
        if (st.held.is_empty() && st.deferred.is_empty()) || self.holding(&st) {
            return Vec::new();
        }
        tracing::warn!(queue = self.index, held = st.held.len(), timeout = ?self.opts.reconnect_timeout, "the gateway stayed away; failing held I/O");
        let failed = take_held(&mut st, LinkError::Down);
        let mut failed = failed;
        failed.extend(st.deferred.drain(..).map(|(_, m)| (m.pending.done, super::lost(LinkError::Down))));
        self.unlock_and_wake(st);
        failed
    }

    /// Sends the held commands again on the new connection, in the order they were first
    /// sent, each with a region of the new data area holding its data-out. One that no
    /// longer fits (a smaller data area) fails.
    fn resend_held(&self, st: &mut State) -> Vec<(Done, Outcome)> {
        let mut failed = Vec::new();
        let held = std::mem::take(&mut st.held);
        let n = held.len();
        let conn = st.conn.as_mut().expect("called once connected");
        for Held { mut pending, area } in held {
            // A lent command's pages stay with the caller: on the new connection it
            // carries its data in pages of its own, like any other.
            let lent = match (std::mem::take(&mut pending.lent), pending.data) {
                (true, Data::In(r) | Data::Out { region: r, .. }) => Some(r),
                _ => None,
            };
            let old = pending.region.take().or(lent);
            let region = match old {
                Some(r) => match conn.alloc(r.len) {
                    Some(new) => Some(new),
                    None => {
                        failed.push((pending.done, lost(LinkError::TooLarge)));
                        continue;
                    }
                },
                None => None,
            };
            pending.data = match (pending.data, region) {
                (Data::In(_), Some(r)) => Data::In(r),
                (Data::Out { staged, .. }, Some(r)) => {
                    let mut bytes = vec![0u8; r.len as usize];
                    let copied = old.map(|o| area.read(o.offset, &mut bytes)).unwrap_or(Ok(())).is_ok()
                        && conn.write_data(r, &bytes).is_ok();
                    if !copied {
                        conn.free(r);
                        failed.push((pending.done, lost(LinkError::Down)));
                        continue;
                    }
                    Data::Out { region: r, staged }
                }
                (data, _) => data,
            };
            pending.region = region;
            pending.since = Instant::now();
            match conn.queue(pending.target, pending.lun, &pending.cdb, pending.data) {
                Ok(seq) => {
                    st.pending.insert(seq, pending);
                }
                Err(e) => {
                    tracing::warn!(queue = self.index, error = %e, "cannot send a held command again");
                    if let Some(r) = pending.region {
                        conn.free(r);
                    }
                    failed.push((pending.done, lost(LinkError::Down)));
                }
            }
        }
        if n > 0 {
            tracing::info!(queue = self.index, resent = n - failed.len(), failed = failed.len(), "sent held I/O again");
            if let Err(e) = conn.kick() {
                tracing::warn!(queue = self.index, error = %e, "cannot ring the gateway");
            }
        }
        failed
    }

    /// One reconnect attempt when its time has come (at once when another queue pair of
    /// the link has just reconnected); otherwise a short sleep. Once connected, the held
    /// commands go out again.
    pub(super) fn reconnect(&self) -> Option<WaitFds> {
        let peer_back = {
            let mut st = self.lock();
            let now = self.peers.reconnects.load(Ordering::Acquire);
            std::mem::replace(&mut st.seen_reconnects, now) != now
        };
        let wait = self.lock().next_attempt.saturating_duration_since(Instant::now());
        if !wait.is_zero() && !peer_back {
            std::thread::sleep(wait.min(IDLE_WAIT));
            return None;
        }
        match Initiator::connect(&self.opts.socket, &self.opts.connect) {
            Ok(conn) => {
                let fds = match dup_wait_fds(&conn) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(queue = self.index, error = %e, "cannot duplicate the wait fds");
                        return None;
                    }
                };
                let mut st = self.lock();
                let down = st.down_since.take().map(|t| t.elapsed());
                tracing::info!(queue = self.index, after = ?down, "reconnected to the gateway");
                st.luns = conn.luns().to_vec();
                st.conn = Some(conn);
                st.backoff = BACKOFF_MIN;
                st.refused = false;
                st.failed_attempts = 0;
                self.peers.connected.fetch_add(1, Ordering::AcqRel);
                st.seen_reconnects = self.peers.reconnects.fetch_add(1, Ordering::AcqRel) + 1;
                let failed = self.resend_held(&mut st);
                self.unlock_and_wake(st);
                run(failed);
                Some(fds)
            }
            Err(e) => {
                let mut st = self.lock();
                st.refused = matches!(e, InitiatorError::Refused(_));
                st.failed_attempts += 1;
                // The first failure and then every power of two: why the mount is waiting.
                if st.failed_attempts.is_power_of_two() {
                    tracing::warn!(queue = self.index, error = %e, attempts = st.failed_attempts, retry_in = ?st.backoff, "reconnect failed");
                }
                st.next_attempt = Instant::now() + st.backoff;
                st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                None
            }
        }
    }
}

pub(super) fn take_held(st: &mut State, why: LinkError) -> Vec<(Done, Outcome)> {
    st.held.drain(..).map(|h| (h.pending.done, lost(why))).collect()
}
