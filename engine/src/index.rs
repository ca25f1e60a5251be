//! The SQLite index (`index.sqlite`), invariant S5: derived from the log,
//! caught up from a checkpoint on open, rebuilt when deleted.
//!
//! Two tables and a view (docs/FORMAT.md §10):
//!
//! * `event_rows`: one row per event, its rowid the log position, so the
//!   indexer appends at the right edge of one B-tree; ids as 16-byte blobs
//!   and the clock as integers keep rows narrow. A unique index on
//!   `event_id` answers lookups by id.
//! * `aggregate_runs`: one row per run of an aggregate's consecutive
//!   versions written back to back in one batch frame, keyed by
//!   `(aggregate_id, first_version)`. A batch of a hundred events of one
//!   aggregate is one row here, not a hundred index entries; reading an
//!   aggregate is a range scan of its runs and a walk of the log from each
//!   run's first record.
//! * `events`: a view with every column of the seed's `events` table.
//!
//! Writes come from one thread (the store's indexer) in batches; each
//! batch and the checkpoint (`indexed_position`) commit in one transaction.
//! A second thread copies the WAL back into the database file (SQLite's
//! checkpoint), so the writer never stops for that copy and its fsyncs:
//! see [`Checkpointer`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use uuid::Uuid;

use crate::event::EventRef;

/// File name of the index inside a store.
pub const INDEX_FILE: &str = "index.sqlite";
/// Schema version stored in the index. A different version means the index
/// is rebuilt from the log.
///
/// History: 1 — first release (one `WITHOUT ROWID` table clustered by
/// `(aggregate_id, version)` with unique indexes on position and on the
/// id as text). 2 — `event_rows` by position, `aggregate_runs`, and the
/// `events` view (issue 16: a third of the bytes and of the B-tree inserts
/// per event).
pub const INDEX_SCHEMA_VERSION: i64 = 2;
/// Idle read connections kept open.
const READ_POOL_IDLE_MAX: usize = 8;
/// How much of the index file SQLite may memory-map.
const MMAP_BYTES: i64 = 1 << 30;
/// Page cache of each connection, in KiB (SQLite's negative `cache_size`).
const CACHE_KIB: i64 = 64 << 10;
/// WAL bytes after a commit at which the writer asks its checkpointer to
/// copy the WAL into the database file (10,000 pages of 4 KiB). SQLite's
/// own default (1,000 pages, copied by the committing writer) spent more
/// than a quarter of the indexer's time in checkpoints (docs/BENCHMARKS.md,
/// issue 16).
pub const INDEX_CHECKPOINT_WAL_BYTES: i64 = 10_000 * 4096;
/// How many times [`INDEX_CHECKPOINT_WAL_BYTES`] the WAL may hold before
/// the writer checkpoints by itself after a commit (unless the checkpointer
/// is copying at that moment): the checkpointer has fallen this far behind
/// or keeps failing. As with SQLite's own checkpoint, a reader that holds
/// an old snapshot for long still keeps the WAL from starting over.
pub const INDEX_CHECKPOINT_INLINE_FACTOR: i32 = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS strata_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_rows (
    position        INTEGER PRIMARY KEY, -- log position, 1-based, gapless (the rowid)
    event_id        BLOB    NOT NULL,    -- UUID, 16 bytes
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    hlc_physical_ms INTEGER NOT NULL,
    hlc_counter     INTEGER NOT NULL,
    hlc_node        TEXT    NOT NULL,
    log_segment     INTEGER NOT NULL,    -- first position of the segment file holding the record
    log_offset      INTEGER NOT NULL     -- byte offset of the record in that file
);
CREATE UNIQUE INDEX IF NOT EXISTS ux_event_rows_event_id ON event_rows (event_id);
CREATE TABLE IF NOT EXISTS aggregate_runs (
    aggregate_id   TEXT    NOT NULL,
    first_version  INTEGER NOT NULL,
    last_version   INTEGER NOT NULL,
    first_position INTEGER NOT NULL,     -- version v is at first_position + (v - first_version)
    log_segment    INTEGER NOT NULL,     -- where the first record is; the others follow it
    log_offset     INTEGER NOT NULL,     -- back to back, in the same batch frame
    PRIMARY KEY (aggregate_id, first_version)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS events AS
SELECT lower(substr(hex(e.event_id), 1, 8) || '-' || substr(hex(e.event_id), 9, 4) || '-'
             || substr(hex(e.event_id), 13, 4) || '-' || substr(hex(e.event_id), 17, 4) || '-'
             || substr(hex(e.event_id), 21, 12)) AS event_id,
       r.aggregate_id AS aggregate_id,
       e.version AS version,
       e.event_type AS event_type,
       NULL AS event_data,
       printf('%015d:%010d:%s', e.hlc_physical_ms, e.hlc_counter, e.hlc_node) AS timestamp,
       NULL AS metadata,
       e.position AS position,
       e.log_segment AS log_segment,
       e.log_offset AS log_offset
FROM aggregate_runs AS r
JOIN event_rows AS e
  ON e.position BETWEEN r.first_position AND r.first_position + (r.last_version - r.first_version);
";

// The view's `printf` widths are the clock's text form (section 12 of
// FORMAT.md): a change there must change the view.
const _: () = assert!(crate::hlc::PHYSICAL_DIGITS == 15 && crate::hlc::COUNTER_DIGITS == 10);

/// Errors of the index. The index is derived data: deleting it (or
/// `strata reindex`) always repairs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error(
        "{path}: SQLite error while {action}: {source}; the index is derived from the log, so `strata reindex` rebuilds it"
    )]
    Sqlite {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: I/O error while {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the indexer stopped: {reason}; reopen the store, or run `strata reindex`")]
    Stopped { reason: String },
}

/// Where an indexed event lives in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pointer {
    pub position: u64,
    pub version: u64,
    pub segment: u64,
    pub offset: u64,
}

impl Pointer {
    /// This one event, as a span.
    pub fn span(&self) -> Span {
        Span {
            first_position: self.position,
            first_version: self.version,
            segment: self.segment,
            offset: self.offset,
            from_version: self.version,
            to_version: self.version,
        }
    }
}

/// Part of one run of an aggregate's events: the run starts at
/// `first_position` / `first_version` with its record at (`segment`,
/// `offset`), the run's records follow each other back to back in one
/// batch frame, and versions `from_version..=to_version` of it are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first_position: u64,
    pub first_version: u64,
    pub segment: u64,
    pub offset: u64,
    pub from_version: u64,
    pub to_version: u64,
}

impl Span {
    /// Records of the run before the first wanted one.
    pub fn skip(&self) -> u64 {
        self.from_version - self.first_version
    }

    /// Number of events wanted.
    pub fn count(&self) -> u64 {
        self.to_version - self.from_version + 1
    }

    /// Starts the span at its first wanted record, which is at
    /// `(segment, offset)`, instead of at its run's first.
    pub fn start_at(&mut self, (segment, offset): (u64, u64)) {
        self.first_position += self.skip();
        self.first_version = self.from_version;
        self.segment = segment;
        self.offset = offset;
    }

    /// This span as [`crate::log::Log::read_runs`] takes it: `(segment,
    /// offset, first_position, skip, take)`.
    pub fn as_run(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.segment,
            self.offset,
            self.first_position,
            self.skip(),
            self.count(),
        )
    }
}

/// What [`Reader::check_runs`] found: a sound index has no mismatched,
/// overlapping or inverted runs, and `events` = `rows` = its row count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCheck {
    pub mismatched: u64,
    pub overlapping: u64,
    pub inverted: u64,
    pub events: u64,
    pub rows: u64,
}

/// One row as the index stores it, for `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRow {
    pub position: u64,
    pub event_id: String,
    pub aggregate_id: String,
    pub version: u64,
    pub event_type: String,
    pub timestamp: String,
    pub segment: u64,
    pub offset: u64,
}

/// What the index says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexMeta {
    pub store_id: Option<String>,
    pub schema_version: Option<i64>,
    pub indexed_position: u64,
    /// Largest HLC (physical, counter) among indexed events.
    pub hlc_max: (u64, u32),
    /// The generation of the log the index was built from
    /// ([`crate::log::read_generation`]); 0 in an index made before
    /// generations existed.
    pub log_generation: u64,
}

fn sqlite_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(rusqlite::Error) -> IndexError + 'a {
    move |source| IndexError::Sqlite {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn configure(conn: &Connection, path: &Path, write: bool) -> Result<(), IndexError> {
    let err = sqlite_err(path, "configuring the connection");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sqlite_err(path, "configuring the connection"))?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(sqlite_err(path, "configuring the connection"))?;
    // `rarray()` lets one statement look up a whole batch of event ids.
    rusqlite::vtab::array::load_module(conn)
        .map_err(sqlite_err(path, "configuring the connection"))?;
    // Reads through a memory map instead of a read() per page.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)
        .map_err(sqlite_err(path, "configuring the connection"))?;
    if write {
        // The index is derived and checkpointed by position: NORMAL keeps
        // it consistent across crashes (WAL), and a lost tail is re-indexed
        // from the log on open.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite_err(path, "configuring the connection"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
    }
    Ok(())
}

fn read_meta(conn: &Connection, path: &Path) -> Result<IndexMeta, IndexError> {
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'strata_meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sqlite_err(path, "reading the index metadata"))?
        > 0;
    if !has_meta {
        return Ok(IndexMeta::default());
    }
    let mut stmt = conn
        .prepare("SELECT key, value FROM strata_meta")
        .map_err(sqlite_err(path, "reading the index metadata"))?;
    let mut meta = IndexMeta::default();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sqlite_err(path, "reading the index metadata"))?;
    for row in rows {
        let (k, v) = row.map_err(sqlite_err(path, "reading the index metadata"))?;
        match k.as_str() {
            "store_id" => meta.store_id = Some(v),
            "schema_version" => meta.schema_version = v.parse().ok(),
            "indexed_position" => meta.indexed_position = v.parse().unwrap_or(0),
            // Absent in an index made before generations: the log's was 0.
            "log_generation" => meta.log_generation = v.parse().unwrap_or(u64::MAX),
            "hlc_max" => {
                if let Some((p, c)) = v.split_once(':') {
                    meta.hlc_max = (p.parse().unwrap_or(0), c.parse().unwrap_or(0));
                }
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// Removes an index file and its WAL companions.
pub fn remove_index_files(store_dir: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = store_dir.join(format!("{INDEX_FILE}{suffix}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read access to the index, shared by all threads.
#[derive(Debug)]
pub struct Index {
    path: PathBuf,
    /// False when a read-only store found no usable index: every query
    /// answers "not indexed" and the store reads the log instead.
    present: bool,
    pool: Mutex<Vec<Connection>>,
}

/// The single writer of the index (the indexer thread owns it).
#[derive(Debug)]
pub struct IndexWriter {
    path: PathBuf,
    conn: Connection,
    checkpointer: Checkpointer,
}

/// Copies the index's WAL into its database file on a thread of its own,
/// with a connection of its own, when the writer's commits have grown the
/// WAL past [`INDEX_CHECKPOINT_WAL_BYTES`]. A `PASSIVE` checkpoint never
/// blocks the writer or readers; the writer starts the WAL over at its next
/// transaction once everything is copied. Stops (and is joined) when the
/// writer drops.
#[derive(Debug)]
struct Checkpointer {
    signal: Arc<CheckpointSignal>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct CheckpointSignal {
    state: Mutex<CheckpointState>,
    wake: Condvar,
    /// WAL frames that call for a checkpoint ([`INDEX_CHECKPOINT_WAL_BYTES`]
    /// in pages).
    frames: std::sync::atomic::AtomicI32,
}

#[derive(Debug, Default)]
struct CheckpointState {
    /// A checkpoint is wanted.
    wanted: bool,
    /// The thread is copying: the writer does not start a copy of its own.
    running: bool,
    stop: bool,
    /// Checkpoints run so far (by the thread or inline), for tests and
    /// diagnostics.
    done: u64,
}

impl CheckpointSignal {
    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Checkpointer {
    /// Starts the thread and hooks it to `writer`'s commits: each commit
    /// reports the WAL's size in frames.
    /// Its thread runs `background_nice` nicer than the caller's
    /// ([`crate::priority`]).
    fn start(
        path: &Path,
        writer: &mut Connection,
        background_nice: i32,
    ) -> Result<Self, IndexError> {
        let conn = Connection::open(path).map_err(sqlite_err(path, "opening the checkpointer"))?;
        configure(&conn, path, true)?;
        let page_bytes: i64 = writer
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(sqlite_err(path, "reading the page size"))?;
        let frames = (INDEX_CHECKPOINT_WAL_BYTES / page_bytes.max(512)).clamp(1, i32::MAX.into());
        let signal = Arc::new(CheckpointSignal {
            state: Mutex::default(),
            wake: Condvar::new(),
            frames: (frames as i32).into(),
        });
        let hook_signal = signal.clone();
        // Replaces SQLite's automatic checkpoint, which runs in the
        // committing writer.
        writer
            .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
                let frames = hook_signal
                    .frames
                    .load(std::sync::atomic::Ordering::Relaxed);
                if pages >= frames.saturating_mul(INDEX_CHECKPOINT_INLINE_FACTOR)
                    && !hook_signal.lock().running
                {
                    // Errors are not the commit's: it has happened. The
                    // next commit tries again.
                    match wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                        Ok(_) => hook_signal.lock().done += 1,
                        Err(e) => {
                            tracing::debug!(error = %e, pages, "inline index checkpoint did not run")
                        }
                    }
                } else if pages >= frames {
                    let mut st = hook_signal.lock();
                    if !st.wanted {
                        st.wanted = true;
                        hook_signal.wake.notify_one();
                    }
                }
                Ok(())
            }))
            .map_err(sqlite_err(path, "hooking the checkpointer"))?;
        let thread_signal = signal.clone();
        let thread_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("strata-checkpoint".into())
            .spawn(move || {
                crate::priority::lower_this_thread(background_nice);
                checkpoint_loop(&conn, &thread_path, &thread_signal)
            })
            .map_err(|source| IndexError::Io {
                path: path.to_path_buf(),
                action: "starting the checkpointer thread",
                source,
            })?;
        Ok(Checkpointer {
            signal,
            thread: Some(thread),
        })
    }
}

fn checkpoint_loop(conn: &Connection, path: &Path, signal: &CheckpointSignal) {
    let mut st = signal.lock();
    loop {
        while !st.wanted && !st.stop {
            st = signal.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.stop {
            return;
        }
        st.wanted = false;
        st.running = true;
        drop(st);
        let result = conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE);
        if let Err(e) = &result {
            // The WAL keeps what was not copied; the next commit asks
            // again, and the writer copies it itself if this keeps failing.
            tracing::warn!(path = %path.display(), error = %e, "index checkpoint failed");
        }
        st = signal.lock();
        st.running = false;
        st.done += u64::from(result.is_ok());
    }
}

impl Drop for IndexWriter {
    /// Stops the checkpointer, then copies what is left of the WAL into the
    /// database file and empties the WAL, without waiting for readers (a
    /// reader in another process keeps the rest for the next checkpoint).
    fn drop(&mut self) {
        self.checkpointer.stop();
        let _ = self.conn.busy_timeout(std::time::Duration::ZERO);
        if let Err(e) = self
            .conn
            .wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::TRUNCATE)
        {
            tracing::debug!(path = %self.path.display(), error = %e, "index checkpoint at close left part of the WAL");
        }
    }
}

impl Checkpointer {
    fn stop(&mut self) {
        self.signal.lock().stop = true;
        self.signal.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A run of `aggregate_runs` being gathered.
#[derive(Debug)]
struct OpenRun {
    aggregate_id: String,
    first_version: u64,
    last_version: u64,
    first_position: u64,
    segment: u64,
    offset: u64,
}

/// Opens the index of a store for reading and writing; rebuilds it from
/// scratch when it belongs to another store, has another schema version,
/// was built from another generation of the log (a repair rewrote it), or
/// claims more than the log holds.
pub fn open_rw(
    store_dir: &Path,
    store_id: Uuid,
    log_head: u64,
    log_generation: u64,
    background_nice: i32,
) -> Result<(Index, IndexWriter, IndexMeta), IndexError> {
    let path = store_dir.join(INDEX_FILE);
    let open = |path: &Path| -> Result<(Connection, IndexMeta), IndexError> {
        let conn = Connection::open(path).map_err(sqlite_err(path, "opening"))?;
        configure(&conn, path, true)?;
        let meta = read_meta(&conn, path)?;
        Ok((conn, meta))
    };
    let (mut conn, mut meta) = open(&path)?;
    let store_id_text = store_id.to_string();
    let stale = meta
        .store_id
        .as_deref()
        .is_some_and(|id| id != store_id_text)
        || meta
            .schema_version
            .is_some_and(|v| v != INDEX_SCHEMA_VERSION)
        || meta.indexed_position > log_head
        || (meta.store_id.is_some() && meta.log_generation != log_generation);
    if stale {
        tracing::warn!(path = %path.display(), ?meta, log_head, "index does not match the log; rebuilding it");
        drop(conn);
        remove_index_files(store_dir).map_err(|source| IndexError::Io {
            path: path.clone(),
            action: "removing a stale index",
            source,
        })?;
        (conn, meta) = open(&path)?;
    }
    conn.execute_batch(SCHEMA)
        .map_err(sqlite_err(&path, "creating the schema"))?;
    conn.execute(
        "INSERT OR IGNORE INTO strata_meta (key, value) VALUES ('store_id', ?1), ('schema_version', ?2), ('indexed_position', '0'), ('hlc_max', '0:0'), ('log_generation', ?3)",
        params![store_id_text, INDEX_SCHEMA_VERSION.to_string(), log_generation.to_string()],
    )
    .map_err(sqlite_err(&path, "writing the index metadata"))?;
    meta.store_id = Some(store_id_text);
    meta.schema_version = Some(INDEX_SCHEMA_VERSION);
    meta.log_generation = log_generation;
    let checkpointer = Checkpointer::start(&path, &mut conn, background_nice)?;
    let index = Index {
        path: path.clone(),
        present: true,
        pool: Mutex::new(Vec::new()),
    };
    Ok((
        index,
        IndexWriter {
            path,
            conn,
            checkpointer,
        },
        meta,
    ))
}

/// Opens the index read-only. Never writes, never takes locks beyond
/// SQLite's own; a missing index, or one of another store or schema, is
/// reported as absent. The caller compares the checkpoint with its log: the
/// index may be ahead of a read-only view of the log (a writer keeps
/// extending it), or claim positions the log no longer has (after a repair).
pub fn open_ro(
    store_dir: &Path,
    store_id: Uuid,
    log_generation: u64,
) -> Result<(Index, IndexMeta), IndexError> {
    let path = store_dir.join(INDEX_FILE);
    if !path.exists() {
        return Ok((Index::absent(store_dir), IndexMeta::default()));
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(&path, "opening read-only"))?;
    configure(&conn, &path, false)?;
    let meta = read_meta(&conn, &path)?;
    let usable = meta.store_id.as_deref() == Some(&store_id.to_string())
        && meta.schema_version == Some(INDEX_SCHEMA_VERSION)
        && meta.log_generation == log_generation;
    if !usable {
        return Ok((Index::absent(store_dir), IndexMeta::default()));
    }
    let index = Index {
        path,
        present: true,
        pool: Mutex::new(vec![conn]),
    };
    Ok((index, meta))
}

struct Pooled<'a> {
    index: &'a Index,
    conn: Option<Connection>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = self.index.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READ_POOL_IDLE_MAX {
                pool.push(conn);
            }
        }
    }
}

impl Index {
    /// No usable index: every query answers "not indexed", and a read-only
    /// store reads the log instead.
    pub fn absent(store_dir: &Path) -> Index {
        Index {
            path: store_dir.join(INDEX_FILE),
            present: false,
            pool: Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False when there is no usable index (read-only store without one).
    pub fn is_present(&self) -> bool {
        self.present
    }

    fn conn(&self) -> Result<Pooled<'_>, IndexError> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(sqlite_err(&self.path, "opening a read connection"))?;
                configure(&c, &self.path, false)?;
                c
            }
        };
        Ok(Pooled {
            index: self,
            conn: Some(conn),
        })
    }

    pub fn meta(&self) -> Result<IndexMeta, IndexError> {
        if !self.present {
            return Ok(IndexMeta::default());
        }
        read_meta(&*self.conn()?, &self.path)
    }

    /// Pointers of those `ids` the index holds.
    pub fn lookup_ids(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, (Pointer, String)>, IndexError> {
        if !self.present || ids.is_empty() {
            return Ok(HashMap::new());
        }
        self.reader(Some(&*self.conn()?)).lookup_ids(ids)
    }

    /// An aggregate's events with version ≥ `from_version` and position ≤
    /// `upto`: the first `limit` of them or, `backward`, the last `limit`;
    /// as spans in ascending order either way.
    pub fn aggregate_spans(
        &self,
        aggregate_id: &str,
        from_version: u64,
        backward: bool,
        limit: usize,
        upto: u64,
    ) -> Result<Vec<Span>, IndexError> {
        if !self.present {
            return Ok(Vec::new());
        }
        self.reader(Some(&*self.conn()?)).aggregate_spans(
            aggregate_id,
            from_version,
            backward,
            limit,
            upto,
        )
    }

    /// Where the record at `position` is, `(segment, offset)`, if the
    /// index holds it.
    pub fn row_place(&self, position: u64) -> Result<Option<(u64, u64)>, IndexError> {
        if !self.present {
            return Ok(None);
        }
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached("SELECT log_segment, log_offset FROM event_rows WHERE position = ?1")
            .map_err(sqlite_err(&self.path, "reading a record's place"))?;
        stmt.query_row([position], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(sqlite_err(&self.path, "reading a record's place"))
    }

    /// Runs `f` inside one read transaction, so that everything it reads
    /// comes from one state of the index, and gives it (and returns with
    /// its result) the checkpoint (`indexed_position`) of that state. A read-only store
    /// uses this beside a writer that keeps extending the index: the
    /// checkpoint says which positions the answer is complete for.
    pub fn snapshot<T>(
        &self,
        f: impl FnOnce(&Reader<'_>, u64) -> Result<T, IndexError>,
    ) -> Result<(T, u64), IndexError> {
        if !self.present {
            return Ok((f(&self.reader(None), 0)?, 0));
        }
        let conn = self.conn()?;
        conn.execute_batch("BEGIN")
            .map_err(sqlite_err(&self.path, "starting a read"))?;
        let result = read_meta(&conn, &self.path).and_then(|meta| {
            let value = f(&self.reader(Some(&*conn)), meta.indexed_position)?;
            Ok((value, meta.indexed_position))
        });
        // A read transaction has nothing to undo: ending it only releases
        // the snapshot.
        let end = conn
            .execute_batch("COMMIT")
            .map_err(sqlite_err(&self.path, "ending a read"));
        let out = result?;
        end?;
        Ok(out)
    }

    fn reader<'a>(&'a self, conn: Option<&'a Connection>) -> Reader<'a> {
        Reader {
            path: &self.path,
            conn: conn.filter(|_| self.present),
        }
    }

    /// The largest event id in the index, in byte order, `None` when it is
    /// empty.
    pub fn max_event_id(&self) -> Result<Option<Uuid>, IndexError> {
        if !self.present {
            return Ok(None);
        }
        let bytes: Option<Vec<u8>> = self
            .conn()?
            .query_row("SELECT max(event_id) FROM event_rows", [], |r| r.get(0))
            .map_err(sqlite_err(&self.path, "reading the largest event id"))?;
        Ok(bytes.and_then(|b| Uuid::from_slice(&b).ok()))
    }

    /// The aggregate's last indexed version (0 when it has none).
    pub fn max_version(&self, aggregate_id: &str) -> Result<u64, IndexError> {
        if !self.present {
            return Ok(0);
        }
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT last_version FROM aggregate_runs WHERE aggregate_id = ?1
                 ORDER BY first_version DESC LIMIT 1",
            )
            .map_err(sqlite_err(&self.path, "reading an aggregate's version"))?;
        let v: Option<u64> = stmt
            .query_row([aggregate_id], |r| r.get(0))
            .optional()
            .map_err(sqlite_err(&self.path, "reading an aggregate's version"))?;
        Ok(v.unwrap_or(0))
    }

    /// Number of distinct aggregates and of events indexed.
    pub fn counts(&self) -> Result<(u64, u64), IndexError> {
        if !self.present {
            return Ok((0, 0));
        }
        let conn = self.conn()?;
        conn.query_row(
            "SELECT (SELECT count(DISTINCT aggregate_id) FROM aggregate_runs), (SELECT count(*) FROM event_rows)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sqlite_err(&self.path, "counting"))
    }
}

/// Queries over one connection of the index (see [`Index::snapshot`]).
#[derive(Debug)]
pub struct Reader<'a> {
    path: &'a Path,
    /// `None` when there is no usable index: every query answers "not
    /// indexed".
    conn: Option<&'a Connection>,
}

impl Reader<'_> {
    /// Pointers of those `ids` the index holds.
    pub fn lookup_ids(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, (Pointer, String)>, IndexError> {
        let mut found = HashMap::new();
        let Some(conn) = self.conn.filter(|_| !ids.is_empty()) else {
            return Ok(found);
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, position, version, log_segment, log_offset, aggregate_id
                 FROM event_rows WHERE event_id IN rarray(?1)",
            )
            .map_err(sqlite_err(self.path, "looking up event ids"))?;
        let values: Vec<rusqlite::types::Value> = ids
            .iter()
            .map(|id| rusqlite::types::Value::Blob(id.as_bytes().to_vec()))
            .collect();
        let array = std::rc::Rc::new(values);
        let rows = stmt
            .query_map([array], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    Pointer {
                        position: r.get(1)?,
                        version: r.get(2)?,
                        segment: r.get(3)?,
                        offset: r.get(4)?,
                    },
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(sqlite_err(self.path, "looking up event ids"))?;
        for row in rows {
            let (id, ptr, agg) = row.map_err(sqlite_err(self.path, "looking up event ids"))?;
            if let Ok(id) = Uuid::from_slice(&id) {
                found.insert(id, (ptr, agg));
            }
        }
        Ok(found)
    }

    /// An aggregate's events with version ≥ `from_version` and position ≤
    /// `upto`: the first `limit` of them or, `backward`, the last `limit`;
    /// as spans in ascending order either way.
    pub fn aggregate_spans(
        &self,
        aggregate_id: &str,
        from_version: u64,
        backward: bool,
        limit: usize,
        upto: u64,
    ) -> Result<Vec<Span>, IndexError> {
        let Some(conn) = self.conn.filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        // From the run that holds `from_version` (the last one starting at
        // or before it) on. `first_position <= ?3`: a reader's view of the
        // log may end before the index does (a read-only store beside a
        // writer).
        macro_rules! runs_from {
            () => {
                "SELECT first_version, last_version, first_position, log_segment, log_offset
                 FROM aggregate_runs
                 WHERE aggregate_id = ?1 AND first_position <= ?3 AND first_version >= coalesce(
                     (SELECT max(first_version) FROM aggregate_runs
                      WHERE aggregate_id = ?1 AND first_version <= ?2), 0)"
            };
        }
        let sql = if backward {
            concat!(runs_from!(), " ORDER BY first_version DESC")
        } else {
            concat!(runs_from!(), " ORDER BY first_version ASC")
        };
        let err = || sqlite_err(self.path, "reading an aggregate");
        let mut stmt = conn.prepare_cached(sql).map_err(err())?;
        let mut rows = stmt
            .query(params![aggregate_id, from_version, upto])
            .map_err(err())?;
        let mut spans = Vec::new();
        let mut left = limit as u64;
        while left > 0 {
            let Some(r) = rows.next().map_err(err())? else {
                break;
            };
            let (first_version, last_version, first_position): (u64, u64, u64) = (
                r.get(0).map_err(err())?,
                r.get(1).map_err(err())?,
                r.get(2).map_err(err())?,
            );
            let mut span = Span {
                first_position,
                first_version,
                segment: r.get(3).map_err(err())?,
                offset: r.get(4).map_err(err())?,
                from_version: from_version.max(first_version),
                // The run's last event this reader's log holds.
                to_version: last_version.min(first_version + (upto - first_position)),
            };
            if span.from_version > span.to_version {
                continue;
            }
            if span.count() > left {
                if backward {
                    span.from_version = span.to_version - (left - 1);
                } else {
                    span.to_version = span.from_version + (left - 1);
                }
            }
            left -= span.count();
            spans.push(span);
        }
        if backward {
            spans.reverse();
        }
        Ok(spans)
    }

    /// The runs of `aggregate_runs` in index order, for verification:
    /// how many disagree with `event_rows` (a run whose rows are not its
    /// aggregate's consecutive versions, or whose first row is not where
    /// it says its first record is), how many overlap another run of
    /// their aggregate, the events the runs cover, and the rows they
    /// cover (each row is counted once per run holding it).
    pub fn check_runs(&self) -> Result<RunCheck, IndexError> {
        let Some(conn) = self.conn else {
            return Ok(RunCheck::default());
        };
        conn.query_row(
            "SELECT
               (SELECT count(*) FROM aggregate_runs r
                  JOIN event_rows e ON e.position BETWEEN r.first_position
                                       AND r.first_position + (r.last_version - r.first_version)
                 WHERE e.aggregate_id != r.aggregate_id
                    OR e.version != r.first_version + (e.position - r.first_position)
                    OR e.log_segment != r.log_segment
                    OR (e.position = r.first_position
                        AND (e.log_segment != r.log_segment OR e.log_offset != r.log_offset))),
               (SELECT count(*) FROM aggregate_runs a
                  JOIN aggregate_runs b ON b.aggregate_id = a.aggregate_id
                                       AND b.first_version > a.first_version
                                       AND b.first_version <= a.last_version),
               (SELECT count(*) FROM aggregate_runs WHERE last_version < first_version),
               (SELECT coalesce(sum(last_version - first_version + 1), 0) FROM aggregate_runs
                 WHERE last_version >= first_version),
               (SELECT count(*) FROM aggregate_runs r
                  JOIN event_rows e ON e.position BETWEEN r.first_position
                                       AND r.first_position + (r.last_version - r.first_version))",
            [],
            |r| {
                Ok(RunCheck {
                    mismatched: r.get(0)?,
                    overlapping: r.get(1)?,
                    inverted: r.get(2)?,
                    events: r.get(3)?,
                    rows: r.get(4)?,
                })
            },
        )
        .map_err(sqlite_err(self.path, "checking aggregate runs"))
    }

    /// Every row in position order, for verification.
    pub fn for_each_row(&self, mut f: impl FnMut(IndexRow) -> bool) -> Result<(), IndexError> {
        let Some(conn) = self.conn else {
            return Ok(());
        };
        let mut stmt = conn
            .prepare(
                "SELECT position, event_id, aggregate_id, version, event_type,
                        hlc_physical_ms, hlc_counter, hlc_node, log_segment, log_offset
                 FROM event_rows ORDER BY position",
            )
            .map_err(sqlite_err(self.path, "reading rows"))?;
        let mut rows = stmt
            .query([])
            .map_err(sqlite_err(self.path, "reading rows"))?;
        while let Some(r) = rows.next().map_err(sqlite_err(self.path, "reading rows"))? {
            let row = (|| -> rusqlite::Result<IndexRow> {
                let id: Vec<u8> = r.get(1)?;
                Ok(IndexRow {
                    position: r.get(0)?,
                    // A blob that is not 16 bytes shows as its hex, which
                    // no log row equals.
                    event_id: Uuid::from_slice(&id)
                        .map(|u| u.hyphenated().to_string())
                        .unwrap_or_else(|_| {
                            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        }),
                    aggregate_id: r.get(2)?,
                    version: r.get(3)?,
                    event_type: r.get(4)?,
                    timestamp: crate::hlc::timestamp_text(
                        r.get(5)?,
                        r.get(6)?,
                        &r.get::<_, String>(7)?,
                    ),
                    segment: r.get(8)?,
                    offset: r.get(9)?,
                })
            })()
            .map_err(sqlite_err(self.path, "reading rows"))?;
            if !f(row) {
                break;
            }
        }
        Ok(())
    }
}

/// Rows of `event_rows` one insert statement writes while a frame has that
/// many left. One execution keeps its B-tree cursors from row to row, so
/// rows that append (positions always, v7 ids mostly) go on from where
/// the last one landed; one execution per row starts each insert with a
/// descent from the root of the table and of the id index, and pays the
/// statement's start and reset (issue 16, third step).
pub const INDEX_INSERT_ROWS: usize = 32;

/// Parameters of one `event_rows` row.
const ROW_PARAMS: usize = 10;

/// `INSERT INTO event_rows` of one row and of [`INDEX_INSERT_ROWS`] rows,
/// built once rather than at every transaction.
static INSERT_ROW_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_rows_sql(1));
static INSERT_CHUNK_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_rows_sql(INDEX_INSERT_ROWS));

/// `INSERT INTO event_rows` of `rows` rows.
fn insert_rows_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO event_rows (position, event_id, aggregate_id, version, event_type,
                                 hlc_physical_ms, hlc_counter, hlc_node, log_segment, log_offset)
         VALUES {values}"
    )
}

/// Binds `row` to the parameters after the first `before` of `stmt`.
fn bind_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    before: usize,
    row: &NewRow<'_>,
) -> rusqlite::Result<()> {
    let e = &row.event;
    let at = |k: usize| before + k;
    stmt.raw_bind_parameter(at(1), e.position)?;
    stmt.raw_bind_parameter(at(2), &e.event_id.as_bytes()[..])?;
    stmt.raw_bind_parameter(at(3), e.aggregate_id)?;
    stmt.raw_bind_parameter(at(4), e.version)?;
    stmt.raw_bind_parameter(at(5), e.event_type)?;
    stmt.raw_bind_parameter(at(6), e.hlc_physical_ms)?;
    stmt.raw_bind_parameter(at(7), e.hlc_counter)?;
    stmt.raw_bind_parameter(at(8), e.hlc_node)?;
    stmt.raw_bind_parameter(at(9), row.segment)?;
    stmt.raw_bind_parameter(at(10), row.offset)
}

/// One event for the index writer.
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    pub event: EventRef<'a>,
    pub segment: u64,
    pub offset: u64,
}

impl IndexWriter {
    /// Checkpoints run so far for this writer, by its checkpointer or by
    /// itself.
    pub fn checkpoints(&self) -> u64 {
        self.checkpointer.signal.lock().done
    }

    /// Asks for a checkpoint once the WAL holds `frames` frames (tests use
    /// small numbers; [`INDEX_CHECKPOINT_WAL_BYTES`] otherwise).
    pub fn set_checkpoint_frames(&mut self, frames: i32) {
        self.checkpointer
            .signal
            .frames
            .store(frames.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts a transaction: rows follow with [`IndexBatch::insert_frame`], and
    /// [`IndexBatch::commit`] ends it (dropping the batch rolls it back).
    pub fn begin(&mut self) -> Result<IndexBatch<'_>, IndexError> {
        let path = &self.path;
        if !self.conn.is_autocommit() {
            // A batch whose rollback failed left its transaction open.
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(sqlite_err(path, "abandoning a transaction"))?;
        }
        self.conn
            .execute_batch("BEGIN")
            .map_err(sqlite_err(path, "starting a transaction"))?;
        // Prepared once a batch, not looked up in the statement cache for
        // every row.
        let prepare = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .map_err(sqlite_err(path, "preparing an insert"))
        };
        let rows = prepare(&INSERT_ROW_SQL)?;
        let chunk = prepare(&INSERT_CHUNK_SQL)?;
        let runs = prepare(
            "INSERT INTO aggregate_runs (aggregate_id, first_version, last_version,
                                         first_position, log_segment, log_offset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        Ok(IndexBatch {
            conn: &self.conn,
            path,
            rows,
            chunk,
            runs,
            run: None,
            committed: false,
        })
    }
}

/// One transaction of the index writer (see [`IndexWriter::begin`]).
pub struct IndexBatch<'a> {
    conn: &'a Connection,
    path: &'a Path,
    /// Inserts one row into `event_rows`.
    rows: rusqlite::CachedStatement<'a>,
    /// Inserts [`INDEX_INSERT_ROWS`] rows into `event_rows` at once.
    chunk: rusqlite::CachedStatement<'a>,
    runs: rusqlite::CachedStatement<'a>,
    /// The run the rows inserted last belong to, written when the next
    /// row does not extend it, at the end of its frame, or at commit.
    run: Option<OpenRun>,
    committed: bool,
}

impl std::fmt::Debug for IndexBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexBatch")
            .field("path", &self.path)
            .field("run", &self.run)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl IndexBatch<'_> {
    /// Inserts the events of one batch frame, in position order, and ends
    /// the run open at its end (a run's records lie back to back in one
    /// frame). Consecutive rows that continue an aggregate's versions join
    /// its run.
    pub fn insert_frame(&mut self, frame: &[NewRow<'_>]) -> Result<(), IndexError> {
        let mut chunks = frame.chunks_exact(INDEX_INSERT_ROWS);
        for chunk in &mut chunks {
            for (i, row) in chunk.iter().enumerate() {
                bind_row(&mut self.chunk, i * ROW_PARAMS, row)
                    .map_err(sqlite_err(self.path, "inserting events"))?;
            }
            self.chunk
                .raw_execute()
                .map_err(sqlite_err(self.path, "inserting events"))?;
        }
        for row in chunks.remainder() {
            bind_row(&mut self.rows, 0, row)
                .and_then(|()| self.rows.raw_execute())
                .map_err(sqlite_err(self.path, "inserting an event"))?;
        }
        for row in frame {
            self.extend_run(row)?;
        }
        self.end_run()
    }

    /// Adds `row` to the open run, or ends that run and opens one at `row`.
    fn extend_run(&mut self, row: &NewRow<'_>) -> Result<(), IndexError> {
        let e = &row.event;
        let extends = self.run.as_ref().is_some_and(|run| {
            run.aggregate_id == e.aggregate_id
                && e.version == run.last_version + 1
                && e.position == run.first_position + (e.version - run.first_version)
                && row.segment == run.segment
        });
        if extends {
            if let Some(run) = self.run.as_mut() {
                run.last_version = e.version;
            }
            return Ok(());
        }
        self.end_run()?;
        self.run = Some(OpenRun {
            aggregate_id: e.aggregate_id.to_owned(),
            first_version: e.version,
            last_version: e.version,
            first_position: e.position,
            segment: row.segment,
            offset: row.offset,
        });
        Ok(())
    }

    /// Ends the open run: the next row starts another.
    fn end_run(&mut self) -> Result<(), IndexError> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        self.runs
            .execute(params![
                run.aggregate_id,
                run.first_version,
                run.last_version,
                run.first_position,
                run.segment,
                run.offset
            ])
            .map_err(sqlite_err(self.path, "inserting an aggregate run"))?;
        Ok(())
    }

    /// Ends the open run, moves the checkpoint and commits.
    pub fn commit(mut self, indexed_position: u64, hlc_max: (u64, u32)) -> Result<(), IndexError> {
        self.end_run()?;
        let path = self.path;
        let mut set = self
            .conn
            .prepare_cached("UPDATE strata_meta SET value = ?2 WHERE key = ?1")
            .map_err(sqlite_err(path, "moving the checkpoint"))?;
        set.execute(params!["indexed_position", indexed_position.to_string()])
            .map_err(sqlite_err(path, "moving the checkpoint"))?;
        set.execute(params!["hlc_max", format!("{}:{}", hlc_max.0, hlc_max.1)])
            .map_err(sqlite_err(path, "moving the checkpoint"))?;
        drop(set);
        self.conn
            .execute_batch("COMMIT")
            .map_err(sqlite_err(path, "committing"))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for IndexBatch<'_> {
    /// A batch that was not committed is rolled back; a rollback that
    /// fails leaves the transaction for the next `begin` to end.
    fn drop(&mut self) {
        if !self.committed && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_count(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len()) / 4096
    }

    /// A frame longer than one multi-row insert, whose runs cross the
    /// edges of the chunks, reads back row for row and run for run (a
    /// parameter bound to the wrong row or a remainder lost shows here).
    #[test]
    fn a_frame_of_several_chunks_keeps_every_row_and_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let (_index, mut writer, _) = open_rw(dir.path(), Uuid::now_v7(), 0, 0, 0).unwrap();
        let n = 2 * INDEX_INSERT_ROWS + 5;
        // Aggregate "a" for rows 0..30, "b" for 30..40, "c" after: runs
        // cross the chunk edges at rows 32 and 64.
        let aggregate = |i: usize| match i {
            0..30 => ("a", i + 1),
            30..40 => ("b", i - 29),
            _ => ("c", i - 39),
        };
        let frame: Vec<NewRow<'_>> = (0..n)
            .map(|i| NewRow {
                event: EventRef {
                    position: i as u64 + 1,
                    event_id: Uuid::now_v7(),
                    aggregate_id: aggregate(i).0,
                    version: aggregate(i).1 as u64,
                    event_type: if i % 3 == 0 { "Opened" } else { "Moved" },
                    data: b"{}",
                    hlc_physical_ms: 1_000 + i as u64,
                    hlc_counter: i as u32,
                    hlc_node: if i % 2 == 0 { "n1" } else { "n2" },
                    metadata: None,
                },
                segment: 1,
                offset: 64 * i as u64,
            })
            .collect();
        let mut batch = writer.begin().unwrap();
        batch.insert_frame(&frame).unwrap();
        batch.commit(n as u64, (1_000 + n as u64, 0)).unwrap();

        let check = Connection::open(dir.path().join(INDEX_FILE)).unwrap();
        let mut stmt = check
            .prepare(
                "SELECT position, event_id, aggregate_id, version, event_type, hlc_physical_ms,
                        hlc_counter, hlc_node, log_segment, log_offset
                 FROM event_rows ORDER BY position",
            )
            .unwrap();
        // position, id, aggregate, version, type, clock (3), segment, offset
        type Row = (
            u64,
            Vec<u8>,
            String,
            u64,
            String,
            u64,
            u32,
            String,
            u64,
            u64,
        );
        let rows: Vec<Row> = stmt
            .query_map([], |r| Row::try_from(r))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), n);
        for (row, want) in rows.iter().zip(&frame) {
            let e = &want.event;
            let expected = (
                e.position,
                e.event_id.as_bytes().to_vec(),
                e.aggregate_id.to_owned(),
                e.version,
                e.event_type.to_owned(),
                e.hlc_physical_ms,
                e.hlc_counter,
                e.hlc_node.to_owned(),
                want.segment,
                want.offset,
            );
            assert_eq!(row, &expected, "row at position {}", e.position);
        }
        type Run = (String, u64, u64, u64, u64);
        let runs: Vec<Run> = check
            .prepare(
                "SELECT aggregate_id, first_version, last_version, first_position, log_offset
                 FROM aggregate_runs ORDER BY first_position",
            )
            .unwrap()
            .query_map([], |r| Run::try_from(r))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let c_last = (n - 40) as u64;
        assert_eq!(
            runs,
            [
                ("a".to_owned(), 1, 30, 1, 0),
                ("b".to_owned(), 1, 10, 31, 64 * 30),
                ("c".to_owned(), 1, c_last, 41, 64 * 40),
            ]
        );
    }

    /// One event of aggregate `aggregate` for the writer's tests.
    fn new_row(
        position: u64,
        event_id: Uuid,
        aggregate: &'static str,
        version: u64,
    ) -> NewRow<'static> {
        NewRow {
            event: EventRef {
                position,
                event_id,
                aggregate_id: aggregate,
                version,
                event_type: "T",
                data: b"{}",
                hlc_physical_ms: 1,
                hlc_counter: 0,
                hlc_node: "node",
                metadata: None,
            },
            segment: 1,
            offset: 64 * position,
        }
    }

    fn rows_in(dir: &Path) -> u64 {
        Connection::open(dir.join(INDEX_FILE))
            .unwrap()
            .query_row("SELECT count(*) FROM event_rows", [], |r| r.get(0))
            .unwrap()
    }

    fn runs_of(dir: &Path) -> Vec<(String, u64, u64, u64)> {
        Connection::open(dir.join(INDEX_FILE))
            .unwrap()
            .prepare(
                "SELECT aggregate_id, first_version, last_version, first_position
                 FROM aggregate_runs ORDER BY first_position",
            )
            .unwrap()
            .query_map([], |r| <(String, u64, u64, u64)>::try_from(r))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A run ends with its frame: an aggregate that goes on in the next
    /// frame starts a second run there (its records are not back to back
    /// with the first's in one frame).
    #[test]
    fn an_aggregate_that_goes_on_in_the_next_frame_starts_another_run() {
        let dir = tempfile::tempdir().unwrap();
        let (_index, mut writer, _) = open_rw(dir.path(), Uuid::now_v7(), 0, 0, 0).unwrap();
        let first: Vec<_> = (1..=5)
            .map(|v| new_row(v, Uuid::now_v7(), "a", v))
            .collect();
        let second: Vec<_> = (6..=8)
            .map(|v| new_row(v, Uuid::now_v7(), "a", v))
            .collect();
        let mut batch = writer.begin().unwrap();
        batch.insert_frame(&first).unwrap();
        batch.insert_frame(&second).unwrap();
        batch.commit(8, (1, 0)).unwrap();
        assert_eq!(
            runs_of(dir.path()),
            [("a".to_owned(), 1, 5, 1), ("a".to_owned(), 6, 8, 6)]
        );
    }

    /// A multi-row insert that fails (an id twice, which the append path
    /// never lets through) fails the frame; dropping the batch rolls it
    /// back, and the next batch writes as if nothing had happened.
    #[test]
    fn a_failed_chunk_rolls_back_with_its_batch_and_the_next_batch_goes_in() {
        let dir = tempfile::tempdir().unwrap();
        let (_index, mut writer, _) = open_rw(dir.path(), Uuid::now_v7(), 0, 0, 0).unwrap();
        let ids: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
        let mut bad: Vec<_> = (0..40)
            .map(|i| new_row(i as u64 + 1, ids[i], "a", i as u64 + 1))
            .collect();
        bad[10].event.event_id = ids[3];
        let mut batch = writer.begin().unwrap();
        let err = batch.insert_frame(&bad).unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        drop(batch);

        let good: Vec<_> = (0..40)
            .map(|i| new_row(i as u64 + 1, ids[i], "a", i as u64 + 1))
            .collect();
        let mut batch = writer.begin().unwrap();
        batch.insert_frame(&good).unwrap();
        batch.commit(40, (1, 0)).unwrap();
        assert_eq!(rows_in(dir.path()), 40);
        assert_eq!(runs_of(dir.path()), [("a".to_owned(), 1, 40, 1)]);
    }

    /// With its thread gone (stopped here, standing in for one that fell
    /// far behind or keeps failing), the writer copies the WAL itself once
    /// it holds [`INDEX_CHECKPOINT_INLINE_FACTOR`] times the mark, so the
    /// WAL stays bounded; without that backstop nothing would ever copy it.
    #[test]
    fn the_writer_checkpoints_by_itself_when_the_checkpointer_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        let (_index, mut writer, _) = open_rw(dir.path(), Uuid::now_v7(), 0, 0, 0).unwrap();
        writer.checkpointer.stop();
        writer.set_checkpoint_frames(4);
        let mut position = 0;
        let mut wal_max = 0;
        for _ in 0..100 {
            let frame: Vec<_> = (0..100)
                .map(|_| {
                    position += 1;
                    new_row(position, Uuid::now_v7(), "a", position)
                })
                .collect();
            let mut batch = writer.begin().unwrap();
            batch.insert_frame(&frame).unwrap();
            batch.commit(position, (1, 0)).unwrap();
            let wal = std::fs::metadata(dir.path().join(format!("{INDEX_FILE}-wal")))
                .map_or(0, |m| m.len());
            wal_max = wal_max.max(wal);
        }
        assert!(writer.checkpoints() > 0, "the writer never checkpointed");
        // 10,000 rows take ~250 pages (~1 MiB); copied every 32 frames, the
        // WAL is reused from its start and never holds more than a few
        // commits' worth.
        assert!(
            wal_max < 512 << 10,
            "the WAL grew to {wal_max} bytes: it was not copied and reused"
        );
        assert_eq!(rows_in(dir.path()), position);
    }

    /// SQLite's automatic checkpoint is gone: the checkpointer copies the
    /// WAL into the database file once the WAL is past the mark (with no
    /// mark reached, nothing is ever copied and this test fails).
    #[test]
    fn the_checkpointer_copies_the_wal_into_the_database_file_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (_index, mut writer, _) = open_rw(dir.path(), Uuid::now_v7(), 0, 0, 0).unwrap();
        let db = dir.path().join(INDEX_FILE);
        let before = page_count(&db);
        writer.set_checkpoint_frames(16);
        let mut position = 0;
        for _ in 0..20 {
            let mut batch = writer.begin().unwrap();
            let frame: Vec<_> = (0..200)
                .map(|_| {
                    position += 1;
                    new_row(position, Uuid::now_v7(), "a", position)
                })
                .collect();
            batch.insert_frame(&frame).unwrap();
            batch.commit(position, (1, 0)).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while writer.checkpoints() == 0 || page_count(&db) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint after 20 s: {} done, {} pages in the database file (had {before})",
                writer.checkpoints(),
                page_count(&db)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // What the checkpoint copied reads back from a fresh connection.
        assert_eq!(rows_in(dir.path()), position);
    }
}
