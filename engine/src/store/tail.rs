//! The in-memory tail: events the log holds that the index does not yet,
//! so that reads see every acknowledged event (read-your-writes).
//!
//! The tail keeps what the index keeps, in memory: one entry per run (an
//! aggregate's consecutive versions back to back in one frame, as
//! `aggregate_runs` in the index) and, per event, only where its id is.
//! A batch of a thousand events to ten aggregates costs ten run entries
//! and a thousand small id entries, not three map entries per event.
//!
//! Ids are found without hashing in the common case: fresh UUIDv7s from
//! one writer arrive in increasing order, so the tail keeps the ids that
//! are each larger than every one before them in a queue sorted by id
//! (appended at its back, trimmed at its front, binary-searched), and only
//! the others (ids from other writers' clocks, replicated events) in a
//! hash map.

use super::*;

/// A run of one aggregate's events in the tail: versions
/// `first_version..first_version + count`, at consecutive positions from
/// `first_position`, their records back to back in one frame from
/// (`segment`, `offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TailRun {
    pub(super) first_position: u64,
    pub(super) first_version: u64,
    pub(super) count: u64,
    pub(super) segment: u64,
    pub(super) offset: u64,
}

impl TailRun {
    pub(super) fn last_position(&self) -> u64 {
        self.first_position + self.count - 1
    }

    pub(super) fn last_version(&self) -> u64 {
        self.first_version + self.count - 1
    }

    /// The part of the run at or below position `upto` with versions from
    /// `from_version` on, as a span over the whole run (reads start it at
    /// its first wanted record: see [`Tail::place`]).
    pub(super) fn span(&self, from_version: u64, upto: u64) -> Option<Span> {
        let to = self.first_version + upto.checked_sub(self.first_position)?.min(self.count - 1);
        let from = from_version.max(self.first_version);
        (from <= to).then_some(Span {
            first_position: self.first_position,
            first_version: self.first_version,
            segment: self.segment,
            offset: self.offset,
            from_version: from,
            to_version: to,
        })
    }
}

/// Events appended but not yet in SQLite, so that reads and checks see them.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// Ids each larger than every id before them in the tail, with their
    /// positions: sorted by id and by position at once.
    ascending: VecDeque<(Uuid, u64)>,
    /// The other ids and their positions (an id held twice: its later
    /// copy). A record's offset is in `ids`.
    by_id: FastMap<Uuid, u64>,
    /// Each aggregate's runs, in position order.
    by_aggregate: FastMap<Arc<str>, VecDeque<TailRun>>,
    /// Every run in position order, with its aggregate. Positions in the
    /// tail are gapless, so `runs` and `ids` cover the same positions.
    runs: VecDeque<(TailRun, Arc<str>)>,
    /// Every event in position order, its id and record offset: `ids[k]`
    /// is at position `runs[0].first_position + k`.
    ids: VecDeque<(Uuid, u64)>,
    /// The largest event id in SQLite (byte order). An id above it is not
    /// in SQLite, so looking it up there can be skipped: fresh UUIDv7s sort
    /// by creation time, so appends of new events never query SQLite.
    /// Raised by the indexer before it trims, under the same lock.
    pub(super) index_max_id: Option<Uuid>,
    /// Positions at or below this one have left the tail (the index holds
    /// them).
    pub(super) from: u64,
    /// Read-only stores: the end of this handle's view of the log. The tail
    /// holds every event in `(from, head]`, and every read answers from the
    /// view up to `head`, never past it, although the index may already
    /// hold more (another process writes it). [`Store::refresh`] moves it.
    /// Unused by a read-write store, whose view ends at the log's visible
    /// position and whose tail holds everything not yet indexed.
    pub(super) head: u64,
}

/// One record of a frame, as [`Tail::push_frame`] takes it.
pub(super) struct TailRecord<'a> {
    pub(super) aggregate_id: &'a str,
    pub(super) event_id: Uuid,
    pub(super) position: u64,
    pub(super) version: u64,
    pub(super) offset: u64,
}

impl Tail {
    /// An empty tail whose events will follow `position`, over an index
    /// whose largest event id is `index_max_id`.
    pub(super) fn after(position: u64, index_max_id: Option<Uuid>) -> Tail {
        Tail {
            index_max_id,
            from: position,
            head: position,
            ..Tail::default()
        }
    }

    /// Adds the records of one frame of `segment`, in position order,
    /// following the tail's last position. Consecutive records of one
    /// aggregate with consecutive versions become one run.
    pub(super) fn push_frame<'a>(
        &mut self,
        segment: u64,
        records: impl IntoIterator<Item = TailRecord<'a>>,
    ) {
        let mut open: Option<(TailRun, &'a str)> = None;
        for r in records {
            debug_assert!(
                self.runs
                    .back()
                    .is_none_or(|(run, _)| run.last_position() < r.position),
                "the tail grows in position order"
            );
            self.note_id(r.event_id, r.position);
            self.ids.push_back((r.event_id, r.offset));
            if let Some((run, agg)) = &mut open {
                if *agg == r.aggregate_id
                    && r.version == run.last_version() + 1
                    && r.position == run.last_position() + 1
                {
                    run.count += 1;
                    continue;
                }
                let (run, agg) = open.take().expect("matched above");
                self.push_run(run, agg);
            }
            open = Some((
                TailRun {
                    first_position: r.position,
                    first_version: r.version,
                    count: 1,
                    segment,
                    offset: r.offset,
                },
                r.aggregate_id,
            ));
        }
        if let Some((run, agg)) = open {
            self.push_run(run, agg);
        }
    }

    /// Files `id`, the latest event in the tail, at `position`: in the
    /// sorted queue if it is larger than every id there and the map does
    /// not hold an earlier copy of it (the copies of an id stay together,
    /// so the later one replaces the earlier).
    fn note_id(&mut self, id: Uuid, position: u64) {
        let in_order = self.ascending.back().is_none_or(|&(last, _)| id > last);
        if in_order && !self.by_id.contains_key(&id) {
            self.ascending.push_back((id, position));
        } else {
            self.by_id.insert(id, position);
        }
    }

    /// The position of the event `id`, if the tail holds it (of its later
    /// copy, if it holds two).
    fn position_of(&self, id: &Uuid) -> Option<u64> {
        // A later copy of an id is never in the queue while an earlier one
        // is in the tail: look in the map first.
        if let Some(&position) = self.by_id.get(id) {
            return Some(position);
        }
        let &(last, _) = self.ascending.back()?;
        if *id > last {
            return None;
        }
        let i = self.ascending.partition_point(|(a, _)| a < id);
        self.ascending
            .get(i)
            .filter(|(a, _)| a == id)
            .map(|&(_, position)| position)
    }

    fn push_run(&mut self, run: TailRun, aggregate_id: &str) {
        let key = match self.by_aggregate.get_key_value(aggregate_id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(aggregate_id),
        };
        self.by_aggregate
            .entry(key.clone())
            .or_default()
            .push_back(run);
        self.runs.push_back((run, key));
    }

    /// Moves every run of `other`, which follows this tail's last
    /// position, onto this one.
    pub(super) fn absorb(&mut self, other: Tail) {
        for (run, agg) in other.runs {
            self.push_run(run, &agg);
        }
        self.ids.extend(other.ids);
        // The map's entries last: a later copy of an id is there.
        for (id, position) in other.ascending {
            self.note_id(id, position);
        }
        self.by_id.extend(other.by_id);
    }

    /// Where the event `id` is, if the tail holds it, with its aggregate.
    pub(super) fn find(&self, id: &Uuid) -> Option<(Pointer, Arc<str>)> {
        let position = self.position_of(id)?;
        let (run, agg) = self.run_at(position)?;
        let offset = self.offset_at(position)?;
        Some((
            Pointer {
                position,
                version: run.first_version + (position - run.first_position),
                segment: run.segment,
                offset,
            },
            agg.clone(),
        ))
    }

    /// The run holding `position`, with its aggregate.
    fn run_at(&self, position: u64) -> Option<&(TailRun, Arc<str>)> {
        let i = self
            .runs
            .partition_point(|(r, _)| r.first_position <= position)
            .checked_sub(1)?;
        let found = &self.runs[i];
        (position <= found.0.last_position()).then_some(found)
    }

    /// Where the record at `position` is, `(segment, offset)`, if the tail
    /// holds it.
    pub(super) fn place(&self, position: u64) -> Option<(u64, u64)> {
        let (run, _) = self.run_at(position)?;
        Some((run.segment, self.offset_at(position)?))
    }

    /// The byte offset of the record at `position`, if the tail holds it.
    fn offset_at(&self, position: u64) -> Option<u64> {
        let (first, _) = self.runs.front()?;
        let k = position.checked_sub(first.first_position)?;
        Some(self.ids.get(usize::try_from(k).ok()?)?.1)
    }

    /// The aggregate's runs in the tail, in position order.
    pub(super) fn aggregate_runs(&self, aggregate_id: &str) -> impl Iterator<Item = &TailRun> {
        self.by_aggregate.get(aggregate_id).into_iter().flatten()
    }

    /// Drops everything at or below `indexed`: the index has it now, and
    /// its largest id is at least `max_id`.
    pub(super) fn trim(&mut self, indexed: u64, max_id: Option<Uuid>) {
        self.index_max_id = self.index_max_id.max(max_id);
        self.from = self.from.max(indexed);
        while let Some((run, _)) = self.runs.front() {
            if run.first_position > indexed {
                break;
            }
            let keep = run.last_position().saturating_sub(indexed);
            let (run, agg) = self.runs.pop_front().expect("front exists");
            for k in 0..run.count - keep {
                let (id, _) = self.ids.pop_front().expect("one id per position");
                // What leaves the tail is in the index: its id must be
                // looked up there from now on.
                self.index_max_id = self.index_max_id.max(Some(id));
                let position = run.first_position + k;
                if self.ascending.front() == Some(&(id, position)) {
                    self.ascending.pop_front();
                } else if self.by_id.get(&id).is_some_and(|&p| p <= indexed) {
                    // Only this event's own entry (a log that holds an id
                    // twice keeps the later one's).
                    self.by_id.remove(&id);
                }
            }
            let rest = (keep > 0).then(|| {
                // The index took the front of this run only (a view or an
                // index that ends inside a frame): keep the rest, starting
                // at its first record.
                let first_position = indexed + 1;
                let &(_, offset) = self.ids.front().expect("the rest has ids");
                TailRun {
                    first_position,
                    first_version: run.first_version + (first_position - run.first_position),
                    count: keep,
                    segment: run.segment,
                    offset,
                }
            });
            let q = self
                .by_aggregate
                .get_mut(&agg)
                .expect("every run is under its aggregate");
            debug_assert_eq!(q.front(), Some(&run));
            q.pop_front();
            if let Some(rest) = rest {
                q.push_front(rest);
                self.runs.push_front((rest, agg));
                break;
            }
            if q.is_empty() {
                self.by_aggregate.remove(&agg);
            }
        }
    }

    pub(super) fn latest_version(&self, aggregate_id: &str) -> Option<u64> {
        self.by_aggregate
            .get(aggregate_id)?
            .back()
            .map(TailRun::last_version)
    }

    /// Events in the tail.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Reads the log's events in `(tail.head, upto]` into a read-only store's
/// tail and moves its head to `upto`. Returns the largest HLC (physical,
/// counter) among them.
pub(super) fn extend_tail(log: &Log, tail: &mut Tail, upto: u64) -> Result<(u64, u32)> {
    let mut hlc_max = (0, 0);
    let mut cursor = log.cursor(tail.head + 1);
    while let Some(view) = cursor.next_batch(upto)? {
        // A damaged record ends the frame here and fails the call (whose
        // caller drops this tail).
        let mut damaged = None;
        tail.push_frame(
            view.segment_first,
            view.records().map_while(|r| match r {
                Ok((offset, rec)) => {
                    hlc_max = hlc_max.max((rec.hlc_physical_ms, rec.hlc_counter));
                    Some(TailRecord {
                        aggregate_id: rec.aggregate_id,
                        event_id: rec.event_id,
                        position: rec.position,
                        version: rec.version,
                        offset,
                    })
                }
                Err(e) => {
                    damaged = Some(e);
                    None
                }
            }),
        );
        if let Some(e) = damaged {
            return Err(e.into());
        }
    }
    tail.head = tail.head.max(upto);
    Ok(hlc_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A frame of `(aggregate, version)` records from `position`, each
    /// record 100 bytes after the one before.
    fn frame(tail: &mut Tail, segment: u64, position: u64, records: &[(&str, u64)]) {
        tail.push_frame(
            segment,
            records
                .iter()
                .enumerate()
                .map(|(k, &(agg, version))| TailRecord {
                    aggregate_id: agg,
                    event_id: id((position + k as u64) as u128),
                    position: position + k as u64,
                    version,
                    offset: 1000 + 100 * (position + k as u64),
                }),
        );
    }

    #[test]
    fn consecutive_versions_of_one_aggregate_in_a_frame_are_one_run() {
        let mut t = Tail::default();
        frame(
            &mut t,
            1,
            1,
            &[("a", 1), ("a", 2), ("b", 1), ("a", 3), ("a", 5)],
        );
        // A new frame never extends a run of the one before.
        frame(&mut t, 1, 6, &[("a", 6)]);
        let a: Vec<_> = t
            .aggregate_runs("a")
            .map(|r| (r.first_position, r.first_version, r.count))
            .collect();
        assert_eq!(a, [(1, 1, 2), (4, 3, 1), (5, 5, 1), (6, 6, 1)]);
        assert_eq!(t.len(), 6);
        assert_eq!(t.latest_version("a"), Some(6));
        assert_eq!(t.latest_version("b"), Some(1));
        let (ptr, agg) = t.find(&id(2)).expect("in the tail");
        assert_eq!(
            (ptr.position, ptr.version, ptr.offset, &*agg),
            (2, 2, 1200, "a")
        );
        assert_eq!(t.place(4), Some((1, 1400)));
        assert_eq!(t.place(7), None);
    }

    #[test]
    fn trimming_inside_a_run_keeps_its_rest_from_its_own_record() {
        let mut t = Tail::default();
        frame(&mut t, 1, 1, &[("a", 1), ("a", 2), ("a", 3), ("b", 1)]);
        t.trim(2, None);
        assert_eq!(t.len(), 2);
        assert!(t.find(&id(1)).is_none() && t.find(&id(2)).is_none());
        assert_eq!(t.index_max_id, Some(id(2)));
        let a: Vec<_> = t.aggregate_runs("a").copied().collect();
        assert_eq!(
            a,
            [TailRun {
                first_position: 3,
                first_version: 3,
                count: 1,
                segment: 1,
                offset: 1300
            }]
        );
        t.trim(4, None);
        assert_eq!(t.len(), 0);
        assert!(t.aggregate_runs("a").next().is_none() && t.by_aggregate.is_empty());
        assert_eq!(t.from, 4);
    }

    /// A log that holds an id twice (only a damaged or foreign one can: the
    /// append refuses it) is read into the tail without a panic, and
    /// trimming the first copy keeps the second findable.
    #[test]
    fn an_id_held_twice_keeps_its_later_copy_when_the_first_is_trimmed() {
        let mut t = Tail::default();
        frame(&mut t, 1, 1, &[("a", 1), ("a", 2)]);
        t.push_frame(
            1,
            [TailRecord {
                aggregate_id: "b",
                event_id: id(1),
                position: 3,
                version: 1,
                offset: 9000,
            }],
        );
        t.trim(1, None);
        let (ptr, agg) = t.find(&id(1)).expect("the later copy");
        assert_eq!((ptr.position, ptr.offset, &*agg), (3, 9000, "b"));
        t.trim(2, None);
        assert_eq!(t.place(3), Some((1, 9000)));
        t.trim(3, None);
        assert!(t.find(&id(1)).is_none() && t.len() == 0);
    }

    /// Ids out of order go to the map, the others stay in the sorted
    /// queue; either way each is found at its position until it is
    /// trimmed, and the later copy of an id held twice wins.
    #[test]
    fn ids_in_and_out_of_order_are_found_until_trimmed() {
        let mut t = Tail::default();
        let ids = [10u128, 20, 15, 30, 5, 40, 20];
        t.push_frame(
            1,
            ids.iter().enumerate().map(|(k, &n)| TailRecord {
                aggregate_id: "a",
                event_id: id(n),
                position: k as u64 + 1,
                version: k as u64 + 1,
                offset: 100 * k as u64,
            }),
        );
        assert_eq!(t.ascending.len(), 4, "10, 20, 30, 40 arrived in order");
        assert_eq!(t.by_id.len(), 3, "15, 5 and the second 20 did not");
        let at = |t: &Tail, n: u128| t.find(&id(n)).map(|(p, _)| p.position);
        assert_eq!(
            [10, 20, 15, 30, 5, 40, 25, 50].map(|n| at(&t, n)),
            [
                Some(1),
                Some(7),
                Some(3),
                Some(4),
                Some(5),
                Some(6),
                None,
                None
            ]
        );
        t.trim(3, None);
        assert_eq!(
            [10, 20, 15, 30, 5].map(|n| at(&t, n)),
            [None, Some(7), None, Some(4), Some(5)]
        );
        t.trim(7, None);
        assert!(t.ascending.is_empty() && t.by_id.is_empty() && t.len() == 0);
    }

    /// A tail absorbed into another keeps every id findable, the later
    /// copy winning.
    #[test]
    fn an_absorbed_tail_keeps_its_ids() {
        let mut t = Tail::default();
        frame(&mut t, 1, 1, &[("a", 1), ("a", 2), ("a", 3)]);
        let mut other = Tail::default();
        other.push_frame(
            2,
            [(2u128, 4u64), (9, 5)].map(|(n, position)| TailRecord {
                aggregate_id: "b",
                event_id: id(n),
                position,
                version: position - 3,
                offset: 7000 + position,
            }),
        );
        t.absorb(other);
        let at = |n: u128| t.find(&id(n)).map(|(p, agg)| (p.position, agg));
        assert_eq!(at(1), Some((1, Arc::from("a"))));
        assert_eq!(at(2), Some((4, Arc::from("b"))), "the later copy");
        assert_eq!(at(9), Some((5, Arc::from("b"))));
    }

    proptest::proptest! {
        /// Against a model (an id is where its last copy is, while that
        /// copy is above what was trimmed): any order of ids, duplicates
        /// included, any frames and trims, frames pushed or absorbed from
        /// a tail of their own (as a read-only store's refresh does).
        #[test]
        fn find_agrees_with_a_model_of_the_tail(
            steps in proptest::collection::vec(
                (proptest::collection::vec(0u128..40, 1..6), 0u64..4, proptest::bool::ANY),
                1..30,
            )
        ) {
            let mut t = Tail::default();
            let mut model: Vec<(u128, u64)> = Vec::new();
            let mut next = 1u64;
            let mut trimmed = 0u64;
            for (frame_ids, trim_back, absorbed) in steps {
                let first = next;
                let records = frame_ids.iter().enumerate().map(|(k, &n)| TailRecord {
                    aggregate_id: "a",
                    event_id: id(n),
                    position: first + k as u64,
                    version: first + k as u64,
                    offset: 10 * (first + k as u64),
                });
                if absorbed {
                    let mut fresh = Tail::after(first - 1, None);
                    fresh.push_frame(1, records);
                    t.absorb(fresh);
                } else {
                    t.push_frame(1, records);
                }
                for (k, &n) in frame_ids.iter().enumerate() {
                    model.push((n, first + k as u64));
                }
                next += frame_ids.len() as u64;
                let to = (next - 1).saturating_sub(trim_back).max(trimmed);
                t.trim(to, None);
                trimmed = to;
                for n in 0u128..40 {
                    let want = model
                        .iter()
                        .filter(|(m, _)| *m == n)
                        .map(|&(_, p)| p)
                        .max()
                        .filter(|&p| p > trimmed);
                    let got = t.find(&id(n)).map(|(p, _)| p.position);
                    proptest::prop_assert_eq!(got, want, "id {} after trimming to {}", n, trimmed);
                }
            }
        }
    }

    #[test]
    fn a_run_span_is_cut_to_the_view_and_the_first_version_asked() {
        let run = TailRun {
            first_position: 10,
            first_version: 5,
            count: 4,
            segment: 1,
            offset: 0,
        };
        let s = run.span(0, 100).unwrap();
        assert_eq!((s.from_version, s.to_version), (5, 8));
        let s = run.span(6, 100).unwrap();
        assert_eq!((s.from_version, s.to_version), (6, 8));
        // The view ends at position 11: versions 5 and 6.
        let s = run.span(0, 11).unwrap();
        assert_eq!((s.from_version, s.to_version), (5, 6));
        assert!(run.span(0, 9).is_none());
        assert!(run.span(9, 100).is_none());
    }
}
