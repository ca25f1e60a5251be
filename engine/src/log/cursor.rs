//! Reading batches in position order: [`Cursor`] and the [`BatchView`]s it
//! hands out (memory maps for sealed segments, positioned reads for the
//! active one).

use super::*;

/// One batch as a cursor yields it: borrowed bytes, already CRC-checked.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// The segment file holding the batch.
    pub segment_path: &'a Path,
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
    /// segment; a record that does not decode is an error naming the
    /// segment file and the frame's offset.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, EventRef<'a>), LogError>> + 'a {
        let base = self.records_offset;
        let skip = self.skip_below;
        let (path, frame_offset) = (self.segment_path, self.frame_offset);
        self.batch
            .iter()
            .map(move |r| {
                r.map(|(off, rec)| (base + off as u64, rec))
                    .map_err(|e| LogError::corrupt(path, frame_offset, e))
            })
            .filter(move |r| r.as_ref().map_or(true, |(_, rec)| rec.position >= skip))
    }

    /// Damage found in this batch, as the log reports it (file, offset).
    pub fn corrupt(&self, source: FormatError) -> LogError {
        LogError::corrupt(self.segment_path, self.frame_offset, source)
    }
}

/// Reads batches in position order. Created by [`Log::cursor`].
#[derive(Debug)]
pub struct Cursor {
    pub(super) log: Log,
    pub(super) segment: Option<Arc<Segment>>,
    pub(super) offset: u64,
    pub(super) next_position: u64,
    pub(super) buf: Vec<u8>,
    /// This cursor's own map of the segment it is in, dropped when it moves
    /// on, so that a scan keeps one segment resident at a time.
    pub(super) map: Option<(u64, memmap2::Mmap)>,
    /// Still looking for the frame holding the start position: frames are
    /// skipped by their headers without reading them whole.
    pub(super) seeking: bool,
}

impl Cursor {
    /// Bytes `[offset, offset + len)` of `segment`, which must lie below its
    /// readable end: from this cursor's map when it covers them, otherwise
    /// read into the buffer.
    pub(super) fn bytes(&mut self, segment: &Segment, offset: u64, len: u64) -> io::Result<&[u8]> {
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
                let frame = self
                    .bytes(&segment, at, frame_len)
                    .map_err(|e| LogError::io(path, "reading a seal", e))
                    .and_then(|b| {
                        format::check_frame(b, at, FrameCheck::Header)
                            .map_err(|e| LogError::corrupt(path, at, e))
                    })?;
                let FrameBody::Seal(seal) = frame.body else {
                    return Err(LogError::inconsistent(
                        path,
                        at,
                        "a frame changed kind between reads",
                    ));
                };
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
                if let Ok((first, count)) = BatchRef::parse_header(bh)
                    && first + u64::from(count) <= self.next_position
                {
                    self.offset = at + frame_len;
                    continue;
                }
            }
            let (first, last) = {
                let bytes = self
                    .bytes(&segment, at, frame_len)
                    .map_err(|e| LogError::io(path, "reading a frame", e))?;
                let frame = format::check_frame(bytes, at, FrameCheck::Header)
                    .map_err(|e| LogError::corrupt(path, at, e))?;
                let FrameBody::Batch(batch) = frame.body else {
                    return Err(LogError::inconsistent(
                        path,
                        at,
                        "a frame changed kind between reads",
                    ));
                };
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
                segment_path: segment.path(),
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
        while records.len() < max_bytes && count < format::BATCH_EVENTS_MAX / 2 {
            let Some(view) = self.next_batch(upto)? else {
                break;
            };
            // A seek can land inside a batch: start at the first record
            // at or after `from`.
            let mut start = 0usize;
            if view.batch.first_position < from {
                for r in view.batch.iter() {
                    let (offset, rec) = r.map_err(|e| view.corrupt(e))?;
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
