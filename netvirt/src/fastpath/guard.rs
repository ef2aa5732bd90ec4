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

/// One eBPF instruction, as `struct bpf_insn` lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble) and source register (high nibble).
    pub regs: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    /// The instruction's 8 bytes, in the machine's byte order as the kernel reads them.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

// Opcodes (include/uapi/linux/bpf.h, bpf_common.h).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const LDX_B: u8 = 0x71; // BPF_LDX | BPF_MEM | BPF_B
const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV_X: u8 = 0xbf;
const ADD_K: u8 = 0x07;
const ADD_X: u8 = 0x0f;
const AND_K: u8 = 0x57;
const LSH_K: u8 = 0x67;
const RSH_K: u8 = 0x77;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JGT_K: u8 = 0x25;
const JNE_K: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

// struct __sk_buff offsets.
const SKB_LEN: i16 = 0;
const SKB_PROTOCOL: i16 = 16;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_GSO_SIZE: i16 = 176;

// Helpers.
const BPF_FUNC_REDIRECT: i32 = 23;
const BPF_FUNC_SKB_LOAD_BYTES: i32 = 26;

/// `TC_ACT_UNSPEC`: go on to the next filter (the forwarding rules).
const TC_ACT_UNSPEC: i32 = -1;

const ETH_HLEN: i32 = 14;
/// `skb->protocol` as the 32-bit `__sk_buff` field holds it: the EtherType's two bytes in
/// network order, read as a number in the machine's order.
fn ethertype(t: u16) -> i32 {
    i32::from(u16::from_ne_bytes(t.to_be_bytes()))
}

/// A jump target.
#[derive(Clone, Copy)]
struct Label(usize);

/// A tiny assembler: instructions, and jumps to labels patched once all are placed.
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn new() -> Asm {
        Asm { insns: Vec::new(), labels: Vec::new(), fixups: Vec::new() }
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn place(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: dst | (src << 4), off, imm });
    }

    fn jump(&mut self, code: u8, dst: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.op(code, dst, 0, 0, imm);
    }

    /// `r0 = bpf_skb_load_bytes(r6, offset in r2, r10 - 8, 1)`, then diverts if it failed.
    fn load_byte(&mut self, divert: Label) {
        self.op(MOV_X, 1, 6, 0, 0);
        self.op(MOV_X, 3, 10, 0, 0);
        self.op(ADD_K, 3, 0, 0, -8);
        self.op(MOV_K, 4, 0, 0, 1);
        self.op(CALL, 0, 0, 0, BPF_FUNC_SKB_LOAD_BYTES);
        self.jump(JNE_K, 0, 0, divert);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, l) in std::mem::take(&mut self.fixups) {
            let target = self.labels[l.0].expect("every label used is placed");
            self.insns[at].off = (target as isize - at as isize - 1) as i16;
        }
        self.insns
    }
}

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
