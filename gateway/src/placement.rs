//! Where an image may live, checked the same way for a config at load (`up`,
//! `check-config`) and for a LUN the admin API adds:
//!
//! - a regular file under one of the image roots (`storage.image_roots`, and always the data
//!   directory's `images/`), named there by its only hard link;
//! - or a block device listed in `storage.block_devices`;
//! - and never a file another image already uses, however it is named (`..`, a symlink or a
//!   hard link): images are compared by canonical path and by (device, inode).
//!
//! Anything else is refused, so neither a config nor the admin token can make a host file
//! such as `/etc/shadow` a LUN, and a PAN never sees another PAN's data.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::config::{Config, ConfigError, ImageConfig};
use crate::storage;

/// Why a path may not be an image.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// A file outside every image root.
    #[error("{path} is outside the image roots ({roots})")]
    Outside {
        /// The resolved path.
        path: String,
        /// The roots, comma-separated.
        roots: String,
    },
    /// A block device the config does not list.
    #[error("{path} is a block device not listed in storage.block_devices")]
    UnlistedDevice {
        /// The resolved path.
        path: String,
    },
    /// Neither a regular file nor a block device (nor an NVMe generic device).
    #[error("{path} is neither a regular file, a block device nor an NVMe namespace's generic device")]
    NotFileOrDevice {
        /// The resolved path.
        path: String,
    },
    /// A file with more than one name: another name could be outside the roots, or be
    /// another image.
    #[error("{path} has {links} hard links; an image file must have only its own name")]
    HardLinked {
        /// The resolved path.
        path: String,
        /// Its link count.
        links: u64,
    },
    /// A `..` in the part of a path that does not exist yet, which cannot be resolved.
    #[error("{path} climbs out of a directory that does not exist yet")]
    Unresolvable {
        /// The path as given.
        path: String,
    },
    /// The same file as another image.
    #[error("{path} is the same file as image {other:?}")]
    Shared {
        /// The resolved path.
        path: String,
        /// `<pan>/<image>` of the image that has it.
        other: String,
    },
    /// The path could not be inspected.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        reason: String,
    },
}

/// What identifies an image's file: its inode once it exists, else the path it will be
/// created at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileId {
    /// An existing file or device.
    Inode {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
    },
    /// A file still to be created, by its resolved path.
    Missing(PathBuf),
}

/// An image's path, resolved and found acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The canonical path (for a missing file: its canonical directory joined with the rest).
    pub path: PathBuf,
    /// Its identity.
    pub id: FileId,
}

/// The image roots and listed block devices of a config, resolved.
#[derive(Debug, Clone)]
pub struct Placement {
    data_dir: PathBuf,
    /// The data directory resolved: the gateway's own files (config, token, sockets) lie in
    /// it, outside any root below it, and are never images.
    own: PathBuf,
    roots: Vec<PathBuf>,
    devices: Vec<PathBuf>,
}

impl Placement {
    /// The rules of `cfg` with data directory `data_dir`. Nothing is created.
    pub fn new(cfg: &Config, data_dir: &Path) -> Placement {
        let under = |p: &PathBuf| if p.is_absolute() { p.clone() } else { data_dir.join(p) };
        let images = resolve(&data_dir.join("images")).unwrap_or_else(|_| data_dir.join("images"));
        let own = resolve(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let mut roots = vec![images];
        for r in &cfg.storage.image_roots {
            let r = under(r);
            roots.push(resolve(&r).unwrap_or(r));
        }
        let devices =
            cfg.storage.block_devices.iter().map(|d| resolve(&under(d)).unwrap_or_else(|_| under(d))).collect();
        Placement { data_dir: data_dir.to_path_buf(), own, roots, devices }
    }

    /// Resolves `img`'s path and checks it may be an image.
    pub fn check(&self, img: &ImageConfig) -> Result<Placed, PlacementError> {
        let given = storage::image_path(img, &self.data_dir);
        let shown = |p: &Path| p.display().to_string();
        let path = resolve(&given).map_err(|e| match e {
            Resolve::Climbs => PlacementError::Unresolvable { path: shown(&given) },
            Resolve::Io(e) => PlacementError::Io { path: shown(&given), reason: e.to_string() },
        })?;
        let meta = match std::fs::metadata(&path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(PlacementError::Io { path: shown(&path), reason: e.to_string() }),
        };
        let Some(meta) = meta else {
            // To be created: it will be a regular file, so it must be under a root.
            self.under_a_root(&path)?;
            return Ok(Placed { id: FileId::Missing(path.clone()), path });
        };
        let id = FileId::Inode { dev: meta.dev(), ino: meta.ino() };
        // A block device, or an NVMe namespace's generic device (the NVMe engine's): the
        // operator lists each one the gateway may take.
        if meta.file_type().is_block_device() || crate::engine::nvme::is_generic_device(&path) {
            if !self.devices.contains(&path) {
                return Err(PlacementError::UnlistedDevice { path: shown(&path) });
            }
            return Ok(Placed { path, id });
        }
        if !meta.is_file() {
            return Err(PlacementError::NotFileOrDevice { path: shown(&path) });
        }
        self.under_a_root(&path)?;
        if meta.nlink() > 1 {
            return Err(PlacementError::HardLinked { path: shown(&path), links: meta.nlink() });
        }
        Ok(Placed { path, id })
    }

    fn under_a_root(&self, path: &Path) -> Result<(), PlacementError> {
        // Inside the data directory, only roots that lie inside it count (images/ and any
        // configured below it): a root at or above it does not make its config, token or
        // sockets images.
        let data = &self.own;
        let in_data = path.starts_with(data);
        let allowed = |r: &PathBuf| !in_data || (r.starts_with(data) && r != data);
        if self.roots.iter().any(|r| path.starts_with(r) && path != r && allowed(r)) {
            return Ok(());
        }
        let roots = self.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
        Err(PlacementError::Outside { path: path.display().to_string(), roots })
    }
}

/// Checks every image of `cfg`: each placed by the rules, and no two the same file. The
/// error names the image's `path` key.
pub fn check_config(cfg: &Config, data_dir: &Path) -> Result<(), ConfigError> {
    let rules = Placement::new(cfg, data_dir);
    let mut seen: HashMap<FileId, String> = HashMap::new();
    for (p, pan) in cfg.pans.iter().enumerate() {
        for (i, img) in pan.images.iter().enumerate() {
            let key = format!("pan[{p}].image[{i}].path");
            let fail = |e: PlacementError| ConfigError {
                file: None,
                key: key.clone(),
                reason: e.to_string(),
                fix: fix_for(&e).into(),
            };
            let placed = rules.check(img).map_err(fail)?;
            let name = format!("{}/{}", pan.name, img.name);
            if let Some(other) = seen.insert(placed.id, name) {
                return Err(fail(PlacementError::Shared { path: placed.path.display().to_string(), other }));
            }
        }
    }
    Ok(())
}

/// What to do about a placement error, for the config's error message.
pub fn fix_for(e: &PlacementError) -> &'static str {
    match e {
        PlacementError::Outside { .. } => {
            "put the image under the data directory's images/, or add its directory to storage.image_roots"
        }
        PlacementError::UnlistedDevice { .. } => "list the device in storage.block_devices to allow it",
        PlacementError::NotFileOrDevice { .. } => {
            "name a regular file, a block device or an NVMe namespace (/dev/ngXnY)"
        }
        PlacementError::HardLinked { .. } => "remove the file's other names, or copy it",
        PlacementError::Unresolvable { .. } => "write the path without '..'",
        PlacementError::Shared { .. } => {
            "give each image its own file; to share a LUN, map one image to several nodes of a PAN"
        }
        PlacementError::Io { .. } => "check the path and its permissions",
    }
}

enum Resolve {
    Climbs,
    Io(io::Error),
}

/// The canonical form of `path` (absolute, or relative to the working directory): the
/// longest existing prefix canonicalised (symlinks and `..` resolved), then the rest, which
/// may not contain `..`.
fn resolve(path: &Path) -> Result<PathBuf, Resolve> {
    let abs =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().map_err(Resolve::Io)?.join(path) };
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        match at.canonicalize() {
            Ok(c) => {
                let mut out = c;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(last)) = (at.parent(), at.components().next_back()) else {
                    return Err(Resolve::Io(e));
                };
                match last {
                    Component::Normal(name) => rest.push(name.to_os_string()),
                    Component::CurDir => {}
                    _ => return Err(Resolve::Climbs),
                }
                at = parent;
            }
            Err(e) => return Err(Resolve::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Size;

    fn image(path: &str) -> ImageConfig {
        ImageConfig {
            name: "v".into(),
            path: path.into(),
            size: Size(1 << 20),
            block_size: 512,
            thin: true,
            write_cache: true,
        }
    }

    #[test]
    fn host_files_and_paths_out_of_the_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("images")).unwrap();
        let cfg = Config::embedded_default().unwrap();
        let rules = Placement::new(&cfg, &data);
        assert!(matches!(rules.check(&image("/etc/passwd")), Err(PlacementError::Outside { .. })));
        assert!(matches!(rules.check(&image("../../../etc/passwd")), Err(PlacementError::Outside { .. })));
        assert!(matches!(rules.check(&image("images/../x.img")), Err(PlacementError::Outside { .. })));
        assert!(matches!(rules.check(&image("images/new/../../x.img")), Err(PlacementError::Unresolvable { .. })));
        // A symlink inside the root to a file outside it.
        std::os::unix::fs::symlink("/etc/hostname", data.join("images/link.img")).unwrap();
        assert!(matches!(rules.check(&image("images/link.img")), Err(PlacementError::Outside { .. })));
        // A hard link inside the root.
        std::fs::write(dir.path().join("outside.img"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("outside.img"), data.join("images/hard.img")).unwrap();
        assert!(matches!(rules.check(&image("images/hard.img")), Err(PlacementError::HardLinked { links: 2, .. })));
        // Directories and character devices are not images; block devices need listing.
        assert!(matches!(rules.check(&image("images")), Err(PlacementError::NotFileOrDevice { .. })));
        let mut cfg = cfg;
        cfg.storage.image_roots = vec!["/dev".into()];
        let rules = Placement::new(&cfg, &data);
        assert!(matches!(rules.check(&image("/dev/null")), Err(PlacementError::NotFileOrDevice { .. })));
        // Fine: a new file under the root, and one under a configured root.
        assert!(rules.check(&image("images/p/new.img")).is_ok());
        cfg.storage.image_roots = vec![dir.path().to_path_buf()];
        let rules = Placement::new(&cfg, &data);
        std::fs::write(dir.path().join("mine.img"), b"x").unwrap();
        assert!(rules.check(&image(dir.path().join("mine.img").to_str().unwrap())).is_ok());
        // Even under a root, the gateway's own files outside images/ are not images.
        std::fs::write(data.join("pangate.toml"), b"x").unwrap();
        assert!(matches!(rules.check(&image("pangate.toml")), Err(PlacementError::Outside { .. })));
        // A root inside the data directory is one like images/.
        cfg.storage.image_roots = vec!["vols".into()];
        std::fs::create_dir_all(data.join("vols")).unwrap();
        let rules = Placement::new(&cfg, &data);
        assert!(rules.check(&image("vols/v.img")).is_ok());
        assert!(matches!(rules.check(&image("pangate.toml")), Err(PlacementError::Outside { .. })));
    }

    #[test]
    fn one_file_under_two_names_is_refused_across_and_within_pans() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        std::fs::create_dir_all(data.join("images/sub")).unwrap();
        std::fs::write(data.join("images/a.img"), vec![0; 4096]).unwrap();
        std::os::unix::fs::symlink(data.join("images/a.img"), data.join("images/sym.img")).unwrap();
        let mut cfg = Config::embedded_default().unwrap();
        assert!(check_config(&cfg, &data).is_ok(), "the default's images are distinct");
        for alias in ["images/a.img", "./images/sub/../a.img", "images/sym.img"] {
            cfg.pans[0].images[0].path = "images/a.img".into();
            let mut other = cfg.pans[0].clone();
            other.name = "other".into();
            other.images[0].path = alias.into();
            other.lans.clear();
            cfg.pans.truncate(1);
            cfg.pans.push(other);
            let e = check_config(&cfg, &data).unwrap_err();
            assert_eq!(e.key, "pan[1].image[0].path", "{alias}");
            assert!(e.reason.contains("same file as image \"demo/"), "{alias}: {}", e.reason);
        }
    }
}
