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
    let mut looked_again = false;
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
            // `visible` was read before this step, and the stop may have
            // come while the step ran, after a store's close made its last
            // appends visible: look once more, so that what was visible
            // when the stop came is applied. Once, so that a follower
            // stopped while others append still ends.
            if !looked_again && log.visible_position() > visible {
                looked_again = true;
                continue;
            }
            return;
        }
        if log.wait_beyond_unless(visible, pace.idle_wake, stop) > visible && !ending() {
            std::thread::sleep(pace.gather);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventRef;
    use crate::log::vfs::OsVfs;
    use crate::log::{Durability, LogConfig};
    use std::sync::Arc;

    fn record() -> EventRef<'static> {
        EventRef {
            position: 0,
            event_id: uuid::Uuid::now_v7(),
            aggregate_id: "a",
            version: 1,
            event_type: "T",
            data: b"{}",
            hlc_physical_ms: 1,
            hlc_counter: 0,
            hlc_node: "n",
            metadata: None,
        }
    }

    /// A store's close makes its last appends visible and then stops its
    /// followers; when that happens while a step is running (on a
    /// position read before), the follower still applies what became
    /// visible before it ends. (`engine/tests/invariants.rs`'s S5 rebuild
    /// test lost the last events of a closed store about once in twenty
    /// runs to this.)
    #[test]
    fn a_stop_that_comes_during_a_step_still_gets_what_became_visible_applied() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            vfs: Arc::new(OsVfs),
            segment_bytes_max: crate::log::SEGMENT_BYTES_MIN * 16,
            durability: Durability::Sync,
            read_only: false,
            create_if_missing: true,
        };
        let (log, writer, _) = Log::open(dir.path(), config).unwrap();
        let mut writer = writer.unwrap();
        for _ in 0..3 {
            writer.append(&log, &[record()]).unwrap();
        }
        log.wait_durable(3).unwrap();
        let stop = AtomicBool::new(false);
        let pace = FollowPace {
            idle_wake: Duration::from_millis(10),
            gather: Duration::ZERO,
            retry: Duration::from_millis(10),
        };
        let mut steps = Vec::new();
        follow(&log, &stop, pace, |visible| {
            if steps.is_empty() {
                // The close, while the first step runs: one more event
                // made visible, then the stop.
                writer.append(&log, &[record()]).unwrap();
                log.wait_durable(4).unwrap();
                stop.store(true, Ordering::Release);
            }
            steps.push(visible);
            Step::Applied(visible)
        });
        assert_eq!(
            steps,
            [3, 4],
            "the follower ended before applying position 4"
        );
    }
}
