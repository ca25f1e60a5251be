//! Checking the index against the log (`strata verify`).

use super::*;

impl Store {
    /// Compares the index with the log, row by row, up to the index's
    /// checkpoint (after flushing it, for a read-write store). Returns one
    /// line per disagreement, at most `problems_max` of them, and the total.
    pub fn verify_index(&self, problems_max: usize) -> Result<(Vec<String>, u64)> {
        self.flush_index()?;
        let inner = &*self.inner;
        let mut problems = Vec::new();
        let mut total = 0u64;
        if !inner.index.is_present() {
            return Ok((problems, total));
        }
        let mut report = |p: String| {
            total += 1;
            if problems.len() < problems_max {
                problems.push(p);
            }
        };
        let head = self.head();
        let mut log_rows = LogRows {
            cursor: inner.log.cursor(1),
            upto: 0,
            pending: VecDeque::new(),
            done: false,
        };
        let mut failure = None;
        // One snapshot of the index, compared up to its checkpoint, or up
        // to this handle's head if the index is ahead of it (another
        // process writes it meanwhile). Rows past the checkpoint commit
        // with it, so they are never right. Merge join on position: both
        // sides are in position order.
        let mut rows_seen = 0u64;
        let (runs, _) = inner.index.snapshot(|r, indexed| {
            log_rows.upto = indexed.min(head);
            r.for_each_row(|row| {
                rows_seen += 1;
                if row.position > indexed {
                    report(format!(
                        "position {}: in the index past its checkpoint {indexed}",
                        row.position
                    ));
                    return true;
                }
                if row.position > log_rows.upto {
                    // Beyond this handle's view of the log.
                    return true;
                }
                loop {
                    let next = match log_rows.peek() {
                        Ok(next) => next.cloned(),
                        Err(e) => {
                            failure = Some(e);
                            return false;
                        }
                    };
                    match next {
                        Some(l) if l.position < row.position => {
                            report(format!(
                                "position {}: in the log but not in the index",
                                l.position
                            ));
                            log_rows.pending.pop_front();
                        }
                        Some(l) if l.position == row.position => {
                            if l != row {
                                report(format!(
                                    "position {}: index has {row:?}, log has {l:?}",
                                    l.position
                                ));
                            }
                            log_rows.pending.pop_front();
                            return true;
                        }
                        _ => {
                            report(format!(
                                "position {}: in the index but not in the log",
                                row.position
                            ));
                            return true;
                        }
                    }
                }
            })?;
            r.check_runs()
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        // The runs an aggregate is read by must tile the rows: each row in
        // exactly one run, which agrees with it.
        if runs.mismatched > 0 {
            report(format!(
                "aggregate runs: {} rows are not the aggregate and version their run says, or not where it says it starts",
                runs.mismatched
            ));
        }
        if runs.overlapping > 0 || runs.inverted > 0 {
            report(format!(
                "aggregate runs: {} overlap another run of their aggregate, {} end before they start",
                runs.overlapping, runs.inverted
            ));
        }
        if runs.events != rows_seen || runs.rows != rows_seen {
            report(format!(
                "aggregate runs: they cover {} versions and {} rows of {rows_seen}: some events cannot be read by aggregate",
                runs.events, runs.rows
            ));
        }
        while let Some(l) = log_rows.peek()?.cloned() {
            report(format!(
                "position {}: in the log but not in the index",
                l.position
            ));
            log_rows.pending.pop_front();
        }
        Ok((problems, total))
    }

    /// Number of distinct aggregates and events in the index (after
    /// flushing it).
    pub fn index_counts(&self) -> Result<(u64, u64)> {
        self.flush_index()?;
        Ok(self.inner.index.counts()?)
    }
}

/// Index rows made from the log, for [`Store::verify_index`].
pub(super) struct LogRows {
    pub(super) cursor: Cursor,
    pub(super) upto: u64,
    pub(super) pending: VecDeque<index::IndexRow>,
    pub(super) done: bool,
}

impl LogRows {
    pub(super) fn peek(&mut self) -> Result<Option<&index::IndexRow>> {
        while self.pending.is_empty() && !self.done {
            let Some(view) = self.cursor.next_batch(self.upto)? else {
                self.done = true;
                break;
            };
            for r in view.records() {
                let (offset, rec) = r?;
                if rec.position > self.upto {
                    break;
                }
                self.pending.push_back(index::IndexRow {
                    position: rec.position,
                    event_id: rec.event_id.hyphenated().to_string(),
                    aggregate_id: rec.aggregate_id.to_owned(),
                    version: rec.version,
                    event_type: rec.event_type.to_owned(),
                    timestamp: rec.timestamp_text(),
                    segment: view.segment_first,
                    offset,
                });
            }
        }
        Ok(self.pending.front())
    }
}
