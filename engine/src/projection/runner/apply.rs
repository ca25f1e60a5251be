//! Applying events to the views: reading batches from the log, calling the
//! handlers in one transaction per batch (a panic or error blamed on the
//! event that caused it), and the follower thread.

use super::*;
use crate::log::follower::{FollowPace, Step, follow as follow_log};

impl Inner {
    /// Applies events up to `upto` to every runnable view, in batches.
    pub(super) fn apply_upto(&self, state: &mut State, upto: u64) -> Result<(), ProjectionError> {
        loop {
            let Some(from) = state
                .slots
                .iter()
                .filter(|s| s.runnable())
                .map(|s| s.view.expect("runnable").1)
                .filter(|p| *p < upto)
                .min()
            else {
                return Ok(());
            };
            let mut cursor = match state.cursor.take() {
                Some(c) if c.next_position() == from + 1 => c,
                _ => self.log.cursor(from + 1),
            };
            let frames = Frames::read(&mut cursor, upto, self.options.batch_events_max)?;
            state.cursor = Some(cursor);
            if frames.payloads.is_empty() {
                return Ok(());
            }
            let last = frames.last.min(upto);
            let conn = &state.conn;
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(ProjectionError::sqlite(&self.path, "starting a batch"))?;
            let mut outcomes = Vec::new();
            let result = (|| -> Result<(), ProjectionError> {
                for (i, slot) in state.slots.iter().enumerate() {
                    if !slot.runnable() {
                        continue;
                    }
                    let position = slot.view.expect("runnable").1;
                    if position >= last {
                        continue;
                    }
                    let failure =
                        apply_frames(conn, &self.path, &*slot.projection, &frames, position, last)?;
                    match &failure {
                        None => {
                            conn.prepare_cached(
                                "UPDATE strata_projections SET position = ?2 WHERE name = ?1",
                            )
                            .and_then(|mut st| st.execute(params![slot.name(), last]))
                            .map_err(ProjectionError::sqlite(&self.path, "moving a checkpoint"))?;
                        }
                        Some(f) => {
                            let (position, event_id) = f.at.expect("apply_frames names the event");
                            tracing::error!(projection = slot.name(), position, %event_id, error = %f.message, "projection failed");
                            conn.execute(
                                "UPDATE strata_projections SET failed_position = ?2, failed_event_id = ?3, failed_message = ?4 WHERE name = ?1",
                                params![slot.name(), position, event_id.to_string(), f.message],
                            )
                            .map_err(ProjectionError::sqlite(&self.path, "recording a failure"))?;
                        }
                    }
                    outcomes.push((i, failure));
                }
                conn.execute_batch("COMMIT")
                    .map_err(ProjectionError::sqlite(&self.path, "committing a batch"))
            })();
            if let Err(e) = result {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
            let mut any_failed = false;
            for (i, failure) in outcomes {
                let slot = &mut state.slots[i];
                match failure {
                    None => slot.view = slot.view.map(|(v, _)| (v, last)),
                    Some(f) => {
                        slot.failed = Some(f);
                        any_failed = true;
                    }
                }
            }
            if any_failed {
                self.changed.notify_all();
            }
        }
    }
}

/// How a handler call failed.
pub(super) enum HandlerFailure {
    /// It returned an error naming the failing event.
    Failed(BatchFailure),
    /// It panicked: the panic does not say on which event.
    Panicked(String),
}

/// Calls the handler, turning a panic into an error.
pub(super) fn call_handler(
    projection: &dyn Projection,
    conn: &Connection,
    events: &[EventRef<'_>],
) -> Result<(), HandlerFailure> {
    match catch_unwind(AssertUnwindSafe(|| projection.apply_batch(conn, events))) {
        Ok(r) => r.map_err(HandlerFailure::Failed),
        Err(panic) => Err(HandlerFailure::Panicked(
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into()),
        )),
    }
}

/// Applies `events` under the savepoint `projection` (opened by the
/// caller). On failure, returns the index of the failing event and why,
/// with the savepoint's changes possibly still in place (the caller rolls
/// back to it).
pub(super) fn apply_and_blame(
    projection: &dyn Projection,
    conn: &Connection,
    path: &Path,
    events: &[EventRef<'_>],
) -> Result<Option<(usize, String)>, ProjectionError> {
    let msg = match call_handler(projection, conn, events) {
        Ok(()) => return Ok(None),
        Err(HandlerFailure::Failed(f)) => {
            return Ok(Some((f.index.min(events.len() - 1), f.error.to_string())));
        }
        Err(HandlerFailure::Panicked(msg)) => msg,
    };
    // A panic does not say which event caused it. Undo the batch and apply
    // it again one event at a time: the first event that fails alone is
    // the one to blame, so the status names the event the handler cannot
    // take, not the first of its batch.
    conn.execute_batch("ROLLBACK TO projection")
        .map_err(ProjectionError::sqlite(path, "rolling back a savepoint"))?;
    for i in 0..events.len() {
        match call_handler(projection, conn, &events[i..=i]) {
            Ok(()) => {}
            Err(HandlerFailure::Failed(f)) => return Ok(Some((i, f.error.to_string()))),
            Err(HandlerFailure::Panicked(m)) => {
                return Ok(Some((i, format!("handler panicked: {m}"))));
            }
        }
    }
    // The handler is not deterministic: it panicked on the batch but on no
    // event alone. Blame the batch's first event, where it resumes.
    Ok(Some((
        0,
        format!(
            "handler panicked: {msg} (on a batch of {} events, though on none of them alone)",
            events.len()
        ),
    )))
}

/// Frames copied out of the log for one batch: each slot iterates them in
/// turn, so a batch is read from the log once whatever the projection count.
pub(super) struct Frames {
    /// Each batch's payload, with the segment file and frame offset it came
    /// from (damage found while decoding its records names them).
    pub(super) payloads: Vec<(Vec<u8>, PathBuf, u64)>,
    pub(super) last: u64,
}

impl Frames {
    /// Reads batches from `cursor` until about `events_max` events or
    /// `upto`. Records below the cursor's start are left in the payloads and
    /// skipped by the appliers by position.
    pub(super) fn read(
        cursor: &mut crate::log::Cursor,
        upto: u64,
        events_max: usize,
    ) -> Result<Frames, ProjectionError> {
        let mut frames = Frames {
            payloads: Vec::new(),
            last: 0,
        };
        let mut events = 0usize;
        while events < events_max {
            let Some(view) = cursor.next_batch(upto)? else {
                break;
            };
            events += view.batch.event_count as usize;
            frames.last = view.batch.last_position();
            let path = view.segment_path.to_path_buf();
            frames
                .payloads
                .push((view.batch.to_payload(), path, view.frame_offset));
        }
        Ok(frames)
    }

    /// Events after `after` and at most `upto`, in order, borrowed.
    pub(super) fn events(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<Vec<EventRef<'_>>, ProjectionError> {
        let mut out = Vec::new();
        self.for_each(after, upto, |e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    /// Events after `after` and at most `upto`, in order.
    pub(super) fn for_each<'a>(
        &'a self,
        after: u64,
        upto: u64,
        mut f: impl FnMut(EventRef<'a>) -> bool,
    ) -> Result<(), ProjectionError> {
        for (payload, path, offset) in &self.payloads {
            // Damage in the log is the log's, with its file and offset and
            // the log's advice, never a projection's.
            let corrupt = |source| {
                ProjectionError::Store(crate::Error::Log(crate::log::LogError::Corrupt {
                    path: path.clone(),
                    offset: *offset,
                    source,
                }))
            };
            let batch = BatchRef::parse(payload).map_err(corrupt)?;
            if batch.last_position() <= after {
                continue;
            }
            for r in batch.iter() {
                let (_, rec) = r.map_err(corrupt)?;
                if rec.position <= after || rec.position > upto {
                    continue;
                }
                if !f(rec) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Applies events `(from, upto]` of `frames` to one projection on `conn`,
/// inside the caller's transaction, under a savepoint: on a handler error
/// the projection's part of the batch is rolled back.
pub(super) fn apply_frames(
    conn: &Connection,
    path: &Path,
    projection: &dyn Projection,
    frames: &Frames,
    after: u64,
    upto: u64,
) -> Result<Option<Failure>, ProjectionError> {
    let events = frames.events(after, upto)?;
    if events.is_empty() {
        return Ok(None);
    }
    conn.execute_batch("SAVEPOINT projection")
        .map_err(ProjectionError::sqlite(path, "starting a savepoint"))?;
    let failure = apply_and_blame(projection, conn, path, &events)?.map(|(i, message)| {
        let e = &events[i];
        Failure {
            at: Some((e.position, e.event_id)),
            message,
        }
    });
    let end = if failure.is_some() {
        "ROLLBACK TO projection; RELEASE projection"
    } else {
        "RELEASE projection"
    };
    conn.execute_batch(end)
        .map_err(ProjectionError::sqlite(path, "ending a savepoint"))?;
    Ok(failure)
}

/// The follower thread: builds what needs building, then applies new
/// events as they become visible. Holds only a weak reference, so dropping
/// the last `Views` stops it.
pub(super) fn follow(inner: std::sync::Weak<Inner>) {
    let Some((log, stop)) = inner.upgrade().map(|s| (s.log.clone(), s.stop.clone())) else {
        return;
    };
    let pace = FollowPace {
        idle_wake: FOLLOW_WAKE,
        gather: FOLLOW_GATHER,
        // A step fails as a whole only when the log or views.sqlite does (a
        // failing view stops alone).
        retry: FOLLOW_WAKE,
    };
    // The views hold no strong reference between steps, so that dropping
    // them ends this thread.
    follow_log(&log, &stop, pace, |head| {
        let Some(strong) = inner.upgrade() else {
            return Step::Stop;
        };
        // Closed views, or a closed store: nothing more to follow.
        if strong.stop.load(Ordering::Acquire) || strong.log.is_closed() {
            return Step::Stop;
        }
        let next = {
            let state = lock(&strong.state);
            state.slots.iter().position(Slot::needs_rebuild)
        };
        if let Some(i) = next {
            let progress = strong.options.progress.clone();
            if let Err(e) = strong.rebuild(
                i,
                progress
                    .as_deref()
                    .map(|p| p as &(dyn Fn(&RebuildProgress) + Sync)),
            ) {
                tracing::error!(error = %e, "rebuilding a view failed");
            }
            return Step::Again;
        }
        let mut state = lock(&strong.state);
        if let Err(e) = strong.apply_upto(&mut state, head) {
            // Not one view's failure (those stop that view alone): the log
            // or views.sqlite itself. Paced, not retried in a busy loop.
            tracing::error!(error = %e, "applying events to views failed");
            return Step::Failed;
        }
        // The slowest view that can run; views that cannot wait for a fix.
        Step::Applied(
            state
                .slots
                .iter()
                .filter(|s| s.runnable())
                .map(|s| s.view.expect("runnable").1)
                .min()
                .unwrap_or(head),
        )
    });
}
