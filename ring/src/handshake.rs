//! Setting up a queue pair over the gateway's Unix socket.
//!
//! The node sends a length-prefixed JSON [`Hello`]; the gateway answers with a [`Welcome`]
//! carrying, as `SCM_RIGHTS`, the ring region memfd, the data area memfd, the staging area
//! memfd and the two doorbell eventfds — or with a [`Refusal`] saying why. The socket then
//! stays open: its closing is how each side learns that the other is gone.

use serde::{Deserialize, Serialize};

pub use shmem::msg::{peer_pid, peer_uid, recv, send, MAX_MESSAGE};

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
    /// What the node side is, for the gateway's status: `fuse` for `pangate mount`.
    /// Anything else (or nothing) is a node of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn messages_and_fds_cross_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let bell = crate::shm::Doorbell::new().unwrap();
        let hello = Hello {
            version: 1,
            pan: "p".into(),
            node: "n".into(),
            credential: "c".into(),
            slots: 256,
            data_bytes: 1 << 20,
            client: None,
        };
        send(&a, &hello, &[bell.fd()]).unwrap();
        let (got, fds): (Hello, _) = recv(&b).unwrap();
        assert_eq!(got, hello);
        assert_eq!(fds.len(), 1);
        let theirs = crate::shm::Doorbell::from_fd(fds.into_iter().next().unwrap());
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
