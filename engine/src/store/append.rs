//! Appending: input checks, planning a batch under the writer lock
//! (idempotency, expected versions, versions, positions, clocks), writing
//! it, and waiting for its sync (the path in the module documentation).

use super::*;

impl Store {
    /// Appends events to one aggregate atomically. See
    /// [`Store::append_batch`].
    pub fn append(
        &self,
        aggregate_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Committed>> {
        self.append_batch(&[AggregateEvents {
            aggregate_id: aggregate_id.to_owned(),
            expected,
            events,
        }])
    }

    /// Appends events to one or more aggregates as one atomic batch (S3):
    /// after a crash either all of them are in the log or none is. Groups
    /// are appended in order; an aggregate may have several groups (they
    /// follow each other, each checked against the version the one before
    /// left), so any interleaving of aggregates can be kept in the log.
    ///
    /// * An event whose `event_id` is already in the log is not written
    ///   again; its [`Committed`] says `existed` and carries the earlier
    ///   position (S6). When every event exists, expectations are not
    ///   checked, so a retry of a successful append succeeds.
    /// * Otherwise each aggregate's expectation is checked against its
    ///   current version; a stale one fails the whole batch with
    ///   [`Error::Conflict`] naming the current version, writing nothing.
    /// * In `Sync` durability this returns once the batch is on stable
    ///   storage (S2).
    ///
    /// ```
    /// use strata::{AggregateEvents, Error, ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// let debit = NewEvent::new("Debited", br#"{"amount":5}"#.to_vec());
    /// let debit_id = debit.event_id;
    /// let credit = NewEvent::new("Credited", br#"{"amount":5}"#.to_vec());
    /// // Both or neither, each aggregate checked against its version.
    /// let batch = [
    ///     AggregateEvents {
    ///         aggregate_id: "account-a".into(),
    ///         expected: ExpectedVersion::NoStream,
    ///         events: vec![debit.clone()],
    ///     },
    ///     AggregateEvents {
    ///         aggregate_id: "account-b".into(),
    ///         expected: ExpectedVersion::NoStream,
    ///         events: vec![credit],
    ///     },
    /// ];
    /// let committed = store.append_batch(&batch)?;
    /// assert_eq!(committed.len(), 2);
    /// // A retry writes nothing and answers with the first positions.
    /// let again = store.append_batch(&batch)?;
    /// assert!(again.iter().all(|c| c.existed));
    /// // A stale expectation fails, naming the current version.
    /// let stale = store.append("account-a", ExpectedVersion::NoStream, vec![
    ///     NewEvent::new("Debited", br#"{"amount":1}"#.to_vec()),
    /// ]);
    /// assert!(matches!(stale, Err(Error::Conflict { current: 1, .. })));
    /// assert_eq!(store.get(debit_id)?.unwrap().position, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_batch(&self, groups: &[AggregateEvents]) -> Result<Vec<Committed>> {
        if self.inner.options.durability == Durability::Sync {
            // Concurrent durable appends share one write and one sync.
            return self.append_queued(groups);
        }
        self.append_alone(groups)
    }

    /// [`Store::append_batch`] without the commit queue.
    pub(super) fn append_alone(&self, groups: &[AggregateEvents]) -> Result<Vec<Committed>> {
        self.append_batches(&[groups])?
            .pop()
            .expect("one result per batch")
    }

    /// Appends several independent batches in one write: each batch is all
    /// or nothing and is checked as [`Store::append_batch`] checks one,
    /// against the log as the batches before it in this call leave it; the
    /// batches that hold are written together and share one sync (S2). A
    /// server that gathers appends from many clients uses this to give them
    /// one `fdatasync` (group commit) and each its own answer.
    ///
    /// Returns one result per batch: its committed events, or why it was
    /// refused ([`Error::Conflict`], [`Error::EventIdReused`],
    /// [`Error::Invalid`]); nothing of a refused batch is written. A
    /// failure of the write itself fails the call: then no batch is
    /// acknowledged (those written before the failure may still become
    /// durable, and a retry finds them by id).
    ///
    /// ```
    /// use strata::{AggregateEvents, Error, ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// let push = |agg: &str, expected| AggregateEvents {
    ///     aggregate_id: agg.into(),
    ///     expected,
    ///     events: vec![NewEvent::new("T", b"{}".to_vec())],
    /// };
    /// let a = [push("a", ExpectedVersion::Exact(0))];
    /// let late = [push("a", ExpectedVersion::Exact(0))];
    /// let b = [push("b", ExpectedVersion::Exact(0))];
    /// let results = store.append_batches(&[&a, &late, &b])?;
    /// assert_eq!(results[0].as_ref().unwrap()[0].position, 1);
    /// assert!(matches!(results[1], Err(Error::Conflict { current: 1, .. })));
    /// assert_eq!(results[2].as_ref().unwrap()[0].position, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append_batches(
        &self,
        batches: &[&[AggregateEvents]],
    ) -> Result<Vec<Result<Vec<Committed>>>> {
        let inner = &*self.inner;
        if inner.replica_log.load(Ordering::Relaxed) {
            return Err(Error::ReplicaLog {
                path: inner.dir.clone(),
            });
        }
        let limits = &inner.options.limits;
        // Input checks, outside any lock: a batch that fails them is
        // refused and the others go on.
        let mut results: Vec<Option<Result<Vec<Committed>>>> = batches
            .iter()
            .map(|b| check_batch(limits, b).err().map(|e| Err(e.into())))
            .collect();

        let in_flight = inner.log.begin_append();
        let mut guard = lock(&inner.writer);
        if guard.is_none() {
            return Err(self.no_writer());
        }
        self.wait_for_tail_room()?;
        let writer = guard.as_mut().expect("checked above");

        let ids: Vec<Uuid> = batches
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .flat_map(|(b, _)| b.iter().flat_map(|g| g.events.iter().map(|e| e.event_id)))
            .collect();
        let existing = self.find_existing(&ids)?;
        let mut plan = Plan::new(writer.log.next_position(), batches.len() > 1);
        for (batch, result) in batches.iter().zip(results.iter_mut()) {
            if result.is_none() {
                *result = Some(self.plan_batch(writer, batch, &existing, &mut plan));
            }
        }
        let results: Vec<Result<Vec<Committed>>> = results
            .into_iter()
            .map(|r| r.expect("every batch planned"))
            .collect();

        let first_planned = writer.log.next_position();
        debug_assert_eq!(
            first_planned + plan.records.len() as u64,
            plan.next_position,
            "the plan numbers its records from the log's next position, without gaps"
        );
        if !plan.records.is_empty() {
            self.write_planned(writer, &plan)?;
        }
        // Postconditions: the log took exactly the planned records, and
        // every answer names events the log holds (new ones where they
        // were planned, existing ones at or below the durable target).
        debug_assert_eq!(writer.log.next_position(), plan.next_position);
        debug_assert!(results.iter().flatten().flatten().all(|c| {
            c.position < plan.next_position
                && (c.position >= first_planned || c.position <= plan.existing_max)
        }));
        drop(in_flight);
        drop(guard);
        let last_written = plan.next_position - 1;
        inner
            .log
            .wait_durable(plan.existing_max.max(last_written))?;
        Ok(results)
    }

    /// Plans one batch of [`Store::append_batches`] on top of `plan`
    /// (writer lock held): finds which events exist already (and that they
    /// are the same events), checks expectations against the versions the
    /// log and the earlier batches leave, and assigns versions, positions
    /// and timestamps. On refusal `plan` is left as it was.
    pub(super) fn plan_batch<'a>(
        &self,
        writer: &Writer,
        groups: &'a [AggregateEvents],
        existing: &FastMap<Uuid, (Pointer, Arc<str>)>,
        plan: &mut Plan<'a>,
    ) -> Result<Vec<Committed>> {
        let inner = &*self.inner;
        // Events already in the log (or earlier in this call) are the same
        // event only with the same aggregate, type, payload and metadata.
        let mut found: FastMap<Uuid, (u64, u64)> = FastMap::default();
        for g in groups {
            for e in &g.events {
                let held = match plan.new_ids.get(&e.event_id) {
                    Some(&i) => {
                        let r = &plan.records[i];
                        let differs = differences(
                            (r.aggregate_id, r.event_type, r.data, r.metadata),
                            &g.aggregate_id,
                            e,
                        );
                        Some((r.position, r.version, r.aggregate_id.to_owned(), differs))
                    }
                    None => match existing.get(&e.event_id) {
                        Some((ptr, _)) => {
                            Some(self.compare_existing(writer, ptr, &g.aggregate_id, e)?)
                        }
                        None => None,
                    },
                };
                if let Some((position, version, existing_aggregate, differs)) = held {
                    if !differs.is_empty() {
                        return Err(Error::EventIdReused {
                            event_id: e.event_id,
                            position,
                            existing_aggregate,
                            differs,
                        });
                    }
                    found.insert(e.event_id, (position, version));
                }
            }
        }
        let total: usize = groups.iter().map(|g| g.events.len()).sum();
        if found.len() == total {
            // A retry of a batch that went through: nothing to check.
            let mut committed = Vec::with_capacity(total);
            for g in groups {
                for e in &g.events {
                    let (position, version) = found[&e.event_id];
                    plan.existing_max = plan.existing_max.max(position);
                    committed.push(Committed {
                        event_id: e.event_id,
                        position,
                        version,
                        existed: true,
                    });
                }
            }
            return Ok(committed);
        }

        // Versions and timestamps for the new events, on a copy of the
        // plan's versions: a refusal leaves the plan untouched.
        let mut versions: FastMap<&str, u64> =
            FastMap::with_capacity_and_hasher(groups.len(), Default::default());
        let mut staged: Vec<(usize, usize, u64)> = Vec::with_capacity(total);
        // Timestamps: when an event of the batch brings its own, each event
        // is stamped as it is checked (the clock observes a given one in
        // order, and the local stamps after it must pass it); otherwise the
        // new events are stamped together once every check has passed,
        // with one reading of the clock (`Hlc::now_many`), and a refused
        // batch leaves the clock where it was.
        let own_stamps = groups
            .iter()
            .flat_map(|g| &g.events)
            .any(|e| e.timestamp.is_some());
        let mut stamps: Vec<Timestamp> = Vec::with_capacity(total);
        for (gi, g) in groups.iter().enumerate() {
            let new: Vec<usize> = (0..g.events.len())
                .filter(|&i| !found.contains_key(&g.events[i].event_id))
                .collect();
            if new.is_empty() {
                continue;
            }
            // A later group of an aggregate already in this batch (or in
            // an earlier batch of this call) follows it.
            let current = match versions
                .get(g.aggregate_id.as_str())
                .or_else(|| plan.versions.get(g.aggregate_id.as_str()))
            {
                Some(v) => *v,
                None => self.current_version(writer, &g.aggregate_id)?,
            };
            if !g.expected.admits(current) {
                return Err(Error::Conflict {
                    aggregate_id: g.aggregate_id.clone(),
                    expected: g.expected,
                    current,
                });
            }
            let mut v = current;
            for ei in new {
                let e = &g.events[ei];
                v += 1;
                if own_stamps {
                    stamps.push(match &e.timestamp {
                        Some(ts) => {
                            inner.hlc.observe(ts).map_err(|source| {
                                InvalidInput::EventTimestamp {
                                    event_id: e.event_id,
                                    source,
                                }
                            })?;
                            ts.clone()
                        }
                        None => inner.hlc.now().map_err(InvalidInput::Timestamp)?,
                    });
                }
                staged.push((gi, ei, v));
            }
            versions.insert(g.aggregate_id.as_str(), v);
        }
        if !own_stamps {
            let together = inner
                .hlc
                .now_many(staged.len())
                .map_err(InvalidInput::Timestamp)?;
            stamps.extend(together);
        }
        debug_assert_eq!(stamps.len(), staged.len(), "one stamp per new event");

        // Accepted: move the staged events into the plan.
        let first_stamp = plan.stamps.len();
        plan.stamps.extend(stamps);
        let first_position = plan.next_position;
        for (k, (gi, ei, v)) in staged.iter().enumerate() {
            let g = &groups[*gi];
            let e = &g.events[*ei];
            let position = plan.next_position;
            plan.next_position += 1;
            if plan.track_ids {
                plan.new_ids.insert(e.event_id, plan.records.len());
            }
            plan.records.push(PlannedRecord {
                batch: plan.batches,
                position,
                event_id: e.event_id,
                version: *v,
                stamp: first_stamp + k,
                aggregate_id: &g.aggregate_id,
                event_type: &e.event_type,
                data: &e.data,
                metadata: e.metadata.as_deref(),
            });
        }
        for (agg, v) in versions {
            plan.versions.insert(agg, v);
        }
        plan.batches += 1;
        // `staged` lists the new events in the groups' order, so one walk
        // pairs each event with its position (the k-th staged one at
        // `first_position + k`).
        let mut staged = staged.iter().enumerate().peekable();
        let mut committed = Vec::with_capacity(total);
        for (gi, g) in groups.iter().enumerate() {
            for (ei, e) in g.events.iter().enumerate() {
                let new = staged.next_if(|(_, (sg, se, _))| (*sg, *se) == (gi, ei));
                let (position, version, existed) = match new {
                    Some((k, &(_, _, v))) => (first_position + k as u64, v, false),
                    None => {
                        let (p, v) = found[&e.event_id];
                        plan.existing_max = plan.existing_max.max(p);
                        (p, v, true)
                    }
                };
                committed.push(Committed {
                    event_id: e.event_id,
                    position,
                    version,
                    existed,
                });
            }
        }
        debug_assert!(staged.next().is_none(), "every staged event answered");
        Ok(committed)
    }

    /// Reads an event that exists by id (writer lock held, so it may be
    /// written but not yet synced) and says how `attempt` differs from it.
    pub(super) fn compare_existing(
        &self,
        writer: &Writer,
        ptr: &Pointer,
        aggregate_id: &str,
        attempt: &NewEvent,
    ) -> Result<(u64, u64, String, Vec<&'static str>)> {
        let _ = writer;
        let log = &self.inner.log;
        let (agg, differs) =
            log.read_written_record(ptr.segment, ptr.offset, ptr.position, |r| {
                (
                    r.aggregate_id.to_owned(),
                    differences(
                        (r.aggregate_id, r.event_type, r.data, r.metadata),
                        aggregate_id,
                        attempt,
                    ),
                )
            })?;
        Ok((ptr.position, ptr.version, agg, differs))
    }

    /// Writes the planned records (writer lock held), in as few frames as
    /// the format allows, never splitting a batch (each batch is atomic
    /// because it lies in one frame), and records them in the tail.
    pub(super) fn write_planned(&self, writer: &mut Writer, plan: &Plan<'_>) -> Result<()> {
        let inner = &*self.inner;
        let fields: Vec<EventRef<'_>> = plan
            .records
            .iter()
            .map(|r| {
                let ts = &plan.stamps[r.stamp];
                EventRef {
                    position: r.position,
                    event_id: r.event_id,
                    version: r.version,
                    hlc_physical_ms: ts.physical_ms(),
                    hlc_counter: ts.counter(),
                    hlc_node: ts.node().as_str(),
                    aggregate_id: r.aggregate_id,
                    event_type: r.event_type,
                    data: r.data,
                    metadata: r.metadata,
                }
            })
            .collect();
        // One unit per batch: its records and their bytes.
        let mut units: Vec<(usize, usize)> = Vec::new();
        let mut unit_batch = None;
        for (r, f) in plan.records.iter().zip(&fields) {
            if unit_batch == Some(r.batch) {
                let u = units.last_mut().expect("a unit for this batch");
                u.0 += 1;
                u.1 += format::record_len(f);
            } else {
                unit_batch = Some(r.batch);
                units.push((1, format::record_len(f)));
            }
        }
        let mut rest = &fields[..];
        for records in format::pack_frames(&units, format::BATCH_EVENTS_MAX as usize) {
            let (chunk, after) = rest.split_at(records);
            rest = after;
            let appended = writer.log.append(&inner.log, chunk)?;
            debug_assert_eq!(appended.first_position, chunk[0].position);
            debug_assert_eq!(appended.last_position, chunk[records - 1].position);
            self.record_tail(writer, chunk, &appended);
        }
        debug_assert!(rest.is_empty());
        Ok(())
    }

    /// Waits (writer lock held, so every writer waits) while the indexer is
    /// more than `tail_events_max` events behind.
    pub(super) fn wait_for_tail_room(&self) -> Result<()> {
        let inner = &*self.inner;
        loop {
            let len = inner.tail.read().unwrap_or_else(|e| e.into_inner()).len();
            if len <= inner.options.tail_events_max {
                return Ok(());
            }
            let st = lock(&inner.progress.state);
            if let Some(reason) = &st.stopped {
                return Err(IndexError::Stopped {
                    reason: reason.clone(),
                }
                .into());
            }
            let _ = inner.progress.moved.wait_timeout(st, IDLE_WAKE);
        }
    }

    /// Event ids of `ids` already in the log, with where they are.
    pub(super) fn find_existing(&self, ids: &[Uuid]) -> Result<FastMap<Uuid, (Pointer, Arc<str>)>> {
        let inner = &*self.inner;
        for attempt in 0.. {
            let mut found = FastMap::default();
            let mut ask_index = Vec::new();
            let tail_from = {
                let tail = inner.tail.read().unwrap_or_else(|e| e.into_inner());
                for id in ids {
                    match tail.find(id) {
                        Some(hit) => {
                            found.insert(*id, hit);
                        }
                        None if tail.index_max_id.is_some_and(|max| *id <= max) => {
                            ask_index.push(*id)
                        }
                        None => {}
                    }
                }
                tail.from
            };
            // Ask the index second: anything trimmed from the tail meanwhile
            // was committed to the index (and counted in its largest id)
            // first.
            if !inner.options.read_only {
                for (id, (ptr, agg)) in inner.index.lookup_ids(&ask_index)? {
                    found.insert(id, (ptr, Arc::from(agg)));
                }
                return Ok(found);
            }
            if ask_index.is_empty() {
                return Ok(found);
            }
            let (hits, indexed) = inner.index.snapshot(|r, _| r.lookup_ids(&ask_index))?;
            if indexed < tail_from {
                self.index_went_back(indexed, attempt)?;
                continue;
            }
            let head = self.head();
            for (id, (ptr, agg)) in hits {
                if ptr.position <= head {
                    found.insert(id, (ptr, Arc::from(agg)));
                }
            }
            return Ok(found);
        }
        unreachable!("the loop returns")
    }

    /// A read-only store's index answered from a state older than its
    /// tail: refill the tail from there (the first time) or from the start
    /// of the log (if it happens again), so the next attempt is complete.
    pub(super) fn index_went_back(&self, indexed: u64, attempt: u32) -> Result<()> {
        self.refill_tail(if attempt == 0 { indexed } else { 0 })
    }

    /// The aggregate's latest version including unsynced appends (writer
    /// lock held).
    pub(super) fn current_version(&self, writer: &Writer, aggregate_id: &str) -> Result<u64> {
        if let Some(v) = writer.versions.get(aggregate_id) {
            return Ok(*v);
        }
        let inner = &*self.inner;
        if let Some(v) = inner
            .tail
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .latest_version(aggregate_id)
        {
            return Ok(v);
        }
        Ok(inner.index.max_version(aggregate_id)?)
    }

    /// The aggregate's latest visible version (0 when it has no events).
    pub fn aggregate_version(&self, aggregate_id: &str) -> Result<u64> {
        Ok(self
            .read_aggregate_backward(aggregate_id, 1)?
            .first()
            .map_or(0, |e| e.version))
    }
}

/// Most aggregates whose latest version the writer remembers.
pub(super) const VERSION_CACHE_MAX: usize = 100_000;

/// What the writer lock guards.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) log: LogWriter,
    /// Latest version of recently written aggregates. Authoritative: this
    /// writer is the only one, so an entry never goes stale.
    pub(super) versions: FastMap<Box<str>, u64>,
}

impl Writer {
    pub(super) fn remember_version(&mut self, aggregate_id: &str, version: u64) {
        if self.versions.len() >= VERSION_CACHE_MAX && !self.versions.contains_key(aggregate_id) {
            // Forgetting is always safe: the tail and the index know.
            self.versions.clear();
        }
        match self.versions.get_mut(aggregate_id) {
            Some(v) => *v = version,
            None => {
                self.versions.insert(aggregate_id.into(), version);
            }
        }
    }
}

/// What [`Store::append_batches`] will write, built batch by batch.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    /// Position of the next planned event.
    pub(super) next_position: u64,
    pub(super) records: Vec<PlannedRecord<'a>>,
    pub(super) stamps: Vec<Timestamp>,
    /// Where each planned event is in `records`, kept only when later
    /// batches of the call may name the same ids (`track_ids`).
    pub(super) new_ids: FastMap<Uuid, usize>,
    track_ids: bool,
    /// Versions the planned batches leave their aggregates at.
    pub(super) versions: FastMap<&'a str, u64>,
    /// The largest position of an existing event some batch answered with:
    /// it must be durable before the answer goes out.
    pub(super) existing_max: u64,
    /// Batches with new events planned so far (numbers their records).
    pub(super) batches: usize,
}

impl Plan<'_> {
    /// A plan whose first event goes at `next_position`; `track_ids`
    /// when more than one batch will be planned on it.
    pub(super) fn new(next_position: u64, track_ids: bool) -> Self {
        Plan {
            next_position,
            records: Vec::new(),
            stamps: Vec::new(),
            new_ids: FastMap::default(),
            track_ids,
            versions: FastMap::default(),
            existing_max: 0,
            batches: 0,
        }
    }
}

/// One planned event, borrowing its fields from the caller's batch.
#[derive(Debug)]
pub(super) struct PlannedRecord<'a> {
    /// Which planned batch it belongs to: a batch is never split across
    /// frames.
    pub(super) batch: usize,
    pub(super) position: u64,
    pub(super) event_id: Uuid,
    pub(super) version: u64,
    /// Index into `Plan::stamps`.
    pub(super) stamp: usize,
    pub(super) aggregate_id: &'a str,
    pub(super) event_type: &'a str,
    pub(super) data: &'a [u8],
    pub(super) metadata: Option<&'a [u8]>,
}

/// The fields of an existing event (aggregate, type, payload, metadata)
/// that an attempt to append another event under its id changes.
pub(super) fn differences(
    existing: (&str, &str, &[u8], Option<&[u8]>),
    aggregate_id: &str,
    attempt: &NewEvent,
) -> Vec<&'static str> {
    let (agg, event_type, data, metadata) = existing;
    let mut out = Vec::new();
    if agg != aggregate_id {
        out.push("aggregate_id");
    }
    if event_type != attempt.event_type {
        out.push("event_type");
    }
    if data != attempt.data.as_slice() {
        out.push("event_data");
    }
    if metadata != attempt.metadata.as_deref() {
        out.push("metadata");
    }
    out
}

pub(crate) fn check_batch(limits: &Limits, groups: &[AggregateEvents]) -> Result<(), InvalidInput> {
    let count: usize = groups.iter().map(|g| g.events.len()).sum();
    if count == 0 {
        return Err(InvalidInput::NoEvents);
    }
    if count > limits.batch_events_max {
        return Err(InvalidInput::TooManyEvents {
            count,
            max: limits.batch_events_max,
        });
    }
    let mut seen_ids = FastSet::with_capacity_and_hasher(count, Default::default());
    let mut bytes = 0usize;
    for g in groups {
        limits.check_aggregate_id(&g.aggregate_id)?;
        for e in &g.events {
            limits.check_event(e)?;
            if !seen_ids.insert(e.event_id) {
                return Err(InvalidInput::DuplicateInBatch {
                    event_id: e.event_id,
                });
            }
            bytes += crate::event::record_bytes_bound(
                &g.aggregate_id,
                &e.event_type,
                &e.data,
                e.metadata.as_deref(),
            );
        }
    }
    if bytes > limits.batch_bytes_max {
        return Err(InvalidInput::BatchTooLarge {
            bytes,
            max: limits.batch_bytes_max,
        });
    }
    Ok(())
}
