//! A tiny eBPF assembler for the fast path's programs: instructions, jumps to labels, and
//! the few opcodes, `__sk_buff` offsets and helpers they use (include/uapi/linux/bpf.h).

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
pub(super) const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
pub(super) const LDX_B: u8 = 0x71; // BPF_LDX | BPF_MEM | BPF_B
pub(super) const MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
pub(super) const MOV_X: u8 = 0xbf;
pub(super) const ADD_K: u8 = 0x07;
pub(super) const ADD_X: u8 = 0x0f;
pub(super) const AND_K: u8 = 0x57;
pub(super) const LSH_K: u8 = 0x67;
pub(super) const RSH_K: u8 = 0x77;
pub(super) const JA: u8 = 0x05;
pub(super) const JEQ_K: u8 = 0x15;
pub(super) const JGT_K: u8 = 0x25;
pub(super) const JNE_K: u8 = 0x55;
pub(super) const CALL: u8 = 0x85;
pub(super) const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W: *(u32 *)(dst + off) = imm
pub(super) const STX_W: u8 = 0x63;
pub(super) const STX_B: u8 = 0x73;
pub(super) const STX_DW: u8 = 0x7b;
pub(super) const LDX_H: u8 = 0x69;
pub(super) const ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW, imm BPF_ADD: lock add
pub(super) const JSET_K: u8 = 0x45;
pub(super) const LD_IMM64: u8 = 0x18;
/// `src_reg` of a 64-bit load that names a map by fd.
pub(super) const PSEUDO_MAP_FD: u8 = 1;
pub(super) const EXIT: u8 = 0x95;

// struct __sk_buff offsets.
pub(super) const SKB_LEN: i16 = 0;
pub(super) const SKB_PROTOCOL: i16 = 16;
pub(super) const SKB_VLAN_PRESENT: i16 = 20;
pub(super) const SKB_GSO_SIZE: i16 = 176;
pub(super) const SKB_INGRESS_IFINDEX: i16 = 36;

// Helpers.
pub(super) const BPF_FUNC_REDIRECT: i32 = 23;
pub(super) const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
pub(super) const BPF_FUNC_KTIME_GET_NS: i32 = 5;
pub(super) const BPF_FUNC_SKB_STORE_BYTES: i32 = 9;
pub(super) const BPF_FUNC_SKB_LOAD_BYTES: i32 = 26;

/// `TC_ACT_UNSPEC`: go on to the next filter (the forwarding rules).
pub(super) const TC_ACT_UNSPEC: i32 = -1;

pub(super) const ETH_HLEN: i32 = 14;
/// `skb->protocol` as the 32-bit `__sk_buff` field holds it: the EtherType's two bytes in
/// network order, read as a number in the machine's order.
pub(super) fn ethertype(t: u16) -> i32 {
    i32::from(u16::from_ne_bytes(t.to_be_bytes()))
}

/// A jump target.
#[derive(Clone, Copy)]
pub(super) struct Label(usize);

/// A tiny assembler: instructions, and jumps to labels patched once all are placed.
pub(super) struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub(super) fn new() -> Asm {
        Asm { insns: Vec::new(), labels: Vec::new(), fixups: Vec::new() }
    }

    pub(super) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    pub(super) fn place(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    pub(super) fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: dst | (src << 4), off, imm });
    }

    pub(super) fn jump(&mut self, code: u8, dst: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.op(code, dst, 0, 0, imm);
    }

    /// `r0 = bpf_skb_load_bytes(r6, offset in r2, r10 - 8, 1)`, then diverts if it failed.
    pub(super) fn load_byte(&mut self, divert: Label) {
        self.load_bytes(None, -8, 1, divert);
    }

    /// `bpf_skb_load_bytes(r6, offset, r10 + stack, len)` (the offset in r2 already when
    /// `None`), jumping to `fail` if it failed.
    pub(super) fn load_bytes(&mut self, offset: Option<i32>, stack: i32, len: i32, fail: Label) {
        if let Some(off) = offset {
            self.op(MOV_K, 2, 0, 0, off);
        }
        self.op(MOV_X, 1, 6, 0, 0);
        self.op(MOV_X, 3, 10, 0, 0);
        self.op(ADD_K, 3, 0, 0, stack);
        self.op(MOV_K, 4, 0, 0, len);
        self.op(CALL, 0, 0, 0, BPF_FUNC_SKB_LOAD_BYTES);
        self.jump(JNE_K, 0, 0, fail);
    }

    /// `reg = &map`, the map named by its fd (two instruction slots).
    pub(super) fn load_map(&mut self, reg: u8, fd: i32) {
        self.op(LD_IMM64, reg, PSEUDO_MAP_FD, 0, fd);
        self.op(0, 0, 0, 0, 0);
    }

    pub(super) fn finish(mut self) -> Vec<Insn> {
        for (at, l) in std::mem::take(&mut self.fixups) {
            let target = self.labels[l.0].expect("every label used is placed");
            self.insns[at].off = (target as isize - at as isize - 1) as i16;
        }
        self.insns
    }
}
