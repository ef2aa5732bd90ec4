//! When a node with `failover = "auto"` is to be failed over, as a value: [`Watch`] is
//! told what the gateway sees of each node at each look ([`Signs`]) and says when one has
//! been unreachable long enough. It reads no clock and touches nothing; the admin's
//! watcher thread looks, and carries the failover out.
//!
//! A node is reachable while some channel to it works: an open queue pair, or an attached
//! port (a TAP that is there, a ring port with a client). A node whose queue pairs
//! heartbeat (every `pangate-ring` link does, once a second) and whose heartbeats stopped
//! is unreachable even with its queue pairs and TAPs still open: it hangs. Only a node seen
//! reachable since the gateway started is judged, so a restart of the gateway does not fail
//! over nodes that have not reconnected yet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the gateway sees of a node now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signs {
    /// Queue pairs open (iSCSI sessions' among them).
    pub queue_pairs: u32,
    /// Time since its last heartbeat, if it ever sent one.
    pub heartbeat_age: Option<Duration>,
    /// Ports attached.
    pub attached_ports: usize,
}

/// What [`Watch::look`] concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reachable now.
    Up,
    /// Not reachable, and not seen reachable since the gateway started: left alone.
    Unseen,
    /// Unreachable for this long, less than the node's `failover_after`.
    Down(Duration),
    /// Unreachable for `failover_after` or longer: fail it over.
    FailOver,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When it was last reachable.
    last_up: Instant,
}

/// Every watched node's history.
#[derive(Debug, Default)]
pub struct Watch {
    nodes: HashMap<(String, String), Seen>,
}

impl Watch {
    /// A watch that has seen nothing.
    pub fn new() -> Watch {
        Watch::default()
    }

    /// Judges node `pan`/`node` from `signs` at `now`, with its `after`.
    pub fn look(&mut self, pan: &str, node: &str, signs: Signs, after: Duration, now: Instant) -> Verdict {
        let key = (pan.to_string(), node.to_string());
        let hung = signs.queue_pairs > 0 && signs.heartbeat_age.is_some_and(|age| age >= after);
        let up = !hung && (signs.queue_pairs > 0 || signs.attached_ports > 0);
        if up {
            self.nodes.insert(key, Seen { last_up: now });
            return Verdict::Up;
        }
        let Some(seen) = self.nodes.get(&key) else {
            return Verdict::Unseen;
        };
        let down_for = if hung {
            // Its last heartbeat is the last sign of life.
            signs.heartbeat_age.unwrap_or_default()
        } else {
            now.saturating_duration_since(seen.last_up)
        };
        if down_for >= after {
            Verdict::FailOver
        } else {
            Verdict::Down(down_for)
        }
    }

    /// Forgets a node (it was failed over: the spare that is now the node is judged only
    /// once it has been seen reachable).
    pub fn forget(&mut self, pan: &str, node: &str) {
        self.nodes.remove(&(pan.to_string(), node.to_string()));
    }

    /// Forgets nodes `keep` says no longer exist or are no longer watched.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.nodes.retain(|(p, n), _| keep(p, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(10);

    fn signs(queue_pairs: u32, heartbeat: Option<u64>, attached_ports: usize) -> Signs {
        Signs { queue_pairs, heartbeat_age: heartbeat.map(Duration::from_secs), attached_ports }
    }

    #[test]
    fn a_node_never_seen_is_left_alone() {
        let mut w = Watch::new();
        let t = Instant::now();
        for s in 0..100 {
            assert_eq!(w.look("p", "a", Signs::default(), AFTER, t + Duration::from_secs(s)), Verdict::Unseen);
        }
    }

    #[test]
    fn a_node_that_loses_every_channel_fails_over_after_its_time() {
        let mut w = Watch::new();
        let t = Instant::now();
        assert_eq!(w.look("p", "a", signs(0, None, 1), AFTER, t), Verdict::Up);
        let at = |s| t + Duration::from_secs(s);
        assert_eq!(w.look("p", "a", signs(0, None, 0), AFTER, at(3)), Verdict::Down(Duration::from_secs(3)));
        assert_eq!(w.look("p", "a", signs(0, None, 0), AFTER, at(9)), Verdict::Down(Duration::from_secs(9)));
        assert_eq!(w.look("p", "a", signs(0, None, 0), AFTER, at(10)), Verdict::FailOver);
        // Back before its time: the clock starts again.
        assert_eq!(w.look("p", "b", signs(1, None, 0), AFTER, t), Verdict::Up);
        assert!(matches!(w.look("p", "b", signs(0, None, 0), AFTER, at(8)), Verdict::Down(_)));
        assert_eq!(w.look("p", "b", signs(0, None, 1), AFTER, at(9)), Verdict::Up);
        assert!(matches!(w.look("p", "b", signs(0, None, 0), AFTER, at(18)), Verdict::Down(_)));
    }

    #[test]
    fn a_hung_node_fails_over_though_its_queue_pairs_and_taps_are_open() {
        let mut w = Watch::new();
        let t = Instant::now();
        assert_eq!(w.look("p", "a", signs(2, Some(1), 1), AFTER, t), Verdict::Up);
        assert_eq!(w.look("p", "a", signs(2, Some(9), 1), AFTER, t), Verdict::Up);
        assert_eq!(w.look("p", "a", signs(2, Some(10), 1), AFTER, t), Verdict::FailOver);
        // A node whose links do not heartbeat is judged by its channels alone.
        assert_eq!(w.look("p", "b", signs(1, None, 0), AFTER, t), Verdict::Up);
        assert_eq!(w.look("p", "b", signs(1, None, 0), AFTER, t + Duration::from_secs(3600)), Verdict::Up);
    }

    #[test]
    fn a_forgotten_node_is_unseen_until_it_comes_up() {
        let mut w = Watch::new();
        let t = Instant::now();
        w.look("p", "a", signs(1, None, 0), AFTER, t);
        w.forget("p", "a");
        assert_eq!(w.look("p", "a", Signs::default(), AFTER, t + AFTER * 2), Verdict::Unseen);
        w.look("p", "a", signs(1, None, 0), AFTER, t);
        w.retain(|_, n| n != "a");
        assert_eq!(w.look("p", "a", Signs::default(), AFTER, t + AFTER * 2), Verdict::Unseen);
    }
}
