//! The seed's counter app: `CounterIncremented` / `CounterDecremented`
//! events with data `{"value": N}`, and the `current_count` view.
//!
//! The seed's view is one row, `current_count (id INTEGER PRIMARY KEY
//! DEFAULT 1, value INTEGER NOT NULL)`. Strata keeps that table exactly and
//! gives every counter aggregate its own row: `counter_ids` maps an
//! aggregate id to the row id, assigned 1, 2, 3, ... in the order counters
//! first appear in the log. The same log therefore gives the same ids on
//! every replica, and the first counter ever used has the seed's id 1.

use rusqlite::{Connection, OptionalExtension, params};

use std::collections::HashMap;

use super::{BatchFailure, HandlerError, Projection};
use crate::event::{EventRef, NewEvent};

/// Event type of an increment.
pub const INCREMENTED: &str = "CounterIncremented";
/// Event type of a decrement.
pub const DECREMENTED: &str = "CounterDecremented";

const SCHEMA: &str = "
CREATE TABLE current_count (
    id      INTEGER PRIMARY KEY DEFAULT 1,
    value   INTEGER NOT NULL
);
CREATE TABLE counter_ids (
    aggregate_id TEXT PRIMARY KEY,
    id           INTEGER NOT NULL UNIQUE
);
";

/// The counter view. Name `counter`, version 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct CounterProjection;

#[derive(serde::Deserialize)]
struct Data {
    value: i64,
}

impl Projection for CounterProjection {
    fn name(&self) -> &str {
        "counter"
    }

    fn version(&self) -> u32 {
        1
    }

    fn schema(&self) -> &str {
        SCHEMA
    }

    fn apply(&self, conn: &Connection, event: &EventRef<'_>) -> Result<(), HandlerError> {
        match delta(event)? {
            Some(d) => add(conn, event.aggregate_id, d),
            None => Ok(()),
        }
    }

    /// Sums each counter's deltas over the batch, then writes each counter
    /// once: the same rows as event by event (sums commute within a
    /// counter, and row ids are still given in order of first appearance).
    fn apply_batch(&self, conn: &Connection, events: &[EventRef<'_>]) -> Result<(), BatchFailure> {
        // (counter, sum, index of its last event in the batch)
        let mut sums: Vec<(&str, i64, usize)> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            let fail = |error| BatchFailure { index, error };
            let Some(d) = delta(event).map_err(fail)? else {
                continue;
            };
            let i = *slot.entry(event.aggregate_id).or_insert_with(|| {
                sums.push((event.aggregate_id, 0, index));
                sums.len() - 1
            });
            sums[i].1 = sums[i]
                .1
                .checked_add(d)
                .ok_or_else(|| fail("counter value out of range".into()))?;
            sums[i].2 = index;
        }
        for (aggregate_id, d, index) in sums {
            add(conn, aggregate_id, d).map_err(|error| BatchFailure { index, error })?;
        }
        Ok(())
    }
}

/// The signed change an event makes to its counter, or `None` for other
/// event types.
pub fn delta(event: &EventRef<'_>) -> Result<Option<i64>, HandlerError> {
    let sign = match event.event_type {
        INCREMENTED => 1,
        DECREMENTED => -1,
        _ => return Ok(None),
    };
    let data: Data = event
        .json()
        .map_err(|e| format!("{} data is not {{\"value\": N}}: {e}", event.event_type))?;
    Ok(Some(
        data.value
            .checked_mul(sign)
            .ok_or("counter value out of range")?,
    ))
}

/// Adds `delta` to a counter, giving it a row first if it has none.
fn add(conn: &Connection, aggregate_id: &str, delta: i64) -> Result<(), HandlerError> {
    conn.prepare_cached(
        "INSERT INTO counter_ids (aggregate_id, id)
         SELECT ?1, (SELECT coalesce(max(id), 0) + 1 FROM counter_ids)
         WHERE NOT EXISTS (SELECT 1 FROM counter_ids WHERE aggregate_id = ?1)",
    )?
    .execute([aggregate_id])?;
    conn.prepare_cached(
        "INSERT INTO current_count (id, value)
         VALUES ((SELECT id FROM counter_ids WHERE aggregate_id = ?1), ?2)
         ON CONFLICT (id) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![aggregate_id, delta])?;
    Ok(())
}

/// An increment by `n`.
pub fn increment(n: i64) -> NewEvent {
    NewEvent::new(INCREMENTED, format!("{{\"value\":{n}}}").into_bytes())
}

/// A decrement by `n`.
pub fn decrement(n: i64) -> NewEvent {
    NewEvent::new(DECREMENTED, format!("{{\"value\":{n}}}").into_bytes())
}

/// The counter's value, or `None` if it has no events yet.
pub fn value(conn: &Connection, aggregate_id: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT c.value FROM current_count c JOIN counter_ids i ON i.id = c.id WHERE i.aggregate_id = ?1",
        [aggregate_id],
        |r| r.get(0),
    )
    .optional()
}

/// The row id of a counter in `current_count`.
pub fn row_id(conn: &Connection, aggregate_id: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT id FROM counter_ids WHERE aggregate_id = ?1",
        [aggregate_id],
        |r| r.get(0),
    )
    .optional()
}
