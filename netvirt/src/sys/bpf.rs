//! Loading an eBPF program (`bpf(BPF_PROG_LOAD)`), which no maintained crate wraps
//! without also taking over how programs are built.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::fastpath::guard::Insn;

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`, then zeroes up to the
/// size the kernel is told.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    _rest: [u8; 64],
}

/// Loads `insns` as a `tc` classifier program called `name` and returns its fd. A program
/// the verifier refuses is an error carrying the verifier's log.
pub fn load_sched_cls(name: &str, insns: &[Insn]) -> io::Result<OwnedFd> {
    let code: Vec<u8> = insns.iter().flat_map(|i| i.to_bytes()).collect();
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().take(15).zip(name.bytes()) {
        *d = s;
    }
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        _rest: [0; 64],
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_PROG_LOAD, zero beyond the fields
    // set, and the size passed is its own; the instruction, license and log buffers it
    // points to outlive the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, std::mem::size_of::<ProgLoad>())
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        return Err(io::Error::new(e.kind(), format!("loading the eBPF guard: {e}: {}", text.trim())));
    }
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}
