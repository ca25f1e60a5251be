//! The segmented, append-only event log. The only code that reads or writes
//! log bytes; everything else sees [`EventRef`]s and positions.
//!
//! # Brief overview
//!
//! * [`Log`]: the segments of one store, shared by the writer and readers.
//!   Opening it runs recovery ([`recovery`]): headers and seals of sealed
//!   segments are checked, the active segment is scanned frame by frame and
//!   a torn tail is cut.
//! * [`LogWriter`] (`writer.rs`): appends one batch frame per call, rolls
//!   segments, and is owned by whoever serialises writes (the store's
//!   writer lock).
//! * [`Log::wait_durable`]: group commit. In [`Durability::Sync`] the first
//!   waiter becomes the leader and runs one `fdatasync` for everyone whose
//!   frame was written before it started.
//! * [`Cursor`] (`cursor.rs`): reads batches in position order, from memory
//!   maps for sealed segments and positioned reads for the active one, and
//!   cuts [`RawRun`]s for bulk catch-up.
//!
//! Readers only ever see *visible* positions: in `Sync` mode a batch becomes
//! visible once it is on stable storage, in the other modes once it is
//! written. Nothing unacknowledged is ever handed to a reader, a subscriber
//! or the index.

// Test support, compiled only when asked (the engine's own tests ask
// through a dev-dependency on itself).
mod cursor;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod follow;
pub mod follower;
pub mod format;
pub mod inspect;
pub mod recovery;
pub mod repair;
pub mod segment;
pub mod vfs;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use format::{
    BatchRef, FRAME_HEADER_BYTES, FrameBody, FrameCheck, FrameHeader, FrameKind,
    SEGMENT_HEADER_BYTES, Seal, SegmentHeader,
};
pub use format::{CheckedRun, EventRef, FormatError, RawRun};
pub use recovery::{RecoveryReport, TornTail};
use segment::{SEGMENT_TMP_SUFFIX, Segment, segment_file_name};
use vfs::{OpenMode, Vfs};

use self::writer::*;
pub use cursor::{BatchView, Cursor};
pub use writer::{Appended, InFlight, LogWriter};

/// Default [`LogConfig::segment_bytes_max`]: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Smallest allowed segment size limit.
pub const SEGMENT_BYTES_MIN: u64 = 4 << 10;
/// Largest allowed segment size limit.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 40;
/// Longest a group-commit leader waits for appends already under way to
/// join its sync (only while there are some).
pub const COMMIT_DELAY_MAX: Duration = Duration::from_micros(500);
/// Name of the log directory inside a store.
pub const LOG_DIR: &str = "log";
/// The file in the log directory that holds the log's generation: how many
/// times a repair rewrote its history (absent: 0).
pub const GENERATION_FILE: &str = "GENERATION";

/// The generation of the log in `log_dir`: 0 until a repair cuts or moves
/// away anything but a torn tail, then one more at each such repair. What
/// is derived from the log (the index, the views) records the generation
/// it was built from and rebuilds itself when the log's differs: positions
/// it holds may since have been cut and taken again by other events.
pub fn read_generation(log_dir: &Path) -> Result<u64, LogError> {
    let path = log_dir.join(GENERATION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| LogError::BadGeneration {
            path: path.clone(),
            found: text.chars().take(40).collect(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(LogError::io(&path, "reading the log's generation", e)),
    }
}

/// Moves the log in `log_dir` to its next generation (written to a
/// temporary file, synced, renamed, and the directory synced): every
/// derived file rebuilds at its next open. Returns the new generation.
pub(crate) fn bump_generation(log_dir: &Path) -> Result<u64, LogError> {
    let next = read_generation(log_dir)? + 1;
    let path = log_dir.join(GENERATION_FILE);
    let tmp = log_dir.join(format!("{GENERATION_FILE}.tmp"));
    let io = |action| {
        let path = &path;
        move |e| LogError::io(path, action, e)
    };
    std::fs::write(&tmp, format!("{next}\n")).map_err(io("writing the log's generation"))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing the log's generation"))?;
    std::fs::rename(&tmp, &path).map_err(io("replacing the log's generation"))?;
    std::fs::File::open(log_dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the log directory"))?;
    Ok(next)
}

/// When `append` returns, and what a crash can take away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `append` returns after `fdatasync` of the segment (and of the
    /// directory when a segment is created). Nothing acknowledged is lost to
    /// a process crash or a power failure. Concurrent appends share one sync
    /// (group commit).
    #[default]
    Sync,
    /// `append` returns once the bytes are written to the OS; a background
    /// thread syncs at this interval. A process crash loses nothing; a power
    /// failure may lose the acknowledged events of the last interval.
    Periodic(Duration),
    /// `append` returns once the bytes are written to the OS; syncs happen
    /// only when a segment is sealed and when the store is closed. A process
    /// crash loses nothing; a power failure may lose any number of recent
    /// acknowledged events.
    None,
}

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error(
        "{path}: damaged at byte offset {offset}: {source}; run `strata verify` to list all damage"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        #[source]
        source: FormatError,
    },
    #[error("{path}: {reason} (at byte offset {offset}); run `strata verify` to list all damage")]
    Inconsistent {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path}: I/O error while {action}: {source}{}", io_hint(source))]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "an earlier write or sync failed ({reason}); writes are refused until the store is reopened"
    )]
    Poisoned { reason: String },
    #[error("{dir}: no event log here; create a store first (`strata init`)")]
    NotFound { dir: PathBuf },
    #[error("the store is open read-only; open it read-write to append")]
    ReadOnly,
    #[error(
        "position {position} is past the end of this handle's view of the log (position {visible}); nothing is damaged: a read-only store sees newer appends after `Store::refresh`"
    )]
    BeyondView { position: u64, visible: u64 },
    #[error(
        "{path} holds {found:?}, not a number: it counts the repairs of this log; write a number larger than it had (e.g. 1000), so that the index and views rebuild"
    )]
    BadGeneration { path: PathBuf, found: String },
}

/// What to do about an I/O error, when that is clear from its kind.
fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull => {
            "; the disk is full: free space and retry (nothing acknowledged was lost)"
        }
        io::ErrorKind::PermissionDenied => "; check the permissions of the store directory",
        _ => "",
    }
}

impl LogError {
    fn io(path: &Path, action: &'static str, source: io::Error) -> LogError {
        LogError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    fn corrupt(path: &Path, offset: u64, source: FormatError) -> LogError {
        LogError::Corrupt {
            path: path.to_path_buf(),
            offset,
            source,
        }
    }

    fn inconsistent(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
        LogError::Inconsistent {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

/// How to open a log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub vfs: Arc<dyn Vfs>,
    pub segment_bytes_max: u64,
    pub durability: Durability,
    pub read_only: bool,
    /// Create an empty log when none exists (read-write only).
    pub create_if_missing: bool,
}

/// What the visible end of the log is, and who waits for it to move.
#[derive(Debug, Default)]
struct Visible {
    position: AtomicU64,
    lock: Mutex<()>,
    moved: Condvar,
    closed: AtomicBool,
}

impl Visible {
    fn publish(&self, position: u64) {
        let _guard = lock(&self.lock);
        self.position.fetch_max(position, Ordering::AcqRel);
        self.moved.notify_all();
    }

    fn get(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }
}

/// Group-commit bookkeeping, under one mutex.
#[derive(Debug)]
struct SyncState {
    /// The last frame written.
    written: Option<Written>,
    /// Every position up to this one is on stable storage.
    synced_position: u64,
    /// How much of the active segment is on stable storage.
    synced_len: SyncedLen,
    /// A leader is running `fdatasync` right now.
    syncing: bool,
}

/// The last frame written, which the next sync makes durable.
#[derive(Debug, Clone)]
struct Written {
    /// Its last position.
    last_position: u64,
    segment: Arc<Segment>,
    /// The segment's length after it (bytes).
    end: u64,
}

/// The bytes of one segment on stable storage.
#[derive(Debug, Clone, Copy, Default)]
struct SyncedLen {
    /// The segment, by its first position (0: none yet).
    segment_first: u64,
    bytes: u64,
}

#[derive(Debug)]
pub(crate) struct LogShared {
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    store_id: Uuid,
    config: LogConfig,
    /// All segments in position order; the last may be active.
    segments: RwLock<Vec<Arc<Segment>>>,
    visible: Visible,
    sync: Mutex<SyncState>,
    synced: Condvar,
    poisoned: Mutex<Option<String>>,
    is_poisoned: AtomicBool,
    stats: LogStats,
    /// Appends that have started but not yet written their frame.
    in_flight: AtomicUsize,
    /// Signalled when `in_flight` drops to zero.
    drained: Condvar,
    drained_lock: Mutex<()>,
}

/// Counters since the log was opened.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Batch frames written.
    pub batches: AtomicU64,
    /// Events written.
    pub events: AtomicU64,
    /// `fdatasync` calls of the active segment by group-commit leaders and
    /// the periodic flusher.
    pub syncs: AtomicU64,
}

/// The event log of one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Log {
    shared: Arc<LogShared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its state consistent before
    // anything that can panic, so a poisoned mutex still holds valid data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Log {
    /// Opens (and recovers) the log under `store_dir/log`. Returns the
    /// writer too unless the log is read-only.
    pub fn open(
        store_dir: &Path,
        config: LogConfig,
    ) -> Result<(Log, Option<LogWriter>, RecoveryReport), LogError> {
        assert!(config.segment_bytes_max >= SEGMENT_BYTES_MIN);
        assert!(config.segment_bytes_max <= SEGMENT_BYTES_LIMIT);
        let dir = store_dir.join(LOG_DIR);
        let recovered = recovery::recover(&dir, &config)?;
        let last = recovered.segments.last().cloned();
        let visible_position = last.as_ref().map_or(0, |s| s.last_position());
        let synced_len = match &recovered.active {
            Some(a) => SyncedLen {
                segment_first: a.segment.first_position(),
                bytes: a.len,
            },
            None => SyncedLen::default(),
        };
        let shared = Arc::new(LogShared {
            dir,
            vfs: config.vfs.clone(),
            store_id: recovered.store_id,
            segments: RwLock::new(recovered.segments),
            visible: Visible::default(),
            sync: Mutex::new(SyncState {
                written: recovered.active.as_ref().map(|a| Written {
                    last_position: visible_position,
                    segment: a.segment.clone(),
                    end: a.len,
                }),
                synced_position: visible_position,
                synced_len,
                syncing: false,
            }),
            synced: Condvar::new(),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            stats: LogStats::default(),
            in_flight: AtomicUsize::new(0),
            drained: Condvar::new(),
            drained_lock: Mutex::new(()),
            config,
        });
        shared.visible.publish(visible_position);
        let log = Log { shared };
        let writer = if log.shared.config.read_only {
            None
        } else {
            Some(LogWriter {
                active: recovered.active.map(|a| ActiveSegment {
                    segment: a.segment,
                    len: a.len,
                    body_crc: a.body_crc,
                    has_frames: a.has_frames,
                }),
                next_position: visible_position + 1,
                buf: Vec::new(),
            })
        };
        Ok((log, writer, recovered.report))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn store_id(&self) -> Uuid {
        self.shared.store_id
    }

    pub fn durability(&self) -> Durability {
        self.shared.config.durability
    }

    /// The last position readers may see (0 when the log is empty).
    pub fn visible_position(&self) -> u64 {
        self.shared.visible.get()
    }

    /// Blocks until the visible position exceeds `position`, the timeout
    /// passes, or the log is closed. Returns the visible position.
    pub fn wait_beyond(&self, position: u64, timeout: Duration) -> u64 {
        self.wait_beyond_unless(position, timeout, &AtomicBool::new(false))
    }

    /// [`Log::wait_beyond`] that also returns once `stop` is set. `stop` is
    /// read under the wait's lock, so a stopper that sets it and then calls
    /// [`Log::wake_all`] is never missed.
    pub fn wait_beyond_unless(&self, position: u64, timeout: Duration, stop: &AtomicBool) -> u64 {
        let v = &self.shared.visible;
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&v.lock);
        loop {
            let now = v.get();
            if now > position || v.closed.load(Ordering::Acquire) || stop.load(Ordering::Acquire) {
                return now;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return now;
            }
            guard = v
                .moved
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wakes every waiter once (they re-check their own conditions).
    pub fn wake_all(&self) {
        let v = &self.shared.visible;
        let _guard = lock(&v.lock);
        v.moved.notify_all();
    }

    /// Whether the store this log belongs to has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.visible.closed.load(Ordering::Acquire)
    }

    /// Wakes every waiter for good; used when the store closes.
    pub fn close_waiters(&self) {
        let v = &self.shared.visible;
        let _guard = lock(&v.lock);
        v.closed.store(true, Ordering::Release);
        v.moved.notify_all();
    }

    /// Snapshot of the segments, in position order.
    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn segment_for(&self, position: u64) -> Option<Arc<Segment>> {
        let segs = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let i = segs.partition_point(|s| s.first_position() <= position);
        i.checked_sub(1).map(|i| segs[i].clone())
    }

    fn next_segment(&self, after: &Segment) -> Option<Arc<Segment>> {
        let segs = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let i = segs.partition_point(|s| s.first_position() <= after.first_position());
        segs.get(i).cloned()
    }

    /// Marks an append as under way until the guard drops (after its frame
    /// is written, or it failed); group-commit leaders wait for such
    /// appends, briefly, so that one sync covers them.
    pub fn begin_append(&self) -> InFlight<'_> {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { log: self }
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> &LogStats {
        &self.shared.stats
    }

    /// Why writes are refused, if they are.
    pub fn poisoned(&self) -> Option<String> {
        if !self.shared.is_poisoned.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.shared.poisoned).clone()
    }

    fn check_writable(&self) -> Result<(), LogError> {
        if self.shared.config.read_only {
            return Err(LogError::ReadOnly);
        }
        match self.poisoned() {
            Some(reason) => Err(LogError::Poisoned { reason }),
            None => Ok(()),
        }
    }

    fn poison(&self, reason: String) {
        tracing::error!(%reason, "log poisoned: refusing writes until reopen");
        let mut p = lock(&self.shared.poisoned);
        if p.is_none() {
            *p = Some(reason);
        }
        self.shared.is_poisoned.store(true, Ordering::Release);
    }

    /// Returns once `position` is durable as the configured [`Durability`]
    /// promises: after a (shared) `fdatasync` in `Sync` mode, at once
    /// otherwise.
    pub fn wait_durable(&self, position: u64) -> Result<(), LogError> {
        if self.shared.config.durability != Durability::Sync {
            return Ok(());
        }
        self.sync_upto(Some(position))
    }

    /// Syncs whatever has been written so far (used by the periodic flusher
    /// and on close).
    pub fn sync_now(&self) -> Result<(), LogError> {
        self.sync_upto(None)
    }

    fn sync_upto(&self, position: Option<u64>) -> Result<(), LogError> {
        let shared = &self.shared;
        let mut st = lock(&shared.sync);
        let target = match position {
            Some(p) => p,
            None => st.written.as_ref().map_or(0, |w| w.last_position),
        };
        loop {
            if let Some(reason) = self.poisoned() {
                return Err(LogError::Poisoned { reason });
            }
            if st.synced_position >= target {
                return Ok(());
            }
            if st.syncing {
                st = shared.synced.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Become the leader: sync everything written so far, for every
            // waiter at once.
            if st.written.is_none() {
                return Ok(());
            }
            st.syncing = true;
            drop(st);
            // Commit delay: while other appends are between entering the
            // store and finishing their write, give them a moment to land in
            // this sync rather than the next. Alone, a writer never waits.
            {
                let deadline = Instant::now() + COMMIT_DELAY_MAX;
                let mut drained = lock(&shared.drained_lock);
                while shared.in_flight.load(Ordering::Acquire) > 0 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    drained = shared
                        .drained
                        .wait_timeout(drained, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            st = lock(&shared.sync);
            let Written {
                last_position: mark_position,
                segment,
                end: mark_len,
            } = st.written.clone().expect("checked above");
            drop(st);
            let result = segment.file().sync_data();
            shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
            st = lock(&shared.sync);
            st.syncing = false;
            if let Err(e) = result {
                let reason = format!("fdatasync of {} failed: {e}", segment.path().display());
                self.poison(reason.clone());
                shared.synced.notify_all();
                return Err(LogError::Poisoned { reason });
            }
            if mark_position > st.synced_position {
                st.synced_position = mark_position;
            }
            if st.synced_len.segment_first == segment.first_position() {
                st.synced_len.bytes = st.synced_len.bytes.max(mark_len);
            }
            if shared.config.durability == Durability::Sync {
                segment.publish(mark_len, mark_position);
                shared.visible.publish(mark_position);
            }
            shared.synced.notify_all();
        }
    }

    /// A cursor that yields batches from `from_position` on.
    pub fn cursor(&self, from_position: u64) -> Cursor {
        Cursor {
            log: self.clone(),
            segment: None,
            offset: 0,
            next_position: from_position.max(1),
            buf: Vec::new(),
            map: None,
            seeking: true,
        }
    }

    /// Reads the record at `offset` of the segment starting at
    /// `segment_first`, checking its own CRC and that it holds `position`.
    pub fn read_record<T>(
        &self,
        segment_first: u64,
        offset: u64,
        position: u64,
        f: impl FnOnce(EventRef<'_>) -> T,
    ) -> Result<T, LogError> {
        let mut f = Some(f);
        let mut out = None;
        self.read_records([(segment_first, offset, position)], |r| {
            out = f.take().map(|f| f(r));
        })?;
        Ok(out.expect("one record read"))
    }

    /// Reads records by `(segment_first, offset, position)`, as
    /// [`Log::read_record`] does, looking each segment up once per run of
    /// records in it.
    pub fn read_records(
        &self,
        pointers: impl IntoIterator<Item = (u64, u64, u64)>,
        mut f: impl FnMut(EventRef<'_>),
    ) -> Result<(), LogError> {
        self.read_runs(
            pointers
                .into_iter()
                .map(|(segment_first, offset, position)| (segment_first, offset, position, 0, 1)),
            |_, _, r| f(r),
        )
    }

    /// Reads runs of records that lie back to back in one batch frame:
    /// for each `(segment_first, offset, position, skip, take)`, the record
    /// at `offset` of the segment starting at `segment_first` holds
    /// `position`; the `skip` records from it are passed over and the
    /// `take` after them handed to `f` with their place (`segment_first`,
    /// offset). Every record is CRC-checked and must hold the position that
    /// follows the one before, so a pointer that went stale is an error,
    /// not a wrong answer.
    pub fn read_runs(
        &self,
        runs: impl IntoIterator<Item = (u64, u64, u64, u64, u64)>,
        mut f: impl FnMut(u64, u64, EventRef<'_>),
    ) -> Result<(), LogError> {
        let visible = self.visible_position();
        let mut segment: Option<Arc<Segment>> = None;
        let mut buf = Vec::new();
        for (segment_first, mut offset, first_position, skip, take) in runs {
            let last = first_position + skip + take.saturating_sub(1);
            if last > visible {
                return Err(LogError::BeyondView {
                    position: last,
                    visible,
                });
            }
            let holds = |s: &Segment| {
                s.first_position() == segment_first
                    && first_position >= s.first_position()
                    && last <= s.last_position()
            };
            if !segment.as_deref().is_some_and(holds) {
                segment = self.segment_for(first_position).filter(|s| holds(s));
            }
            let Some(seg) = segment.as_deref() else {
                let positions = if last == first_position {
                    format!("position {last}")
                } else {
                    format!("positions {first_position}..={last}")
                };
                return Err(LogError::inconsistent(
                    &self.shared.dir.join(segment_file_name(segment_first)),
                    offset,
                    format!(
                        "no segment starting at {segment_first} holds {positions}; the index is stale, run `strata reindex`"
                    ),
                ));
            };
            for position in first_position..first_position + skip + take {
                let record = read_record_in(seg, offset, position, &mut buf, true)?;
                let len = format::record_len(&record) as u64;
                if position >= first_position + skip {
                    f(segment_first, offset, record);
                }
                offset += len;
            }
        }
        Ok(())
    }

    /// Reads a record its caller knows to be written though perhaps not
    /// yet synced or visible: the store's writer, under its lock, comparing
    /// an existing event with a new one under the same id. Checks the
    /// record's CRC and position like [`Log::read_record`].
    pub fn read_written_record<T>(
        &self,
        segment_first: u64,
        offset: u64,
        position: u64,
        f: impl FnOnce(EventRef<'_>) -> T,
    ) -> Result<T, LogError> {
        let segment = self
            .segments()
            .into_iter()
            .find(|s| s.first_position() == segment_first)
            .ok_or_else(|| {
                LogError::inconsistent(
                    &self.shared.dir.join(segment_file_name(segment_first)),
                    offset,
                    format!("no segment starting at {segment_first}; the index is stale, run `strata reindex`"),
                )
            })?;
        let mut buf = Vec::new();
        Ok(f(read_record_in(
            &segment, offset, position, &mut buf, false,
        )?))
    }
}

/// Reads and checks the record at `offset` of `segment`. With
/// `published_only`, the record must lie below the segment's readable end.
fn read_record_in<'a>(
    segment: &'a Segment,
    offset: u64,
    position: u64,
    buf: &'a mut Vec<u8>,
    published_only: bool,
) -> Result<EventRef<'a>, LogError> {
    let path = segment.path();
    let mut head = [0u8; 4];
    head.copy_from_slice(
        segment
            .read(offset, 4, buf)
            .map_err(|e| LogError::io(path, "reading a record", e))?,
    );
    let len = u32::from_le_bytes(head) as usize;
    if !(format::RECORD_HEADER_BYTES..=format::RECORD_BYTES_MAX).contains(&len) {
        return Err(LogError::corrupt(
            path,
            offset,
            FormatError::Malformed {
                what: "event record",
                reason: "length out of range",
            },
        ));
    }
    if published_only && offset + len as u64 > segment.readable_len() {
        return Err(LogError::inconsistent(
            path,
            offset,
            "record extends past the readable end",
        ));
    }
    let bytes = segment
        .read(offset, len, buf)
        .map_err(|e| LogError::io(path, "reading a record", e))?;
    let (record, _) =
        format::decode_record(bytes, true).map_err(|e| LogError::corrupt(path, offset, e))?;
    if record.position != position {
        return Err(LogError::inconsistent(
            path,
            offset,
            format!(
                "record holds position {}, expected {position}; the index is stale, run `strata reindex`",
                record.position
            ),
        ));
    }
    Ok(record)
}

/// Creates a segment file the crash-safe way: write it under a temporary
/// name, sync it, rename it into place, sync the directory. A crash at any
/// step leaves either no segment or a complete one (plus, at worst, a
/// temporary file the next open removes).
pub(crate) fn create_segment_file(
    vfs: &dyn Vfs,
    dir: &Path,
    store_id: Uuid,
    first_position: u64,
    segment_bytes_max: u64,
) -> Result<(Segment, u64), (PathBuf, &'static str, io::Error)> {
    let name = segment_file_name(first_position);
    let path = dir.join(&name);
    let tmp = dir.join(format!(
        "{}{SEGMENT_TMP_SUFFIX}",
        name.trim_end_matches(segment::SEGMENT_SUFFIX)
    ));
    if vfs.exists(&tmp) {
        vfs.remove_file(&tmp)
            .map_err(|e| (tmp.clone(), "removing a stale temporary segment", e))?;
    }
    let file = vfs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| (tmp.clone(), "creating a segment", e))?;
    let header = SegmentHeader {
        store_id,
        first_position,
    }
    .encode();
    file.write_all_at(&header, 0)
        .map_err(|e| (tmp.clone(), "writing a segment header", e))?;
    file.sync_data().map_err(|e| (tmp.clone(), "syncing", e))?;
    vfs.rename(&tmp, &path)
        .map_err(|e| (path.clone(), "renaming a new segment into place", e))?;
    // A new segment's name is not durable until its directory is synced,
    // and recovery finds segments by name.
    vfs.sync_dir(dir)
        .map_err(|e| (dir.to_path_buf(), "syncing", e))?;
    let len = SEGMENT_HEADER_BYTES as u64;
    let segment = Segment::active(
        first_position,
        path,
        file,
        len,
        first_position - 1,
        segment_bytes_max,
    );
    Ok((segment, len))
}
