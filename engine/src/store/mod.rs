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
//!
//! Here: the [`Store`] handle, opening, closing and the shared state. The
//! rest, one concept a file, each an `impl Store` block with its helpers:
//!
//! | file | what |
//! |---|---|
//! | `options.rs` | [`Options`] and their checks |
//! | `append.rs` | input checks, planning a batch under the writer lock, writing it, waiting for its sync |
//! | `queue.rs` | the commit queue: concurrent durable appends written and synced as one round |
//! | `read.rs` | reads by aggregate, id and position; [`ReadAll`], [`Subscription`] |
//! | `replicate.rs` | copying another log's events (a replica's committed log, a node's mirror), raw records |
//! | `tail.rs` | the in-memory tail of events not yet indexed |
//! | `indexer.rs` | the background indexer and its progress |
//! | `verify.rs` | checking the index against the log |

use std::collections::{HashMap, HashSet, VecDeque};
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
use crate::index::{self, Index, IndexError, IndexWriter, NewRow, Pointer, Span};
use crate::lock::LockFile;
use crate::log::follower::{FollowPace, Step, follow};
use crate::log::format::{self, RawRun};
use crate::log::vfs::{OsVfs, Vfs};
use crate::log::{
    Cursor, Durability, Log, LogConfig, LogError, LogWriter, RecoveryReport,
    SEGMENT_BYTES_MAX_DEFAULT,
};

mod append;
mod indexer;
mod options;
mod queue;
mod read;
mod replicate;
mod tail;
mod verify;

use self::{append::*, indexer::*, tail::*};
pub(crate) use append::check_batch;
pub use options::{Options, ProgressHook};
pub use read::{ReadAll, Subscription};

/// Default [`Options::index_batch_events_max`].
pub const INDEX_BATCH_EVENTS_MAX_DEFAULT: usize = 20_000;
/// Default [`Options::tail_events_max`].
pub const TAIL_EVENTS_MAX_DEFAULT: usize = 1_000_000;
/// Most cursors kept for sequential readers.
const CURSOR_CACHE_MAX: usize = 64;
/// How long the indexer lets new events gather after waking, so that a
/// trickle of small appends is indexed in fewer, larger transactions.
const INDEXER_GATHER: Duration = Duration::from_millis(10);
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
/// The file that marks a directory as a backup still being written
/// ([`crate::backup`]): such a directory is refused
/// ([`Error::BackupIncomplete`]), never opened as if it were whole.
pub const BACKUP_INCOMPLETE_FILE: &str = "BACKUP-INCOMPLETE";

/// Maps and sets on the append path, keyed by ids and names the store
/// made or checked: foldhash, not SipHash (issue 16).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections leave their data consistent before anything that
    // can panic, so the data behind a poisoned mutex is still valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Durable appends waiting to be written together (`queue.rs`).
    commit_queue: Mutex<queue::CommitQueue>,
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
        if dir.join(BACKUP_INCOMPLETE_FILE).exists() {
            return Err(Error::BackupIncomplete { path: dir });
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
            let mut t = Tail::after(meta.indexed_position, index.max_event_id()?);
            let hlc_max = extend_tail(&log, &mut t, head)?.max(meta.hlc_max);
            *tail.write().unwrap_or_else(|e| e.into_inner()) = t;
            progress.set(meta.indexed_position, None);
            hlc.restore(hlc_max.0, hlc_max.1);
            index
        } else {
            let (index, iw, meta) = index::open_rw(
                &dir,
                log.store_id(),
                head,
                generation,
                options.background_nice,
            )?;
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
            let background_nice = options.background_nice;
            threads.push(
                std::thread::Builder::new()
                    .name("strata-indexer".into())
                    .spawn(move || {
                        crate::priority::lower_this_thread(background_nice);
                        indexer.run()
                    })
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
                commit_queue: Mutex::new(queue::CommitQueue::default()),
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
        let mut fresh = Tail::after(after, None);
        let hlc_max = extend_tail(&inner.log, &mut fresh, visible)?;
        // Events the index has committed meanwhile leave the tail.
        let indexed = inner.index.meta()?.indexed_position;
        let mut tail = inner.tail.write().unwrap_or_else(|e| e.into_inner());
        tail.absorb(fresh);
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
        let mut fresh = Tail::after(indexed.min(head), inner.index.max_event_id()?);
        extend_tail(&inner.log, &mut fresh, head)?;
        tracing::warn!(
            indexed,
            head,
            "the index went back below this read-only store's tail (rebuilt by a writer?); reading the log instead"
        );
        *inner.tail.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Why this handle has no writer: opened read-only, or closed.
    fn no_writer(&self) -> Error {
        if self.inner.options.read_only {
            Error::ReadOnly
        } else {
            Error::Closed
        }
    }

    /// Why writes are refused after a failed sync, if they are.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.log.poisoned()
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

fn diverged(reason: String) -> Error {
    Error::Replica { reason }
}

fn default_node_id(store_id: Uuid) -> NodeId {
    let b = store_id.as_bytes();
    // The low 8 bytes of a UUIDv7 are random.
    let tail = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    NodeId::new(&format!("{tail:016x}")).expect("hex is a valid node id")
}

fn corrupt_hlc(log: &Log, p: &Pointer, e: crate::hlc::HlcError) -> Error {
    inconsistent_at(log, p, format!("record holds an invalid timestamp: {e}"))
}

fn inconsistent_at(log: &Log, p: &Pointer, reason: String) -> Error {
    Error::Log(LogError::Inconsistent {
        path: log
            .dir()
            .join(crate::log::segment::segment_file_name(p.segment)),
        offset: p.offset,
        reason,
    })
}
