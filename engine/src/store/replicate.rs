//! Copying another log's events: a replica's committed log and a server
//! node's mirror take events as the other side numbered them.

use super::*;

impl Store {
    /// Log records from `from` on as the log stores them, for bulk
    /// catch-up without decoding: a [`RawRun`] of about `max_bytes`
    /// (always at least one record). `None` when there is nothing at or
    /// after `from` yet.
    pub fn read_raw_records(&self, from: u64, max_bytes: usize) -> Result<Option<RawRun>> {
        let upto = self.head();
        let mut cursor = self.take_cursor(from.max(1));
        let run = cursor.next_run(from, upto, max_bytes);
        self.put_cursor(cursor);
        Ok(run?)
    }

    /// From now on plain appends are refused, by this handle and by every
    /// later open: this store is a replica's committed log. The mark is the
    /// store's own file ([`REPLICA_LOG_FILE`]), written durably, so that
    /// the store needs to know nothing of the layer that made it a replica.
    pub(crate) fn mark_replica_log(&self) -> Result<()> {
        let inner = &*self.inner;
        let path = inner.dir.join(REPLICA_LOG_FILE);
        if !path.exists() && !inner.options.read_only {
            let io = |action| {
                let path = path.clone();
                move |source| Error::Io {
                    path,
                    action,
                    source,
                }
            };
            std::fs::write(&path, b"this store is a sync replica's committed log\n")
                .map_err(io("marking the store as a replica's log"))?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io("syncing the replica mark"))?;
            std::fs::File::open(&inner.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing the store directory"))?;
        }
        inner.replica_log.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Appends a server's events exactly as the server's log holds them
    /// (a replica following its server): the first must be at this store's
    /// next position and the rest follow without gaps, each at the next
    /// version of its aggregate, within this store's limits and with ids it
    /// does not hold yet (see [`Store::check_copied`]). Ids, versions and
    /// timestamps are kept; a timestamp beyond the drift limit is not
    /// refused (the server's log is canonical) but moves this store's clock.
    pub fn append_replicated(&self, events: &[Event]) -> Result<()> {
        let inner = &*self.inner;
        let Some(first) = events.first() else {
            return Ok(());
        };
        let mut guard = lock(&inner.writer);
        let writer = guard.as_mut().ok_or_else(|| self.no_writer())?;
        let invalid = |reason: String| {
            diverged(format!(
                "events from the server at position {}: {reason}",
                first.position
            ))
        };
        let fields: Vec<EventRef<'_>> = events.iter().map(Event::as_ref).collect();
        // The whole run is checked before any of it is written.
        self.check_copied(writer, &fields).map_err(invalid)?;
        for f in &fields {
            inner.hlc.restore(f.hlc_physical_ms, f.hlc_counter);
        }
        // Frames of at most the store's batch size (each event is a unit: a
        // copy of the server's log may break anywhere).
        let units: Vec<(usize, usize)> =
            fields.iter().map(|f| (1, format::record_len(f))).collect();
        let mut last = 0;
        let mut rest = &fields[..];
        for records in format::pack_frames(&units, inner.options.limits.batch_events_max) {
            let (chunk, after) = rest.split_at(records);
            rest = after;
            let appended = writer.log.append(&inner.log, chunk)?;
            self.record_tail(writer, chunk, &appended);
            last = appended.last_position;
        }
        drop(guard);
        inner.log.wait_durable(last)?;
        Ok(())
    }

    /// Checks records copied from a server's log before they are appended
    /// (writer lock held): positions from this log's next one without
    /// gaps, each version right after its aggregate's, every field within
    /// this store's limits, a valid timestamp, and an event id this store
    /// does not hold and the run does not repeat. A server that sends
    /// anything else is broken or hostile, and what it sent must not reach
    /// the log, where it would stop the index or a later read.
    pub(super) fn check_copied(
        &self,
        writer: &Writer,
        fields: &[EventRef<'_>],
    ) -> std::result::Result<(), String> {
        let limits = &self.inner.options.limits;
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let mut ids = HashSet::with_capacity(fields.len());
        let mut expected = Some(writer.log.next_position());
        for f in fields {
            let at = |reason: String| format!("position {}: {reason}", f.position);
            if expected != Some(f.position) {
                return Err(match expected {
                    Some(next) => at(format!("this replica's next position is {next}")),
                    None => at("positions run past the largest one".into()),
                });
            }
            expected = f.position.checked_add(1);
            limits
                .check_aggregate_id(f.aggregate_id)
                .and_then(|()| limits.check_event_fields(f.event_type, f.data, f.metadata))
                .map_err(|e| at(e.to_string()))?;
            if f.hlc_physical_ms > crate::hlc::PHYSICAL_MS_MAX {
                let e = crate::hlc::HlcError::PhysicalTooLarge {
                    physical_ms: f.hlc_physical_ms,
                };
                return Err(at(e.to_string()));
            }
            crate::hlc::validate_node(f.hlc_node).map_err(|e| at(e.to_string()))?;
            let current = match versions.get(f.aggregate_id) {
                Some(v) => *v,
                None => self
                    .current_version(writer, f.aggregate_id)
                    .map_err(|e| at(e.to_string()))?,
            };
            if current.checked_add(1) != Some(f.version) {
                return Err(at(format!(
                    "version {} of {:?} does not follow {current}",
                    f.version, f.aggregate_id
                )));
            }
            versions.insert(f.aggregate_id, f.version);
            if !ids.insert(f.event_id) {
                return Err(at(format!("event {} appears twice", f.event_id)));
            }
        }
        let ids: Vec<Uuid> = ids.into_iter().collect();
        let held = self.find_existing(&ids).map_err(|e| e.to_string())?;
        if let Some(f) = fields.iter().find(|f| held.contains_key(&f.event_id)) {
            let (ptr, _) = &held[&f.event_id];
            return Err(format!(
                "position {}: event {} is already held at position {}",
                f.position, f.event_id, ptr.position
            ));
        }
        Ok(())
    }

    /// Appends a run of records from a server's log (see
    /// [`Store::read_raw_records`]): checks it once ([`RawRun::check`]:
    /// framing, each record's CRC, consecutive positions) and against this
    /// log ([`Store::check_copied`]), then frames the records unchanged.
    /// Returns the ids of the events appended, in order.
    pub fn append_raw_records(&self, run: &RawRun) -> Result<Vec<Uuid>> {
        let inner = &*self.inner;
        let invalid = |reason: String| {
            diverged(format!(
                "records from the server at position {}: {reason}",
                run.first_position
            ))
        };
        let checked = run.check().map_err(|e| invalid(e.to_string()))?;
        let fields: Vec<EventRef<'_>> = checked.records().iter().map(|(_, r)| *r).collect();
        let mut guard = lock(&inner.writer);
        let writer = guard.as_mut().ok_or_else(|| self.no_writer())?;
        self.check_copied(writer, &fields).map_err(invalid)?;
        for f in &fields {
            inner.hlc.restore(f.hlc_physical_ms, f.hlc_counter);
        }
        let appended = writer.log.append_raw(&inner.log, &checked)?;
        self.record_tail(writer, &fields, &appended);
        drop(guard);
        inner.log.wait_durable(appended.last_position)?;
        Ok(fields.iter().map(|f| f.event_id).collect())
    }

    /// Records freshly written events in the tail and the version cache.
    pub(super) fn record_tail(
        &self,
        writer: &mut Writer,
        fields: &[EventRef<'_>],
        appended: &crate::log::Appended,
    ) {
        let mut tail = self.inner.tail.write().unwrap_or_else(|e| e.into_inner());
        tail.push_frame(
            appended.segment_first,
            fields.iter().enumerate().map(|(i, f)| TailRecord {
                aggregate_id: f.aggregate_id,
                event_id: f.event_id,
                position: appended.first_position + i as u64,
                version: f.version,
                offset: appended.record_offsets[i],
            }),
        );
        drop(tail);
        // The last version of each aggregate in the frame is what counts.
        for (i, f) in fields.iter().enumerate() {
            if fields
                .get(i + 1)
                .is_none_or(|next| next.aggregate_id != f.aggregate_id)
            {
                writer.remember_version(f.aggregate_id, f.version);
            }
        }
    }
}
