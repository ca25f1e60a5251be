//! The single writer of a log: [`LogWriter`] (append, raw runs, segment
//! rolls, sync), and what an append returns.

use super::*;

/// An append under way; see [`Log::begin_append`].
#[derive(Debug)]
pub struct InFlight<'a> {
    pub(super) log: &'a Log,
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
pub(super) struct ActiveSegment {
    pub(super) segment: Arc<Segment>,
    pub(super) len: u64,
    pub(super) body_crc: crc32fast::Hasher,
    pub(super) has_frames: bool,
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
    pub(super) active: Option<ActiveSegment>,
    pub(super) next_position: u64,
    pub(super) buf: Vec<u8>,
}

impl LogWriter {
    /// The position the next appended event gets.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Appends one batch frame holding `records` (their `position` field is
    /// ignored and assigned here). Returns once written to the OS; call
    /// [`Log::wait_durable`] with the last position before acknowledging.
    pub fn append(&mut self, log: &Log, records: &[EventRef<'_>]) -> Result<Appended, LogError> {
        log.check_writable()?;
        assert!(!records.is_empty() && records.len() <= format::BATCH_EVENTS_MAX as usize);
        let payload_len: usize =
            format::BATCH_HEADER_BYTES + records.iter().map(format::record_len).sum::<usize>();
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
    pub(super) fn make_room(
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
    pub(super) fn write_frame(
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
    pub(super) fn roll(&mut self, log: &Log) -> Result<(), LogError> {
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

    pub(super) fn seal(&mut self, log: &Log, active: &ActiveSegment) -> Result<(), LogError> {
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

    pub(super) fn create_segment(&mut self, log: &Log) -> Result<(), LogError> {
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
