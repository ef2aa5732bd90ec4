//! What one node may make the gateway hold: queue pairs, and the bytes of shared memory
//! (rings, data area, staging area) they pin. Each queue pair holds a [`Lease`] from the
//! handshake until it closes; a handshake that would go over a limit is refused with the
//! reason, before any memory is made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// Per-node limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Queue pairs open at once.
    pub queue_pairs: u32,
    /// Bytes of shared memory over all of them.
    pub bytes: u64,
}

impl Default for Limits {
    /// 16 queue pairs and 2 GiB: a FUSE mount of 4 queues with 64 MiB data areas holds
    /// 512 MiB, so four such mounts, or sixteen queue pairs of that size, fit.
    fn default() -> Limits {
        Limits { queue_pairs: 16, bytes: 2 << 30 }
    }
}

/// A handshake over a node's limit.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum OverLimit {
    /// As many queue pairs as allowed are open.
    #[error("node already has {open} queue pairs open, the most allowed (storage.max_queue_pairs_per_node)")]
    QueuePairs {
        /// Open now.
        open: u32,
    },
    /// The new queue pair's memory would take the node past its byte limit.
    #[error(
        "a queue pair of {want} bytes would take the node's shared memory to {} bytes, over its limit of {limit} (storage.max_memory_per_node)",
        .held + .want
    )]
    Bytes {
        /// Held now.
        held: u64,
        /// Asked for.
        want: u64,
        /// The limit.
        limit: u64,
    },
}

impl OverLimit {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            OverLimit::QueuePairs { .. } => "queue_pair_limit",
            OverLimit::Bytes { .. } => "memory_limit",
        }
    }
}

type Node = (String, String);

/// What each node holds, against the limits. Pure bookkeeping.
#[derive(Debug, Default)]
pub struct Ledger {
    limits: Limits,
    held: HashMap<Node, (u32, u64)>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new(limits: Limits) -> Ledger {
        Ledger { limits, held: HashMap::new() }
    }

    /// Takes one queue pair of `bytes` for `node`, or says which limit it would break.
    pub fn take(&mut self, node: &Node, bytes: u64) -> Result<(), OverLimit> {
        let &(open, held) = self.held.get(node).unwrap_or(&(0, 0));
        if open >= self.limits.queue_pairs {
            return Err(OverLimit::QueuePairs { open });
        }
        if held.saturating_add(bytes) > self.limits.bytes {
            return Err(OverLimit::Bytes { held, want: bytes, limit: self.limits.bytes });
        }
        self.held.insert(node.clone(), (open + 1, held + bytes));
        Ok(())
    }

    /// Gives back one queue pair of `bytes`.
    pub fn give(&mut self, node: &Node, bytes: u64) {
        if let Some(h) = self.held.get_mut(node) {
            h.0 = h.0.saturating_sub(1);
            h.1 = h.1.saturating_sub(bytes);
            if h.0 == 0 {
                self.held.remove(node);
            }
        }
    }

    /// What `node` holds: (queue pairs, bytes).
    pub fn held(&self, node: &Node) -> (u32, u64) {
        self.held.get(node).copied().unwrap_or_default()
    }
}

/// The ledger shared by the handshakes and the queue pairs.
#[derive(Debug, Clone, Default)]
pub struct Quotas(Arc<Mutex<Ledger>>);

impl Quotas {
    /// Quotas with these limits.
    pub fn new(limits: Limits) -> Quotas {
        Quotas(Arc::new(Mutex::new(Ledger::new(limits))))
    }

    /// A lease on one queue pair of `bytes` for (`pan`, `node`), given back when dropped.
    pub fn lease(&self, pan: &str, node: &str, bytes: u64) -> Result<Lease, OverLimit> {
        let key = (pan.to_string(), node.to_string());
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take(&key, bytes)?;
        Ok(Lease { quotas: self.clone(), node: key, bytes })
    }

    /// What a node holds: (queue pairs, bytes).
    pub fn held(&self, pan: &str, node: &str) -> (u32, u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).held(&(pan.to_string(), node.to_string()))
    }
}

/// One queue pair's share of its node's limits, held for as long as the queue pair lives.
#[derive(Debug)]
pub struct Lease {
    quotas: Quotas,
    node: Node,
    bytes: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.quotas.0.lock().unwrap_or_else(|p| p.into_inner()).give(&self.node, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pairs_and_bytes_are_limited_per_node_and_given_back() {
        let q = Quotas::new(Limits { queue_pairs: 2, bytes: 100 });
        let a = q.lease("p", "a", 40).unwrap();
        let b = q.lease("p", "a", 40).unwrap();
        assert_eq!(q.lease("p", "a", 1).unwrap_err(), OverLimit::QueuePairs { open: 2 });
        // Another node, or the same name in another PAN, has limits of its own.
        let _other = q.lease("p", "b", 100).unwrap();
        let _elsewhere = q.lease("q", "a", 100).unwrap();
        drop(b);
        let e = q.lease("p", "a", 61).unwrap_err();
        assert_eq!((e.label(), q.held("p", "a")), ("memory_limit", (1, 40)));
        assert!(e.to_string().contains("to 101 bytes, over its limit of 100"), "{e}");
        let _c = q.lease("p", "a", 60).unwrap();
        drop(a);
        assert_eq!(q.held("p", "a"), (1, 60));
    }
}
