//! A consistent copy of a live store: [`backup`].
//!
//! It runs beside a running application without its writer lock (it reads
//! through a read-only handle) and makes a directory that opens as a store,
//! read-write, with no extra step. The order is what makes it consistent:
//!
//! 1. `DEST/BACKUP-INCOMPLETE` is written first (durably) and removed
//!    last: a backup cut short (killed, disk full) is refused by
//!    [`crate::Store::open`] with a message that says so, never opened as
//!    if it were whole. A new DEST is made under a hidden staging name
//!    with the marker already in it and renamed into place, so it never
//!    exists without its marker (an empty directory would open as a new,
//!    empty store).
//! 2. The SQLite files (the index, the views, a replica's outbox) are
//!    copied first, each as one snapshot through SQLite's online backup
//!    API, so that their checkpoints never lie beyond the log copied after
//!    them: on open they catch up from the log as after a crash.
//! 3. The log: the handle's view is refreshed, and every segment is copied
//!    up to that view's end, which is a batch boundary at or after the
//!    durable head when the backup started. Sealed segments never change:
//!    one already in DEST with the same length is kept (an incremental
//!    backup copies only what DEST lacks), and with
//!    [`BackupOptions::link`] they are hard-linked instead of copied (same
//!    file system). The active segment is extended from what DEST holds of
//!    it, since written frames never change either. Both hold only while
//!    the source's history is the one DEST copied: when a repair rewrote
//!    it since (the log's generation differs), DEST's log is started over,
//!    and segments the source no longer has are removed.
//! 4. Every file and directory is synced, then the marker removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::index::INDEX_FILE;
use crate::log::{GENERATION_FILE, LOG_DIR, read_generation};
use crate::projection::VIEWS_FILE;
use crate::store::{BACKUP_INCOMPLETE_FILE, REPLICA_LOG_FILE, Store};
use crate::sync::local::OUTBOX_FILE;

/// The SQLite files of a store, copied as snapshots before the log.
pub const SNAPSHOT_FILES: &[&str] = &[INDEX_FILE, VIEWS_FILE, OUTBOX_FILE];
/// Small files of a store copied as they are (markers).
pub const MARKER_FILES: &[&str] = &[REPLICA_LOG_FILE];
/// Bytes copied per read and write.
pub const COPY_CHUNK_BYTES: usize = 4 << 20;

/// How to back up.
#[derive(Clone, Default)]
pub struct BackupOptions {
    /// Hard-link sealed segments instead of copying them (DEST must be on
    /// the same file system). They never change, so the link is a copy.
    pub link: bool,
    /// Called with (bytes done, bytes to do) as the log is copied.
    pub progress: Option<crate::ProgressHook>,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// What a backup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupReport {
    /// The last position DEST holds.
    pub head: u64,
    /// Segment files copied (whole or the part DEST lacked).
    pub segments_copied: u64,
    /// Sealed segment files hard-linked.
    pub segments_linked: u64,
    /// Sealed segment files DEST already held whole.
    pub segments_kept: u64,
    /// Log bytes written to DEST.
    pub log_bytes_copied: u64,
    /// The SQLite files snapshotted, by name.
    pub snapshots: Vec<String>,
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Backs up the store in `source` into `dest` (created if missing; a
/// previous backup there is brought up to date). See the module
/// documentation.
pub fn backup(source: &Path, dest: &Path, options: &BackupOptions) -> Result<BackupReport> {
    let store = Store::open_read_only(source)?;
    let mut report = BackupReport::default();
    let dest_log = dest.join(LOG_DIR);
    let marker = dest.join(BACKUP_INCOMPLETE_FILE);
    const MARKER: &[u8] = b"a backup is being written here; it is not a store until it ends\n";
    if !dest.exists() {
        // A new DEST never exists without its marker: it is made under a
        // staging name with the marker in it, then renamed into place
        // (killed before the rename, DEST does not exist at all). Made in
        // place, a kill between the directory and the marker would leave
        // a directory that opens as a new, empty store.
        let staging = staging_dir(dest)?;
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(
                &staging,
                "removing an interrupted backup's staging directory",
            ))?;
        }
        fs::create_dir_all(&staging).map_err(io_err(&staging, "creating the backup directory"))?;
        write_durably(&staging.join(BACKUP_INCOMPLETE_FILE), MARKER)?;
        sync_dir(&staging)?;
        fs::rename(&staging, dest)
            .map_err(io_err(dest, "moving the backup directory into place"))?;
        sync_dir(staging.parent().expect("a staging directory has a parent"))?;
    } else {
        write_durably(&marker, MARKER)?;
        sync_dir(dest)?;
    }
    fs::create_dir_all(&dest_log).map_err(io_err(&dest_log, "creating the backup directory"))?;

    // 2. SQLite snapshots, before the log.
    for name in SNAPSHOT_FILES {
        let from = source.join(name);
        if !from.exists() {
            continue;
        }
        snapshot(&from, &dest.join(name))?;
        report.snapshots.push((*name).to_owned());
    }

    // 3. The log, up to this handle's view. What DEST holds of it is a
    // prefix of the source's only within one generation of its history.
    let generation = source.join(LOG_DIR).join(GENERATION_FILE);
    let source_generation = read_generation(&source.join(LOG_DIR))?;
    if read_generation(&dest_log).ok() != Some(source_generation) {
        for entry in
            fs::read_dir(&dest_log).map_err(io_err(&dest_log, "listing the backup's log"))?
        {
            let path = entry
                .map_err(io_err(&dest_log, "listing the backup's log"))?
                .path();
            fs::remove_file(&path).map_err(io_err(&path, "removing an older history's segment"))?;
        }
    }
    report.head = store.refresh()?;
    let segments = store.log().segments();
    let total: u64 = segments.iter().map(|s| s.readable_len()).sum();
    let mut done = 0u64;
    for segment in &segments {
        let from = segment.path();
        let name = from.file_name().expect("a segment file has a name");
        let to = dest_log.join(name);
        let len = segment.readable_len();
        let held = fs::metadata(&to).map_or(0, |m| m.len());
        if segment.is_sealed() && held == len {
            report.segments_kept += 1;
        } else if segment.is_sealed() && options.link {
            let _ = fs::remove_file(&to);
            fs::hard_link(from, &to).map_err(io_err(&to, "hard-linking a sealed segment"))?;
            report.segments_linked += 1;
        } else {
            // Frames never change once written: what DEST holds of this
            // file (from an earlier backup) is a prefix of it.
            let start = if held <= len { held } else { 0 };
            report.log_bytes_copied += copy_range(from, &to, start, len)?;
            report.segments_copied += 1;
        }
        done += len;
        if let Some(p) = &options.progress {
            (p.0)(done, total);
        }
    }
    // Segments the source no longer has (a repair removed them) go.
    let names: Vec<_> = segments
        .iter()
        .filter_map(|s| s.path().file_name())
        .collect();
    for entry in fs::read_dir(&dest_log).map_err(io_err(&dest_log, "listing the backup's log"))? {
        let entry = entry.map_err(io_err(&dest_log, "listing the backup's log"))?;
        let name = entry.file_name();
        if name != GENERATION_FILE && !names.contains(&name.as_os_str()) {
            fs::remove_file(entry.path())
                .map_err(io_err(&entry.path(), "removing a stale segment"))?;
        }
    }
    let small = MARKER_FILES
        .iter()
        .map(|name| (source.join(name), dest.join(name)))
        .chain([(generation, dest_log.join(GENERATION_FILE))]);
    for (from, to) in small {
        if from.exists() {
            copy_synced(&from, &to)?;
        }
    }
    sync_dir(&dest_log)?;
    drop(store);

    // 4. Whole: the marker goes last.
    fs::remove_file(&marker).map_err(io_err(&marker, "removing the backup marker"))?;
    sync_dir(dest)?;
    Ok(report)
}

/// One consistent snapshot of an SQLite database, written to a temporary
/// file, synced, and renamed into place.
fn snapshot(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("sqlite.backup-tmp");
    let _ = fs::remove_file(&tmp);
    let sqlite = |source| Error::Io {
        path: from.to_path_buf(),
        action: "taking an SQLite snapshot",
        source: io::Error::other(source),
    };
    let conn = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sqlite)?;
    {
        // All pages in one step: one read transaction, so a writer that
        // commits meanwhile (the indexer, every few milliseconds) cannot
        // make the copy start over, as it would between steps.
        let mut out = rusqlite::Connection::open(&tmp).map_err(sqlite)?;
        let copy = rusqlite::backup::Backup::new(&conn, &mut out).map_err(sqlite)?;
        match copy.step(-1).map_err(sqlite)? {
            rusqlite::backup::StepResult::Done => {}
            other => {
                return Err(Error::Io {
                    path: from.to_path_buf(),
                    action: "taking an SQLite snapshot",
                    source: io::Error::other(format!("the copy stopped: {other:?}; try again")),
                });
            }
        }
    }
    drop(conn);
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp, "syncing an SQLite snapshot"))?;
    fs::rename(&tmp, to).map_err(io_err(to, "renaming an SQLite snapshot"))?;
    // A snapshot stands alone: stale WAL files of an older one must go.
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(PathBuf::from(format!("{}{suffix}", to.display())));
    }
    Ok(())
}

/// Copies bytes `[start, end)` of `from` to the same offsets of `to`
/// (created, or cut to `start` first), then syncs `to`. Returns the bytes
/// copied.
fn copy_range(from: &Path, to: &Path, start: u64, end: u64) -> Result<u64> {
    let mut src = File::open(from).map_err(io_err(from, "opening a segment to back up"))?;
    let mut dst = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(to)
        .map_err(io_err(to, "opening a backup segment"))?;
    dst.set_len(start)
        .map_err(io_err(to, "cutting a backup segment"))?;
    src.seek(SeekFrom::Start(start))
        .and_then(|_| dst.seek(SeekFrom::Start(start)))
        .map_err(io_err(to, "seeking in a segment"))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut left = end.saturating_sub(start);
    while left > 0 {
        let want = (left as usize).min(buf.len());
        src.read_exact(&mut buf[..want])
            .map_err(io_err(from, "reading a segment to back up"))?;
        dst.write_all(&buf[..want])
            .map_err(io_err(to, "writing a backup segment"))?;
        left -= want as u64;
    }
    dst.sync_all()
        .map_err(io_err(to, "syncing a backup segment"))?;
    Ok(end.saturating_sub(start))
}

/// Copies a small file whole and syncs the copy.
fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).map_err(io_err(from, "copying a store file"))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io_err(to, "syncing a copied store file"))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path, "writing the backup marker"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path, "writing the backup marker"))
}

/// Where a new DEST is made before it is renamed into place: a hidden
/// sibling, so that the rename stays within one file system.
fn staging_dir(dest: &Path) -> Result<std::path::PathBuf> {
    let name = dest.file_name().ok_or_else(|| Error::Io {
        path: dest.to_path_buf(),
        action: "naming the backup directory",
        source: io::Error::new(io::ErrorKind::InvalidInput, "DEST has no final name"),
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut staged = std::ffi::OsString::from(".");
    staged.push(name);
    staged.push(".backup-staging");
    Ok(parent.join(staged))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing a backup directory"))
}
