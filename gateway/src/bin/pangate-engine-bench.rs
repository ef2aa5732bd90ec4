//! Load generator for the backing-image engines, the pangate side of `bench/backend`.
//! Keeps `--qd` requests in flight on one engine for `--seconds` and prints one JSON line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use gateway::engine::{
    open_engine, Backend, EngineKind, Image, ImageOptions, IoCompletion, IoOp, IoRequest, NvmeEngine, UringEngine,
};
use gateway::workload::XorShift;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
    Read,
    Write,
}

#[derive(Debug, Parser)]
#[command(about = "Drive a pangate engine with a fio-like workload and print JSON")]
struct Args {
    /// Image file (must exist), or an NVMe namespace's generic device with `--engine nvme`.
    #[arg(long)]
    file: PathBuf,
    /// Workload.
    #[arg(long, value_enum)]
    rw: Rw,
    /// Block size in bytes.
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Run time.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Open with O_DIRECT.
    #[arg(long)]
    direct: bool,
    /// Poll for completions this long before sleeping in the kernel (0: always sleep).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// Most requests handed to the kernel per io_uring_enter.
    #[arg(long, default_value_t = gateway::engine::uring::SUBMIT_BATCH)]
    submit_batch: usize,
    /// Engine: uring, sync or nvme.
    #[arg(long, default_value = "uring")]
    engine: EngineKind,
}

/// Polls the engine without sleeping for up to `spin`, then sleeps until a completion.
fn reap_adaptive(engine: &mut dyn Backend, out: &mut Vec<IoCompletion>, spin: Duration) -> std::io::Result<()> {
    let start = Instant::now();
    loop {
        engine.reap(out, 0)?;
        if !out.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= spin {
            return engine.reap(out, 1);
        }
        std::hint::spin_loop();
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut engine: Box<dyn Backend> = match a.engine {
        EngineKind::Nvme => Box::new(NvmeEngine::open(&a.file, false, a.qd as u32)?),
        kind => {
            let image = Image::open(&a.file, &ImageOptions { create_size: None, direct: a.direct, read_only: false })?;
            if kind == EngineKind::Sync {
                open_engine(image, kind, a.qd as u32)?
            } else {
                let mut u = UringEngine::new(image, a.qd as u32)?;
                u.set_submit_batch(a.submit_batch);
                Box::new(u)
            }
        }
    };
    let blocks = engine.size() / a.bs as u64;
    anyhow::ensure!(blocks > 0, "image smaller than one block");
    // A fresh seed each run, like fio's randrepeat=0.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let mut rng = XorShift::new(seed);
    let mut seq = 0u64;
    let mut next_offset = |rng: &mut XorShift| -> u64 {
        match a.rw {
            Rw::Randread | Rw::Randwrite => (rng.next_u64() % blocks) * a.bs as u64,
            Rw::Read | Rw::Write => {
                let o = (seq % blocks) * a.bs as u64;
                seq += 1;
                o
            }
        }
    };
    let write = matches!(a.rw, Rw::Randwrite | Rw::Write);
    let make = |buf, offset| {
        let range = 0..a.bs;
        if write {
            IoOp::Write { offset, buf, range, fua: false }
        } else {
            IoOp::Read { offset, buf, range }
        }
    };
    let mut started = vec![Instant::now(); a.qd];
    for (tag, start) in started.iter_mut().enumerate() {
        let mut buf = engine.buffer(a.bs);
        buf.as_mut_slice().iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8) ^ (tag as u8));
        *start = Instant::now();
        engine.submit(IoRequest { tag: tag as u64, op: make(buf, next_offset(&mut rng)) }).map_err(|(_, e)| e)?;
    }
    let run = Duration::from_secs_f64(a.seconds);
    let t0 = Instant::now();
    let mut ios = 0u64;
    let mut lat_total = Duration::ZERO;
    let mut done = Vec::with_capacity(a.qd);
    let mut draining = false;
    let spin = Duration::from_micros(a.spin_us);
    while engine.in_flight() > 0 {
        reap_adaptive(engine.as_mut(), &mut done, spin)?;
        let now = Instant::now();
        if !draining && now.duration_since(t0) >= run {
            draining = true;
        }
        for c in done.drain(..) {
            if let Err(e) = &c.result {
                anyhow::bail!("I/O failed: {e}");
            }
            let tag = c.req.tag as usize;
            if !draining {
                ios += 1;
                lat_total += now.duration_since(started[tag]);
                let buf = c.req.op.into_buf().expect("data ops carry buffers");
                started[tag] = Instant::now();
                engine
                    .submit(IoRequest { tag: tag as u64, op: make(buf, next_offset(&mut rng)) })
                    .map_err(|(_, e)| e)?;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64().min(a.seconds.max(f64::MIN_POSITIVE));
    let iops = ios as f64 / secs;
    let lat_us = if ios > 0 { lat_total.as_secs_f64() * 1e6 / ios as f64 } else { 0.0 };
    println!(
        "{{\"engine\": \"{}\", \"iops\": {iops:.1}, \"bw_bytes\": {:.1}, \"lat_mean_us\": {lat_us:.2}, \"ios\": {ios}}}",
        engine.name(),
        iops * a.bs as f64
    );
    Ok(())
}
