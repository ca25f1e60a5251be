//! A [`Vfs`] for tests that injects faults and models what a power loss
//! keeps: failed syncs, full disks with short writes, and crashes after any
//! operation. One model, one file (compiled only with the
//! `fault-injection` feature): the operations and the durable image they
//! leave must be read together.
//!
//! # Brief overview
//!
//! [`FaultVfs`] wraps a real directory (its *root*). Every operation goes to
//! the real files, so the process sees what it would see on a real machine:
//! the real directory plays the role of the operating system's page cache.
//! Beside it, the vfs keeps a *model* of stable storage:
//!
//! * per file, its *live* bytes (what the real file holds), its *durable*
//!   bytes (the live bytes at its last successful `sync_data`), and the
//!   writes and truncations since then, in order;
//! * per name, whether it is *durable*: a creation, rename or removal
//!   becomes durable when its directory is synced (`sync_dir`).
//!
//! Syncs are modelled, not performed: the durable image is written out by
//! [`FaultVfs::materialize_crash`], never read back from the real files, so
//! the tests do not pay for real `fdatasync`s.
//!
//! Every mutating operation (directory creation, file creation, write,
//! `set_len`, `sync_data`, rename, removal, `sync_dir`) is numbered from 1
//! and recorded ([`FaultVfs::ops`]), including those that failed by
//! injection (a short write records the bytes it did write). The vfs can
//! be told to
//!
//! * fail the n-th `sync_data` from now, once, with `EIO`
//!   ([`FaultVfs::fail_sync_data`]);
//! * fail writes with `ENOSPC` once a byte budget is spent, optionally after
//!   writing the prefix that still fits (a short write), until
//!   [`FaultVfs::restore_space`] ([`FaultVfs::limit_space`]);
//! * crash after operation n ([`FaultVfs::crash_after`]): that operation is
//!   the last one to happen, and every later one, reads included, fails.
//!
//! # What a crash leaves behind ([`CrashMode`])
//!
//! [`FaultVfs::materialize_crash`] writes into a new directory the state
//! that a crash at the crash point (or now, if there was none) may leave;
//! [`FaultVfs::materialize_after`] does the same for any earlier operation
//! by replaying the record, so that one recorded run yields every crash
//! point. Open the result with the real file system ([`super::vfs::OsVfs`]),
//! never through this vfs.
//!
//! * [`CrashMode::Process`]: the process died, the machine did not. Every
//!   completed write and name operation survives, synced or not (the page
//!   cache is written back later).
//! * [`CrashMode::Lost`]: power loss where nothing unsynced reached the
//!   disk. Each file holds exactly its durable bytes, and only durable names
//!   exist: an unsynced creation or rename is undone, an unsynced removal
//!   did not happen.
//! * [`CrashMode::Torn`]: power loss in the middle of writeback, chosen by a
//!   seed. Per file, a prefix of the bytes written since its last sync
//!   survives, in the order they were written; in a quarter of the cases
//!   all of them. The write that the cut falls into is kept up to the cut
//!   and then, by a coin with three sides, ends there, or runs on to its
//!   full length with zeros (the size was extended, the data never
//!   written), or with garbage (stale blocks). A truncation counts as one
//!   byte. Names: a random prefix of the unsynced name operations
//!   survives, in the order they happened.
//! * [`CrashMode::Prefix`]: the same as `Torn`, but the surviving prefix
//!   (`bytes` of each file's unsynced writes) and the fill are given, and
//!   every unsynced name operation survives. For sweeps over every byte of
//!   one write.
//!
//! What a power loss may not do, in this model: change or lose bytes that
//! a completed `sync_data` covered; undo a name operation that a completed
//! `sync_dir` of its directory covered; persist a later write of a file
//! without every earlier one (writes of one file persist in order, the last
//! one possibly torn); persist a later name operation without every
//! earlier one.
//!
//! # Simplifications
//!
//! * The prefix rule is what ext4 with `data=ordered` gives an appending
//!   writer (the size covering new data is committed only after the data),
//!   plus torn sectors at the end. Writeback that persists a later page of
//!   one file before an earlier one is not modelled; neither is damage to
//!   synced bytes (bit rot, lying disks).
//! * `sync_data` makes a file's bytes and length durable, but never its
//!   name, even though ext4 in practice commits the name along with it.
//! * A failed `sync_data` leaves the written bytes unsynced: a later crash
//!   may keep them or not, as Linux may either write those pages back later
//!   or drop them.
//! * Directories are durable as soon as they are created, and renames
//!   across directories are refused (`Unsupported`); the log needs neither.
//! * Files that exist under the root before this vfs first touches them
//!   are taken to be durable, bytes and name. Files written outside this
//!   vfs (the SQLite index, the `LOCK` file) are not part of the model and
//!   are not materialized: a store opened on a materialized directory
//!   rebuilds its index from the log.
//! * Memory maps are handed out by the real file and are not faulted.
//! * An error from the real file system (not an injected one) is returned
//!   as is and not recorded; the tests are not expected to meet one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::Mmap;

use super::vfs::{OpenMode, OsVfs, Vfs, VfsFile};

/// What a crash leaves on disk; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// The process died; everything it wrote survives.
    Process,
    /// Power loss; only synced bytes and names survive.
    Lost,
    /// Power loss during writeback; a seeded random prefix of the unsynced
    /// writes and name operations survives.
    Torn { seed: u64 },
    /// Power loss during writeback with a chosen prefix: `bytes` of each
    /// file's unsynced writes, and every unsynced name operation.
    Prefix { bytes: u64, fill: Fill },
}

/// What follows the kept part of a torn write, up to the write's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Nothing: the file ends where the kept bytes end.
    Nothing,
    /// Zeros: the file's length covers the write, its data never arrived.
    Zeros,
    /// Pseudo-random bytes from this seed: stale blocks.
    Garbage { seed: u64 },
}

/// Kinds of recorded operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    CreateDir,
    /// `open` with [`OpenMode::CreateNew`].
    Create,
    Write,
    SetLen,
    SyncData,
    Rename,
    RemoveFile,
    SyncDir,
}

/// One recorded mutating operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// 1 for the first operation.
    pub index: u64,
    pub kind: OpKind,
    /// Relative to the root. For a file operation, the file's current name;
    /// for a rename, the source.
    pub path: PathBuf,
    /// Rename target.
    pub to: Option<PathBuf>,
    /// `Write`: the offset written at. `SetLen`: the new length.
    pub offset: u64,
    /// `Write`: the bytes asked to write.
    pub len: u64,
    /// `Write`: the bytes actually written (fewer on a short write).
    pub written: u64,
    /// The injected failure this operation returned, if any.
    pub error: Option<String>,
}

type FileId = u64;

/// A change to the model, as recorded for replay.
#[derive(Debug, Clone)]
enum Change {
    /// A file that existed before this vfs touched it, taken as durable.
    Adopt {
        id: FileId,
        path: PathBuf,
        bytes: Vec<u8>,
    },
    MkDir(PathBuf),
    Create(FileId, PathBuf),
    Write {
        id: FileId,
        offset: u64,
        bytes: Vec<u8>,
    },
    SetLen(FileId, u64),
    Sync(FileId),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
    SyncDir(PathBuf),
    /// A failed operation that changed nothing.
    Nothing,
}

#[derive(Debug, Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct FileModel {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes and truncations since the last sync, in order.
    pending: Vec<DataOp>,
}

#[derive(Debug, Clone)]
enum NameOp {
    Create(PathBuf, FileId),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

impl NameOp {
    fn dir(&self) -> &Path {
        let p = match self {
            NameOp::Create(p, _) | NameOp::Rename(_, p) | NameOp::Remove(p) => p,
        };
        p.parent().unwrap_or(Path::new(""))
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, FileId>) {
        match self {
            NameOp::Create(p, id) => {
                names.insert(p.clone(), *id);
            }
            NameOp::Rename(from, to) => {
                if let Some(id) = names.remove(from) {
                    names.insert(to.clone(), id);
                }
            }
            NameOp::Remove(p) => {
                names.remove(p);
            }
        }
    }
}

/// The modelled state of stable storage and of the page cache above it.
#[derive(Debug, Clone, Default)]
struct Disk {
    files: HashMap<FileId, FileModel>,
    live_names: BTreeMap<PathBuf, FileId>,
    durable_names: BTreeMap<PathBuf, FileId>,
    /// Name operations not yet made durable by a directory sync, in order.
    pending_names: Vec<NameOp>,
    dirs: BTreeSet<PathBuf>,
}

impl Disk {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Adopt { id, path, bytes } => {
                self.add_dirs(path);
                self.files.insert(
                    *id,
                    FileModel {
                        live: bytes.clone(),
                        durable: bytes.clone(),
                        pending: Vec::new(),
                    },
                );
                self.live_names.insert(path.clone(), *id);
                self.durable_names.insert(path.clone(), *id);
            }
            Change::MkDir(path) => {
                self.dirs.insert(path.clone());
                self.add_dirs(path);
            }
            Change::Create(id, path) => {
                self.add_dirs(path);
                self.files.insert(*id, FileModel::default());
                self.name_op(NameOp::Create(path.clone(), *id));
            }
            Change::Write { id, offset, bytes } => {
                let f = self.files.get_mut(id).expect("written files are known");
                write_at(&mut f.live, *offset, bytes);
                f.pending.push(DataOp::Write {
                    offset: *offset,
                    bytes: bytes.clone(),
                });
            }
            Change::SetLen(id, len) => {
                let f = self.files.get_mut(id).expect("truncated files are known");
                f.live.resize(*len as usize, 0);
                f.pending.push(DataOp::SetLen(*len));
            }
            Change::Sync(id) => {
                let f = self.files.get_mut(id).expect("synced files are known");
                f.durable.clone_from(&f.live);
                f.pending.clear();
            }
            Change::Rename(from, to) => self.name_op(NameOp::Rename(from.clone(), to.clone())),
            Change::Remove(path) => self.name_op(NameOp::Remove(path.clone())),
            Change::SyncDir(dir) => {
                let in_dir = |p: &PathBuf| p.parent().unwrap_or(Path::new("")) == dir;
                self.durable_names.retain(|p, _| !in_dir(p));
                for (p, id) in &self.live_names {
                    if in_dir(p) {
                        self.durable_names.insert(p.clone(), *id);
                    }
                }
                self.pending_names.retain(|op| op.dir() != dir);
            }
            Change::Nothing => {}
        }
    }

    fn add_dirs(&mut self, path: &Path) {
        let mut p = path.parent();
        while let Some(d) = p {
            self.dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }

    fn name_op(&mut self, op: NameOp) {
        op.apply(&mut self.live_names);
        self.pending_names.push(op);
    }

    /// The files a crash in `mode` leaves: name → bytes.
    fn crash_image(&self, mode: CrashMode) -> BTreeMap<PathBuf, Vec<u8>> {
        let names = match mode {
            CrashMode::Process => self.live_names.clone(),
            CrashMode::Lost => self.durable_names.clone(),
            CrashMode::Torn { seed } => {
                let mut rng = Rng::new(seed ^ 0xD1B5_4A32_D192_ED03);
                let keep = rng.below(self.pending_names.len() as u64 + 1) as usize;
                self.names_after(keep)
            }
            CrashMode::Prefix { .. } => self.names_after(self.pending_names.len()),
        };
        names
            .into_iter()
            .map(|(path, id)| {
                let f = &self.files[&id];
                let bytes = match mode {
                    CrashMode::Process => f.live.clone(),
                    CrashMode::Lost => f.durable.clone(),
                    CrashMode::Torn { seed } => {
                        let mut rng = Rng::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        let total = f.pending_weight();
                        let cut = if rng.below(4) == 0 {
                            total
                        } else {
                            rng.below(total + 1)
                        };
                        let fill = match rng.below(3) {
                            0 => Fill::Nothing,
                            1 => Fill::Zeros,
                            _ => Fill::Garbage { seed: rng.next() },
                        };
                        f.torn(cut, fill)
                    }
                    CrashMode::Prefix { bytes, fill } => f.torn(bytes, fill),
                };
                (path, bytes)
            })
            .collect()
    }

    fn names_after(&self, keep: usize) -> BTreeMap<PathBuf, FileId> {
        let mut names = self.durable_names.clone();
        for op in &self.pending_names[..keep] {
            op.apply(&mut names);
        }
        names
    }
}

impl FileModel {
    /// Bytes of unsynced writes, plus one per truncation.
    fn pending_weight(&self) -> u64 {
        self.pending
            .iter()
            .map(|op| match op {
                DataOp::Write { bytes, .. } => bytes.len() as u64,
                DataOp::SetLen(_) => 1,
            })
            .sum()
    }

    /// The durable bytes plus the first `keep` units of the unsynced
    /// operations; the write the cut falls into is completed with `fill`.
    fn torn(&self, mut keep: u64, fill: Fill) -> Vec<u8> {
        let mut out = self.durable.clone();
        for op in &self.pending {
            match op {
                DataOp::SetLen(len) => {
                    if keep == 0 {
                        break;
                    }
                    keep -= 1;
                    out.resize(*len as usize, 0);
                }
                DataOp::Write { offset, bytes } => {
                    if keep >= bytes.len() as u64 {
                        keep -= bytes.len() as u64;
                        write_at(&mut out, *offset, bytes);
                        continue;
                    }
                    let mut part = bytes[..keep as usize].to_vec();
                    match fill {
                        Fill::Nothing => {}
                        Fill::Zeros => part.resize(bytes.len(), 0),
                        Fill::Garbage { seed } => {
                            let mut rng = Rng::new(seed);
                            part.extend((part.len()..bytes.len()).map(|_| rng.next() as u8));
                        }
                    }
                    write_at(&mut out, *offset, &part);
                    break;
                }
            }
        }
        out
    }
}

fn write_at(file: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[offset as usize..end].copy_from_slice(bytes);
}

/// SplitMix64: small, seedable, good enough to pick crash points.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Faults to inject and the record so far, under one lock so that the
/// record's order is the order the operations happened in.
#[derive(Debug, Default)]
struct State {
    disk: Disk,
    ops: Vec<Op>,
    /// Every change with the number of operations done once it applies.
    changes: Vec<(u64, Change)>,
    next_id: FileId,
    sync_calls: u64,
    /// Fail the `sync_data` call with this number.
    fail_sync_call: Option<u64>,
    /// Bytes writes may still add; `None` when space is unlimited.
    space_bytes: Option<u64>,
    short_writes: bool,
    crash_after: Option<u64>,
}

impl State {
    fn op_count(&self) -> u64 {
        self.ops.len() as u64
    }

    fn record(&mut self, shared: &Shared, mut op: Op, change: Change) {
        op.index = self.op_count() + 1;
        self.ops.push(op);
        self.disk.apply(&change);
        self.changes.push((self.op_count(), change));
        if self.crash_after == Some(self.op_count()) {
            shared.crash(self.op_count());
        }
    }

    /// The model's id for an existing file, adopting it if it is new to us.
    fn file_id(&mut self, rel: &Path, real: &Path) -> io::Result<FileId> {
        if let Some(id) = self.disk.live_names.get(rel) {
            return Ok(*id);
        }
        let bytes = std::fs::read(real)?;
        let id = self.new_id();
        let change = Change::Adopt {
            id,
            path: rel.to_path_buf(),
            bytes,
        };
        self.disk.apply(&change);
        self.changes.push((self.op_count(), change));
        Ok(id)
    }

    fn new_id(&mut self) -> FileId {
        self.next_id += 1;
        self.next_id
    }

    fn name_of(&self, id: FileId) -> Option<PathBuf> {
        self.disk
            .live_names
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(p, _)| p.clone())
    }
}

fn op(kind: OpKind, path: &Path) -> Op {
    Op {
        index: 0,
        kind,
        path: path.to_path_buf(),
        to: None,
        offset: 0,
        len: 0,
        written: 0,
        error: None,
    }
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    /// The operation the machine crashed after; `NOT_CRASHED` while up.
    crashed_after: AtomicU64,
    state: Mutex<State>,
}

const NOT_CRASHED: u64 = u64::MAX;

impl Shared {
    fn crash(&self, after: u64) {
        self.crashed_after.store(after, Ordering::Release);
    }

    /// Fails once the machine is down; checked by every operation.
    fn check_up(&self) -> io::Result<()> {
        match self.crashed_after.load(Ordering::Acquire) {
            NOT_CRASHED => Ok(()),
            after => Err(io::Error::other(format!(
                "simulated crash after operation {after}: the machine is down"
            ))),
        }
    }
}

/// A fault-injecting [`Vfs`] over a real directory; see the module
/// documentation. Cheap to clone; clones share one model and record.
#[derive(Clone)]
pub struct FaultVfs {
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultVfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultVfs")
            .field("root", &self.shared.root)
            .field("ops", &self.op_count())
            .field("crashed", &self.is_crashed())
            .finish()
    }
}

impl FaultVfs {
    /// A vfs over the directory `root` (it need not exist yet). Paths given
    /// to it must lie under `root`, spelled the same way.
    pub fn new(root: impl Into<PathBuf>) -> FaultVfs {
        let mut state = State::default();
        state.disk.dirs.insert(PathBuf::new());
        FaultVfs {
            shared: Arc::new(Shared {
                root: root.into(),
                crashed_after: AtomicU64::new(NOT_CRASHED),
                state: Mutex::new(state),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held except on a bug here.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutating operations done so far (the index of the last one).
    pub fn op_count(&self) -> u64 {
        self.state().op_count()
    }

    /// Every recorded operation, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.state().ops.clone()
    }

    /// The `nth` call of `sync_data` from now (1: the next one) fails with
    /// `EIO`, once; later calls succeed.
    pub fn fail_sync_data(&self, nth: u64) {
        assert!(nth >= 1);
        let mut st = self.state();
        st.fail_sync_call = Some(st.sync_calls + nth);
    }

    /// From now on writes may add `bytes` more bytes; a write that does not
    /// fit fails with `ENOSPC`, after writing the part that fits if
    /// `short_writes`. Truncations always succeed.
    pub fn limit_space(&self, bytes: u64, short_writes: bool) {
        let mut st = self.state();
        st.space_bytes = Some(bytes);
        st.short_writes = short_writes;
    }

    /// Space is back: writes succeed again.
    pub fn restore_space(&self) {
        self.state().space_bytes = None;
    }

    /// Operation `n` is the last one to happen; every later one fails, as
    /// do reads. `crash_after(self.op_count())` crashes now.
    pub fn crash_after(&self, n: u64) {
        let mut st = self.state();
        assert!(st.op_count() <= n, "cannot crash in the past");
        st.crash_after = Some(n);
        if st.op_count() == n {
            self.shared.crash(n);
        }
    }

    pub fn is_crashed(&self) -> bool {
        self.shared.crashed_after.load(Ordering::Acquire) != NOT_CRASHED
    }

    /// Writes into `target`, which must not exist or be empty, the files
    /// that a crash in `mode` leaves: at the crash point if there was one,
    /// otherwise now.
    pub fn materialize_crash(&self, target: &Path, mode: CrashMode) -> io::Result<()> {
        let (dirs, image) = {
            let st = self.state();
            (st.disk.dirs.clone(), st.disk.crash_image(mode))
        };
        write_image(target, &dirs, &image)
    }

    /// Like [`FaultVfs::materialize_crash`] for a crash right after
    /// operation `n` (0: before the first), replaying the record.
    pub fn materialize_after(&self, n: u64, target: &Path, mode: CrashMode) -> io::Result<()> {
        let (dirs, image) = {
            let st = self.state();
            assert!(n <= st.op_count(), "operation {n} has not happened");
            let mut disk = Disk::default();
            disk.dirs.insert(PathBuf::new());
            for (after, change) in &st.changes {
                if *after > n {
                    break;
                }
                disk.apply(change);
            }
            (disk.dirs.clone(), disk.crash_image(mode))
        };
        write_image(target, &dirs, &image)
    }

    /// Checks that the model's live bytes equal the real files; a test of
    /// this module.
    pub fn check_live_model(&self) -> io::Result<()> {
        let st = self.state();
        for (path, id) in &st.disk.live_names {
            let real = std::fs::read(self.shared.root.join(path))?;
            if real != st.disk.files[id].live {
                return Err(io::Error::other(format!(
                    "{}: the model's live bytes differ from the real file",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    fn rel(&self, path: &Path) -> io::Result<PathBuf> {
        path.strip_prefix(&self.shared.root)
            .map(Path::to_path_buf)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is outside the FaultVfs root {}",
                        path.display(),
                        self.shared.root.display()
                    ),
                )
            })
    }
}

fn write_image(
    target: &Path,
    dirs: &BTreeSet<PathBuf>,
    image: &BTreeMap<PathBuf, Vec<u8>>,
) -> io::Result<()> {
    if target.exists() && std::fs::read_dir(target)?.next().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: not empty; materialize into a new directory",
                target.display()
            ),
        ));
    }
    for d in dirs {
        std::fs::create_dir_all(target.join(d))?;
    }
    for (path, bytes) in image {
        std::fs::write(target.join(path), bytes)?;
    }
    Ok(())
}

impl Vfs for FaultVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let rel = self.rel(path)?;
        let mut st = self.state();
        self.shared.check_up()?;
        let (id, real) = if mode == OpenMode::CreateNew {
            let real = OsVfs.open(path, mode)?;
            let id = st.new_id();
            st.record(
                &self.shared,
                op(OpKind::Create, &rel),
                Change::Create(id, rel.clone()),
            );
            (id, real)
        } else {
            let id = st.file_id(&rel, path)?;
            (id, OsVfs.open(path, mode)?)
        };
        Ok(Arc::new(FaultFile {
            vfs: self.clone(),
            id,
            path: rel,
            real,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (rel_from, rel_to) = (self.rel(from)?, self.rel(to)?);
        if rel_from.parent() != rel_to.parent() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "FaultVfs models renames within one directory only",
            ));
        }
        let mut st = self.state();
        self.shared.check_up()?;
        st.file_id(&rel_from, from)?;
        OsVfs.rename(from, to)?;
        let mut o = op(OpKind::Rename, &rel_from);
        o.to = Some(rel_to.clone());
        st.record(&self.shared, o, Change::Rename(rel_from, rel_to));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let rel = self.rel(path)?;
        let mut st = self.state();
        self.shared.check_up()?;
        st.file_id(&rel, path)?;
        OsVfs.remove_file(path)?;
        st.record(
            &self.shared,
            op(OpKind::RemoveFile, &rel),
            Change::Remove(rel.clone()),
        );
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let rel = self.rel(path)?;
        let mut st = self.state();
        self.shared.check_up()?;
        if !path.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such directory", path.display()),
            ));
        }
        st.record(
            &self.shared,
            op(OpKind::SyncDir, &rel),
            Change::SyncDir(rel.clone()),
        );
        Ok(())
    }

    fn list(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.shared.check_up()?;
        OsVfs.list(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let rel = self.rel(path)?;
        let mut st = self.state();
        self.shared.check_up()?;
        OsVfs.create_dir_all(path)?;
        st.record(
            &self.shared,
            op(OpKind::CreateDir, &rel),
            Change::MkDir(rel.clone()),
        );
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        OsVfs.exists(path)
    }
}

/// A file handed out by [`FaultVfs`].
struct FaultFile {
    vfs: FaultVfs,
    id: FileId,
    /// The name it was opened under (it may have been renamed since).
    path: PathBuf,
    real: Arc<dyn VfsFile>,
}

impl fmt::Debug for FaultFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFile")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish()
    }
}

impl FaultFile {
    fn op(&self, st: &State, kind: OpKind) -> Op {
        op(
            kind,
            &st.name_of(self.id).unwrap_or_else(|| self.path.clone()),
        )
    }
}

impl VfsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.vfs.shared.check_up()?;
        self.real.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.vfs.state();
        self.vfs.shared.check_up()?;
        let mut o = self.op(&st, OpKind::Write);
        o.offset = offset;
        o.len = buf.len() as u64;
        let mut n = buf.len();
        let mut result = Ok(());
        if let Some(left) = st.space_bytes
            && buf.len() as u64 > left
        {
            n = if st.short_writes { left as usize } else { 0 };
            let e = io::Error::from_raw_os_error(libc::ENOSPC);
            o.error = Some(e.to_string());
            result = Err(e);
        }
        if n > 0 {
            self.real.write_all_at(&buf[..n], offset)?;
        }
        if let Some(left) = &mut st.space_bytes {
            *left -= n as u64;
        }
        o.written = n as u64;
        let change = if n > 0 {
            Change::Write {
                id: self.id,
                offset,
                bytes: buf[..n].to_vec(),
            }
        } else {
            Change::Nothing
        };
        st.record(&self.vfs.shared, o, change);
        result
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.vfs.state();
        self.vfs.shared.check_up()?;
        st.sync_calls += 1;
        let mut o = self.op(&st, OpKind::SyncData);
        if st.fail_sync_call == Some(st.sync_calls) {
            st.fail_sync_call = None;
            let e = io::Error::from_raw_os_error(libc::EIO);
            o.error = Some(e.to_string());
            st.record(&self.vfs.shared, o, Change::Nothing);
            return Err(e);
        }
        st.record(&self.vfs.shared, o, Change::Sync(self.id));
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.vfs.state();
        self.vfs.shared.check_up()?;
        self.real.set_len(len)?;
        let mut o = self.op(&st, OpKind::SetLen);
        o.offset = len;
        st.record(&self.vfs.shared, o, Change::SetLen(self.id, len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.vfs.shared.check_up()?;
        self.real.len()
    }

    fn map(&self, len: u64) -> io::Result<Option<Mmap>> {
        self.vfs.shared.check_up()?;
        self.real.map(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(durable: &[u8], pending: Vec<DataOp>) -> FileModel {
        let mut live = durable.to_vec();
        for op in &pending {
            match op {
                DataOp::Write { offset, bytes } => write_at(&mut live, *offset, bytes),
                DataOp::SetLen(len) => live.resize(*len as usize, 0),
            }
        }
        FileModel {
            live,
            durable: durable.to_vec(),
            pending,
        }
    }

    #[test]
    fn torn_keeps_a_prefix_of_the_unsynced_writes_in_order() {
        let f = file(
            b"abc",
            vec![
                DataOp::Write {
                    offset: 3,
                    bytes: b"defg".to_vec(),
                },
                DataOp::SetLen(5),
                DataOp::Write {
                    offset: 5,
                    bytes: b"xy".to_vec(),
                },
            ],
        );
        assert_eq!(f.torn(0, Fill::Nothing), b"abc");
        assert_eq!(f.torn(2, Fill::Nothing), b"abcde");
        assert_eq!(f.torn(2, Fill::Zeros), b"abcde\0\0");
        assert_eq!(f.torn(4, Fill::Nothing), b"abcdefg");
        assert_eq!(f.torn(5, Fill::Nothing), b"abcde");
        assert_eq!(f.torn(6, Fill::Nothing), b"abcdex");
        assert_eq!(f.torn(7, Fill::Nothing), f.live);
        assert_eq!(f.torn(100, Fill::Zeros), f.live);
        let g = f.torn(1, Fill::Garbage { seed: 7 });
        assert_eq!((&g[..4], g.len()), (&b"abcd"[..], 7));
    }

    #[test]
    fn unsynced_names_are_lost_or_kept_as_a_prefix() {
        let mut d = Disk::default();
        let dir = PathBuf::from("log");
        d.apply(&Change::MkDir(dir.clone()));
        d.apply(&Change::Create(1, dir.join("a.tmp")));
        d.apply(&Change::Write {
            id: 1,
            offset: 0,
            bytes: b"hdr".to_vec(),
        });
        d.apply(&Change::Sync(1));
        d.apply(&Change::Rename(dir.join("a.tmp"), dir.join("a")));
        let keys = |m: BTreeMap<PathBuf, Vec<u8>>| m.into_keys().collect::<Vec<_>>();
        assert!(d.crash_image(CrashMode::Lost).is_empty());
        assert_eq!(keys(d.crash_image(CrashMode::Process)), [dir.join("a")]);
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            seen.insert(keys(d.crash_image(CrashMode::Torn { seed })));
        }
        assert_eq!(seen.len(), 3, "none, the creation, or both: {seen:?}");
        d.apply(&Change::SyncDir(dir.clone()));
        assert_eq!(
            d.crash_image(CrashMode::Lost),
            BTreeMap::from([(dir.join("a"), b"hdr".to_vec())])
        );
    }
}
