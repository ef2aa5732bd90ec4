//! Loading an eBPF program (`bpf(BPF_PROG_LOAD)`), which no maintained crate wraps
//! without also taking over how programs are built.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::fastpath::Insn;

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
    // The verifier gives up with EAGAIN when a signal arrives while it runs (a SIGTERM
    // during start-up, which the gateway handles once it has started): load again.
    let mut loaded = bpf(BPF_PROG_LOAD, &attr);
    for _ in 0..5 {
        match &loaded {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => loaded = bpf(BPF_PROG_LOAD, &attr),
            _ => break,
        }
    }
    let fd = loaded.map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("loading the eBPF program {name}: {e}: {}", text.trim()))
    })?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_int = 4;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const MAP_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LRU_HASH`.
pub const MAP_LRU_HASH: u32 = 9;
/// `BPF_ANY`: create an element or replace the one with the key.
pub const ANY: u64 = 0;
/// `BPF_NOEXIST`: create an element only if none has the key.
pub const NOEXIST: u64 = 1;

/// `union bpf_attr` for `BPF_MAP_CREATE`, zero-padded.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u8; 108],
}

/// `union bpf_attr` for the element commands, zero-padded.
#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    _rest: [u8; 96],
}

fn bpf<T>(cmd: libc::c_int, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for `cmd` whose pointers (if any)
    // name buffers that outlive the call and are as large as the map says; the size passed
    // is its own.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Creates a map and returns its fd.
pub fn map_create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let attr = MapCreate { map_type, key_size, value_size, max_entries, map_flags: 0, _rest: [0; 108] };
    let fd = bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn elem(map: &OwnedFd, key: &[u8], value: Option<&[u8]>, flags: u64) -> MapElem {
    MapElem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.map_or(0, |v| v.as_ptr() as u64),
        flags,
        _rest: [0; 96],
    }
}

/// Sets `key` to `value` (`flags`: [`NOEXIST`] or 0). `key` and `value` must be the map's
/// sizes.
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    bpf(BPF_MAP_UPDATE_ELEM, &elem(map, key, Some(value), flags)).map(drop)
}

/// Reads `key` into `value` (for a per-CPU map, one value per possible CPU). `Ok(false)`:
/// no such key.
pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let attr = MapElem { value: value.as_mut_ptr() as u64, ..elem(map, key, None, 0) };
    match bpf(BPF_MAP_LOOKUP_ELEM, &attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `key` (none there is fine).
pub fn map_delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    match bpf(BPF_MAP_DELETE_ELEM, &elem(map, key, None, 0)) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// The key after `key` (the first with `None`) into `next`. `Ok(false)`: no more.
pub fn map_next_key(map: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let attr = MapElem { value: next.as_mut_ptr() as u64, ..elem(map, key.unwrap_or(&[]), None, 0) };
    let attr = MapElem { key: key.map_or(0, |k| k.as_ptr() as u64), ..attr };
    match bpf(BPF_MAP_GET_NEXT_KEY, &attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
