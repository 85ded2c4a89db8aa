//! Spinners on stderr around the long phases of a command (importing, planning, writing weights,
//! checksums). indicatif draws nothing when stderr is not a terminal; `--quiet` hides them too.
//! The library crates print nothing: the spinners wrap their calls here.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no spinners for the rest of the process.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A spinner showing `msg` and the time elapsed, until it is dropped or finished.
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    if QUIET.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs `f` behind a spinner showing `msg`, cleared when `f` returns.
pub fn phase<T>(msg: impl Into<String>, f: impl FnOnce() -> T) -> T {
    let pb = spinner(msg);
    let out = f();
    pb.finish_and_clear();
    out
}
