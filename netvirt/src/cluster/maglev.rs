//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size in
//! which every backend fills about the same share of slots, each following its own
//! permutation of the table. When a backend leaves, its slots go to the others and almost
//! no other slot changes hands, so only the flows that were on it move.
//!
//! Backends are named, and the permutation of each comes from its name alone: the same set
//! of names gives the same table in any order, and in every gateway of this build.

use std::hash::BuildHasher;

/// The smallest table: the floor, and a prime.
pub const MIN_SIZE: u32 = 65_537;
/// Slots per backend the table aims for at least, so shares stay within about 1% of each other.
const SLOTS_PER_BACKEND: u64 = 100;
/// A slot nobody fills: the table of no backends.
const EMPTY: u16 = u16::MAX;

/// A Maglev lookup table over some backends, which it names by their index in the list it
/// was built from.
#[derive(Debug, Clone)]
pub struct Maglev {
    slots: Vec<u16>,
}

fn hash(seed: u64, name: &str) -> u64 {
    foldhash::quality::FixedState::with_seed(seed).hash_one(name)
}

/// The smallest prime at or above `n`.
fn next_prime(mut n: u64) -> u64 {
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// The table size for `backends`: a prime of at least `floor` (normally [`MIN_SIZE`]) and
/// 100 slots each.
pub fn size_for(backends: usize, floor: u32) -> u32 {
    let want = (backends as u64 * SLOTS_PER_BACKEND).max(u64::from(floor));
    next_prime(want).min(u64::from(u32::MAX)) as u32
}

impl Maglev {
    /// The table for `names` (at most 65,535), of [`size_for`] their number.
    pub fn build<S: AsRef<str>>(names: &[S]) -> Maglev {
        Maglev::with_size(names, size_for(names.len(), MIN_SIZE))
    }

    /// The table for `names` with `size` slots, which must be prime (so every skip visits
    /// every slot).
    pub fn with_size<S: AsRef<str>>(names: &[S], size: u32) -> Maglev {
        let names = &names[..names.len().min(usize::from(EMPTY))];
        let m = u64::from(size);
        let mut slots = vec![EMPTY; size as usize];
        if names.is_empty() {
            return Maglev { slots };
        }
        // Backends take turns in name order, so the table does not depend on the list's.
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].as_ref().cmp(names[b].as_ref()));
        // Each backend's permutation: slot (offset + j * skip) mod m for its j-th choice.
        let perm: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let n = names[i].as_ref();
                (hash(0x6d61_676c_6576_0001, n) % m, hash(0x6d61_676c_6576_0002, n) % (m - 1) + 1)
            })
            .collect();
        let mut next = vec![0u64; names.len()];
        let mut filled = 0u64;
        'fill: loop {
            for (i, &(offset, skip)) in perm.iter().enumerate() {
                // Its next preferred slot that nobody has taken; a permutation of a prime
                // table reaches every slot, and one is still free, so this ends.
                let mut c = (offset + next[i] * skip) % m;
                while slots[c as usize] != EMPTY {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                slots[c as usize] = order[i] as u16;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev { slots }
    }

    /// Slots in the table.
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The backend (its index in the list the table was built from) for a flow whose hash
    /// is `hash`; `None` when the table has no backends.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let s = self.slots[(hash % self.slots.len() as u64) as usize];
        (s != EMPTY).then_some(usize::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    /// A well-spread hash of flow `i`.
    fn flow(i: u64) -> u64 {
        foldhash::quality::FixedState::with_seed(7).hash_one(i)
    }

    #[test]
    fn sizes_are_primes_of_at_least_65537_and_100_slots_a_backend() {
        assert_eq!(size_for(0, MIN_SIZE), 65_537);
        assert_eq!(size_for(10, MIN_SIZE), 65_537);
        assert_eq!(size_for(1000, MIN_SIZE), 100_003);
        assert_eq!(size_for(2, 250), 251);
        assert_eq!(next_prime(65_538), 65_539);
    }

    #[test]
    fn every_backend_gets_about_the_same_share() {
        let t = Maglev::build(&names(10));
        let mut count = [0usize; 10];
        for s in 0..t.size() {
            count[t.lookup(u64::from(s)).unwrap()] += 1;
        }
        let (lo, hi) = (*count.iter().min().unwrap(), *count.iter().max().unwrap());
        assert!(hi - lo <= t.size() as usize / 100, "shares {count:?}");
        assert_eq!(Maglev::build::<&str>(&[]).lookup(5), None);
    }

    #[test]
    fn the_table_depends_on_the_names_not_their_order() {
        let a = Maglev::build(&["a", "b", "c"]);
        let b = Maglev::build(&["c", "a", "b"]);
        fn name<'a>(t: &Maglev, order: &[&'a str], h: u64) -> &'a str {
            order[t.lookup(h).unwrap()]
        }
        for h in 0..10_000 {
            assert_eq!(name(&a, &["a", "b", "c"], flow(h)), name(&b, &["c", "a", "b"], flow(h)));
        }
    }

    #[test]
    fn removing_one_of_ten_moves_only_its_flows_and_adding_it_back_moves_about_a_tenth() {
        const FLOWS: u64 = 100_000;
        let all = names(10);
        let before = Maglev::build(&all);
        let rest: Vec<String> = all.iter().filter(|n| *n != "node-3").cloned().collect();
        let after = Maglev::build(&rest);
        let mut on_removed = 0;
        let mut others_moved = 0;
        for i in 0..FLOWS {
            let old = &all[before.lookup(flow(i)).unwrap()];
            let new = &rest[after.lookup(flow(i)).unwrap()];
            if old == "node-3" {
                on_removed += 1;
            } else if old != new {
                others_moved += 1;
            }
        }
        assert!(on_removed > 0);
        assert!(others_moved * 100 <= FLOWS, "{others_moved} flows of other backends moved");
        // Adding it back: at most about 1/N of the flows move (1/10, with 1% of slack).
        let moved =
            (0..FLOWS).filter(|&i| rest[after.lookup(flow(i)).unwrap()] != all[before.lookup(flow(i)).unwrap()]);
        assert!(moved.count() as u64 * 100 <= FLOWS * 11, "adding one back moved more than 11%");
    }
}
