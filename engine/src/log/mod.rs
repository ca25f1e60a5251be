//! The segmented, append-only event log. The only code that reads or writes
//! log bytes; everything else sees [`RecordRef`]s and positions.
//!
//! # Brief overview
//!
//! * [`Log`]: the segments of one store, shared by the writer and readers.
//!   Opening it runs recovery ([`recovery`]): headers and seals of sealed
//!   segments are checked, the active segment is scanned frame by frame and
//!   a torn tail is cut.
//! * [`LogWriter`]: appends one batch frame per call, rolls segments, and is
//!   owned by whoever serialises writes (the store's writer lock).
//! * [`Log::wait_durable`]: group commit. In [`Durability::Sync`] the first
//!   waiter becomes the leader and runs one `fdatasync` for everyone whose
//!   frame was written before it started.
//! * [`Cursor`]: reads batches in position order, from memory maps for
//!   sealed segments and positioned reads for the active one.
//!
//! Readers only ever see *visible* positions: in `Sync` mode a batch becomes
//! visible once it is on stable storage, in the other modes once it is
//! written. Nothing unacknowledged is ever handed to a reader, a subscriber
//! or the index.

// Test support, compiled only when asked (the engine's own tests ask
// through a dev-dependency on itself).
#[cfg(feature = "fault-injection")]
pub mod fault;
mod follow;
pub mod format;
pub mod inspect;
pub mod recovery;
pub mod repair;
pub mod segment;
pub mod vfs;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use format::{
    BatchRef, FRAME_HEADER_BYTES, FrameHeader, FrameKind, SEGMENT_HEADER_BYTES, Seal, SegmentHeader,
};
pub use format::{CheckedRun, FormatError, RawRun, RecordFields, RecordRef};
pub use recovery::{RecoveryReport, TornTail};
use segment::{SEGMENT_TMP_SUFFIX, Segment, segment_file_name};
use vfs::{OpenMode, Vfs};

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
        f: impl FnOnce(RecordRef<'_>) -> T,
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
        mut f: impl FnMut(RecordRef<'_>),
    ) -> Result<(), LogError> {
        let visible = self.visible_position();
        let mut segment: Option<Arc<Segment>> = None;
        let mut buf = Vec::new();
        for (segment_first, offset, position) in pointers {
            if position > visible {
                return Err(LogError::BeyondView { position, visible });
            }
            let holds = |s: &Segment| {
                s.first_position() == segment_first
                    && position >= s.first_position()
                    && position <= s.last_position()
            };
            if !segment.as_deref().is_some_and(holds) {
                segment = self
                    .segment_for(position)
                    .filter(|s| s.first_position() == segment_first);
            }
            let Some(seg) = segment.as_deref() else {
                return Err(LogError::inconsistent(
                    &self.shared.dir.join(segment_file_name(segment_first)),
                    offset,
                    format!(
                        "no segment starting at {segment_first} holds position {position}; the index is stale, run `strata reindex`"
                    ),
                ));
            };
            f(read_record_in(seg, offset, position, &mut buf, true)?);
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
        f: impl FnOnce(RecordRef<'_>) -> T,
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
) -> Result<RecordRef<'a>, LogError> {
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
    let record =
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

/// An append under way; see [`Log::begin_append`].
#[derive(Debug)]
pub struct InFlight<'a> {
    log: &'a Log,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let shared = &self.log.shared;
        if shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Taking the lock orders this wake-up after a leader's check.
            let _guard = lock(&shared.drained_lock);
            shared.drained.notify_all();
        }
    }
}

/// The active segment as the writer sees it.
#[derive(Debug)]
struct ActiveSegment {
    segment: Arc<Segment>,
    len: u64,
    body_crc: crc32fast::Hasher,
    has_frames: bool,
}

/// Where one appended batch landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub first_position: u64,
    pub last_position: u64,
    pub segment_first: u64,
    /// Byte offset of each record within the segment, in batch order.
    pub record_offsets: Vec<u64>,
}

/// The single writer of a log. Not `Sync`: put it behind the lock that
/// orders appends.
#[derive(Debug)]
pub struct LogWriter {
    active: Option<ActiveSegment>,
    next_position: u64,
    buf: Vec<u8>,
}

impl LogWriter {
    /// The position the next appended event gets.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Appends one batch frame holding `records` (their `position` field is
    /// ignored and assigned here). Returns once written to the OS; call
    /// [`Log::wait_durable`] with the last position before acknowledging.
    pub fn append(
        &mut self,
        log: &Log,
        records: &[RecordFields<'_>],
    ) -> Result<Appended, LogError> {
        log.check_writable()?;
        assert!(!records.is_empty() && records.len() <= format::BATCH_EVENTS_MAX as usize);
        let payload_len: usize = format::BATCH_HEADER_BYTES
            + records.iter().map(RecordFields::encoded_len).sum::<usize>();
        assert!(
            payload_len <= format::FRAME_PAYLOAD_BYTES_MAX as usize,
            "checked by the caller"
        );
        let (segment, offset, durable_offset) =
            self.make_room(log, (FRAME_HEADER_BYTES + payload_len) as u64)?;
        let first_position = self.next_position;
        let buf = &mut self.buf;
        buf.clear();
        let start = format::begin_frame(buf);
        format::encode_batch_header(buf, first_position, records.len() as u32);
        let mut record_offsets = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            record_offsets.push(offset + buf.len() as u64);
            let mut r = *r;
            r.position = first_position + i as u64;
            format::encode_record(buf, &r);
        }
        format::finish_frame(buf, start, FrameKind::Batch, durable_offset);
        self.write_frame(log, &segment, offset, records.len() as u64, record_offsets)
    }

    /// Appends a run of records exactly as another log holds them (a
    /// replica copying its server's log); its first position must be this
    /// log's next one. [`RawRun::check`] checked the records once; they are
    /// framed here without being decoded or re-encoded.
    pub fn append_raw(&mut self, log: &Log, run: &CheckedRun<'_>) -> Result<Appended, LogError> {
        log.check_writable()?;
        let RawRun {
            first_position,
            count,
            ref records,
        } = *run.run();
        assert_eq!(first_position, self.next_position, "checked by the caller");
        // RawRun::check made these hold.
        let payload_len = format::BATCH_HEADER_BYTES + records.len();
        debug_assert!((1..=format::BATCH_EVENTS_MAX).contains(&count));
        debug_assert!(payload_len <= format::FRAME_PAYLOAD_BYTES_MAX as usize);
        let (segment, offset, durable_offset) =
            self.make_room(log, (FRAME_HEADER_BYTES + payload_len) as u64)?;
        let buf = &mut self.buf;
        buf.clear();
        let start = format::begin_frame(buf);
        format::encode_batch_header(buf, first_position, count);
        let records_start = buf.len();
        buf.extend_from_slice(records);
        format::finish_frame(buf, start, FrameKind::Batch, durable_offset);
        let record_offsets = run
            .records()
            .iter()
            .map(|(at, _)| offset + (records_start + at) as u64)
            .collect();
        self.write_frame(log, &segment, offset, count as u64, record_offsets)
    }

    /// Rolls if a frame of `frame_len` bytes would not fit; returns the
    /// active segment, the frame's offset, and its durable offset.
    fn make_room(
        &mut self,
        log: &Log,
        frame_len: u64,
    ) -> Result<(Arc<Segment>, u64, u64), LogError> {
        let must_roll = match &self.active {
            None => true,
            Some(a) => a.has_frames && a.len + frame_len > log.shared.config.segment_bytes_max,
        };
        if must_roll {
            self.roll(log)?;
        }
        let active = self.active.as_ref().expect("rolled above");
        let segment = active.segment.clone();
        let durable_offset = {
            let st = lock(&log.shared.sync);
            if st.synced_len.segment_first == segment.first_position() {
                st.synced_len.bytes
            } else {
                SEGMENT_HEADER_BYTES as u64
            }
        };
        Ok((segment, active.len, durable_offset))
    }

    /// Writes the frame in `self.buf` at `offset` and publishes it.
    fn write_frame(
        &mut self,
        log: &Log,
        segment: &Arc<Segment>,
        offset: u64,
        count: u64,
        record_offsets: Vec<u64>,
    ) -> Result<Appended, LogError> {
        let buf = &self.buf;
        if let Err(e) = segment.file().write_all_at(buf, offset) {
            // Take the partial frame back out so the next append starts on a
            // frame boundary; if even that fails, refuse further writes.
            if let Err(e2) = segment.file().set_len(offset) {
                log.poison(format!(
                    "write to {} failed ({e}) and cutting it back failed ({e2})",
                    segment.path().display()
                ));
            }
            return Err(LogError::io(segment.path(), "appending a batch", e));
        }
        let active = self.active.as_mut().expect("make_room set it");
        active.len += buf.len() as u64;
        active.body_crc.update(buf);
        active.has_frames = true;
        log.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        log.shared.stats.events.fetch_add(count, Ordering::Relaxed);
        let first_position = self.next_position;
        let last_position = first_position + count - 1;
        self.next_position = last_position + 1;
        {
            let mut st = lock(&log.shared.sync);
            st.written = Some(Written {
                last_position,
                segment: segment.clone(),
                end: active.len,
            });
        }
        if log.shared.config.durability != Durability::Sync {
            segment.publish(active.len, last_position);
            log.shared.visible.publish(last_position);
        }
        Ok(Appended {
            first_position,
            last_position,
            segment_first: segment.first_position(),
            record_offsets,
        })
    }

    /// Seals the active segment (if it holds anything) and starts the next.
    fn roll(&mut self, log: &Log) -> Result<(), LogError> {
        if let Some(active) = self.active.take() {
            if !active.has_frames {
                // Nothing to seal: keep writing here.
                self.active = Some(active);
                return Ok(());
            }
            if let Err(e) = self.seal(log, &active) {
                self.active = Some(active);
                return Err(e);
            }
        }
        self.create_segment(log)
    }

    fn seal(&mut self, log: &Log, active: &ActiveSegment) -> Result<(), LogError> {
        let segment = &active.segment;
        let last_position = self.next_position - 1;
        let sync = |what: &str| -> Result<(), LogError> {
            segment.file().sync_data().map_err(|e| {
                let reason = format!(
                    "fdatasync of {} failed while {what}: {e}",
                    segment.path().display()
                );
                log.poison(reason.clone());
                LogError::Poisoned { reason }
            })
        };
        // Sync the batches first, so that the seal's durable offset (all of
        // them) is true when it is written, whatever the durability mode.
        sync("syncing before the seal")?;
        let mut buf = Vec::with_capacity(format::SEAL_FRAME_BYTES);
        Seal {
            last_position,
            body_crc: active.body_crc.clone().finalize(),
        }
        .encode_frame(&mut buf, active.len);
        if let Err(e) = segment.file().write_all_at(&buf, active.len) {
            if let Err(e2) = segment.file().set_len(active.len) {
                log.poison(format!(
                    "sealing {} failed ({e}) and cutting it back failed ({e2})",
                    segment.path().display()
                ));
            }
            return Err(LogError::io(segment.path(), "sealing a segment", e));
        }
        // The seal must be durable before the next segment exists: recovery
        // trusts a segment that is followed by another to be sealed.
        sync("sealing")?;
        let file_len = active.len + buf.len() as u64;
        segment.publish(active.len, last_position);
        segment.mark_sealed(file_len);
        let mut st = lock(&log.shared.sync);
        st.synced_position = st.synced_position.max(last_position);
        log.shared.visible.publish(last_position);
        log.shared.synced.notify_all();
        Ok(())
    }

    fn create_segment(&mut self, log: &Log) -> Result<(), LogError> {
        let shared = &log.shared;
        let first_position = self.next_position;
        let (segment, len) = create_segment_file(
            &*shared.vfs,
            &shared.dir,
            shared.store_id,
            first_position,
            shared.config.segment_bytes_max,
        )
        .map_err(|(path, action, e)| {
            if action == "syncing" {
                let reason = format!("fdatasync of {} failed: {e}", path.display());
                log.poison(reason.clone());
                LogError::Poisoned { reason }
            } else {
                LogError::io(&path, action, e)
            }
        })?;
        let segment = Arc::new(segment);
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(
            &SegmentHeader {
                store_id: shared.store_id,
                first_position,
            }
            .encode(),
        );
        shared
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(segment.clone());
        {
            let mut st = lock(&shared.sync);
            st.synced_len = SyncedLen {
                segment_first: first_position,
                bytes: len,
            };
        }
        self.active = Some(ActiveSegment {
            segment,
            len,
            body_crc,
            has_frames: false,
        });
        Ok(())
    }

    /// Syncs the active segment; called on clean shutdown in every mode.
    pub fn close(&mut self, log: &Log) -> Result<(), LogError> {
        if log.shared.config.read_only || log.poisoned().is_some() {
            return Ok(());
        }
        log.sync_now()
    }
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

/// One batch as a cursor yields it: borrowed bytes, already CRC-checked.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// First position of the segment holding the batch.
    pub segment_first: u64,
    /// Byte offset of the batch's frame in its segment.
    pub frame_offset: u64,
    /// Byte offset of the first record in its segment.
    pub records_offset: u64,
    pub batch: BatchRef<'a>,
    /// Records below this position were asked to be skipped.
    pub skip_below: u64,
}

impl<'a> BatchView<'a> {
    /// The records at or after the cursor's start, with their offset in the
    /// segment.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, RecordRef<'a>), FormatError>> + 'a {
        let base = self.records_offset;
        let skip = self.skip_below;
        self.batch
            .iter()
            .map(move |r| r.map(|(off, rec)| (base + off as u64, rec)))
            .filter(move |r| r.as_ref().map_or(true, |(_, rec)| rec.position >= skip))
    }
}

/// Reads batches in position order. Created by [`Log::cursor`].
#[derive(Debug)]
pub struct Cursor {
    log: Log,
    segment: Option<Arc<Segment>>,
    offset: u64,
    next_position: u64,
    buf: Vec<u8>,
    /// This cursor's own map of the segment it is in, dropped when it moves
    /// on, so that a scan keeps one segment resident at a time.
    map: Option<(u64, memmap2::Mmap)>,
    /// Still looking for the frame holding the start position: frames are
    /// skipped by their headers without reading them whole.
    seeking: bool,
}

impl Cursor {
    /// Bytes `[offset, offset + len)` of `segment`, which must lie below its
    /// readable end: from this cursor's map when it covers them, otherwise
    /// read into the buffer.
    fn bytes(&mut self, segment: &Segment, offset: u64, len: u64) -> io::Result<&[u8]> {
        let end = offset + len;
        if end > segment.readable_len() {
            // Never touch a mapped page past the readable end (see
            // `VfsFile::map`); a frame that claims to go there is damage.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the readable end of the segment",
            ));
        }
        if let Some((_, map)) = &self.map
            && end as usize <= map.len()
        {
            return Ok(&map[offset as usize..end as usize]);
        }
        self.buf.clear();
        self.buf.resize(len as usize, 0);
        vfs::read_exact_at(&**segment.file(), &mut self.buf, offset)?;
        Ok(&self.buf[..])
    }

    /// The log this cursor reads.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The position the next record will have.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// The next batch with records at or before `upto`, or `None` when the
    /// cursor has reached `upto` or the visible end.
    pub fn next_batch(&mut self, upto: u64) -> Result<Option<BatchView<'_>>, LogError> {
        let upto = upto.min(self.log.visible_position());
        loop {
            if self.next_position > upto {
                return Ok(None);
            }
            let segment = match &self.segment {
                Some(s) => s.clone(),
                None => {
                    let Some(s) = self.log.segment_for(self.next_position) else {
                        return Ok(None);
                    };
                    self.offset = SEGMENT_HEADER_BYTES as u64;
                    self.segment = Some(s.clone());
                    s
                }
            };
            let path = segment.path();
            let readable = segment.readable_len();
            let at = self.offset;
            if at >= readable {
                if segment.is_sealed() {
                    return Err(LogError::inconsistent(
                        path,
                        at,
                        "sealed segment ends without a seal frame",
                    ));
                }
                // The visible position is published after the readable
                // length, so this only happens when nothing more is visible.
                return Ok(None);
            }
            if self
                .map
                .as_ref()
                .is_none_or(|(first, _)| *first != segment.first_position())
            {
                self.map = segment.map_new().map(|m| (segment.first_position(), m));
            }
            let header = self
                .bytes(&segment, at, FRAME_HEADER_BYTES as u64)
                .map_err(|e| LogError::io(path, "reading a frame header", e))
                .and_then(|b| FrameHeader::decode(b).map_err(|e| LogError::corrupt(path, at, e)))?;
            let frame_len = header.frame_len();
            if at + frame_len > readable {
                return Err(LogError::inconsistent(
                    path,
                    at,
                    "frame extends past the readable end of the segment",
                ));
            }
            if header.durable_offset > at {
                return Err(LogError::corrupt(
                    path,
                    at,
                    FormatError::Malformed {
                        what: "frame",
                        reason: "durable offset lies beyond the frame itself",
                    },
                ));
            }
            if header.kind == FrameKind::Seal && at + frame_len != readable {
                return Err(LogError::inconsistent(
                    path,
                    at,
                    "bytes follow a seal frame",
                ));
            }
            if header.kind == FrameKind::Seal {
                let seal = self
                    .bytes(&segment, at, frame_len)
                    .map_err(|e| LogError::io(path, "reading a seal", e))
                    .and_then(|b| {
                        format::decode_frame(b).map_err(|e| LogError::corrupt(path, at, e))
                    })
                    .and_then(|f| {
                        Seal::decode(f.payload).map_err(|e| LogError::corrupt(path, at, e))
                    })?;
                if !self.seeking && seal.last_position.wrapping_add(1) != self.next_position {
                    return Err(LogError::inconsistent(
                        path,
                        at,
                        format!(
                            "seal names last position {}, but the batches end at {}",
                            seal.last_position,
                            self.next_position - 1
                        ),
                    ));
                }
                let next = self.log.next_segment(&segment);
                if let Some(next) = &next
                    && !self.seeking
                    && next.first_position() != self.next_position
                {
                    return Err(LogError::inconsistent(
                        next.path(),
                        0,
                        format!(
                            "segment starts at position {}, expected {}",
                            next.first_position(),
                            self.next_position
                        ),
                    ));
                }
                if next.is_none() {
                    return Ok(None);
                }
                self.segment = next;
                self.offset = SEGMENT_HEADER_BYTES as u64;
                continue;
            }
            if self.seeking && header.payload_len as usize >= format::BATCH_HEADER_BYTES {
                // Skip frames below the start by their batch header alone;
                // a damaged header is caught when the next frame is read.
                let bh = segment
                    .read(
                        at + FRAME_HEADER_BYTES as u64,
                        format::BATCH_HEADER_BYTES,
                        &mut self.buf,
                    )
                    .map_err(|e| LogError::io(path, "reading a batch header", e))?;
                let first = u64::from_le_bytes(bh[0..8].try_into().expect("8 bytes"));
                let count = u32::from_le_bytes(bh[8..12].try_into().expect("4 bytes")) as u64;
                if first.saturating_add(count) <= self.next_position {
                    self.offset = at + frame_len;
                    continue;
                }
            }
            let (first, last) = {
                let bytes = self
                    .bytes(&segment, at, frame_len)
                    .map_err(|e| LogError::io(path, "reading a frame", e))?;
                let frame =
                    format::decode_frame(bytes).map_err(|e| LogError::corrupt(path, at, e))?;
                let batch =
                    BatchRef::parse(frame.payload).map_err(|e| LogError::corrupt(path, at, e))?;
                (batch.first_position, batch.last_position())
            };
            // A seek lands on the batch holding the start position; after
            // that, batches follow each other without gaps.
            let in_order = if self.seeking {
                first <= self.next_position
            } else {
                first == self.next_position
            };
            if !in_order {
                return Err(LogError::inconsistent(
                    path,
                    at,
                    format!(
                        "batch starts at position {first}, expected {}",
                        self.next_position
                    ),
                ));
            }
            let skip_below = self.next_position;
            self.offset = at + frame_len;
            self.next_position = last + 1;
            self.seeking = false;
            // Borrow the checked bytes again: they are in this cursor's map
            // or still in its buffer, and written frames never change.
            let segment: &Segment = self.segment.as_deref().expect("set above");
            let end = at + frame_len;
            let bytes = match &self.map {
                Some((_, map)) if end as usize <= map.len() => &map[at as usize..end as usize],
                _ => &self.buf[..frame_len as usize],
            };
            let batch = BatchRef::parse(&bytes[FRAME_HEADER_BYTES..])
                .map_err(|e| LogError::corrupt(segment.path(), at, e))?;
            return Ok(Some(BatchView {
                segment_first: segment.first_position(),
                frame_offset: at,
                records_offset: at + (FRAME_HEADER_BYTES + format::BATCH_HEADER_BYTES) as u64,
                batch,
                skip_below,
            }));
        }
    }

    /// The records from `from` on (this cursor positioned at or before
    /// it) up to `upto`, as a [`RawRun`] of about `max_bytes` (whole
    /// batches after the first, at least one record) and at most half of
    /// [`format::BATCH_EVENTS_MAX`] records: what a server sends for bulk
    /// catch-up. `None` when there is nothing at or after `from` yet.
    pub fn next_run(
        &mut self,
        from: u64,
        upto: u64,
        max_bytes: usize,
    ) -> Result<Option<RawRun>, LogError> {
        let from = from.max(1);
        let mut records = Vec::new();
        let mut count = 0u32;
        let dir = self.log.dir().to_path_buf();
        while records.len() < max_bytes && count < format::BATCH_EVENTS_MAX / 2 {
            let Some(view) = self.next_batch(upto)? else {
                break;
            };
            // A seek can land inside a batch: start at the first record
            // at or after `from`.
            let mut start = 0usize;
            if view.batch.first_position < from {
                for r in view.batch.iter() {
                    let (offset, rec) = r.map_err(|e| {
                        LogError::corrupt(
                            &dir.join(segment_file_name(view.segment_first)),
                            view.frame_offset,
                            e,
                        )
                    })?;
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
        Ok((count > 0).then_some(RawRun {
            first_position: from,
            count,
            records,
        }))
    }
}
