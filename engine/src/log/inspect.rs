//! Reading segment files without opening a store, for operators: `strata
//! dump`, `strata verify` and repair planning. Unlike recovery, nothing here
//! stops at the first problem: every problem is reported with its file and
//! byte offset, and nothing is ever written.

use std::path::{Path, PathBuf};

use super::format::{
    self, BatchRef, FRAME_HEADER_BYTES, FormatError, FrameBody, FrameCheck, SEGMENT_HEADER_BYTES,
    Seal, SegmentHeader,
};
use super::recovery::{self, ScanStop, TailVerdict};
use super::segment::{SEGMENT_SUFFIX, parse_segment_file_name};
use super::vfs::OsVfs;
use super::{LOG_DIR, LogError};

/// One frame of a segment as the walker found it.
#[derive(Debug, Clone)]
pub enum FrameVisit<'a> {
    /// A frame whose CRC and contents check out.
    Batch {
        offset: u64,
        durable_offset: u64,
        batch: BatchRef<'a>,
        /// Byte offset of the first record in the file.
        records_offset: u64,
    },
    Seal {
        offset: u64,
        seal: Seal,
        /// CRC of the bytes before the seal matches `seal.body_crc`.
        body_crc_ok: bool,
    },
    /// Bytes that are not a valid frame, from `offset` to `end`.
    Bad {
        offset: u64,
        end: u64,
        error: FormatError,
    },
}

/// Walks every frame of a whole segment file (`bytes` from offset 0). After
/// a bad frame it looks for the next offset where a valid frame starts and
/// goes on from there, so damage in the middle does not hide what follows.
pub fn walk_frames<'a>(bytes: &'a [u8], mut visit: impl FnMut(FrameVisit<'a>)) {
    let mut at = SEGMENT_HEADER_BYTES.min(bytes.len());
    while at < bytes.len() {
        match format::check_frame(&bytes[at..], at as u64, FrameCheck::Records) {
            Ok(frame) => {
                match frame.body {
                    FrameBody::Batch(batch) => visit(FrameVisit::Batch {
                        offset: at as u64,
                        durable_offset: frame.durable_offset,
                        batch,
                        records_offset: (at + FRAME_HEADER_BYTES + format::BATCH_HEADER_BYTES)
                            as u64,
                    }),
                    FrameBody::Seal(seal) => visit(FrameVisit::Seal {
                        offset: at as u64,
                        seal,
                        body_crc_ok: crc32fast::hash(&bytes[..at]) == seal.body_crc,
                    }),
                }
                at += frame.len;
            }
            Err(error) => {
                // A whole frame whose CRC holds but whose contents do not is
                // bad and skipped whole: searching inside its payload could
                // take bytes an event carries for frames. Otherwise look
                // for the next frame that starts with a valid CRC.
                let end = match format::decode_frame(&bytes[at..]) {
                    Ok(frame) => at + frame.len(),
                    Err(_) => next_frame_start(bytes, at + 1).unwrap_or(bytes.len()),
                };
                visit(FrameVisit::Bad {
                    offset: at as u64,
                    end: end as u64,
                    error,
                });
                at = end;
            }
        }
    }
}

/// The first offset at or after `from` where a frame with a valid CRC
/// starts (no budget: verification reads every byte anyway).
fn next_frame_start(bytes: &[u8], from: usize) -> Option<usize> {
    let mut unbounded = u64::MAX;
    format::find_frame(bytes, from, |_, _| true, &mut unbounded).unwrap_or(None)
}

/// A problem found by [`verify_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub offset: u64,
    pub message: String,
    /// True for a torn tail of the last segment: unacknowledged bytes that
    /// opening the store (or `strata repair`) cuts. False for damage.
    pub torn_tail: bool,
}

/// What [`verify_log`] found.
#[derive(Debug, Clone, Default)]
pub struct LogReport {
    pub segments: u64,
    pub frames: u64,
    pub events: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// The last position before the first damage: `strata repair
    /// --truncate-after` this position drops the damage and everything
    /// after it. `None` when there is no damage (a torn tail is not damage).
    pub last_good_position: Option<u64>,
}

impl LogReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn has_damage(&self) -> bool {
        self.problems.iter().any(|p| !p.torn_tail)
    }
}

/// Checks every byte of the log of the store in `store_dir`: each segment's
/// header (and that it names this store and the position in its file name),
/// every frame's CRC and contents, positions running from 1 without gaps
/// within and across segments, every seal (including the CRC of the whole
/// segment body), and the last segment's tail, told apart into torn tail and
/// damage the way recovery does. Never writes.
pub fn verify_log(store_dir: &Path) -> Result<LogReport, LogError> {
    let dir = store_dir.join(LOG_DIR);
    if !dir.exists() {
        return Err(LogError::NotFound {
            dir: store_dir.to_path_buf(),
        });
    }
    let listing = recovery::list_segments(&OsVfs, &dir)?;
    let mut report = LogReport::default();
    // Where the next segment must start; unknown after damage.
    let mut expected_first = Some(1u64);
    let mut store_id = None;
    let mut damaged = false;
    let count = listing.segments.len();
    for (i, (first, path)) in listing.segments.into_iter().enumerate() {
        report.segments += 1;
        let bytes =
            std::fs::read(&path).map_err(|e| LogError::io(&path, "reading a segment", e))?;
        report.bytes += bytes.len() as u64;
        let mut problem = |offset: u64,
                           message: String,
                           torn_tail: bool,
                           last_good: u64,
                           report: &mut LogReport| {
            if !torn_tail && !damaged {
                damaged = true;
                report.last_good_position = Some(last_good);
            }
            report.problems.push(Problem {
                path: path.clone(),
                offset,
                message,
                torn_tail,
            });
        };
        let header = match SegmentHeader::decode(&bytes) {
            Ok(h) => h,
            Err(e) => {
                problem(
                    0,
                    format!("bad segment header: {e}"),
                    false,
                    first - 1,
                    &mut report,
                );
                expected_first = None;
                continue;
            }
        };
        if header.first_position != first {
            problem(
                32,
                format!(
                    "header says first position {}, the file name says {first}",
                    header.first_position
                ),
                false,
                first - 1,
                &mut report,
            );
        }
        if *store_id.get_or_insert(header.store_id) != header.store_id {
            problem(
                16,
                format!(
                    "belongs to store {}, not {}",
                    header.store_id,
                    store_id.expect("set")
                ),
                false,
                first - 1,
                &mut report,
            );
        }
        if let Some(expected) = expected_first
            && first != expected
        {
            let what = if i == 0 {
                "the log must start at position 1"
            } else {
                "a segment is missing or overlaps"
            };
            problem(
                0,
                format!("starts at position {first}, expected {expected}: {what}"),
                false,
                expected.min(first) - 1,
                &mut report,
            );
        }
        let last = i + 1 == count;
        let mut sealed = false;
        let mut segment_damaged = false;
        let scan = recovery::scan_frames(&bytes, first, |_, b| {
            report.frames += 1;
            report.events += b.event_count as u64;
        });
        let next = scan.next_position;
        match &scan.stop {
            ScanStop::End => {}
            ScanStop::Sealed { offset, seal } => {
                sealed = true;
                if crc32fast::hash(&bytes[..*offset as usize]) != seal.body_crc {
                    // The change could be anywhere in the segment.
                    problem(*offset, "the seal's CRC of the segment body does not match: some byte before it changed".into(), false, first - 1, &mut report);
                }
            }
            ScanStop::Bad { offset, error } => {
                let torn = last && recovery::classify_tail(&bytes, *offset) == TailVerdict::Torn;
                let message = if torn {
                    format!(
                        "torn tail: {} bytes from here are an unfinished append ({error}); opening the store or `strata repair` cuts them",
                        bytes.len() as u64 - offset
                    )
                } else {
                    format!(
                        "{error}; every event after position {} in this file is unreadable",
                        next - 1
                    )
                };
                segment_damaged = !torn;
                problem(*offset, message, torn, next - 1, &mut report);
            }
        }
        if !last && !sealed {
            problem(
                bytes.len() as u64,
                "followed by another segment but not sealed".into(),
                false,
                next - 1,
                &mut report,
            );
        }
        // After damage, where the next segment should start is unknown.
        expected_first = (!segment_damaged).then_some(next);
    }
    Ok(report)
}

/// Segment files of a log directory, by first position (for `strata
/// segments` on a store that cannot be opened).
pub fn segment_paths(store_dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    Ok(recovery::list_segments(&OsVfs, &store_dir.join(LOG_DIR))?.segments)
}

/// Whether a path looks like a segment file (`NNNN….seg`).
pub fn is_segment_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(SEGMENT_SUFFIX) && parse_segment_file_name(n).is_some())
}

/// One segment file at a glance, for `strata segments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub first_position: u64,
    /// Last readable position (`first_position - 1` when empty).
    pub last_position: u64,
    pub bytes: u64,
    pub sealed: bool,
    /// The first problem found, if any.
    pub problem: Option<String>,
}

/// Reads one segment file whole and summarises it.
pub fn segment_summary(first: u64, path: &Path) -> Result<SegmentSummary, LogError> {
    let bytes = std::fs::read(path).map_err(|e| LogError::io(path, "reading a segment", e))?;
    let scan = recovery::scan_frames(&bytes, first, |_, _| {});
    let header = SegmentHeader::decode(&bytes)
        .err()
        .map(|e| format!("bad header: {e}"));
    let (sealed, problem) = match scan.stop {
        ScanStop::End => (false, header),
        ScanStop::Sealed { .. } => (true, header),
        ScanStop::Bad { offset, error } => {
            (false, header.or(Some(format!("offset {offset}: {error}"))))
        }
    };
    Ok(SegmentSummary {
        path: path.to_path_buf(),
        first_position: first,
        last_position: scan.next_position - 1,
        bytes: bytes.len() as u64,
        sealed,
        problem,
    })
}
