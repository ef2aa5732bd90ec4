//! Ethernet addresses and how the virtual LAN server assigns them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group (broadcast or multicast) address: the I/G bit is set.
    pub fn is_group(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Locally administered unicast (the U/L bit set, the I/G bit clear).
    pub fn is_local_unicast(self) -> bool {
        self.0[0] & 0b11 == 0b10
    }

    /// The IPv6 link-local address the kernel derives from this MAC (modified EUI-64).
    pub fn ipv6_link_local(self) -> std::net::Ipv6Addr {
        let m = self.0;
        std::net::Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address string that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex octets such as 02:00:00:00:00:01)")]
pub struct BadMac(String);

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in &mut out {
            let p = parts.next().ok_or_else(|| BadMac(s.into()))?;
            if p.len() != 2 {
                return Err(BadMac(s.into()));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.into()));
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The assignments the virtual LAN server has made: which port got which counter value,
/// and the next value to hand out. Persisted by the gateway next to its config so a port
/// keeps its MAC across restarts and a counter value is never handed out twice (the source
/// documents keep this counter in NVRAM).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacBook {
    /// Next counter value.
    pub next: u32,
    /// Port key (`pan/lan/node`) to the counter value it was given.
    pub assigned: BTreeMap<String, u32>,
}

impl MacBook {
    /// The MAC of the port `key`, assigning the next counter value if it has none yet.
    /// Returns the MAC and whether the book changed (and so must be persisted before use).
    pub fn mac_for(&mut self, serial: &str, key: &str) -> (Mac, bool) {
        if let Some(&n) = self.assigned.get(key) {
            return (mac_from(serial, n), false);
        }
        let n = self.next;
        // 24 bits of counter; past that the prefix hash changes, so wrap into a new prefix.
        self.next = self.next.wrapping_add(1);
        self.assigned.insert(key.to_string(), n);
        (mac_from(serial, n), true)
    }
}

/// A locally administered unicast MAC built from the control node's serial and a counter:
/// the serial's hash (and the counter's top byte) in the first three octets, the counter's
/// low 24 bits in the last three.
pub fn mac_from(serial: &str, counter: u32) -> Mac {
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in serial.bytes().chain(std::iter::once((counter >> 24) as u8)) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let h = h.to_be_bytes();
    let c = counter.to_be_bytes();
    Mac([(h[0] & 0xfc) | 0x02, h[1], h[2], c[1], c[2], c[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_macs_are_local_unicast_stable_and_distinct() {
        let mut book = MacBook::default();
        let (a, new_a) = book.mac_for("pg-1", "demo/lan/a");
        let (b, _) = book.mac_for("pg-1", "demo/lan/b");
        let (a2, new_a2) = book.mac_for("pg-1", "demo/lan/a");
        assert!(new_a && !new_a2);
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert!(a.is_local_unicast() && b.is_local_unicast());
        assert_ne!(mac_from("pg-1", 0), mac_from("pg-2", 0));
        // The book survives a round trip, so MACs survive restarts.
        let text = serde_json::to_string(&book).unwrap();
        let mut again: MacBook = serde_json::from_str(&text).unwrap();
        assert_eq!(again.mac_for("pg-1", "demo/lan/b").0, b);
        assert_eq!(again.mac_for("pg-1", "demo/lan/c").0, mac_from("pg-1", 2));
    }

    #[test]
    fn parses_and_prints() {
        let m: Mac = "02:aa:bb:cc:dd:0e".parse().unwrap();
        assert_eq!(m.to_string(), "02:aa:bb:cc:dd:0e");
        assert!("02:aa:bb:cc:dd".parse::<Mac>().is_err());
        assert!("02:aa:bb:cc:dd:0e:ff".parse::<Mac>().is_err());
        assert!("zz:aa:bb:cc:dd:0e".parse::<Mac>().is_err());
        assert_eq!(m.ipv6_link_local().to_string(), "fe80::aa:bbff:fecc:dd0e");
    }
}
