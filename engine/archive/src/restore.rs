//! Rebuilding a store directory from an archive.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use strata::log::{GENERATION_FILE, LOG_DIR};
use strata::{BACKUP_INCOMPLETE_FILE, ProgressHook, Store};

use crate::manifest::{Manifest, parse_chunk_key, segment_key};
use crate::{ArchiveError, Target};

/// What `BACKUP-INCOMPLETE` says while a restore writes.
const MARKER_TEXT: &[u8] =
    b"a restore from an archive is being written here; it is not a store until it ends\n";

/// How to restore.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Called with (bytes done, bytes to do) as segments are written.
    pub progress: Option<ProgressHook>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions").finish_non_exhaustive()
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored store's head: every position up to it is back.
    pub head: u64,
    /// The head the archive's record promised (at most `head`).
    pub archived_head: u64,
    pub store_id: String,
    pub generation: u64,
    pub segments: u64,
    /// Objects read (whole segments and chunks).
    pub objects: u64,
    pub bytes: u64,
}

/// Rebuilds the store directory `dest` (new, or empty) from the archive in
/// `target`: every archived segment, each object's CRC-32 checked against
/// the record, the log's generation, then the store opened read-only to
/// check that its id and head are the archive's. The index and the views
/// are rebuilt from the log when the store first opens read-write.
///
/// As with a backup, `dest/BACKUP-INCOMPLETE` is written first and removed
/// last: a restore cut short is refused as a store (restore again into
/// it: a directory holding only that marker and a partial log counts as
/// empty).
pub fn restore(
    target: &dyn Target,
    dest: &Path,
    options: &RestoreOptions,
) -> Result<RestoreReport, ArchiveError> {
    let manifest = Manifest::load(target)?.ok_or_else(|| ArchiveError::NoArchive {
        url: target.url().to_owned(),
    })?;
    let io = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io {
            path,
            action,
            source,
        }
    };
    prepare(dest)?;
    fs::create_dir_all(dest).map_err(io(dest, "creating the restore's destination"))?;
    // The marker before anything else: a restore cut short at any point
    // leaves a directory that is refused as a store, and that a restore
    // run again accepts.
    let marker = dest.join(BACKUP_INCOMPLETE_FILE);
    write_synced(&marker, MARKER_TEXT)?;
    sync_dir(dest)?;
    let log_dir = dest.join(LOG_DIR);
    fs::create_dir_all(&log_dir).map_err(io(&log_dir, "creating the restored log"))?;

    let total = manifest
        .segments
        .iter()
        .fold(0u64, |t, s| t.saturating_add(s.len));
    let mut report = RestoreReport {
        head: 0,
        archived_head: manifest.head,
        store_id: manifest.store_id.clone(),
        generation: manifest.generation,
        segments: 0,
        objects: 0,
        bytes: 0,
    };
    let corrupt = |key: &str, detail: String| ArchiveError::Corrupt {
        url: target.url().to_owned(),
        key: key.to_owned(),
        what: "recorded",
        detail,
    };
    for entry in &manifest.segments {
        if entry.len == 0 {
            continue;
        }
        let path = log_dir.join(&entry.name);
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(io(&path, "creating a restored segment"))?;
        let pieces = match entry.whole_crc32 {
            Some(crc) => vec![Piece {
                key: segment_key(manifest.generation, &entry.name),
                start: 0,
                end: entry.len,
                crc,
            }],
            None => chain(target, &manifest, &entry.name, entry.len)?,
        };
        for Piece {
            key,
            start,
            end,
            crc,
        } in pieces
        {
            let bytes = target
                .get(&key)
                .map_err(ArchiveError::target(target, format!("downloading {key}")))?
                .ok_or_else(|| corrupt(&key, "it is missing".into()))?;
            let got = crc32fast::hash(&bytes);
            if bytes.len() as u64 != end - start || crc != got {
                return Err(corrupt(
                    &key,
                    format!(
                        "{} bytes with CRC-32 {got:08x}, where the record says {} bytes with {crc:08x}",
                        bytes.len(),
                        end - start,
                    ),
                ));
            }
            out.write_all(&bytes)
                .map_err(io(&path, "writing a restored segment"))?;
            report.objects += 1;
            report.bytes += bytes.len() as u64;
            if let Some(p) = &options.progress {
                (p.0)(report.bytes, total);
            }
        }
        out.sync_all()
            .map_err(io(&path, "syncing a restored segment"))?;
        report.segments += 1;
    }
    if manifest.generation > 0 {
        write_synced(
            &log_dir.join(GENERATION_FILE),
            format!("{}\n", manifest.generation).as_bytes(),
        )?;
    }
    sync_dir(&log_dir)?;
    fs::remove_file(&marker).map_err(io(&marker, "removing the restore marker"))?;
    sync_dir(dest)?;

    // What was written is this archive's store, up to its head at least;
    // if not, the marker goes back: the directory is not a store.
    let checked = (|| {
        let store = Store::open_read_only(dest)?;
        Ok::<_, ArchiveError>((store.head(), store.store_id().to_string()))
    })();
    let failed = match &checked {
        Ok((head, id)) => *id != manifest.store_id || *head < manifest.head,
        Err(_) => true,
    };
    if failed {
        write_synced(&marker, MARKER_TEXT)?;
        sync_dir(dest)?;
    }
    let (head, id) = checked?;
    report.head = head;
    if id != manifest.store_id {
        return Err(corrupt(
            crate::MANIFEST_KEY,
            format!(
                "the segments hold store {id}, the record names {}",
                manifest.store_id
            ),
        ));
    }
    if report.head < manifest.head {
        return Err(corrupt(
            crate::MANIFEST_KEY,
            format!(
                "the restored log ends at position {}, the record says {} was archived",
                report.head, manifest.head
            ),
        ));
    }
    Ok(report)
}

/// One object of a restored segment: bytes `start..end` of it, whose
/// CRC-32 the record (or the chunk's key) gives.
struct Piece {
    key: String,
    start: u64,
    end: u64,
    crc: u32,
}

/// The chunks that make bytes `0..len` of segment `name`, in order: from
/// each offset, the chunk that starts there and reaches furthest without
/// passing `len` (chunks an interrupted step uploaded beyond the record
/// are not part of it).
fn chain(
    target: &dyn Target,
    manifest: &Manifest,
    name: &str,
    len: u64,
) -> Result<Vec<Piece>, ArchiveError> {
    let prefix = format!("{}.", segment_key(manifest.generation, name));
    let keys = target.list(&prefix).map_err(ArchiveError::target(
        target,
        format!("listing the chunks of {name}"),
    ))?;
    let chunks: Vec<(String, u64, u64, u32)> = keys
        .into_iter()
        .filter_map(|k| parse_chunk_key(&k, name).map(|(s, e, c)| (k, s, e, c)))
        .filter(|(_, _, end, _)| *end <= len)
        .collect();
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let next = chunks
            .iter()
            .filter(|(_, start, _, _)| *start == at)
            .max_by_key(|(_, _, end, _)| *end)
            .ok_or_else(|| ArchiveError::Corrupt {
                url: target.url().to_owned(),
                key: prefix.clone(),
                what: "recorded",
                detail: format!("no chunk starts at byte {at} of the {len} archived"),
            })?;
        out.push(Piece {
            key: next.0.clone(),
            start: next.1,
            end: next.2,
            crc: next.3,
        });
        at = next.2;
    }
    Ok(out)
}

/// `dest` must be new or empty, or what an interrupted restore left (the
/// marker, a log directory): that is cleared.
fn prepare(dest: &Path) -> Result<(), ArchiveError> {
    let entries: Vec<_> = match fs::read_dir(dest) {
        Ok(e) => e.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ArchiveError::Io {
                path: dest.to_path_buf(),
                action: "reading the restore's destination",
                source,
            });
        }
    };
    if entries.is_empty() {
        return Ok(());
    }
    let interrupted = entries.iter().any(|n| n == BACKUP_INCOMPLETE_FILE)
        && entries
            .iter()
            .all(|n| n == BACKUP_INCOMPLETE_FILE || n == LOG_DIR);
    if !interrupted {
        return Err(ArchiveError::DestNotEmpty {
            dest: dest.to_path_buf(),
        });
    }
    let log = dest.join(LOG_DIR);
    if log.exists() {
        fs::remove_dir_all(&log).map_err(|source| ArchiveError::Io {
            path: log,
            action: "clearing an interrupted restore",
            source,
        })?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut f = File::create(path).map_err(|source| ArchiveError::Io {
        path: path.to_path_buf(),
        action: "writing a file of the restored store",
        source,
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| ArchiveError::Io {
            path: path.to_path_buf(),
            action: "writing a file of the restored store",
            source,
        })
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ArchiveError::Io {
            path: dir.to_path_buf(),
            action: "syncing a restored directory",
            source,
        })
}
