//! A sans-IO iSCSI codec (RFC 7143): bytes in, validated PDUs out, and back.
//!
//! - [`bhs`]: the 48-byte Basic Header Segment, every field named once with its place.
//! - [`pdu`]: typed PDUs parsed from and emitted to a BHS plus data segment.
//! - [`frame`]: the framer that cuts a byte stream into PDUs, checking AHS and data segment
//!   lengths against the negotiated limits and the CRC32C header and data digests.
//! - [`text`]: `key=value` text of Login and Text PDUs, bounded.
//! - [`negotiate`]: the target's answers to operational keys, by each key's rule.
//! - [`login`]: the target's login state machine: stages, CHAP (MD5, mutual), status.
//! - [`session`]: the full feature phase: CmdSN window, data-out sequencing, Data-In,
//!   task management, NOP, text and logout.
//!
//! Nothing here sees a socket, clock or thread; the transport feeds bytes and writes what
//! it is handed.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bhs;
pub mod frame;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod session;
pub mod text;

pub use bhs::{Bhs, Opcode, BHS_LEN};
pub use frame::{Digests, FrameError, Framer, RawPdu};
pub use pdu::{Pdu, PduError};
