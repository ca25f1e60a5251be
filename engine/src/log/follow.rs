//! Following a log that another process writes, from a read-only open
//! (`strata tail --follow` beside a running application).

use std::sync::Arc;

use super::format::{self, FrameBody, FrameCheck, SEGMENT_HEADER_BYTES, SegmentHeader};
use super::segment::{Segment, segment_file_name};
use super::vfs::OpenMode;
use super::{Log, LogError, lock};

impl Log {
    /// For a read-only log: picks up the batches and segments another
    /// process has appended since the log was opened or last refreshed,
    /// and makes them visible. Frames are checked as recovery checks them;
    /// an unfinished frame at the end (still being written) is left for the
    /// next call. Returns the visible position. A read-write log is always
    /// current: this returns at once.
    pub fn refresh(&self) -> Result<u64, LogError> {
        let shared = &self.shared;
        if !shared.config.read_only {
            return Ok(self.visible_position());
        }
        let Some(mut last) = self.segments().last().cloned() else {
            return Ok(0);
        };
        loop {
            if !last.is_sealed() {
                self.read_new_frames(&last)?;
            }
            if !last.is_sealed() {
                break;
            }
            // The writer rolled: the next segment starts after the seal.
            let first = last.last_position() + 1;
            let path = shared.dir.join(segment_file_name(first));
            if !shared.vfs.exists(&path) {
                break;
            }
            let file = shared
                .vfs
                .open(&path, OpenMode::Read)
                .map_err(|e| LogError::io(&path, "opening a segment", e))?;
            let mut head = [0u8; SEGMENT_HEADER_BYTES];
            if super::vfs::read_exact_at(&*file, &mut head, 0).is_err() {
                // Being created: try again next time.
                break;
            }
            let header =
                SegmentHeader::decode(&head).map_err(|e| LogError::corrupt(&path, 0, e))?;
            if header.first_position != first || header.store_id != shared.store_id {
                return Err(LogError::inconsistent(
                    &path,
                    0,
                    "segment does not continue this log",
                ));
            }
            let segment = Arc::new(Segment::active(
                first,
                path,
                file,
                SEGMENT_HEADER_BYTES as u64,
                first - 1,
                shared.config.segment_bytes_max,
            ));
            shared
                .segments
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(segment.clone());
            last = segment;
        }
        let visible = last.last_position();
        {
            let mut st = lock(&shared.sync);
            st.synced_position = st.synced_position.max(visible);
        }
        shared.visible.publish(visible);
        Ok(self.visible_position())
    }

    /// Reads complete, valid frames past the segment's readable end.
    fn read_new_frames(&self, segment: &Arc<Segment>) -> Result<(), LogError> {
        let path = segment.path();
        let from = segment.readable_len();
        let file_len = segment
            .file()
            .len()
            .map_err(|e| LogError::io(path, "reading a segment's size", e))?;
        if file_len <= from {
            return Ok(());
        }
        let mut bytes = vec![0u8; (file_len - from) as usize];
        super::vfs::read_exact_at(&**segment.file(), &mut bytes, from)
            .map_err(|e| LogError::io(path, "reading a segment", e))?;
        let mut at = 0usize;
        let mut next = segment.last_position() + 1;
        while at < bytes.len() {
            // A frame still being written is not valid yet: stop there.
            let Ok(frame) =
                format::check_frame(&bytes[at..], from + at as u64, FrameCheck::Records)
            else {
                break;
            };
            match frame.body {
                FrameBody::Batch(batch) => {
                    if batch.first_position != next {
                        return Err(LogError::inconsistent(
                            path,
                            from + at as u64,
                            format!(
                                "batch starts at position {}, expected {next}",
                                batch.first_position
                            ),
                        ));
                    }
                    next = batch.last_position() + 1;
                    at += frame.len;
                    segment.publish(from + at as u64, next - 1);
                }
                FrameBody::Seal(seal) => {
                    if seal.last_position + 1 == next && at + frame.len == bytes.len() {
                        segment.mark_sealed(file_len);
                    }
                    break;
                }
            }
        }
        Ok(())
    }
}
