//! Control, from both sides: the control plane's requests (grow an image, add or retire
//! one, change or delete a node), and the nodes' protocol-control messages (heartbeat,
//! ABORT TASK, LUN RESET, REPORT CONFIG).

use scsi::{Completion, DataIn, Status};

use super::Worker;
use crate::ring::proto::{Cmd, ControlOp, ReportEntry};
use crate::ring::server::admission::Closed;
use crate::ring::server::conn::{control_stat, lun_map, stat_from, Pending};
use crate::ring::server::mesh::Message;
use crate::ring::server::owned::scatter;
use crate::ring::server::{control_result, Control, ControlError};

impl Worker {
    pub(super) fn apply(&mut self, c: Control) {
        match c {
            Control::Grow { image, bytes, reply } => {
                let result = match self.owned.get_mut(image) {
                    Some(img) => img
                        .driver
                        .grow(bytes)
                        .inspect(|()| {
                            let cfg = img.driver.unit().config();
                            tracing::info!(pan = %img.pan, image = %img.name, bytes, "LUN grown");
                            if let Some(c) = self.caps.lock().unwrap_or_else(|p| p.into_inner()).get_mut(image) {
                                (c.block_size, c.blocks) = (cfg.block_size, cfg.blocks);
                            }
                        })
                        .map_err(ControlError::from),
                    None => Err(ControlError::NoImage(image)),
                };
                let _ = reply.send(result);
            }
            Control::AddImage { index, image, reply } => {
                tracing::info!(pan = %image.pan, image = %image.name, path = %image.path.display(), "LUN added");
                self.owned.insert(index, *image);
                let _ = reply.send(Ok(()));
            }
            Control::Retire { image, reply } => {
                let _ = reply.send(self.owned.retire(image).map_err(ControlError::from));
            }
            Control::Fence { pan, node, reply } => {
                for c in self.conns.iter_mut().filter(|c| c.entry.pan == pan && c.entry.node == node) {
                    tracing::info!(pan = %pan, node = %node, "node fenced: closing its queue pair");
                    c.dead = Some(Closed::Fenced);
                }
                // Closed now, before the answer: nothing more is taken from their rings.
                self.close_dead();
                let _ = reply.send(Ok(()));
            }
            Control::Access { image, states, takeover, reply } => {
                let result = match self.owned.get_mut(image) {
                    Some(img) => {
                        let reloaded = match takeover {
                            true => {
                                img.driver.reload_reservations().map_err(|e| ControlError::Refused(format!("{e:#}")))
                            }
                            false => Ok(()),
                        };
                        reloaded.map(|()| {
                            for (group, state) in states {
                                img.driver.unit_mut().set_access_state(group, state);
                            }
                        })
                    }
                    None => Err(ControlError::NoImage(image)),
                };
                let _ = reply.send(result);
            }
            Control::Flush { image, reply } => {
                let result = match self.owned.get_mut(image) {
                    Some(img) => crate::lun::flush(img).map_err(ControlError::from),
                    None => Err(ControlError::NoImage(image)),
                };
                let _ = reply.send(result);
            }
            Control::Barrier { reply } => {
                // Jobs other workers sent before they answered the fence start first.
                self.take_messages();
                self.barriers.push((self.owned.in_flight(), reply));
                self.pass_barriers();
            }
            Control::Node { pan, node, entry, reply } => {
                for c in self.conns.iter_mut().filter(|c| c.entry.pan == pan && c.entry.node == node) {
                    match &entry {
                        Some(e) => {
                            c.set_map(lun_map(e, &self.metrics, &self.caps));
                            c.entry = (**e).clone();
                        }
                        None => {
                            tracing::info!(pan = %pan, node = %node, "node deleted: closing its queue pair");
                            c.dead = Some(Closed::NodeDeleted);
                        }
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    pub(super) fn on_control(&mut self, i: usize, cmd: Cmd, op: ControlOp) {
        // Commands ahead of it are answered first: an ABORT TASK then finds them done.
        self.settle_local(i);
        let c = &mut self.conns[i];
        let reply = match op {
            ControlOp::Heartbeat => {
                self.mesh.heard(&c.entry.pan, &c.entry.node);
                control_stat(cmd.seq, control_result::DONE, 0)
            }
            ControlOp::AbortTask => match c.pending.get(&cmd.arg) {
                Some(Pending::Staged { .. }) => {
                    if let Some(Pending::Staged { staged, cmd: aborted, .. }) = c.pending.remove(&cmd.arg) {
                        for s in staged {
                            c.staging_alloc.free(s);
                        }
                        c.bytes_in_flight -= aborted.segments.total();
                    }
                    let aborted = Completion { status: Status::TaskAborted, sense: Vec::new(), data_in: DataIn::None };
                    c.answer(stat_from(cmd.arg, &aborted, 0, 0));
                    control_stat(cmd.seq, control_result::DONE, 0)
                }
                Some(Pending::Backend { .. }) => control_stat(cmd.seq, control_result::IN_PROGRESS, 0),
                None => control_stat(cmd.seq, control_result::NOT_FOUND, 0),
            },
            ControlOp::LunReset => match c.map.get(&(cmd.target, cmd.lun)) {
                Some(lun) => {
                    // The owner takes it before any later command of this queue pair.
                    let image = lun.image;
                    self.send_to_owner(image, Message::Reset { image });
                    control_stat(cmd.seq, control_result::DONE, 0)
                }
                None => control_stat(cmd.seq, control_result::NOT_FOUND, 0),
            },
            ControlOp::ReportConfig => {
                let mut entries: Vec<_> = c.map.iter().collect();
                entries.sort_by_key(|(k, _)| **k);
                let caps = self.caps.lock().unwrap_or_else(|p| p.into_inner());
                let report: Vec<ReportEntry> = entries
                    .into_iter()
                    .map(|(&(target, lun_id), lun)| {
                        let (block_size, blocks) = caps.get(lun.image).map_or((0, 0), |s| (s.block_size, s.blocks));
                        ReportEntry { target, lun: lun_id, read_only: lun.access.is_read_only(), block_size, blocks }
                    })
                    .collect();
                drop(caps);
                let bytes = ReportEntry::emit_list(&report);
                match scatter(&c.data, &cmd.segments, &bytes) {
                    Ok(n) => {
                        let mut s = control_stat(cmd.seq, control_result::DONE, n as u32);
                        s.residual = (bytes.len() - n) as u32;
                        s
                    }
                    Err(e) => return c.kill(e.into()),
                }
            }
        };
        let c = &mut self.conns[i];
        c.answer(reply);
    }
}
