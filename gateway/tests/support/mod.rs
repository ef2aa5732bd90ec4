//! Helpers shared by the gateway's integration tests.
#![allow(dead_code)]

use gateway::engine::{Backend, RamEngine};
use gateway::lun::{Direct, Finished, LunDriver};
use scsi::sense::parse_sense;
use scsi::{Asc, Completion, LunConfig, LunIdentity, Nexus, Status};
use shmem::PeerSlice;

pub use scsi::build::rw16;

/// The initiator most tests use.
pub const I: u64 = 1;

/// LUN settings for tests.
pub fn config(block_size: u32, bytes: u64) -> LunConfig {
    LunConfig::new(LunIdentity::new("test/pan0/lun0"), block_size, bytes).unwrap()
}

/// A driver over `backend` whose power-on unit attention for initiator [`I`] was consumed.
pub fn driver(cfg: LunConfig, backend: Box<dyn Backend>) -> LunDriver {
    let mut d = LunDriver::new(cfg, backend).unwrap();
    let f = d.run(I, &[0], &[0, 0, 0, 0, 0, 0], &[]).unwrap();
    expect_sense(&f, 0x6, Asc::POWER_ON_RESET);
    d
}

/// A 512-byte-block, 1 MiB RAM LUN ready for commands.
pub fn ram_lun() -> LunDriver {
    driver(config(512, 1 << 20), Box::new(RamEngine::new(1 << 20)))
}

/// Initiator [`I`]'s nexus seeing LUN 0 (read-only if `read_only`), from one initiator port.
pub fn nexus(read_only: bool) -> Nexus<'static> {
    static PORT: std::sync::LazyLock<scsi::InitiatorPort> =
        std::sync::LazyLock::new(|| scsi::InitiatorPort::new("iqn.2026-12.test:i", 1));
    Nexus { id: I, luns: &[0], read_only, port: &PORT, target_port: 1 }
}

/// Runs a command as initiator [`I`] seeing LUN 0.
pub fn run(d: &mut LunDriver, cdb: &[u8], out: &[u8]) -> Finished {
    d.run(I, &[0], cdb, out).unwrap()
}

/// Runs a READ (into `mem`) or WRITE (from `mem`) as initiator [`I`] on the direct path:
/// its completion and the bytes read, or `None` when the driver declined it.
pub fn direct(d: &mut LunDriver, cdb: &[u8], mem: &mut [u8], write: bool) -> Option<(Completion, usize)> {
    let nexus = nexus(false);
    match d.start_direct(&nexus, cdb, PeerSlice::from_mut(mem), write) {
        Direct::Declined => None,
        Direct::Done(completion) => Some((completion, 0)),
        Direct::Read(read) => Some(d.finish_read(read, PeerSlice::from_mut(mem))),
    }
}

/// Asserts GOOD status.
#[track_caller]
pub fn expect_good(f: &Finished) {
    assert_eq!(f.completion.status, Status::Good, "sense: {:02x?}", f.completion.sense);
}

/// Asserts CHECK CONDITION with this key and code; returns the INFORMATION field.
#[track_caller]
pub fn expect_sense(f: &Finished, key: u8, asc: Asc) -> Option<u64> {
    assert_eq!(f.completion.status, Status::CheckCondition);
    let (k, a, info) = parse_sense(&f.completion.sense).expect("sense data parses");
    assert_eq!((k, a), (key, asc), "sense {:02x?}", f.completion.sense);
    info
}

/// Asserts ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte`.
#[track_caller]
pub fn expect_invalid_field(f: &Finished, byte: u16) {
    expect_sense(f, 0x5, Asc::INVALID_FIELD_IN_CDB);
    let s = &f.completion.sense;
    assert_eq!(s[15] & 0xC0, 0xC0, "SKSV and C/D set: {s:02x?}");
    assert_eq!(u16::from_be_bytes([s[16], s[17]]), byte, "field pointer: {s:02x?}");
}

/// A 10-byte block command CDB (READ/WRITE/VERIFY/SYNC/WRITE SAME (10)).
pub fn cdb10(op: u8, byte1: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[1] = byte1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Deterministic non-trivial bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Reads `blocks` 512-byte blocks at `lba` with READ(16).
pub fn read(d: &mut LunDriver, lba: u64, blocks: u32) -> Vec<u8> {
    let f = run(d, &rw16(0x88, lba, blocks, false), &[]);
    expect_good(&f);
    f.data().to_vec()
}

/// Size of the emulated NVMe drive the NVMe tests ask `scripts/vm` for.
pub const NVME_DRIVE: &str = "4M";

/// The emulated NVMe namespace's generic device, inside the test VM. Elsewhere, test `name`
/// runs again in the VM with that drive (or skips, or fails under CI where no VM can run),
/// and this gives `None`: NVMe tests never touch a host's own drives.
pub fn nvme_or_in_vm(name: &str) -> Option<std::path::PathBuf> {
    if in_vm() {
        let dev = std::path::Path::new("/dev/ng0n1");
        // The driver probes the drive in the background after modprobe.
        for _ in 0..200 {
            if dev.exists() {
                return Some(dev.to_owned());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the test VM shows no {} within 20 s", dev.display());
    }
    let why = "NVMe passthrough needs an NVMe drive and driver (the test VM has both)";
    if !skip_because(vm_missing().map(|vm| format!("{why}, and {vm}"))) {
        run_in_vm_with(name, &[("PANGATE_VM_NVME", NVME_DRIVE)]);
    }
    None
}

mod prereq;
#[allow(unused_imports)] // not every test binary checks for prerequisites
pub use prereq::*;
