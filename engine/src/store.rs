//! [`Store`]: the engine's public face. Appends go through one writer lock
//! into the log; a background indexer copies visible events into SQLite;
//! reads combine the index with an in-memory tail of not-yet-indexed events.
//!
//! The path of an append (see docs/ARCHITECTURE.md for the picture):
//!
//! 1. check limits and input, outside any lock;
//! 2. under the writer lock: find event ids that already exist (S6
//!    idempotency), check expected versions (S6 conflicts), assign versions
//!    and HLC timestamps, write one batch frame (S3), and record the new
//!    events in the tail;
//! 3. outside the lock: wait for the group commit to sync the frame (S2);
//! 4. later, the indexer thread writes the events into `index.sqlite` and
//!    drops them from the tail.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{
    AggregateEvents, Committed, Event, EventRef, ExpectedVersion, InvalidInput, Limits, NewEvent,
};
use crate::hlc::{DRIFT_MS_MAX_DEFAULT, Hlc, NodeId, SystemClock, Timestamp, WallClock};
use crate::index::{self, Index, IndexError, IndexWriter, NewRow, Pointer};
use crate::lock::LockFile;
use crate::log::format::RecordFields;
use crate::log::vfs::{OsVfs, Vfs};
use crate::log::{
    Cursor, Durability, Log, LogConfig, LogError, LogWriter, RecoveryReport,
    SEGMENT_BYTES_MAX_DEFAULT,
};

/// Default [`Options::index_batch_events_max`].
pub const INDEX_BATCH_EVENTS_MAX_DEFAULT: usize = 20_000;
/// Default [`Options::tail_events_max`].
pub const TAIL_EVENTS_MAX_DEFAULT: usize = 1_000_000;
/// Most cursors kept for sequential readers.
const CURSOR_CACHE_MAX: usize = 64;
/// How long the indexer lets new events gather after waking, so that a
/// trickle of small appends is indexed in fewer, larger transactions.
const INDEXER_GATHER: Duration = Duration::from_millis(2);
/// How long the indexer waits before retrying after an error.
const INDEXER_RETRY: Duration = Duration::from_secs(1);
/// How often idle background threads look at the shutdown flag.
const IDLE_WAKE: Duration = Duration::from_millis(200);
/// How often a subscription of a read-only store, caught up, looks for
/// what another process has appended.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// The file that marks a store as a sync replica's committed log, whose
/// plain appends are refused ([`Error::ReplicaLog`]).
pub const REPLICA_LOG_FILE: &str = "REPLICA";

/// How to open a store. Defaults: durability `Sync`, 64 MiB segments,
/// default [`Limits`], create if missing, read-write, node id derived from
/// the store id, 60 s maximum HLC drift, the system clock and file system.
#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    /// A segment is sealed and a new one started when the next batch would
    /// take it past this size (a single larger batch gets a segment of its
    /// own). Between 4 KiB and 1 TiB.
    pub segment_bytes_max: u64,
    pub limits: Limits,
    pub create_if_missing: bool,
    /// Open without the writer lock; never writes any file. Appends fail
    /// with [`Error::ReadOnly`].
    pub read_only: bool,
    /// Node id in this store's HLC timestamps. Default: derived from the
    /// store id, so stable across restarts.
    pub node_id: Option<String>,
    /// Remote timestamps further ahead of the wall clock are refused.
    pub hlc_drift_ms_max: u64,
    pub clock: Arc<dyn WallClock>,
    pub vfs: Arc<dyn Vfs>,
    /// Most events the indexer writes in one SQLite transaction.
    pub index_batch_events_max: usize,
    /// Most events waiting for the indexer; appends wait beyond this.
    pub tail_events_max: usize,
    /// Called with (indexed, head) while `open` catches the index up (e.g.
    /// after the index was deleted).
    pub index_progress: Option<ProgressHook>,
}

/// A progress callback: `(done, total)`.
#[derive(Clone)]
pub struct ProgressHook(pub Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            limits: Limits::default(),
            create_if_missing: true,
            read_only: false,
            node_id: None,
            hlc_drift_ms_max: DRIFT_MS_MAX_DEFAULT,
            clock: Arc::new(SystemClock),
            vfs: Arc::new(OsVfs),
            index_batch_events_max: INDEX_BATCH_EVENTS_MAX_DEFAULT,
            tail_events_max: TAIL_EVENTS_MAX_DEFAULT,
            index_progress: None,
        }
    }
}

impl Options {
    /// Read-only options with defaults otherwise.
    pub fn read_only() -> Options {
        Options {
            read_only: true,
            create_if_missing: false,
            ..Options::default()
        }
    }

    fn validate(&self) -> Result<()> {
        self.limits.validate()?;
        let setting =
            |name, reason: String| Err(Error::Invalid(InvalidInput::Setting { name, reason }));
        if !(crate::log::SEGMENT_BYTES_MIN..=crate::log::SEGMENT_BYTES_LIMIT)
            .contains(&self.segment_bytes_max)
        {
            return setting(
                "segment_bytes_max",
                format!(
                    "is {}, must be between {} and {}",
                    self.segment_bytes_max,
                    crate::log::SEGMENT_BYTES_MIN,
                    crate::log::SEGMENT_BYTES_LIMIT
                ),
            );
        }
        if self.index_batch_events_max == 0 {
            return setting("index_batch_events_max", "must be at least 1".into());
        }
        if self.tail_events_max < self.limits.batch_events_max {
            return setting(
                "tail_events_max",
                "must be at least limits.batch_events_max".into(),
            );
        }
        if let Durability::Periodic(d) = self.durability
            && d.is_zero()
        {
            return setting("durability", "Periodic needs a non-zero interval".into());
        }
        Ok(())
    }
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Events appended but not yet in SQLite, so that reads and checks see them.
#[derive(Debug, Default)]
struct Tail {
    by_id: FastMap<Uuid, (Pointer, Arc<str>)>,
    by_aggregate: FastMap<Arc<str>, VecDeque<Pointer>>,
    order: VecDeque<(u64, Uuid, Arc<str>)>,
    /// The largest event id in SQLite (byte order). An id above it is not
    /// in SQLite, so looking it up there can be skipped: fresh UUIDv7s sort
    /// by creation time, so appends of new events never query SQLite.
    /// Raised by the indexer before it trims, under the same lock.
    index_max_id: Option<Uuid>,
    /// Positions at or below this one have left the tail (the index holds
    /// them).
    from: u64,
    /// Read-only stores: the end of this handle's view of the log. The tail
    /// holds every event in `(from, head]`, and every read answers from the
    /// view up to `head`, never past it, although the index may already
    /// hold more (another process writes it). [`Store::refresh`] moves it.
    /// Unused by a read-write store, whose view ends at the log's visible
    /// position and whose tail holds everything not yet indexed.
    head: u64,
}

impl Tail {
    fn insert(&mut self, aggregate_id: &str, event_id: Uuid, ptr: Pointer) {
        let key = match self.by_aggregate.get_key_value(aggregate_id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(aggregate_id),
        };
        self.by_aggregate
            .entry(key.clone())
            .or_default()
            .push_back(ptr);
        self.by_id.insert(event_id, (ptr, key.clone()));
        self.order.push_back((ptr.position, event_id, key));
    }

    /// Drops everything at or below `indexed`: the index has it now, and
    /// its largest id is at least `max_id`.
    fn trim(&mut self, indexed: u64, max_id: Option<Uuid>) {
        self.index_max_id = self.index_max_id.max(max_id);
        self.from = self.from.max(indexed);
        while let Some((position, _, _)) = self.order.front() {
            if *position > indexed {
                break;
            }
            let (_, id, agg) = self.order.pop_front().expect("front exists");
            // What leaves the tail is in the index: its id must be looked
            // up there from now on.
            self.index_max_id = self.index_max_id.max(Some(id));
            self.by_id.remove(&id);
            if let Some(q) = self.by_aggregate.get_mut(&agg) {
                while q.front().is_some_and(|p| p.position <= indexed) {
                    q.pop_front();
                }
                if q.is_empty() {
                    self.by_aggregate.remove(&agg);
                }
            }
        }
    }

    fn latest_version(&self, aggregate_id: &str) -> Option<u64> {
        self.by_aggregate
            .get(aggregate_id)?
            .back()
            .map(|p| p.version)
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// How far the indexer has got, and whether it is stuck.
#[derive(Debug, Default)]
struct IndexProgress {
    state: Mutex<IndexState>,
    moved: Condvar,
}

#[derive(Debug, Default, Clone)]
struct IndexState {
    /// Every position up to this one is in the index.
    indexed: u64,
    /// Why the indexer stopped, when it did.
    stopped: Option<String>,
}

impl IndexProgress {
    fn set(&self, indexed: u64, stopped: Option<String>) {
        let mut st = lock(&self.state);
        st.indexed = st.indexed.max(indexed);
        st.stopped = stopped;
        self.moved.notify_all();
    }

    fn get(&self) -> IndexState {
        lock(&self.state).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections leave their data consistent before anything that
    // can panic, so the data behind a poisoned mutex is still valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Most aggregates whose latest version the writer remembers.
const VERSION_CACHE_MAX: usize = 100_000;

/// What the writer lock guards.
#[derive(Debug)]
struct Writer {
    log: LogWriter,
    /// Latest version of recently written aggregates. Authoritative: this
    /// writer is the only one, so an entry never goes stale.
    versions: FastMap<Box<str>, u64>,
}

impl Writer {
    fn remember_version(&mut self, aggregate_id: &str, version: u64) {
        if self.versions.len() >= VERSION_CACHE_MAX && !self.versions.contains_key(aggregate_id) {
            // Forgetting is always safe: the tail and the index know.
            self.versions.clear();
        }
        match self.versions.get_mut(aggregate_id) {
            Some(v) => *v = version,
            None => {
                self.versions.insert(aggregate_id.into(), version);
            }
        }
    }
}

/// What [`Store::append_batches`] will write, built batch by batch.
#[derive(Debug)]
struct Plan<'a> {
    /// Position of the next planned event.
    next_position: u64,
    records: Vec<PlannedRecord<'a>>,
    stamps: Vec<Timestamp>,
    /// Where each planned event is in `records`.
    new_ids: HashMap<Uuid, usize>,
    /// Versions the planned batches leave their aggregates at.
    versions: HashMap<&'a str, u64>,
    /// The largest position of an existing event some batch answered with:
    /// it must be durable before the answer goes out.
    existing_max: u64,
    /// Batches with new events planned so far (numbers their records).
    batches: usize,
}

impl Plan<'_> {
    fn new(next_position: u64) -> Self {
        Plan {
            next_position,
            records: Vec::new(),
            stamps: Vec::new(),
            new_ids: HashMap::new(),
            versions: HashMap::new(),
            existing_max: 0,
            batches: 0,
        }
    }
}

/// One planned event, borrowing its fields from the caller's batch.
#[derive(Debug)]
struct PlannedRecord<'a> {
    /// Which planned batch it belongs to: a batch is never split across
    /// frames.
    batch: usize,
    position: u64,
    event_id: Uuid,
    version: u64,
    /// Index into `Plan::stamps`.
    stamp: usize,
    aggregate_id: &'a str,
    event_type: &'a str,
    data: &'a [u8],
    metadata: Option<&'a [u8]>,
}

/// Packs units of `(records, bytes)` into log frames, whole units only, at
/// most `records_max` records and the format's payload per frame; returns
/// each frame's record count. A unit above those limits gets a frame of
/// its own (a batch within the store's limits always fits one:
/// `Limits::validate`).
fn pack_frames(units: &[(usize, usize)], records_max: usize) -> Vec<usize> {
    use crate::log::format::{BATCH_EVENTS_MAX, BATCH_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX};
    let payload_max = FRAME_PAYLOAD_BYTES_MAX as usize - BATCH_HEADER_BYTES;
    let records_max = records_max.min(BATCH_EVENTS_MAX as usize);
    let mut frames = Vec::new();
    let (mut records, mut bytes) = (0, 0);
    for &(n, b) in units {
        if records > 0 && (records + n > records_max || bytes + b > payload_max) {
            frames.push(records);
            (records, bytes) = (0, 0);
        }
        records += n;
        bytes += b;
    }
    if records > 0 {
        frames.push(records);
    }
    frames
}

/// The fields of an existing event (aggregate, type, payload, metadata)
/// that an attempt to append another event under its id changes.
fn differences(
    existing: (&str, &str, &[u8], Option<&[u8]>),
    aggregate_id: &str,
    attempt: &NewEvent,
) -> Vec<&'static str> {
    let (agg, event_type, data, metadata) = existing;
    let mut out = Vec::new();
    if agg != aggregate_id {
        out.push("aggregate_id");
    }
    if event_type != attempt.event_type {
        out.push("event_type");
    }
    if data != attempt.data.as_slice() {
        out.push("event_data");
    }
    if metadata != attempt.metadata.as_deref() {
        out.push("metadata");
    }
    out
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    options: Options,
    log: Log,
    hlc: Arc<Hlc>,
    index: Index,
    tail: Arc<RwLock<Tail>>,
    writer: Mutex<Option<Writer>>,
    progress: Arc<IndexProgress>,
    shutdown: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Cursors left where sequential readers (sync followers) stopped, so
    /// the next read continues without seeking. At most `CURSOR_CACHE_MAX`.
    cursors: Mutex<Vec<Cursor>>,
    /// Serialises [`Store::refresh`] of a read-only store.
    refresh: Mutex<()>,
    /// The committed log of a sync replica: only the server's events go
    /// in, through [`Store::append_replicated`] and
    /// [`Store::append_raw_records`]; plain appends are refused.
    replica_log: AtomicBool,
    /// The log's generation at open ([`crate::log::read_generation`]).
    generation: u64,
    report: RecoveryReport,
    _lock: Option<LockFile>,
}

/// An embedded event store. Cheap to clone; `Send + Sync`; any number of
/// threads may append and read at once. The store closes when the last
/// clone is dropped (or on [`Store::close`]).
///
/// ```
/// use strata::{ExpectedVersion, NewEvent, Options, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Options::default())?;
/// let committed = store.append(
///     "counter-1",
///     ExpectedVersion::NoStream,
///     vec![NewEvent::new("CounterIncremented", br#"{"value":1}"#.to_vec())],
/// )?;
/// assert_eq!((committed[0].position, committed[0].version), (1, 1));
///
/// let events = store.read_aggregate("counter-1", 1, 100)?;
/// assert_eq!(events[0].event_type, "CounterIncremented");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens the store in `dir`, creating it if allowed and missing, and
    /// recovers from a crash if needed (see [`RecoveryReport`]).
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            if options.read_only || !options.create_if_missing {
                return Err(Error::NotFound { path: dir });
            }
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                action: "creating the store directory",
                source,
            })?;
        }
        let lock_file = if options.read_only {
            None
        } else {
            Some(LockFile::acquire(&dir)?)
        };
        let (log, writer, report) = Log::open(
            &dir,
            LogConfig {
                vfs: options.vfs.clone(),
                segment_bytes_max: options.segment_bytes_max,
                durability: options.durability,
                read_only: options.read_only,
                create_if_missing: options.create_if_missing,
            },
        )
        .map_err(|e| match e {
            LogError::NotFound { .. } => Error::NotFound { path: dir.clone() },
            e => Error::Log(e),
        })?;
        let head = log.visible_position();
        let generation = crate::log::read_generation(&dir.join(crate::log::LOG_DIR))?;
        let node = match &options.node_id {
            Some(n) => NodeId::new(n).map_err(InvalidInput::from)?,
            None => default_node_id(log.store_id()),
        };
        let hlc = Arc::new(Hlc::new(
            node,
            options.clock.clone(),
            options.hlc_drift_ms_max,
        ));
        let progress = Arc::new(IndexProgress::default());
        let tail = Arc::new(RwLock::new(Tail::default()));
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();

        let index = if options.read_only {
            let (mut index, mut meta) = index::open_ro(&dir, log.store_id(), generation)?;
            let mut head = head;
            if meta.indexed_position > head {
                // Beside a writer the index may already hold positions past
                // the head this open read: read the log on once more before
                // calling the index stale.
                head = log.refresh()?;
            }
            if meta.indexed_position > head {
                // It claims positions the log no longer has (a repair cut
                // them): answer from the log alone.
                index = Index::absent(&dir);
                meta = index::IndexMeta::default();
            }
            // Events after the index's checkpoint are read from the log into
            // the in-memory tail; a read-only store never writes the index.
            let mut t = Tail {
                index_max_id: index.max_event_id()?,
                from: meta.indexed_position,
                head: meta.indexed_position,
                ..Tail::default()
            };
            let hlc_max = extend_tail(&log, &mut t, head)?.max(meta.hlc_max);
            *tail.write().unwrap_or_else(|e| e.into_inner()) = t;
            progress.set(meta.indexed_position, None);
            hlc.restore(hlc_max.0, hlc_max.1);
            index
        } else {
            let (index, iw, meta) = index::open_rw(&dir, log.store_id(), head, generation)?;
            tail.write().unwrap_or_else(|e| e.into_inner()).index_max_id = index.max_event_id()?;
            // Catch the index up before the store is handed out, so reads
            // and checks never face a large tail after a restart.
            let mut indexer = Indexer {
                log: log.clone(),
                writer: iw,
                tail: tail.clone(),
                progress: progress.clone(),
                shutdown: shutdown.clone(),
                batch_max: options.index_batch_events_max,
                indexed: meta.indexed_position,
                hlc_max: meta.hlc_max,
                cursor: log.cursor(meta.indexed_position + 1),
            };
            if head > indexer.indexed {
                tracing::info!(
                    from = indexer.indexed + 1,
                    to = head,
                    "catching up the index"
                );
            }
            while indexer.indexed < head {
                indexer.step(head).map_err(Error::from)?;
                if let Some(p) = &options.index_progress {
                    (p.0)(indexer.indexed, head);
                }
            }
            hlc.restore(indexer.hlc_max.0, indexer.hlc_max.1);
            progress.set(indexer.indexed, None);
            threads.push(
                std::thread::Builder::new()
                    .name("strata-indexer".into())
                    .spawn(move || indexer.run())
                    .map_err(|source| Error::Io {
                        path: dir.clone(),
                        action: "starting the indexer thread",
                        source,
                    })?,
            );
            index
        };

        if let Durability::Periodic(interval) = options.durability {
            let log = log.clone();
            let shutdown = shutdown.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("strata-flusher".into())
                    .spawn(move || {
                        let mut last_sync = std::time::Instant::now();
                        while !shutdown.load(Ordering::Acquire) {
                            // Wake often enough to notice shutdown; sync at
                            // the configured interval.
                            std::thread::park_timeout(
                                interval.saturating_sub(last_sync.elapsed()).min(IDLE_WAKE),
                            );
                            if last_sync.elapsed() < interval {
                                continue;
                            }
                            last_sync = std::time::Instant::now();
                            if let Err(e) = log.sync_now() {
                                tracing::error!(error = %e, "periodic sync failed");
                                return;
                            }
                        }
                    })
                    .map_err(|source| Error::Io {
                        path: dir.clone(),
                        action: "starting the flusher thread",
                        source,
                    })?,
            );
        }

        let replica_log = dir.join(REPLICA_LOG_FILE).exists();
        Ok(Store {
            inner: Arc::new(Inner {
                dir,
                options,
                log,
                hlc,
                index,
                tail,
                writer: Mutex::new(writer.map(|log| Writer {
                    log,
                    versions: FastMap::default(),
                })),
                progress,
                shutdown,
                threads: Mutex::new(threads),
                cursors: Mutex::new(Vec::new()),
                refresh: Mutex::new(()),
                replica_log: AtomicBool::new(replica_log),
                generation,
                report,
                _lock: lock_file,
            }),
        })
    }

    /// Opens an existing store read-only: no lock, no writes, works beside
    /// a running writer and on a copy of a crashed store.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store> {
        Store::open(dir, Options::read_only())
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    pub fn store_id(&self) -> Uuid {
        self.inner.log.store_id()
    }

    /// This store's clock (its node id is in every timestamp it makes).
    pub fn hlc(&self) -> &Hlc {
        &self.inner.hlc
    }

    /// This store's clock, shared (e.g. for SQL functions on views).
    pub fn hlc_handle(&self) -> Arc<Hlc> {
        self.inner.hlc.clone()
    }

    /// What opening the store found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The log's generation when this handle opened: how many repairs
    /// rewrote its history. Files derived from the log record it and
    /// rebuild when it moved ([`crate::log::read_generation`]).
    pub fn log_generation(&self) -> u64 {
        self.inner.generation
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.options.read_only
    }

    /// The last visible position: every event at or below it can be read
    /// (0 for an empty store). For a read-only store, the end of its view
    /// of the log, which [`Store::refresh`] moves.
    pub fn head(&self) -> u64 {
        let inner = &*self.inner;
        if inner.options.read_only {
            inner.tail.read().unwrap_or_else(|e| e.into_inner()).head
        } else {
            inner.log.visible_position()
        }
    }

    /// Brings a read-only store's view up to what its writer (in this or
    /// another process) has appended since it was opened or last
    /// refreshed, and returns the new head. Every read answers from one
    /// view: all events up to the head, whole batches only, never beyond
    /// it, whatever the writer does meanwhile; only this call moves it. A
    /// [`Store::subscribe`] of a read-only store calls it by itself while
    /// it waits. A read-write store is always current: this returns its
    /// head.
    pub fn refresh(&self) -> Result<u64> {
        let inner = &*self.inner;
        if !inner.options.read_only {
            return Ok(self.head());
        }
        let _serial = lock(&inner.refresh);
        let visible = inner.log.refresh()?;
        let after = self.head();
        // Read the new events outside the tail's lock, so readers carry on
        // meanwhile; only this call (under `refresh`) moves the head.
        let mut fresh = Tail {
            head: after,
            ..Tail::default()
        };
        let hlc_max = extend_tail(&inner.log, &mut fresh, visible)?;
        // Events the index has committed meanwhile leave the tail.
        let indexed = inner.index.meta()?.indexed_position;
        let mut tail = inner.tail.write().unwrap_or_else(|e| e.into_inner());
        for (position, id, agg) in &fresh.order {
            let ptr = fresh.by_id[id].0;
            debug_assert_eq!(ptr.position, *position);
            tail.insert(agg, *id, ptr);
        }
        tail.head = visible;
        tail.trim(indexed.min(visible), None);
        drop(tail);
        inner.hlc.restore(hlc_max.0, hlc_max.1);
        Ok(visible)
    }

    /// A read-only store whose index went back below its tail (the index
    /// was deleted and is being rebuilt by a writer): reads the log from
    /// `indexed` on into a fresh tail, so the tail and the index together
    /// cover the view again.
    fn refill_tail(&self, indexed: u64) -> Result<()> {
        let inner = &*self.inner;
        let _serial = lock(&inner.refresh);
        let head = self.head();
        let mut fresh = Tail {
            index_max_id: inner.index.max_event_id()?,
            from: indexed.min(head),
            head: indexed.min(head),
            ..Tail::default()
        };
        extend_tail(&inner.log, &mut fresh, head)?;
        tracing::warn!(
            indexed,
            head,
            "the index went back below this read-only store's tail (rebuilt by a writer?); reading the log instead"
        );
        *inner.tail.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Why writes are refused after a failed sync, if they are.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.log.poisoned()
    }

    /// Appends events to one aggregate atomically. See
    /// [`Store::append_batch`].
    pub fn append(
        &self,
        aggregate_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Committed>> {
        self.append_batch(&[AggregateEvents {
            aggregate_id: aggregate_id.to_owned(),
            expected,
            events,
        }])
    }

    /// Appends events to one or more aggregates as one atomic batch (S3):
    /// after a crash either all of them are in the log or none is. Groups
    /// are appended in order; an aggregate may have several groups (they
    /// follow each other, each checked against the version the one before
    /// left), so any interleaving of aggregates can be kept in the log.
    ///
    /// * An event whose `event_id` is already in the log is not written
    ///   again; its [`Committed`] says `existed` and carries the earlier
    ///   position (S6). When every event exists, expectations are not
    ///   checked, so a retry of a successful append succeeds.
    /// * Otherwise each aggregate's expectation is checked against its
    ///   current version; a stale one fails the whole batch with
    ///   [`Error::Conflict`] naming the current version, writing nothing.
    /// * In `Sync` durability this returns once the batch is on stable
    ///   storage (S2).
    ///
    /// ```
    /// use strata::{AggregateEvents, Error, ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// let debit = NewEvent::new("Debited", br#"{"amount":5}"#.to_vec());
    /// let debit_id = debit.event_id;
    /// let credit = NewEvent::new("Credited", br#"{"amount":5}"#.to_vec());
    /// // Both or neither, each aggregate checked against its version.
    /// let batch = [
    ///     AggregateEvents {
    ///         aggregate_id: "account-a".into(),
    ///         expected: ExpectedVersion::NoStream,
    ///         events: vec![debit.clone()],
    ///     },
    ///     AggregateEvents {
    ///         aggregate_id: "account-b".into(),
    ///         expected: ExpectedVersion::NoStream,
    ///         events: vec![credit],
    ///     },
    /// ];
    /// let committed = store.append_batch(&batch)?;
    /// assert_eq!(committed.len(), 2);
    /// // A retry writes nothing and answers with the first positions.
    /// let again = store.append_batch(&batch)?;
    /// assert!(again.iter().all(|c| c.existed));
    /// // A stale expectation fails, naming the current version.
    /// let stale = store.append("account-a", ExpectedVersion::NoStream, vec![
    ///     NewEvent::new("Debited", br#"{"amount":1}"#.to_vec()),
    /// ]);
    /// assert!(matches!(stale, Err(Error::Conflict { current: 1, .. })));
    /// assert_eq!(store.get(debit_id)?.unwrap().position, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_batch(&self, groups: &[AggregateEvents]) -> Result<Vec<Committed>> {
        self.append_batches(&[groups])?
            .pop()
            .expect("one result per batch")
    }

    /// Appends several independent batches in one write: each batch is all
    /// or nothing and is checked as [`Store::append_batch`] checks one,
    /// against the log as the batches before it in this call leave it; the
    /// batches that hold are written together and share one sync (S2). A
    /// server that gathers appends from many clients uses this to give them
    /// one `fdatasync` (group commit) and each its own answer.
    ///
    /// Returns one result per batch: its committed events, or why it was
    /// refused ([`Error::Conflict`], [`Error::EventIdReused`],
    /// [`Error::Invalid`]); nothing of a refused batch is written. A
    /// failure of the write itself fails the call: then no batch is
    /// acknowledged (those written before the failure may still become
    /// durable, and a retry finds them by id).
    ///
    /// ```
    /// use strata::{AggregateEvents, Error, ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// let push = |agg: &str, expected| AggregateEvents {
    ///     aggregate_id: agg.into(),
    ///     expected,
    ///     events: vec![NewEvent::new("T", b"{}".to_vec())],
    /// };
    /// let a = [push("a", ExpectedVersion::Exact(0))];
    /// let late = [push("a", ExpectedVersion::Exact(0))];
    /// let b = [push("b", ExpectedVersion::Exact(0))];
    /// let results = store.append_batches(&[&a, &late, &b])?;
    /// assert_eq!(results[0].as_ref().unwrap()[0].position, 1);
    /// assert!(matches!(results[1], Err(Error::Conflict { current: 1, .. })));
    /// assert_eq!(results[2].as_ref().unwrap()[0].position, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_batches(
        &self,
        batches: &[&[AggregateEvents]],
    ) -> Result<Vec<Result<Vec<Committed>>>> {
        let inner = &*self.inner;
        if inner.replica_log.load(Ordering::Relaxed) {
            return Err(Error::ReplicaLog {
                path: inner.dir.clone(),
            });
        }
        let limits = &inner.options.limits;
        // Input checks, outside any lock: a batch that fails them is
        // refused and the others go on.
        let mut results: Vec<Option<Result<Vec<Committed>>>> = batches
            .iter()
            .map(|b| check_batch(limits, b).err().map(|e| Err(e.into())))
            .collect();

        let in_flight = inner.log.begin_append();
        let mut guard = lock(&inner.writer);
        if guard.is_none() {
            return Err(if inner.options.read_only {
                Error::ReadOnly
            } else {
                Error::Closed
            });
        }
        self.wait_for_tail_room()?;
        let writer = guard.as_mut().expect("checked above");

        let ids: Vec<Uuid> = batches
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .flat_map(|(b, _)| b.iter().flat_map(|g| g.events.iter().map(|e| e.event_id)))
            .collect();
        let existing = self.find_existing(&ids)?;
        let mut plan = Plan::new(writer.log.next_position());
        for (batch, result) in batches.iter().zip(results.iter_mut()) {
            if result.is_none() {
                *result = Some(self.plan_batch(writer, batch, &existing, &mut plan));
            }
        }
        let results: Vec<Result<Vec<Committed>>> = results
            .into_iter()
            .map(|r| r.expect("every batch planned"))
            .collect();

        if !plan.records.is_empty() {
            self.write_planned(writer, &plan)?;
        }
        drop(in_flight);
        drop(guard);
        let last_written = plan.next_position - 1;
        inner
            .log
            .wait_durable(plan.existing_max.max(last_written))?;
        Ok(results)
    }

    /// Plans one batch of [`Store::append_batches`] on top of `plan`
    /// (writer lock held): finds which events exist already (and that they
    /// are the same events), checks expectations against the versions the
    /// log and the earlier batches leave, and assigns versions, positions
    /// and timestamps. On refusal `plan` is left as it was.
    fn plan_batch<'a>(
        &self,
        writer: &Writer,
        groups: &'a [AggregateEvents],
        existing: &HashMap<Uuid, (Pointer, Arc<str>)>,
        plan: &mut Plan<'a>,
    ) -> Result<Vec<Committed>> {
        let inner = &*self.inner;
        // Events already in the log (or earlier in this call) are the same
        // event only with the same aggregate, type, payload and metadata.
        let mut found: HashMap<Uuid, (u64, u64)> = HashMap::new();
        for g in groups {
            for e in &g.events {
                let held = match plan.new_ids.get(&e.event_id) {
                    Some(&i) => {
                        let r = &plan.records[i];
                        let differs = differences(
                            (r.aggregate_id, r.event_type, r.data, r.metadata),
                            &g.aggregate_id,
                            e,
                        );
                        Some((r.position, r.version, r.aggregate_id.to_owned(), differs))
                    }
                    None => match existing.get(&e.event_id) {
                        Some((ptr, _)) => {
                            Some(self.compare_existing(writer, ptr, &g.aggregate_id, e)?)
                        }
                        None => None,
                    },
                };
                if let Some((position, version, existing_aggregate, differs)) = held {
                    if !differs.is_empty() {
                        return Err(Error::EventIdReused {
                            event_id: e.event_id,
                            position,
                            existing_aggregate,
                            differs,
                        });
                    }
                    found.insert(e.event_id, (position, version));
                }
            }
        }
        let total: usize = groups.iter().map(|g| g.events.len()).sum();
        if found.len() == total {
            // A retry of a batch that went through: nothing to check.
            let mut committed = Vec::with_capacity(total);
            for g in groups {
                for e in &g.events {
                    let (position, version) = found[&e.event_id];
                    plan.existing_max = plan.existing_max.max(position);
                    committed.push(Committed {
                        event_id: e.event_id,
                        position,
                        version,
                        existed: true,
                    });
                }
            }
            return Ok(committed);
        }

        // Versions and timestamps for the new events, on a copy of the
        // plan's versions: a refusal leaves the plan untouched.
        let mut versions: HashMap<&str, u64> = HashMap::with_capacity(groups.len());
        let mut staged: Vec<(usize, usize, u64, Timestamp)> = Vec::with_capacity(total);
        for (gi, g) in groups.iter().enumerate() {
            let new: Vec<usize> = (0..g.events.len())
                .filter(|&i| !found.contains_key(&g.events[i].event_id))
                .collect();
            if new.is_empty() {
                continue;
            }
            // A later group of an aggregate already in this batch (or in
            // an earlier batch of this call) follows it.
            let current = match versions
                .get(g.aggregate_id.as_str())
                .or_else(|| plan.versions.get(g.aggregate_id.as_str()))
            {
                Some(v) => *v,
                None => self.current_version(writer, &g.aggregate_id)?,
            };
            if !g.expected.admits(current) {
                return Err(Error::Conflict {
                    aggregate_id: g.aggregate_id.clone(),
                    expected: g.expected,
                    current,
                });
            }
            let mut v = current;
            for ei in new {
                let e = &g.events[ei];
                v += 1;
                let stamp = match &e.timestamp {
                    Some(ts) => {
                        inner
                            .hlc
                            .observe(ts)
                            .map_err(|source| InvalidInput::EventTimestamp {
                                event_id: e.event_id,
                                source,
                            })?;
                        ts.clone()
                    }
                    None => inner.hlc.now().map_err(InvalidInput::Timestamp)?,
                };
                staged.push((gi, ei, v, stamp));
            }
            versions.insert(g.aggregate_id.as_str(), v);
        }

        // Accepted: move the staged events into the plan.
        let first_stamp = plan.stamps.len();
        plan.stamps
            .extend(staged.iter().map(|(_, _, _, ts)| ts.clone()));
        let mut new_at: HashMap<Uuid, (u64, u64)> = HashMap::with_capacity(staged.len());
        for (k, (gi, ei, v, _)) in staged.iter().enumerate() {
            let g = &groups[*gi];
            let e = &g.events[*ei];
            let position = plan.next_position;
            plan.next_position += 1;
            plan.new_ids.insert(e.event_id, plan.records.len());
            new_at.insert(e.event_id, (position, *v));
            plan.records.push(PlannedRecord {
                batch: plan.batches,
                position,
                event_id: e.event_id,
                version: *v,
                stamp: first_stamp + k,
                aggregate_id: &g.aggregate_id,
                event_type: &e.event_type,
                data: &e.data,
                metadata: e.metadata.as_deref(),
            });
        }
        for (agg, v) in versions {
            plan.versions.insert(agg, v);
        }
        plan.batches += 1;
        let mut committed = Vec::with_capacity(total);
        for g in groups {
            for e in &g.events {
                let (position, version, existed) = match new_at.get(&e.event_id) {
                    Some(&(p, v)) => (p, v, false),
                    None => {
                        let (p, v) = found[&e.event_id];
                        plan.existing_max = plan.existing_max.max(p);
                        (p, v, true)
                    }
                };
                committed.push(Committed {
                    event_id: e.event_id,
                    position,
                    version,
                    existed,
                });
            }
        }
        Ok(committed)
    }

    /// Reads an event that exists by id (writer lock held, so it may be
    /// written but not yet synced) and says how `attempt` differs from it.
    fn compare_existing(
        &self,
        writer: &Writer,
        ptr: &Pointer,
        aggregate_id: &str,
        attempt: &NewEvent,
    ) -> Result<(u64, u64, String, Vec<&'static str>)> {
        let _ = writer;
        let log = &self.inner.log;
        let (agg, differs) =
            log.read_written_record(ptr.segment, ptr.offset, ptr.position, |r| {
                (
                    r.aggregate_id.to_owned(),
                    differences(
                        (r.aggregate_id, r.event_type, r.data, r.metadata),
                        aggregate_id,
                        attempt,
                    ),
                )
            })?;
        Ok((ptr.position, ptr.version, agg, differs))
    }

    /// Writes the planned records (writer lock held), in as few frames as
    /// the format allows, never splitting a batch (each batch is atomic
    /// because it lies in one frame), and records them in the tail.
    fn write_planned(&self, writer: &mut Writer, plan: &Plan<'_>) -> Result<()> {
        let inner = &*self.inner;
        let fields: Vec<RecordFields<'_>> = plan
            .records
            .iter()
            .map(|r| {
                let ts = &plan.stamps[r.stamp];
                RecordFields {
                    position: r.position,
                    event_id: r.event_id,
                    version: r.version,
                    hlc_physical_ms: ts.physical_ms(),
                    hlc_counter: ts.counter(),
                    hlc_node: ts.node().as_str(),
                    aggregate_id: r.aggregate_id,
                    event_type: r.event_type,
                    data: r.data,
                    metadata: r.metadata,
                }
            })
            .collect();
        // One unit per batch: its records and their bytes.
        let mut units: Vec<(usize, usize)> = Vec::new();
        let mut unit_batch = None;
        for (r, f) in plan.records.iter().zip(&fields) {
            if unit_batch == Some(r.batch) {
                let u = units.last_mut().expect("a unit for this batch");
                u.0 += 1;
                u.1 += f.encoded_len();
            } else {
                unit_batch = Some(r.batch);
                units.push((1, f.encoded_len()));
            }
        }
        let mut rest = &fields[..];
        for records in pack_frames(&units, crate::log::format::BATCH_EVENTS_MAX as usize) {
            let (chunk, after) = rest.split_at(records);
            rest = after;
            let appended = writer.log.append(&inner.log, chunk)?;
            debug_assert_eq!(appended.first_position, chunk[0].position);
            debug_assert_eq!(appended.last_position, chunk[records - 1].position);
            self.record_tail(writer, chunk, &appended);
        }
        debug_assert!(rest.is_empty());
        Ok(())
    }

    /// Waits (writer lock held, so every writer waits) while the indexer is
    /// more than `tail_events_max` events behind.
    fn wait_for_tail_room(&self) -> Result<()> {
        let inner = &*self.inner;
        loop {
            let len = inner.tail.read().unwrap_or_else(|e| e.into_inner()).len();
            if len <= inner.options.tail_events_max {
                return Ok(());
            }
            let st = lock(&inner.progress.state);
            if let Some(reason) = &st.stopped {
                return Err(IndexError::Stopped {
                    reason: reason.clone(),
                }
                .into());
            }
            let _ = inner.progress.moved.wait_timeout(st, IDLE_WAKE);
        }
    }

    /// Event ids of `ids` already in the log, with where they are.
    fn find_existing(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, (Pointer, Arc<str>)>> {
        let inner = &*self.inner;
        for attempt in 0.. {
            let mut found = HashMap::new();
            let mut ask_index = Vec::new();
            let tail_from = {
                let tail = inner.tail.read().unwrap_or_else(|e| e.into_inner());
                for id in ids {
                    match tail.by_id.get(id) {
                        Some(hit) => {
                            found.insert(*id, hit.clone());
                        }
                        None if tail.index_max_id.is_some_and(|max| *id <= max) => {
                            ask_index.push(*id)
                        }
                        None => {}
                    }
                }
                tail.from
            };
            // Ask the index second: anything trimmed from the tail meanwhile
            // was committed to the index (and counted in its largest id)
            // first.
            if !inner.options.read_only {
                for (id, (ptr, agg)) in inner.index.lookup_ids(&ask_index)? {
                    found.insert(id, (ptr, Arc::from(agg)));
                }
                return Ok(found);
            }
            if ask_index.is_empty() {
                return Ok(found);
            }
            let (hits, indexed) = inner.index.snapshot(|r, _| r.lookup_ids(&ask_index))?;
            if indexed < tail_from {
                self.index_went_back(indexed, attempt)?;
                continue;
            }
            let head = self.head();
            for (id, (ptr, agg)) in hits {
                if ptr.position <= head {
                    found.insert(id, (ptr, Arc::from(agg)));
                }
            }
            return Ok(found);
        }
        unreachable!("the loop returns")
    }

    /// A read-only store's index answered from a state older than its
    /// tail: refill the tail from there (the first time) or from the start
    /// of the log (if it happens again), so the next attempt is complete.
    fn index_went_back(&self, indexed: u64, attempt: u32) -> Result<()> {
        self.refill_tail(if attempt == 0 { indexed } else { 0 })
    }

    /// The aggregate's latest version including unsynced appends (writer
    /// lock held).
    fn current_version(&self, writer: &Writer, aggregate_id: &str) -> Result<u64> {
        if let Some(v) = writer.versions.get(aggregate_id) {
            return Ok(*v);
        }
        let inner = &*self.inner;
        if let Some(v) = inner
            .tail
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .latest_version(aggregate_id)
        {
            return Ok(v);
        }
        Ok(inner.index.max_version(aggregate_id)?)
    }

    /// The aggregate's latest visible version (0 when it has no events).
    pub fn aggregate_version(&self, aggregate_id: &str) -> Result<u64> {
        Ok(self
            .read_aggregate_backward(aggregate_id, 1)?
            .first()
            .map_or(0, |e| e.version))
    }

    /// Up to `limit` events of an aggregate from `from_version` on, oldest
    /// first.
    pub fn read_aggregate(
        &self,
        aggregate_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let ptrs = self.aggregate_pointers(aggregate_id, from_version, false, limit)?;
        self.read_pointers(&ptrs)
    }

    /// The latest `limit` events of an aggregate, newest first.
    pub fn read_aggregate_backward(&self, aggregate_id: &str, limit: usize) -> Result<Vec<Event>> {
        let ptrs = self.aggregate_pointers(aggregate_id, 0, true, limit)?;
        self.read_pointers(&ptrs)
    }

    fn aggregate_pointers(
        &self,
        aggregate_id: &str,
        from_version: u64,
        backward: bool,
        limit: usize,
    ) -> Result<Vec<Pointer>> {
        let inner = &*self.inner;
        let mut attempt = 0;
        let (mut by_version, indexed) = loop {
            // Tail first, then index: see `find_existing`.
            let (by_version, tail_from, upto) = {
                let tail = inner.tail.read().unwrap_or_else(|e| e.into_inner());
                let upto = if inner.options.read_only {
                    tail.head
                } else {
                    inner.log.visible_position()
                };
                let by_version: BTreeMap<u64, Pointer> = tail
                    .by_aggregate
                    .get(aggregate_id)
                    .map(|q| {
                        q.iter()
                            .filter(|p| p.position <= upto && p.version >= from_version)
                            .map(|p| (p.version, *p))
                            .collect()
                    })
                    .unwrap_or_default();
                (by_version, tail.from, upto)
            };
            if !inner.options.read_only {
                let indexed = inner.index.aggregate_pointers(
                    aggregate_id,
                    from_version,
                    backward,
                    limit,
                    upto,
                )?;
                break (by_version, indexed);
            }
            // A read-only store's index is written by another handle: read
            // it in one snapshot, and check that snapshot reaches the tail.
            let (indexed, checkpoint) = inner.index.snapshot(|r, _| {
                r.aggregate_pointers(aggregate_id, from_version, backward, limit, upto)
            })?;
            if checkpoint < tail_from {
                self.index_went_back(checkpoint, attempt)?;
                attempt += 1;
                continue;
            }
            break (by_version, indexed);
        };
        if by_version.is_empty() {
            // Nothing for this aggregate waits for the indexer: the index's
            // answer is the whole answer, already in order.
            return Ok(indexed);
        }
        for p in indexed {
            by_version.entry(p.version).or_insert(p);
        }
        let ptrs: Vec<Pointer> = if backward {
            by_version.into_values().rev().take(limit).collect()
        } else {
            by_version.into_values().take(limit).collect()
        };
        Ok(ptrs)
    }

    #[cfg(feature = "bench")]
    pub(crate) fn aggregate_pointers_for_bench(&self, aggregate_id: &str) -> Result<Vec<Pointer>> {
        self.aggregate_pointers(aggregate_id, 0, false, usize::MAX)
    }

    fn read_pointers(&self, ptrs: &[Pointer]) -> Result<Vec<Event>> {
        let log = &self.inner.log;
        let mut events = Vec::with_capacity(ptrs.len());
        // Events of one aggregate mostly come from few nodes: share the
        // node id between them instead of allocating one per event.
        let mut node: Option<NodeId> = None;
        let mut failed = None;
        log.read_records(
            ptrs.iter().map(|p| (p.segment, p.offset, p.position)),
            |r| {
                if failed.is_some() {
                    return;
                }
                match EventRef::from(r).to_event_sharing_node(&mut node) {
                    Ok(e) => events.push(e),
                    Err(err) => failed = Some((r.position, err)),
                }
            },
        )?;
        if let Some((position, err)) = failed {
            let p = ptrs
                .iter()
                .find(|p| p.position == position)
                .expect("read from ptrs");
            return Err(corrupt_hlc(log, p, err));
        }
        Ok(events)
    }

    /// The event with this id, if it is visible.
    pub fn get(&self, event_id: Uuid) -> Result<Option<Event>> {
        let found = self.find_existing(&[event_id])?;
        match found.get(&event_id) {
            Some((p, _)) if p.position <= self.head() => Ok(self.read_pointers(&[*p])?.pop()),
            _ => Ok(None),
        }
    }

    /// A cursor at `from`: a cached one that stopped there, or a new one.
    fn take_cursor(&self, from: u64) -> Cursor {
        let mut cache = lock(&self.inner.cursors);
        match cache.iter().position(|c| c.next_position() == from) {
            Some(i) => cache.swap_remove(i),
            None => self.inner.log.cursor(from),
        }
    }

    fn put_cursor(&self, cursor: Cursor) {
        let mut cache = lock(&self.inner.cursors);
        if cache.len() >= CURSOR_CACHE_MAX {
            cache.remove(0);
        }
        cache.push(cursor);
    }

    /// Up to `max_events` events (and about `max_bytes`) from `from` on,
    /// for sequential readers such as sync followers: a read that starts
    /// where an earlier one stopped continues without seeking.
    pub fn read_events(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        let log = &self.inner.log;
        let upto = self.head();
        let mut cursor = self.take_cursor(from.max(1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut node = None;
        // Whole batches only: the cursor has passed a batch once it hands
        // it out, so the limits are checked between batches.
        while out.len() < max_events && bytes < max_bytes {
            let Some(view) = cursor.next_batch(upto)? else {
                break;
            };
            for r in view.records() {
                let (offset, rec) =
                    r.map_err(|e| corrupt_at(log, view.segment_first, view.frame_offset, e))?;
                let e = EventRef::from(rec)
                    .to_event_sharing_node(&mut node)
                    .map_err(|e| {
                        let at = Pointer {
                            position: rec.position,
                            version: rec.version,
                            segment: view.segment_first,
                            offset,
                        };
                        corrupt_hlc(log, &at, e)
                    })?;
                bytes += rec.encoded_len;
                out.push(e);
            }
        }
        self.put_cursor(cursor);
        Ok(out)
    }

    /// Log records from `from` on as the log stores them, for bulk
    /// catch-up without decoding: `(first_position, count, records)`, at
    /// most about `max_bytes` (always at least one record). `None` when
    /// there is nothing at or after `from` yet.
    pub fn read_raw_records(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Option<(u64, u32, Vec<u8>)>> {
        let log = &self.inner.log;
        let upto = self.head();
        let from = from.max(1);
        let mut cursor = self.take_cursor(from);
        let mut records = Vec::new();
        let mut count = 0u32;
        while records.len() < max_bytes && count < crate::log::format::BATCH_EVENTS_MAX / 2 {
            let Some(view) = cursor.next_batch(upto)? else {
                break;
            };
            // A seek can land inside a batch: start at the first record
            // at or after `from`.
            let mut start = 0usize;
            if view.batch.first_position < from {
                for r in view.batch.iter() {
                    let (offset, rec) =
                        r.map_err(|e| corrupt_at(log, view.segment_first, view.frame_offset, e))?;
                    if rec.position >= from {
                        start = offset;
                        break;
                    }
                }
            }
            let skipped = from.saturating_sub(view.batch.first_position) as u32;
            records.extend_from_slice(&view.batch.records[start..]);
            count += view.batch.event_count - skipped.min(view.batch.event_count);
        }
        self.put_cursor(cursor);
        Ok((count > 0).then_some((from, count, records)))
    }

    /// From now on plain appends are refused, by this handle and by every
    /// later open: this store is a replica's committed log. The mark is the
    /// store's own file ([`REPLICA_LOG_FILE`]), written durably, so that
    /// the store needs to know nothing of the layer that made it a replica.
    pub(crate) fn mark_replica_log(&self) -> Result<()> {
        let inner = &*self.inner;
        let path = inner.dir.join(REPLICA_LOG_FILE);
        if !path.exists() && !inner.options.read_only {
            let io = |action| {
                let path = path.clone();
                move |source| Error::Io {
                    path,
                    action,
                    source,
                }
            };
            std::fs::write(&path, b"this store is a sync replica's committed log\n")
                .map_err(io("marking the store as a replica's log"))?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io("syncing the replica mark"))?;
            std::fs::File::open(&inner.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing the store directory"))?;
        }
        inner.replica_log.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Appends a server's events exactly as the server's log holds them
    /// (a replica following its server): the first must be at this store's
    /// next position and the rest follow without gaps, each at the next
    /// version of its aggregate, within this store's limits and with ids it
    /// does not hold yet (see [`Store::check_copied`]). Ids, versions and
    /// timestamps are kept; a timestamp beyond the drift limit is not
    /// refused (the server's log is canonical) but moves this store's clock.
    pub fn append_replicated(&self, events: &[Event]) -> Result<()> {
        let inner = &*self.inner;
        let Some(first) = events.first() else {
            return Ok(());
        };
        let mut guard = lock(&inner.writer);
        let writer = guard.as_mut().ok_or(if inner.options.read_only {
            Error::ReadOnly
        } else {
            Error::Closed
        })?;
        let invalid = |reason: String| {
            diverged(format!(
                "events from the server at position {}: {reason}",
                first.position
            ))
        };
        let fields: Vec<RecordFields<'_>> = events.iter().map(|e| e.as_ref().into()).collect();
        // The whole run is checked before any of it is written.
        self.check_copied(writer, &fields).map_err(invalid)?;
        for f in &fields {
            inner.hlc.restore(f.hlc_physical_ms, f.hlc_counter);
        }
        // Frames of at most the store's batch size (each event is a unit: a
        // copy of the server's log may break anywhere).
        let units: Vec<(usize, usize)> = fields.iter().map(|f| (1, f.encoded_len())).collect();
        let mut last = 0;
        let mut rest = &fields[..];
        for records in pack_frames(&units, inner.options.limits.batch_events_max) {
            let (chunk, after) = rest.split_at(records);
            rest = after;
            let appended = writer.log.append(&inner.log, chunk)?;
            self.record_tail(writer, chunk, &appended);
            last = appended.last_position;
        }
        drop(guard);
        inner.log.wait_durable(last)?;
        Ok(())
    }

    /// Checks records copied from a server's log before they are appended
    /// (writer lock held): positions from this log's next one without
    /// gaps, each version right after its aggregate's, every field within
    /// this store's limits, a valid timestamp, and an event id this store
    /// does not hold and the run does not repeat. A server that sends
    /// anything else is broken or hostile, and what it sent must not reach
    /// the log, where it would stop the index or a later read.
    fn check_copied(
        &self,
        writer: &Writer,
        fields: &[RecordFields<'_>],
    ) -> std::result::Result<(), String> {
        let limits = &self.inner.options.limits;
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut ids = HashSet::with_capacity(fields.len());
        let mut expected = Some(writer.log.next_position());
        for f in fields {
            let at = |reason: String| format!("position {}: {reason}", f.position);
            if expected != Some(f.position) {
                return Err(match expected {
                    Some(next) => at(format!("this replica's next position is {next}")),
                    None => at("positions run past the largest one".into()),
                });
            }
            expected = f.position.checked_add(1);
            limits
                .check_aggregate_id(f.aggregate_id)
                .and_then(|()| limits.check_event_fields(f.event_type, f.data, f.metadata))
                .map_err(|e| at(e.to_string()))?;
            if f.hlc_physical_ms > crate::hlc::PHYSICAL_MS_MAX {
                let e = crate::hlc::HlcError::PhysicalTooLarge {
                    physical_ms: f.hlc_physical_ms,
                };
                return Err(at(e.to_string()));
            }
            crate::hlc::validate_node(f.hlc_node).map_err(|e| at(e.to_string()))?;
            let current = match versions.get(f.aggregate_id) {
                Some(v) => *v,
                None => self
                    .current_version(writer, f.aggregate_id)
                    .map_err(|e| at(e.to_string()))?,
            };
            if current.checked_add(1) != Some(f.version) {
                return Err(at(format!(
                    "version {} of {:?} does not follow {current}",
                    f.version, f.aggregate_id
                )));
            }
            versions.insert(f.aggregate_id, f.version);
            if !ids.insert(f.event_id) {
                return Err(at(format!("event {} appears twice", f.event_id)));
            }
        }
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let held = self.find_existing(&ids).map_err(|e| e.to_string())?;
        if let Some(f) = fields.iter().find(|f| held.contains_key(&f.event_id)) {
            let (ptr, _) = &held[&f.event_id];
            return Err(format!(
                "position {}: event {} is already held at position {}",
                f.position, f.event_id, ptr.position
            ));
        }
        Ok(())
    }

    /// Appends raw records from a server's log (see
    /// [`Store::read_raw_records`]), checking each record's CRC and
    /// [`Store::check_copied`] before framing them unchanged.
    pub fn append_raw_records(
        &self,
        first_position: u64,
        count: u32,
        records: &[u8],
    ) -> Result<()> {
        use crate::log::format::{self, BatchRef};
        let inner = &*self.inner;
        if count == 0 {
            return Ok(());
        }
        let invalid = |reason: String| {
            diverged(format!(
                "records from the server at position {first_position}: {reason}"
            ))
        };
        let mut payload = Vec::with_capacity(format::BATCH_HEADER_BYTES + records.len());
        format::encode_batch_header(
            &mut payload,
            first_position,
            count.min(format::BATCH_EVENTS_MAX),
        );
        payload.extend_from_slice(records);
        if count > format::BATCH_EVENTS_MAX
            || payload.len() > format::FRAME_PAYLOAD_BYTES_MAX as usize
        {
            return Err(invalid("too many records for one batch".into()));
        }
        let batch = BatchRef::parse(&payload).map_err(|e| invalid(e.to_string()))?;
        batch.validate().map_err(|e| invalid(e.to_string()))?;
        let mut fields = Vec::with_capacity(count as usize);
        for r in batch.iter() {
            let (offset, rec) = r.map_err(|e| invalid(e.to_string()))?;
            format::decode_record(&records[offset..], true).map_err(|e| invalid(e.to_string()))?;
            fields.push(RecordFields::from(EventRef::from(rec)));
        }
        let mut guard = lock(&inner.writer);
        let writer = guard.as_mut().ok_or(if inner.options.read_only {
            Error::ReadOnly
        } else {
            Error::Closed
        })?;
        self.check_copied(writer, &fields).map_err(invalid)?;
        for f in &fields {
            inner.hlc.restore(f.hlc_physical_ms, f.hlc_counter);
        }
        let appended = writer
            .log
            .append_raw(&inner.log, first_position, count, records)?;
        self.record_tail(writer, &fields, &appended);
        drop(guard);
        inner.log.wait_durable(appended.last_position)?;
        Ok(())
    }

    /// Records freshly written events in the tail and the version cache.
    fn record_tail(
        &self,
        writer: &mut Writer,
        fields: &[RecordFields<'_>],
        appended: &crate::log::Appended,
    ) {
        let mut tail = self.inner.tail.write().unwrap_or_else(|e| e.into_inner());
        for (i, f) in fields.iter().enumerate() {
            tail.insert(
                f.aggregate_id,
                f.event_id,
                Pointer {
                    position: appended.first_position + i as u64,
                    version: f.version,
                    segment: appended.segment_first,
                    offset: appended.record_offsets[i],
                },
            );
        }
        drop(tail);
        for f in fields {
            writer.remember_version(f.aggregate_id, f.version);
        }
    }

    /// Every event from `from_position` up to the head at the time of the
    /// call, in position order, one batch in memory at a time.
    ///
    /// ```
    /// use strata::{ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// for agg in ["a", "b", "a"] {
    ///     store.append(agg, ExpectedVersion::Any, vec![NewEvent::new("T", b"{}".to_vec())])?;
    /// }
    /// let from_2: Vec<(u64, String)> = store
    ///     .read_all(2)
    ///     .map(|e| e.map(|e| (e.position, e.aggregate_id)))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(from_2, [(2, "b".to_owned()), (3, "a".to_owned())]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_all(&self, from_position: u64) -> ReadAll {
        ReadAll {
            cursor: self.inner.log.cursor(from_position),
            upto: self.head(),
            pending: VecDeque::new(),
            failed: false,
        }
    }

    /// Calls `f` for every event from `from_position` up to `upto` (or the
    /// head) without copying: events borrow from the log's memory maps.
    /// Returns how many events `f` saw.
    pub fn scan(
        &self,
        from_position: u64,
        upto: Option<u64>,
        mut f: impl FnMut(EventRef<'_>) -> ControlFlow<()>,
    ) -> Result<u64> {
        let log = &self.inner.log;
        let upto = upto.unwrap_or(u64::MAX).min(self.head());
        let mut cursor = log.cursor(from_position);
        let mut seen = 0;
        while let Some(view) = cursor.next_batch(upto)? {
            for r in view.records() {
                let (_, rec) =
                    r.map_err(|e| corrupt_at(log, view.segment_first, view.frame_offset, e))?;
                if rec.position > upto {
                    return Ok(seen);
                }
                seen += 1;
                if f(EventRef::from(rec)).is_break() {
                    return Ok(seen);
                }
            }
        }
        Ok(seen)
    }

    /// Every event from `from_position` on: first those already there, then
    /// new ones as they become visible. Never skips an event; blocks in
    /// `next` while caught up; ends when the store closes.
    ///
    /// ```
    /// use strata::{ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// store.append("a", ExpectedVersion::Any, vec![NewEvent::new("T", b"{}".to_vec())])?;
    /// let mut events = store.subscribe(1);
    /// let writer = {
    ///     let store = store.clone();
    ///     std::thread::spawn(move || {
    ///         store.append("b", ExpectedVersion::Any, vec![NewEvent::new("T", b"{}".to_vec())])
    ///     })
    /// };
    /// // Catch-up, then live: the event appended by the other thread.
    /// assert_eq!(events.next().unwrap()?.position, 1);
    /// assert_eq!(events.next().unwrap()?.aggregate_id, "b");
    /// writer.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self, from_position: u64) -> Subscription {
        Subscription {
            log: self.inner.log.clone(),
            cursor: self.inner.log.cursor(from_position),
            pending: VecDeque::new(),
            follow: self
                .inner
                .options
                .read_only
                .then(|| Arc::downgrade(&self.inner)),
        }
    }

    /// Waits until the index holds every event visible now. Fails if the
    /// indexer is stuck.
    pub fn flush_index(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.options.read_only {
            return Ok(());
        }
        let target = self.head();
        let mut st = lock(&inner.progress.state);
        loop {
            if st.indexed >= target {
                return Ok(());
            }
            if let Some(reason) = &st.stopped {
                return Err(IndexError::Stopped {
                    reason: reason.clone(),
                }
                .into());
            }
            st = inner
                .progress
                .moved
                .wait_timeout(st, IDLE_WAKE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The index's checkpoint: the last position written to SQLite.
    pub fn indexed_position(&self) -> u64 {
        self.inner.progress.get().indexed
    }

    /// Whether `index.sqlite` exists. A read-only store without it
    /// answers reads from the log alone; a read-write open rebuilds it.
    pub fn index_present(&self) -> bool {
        self.inner.index.is_present()
    }

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
            log: &inner.log,
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
        inner.index.snapshot(|r, indexed| {
            log_rows.upto = indexed.min(head);
            r.for_each_row(|row| {
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
            })
        })?;
        if let Some(e) = failure {
            return Err(e);
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

    /// The underlying log, for inspection tools.
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// Flushes and closes this handle's store: syncs the log, lets the
    /// indexer finish, releases the lock. Other clones of this handle fail
    /// with [`Error::Closed`] afterwards.
    pub fn close(self) -> Result<()> {
        self.inner.shutdown()
    }
}

impl Inner {
    fn shutdown(&self) -> Result<()> {
        let result = match lock(&self.writer).take() {
            Some(mut w) => w.log.close(&self.log).map_err(Error::from),
            None => Ok(()),
        };
        self.shutdown.store(true, Ordering::Release);
        // Release every waiter for good before joining: the indexer waits in
        // `wait_beyond`, which a plain wake-up would send back to sleep.
        self.log.close_waiters();
        for t in lock(&self.threads).drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "closing the store");
        }
    }
}

/// Reads the log's events in `(tail.head, upto]` into a read-only store's
/// tail and moves its head to `upto`. Returns the largest HLC (physical,
/// counter) among them.
fn extend_tail(log: &Log, tail: &mut Tail, upto: u64) -> Result<(u64, u32)> {
    let mut hlc_max = (0, 0);
    let mut cursor = log.cursor(tail.head + 1);
    while let Some(view) = cursor.next_batch(upto)? {
        for r in view.records() {
            let (offset, rec) =
                r.map_err(|e| corrupt_at(log, view.segment_first, view.frame_offset, e))?;
            hlc_max = hlc_max.max((rec.hlc_physical_ms, rec.hlc_counter));
            tail.insert(
                rec.aggregate_id,
                rec.event_id,
                Pointer {
                    position: rec.position,
                    version: rec.version,
                    segment: view.segment_first,
                    offset,
                },
            );
        }
    }
    tail.head = tail.head.max(upto);
    Ok(hlc_max)
}

fn diverged(reason: String) -> Error {
    Error::Replica { reason }
}

fn default_node_id(store_id: Uuid) -> NodeId {
    let b = store_id.as_bytes();
    // The low 8 bytes of a UUIDv7 are random.
    let tail = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    NodeId::new(&format!("{tail:016x}")).expect("hex is a valid node id")
}

fn corrupt_at(log: &Log, segment_first: u64, offset: u64, e: crate::log::FormatError) -> Error {
    Error::Log(LogError::Corrupt {
        path: log
            .dir()
            .join(crate::log::segment::segment_file_name(segment_first)),
        offset,
        source: e,
    })
}

fn corrupt_hlc(log: &Log, p: &Pointer, e: crate::hlc::HlcError) -> Error {
    Error::Log(LogError::Inconsistent {
        path: log
            .dir()
            .join(crate::log::segment::segment_file_name(p.segment)),
        offset: p.offset,
        reason: format!("record holds an invalid timestamp: {e}"),
    })
}

pub(crate) fn check_batch(limits: &Limits, groups: &[AggregateEvents]) -> Result<(), InvalidInput> {
    let count: usize = groups.iter().map(|g| g.events.len()).sum();
    if count == 0 {
        return Err(InvalidInput::NoEvents);
    }
    if count > limits.batch_events_max {
        return Err(InvalidInput::TooManyEvents {
            count,
            max: limits.batch_events_max,
        });
    }
    let mut seen_ids = HashSet::with_capacity(count);
    let mut bytes = 0usize;
    for g in groups {
        limits.check_aggregate_id(&g.aggregate_id)?;
        for e in &g.events {
            limits.check_event(e)?;
            if !seen_ids.insert(e.event_id) {
                return Err(InvalidInput::DuplicateInBatch {
                    event_id: e.event_id,
                });
            }
            bytes += crate::event::record_bytes_bound(
                &g.aggregate_id,
                &e.event_type,
                &e.data,
                e.metadata.as_deref(),
            );
        }
    }
    if bytes > limits.batch_bytes_max {
        return Err(InvalidInput::BatchTooLarge {
            bytes,
            max: limits.batch_bytes_max,
        });
    }
    Ok(())
}

/// The indexer: copies visible events from the log into SQLite.
struct Indexer {
    log: Log,
    writer: IndexWriter,
    tail: Arc<RwLock<Tail>>,
    progress: Arc<IndexProgress>,
    shutdown: Arc<AtomicBool>,
    batch_max: usize,
    indexed: u64,
    hlc_max: (u64, u32),
    cursor: Cursor,
}

impl Indexer {
    /// Indexes up to `batch_max` visible events (at most up to `upto`) in
    /// one transaction.
    fn step(&mut self, upto: u64) -> Result<(), IndexStepError> {
        let mut rows = 0usize;
        let mut last = self.indexed;
        let mut hlc_max = self.hlc_max;
        let mut max_id: Option<Uuid> = None;
        self.writer.begin()?;
        let result = (|| -> Result<(), IndexStepError> {
            while rows < self.batch_max {
                let Some(view) = self.cursor.next_batch(upto)? else {
                    break;
                };
                for r in view.records() {
                    let (offset, rec) = r.map_err(|e| LogError::Corrupt {
                        path: self
                            .log
                            .dir()
                            .join(crate::log::segment::segment_file_name(view.segment_first)),
                        offset: view.frame_offset,
                        source: e,
                    })?;
                    self.writer.insert(&NewRow {
                        event: EventRef::from(rec),
                        segment: view.segment_first,
                        offset,
                    })?;
                    hlc_max = hlc_max.max((rec.hlc_physical_ms, rec.hlc_counter));
                    max_id = max_id.max(Some(rec.event_id));
                    last = rec.position;
                    rows += 1;
                }
            }
            Ok(())
        })();
        match result.and_then(|()| {
            self.writer
                .commit(last, hlc_max)
                .map_err(IndexStepError::from)
        }) {
            Ok(()) => {
                self.indexed = last;
                self.hlc_max = hlc_max;
                self.tail
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .trim(last, max_id);
                self.progress.set(last, None);
                Ok(())
            }
            Err(e) => {
                self.writer.rollback();
                // Start again from the checkpoint next time.
                self.cursor = self.log.cursor(self.indexed + 1);
                Err(e)
            }
        }
    }

    fn run(mut self) {
        loop {
            let visible = self.log.visible_position();
            if visible <= self.indexed {
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                self.log.wait_beyond(self.indexed, IDLE_WAKE);
                // A trickle of small appends would otherwise cost one SQLite
                // transaction each; readers do not wait for the index (the
                // tail answers), so gather a little first.
                if !self.shutdown.load(Ordering::Acquire) {
                    std::thread::sleep(INDEXER_GATHER);
                }
                continue;
            }
            if let Err(e) = self.step(visible) {
                tracing::error!(error = %e, "indexer failed; retrying");
                self.progress.set(self.indexed, Some(e.to_string()));
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(INDEXER_RETRY);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum IndexStepError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl From<IndexStepError> for Error {
    fn from(e: IndexStepError) -> Error {
        match e {
            IndexStepError::Log(e) => Error::Log(e),
            IndexStepError::Index(e) => Error::Index(e),
        }
    }
}

/// Iterator returned by [`Store::read_all`].
#[derive(Debug)]
pub struct ReadAll {
    cursor: Cursor,
    upto: u64,
    pending: VecDeque<Event>,
    failed: bool,
}

fn decode_batch(
    log: &Log,
    cursor: &mut Cursor,
    upto: u64,
    out: &mut VecDeque<Event>,
) -> Result<bool> {
    let Some(view) = cursor.next_batch(upto)? else {
        return Ok(false);
    };
    for r in view.records() {
        let (offset, rec) =
            r.map_err(|e| corrupt_at(log, view.segment_first, view.frame_offset, e))?;
        if rec.position > upto {
            break;
        }
        let e = EventRef::from(rec).to_event().map_err(|e| {
            corrupt_hlc(
                log,
                &Pointer {
                    position: rec.position,
                    version: rec.version,
                    segment: view.segment_first,
                    offset,
                },
                e,
            )
        })?;
        out.push_back(e);
    }
    Ok(true)
}

impl Iterator for ReadAll {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.failed {
                return None;
            }
            let log = self.cursor.log().clone();
            match decode_batch(&log, &mut self.cursor, self.upto, &mut self.pending) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Iterator returned by [`Store::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    log: Log,
    cursor: Cursor,
    pending: VecDeque<Event>,
    /// A read-only store's subscription follows the log itself: while it
    /// waits it calls [`Store::refresh`] every [`FOLLOW_POLL`]. Weak, so
    /// that a subscription does not keep its store open.
    follow: Option<std::sync::Weak<Inner>>,
}

impl Subscription {
    /// The next event, waiting at most `timeout` for one. `Ok(None)` on
    /// timeout or when the store has closed.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            if decode_batch(&self.log, &mut self.cursor, u64::MAX, &mut self.pending)? {
                continue;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.log.is_closed() {
                return Ok(None);
            }
            match &self.follow {
                None => {
                    self.log.wait_beyond(self.cursor.next_position() - 1, left);
                }
                Some(weak) => {
                    let Some(inner) = weak.upgrade() else {
                        return Ok(None);
                    };
                    let head = Store { inner }.refresh()?;
                    if head < self.cursor.next_position() {
                        std::thread::sleep(left.min(FOLLOW_POLL));
                    }
                }
            }
        }
    }

    /// The position of the next event this subscription will yield.
    pub fn next_position(&self) -> u64 {
        self.cursor.next_position()
    }
}

impl Iterator for Subscription {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) if self.log.is_closed() && self.pending.is_empty() => return None,
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Index rows made from the log, for [`Store::verify_index`].
struct LogRows<'a> {
    log: &'a Log,
    cursor: Cursor,
    upto: u64,
    pending: VecDeque<index::IndexRow>,
    done: bool,
}

impl LogRows<'_> {
    fn peek(&mut self) -> Result<Option<&index::IndexRow>> {
        while self.pending.is_empty() && !self.done {
            let Some(view) = self.cursor.next_batch(self.upto)? else {
                self.done = true;
                break;
            };
            for r in view.records() {
                let (offset, rec) =
                    r.map_err(|e| corrupt_at(self.log, view.segment_first, view.frame_offset, e))?;
                if rec.position > self.upto {
                    break;
                }
                self.pending.push_back(index::IndexRow {
                    position: rec.position,
                    event_id: rec.event_id.hyphenated().to_string(),
                    aggregate_id: rec.aggregate_id.to_owned(),
                    version: rec.version,
                    event_type: rec.event_type.to_owned(),
                    timestamp: EventRef::from(rec).timestamp_text(),
                    segment: view.segment_first,
                    offset,
                });
            }
        }
        Ok(self.pending.front())
    }
}

#[cfg(test)]
mod tests {
    use super::pack_frames;
    use crate::log::format::{BATCH_EVENTS_MAX, BATCH_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX};

    /// S3 for group commits: batches of one `append_batches` call share
    /// frames, but a batch is never split across two (a crash between
    /// them would keep half of it).
    #[test]
    fn s3_pack_frames_keeps_every_batch_whole() {
        let payload = FRAME_PAYLOAD_BYTES_MAX as usize - BATCH_HEADER_BYTES;
        let third = payload / 3;
        // Three batches fill a frame but for a few bytes; the fourth goes on.
        assert_eq!(
            pack_frames(&[(10, third), (20, third), (30, third), (5, 100)], 1_000),
            [60, 5]
        );
        // A batch that would cross the payload limit starts the next frame.
        assert_eq!(
            pack_frames(&[(1, third * 2), (2, third * 2)], 1_000),
            [1, 2]
        );
        // The record limit is a limit on whole batches too.
        assert_eq!(
            pack_frames(&[(600, 10), (600, 10), (1, 1)], 1_000),
            [600, 601]
        );
        // One unit alone may pass it (it was checked against the store's
        // own limits); the format's count bounds the limit given.
        assert_eq!(pack_frames(&[(1_500, 10)], 1_000), [1_500]);
        assert_eq!(
            pack_frames(&[(1, 1); 3], usize::MAX),
            [3],
            "records_max is capped at {BATCH_EVENTS_MAX}, not exceeded"
        );
        assert!(pack_frames(&[], 10).is_empty());
    }
}
