//! Prerequisite checks shared by the gateway's tests and the root package's.

/// Whether `tool` is on the PATH.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
}

/// For tests that need parts of the machine: `None` means go ahead. Otherwise, outside CI
/// the test prints why it skips and should return; with CI=true a missing part fails it.
#[track_caller]
pub fn skip_because(missing: Option<String>) -> bool {
    let Some(why) = missing else { return false };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why} (a failure under CI=true)");
    eprintln!("skipping: {why}");
    true
}
