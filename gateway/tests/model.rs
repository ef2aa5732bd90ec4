//! Property test: random sequences of WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE, ORWRITE and READ
//! give the same bytes and statuses as a plain in-memory model, on every engine, and on the
//! RAM engine's direct path too; and on the NVMe engine over QEMU's emulated drive, in the
//! test VM.

mod support;

use gateway::engine::{Backend, Image, ImageOptions, IoOp, IoRequest, NvmeEngine, RamEngine, SyncEngine, UringEngine};
use gateway::lun::LunDriver;
use proptest::prelude::*;
use scsi::build::unmap_list;
use scsi::sense::parse_sense;
use support::*;

const BS: usize = 512;
const BLOCKS: u64 = 512;

#[derive(Debug, Clone)]
enum Op {
    Write { lba: u64, blocks: u32, seed: u8, fua: bool },
    WriteSame { lba: u64, blocks: u32, seed: u8, zero: bool, unmap: bool },
    Unmap { ranges: Vec<(u64, u32)> },
    CompareAndWrite { lba: u64, blocks: u8, corrupt: Option<usize>, seed: u8 },
    OrWrite { lba: u64, blocks: u32, seed: u8 },
    Read { lba: u64, blocks: u32 },
}

fn lba() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..BLOCKS, 1 => BLOCKS - 4..BLOCKS + 4]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (lba(), 0..40u32, any::<u8>(), any::<bool>()).prop_map(|(lba, blocks, seed, fua)| Op::Write {
            lba,
            blocks,
            seed,
            fua
        }),
        (lba(), 0..80u32, any::<u8>(), any::<bool>(), any::<bool>())
            .prop_map(|(lba, blocks, seed, zero, unmap)| Op::WriteSame { lba, blocks, seed, zero, unmap }),
        prop::collection::vec((lba(), 0..200u32), 0..4).prop_map(|ranges| Op::Unmap { ranges }),
        (lba(), 0..18u8, prop::option::of(0..18 * BS), any::<u8>())
            .prop_map(|(lba, blocks, corrupt, seed)| Op::CompareAndWrite { lba, blocks, corrupt, seed }),
        (lba(), 0..40u32, any::<u8>()).prop_map(|(lba, blocks, seed)| Op::OrWrite { lba, blocks, seed }),
        (lba(), 0..64u32).prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
    ]
}

/// The expected outcome: GOOD with data, or a sense key/ASC/information.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Good(Vec<u8>),
    Check(u8, u8, u8, Option<u64>),
}

fn in_range(lba: u64, blocks: u64) -> bool {
    lba < BLOCKS && lba + blocks <= BLOCKS
}

const OUT_OF_RANGE: Outcome = Outcome::Check(0x5, 0x21, 0x00, None);

/// The model: a byte vector and the rules of each command, written independently of the
/// target's code.
fn model(disk: &mut [u8], op: &Op, data_out: &[u8]) -> Outcome {
    let span = |lba: u64, blocks: u64| (lba as usize * BS)..((lba + blocks) as usize * BS);
    match *op {
        Op::Write { lba, blocks, .. } => {
            if !in_range(lba, u64::from(blocks)) {
                return OUT_OF_RANGE;
            }
            disk[span(lba, u64::from(blocks))].copy_from_slice(data_out);
            Outcome::Good(vec![])
        }
        Op::WriteSame { lba, blocks, .. } => {
            if blocks == 0 {
                return Outcome::Check(0x5, 0x24, 0, None);
            }
            if !in_range(lba, u64::from(blocks)) {
                return OUT_OF_RANGE;
            }
            for chunk in disk[span(lba, u64::from(blocks))].chunks_mut(BS) {
                chunk.copy_from_slice(data_out);
            }
            Outcome::Good(vec![])
        }
        Op::Unmap { ref ranges } => {
            // Zero blocks at LBA = capacity do not exceed it (SBC-4 5.31.2).
            if ranges.iter().any(|&(l, n)| !(in_range(l, u64::from(n)) || (n == 0 && l <= BLOCKS))) {
                return OUT_OF_RANGE;
            }
            for &(l, n) in ranges {
                disk[span(l, u64::from(n))].fill(0);
            }
            Outcome::Good(vec![])
        }
        Op::CompareAndWrite { lba, blocks, .. } => {
            if blocks > 16 {
                return Outcome::Check(0x5, 0x24, 0, None);
            }
            if !in_range(lba, u64::from(blocks)) {
                return OUT_OF_RANGE;
            }
            let r = span(lba, u64::from(blocks));
            let n = r.len();
            if let Some(at) = disk[r.clone()].iter().zip(&data_out[..n]).position(|(a, b)| a != b) {
                return Outcome::Check(0xE, 0x1D, 0, Some(at as u64));
            }
            disk[r].copy_from_slice(&data_out[n..]);
            Outcome::Good(vec![])
        }
        Op::OrWrite { lba, blocks, .. } => {
            if !in_range(lba, u64::from(blocks)) {
                return OUT_OF_RANGE;
            }
            disk[span(lba, u64::from(blocks))].iter_mut().zip(data_out).for_each(|(d, s)| *d |= s);
            Outcome::Good(vec![])
        }
        Op::Read { lba, blocks } => {
            if !in_range(lba, u64::from(blocks)) {
                return OUT_OF_RANGE;
            }
            Outcome::Good(disk[span(lba, u64::from(blocks))].to_vec())
        }
    }
}

/// CDB and data-out for an op; COMPARE AND WRITE's verify half is taken from the model so
/// it matches unless the op corrupts it.
fn encode(op: &Op, disk: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match *op {
        Op::Write { lba, blocks, seed, fua } => {
            (rw16(0x8A, lba, blocks, fua).to_vec(), pattern(blocks as usize * BS, seed))
        }
        Op::WriteSame { lba, blocks, seed, zero, unmap } => {
            let mut c = rw16(0x93, lba, blocks, false);
            c[1] = if unmap { 0x08 } else { 0 };
            let block = if zero { vec![0; BS] } else { pattern(BS, seed) };
            (c.to_vec(), block)
        }
        Op::Unmap { ref ranges } => {
            let p = unmap_list(ranges);
            let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            c[7..9].copy_from_slice(&(p.len() as u16).to_be_bytes());
            (c, p)
        }
        Op::CompareAndWrite { lba, blocks, corrupt, seed } => {
            let n = blocks as usize * BS;
            let mut verify = vec![0u8; n];
            if in_range(lba, u64::from(blocks)) {
                let at = lba as usize * BS;
                verify.copy_from_slice(&disk[at..at + n]);
            }
            if let Some(c) = corrupt.filter(|&c| c < n) {
                verify[c] ^= 0x5A;
            }
            verify.extend(pattern(n, seed));
            let mut c = vec![0u8; 16];
            c[0] = 0x89;
            c[2..10].copy_from_slice(&lba.to_be_bytes());
            c[13] = blocks;
            (c, verify)
        }
        Op::OrWrite { lba, blocks, seed } => {
            (rw16(0x8B, lba, blocks, false).to_vec(), pattern(blocks as usize * BS, seed))
        }
        Op::Read { lba, blocks } => (rw16(0x88, lba, blocks, false).to_vec(), vec![]),
    }
}

/// Runs `ops` and compares each outcome with the model's. With `direct`, READs and WRITEs
/// go through [`LunDriver::start_direct`], which must take every one of them.
fn check_sequence(mut d: LunDriver, ops: &[Op], direct: bool) -> Result<(), TestCaseError> {
    let mut disk = vec![0u8; BLOCKS as usize * BS];
    for (i, op) in ops.iter().enumerate() {
        let (cdb, out) = encode(op, &disk);
        let expected = model(&mut disk, op, &out);
        let (completion, data) = match *op {
            Op::Read { blocks, .. } if direct => {
                let mut mem = vec![0u8; blocks as usize * BS];
                let (c, moved) = support::direct(&mut d, &cdb, &mut mem, false).expect("a READ takes the direct path");
                mem.truncate(moved);
                (c, mem)
            }
            Op::Write { .. } if direct => {
                let mut mem = out.clone();
                let (c, _) = support::direct(&mut d, &cdb, &mut mem, true).expect("a WRITE takes the direct path");
                (c, Vec::new())
            }
            _ => {
                let f = d.run(I, &[0], &cdb, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let data = f.data().to_vec();
                (f.completion, data)
            }
        };
        let got = match completion.status {
            scsi::Status::Good => Outcome::Good(data),
            _ => {
                let (k, a, info) = parse_sense(&completion.sense).expect("sense parses");
                Outcome::Check(k, a.0, a.1, info)
            }
        };
        prop_assert_eq!(&got, &expected, "op {} {:?}", i, op);
    }
    // Finally, the whole medium.
    let f = d.run(I, &[0], &rw16(0x88, 0, BLOCKS as u32, false), &[]).unwrap();
    prop_assert!(f.data() == &disk[..], "final contents differ");
    Ok(())
}

fn file_backend(dir: &tempfile::TempDir, direct: bool, uring: bool) -> Box<dyn Backend> {
    let path = dir.path().join(format!("img-{direct}-{uring}"));
    let _ = std::fs::remove_file(&path);
    let opts = ImageOptions { create_size: Some(BLOCKS * BS as u64), direct, read_only: false };
    let image = Image::open(&path, &opts).unwrap();
    if uring {
        Box::new(UringEngine::new(image, 64).unwrap())
    } else {
        Box::new(SyncEngine::new(image))
    }
}

fn cases() -> ProptestConfig {
    ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn ram_engine_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        check_sequence(driver(config(512, BLOCKS * 512), Box::new(RamEngine::new(BLOCKS * 512))), &ops, false)?;
    }

    #[test]
    fn ram_engine_on_the_direct_path_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        check_sequence(driver(config(512, BLOCKS * 512), Box::new(RamEngine::new(BLOCKS * 512))), &ops, true)?;
    }

    #[test]
    fn uring_engine_on_a_file_matches_model(ops in prop::collection::vec(op(), 1..40), direct in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        check_sequence(driver(config(512, BLOCKS * 512), file_backend(&dir, direct, true)), &ops, false)?;
    }

    #[test]
    fn sync_engine_on_a_file_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        check_sequence(driver(config(512, BLOCKS * 512), file_backend(&dir, false, false)), &ops, false)?;
    }
}

/// The model over the NVMe passthrough engine, on the test VM's emulated drive (512-byte
/// blocks, as the model's): each case starts from zeroed blocks.
#[test]
fn nvme_drive_matches_model() {
    let Some(dev) = nvme_or_in_vm("nvme_drive_matches_model") else { return };
    let mut runner = proptest::test_runner::TestRunner::new(cases());
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            let mut engine = NvmeEngine::open(&dev, false, 64).unwrap();
            engine.submit(IoRequest { tag: 0, op: IoOp::WriteZeroes { offset: 0, len: BLOCKS * BS as u64 } }).unwrap();
            let mut done = Vec::new();
            engine.reap(&mut done, 1).unwrap();
            assert!(matches!(done.as_slice(), [c] if c.result.is_ok()), "zeroing the namespace: {done:?}");
            check_sequence(driver(config(512, BLOCKS * 512), Box::new(engine)), &ops, false)
        })
        .unwrap();
}
