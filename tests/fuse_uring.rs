//! The FUSE suite of `tests/fuse.rs` again, every mount with `--uring on`: requests and
//! replies through FUSE over io_uring ring entries instead of `/dev/fuse`. Each test turns
//! `/sys/module/fuse/parameters/enable_uring` on while it runs and puts it back.

#[path = "fuse.rs"]
mod over_uring;
