//! How a worker sleeps when it has nothing to do: in its io_uring, on one-shot polls of
//! its wake doorbell and of each queue pair's doorbell and socket, or in `poll(2)` where
//! io_uring is unavailable. Either way it notices nodes that hang up or chatter on their
//! sockets.

use std::os::fd::AsFd;
use std::time::Duration;

use super::{Worker, ATTACHED_TOKENS, IGNORED_TOKEN, WAKE_TOKEN};
use crate::engine::host::UringHost;
use crate::ring::server::admission::Violation;
use crate::ring::server::conn::Conn;
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
            if c.attached.is_some() {
                // The node side is in this thread: only the peer's socket can wake it.
                arm_attached(host, c, &mut self.attached_tokens);
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
        self.dispatch(&mut events);
        self.events = events;
    }

    /// Pumps every attachment. Those whose socket was found empty get a poll that says
    /// when it has more, and the polls that fired since the last pass are taken.
    pub(super) fn pump_attached(&mut self) -> bool {
        let host = self.host.as_deref();
        let mut progress = false;
        let mut waiting = false;
        for c in &mut self.conns {
            if c.attached.is_none() {
                continue;
            }
            progress |= c.pump(host.is_some());
            if let (Some(h), false) = (host, c.attached_readable) {
                if c.attached_poll.is_none() {
                    arm_attached(h, c, &mut self.attached_tokens);
                }
                waiting = true;
            }
        }
        let Some(h) = host.filter(|_| waiting) else { return progress };
        // A look at the completion queue; a syscall only when the kernel has completions
        // to post.
        let mut events = std::mem::take(&mut self.events);
        let reaped = h.reap(crate::engine::host::Key::WORKER, &mut events, false, None);
        match reaped {
            Ok(()) => self.dispatch(&mut events),
            Err(e) => tracing::error!(error = %e, "reaping the worker's ring failed"),
        }
        self.events = events;
        progress
    }

    /// Acts on the worker's own completions: doorbells rung, sockets ready or hung up.
    fn dispatch(&mut self, events: &mut Vec<(u32, i32)>) {
        for (token, res) in events.drain(..) {
            if token == WAKE_TOKEN {
                self.wake_armed = false;
                let _ = self.wake.drain();
                continue;
            }
            if token >= ATTACHED_TOKENS {
                // The attachment's socket is ready (or its poll was cancelled to change
                // its mask): it is read on the next pass.
                if let Some(c) = self.conns.iter_mut().find(|c| c.attached_poll.is_some_and(|(t, _)| t == token)) {
                    c.attached_poll = None;
                    c.attached_readable = true;
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
    }

    /// Polls doorbells and sockets; marks hung-up or chattering nodes dead.
    /// Attachments' sockets are read on the next pass whatever they said.
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
                c.attached_readable = true;
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

/// Arms a one-shot poll of `c`'s attachment for what it waits for, cancelling one armed
/// for something else; each poll gets a fresh token, so a cancelled one's late completion
/// names nobody.
fn arm_attached(host: &UringHost, c: &mut Conn, tokens: &mut u32) {
    use std::os::fd::AsRawFd;
    let Some(a) = &c.attached else { return };
    let want = a.interest();
    if let Some((token, _)) = c.attached_poll.filter(|&(_, mask)| mask != want) {
        if let Err(e) = host.poll_remove(token, IGNORED_TOKEN) {
            tracing::warn!(error = %e, "could not cancel an attachment's poll");
            return;
        }
        c.attached_poll = None;
    }
    if c.attached_poll.is_some() || want == 0 {
        return;
    }
    *tokens = (*tokens + 1) % (IGNORED_TOKEN - ATTACHED_TOKENS);
    let token = ATTACHED_TOKENS + *tokens;
    match host.poll_add(a.fd().as_raw_fd(), want as u32, token) {
        Ok(()) => c.attached_poll = Some((token, want)),
        Err(e) => tracing::error!(error = %e, "arming a poll in the worker's ring failed"),
    }
}
