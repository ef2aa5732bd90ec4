//! A sans-IO SCSI block target (SPC-4, SBC-3).
//!
//! Bytes and values in, bytes and values out: a CDB is decoded and validated into a
//! [`Command`], a [`LogicalUnit`] executes it into an immediate [`Completion`] or a [`Task`]
//! whose backend steps the transport performs. Nothing here sees a file, fd, clock or thread,
//! which is what makes it fuzzable and testable without privileges.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod alua;
pub mod build;
pub mod cdb;
pub mod config;
pub mod inquiry;
pub mod locks;
pub mod lu;
pub mod mode;
pub mod opcodes;
pub mod pr;
pub mod report;
pub mod sense;
pub mod task;

pub use cdb::{Command, Extent};
pub use config::{BlockLimits, BlockSize, LunConfig, LunConfigError, LunIdentity};
pub use locks::{LockId, RangeLocks};
pub use lu::{absent_lun, Action, InitiatorId, LogicalUnit, Nexus};
pub use pr::{InitiatorPort, Persistent};
pub use sense::{Asc, Sense, SenseKey, Status};
pub use task::{AllocExtent, BackendOp, Buf, Completion, DataIn, IoDone, IoFailure, LockMode, LockRequest, Step, Task};
