//! The direct path (`LunDriver::start_direct`): plain READs and WRITEs copied straight
//! between an in-memory image and the caller's memory keep every SCSI rule of the usual
//! path: unit attentions first, range checks, short buffers, and COMPARE AND WRITE's
//! atomicity against overlapping writes.

mod support;

use gateway::engine::{Image, ImageOptions, RamEngine, UringEngine};
use gateway::lun::{Direct, Finished, LunDriver};
use scsi::sense::parse_sense;
use scsi::{Asc, Completion, Status};
use shmem::PeerSlice;
use support::*;

const BS: usize = 512;
const SIZE: u64 = 1 << 20;

fn ram() -> LunDriver {
    driver(config(BS as u32, SIZE), Box::new(RamEngine::new(SIZE)))
}

#[track_caller]
fn sense(c: &Completion) -> (u8, Asc) {
    assert_eq!(c.status, Status::CheckCondition);
    let (key, asc, _) = parse_sense(&c.sense).expect("sense data parses");
    (key, asc)
}

#[test]
fn a_pending_unit_attention_is_reported_before_the_first_direct_read() {
    let mut d = LunDriver::new(config(BS as u32, SIZE), Box::new(RamEngine::new(SIZE))).unwrap();
    let mut mem = vec![0xAAu8; 4 * BS];
    let (c, moved) = direct(&mut d, &rw16(0x88, 0, 4, false), &mut mem, false).expect("taken");
    assert_eq!(sense(&c), (0x6, Asc::POWER_ON_RESET));
    assert_eq!(moved, 0);
    assert!(mem.iter().all(|&b| b == 0xAA), "nothing was copied for a refused READ");
    let (c, moved) = direct(&mut d, &rw16(0x88, 0, 4, false), &mut mem, false).expect("taken");
    assert_eq!(c.status, Status::Good);
    assert_eq!(moved, 4 * BS);
    assert!(mem.iter().all(|&b| b == 0), "a fresh image reads as zeros");
}

#[test]
fn writes_read_back_and_out_of_range_is_refused() {
    let mut d = ram();
    let mut data = pattern(8 * BS, 7);
    let (c, _) = direct(&mut d, &rw16(0x8A, 100, 8, true), &mut data, true).expect("taken");
    assert_eq!(c.status, Status::Good);
    assert_eq!(read(&mut d, 100, 8), data, "the usual path reads what the direct path wrote");
    let mut back = vec![0u8; 8 * BS];
    let (c, moved) = direct(&mut d, &cdb10(0x28, 0, 100, 8), &mut back, false).expect("READ(10) is taken too");
    assert_eq!((c.status, moved), (Status::Good, 8 * BS));
    assert_eq!(back, data);
    let last = SIZE / BS as u64;
    let (c, _) = direct(&mut d, &rw16(0x88, last - 2, 4, false), &mut back, false).expect("taken");
    assert_eq!(sense(&c), (0x5, Asc::LBA_OUT_OF_RANGE));
    let (c, _) = direct(&mut d, &rw16(0x8A, last, 1, false), &mut data, true).expect("taken");
    assert_eq!(sense(&c), (0x5, Asc::LBA_OUT_OF_RANGE));
}

#[test]
fn short_memory_is_refused_alike_for_a_read_and_a_write() {
    let mut d = ram();
    let data = pattern(8 * BS, 3);
    expect_good(&run(&mut d, &rw16(0x8A, 0, 8, false), &data));
    let mut half = vec![0u8; 4 * BS];
    let (c, moved) = direct(&mut d, &rw16(0x88, 0, 8, false), &mut half, false).expect("taken");
    assert_eq!((sense(&c), moved), ((0x5, Asc::INVALID_FIELD_IN_CDB), 0));
    assert!(half.iter().all(|&b| b == 0), "the refused READ moved nothing");
    let (c, _) = direct(&mut d, &rw16(0x8A, 0, 8, false), &mut half, true).expect("taken");
    assert_eq!(sense(&c), (0x5, Asc::INVALID_FIELD_IN_CDB));
    assert_eq!(read(&mut d, 0, 8), data, "the refused WRITE changed nothing");
}

#[test]
fn other_commands_and_engines_without_memory_are_declined_untouched() {
    let mut d = LunDriver::new(config(BS as u32, SIZE), Box::new(RamEngine::new(SIZE))).unwrap();
    let mut mem = vec![0u8; 4096];
    assert!(direct(&mut d, &[0x12, 0, 0, 0, 96, 0], &mut mem, false).is_none(), "INQUIRY");
    assert!(direct(&mut d, &cdb10(0x35, 0, 0, 0), &mut mem, false).is_none(), "SYNCHRONIZE CACHE");
    assert!(direct(&mut d, &rw16(0x8A, 0, 1, false), &mut mem, false).is_none(), "a WRITE said to be a read");
    // None of that consumed the power-on unit attention.
    let f = d.run(I, &[0], &[0; 6], &[]).unwrap();
    expect_sense(&f, 0x6, Asc::POWER_ON_RESET);

    let dir = tempfile::tempdir().unwrap();
    let opts = ImageOptions { create_size: Some(SIZE), direct: false, read_only: false };
    let image = Image::open(&dir.path().join("f.img"), &opts).unwrap();
    let mut d = driver(config(BS as u32, SIZE), Box::new(UringEngine::new(image, 8).unwrap()));
    assert!(direct(&mut d, &rw16(0x88, 0, 1, false), &mut mem, false).is_none(), "a file goes through the kernel");
}

/// A COMPARE AND WRITE in flight holds its exclusive lock from its read to its write. A
/// direct WRITE to the same block must not land in between: it is declined (and so queues
/// behind the lock on the usual path), while a READ, which takes no lock, is not.
#[test]
fn a_direct_write_never_lands_inside_a_compare_and_write() {
    let mut d = ram();
    let [a, b, c] = [1u8, 2, 3].map(|s| pattern(BS, s));
    expect_good(&run(&mut d, &rw16(0x8A, 5, 1, false), &a));
    let nexus = nexus(false);
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&5u64.to_be_bytes());
    caw[13] = 1;
    d.submit(1, &nexus, &caw, &[a.clone(), b.clone()].concat());
    let mut mem = c.clone();
    assert!(direct(&mut d, &rw16(0x8A, 5, 1, false), &mut mem, true).is_none(), "declined while the lock is held");
    let mut seen = vec![0u8; BS];
    let (done, _) = direct(&mut d, &rw16(0x88, 5, 1, false), &mut seen, false).expect("reads take no lock");
    assert_eq!(done.status, Status::Good);
    assert!(seen == a || seen == b, "a READ sees the block before or after the COMPARE AND WRITE");
    let mut out: Vec<Finished> = Vec::new();
    for _ in 0..100 {
        if !out.is_empty() {
            break;
        }
        d.poll(&mut out, true).unwrap();
    }
    assert_eq!(out.len(), 1);
    expect_good(&out[0]);
    let (done, _) = direct(&mut d, &rw16(0x8A, 5, 1, false), &mut mem, true).expect("taken once the lock is gone");
    assert_eq!(done.status, Status::Good);
    assert_eq!(read(&mut d, 5, 1), c);
}

/// The driver hands out the READ before copying it; a WRITE submitted in between (on the
/// usual path) is a command in flight at the same time, and SCSI lets either go first, but
/// the READ must return one whole version of the block, never a mix.
#[test]
fn a_direct_read_finished_later_returns_one_version_of_the_block() {
    let mut d = ram();
    let [a, b] = [1u8, 2].map(|s| pattern(4096, s));
    expect_good(&run(&mut d, &rw16(0x8A, 0, 8, false), &a));
    let nexus = nexus(false);
    let mut mem = vec![0u8; 4096];
    let read = match d.start_direct(&nexus, &rw16(0x88, 0, 8, false), PeerSlice::from_mut(&mut mem), false) {
        Direct::Read(read) => read,
        other => panic!("expected a READ to copy, got {other:?}"),
    };
    assert_eq!(read.extent(), (0, 4096));
    expect_good(&run(&mut d, &rw16(0x8A, 0, 8, false), &b));
    let (c, moved) = d.finish_read(read, PeerSlice::from_mut(&mut mem));
    assert_eq!((c.status, moved), (Status::Good, 4096));
    assert!(mem == a || mem == b, "one version of the block");
}
