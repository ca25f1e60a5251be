//! Rebase: what a replica does to its pending events when the committed
//! log moved under them (Y5), before it pushes. The one implementation,
//! used by [`super::Replica`] and by the deterministic simulation alike.
//!
//! Pending events are taken in push order. Each is renumbered to follow
//! the committed version of its aggregate (and the pending events before
//! it); an event whose version changes is offered to the application's
//! hook, which keeps, replaces or drops it, and a kept or replaced event is
//! re-stamped by the replica's clock (which has already seen the committed
//! events through the receive rule, so the new stamp follows them). A
//! dropped event leaves the outbox (it becomes a rejection) and the events
//! after it of the same aggregate move down.

use uuid::Uuid;

use super::local::{PendingEvent, RebaseDecision};
use super::proto::Proposal;
use crate::error::Error;
use crate::hlc::Timestamp;

/// What [`rebase`] changed.
#[derive(Debug, Default)]
pub struct Rebased {
    /// Ids of the pending events whose version, stamp or content changed
    /// (their outbox rows must be rewritten).
    pub changed: Vec<Uuid>,
    /// Events the hook dropped, taken out of `pending`, with its reason.
    pub dropped: Vec<(PendingEvent, String)>,
}

/// Rebases `pending` (in push order) onto the committed versions that
/// `committed_version` reports. `decide` is the application's hook, asked
/// for each event whose version changes with the version it would get;
/// `stamp` gives a fresh timestamp of the replica's clock.
pub fn rebase(
    pending: &mut Vec<PendingEvent>,
    mut committed_version: impl FnMut(&str) -> Result<u64, Error>,
    mut decide: impl FnMut(&PendingEvent, u64) -> RebaseDecision,
    mut stamp: impl FnMut() -> Result<Timestamp, Error>,
) -> Result<Rebased, Error> {
    let mut out = Rebased::default();
    let mut versions: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut kept = Vec::with_capacity(pending.len());
    for mut e in std::mem::take(pending) {
        let before = match versions.get(&e.aggregate_id) {
            Some(v) => *v,
            None => committed_version(&e.aggregate_id)?,
        };
        let next = before + 1;
        if e.version != next {
            // The committed log moved under this event.
            match decide(&e, next) {
                RebaseDecision::Drop { reason } => {
                    versions.insert(e.aggregate_id.clone(), before);
                    out.dropped.push((e, reason));
                    continue;
                }
                RebaseDecision::Replace {
                    event_type,
                    data,
                    metadata,
                } => {
                    e.event_type = event_type;
                    e.data = data;
                    e.metadata = metadata;
                }
                RebaseDecision::Keep => {}
            }
            e.version = next;
            e.timestamp = stamp()?;
            out.changed.push(e.event_id);
        }
        versions.insert(e.aggregate_id.clone(), next);
        kept.push(e);
    }
    *pending = kept;
    Ok(out)
}

/// The next push: pending events from the front, in order, at most `max`
/// of them and `max_bytes` of [`Proposal::size_bytes`] (always at least
/// one). Once one does not fit, none after it goes: a later event may build
/// on it.
pub fn next_push(pending: &[PendingEvent], max: usize, max_bytes: usize) -> Vec<Proposal> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in pending.iter().take(max) {
        let p = e.proposal();
        if !out.is_empty() && bytes + p.size_bytes() > max_bytes {
            break;
        }
        bytes += p.size_bytes();
        out.push(p);
    }
    out
}
