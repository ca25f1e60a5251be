//! The in-memory tail: events the log holds that the index does not yet,
//! so that reads see every acknowledged event (read-your-writes).

use super::*;

/// Events appended but not yet in SQLite, so that reads and checks see them.
#[derive(Debug, Default)]
pub(super) struct Tail {
    pub(super) by_id: FastMap<Uuid, (Pointer, Arc<str>)>,
    pub(super) by_aggregate: FastMap<Arc<str>, VecDeque<Pointer>>,
    pub(super) order: VecDeque<(u64, Uuid, Arc<str>)>,
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

impl Tail {
    pub(super) fn insert(&mut self, aggregate_id: &str, event_id: Uuid, ptr: Pointer) {
        let key = match self.by_aggregate.get_key_value(aggregate_id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(aggregate_id),
        };
        self.by_aggregate
            .entry(key.clone())
            .or_default()
            .push_back(ptr);
        self.by_id.insert(event_id, (ptr, key.clone()));
        self.order.push_back((ptr.position, event_id, key));
    }

    /// Drops everything at or below `indexed`: the index has it now, and
    /// its largest id is at least `max_id`.
    pub(super) fn trim(&mut self, indexed: u64, max_id: Option<Uuid>) {
        self.index_max_id = self.index_max_id.max(max_id);
        self.from = self.from.max(indexed);
        while let Some((position, _, _)) = self.order.front() {
            if *position > indexed {
                break;
            }
            let (_, id, agg) = self.order.pop_front().expect("front exists");
            // What leaves the tail is in the index: its id must be looked
            // up there from now on.
            self.index_max_id = self.index_max_id.max(Some(id));
            self.by_id.remove(&id);
            if let Some(q) = self.by_aggregate.get_mut(&agg) {
                while q.front().is_some_and(|p| p.position <= indexed) {
                    q.pop_front();
                }
                if q.is_empty() {
                    self.by_aggregate.remove(&agg);
                }
            }
        }
    }

    pub(super) fn latest_version(&self, aggregate_id: &str) -> Option<u64> {
        self.by_aggregate
            .get(aggregate_id)?
            .back()
            .map(|p| p.version)
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Reads the log's events in `(tail.head, upto]` into a read-only store's
/// tail and moves its head to `upto`. Returns the largest HLC (physical,
/// counter) among them.
pub(super) fn extend_tail(log: &Log, tail: &mut Tail, upto: u64) -> Result<(u64, u32)> {
    let mut hlc_max = (0, 0);
    let mut cursor = log.cursor(tail.head + 1);
    while let Some(view) = cursor.next_batch(upto)? {
        for r in view.records() {
            let (offset, rec) = r?;
            hlc_max = hlc_max.max((rec.hlc_physical_ms, rec.hlc_counter));
            tail.insert(
                rec.aggregate_id,
                rec.event_id,
                Pointer {
                    position: rec.position,
                    version: rec.version,
                    segment: view.segment_first,
                    offset,
                },
            );
        }
    }
    tail.head = tail.head.max(upto);
    Ok(hlc_max)
}
