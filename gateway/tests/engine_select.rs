//! `PANGATE_ENGINE` forces the engine. Alone in its test binary because it sets a
//! process-wide environment variable.

use gateway::engine::{open_engine, EngineKind, Image, ImageOptions, ENGINE_ENV};

#[test]
fn environment_forces_the_synchronous_fallback_and_rejects_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ImageOptions { create_size: Some(1 << 20), ..Default::default() };
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var(ENGINE_ENV, "sync") };
    let kind = EngineKind::resolve(EngineKind::Uring).unwrap();
    assert_eq!(kind, EngineKind::Sync);
    let e = open_engine(Image::open(&dir.path().join("a.img"), &opts).unwrap(), kind, 8).unwrap();
    assert_eq!(e.name(), "sync");
    // SAFETY: as above.
    unsafe { std::env::set_var(ENGINE_ENV, "turbo") };
    let err = EngineKind::resolve(EngineKind::Auto).unwrap_err();
    assert!(err.contains("expected auto, uring, sync or ram"), "{err}");
    // SAFETY: as above.
    unsafe { std::env::remove_var(ENGINE_ENV) };
    assert_eq!(EngineKind::resolve(EngineKind::Uring).unwrap(), EngineKind::Uring);
}
