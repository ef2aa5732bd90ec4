//! Opening backing images: raw files (created sparse when missing) and block devices, and
//! the synchronous operations every file engine shares.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use scsi::AllocExtent;

use super::{push_extent, sys};

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// Size to create a missing file with. An existing image keeps its own size.
    pub create_size: Option<u64>,
    /// Open with `O_DIRECT`, bypassing the host page cache.
    pub direct: bool,
    /// Open read-only.
    pub read_only: bool,
}

/// An open backing image.
#[derive(Debug)]
pub struct Image {
    /// The open file or block device.
    pub file: File,
    /// Where it lives.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is a block device.
    pub block_device: bool,
    /// Whether it was opened with `O_DIRECT`.
    pub direct: bool,
    /// Whether it was opened read-only.
    pub read_only: bool,
}

impl Image {
    /// Grows a file image to `bytes` (sparse), making the new size durable. Block devices
    /// are sized by their own device, and shrinking would drop data: both are refused.
    pub fn grow(&mut self, bytes: u64) -> io::Result<()> {
        if self.block_device {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a block device's size is its own"));
        }
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if bytes < self.size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "shrinking an image would drop its data"));
        }
        self.file.set_len(bytes)?;
        self.file.sync_all()?;
        self.size = bytes;
        Ok(())
    }

    /// Opens `path`, creating a sparse file of `opts.create_size` bytes when it is missing.
    pub fn open(path: &Path, opts: &ImageOptions) -> io::Result<Image> {
        let exists = path.exists();
        if !exists {
            let size = opts.create_size.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} does not exist and no size was given to create it", path.display()),
                )
            })?;
            if opts.read_only {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} does not exist (read-only images are never created)", path.display()),
                ));
            }
            create(path, size)?;
        }
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path)?;
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            sys::block_device_size(&file)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is neither a regular file nor a block device", path.display()),
            ));
        };
        Ok(Image { file, path: path.to_owned(), size, block_device, direct: opts.direct, read_only: opts.read_only })
    }

    /// Allocation status of `[offset, offset+len)` from `SEEK_DATA`/`SEEK_HOLE`. Block
    /// devices, and filesystems without hole reporting, report everything mapped.
    pub fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<AllocExtent>> {
        let mut out = Vec::new();
        let end = offset.saturating_add(len).min(self.size);
        if self.block_device {
            push_extent(&mut out, end.saturating_sub(offset), true);
            return Ok(out);
        }
        let mut at = offset;
        // Each pass consumes at least one byte, so the loop ends; bound it anyway.
        for _ in 0..100_000 {
            if at >= end {
                break;
            }
            let data = match sys::seek(&self.file, at, libc::SEEK_DATA) {
                Ok(d) => d.unwrap_or(end).min(end),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    push_extent(&mut out, end - at, true);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            push_extent(&mut out, data - at, false);
            at = data;
            if data >= end {
                break;
            }
            let hole = sys::seek(&self.file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
            push_extent(&mut out, hole - data, true);
            at = hole;
        }
        if at < end {
            push_extent(&mut out, end - at, true);
        }
        Ok(out)
    }

    /// [`Image::block_status`] for a file in memory (tmpfs), where `SEEK_HOLE` walks the page
    /// cache from the offset to the next hole, which in a full image is its end: every call
    /// a walk of the whole file. Here a data run's end is found by `SEEK_DATA` on each page
    /// after its start (answered at the first page), at most `max_probes` of them; past
    /// that the rest of the range is reported mapped, which is always safe (an initiator
    /// reads what is there).
    pub fn block_status_bounded(&self, offset: u64, len: u64, max_probes: u32) -> io::Result<Vec<AllocExtent>> {
        const PAGE: u64 = 4096;
        let mut out = Vec::new();
        let end = offset.saturating_add(len).min(self.size);
        let mut at = offset;
        let mut probes = 0u32;
        while at < end {
            let data = match sys::seek(&self.file, at, libc::SEEK_DATA) {
                Ok(d) => d.unwrap_or(end).min(end),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => end.max(at),
                Err(e) => return Err(e),
            };
            push_extent(&mut out, data - at, false);
            if data >= end {
                break;
            }
            // The run of data from `data`: the first page that SEEK_DATA skips is a hole.
            let mut p = (data / PAGE + 1) * PAGE;
            let mut hole = end;
            while p < end {
                if probes >= max_probes {
                    break;
                }
                probes += 1;
                match sys::seek(&self.file, p, libc::SEEK_DATA)? {
                    Some(d) if d == p => p += PAGE,
                    _ => {
                        hole = p;
                        break;
                    }
                }
            }
            if probes >= max_probes && hole == end {
                push_extent(&mut out, end - data, true);
                break;
            }
            push_extent(&mut out, hole - data, true);
            at = hole;
        }
        Ok(out)
    }

    /// Deallocates a range, falling back to writing zeros where the filesystem or device
    /// cannot punch holes. Returns whether the fallback was used.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        match sys::fallocate(&self.file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(()) => Ok(false),
            Err(e) if refused(&e) => self.write_zeroes_slow(offset, len).map(|()| true),
            Err(e) => Err(e),
        }
    }

    /// Zeroes a range keeping it allocated (`FALLOC_FL_ZERO_RANGE`), falling back to writing
    /// zeros. Returns whether the fallback was used.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        match sys::fallocate(&self.file, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len) {
            Ok(()) => Ok(false),
            Err(e) if refused(&e) => self.write_zeroes_slow(offset, len).map(|()| true),
            Err(e) => Err(e),
        }
    }

    /// Writes zeros in 1 MiB pieces (aligned, so it also works with `O_DIRECT`).
    pub fn write_zeroes_slow(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = super::AlignedBuf::zeroed(1 << 20);
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros.as_slice()[..n], offset + at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Writes with `RWF_DSYNC` when `fua`, else a plain positional write, all of `data`.
    pub fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        let mut done = 0usize;
        while done < data.len() {
            match sys::pwrite2(&self.file, &data[done..], offset + done as u64, flags) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Errors meaning "this fallocate mode is not available here", where a fallback applies.
pub(crate) fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL))
}

/// Creates a sparse image of `size` bytes at `path`, readable by its owner only, all or
/// nothing: it is made under a temporary name beside it, sized and synced, and only then
/// renamed into place (never over an existing file). A size the filesystem refuses (EFBIG)
/// leaves no empty file behind to fail every later start.
fn create(path: &Path, size: u64) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())));
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    // Named for this process: redundant gateways starting together create the same image.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".creating-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // Left by a creation of an earlier process with this pid that was cut short.
    let _ = std::fs::remove_file(&tmp);
    let made = (|| {
        let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.set_len(size)?;
        f.sync_all()?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            // Another gateway created it meanwhile: theirs is the image.
            Err(rustix::io::Errno::EXIST) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(())
            }
            Err(e) => Err(e.into()),
            Ok(()) => File::open(dir)?.sync_all(),
        }
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.map_err(|e| io::Error::new(e.kind(), format!("creating {} of {size} bytes: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_is_private_and_all_or_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.img");
        Image::open(&p, &ImageOptions { create_size: Some(1 << 20), ..Default::default() }).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        // A size no filesystem takes (beyond 2^63 - 1) fails and leaves nothing behind.
        let big = dir.path().join("big.img");
        let e = Image::open(&big, &ImageOptions { create_size: Some(u64::MAX - 511), ..Default::default() });
        assert!(e.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only new.img");
        // So the next start, with a size that fits, creates it.
        Image::open(&big, &ImageOptions { create_size: Some(1 << 20), ..Default::default() }).unwrap();
        assert_eq!(std::fs::metadata(&big).unwrap().len(), 1 << 20);
    }

    #[test]
    fn creates_sparse_and_reopens_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        let img = Image::open(&p, &ImageOptions { create_size: Some(8 << 20), ..Default::default() }).unwrap();
        assert_eq!(img.size, 8 << 20);
        assert_eq!(img.block_status(0, 8 << 20).unwrap(), vec![AllocExtent { len: 8 << 20, mapped: false }]);
        img.write_at(&[1u8; 4096], 1 << 20, true).unwrap();
        let st = img.block_status(0, 8 << 20).unwrap();
        assert!(st.iter().any(|e| e.mapped), "{st:?}");
        assert_eq!(st.iter().map(|e| e.len).sum::<u64>(), 8 << 20);
        drop(img);
        let again = Image::open(&p, &ImageOptions { create_size: Some(1 << 20), ..Default::default() }).unwrap();
        assert_eq!(again.size, 8 << 20, "an existing image keeps its size");
    }

    #[test]
    fn bounded_block_status_matches_seek_hole_within_its_probes_and_is_safe_past_them() {
        // On tmpfs where there is one (the case it is for), else wherever tempdir is.
        let dir = tempfile::Builder::new().tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let p = dir.path().join("b.img");
        let img = Image::open(&p, &ImageOptions { create_size: Some(8 << 20), ..Default::default() }).unwrap();
        img.write_at(&[1u8; 8192], 1 << 20, true).unwrap();
        img.write_at(&[2u8; 4096], 3 << 20, true).unwrap();
        let exact = img.block_status(0, 8 << 20).unwrap();
        assert_eq!(img.block_status_bounded(0, 8 << 20, 1024).unwrap(), exact);
        assert_eq!(img.block_status_bounded(1 << 20, 4096, 1024).unwrap(), img.block_status(1 << 20, 4096).unwrap());
        // Out of probes, a data run is reported to the range's end: mapped, never a hole
        // where there is data.
        let rough = img.block_status_bounded(0, 8 << 20, 1).unwrap();
        assert_eq!(
            rough,
            vec![AllocExtent { len: 1 << 20, mapped: false }, AllocExtent { len: 7 << 20, mapped: true }]
        );
    }

    #[test]
    fn missing_image_without_size_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Image::open(&dir.path().join("nope.img"), &ImageOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no size was given"), "{e}");
    }
}
