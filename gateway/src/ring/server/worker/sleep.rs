//! How a worker sleeps when it has nothing to do: in its io_uring, on one-shot polls of
//! its wake doorbell and of each queue pair's doorbell and socket, or in `poll(2)` where
//! io_uring is unavailable. Either way it notices nodes that hang up or chatter on their
//! sockets.

use std::os::fd::AsFd;
use std::time::Duration;

use super::{Worker, ATTACHED_TOKENS, IGNORED_TOKEN, WAKE_TOKEN};
use crate::engine::host::UringHost;
use crate::ring::server::admission::Violation;
use crate::ring::shm;

impl Worker {
    /// Sleeps until a doorbell, a socket event, a message from another worker or the
    /// timeout, with the rings' polling flags cleared so nodes ring.
    pub(super) fn sleep(&mut self, timeout: Duration) {
        for c in &self.conns {
            c.cmd.set_polling(false);
            c.tran.set_polling(false);
        }
        self.mesh.set_sleeping(self.index, true);
        // Anything queued before the flag went up would not have rung: look once more.
        if let Ok(m) = self.inbox.try_recv() {
            self.early.push_back(m);
        }
        let pending = !self.early.is_empty()
            || self.conns.iter_mut().any(|c| c.cmd.pending().unwrap_or(1) > 0 || c.tran.pending().unwrap_or(1) > 0);
        if !pending {
            match self.host.clone() {
                Some(host) => self.wait_in_ring(&host, timeout),
                None => self.check_sockets(timeout),
            }
        }
        self.mesh.set_sleeping(self.index, false);
        for c in &self.conns {
            c.cmd.set_polling(true);
            c.tran.set_polling(true);
        }
    }

    /// Sleeps in the worker's io_uring: arms a one-shot poll on the wake doorbell and on
    /// each queue pair's doorbell and socket (those not still armed from an earlier sleep),
    /// and waits for any CQE there (these, or an engine's) or the timeout.
    fn wait_in_ring(&mut self, host: &UringHost, timeout: Duration) {
        use std::os::fd::AsRawFd;
        // A poll counts as armed once its SQE is queued; one that could not be queued is
        // tried again at the next sleep. The fds stay open while armed: a queue pair's polls
        // are removed before its fds close, and `wake` lives as long as the worker.
        let arm = |fd: i32, mask: i16, token: u32| match host.poll_add(fd, mask as u32, token) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "arming a poll in the worker's ring failed");
                false
            }
        };
        if !self.wake_armed {
            self.wake_armed = arm(self.wake.as_fd().as_raw_fd(), libc::POLLIN, WAKE_TOKEN);
        }
        for c in &mut self.conns {
            if let Some(a) = &c.attached {
                // The node side is in this thread: only the peer's socket can wake it.
                let want = a.interest();
                if let Some((token, _)) = c.attached_poll.filter(|&(_, mask)| mask != want) {
                    if let Err(e) = host.poll_remove(token, IGNORED_TOKEN) {
                        tracing::warn!(error = %e, "could not cancel an attachment's poll");
                        continue;
                    }
                    c.attached_poll = None;
                }
                if c.attached_poll.is_none() && want != 0 {
                    self.attached_tokens = (self.attached_tokens + 1) % (IGNORED_TOKEN - ATTACHED_TOKENS);
                    let token = ATTACHED_TOKENS + self.attached_tokens;
                    if arm(a.fd().as_raw_fd(), want, token) {
                        c.attached_poll = Some((token, want));
                    }
                }
                continue;
            }
            if !c.bell_armed {
                c.bell_armed = arm(c.to_gateway.as_fd().as_raw_fd(), libc::POLLIN, 2 * c.token);
            }
            if !c.sock_armed {
                c.sock_armed = arm(c.sock.as_raw_fd(), libc::POLLIN | libc::POLLRDHUP, 2 * c.token + 1);
            }
        }
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = host.wait(&mut events, timeout) {
            tracing::error!(error = %e, "waiting in the worker's ring failed");
            // Do not spin on a broken ring: nap as poll(2) would.
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
        }
        for (token, res) in events.drain(..) {
            if token == WAKE_TOKEN {
                self.wake_armed = false;
                let _ = self.wake.drain();
                continue;
            }
            if token >= ATTACHED_TOKENS {
                // The attachment's socket is ready: the wake is all it takes, as every
                // attachment is pumped on the next pass.
                if let Some(c) = self.conns.iter_mut().find(|c| c.attached_poll.is_some_and(|(t, _)| t == token)) {
                    c.attached_poll = None;
                }
                continue;
            }
            let Some(c) = self.conns.iter_mut().find(|c| c.token == token / 2) else { continue };
            if token % 2 == 0 {
                c.bell_armed = false;
                let _ = c.to_gateway.drain();
                continue;
            }
            c.sock_armed = false;
            if res < 0 {
                continue;
            }
            let revents = res as i16;
            if revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
                c.hang_up();
            } else if revents & libc::POLLIN != 0 {
                c.kill(Violation::SocketChatter);
            }
        }
        self.events = events;
    }

    /// Polls doorbells and sockets; marks hung-up or chattering nodes dead.
    pub(super) fn check_sockets(&mut self, timeout: Duration) {
        use rustix::event::{PollFd, PollFlags};
        let mut fds = vec![PollFd::new(&*self.wake, PollFlags::IN)];
        for c in &self.conns {
            fds.push(PollFd::new(&c.to_gateway, PollFlags::IN));
            match &c.attached {
                Some(a) => fds.push(PollFd::from_borrowed_fd(a.fd(), PollFlags::from_bits_retain(a.interest() as u16))),
                None => fds.push(PollFd::new(&c.sock, PollFlags::IN | PollFlags::RDHUP)),
            }
        }
        let conn_fds = fds.len();
        let engines: Vec<_> = self.owned.completion_fds().flatten().collect();
        fds.extend(engines.iter().map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN)));
        let ts = shm::poll_timeout(timeout);
        if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            return;
        }
        let events: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        // Drain the engines' eventfds before their completions are reaped: one signalled
        // after the drain stays readable, so the next sleep cannot miss it.
        for (fd, ev) in engines.iter().zip(&events[conn_fds..]) {
            if ev.contains(PollFlags::IN) {
                let _ = rustix::io::read(fd, &mut [0u8; 8]);
            }
        }
        drop(engines);
        let _ = self.wake.drain();
        for (i, c) in self.conns.iter_mut().enumerate() {
            let _ = c.to_gateway.drain();
            let ev = events[2 + 2 * i];
            if c.attached.is_some() {
                // Pumped on the next pass, whatever the socket said.
                continue;
            }
            if ev.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                c.hang_up();
            } else if ev.contains(PollFlags::IN) {
                c.kill(Violation::SocketChatter);
            }
        }
    }
}
