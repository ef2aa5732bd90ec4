//! The ring server as the control plane sees it ([`Images`]): requests about an image go
//! to the worker that owns it, requests about nodes and barriers to every worker.

use super::{Control, LunControl, Shape};
use crate::lun::OpenImage;
use crate::registry::{ControlError, Images, Liveness};

impl Images for LunControl {
    /// Every worker closes the node's queue pairs (iSCSI sessions among them); then every
    /// worker waits until the commands its engines had in flight then, which include
    /// every command of those queue pairs, have finished.
    fn fence(&self, pan: &str, node: &str) -> Result<(), ControlError> {
        self.ask_all(|reply| Control::Fence { pan: pan.to_string(), node: node.to_string(), reply })?;
        self.ask_all(|reply| Control::Barrier { reply })?;
        self.mesh.forget_heartbeats(pan, node);
        Ok(())
    }

    fn liveness(&self, pan: &str, node: &str) -> Liveness {
        Liveness { queue_pairs: self.quotas.held(pan, node).0, last_heartbeat: self.mesh.last_heartbeat(pan, node) }
    }

    fn capacity(&self, image: usize) -> Option<(u32, u64)> {
        self.caps.lock().unwrap_or_else(|p| p.into_inner()).get(image).map(|s| (s.block_size, s.blocks))
    }

    fn grow(&self, image: usize, bytes: u64) -> Result<(), ControlError> {
        self.ask(self.mesh.owner(image), |reply| Control::Grow { image, bytes, reply })
    }

    /// The new image gets the next index (the server's image count before the call).
    fn add(&self, image: OpenImage) -> Result<(), ControlError> {
        let shape = Shape::of(&image, &self.metrics);
        let index = {
            let mut caps = self.caps.lock().unwrap_or_else(|p| p.into_inner());
            caps.push(shape);
            caps.len() - 1
        };
        self.ask(self.mesh.owner(index), |reply| Control::AddImage { index, image: Box::new(image), reply })
    }

    fn retire(&self, image: usize) -> Result<(), ControlError> {
        self.ask(self.mesh.owner(image), |reply| Control::Retire { image, reply })
    }

    fn set_access(
        &self,
        image: usize,
        states: &[(u16, scsi::alua::AccessState)],
        takeover: bool,
    ) -> Result<(), ControlError> {
        self.ask(self.mesh.owner(image), |reply| Control::Access { image, states: states.to_vec(), takeover, reply })
    }

    /// Every worker first takes the jobs other workers sent it (commands on their way to
    /// the image's owner), then waits for what its engines have in flight; then the owner
    /// flushes the image.
    fn quiesce(&self, image: usize) -> Result<(), ControlError> {
        self.ask_all(|reply| Control::Barrier { reply })?;
        self.ask(self.mesh.owner(image), |reply| Control::Flush { image, reply })
    }
}
