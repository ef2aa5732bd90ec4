//! The guard in front of a port's kernel forwarding rules: a small eBPF classifier that
//! sends to the userspace switch every frame the rules must not forward, because deciding
//! it needs more than the rules can match:
//!
//! - a frame with an 802.1Q tag (the switch drops it: ports are access ports; `tc`'s
//!   per-protocol rules skip a tagged frame too, so this only makes it explicit);
//! - a frame longer than the LAN's MTU plus the Ethernet header;
//! - a segmentation-offload packet whose segments would be longer than the MTU (its
//!   segment size plus its IPv4/IPv6 and TCP/UDP headers), or one of another protocol.
//!
//! The switch then drops and counts such a frame, and answers an oversize IPv4 one with
//! ICMP "fragmentation needed", exactly as when every frame went through it. Everything
//! else goes on to the rules. The program is built here, sans-IO, as bytes; loading it is
//! `sys::bpf`'s job.

use super::bpf::*;

/// The guard for a port on a LAN of MTU `mtu`, diverting to the port's TAP `tap_ifindex`
/// (the userspace switch) with `bpf_redirect`, and otherwise passing the frame on to the
/// next filter. For `cls_bpf` in direct-action mode, where the frame starts at its
/// Ethernet header.
pub fn program(mtu: u32, tap_ifindex: u32) -> Vec<Insn> {
    let mtu = mtu.min(i32::MAX as u32 - ETH_HLEN as u32) as i32;
    let mut a = Asm::new();
    let (divert, pass, gso, v6, l4, udp, check) =
        (a.label(), a.label(), a.label(), a.label(), a.label(), a.label(), a.label());
    a.op(MOV_X, 6, 1, 0, 0); // r6 = skb
    a.op(LDX_W, 2, 6, SKB_VLAN_PRESENT, 0);
    a.jump(JNE_K, 2, 0, divert);
    a.op(LDX_W, 7, 6, SKB_GSO_SIZE, 0); // r7 = segment payload size (0: not GSO)
    a.op(LDX_W, 2, 6, SKB_LEN, 0);
    a.jump(JNE_K, 7, 0, gso);
    a.jump(JGT_K, 2, mtu + ETH_HLEN, divert);
    a.place(pass);
    a.op(MOV_K, 0, 0, 0, TC_ACT_UNSPEC);
    a.op(EXIT, 0, 0, 0, 0);

    // A GSO packet: r8 = its IP header length, r9 = the L4 protocol.
    a.place(gso);
    a.op(LDX_W, 2, 6, SKB_PROTOCOL, 0);
    a.jump(JEQ_K, 2, ethertype(0x86dd), v6);
    a.jump(JNE_K, 2, ethertype(0x0800), divert);
    a.op(MOV_K, 2, 0, 0, ETH_HLEN); // version and IHL
    a.load_byte(divert);
    a.op(LDX_B, 8, 10, -8, 0);
    a.op(AND_K, 8, 0, 0, 0x0f);
    a.op(LSH_K, 8, 0, 0, 2);
    a.op(MOV_K, 2, 0, 0, ETH_HLEN + 9); // protocol
    a.load_byte(divert);
    a.op(LDX_B, 9, 10, -8, 0);
    a.jump(JA, 0, 0, l4);
    a.place(v6);
    a.op(MOV_K, 8, 0, 0, 40);
    a.op(MOV_K, 2, 0, 0, ETH_HLEN + 6); // next header
    a.load_byte(divert);
    a.op(LDX_B, 9, 10, -8, 0);

    // r7 = one segment's length: payload, IP header, L4 header.
    a.place(l4);
    a.op(ADD_X, 7, 8, 0, 0);
    a.jump(JEQ_K, 9, 17, udp);
    a.jump(JNE_K, 9, 6, divert);
    a.op(MOV_X, 2, 8, 0, 0); // TCP data offset
    a.op(ADD_K, 2, 0, 0, ETH_HLEN + 12);
    a.load_byte(divert);
    a.op(LDX_B, 3, 10, -8, 0);
    a.op(RSH_K, 3, 0, 0, 4);
    a.op(LSH_K, 3, 0, 0, 2);
    a.op(ADD_X, 7, 3, 0, 0);
    a.jump(JA, 0, 0, check);
    a.place(udp);
    a.op(ADD_K, 7, 0, 0, 8);
    a.place(check);
    a.jump(JGT_K, 7, mtu, divert);
    a.jump(JA, 0, 0, pass);

    a.place(divert);
    a.op(MOV_K, 1, 0, 0, tap_ifindex as i32);
    a.op(MOV_K, 2, 0, 0, 0);
    a.op(CALL, 0, 0, 0, BPF_FUNC_REDIRECT);
    a.op(EXIT, 0, 0, 0, 0);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels_and_the_constants_are_baked_in() {
        let p = program(1500, 7);
        let divert = p.len() - 4;
        // The first jump (a VLAN tag) goes to the redirect, which names the TAP.
        assert_eq!(p[2].code, JNE_K);
        assert_eq!(2 + 1 + p[2].off as usize, divert);
        assert_eq!(p[divert], Insn { code: MOV_K, regs: 1, off: 0, imm: 7 });
        assert_eq!(p[divert + 2].imm, BPF_FUNC_REDIRECT);
        // A plain frame is checked against MTU + 14.
        assert_eq!(p[6], Insn { code: JGT_K, regs: 2, off: (divert - 7) as i16, imm: 1514 });
        // Every jump lands inside the program, and it ends with an exit.
        for (i, insn) in p.iter().enumerate() {
            if matches!(insn.code, JA | JEQ_K | JGT_K | JNE_K) {
                let to = i as isize + 1 + insn.off as isize;
                assert!((0..p.len() as isize).contains(&to), "jump at {i} leaves the program");
            }
        }
        assert_eq!(p.last().unwrap().code, EXIT);
    }

    #[test]
    fn the_segment_limit_is_the_mtu() {
        let p = program(9000, 3);
        let check = p.iter().filter(|i| i.code == JGT_K).map(|i| i.imm).collect::<Vec<_>>();
        assert_eq!(check, [9014, 9000]);
    }

    #[test]
    fn ethertypes_read_as_the_kernel_stores_them() {
        // skb->protocol is __be16: IPv4 is the bytes 08 00.
        assert_eq!(ethertype(0x0800).to_ne_bytes()[..2], [0x08, 0x00]);
    }
}
