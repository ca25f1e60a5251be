//! The commit queue of durable appends: concurrent [`Store::append_batch`]
//! calls in `Durability::Sync` mode are written by one thread at a time
//! (the leader) as one [`Store::append_batches`] call, one write and one
//! `fdatasync` for all of them, instead of each taking the writer lock,
//! writing its own frame and waiting for a sync in turn.
//!
//! The shape is LevelDB's writer queue (`DBImpl::Write`): an append that
//! finds no leader leads at once, with its own batch and without copying
//! it; appends that arrive meanwhile queue (with a copy of their batch)
//! and sleep. When a leader is done it hands the lead to the first queued
//! append, which writes everything queued by then as one round. So a
//! leader serves one round and returns: no caller waits behind a stream
//! of rounds it has no part in.
//!
//! A round that fails as a whole (the write or the sync failed, the store
//! closed) answers nobody: each of its appends then runs again alone, and
//! gets the answer an append of its own would. A round is one frame at
//! most, written whole or cut back, so a failed write leaves nothing of it
//! behind; after a failed sync the log refuses every append anyway.

use super::*;

/// Most queued appends one round takes; the rest wait for the next.
pub const COMMIT_ROUND_BATCHES_MAX: usize = 1024;

/// A round is one batch frame at most (by a generous estimate of its
/// encoded size), so that it is written with one write that either lands
/// whole or is cut back: a round that fails has written nothing, and an
/// append that then runs alone gets the answer an append of its own would
/// (not `existed` for events of its own that an earlier frame of the
/// failed round wrote). An append larger than that is a round of its own.
fn round_room(groups: &[AggregateEvents]) -> (usize, usize) {
    let mut events = 0;
    let mut bytes = 0;
    for g in groups {
        for e in &g.events {
            events += 1;
            bytes += format::RECORD_HEADER_BYTES
                + crate::hlc::NODE_BYTES_MAX
                + g.aggregate_id.len()
                + e.event_type.len()
                + e.data.len()
                + e.metadata.as_ref().map_or(0, Vec::len);
        }
    }
    (events, bytes)
}

/// Appends waiting for a leader, and whether one is at work.
#[derive(Debug, Default)]
pub(super) struct CommitQueue {
    waiting: VecDeque<Arc<Queued>>,
    leading: bool,
}

/// One append in the queue.
#[derive(Debug)]
struct Queued {
    groups: Vec<AggregateEvents>,
    state: Mutex<QueuedState>,
    moved: Condvar,
}

#[derive(Debug)]
enum QueuedState {
    Waiting,
    /// The lead was handed to this append: write a round.
    Lead,
    /// Its round failed as a whole: append alone.
    Alone,
    Done(Result<Vec<Committed>>),
}

impl Queued {
    fn set(&self, state: QueuedState) {
        *lock(&self.state) = state;
        self.moved.notify_one();
    }

    /// Sleeps until this append is answered or handed something to do.
    fn wait(&self) -> QueuedState {
        let mut st = lock(&self.state);
        while matches!(*st, QueuedState::Waiting) {
            st = self.moved.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::replace(&mut *st, QueuedState::Waiting)
    }
}

/// Answers a round's appends if the leader leaves early (an error or a
/// panic): each runs alone, and the lead passes on.
struct RoundGuard<'a> {
    store: &'a Store,
    round: Vec<Arc<Queued>>,
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        for queued in self.round.drain(..) {
            queued.set(QueuedState::Alone);
        }
        self.store.pass_lead();
    }
}

impl Store {
    /// [`Store::append_batch`] through the commit queue.
    pub(super) fn append_queued(&self, groups: &[AggregateEvents]) -> Result<Vec<Committed>> {
        let mut copy: Option<Arc<Queued>> = None;
        let queued = loop {
            let mut q = lock(&self.inner.commit_queue);
            if !q.leading {
                q.leading = true;
                break None;
            }
            if let Some(queued) = copy.take() {
                q.waiting.push_back(queued.clone());
                break Some(queued);
            }
            // Copy the batch outside the queue's lock (it may be large),
            // then look again: the leader may have finished meanwhile.
            drop(q);
            copy = Some(Arc::new(Queued {
                groups: groups.to_vec(),
                state: Mutex::new(QueuedState::Waiting),
                moved: Condvar::new(),
            }));
        };
        let Some(queued) = queued else {
            // No one leads: write this batch now, then pass the lead to
            // whoever queued meanwhile.
            let guard = RoundGuard {
                store: self,
                round: Vec::new(),
            };
            let result = self.append_alone(groups);
            drop(guard);
            return result;
        };
        loop {
            match queued.wait() {
                QueuedState::Done(result) => return result,
                QueuedState::Alone => return self.append_alone(&queued.groups),
                QueuedState::Lead => self.lead_round(),
                QueuedState::Waiting => unreachable!("wait returns on a change"),
            }
        }
    }

    /// Writes everything queued as one round (the caller's own append is
    /// at its front), answers each, and passes the lead on.
    fn lead_round(&self) {
        let round: Vec<Arc<Queued>> = {
            let mut q = lock(&self.inner.commit_queue);
            let (mut n, mut events, mut bytes) = (0, 0, 0);
            for queued in q.waiting.iter().take(COMMIT_ROUND_BATCHES_MAX) {
                let (e, b) = round_room(&queued.groups);
                if n > 0
                    && (events + e > format::BATCH_EVENTS_MAX as usize
                        || bytes + b > format::BATCH_RECORDS_BYTES_MAX)
                {
                    break;
                }
                (n, events, bytes) = (n + 1, events + e, bytes + b);
            }
            q.waiting.drain(..n).collect()
        };
        let mut guard = RoundGuard { store: self, round };
        let batches: Vec<&[AggregateEvents]> =
            guard.round.iter().map(|q| q.groups.as_slice()).collect();
        if let Ok(results) = self.append_batches(&batches) {
            for (queued, result) in guard.round.drain(..).zip(results) {
                queued.set(QueuedState::Done(result));
            }
        }
        // On failure the guard tells each to append alone.
        drop(guard);
    }

    /// Hands the lead to the first queued append, or gives it up.
    fn pass_lead(&self) {
        let mut q = lock(&self.inner.commit_queue);
        match q.waiting.front() {
            Some(next) => next.set(QueuedState::Lead),
            None => q.leading = false,
        }
    }
}
