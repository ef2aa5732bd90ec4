//! Opens a configuration's images and builds one LUN driver per image, shared by every node
//! of the PAN that maps it.

pub use crate::lun::{flush, OpenImage};

use std::path::Path;

use scsi::{LunConfig, LunIdentity};

use crate::config::{Access, Config, ImageConfig};
use crate::engine::{open_path, EngineKind, ImageOptions};
use crate::lun::LunDriver;

/// Queue depth of each image's engine.
pub const ENGINE_DEPTH: u32 = 256;

/// One entry of a node's map, resolved to an open image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// PAN name.
    pub pan: String,
    /// Node name.
    pub node: String,
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// Index into the image list.
    pub image: usize,
    /// Access granted.
    pub access: Access,
}

/// Opens every image of every PAN (creating missing files sparse) on the configured engine,
/// once each has been found a place an image may be ([`crate::placement`]).
pub fn open_all(cfg: &Config, data_dir: &Path) -> anyhow::Result<(Vec<OpenImage>, Vec<Mapping>)> {
    crate::placement::check_config(cfg, data_dir)?;
    let kind = EngineKind::resolve(cfg.engine).map_err(anyhow::Error::msg)?;
    let mut images = Vec::new();
    let mut maps = Vec::new();
    for pan in &cfg.pans {
        let first = images.len();
        for img in &pan.images {
            images.push(open_image(cfg, kind, &pan.name, img, data_dir)?);
        }
        for node in &pan.nodes {
            for m in &node.luns {
                let image = first + pan.images.iter().position(|i| i.name == m.image).expect("validated");
                maps.push(Mapping {
                    pan: pan.name.clone(),
                    node: node.name.clone(),
                    target: m.target,
                    lun: m.lun,
                    image,
                    access: m.access,
                });
            }
        }
    }
    Ok((images, maps))
}

/// Opens one image of PAN `pan` (creating a missing file sparse) on engine `kind`.
pub fn open_image(
    cfg: &Config,
    kind: EngineKind,
    pan: &str,
    img: &ImageConfig,
    data_dir: &Path,
) -> anyhow::Result<OpenImage> {
    let path = image_path(img, data_dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let opts = ImageOptions { create_size: Some(img.size.0), direct: cfg.direct_io, read_only: false };
    let engine = open_path(&path, &opts, kind, ENGINE_DEPTH)
        .map_err(|e| anyhow::anyhow!("pan {pan:?} image {:?} at {}: {e}", img.name, path.display()))?;
    if let Some(medium) = engine.block_size().filter(|&bs| bs != img.block_size) {
        anyhow::bail!(
            "pan {pan:?} image {:?}: {} is formatted with {medium}-byte blocks, but the image has block_size = {}; \
             set block_size = {medium} (or reformat the namespace)",
            img.name,
            path.display(),
            img.block_size
        );
    }
    let size = engine.size() - engine.size() % u64::from(img.block_size);
    let identity = LunIdentity::new(format!("{}/{}/{}", cfg.serial, pan, img.name));
    let mut lun = LunConfig::new(identity, img.block_size, size)
        .map_err(|e| anyhow::anyhow!("pan {pan:?} image {:?}: {e}", img.name))?;
    lun.thin_provisioning = img.thin;
    lun.write_cache = img.write_cache;
    engine.limits(&mut lun.limits);
    let mut driver = LunDriver::new(lun, engine)?;
    driver.keep_reservations_at(crate::reservations::file_for(data_dir, pan, &img.name))?;
    match cfg.preferred_gateway(pan, &img.name) {
        // Redundant gateways: a target port group per gateway, each transitioning until
        // the gateways have settled who serves the LUN (`crate::redundancy`).
        Some(preferred) => {
            let groups = cfg.gateway_ids().into_iter().map(|id| scsi::alua::PortGroup {
                id,
                state: scsi::alua::AccessState::Transitioning,
                preferred: id == preferred,
                ports: crate::nexus::target_ports(id).to_vec(),
            });
            driver.unit_mut().set_alua(scsi::alua::Alua { groups: groups.collect() });
            driver.share_reservations()?;
        }
        // One gateway: one active/optimized target port group with both of its ports.
        None => driver.unit_mut().set_alua(scsi::alua::Alua::single(&crate::nexus::target_ports(1))),
    }
    Ok(OpenImage { pan: pan.to_string(), name: img.name.clone(), path, driver })
}

/// Where an image lives: relative paths are under the data directory.
pub fn image_path(img: &ImageConfig, data_dir: &Path) -> std::path::PathBuf {
    if img.path.is_absolute() {
        img.path.clone()
    } else {
        data_dir.join(&img.path)
    }
}
