//! Reads: by aggregate (index plus tail), by id, by position (cursors),
//! and subscriptions that follow the log.

use super::*;

impl Store {
    /// Up to `limit` events of an aggregate from `from_version` on, oldest
    /// first.
    pub fn read_aggregate(
        &self,
        aggregate_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let spans = self.aggregate_spans(aggregate_id, from_version, false, limit)?;
        self.read_spans(&spans, Some(aggregate_id))
    }

    /// Like [`Store::read_aggregate`], but hands each event to `f` borrowed
    /// from the log (a memory-mapped segment, or a read buffer) instead of
    /// building owned [`Event`]s: nothing is allocated per event, which is
    /// most of the cost of a read for a caller that only looks (folding a
    /// state, counting, checking). Records are CRC-checked as for
    /// `read_aggregate`. Returns how many events `f` saw.
    ///
    /// ```
    /// use strata::{ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// let incr = |n: u8| NewEvent::new("CounterIncremented", vec![b'0' + n]);
    /// store.append("counter-1", ExpectedVersion::Any, vec![incr(1), incr(2)])?;
    /// let mut total = 0;
    /// let seen = store.visit_aggregate("counter-1", 1, usize::MAX, |e| {
    ///     total += u32::from(e.data[0] - b'0');
    /// })?;
    /// assert_eq!((seen, total), (2, 3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn visit_aggregate(
        &self,
        aggregate_id: &str,
        from_version: u64,
        limit: usize,
        mut f: impl FnMut(EventRef<'_>),
    ) -> Result<u64> {
        let spans = self.aggregate_spans(aggregate_id, from_version, false, limit)?;
        let mut seen = 0u64;
        self.visit_spans(&spans, Some(aggregate_id), |r| {
            seen += 1;
            f(r);
            Ok(())
        })?;
        Ok(seen)
    }

    /// The latest `limit` events of an aggregate, newest first.
    pub fn read_aggregate_backward(&self, aggregate_id: &str, limit: usize) -> Result<Vec<Event>> {
        let spans = self.aggregate_spans(aggregate_id, 0, true, limit)?;
        let mut events = self.read_spans(&spans, Some(aggregate_id))?;
        events.reverse();
        Ok(events)
    }

    /// Where an aggregate's events with version ≥ `from_version` are: the
    /// first `limit` of them or, `backward`, the last `limit`; in ascending
    /// order either way. The index's runs, then the tail's events the
    /// index does not have yet.
    pub(super) fn aggregate_spans(
        &self,
        aggregate_id: &str,
        from_version: u64,
        backward: bool,
        limit: usize,
    ) -> Result<Vec<Span>> {
        let inner = &*self.inner;
        let mut attempt = 0;
        let (runs, upto, mut spans) = loop {
            // Tail first, then index: see `find_existing`.
            let (tail, tail_from, upto) = {
                let tail = inner.tail.read().unwrap_or_else(|e| e.into_inner());
                let upto = if inner.options.read_only {
                    tail.head
                } else {
                    inner.log.visible_position()
                };
                let pending: Vec<TailRun> = tail.aggregate_runs(aggregate_id).copied().collect();
                (pending, tail.from, upto)
            };
            if !inner.options.read_only {
                let indexed = inner.index.aggregate_spans(
                    aggregate_id,
                    from_version,
                    backward,
                    limit,
                    upto,
                )?;
                break (tail, upto, indexed);
            }
            // A read-only store's index is written by another handle: read
            // it in one snapshot, and check that snapshot reaches the tail.
            let (indexed, checkpoint) = inner.index.snapshot(|r, _| {
                r.aggregate_spans(aggregate_id, from_version, backward, limit, upto)
            })?;
            if checkpoint < tail_from {
                self.index_went_back(checkpoint, attempt)?;
                attempt += 1;
                continue;
            }
            break (tail, upto, indexed);
        };
        // An aggregate's versions grow with its positions, so the tail's
        // events the index lacks come after every version it returned
        // (the tail may still hold some the indexer has just written).
        let indexed_to = spans.last().map_or(0, |s| s.to_version);
        let tail: Vec<Span> = runs
            .iter()
            .filter_map(|r| r.span(from_version.max(indexed_to + 1), upto))
            .collect();
        if tail.is_empty() {
            // Nothing for this aggregate waits for the indexer: the index's
            // answer is the whole answer.
            return self.start_inside_runs(spans);
        }
        spans.extend(tail);
        let total: u64 = spans.iter().map(Span::count).sum();
        let mut excess = total.saturating_sub(limit as u64);
        if excess == 0 {
            return self.start_inside_runs(spans);
        }
        if backward {
            // The last `limit`: drop whole spans from the front, then cut
            // into the first one left.
            let whole = spans
                .iter()
                .take_while(|s| {
                    let drop = s.count() <= excess;
                    if drop {
                        excess -= s.count();
                    }
                    drop
                })
                .count();
            spans.drain(..whole);
            if let Some(first) = spans.first_mut() {
                first.from_version += excess;
            }
        } else {
            while excess > 0 {
                let last = spans.last_mut().expect("more events than the limit");
                if last.count() <= excess {
                    excess -= last.count();
                    spans.pop();
                } else {
                    last.to_version -= excess;
                    excess = 0;
                }
            }
        }
        self.start_inside_runs(spans)
    }

    /// A span that starts inside its run (a read from a version in the
    /// middle of a batch, or the latest few events) starts at the record of
    /// its first wanted event, found by position in the tail or the index,
    /// instead of walking the run's earlier records: a run may be a whole
    /// frame. Where neither has it any more, the walk starts at the run.
    fn start_inside_runs(&self, mut spans: Vec<Span>) -> Result<Vec<Span>> {
        let mut unplaced = Vec::new();
        {
            let tail = self.inner.tail.read().unwrap_or_else(|e| e.into_inner());
            for (i, span) in spans.iter_mut().enumerate().filter(|(_, s)| s.skip() > 0) {
                match tail.place(span.first_position + span.skip()) {
                    Some(place) => span.start_at(place),
                    None => unplaced.push(i),
                }
            }
        }
        for i in unplaced {
            let span = &mut spans[i];
            if let Some(place) = self
                .inner
                .index
                .row_place(span.first_position + span.skip())?
            {
                span.start_at(place);
            }
        }
        Ok(spans)
    }

    #[cfg(feature = "bench")]
    pub(crate) fn aggregate_pointers_for_bench(&self, aggregate_id: &str) -> Result<Vec<Pointer>> {
        let spans = self.aggregate_spans(aggregate_id, 0, false, usize::MAX)?;
        let mut pointers = Vec::new();
        self.inner
            .log
            .read_runs(spans.iter().map(Span::as_run), |segment, offset, r| {
                pointers.push(Pointer {
                    position: r.position,
                    version: r.version,
                    segment,
                    offset,
                })
            })?;
        Ok(pointers)
    }

    /// Reads the events of `spans`, in order (see [`Store::visit_spans`]).
    pub(super) fn read_spans(
        &self,
        spans: &[Span],
        aggregate_id: Option<&str>,
    ) -> Result<Vec<Event>> {
        let mut events = Vec::with_capacity(spans.iter().map(|s| s.count() as usize).sum());
        // Events of one aggregate mostly come from few nodes: share the
        // node id between them instead of allocating one per event.
        let mut node: Option<NodeId> = None;
        self.visit_spans(spans, aggregate_id, |r| {
            let e = r
                .to_event_sharing_node(&mut node)
                .map_err(|err| format!("record holds an invalid timestamp: {err}"))?;
            events.push(e);
            Ok(())
        })?;
        Ok(events)
    }

    /// Hands the events of `spans` to `f`, in order, checking that each
    /// holds the version its span says (and, given one, the aggregate): a
    /// pointer that went stale is an error naming the place, never another
    /// event. `f` refuses a record by returning why; the read stops there
    /// with that reason and the record's place.
    pub(super) fn visit_spans(
        &self,
        spans: &[Span],
        aggregate_id: Option<&str>,
        mut f: impl FnMut(EventRef<'_>) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let log = &self.inner.log;
        let mut failed: Option<(Pointer, String)> = None;
        let mut expected = spans.iter().flat_map(|s| s.from_version..=s.to_version);
        log.read_runs(
            spans.iter().map(Span::as_run),
            |segment, offset, r| {
                let version = expected.next();
                if failed.is_some() {
                    return;
                }
                let at = || Pointer {
                    position: r.position,
                    version: r.version,
                    segment,
                    offset,
                };
                if version != Some(r.version) || aggregate_id.is_some_and(|a| a != r.aggregate_id) {
                    let reason = format!(
                        "record at position {} is version {} of {:?}, the index expected version {} of {:?}; the index is stale, run `strata reindex`",
                        r.position,
                        r.version,
                        r.aggregate_id,
                        version.unwrap_or(0),
                        aggregate_id.unwrap_or(r.aggregate_id),
                    );
                    failed = Some((at(), reason));
                    return;
                }
                if let Err(reason) = f(r) {
                    failed = Some((at(), reason));
                }
            },
        )?;
        match failed {
            Some((at, reason)) => Err(inconsistent_at(log, &at, reason)),
            None => Ok(()),
        }
    }

    /// The event with this id, if it is visible.
    pub fn get(&self, event_id: Uuid) -> Result<Option<Event>> {
        let found = self.find_existing(&[event_id])?;
        match found.get(&event_id) {
            Some((p, _)) if p.position <= self.head() => {
                Ok(self.read_spans(&[p.span()], None)?.pop())
            }
            _ => Ok(None),
        }
    }

    /// A cursor at `from`: a cached one that stopped there, or a new one.
    pub(super) fn take_cursor(&self, from: u64) -> Cursor {
        let mut cache = lock(&self.inner.cursors);
        match cache.iter().position(|c| c.next_position() == from) {
            Some(i) => cache.swap_remove(i),
            None => self.inner.log.cursor(from),
        }
    }

    pub(super) fn put_cursor(&self, cursor: Cursor) {
        let mut cache = lock(&self.inner.cursors);
        if cache.len() >= CURSOR_CACHE_MAX {
            cache.remove(0);
        }
        cache.push(cursor);
    }

    /// Up to `max_events` events (and about `max_bytes`) from `from` on,
    /// for sequential readers such as sync followers: a read that starts
    /// where an earlier one stopped continues without seeking.
    pub fn read_events(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>> {
        let log = &self.inner.log;
        let upto = self.head();
        let mut cursor = self.take_cursor(from.max(1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut node = None;
        // Whole batches only: the cursor has passed a batch once it hands
        // it out, so the limits are checked between batches.
        while out.len() < max_events && bytes < max_bytes {
            let Some(view) = cursor.next_batch(upto)? else {
                break;
            };
            for r in view.records() {
                let (offset, rec) = r?;
                let e = rec.to_event_sharing_node(&mut node).map_err(|e| {
                    let at = Pointer {
                        position: rec.position,
                        version: rec.version,
                        segment: view.segment_first,
                        offset,
                    };
                    corrupt_hlc(log, &at, e)
                })?;
                bytes += format::record_len(&rec);
                out.push(e);
            }
        }
        self.put_cursor(cursor);
        Ok(out)
    }

    /// Every event from `from_position` up to the head at the time of the
    /// call, in position order, one batch in memory at a time.
    ///
    /// ```
    /// use strata::{ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// for agg in ["a", "b", "a"] {
    ///     store.append(agg, ExpectedVersion::Any, vec![NewEvent::new("T", b"{}".to_vec())])?;
    /// }
    /// let from_2: Vec<(u64, String)> = store
    ///     .read_all(2)
    ///     .map(|e| e.map(|e| (e.position, e.aggregate_id)))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(from_2, [(2, "b".to_owned()), (3, "a".to_owned())]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_all(&self, from_position: u64) -> ReadAll {
        ReadAll {
            cursor: self.inner.log.cursor(from_position),
            upto: self.head(),
            pending: VecDeque::new(),
            failed: false,
        }
    }

    /// Calls `f` for every event from `from_position` up to `upto` (or the
    /// head) without copying: events borrow from the log's memory maps.
    /// Returns how many events `f` saw.
    pub fn scan(
        &self,
        from_position: u64,
        upto: Option<u64>,
        mut f: impl FnMut(EventRef<'_>) -> ControlFlow<()>,
    ) -> Result<u64> {
        let log = &self.inner.log;
        let upto = upto.unwrap_or(u64::MAX).min(self.head());
        let mut cursor = log.cursor(from_position);
        let mut seen = 0;
        while let Some(view) = cursor.next_batch(upto)? {
            for r in view.records() {
                let (_, rec) = r?;
                if rec.position > upto {
                    return Ok(seen);
                }
                seen += 1;
                if f(rec).is_break() {
                    return Ok(seen);
                }
            }
        }
        Ok(seen)
    }

    /// Every event from `from_position` on: first those already there, then
    /// new ones as they become visible. Never skips an event; blocks in
    /// `next` while caught up; ends when the store closes.
    ///
    /// ```
    /// use strata::{ExpectedVersion, NewEvent, Options, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Options::default())?;
    /// store.append("a", ExpectedVersion::Any, vec![NewEvent::new("T", b"{}".to_vec())])?;
    /// let mut events = store.subscribe(1);
    /// let writer = {
    ///     let store = store.clone();
    ///     std::thread::spawn(move || {
    ///         store.append("b", ExpectedVersion::Any, vec![NewEvent::new("T", b"{}".to_vec())])
    ///     })
    /// };
    /// // Catch-up, then live: the event appended by the other thread.
    /// assert_eq!(events.next().unwrap()?.position, 1);
    /// assert_eq!(events.next().unwrap()?.aggregate_id, "b");
    /// writer.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self, from_position: u64) -> Subscription {
        Subscription {
            log: self.inner.log.clone(),
            cursor: self.inner.log.cursor(from_position),
            pending: VecDeque::new(),
            follow: self
                .inner
                .options
                .read_only
                .then(|| Arc::downgrade(&self.inner)),
        }
    }
}

/// Iterator returned by [`Store::read_all`].
#[derive(Debug)]
pub struct ReadAll {
    pub(super) cursor: Cursor,
    pub(super) upto: u64,
    pub(super) pending: VecDeque<Event>,
    pub(super) failed: bool,
}

pub(super) fn decode_batch(
    log: &Log,
    cursor: &mut Cursor,
    upto: u64,
    out: &mut VecDeque<Event>,
) -> Result<bool> {
    let Some(view) = cursor.next_batch(upto)? else {
        return Ok(false);
    };
    for r in view.records() {
        let (offset, rec) = r?;
        if rec.position > upto {
            break;
        }
        let e = rec.to_event().map_err(|e| {
            corrupt_hlc(
                log,
                &Pointer {
                    position: rec.position,
                    version: rec.version,
                    segment: view.segment_first,
                    offset,
                },
                e,
            )
        })?;
        out.push_back(e);
    }
    Ok(true)
}

impl Iterator for ReadAll {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.failed {
                return None;
            }
            let log = self.cursor.log().clone();
            match decode_batch(&log, &mut self.cursor, self.upto, &mut self.pending) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Iterator returned by [`Store::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    pub(super) log: Log,
    pub(super) cursor: Cursor,
    pub(super) pending: VecDeque<Event>,
    /// A read-only store's subscription follows the log itself: while it
    /// waits it calls [`Store::refresh`] every [`FOLLOW_POLL`]. Weak, so
    /// that a subscription does not keep its store open.
    pub(super) follow: Option<std::sync::Weak<Inner>>,
}

impl Subscription {
    /// The next event, waiting at most `timeout` for one. `Ok(None)` on
    /// timeout or when the store has closed.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            if decode_batch(&self.log, &mut self.cursor, u64::MAX, &mut self.pending)? {
                continue;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.log.is_closed() {
                return Ok(None);
            }
            match &self.follow {
                None => {
                    self.log.wait_beyond(self.cursor.next_position() - 1, left);
                }
                Some(weak) => {
                    let Some(inner) = weak.upgrade() else {
                        return Ok(None);
                    };
                    let head = Store { inner }.refresh()?;
                    if head < self.cursor.next_position() {
                        std::thread::sleep(left.min(FOLLOW_POLL));
                    }
                }
            }
        }
    }

    /// The position of the next event this subscription will yield.
    pub fn next_position(&self) -> u64 {
        self.cursor.next_position()
    }
}

impl Iterator for Subscription {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) if self.log.is_closed() && self.pending.is_empty() => return None,
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
