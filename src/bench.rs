//! `pangate bench`: an initiator-side load generator over the rings.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use gateway::ring::initiator::{Data, Initiator, Response};
use gateway::ring::proto::Region;
use gateway::workload::XorShift;
use scsi::build::rw16;
use serde_json::json;

use crate::NodeArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    Randread,
    Randwrite,
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WritePath {
    Direct,
    Staged,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Virtual target.
    #[arg(long, default_value_t = 0)]
    target: u16,
    /// Virtual LUN.
    #[arg(long, default_value_t = 0)]
    lun: u16,
    /// Workload.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    rw: Rw,
    /// Bytes per I/O (a multiple of the block size).
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Queue pairs, one thread each.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Run time.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Write path.
    #[arg(long, value_enum, default_value_t = WritePath::Direct)]
    path: WritePath,
    /// Write patterns and check every read of them (write, then read back, per slot).
    #[arg(long)]
    verify: bool,
    /// Poll the rings this long before sleeping on the doorbell (polling mode).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
}

/// What one queue measured.
#[derive(Debug, Default)]
struct QueueResult {
    ios: u64,
    errors: u64,
    mismatches: u64,
    lat_ns: Vec<u32>,
    first_error: Option<String>,
}

/// The verify pattern of a block: its LBA and a nonce, repeated.
fn fill(buf: &mut [u8], lba: u64, nonce: u64) {
    for (i, chunk) in buf.chunks_mut(16).enumerate() {
        let mut w = [0u8; 16];
        w[..8].copy_from_slice(&(lba + (i as u64 * 16) / 512).to_le_bytes());
        w[8..].copy_from_slice(&nonce.to_le_bytes());
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Io,
    VerifyWrite,
    VerifyRead,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    index: u64,
    region: Region,
    lba: u64,
    nonce: u64,
    phase: Phase,
    started: Instant,
}

fn run_queue(a: &BenchArgs, q: u32, blocks: u64, block_size: u32, deadline: Instant) -> anyhow::Result<QueueResult> {
    let per = u64::from(a.bs / block_size);
    let mut i: Initiator = a.node.connect(a.qd.max(256), (u64::from(a.qd) * u64::from(a.bs) * 2).max(1 << 20))?;
    i.set_spin(Duration::from_micros(a.spin_us));
    i.execute(a.target, a.lun, &[0; 6], Data::None)?;
    // Each queue works in its own slice of the LUN, so verify patterns never collide.
    let span = (blocks / u64::from(a.queues)) / per * per;
    anyhow::ensure!(span >= per, "the LUN is too small for {} queues of {}-byte I/O", a.queues, a.bs);
    let base = u64::from(q) * span;
    let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15 ^ (u64::from(q) + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut seq_at = 0u64;
    // With --verify each slot also owns its own part of the slice, so no two commands in
    // flight ever touch the same block and every read must return that slot's pattern.
    let slot_span = (span / u64::from(a.qd)) / per * per;
    anyhow::ensure!(
        !a.verify || slot_span >= per,
        "the LUN is too small to verify {} slots of {}-byte I/O",
        a.qd,
        a.bs
    );
    let mut next_lba = |rng: &mut XorShift, slot: u64| match a.rw {
        _ if a.verify => base + slot * slot_span + (rng.next_u64() % (slot_span / per)) * per,
        Rw::Randread | Rw::Randwrite => base + (rng.next_u64() % (span / per)) * per,
        Rw::Read | Rw::Write => {
            let l = base + seq_at % span;
            seq_at += per;
            l
        }
    };
    let staged = a.path == WritePath::Staged;
    let mut slots: foldhash::HashMap<u32, Slot> = foldhash::HashMap::default();
    let mut res = QueueResult::default();
    let mut scratch = vec![0u8; a.bs as usize];
    let issue = |i: &mut Initiator, s: &mut Slot, scratch: &mut Vec<u8>| -> anyhow::Result<u32> {
        let write = match s.phase {
            Phase::VerifyWrite => true,
            Phase::VerifyRead => false,
            Phase::Io => matches!(a.rw, Rw::Randwrite | Rw::Write),
        };
        s.started = Instant::now();
        let blocks = a.bs / block_size;
        if write {
            if matches!(s.phase, Phase::VerifyWrite) {
                fill(scratch, s.lba, s.nonce);
                i.write_data(s.region, scratch)?;
            }
            Ok(i.queue(a.target, a.lun, &rw16(0x8A, s.lba, blocks, false), Data::Out { region: s.region, staged })?)
        } else {
            Ok(i.queue(a.target, a.lun, &rw16(0x88, s.lba, blocks, false), Data::In(s.region))?)
        }
    };
    for k in 0..a.qd {
        let region = i.alloc(a.bs).ok_or_else(|| anyhow::anyhow!("data area too small"))?;
        let lba = next_lba(&mut rng, u64::from(k));
        let phase = if a.verify { Phase::VerifyWrite } else { Phase::Io };
        let mut s = Slot { index: u64::from(k), region, lba, nonce: u64::from(k), phase, started: Instant::now() };
        if !a.verify && matches!(a.rw, Rw::Randwrite | Rw::Write) {
            i.write_data(region, &vec![0xA5; a.bs as usize])?;
        }
        let seq = issue(&mut i, &mut s, &mut scratch)?;
        slots.insert(seq, s);
    }
    i.kick()?;
    let mut out: Vec<Response> = Vec::new();
    let mut nonce = u64::from(a.qd);
    while !slots.is_empty() {
        i.poll(&mut out, Duration::from_millis(100))?;
        let now = Instant::now();
        let running = now < deadline;
        for r in out.drain(..) {
            let Some(mut s) = slots.remove(&r.seq) else { anyhow::bail!("response for unknown sequence {}", r.seq) };
            res.lat_ns.push(now.duration_since(s.started).as_nanos().min(u128::from(u32::MAX)) as u32);
            res.ios += 1;
            if !r.good() {
                res.errors += 1;
                res.first_error.get_or_insert_with(|| format!("status {:#x} sense {:02x?}", r.status, r.sense));
            } else if matches!(s.phase, Phase::VerifyRead) {
                i.read_data(s.region, &mut scratch)?;
                let mut want = vec![0u8; a.bs as usize];
                fill(&mut want, s.lba, s.nonce);
                if scratch != want {
                    res.mismatches += 1;
                    res.first_error.get_or_insert_with(|| format!("data mismatch at LBA {}", s.lba));
                }
            }
            let again = match s.phase {
                Phase::VerifyWrite if r.good() => {
                    s.phase = Phase::VerifyRead;
                    true
                }
                _ if running => {
                    s.lba = next_lba(&mut rng, s.index);
                    if a.verify {
                        nonce += 1;
                        s.nonce = nonce;
                        s.phase = Phase::VerifyWrite;
                    }
                    true
                }
                _ => false,
            };
            if again {
                let seq = issue(&mut i, &mut s, &mut scratch)?;
                slots.insert(seq, s);
            }
        }
        i.kick()?;
    }
    Ok(res)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.qd >= 1 && a.queues >= 1, "--qd and --queues must be at least 1");
    let probe = a.node.connect(256, 1 << 20)?;
    let lun = probe
        .luns()
        .iter()
        .find(|l| l.target == a.target && l.lun == a.lun)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("target {} LUN {} is not in this node's map", a.target, a.lun))?;
    drop(probe);
    anyhow::ensure!(
        a.bs.is_multiple_of(lun.block_size) && a.bs > 0,
        "--bs must be a multiple of the {}-byte block size",
        lun.block_size
    );
    anyhow::ensure!(
        !(lun.read_only && (a.verify || matches!(a.rw, Rw::Randwrite | Rw::Write))),
        "the LUN is read-only for this node"
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.seconds);
    let results: Vec<anyhow::Result<QueueResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.queues)
            .map(|q| {
                s.spawn({
                    let a = &a;
                    let lun = &lun;
                    move || run_queue(a, q, lun.blocks, lun.block_size, deadline)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("queue thread panicked"))))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64().min(a.seconds).max(f64::MIN_POSITIVE);
    let mut all = QueueResult::default();
    for r in results {
        let r = r?;
        all.ios += r.ios;
        all.errors += r.errors;
        all.mismatches += r.mismatches;
        all.lat_ns.extend(r.lat_ns);
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
    }
    all.lat_ns.sort_unstable();
    let mean = if all.lat_ns.is_empty() {
        0.0
    } else {
        all.lat_ns.iter().map(|&x| f64::from(x)).sum::<f64>() / all.lat_ns.len() as f64 / 1000.0
    };
    let iops = all.ios as f64 / elapsed;
    let report = json!({
        "rw": format!("{:?}", a.rw).to_lowercase(),
        "bs": a.bs, "qd": a.qd, "queues": a.queues, "path": format!("{:?}", a.path).to_lowercase(), "verify": a.verify, "spin_us": a.spin_us,
        "seconds": elapsed, "ios": all.ios, "iops": iops, "bw_bytes": iops * f64::from(a.bs),
        "lat_us": {"mean": mean, "p50": percentile(&all.lat_ns, 0.50), "p99": percentile(&all.lat_ns, 0.99), "p999": percentile(&all.lat_ns, 0.999)},
        "errors": all.errors, "mismatches": all.mismatches, "first_error": all.first_error,
    });
    println!("{report}");
    if all.errors > 0 || all.mismatches > 0 {
        anyhow::bail!("{} errors, {} mismatches", all.errors, all.mismatches);
    }
    Ok(())
}
