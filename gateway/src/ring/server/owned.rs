//! The images a worker owns: it alone runs their LUN drivers and engines. Commands arrive
//! as [`Job`]s (from its own queue pairs or from other workers'), and leave as [`Done`]s
//! once the data-in, if any, is in the node's memory.

use std::io;
use std::sync::Arc;

use scsi::opcodes::op;
use scsi::{absent_lun, Completion, DataIn, Nexus};

use super::mesh::{Done, Job, Source};
use crate::engine::host::UringHost;
use crate::engine::AlignedBuf;
use crate::lun::OpenImage;
use crate::lun::{Direct, DirectRead, Finished};
use crate::ring::proto::Segments;
use crate::ring::shm::{PeerSlice, SharedMemory, ShmError};

/// Where a running command's data-in goes.
#[derive(Debug)]
struct Landing {
    tag: u64,
    /// The node's regions, when the engine's buffer must be copied there.
    copy_to: Option<(Arc<SharedMemory>, Segments)>,
}

#[derive(Debug, Default)]
pub(super) struct Owned {
    images: Vec<Option<OpenImage>>,
    /// The worker's io_uring, which engines join as their images arrive.
    host: Option<Arc<UringHost>>,
    in_backend: Vec<usize>,
    /// Images no map names any more (flushed, kept so indices stay stable).
    retired: Vec<bool>,
    /// Running commands by driver tag, with a free list: slots are reused, so the table
    /// stays as large as the most commands ever in flight.
    landings: Vec<Option<Landing>>,
    /// Per landing slot: how many commands have finished in it, so a barrier can tell
    /// that the command it saw there is done even if another took the slot since.
    finished_in: Vec<u32>,
    free: Vec<usize>,
    finished: Vec<Finished>,
}

impl Owned {
    /// Takes `images` as (global index, image), moving their engines into `host` where
    /// they can go.
    pub(super) fn new(images: Vec<(usize, OpenImage)>, host: Option<Arc<UringHost>>) -> Owned {
        let mut owned = Owned { host, ..Owned::default() };
        for (i, img) in images {
            owned.insert(i, img);
        }
        owned
    }

    /// Adds image `index`.
    pub(super) fn insert(&mut self, index: usize, mut image: OpenImage) {
        if let Some(host) = &self.host {
            if let Err(e) = image.driver.attach(host) {
                tracing::warn!(image = %image.name, error = %e, "the engine keeps its own ring: joining the worker's failed");
            }
        }
        if self.images.len() <= index {
            self.images.resize_with(index + 1, || None);
            self.in_backend.resize(index + 1, 0);
            self.retired.resize(index + 1, false);
        }
        self.images[index] = Some(image);
    }

    /// Image `index`, when this worker owns it.
    pub(super) fn get_mut(&mut self, index: usize) -> Option<&mut OpenImage> {
        self.images.get_mut(index).and_then(Option::as_mut)
    }

    /// Flushes image `index`; from now on it is only kept.
    pub(super) fn retire(&mut self, index: usize) -> io::Result<()> {
        let img =
            self.get_mut(index).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no image {index}")))?;
        tracing::info!(pan = %img.pan, image = %img.name, "LUN deleted");
        let flushed = crate::lun::flush(img);
        self.retired[index] = true;
        flushed
    }

    /// The commands in flight now, as (slot, commands finished in it so far): what
    /// [`Owned::passed`] waits for.
    pub(super) fn in_flight(&self) -> Vec<(usize, u32)> {
        self.landings.iter().enumerate().filter(|(_, l)| l.is_some()).map(|(i, _)| (i, self.finished_in[i])).collect()
    }

    /// Whether every command of an [`Owned::in_flight`] list has finished.
    pub(super) fn passed(&self, seen: &[(usize, u32)]) -> bool {
        seen.iter().all(|&(slot, n)| self.finished_in[slot] != n)
    }

    /// Commands with the backends.
    pub(super) fn busy(&self) -> usize {
        self.in_backend.iter().sum()
    }

    /// Whether every image with commands in its backend will say when they finish: in the
    /// worker's ring (`hosted`) or, without one, through its completion eventfd. Engines
    /// that cannot signal are napped on instead.
    pub(super) fn signalled(&self) -> bool {
        let mut busy = self.images.iter().zip(&self.in_backend).filter(|(_, &n)| n > 0);
        busy.all(|(img, _)| {
            img.as_ref().is_none_or(|i| {
                if self.host.is_some() {
                    i.driver.hosted()
                } else {
                    i.driver.completion_fd().is_some()
                }
            })
        })
    }

    /// The completion eventfd of each image with commands in its backend (`None` where the
    /// engine has none: its completions can only be polled for).
    pub(super) fn completion_fds(&self) -> impl Iterator<Item = Option<std::os::fd::BorrowedFd<'_>>> {
        let busy = self.images.iter().zip(&self.in_backend).filter(|(_, &n)| n > 0);
        busy.map(|(img, _)| img.as_ref().and_then(|i| i.driver.completion_fd()))
    }

    /// Starts a job on its image. Jobs that fail before reaching the engine are answered
    /// at once through `out`.
    pub(super) fn start(&mut self, mut job: Job, out: &mut Vec<Done>) {
        let Some(img) = self.images.get_mut(job.image).and_then(Option::as_mut) else {
            // Only a control-plane bug can map a LUN to an image nobody has.
            tracing::error!(image = job.image, "a command for an image this worker does not own");
            let completion = absent_lun(job.cmd.cdb(), &[]);
            out.push(Done { tag: job.tag, completion, transferred: 0, fault: None });
            return;
        };
        let driver = &mut img.driver;
        let segments = std::mem::take(&mut job.cmd.segments);
        let cdb = job.cmd.cdb();
        // The data area's fixed buffer is in this worker's ring, which a hosted engine uses.
        let fixed = job.fixed.filter(|_| driver.hosted());
        let (data_out, data_in, copy_to) = match job.source {
            Source::None => (None, None, None),
            Source::Out(mem) => match borrow(driver.takes_borrowed(), cdb, &mem, &segments, true, fixed) {
                Some(view) => (Some(view), None, None),
                None => {
                    let mut buf = driver.buffer_for_overwrite(segments.total() as usize);
                    match gather(&mem, segments.as_slice().iter().map(|r| (r.offset, r.len)), buf.as_mut_slice()) {
                        Ok(()) => (Some(buf), None, None),
                        Err(fault) => return out.push(Done::fault(job.tag, fault)),
                    }
                }
            },
            Source::In(mem) => match borrow(driver.takes_borrowed(), cdb, &mem, &segments, false, fixed) {
                Some(view) => (None, Some(view), None),
                None => (None, None, Some((mem, segments))),
            },
            Source::Staged { mem, regions } => {
                let total: usize = regions.iter().map(|r| r.len as usize).sum();
                let mut buf = driver.buffer_for_overwrite(total);
                match gather(&mem, regions.iter().map(|r| (r.offset, r.len)), buf.as_mut_slice()) {
                    Ok(()) => (Some(buf), None, None),
                    Err(fault) => return out.push(Done::fault(job.tag, fault)),
                }
            }
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.landings.push(None);
                self.finished_in.push(0);
                self.landings.len() - 1
            }
        };
        self.landings[slot] = Some(Landing { tag: job.tag, copy_to });
        self.in_backend[job.image] += 1;
        let nexus = Nexus {
            id: job.tag >> 32,
            luns: &job.luns,
            read_only: job.read_only,
            port: &job.port,
            target_port: job.target_port,
        };
        match data_in {
            Some(view) => driver.submit_into(slot as u64, &nexus, cdb, view),
            None => driver.submit_buf(slot as u64, &nexus, cdb, data_out),
        }
    }

    /// Starts a plain READ or WRITE of a single region of `mem` (a node's data area or its
    /// staging buffers) straight between an in-memory image and that memory
    /// ([`crate::lun::LunDriver::start_direct`]). Anything else, and images this worker
    /// does not own, are declined untouched.
    pub(super) fn start_direct(
        &mut self,
        image: usize,
        nexus: &Nexus<'_>,
        cdb: &[u8],
        mem: &SharedMemory,
        segments: &Segments,
        write: bool,
    ) -> Direct {
        let (Some(img), [r]) = (self.images.get_mut(image).and_then(Option::as_mut), segments.as_slice()) else {
            return Direct::Declined;
        };
        // The queue pair keeps its memory mapped while it is served, and a direct READ is
        // finished before the worker returns from serving it.
        let Ok(view) = mem.slice(r.offset, u64::from(r.len)) else { return Direct::Declined };
        img.driver.start_direct(nexus, cdb, view, write)
    }

    /// Starts loading more of direct READ `read` on `image`, to overlap with another copy.
    pub(super) fn prefetch_read(&mut self, image: usize, read: &DirectRead) {
        if let Some(img) = self.get_mut(image) {
            img.driver.prefetch_read(read);
        }
    }

    /// Copies direct READ `read` on `image`: its completion, and the bytes that arrived.
    pub(super) fn finish_read(&mut self, image: usize, read: DirectRead, dst: PeerSlice<'_>) -> (Completion, usize) {
        match self.get_mut(image) {
            Some(img) => img.driver.finish_read(read, dst),
            None => (Completion::check(&scsi::Sense::lun_not_supported(), false), 0),
        }
    }

    /// LUN RESET.
    pub(super) fn reset(&mut self, image: usize) {
        if let Some(img) = self.get_mut(image) {
            img.driver.unit_mut().reset();
        }
    }

    /// Drops the unit attentions of a nexus that is gone.
    pub(super) fn forget(&mut self, image: usize, nexus: u64) {
        if let Some(img) = self.get_mut(image) {
            img.driver.unit_mut().forget(nexus);
        }
    }

    /// Collects backend completions into `out`; returns whether there were any.
    pub(super) fn reap(&mut self, out: &mut Vec<Done>) -> bool {
        let mut any = false;
        for (image, slot) in self.images.iter_mut().enumerate() {
            let Some(img) = slot else { continue };
            if self.in_backend[image] == 0 {
                continue;
            }
            if let Err(e) = img.driver.poll(&mut self.finished, false) {
                tracing::error!(image = %img.name, error = %e, "backend poll failed");
            }
            self.in_backend[image] -= self.finished.len().min(self.in_backend[image]);
            for f in self.finished.drain(..) {
                any = true;
                let Some(landing) = self.landings.get_mut(f.tag as usize).and_then(Option::take) else {
                    tracing::error!(tag = f.tag, "a completion for no running command");
                    continue;
                };
                self.free.push(f.tag as usize);
                self.finished_in[f.tag as usize] = self.finished_in[f.tag as usize].wrapping_add(1);
                let (transferred, fault) = match (f.in_place(), &landing.copy_to) {
                    (Some(n), _) => (n, None),
                    (None, Some((mem, segments))) => match scatter(mem, segments, f.data()) {
                        Ok(n) => (n, None),
                        Err(fault) => (0, Some(fault)),
                    },
                    (None, None) => (0, None),
                };
                let mut completion = f.completion;
                completion.data_in = DataIn::None;
                out.push(Done { tag: landing.tag, completion, transferred, fault });
            }
        }
        any
    }

    /// Flushes every image still in use and hands them all back as (index, image).
    pub(super) fn finish(self) -> Vec<(usize, OpenImage)> {
        let mut out = Vec::new();
        for (i, (img, retired)) in self.images.into_iter().zip(self.retired).enumerate() {
            let Some(mut img) = img else { continue };
            if !retired {
                if let Err(e) = crate::lun::flush(&mut img) {
                    tracing::error!(image = %img.name, error = %e, "flush at shutdown failed");
                }
            }
            // The image leaves this thread: its engine takes a ring of its own again.
            if let Err(e) = img.driver.detach() {
                tracing::error!(image = %img.name, error = %e, "leaving the worker's ring failed");
            }
            out.push((i, img));
        }
        out
    }
}

impl Done {
    fn fault(tag: u64, fault: ShmError) -> Done {
        Done { tag, completion: Completion::good(), transferred: 0, fault: Some(fault) }
    }
}

/// The node's region of a plain READ or WRITE as a buffer of its own, with no copy, when
/// the engine only hands buffers to the kernel: the data goes straight between the image
/// and the node's data area. The node may touch the bytes while the command is in flight,
/// which is its own affair (the data is its own, and the gateway never reads it).
/// Parameter lists, compared data and everything else are still copied. `fixed` names the
/// fixed buffer of the engine's ring registered over the whole of `mem`, if there is one.
fn borrow(
    takes_borrowed: bool,
    cdb: &[u8],
    mem: &Arc<SharedMemory>,
    segments: &Segments,
    out: bool,
    fixed: Option<u16>,
) -> Option<AlignedBuf> {
    let opcode = *cdb.first()?;
    let plain = if out {
        matches!(opcode, op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16)
    } else {
        matches!(opcode, op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16)
    };
    let [r] = segments.as_slice() else { return None };
    if !plain || !takes_borrowed || r.offset % crate::engine::buf::ALIGN as u64 != 0 {
        return None;
    }
    let mut view = AlignedBuf::over_shared(mem, r.offset, r.len)?;
    if let Some(index) = fixed {
        // The queue pair's worker registered `index` in this worker's ring over the whole
        // data area, which contains the view (jobs that cross to another worker drop it).
        view.set_fixed(index);
    }
    Some(view)
}

/// Copies the regions `(offset, len)` of `mem`, in order, into `buf`.
fn gather(mem: &SharedMemory, regions: impl Iterator<Item = (u64, u32)>, buf: &mut [u8]) -> Result<(), ShmError> {
    let mut at = 0usize;
    for (offset, len) in regions {
        let n = len as usize;
        mem.read(offset, &mut buf[at..at + n])?;
        at += n;
    }
    Ok(())
}

/// Copies `bytes` into the node's regions; returns how many fit.
pub(super) fn scatter(mem: &SharedMemory, segments: &Segments, bytes: &[u8]) -> Result<usize, ShmError> {
    let mut at = 0usize;
    for r in segments.as_slice() {
        if at >= bytes.len() {
            break;
        }
        let n = (r.len as usize).min(bytes.len() - at);
        mem.write(r.offset, &bytes[at..at + n])?;
        at += n;
    }
    Ok(at)
}
