//! Projections: materialized views of the log in their own SQLite database
//! (`views.sqlite`), invariants S7 and S8.
//!
//! # Brief overview
//!
//! * [`Projection`]: a name, a version, the SQL that creates its tables,
//!   and a handler that applies one event inside the views transaction.
//! * [`Views`]: runs projections for a [`Store`]. Events are applied in
//!   batches in log position order; each batch's view changes and each
//!   projection's checkpoint (a log position, never an HLC) commit in one
//!   SQLite transaction (S7).
//! * Reads are consistent with the caller's own writes: [`Views::read`]
//!   first applies every event up to the store's head at the time of the
//!   call, then runs the query. A background thread follows the log so that
//!   reads rarely have anything left to apply.
//! * A projection whose declared version differs from the stored one, or
//!   whose tables are missing (`views.sqlite` deleted by hand, as the seed
//!   describes), is rebuilt by replaying the whole log into a shadow
//!   database while readers keep the old view; the result is swapped in with
//!   one transaction (S8). A crash during the rebuild leaves the old view;
//!   the rebuild starts over on the next open.
//! * A handler error stops that projection at that event: nothing of the
//!   failing batch is committed for it, the error names the projection,
//!   position and event id, and the other projections keep running. The next
//!   [`Views::open`] retries from the checkpoint.
//!
//! The counter of the seed's example app is [`counter::CounterProjection`];
//! [`todo::TodoProjection`] is an example whose result depends on event
//! order.

pub mod counter;
mod functions;
mod runner;
pub mod todo;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use functions::register_hlc_functions;
pub use runner::{ProjectionState, ProjectionStatus, RebuildProgress, Views};
/// The SQLite binding projections are written against, so that handlers
/// use the same version as the engine.
pub use rusqlite;

use crate::event::EventRef;

/// File name of the views database inside a store.
pub const VIEWS_FILE: &str = "views.sqlite";
/// Default [`ViewOptions::batch_events_max`].
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 1_000;
/// Longest projection name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// What a handler returns when it cannot apply an event.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A materialized view of the log.
///
/// `apply` runs inside a transaction on the views database: it must not
/// begin, commit or roll back transactions itself. It should be
/// deterministic (a function of the event and the view's current rows), so
/// that a rebuild by replay gives the same view.
pub trait Projection: Send + Sync + 'static {
    /// Unique among the projections of one store; 1 to 64 bytes of
    /// `[A-Za-z0-9_-]`.
    fn name(&self) -> &str;
    /// Bump when the schema or the meaning of `apply` changes: the view is
    /// then rebuilt from the whole log.
    fn version(&self) -> u32;
    /// SQL that creates the projection's tables and indexes in an empty
    /// database.
    fn schema(&self) -> &str;
    /// Applies one event.
    fn apply(&self, conn: &rusqlite::Connection, event: &EventRef<'_>) -> Result<(), HandlerError>;

    /// Applies a run of consecutive events (one batch, in log order). The
    /// default calls [`Projection::apply`] for each. Override it to combine
    /// work across a batch, e.g. one `UPDATE` per row instead of one per
    /// event; the result must equal applying the events one by one. On
    /// failure, say which event failed (its index in `events`); nothing of
    /// the batch is kept either way.
    fn apply_batch(
        &self,
        conn: &rusqlite::Connection,
        events: &[EventRef<'_>],
    ) -> Result<(), BatchFailure> {
        for (index, event) in events.iter().enumerate() {
            self.apply(conn, event)
                .map_err(|error| BatchFailure { index, error })?;
        }
        Ok(())
    }
}

/// Which event of a batch failed, and why.
#[derive(Debug)]
pub struct BatchFailure {
    /// Index of the failing event in the batch.
    pub index: usize,
    pub error: HandlerError,
}

/// Receives rebuild progress.
pub type ProgressFn = Arc<dyn Fn(&RebuildProgress) + Send + Sync>;

/// How [`Views`] runs.
#[derive(Clone)]
pub struct ViewOptions {
    /// Events per transaction.
    pub batch_events_max: usize,
    /// Follow the log from a background thread (default). Without it,
    /// events are applied only by reads and [`Views::catch_up`].
    pub background: bool,
    /// Called as rebuilds progress.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for ViewOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewOptions")
            .field("batch_events_max", &self.batch_events_max)
            .field("background", &self.background)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            background: true,
            progress: None,
        }
    }
}

/// Errors of the views.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    #[error(
        "{path}: SQLite error while {action}: {source}; views are derived from the log, so deleting {VIEWS_FILE} rebuilds them"
    )]
    Sqlite {
        path: PathBuf,
        action: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "projection {projection:?} failed at position {position} (event {event_id}): {message}; fix the handler and reopen the views to resume from the checkpoint"
    )]
    Handler {
        projection: String,
        position: u64,
        event_id: uuid::Uuid,
        message: String,
    },
    #[error("projection {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("no projection named {0:?}")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] crate::Error),
    #[error("{path}: I/O error while {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the views are closed")]
    Closed,
}

impl ProjectionError {
    pub(crate) fn sqlite(
        path: &Path,
        action: impl Into<String>,
    ) -> impl FnOnce(rusqlite::Error) -> ProjectionError {
        let path = path.to_path_buf();
        let action = action.into();
        move |source| ProjectionError::Sqlite {
            path,
            action,
            source,
        }
    }
}

impl From<crate::log::LogError> for ProjectionError {
    fn from(e: crate::log::LogError) -> Self {
        ProjectionError::Store(crate::Error::Log(e))
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), ProjectionError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProjectionError::Invalid {
            name: name.into(),
            reason: format!("names are 1 to {NAME_BYTES_MAX} bytes of [A-Za-z0-9_-]"),
        })
    }
}

impl EventRef<'_> {
    /// The payload parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(self.data)
    }
}
