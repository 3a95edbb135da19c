//! Runtime glue the actors share: how a node stops when it cannot go on
//! safely, and how big values are freed without stalling the actor thread.

use tracing::{error, warn};

/// Drops `value` on a thread of its own: freeing a state of millions of keys
/// takes a good part of a second, too long for the thread all actors share.
pub(crate) fn drop_elsewhere<T: Send + 'static>(value: T) {
    if let Err(e) = std::thread::Builder::new()
        .name("drop".into())
        .spawn(move || drop(value))
    {
        warn!("cannot start a thread to free memory ({e}): freeing it here");
    }
}

/// Exit code of a node stopped by `fatal`.
pub const EXIT_FATAL: i32 = 70;

/// A failure this node cannot recover from without losing durability: the
/// process exits at once rather than go on unsafely. Not `System::stop`: that
/// lets every actor go on handling what is queued in its mailbox (and, say,
/// acknowledge appends against a log that just failed) until the system winds
/// down. Exiting without running destructors loses nothing: only what was
/// fsynced was ever acknowledged, and the next start recovers from the files.
pub(crate) fn fatal(reason: &str) -> ! {
    error!("fatal: {reason}; stopping the node");
    std::process::exit(EXIT_FATAL)
}
