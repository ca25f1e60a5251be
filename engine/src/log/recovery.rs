//! Opening a log after a clean shutdown or a crash (invariant S4).
//!
//! Rules, in the order they are applied:
//!
//! 1. Temporary segment files (`*.seg.tmp`) are leftovers of an interrupted
//!    segment creation: a read-write open removes them.
//! 2. Every segment must have a valid header whose first position matches
//!    its name and whose store id matches the others.
//! 3. The first segment starts at position 1. Every segment but the last
//!    must end with a seal frame, and the next segment must start right
//!    after the sealed one's last position. Such segments are trusted on
//!    open (their frames are CRC-checked on every read and by verification
//!    tools); damage there is never cut.
//! 4. The last segment is scanned frame by frame from its header, whether
//!    or not it ends in a seal: event data comes last in a record and could
//!    look like a seal, so only a walk finds the real frame boundaries. If
//!    the walk ends on a seal the segment is sealed; otherwise it is the
//!    active one. In a read-write open it is synced before its length counts
//!    as durable. At the first frame that fails (short, bad magic, bad
//!    CRC, out of sequence), the rest of the file is a *torn tail* — bytes
//!    of appends that were never acknowledged — unless a later valid frame
//!    proves otherwise: every frame records how much of its segment was on
//!    stable storage when it was written (`durable_offset`), so a later
//!    frame claiming more than the failing frame's offset shows that the
//!    failing frame had been synced, and then it is damage, reported with
//!    file and offset, and nothing is cut. A torn tail is cut (read-write)
//!    or ignored (read-only) and reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::format::{
    self, BatchRef, CheckedFrame, FormatError, FrameBody, FrameCheck, FrameHeader,
    SEAL_FRAME_BYTES, SEGMENT_HEADER_BYTES, Seal, SegmentHeader,
};
use super::segment::{SEGMENT_SUFFIX, SEGMENT_TMP_SUFFIX, Segment, parse_segment_file_name};
use super::vfs::{OpenMode, Vfs, VfsFile};
use super::{LogConfig, LogError, create_segment_file};

/// Bytes of hashing the torn-tail check may spend per byte of tail, so that
/// crafted input cannot make open run for long.
const RESYNC_HASH_BUDGET_FACTOR: u64 = 4;
const RESYNC_HASH_BUDGET_MIN: u64 = 1 << 20;

/// What open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// A new, empty log was created.
    pub created: bool,
    /// The torn tail of the active segment, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Leftover temporary files removed.
    pub removed_temp_files: Vec<PathBuf>,
}

/// Unacknowledged bytes at the end of the active segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Where the tail starts: the file's length after the cut.
    pub offset: u64,
    /// How many bytes it spans.
    pub bytes: u64,
    /// Why the first frame of the tail failed.
    pub reason: String,
    /// The bytes were removed (read-write open) rather than ignored.
    pub cut: bool,
}

pub(crate) struct RecoveredActive {
    pub segment: Arc<Segment>,
    pub len: u64,
    pub body_crc: crc32fast::Hasher,
    pub has_frames: bool,
}

pub(crate) struct Recovered {
    pub store_id: Uuid,
    pub segments: Vec<Arc<Segment>>,
    pub active: Option<RecoveredActive>,
    pub report: RecoveryReport,
}

/// How a scan of frames ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// The bytes ended on a frame boundary.
    End,
    /// A valid seal frame at this offset ends the segment.
    Sealed { offset: u64, seal: Seal },
    /// The frame at this offset is not valid.
    Bad { offset: u64, error: FormatError },
}

/// Result of [`scan_frames`].
#[derive(Debug, Clone)]
pub struct FrameScan {
    /// End of the last valid batch frame.
    pub good_end: u64,
    /// Position after the last valid batch.
    pub next_position: u64,
    /// Valid batch frames seen.
    pub batches: u64,
    pub stop: ScanStop,
}

/// Walks the frames of a whole segment file (`bytes` starts at offset 0),
/// checking CRCs, batch contents and position sequence. `on_batch` sees
/// each valid batch with its frame offset.
pub fn scan_frames(
    bytes: &[u8],
    first_position: u64,
    mut on_batch: impl FnMut(u64, &BatchRef<'_>),
) -> FrameScan {
    let mut offset = SEGMENT_HEADER_BYTES.min(bytes.len());
    let mut next_position = first_position;
    let mut batches = 0;
    let stop = loop {
        if offset == bytes.len() {
            break ScanStop::End;
        }
        let bad = |error| ScanStop::Bad {
            offset: offset as u64,
            error,
        };
        let frame = match format::check_frame(&bytes[offset..], offset as u64, FrameCheck::Records)
        {
            Ok(f) => f,
            Err(e) => break bad(e),
        };
        match frame.body {
            FrameBody::Seal(seal) => {
                if seal.last_position.wrapping_add(1) != next_position {
                    break bad(FormatError::Malformed {
                        what: "seal",
                        reason: "last position does not match the batches before it",
                    });
                }
                if batches == 0 {
                    // The writer never seals an empty segment.
                    break bad(FormatError::Malformed {
                        what: "seal",
                        reason: "seals a segment that holds no batch",
                    });
                }
                if offset + frame.len != bytes.len() {
                    break bad(FormatError::Malformed {
                        what: "seal",
                        reason: "bytes follow the seal frame",
                    });
                }
                break ScanStop::Sealed {
                    offset: offset as u64,
                    seal,
                };
            }
            FrameBody::Batch(batch) => {
                if batch.first_position != next_position {
                    break bad(FormatError::Malformed {
                        what: "batch",
                        reason: "first position does not follow the previous batch",
                    });
                }
                on_batch(offset as u64, &batch);
                next_position = batch.last_position() + 1;
                batches += 1;
                offset += frame.len;
            }
        }
    };
    let good_end = match &stop {
        ScanStop::End => bytes.len() as u64,
        ScanStop::Sealed { offset, .. } | ScanStop::Bad { offset, .. } => *offset,
    };
    FrameScan {
        good_end,
        next_position,
        batches,
        stop,
    }
}

/// Whether the bytes after a failing frame at `bad_offset` are a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailVerdict {
    /// No later frame shows the failing one was ever synced.
    Torn,
    /// The valid frame at `proof_offset` was written after the failing
    /// frame was on stable storage: this is damage, not a torn write.
    Damaged { proof_offset: u64 },
    /// The search gave up (crafted input); treat as damage.
    Undecided,
}

/// Looks for a valid frame after `bad_offset` whose durable offset proves
/// the failing frame had been synced. See the module documentation.
pub fn classify_tail(bytes: &[u8], bad_offset: u64) -> TailVerdict {
    let tail = bytes.len().saturating_sub(bad_offset as usize) as u64;
    let mut budget = (tail * RESYNC_HASH_BUDGET_FACTOR).max(RESYNC_HASH_BUDGET_MIN);
    // A proof must be a frame the writer could have written after the
    // failing one was synced: its durable offset lies past the failing
    // frame and no later than its own offset.
    let proves =
        |i: usize, h: &FrameHeader| h.durable_offset > bad_offset && h.durable_offset <= i as u64;
    match format::find_frame(bytes, bad_offset as usize + 1, proves, &mut budget) {
        Ok(Some(i)) => TailVerdict::Damaged {
            proof_offset: i as u64,
        },
        Ok(None) => TailVerdict::Torn,
        Err(format::SearchBudgetSpent) => TailVerdict::Undecided,
    }
}

fn read_all(file: &dyn VfsFile, path: &Path) -> Result<Vec<u8>, LogError> {
    let len = file
        .len()
        .map_err(|e| LogError::io(path, "reading the segment length", e))?;
    let mut buf = vec![0u8; len as usize];
    super::vfs::read_exact_at(file, &mut buf, 0)
        .map_err(|e| LogError::io(path, "reading a segment", e))?;
    Ok(buf)
}

fn read_header(
    file: &dyn VfsFile,
    path: &Path,
    name_first: u64,
) -> Result<SegmentHeader, LogError> {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    let len = file
        .len()
        .map_err(|e| LogError::io(path, "reading the segment length", e))?;
    if len < SEGMENT_HEADER_BYTES as u64 {
        return Err(LogError::corrupt(
            path,
            0,
            FormatError::Truncated {
                needed: SEGMENT_HEADER_BYTES as u64,
                available: len,
            },
        ));
    }
    super::vfs::read_exact_at(file, &mut b, 0)
        .map_err(|e| LogError::io(path, "reading a segment header", e))?;
    let header = SegmentHeader::decode(&b).map_err(|e| LogError::corrupt(path, 0, e))?;
    if header.first_position != name_first {
        return Err(LogError::inconsistent(
            path,
            32,
            format!(
                "header says the first position is {}, the file name says {name_first}",
                header.first_position
            ),
        ));
    }
    Ok(header)
}

/// Reads the seal frame at the end of a segment, if there is a valid one.
fn read_seal(file: &dyn VfsFile, path: &Path) -> Result<Option<(u64, Seal)>, LogError> {
    let len = file
        .len()
        .map_err(|e| LogError::io(path, "reading the segment length", e))?;
    if len < (SEGMENT_HEADER_BYTES + SEAL_FRAME_BYTES) as u64 {
        return Ok(None);
    }
    let offset = len - SEAL_FRAME_BYTES as u64;
    let mut b = [0u8; SEAL_FRAME_BYTES];
    super::vfs::read_exact_at(file, &mut b, offset)
        .map_err(|e| LogError::io(path, "reading a seal", e))?;
    match format::check_frame(&b, offset, FrameCheck::Header) {
        Ok(CheckedFrame {
            body: FrameBody::Seal(seal),
            ..
        }) => Ok(Some((offset, seal))),
        _ => Ok(None),
    }
}

/// Segment files in `dir`, by first position, and temporary leftovers.
/// Segment files found in a log directory.
#[derive(Debug, Default)]
pub struct Listing {
    /// `(first position, path)` in position order.
    pub segments: Vec<(u64, PathBuf)>,
    /// Leftovers of an interrupted segment creation.
    pub temporary: Vec<PathBuf>,
}

pub fn list_segments(vfs: &dyn Vfs, dir: &Path) -> Result<Listing, LogError> {
    let names = vfs
        .list(dir)
        .map_err(|e| LogError::io(dir, "listing the log directory", e))?;
    let mut segments = Vec::new();
    let mut temps = Vec::new();
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_segment_file_name(name) {
            segments.push((first, dir.join(name)));
        } else if name.ends_with(SEGMENT_TMP_SUFFIX) {
            temps.push(dir.join(name));
        } else if name.ends_with(SEGMENT_SUFFIX) {
            return Err(LogError::inconsistent(
                &dir.join(name),
                0,
                "file name is not a 20-digit first position followed by .seg; rename or move it away",
            ));
        }
    }
    segments.sort();
    Ok(Listing {
        segments,
        temporary: temps,
    })
}

pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered, LogError> {
    let vfs = &*config.vfs;
    let mut report = RecoveryReport::default();
    if !vfs.exists(dir) {
        if config.read_only || !config.create_if_missing {
            return Err(LogError::NotFound {
                dir: dir.parent().unwrap_or(dir).to_path_buf(),
            });
        }
        vfs.create_dir_all(dir)
            .map_err(|e| LogError::io(dir, "creating the log directory", e))?;
        if let Some(parent) = dir.parent() {
            vfs.sync_dir(parent)
                .map_err(|e| LogError::io(parent, "syncing", e))?;
        }
    }
    let Listing {
        segments: listed,
        temporary: temps,
    } = list_segments(vfs, dir)?;
    if !config.read_only {
        for tmp in temps {
            vfs.remove_file(&tmp)
                .map_err(|e| LogError::io(&tmp, "removing a temporary segment", e))?;
            report.removed_temp_files.push(tmp);
        }
    }
    if listed.is_empty() {
        if config.read_only || !config.create_if_missing {
            return Err(LogError::NotFound {
                dir: dir.parent().unwrap_or(dir).to_path_buf(),
            });
        }
        let store_id = Uuid::now_v7();
        let (segment, len) = create_segment_file(vfs, dir, store_id, 1, config.segment_bytes_max)
            .map_err(|(p, a, e)| LogError::io(&p, a, e))?;
        report.created = true;
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(
            &SegmentHeader {
                store_id,
                first_position: 1,
            }
            .encode(),
        );
        let segment = Arc::new(segment);
        return Ok(Recovered {
            store_id,
            segments: vec![segment.clone()],
            active: Some(RecoveredActive {
                segment,
                len,
                body_crc,
                has_frames: false,
            }),
            report,
        });
    }

    let open_mode = if config.read_only {
        OpenMode::Read
    } else {
        OpenMode::ReadWrite
    };
    let mut segments = Vec::with_capacity(listed.len());
    let mut store_id = None;
    let mut expected_first = None;
    let last_index = listed.len() - 1;
    let mut active = None;
    for (i, (first, path)) in listed.into_iter().enumerate() {
        let file = vfs
            .open(&path, open_mode)
            .map_err(|e| LogError::io(&path, "opening a segment", e))?;
        let header = read_header(&*file, &path, first)?;
        match store_id {
            None => store_id = Some(header.store_id),
            Some(id) if id != header.store_id => {
                return Err(LogError::inconsistent(
                    &path,
                    16,
                    format!(
                        "segment belongs to store {}, the others to {id}; it was copied from another store",
                        header.store_id
                    ),
                ));
            }
            Some(_) => {}
        }
        if i == 0 && first != 1 {
            return Err(LogError::inconsistent(
                &path,
                0,
                format!("the log starts at position {first}, not 1: earlier segments are missing"),
            ));
        }
        if let Some(expected) = expected_first
            && first != expected
        {
            return Err(LogError::inconsistent(
                &path,
                0,
                format!(
                    "segment starts at position {first}, but the previous one ends at {}; a segment is missing",
                    expected - 1
                ),
            ));
        }
        if i != last_index {
            // A segment followed by another was sealed (and synced) before
            // the next one was created, so its seal is the last frame.
            let Some((seal_offset, seal)) = read_seal(&*file, &path)? else {
                let len = file.len().unwrap_or(0);
                return Err(LogError::inconsistent(
                    &path,
                    len.saturating_sub(SEAL_FRAME_BYTES as u64),
                    "segment is followed by another but does not end with a valid seal frame",
                ));
            };
            if seal.last_position < first {
                return Err(LogError::inconsistent(
                    &path,
                    seal_offset,
                    "seal names a last position before the first",
                ));
            }
            // The next segment starts right after this one's last position.
            let Some(next_first) = seal.last_position.checked_add(1) else {
                return Err(LogError::inconsistent(
                    &path,
                    seal_offset,
                    "seal names the last possible position, yet another segment follows",
                ));
            };
            let len = seal_offset + SEAL_FRAME_BYTES as u64;
            segments.push(Arc::new(Segment::sealed(
                first,
                path,
                file,
                len,
                seal.last_position,
            )));
            expected_first = Some(next_first);
            continue;
        }
        // The last segment is scanned whole, sealed or not: the bytes at its
        // end could also be event data that happens to look like a seal,
        // and only a walk from the header finds real frame boundaries.
        let bytes = read_all(&*file, &path)?;
        let scan = scan_frames(&bytes, first, |_, _| {});
        if let ScanStop::Sealed { offset, seal } = scan.stop {
            if !config.read_only {
                // The writer may have died between writing the seal and
                // syncing it; the next segment must not exist before the
                // seal is durable.
                file.sync_data()
                    .map_err(|e| LogError::io(&path, "syncing a sealed segment", e))?;
            }
            let len = offset + SEAL_FRAME_BYTES as u64;
            segments.push(Arc::new(Segment::sealed(
                first,
                path,
                file,
                len,
                seal.last_position,
            )));
            continue;
        }
        let mut len = scan.good_end;
        if let ScanStop::Bad { offset, error } = &scan.stop {
            match classify_tail(&bytes, *offset) {
                TailVerdict::Torn => {}
                TailVerdict::Damaged { proof_offset } => {
                    return Err(LogError::inconsistent(
                        &path,
                        *offset,
                        format!(
                            "{error}; the frame at offset {proof_offset} shows this one had been synced, so this is damage rather than a torn write"
                        ),
                    ));
                }
                TailVerdict::Undecided => {
                    return Err(LogError::inconsistent(
                        &path,
                        *offset,
                        format!("{error}; could not prove the rest of the file is a torn write"),
                    ));
                }
            }
            let cut = !config.read_only;
            if cut {
                file.set_len(*offset)
                    .map_err(|e| LogError::io(&path, "cutting a torn tail", e))?;
                file.sync_data()
                    .map_err(|e| LogError::io(&path, "syncing after cutting a torn tail", e))?;
            }
            tracing::warn!(path = %path.display(), offset, bytes = bytes.len() as u64 - offset, %error, cut, "torn tail");
            report.torn_tail = Some(TornTail {
                path: path.clone(),
                offset: *offset,
                bytes: bytes.len() as u64 - offset,
                reason: error.to_string(),
                cut,
            });
            len = *offset;
        }
        if !config.read_only {
            // What was recovered becomes the durable base that later frames
            // vouch for (their durable offset): make it so, since a crash of
            // the previous writer in a weaker durability mode may have left
            // it in the OS cache only.
            file.sync_data()
                .map_err(|e| LogError::io(&path, "syncing the recovered active segment", e))?;
        }
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(&bytes[..len as usize]);
        let last_position = scan.next_position - 1;
        let segment = Arc::new(Segment::active(
            first,
            path,
            file,
            len,
            last_position,
            config.segment_bytes_max,
        ));
        segments.push(segment.clone());
        active = Some(RecoveredActive {
            segment,
            len,
            body_crc,
            has_frames: scan.batches > 0,
        });
    }
    Ok(Recovered {
        store_id: store_id.expect("at least one segment"),
        segments,
        active,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_finds_no_proof_in_zeros() {
        let bytes = vec![0u8; 4096];
        assert_eq!(classify_tail(&bytes, 100), TailVerdict::Torn);
    }

    /// L5: a segment followed by another must end before the last possible
    /// position, since the next one starts right after it. A crafted seal
    /// naming `u64::MAX` used to overflow `last_position + 1` (a panic in
    /// debug builds) instead of being refused.
    #[test]
    fn l5_seal_at_the_last_position_followed_by_a_segment_is_refused() {
        use super::super::segment::segment_file_name;
        let dir = tempfile::tempdir().unwrap();
        let store_id = Uuid::from_u128(7);
        let header = |first_position| {
            SegmentHeader {
                store_id,
                first_position,
            }
            .encode()
        };
        let mut sealed = header(1).to_vec();
        let seal = Seal {
            last_position: u64::MAX,
            body_crc: crc32fast::hash(&sealed),
        };
        seal.encode_frame(&mut sealed, SEGMENT_HEADER_BYTES as u64);
        std::fs::write(dir.path().join(segment_file_name(1)), &sealed).unwrap();
        std::fs::write(dir.path().join(segment_file_name(2)), header(2)).unwrap();
        let config = LogConfig {
            vfs: Arc::new(super::super::vfs::OsVfs),
            segment_bytes_max: super::super::SEGMENT_BYTES_MIN,
            durability: super::super::Durability::None,
            read_only: true,
            create_if_missing: false,
        };
        let err = recover(dir.path(), &config).err().expect("refused");
        assert!(
            matches!(&err, LogError::Inconsistent { path, offset, .. }
                if path.ends_with(segment_file_name(1)) && *offset == SEGMENT_HEADER_BYTES as u64),
            "{err}"
        );
    }
}
