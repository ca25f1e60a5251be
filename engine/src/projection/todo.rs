//! A to-do list: a view whose result depends on the order of events, used to
//! show that replicas converge for more than commutative counters.
//!
//! Events, on an aggregate that is the list:
//! * `TodoAdded {"id": "...", "title": "..."}`: adds an item (ignored if the
//!   id exists, so a late duplicate does not resurrect a deleted item's
//!   title);
//! * `TodoRenamed {"id", "title"}`: renames an existing item;
//! * `TodoCompleted {"id"}`: marks it done;
//! * `TodoDeleted {"id"}`: removes it; later events for the id do nothing.
//!
//! Rename-then-delete and delete-then-rename give different views; so do
//! two renames in either order.

use rusqlite::{Connection, params};

use super::{HandlerError, Projection};
use crate::event::EventRef;

const SCHEMA: &str = "
CREATE TABLE todos (
    list_id   TEXT NOT NULL,
    todo_id   TEXT NOT NULL,
    title     TEXT NOT NULL,
    done      INTEGER NOT NULL DEFAULT 0,
    renamed   INTEGER NOT NULL DEFAULT 0,  -- renames applied, in log order
    PRIMARY KEY (list_id, todo_id)
);
CREATE TABLE todo_tombstones (
    list_id TEXT NOT NULL,
    todo_id TEXT NOT NULL,
    PRIMARY KEY (list_id, todo_id)
);
";

/// The to-do view. Name `todo`, version 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct TodoProjection;

#[derive(serde::Deserialize)]
struct Item {
    id: String,
    #[serde(default)]
    title: Option<String>,
}

impl Projection for TodoProjection {
    fn name(&self) -> &str {
        "todo"
    }

    fn version(&self) -> u32 {
        1
    }

    fn schema(&self) -> &str {
        SCHEMA
    }

    fn apply(&self, conn: &Connection, event: &EventRef<'_>) -> Result<(), HandlerError> {
        let list = event.aggregate_id;
        let item: Item = match event.event_type {
            "TodoAdded" | "TodoRenamed" | "TodoCompleted" | "TodoDeleted" => event.json()?,
            _ => return Ok(()),
        };
        let title = || {
            item.title
                .clone()
                .ok_or_else(|| format!("{} needs a title", event.event_type))
        };
        match event.event_type {
            "TodoAdded" => {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO todos (list_id, todo_id, title)
                     SELECT ?1, ?2, ?3 WHERE NOT EXISTS
                       (SELECT 1 FROM todo_tombstones WHERE list_id = ?1 AND todo_id = ?2)",
                )?
                .execute(params![list, item.id, title()?])?;
            }
            "TodoRenamed" => {
                conn.prepare_cached(
                    "UPDATE todos SET title = ?3, renamed = renamed + 1 WHERE list_id = ?1 AND todo_id = ?2",
                )?
                .execute(params![list, item.id, title()?])?;
            }
            "TodoCompleted" => {
                conn.prepare_cached(
                    "UPDATE todos SET done = 1 WHERE list_id = ?1 AND todo_id = ?2",
                )?
                .execute(params![list, item.id])?;
            }
            "TodoDeleted" => {
                conn.prepare_cached("DELETE FROM todos WHERE list_id = ?1 AND todo_id = ?2")?
                    .execute(params![list, item.id])?;
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO todo_tombstones (list_id, todo_id) VALUES (?1, ?2)",
                )?
                .execute(params![list, item.id])?;
            }
            _ => unreachable!("filtered above"),
        }
        Ok(())
    }
}

/// The list as `(todo_id, title, done)`, by id.
pub fn items(conn: &Connection, list_id: &str) -> rusqlite::Result<Vec<(String, String, bool)>> {
    let mut stmt =
        conn.prepare("SELECT todo_id, title, done FROM todos WHERE list_id = ?1 ORDER BY todo_id")?;
    stmt.query_map([list_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}
