//! Service cluster flows in the kernel: once the switch has picked a backend for a
//! client's flow, the flow's later packets go from the client's wire straight to the
//! backend's, their destination MAC rewritten to the backend's, as the switch would have
//! sent them.
//!
//! The switch offers a flow when it relays one of its packets: [`flow_key`] names it (the
//! client's wire, both MACs, both addresses, both ports and the protocol, so only the port
//! that sent it can use it) and [`flow_value`] says where it goes. A TCP SYN is never
//! forwarded by the kernel: it opens a connection, so the switch decides it (its Maglev
//! pick, stickiness, draining), and its entry replaces whatever the tuple had, so the
//! rest of the connection, from the handshake's last ACK on, goes straight to the backend
//! the switch picked. Entries go when their
//! backend stops serving, when they idle past the cluster's timeouts, and when the table
//! (an LRU hash) is full.
//!
//! [`program`] is the classifier on every wire, after the member rules: a hit counts the
//! packet for its cluster (a per-CPU array, summed when read), stamps the entry, rewrites
//! the MAC and redirects; anything else goes on to the catch-all and the switch. It takes
//! only unfragmented IPv4 without options carrying TCP or UDP; the rest, and every frame
//! of a flow not offered, stays the switch's.

use super::bpf::*;
use crate::mac::Mac;

/// Bytes in a flow key.
pub const KEY_LEN: usize = 32;
/// Bytes in a flow entry.
pub const VALUE_LEN: usize = 40;
/// Bytes in a cluster's counter slot: packets, then bytes.
pub const COUNTER_LEN: usize = 16;

// Key layout: wire (u32, host order), destination MAC, source MAC, source and destination
// address, source and destination port (packet order), protocol, three zero bytes.
const K_WIRE: usize = 0;
const K_MACS: usize = 4;
const K_ADDRS: usize = 16;
const K_PORTS: usize = 24;
const K_PROTO: usize = 28;
// Entry layout: backend's wire (u32), backend's MAC, two zero bytes, counter slot (u32),
// packets (u64), bytes (u64), last use (u64, CLOCK_MONOTONIC ns).
const V_WIRE: usize = 0;
const V_MAC: usize = 4;
const V_SLOT: usize = 12;
/// Where an entry's last-use time is.
pub const V_LAST: usize = 32;

/// A frame's flow key as the program builds it, for a frame that came in on `wire`, and
/// whether it is a TCP SYN (which the kernel never forwards). `None` for frames the
/// program does not take.
pub fn flow_key(wire: u32, frame: &[u8]) -> Option<([u8; KEY_LEN], bool)> {
    if frame.len() < 14 + 20 + 4 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let (proto, fragment) = (ip[9], u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff);
    if ip[0] != 0x45 || fragment != 0 || !matches!(proto, 6 | 17) {
        return None;
    }
    let syn = proto == 6 && ip.get(20 + 13).is_some_and(|flags| flags & 0x02 != 0);
    if proto == 6 && ip.len() < 20 + 14 {
        return None;
    }
    let mut k = [0u8; KEY_LEN];
    k[K_WIRE..K_WIRE + 4].copy_from_slice(&wire.to_ne_bytes());
    k[K_MACS..K_MACS + 12].copy_from_slice(&frame[..12]);
    k[K_ADDRS..K_ADDRS + 8].copy_from_slice(&ip[12..20]);
    k[K_PORTS..K_PORTS + 4].copy_from_slice(&ip[20..24]);
    k[K_PROTO] = proto;
    Some((k, syn))
}

/// The entry for a flow to the backend on wire `wire` with MAC `mac`, counted in slot
/// `slot`.
pub fn flow_value(wire: u32, mac: Mac, slot: u32) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    v[V_WIRE..V_WIRE + 4].copy_from_slice(&wire.to_ne_bytes());
    v[V_MAC..V_MAC + 6].copy_from_slice(&mac.0);
    v[V_SLOT..V_SLOT + 4].copy_from_slice(&slot.to_ne_bytes());
    v
}

/// The client's wire a key names.
pub fn key_wire(key: &[u8]) -> u32 {
    u32::from_ne_bytes([key[K_WIRE], key[K_WIRE + 1], key[K_WIRE + 2], key[K_WIRE + 3]])
}

/// The cluster MAC (the frame's destination) a key names.
pub fn key_cluster(key: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&key[K_MACS..K_MACS + 6]);
    Mac(m)
}

/// Whether a key is a TCP flow's.
pub fn key_is_tcp(key: &[u8]) -> bool {
    key[K_PROTO] == 6
}

/// The backend's wire an entry names.
pub fn value_wire(value: &[u8]) -> u32 {
    u32::from_ne_bytes([value[V_WIRE], value[V_WIRE + 1], value[V_WIRE + 2], value[V_WIRE + 3]])
}

/// When an entry was last used (CLOCK_MONOTONIC ns; 0: never).
pub fn value_last(value: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&value[V_LAST..V_LAST + 8]);
    u64::from_ne_bytes(b)
}

/// The classifier for every wire, with the flow table and the counters named by their fds.
pub fn program(flows_fd: i32, counters_fd: i32) -> Vec<Insn> {
    // Stack: the key at -32, scratch at -48 (IP header bytes 0..10) and -56 (TCP flags),
    // the counter slot's key at -60.
    const KEY: i32 = -32;
    let mut a = Asm::new();
    let pass = a.label();
    a.op(MOV_X, 6, 1, 0, 0);
    a.op(LDX_W, 2, 6, SKB_PROTOCOL, 0);
    a.jump(JNE_K, 2, ethertype(0x0800), pass);
    a.op(ST_W, 10, 0, (KEY + K_PROTO as i32) as i16, 0);
    a.op(LDX_W, 2, 6, SKB_INGRESS_IFINDEX, 0);
    a.op(STX_W, 10, 2, (KEY + K_WIRE as i32) as i16, 0);
    a.load_bytes(Some(0), KEY + K_MACS as i32, 12, pass);
    a.load_bytes(Some(ETH_HLEN), -48, 10, pass);
    a.op(LDX_B, 2, 10, -48, 0); // version and IHL: 4 and 5 only
    a.jump(JNE_K, 2, 0x45, pass);
    a.op(LDX_H, 2, 10, -42, 0); // flags and fragment offset: no MF, offset 0
    a.op(AND_K, 2, 0, 0, i32::from(u16::from_ne_bytes([0x3f, 0xff])));
    a.jump(JNE_K, 2, 0, pass);
    a.op(LDX_B, 7, 10, -39, 0); // protocol
    a.op(STX_B, 10, 7, (KEY + K_PROTO as i32) as i16, 0);
    let ports = a.label();
    a.jump(JEQ_K, 7, 17, ports);
    a.jump(JNE_K, 7, 6, pass);
    a.load_bytes(Some(ETH_HLEN + 20 + 13), -56, 1, pass);
    a.op(LDX_B, 2, 10, -56, 0);
    a.jump(JSET_K, 2, 0x02, pass); // SYN: the switch decides
    a.place(ports);
    a.load_bytes(Some(ETH_HLEN + 12), KEY + K_ADDRS as i32, 8, pass);
    a.load_bytes(Some(ETH_HLEN + 20), KEY + K_PORTS as i32, 4, pass);
    a.load_map(1, flows_fd);
    a.op(MOV_X, 2, 10, 0, 0);
    a.op(ADD_K, 2, 0, 0, KEY);
    a.op(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM);
    a.jump(JEQ_K, 0, 0, pass);
    a.op(MOV_X, 7, 0, 0, 0); // r7 = the entry
    a.op(CALL, 0, 0, 0, BPF_FUNC_KTIME_GET_NS);
    a.op(STX_DW, 7, 0, V_LAST as i16, 0);
    // The cluster's counters: r8 = len, then packets += 1, bytes += len.
    a.op(LDX_W, 8, 6, SKB_LEN, 0);
    a.op(LDX_W, 2, 7, V_SLOT as i16, 0);
    a.op(STX_W, 10, 2, -60, 0);
    a.load_map(1, counters_fd);
    a.op(MOV_X, 2, 10, 0, 0);
    a.op(ADD_K, 2, 0, 0, -60);
    a.op(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM);
    let counted = a.label();
    a.jump(JEQ_K, 0, 0, counted);
    a.op(MOV_K, 1, 0, 0, 1);
    a.op(ATOMIC_DW, 0, 1, 0, 0);
    a.op(ATOMIC_DW, 0, 8, 8, 0);
    a.place(counted);
    // The backend's MAC, then out of its wire.
    a.op(MOV_X, 1, 6, 0, 0);
    a.op(MOV_K, 2, 0, 0, 0);
    a.op(MOV_X, 3, 7, 0, 0);
    a.op(ADD_K, 3, 0, 0, V_MAC as i32);
    a.op(MOV_K, 4, 0, 0, 6);
    a.op(MOV_K, 5, 0, 0, 0);
    a.op(CALL, 0, 0, 0, BPF_FUNC_SKB_STORE_BYTES);
    a.jump(JNE_K, 0, 0, pass);
    a.op(LDX_W, 1, 7, V_WIRE as i16, 0);
    a.op(MOV_K, 2, 0, 0, 0);
    a.op(CALL, 0, 0, 0, BPF_FUNC_REDIRECT);
    a.op(EXIT, 0, 0, 0, 0);
    a.place(pass);
    a.op(MOV_K, 0, 0, 0, TC_ACT_UNSPEC);
    a.op(EXIT, 0, 0, 0, 0);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xc]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 20].copy_from_slice(&[198, 18, 0, 1, 198, 18, 0, 100]);
        f[34..38].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        f[34 + 13] = flags;
        f
    }

    #[test]
    fn a_key_names_the_wire_both_macs_addresses_ports_and_the_protocol() {
        let (k, syn) = flow_key(7, &tcp_frame(0x10)).unwrap();
        assert!(!syn);
        assert_eq!(key_wire(&k), 7);
        assert_eq!(key_cluster(&k), Mac([2, 0, 0, 0, 0, 0xc]));
        assert_eq!(&k[K_MACS + 6..K_MACS + 12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&k[K_ADDRS..K_ADDRS + 8], &[198, 18, 0, 1, 198, 18, 0, 100]);
        assert_eq!(&k[K_PORTS..K_PORTS + 4], &[0x9c, 0x40, 0x14, 0x51]);
        assert_eq!(&k[K_PROTO..], &[6, 0, 0, 0]);
        assert!(key_is_tcp(&k));
        assert!(flow_key(7, &tcp_frame(0x02)).unwrap().1, "a SYN");
        assert!(!flow_key(7, &tcp_frame(0x11)).unwrap().1, "a FIN goes through the kernel");
    }

    #[test]
    fn options_fragments_and_other_protocols_are_not_taken() {
        let mut options = tcp_frame(0x10);
        options[14] = 0x46;
        assert!(flow_key(1, &options).is_none());
        let mut fragment = tcp_frame(0x10);
        fragment[14 + 6] = 0x20; // MF
        assert!(flow_key(1, &fragment).is_none());
        let mut df = tcp_frame(0x10);
        df[14 + 6] = 0x40; // DF alone is fine
        assert!(flow_key(1, &df).is_some());
        let mut icmp = tcp_frame(0);
        icmp[14 + 9] = 1;
        assert!(flow_key(1, &icmp).is_none());
        assert!(flow_key(1, &tcp_frame(0x10)[..40]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_a_key_for_their_own_wire_or_none(
            frame in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            wire in 0u32..10,
        ) {
            if let Some((k, _)) = flow_key(wire, &frame) {
                proptest::prop_assert_eq!(key_wire(&k), wire);
            }
        }
    }

    #[test]
    fn an_entry_names_the_backend_and_its_counter_slot() {
        let v = flow_value(9, Mac([2, 0, 0, 0, 0, 2]), 5);
        assert_eq!(value_wire(&v), 9);
        assert_eq!(&v[V_MAC..V_MAC + 6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(u32::from_ne_bytes(v[V_SLOT..V_SLOT + 4].try_into().unwrap()), 5);
        assert_eq!(value_last(&v), 0);
    }

    #[test]
    fn the_program_loads_both_maps_and_its_jumps_stay_inside() {
        let p = program(11, 12);
        let maps: Vec<i32> = p.iter().filter(|i| i.code == LD_IMM64).map(|i| i.imm).collect();
        assert_eq!(maps, [11, 12]);
        for (i, insn) in p.iter().enumerate() {
            if matches!(insn.code, JA | JEQ_K | JGT_K | JNE_K | JSET_K) {
                let to = i as isize + 1 + insn.off as isize;
                assert!((0..p.len() as isize).contains(&to), "jump at {i} leaves the program");
            }
        }
        assert_eq!(p.last().unwrap().code, EXIT);
    }
}
