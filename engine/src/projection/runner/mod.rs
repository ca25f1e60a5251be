//! Applying events to views: batches, checkpoints, failures, rebuilds.
//!
//! Here: [`Views`] (opening `views.sqlite`, reads, status, the shared
//! state). `apply.rs`: reading batches and running the handlers, the
//! follower thread. `rebuild.rs`: replay into a shadow database and the
//! swap.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{BatchFailure, Projection, ProjectionError, VIEWS_FILE, ViewOptions, validate_name};
use crate::event::EventRef;
use crate::hlc::Hlc;
use crate::log::Log;
use crate::log::format::BatchRef;
use crate::store::Store;

mod apply;
mod rebuild;

use self::{apply::*, rebuild::*};

/// How long the follower thread sleeps when the log does not move.
const FOLLOW_WAKE: Duration = Duration::from_millis(200);
/// How long the follower lets new events gather after waking, so that a
/// stream of small appends (a sync server's commits) is applied in fewer,
/// larger views transactions. Reads do not wait for it: they catch up
/// themselves.
const FOLLOW_GATHER: Duration = Duration::from_millis(5);
/// When the views were built from another generation of the log (a repair
/// rewrote its history since; [`crate::log::read_generation`]), every view
/// may hold events at positions that now hold others: each is forgotten
/// ([`forget_view`]) and the new generation recorded, in one transaction,
/// so that a crash cannot leave an old view trusted. Views made before
/// generations existed count as generation 0.
fn distrust_other_generations(
    conn: &mut Connection,
    path: &Path,
    generation: u64,
) -> Result<(), ProjectionError> {
    let recorded: Option<String> = conn
        .query_row(
            "SELECT value FROM strata_views_meta WHERE key = 'log_generation'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(ProjectionError::sqlite(path, "reading the metadata"))?;
    let recorded = recorded.map_or(Some(0), |v| v.parse::<u64>().ok());
    if recorded == Some(generation) {
        return Ok(());
    }
    tracing::warn!(path = %path.display(), ?recorded, generation, "the log was repaired since the views were built; rebuilding them");
    let tx = conn
        .transaction()
        .map_err(ProjectionError::sqlite(path, "starting a transaction"))?;
    let rows: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT name, objects FROM strata_projections")
            .map_err(ProjectionError::sqlite(path, "reading checkpoints"))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(ProjectionError::sqlite(path, "reading checkpoints"))?
    };
    for (name, objects) in rows {
        let objects: Vec<(String, String)> = serde_json::from_str(&objects).unwrap_or_default();
        forget_view(&tx, &name, &objects).map_err(ProjectionError::sqlite(
            path,
            "dropping a view the log no longer backs",
        ))?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO strata_views_meta (key, value) VALUES ('log_generation', ?1)",
        [generation.to_string()],
    )
    .map_err(ProjectionError::sqlite(path, "writing the metadata"))?;
    tx.commit()
        .map_err(ProjectionError::sqlite(path, "forgetting views"))
}

/// Drops a view's objects and its checkpoint: it is built again from the
/// first event, as a new projection is, and readers wait for that build
/// instead of reading what the log no longer backs.
fn forget_view(
    conn: &Connection,
    name: &str,
    objects: &[(String, String)],
) -> rusqlite::Result<()> {
    for (kind, object) in objects.iter().rev() {
        conn.execute_batch(&format!(
            "DROP {} IF EXISTS main.{}",
            kind.to_uppercase(),
            quote(object)
        ))?;
    }
    conn.execute("DELETE FROM strata_projections WHERE name = ?1", [name])?;
    Ok(())
}

/// Suffix of a shadow database being rebuilt, after `views.sqlite.`.
const SHADOW_INFIX: &str = "rebuild-";

const META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS strata_views_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS strata_projections (
    name            TEXT PRIMARY KEY,
    version         INTEGER NOT NULL,
    position        INTEGER NOT NULL,  -- last log position applied: the checkpoint
    objects         TEXT NOT NULL,     -- JSON [[type, name], ...] the projection created
    failed_position INTEGER,           -- set while the handler fails at this event
    failed_event_id TEXT,
    failed_message  TEXT
) WITHOUT ROWID;
";

/// A rebuild's progress: events replayed of the log's length when it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildProgress {
    pub projection: String,
    pub done: u64,
    pub total: u64,
}

/// What a projection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionState {
    /// Following the log.
    Ready,
    /// Being rebuilt in a shadow database; readers see the old view, if any.
    Rebuilding { done: u64, total: u64 },
    /// Waiting for its first build (no view yet).
    Pending,
    /// Stopped: at a failing event (the view holds everything before it),
    /// or, without a position, because the view could not be built at all
    /// (e.g. its schema SQL failed).
    Failed {
        position: Option<u64>,
        event_id: Option<Uuid>,
        message: String,
    },
}

/// A projection's status, for applications and `strata views status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub name: String,
    /// Version the code declares.
    pub version: u32,
    /// Version of the view in `views.sqlite` (differs while rebuilding).
    pub view_version: Option<u32>,
    /// The checkpoint: last log position applied to the view.
    pub position: u64,
    pub state: ProjectionState,
}

#[derive(Debug, Clone)]
struct Failure {
    /// The failing event, when an event failed.
    at: Option<(u64, Uuid)>,
    message: String,
}

impl Failure {
    fn to_error(&self, projection: &str) -> ProjectionError {
        match self.at {
            Some((position, event_id)) => ProjectionError::Handler {
                projection: projection.into(),
                position,
                event_id,
                message: self.message.clone(),
            },
            None => ProjectionError::Invalid {
                name: projection.into(),
                reason: self.message.clone(),
            },
        }
    }
}

struct Slot {
    projection: Arc<dyn Projection>,
    /// The view in `views.sqlite`: its version and checkpoint, if it exists.
    view: Option<(u32, u64)>,
    objects: Vec<(String, String)>,
    failed: Option<Failure>,
    rebuilding: Option<RebuildProgress>,
}

impl Slot {
    fn name(&self) -> &str {
        self.projection.name()
    }

    /// The view is current and healthy: events are applied to it directly.
    fn runnable(&self) -> bool {
        self.failed.is_none()
            && self
                .view
                .is_some_and(|(v, _)| v == self.projection.version())
    }

    fn needs_rebuild(&self) -> bool {
        self.failed.is_none() && self.rebuilding.is_none() && !self.runnable()
    }
}

struct State {
    conn: Connection,
    slots: Vec<Slot>,
    /// Where the last catch-up stopped, kept so the next one continues
    /// without seeking.
    cursor: Option<crate::log::Cursor>,
}

struct Inner {
    log: Log,
    hlc: Arc<Hlc>,
    path: PathBuf,
    options: ViewOptions,
    state: Mutex<State>,
    /// Signalled whenever a view is built, swapped or fails.
    changed: Condvar,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The projections of one store. Cheap to clone; `Send + Sync`.
///
/// ```
/// use std::sync::Arc;
/// use strata::projection::{Views, ViewOptions, counter::{self, CounterProjection}};
/// use strata::{ExpectedVersion, Options, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Options::default())?;
/// let views = Views::open(&store, vec![Arc::new(CounterProjection)], ViewOptions::default())?;
/// store.append("counter-1", ExpectedVersion::Any, vec![counter::increment(2)])?;
/// // Reads first apply everything appended so far: read-your-writes.
/// let value = views.read(|conn| counter::value(conn, "counter-1"))?;
/// assert_eq!(value, Some(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Views {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Handlers run under catch_unwind and every transaction is finished or
    // rolled back before the lock is released, so the state stays valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_connection(
    path: &Path,
    hlc: &Arc<Hlc>,
    durable: bool,
) -> Result<Connection, ProjectionError> {
    let conn = Connection::open(path).map_err(ProjectionError::sqlite(path, "opening"))?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(10))?;
        if durable {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        } else {
            // A shadow database is thrown away after a crash: its journal
            // stays in memory, never synced. (Not OFF: a savepoint must
            // still roll back, to undo a failing batch and name its event.)
            conn.pragma_update(None, "journal_mode", "MEMORY")?;
            conn.pragma_update(None, "synchronous", "OFF")?;
        }
        conn.pragma_update(None, "cache_size", -(64 << 10))?;
        super::register_hlc_functions(&conn, hlc.clone())
    };
    setup().map_err(ProjectionError::sqlite(path, "configuring"))?;
    Ok(conn)
}

impl Views {
    /// Opens (creating if needed) `views.sqlite` of `store` and starts the
    /// projections: those whose view is missing or of another version are
    /// rebuilt, the others catch up from their checkpoint.
    pub fn open(
        store: &Store,
        projections: Vec<Arc<dyn Projection>>,
        options: ViewOptions,
    ) -> Result<Views, ProjectionError> {
        if store.is_read_only() {
            return Err(ProjectionError::Store(crate::Error::ReadOnly));
        }
        assert!(
            options.batch_events_max > 0,
            "batch_events_max must be positive"
        );
        let mut names = std::collections::HashSet::new();
        for p in &projections {
            validate_name(p.name())?;
            if !names.insert(p.name().to_owned()) {
                return Err(ProjectionError::Invalid {
                    name: p.name().into(),
                    reason: "two projections have this name".into(),
                });
            }
        }
        let path = store.dir().join(VIEWS_FILE);
        let hlc = store.hlc_handle();
        let log = store.log().clone();
        let head = log.visible_position();
        let store_id = store.store_id().to_string();

        let mut conn = open_connection(&path, &hlc, true)?;
        conn.execute_batch(META_SCHEMA)
            .map_err(ProjectionError::sqlite(
                &path,
                "creating the metadata tables",
            ))?;
        let owner: Option<String> = conn
            .query_row(
                "SELECT value FROM strata_views_meta WHERE key = 'store_id'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(ProjectionError::sqlite(&path, "reading the metadata"))?;
        if owner.as_deref().is_some_and(|o| o != store_id) {
            tracing::warn!(path = %path.display(), "views belong to another store; rebuilding them");
            drop(conn);
            remove_db_files(&path)?;
            conn = open_connection(&path, &hlc, true)?;
            conn.execute_batch(META_SCHEMA)
                .map_err(ProjectionError::sqlite(
                    &path,
                    "creating the metadata tables",
                ))?;
        }
        conn.execute(
            "INSERT OR REPLACE INTO strata_views_meta (key, value) VALUES ('store_id', ?1)",
            [&store_id],
        )
        .map_err(ProjectionError::sqlite(&path, "writing the metadata"))?;
        distrust_other_generations(&mut conn, &path, store.log_generation())?;

        let mut slots = Vec::with_capacity(projections.len());
        for projection in projections {
            // A shadow left by a crash mid-rebuild is started over.
            remove_db_files(&shadow_path(&path, projection.name()))?;
            let row: Option<(u32, u64, String)> = conn
                .query_row(
                    "SELECT version, position, objects FROM strata_projections WHERE name = ?1",
                    [projection.name()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(ProjectionError::sqlite(&path, "reading checkpoints"))?;
            let (view, objects) = match row {
                Some((version, position, objects)) if position <= head => (
                    Some((version, position)),
                    serde_json::from_str(&objects).unwrap_or_default(),
                ),
                // A checkpoint beyond the log (it was cut without a new
                // generation: a log from before generations, or copied
                // back by hand) cannot be trusted: build it again.
                Some((_, _, objects)) => {
                    let objects: Vec<(String, String)> =
                        serde_json::from_str(&objects).unwrap_or_default();
                    forget_view(&conn, projection.name(), &objects).map_err(
                        ProjectionError::sqlite(&path, "dropping a view beyond the log"),
                    )?;
                    (None, Vec::new())
                }
                None => (None, Vec::new()),
            };
            // A failure recorded by an earlier run is retried: the handler
            // may have been fixed since.
            conn.execute(
                "UPDATE strata_projections SET failed_position = NULL, failed_event_id = NULL, failed_message = NULL WHERE name = ?1",
                [projection.name()],
            )
            .map_err(ProjectionError::sqlite(&path, "clearing a failure"))?;
            slots.push(Slot {
                projection,
                view,
                objects,
                failed: None,
                rebuilding: None,
            });
        }
        let views = Views {
            inner: Arc::new(Inner {
                log,
                hlc,
                path,
                options,
                state: Mutex::new(State {
                    conn,
                    slots,
                    cursor: None,
                }),
                changed: Condvar::new(),
                stop: Arc::new(AtomicBool::new(false)),
                thread: Mutex::new(None),
            }),
        };
        if views.inner.options.background {
            let inner = Arc::downgrade(&views.inner);
            let handle = std::thread::Builder::new()
                .name("strata-views".into())
                .spawn(move || follow(inner))
                .map_err(|source| ProjectionError::Io {
                    path: views.inner.path.clone(),
                    action: "starting the views thread",
                    source,
                })?;
            *views.inner.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        } else {
            views.rebuild_pending()?;
            views.catch_up()?;
        }
        Ok(views)
    }

    /// Path of `views.sqlite`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Applies every event up to the store's head, then runs `f` on the
    /// views database. Views still waiting for their first build are waited
    /// for; a view being rebuilt is read as it was (its old version).
    /// Queries only: do not write to the views from `f`.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ProjectionError> {
        let state = self.ready_state()?;
        f(&state.conn).map_err(ProjectionError::sqlite(&self.inner.path, "reading views"))
    }

    /// Like [`Views::read`], with `overlay` (events not in the log, e.g. a
    /// replica's pending events, positioned after the head) applied on top
    /// inside a savepoint that is rolled back after `f`: the views are never
    /// changed by it. A projection whose handler fails on the overlay is
    /// read without it.
    pub fn read_with_overlay<T>(
        &self,
        overlay: &[crate::event::Event],
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ProjectionError> {
        let state = self.ready_state()?;
        if overlay.is_empty() {
            return f(&state.conn)
                .map_err(ProjectionError::sqlite(&self.inner.path, "reading views"));
        }
        let conn = &state.conn;
        let path = &self.inner.path;
        conn.execute_batch("SAVEPOINT overlay")
            .map_err(ProjectionError::sqlite(path, "starting an overlay"))?;
        let events: Vec<EventRef<'_>> = overlay.iter().map(crate::event::Event::as_ref).collect();
        let result = (|| {
            for slot in state.slots.iter().filter(|s| s.runnable()) {
                conn.execute_batch("SAVEPOINT overlay_projection")
                    .map_err(ProjectionError::sqlite(path, "starting an overlay"))?;
                let end = match call_handler(&*slot.projection, conn, &events) {
                    Ok(()) => "RELEASE overlay_projection",
                    Err(e) => {
                        let error = match e {
                            HandlerFailure::Failed(f) => f.error.to_string(),
                            HandlerFailure::Panicked(m) => format!("handler panicked: {m}"),
                        };
                        tracing::warn!(projection = slot.name(), %error, "pending events do not apply; read without them");
                        "ROLLBACK TO overlay_projection; RELEASE overlay_projection"
                    }
                };
                conn.execute_batch(end)
                    .map_err(ProjectionError::sqlite(path, "ending an overlay"))?;
            }
            f(conn).map_err(ProjectionError::sqlite(path, "reading views"))
        })();
        conn.execute_batch("ROLLBACK TO overlay; RELEASE overlay")
            .map_err(ProjectionError::sqlite(path, "ending an overlay"))?;
        result
    }

    /// The views lock, once first builds are done and every event up to
    /// the head at the time of the call is applied.
    fn ready_state(&self) -> Result<MutexGuard<'_, State>, ProjectionError> {
        let head = self.inner.log.visible_position();
        // First builds: there is no old view to read.
        let mut state = self.wait_while(|state| {
            state
                .slots
                .iter()
                .any(|s| s.view.is_none() && s.failed.is_none())
        })?;
        self.inner.apply_upto(&mut state, head)?;
        Ok(state)
    }

    /// The views lock, once `busy` is false: rebuilds run here without a
    /// background thread, and are waited for with one.
    fn wait_while(
        &self,
        busy: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'_, State>, ProjectionError> {
        let mut state = lock(&self.inner.state);
        while busy(&state) {
            if !self.inner.options.background {
                drop(state);
                self.rebuild_pending()?;
                state = lock(&self.inner.state);
                continue;
            }
            state = self
                .inner
                .changed
                .wait_timeout(state, FOLLOW_WAKE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(state)
    }

    /// Applies every event up to the store's head to the views that are
    /// ready. A failing handler stops only its projection (see
    /// [`Views::status`] and [`Views::check`]).
    pub fn catch_up(&self) -> Result<(), ProjectionError> {
        let head = self.inner.log.visible_position();
        let mut state = lock(&self.inner.state);
        self.inner.apply_upto(&mut state, head)
    }

    /// Every projection's status.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let state = lock(&self.inner.state);
        state.slots.iter().map(status_of).collect()
    }

    /// The first failure among the projections, as an error.
    pub fn check(&self) -> Result<(), ProjectionError> {
        let state = lock(&self.inner.state);
        for s in &state.slots {
            if let Some(f) = &s.failed {
                return Err(f.to_error(s.name()));
            }
        }
        Ok(())
    }

    /// Rebuilds one projection now, in the caller's thread, reporting
    /// progress; readers keep the old view until the swap.
    pub fn rebuild(
        &self,
        name: &str,
        progress: Option<&(dyn Fn(&RebuildProgress) + Sync)>,
    ) -> Result<(), ProjectionError> {
        let index = {
            let mut state = lock(&self.inner.state);
            let Some(i) = state.slots.iter().position(|s| s.name() == name) else {
                return Err(ProjectionError::Unknown(name.into()));
            };
            let slot = &mut state.slots[i];
            if slot.rebuilding.is_some() {
                return Err(ProjectionError::Invalid {
                    name: name.into(),
                    reason: "a rebuild is already running".into(),
                });
            }
            slot.failed = None;
            i
        };
        self.inner.rebuild(index, progress)
    }

    /// Waits until no projection is rebuilding or pending; returns the first
    /// failure, if any.
    pub fn wait_ready(&self) -> Result<(), ProjectionError> {
        drop(self.wait_while(|state| {
            state
                .slots
                .iter()
                .any(|s| s.failed.is_none() && (s.rebuilding.is_some() || !s.runnable()))
        })?);
        self.check()
    }

    fn rebuild_pending(&self) -> Result<(), ProjectionError> {
        loop {
            let next = {
                let state = lock(&self.inner.state);
                state.slots.iter().position(Slot::needs_rebuild)
            };
            let Some(i) = next else { return Ok(()) };
            let progress = self.inner.options.progress.clone();
            self.inner.rebuild(
                i,
                progress
                    .as_deref()
                    .map(|p| p as &(dyn Fn(&RebuildProgress) + Sync)),
            )?;
        }
    }

    /// Stops the follower thread. Views close when the last clone drops.
    pub fn close(self) {
        self.inner.shutdown();
    }
}

fn status_of(s: &Slot) -> ProjectionStatus {
    let state = if let Some(f) = &s.failed {
        ProjectionState::Failed {
            position: f.at.map(|(p, _)| p),
            event_id: f.at.map(|(_, id)| id),
            message: f.message.clone(),
        }
    } else if let Some(p) = &s.rebuilding {
        ProjectionState::Rebuilding {
            done: p.done,
            total: p.total,
        }
    } else if s.runnable() {
        ProjectionState::Ready
    } else {
        ProjectionState::Pending
    };
    ProjectionStatus {
        name: s.name().into(),
        version: s.projection.version(),
        view_version: s.view.map(|(v, _)| v).filter(|v| *v != u32::MAX),
        position: s.view.map_or(0, |(_, p)| p),
        state,
    }
}

impl Inner {
    fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.log.wake_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}
