//! The io_uring engine against the synchronous fallback on real files, batching at depth,
//! and COMPARE AND WRITE atomicity with overlapping writes in flight; the NVMe engine
//! against the io_uring engine, in the test VM.

mod support;

use gateway::engine::host::UringHost;
use gateway::engine::{
    open_engine, open_path, uring, AlignedBuf, Backend, EngineError, EngineKind, Image, ImageOptions, IoCompletion,
    IoOp, IoRequest, NvmeEngine, SyncEngine, UringEngine,
};
use gateway::lun::Finished;
use proptest::prelude::*;
use scsi::{IoDone, Status};
use support::*;

const SIZE: u64 = 4 << 20;

fn image(dir: &tempfile::TempDir, name: &str, direct: bool) -> Image {
    let opts = ImageOptions { create_size: Some(SIZE), direct, read_only: false };
    Image::open(&dir.path().join(name), &opts).unwrap()
}

#[derive(Debug, Clone)]
enum RawOp {
    Write { block: u64, blocks: u64, seed: u8, fua: bool },
    Read { block: u64, blocks: u64 },
    Unmap { block: u64, blocks: u64 },
    Zero { block: u64, blocks: u64 },
    Flush,
    Status { block: u64, blocks: u64 },
}

fn raw_op() -> impl Strategy<Value = RawOp> {
    let range = (0..1100u64, 1..64u64);
    prop_oneof![
        (range.clone(), any::<u8>(), any::<bool>()).prop_map(|((block, blocks), seed, fua)| RawOp::Write {
            block,
            blocks,
            seed,
            fua
        }),
        range.clone().prop_map(|(block, blocks)| RawOp::Read { block, blocks }),
        range.clone().prop_map(|(block, blocks)| RawOp::Unmap { block, blocks }),
        range.clone().prop_map(|(block, blocks)| RawOp::Zero { block, blocks }),
        Just(RawOp::Flush),
        range.prop_map(|(block, blocks)| RawOp::Status { block, blocks }),
    ]
}

fn to_io(op: &RawOp) -> IoOp {
    let b = |n: u64| n * 4096;
    match *op {
        RawOp::Write { block, blocks, seed, fua } => {
            let len = b(blocks) as usize;
            IoOp::Write { offset: b(block), buf: AlignedBuf::from_slice(&pattern(len, seed)), range: 0..len, fua }
        }
        RawOp::Read { block, blocks } => {
            let len = b(blocks) as usize;
            IoOp::Read { offset: b(block), buf: AlignedBuf::zeroed(len), range: 0..len }
        }
        RawOp::Unmap { block, blocks } => IoOp::Unmap { offset: b(block), len: b(blocks) },
        RawOp::Zero { block, blocks } => IoOp::WriteZeroes { offset: b(block), len: b(blocks) },
        RawOp::Flush => IoOp::Flush,
        RawOp::Status { block, blocks } => IoOp::BlockStatus { offset: b(block), len: b(blocks) },
    }
}

/// Result and any data read, comparable across engines.
fn one(e: &mut dyn Backend, op: IoOp) -> (Result<IoDone, EngineError>, Vec<u8>) {
    e.submit(IoRequest { tag: 0, op }).unwrap();
    outcome(next_completion(e))
}

/// Waits for the engine's next completion.
fn next_completion(e: &mut dyn Backend) -> IoCompletion {
    let mut out = Vec::new();
    while out.is_empty() {
        e.reap(&mut out, 1).unwrap();
    }
    out.pop().unwrap()
}

fn outcome(c: IoCompletion) -> (Result<IoDone, EngineError>, Vec<u8>) {
    let data = match c.req.op {
        IoOp::Read { buf, .. } => buf.as_slice().to_vec(),
        _ => vec![],
    };
    (c.result, data)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Buffered, O_DIRECT, or buffered on tmpfs (where lone reads and writes are done in
    /// place), when the machine has a tmpfs at /dev/shm.
    #[test]
    fn uring_and_sync_engines_agree(ops in prop::collection::vec(raw_op(), 1..30), direct in any::<bool>(), in_memory in any::<bool>()) {
        let (dir, direct) = match (in_memory, tmpfs_dir()) {
            (true, Ok(d)) => (d, false),
            _ => (tempfile::tempdir().unwrap(), direct),
        };
        let mut u = UringEngine::new(image(&dir, "u.img", direct), 32).unwrap();
        let mut s = SyncEngine::new(image(&dir, "s.img", direct));
        for op in &ops {
            let (ru, du) = one(&mut u, to_io(op));
            let (rs, ds) = one(&mut s, to_io(op));
            prop_assert_eq!(&ru, &rs, "{:?}", op);
            prop_assert!(du == ds, "read data differs for {:?}", op);
        }
        let a = std::fs::read(dir.path().join("u.img")).unwrap();
        let b = std::fs::read(dir.path().join("s.img")).unwrap();
        prop_assert!(a == b, "final images differ");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Two engines in one worker's ring, each op applied to both between the other's, give
    /// what the synchronous engine gives; detached, an engine works on another thread.
    #[test]
    fn engines_sharing_a_worker_ring_agree_with_sync(ops in prop::collection::vec(raw_op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let host = std::sync::Arc::new(UringHost::new(64).unwrap());
        let mut a = UringEngine::new(image(&dir, "a.img", false), 32).unwrap();
        let mut b = UringEngine::new(image(&dir, "b.img", true), 32).unwrap();
        prop_assert!(a.attach(&host).unwrap() && b.attach(&host).unwrap(), "both join the ring");
        prop_assert!(a.hosted() && b.hosted());
        // Allocation after ZERO_RANGE differs between buffered and O_DIRECT images, so each
        // engine is compared with a synchronous engine in its own mode.
        let mut s = SyncEngine::new(image(&dir, "s.img", false));
        let mut sd = SyncEngine::new(image(&dir, "sd.img", true));
        for op in &ops {
            // Both submitted before either is reaped: their CQEs share the queue.
            a.submit(IoRequest { tag: 1, op: to_io(op) }).unwrap();
            let (rb, db) = one(&mut b, to_io(op));
            let (ra, da) = outcome(next_completion(&mut a));
            let (rs, ds) = one(&mut s, to_io(op));
            let (rsd, dsd) = one(&mut sd, to_io(op));
            prop_assert_eq!(&ra, &rs, "{:?}", op);
            prop_assert_eq!(&rb, &rsd, "{:?}", op);
            prop_assert!(da == ds && db == dsd, "read data differs for {:?}", op);
        }
        a.detach().unwrap();
        prop_assert!(!a.hosted());
        let moved = std::thread::spawn(move || {
            let (r, data) = one(&mut a, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(SIZE as usize), range: 0..SIZE as usize });
            r.map(|_| data)
        });
        let data = moved.join().unwrap().unwrap();
        prop_assert!(data == std::fs::read(dir.path().join("s.img")).unwrap(), "the detached engine reads the image");
        let a_img = std::fs::read(dir.path().join("a.img")).unwrap();
        let b_img = std::fs::read(dir.path().join("b.img")).unwrap();
        prop_assert!(a_img == b_img, "final images differ");
    }
}

#[test]
fn a_hosted_engine_batches_a_full_queue_from_its_registered_arena() {
    let dir = tempfile::tempdir().unwrap();
    let host = std::sync::Arc::new(UringHost::new(64).unwrap());
    let mut e = UringEngine::new(image(&dir, "h.img", true), 32).unwrap();
    assert!(e.attach(&host).unwrap());
    fill_the_queue_then_reap_it(&mut e);
    drop(e);
    let on_disk = std::fs::read(dir.path().join("h.img")).unwrap();
    for i in 0..32usize {
        assert!(on_disk[i * 4096..(i + 1) * 4096].iter().all(|&x| x == i as u8), "block {i}");
    }
}

/// A node's data area registered in the worker's ring: reads into a borrowed view of it
/// go through that fixed buffer (a view marked with a wrong index fails, which a plain read
/// would not), and land in the area.
#[test]
fn borrowed_views_of_a_registered_area_use_its_fixed_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let host = std::sync::Arc::new(UringHost::new(64).unwrap());
    let img = image(&dir, "f.img", true);
    img.write_at(AlignedBuf::from_slice(&pattern(1 << 20, 4)).as_slice(), 0, true).unwrap();
    let mut e = UringEngine::new(img, 8).unwrap();
    assert!(e.attach(&host).unwrap());
    // A node's data area, registered as a fixed buffer of the worker's ring.
    let area = std::sync::Arc::new(shmem::SharedMemory::create("area", 256 << 10).unwrap());
    let index = host.register_buffer(|_| area.clone()).expect("a fixed-buffer slot");
    let view = |offset: u64, fixed: u16| {
        let mut v = AlignedBuf::over_shared(&area, offset, 64 << 10).expect("inside the area");
        // For the right index, the registration covers the view; a wrong index is the
        // point of the second read, and the kernel refuses it without touching memory.
        v.set_fixed(fixed);
        v
    };
    let read = |e: &mut UringEngine, buf: AlignedBuf| {
        e.submit(IoRequest { tag: 0, op: IoOp::Read { offset: 64 << 10, buf, range: 0..64 << 10 } }).unwrap();
        next_completion(e).result
    };
    read(&mut e, view(128 << 10, index)).unwrap();
    let mut landed = vec![0u8; 64 << 10];
    area.read(128 << 10, &mut landed).unwrap();
    assert_eq!(landed, &pattern(1 << 20, 4)[64 << 10..128 << 10]);
    let wrong = index.wrapping_add(1);
    assert!(read(&mut e, view(0, wrong)).is_err(), "a view under an unregistered index must fail");
    host.unregister_buffer(index);
}

/// A temporary directory on tmpfs, or why there is none.
fn tmpfs_dir() -> Result<tempfile::TempDir, String> {
    let dir = tempfile::tempdir_in("/dev/shm").map_err(|e| format!("no /dev/shm to make a directory in: {e}"))?;
    match rustix::fs::statfs(dir.path()) {
        Ok(s) if s.f_type == libc::TMPFS_MAGIC => Ok(dir),
        _ => Err("/dev/shm is not a tmpfs".into()),
    }
}

/// The prerequisite, or `None` after saying why the test skips (a failure under CI=true).
#[track_caller]
fn or_skip<T>(found: Result<T, String>) -> Option<T> {
    match found {
        Ok(t) => Some(t),
        Err(why) => {
            assert!(skip_because(Some(why)));
            None
        }
    }
}

/// A write of `len` bytes of `pattern(len, seed)` at `offset`, in one of the engine's own
/// buffers, tagged with its seed.
fn pattern_write(e: &mut UringEngine, offset: u64, len: usize, seed: u8, fua: bool) -> IoRequest {
    let mut buf = e.buffer(len);
    buf.as_mut_slice().copy_from_slice(&pattern(len, seed));
    IoRequest { tag: u64::from(seed), op: IoOp::Write { offset, buf, range: 0..len, fua } }
}

/// Reaps until `n` completions are in (or a bounded number of waits went by).
fn reap_n(e: &mut UringEngine, n: usize) -> Vec<IoCompletion> {
    let mut done = Vec::new();
    for _ in 0..1000 {
        if done.len() >= n {
            break;
        }
        let want = n - done.len();
        e.reap(&mut done, want).unwrap();
    }
    done
}

#[test]
fn lone_requests_on_a_tmpfs_image_are_done_in_place_and_the_rest_go_through_the_ring() {
    let Some(dir) = or_skip(tmpfs_dir()) else { return };
    let mut e = UringEngine::new(image(&dir, "m.img", false), 32).unwrap();
    let write = pattern_write;
    // A lone write and a lone read: done in place, already complete when submit returns.
    let req = write(&mut e, 8192, 4096, 1, false);
    e.submit(req).unwrap();
    assert_eq!(e.in_place(), 1);
    let mut out = Vec::new();
    e.reap(&mut out, 0).unwrap();
    assert!(matches!(out.as_slice(), [c] if c.result == Ok(IoDone::Done)), "{out:?}");
    let (r, data) = one(&mut e, IoOp::Read { offset: 8192, buf: AlignedBuf::zeroed(4096), range: 0..4096 });
    assert_eq!((r, e.in_place()), (Ok(IoDone::Done), 2));
    assert!(data == pattern(4096, 1), "the in-place read returns the in-place write");
    // A FUA write and one larger than the in-place limit go through the ring (the image is
    // sparse, so not even its mapping takes the large one), and so does anything submitted
    // while they are in flight.
    let (fua, large) = (write(&mut e, 0, 4096, 2, true), write(&mut e, 1 << 20, 1 << 20, 3, false));
    e.submit(fua).unwrap();
    e.submit(large).unwrap();
    e.submit(IoRequest { tag: 4, op: IoOp::Read { offset: 8192, buf: AlignedBuf::zeroed(4096), range: 0..4096 } })
        .unwrap();
    let done = reap_n(&mut e, 3);
    assert_eq!(e.in_place(), 2, "nothing went in place while the ring had requests");
    assert_eq!(done.len(), 3);
    for c in done {
        assert_eq!(c.result, Ok(IoDone::Done), "request {}", c.req.tag);
        if let IoOp::Read { buf, .. } = &c.req.op {
            assert!(buf.as_slice() == pattern(4096, 1).as_slice());
        }
    }
    let file = std::fs::read(dir.path().join("m.img")).unwrap();
    assert!(file[..4096] == pattern(4096, 2) && file[1 << 20..2 << 20] == pattern(1 << 20, 3));
}

#[test]
fn writes_to_a_tmpfs_image_go_through_its_mapping_also_after_it_grows_and_reads_keep_it_sparse() {
    let Some(dir) = or_skip(tmpfs_dir()) else { return };
    let img = image(&dir, "g.img", false);
    // The first three MiB allocated (the mapping takes writes only where pages exist).
    img.write_at(&vec![9u8; 3 << 20], 0, false).unwrap();
    let mut e = UringEngine::new(img, 32).unwrap();
    let write = |e: &mut UringEngine, offset: u64, len: usize, seed: u8| pattern_write(e, offset, len, seed, false);
    // Writes far above the lone-request limit, several submitted before any reap: all are
    // copied in place, so each is complete when its submit returns.
    for (i, seed) in [1u8, 2, 3].into_iter().enumerate() {
        let req = write(&mut e, i as u64 * (1 << 20), 1 << 20, seed);
        e.submit(req).unwrap();
    }
    assert_eq!(e.in_place(), 3, "large writes to a mapped tmpfs image are done in place");
    let mut out = Vec::new();
    e.reap(&mut out, 0).unwrap();
    assert!(out.len() == 3 && out.iter().all(|c| c.result == Ok(IoDone::Done)), "{out:?}");
    // A read of a hole must not allocate it (a read through a shared tmpfs mapping would).
    let (r, data) = one(&mut e, IoOp::Read { offset: 3 << 20, buf: AlignedBuf::zeroed(4096), range: 0..4096 });
    assert!(r == Ok(IoDone::Done) && data.iter().all(|&b| b == 0));
    let hole = one(&mut e, IoOp::BlockStatus { offset: 3 << 20, len: 1 << 20 }).0;
    assert_eq!(hole, Ok(IoDone::Extents(vec![scsi::AllocExtent { len: 1 << 20, mapped: false }])));
    // A write into a hole is not done in place (on a full tmpfs, its page fault would
    // kill the gateway) but through the ring, which allocates.
    let before = e.in_place();
    let fua = pattern_write(&mut e, 3 << 20, 4096, 5, true);
    e.submit(fua).unwrap();
    let req = write(&mut e, (3 << 20) + 8192, 8192, 6);
    e.submit(req).unwrap();
    assert_eq!(e.in_place(), before, "neither a FUA write nor a write into a hole is done in place");
    let done = reap_n(&mut e, 2);
    assert!(done.len() == 2 && done.iter().all(|c| c.result == Ok(IoDone::Done)), "{done:?}");
    // Grown, the image takes a write past its old end, where pages exist, through the new
    // mapping.
    e.grow(SIZE * 2).unwrap();
    e.image().write_at(&vec![9u8; 1 << 20], SIZE, false).unwrap();
    let before = e.in_place();
    let req = write(&mut e, SIZE + 4096, 8192, 4);
    e.submit(req).unwrap();
    assert_eq!(e.in_place(), before + 1, "the grown image is mapped again");
    let mut out = Vec::new();
    e.reap(&mut out, 0).unwrap();
    assert!(matches!(out.as_slice(), [c] if c.result == Ok(IoDone::Done)), "{out:?}");
    let file = std::fs::read(dir.path().join("g.img")).unwrap();
    assert_eq!(file.len() as u64, SIZE * 2);
    for (i, seed) in [1u8, 2, 3].into_iter().enumerate() {
        assert!(file[i << 20..(i + 1) << 20] == pattern(1 << 20, seed), "write {seed} landed in the file");
    }
    assert!(file[SIZE as usize + 4096..SIZE as usize + 12288] == pattern(8192, 4), "the write past the old end landed");
    assert!(file[3 << 20..(3 << 20) + 4096] == pattern(4096, 5), "the FUA write landed");
    assert!(file[(3 << 20) + 8192..(3 << 20) + 16384] == pattern(8192, 6), "the write into a hole landed");
}

/// A 4 MiB tmpfs mounted for one test, unmounted (lazily, should it be busy) on drop.
struct SmallTmpfs(tempfile::TempDir);

impl SmallTmpfs {
    fn mount() -> Result<SmallTmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "pangate-test"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("cannot mount a tmpfs (needs root and mount(8))".into());
        }
        Ok(SmallTmpfs(dir))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_tmpfs_fails_writes_with_enospc_and_the_gateway_survives() {
    let Some(fs) = or_skip(SmallTmpfs::mount()) else { return };
    // A sparse 16 MiB image on a 4 MiB tmpfs, mapped for writes: where a write fault on a
    // hole would raise SIGBUS, the engine must write the usual way and report ENOSPC.
    let opts = ImageOptions { create_size: Some(16 << 20), ..Default::default() };
    let img = Image::open(&fs.0.path().join("full.img"), &opts).unwrap();
    let mut e = UringEngine::new(img, 8).unwrap();
    let mut failed = None;
    for i in 0..16u64 {
        let mut buf = e.buffer(1 << 20);
        buf.as_mut_slice().fill(i as u8 + 1);
        let (r, _) = one(&mut e, IoOp::Write { offset: i << 20, buf, range: 0..1 << 20, fua: false });
        if r.is_err() {
            failed = Some((i, r));
            break;
        }
    }
    let (at, r) = failed.expect("16 MiB cannot fit in a 4 MiB tmpfs");
    assert!(at <= 4, "failed only at MiB {at}");
    let err = r.unwrap_err();
    assert!(
        matches!(err, EngineError::Os(libc::ENOSPC)) || matches!(err, EngineError::Short { .. }),
        "a full tmpfs is ENOSPC (or a short write), not {err:?}"
    );
    // What was acknowledged is there, and rewriting allocated pages still works, in place.
    let (r, data) = one(&mut e, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(4096), range: 0..4096 });
    assert!(r == Ok(IoDone::Done) && data.iter().all(|&b| b == 1));
    let before = e.in_place();
    let mut buf = e.buffer(1 << 20);
    buf.as_mut_slice().fill(0xee);
    let (r, _) = one(&mut e, IoOp::Write { offset: 0, buf, range: 0..1 << 20, fua: false });
    assert_eq!((r, e.in_place()), (Ok(IoDone::Done), before + 1), "an allocated MiB is rewritten through the mapping");
    // Unmapped, that MiB is a hole again: a write there goes the usual way, and lands.
    assert_eq!(one(&mut e, IoOp::Unmap { offset: 0, len: 1 << 20 }).0, Ok(IoDone::Done));
    // (Larger than a lone request done with pwrite in place, so `in_place` counts only the
    // mapping.)
    let rewrite = pattern_write(&mut e, 4096, 1 << 19, 7, false);
    let (r, _) = one(&mut e, rewrite.op);
    assert_eq!((r, e.in_place()), (Ok(IoDone::Done), before + 1), "no mapped write into an unmapped range");
    let (_, data) = one(&mut e, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(8192), range: 0..8192 });
    assert!(data[..4096].iter().all(|&b| b == 0) && data[4096..] == pattern(1 << 19, 7)[..4096]);
    drop(e);
}

#[test]
fn probe_succeeds_here_or_says_why() {
    match uring::probe() {
        Ok(()) => {}
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("io_uring is required in CI: {why}"),
        Err(why) => eprintln!("skipping: io_uring unavailable: {why}"),
    }
}

#[test]
fn auto_engine_opens_uring_where_supported() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_engine(image(&dir, "a.img", false), EngineKind::Auto, 8).unwrap();
    assert_eq!(e.name(), if uring::probe().is_ok() { "io_uring" } else { "sync" });
    let e = open_engine(image(&dir, "b.img", false), EngineKind::Sync, 8).unwrap();
    assert_eq!(e.name(), "sync");
}

#[test]
fn uring_batches_a_full_queue_and_hands_back_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = UringEngine::new(image(&dir, "q.img", true), 32).unwrap();
    fill_the_queue_then_reap_it(&mut e);
}

/// Writes byte `i` over block `i` for each of the engine's 32 slots, from buffers of its
/// registered arena, checks that a 33rd request is handed back, and reaps all 32.
fn fill_the_queue_then_reap_it(e: &mut UringEngine) {
    for i in 0..32u64 {
        let mut buf = e.buffer(4096);
        assert!(buf.fixed_index().is_some(), "buffers come from the registered arena");
        buf.as_mut_slice().fill(i as u8);
        e.submit(IoRequest { tag: i, op: IoOp::Write { offset: i * 4096, buf, range: 0..4096, fua: false } }).unwrap();
    }
    let extra = IoRequest { tag: 99, op: IoOp::Flush };
    let (back, err) = e.submit(extra).unwrap_err();
    assert_eq!((back.tag, err), (99, EngineError::Full));
    let done = reap_n(e, 32);
    assert_eq!(done.len(), 32);
    assert!(done.iter().all(|c| c.result.is_ok()));
}

/// An io_uring engine over an O_DIRECT image whose first MiB is allocated: reads of holes
/// complete inline at submission, reads of allocated blocks go to the device and finish
/// after it.
fn uring_over_allocated_blocks(dir: &tempfile::TempDir, name: &str) -> UringEngine {
    let img = image(dir, name, true);
    img.write_at(AlignedBuf::from_slice(&pattern(1 << 20, 1)).as_slice(), 0, true).unwrap();
    UringEngine::new(img, 8).unwrap()
}

#[test]
fn non_blocking_reaps_see_completions() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = uring_over_allocated_blocks(&dir, "n.img");
    for i in 0..4u64 {
        let buf = e.buffer(4096);
        e.submit(IoRequest { tag: i, op: IoOp::Read { offset: i * 65536, buf, range: 0..4096 } }).unwrap();
    }
    let mut done = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while done.len() < 4 {
        assert!(std::time::Instant::now() < deadline, "polling without waiting never saw the completions");
        e.reap(&mut done, 0).unwrap();
        std::thread::yield_now();
    }
    assert!(done.iter().all(|c| c.result.is_ok()));
}

#[test]
fn the_completion_eventfd_wakes_a_sleeper_for_every_batch() {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let dir = tempfile::tempdir().unwrap();
    let mut e = uring_over_allocated_blocks(&dir, "w.img");
    let mut done = Vec::new();
    let mut waits = 0;
    for round in 0..20u64 {
        for i in 0..4u64 {
            let buf = e.buffer(4096);
            let op = IoOp::Read { offset: ((round * 4 + i) % 256) * 4096, buf, range: 0..4096 };
            e.submit(IoRequest { tag: i, op }).unwrap();
        }
        let before = done.len();
        e.reap(&mut done, 0).unwrap(); // hands the SQEs to the kernel without waiting
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while done.len() < before + 4 {
            assert!(std::time::Instant::now() < deadline, "round {round}: completions never arrived");
            let fd = e.completion_fd().expect("the io_uring engine has a completion eventfd");
            let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
            let n = poll(&mut fds, Some(&Timespec { tv_sec: 10, tv_nsec: 0 })).unwrap();
            assert_eq!(n, 1, "round {round}: the eventfd did not signal finished I/O");
            let _ = rustix::io::read(fd, &mut [0u8; 8]);
            waits += 1;
            e.reap(&mut done, 0).unwrap();
        }
    }
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert!(waits > 0, "every read finished at submission: the eventfd was never needed");
    assert!(SyncEngine::new(image(&dir, "s.img", false)).completion_fd().is_none(), "nothing to wait for");
}

#[test]
fn out_of_range_requests_complete_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = UringEngine::new(image(&dir, "r.img", false), 4).unwrap();
    let (r, _) = one(&mut e, IoOp::Read { offset: SIZE - 512, buf: AlignedBuf::zeroed(4096), range: 0..4096 });
    assert_eq!(r, Err(EngineError::OutOfRange));
}

#[test]
fn short_read_of_a_truncated_image_is_a_medium_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(&dir, "t.img", false);
    let path = img.path.clone();
    let mut e = UringEngine::new(img, 4).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
    let (r, _) = one(&mut e, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(8192), range: 0..8192 });
    assert_eq!(r, Err(EngineError::Short { done: 4096, wanted: 8192 }));
}

/// With the write to the same block submitted between two COMPARE AND WRITEs, and all
/// three in flight at once, the range lock must serialise them in arrival order: CAW(A→B),
/// WRITE(C), CAW(C→D) all succeed and the block ends as D. Without the lock the write
/// could land between the first CAW's read and write.
#[test]
fn compare_and_write_is_atomic_against_overlapping_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = UringEngine::new(image(&dir, "c.img", true), 64).unwrap();
    let mut d = driver(config(4096, SIZE), Box::new(engine));
    let [a, b, c, dd] = [1u8, 2, 3, 4].map(|s| pattern(4096, s));
    for round in 0..50u64 {
        let lba = round % 16;
        expect_good(&run(&mut d, &rw16(0x8A, lba, 1, false), &a));
        let nexus = nexus(false);
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[2..10].copy_from_slice(&lba.to_be_bytes());
        caw[13] = 1;
        d.submit(1, &nexus, &caw, &[a.clone(), b.clone()].concat());
        d.submit(2, &nexus, &rw16(0x8A, lba, 1, false), &c);
        d.submit(3, &nexus, &caw, &[c.clone(), dd.clone()].concat());
        let mut out: Vec<Finished> = Vec::new();
        for _ in 0..1000 {
            if out.len() == 3 {
                break;
            }
            d.poll(&mut out, true).unwrap();
        }
        assert_eq!(out.len(), 3);
        for f in &out {
            assert_eq!(f.completion.status, Status::Good, "round {round} tag {}: {:02x?}", f.tag, f.completion.sense);
        }
        assert_eq!(read4k(&mut d, lba), dd, "round {round}");
    }
}

fn read4k(d: &mut gateway::lun::LunDriver, lba: u64) -> Vec<u8> {
    let f = run(d, &rw16(0x88, lba, 1, false), &[]);
    expect_good(&f);
    f.data().to_vec()
}

/// The NVMe engine and the io_uring engine over a file give the same results and bytes for
/// the same operations (block status aside: NVMe reports every block mapped), on the test
/// VM's emulated drive, which is as large as the file, both in one worker's ring.
#[test]
fn nvme_drive_agrees_with_the_uring_engine() {
    let Some(dev) = nvme_or_in_vm("nvme_drive_agrees_with_the_uring_engine") else { return };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 16, ..ProptestConfig::default() });
    runner
        .run(&prop::collection::vec(raw_op(), 1..30), |ops| {
            let dir = tempfile::tempdir().unwrap();
            let mut n = NvmeEngine::open(&dev, false, 32).unwrap();
            prop_assert_eq!(n.size(), SIZE, "the drive is as large as the file");
            prop_assert_eq!(one(&mut n, IoOp::WriteZeroes { offset: 0, len: SIZE }).0, Ok(IoDone::Done));
            let mut u = UringEngine::new(image(&dir, "u.img", false), 32).unwrap();
            let host = std::sync::Arc::new(UringHost::new(64).unwrap());
            prop_assert!(n.attach(&host).unwrap() && u.attach(&host).unwrap(), "both join the worker's ring");
            prop_assert!(n.hosted());
            for op in &ops {
                let (rn, dn) = one(&mut n, to_io(op));
                let (ru, du) = one(&mut u, to_io(op));
                match op {
                    RawOp::Status { .. } => prop_assert_eq!(rn.is_ok(), ru.is_ok(), "{:?}", op),
                    _ => prop_assert_eq!(&rn, &ru, "{:?}", op),
                }
                prop_assert!(dn == du, "read data differs for {:?}", op);
            }
            let (r, data) =
                one(&mut n, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(SIZE as usize), range: 0..SIZE as usize });
            prop_assert_eq!(r, Ok(IoDone::Done));
            prop_assert!(data == std::fs::read(dir.path().join("u.img")).unwrap(), "final contents differ");
            Ok(())
        })
        .unwrap();
}

/// A request of more commands than the queue has room for (a whole-drive write split at
/// the transfer limit, on a queue two deep) waits for room and completes; requests past
/// the queue's depth are handed back as full; writes outside the drive are refused.
#[test]
fn nvme_drive_splits_large_requests_and_bounds_its_queue() {
    let Some(dev) = nvme_or_in_vm("nvme_drive_splits_large_requests_and_bounds_its_queue") else { return };
    let mut n = NvmeEngine::open(&dev, false, 2).unwrap();
    let ns = *n.namespace();
    assert!(ns.max_transfer_bytes() < SIZE / 2, "{ns:?}: the write takes more commands than the queue holds");
    assert_eq!(n.block_size(), Some(512));
    let data = whole_drive_round_trip(&mut n, 7);
    // Two requests fill the queue; the third is handed back.
    let write =
        |at: u64| IoOp::Write { offset: at, buf: AlignedBuf::from_slice(&data[..4096]), range: 0..4096, fua: false };
    for tag in 0..2 {
        n.submit(IoRequest { tag, op: write(tag * 4096) }).unwrap();
    }
    let (back, e) = n.submit(IoRequest { tag: 2, op: write(8192) }).unwrap_err();
    assert_eq!((back.tag, e), (2, EngineError::Full));
    let mut out = Vec::new();
    while out.len() < 2 {
        n.reap(&mut out, 2).unwrap();
    }
    assert!(out.iter().all(|c| c.result.is_ok()));
    let (r, _) = one(&mut n, IoOp::Unmap { offset: SIZE - 512, len: 1024 });
    assert_eq!(r, Err(EngineError::OutOfRange));
    let (r, _) = one(&mut n, IoOp::Unmap { offset: 4096, len: 8192 });
    assert_eq!(r, Ok(IoDone::Done));
    let (_, back) = one(&mut n, IoOp::Read { offset: 4096, buf: AlignedBuf::zeroed(8192), range: 0..8192 });
    assert!(back.iter().all(|&b| b == 0), "deallocated blocks read as zeros");

    // The same whole-drive write and read in a worker's ring of four entries, then back on
    // a ring of its own.
    let host = std::sync::Arc::new(UringHost::new(4).unwrap());
    assert!(n.attach(&host).unwrap() && n.hosted() && n.completion_fd().is_none());
    let data = whole_drive_round_trip(&mut n, 8);
    n.detach().unwrap();
    assert!(!n.hosted());
    let (_, back) = one(&mut n, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(4096), range: 0..4096 });
    assert!(back == data[..4096], "and through its own ring again");
}

/// Writes a pattern over the whole drive with FUA in one request, reads it back in one,
/// and returns it.
fn whole_drive_round_trip(n: &mut NvmeEngine, seed: u8) -> Vec<u8> {
    let data = pattern(SIZE as usize, seed);
    let (r, _) =
        one(n, IoOp::Write { offset: 0, buf: AlignedBuf::from_slice(&data), range: 0..SIZE as usize, fua: true });
    assert_eq!(r, Ok(IoDone::Done));
    let (r, back) = one(n, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(SIZE as usize), range: 0..SIZE as usize });
    assert_eq!(r, Ok(IoDone::Done));
    assert!(back == data, "the drive reads back what was written");
    data
}

/// `engine = "nvme"` on a file says what the engine drives; `auto` on a file is not NVMe.
#[test]
fn the_nvme_engine_refuses_what_is_not_an_nvme_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img");
    let opts = ImageOptions { create_size: Some(SIZE), direct: false, read_only: false };
    let e = open_path(&path, &opts, EngineKind::Nvme, 8).unwrap_err();
    assert!(e.to_string().contains("generic character device"), "{e}");
    assert_ne!(open_path(&path, &opts, EngineKind::Auto, 8).unwrap().name(), "nvme");
    let e = open_path(std::path::Path::new("/dev/null"), &opts, EngineKind::Nvme, 8).unwrap_err();
    assert!(e.to_string().contains("/dev/null"), "{e}");
}
