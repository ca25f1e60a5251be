//! The server side of sync as a state machine, shaped like
//! [`super::ReplicaCore`] and quinn-proto: no sockets, no clock, no
//! storage calls. One [`ServerCore`] per hosted store. A transport shell
//! feeds it what happens (`handle_*`, time passed in) and carries out what
//! it asks (`poll_*`), outside any lock:
//!
//! * [`ServerCore::poll_transmit`]: a message for a client;
//! * [`ServerCore::poll_commit`]: a group commit to carry out on the
//!   canonical log ([`super::CanonicalLog::append_pushes`]), answered with
//!   [`ServerCore::handle_committed`];
//! * [`ServerCore::poll_event`]: the head moved (wake the connections that
//!   follow the log; following is the shell's: it reads the log for each
//!   follower, outside the core);
//! * [`ServerCore::poll_timeout`] / [`ServerCore::handle_timeout`]: when a
//!   turn runs out.
//!
//! # Group commit
//!
//! Pushes wait in arrival order. When no commit is in flight, the next
//! commit takes every push that may go (up to
//! [`ServerConfig::commit_pushes_max`]): the log checks them in that order
//! and writes the ones that hold with one sync, and each push gets its own
//! answer. Pushes that arrive while a commit is in flight go in the next
//! one, so the more clients push at once, the more pushes share a sync.
//!
//! # Fairness: the turn
//!
//! Canonical order is the log's (Y1): a push is appended only if every
//! aggregate it touches is at the version it builds on (Y5); a push that
//! builds on the current versions is appended even if the client is behind
//! on other aggregates. Under contention, the first client whose push is
//! refused for a conflict gets *the turn* on the aggregates it needs, for
//! [`ServerConfig::lease_ms`]: pushes of other clients that touch them are
//! **held** (not answered) and the clients queue, first refused first
//! served. A push that conflicts while another client has the turn on its
//! aggregates is held too, unanswered: whatever it rebased now would be
//! stale again by its turn. The turn passes when its holder's push is
//! appended, when it disconnects, or when its time runs out (a holder that
//! keeps failing cannot extend it); a held push then goes into the next
//! commit, and if what it builds on moved, it is answered `PullRequired`
//! with the client now holding the turn, so its rebased push wins. A push
//! is therefore refused at most once in a row while turns last. Holding
//! instead of refusing is what keeps a client that retries at once (the
//! seed's JSON clients do) from spinning on refusals, and needs nothing
//! from the protocol: a client only sees a slower answer. With one holder
//! at a time there is no cycle of clients waiting for each other, so every
//! refused client gets its turn: nobody starves.
//!
//! A log shared by several nodes keeps the turn itself, in the shared
//! database ([`super::CanonicalLog::keeps_turns`], set in
//! [`ServerConfig::log_keeps_turns`]): no node's core sees the other
//! nodes' clients, so a turn kept here would hold only this node's. The
//! core then keeps no turn; the log answers a push that another client's
//! turn holds [`PushOutcome::Held`], and the core keeps that push waiting,
//! unanswered, until the head moves past what the log saw (the holder's
//! push was appended) or the wait the log gave runs out, then offers it
//! again. The rules are the same, applied by the log to every node's
//! clients.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use uuid::Uuid;

use super::proto::{ErrorCode, Placed, Proposal, ServerMessage};
use super::storage::{CommitResult, Push, PushOutcome, StorageError};
use crate::event::{InvalidInput, Limits};

/// Default [`ServerConfig::lease_ms`].
pub const LEASE_MS_DEFAULT: u64 = 2_000;
/// Default [`ServerConfig::push_events_max`].
pub const PUSH_EVENTS_MAX_DEFAULT: usize = 1_000;
/// Default [`ServerConfig::message_events_max`].
pub const MESSAGE_EVENTS_MAX_DEFAULT: usize = 1_000;
/// Default [`ServerConfig::message_bytes_max`].
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Default [`ServerConfig::commit_pushes_max`].
pub const COMMIT_PUSHES_MAX_DEFAULT: usize = 1_024;
/// Pushes one client may have waiting for their answers; one more is
/// refused (replicas push one at a time).
pub const PUSHES_WAITING_PER_CLIENT_MAX: usize = 4;

/// Decides whether a client may append an event (permissions, validation
/// beyond the store's limits). Refused events become rejections.
pub trait PushPolicy: Send + Sync {
    fn check(&self, client: &str, event: &Proposal) -> Result<(), String>;
}

/// How the server core behaves.
#[derive(Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    /// Most events in one push.
    pub push_events_max: usize,
    /// Most events in one `Events` message.
    pub message_events_max: usize,
    /// About the most bytes of events in one message.
    pub message_bytes_max: usize,
    /// How long a client refused for a conflict has the turn on the
    /// aggregates it needs.
    pub lease_ms: u64,
    /// Most pushes in one group commit (1: every push syncs alone).
    pub commit_pushes_max: usize,
    pub policy: Option<Arc<dyn PushPolicy>>,
    /// The canonical log keeps the fairness turn across nodes
    /// ([`super::CanonicalLog::keeps_turns`]): the core keeps none.
    pub log_keeps_turns: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("push_events_max", &self.push_events_max)
            .field("lease_ms", &self.lease_ms)
            .field("commit_pushes_max", &self.commit_pushes_max)
            .field("log_keeps_turns", &self.log_keeps_turns)
            .finish()
    }
}

impl ServerConfig {
    /// Checks the settings against each other and the wire format; names
    /// the first that does not fit. A follow message holds whole batches
    /// and may pass `message_bytes_max` by one batch of
    /// `limits.batch_bytes_max`, and must still fit the wire's
    /// [`MESSAGE_BYTES_MAX`](super::wire::MESSAGE_BYTES_MAX) with room for
    /// the encoding's own bytes.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.limits.validate()?;
        for (name, value) in [
            ("push_events_max", self.push_events_max),
            ("message_events_max", self.message_events_max),
            ("message_bytes_max", self.message_bytes_max),
            ("commit_pushes_max", self.commit_pushes_max),
        ] {
            if value == 0 {
                return Err(InvalidInput::Setting {
                    name,
                    reason: "is 0, must be at least 1".into(),
                });
            }
        }
        let room = super::wire::MESSAGE_BYTES_MAX
            .saturating_sub(self.limits.batch_bytes_max)
            .saturating_sub(ENCODING_SLACK_BYTES);
        if self.message_bytes_max > room {
            return Err(InvalidInput::Setting {
                name: "message_bytes_max",
                reason: format!(
                    "is {}, but with batches of up to {} bytes (limits.batch_bytes_max) a follow message must stay within {room} to fit the wire's {} bytes; lower one of them",
                    self.message_bytes_max,
                    self.limits.batch_bytes_max,
                    super::wire::MESSAGE_BYTES_MAX
                ),
            });
        }
        Ok(())
    }
}

/// Room [`ServerConfig::validate`] leaves in a wire message for the
/// encoding's own bytes (tags, lengths, and per-event fields).
pub const ENCODING_SLACK_BYTES: usize = 2 << 20;

// A follow message holds whole log batches and may pass the message size
// by one batch: the defaults leave room for that, and for the encoding's
// own bytes, under the wire's limit.
const _: () = assert!(
    super::wire::MESSAGE_BYTES_MAX
        >= MESSAGE_BYTES_MAX_DEFAULT + crate::event::BATCH_BYTES_MAX_DEFAULT + ENCODING_SLACK_BYTES
);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            push_events_max: PUSH_EVENTS_MAX_DEFAULT,
            message_events_max: MESSAGE_EVENTS_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            lease_ms: LEASE_MS_DEFAULT,
            commit_pushes_max: COMMIT_PUSHES_MAX_DEFAULT,
            policy: None,
            log_keeps_turns: false,
        }
    }
}

/// A connection, as the shell numbers them.
pub type ClientId = u64;

/// Who a connection is, as the shell authenticated it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's name (its HLC node id, or the transport's), for logs
    /// and the push policy.
    pub name: String,
    /// Whether it may push (a read-only grant may only follow).
    pub may_write: bool,
}

/// A group commit for the shell to carry out with
/// [`super::CanonicalLog::append_pushes`], then hand back to
/// [`ServerCore::handle_committed`].
#[derive(Debug, Clone)]
pub struct Commit {
    pub id: u64,
    pub pushes: Vec<Push>,
}

/// What the shell should know besides messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoreEvent {
    /// A commit appended events: the log's head is now `head` (wake the
    /// connections that follow the log).
    HeadMoved { head: u64 },
    /// A client that took part in the log's turn disconnected (a log that
    /// keeps turns): tell the log
    /// ([`super::CanonicalLog::client_left`]), outside any lock.
    LeftTurn { client: ClientId },
}

/// A push waiting for its commit.
#[derive(Debug)]
struct Pending {
    client: ClientId,
    request: u64,
    events: Arc<[Proposal]>,
    /// Events refused for good so far, announced with the final answer.
    rejections: Vec<(Uuid, String)>,
    /// The aggregates it writes, sorted.
    touched: Vec<String>,
    /// Held by the log for another client's turn (a log that keeps turns).
    hold: Option<Hold>,
}

/// A push the log held: it waits until the head passes `head` or the clock
/// reaches `until_ms`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    head: u64,
    until_ms: u64,
}

/// The client whose push comes first, and the aggregates it needs.
#[derive(Debug)]
struct Turn {
    holder: ClientId,
    aggregates: HashSet<String>,
    until_ms: u64,
}

/// The server's sync state for one store. See the module documentation.
#[derive(Debug)]
pub struct ServerCore {
    config: ServerConfig,
    clients: HashMap<ClientId, ClientInfo>,
    /// The log's head as the last commit (or the shell) reported it.
    head: u64,
    pending: VecDeque<Pending>,
    in_flight: Option<(u64, Vec<Pending>)>,
    next_commit: u64,
    turn: Option<Turn>,
    /// Refused clients waiting for the turn, with what they need.
    queue: VecDeque<(ClientId, HashSet<String>)>,
    /// Clients the log held or refused for a conflict (a log that keeps
    /// turns): the log hears when they leave.
    in_log_turn: HashSet<ClientId>,
    /// Clients that left while a push of theirs was in a commit: the log
    /// hears of it once that commit is done (it may put them in its turn).
    left_in_flight: HashSet<ClientId>,
    transmit: VecDeque<(ClientId, ServerMessage)>,
    events: VecDeque<CoreEvent>,
}

fn error(code: ErrorCode, message: impl Into<String>, fatal: bool) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        fatal,
    }
}

impl ServerCore {
    /// A core for a log whose head is `head`.
    pub fn new(config: ServerConfig, head: u64) -> ServerCore {
        ServerCore {
            config,
            clients: HashMap::new(),
            head,
            pending: VecDeque::new(),
            in_flight: None,
            next_commit: 1,
            turn: None,
            queue: VecDeque::new(),
            in_log_turn: HashSet::new(),
            left_in_flight: HashSet::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// An authenticated connection (the shell checked its credentials and
    /// its grant on this store).
    pub fn handle_connect(&mut self, client: ClientId, info: ClientInfo) {
        self.clients.insert(client, info);
    }

    /// The connection is gone: its waiting pushes are dropped (one in a
    /// commit still completes; its answer is dropped) and its turn passes.
    pub fn handle_disconnect(&mut self, now_ms: u64, client: ClientId) {
        self.clients.remove(&client);
        self.pending.retain(|p| p.client != client);
        self.queue.retain(|(c, _)| *c != client);
        if self.turn.as_ref().is_some_and(|t| t.holder == client) {
            self.pass_turn(now_ms);
        }
        let was_in_turn = self.in_log_turn.remove(&client);
        if !self.config.log_keeps_turns {
            return;
        }
        let in_commit = self
            .in_flight
            .as_ref()
            .is_some_and(|(_, ps)| ps.iter().any(|p| p.client == client));
        if in_commit {
            // Told after the commit: told now, the log could put the
            // client back in its turn with the commit still running.
            self.left_in_flight.insert(client);
        } else if was_in_turn {
            self.events.push_back(CoreEvent::LeftTurn { client });
        }
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The log's head moved without this core (another node of a shared
    /// log appended): later answers report at least this head. Returns
    /// whether a push the log held may now be offered again (the shell
    /// should look for a commit).
    pub fn handle_head(&mut self, head: u64) -> bool {
        self.head = self.head.max(head);
        self.pending
            .iter()
            .any(|p| p.hold.is_some_and(|h| h.head < self.head))
    }

    /// A push. Every push gets exactly one final answer through
    /// [`ServerCore::poll_transmit`] (`Accepted`, `PullRequired` or a
    /// non-fatal `Error`), possibly preceded by a `Rejected` listing the
    /// events refused for good.
    pub fn handle_push(
        &mut self,
        now_ms: u64,
        client: ClientId,
        request: u64,
        events: Vec<Proposal>,
    ) {
        self.expire_turn(now_ms);
        let Some(info) = self.clients.get(&client) else {
            return;
        };
        if !info.may_write {
            self.send(
                client,
                error(
                    ErrorCode::Unauthorized,
                    "this token may read this store, not write to it",
                    false,
                ),
            );
            return;
        }
        let waiting = self.pending.iter().filter(|p| p.client == client).count()
            + self
                .in_flight
                .as_ref()
                .map_or(0, |(_, f)| f.iter().filter(|p| p.client == client).count());
        if waiting >= PUSHES_WAITING_PER_CLIENT_MAX {
            self.send(
                client,
                error(
                    ErrorCode::TooLarge,
                    format!(
                        "{waiting} pushes are waiting for their answers, the limit; wait for them before pushing more"
                    ),
                    false,
                ),
            );
            return;
        }
        if let Some(refusal) = self.check_push_size(&events) {
            self.send(client, refusal);
            return;
        }
        let name = info.name.clone();
        // Refuse for good what can never be appended; queue the rest.
        let mut rejections = Vec::new();
        let mut seen: HashMap<Uuid, usize> = HashMap::new();
        let mut accepted: Vec<Proposal> = Vec::with_capacity(events.len());
        for e in events {
            if let Some(&i) = seen.get(&e.event_id) {
                // The same event twice is one event; two different events
                // under one id is a client bug, refused for the later one.
                if accepted.get(i) != Some(&e) {
                    rejections.push((
                        e.event_id,
                        "another event in this push has the same id".to_string(),
                    ));
                }
                continue;
            }
            let reason = if e.version == 0 {
                Some("versions start at 1".to_string())
            } else if let Err(err) = self
                .config
                .limits
                .check_aggregate_id(&e.aggregate_id)
                .and_then(|()| self.config.limits.check_event(&e.to_new_event()))
            {
                Some(err.to_string())
            } else if let Some(Err(reason)) =
                self.config.policy.as_ref().map(|p| p.check(&name, &e))
            {
                Some(reason)
            } else {
                None
            };
            match reason {
                Some(r) => rejections.push((e.event_id, r)),
                None => {
                    seen.insert(e.event_id, accepted.len());
                    accepted.push(e);
                }
            }
        }
        if accepted.is_empty() {
            self.answer(client, request, rejections, Ok(Vec::new()));
            return;
        }
        let mut touched: Vec<String> = accepted.iter().map(|e| e.aggregate_id.clone()).collect();
        touched.sort();
        touched.dedup();
        if self.blocked(client, &touched) {
            self.enqueue(client, touched.iter().cloned().collect());
        }
        self.pending.push_back(Pending {
            client,
            request,
            events: accepted.into(),
            rejections,
            touched,
            hold: None,
        });
    }

    /// Refuses a push over the count or byte limits as a whole (non-fatal:
    /// the client pushes smaller batches).
    fn check_push_size(&self, events: &[Proposal]) -> Option<ServerMessage> {
        let limit = |what: String| {
            error(
                ErrorCode::TooLarge,
                format!("a push of {what}; push in smaller batches"),
                false,
            )
        };
        let max = self.config.push_events_max;
        if events.len() > max {
            return Some(limit(format!(
                "{} events is more than the limit of {max}",
                events.len()
            )));
        }
        let bytes: usize = events.iter().map(Proposal::size_bytes).sum();
        let max = self.config.limits.batch_bytes_max;
        (bytes > max).then(|| limit(format!("{bytes} bytes is more than the limit of {max}")))
    }

    /// The next group commit, if none is in flight and some push may go:
    /// waiting pushes in arrival order, one per client (a client's pushes
    /// stay in order), none that another client's turn holds.
    pub fn poll_commit(&mut self) -> Option<Commit> {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return None;
        }
        let mut busy: HashSet<ClientId> = HashSet::new();
        let mut taken = Vec::new();
        let mut left = VecDeque::with_capacity(self.pending.len());
        while let Some(p) = self.pending.pop_front() {
            let blocked = self.blocked(p.client, &p.touched);
            if blocked {
                // It arrived before the turn was claimed, or waits for it
                // again: it queues for the turn, in arrival order.
                self.enqueue(p.client, p.touched.iter().cloned().collect());
            }
            let held = p.hold.is_some_and(|h| h.head >= self.head);
            let may_go = taken.len() < self.config.commit_pushes_max
                && !busy.contains(&p.client)
                && !blocked
                && !held;
            busy.insert(p.client);
            if may_go {
                taken.push(p);
            } else {
                left.push_back(p);
            }
        }
        self.pending = left;
        if taken.is_empty() {
            return None;
        }
        let id = self.next_commit;
        self.next_commit += 1;
        let pushes = taken
            .iter_mut()
            .map(|p| {
                p.hold = None;
                Push {
                    client: p.client,
                    events: p.events.clone(),
                }
            })
            .collect();
        self.in_flight = Some((id, taken));
        Some(Commit { id, pushes })
    }

    /// The outcome of commit `id`: answers each of its pushes, moves the
    /// turn, and re-queues (first) a push whose event was refused, without
    /// that event.
    pub fn handle_committed(
        &mut self,
        now_ms: u64,
        id: u64,
        result: Result<CommitResult, StorageError>,
    ) {
        let Some((in_flight, pushes)) = self.in_flight.take() else {
            return;
        };
        assert_eq!(in_flight, id, "commits complete one at a time, in order");
        // Clients that left during this commit: the log hears of it now,
        // whatever the commit did (it may have taken them into its turn,
        // or written and then failed to answer).
        for p in &pushes {
            if self.left_in_flight.remove(&p.client) {
                self.events
                    .push_back(CoreEvent::LeftTurn { client: p.client });
            }
        }
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                for p in pushes {
                    let msg = error(ErrorCode::Unavailable, e.to_string(), false);
                    self.answer(p.client, p.request, p.rejections, Err(msg));
                }
                return;
            }
        };
        assert_eq!(result.outcomes.len(), pushes.len(), "one outcome per push");
        let moved = result.head > self.head;
        self.head = self.head.max(result.head);
        let mut retry = Vec::new();
        for (mut p, outcome) in pushes.into_iter().zip(result.outcomes) {
            if !self.clients.contains_key(&p.client) {
                // Gone while its push was written: nobody to answer, and no
                // turn to claim or pass (its disconnect passed any).
                continue;
            }
            match outcome {
                PushOutcome::Appended(placed) => {
                    self.written(now_ms, p.client, &p.touched);
                    self.answer(p.client, p.request, p.rejections, Ok(placed));
                }
                PushOutcome::Held { wait_ms } => {
                    // Another node's client has the turn: offered again
                    // once the head moves past this commit's or the wait
                    // runs out.
                    self.in_log_turn.insert(p.client);
                    p.hold = Some(Hold {
                        head: result.head,
                        until_ms: now_ms.saturating_add(wait_ms),
                    });
                    retry.push(p);
                }
                PushOutcome::Conflict(conflicts) => {
                    if self.config.log_keeps_turns {
                        self.in_log_turn.insert(p.client);
                    } else {
                        let needs = conflicts
                            .iter()
                            .map(|(a, _)| a.clone())
                            .chain(p.touched.iter().cloned())
                            .collect();
                        self.claim_turn(p.client, needs, now_ms);
                    }
                    if self.blocked(p.client, &p.touched) {
                        // Another client has the turn on these aggregates:
                        // anything this client rebased now would be stale
                        // again by its turn. Hold the push until then, and
                        // answer it with what it missed once it can win.
                        retry.push(p);
                        continue;
                    }
                    let msg = ServerMessage::PullRequired {
                        request: p.request,
                        conflicts,
                        head: self.head,
                        retry_after_ms: 0,
                    };
                    self.answer(p.client, p.request, p.rejections, Err(msg));
                }
                PushOutcome::Refused { event_id, reason } => {
                    p.rejections.push((event_id, reason));
                    let rest: Vec<Proposal> = p
                        .events
                        .iter()
                        .filter(|e| e.event_id != event_id)
                        .cloned()
                        .collect();
                    if rest.is_empty() || rest.len() == p.events.len() {
                        self.answer(p.client, p.request, p.rejections, Ok(Vec::new()));
                    } else {
                        p.events = rest.into();
                        retry.push(p);
                    }
                }
                PushOutcome::Invalid { reason } => {
                    // Not about one event: refuse them all, say why.
                    p.rejections
                        .extend(p.events.iter().map(|e| (e.event_id, reason.clone())));
                    self.answer(p.client, p.request, p.rejections, Ok(Vec::new()));
                }
            }
        }
        for p in retry.into_iter().rev() {
            self.pending.push_front(p);
        }
        if moved {
            self.events
                .push_back(CoreEvent::HeadMoved { head: self.head });
        }
    }

    /// Sends a push's answer: its rejections first, then `Accepted` with
    /// `placed`, or the refusal. Nothing goes to a client that left.
    fn answer(
        &mut self,
        client: ClientId,
        request: u64,
        rejections: Vec<(Uuid, String)>,
        result: Result<Vec<Placed>, ServerMessage>,
    ) {
        if !self.clients.contains_key(&client) {
            return;
        }
        if !rejections.is_empty() {
            self.send(
                client,
                ServerMessage::Rejected {
                    request,
                    rejections,
                },
            );
        }
        let last = match result {
            Ok(placed) => ServerMessage::Accepted {
                request,
                placed,
                head: self.head,
            },
            Err(msg) => msg,
        };
        self.send(client, last);
    }

    fn send(&mut self, client: ClientId, msg: ServerMessage) {
        self.transmit.push_back((client, msg));
    }

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(ClientId, ServerMessage)> {
        self.transmit.pop_front()
    }

    /// The next thing the shell should know.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// When [`ServerCore::handle_timeout`] should next be called: when the
    /// turn runs out, if anyone waits for it, or when the log's hold on a
    /// push does.
    pub fn poll_timeout(&self) -> Option<u64> {
        let turn = self
            .turn
            .as_ref()
            .filter(|_| !self.queue.is_empty() || !self.pending.is_empty())
            .map(|t| t.until_ms);
        let hold = self
            .pending
            .iter()
            .filter_map(|p| p.hold.map(|h| h.until_ms))
            .min();
        turn.into_iter().chain(hold).min()
    }

    /// Time passed: a turn that ran out passes on; a push the log held
    /// past its wait is offered again.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.expire_turn(now_ms);
        for p in &mut self.pending {
            if p.hold.is_some_and(|h| h.until_ms <= now_ms) {
                p.hold = None;
            }
        }
    }

    // --- the turn ---------------------------------------------------------

    fn expire_turn(&mut self, now_ms: u64) {
        if self.turn.as_ref().is_some_and(|t| t.until_ms <= now_ms) {
            self.pass_turn(now_ms);
        }
    }

    /// Whether another client's turn holds any of `touched`.
    fn blocked(&self, client: ClientId, touched: &[String]) -> bool {
        self.turn
            .as_ref()
            .is_some_and(|t| t.holder != client && touched.iter().any(|a| t.aggregates.contains(a)))
    }

    /// A push of `client` was appended: a holder's turn passes; a queued
    /// client no longer needs what it wrote.
    fn written(&mut self, now_ms: u64, client: ClientId, touched: &[String]) {
        if self.turn.as_ref().is_some_and(|t| t.holder == client) {
            self.pass_turn(now_ms);
        } else if let Some(i) = self.queue.iter().position(|(c, _)| *c == client) {
            let set = &mut self.queue[i].1;
            for a in touched {
                set.remove(a);
            }
            if set.is_empty() {
                self.queue.remove(i);
            }
        }
    }

    /// A client refused for a conflict: it gets the turn if nobody has it
    /// (or widens its own, with the same deadline), otherwise it queues.
    fn claim_turn(&mut self, client: ClientId, needs: HashSet<String>, now_ms: u64) {
        let until_ms = now_ms + self.config.lease_ms;
        match &mut self.turn {
            None => {
                self.queue.retain(|(c, _)| *c != client);
                self.turn = Some(Turn {
                    holder: client,
                    aggregates: needs,
                    until_ms,
                });
            }
            Some(t) if t.holder == client => {
                // The deadline stays: a holder that keeps failing cannot
                // keep the turn from the queue.
                t.aggregates.extend(needs);
            }
            Some(_) => self.enqueue(client, needs),
        }
    }

    fn enqueue(&mut self, client: ClientId, needs: HashSet<String>) {
        match self.queue.iter_mut().find(|(c, _)| *c == client) {
            Some((_, set)) => set.extend(needs),
            None => self.queue.push_back((client, needs)),
        }
    }

    /// Gives the turn to the first queued client still connected.
    fn pass_turn(&mut self, now_ms: u64) {
        self.turn = None;
        while let Some((next, aggregates)) = self.queue.pop_front() {
            if self.clients.contains_key(&next) {
                self.turn = Some(Turn {
                    holder: next,
                    aggregates,
                    until_ms: now_ms + self.config.lease_ms,
                });
                return;
            }
        }
    }

    /// Who has the turn (tests and diagnostics).
    pub fn turn_holder(&self) -> Option<ClientId> {
        self.turn.as_ref().map(|t| t.holder)
    }

    /// Pushes waiting for a commit (diagnostics).
    pub fn pushes_waiting(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_overflow_a_wire_message_are_refused_by_name() {
        ServerConfig::default().validate().unwrap();
        let config = ServerConfig {
            message_bytes_max: super::super::wire::MESSAGE_BYTES_MAX,
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(
            matches!(
                &err,
                InvalidInput::Setting {
                    name: "message_bytes_max",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("lower one of them"), "{err}");
        for name in ["push_events_max", "commit_pushes_max"] {
            let mut config = ServerConfig::default();
            match name {
                "push_events_max" => config.push_events_max = 0,
                _ => config.commit_pushes_max = 0,
            }
            assert!(config.validate().unwrap_err().to_string().contains(name));
        }
    }
}
