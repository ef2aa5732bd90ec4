//! The completion side of a queue pair: its thread, which drains STATs, retries, replies,
//! notices a broken or silent gateway and reconnects; polling for a lone command on the
//! submitting thread; and what each response does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    drain_eventfd, lost, retryable, run, take_all, take_held, wait_readable, AreaData, Data, Done, Initiator,
    LinkError, Outcome, QueuePair, Region, Response, State, WaitFds, HEARTBEATS_UNANSWERED, HEARTBEAT_EVERY, IDLE_WAIT,
    MAX_RETRIES,
};
use crate::proto::ControlOp;

impl QueuePair {
    /// The completion thread: drains STATs, retries, replies, notices a broken or silent
    /// gateway, and reconnects.
    pub(super) fn complete_loop(self: Arc<Self>, mut fds: Option<WaitFds>) {
        let mut responses = Vec::new();
        let mut finished: Vec<(Done, Outcome)> = Vec::new();
        let mut socket_news = false;
        loop {
            if self.closing.load(Ordering::Acquire) {
                let mut st = self.lock();
                let mut failed = take_all(&mut st, LinkError::Closing);
                failed.extend(take_held(&mut st, LinkError::Closing));
                failed.extend(st.deferred.drain(..).map(|(_, m)| (m.pending.done, lost(LinkError::Closing))));
                failed.extend(st.moving.drain(..).map(|(_, _, m)| (m.pending.done, lost(LinkError::Closing))));
                st.conn = None;
                drop(st);
                run(failed);
                return;
            }
            let Some((wake, sock)) = fds.as_ref() else {
                self.redispatch();
                run(self.expire_held());
                fds = self.reconnect();
                continue;
            };
            let mut st = self.lock();
            // The socket only has news when the gateway closed it (or broke the protocol).
            let polled = st.conn.as_mut().map(|c| {
                if std::mem::take(&mut socket_news) {
                    c.check_connected()?;
                }
                c.poll(&mut responses, Duration::ZERO)
            });
            let broken = match polled {
                Some(Ok(())) => None,
                Some(Err(e)) => Some(e.to_string()),
                None => Some("connection dropped".into()),
            };
            if let Some(reason) = broken {
                tracing::warn!(queue = self.index, %reason, in_flight = st.pending.len(), "lost the gateway");
                let failed = self.tear_down(&mut st, LinkError::Down);
                drop(st);
                run(failed);
                self.forward_moving();
                fds = None;
                continue;
            }
            let moved = !responses.is_empty();
            let mut kick = false;
            for r in responses.drain(..) {
                kick |= self.finish(&mut st, r, &mut finished);
            }
            kick |= self.send_deferred(&mut st, &mut finished);
            if kick {
                if let Some(Err(e)) = st.conn.as_mut().map(Initiator::kick) {
                    tracing::warn!(queue = self.index, error = %e, "cannot ring the gateway");
                }
            }
            let moving = std::mem::take(&mut st.moving);
            let due = Self::next_due(&st);
            let now = Instant::now();
            if st.pending.values().any(|p| now.duration_since(p.since) > self.opts.io_timeout) {
                tracing::warn!(queue = self.index, timeout = ?self.opts.io_timeout, "the gateway did not answer in time; dropping the connection");
                let failed = self.tear_down(&mut st, LinkError::Timeout);
                drop(st);
                run(failed);
                self.forward(moving);
                self.forward_moving();
                fds = None;
                continue;
            }
            if now >= st.next_heartbeat {
                st.next_heartbeat = now + HEARTBEAT_EVERY;
                if st.heartbeats.len() < HEARTBEATS_UNANSWERED {
                    // A full ring just means commands are flowing, which says as much.
                    if let Some(Ok(seq)) = st.conn.as_mut().map(|c| c.control(ControlOp::Heartbeat, 0, 0, 0, None)) {
                        st.heartbeats.push(seq);
                    }
                }
            }
            let armed_clean = !moved
                && match st.conn.as_mut().map(Initiator::arm_doorbell) {
                    Some(Ok(arrived)) => !arrived,
                    _ => false,
                };
            if moved {
                self.unlock_and_wake(st);
            } else {
                drop(st);
            }
            run(std::mem::take(&mut finished));
            self.forward(moving);
            if armed_clean {
                let wait = due.map_or(IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()).min(IDLE_WAIT));
                socket_news = wait_readable(wake, sock, wait);
                drain_eventfd(wake);
            }
        }
    }

    /// Polls the rings for up to `spin` until command `seq` has completed, running the
    /// callbacks of whatever completes meanwhile; says whether it did. The node says it
    /// polls while this runs, so the gateway does not ring the completion thread; on the
    /// way out the doorbell is armed again, and any STAT that arrived before that is taken
    /// here, so the completion thread, which may be asleep, never misses one.
    pub(super) fn poll_for(&self, seq: u32, spin: Duration) -> bool {
        let deadline = Instant::now() + spin;
        let mut responses = Vec::new();
        let mut finished = Vec::new();
        // Reading the clock costs more than a look at the rings: check it every few rounds.
        let mut round = 0u32;
        loop {
            let mut st = self.lock();
            let done = !st.pending.contains_key(&seq);
            let leaving = done || (round % 16 == 15 && Instant::now() >= deadline);
            let Some(conn) = st.conn.as_mut() else {
                // Torn down meanwhile: the command was held or failed with the rest, and
                // completes on the completion thread.
                return false;
            };
            let polled = if leaving {
                conn.arm_doorbell().and_then(|arrived| match arrived {
                    true => conn.poll(&mut responses, Duration::ZERO),
                    false => Ok(()),
                })
            } else {
                conn.announce_polling();
                conn.poll(&mut responses, Duration::ZERO)
            };
            if let Err(e) = polled {
                tracing::warn!(queue = self.index, reason = %e, in_flight = st.pending.len(), "lost the gateway");
                let failed = self.tear_down(&mut st, LinkError::Down);
                drop(st);
                run(failed);
                self.forward_moving();
                return true;
            }
            let moved = !responses.is_empty();
            let mut kick = false;
            for r in responses.drain(..) {
                kick |= self.finish(&mut st, r, &mut finished);
            }
            if kick {
                if let Some(Err(e)) = st.conn.as_mut().map(Initiator::kick) {
                    tracing::warn!(queue = self.index, error = %e, "cannot ring the gateway");
                }
            }
            if moved {
                let moving = std::mem::take(&mut st.moving);
                self.unlock_and_wake(st);
                run(std::mem::take(&mut finished));
                self.forward(moving);
            } else {
                drop(st);
            }
            if leaving && !moved {
                return done;
            }
            round = round.wrapping_add(1);
            std::hint::spin_loop();
        }
    }

    /// Handles one response: retries it, or frees its region and queues its callback.
    /// Returns whether a command was sent again (so the gateway needs a kick).
    fn finish(&self, st: &mut State, r: Response, finished: &mut Vec<(Done, Outcome)>) -> bool {
        if let Some(at) = st.heartbeats.iter().position(|&s| s == r.seq) {
            st.heartbeats.swap_remove(at);
            return false;
        }
        let Some(mut p) = st.pending.remove(&r.seq) else {
            tracing::warn!(queue = self.index, seq = r.seq, "response for no command of ours");
            return false;
        };
        if self.router.is_some() {
            let mut slot = Some(p);
            if self.reroute(st, &r, &mut slot) {
                return false;
            }
            p = slot.expect("left when not rerouted");
        }
        let conn = st.conn.as_mut().expect("only called while connected");
        if let (true, Some(capacity_changed)) = (self.opts.retry, retryable(r.status, &r.sense)) {
            if p.retries < MAX_RETRIES {
                p.retries += 1;
                p.capacity_changed |= capacity_changed;
                if let Ok(seq) = conn.queue(p.target, p.lun, &p.cdb, p.data) {
                    st.pending.insert(seq, p);
                    return true;
                }
            }
        }
        let mut data = Vec::new();
        let mut in_area = None;
        let keep = if p.in_place { self.me.upgrade() } else { None };
        if p.lent {
            // The data is in the caller's pages, where the gateway put it, or went out from
            // them; either way they stay the caller's.
        } else if let (Data::In(region), Some(queue), Some(pages)) = (p.data, keep, p.region) {
            let len = r.transferred.min(region.len);
            let area = conn.shared_data_area();
            in_area = Some(AreaData { queue, area, pages, len, generation: st.generation });
            // Its pages go back when the caller drops it.
            p.region = None;
        } else if let Data::In(region) = p.data {
            let n = (r.transferred as usize).min(region.len as usize);
            data = vec![0u8; n];
            if let Err(e) = conn.read_data(Region { offset: region.offset, len: n as u32 }, &mut data) {
                tracing::warn!(queue = self.index, error = %e, "cannot read the data area");
                data.clear();
            }
        }
        if let Some(region) = p.region {
            conn.free(region);
        }
        finished.push((
            p.done,
            Outcome {
                result: Ok(r),
                data,
                capacity_changed: p.capacity_changed,
                in_area,
                lent: p.lent && matches!(p.data, Data::In(_)),
            },
        ));
        false
    }
}
