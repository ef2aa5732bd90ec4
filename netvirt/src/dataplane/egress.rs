//! Where frames go out: the buffer pool and the writes queued for the next submit, and the
//! sink that turns the LAN server's decisions into shared-buffer writes, copies and ring
//! pushes.

use std::os::fd::{AsRawFd, RawFd};

use super::{PortIo, UplinkIo};
use crate::switch::{Dest, Emit, Sink};
use crate::sys::ring::Pool;
use crate::vnet::{self, VnetHdr, VNET_HDR_LEN};

/// A queued write: fd, buffer, length from the buffer's start.
pub(super) type Write = (RawFd, usize, usize);

/// What every delivery draws on: the buffer pool, the writes queued for the next submit,
/// scratch space for segmentation, and the input-frame counter that keeps a broadcast
/// ring from getting one frame twice.
pub(super) struct Egress {
    pub(super) pool: Pool,
    pub(super) writes: Vec<Write>,
    pub(super) scratch: Vec<u8>,
    pub(super) generation: u64,
    /// The input buffer shared by an [`Emit::Redirect`] delivery and the MAC to write
    /// into it once the LAN server has done with the frame.
    pub(super) redirect: Option<(usize, crate::mac::Mac)>,
    /// A frame with its destination MAC replaced, for deliveries that copy.
    pub(super) patched: Vec<u8>,
    /// The port and MAC of the service cluster backend the input frame was relayed to.
    pub(super) relayed: Option<(usize, crate::mac::Mac)>,
}

impl Egress {
    /// A sink for one input frame of a LAN: `input` is its pool buffer (`usize::MAX` if it
    /// is not in the pool) and virtio-net header.
    pub(super) fn sink<'a>(
        &'a mut self,
        ports: &'a mut [PortIo],
        uplink: Option<&'a UplinkIo>,
        input: (usize, VnetHdr),
    ) -> PlaneSink<'a> {
        self.generation += 1;
        self.relayed = None;
        PlaneSink { ports, uplink, out: self, input }
    }
}

/// Turns the switch's decisions into queued writes and ring pushes.
pub(super) struct PlaneSink<'a> {
    ports: &'a mut [PortIo],
    uplink: Option<&'a UplinkIo>,
    out: &'a mut Egress,
    /// The input frame's buffer (`usize::MAX` if it is not in the pool) and header.
    input: (usize, VnetHdr),
}

impl PlaneSink<'_> {
    /// Copies `frame` with header `hdr` (and a VLAN tag) into a new buffer and queues it.
    fn write_copy(&mut self, fd: RawFd, hdr: VnetHdr, frame: &[u8], vlan: Option<u16>) -> bool {
        let Some(b) = self.out.pool.alloc() else { return false };
        let buf = self.out.pool.get_mut(b);
        let mut hdr = hdr;
        let len = match vlan {
            None => {
                buf[..VNET_HDR_LEN].copy_from_slice(&hdr.emit());
                buf[VNET_HDR_LEN..VNET_HDR_LEN + frame.len()].copy_from_slice(frame);
                VNET_HDR_LEN + frame.len()
            }
            Some(vid) => {
                if frame.len() < 14 {
                    self.out.pool.release(b);
                    return false;
                }
                if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
                    hdr.csum_start += 4;
                }
                if hdr.hdr_len != 0 {
                    hdr.hdr_len += 4;
                }
                let f = VNET_HDR_LEN;
                buf[..f].copy_from_slice(&hdr.emit());
                buf[f..f + 12].copy_from_slice(&frame[..12]);
                buf[f + 12..f + 16].copy_from_slice(&[0x81, 0x00, (vid >> 8) as u8, vid as u8]);
                buf[f + 16..f + 16 + frame.len() - 12].copy_from_slice(&frame[12..]);
                f + 4 + frame.len()
            }
        };
        self.out.writes.push((fd, b, len));
        true
    }
}

impl Sink for PlaneSink<'_> {
    fn deliver(&mut self, to: Dest, frame: &[u8], emit: Emit) -> bool {
        let (in_buf, in_hdr) = self.input;
        let hdr = if emit == Emit::Generated { VnetHdr::default() } else { in_hdr };
        if let Emit::Redirect(mac) = emit {
            if let Dest::Port(q) = to {
                self.out.relayed = Some((q, mac));
            }
            if let (Dest::Port(q), true) = (to, in_buf != usize::MAX) {
                if let Some(PortIo::Tap(fd)) = self.ports.get(q) {
                    // Shared like the input, and patched once the frame is done with.
                    let fd = fd.as_raw_fd();
                    self.out.pool.share(in_buf);
                    self.out.writes.push((fd, in_buf, VNET_HDR_LEN + frame.len()));
                    self.out.redirect = Some((in_buf, mac));
                    return true;
                }
            }
            let mut f = std::mem::take(&mut self.out.patched);
            f.clear();
            f.extend_from_slice(frame);
            if f.len() >= 6 {
                f[..6].copy_from_slice(&mac.0);
            }
            let sent = self.deliver(to, &f, Emit::Rewritten);
            self.out.patched = f;
            return sent;
        }
        match to {
            Dest::Port(q) => match self.ports.get_mut(q) {
                Some(PortIo::Tap(fd)) => {
                    let fd = fd.as_raw_fd();
                    if emit == Emit::Input && in_buf != usize::MAX {
                        self.out.pool.share(in_buf);
                        self.out.writes.push((fd, in_buf, VNET_HDR_LEN + frame.len()));
                        true
                    } else {
                        self.write_copy(fd, hdr, frame, None)
                    }
                }
                Some(PortIo::Ring(r)) => r.push_frame(self.out.generation, &hdr, frame, &mut self.out.scratch),
                _ => false,
            },
            Dest::Uplink => match self.uplink {
                Some(u) => {
                    let fd = u.fd.as_raw_fd();
                    if u.vlan.is_none() && emit == Emit::Input && in_buf != usize::MAX {
                        self.out.pool.share(in_buf);
                        self.out.writes.push((fd, in_buf, VNET_HDR_LEN + frame.len()));
                        true
                    } else {
                        self.write_copy(fd, hdr, frame, u.vlan)
                    }
                }
                None => false,
            },
        }
    }
}
