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

use super::{HandlerError, Projection};
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
        let sign = match event.event_type {
            INCREMENTED => 1,
            DECREMENTED => -1,
            _ => return Ok(()),
        };
        let data: Data = event
            .json()
            .map_err(|e| format!("{} data is not {{\"value\": N}}: {e}", event.event_type))?;
        let delta = data
            .value
            .checked_mul(sign)
            .ok_or("counter value out of range")?;
        conn.prepare_cached(
            "INSERT INTO counter_ids (aggregate_id, id)
             SELECT ?1, (SELECT coalesce(max(id), 0) + 1 FROM counter_ids)
             WHERE NOT EXISTS (SELECT 1 FROM counter_ids WHERE aggregate_id = ?1)",
        )?
        .execute([event.aggregate_id])?;
        conn.prepare_cached(
            "INSERT INTO current_count (id, value)
             VALUES ((SELECT id FROM counter_ids WHERE aggregate_id = ?1), ?2)
             ON CONFLICT (id) DO UPDATE SET value = value + excluded.value",
        )?
        .execute(params![event.aggregate_id, delta])?;
        Ok(())
    }
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
