//! The fairness turn of a store shared by several nodes, kept in the
//! database (`strata_stores.turn`) so that it covers every node's clients.
//!
//! The rules are the server core's (engine/src/sync/server.rs, "Fairness:
//! the turn"), applied by each commit's transaction under the store's
//! position lock, where every node's pushes meet:
//!
//! * A client whose push is refused for a conflict claims the turn on the
//!   aggregates it needs, for the lease, if nobody holds it (or widens its
//!   own, with the same deadline); otherwise it joins the queue.
//! * A push of another client that touches the turn's aggregates is held
//!   ([`strata::sync::PushOutcome::Held`]): nothing is appended or checked,
//!   and its client joins the queue. Its node offers it again when the head
//!   moves or the turn's time runs out.
//! * The turn passes when its holder's push is appended or its time runs
//!   out: to the first waiter seen recently, for a new lease.
//!
//! The database has no view of connections, so the nodes tell it what it
//! cannot see. Clients are named `node-session/connection`
//! ([`PgDatabase`](super::PgDatabase) draws a session id when it connects):
//!
//! * a client that disconnects from its node leaves the turn at once (its
//!   node calls [`CanonicalLog::client_left`](strata::sync::CanonicalLog::client_left));
//! * a node that died leaves with all its clients: a commit that finds a
//!   session in the turn whose presence lock is free forgets it
//!   ([`super::presence`]);
//! * and in case both fail, a waiter not seen (its push not offered again)
//!   for [`WAITER_STALE_LEASES`] leases is passed over, and a holder keeps
//!   the turn at most until its time runs out.
//!
//! Times are the database's clock (`clock_timestamp()` under the lock), so
//! nodes need not agree on theirs.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A waiter not seen for this many leases is dropped when the turn passes.
pub const WAITER_STALE_LEASES: i64 = 3;
/// Most clients a store's queue holds; past it, a held client is not
/// queued (it still waits, and may claim the turn when it is free).
pub const TURN_QUEUE_MAX: usize = 1_024;
/// Most aggregates one holder or waiter is recorded with: the turn is read
/// and written under the store's lock on every contended commit, so it
/// stays small. A push that touches more is held on these only (its other
/// aggregates may move meanwhile and cost it another round).
pub const TURN_AGGREGATES_MAX: usize = 16;
/// Longest a held push waits before its node offers it again. The turn can
/// pass without the head moving (its holder disconnected, its node died,
/// its time ran out in a commit that wrote nothing), and no notification
/// says so: waiters look again at least this often.
pub const HELD_RECHECK_MS: u64 = 100;
/// Longest lease a store's turn may be given (a day): longer ones would
/// overflow the clock arithmetic and mean nothing.
pub const TURN_LEASE_MS_MAX: u64 = 86_400_000;

/// A store's turn and queue, as `strata_stores.turn` holds them (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Turns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<Waiter>,
}

/// The client whose push comes first on `aggregates` until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub client: String,
    pub aggregates: BTreeSet<String>,
    pub until_ms: i64,
}

/// A client waiting for the turn, with what it needs and when its node
/// last offered its push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiter {
    pub client: String,
    pub aggregates: BTreeSet<String>,
    pub seen_ms: i64,
}

impl Turns {
    /// A turn whose time ran out passes on.
    pub fn expire(&mut self, now_ms: i64, lease_ms: i64) {
        if self.holder.as_ref().is_some_and(|h| h.until_ms <= now_ms) {
            self.pass(now_ms, lease_ms);
        }
    }

    /// How long `client`'s push on `touched` must wait, if another
    /// client's turn holds one of them.
    pub fn held(&self, client: &str, touched: &BTreeSet<String>, now_ms: i64) -> Option<u64> {
        let h = self.holder.as_ref()?;
        (h.client != client && !h.aggregates.is_disjoint(touched))
            .then(|| u64::try_from(h.until_ms - now_ms).unwrap_or(0))
    }

    /// `client` waits for the turn on `needs` (joins the queue, or
    /// widens its place and is seen now).
    pub fn wait(&mut self, client: &str, needs: &BTreeSet<String>, now_ms: i64) {
        if let Some(w) = self.queue.iter_mut().find(|w| w.client == client) {
            widen(&mut w.aggregates, needs.iter().cloned());
            w.seen_ms = now_ms;
        } else if self.queue.len() < TURN_QUEUE_MAX {
            let mut aggregates = BTreeSet::new();
            widen(&mut aggregates, needs.iter().cloned());
            self.queue.push(Waiter {
                client: client.to_owned(),
                aggregates,
                seen_ms: now_ms,
            });
        }
    }

    /// `client`'s push on `touched` was appended: a holder's turn passes;
    /// a waiter no longer needs what it wrote.
    pub fn written(
        &mut self,
        client: &str,
        touched: &BTreeSet<String>,
        now_ms: i64,
        lease_ms: i64,
    ) {
        if self.holder.as_ref().is_some_and(|h| h.client == client) {
            self.pass(now_ms, lease_ms);
        } else if let Some(i) = self.queue.iter().position(|w| w.client == client) {
            let w = &mut self.queue[i];
            w.aggregates.retain(|a| !touched.contains(a));
            if w.aggregates.is_empty() {
                self.queue.remove(i);
            }
        }
    }

    /// `client`'s push was refused for a conflict on `needs`: it claims
    /// the turn if nobody holds it, widens its own (same deadline: a holder
    /// that keeps failing cannot keep the turn from the queue), or waits.
    pub fn refused(&mut self, client: &str, needs: BTreeSet<String>, now_ms: i64, lease_ms: i64) {
        match &mut self.holder {
            None => {
                self.queue.retain(|w| w.client != client);
                let mut aggregates = BTreeSet::new();
                widen(&mut aggregates, needs);
                self.holder = Some(Holder {
                    client: client.to_owned(),
                    aggregates,
                    until_ms: now_ms + lease_ms,
                });
            }
            Some(h) if h.client == client => widen(&mut h.aggregates, needs),
            Some(_) => self.wait(client, &needs, now_ms),
        }
    }

    /// `client` disconnected: it leaves the queue, and its turn passes.
    pub fn left(&mut self, client: &str, now_ms: i64, lease_ms: i64) {
        self.queue.retain(|w| w.client != client);
        if self.holder.as_ref().is_some_and(|h| h.client == client) {
            self.pass(now_ms, lease_ms);
        }
    }

    /// The node sessions named in the turn other than `mine`, each once.
    pub fn sessions_except(&self, mine: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .holder
            .iter()
            .map(|h| session_of(&h.client))
            .chain(self.queue.iter().map(|w| session_of(&w.client)))
            .filter(|s| *s != mine)
            .map(str::to_owned)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The nodes of `dead` are gone: their clients leave the queue, and a
    /// turn one of them held passes.
    pub fn forget_sessions(&mut self, dead: &[&str], now_ms: i64, lease_ms: i64) {
        if dead.is_empty() {
            return;
        }
        self.queue
            .retain(|w| !dead.contains(&session_of(&w.client)));
        if self
            .holder
            .as_ref()
            .is_some_and(|h| dead.contains(&session_of(&h.client)))
        {
            self.pass(now_ms, lease_ms);
        }
    }

    /// Gives the turn to the first waiter seen within
    /// [`WAITER_STALE_LEASES`] leases; older ones are dropped.
    fn pass(&mut self, now_ms: i64, lease_ms: i64) {
        self.holder = None;
        let stale_before = now_ms - WAITER_STALE_LEASES * lease_ms;
        while !self.queue.is_empty() {
            let next = self.queue.remove(0);
            if next.seen_ms >= stale_before {
                self.holder = Some(Holder {
                    client: next.client,
                    aggregates: next.aggregates,
                    until_ms: now_ms + lease_ms,
                });
                return;
            }
        }
    }
}

/// Adds `more` to `set` up to [`TURN_AGGREGATES_MAX`] aggregates.
fn widen(set: &mut BTreeSet<String>, more: impl IntoIterator<Item = String>) {
    for a in more {
        if set.len() >= TURN_AGGREGATES_MAX {
            return;
        }
        set.insert(a);
    }
}

/// The node session of a client's name (`session/connection`).
pub(crate) fn session_of(client: &str) -> &str {
    client.split_once('/').map_or(client, |(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: i64 = 100;

    fn set(aggs: &[&str]) -> BTreeSet<String> {
        aggs.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn the_first_refused_claims_others_are_held_and_queue_in_order() {
        let mut t = Turns::default();
        let hot = set(&["hot"]);
        t.refused("a/1", set(&["hot", "a-own"]), 0, LEASE);
        assert_eq!(t.held("a/1", &hot, 10), None, "the holder is never held");
        assert_eq!(t.held("b/2", &hot, 10), Some(90));
        assert_eq!(t.held("b/2", &set(&["cold"]), 10), None);
        t.wait("b/2", &hot, 10);
        t.wait("c/3", &hot, 11);
        t.wait("b/2", &set(&["b-own"]), 12);
        assert_eq!(t.queue.len(), 2, "one place per client");
        // A refusal of a waiter keeps it in its place.
        t.refused("c/3", hot.clone(), 13, LEASE);
        assert_eq!(t.holder.as_ref().unwrap().client, "a/1");
        // The holder's push lands: the turn passes to the first waiter.
        t.written("a/1", &hot, 20, LEASE);
        let h = t.holder.clone().unwrap();
        assert_eq!(h.client, "b/2");
        assert_eq!(h.aggregates, set(&["hot", "b-own"]));
        assert_eq!(h.until_ms, 20 + LEASE);
        assert_eq!(t.held("a/1", &hot, 21), Some(99));
        t.written("b/2", &hot, 30, LEASE);
        assert_eq!(t.holder.as_ref().unwrap().client, "c/3");
    }

    #[test]
    fn a_turn_runs_out_and_a_holder_that_keeps_failing_cannot_extend_it() {
        let mut t = Turns::default();
        t.refused("a/1", set(&["hot"]), 0, LEASE);
        t.wait("b/2", &set(&["hot"]), 1);
        t.refused("a/1", set(&["hot", "more"]), 50, LEASE);
        let h = t.holder.clone().unwrap();
        assert_eq!(h.until_ms, LEASE, "the deadline stays");
        assert_eq!(h.aggregates, set(&["hot", "more"]));
        t.expire(LEASE - 1, LEASE);
        assert_eq!(t.holder.as_ref().unwrap().client, "a/1");
        t.expire(LEASE, LEASE);
        assert_eq!(t.holder.as_ref().unwrap().client, "b/2");
    }

    #[test]
    fn waiters_not_seen_for_a_while_are_passed_over() {
        let mut t = Turns::default();
        t.refused("a/1", set(&["hot"]), 0, LEASE);
        t.wait("gone/1", &set(&["hot"]), 0);
        t.wait("here/2", &set(&["hot"]), 0);
        t.wait("here/2", &set(&["hot"]), 350);
        t.written("a/1", &set(&["hot"]), 400, LEASE);
        assert_eq!(t.holder.as_ref().unwrap().client, "here/2");
        assert!(t.queue.is_empty());
        // Nobody left: the turn is free.
        t.written("here/2", &set(&["hot"]), 410, LEASE);
        assert_eq!(t, Turns::default());
    }

    #[test]
    fn a_waiter_that_wrote_what_it_needed_leaves_the_queue() {
        let mut t = Turns::default();
        t.refused("a/1", set(&["hot"]), 0, LEASE);
        t.wait("b/2", &set(&["x", "y"]), 0);
        t.written("b/2", &set(&["x"]), 1, LEASE);
        assert_eq!(t.queue[0].aggregates, set(&["y"]));
        t.written("b/2", &set(&["y"]), 2, LEASE);
        assert!(t.queue.is_empty());
    }

    #[test]
    fn a_client_that_left_and_the_clients_of_a_dead_node_leave_the_turn() {
        let mut t = Turns::default();
        let hot = set(&["hot"]);
        t.refused("a/1", hot.clone(), 0, LEASE);
        t.wait("b/2", &hot, 1);
        t.wait("a/3", &hot, 2);
        t.wait("c/4", &hot, 3);
        assert_eq!(t.sessions_except("c"), ["a", "b"]);
        // Client b/2 disconnected: it leaves the queue.
        t.left("b/2", 5, LEASE);
        assert_eq!(t.queue.len(), 2);
        // Node a died: its holder and its waiter go; c/4 gets the turn.
        t.forget_sessions(&["a"], 6, LEASE);
        let h = t.holder.clone().unwrap();
        assert_eq!((h.client.as_str(), h.until_ms), ("c/4", 6 + LEASE));
        assert!(t.queue.is_empty());
        // The holder left: the turn is free.
        t.left("c/4", 7, LEASE);
        assert_eq!(t, Turns::default());
    }

    #[test]
    fn a_holder_and_a_waiter_are_recorded_with_a_bounded_set_of_aggregates() {
        let mut t = Turns::default();
        let many: BTreeSet<String> = (0..100).map(|i| format!("agg-{i:03}")).collect();
        t.refused("a/1", many.clone(), 0, LEASE);
        t.wait("b/2", &many, 0);
        t.refused("a/1", set(&["zzz"]), 1, LEASE);
        assert_eq!(
            t.holder.as_ref().unwrap().aggregates.len(),
            TURN_AGGREGATES_MAX
        );
        assert_eq!(t.queue[0].aggregates.len(), TURN_AGGREGATES_MAX);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut t = Turns::default();
        for i in 0..TURN_QUEUE_MAX + 5 {
            t.wait(&format!("n/{i}"), &set(&["hot"]), 0);
        }
        assert_eq!(t.queue.len(), TURN_QUEUE_MAX);
    }

    #[test]
    fn the_stored_form_round_trips_and_is_empty_when_free() {
        let mut t = Turns::default();
        assert_eq!(serde_json::to_string(&t).unwrap(), "{}");
        t.refused("a/1", set(&["hot"]), 0, LEASE);
        t.wait("b/2", &set(&["hot"]), 1);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Turns>(&json).unwrap(), t);
    }
}
