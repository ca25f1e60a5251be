//! Following the log for what is derived from it. The store's index and
//! the views each keep a checkpoint and apply what the log made visible
//! beyond it, in a thread of their own; [`follow`] is that loop, written
//! once: when to step, how to wait without missing a close, how to let a
//! trickle of appends gather, how to pause after a failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Log;

/// How a [`follow`] loop paces itself.
#[derive(Debug, Clone, Copy)]
pub struct FollowPace {
    /// Longest wait for the log to move before looking again.
    pub idle_wake: Duration,
    /// After waking to new events, how long to let more gather, so that a
    /// trickle of small appends costs fewer, larger steps.
    pub gather: Duration,
    /// Pause after a failed step before trying again.
    pub retry: Duration,
}

/// What one step of a follower did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Its checkpoint is now this position.
    Applied(u64),
    /// Did something else (a rebuild): step again at once.
    Again,
    /// Failed (it reported why): step again after [`FollowPace::retry`].
    Failed,
    /// The follower is gone: end the loop.
    Stop,
}

/// Calls `step(visible)` with the log's visible position until the
/// follower has caught up, then waits for the log to move. Returns when a
/// step says [`Step::Stop`], or once caught up (or failing) after `stop` is
/// set or the log closed: a follower asked to stop first applies what is
/// already visible. `stop` is read under the log's wait lock, so a stopper
/// that sets it and then wakes the log's waiters is never missed.
pub fn follow(log: &Log, stop: &AtomicBool, pace: FollowPace, mut step: impl FnMut(u64) -> Step) {
    let ending = || stop.load(Ordering::Acquire) || log.is_closed();
    loop {
        let visible = log.visible_position();
        match step(visible) {
            Step::Stop => return,
            Step::Again => continue,
            Step::Applied(at) if at < visible => continue,
            Step::Applied(_) => {}
            Step::Failed => {
                if ending() {
                    return;
                }
                // A pause that a close cuts short (no position passes
                // u64::MAX).
                log.wait_beyond_unless(u64::MAX, pace.retry, stop);
                continue;
            }
        }
        if ending() {
            return;
        }
        if log.wait_beyond_unless(visible, pace.idle_wake, stop) > visible && !ending() {
            std::thread::sleep(pace.gather);
        }
    }
}
