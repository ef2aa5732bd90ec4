//! Cross-crate integration tests that use real kernels (FUSE mounts, loop devices, network
//! namespaces, Prometheus, a browser). They arrive with the front-end, netvirt and web
//! issues; the storage core's tests live beside the code in `scsi/` and `gateway/tests/`.
