//! The node watcher: a thread that looks at every node with `failover = "auto"` four
//! times a second and fails over those [`crate::failover::Watch`] finds unreachable for
//! their `failover_after`, through the same change as the API's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use web::Change;

use super::GatewayAdmin;
use crate::config::FailoverMode;
use crate::failover::{Signs, Verdict, Watch};

/// How often the watcher looks.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The running watcher; stopped by [`NodeWatcher::stop`] (or dropped).
#[derive(Debug)]
pub struct NodeWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NodeWatcher {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NodeWatcher {
    fn drop(&mut self) {
        self.halt();
    }
}

impl GatewayAdmin {
    /// Starts the node watcher.
    pub fn watch_nodes(self: &Arc<Self>) -> std::io::Result<NodeWatcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let admin = self.clone();
        let halt = stop.clone();
        let thread = std::thread::Builder::new().name("pangate-watch".into()).spawn(move || {
            let mut watch = Watch::new();
            // After a failed attempt (no spare, say), the next is a `failover_after` later.
            let mut retry_at: HashMap<(String, String), Instant> = HashMap::new();
            while !halt.load(Ordering::Relaxed) {
                std::thread::sleep(LOOK_EVERY);
                admin.look(&mut watch, &mut retry_at);
            }
        })?;
        Ok(NodeWatcher { stop, thread: Some(thread) })
    }

    fn look(&self, watch: &mut Watch, retry_at: &mut HashMap<(String, String), Instant>) {
        let watched: Vec<(String, String, Duration)> = {
            let st = self.lock();
            st.cfg
                .pans
                .iter()
                .flat_map(|p| p.nodes.iter().map(move |n| (p, n)))
                .filter(|(_, n)| n.failover == FailoverMode::Auto && !n.spare)
                .map(|(p, n)| (p.name.clone(), n.name.clone(), n.failover_after()))
                .collect()
        };
        watch.retain(|p, n| watched.iter().any(|(wp, wn, _)| wp == p && wn == n));
        let now = Instant::now();
        for (pan, node, after) in watched {
            let live = self.control.liveness(&pan, &node);
            let signs = Signs {
                queue_pairs: live.queue_pairs,
                heartbeat_age: live.last_heartbeat.map(|t| now.saturating_duration_since(t)),
                attached_ports: self.net.node_ports(&pan, &node).map_or(0, |(_, up)| up),
            };
            if watch.look(&pan, &node, signs, after, now) != Verdict::FailOver {
                continue;
            }
            let key = (pan.clone(), node.clone());
            if retry_at.get(&key).is_some_and(|&t| now < t) {
                continue;
            }
            tracing::warn!(pan, node, ?after, ?signs, "node unreachable: failing it over to a spare");
            match self.change(Change::Failover { pan: pan.clone(), node: node.clone(), to: None }, "auto") {
                Ok(()) => {
                    tracing::warn!(pan, node, "node failed over automatically");
                    watch.forget(&pan, &node);
                    retry_at.remove(&key);
                }
                Err(e) => {
                    tracing::error!(pan, node, error = %e, "automatic failover failed; trying again later");
                    retry_at.insert(key, now + after);
                }
            }
        }
    }
}
