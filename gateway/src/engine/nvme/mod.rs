//! The NVMe passthrough engine: an image that is an NVMe namespace's generic character
//! device (`/dev/ngXnY`), driven with NVM commands over `IORING_OP_URING_CMD`, with no
//! block layer, filesystem or page cache between the LUN and the drive.
//!
//! At open it asks the controller (Identify, through the admin passthrough ioctl) for the
//! namespace's size, LBA format and limits; [`translate`] turns each request into commands
//! within them and each failed status into sense. The engine keeps a ring of its own
//! (128-byte SQEs, 32-byte CQEs, which a worker's ring of 64-byte SQEs cannot carry) and
//! gives the worker its completion eventfd to sleep on with its doorbells.
//!
//! COMPARE AND WRITE keeps the gateway's range lock rather than a fused Compare and Write:
//! Linux's passthrough refuses commands with fused flags.

pub mod translate;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use scsi::{BlockLimits, IoDone};

use super::sys::host::UringHost;
use super::sys::nvme::{self as sys, CmdError, Queue};
use super::{push_extent, validate, Backend, EngineError, EngineKind, IoCompletion, IoOp, IoRequest};
use translate::{cns, Controller, Namespace, NamespaceData, NvmLimits, Request};

/// The Linux `nvme-generic` class's devices are the namespaces' character devices.
const GENERIC_CLASS: &str = "nvme-generic";

/// Whether `path` is an NVMe namespace's generic character device.
pub fn is_generic_device(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return false };
    if !meta.file_type().is_char_device() {
        return false;
    }
    let rdev = meta.rdev();
    let sys = format!("/sys/dev/char/{}:{}/subsystem", libc::major(rdev), libc::minor(rdev));
    std::fs::read_link(sys).is_ok_and(|class| class.file_name().is_some_and(|n| n == GENERIC_CLASS))
}

/// Whether an image at `path` runs on the NVMe engine: asked for by name, or `auto` on a
/// generic NVMe device. Asking for it on anything else is an error that says why.
pub fn chosen(kind: EngineKind, path: &Path) -> io::Result<bool> {
    match kind {
        EngineKind::Nvme if is_generic_device(path) => Ok(true),
        EngineKind::Nvme => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not an NVMe namespace's generic character device (/dev/ngXnY); the nvme engine drives only those",
                path.display()
            ),
        )),
        EngineKind::Auto => Ok(is_generic_device(path)),
        _ => Ok(false),
    }
}

/// The most bytes the host's passthrough path moves in one command, from the namespace's
/// block device's queue limits (its largest request, and its segments less one, for a
/// buffer that does not start on a page), when sysfs shows them.
fn host_limit(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    let rdev = meta.rdev();
    let dev = std::fs::canonicalize(format!("/sys/dev/char/{}:{}", libc::major(rdev), libc::minor(rdev))).ok()?;
    // ngXnY sits beside its block device, nvmeXnY, under the controller.
    let name = dev.file_name()?.to_str()?.strip_prefix("ng")?.to_string();
    let queue = dev.parent()?.join(format!("nvme{name}")).join("queue");
    let read = |f: &str| std::fs::read_to_string(queue.join(f)).ok()?.trim().parse::<u64>().ok();
    let hw = read("max_hw_sectors_kb")? << 10;
    let segments = read("max_segments").unwrap_or(1).saturating_sub(1).max(1);
    Some(hw.min(segments * 4096))
}

/// When the host's limit is unknown: a buffer of this many pages, wherever it starts,
/// fits in the fewest segments any NVMe PCIe queue takes.
const FALLBACK_PAGES: u64 = 126;

/// NVMe passthrough engine over one namespace.
pub struct NvmeEngine {
    path: PathBuf,
    /// Dropped before the queue's device: declared first.
    queue: Queue,
    file: File,
    ns: Namespace,
    ready: VecDeque<IoCompletion>,
    read_only: bool,
}

impl std::fmt::Debug for NvmeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeEngine")
            .field("path", &self.path)
            .field("namespace", &self.ns.nsid)
            .field("in_flight", &self.queue.outstanding())
            .finish()
    }
}

impl NvmeEngine {
    /// Opens the namespace at `path` (`/dev/ngXnY`), reads its identify data and makes a
    /// queue of `depth` requests.
    pub fn open(path: &Path, read_only: bool, depth: u32) -> io::Result<NvmeEngine> {
        let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(context)?;
        let nsid = sys::namespace_id(&file).map_err(context)?;
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()));
        let ctrl =
            Controller::parse(&sys::identify(&file, cns::CONTROLLER, 0, nsid).map_err(context)?).map_err(invalid)?;
        let data =
            NamespaceData::parse(&sys::identify(&file, cns::NAMESPACE, 0, nsid).map_err(context)?).map_err(invalid)?;
        // Older controllers lack the NVM command set's identify: no limits then.
        let nvm = sys::identify(&file, cns::CONTROLLER_CSI, 0, nsid).ok().and_then(|id| NvmLimits::parse(&id).ok());
        let host = host_limit(path).unwrap_or(FALLBACK_PAGES * 4096);
        let ns = Namespace::new(nsid, &ctrl, nvm.as_ref(), &data, 12, Some(host)).map_err(invalid)?;
        let queue = Queue::new(&file, depth, ns.max_transfer_bytes() as usize).map_err(context)?;
        tracing::debug!(
            path = %path.display(),
            nsid,
            block_size = ns.block_size(),
            blocks = ns.blocks,
            max_transfer = ns.max_transfer_bytes(),
            "NVMe namespace opened"
        );
        Ok(NvmeEngine { path: path.to_owned(), queue, file, ns, ready: VecDeque::new(), read_only })
    }

    /// The namespace as identify described it.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The translation's request for `op`: byte ranges as whole blocks.
    fn request(&self, op: &IoOp) -> Result<Request, EngineError> {
        let shift = self.ns.lba_shift;
        let mask = u64::from(self.ns.block_size()) - 1;
        let blocks = |offset: u64, len: u64| {
            if offset & mask != 0 || len & mask != 0 {
                Err(EngineError::Os(libc::EINVAL))
            } else {
                Ok((offset >> shift, len >> shift))
            }
        };
        Ok(match op {
            IoOp::Read { offset, range, .. } => {
                let (lba, blocks) = blocks(*offset, range.len() as u64)?;
                Request::Read { lba, blocks }
            }
            IoOp::Write { offset, range, fua, .. } => {
                let (lba, blocks) = blocks(*offset, range.len() as u64)?;
                Request::Write { lba, blocks, fua: *fua }
            }
            IoOp::Flush => Request::Flush,
            IoOp::Unmap { offset, len } => {
                let (lba, blocks) = blocks(*offset, *len)?;
                Request::Deallocate { lba, blocks }
            }
            IoOp::WriteZeroes { offset, len } => {
                let (lba, blocks) = blocks(*offset, *len)?;
                Request::WriteZeroes { lba, blocks }
            }
            IoOp::BlockStatus { .. } => unreachable!("block status is answered without the drive"),
        })
    }
}

impl Backend for NvmeEngine {
    fn submit(&mut self, req: IoRequest) -> Result<(), (IoRequest, EngineError)> {
        if let Err(e) = validate(&req.op, self.ns.bytes()) {
            self.ready.push_back(IoCompletion { req, result: Err(e) });
            return Ok(());
        }
        if self.read_only && req.op.writes() {
            self.ready.push_back(IoCompletion { req, result: Err(EngineError::Os(libc::EROFS)) });
            return Ok(());
        }
        if let IoOp::BlockStatus { offset, len } = req.op {
            // NVMe reports no allocation per block: every block is mapped.
            let mut extents = Vec::new();
            push_extent(&mut extents, len.min(self.ns.bytes() - offset), true);
            self.ready.push_back(IoCompletion { req, result: Ok(IoDone::Extents(extents)) });
            return Ok(());
        }
        let cmds = match self.request(&req.op).map(|r| translate::plan(&self.ns, r)) {
            Ok(Ok(cmds)) => cmds,
            Ok(Err(translate::Refusal::OutOfRange)) => {
                self.ready.push_back(IoCompletion { req, result: Err(EngineError::OutOfRange) });
                return Ok(());
            }
            Err(e) => {
                self.ready.push_back(IoCompletion { req, result: Err(e) });
                return Ok(());
            }
        };
        if cmds.is_empty() {
            self.ready.push_back(IoCompletion { req, result: Ok(IoDone::Done) });
            return Ok(());
        }
        self.queue.submit(req, cmds).map_err(|req| (req, EngineError::Full))
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>, min: usize) -> io::Result<()> {
        let min = min.saturating_sub(self.ready.len());
        for (req, result) in self.queue.reap(min)? {
            let result = match result {
                Ok(()) => Ok(IoDone::Done),
                Err(CmdError::Os(e)) => Err(EngineError::Os(e)),
                Err(CmdError::Status(s)) => Err(EngineError::Nvme(s)),
            };
            self.ready.push_back(IoCompletion { req, result });
        }
        out.extend(self.ready.drain(..));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.queue.outstanding() + self.ready.len()
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        self.queue.done_fd().map(AsFd::as_fd)
    }

    fn attach(&mut self, host: &std::sync::Arc<UringHost>) -> io::Result<bool> {
        self.queue.attach(host, &self.file)
    }

    fn detach(&mut self) -> io::Result<()> {
        self.queue.detach(&self.file)
    }

    fn hosted(&self) -> bool {
        self.queue.hosted()
    }

    fn size(&self) -> u64 {
        self.ns.bytes()
    }

    fn block_size(&self) -> Option<u32> {
        Some(self.ns.block_size())
    }

    fn limits(&self, limits: &mut BlockLimits) {
        // Larger transfers are split, but an initiator that sizes its I/O by the optimal
        // length sends whole commands; UNMAP descriptors map one to one onto ranges.
        limits.optimal_transfer_bytes = self.ns.max_transfer_bytes().min(u64::from(u32::MAX)) as u32;
        limits.max_unmap_descriptors = limits.max_unmap_descriptors.min(self.ns.dsm_ranges as u32);
    }

    fn takes_borrowed(&self) -> bool {
        // Commands carry the buffer's address to the kernel, which maps its pages; nothing
        // here touches the bytes.
        true
    }

    fn name(&self) -> &'static str {
        "nvme"
    }
}
