//! Health checks of service cluster backends: a TCP connect to the backend's own address
//! and the service port, from inside the backend's network namespace (the gateway has no
//! address on the LANs it switches). A backend goes down after `failures` failed checks in
//! a row and comes back after `passes` passed ones ([`Tally`], sans-IO). The thread that
//! runs the checks ([`spawn`]) probes every due backend at once with non-blocking
//! connects, so one slow backend delays nobody.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::network::CheckPlan;

/// One backend of one service to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The LAN's slot.
    pub lan: usize,
    pub cluster: String,
    pub port: u16,
    pub node: String,
    /// The backend's namespace (`None`: the gateway's own).
    pub netns: Option<String>,
    /// The backend's own address.
    pub addr: Ipv4Addr,
    pub check: CheckPlan,
}

type Key = (usize, String, u16, String);

fn key(t: &Target) -> Key {
    (t.lan, t.cluster.clone(), t.port, t.node.clone())
}

/// Consecutive results per backend, and whether each is up by them.
#[derive(Debug, Default)]
pub struct Tally {
    state: HashMap<Key, (bool, u32)>,
}

impl Tally {
    /// Records a check of `t`; returns the backend's new state when this check changes it.
    /// A backend starts up: it takes `failures` failures in a row to go down, then
    /// `passes` passes in a row to come back.
    pub fn record(&mut self, t: &Target, ok: bool) -> Option<bool> {
        let (up, run) = self.state.entry(key(t)).or_insert((true, 0));
        if ok == *up {
            *run = 0;
            return None;
        }
        *run += 1;
        let needed = if *up { t.check.failures } else { t.check.passes };
        if *run >= needed.max(1) {
            *up = ok;
            *run = 0;
            return Some(ok);
        }
        None
    }

    /// Forgets backends that are no longer targets.
    pub fn keep(&mut self, targets: &[Target]) {
        let live: std::collections::HashSet<Key> = targets.iter().map(key).collect();
        self.state.retain(|k, _| live.contains(k));
    }
}

/// Runs the checks until `stop`: `targets` says what to check (read each round), and
/// `report` hears each change of a backend's state.
pub fn spawn(
    targets: impl Fn() -> Vec<Target> + Send + 'static,
    report: impl Fn(&Target, bool) + Send + 'static,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("netvirt-health".into()).spawn(move || {
        let mut tally = Tally::default();
        let mut due: HashMap<Key, Instant> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let all = targets();
            tally.keep(&all);
            due.retain(|k, _| all.iter().any(|t| key(t) == *k));
            let now = Instant::now();
            let ready: Vec<&Target> = all.iter().filter(|t| due.get(&key(t)).is_none_or(|&d| d <= now)).collect();
            if !ready.is_empty() {
                let timeout = ready.iter().map(|t| t.check.interval / 2).min().unwrap_or_default().min(Duration::from_secs(1));
                for (t, ok) in ready.iter().zip(probe_all(&ready, timeout)) {
                    due.insert(key(t), now + t.check.interval);
                    if let Some(up) = tally.record(t, ok) {
                        tracing::info!(cluster = %t.cluster, port = t.port, node = %t.node, up, "backend health changed");
                        report(t, up);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Connects to every target at once; whether each connected within `timeout`.
fn probe_all(targets: &[&Target], timeout: Duration) -> Vec<bool> {
    let socks: Vec<Option<OwnedFd>> = targets.iter().map(|t| start(t).ok()).collect();
    let deadline = Instant::now() + timeout;
    let mut done: Vec<Option<bool>> = socks.iter().map(|s| if s.is_none() { Some(false) } else { None }).collect();
    while done.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let pending: Vec<usize> = (0..socks.len()).filter(|&i| done[i].is_none()).collect();
        let mut fds: Vec<PollFd<'_>> =
            pending.iter().map(|&i| PollFd::new(socks[i].as_ref().expect("pending"), PollFlags::OUT)).collect();
        let ts = rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
        if poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            continue;
        }
        let events: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
        drop(fds);
        for (&i, ev) in pending.iter().zip(events) {
            if !ev.is_empty() {
                let fd = socks[i].as_ref().expect("pending");
                done[i] = Some(matches!(rustix::net::sockopt::socket_error(fd), Ok(Ok(()))));
            }
        }
    }
    done.into_iter().map(|d| d.unwrap_or(false)).collect()
}

/// A non-blocking socket in the target's namespace with its connect started.
fn start(t: &Target) -> io::Result<OwnedFd> {
    let make = || -> io::Result<OwnedFd> {
        Ok(rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?)
    };
    // A socket belongs to the namespace it was made in, whoever uses it later.
    let fd = match &t.netns {
        Some(ns) => crate::host::run_in(ns, make)?,
        None => make()?,
    };
    match rustix::net::connect(&fd, &SocketAddrV4::new(t.addr, t.port)) {
        Ok(()) => Ok(fd),
        Err(e) if e == rustix::io::Errno::INPROGRESS => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(failures: u32, passes: u32) -> Target {
        Target {
            lan: 0,
            cluster: "web".into(),
            port: 80,
            node: "a".into(),
            netns: None,
            addr: Ipv4Addr::LOCALHOST,
            check: CheckPlan { interval: Duration::from_secs(1), failures, passes },
        }
    }

    #[test]
    fn a_backend_goes_down_after_failures_in_a_row_and_back_after_passes() {
        let t = target(3, 2);
        let mut tally = Tally::default();
        assert_eq!(tally.record(&t, false), None);
        assert_eq!(tally.record(&t, false), None);
        assert_eq!(tally.record(&t, true), None, "a pass breaks the run");
        assert_eq!(tally.record(&t, false), None);
        assert_eq!(tally.record(&t, false), None);
        assert_eq!(tally.record(&t, false), Some(false));
        assert_eq!(tally.record(&t, false), None);
        assert_eq!(tally.record(&t, true), None);
        assert_eq!(tally.record(&t, true), Some(true));
        tally.keep(&[]);
        assert!(tally.state.is_empty());
    }

    #[test]
    fn a_probe_passes_on_a_listening_port_and_fails_on_a_closed_one() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = Target { port: l.local_addr().unwrap().port(), ..target(1, 1) };
        let closed_port = {
            let c = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            c.local_addr().unwrap().port()
        };
        let closed = Target { port: closed_port, ..target(1, 1) };
        assert_eq!(probe_all(&[&open, &closed], Duration::from_secs(1)), vec![true, false]);
    }
}
