//! Repairing a log, for `strata repair`: cut a torn tail (what opening the
//! store would do), or, only when asked, truncate the log after a position
//! to get rid of damage. Whatever is removed is first copied or moved into
//! `<store>/quarantine/<unix ms>/`, so nothing is ever lost silently.
//!
//! The caller must hold the store's writer lock.

use std::path::{Path, PathBuf};

use super::inspect::{LogReport, verify_log};
use super::recovery;
use super::{LOG_DIR, LogError, format};

/// Directory inside a store where removed bytes are kept.
pub const QUARANTINE_DIR: &str = "quarantine";

/// One change a repair makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Cut `path` to `offset` bytes; the `bytes` after it go to quarantine.
    Cut {
        path: PathBuf,
        offset: u64,
        bytes: u64,
        /// Readable events removed with the cut (the damaged part may hold
        /// more).
        events: u64,
        /// An unfinished append, not acknowledged data.
        torn_tail: bool,
    },
    /// Move a whole segment to quarantine.
    Remove {
        path: PathBuf,
        bytes: u64,
        events: u64,
    },
}

/// What a repair would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The log's head after the repair.
    pub head_after: u64,
}

/// Why a repair cannot be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepairError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(
        "the log is damaged; nothing was removed. To drop the damage and everything after it, run `strata repair --truncate-after {last_good}`"
    )]
    Damaged { last_good: u64 },
    #[error("position {position} is inside a batch (positions {first}..={last}); truncate after {before} or {last} instead", before = first - 1)]
    InsideBatch {
        position: u64,
        first: u64,
        last: u64,
    },
    #[error("position {position} is beyond the last readable position {last}")]
    BeyondEnd { position: u64, last: u64 },
}

/// Plans a repair. Without `truncate_after`, only a torn tail is cut; damage
/// anywhere makes this fail with [`RepairError::Damaged`], naming the
/// position to truncate after. With it, the log is cut right after that
/// position (which must end a batch and lie before any damage).
pub fn plan(
    store_dir: &Path,
    truncate_after: Option<u64>,
) -> Result<(LogReport, Plan), RepairError> {
    let report = verify_log(store_dir)?;
    let Some(after) = truncate_after else {
        if report.has_damage() {
            return Err(RepairError::Damaged {
                last_good: report.last_good_position.unwrap_or(0),
            });
        }
        let mut plan = Plan::default();
        for p in report.problems.iter().filter(|p| p.torn_tail) {
            let len = std::fs::metadata(&p.path)
                .map_err(|e| LogError::io(&p.path, "reading a segment's size", e))?
                .len();
            plan.actions.push(Action::Cut {
                path: p.path.clone(),
                offset: p.offset,
                bytes: len - p.offset,
                events: 0,
                torn_tail: true,
            });
        }
        plan.head_after = readable_head(store_dir)?;
        return Ok((report, plan));
    };
    if let Some(good) = report.last_good_position
        && after > good
    {
        return Err(RepairError::BeyondEnd {
            position: after,
            last: good,
        });
    }
    let mut plan = Plan {
        actions: Vec::new(),
        head_after: after,
    };
    let mut reached = false;
    for (first, path) in
        recovery::list_segments(&super::vfs::OsVfs, &store_dir.join(LOG_DIR))?.segments
    {
        let bytes =
            std::fs::read(&path).map_err(|e| LogError::io(&path, "reading a segment", e))?;
        let len = bytes.len() as u64;
        // Wholly after the cut. The first segment is kept, emptied, so the
        // store keeps its id.
        if first > after && first > 1 {
            plan.actions.push(Action::Remove {
                path,
                bytes: len,
                events: count_events(&bytes, first),
            });
            reached = true;
            continue;
        }
        // The cut is in this segment if a batch ends at `after` (or, for the
        // first segment, if `after` is 0: cut to the header).
        let mut cut = (after == 0).then_some(format::SEGMENT_HEADER_BYTES as u64);
        let mut inside = None;
        let mut removed = 0u64;
        recovery::scan_frames(&bytes, first, |offset, batch| {
            let end = offset
                + (format::FRAME_HEADER_BYTES + format::BATCH_HEADER_BYTES + batch.records.len())
                    as u64;
            if batch.last_position() == after {
                cut = Some(end);
            } else if batch.first_position <= after && after < batch.last_position() {
                inside = Some((batch.first_position, batch.last_position()));
            } else if batch.first_position > after {
                removed += batch.event_count as u64;
            }
        });
        if let Some((first, last)) = inside {
            return Err(RepairError::InsideBatch {
                position: after,
                first,
                last,
            });
        }
        if let Some(offset) = cut {
            reached = true;
            if offset < len {
                plan.actions.push(Action::Cut {
                    path,
                    offset,
                    bytes: len - offset,
                    events: removed,
                    torn_tail: false,
                });
            }
        }
    }
    if !reached {
        return Err(RepairError::BeyondEnd {
            position: after,
            last: readable_head(store_dir)?,
        });
    }
    Ok((report, plan))
}

fn count_events(bytes: &[u8], first: u64) -> u64 {
    let mut n = 0;
    recovery::scan_frames(bytes, first, |_, b| n += b.event_count as u64);
    n
}

/// The last position readable from the segments as they are.
fn readable_head(store_dir: &Path) -> Result<u64, LogError> {
    let segments = recovery::list_segments(&super::vfs::OsVfs, &store_dir.join(LOG_DIR))?.segments;
    let Some((first, path)) = segments.last() else {
        return Ok(0);
    };
    let bytes = std::fs::read(path).map_err(|e| LogError::io(path, "reading a segment", e))?;
    Ok(recovery::scan_frames(&bytes, *first, |_, _| {}).next_position - 1)
}

/// Carries out a plan: removed bytes are copied (cuts) or moved (whole
/// segments) into a fresh quarantine directory, synced, and only then cut
/// from the log. Returns the quarantine directory (when anything was
/// removed). The caller holds the writer lock.
pub fn apply(store_dir: &Path, plan: &Plan) -> Result<Option<PathBuf>, LogError> {
    if plan.actions.is_empty() {
        return Ok(None);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let quarantine = store_dir.join(QUARANTINE_DIR).join(stamp.to_string());
    std::fs::create_dir_all(&quarantine)
        .map_err(|e| LogError::io(&quarantine, "creating the quarantine directory", e))?;
    let sync_dir = |dir: &Path| -> Result<(), LogError> {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| LogError::io(dir, "syncing a directory", e))
    };
    // Later segments first, so that a crash halfway leaves a log that is
    // still a gapless prefix.
    for action in plan.actions.iter().rev() {
        match action {
            Action::Remove { path, .. } => {
                let target = quarantine.join(path.file_name().expect("segment files have names"));
                std::fs::rename(path, &target)
                    .map_err(|e| LogError::io(path, "moving a segment to quarantine", e))?;
                sync_dir(&quarantine)?;
                sync_dir(path.parent().expect("segments live in a directory"))?;
            }
            Action::Cut { path, offset, .. } => {
                let bytes =
                    std::fs::read(path).map_err(|e| LogError::io(path, "reading a segment", e))?;
                let name = path
                    .file_name()
                    .expect("segment files have names")
                    .to_string_lossy();
                let target = quarantine.join(format!("{name}.from-{offset}"));
                std::fs::write(&target, &bytes[*offset as usize..])
                    .and_then(|()| std::fs::File::open(&target)?.sync_all())
                    .map_err(|e| LogError::io(&target, "writing quarantined bytes", e))?;
                sync_dir(&quarantine)?;
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| LogError::io(path, "opening a segment", e))?;
                file.set_len(*offset)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| LogError::io(path, "cutting a segment", e))?;
            }
        }
    }
    // What is derived from the log (the index, the views) may describe
    // what was cut, and new appends would take those positions again: a
    // new generation tells each derived file to rebuild at its next open.
    // A torn tail was never part of the history they saw.
    if plan.actions.iter().any(|a| {
        !matches!(
            a,
            Action::Cut {
                torn_tail: true,
                ..
            }
        )
    }) {
        super::bump_generation(&store_dir.join(super::LOG_DIR))?;
    }
    Ok(Some(quarantine))
}
