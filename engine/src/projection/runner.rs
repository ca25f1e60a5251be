//! Applying events to views: batches, checkpoints, failures, rebuilds.

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

fn remove_db_files(path: &Path) -> Result<(), ProjectionError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProjectionError::Io {
                    path: p,
                    action: "removing a database file",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Tables, indexes, views and triggers in `schema` of `conn` other than
/// SQLite's and Strata's own, tables first.
fn user_objects(
    conn: &Connection,
    schema: &str,
) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT type, name, sql FROM {schema}.sqlite_master
         WHERE name NOT GLOB 'sqlite_*' AND name NOT GLOB 'strata_*' AND sql IS NOT NULL
         ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, rowid"
    ))?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How a handler call failed.
enum HandlerFailure {
    /// It returned an error naming the failing event.
    Failed(BatchFailure),
    /// It panicked: the panic does not say on which event.
    Panicked(String),
}

/// Calls the handler, turning a panic into an error.
fn call_handler(
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
fn apply_and_blame(
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
struct Frames {
    payloads: Vec<Vec<u8>>,
    last: u64,
}

impl Frames {
    /// Reads batches from `cursor` until about `events_max` events or
    /// `upto`. Records below the cursor's start are left in the payloads and
    /// skipped by the appliers by position.
    fn read(
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
            frames.payloads.push(view.batch.to_payload());
        }
        Ok(frames)
    }

    /// Events after `after` and at most `upto`, in order, borrowed.
    fn events(&self, after: u64, upto: u64) -> Result<Vec<EventRef<'_>>, ProjectionError> {
        let mut out = Vec::new();
        self.for_each(after, upto, |e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    /// Events after `after` and at most `upto`, in order.
    fn for_each<'a>(
        &'a self,
        after: u64,
        upto: u64,
        mut f: impl FnMut(EventRef<'a>) -> bool,
    ) -> Result<(), ProjectionError> {
        for payload in &self.payloads {
            let batch = BatchRef::parse(payload).map_err(|e| ProjectionError::Invalid {
                name: "log".into(),
                reason: e.to_string(),
            })?;
            if batch.last_position() <= after {
                continue;
            }
            for r in batch.iter() {
                let (_, rec) = r.map_err(|e| ProjectionError::Invalid {
                    name: "log".into(),
                    reason: e.to_string(),
                })?;
                if rec.position <= after || rec.position > upto {
                    continue;
                }
                if !f(EventRef::from(rec)) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
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

fn shadow_path(views: &Path, name: &str) -> PathBuf {
    PathBuf::from(format!("{}.{SHADOW_INFIX}{name}", views.display()))
}

/// Applies events `(from, upto]` of `frames` to one projection on `conn`,
/// inside the caller's transaction, under a savepoint: on a handler error
/// the projection's part of the batch is rolled back.
fn apply_frames(
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

impl Inner {
    /// Applies events up to `upto` to every runnable view, in batches.
    fn apply_upto(&self, state: &mut State, upto: u64) -> Result<(), ProjectionError> {
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

    /// Rebuilds slot `index` in a shadow database, then swaps it in.
    fn rebuild(
        &self,
        index: usize,
        progress: Option<&(dyn Fn(&RebuildProgress) + Sync)>,
    ) -> Result<(), ProjectionError> {
        let projection = {
            let mut state = lock(&self.state);
            let slot = &mut state.slots[index];
            let total = self.log.visible_position();
            slot.rebuilding = Some(RebuildProgress {
                projection: slot.name().into(),
                done: 0,
                total,
            });
            slot.projection.clone()
        };
        let result = self.rebuild_inner(index, &*projection, progress);
        let mut state = lock(&self.state);
        state.slots[index].rebuilding = None;
        match &result {
            Ok(()) => {}
            // Closing mid-rebuild is not the projection's failure.
            Err(ProjectionError::Closed) => {}
            Err(ProjectionError::Handler {
                position,
                event_id,
                message,
                ..
            }) => {
                state.slots[index].failed = Some(Failure {
                    at: Some((*position, *event_id)),
                    message: message.clone(),
                });
            }
            Err(ProjectionError::Invalid { reason, .. }) => {
                state.slots[index].failed = Some(Failure {
                    at: None,
                    message: reason.clone(),
                });
            }
            Err(e) => {
                state.slots[index].failed = Some(Failure {
                    at: None,
                    message: e.to_string(),
                });
            }
        }
        self.changed.notify_all();
        result
    }

    fn rebuild_inner(
        &self,
        index: usize,
        projection: &dyn Projection,
        progress: Option<&(dyn Fn(&RebuildProgress) + Sync)>,
    ) -> Result<(), ProjectionError> {
        let name = projection.name().to_owned();
        let shadow = shadow_path(&self.path, &name);
        remove_db_files(&shadow)?;
        let conn = open_connection(&shadow, &self.hlc, false)?;
        conn.execute_batch(projection.schema())
            .map_err(|source| ProjectionError::Invalid {
                name: name.clone(),
                reason: format!("its schema failed: {source}"),
            })?;
        let total = self.log.visible_position();
        let report = |done: u64, total: u64, state: Option<&mut State>| {
            let p = RebuildProgress {
                projection: name.clone(),
                done,
                total,
            };
            if let Some(cb) = progress {
                cb(&p);
            }
            if let Some(state) = state {
                state.slots[index].rebuilding = Some(p);
            }
        };
        report(0, total, None);
        // Replay the log up to the head as it was when the rebuild began,
        // without holding the views lock: readers and the other projections
        // carry on.
        let mut position = 0u64;
        let mut cursor = self.log.cursor(1);
        position = self.replay_into(
            &conn,
            &shadow,
            projection,
            &mut cursor,
            position,
            total,
            |done| {
                let mut state = lock(&self.state);
                report(done, total, Some(&mut state));
            },
        )?;
        // Swap under the lock, after replaying what arrived meanwhile.
        let mut state = lock(&self.state);
        let head = self.log.visible_position();
        position = self.replay_into(
            &conn,
            &shadow,
            projection,
            &mut cursor,
            position,
            head,
            |_| {},
        )?;
        drop(conn);
        let objects = self.swap_in(&mut state, index, projection, &shadow, position)?;
        let slot = &mut state.slots[index];
        slot.view = Some((projection.version(), position));
        slot.objects = objects;
        report(position, position, Some(&mut state));
        state.slots[index].rebuilding = None;
        drop(state);
        remove_db_files(&shadow)?;
        tracing::info!(projection = %name, position, "view rebuilt");
        Ok(())
    }

    /// Applies events after `position` up to `upto` to the shadow database,
    /// a batch per transaction. Returns the new position.
    #[allow(clippy::too_many_arguments)]
    fn replay_into(
        &self,
        conn: &Connection,
        shadow: &Path,
        projection: &dyn Projection,
        cursor: &mut crate::log::Cursor,
        mut position: u64,
        upto: u64,
        mut on_batch: impl FnMut(u64),
    ) -> Result<u64, ProjectionError> {
        while position < upto {
            if self.stop.load(Ordering::Acquire) {
                return Err(ProjectionError::Closed);
            }
            let frames = Frames::read(cursor, upto, self.options.batch_events_max)?;
            if frames.payloads.is_empty() {
                break;
            }
            let last = frames.last.min(upto);
            conn.execute_batch("BEGIN")
                .map_err(ProjectionError::sqlite(shadow, "starting a batch"))?;
            if let Some(f) = apply_frames(conn, shadow, projection, &frames, position, last)? {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(f.to_error(projection.name()));
            }
            conn.execute_batch("COMMIT")
                .map_err(ProjectionError::sqlite(shadow, "committing a batch"))?;
            position = last;
            on_batch(position);
        }
        Ok(position)
    }

    /// Replaces the projection's objects in `views.sqlite` with the shadow's,
    /// and its checkpoint, in one transaction.
    fn swap_in(
        &self,
        state: &mut State,
        index: usize,
        projection: &dyn Projection,
        shadow: &Path,
        position: u64,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        let path = &self.path;
        let conn = &state.conn;
        let sql_err = |what: &'static str| ProjectionError::sqlite(path, what);
        conn.execute("ATTACH DATABASE ?1 AS rebuild", [shadow.to_string_lossy()])
            .map_err(sql_err("attaching the shadow database"))?;
        let result = (|| -> Result<Vec<(String, String)>, ProjectionError> {
            let new_objects =
                user_objects(conn, "rebuild").map_err(sql_err("listing the shadow's tables"))?;
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(sql_err("starting the swap"))?;
            let swap = (|| -> rusqlite::Result<()> {
                for (kind, name) in state.slots[index].objects.iter().rev() {
                    conn.execute_batch(&format!(
                        "DROP {} IF EXISTS main.{}",
                        kind.to_uppercase(),
                        quote(name)
                    ))?;
                }
                for (kind, name, sql) in &new_objects {
                    if kind == "table" {
                        conn.execute_batch(sql)?;
                        conn.execute_batch(&format!(
                            "INSERT INTO main.{0} SELECT * FROM rebuild.{0}",
                            quote(name)
                        ))?;
                    }
                }
                for (kind, _, sql) in &new_objects {
                    if kind != "table" {
                        conn.execute_batch(sql)?;
                    }
                }
                let objects: Vec<(&str, &str)> = new_objects
                    .iter()
                    .map(|(k, n, _)| (k.as_str(), n.as_str()))
                    .collect();
                conn.execute(
                    "INSERT OR REPLACE INTO strata_projections (name, version, position, objects) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        projection.name(),
                        projection.version(),
                        position,
                        serde_json::to_string(&objects).expect("strings serialise")
                    ],
                )?;
                Ok(())
            })();
            match swap {
                Ok(()) => conn
                    .execute_batch("COMMIT")
                    .map_err(sql_err("committing the swap"))?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(ProjectionError::Invalid {
                        name: projection.name().into(),
                        reason: format!(
                            "swapping the rebuilt view in failed: {e}; do two projections create the same table?"
                        ),
                    });
                }
            }
            Ok(new_objects.into_iter().map(|(k, n, _)| (k, n)).collect())
        })();
        let _ = conn.execute_batch("DETACH DATABASE rebuild");
        result
    }

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

/// The follower thread: builds what needs building, then applies new
/// events as they become visible. Holds only a weak reference, so dropping
/// the last `Views` stops it.
fn follow(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.stop.load(Ordering::Acquire) {
            return;
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
            continue;
        }
        let head = strong.log.visible_position();
        let applied = {
            let mut state = lock(&strong.state);
            if let Err(e) = strong.apply_upto(&mut state, head) {
                tracing::error!(error = %e, "applying events to views failed");
            }
            state
                .slots
                .iter()
                .filter(|s| s.runnable())
                .map(|s| s.view.expect("runnable").1)
                .min()
                .unwrap_or(head)
        };
        let log = strong.log.clone();
        let stop = strong.stop.clone();
        drop(strong);
        // The stop flag is checked under the log's wait lock, so a close
        // that comes between the check at the top and this wait is not
        // missed (it would cost up to FOLLOW_WAKE).
        if applied >= head
            && log.wait_beyond_unless(head, FOLLOW_WAKE, &stop) > head
            && !log.is_closed()
            && !stop.load(Ordering::Acquire)
        {
            std::thread::sleep(FOLLOW_GATHER);
        }
        if log.is_closed() {
            return;
        }
    }
}
