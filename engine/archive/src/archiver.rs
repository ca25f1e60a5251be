//! The archiver: copies a store's log to a [`Target`] as it grows.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata::Store;
use strata::log::read_generation;

use crate::manifest::{
    CHUNK_BYTES_MAX, Manifest, SegmentEntry, WHOLE_BYTES_MAX, chunk_key, parse_chunk_key,
    segment_key,
};
use crate::{ArchiveError, Target};

/// Chunks of one level that the archiver merges into one (see
/// `Archiver::merge_chunks`).
pub const CHUNK_MERGE_FANOUT: usize = 16;
/// Default [`ArchiveOptions::interval`].
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default [`ArchiveOptions::retry_min`].
pub const RETRY_MIN_DEFAULT: Duration = Duration::from_millis(500);
/// Default [`ArchiveOptions::retry_max`].
pub const RETRY_MAX_DEFAULT: Duration = Duration::from_secs(60);

/// How the archive thread runs.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Time between steps: how long new bytes of the active segment, and a
    /// segment just sealed, may wait before they are archived.
    pub interval: Duration,
    /// The first wait after a failed step; it doubles with each failure
    /// in a row, up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            interval: INTERVAL_DEFAULT,
            retry_min: RETRY_MIN_DEFAULT,
            retry_max: RETRY_MAX_DEFAULT,
        }
    }
}

/// How far an archive got, updated by its thread.
#[derive(Debug, Default)]
pub struct ArchiveStatus {
    /// Every position up to this one is archived.
    pub head: AtomicU64,
    /// Steps that ended in an error (each is retried).
    pub failures: AtomicU64,
    /// Steps that ended well.
    pub steps: AtomicU64,
    /// Bytes uploaded (and verified) so far.
    pub bytes: AtomicU64,
    /// Objects uploaded so far.
    pub objects: AtomicU64,
    /// The last step's error, `None` once a step ends well.
    pub last_error: Mutex<Option<String>>,
}

impl ArchiveStatus {
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Copies one store's log to a target, a step at a time.
#[derive(Debug)]
pub struct Archiver {
    store: Store,
    target: Arc<dyn Target>,
    generation: u64,
    manifest: Option<Manifest>,
    /// The record as the target held it when this archiver last read or
    /// wrote it: a record found otherwise before a write means another
    /// archiver writes there too.
    saved: Option<Manifest>,
    /// Another archiver was found writing to the target: every later step
    /// fails (until a restart), rather than take turns overwriting it.
    contended: bool,
    /// The chunks of the active segment, in order, as this archiver knows
    /// them (read from the target when the active segment changes).
    active: Option<ActiveChunks>,
    status: Arc<ArchiveStatus>,
}

/// The active segment's chain of chunks.
#[derive(Debug)]
struct ActiveChunks {
    name: String,
    path: std::path::PathBuf,
    chunks: Vec<Chunk>,
}

/// One chunk: bytes `start..end`, its CRC-32, and how many merges made it
/// (0: uploaded as new bytes).
#[derive(Debug, Clone, Copy)]
struct Chunk {
    start: u64,
    end: u64,
    crc: u32,
    level: u32,
}

impl Archiver {
    /// An archiver of `store`'s log (any handle: the writer's own, or a
    /// read-only one, which each step refreshes) to `target`.
    pub fn new(store: Store, target: Arc<dyn Target>) -> Result<Archiver, ArchiveError> {
        let generation = read_generation(store.log().dir()).map_err(strata::Error::from)?;
        Ok(Archiver {
            store,
            target,
            generation,
            manifest: None,
            saved: None,
            contended: false,
            active: None,
            status: Arc::new(ArchiveStatus::default()),
        })
    }

    pub fn status(&self) -> &Arc<ArchiveStatus> {
        &self.status
    }

    /// Archives what the target lacks, up to the store's head when the
    /// step began (or further). Returns the head now archived. A failed
    /// step leaves the archive as the last good step left it (plus
    /// objects no record names yet, which the next step overwrites or
    /// ignores): run it again.
    pub fn step(&mut self) -> Result<u64, ArchiveError> {
        if self.contended {
            return Err(ArchiveError::Contended {
                url: self.target.url().to_owned(),
            });
        }
        // The head first: every segment read below covers it.
        let head = self.store.refresh()?;
        let target = self.target.clone();
        let target = &*target;
        let mut manifest = self.load()?;
        let mut changed = false;
        for segment in self.store.log().segments() {
            let name = segment
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .expect("segment files have UTF-8 names")
                .to_owned();
            // Sealed first: `mark_sealed` publishes the whole length before
            // the flag, so a segment seen sealed is read whole; read the
            // other way round, a seal between the two loads would record a
            // sealed segment without its seal frame.
            let sealed = segment.is_sealed();
            let len = segment.readable_len();
            if manifest.entry_mut(&name).is_none() {
                manifest.segments.push(SegmentEntry {
                    name: name.clone(),
                    len: 0,
                    sealed: false,
                    whole_crc32: None,
                });
            }
            let entry = manifest.entry_mut(&name).expect("added above").clone();
            if entry.sealed || (entry.len == len && !sealed) {
                continue;
            }
            if len < entry.len {
                return Err(ArchiveError::Diverged {
                    url: target.url().to_owned(),
                    detail: format!(
                        "segment {name} is archived with {} bytes, the log has {len}",
                        entry.len
                    ),
                });
            }
            let path = segment.path();
            let mut done = SegmentEntry {
                name: name.clone(),
                len,
                sealed,
                whole_crc32: None,
            };
            if sealed && self.active.as_ref().is_some_and(|a| a.name == name) {
                // Its chunks go with it (below); nothing merges them now.
                self.active = None;
            }
            if sealed && len <= WHOLE_BYTES_MAX {
                // Sealed: one object, so a restore reads one file per
                // segment; chunks of it go once the record names it.
                let bytes = read_range(path, 0, len)?;
                let crc = crc32fast::hash(&bytes);
                self.put_verified(&segment_key(self.generation, &name), &bytes)?;
                done.whole_crc32 = Some(crc);
            } else {
                // The new bytes, in chunks.
                if !sealed {
                    self.know_active(&name, path, entry.len)?;
                }
                let mut have = entry.len;
                while have < len {
                    let end = len.min(have + CHUNK_BYTES_MAX);
                    let bytes = read_range(path, have, end)?;
                    let crc = crc32fast::hash(&bytes);
                    self.put_verified(&chunk_key(self.generation, &name, have, end, crc), &bytes)?;
                    if let Some(a) = self.active.as_mut().filter(|a| a.name == name) {
                        a.chunks.push(Chunk {
                            start: have,
                            end,
                            crc,
                            level: 0,
                        });
                    }
                    have = end;
                }
            }
            *manifest.entry_mut(&name).expect("added above") = done.clone();
            changed = true;
            if sealed {
                // Progress worth keeping before the next (large) segment.
                self.save(&mut manifest)?;
                if done.whole_crc32.is_some() && entry.len > 0 {
                    self.delete_chunks(&name);
                }
            }
        }
        if changed || head > manifest.head {
            manifest.head = manifest.head.max(head);
            self.save(&mut manifest)?;
        }
        // Only once the record names their bytes: a merged chunk replaces
        // chunks a restore of the previous record would need.
        self.merge_chunks()?;
        self.status.head.fetch_max(manifest.head, Ordering::AcqRel);
        let archived = manifest.head;
        self.manifest = Some(manifest);
        Ok(archived)
    }

    /// The record of what the target holds: the one this archiver keeps,
    /// or the target's (checked to be this store's), or a new one. Taken
    /// out of `self` for the step; put back only when the step ends well,
    /// so a failed step reads the target's record again.
    fn load(&mut self) -> Result<Manifest, ArchiveError> {
        if let Some(m) = self.manifest.take() {
            return Ok(m);
        }
        let store_id = self.store.store_id().to_string();
        let found = Manifest::load(&*self.target)?;
        self.saved = found.clone();
        match found {
            Some(m) if m.store_id != store_id => Err(ArchiveError::OtherStore {
                url: self.target.url().to_owned(),
                archived: m.store_id,
                store: store_id,
            }),
            Some(m) if m.generation == self.generation => {
                self.check_continues(&m)?;
                self.status.head.fetch_max(m.head, Ordering::AcqRel);
                Ok(m)
            }
            // A repair rewrote the log's history since (or this is the
            // first step): archive it anew, under its own generation.
            // Objects of the earlier generation stay, unnamed.
            Some(m) => {
                tracing::warn!(
                    archive = self.target.url(),
                    archived_generation = m.generation,
                    generation = self.generation,
                    "the log's history was rewritten by a repair since it was archived; archiving it again"
                );
                Ok(Manifest::new(store_id, self.generation))
            }
            None => Ok(Manifest::new(store_id, self.generation)),
        }
    }

    /// Makes sure `self.active` holds the chain of chunks of the active
    /// segment `name` (archived up to `len`), reading it from the target
    /// when this archiver has not followed that segment yet.
    fn know_active(&mut self, name: &str, path: &Path, len: u64) -> Result<(), ArchiveError> {
        if self.active.as_ref().is_some_and(|a| a.name == name) {
            return Ok(());
        }
        let mut chunks = Vec::new();
        if len > 0 {
            let prefix = format!("{}.", segment_key(self.generation, name));
            let keys = self.target.list(&prefix).map_err(ArchiveError::target(
                &*self.target,
                format!("listing the chunks of {name}"),
            ))?;
            let found: Vec<(u64, u64, u32)> = keys
                .iter()
                .filter_map(|k| parse_chunk_key(k, name))
                .filter(|(_, end, _)| *end <= len)
                .collect();
            let mut at = 0;
            while at < len {
                let Some(&(start, end, crc)) = found
                    .iter()
                    .filter(|(start, _, _)| *start == at)
                    .max_by_key(|(_, end, _)| *end)
                else {
                    return Err(ArchiveError::Corrupt {
                        url: self.target.url().to_owned(),
                        key: prefix,
                        what: "recorded",
                        detail: format!("no chunk starts at byte {at} of the {len} archived"),
                    });
                };
                chunks.push(Chunk {
                    start,
                    end,
                    crc,
                    level: 0,
                });
                at = end;
            }
        }
        self.active = Some(ActiveChunks {
            name: name.to_owned(),
            path: path.to_path_buf(),
            chunks,
        });
        Ok(())
    }

    /// Merges the active segment's last [`CHUNK_MERGE_FANOUT`] chunks into
    /// one while they were made by as many merges each (a counter in base
    /// `CHUNK_MERGE_FANOUT`): a segment written a little at every step
    /// keeps a few dozen chunks, not one per step, and each byte is
    /// uploaded again once per level (log base 16 of the steps). The old
    /// chunks are deleted after the merged one is verified.
    fn merge_chunks(&mut self) -> Result<(), ArchiveError> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let result = (|| {
            loop {
                let n = active.chunks.len();
                if n < CHUNK_MERGE_FANOUT {
                    return Ok(());
                }
                let tail = &active.chunks[n - CHUNK_MERGE_FANOUT..];
                let level = tail[0].level;
                let (start, end) = (tail[0].start, tail[CHUNK_MERGE_FANOUT - 1].end);
                if tail.iter().any(|c| c.level != level) || end - start > CHUNK_BYTES_MAX {
                    return Ok(());
                }
                let bytes = read_range(&active.path, start, end)?;
                let crc = crc32fast::hash(&bytes);
                self.put_verified(
                    &chunk_key(self.generation, &active.name, start, end, crc),
                    &bytes,
                )?;
                for c in tail {
                    let key = chunk_key(self.generation, &active.name, c.start, c.end, c.crc);
                    if let Err(e) = self.target.delete(&key) {
                        // Harmless: a restore takes the longest chunk.
                        tracing::warn!(archive = self.target.url(), key, error = %e, "could not delete a merged chunk");
                    }
                }
                active.chunks.truncate(n - CHUNK_MERGE_FANOUT);
                active.chunks.push(Chunk {
                    start,
                    end,
                    crc,
                    level: level + 1,
                });
            }
        })();
        self.active = Some(active);
        result
    }

    /// Writes the record, unless the target's is no longer the one this
    /// archiver last read or wrote (another archiver at the same
    /// location: a second server given the same URL would otherwise
    /// overwrite this store's objects and record, and this its).
    fn save(&mut self, manifest: &mut Manifest) -> Result<(), ArchiveError> {
        let current = Manifest::load(&*self.target)?;
        if current != self.saved {
            self.contended = true;
            return Err(ArchiveError::Contended {
                url: self.target.url().to_owned(),
            });
        }
        manifest.save(&*self.target)?;
        self.saved = Some(manifest.clone());
        Ok(())
    }

    /// The log goes on from what the archive holds: every archived
    /// segment is there, at least as long, sealed if it was, the head at
    /// least the archive's, and the bytes of the last chunk of the last
    /// segment the same. A log that went back (a store replaced by an
    /// older copy, or one that lost writes it had not synced) would
    /// otherwise mix its new bytes with the archive's old ones.
    fn check_continues(&self, m: &Manifest) -> Result<(), ArchiveError> {
        let diverged = |detail: String| ArchiveError::Diverged {
            url: self.target.url().to_owned(),
            detail,
        };
        let head = self.store.refresh()?;
        if head < m.head {
            return Err(diverged(format!(
                "the archive holds positions up to {}, the log ends at {head}",
                m.head
            )));
        }
        let segments = self.store.log().segments();
        for entry in &m.segments {
            let local = segments
                .iter()
                .find(|s| s.path().file_name().and_then(|n| n.to_str()) == Some(&entry.name))
                .ok_or_else(|| {
                    diverged(format!(
                        "segment {} is archived but not in the log",
                        entry.name
                    ))
                })?;
            if local.readable_len() < entry.len || (entry.sealed && !local.is_sealed()) {
                return Err(diverged(format!(
                    "segment {} is archived with {} bytes{}, the log has {}{}",
                    entry.name,
                    entry.len,
                    if entry.sealed { ", sealed" } else { "" },
                    local.readable_len(),
                    if local.is_sealed() { ", sealed" } else { "" },
                )));
            }
        }
        let Some(last) = m
            .segments
            .last()
            .filter(|e| e.whole_crc32.is_none() && e.len > 0)
        else {
            return Ok(());
        };
        let prefix = format!("{}.", segment_key(m.generation, &last.name));
        let keys = self.target.list(&prefix).map_err(ArchiveError::target(
            &*self.target,
            format!("listing the chunks of {}", last.name),
        ))?;
        let chunk = keys
            .iter()
            .filter_map(|k| parse_chunk_key(k, &last.name))
            .filter(|(_, end, _)| *end == last.len)
            .min_by_key(|(start, _, _)| *start);
        if let Some((start, end, crc)) = chunk {
            let path = self.store.log().dir().join(&last.name);
            let local = crc32fast::hash(&read_range(&path, start, end)?);
            if local != crc {
                return Err(diverged(format!(
                    "bytes {start}..{end} of segment {} differ from the archived ones (CRC-32 {local:08x}, archived {crc:08x})",
                    last.name
                )));
            }
        }
        // Chunks reaching past the record are leftovers of a step cut
        // short before it wrote the record: not part of the archive, and
        // they must not compete with the chunks that will follow.
        for key in &keys {
            if parse_chunk_key(key, &last.name).is_some_and(|(_, end, _)| end > last.len) {
                self.target.delete(key).map_err(ArchiveError::target(
                    &*self.target,
                    format!("deleting {key}, a chunk no record names"),
                ))?;
            }
        }
        Ok(())
    }

    /// Uploads `bytes` as `key`, reads the object back and compares its
    /// length and CRC-32.
    fn put_verified(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let target = &*self.target;
        target
            .put(key, bytes)
            .map_err(ArchiveError::target(target, format!("uploading {key}")))?;
        let back = target
            .get(key)
            .map_err(ArchiveError::target(target, format!("reading back {key}")))?;
        let corrupt = |detail: String| ArchiveError::Corrupt {
            url: target.url().to_owned(),
            key: key.to_owned(),
            what: "uploaded",
            detail,
        };
        let back = back.ok_or_else(|| corrupt("it is missing right after the upload".into()))?;
        let (want, got) = (crc32fast::hash(bytes), crc32fast::hash(&back));
        if back.len() != bytes.len() || want != got {
            return Err(corrupt(format!(
                "{} bytes with CRC-32 {got:08x} read back, {} bytes with {want:08x} sent",
                back.len(),
                bytes.len()
            )));
        }
        self.status
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.status.objects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the chunks of a segment now archived whole. A failure only
    /// leaves objects no record names: logged, not an error.
    fn delete_chunks(&self, name: &str) {
        let target = &*self.target;
        let prefix = format!("{}.", segment_key(self.generation, name));
        let keys = match target.list(&prefix) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(archive = target.url(), segment = name, error = %e, "could not list a sealed segment's chunks to delete them");
                return;
            }
        };
        for key in keys {
            if parse_chunk_key(&key, name).is_none() {
                continue;
            }
            if let Err(e) = target.delete(&key) {
                tracing::warn!(archive = target.url(), key, error = %e, "could not delete a chunk of a segment archived whole");
            }
        }
    }
}

/// Bytes `start..end` of the file at `path`.
fn read_range(path: &Path, start: u64, end: u64) -> Result<Vec<u8>, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.to_path_buf(),
        action: "reading a segment to archive",
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut bytes = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut bytes, start).map_err(io)?;
    Ok(bytes)
}

/// The archive thread of one store: see [`spawn`].
#[derive(Debug)]
pub struct ArchiveHandle {
    status: Arc<ArchiveStatus>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<Archiver>>,
}

/// Runs `archiver`'s steps on a thread named `name`, every
/// `options.interval`, a failed one again after a backoff, until
/// [`ArchiveHandle::stop`].
pub fn spawn(
    mut archiver: Archiver,
    options: ArchiveOptions,
    name: String,
) -> std::io::Result<ArchiveHandle> {
    let status = archiver.status.clone();
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            let mut backoff = options.retry_min;
            loop {
                let started = Instant::now();
                let wait = match archiver.step() {
                    Ok(_) => {
                        archiver.status.steps.fetch_add(1, Ordering::Relaxed);
                        *archiver
                            .status
                            .last_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = None;
                        backoff = options.retry_min;
                        options.interval.saturating_sub(started.elapsed())
                    }
                    Err(e) => {
                        archiver.status.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(archive = archiver.target.url(), error = %e, retry_in = ?backoff, "archiving failed; retrying");
                        *archiver
                            .status
                            .last_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        let wait = backoff;
                        backoff = (backoff * 2).min(options.retry_max);
                        wait
                    }
                };
                let (stopped, cv) = &*stop;
                let guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, _) = cv
                    .wait_timeout_while(guard, wait, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *guard {
                    return archiver;
                }
            }
        })?
    };
    Ok(ArchiveHandle {
        status,
        stop,
        thread: Some(thread),
    })
}

impl ArchiveHandle {
    pub fn status(&self) -> &Arc<ArchiveStatus> {
        &self.status
    }

    /// Stops the thread, then runs one last step, so that a store closed
    /// cleanly leaves its archive at its head. Returns that step's result.
    pub fn stop(mut self) -> Result<u64, ArchiveError> {
        let archiver = self.halt();
        match archiver {
            // The target is failing: a last step would wait out its
            // timeouts and delay the store's close; the archive keeps what
            // it holds, and catches up after the next start.
            Some(a) if a.status.last_error().is_some() => Err(ArchiveError::Target {
                url: a.target.url().to_owned(),
                action: "skipping the last step: the archive was failing".into(),
                source: std::io::Error::other(a.status.last_error().unwrap_or_default()),
            }),
            Some(mut a) => {
                let result = a.step();
                if let Ok(head) = &result {
                    a.status.head.fetch_max(*head, Ordering::AcqRel);
                }
                result
            }
            None => Ok(self.status.head()),
        }
    }

    fn halt(&mut self) -> Option<Archiver> {
        let (stopped, cv) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for ArchiveHandle {
    fn drop(&mut self) {
        self.halt();
    }
}
