//! Redundant gateways (`[[gateway]]`): which gateway executes I/O for each LUN, and how a
//! LUN moves from one to another without two ever writing it at once.
//!
//! - **Ownership** of a LUN is an exclusive `flock(2)` on its lock file under
//!   `DATA_DIR/gateways/luns/`. Only the holder's target port group is active/optimized;
//!   every other gateway answers NOT READY (standby, or transitioning while it takes the
//!   LUN). The kernel drops the lock only once the holder has no file left open: after a
//!   deliberate release, or after the process (every thread, the io_uring workers among
//!   them) has exited, so no write of the old owner can land after the new one starts.
//! - **Leases.** Every gateway renews `DATA_DIR/gateways/<id>.lease` (pid, start time,
//!   counter) every tick. A peer is alive while its process exists and its counter moves
//!   within the lease (`[storage] lease_ms`).
//! - **Who serves a LUN**: its preferred gateway (the config deals LUNs round the
//!   gateways) while that is alive, else the first alive gateway in id order.
//! - **Takeover.** A gateway that should serve a LUN takes its lock. A dead owner's lock
//!   is free at once. An owner whose process exists but whose lease has lapsed (stopped,
//!   hung) is fenced first: SIGKILL through a pidfd, checked against the start time its
//!   lease recorded, then the lock is taken once the kernel has released it. The new owner
//!   reads the saved reservation state before it goes active.
//! - **Handover** (failback, shutdown): the owner goes transitioning, so new commands are
//!   refused; waits for what is in flight; flushes; then releases the lock and goes to
//!   standby. COMPARE AND WRITE and every other command thus finishes on one gateway.
//!
//! The fence assumes the gateways share a host (one kernel's locks and process table).
//! Gateways on two hosts need shared storage that fences the same way, for example SCSI
//! persistent reservations on the backing devices and a STONITH agent in place of the
//! kill; this module does not provide that.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scsi::alua::AccessState;

use crate::registry::Images;

/// A LUN the gateways share.
#[derive(Debug, Clone)]
pub struct SharedLun {
    /// The image's index in the ring server.
    pub index: usize,
    /// PAN and image name, for the lock file and logs.
    pub pan: String,
    /// Image name.
    pub name: String,
    /// The gateway that serves it while alive.
    pub preferred: u16,
}

/// What this gateway needs to know to take part.
#[derive(Debug, Clone)]
pub struct Plan {
    /// This gateway's id.
    pub me: u16,
    /// Every gateway's id, ascending.
    pub ids: Vec<u16>,
    /// How long a lease lasts unrenewed.
    pub lease: Duration,
    /// `DATA_DIR/gateways`.
    pub dir: PathBuf,
    /// The LUNs.
    pub luns: Vec<SharedLun>,
}

/// A peer's lease as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    pid: u32,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22), so
    /// a reused pid is not taken for it.
    start: u64,
    counter: u64,
}

impl Lease {
    fn encode(&self) -> String {
        format!("pangate-lease 1 {} {} {}\n", self.pid, self.start, self.counter)
    }

    fn decode(text: &str) -> Option<Lease> {
        let mut f = text.trim_end().split(' ');
        if (f.next()?, f.next()?) != ("pangate-lease", "1") {
            return None;
        }
        let lease =
            Lease { pid: f.next()?.parse().ok()?, start: f.next()?.parse().ok()?, counter: f.next()?.parse().ok()? };
        f.next().is_none().then_some(lease)
    }
}

/// A peer as this gateway sees it.
#[derive(Debug, Default)]
struct Peer {
    lease: Option<Lease>,
    /// When its counter last moved (or it was first seen).
    moved: Option<Instant>,
}

/// What a peer is, for deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Renewing its lease.
    Alive,
    /// No lease, or its process is gone: it holds nothing.
    Dead,
    /// Its process exists but its lease lapsed: it may hold locks and must be fenced.
    Hung,
    /// No lease yet, within a lease of this gateway's start: it may be starting too.
    Unknown,
}

/// The running ownership loop.
#[derive(Debug)]
pub struct Redundancy {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Redundancy {
    /// Writes the first lease and starts the loop on its own thread.
    pub fn start(plan: Plan, images: Arc<dyn Images>) -> io::Result<Redundancy> {
        std::fs::create_dir_all(plan.dir.join("luns"))?;
        let mut owner = Owner::new(plan, images)?;
        owner.renew()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("pangate-alua".into()).spawn(move || owner.run(&flag))?;
        Ok(Redundancy { stop, thread: Some(thread) })
    }

    /// Hands every LUN this gateway serves over (quiesced, flushed, released) and removes
    /// its lease, so the peers take them at once.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The loop's state.
struct Owner {
    plan: Plan,
    images: Arc<dyn Images>,
    lease: Lease,
    peers: Vec<(u16, Peer)>,
    /// Per LUN: the lock file while this gateway owns it.
    held: Vec<Option<File>>,
    /// Per LUN: the states last set, to set them only when they change.
    shown: Vec<Vec<(u16, AccessState)>>,
    tick: Duration,
    started: Instant,
}

impl Owner {
    fn new(plan: Plan, images: Arc<dyn Images>) -> io::Result<Owner> {
        let pid = std::process::id();
        let start = process_start(pid).ok_or_else(|| io::Error::other("cannot read this process's start time"))?;
        let peers = plan.ids.iter().filter(|&&id| id != plan.me).map(|&id| (id, Peer::default())).collect();
        let n = plan.luns.len();
        let tick = (plan.lease / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
        Ok(Owner {
            plan,
            images,
            lease: Lease { pid, start, counter: 0 },
            peers,
            held: (0..n).map(|_| None).collect(),
            shown: vec![Vec::new(); n],
            tick,
            started: Instant::now(),
        })
    }

    fn lease_path(&self, id: u16) -> PathBuf {
        self.plan.dir.join(format!("{id}.lease"))
    }

    /// Writes this gateway's lease with the next counter: a rename over the old file, not
    /// synced (a lease means something only to live processes on this host).
    fn renew(&mut self) -> io::Result<()> {
        self.lease.counter += 1;
        let path = self.lease_path(self.plan.me);
        let tmp = path.with_extension("lease.tmp");
        std::fs::write(&tmp, self.lease.encode())?;
        std::fs::rename(&tmp, &path)
    }

    fn run(mut self, stop: &AtomicBool) {
        tracing::info!(gateway = self.plan.me, luns = self.plan.luns.len(), lease = ?self.plan.lease, "redundant gateway: taking part");
        while !stop.load(Ordering::Acquire) {
            if let Err(e) = self.renew() {
                tracing::error!(error = %e, "cannot renew this gateway's lease");
            }
            self.look_at_peers();
            for i in 0..self.plan.luns.len() {
                self.settle(i);
            }
            std::thread::sleep(self.tick);
        }
        for i in 0..self.plan.luns.len() {
            if self.held[i].is_some() {
                self.hand_over(i);
            }
        }
        let _ = std::fs::remove_file(self.lease_path(self.plan.me));
        tracing::info!(gateway = self.plan.me, "redundant gateway: every LUN handed over");
    }

    fn look_at_peers(&mut self) {
        let now = Instant::now();
        let dir = self.plan.dir.clone();
        for (id, peer) in &mut self.peers {
            let lease = std::fs::read_to_string(dir.join(format!("{id}.lease"))).ok().and_then(|t| Lease::decode(&t));
            if lease.map(|l| (l.pid, l.start, l.counter)) != peer.lease.map(|l| (l.pid, l.start, l.counter)) {
                peer.moved = Some(now);
            }
            peer.lease = lease;
        }
    }

    fn health(&self, id: u16) -> Health {
        if id == self.plan.me {
            return Health::Alive;
        }
        let Some((_, peer)) = self.peers.iter().find(|(p, _)| *p == id) else { return Health::Dead };
        let Some(lease) = peer.lease else {
            // Gateways started together: give the other one a lease to show up before
            // taking what it prefers.
            return match self.started.elapsed() < self.plan.lease {
                true => Health::Unknown,
                false => Health::Dead,
            };
        };
        if process_start(lease.pid) != Some(lease.start) {
            return Health::Dead;
        }
        match peer.moved {
            Some(t) if t.elapsed() < self.plan.lease => Health::Alive,
            _ => Health::Hung,
        }
    }

    /// Who should serve LUN `i`: its preferred gateway if alive, else the first alive one;
    /// `None` while one ahead of it in that order may still be starting.
    fn server_of(&self, i: usize) -> Option<u16> {
        let preferred = self.plan.luns[i].preferred;
        for id in std::iter::once(preferred).chain(self.plan.ids.iter().copied()) {
            match self.health(id) {
                Health::Alive => return Some(id),
                Health::Unknown => return None,
                Health::Dead | Health::Hung => {}
            }
        }
        None
    }

    fn settle(&mut self, i: usize) {
        let server = self.server_of(i);
        let mine = server == Some(self.plan.me);
        match (self.held[i].is_some(), mine) {
            (true, false) => self.hand_over(i),
            (false, true) => self.take(i),
            (true, true) => {}
            (false, false) => {
                // Another gateway serves it: standby here, active/optimized there.
                let states = self.states(server, None);
                let changed = self.shown[i] != states;
                if self.show(i, states, false) && changed {
                    if let Some(server) = server {
                        let lun = &self.plan.luns[i];
                        tracing::info!(pan = %lun.pan, image = %lun.name, gateway = self.plan.me, server, "LUN on standby here");
                    }
                }
            }
        }
    }

    /// The states of every group when `server` serves the LUN; `me` overrides this
    /// gateway's own.
    fn states(&self, server: Option<u16>, me: Option<AccessState>) -> Vec<(u16, AccessState)> {
        self.plan
            .ids
            .iter()
            .map(|&id| {
                let state = match (id == self.plan.me, me) {
                    (true, Some(s)) => s,
                    _ if Some(id) == server => AccessState::ActiveOptimized,
                    _ if server.is_none() => AccessState::Transitioning,
                    _ => AccessState::Standby,
                };
                (id, state)
            })
            .collect()
    }

    fn show(&mut self, i: usize, states: Vec<(u16, AccessState)>, takeover: bool) -> bool {
        if self.shown[i] == states && !takeover {
            return true;
        }
        match self.images.set_access(self.plan.luns[i].index, &states, takeover) {
            Ok(()) => {
                self.shown[i] = states;
                true
            }
            Err(e) => {
                let lun = &self.plan.luns[i];
                tracing::error!(pan = %lun.pan, image = %lun.name, error = %e, "cannot set the LUN's access state");
                false
            }
        }
    }

    fn lock_path(&self, i: usize) -> PathBuf {
        let lun = &self.plan.luns[i];
        self.plan.dir.join("luns").join(&lun.pan).join(format!("{}.lock", lun.name))
    }

    /// Takes LUN `i`: its lock (fencing a hung holder first), then its reservations, then
    /// the active state.
    fn take(&mut self, i: usize) {
        let me = self.plan.me;
        let transitioning = self.states(Some(me), Some(AccessState::Transitioning));
        self.show(i, transitioning, false);
        let path = self.lock_path(i);
        let file = match try_lock(&path) {
            Ok(Some(f)) => f,
            Ok(None) => {
                // Held: by a peer that is handing it over, or by one that must be fenced.
                for id in self.plan.ids.clone() {
                    if self.health(id) == Health::Hung {
                        self.fence(id);
                    }
                }
                return;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot lock the LUN");
                return;
            }
        };
        let active = self.states(Some(me), None);
        if self.show(i, active, true) {
            let lun = &self.plan.luns[i];
            tracing::info!(pan = %lun.pan, image = %lun.name, gateway = me, "LUN active/optimized here");
            self.held[i] = Some(file);
        }
    }

    /// Gives LUN `i` up: transitioning (new commands refused), in-flight finished and
    /// flushed, lock released, standby.
    fn hand_over(&mut self, i: usize) {
        let me = self.plan.me;
        let transitioning = self.states(None, Some(AccessState::Transitioning));
        self.show(i, transitioning, false);
        let lun = self.plan.luns[i].clone();
        if let Err(e) = self.images.quiesce(lun.index) {
            // Keep the lock: the LUN stays transitioning here, and nobody else writes it.
            tracing::error!(pan = %lun.pan, image = %lun.name, error = %e, "cannot quiesce the LUN; keeping it");
            return;
        }
        self.held[i] = None;
        let server = self.server_of(i).filter(|&s| s != me);
        let standby = self.states(server, Some(AccessState::Standby));
        self.show(i, standby, false);
        tracing::info!(pan = %lun.pan, image = %lun.name, gateway = me, to = ?server, "LUN handed over");
    }

    /// Kills a peer whose process exists but whose lease lapsed, so its locks go.
    fn fence(&mut self, id: u16) {
        let Some((_, peer)) = self.peers.iter().find(|(p, _)| *p == id) else { return };
        let Some(lease) = peer.lease else { return };
        match kill_if(lease.pid, lease.start) {
            Ok(true) => {
                tracing::warn!(gateway = id, pid = lease.pid, lease = ?self.plan.lease, "fenced a gateway whose lease lapsed (SIGKILL)")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(gateway = id, pid = lease.pid, error = %e, "cannot fence the gateway"),
        }
    }
}

/// An exclusive lock on `path` (created if missing), or `None` while another holds it.
/// The file is close-on-exec, so a child the gateway forks holds the lock only until it
/// execs; a peer waiting for it tries again at its next tick.
fn try_lock(path: &Path) -> io::Result<Option<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A process's start time in clock ticks since boot, if it exists and has not exited (a
/// zombie's files, and so its locks, are gone).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold spaces and parentheses: count from its closing one.
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ');
    // Field 3, the state, is the first after the name; the start time is field 22.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// SIGKILLs `pid` if it is still the process that started at `start`; whether it did.
fn kill_if(pid: u32, start: u64) -> io::Result<bool> {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else { return Ok(false) };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // The pidfd pins the process: checked after opening it, the start time cannot belong
    // to another that took the pid meanwhile.
    if process_start(pid.as_raw_nonzero().get() as u32) != Some(start) {
        return Ok(false);
    }
    rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_damage_is_ignored() {
        let l = Lease { pid: 42, start: 123_456, counter: 7 };
        assert_eq!(Lease::decode(&l.encode()), Some(l));
        assert_eq!(Lease::decode("pangate-lease 1 42 123456"), None);
        assert_eq!(Lease::decode("pangate-lease 2 42 1 7\n"), None);
        assert_eq!(Lease::decode("pangate-lease 1 42 1 7 8\n"), None);
        assert_eq!(Lease::decode(""), None);
    }

    #[test]
    fn this_process_has_a_start_time_and_a_dead_pid_none() {
        assert!(process_start(std::process::id()).is_some());
        assert_eq!(process_start(u32::MAX / 2), None);
    }

    #[test]
    fn a_lock_is_exclusive_until_its_file_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.lock");
        let first = try_lock(&path).unwrap().expect("free at first");
        assert!(try_lock(&path).unwrap().is_none(), "a second open file description is refused");
        drop(first);
        // A child another thread is forking shares the description until it execs (the
        // file is close-on-exec), so the lock may outlive the drop by that long.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while try_lock(&path).unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "still locked 5 s after the holder closed it");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn kill_if_spares_a_process_that_is_not_the_one_the_lease_names() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let start = process_start(child.id()).unwrap();
        assert!(!kill_if(child.id(), start + 1).unwrap(), "another start time: not ours to kill");
        assert!(child.try_wait().unwrap().is_none());
        assert!(kill_if(child.id(), start).unwrap());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
}
