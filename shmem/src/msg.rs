//! Length-prefixed JSON messages over a Unix stream socket, with file descriptors riding
//! along as `SCM_RIGHTS`: the handshake framing of the storage rings and the netvirt rings.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

/// Largest handshake message, either way.
pub const MAX_MESSAGE: usize = 64 << 10;

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

/// The process id of the peer of a Unix stream socket (0 when it is in a PID namespace the
/// caller cannot see into).
pub fn peer_pid(sock: &UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(sock.as_fd())?.pid.as_raw_nonzero().get() as u32)
}
