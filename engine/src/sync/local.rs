//! [`Replica`]: a local-first store that syncs with a server. One file a
//! little over 800 lines: the committed store, the outbox, the views with
//! pending events on top and the rejections change together, in one
//! transaction discipline that reads best in one place.
//!
//! Its committed log is a [`Store`] holding exactly the server's events at
//! the server's positions (Y1). Local appends go to a durable outbox in
//! `outbox.sqlite` (synchronous=FULL) and are visible at once in
//! [`Replica::read_aggregate`] and in views (Y2): [`Replica::read_views`]
//! applies pending events on top of the committed views inside a savepoint
//! it rolls back, so after a rebase the views are simply derived again
//! (Y3). Events the server refuses for good, or that the rebase hook drops,
//! become rejection records the application can read; they never vanish.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::proto::Proposal;
use super::replica::ReplicaStorage;
use crate::error::Error;
use crate::event::{Event, EventRef, ExpectedVersion, NewEvent};
use crate::hlc::Timestamp;
use crate::log::RawRun;
use crate::projection::{Projection, ProjectionError, ViewOptions, Views};
use crate::store::{Options, Store};

/// File of the outbox inside a replica's directory.
pub const OUTBOX_FILE: &str = "outbox.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    aggregate_id TEXT    NOT NULL,
    version      INTEGER NOT NULL,  -- provisional: after the committed and earlier pending ones
    event_type   TEXT    NOT NULL,
    data         BLOB    NOT NULL,
    metadata     BLOB,
    timestamp    TEXT    NOT NULL,
    created_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    event_id     TEXT    PRIMARY KEY,
    aggregate_id TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    data         BLOB    NOT NULL,
    metadata     BLOB,
    reason       TEXT    NOT NULL,
    rejected_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replica_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// A local event not yet accepted by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub event_id: Uuid,
    pub aggregate_id: String,
    /// Provisional version; renumbered when the committed log moves.
    pub version: u64,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub timestamp: Timestamp,
    /// When it was appended locally (ms since the Unix epoch).
    pub created_ms: u64,
}

/// The pending events of the replica in `dir`, in push order, read from
/// its outbox without opening the replica: no lock, no writes, so it works
/// beside the process that holds the replica (inspection tools use it).
pub fn read_pending(dir: &Path) -> Result<Vec<PendingEvent>, Error> {
    let path = dir.join(OUTBOX_FILE);
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql_err(&path, "opening the outbox read-only"))?;
    load_outbox(&conn, &path)
}

impl PendingEvent {
    /// This event as the projections see it, at a provisional `position`.
    pub fn as_event_ref(&self, position: u64) -> EventRef<'_> {
        EventRef {
            position,
            event_id: self.event_id,
            aggregate_id: &self.aggregate_id,
            version: self.version,
            event_type: &self.event_type,
            data: &self.data,
            hlc_physical_ms: self.timestamp.physical_ms(),
            hlc_counter: self.timestamp.counter(),
            hlc_node: self.timestamp.node().as_str(),
            metadata: self.metadata.as_deref(),
        }
    }

    /// This event as a push proposes it.
    pub fn proposal(&self) -> Proposal {
        Proposal {
            event_id: self.event_id,
            aggregate_id: self.aggregate_id.clone(),
            version: self.version,
            event_type: self.event_type.clone(),
            data: self.data.clone(),
            timestamp: self.timestamp.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// An event the server refused for good, or the rebase hook dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub event_id: Uuid,
    pub aggregate_id: String,
    pub event_type: String,
    pub data: Vec<u8>,
    pub reason: String,
    pub rejected_ms: u64,
}

/// What the rebase hook decides for a pending event whose aggregate moved
/// on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebaseDecision {
    /// Push it as it is, after the new committed events.
    Keep,
    /// Push this instead (same event id).
    Replace {
        event_type: String,
        data: Vec<u8>,
        metadata: Option<Vec<u8>>,
    },
    /// Do not push it; it becomes a rejection with this reason.
    Drop { reason: String },
}

/// Decides what becomes of pending events when the events they were based on
/// changed. The default keeps everything (right for commutative events such
/// as counter increments).
pub trait RebaseHook: Send + Sync {
    /// `committed` is the replica's committed log, already holding the
    /// events that caused the rebase; `version` is the version the event
    /// will get if kept.
    fn rebase(&self, event: &PendingEvent, committed: &Store, version: u64) -> RebaseDecision;
}

/// Keeps every pending event.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAll;

impl RebaseHook for KeepAll {
    fn rebase(&self, _: &PendingEvent, _: &Store, _: u64) -> RebaseDecision {
        RebaseDecision::Keep
    }
}

/// How to open a replica.
#[derive(Clone)]
pub struct ReplicaOptions {
    pub store: Options,
    pub hook: Arc<dyn RebaseHook>,
    pub projections: Vec<Arc<dyn Projection>>,
    pub views: ViewOptions,
}

impl std::fmt::Debug for ReplicaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaOptions")
            .field("store", &self.store)
            .field("projections", &self.projections.len())
            .finish()
    }
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            store: Options::default(),
            hook: Arc::new(KeepAll),
            projections: Vec::new(),
            views: ViewOptions::default(),
        }
    }
}

/// Where a local append landed, for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPlaced {
    pub event_id: Uuid,
    /// Provisional version.
    pub version: u64,
}

/// An event as a replica reads it: committed, or still pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEvent {
    pub event: Event,
    /// Not yet accepted by the server: `event.position` is provisional
    /// (after the committed head) and the version may still change.
    pub pending: bool,
}

struct Outbox {
    conn: Connection,
    /// The outbox in push order, mirrored in memory.
    events: Vec<PendingEvent>,
}

type ChangeHook = Box<dyn Fn() + Send + Sync>;

/// A local-first replica. See the module documentation.
///
/// Local appends are durable and visible at once, before any sync; views
/// show them on top of the committed state. A sync shell (over QUIC:
/// `strata_server::client`) pushes them and brings the server's events.
///
/// ```
/// use std::sync::Arc;
/// use strata::projection::counter::{self, CounterProjection};
/// use strata::sync::{Replica, ReplicaOptions};
/// use strata::ExpectedVersion;
///
/// let dir = tempfile::tempdir()?;
/// let replica = Replica::open(
///     dir.path(),
///     ReplicaOptions {
///         projections: vec![Arc::new(CounterProjection)],
///         ..ReplicaOptions::default()
///     },
/// )?;
/// // Offline: the event waits in the outbox, and the view counts it.
/// replica.append("counter-1", ExpectedVersion::Any, vec![counter::increment(2)])?;
/// assert_eq!(replica.pending().len(), 1);
/// assert_eq!(replica.committed().head(), 0);
/// let value = replica.read_views(|conn| counter::value(conn, "counter-1"))?;
/// assert_eq!(value, Some(2));
/// replica.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Replica {
    store: Store,
    dir: PathBuf,
    outbox: Mutex<Outbox>,
    hook: Arc<dyn RebaseHook>,
    views: Option<Views>,
    on_change: Mutex<Vec<ChangeHook>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("dir", &self.dir).finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An SQLite error of the outbox: primary data, never "derived".
fn sql_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |source| Error::Outbox {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn views_err(e: ProjectionError) -> Error {
    match e {
        ProjectionError::Store(e) => e,
        other => Error::Views(Box::new(other)),
    }
}

impl Replica {
    /// Opens (or creates) a replica in `dir`.
    pub fn open(dir: impl AsRef<Path>, options: ReplicaOptions) -> Result<Replica, Error> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(OUTBOX_FILE);
        let was_replica = path.exists();
        let store = Store::open(&dir, options.store.clone())?;
        if !was_replica && store.head() > 0 {
            // Its log is not a prefix of any server's: following one would
            // mix the two histories.
            let events = store.head();
            store.close()?;
            return Err(Error::NotAReplica { path: dir, events });
        }
        if let Err(e) = store.mark_replica_log() {
            store.close()?;
            return Err(e);
        }
        let conn = Connection::open(&path).map_err(sql_err(&path, "opening the outbox"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(sql_err(&path, "setting up the outbox"))?;
        let mut outbox = Outbox {
            conn,
            events: Vec::new(),
        };
        outbox.events = load_outbox(&outbox.conn, &path)?;
        // A crash after the committed log took events but before the outbox
        // let them go: let them go now.
        let committed: Vec<Uuid> = outbox
            .events
            .iter()
            .map(|e| e.event_id)
            .filter(|id| store.get(*id).ok().flatten().is_some())
            .collect();
        retire(&mut outbox, &path, &committed)?;
        let views = if options.projections.is_empty() {
            None
        } else {
            Some(
                Views::open(&store, options.projections.clone(), options.views.clone())
                    .map_err(views_err)?,
            )
        };
        Ok(Replica {
            store,
            dir,
            outbox: Mutex::new(outbox),
            hook: options.hook,
            views,
            on_change: Mutex::new(Vec::new()),
        })
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outbox_path(&self) -> PathBuf {
        self.dir.join(OUTBOX_FILE)
    }

    /// The committed log (the server's events). Read from it freely; append
    /// only through [`Replica::append`], or the log stops being a prefix of
    /// the server's.
    pub fn committed(&self) -> &Store {
        &self.store
    }

    /// Calls `f` after every local append (sync shells use it to push).
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        self.on_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    fn changed(&self) {
        for f in self
            .on_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f();
        }
    }

    /// The aggregate's version counting pending events.
    fn local_version(&self, outbox: &Outbox, aggregate_id: &str) -> Result<u64, Error> {
        match outbox
            .events
            .iter()
            .rev()
            .find(|e| e.aggregate_id == aggregate_id)
        {
            Some(e) => Ok(e.version),
            None => self.store.aggregate_version(aggregate_id),
        }
    }

    /// Appends events locally: durable in the outbox when this returns,
    /// visible at once in reads and views, pushed when connected.
    /// `expected` is checked against the aggregate's version counting
    /// pending events.
    pub fn append(
        &self,
        aggregate_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<LocalPlaced>, Error> {
        let limits = &self.store.options().limits;
        limits.check_aggregate_id(aggregate_id)?;
        for e in &events {
            limits.check_event(e)?;
        }
        let path = self.outbox_path();
        let mut outbox = self.outbox();
        let current = self.local_version(&outbox, aggregate_id)?;
        if !expected.admits(current) {
            return Err(Error::Conflict {
                aggregate_id: aggregate_id.into(),
                expected,
                current,
            });
        }
        let created_ms = now_ms();
        let mut placed = Vec::with_capacity(events.len());
        let mut new = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let timestamp = match e.timestamp {
                Some(ts) => {
                    self.store
                        .hlc()
                        .observe(&ts)
                        .map_err(crate::event::InvalidInput::from)?;
                    ts
                }
                None => self
                    .store
                    .hlc()
                    .now()
                    .map_err(crate::event::InvalidInput::from)?,
            };
            let p = PendingEvent {
                event_id: e.event_id,
                aggregate_id: aggregate_id.into(),
                version: current + 1 + i as u64,
                event_type: e.event_type,
                data: e.data,
                metadata: e.metadata,
                timestamp,
                created_ms,
            };
            placed.push(LocalPlaced {
                event_id: p.event_id,
                version: p.version,
            });
            new.push(p);
        }
        let tx = outbox
            .conn
            .unchecked_transaction()
            .map_err(sql_err(&path, "appending to the outbox"))?;
        for p in &new {
            tx.execute(
                "INSERT INTO outbox (event_id, aggregate_id, version, event_type, data, metadata, timestamp, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    p.event_id.to_string(),
                    p.aggregate_id,
                    p.version,
                    p.event_type,
                    p.data,
                    p.metadata,
                    p.timestamp.to_text(),
                    p.created_ms
                ],
            )
            .map_err(sql_err(&path, "appending to the outbox"))?;
        }
        tx.commit()
            .map_err(sql_err(&path, "appending to the outbox"))?;
        outbox.events.extend(new);
        drop(outbox);
        self.changed();
        Ok(placed)
    }

    /// Pending events, in push order.
    pub fn pending(&self) -> Vec<PendingEvent> {
        self.outbox().events.clone()
    }

    /// Records the outcome of a sync (the server's head as last heard, and
    /// when), so that a later process can report it: the sync shells call
    /// this when a sync run ends. Not needed for correctness.
    pub fn record_last_sync(&self, server_head: u64, at_ms: u64) -> Result<(), Error> {
        let path = self.outbox_path();
        let outbox = self.outbox();
        // One statement: one synced transaction, and both or neither.
        outbox
            .conn
            .execute(
                "INSERT OR REPLACE INTO replica_meta (key, value)
                 VALUES ('last_sync_ms', ?1), ('last_server_head', ?2)",
                [at_ms.to_string(), server_head.to_string()],
            )
            .map_err(sql_err(&path, "recording the last sync"))?;
        Ok(())
    }

    /// The last sync [`Replica::record_last_sync`] recorded: the server's
    /// head then, and when (ms since the Unix epoch).
    pub fn last_sync(&self) -> Result<Option<(u64, u64)>, Error> {
        let path = self.outbox_path();
        let outbox = self.outbox();
        let get = |key: &str| -> Result<Option<u64>, Error> {
            outbox
                .conn
                .query_row(
                    "SELECT value FROM replica_meta WHERE key = ?1",
                    [key],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map_err(sql_err(&path, "reading the last sync"))
                .map(|v| v.and_then(|v| v.parse().ok()))
        };
        Ok(match (get("last_server_head")?, get("last_sync_ms")?) {
            (Some(head), Some(at)) => Some((head, at)),
            _ => None,
        })
    }

    /// Events refused for good, newest last.
    pub fn rejections(&self) -> Result<Vec<Rejection>, Error> {
        let path = self.outbox_path();
        let outbox = self.outbox();
        let mut stmt = outbox
            .conn
            .prepare("SELECT event_id, aggregate_id, event_type, data, reason, rejected_ms FROM rejections ORDER BY rejected_ms, event_id")
            .map_err(sql_err(&path, "reading rejections"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Rejection {
                    event_id: r.get::<_, String>(0)?.parse().unwrap_or_default(),
                    aggregate_id: r.get(1)?,
                    event_type: r.get(2)?,
                    data: r.get(3)?,
                    reason: r.get(4)?,
                    rejected_ms: r.get(5)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql_err(&path, "reading rejections"))?;
        Ok(rows)
    }

    /// Pending events as events, positioned after the committed head.
    fn pending_as_events(&self) -> Vec<Event> {
        let head = self.store.head();
        self.outbox()
            .events
            .iter()
            .enumerate()
            .map(|(i, p)| Event {
                position: head + 1 + i as u64,
                event_id: p.event_id,
                aggregate_id: p.aggregate_id.clone(),
                version: p.version,
                event_type: p.event_type.clone(),
                data: p.data.clone(),
                timestamp: p.timestamp.clone(),
                metadata: p.metadata.clone(),
            })
            .collect()
    }

    /// An aggregate's events: committed, then pending.
    pub fn read_aggregate(&self, aggregate_id: &str) -> Result<Vec<LocalEvent>, Error> {
        let mut out: Vec<LocalEvent> = self
            .store
            .read_aggregate(aggregate_id, 1, usize::MAX)?
            .into_iter()
            .map(|event| LocalEvent {
                event,
                pending: false,
            })
            .collect();
        out.extend(
            self.pending_as_events()
                .into_iter()
                .filter(|e| e.aggregate_id == aggregate_id)
                .map(|event| LocalEvent {
                    event,
                    pending: true,
                }),
        );
        Ok(out)
    }

    /// Runs `f` on the views: committed state with the pending events
    /// applied on top (and rolled back afterwards).
    pub fn read_views<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let views = self.views.as_ref().ok_or_else(|| {
            Error::Invalid(crate::event::InvalidInput::Setting {
                name: "projections",
                reason: "this replica was opened without projections, so it has no views to read"
                    .into(),
            })
        })?;
        let pending = self.pending_as_events();
        views.read_with_overlay(&pending, f).map_err(views_err)
    }

    /// The views (committed state only), if the replica has projections.
    pub fn views(&self) -> Option<&Views> {
        self.views.as_ref()
    }

    /// Storage for a [`super::replica::ReplicaCore`].
    pub fn storage(&self) -> ReplicaRef<'_> {
        ReplicaRef(self)
    }

    /// Closes the views and the store.
    pub fn close(self) -> Result<(), Error> {
        if let Some(v) = self.views {
            v.close();
        }
        self.store.close()
    }
}

fn load_outbox(conn: &Connection, path: &Path) -> Result<Vec<PendingEvent>, Error> {
    let mut stmt = conn
        .prepare("SELECT event_id, aggregate_id, version, event_type, data, metadata, timestamp, created_ms FROM outbox ORDER BY seq")
        .map_err(sql_err(path, "reading the outbox"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, u64>(7)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sql_err(path, "reading the outbox"))?;
    rows.into_iter()
        .map(|(id, agg, version, ty, data, metadata, ts, created_ms)| {
            let bad = |what: &str| Error::OutboxDamaged {
                path: path.to_path_buf(),
                reason: format!("outbox row {id} has a bad {what}"),
            };
            Ok(PendingEvent {
                event_id: id.parse().map_err(|_| bad("event id"))?,
                aggregate_id: agg,
                version,
                event_type: ty,
                data,
                metadata,
                timestamp: Timestamp::parse(&ts).map_err(|_| bad("timestamp"))?,
                created_ms,
            })
        })
        .collect()
}

fn bad_records(e: crate::log::FormatError) -> Error {
    Error::Replica {
        reason: format!("the server sent malformed records: {e}"),
    }
}

/// Decodes a run of records into events.
fn records_to_events(run: &RawRun) -> Result<Vec<Event>, Error> {
    let checked = run.check().map_err(bad_records)?;
    checked
        .records()
        .iter()
        .map(|(_, r)| {
            r.to_event().map_err(|e| Error::Replica {
                reason: format!("the server sent a record with a bad timestamp: {e}"),
            })
        })
        .collect()
}

/// Moves a pending event from the outbox to the rejections table, inside
/// the caller's transaction.
fn record_rejection(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    e: &PendingEvent,
    reason: &str,
    now_ms: u64,
) -> Result<(), Error> {
    tx.execute(
        "INSERT OR REPLACE INTO rejections (event_id, aggregate_id, event_type, data, metadata, reason, rejected_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![e.event_id.to_string(), e.aggregate_id, e.event_type, e.data, e.metadata, reason, now_ms],
    )
    .map_err(sql_err(path, "recording rejections"))?;
    tx.execute(
        "DELETE FROM outbox WHERE event_id = ?1",
        [e.event_id.to_string()],
    )
    .map_err(sql_err(path, "recording rejections"))?;
    Ok(())
}

/// Takes committed events out of the outbox.
fn retire(outbox: &mut Outbox, path: &Path, ids: &[Uuid]) -> Result<(), Error> {
    if ids.is_empty() || outbox.events.is_empty() {
        return Ok(());
    }
    let set: std::collections::HashSet<&Uuid> = ids.iter().collect();
    if !outbox.events.iter().any(|e| set.contains(&e.event_id)) {
        return Ok(());
    }
    let tx = outbox
        .conn
        .unchecked_transaction()
        .map_err(sql_err(path, "retiring outbox events"))?;
    for e in outbox.events.iter().filter(|e| set.contains(&e.event_id)) {
        tx.execute(
            "DELETE FROM outbox WHERE event_id = ?1",
            [e.event_id.to_string()],
        )
        .map_err(sql_err(path, "retiring outbox events"))?;
    }
    tx.commit()
        .map_err(sql_err(path, "retiring outbox events"))?;
    outbox.events.retain(|e| !set.contains(&e.event_id));
    Ok(())
}

/// [`ReplicaStorage`] over a [`Replica`].
#[derive(Debug)]
pub struct ReplicaRef<'a>(pub &'a Replica);

impl ReplicaStorage for ReplicaRef<'_> {
    fn remote_store_id(&self) -> Option<Uuid> {
        let outbox = self.0.outbox();
        outbox
            .conn
            .query_row(
                "SELECT value FROM replica_meta WHERE key = 'remote_store_id'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
    }

    fn set_remote_store_id(&mut self, id: Uuid) -> Result<(), Error> {
        let path = self.0.outbox_path();
        self.0
            .outbox()
            .conn
            .execute(
                "INSERT OR REPLACE INTO replica_meta (key, value) VALUES ('remote_store_id', ?1)",
                [id.to_string()],
            )
            .map_err(sql_err(&path, "recording the server's store id"))?;
        Ok(())
    }

    fn committed_head(&self) -> u64 {
        self.0.store.head()
    }

    fn apply_events(&mut self, events: &[Event]) -> Result<(), Error> {
        // Anything already held (a resend after reconnecting) is skipped.
        let head = self.0.store.head();
        let fresh: Vec<Event> = events
            .iter()
            .filter(|e| e.position > head)
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.0.store.append_replicated(&fresh)?;
        let ids: Vec<Uuid> = fresh.iter().map(|e| e.event_id).collect();
        retire(&mut self.0.outbox(), &self.0.outbox_path(), &ids)
    }

    fn apply_records(&mut self, run: &RawRun) -> Result<(), Error> {
        let head = self.0.store.head();
        if run.last_position() <= head {
            return Ok(());
        }
        if run.first_position <= head {
            // Part of this run is held already: fall back to the events.
            let events = records_to_events(run)?;
            return self.apply_events(&events);
        }
        // Checked once, in the store; the ids come back for retiring.
        let ids = self.0.store.append_raw_records(run)?;
        if self.0.outbox().events.is_empty() {
            // Nothing to retire (a fresh replica catching up).
            return Ok(());
        }
        retire(&mut self.0.outbox(), &self.0.outbox_path(), &ids)
    }

    fn prepare_push(
        &mut self,
        max: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<Vec<Proposal>, Error> {
        let replica = self.0;
        let path = replica.outbox_path();
        let mut outbox = replica.outbox();
        let store = &replica.store;
        let rebased = super::rebase::rebase(
            &mut outbox.events,
            |agg| store.aggregate_version(agg),
            |e, version| replica.hook.rebase(e, store, version),
            || {
                Ok(store
                    .hlc()
                    .now()
                    .map_err(crate::event::InvalidInput::from)?)
            },
        )?;
        if !rebased.changed.is_empty() || !rebased.dropped.is_empty() {
            let changed: std::collections::HashSet<Uuid> =
                rebased.changed.iter().copied().collect();
            let tx = outbox
                .conn
                .unchecked_transaction()
                .map_err(sql_err(&path, "rebasing the outbox"))?;
            for e in outbox
                .events
                .iter()
                .filter(|e| changed.contains(&e.event_id))
            {
                tx.execute(
                    "UPDATE outbox SET version = ?2, timestamp = ?3, event_type = ?4, data = ?5, metadata = ?6 WHERE event_id = ?1",
                    params![e.event_id.to_string(), e.version, e.timestamp.to_text(), e.event_type, e.data, e.metadata],
                )
                .map_err(sql_err(&path, "rebasing the outbox"))?;
            }
            // Dropped events become rejections in the same transaction.
            for (e, reason) in &rebased.dropped {
                record_rejection(&tx, &path, e, reason, now_ms)?;
            }
            tx.commit().map_err(sql_err(&path, "rebasing the outbox"))?;
        }
        Ok(super::rebase::next_push(&outbox.events, max, max_bytes))
    }

    fn reject(&mut self, rejections: &[(Uuid, String)], now_ms: u64) -> Result<(), Error> {
        let path = self.0.outbox_path();
        let mut outbox = self.0.outbox();
        let reasons: HashMap<Uuid, &str> =
            rejections.iter().map(|(id, r)| (*id, r.as_str())).collect();
        let tx = outbox
            .conn
            .unchecked_transaction()
            .map_err(sql_err(&path, "recording rejections"))?;
        for e in outbox
            .events
            .iter()
            .filter(|e| reasons.contains_key(&e.event_id))
        {
            record_rejection(&tx, &path, e, reasons[&e.event_id], now_ms)?;
        }
        tx.commit()
            .map_err(sql_err(&path, "recording rejections"))?;
        outbox.events.retain(|e| !reasons.contains_key(&e.event_id));
        Ok(())
    }

    fn pending(&self) -> (usize, Option<u64>) {
        let outbox = self.0.outbox();
        (
            outbox.events.len(),
            outbox.events.iter().map(|e| e.created_ms).min(),
        )
    }
}
