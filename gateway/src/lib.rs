//! The pangate control node: backing-image engines, LUN execution, configuration, and the
//! pieces the `pangate` binary composes.

pub mod engine;
pub mod lun;
