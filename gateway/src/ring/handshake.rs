//! Setting up a queue pair over the gateway's Unix socket.
//!
//! The node sends a length-prefixed JSON [`Hello`]; the gateway answers with a [`Welcome`]
//! carrying, as `SCM_RIGHTS`, the ring region memfd, the data area memfd, the staging area
//! memfd and the two doorbell eventfds — or with a [`Refusal`] saying why. The socket then
//! stays open: its closing is how each side learns that the other is gone.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

/// Largest handshake message, either way.
pub const MAX_MESSAGE: usize = 64 << 10;

/// What a node asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version the node speaks.
    pub version: u32,
    /// PAN name.
    pub pan: String,
    /// Node name.
    pub node: String,
    /// The node's credential.
    pub credential: String,
    /// Slots per ring wanted (rounded and clamped by the gateway).
    pub slots: u32,
    /// Bytes of data area wanted (clamped by the gateway).
    pub data_bytes: u64,
}

/// One LUN of the node's map, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunInfo {
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// Logical block size.
    pub block_size: u32,
    /// Number of blocks.
    pub blocks: u64,
    /// Whether the node's access is read-only.
    pub read_only: bool,
}

/// The gateway's acceptance; five fds travel with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version in use.
    pub version: u32,
    /// Slots per ring.
    pub slots: u32,
    /// Size of the node's data area.
    pub data_bytes: u64,
    /// Size of the gateway's staging area.
    pub staging_bytes: u64,
    /// The node's LUNs.
    pub luns: Vec<LunInfo>,
}

/// The gateway's refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why.
    pub error: String,
}

/// The gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// Accepted.
    Welcome(Welcome),
    /// Refused.
    Refused(Refusal),
}

fn too_big(n: usize) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("handshake message of {n} bytes exceeds {MAX_MESSAGE}"))
}

/// Sends a length-prefixed JSON message, with `fds` attached to its first byte.
pub fn send<T: Serialize>(sock: &UnixStream, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_MESSAGE {
        return Err(too_big(body.len()));
    }
    let mut framed = (body.len() as u32).to_le_bytes().to_vec();
    framed.extend(body);
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(rustix::net::SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many fds for one message"));
    }
    let sent = loop {
        match rustix::net::sendmsg(sock, &[io::IoSlice::new(&framed)], &mut anc, rustix::net::SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    (&*sock).write_all(&framed[sent..])
}

/// Receives a length-prefixed JSON message and any fds sent with it.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: &UnixStream) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut head = [0u8; 4];
    let mut got = 0;
    // The fds ride on the first bytes; collect them with recvmsg, then read the rest.
    while got < head.len() {
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut anc = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let r = match rustix::net::recvmsg(
            sock,
            &mut [io::IoSliceMut::new(&mut head[got..])],
            &mut anc,
            rustix::net::RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => other?,
        };
        for m in anc.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if r.bytes == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed during the handshake"));
        }
        got += r.bytes;
    }
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_MESSAGE {
        return Err(too_big(len));
    }
    let mut body = vec![0u8; len];
    (&*sock).read_exact(&mut body)?;
    let msg = serde_json::from_slice(&body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad handshake message: {e}")))?;
    Ok((msg, fds))
}

/// The uid of the process at the other end of a Unix socket.
pub fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(sock.as_fd())?.uid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let bell = crate::ring::shm::Doorbell::new().unwrap();
        let hello = Hello {
            version: 1,
            pan: "p".into(),
            node: "n".into(),
            credential: "c".into(),
            slots: 256,
            data_bytes: 1 << 20,
        };
        send(&a, &hello, &[bell.fd()]).unwrap();
        let (got, fds): (Hello, _) = recv(&b).unwrap();
        assert_eq!(got, hello);
        assert_eq!(fds.len(), 1);
        let theirs = crate::ring::shm::Doorbell::from_fd(fds.into_iter().next().unwrap());
        theirs.ring().unwrap();
        assert_eq!(bell.drain().unwrap(), 1, "the received fd is the same eventfd");
        assert_eq!(peer_uid(&a).unwrap(), rustix::process::getuid().as_raw());
    }

    #[test]
    fn oversized_or_garbage_messages_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&(u32::MAX).to_le_bytes()).unwrap();
        assert!(recv::<Hello>(&b).unwrap_err().to_string().contains("exceeds"));
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&3u32.to_le_bytes()).unwrap();
        (&a).write_all(b"{x}").unwrap();
        assert!(recv::<Hello>(&b).unwrap_err().to_string().contains("bad handshake message"));
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(recv::<Hello>(&b).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
