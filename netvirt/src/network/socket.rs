//! The netvirt socket: ring clients attach to their ports, and `pangate net show` asks
//! what is there.

use std::collections::HashSet;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::show::{show, NetShow};
use super::{cidrs, lock, Shared, RING_SLOTS};
use crate::config::PortKind;
use crate::dataplane::Command;
use crate::mac::Mac;
use crate::ringport::RingPort;

/// What a ring client asks on the netvirt socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attach to my ring port on a LAN.
    Attach {
        /// PAN.
        pan: String,
        /// Node.
        node: String,
        /// LAN.
        lan: String,
        /// The node's credential.
        credential: String,
    },
    /// Describe every LAN (root or the gateway's own user only).
    Show,
}

/// The gateway's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Attached: the port region, broadcast region and two doorbells follow as fds.
    Attached {
        /// The port's MAC.
        mac: Mac,
        /// LAN MTU.
        mtu: u32,
        /// Slots per ring.
        slots: u32,
        /// Bytes per slot.
        slot_size: u32,
        /// Registered addresses.
        ips: Vec<String>,
    },
    /// The description asked for.
    Show(NetShow),
    /// Refused, and why.
    Refused {
        /// Why.
        reason: String,
    },
}

pub(super) fn serve(listener: UnixListener, shared: Arc<Shared>, stopping: Arc<AtomicBool>) {
    let busy: Arc<Mutex<HashSet<(usize, usize)>>> = Arc::default();
    while !stopping.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, _)) => {
                let (sh, b) = (shared.clone(), busy.clone());
                let _ = std::thread::Builder::new().name("netvirt-conn".into()).spawn(move || {
                    if let Err(e) = connection(&sock, &sh, &b) {
                        tracing::debug!(error = %e, "netvirt connection ended");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let fd = std::os::fd::AsFd::as_fd(&listener);
                let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&shmem::poll_timeout(Duration::from_millis(200))));
            }
            Err(e) => {
                tracing::warn!(error = %e, "netvirt socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn refuse(sock: &UnixStream, reason: impl Into<String>) -> io::Result<()> {
    shmem::msg::send(sock, &Reply::Refused { reason: reason.into() }, &[])
}

fn connection(sock: &UnixStream, shared: &Shared, busy: &Mutex<HashSet<(usize, usize)>>) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (req, _fds): (Request, _) = match shmem::msg::recv(sock) {
        Ok(r) => r,
        Err(e) => return refuse(sock, format!("bad request: {e}")),
    };
    let (pan, node, lan, credential) = match req {
        Request::Show => {
            let uid = shmem::msg::peer_uid(sock)?;
            if uid != 0 && uid != shared.gateway_uid {
                return refuse(sock, "only root or the gateway's user may list the network");
            }
            return shmem::msg::send(sock, &Reply::Show(show(shared)), &[]);
        }
        Request::Attach { pan, node, lan, credential } => (pan, node, lan, credential),
    };
    if !(shared.authorize.0)(&pan, &node, &credential) {
        return refuse(sock, format!("node {node:?} of PAN {pan:?} is unknown or its credential is wrong"));
    }
    let Some((l, state)) = shared.find(&pan, &lan) else {
        return refuse(sock, format!("PAN {pan:?} has no LAN {lan:?}"));
    };
    let Some(p) = state.ports.iter().position(|p| p.is(&node)) else {
        return refuse(sock, format!("node {node:?} is not a member of LAN {lan:?}"));
    };
    let port = &state.ports[p];
    if port.plan.kind != PortKind::Ring {
        return refuse(sock, format!("node {node:?}'s port on {lan:?} is a TAP, not a ring port"));
    }
    if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert((l, p)) {
        return refuse(sock, format!("node {node:?}'s port on {lan:?} already has a client"));
    }
    let result = (|| -> io::Result<()> {
        let bcast = state.bcast.clone().ok_or_else(|| io::Error::other("LAN has no broadcast ring"))?;
        let ring =
            RingPort::create(port.plan.mac, RING_SLOTS, state.plan.mtu as usize, bcast).map_err(io::Error::other)?;
        let fds = ring.fds();
        let fds = [fds.region, fds.bcast, fds.to_gateway, fds.to_node].map(|fd| fd.try_clone_to_owned());
        let [Ok(region), Ok(bcast_fd), Ok(to_gateway), Ok(to_node)] = fds else {
            return Err(io::Error::other("duplicating the ring port's fds failed"));
        };
        // The data path takes the port before the client hears back: once its connect
        // returns, frames sent to it are delivered, and frames it sends are switched.
        let (done, attached) = std::sync::mpsc::channel();
        // A LAN with ring ports is served by the first worker alone.
        shared.control.first().send(Command::AttachRing { lan: l, port: p, ring, done });
        attached
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("the data path did not take the port"))?;
        let reply = Reply::Attached {
            mac: port.plan.mac,
            mtu: state.plan.mtu,
            slots: RING_SLOTS,
            slot_size: crate::ringport::slot_size(state.plan.mtu as usize) as u32,
            ips: cidrs(&lock(&port.addrs)),
        };
        use std::os::fd::AsFd;
        let fds = [region.as_fd(), bcast_fd.as_fd(), to_gateway.as_fd(), to_node.as_fd()];
        shmem::msg::send(sock, &reply, &fds)?;
        *lock(&port.client) = Some(sock.try_clone()?);
        port.attached.store(true, Ordering::Relaxed);
        if !shared.holds(l, &state) {
            // Removed while we attached: the removal may have missed this client.
            return Ok(());
        }
        // The client holds the socket open while it runs; its closing detaches the port.
        sock.set_read_timeout(None)?;
        let mut b = [0u8; 64];
        loop {
            match io::Read::read(&mut &*sock, &mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        Ok(())
    })();
    shared.control.first().send(Command::DetachRing { lan: l, port: p });
    lock(&port.client).take();
    port.attached.store(false, Ordering::Relaxed);
    busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&(l, p));
    result
}

/// Asks a running gateway's netvirt socket for [`NetShow`].
pub fn query_show(socket: &Path) -> io::Result<NetShow> {
    let sock = UnixStream::connect(socket)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    shmem::msg::send(&sock, &Request::Show, &[])?;
    match shmem::msg::recv::<Reply>(&sock)?.0 {
        Reply::Show(s) => Ok(s),
        Reply::Refused { reason } => Err(io::Error::new(io::ErrorKind::PermissionDenied, reason)),
        Reply::Attached { .. } => Err(io::Error::other("unexpected answer")),
    }
}
