//! `PANGATE_ENGINE` forces the engine. The environment is read in a child process (this
//! test binary run again, with the variable set), so no test changes its own environment.

use std::process::Command;

use gateway::engine::{open_engine, EngineKind, Image, ImageOptions, ENGINE_ENV};

/// Set in the child: the test to act as.
const CHILD: &str = "PANGATE_ENGINE_SELECT_CHILD";

/// Runs this binary's `child` test with `PANGATE_ENGINE=value`; whether it passed.
fn child_with(value: &str, case: &str) -> bool {
    let me = std::env::current_exe().unwrap();
    let out = Command::new(me)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ENGINE_ENV, value)
        .env(CHILD, case)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed") || !out.status.success(), "the child ran");
    out.status.success()
}

#[test]
fn environment_forces_the_synchronous_fallback_and_rejects_nonsense() {
    assert!(child_with("sync", "sync"), "PANGATE_ENGINE=sync forces the synchronous engine");
    assert!(child_with("turbo", "turbo"), "PANGATE_ENGINE=turbo is refused with the list of engines");
    if std::env::var_os(ENGINE_ENV).is_none() {
        assert_eq!(EngineKind::resolve(EngineKind::Uring).unwrap(), EngineKind::Uring, "unset: the configured kind");
    }
}

/// What the child checks; does nothing when run as an ordinary test.
#[test]
fn child() {
    match std::env::var(CHILD).as_deref() {
        Ok("sync") => {
            let dir = tempfile::tempdir().unwrap();
            let opts = ImageOptions { create_size: Some(1 << 20), ..Default::default() };
            let kind = EngineKind::resolve(EngineKind::Uring).unwrap();
            assert_eq!(kind, EngineKind::Sync);
            let e = open_engine(Image::open(&dir.path().join("a.img"), &opts).unwrap(), kind, 8).unwrap();
            assert_eq!(e.name(), "sync");
        }
        Ok("turbo") => {
            let err = EngineKind::resolve(EngineKind::Auto).unwrap_err();
            assert!(err.contains("expected auto, uring, sync, nvme or ram"), "{err}");
        }
        _ => {}
    }
}
