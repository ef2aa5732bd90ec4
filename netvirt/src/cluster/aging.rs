//! A bounded map whose entries expire: the cluster's connection and sticky tables.
//!
//! Every entry belongs to a *class*, and each class has a fixed lifetime (the caller's:
//! an established TCP flow, one that is closing, a UDP flow). Each class keeps its
//! entries in a recency list. Refreshing an entry moves it to the front of its class with
//! a new deadline, so every list is also in deadline order, and expiry takes entries from
//! the old ends only. Nothing expired stays behind a live entry.
//!
//! When the table is full, the entry closest to its deadline is evicted (the oldest end
//! of some class), and evictions are counted. An entry whose deadline has passed is gone
//! for lookups even before [`AgingTable::expire`] frees it. Time is an argument; nothing
//! here reads a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// No slot: the ends of a recency list.
const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    class: u8,
    expires: Instant,
    /// Toward the most recently refreshed end of its class.
    prev: u32,
    /// Toward the oldest end.
    next: u32,
}

/// A class's recency list.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

/// A live entry found by [`AgingTable::get`], good until the table next changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(u32);

/// A bounded map with per-class lifetimes and eviction of the entry nearest its deadline.
#[derive(Debug)]
pub struct AgingTable<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Option<Slot<K, V>>>,
    free: Vec<u32>,
    lists: Vec<List>,
    capacity: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> AgingTable<K, V> {
    /// A table of at most `capacity` entries (at least one) in `classes` classes.
    pub fn new(capacity: usize, classes: u8) -> AgingTable<K, V> {
        AgingTable {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            lists: vec![List { head: NIL, tail: NIL }; usize::from(classes.max(1))],
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// Entries held (some may have expired and not been freed yet).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Entries evicted to make room, ever.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The live entry for `key`; an expired one is removed.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<Handle> {
        let at = *self.index.get(key)?;
        if self.slot(at).expires <= now {
            self.remove_at(at);
            return None;
        }
        Some(Handle(at))
    }

    /// The value of a found entry.
    pub fn value(&self, h: Handle) -> &V {
        &self.slot(h.0).value
    }

    /// The value of a found entry, to change.
    pub fn value_mut(&mut self, h: Handle) -> &mut V {
        &mut self.slot_mut(h.0).value
    }

    /// The class of a found entry.
    pub fn class(&self, h: Handle) -> u8 {
        self.slot(h.0).class
    }

    /// Moves a found entry to the front of `class` with deadline `expires`, which must be
    /// no earlier than the deadlines already in that class (the class's lifetime from now).
    pub fn refresh(&mut self, h: Handle, class: u8, expires: Instant) {
        let class = class.min(self.lists.len() as u8 - 1);
        self.unlink(h.0);
        let s = self.slot_mut(h.0);
        s.class = class;
        s.expires = expires;
        self.push_front(h.0);
    }

    /// Inserts or replaces `key`'s entry at the front of `class`, with deadline `expires`
    /// (as for [`AgingTable::refresh`]). A full table first evicts the entry nearest its
    /// deadline, which is returned.
    pub fn insert(&mut self, key: K, value: V, class: u8, expires: Instant) -> Option<(K, V)> {
        if let Some(&at) = self.index.get(&key) {
            self.slot_mut(at).value = value;
            self.refresh(Handle(at), class, expires);
            return None;
        }
        let evicted = if self.index.len() >= self.capacity {
            self.evicted += 1;
            self.nearest_deadline().map(|at| self.remove_at(at))
        } else {
            None
        };
        let class = class.min(self.lists.len() as u8 - 1);
        let slot = Slot { key: key.clone(), value, class, expires, prev: NIL, next: NIL };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = Some(slot);
                at
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, at);
        self.push_front(at);
        evicted
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let at = *self.index.get(key)?;
        Some(self.remove_at(at).1)
    }

    /// Frees expired entries, at most `budget` of them; returns how many went.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let mut gone = 0;
        for c in 0..self.lists.len() {
            while gone < budget {
                let tail = self.lists[c].tail;
                if tail == NIL || self.slot(tail).expires > now {
                    break;
                }
                self.remove_at(tail);
                gone += 1;
            }
        }
        gone
    }

    /// Removes every entry `keep` refuses; returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) -> usize {
        let doomed: Vec<u32> = self
            .index
            .values()
            .copied()
            .filter(|&at| {
                let s = self.slot(at);
                !keep(&s.key, &s.value)
            })
            .collect();
        for &at in &doomed {
            self.remove_at(at);
        }
        doomed.len()
    }

    /// Empties the table, handing back each entry with its class and deadline, each class
    /// from its oldest end (so inserting them in turn keeps every class in order).
    pub fn drain(&mut self) -> Vec<(K, V, u8, Instant)> {
        let mut out = Vec::with_capacity(self.len());
        for c in 0..self.lists.len() {
            while self.lists[c].tail != NIL {
                let at = self.lists[c].tail;
                self.unlink(at);
                let s = self.slots[at as usize].take().expect("a linked slot is occupied");
                out.push((s.key, s.value, s.class, s.expires));
            }
        }
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        out
    }

    /// The oldest end of the class whose oldest entry expires first.
    fn nearest_deadline(&self) -> Option<u32> {
        self.lists.iter().map(|l| l.tail).filter(|&t| t != NIL).min_by_key(|&t| self.slot(t).expires)
    }

    fn slot(&self, at: u32) -> &Slot<K, V> {
        self.slots[at as usize].as_ref().expect("a linked slot is occupied")
    }

    fn slot_mut(&mut self, at: u32) -> &mut Slot<K, V> {
        self.slots[at as usize].as_mut().expect("a linked slot is occupied")
    }

    fn remove_at(&mut self, at: u32) -> (K, V) {
        self.unlink(at);
        let slot = self.slots[at as usize].take().expect("a linked slot is occupied");
        self.index.remove(&slot.key);
        self.free.push(at);
        (slot.key, slot.value)
    }

    fn unlink(&mut self, at: u32) {
        let (prev, next, class) = {
            let s = self.slot(at);
            (s.prev, s.next, usize::from(s.class))
        };
        match prev {
            NIL => self.lists[class].head = next,
            p => self.slot_mut(p).next = next,
        }
        match next {
            NIL => self.lists[class].tail = prev,
            n => self.slot_mut(n).prev = prev,
        }
        let s = self.slot_mut(at);
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_front(&mut self, at: u32) {
        let class = usize::from(self.slot(at).class);
        let old = self.lists[class].head;
        {
            let s = self.slot_mut(at);
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.lists[class].tail = at,
            h => self.slot_mut(h).prev = at,
        }
        self.lists[class].head = at;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_full_table_evicts_the_entry_nearest_its_deadline_and_counts_it() {
        let t0 = Instant::now();
        let mut t = AgingTable::new(3, 2);
        assert_eq!(t.insert(0, 0, 0, secs(t0, 60)), None);
        assert_eq!(t.insert(1, 10, 0, secs(t0, 61)), None);
        assert_eq!(t.insert(2, 20, 1, secs(t0, 5)), None);
        // Class 1's entry expires first.
        assert_eq!(t.insert(3, 30, 0, secs(t0, 62)), Some((2, 20)));
        // 0 is refreshed, so 1 is now the oldest.
        let h = t.get(&0, t0).unwrap();
        t.refresh(h, 0, secs(t0, 63));
        assert_eq!(t.insert(4, 40, 0, secs(t0, 64)), Some((1, 10)));
        assert_eq!(t.evicted(), 2);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn expiry_is_exact_per_class_and_lookups_never_see_the_expired() {
        let t0 = Instant::now();
        let mut t = AgingTable::new(10, 3);
        t.insert("udp", 1, 2, secs(t0, 300));
        t.insert("fin", 2, 1, secs(t0, 120));
        t.insert("rst", 3, 0, secs(t0, 10));
        assert!(t.get(&"rst", secs(t0, 9)).is_some());
        assert!(t.get(&"fin", secs(t0, 120)).is_none(), "a lookup at the deadline finds nothing");
        assert_eq!(t.len(), 2);
        assert_eq!(t.expire(secs(t0, 10), 10), 1);
        assert_eq!(t.expire(secs(t0, 299), 10), 0);
        assert_eq!(t.expire(secs(t0, 300), 10), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn retain_remove_and_drain_keep_the_lists_consistent() {
        let t0 = Instant::now();
        let mut t = AgingTable::new(100, 2);
        for k in 0..50u32 {
            t.insert(k, k % 3, (k % 2) as u8, secs(t0, 60 + u64::from(k)));
        }
        assert_eq!(t.retain(|_, v| *v != 0), 17);
        assert_eq!(t.remove(&1), Some(1));
        assert_eq!(t.len(), 32);
        for k in 2..50u32 {
            assert_eq!(t.get(&k, t0).is_some(), k % 3 != 0, "{k}");
        }
        let drained = t.drain();
        assert_eq!(drained.len(), 32);
        for class in [0u8, 1] {
            let deadlines: Vec<Instant> = drained.iter().filter(|d| d.2 == class).map(|d| d.3).collect();
            assert!(deadlines.windows(2).all(|w| w[0] <= w[1]), "class {class} drained out of order");
        }
        assert!(t.is_empty());
        assert_eq!(t.insert(7, 7, 1, secs(t0, 1)), None);
    }
}
