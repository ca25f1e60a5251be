//! The server side of sync as a state machine: no sockets, no clock (time is
//! passed in), storage through the narrow [`CanonicalLog`] trait. One
//! [`ServerCore`] per hosted store; a transport shell feeds it each
//! client's messages and pulls what to send with [`ServerCore::poll_events`]
//! when the client can take more, so nothing queues without bound.
//!
//! Rules:
//! * Canonical order is this log's (Y1). A push is appended only if every
//!   event's aggregate is at `version - 1` (Y5); otherwise nothing is
//!   appended and the client gets `PullRequired`. A push from a client that
//!   is behind but touches no aggregate that moved is accepted: being
//!   behind on other aggregates is not a conflict.
//! * Event ids make pushes idempotent (Y4): events already in the log are
//!   answered with their positions and not written again.
//! * Clients only ever receive committed events: the follow stream reads
//!   the log, so the server commits before it "broadcasts".
//! * Fairness: the first client refused for a conflict gets *the turn*: for
//!   [`ServerConfig::lease_ms`], other clients' pushes that touch its
//!   aggregates wait (`PullRequired` with a retry hint) and queue, first
//!   refused first served. The turn passes on when its holder's push
//!   succeeds, when it disconnects, or when the time runs out. With one
//!   holder at a time there is no cycle of clients waiting for each other,
//!   and the holder's protected set only grows until its push goes through,
//!   so every refused client gets its turn: nobody starves under contention.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use uuid::Uuid;

use super::proto::{ClientMessage, ErrorCode, PROTOCOL_VERSION, Placed, Proposal, ServerMessage};
use crate::error::Error;
use crate::event::{AggregateEvents, Committed, Event, ExpectedVersion, InvalidInput, Limits};

/// Default [`ServerConfig::lease_ms`].
pub const LEASE_MS_DEFAULT: u64 = 2_000;
/// Longest a client waiting for the turn is told to wait before retrying.
/// The turn usually passes as soon as its holder's rebased push lands, a
/// few milliseconds later; a long wait leaves the aggregate idle (measured
/// under `sync_push_contention`: 250 ms gave 2.5k–8.3k events/s, 20 ms a
/// steady 7.2k), a short one costs a small message per waiting client.
pub const RETRY_AFTER_MS_MAX: u64 = 25;
/// Default [`ServerConfig::push_events_max`].
pub const PUSH_EVENTS_MAX_DEFAULT: usize = 1_000;
/// Default [`ServerConfig::message_events_max`].
pub const MESSAGE_EVENTS_MAX_DEFAULT: usize = 1_000;
/// Default [`ServerConfig::message_bytes_max`].
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// The server's canonical log, as the core needs it. The embedded
/// [`crate::Store`] implements it; a PostgreSQL-backed log shared by
/// several server nodes could too.
pub trait CanonicalLog {
    fn store_id(&self) -> Uuid;
    /// Last committed position.
    fn head(&self) -> u64;
    /// Appends atomically if every group's expectation holds (see
    /// [`crate::Store::append_batch`]).
    fn append(&mut self, groups: &[AggregateEvents]) -> Result<Vec<Committed>, Error>;
    /// Committed events from `from` on, at most `max_events` and about
    /// `max_bytes`.
    fn read(&mut self, from: u64, max_events: usize, max_bytes: usize)
    -> Result<Vec<Event>, Error>;
    /// A run of raw log records from `from` on (bulk catch-up without
    /// decoding); `None` when this log cannot serve raw records.
    fn read_records(
        &mut self,
        _from: u64,
        _max_bytes: usize,
    ) -> Result<Option<(u64, u32, Vec<u8>)>, Error> {
        Ok(None)
    }
    /// An aggregate's current version.
    fn aggregate_version(&mut self, aggregate_id: &str) -> Result<u64, Error>;
}

/// Decides whether a client may append an event (permissions, validation
/// beyond the store's limits). Refused events become rejections.
pub trait PushPolicy: Send + Sync {
    fn check(&self, client: &str, event: &Proposal) -> Result<(), String>;
}

/// How the server core behaves.
#[derive(Clone)]
pub struct ServerConfig {
    /// Accepted tokens; empty means no authentication (loopback only: the
    /// shell enforces that).
    pub tokens: Vec<String>,
    pub limits: Limits,
    /// Most events in one push.
    pub push_events_max: usize,
    /// Most events in one `Events` message.
    pub message_events_max: usize,
    /// About the most bytes of events in one message.
    pub message_bytes_max: usize,
    /// How long a client refused for a conflict has priority on the
    /// conflicting aggregates.
    pub lease_ms: u64,
    pub policy: Option<Arc<dyn PushPolicy>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("tokens", &self.tokens.len())
            .field("push_events_max", &self.push_events_max)
            .field("lease_ms", &self.lease_ms)
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

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tokens: Vec::new(),
            limits: Limits::default(),
            push_events_max: PUSH_EVENTS_MAX_DEFAULT,
            message_events_max: MESSAGE_EVENTS_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            lease_ms: LEASE_MS_DEFAULT,
            policy: None,
        }
    }
}

/// A connection, as the shell numbers them.
pub type ClientId = u64;

#[derive(Debug, Default)]
struct Client {
    name: String,
    welcomed: bool,
    /// Next position to send on the follow stream.
    follow: Option<u64>,
    /// The transport can carry raw records.
    raw: bool,
}

/// The client whose retry comes first, and the aggregates it needs.
#[derive(Debug)]
struct Turn {
    holder: ClientId,
    aggregates: HashSet<String>,
    until_ms: u64,
}

/// What a push came to, for shells that need more than the messages (the
/// seed's JSON layer).
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    Accepted {
        placed: Vec<Placed>,
    },
    PullRequired {
        conflicts: Vec<(String, u64)>,
    },
    /// Refused as a whole (a limit or a protocol error).
    Refused,
}

/// The server's sync state for one store. See the module documentation.
#[derive(Debug)]
pub struct ServerCore {
    config: ServerConfig,
    clients: HashMap<ClientId, Client>,
    turn: Option<Turn>,
    /// Refused clients waiting for the turn, with what they touched.
    queue: VecDeque<(ClientId, HashSet<String>)>,
}

fn error(code: ErrorCode, message: impl Into<String>, fatal: bool) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        fatal,
    }
}

/// The final reply when storage failed: the client retries later.
fn storage_failed(e: Error) -> (ServerMessage, PushOutcome) {
    tracing::error!(error = %e, "sync push failed in storage");
    let msg = error(
        ErrorCode::Unavailable,
        format!("the server could not store the push ({e}); retry later"),
        false,
    );
    (msg, PushOutcome::Refused)
}

fn pull_required(
    request: u64,
    conflicts: Vec<(String, u64)>,
    retry_after_ms: u64,
    log: &dyn CanonicalLog,
) -> (ServerMessage, PushOutcome) {
    let msg = ServerMessage::PullRequired {
        request,
        conflicts: conflicts.clone(),
        head: log.head(),
        retry_after_ms,
    };
    (msg, PushOutcome::PullRequired { conflicts })
}

/// Every aggregate of a push whose server version is not the one the push
/// builds on, with that version.
fn conflicts(events: &[Proposal], log: &mut dyn CanonicalLog) -> Result<Vec<(String, u64)>, Error> {
    let mut base: Vec<(&str, u64)> = Vec::new();
    for e in events {
        if !base.iter().any(|(a, _)| *a == e.aggregate_id) {
            base.push((&e.aggregate_id, e.version - 1));
        }
    }
    let mut out = Vec::new();
    for (agg, expected) in base {
        let current = log.aggregate_version(agg)?;
        if current != expected {
            out.push((agg.to_string(), current));
        }
    }
    Ok(out)
}

/// Whether `token` opens a server configured with `tokens`: any token
/// does when the list is empty (open mode), otherwise it must equal one of
/// them. Every transport checks with this, so none leaks more than another.
pub fn token_accepted(tokens: &[String], token: Option<&str>) -> bool {
    tokens.is_empty() || token.is_some_and(|t| tokens.iter().any(|e| token_matches(t, e)))
}

/// Compares tokens in time independent of where they differ and of the
/// expected token's length (the given token sets the number of steps).
fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

impl ServerCore {
    pub fn new(config: ServerConfig) -> ServerCore {
        ServerCore {
            config,
            clients: HashMap::new(),
            turn: None,
            queue: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// A new connection. `raw` says whether its transport carries raw log
    /// records.
    pub fn connect(&mut self, client: ClientId, raw: bool) {
        self.clients.insert(
            client,
            Client {
                raw,
                ..Client::default()
            },
        );
    }

    /// The connection is gone: its leases pass on.
    pub fn disconnect(&mut self, client: ClientId, now_ms: u64) {
        self.clients.remove(&client);
        self.queue.retain(|(c, _)| *c != client);
        if self.turn.as_ref().is_some_and(|t| t.holder == client) {
            self.pass_turn(now_ms);
        }
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Checks credentials; returns the welcome or a fatal error. Shells
    /// that authenticate another way (e.g. an HTTP header) call this with
    /// the token they got.
    pub fn hello(
        &mut self,
        client: ClientId,
        protocol: u32,
        token: Option<&str>,
        name: &str,
        log: &dyn CanonicalLog,
    ) -> ServerMessage {
        if protocol != PROTOCOL_VERSION {
            return error(
                ErrorCode::Version,
                format!(
                    "this server speaks sync protocol {PROTOCOL_VERSION}, not {protocol}; upgrade the client or the server"
                ),
                true,
            );
        }
        if !token_accepted(&self.config.tokens, token) {
            return error(
                ErrorCode::Unauthorized,
                "missing or wrong token; pass the server's token",
                true,
            );
        }
        let c = self.clients.entry(client).or_default();
        c.welcomed = true;
        c.name = name.chars().take(crate::hlc::NODE_BYTES_MAX).collect();
        ServerMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            store_id: log.store_id(),
            head: log.head(),
        }
    }

    /// Handles one message; returns the replies, in order.
    pub fn handle(
        &mut self,
        now_ms: u64,
        client: ClientId,
        msg: ClientMessage,
        log: &mut dyn CanonicalLog,
    ) -> Vec<ServerMessage> {
        match msg {
            ClientMessage::Hello {
                protocol,
                token,
                client: name,
                ..
            } => {
                vec![self.hello(client, protocol, token.as_deref(), &name, log)]
            }
            _ if !self.clients.get(&client).is_some_and(|c| c.welcomed) => {
                vec![error(ErrorCode::Unexpected, "send Hello first", true)]
            }
            ClientMessage::Follow { from } => {
                if let Some(c) = self.clients.get_mut(&client) {
                    c.follow = Some(from.max(1));
                }
                Vec::new()
            }
            ClientMessage::Push {
                request, events, ..
            } => self.push(now_ms, client, request, events, log).0,
        }
    }

    /// Handles a push; returns the replies and what happened.
    ///
    /// Every push gets exactly one final reply: `Accepted`, `PullRequired`
    /// or a non-fatal `Error`. A `Rejected` listing the events refused for
    /// good may come before it.
    pub fn push(
        &mut self,
        now_ms: u64,
        client: ClientId,
        request: u64,
        events: Vec<Proposal>,
        log: &mut dyn CanonicalLog,
    ) -> (Vec<ServerMessage>, PushOutcome) {
        if let Some(refusal) = self.check_push_size(&events) {
            return (vec![refusal], PushOutcome::Refused);
        }
        let name = self
            .clients
            .get(&client)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        // Refuse for good what can never be appended; handle the rest.
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
        let (last, outcome) =
            self.append_push(now_ms, client, request, accepted, &mut rejections, log);
        let mut replies = Vec::with_capacity(2);
        if !rejections.is_empty() {
            replies.push(ServerMessage::Rejected {
                request,
                rejections,
            });
        }
        replies.push(last);
        (replies, outcome)
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

    /// Appends the checked events of a push. Events the store refuses one
    /// by one (an id another aggregate holds, a timestamp beyond the
    /// allowed drift) move to `rejections` and the rest is tried again.
    fn append_push(
        &mut self,
        now_ms: u64,
        client: ClientId,
        request: u64,
        mut accepted: Vec<Proposal>,
        rejections: &mut Vec<(Uuid, String)>,
        log: &mut dyn CanonicalLog,
    ) -> (ServerMessage, PushOutcome) {
        loop {
            if accepted.is_empty() {
                return self.accepted(now_ms, client, request, &[], Vec::new(), log);
            }
            let touched: Vec<String> = {
                let mut v: Vec<String> = accepted.iter().map(|e| e.aggregate_id.clone()).collect();
                v.sort();
                v.dedup();
                v
            };
            // Fairness: aggregates another client has the turn on wait.
            let busy = self.blocked(client, &touched, now_ms);
            if !busy.is_empty() {
                let mut conflicts = Vec::with_capacity(busy.len());
                for agg in busy {
                    match log.aggregate_version(&agg) {
                        Ok(v) => conflicts.push((agg, v)),
                        Err(e) => return storage_failed(e),
                    }
                }
                let retry_after_ms = self
                    .turn
                    .as_ref()
                    .map_or(0, |t| t.until_ms.saturating_sub(now_ms))
                    .clamp(1, RETRY_AFTER_MS_MAX);
                return pull_required(request, conflicts, retry_after_ms, log);
            }
            // One group per event: each is checked against the version the
            // one before it left.
            let groups: Vec<AggregateEvents> = accepted
                .iter()
                .map(|e| AggregateEvents {
                    aggregate_id: e.aggregate_id.clone(),
                    expected: ExpectedVersion::Exact(e.version - 1),
                    events: vec![e.to_new_event()],
                })
                .collect();
            let refused = match log.append(&groups) {
                Ok(committed) => {
                    let placed = committed
                        .iter()
                        .map(|c| Placed {
                            event_id: c.event_id,
                            position: c.position,
                            version: c.version,
                        })
                        .collect();
                    return self.accepted(now_ms, client, request, &touched, placed, log);
                }
                Err(Error::Conflict {
                    aggregate_id,
                    current,
                    ..
                }) => {
                    let mut conflicts = match conflicts(&accepted, log) {
                        Ok(c) => c,
                        Err(e) => return storage_failed(e),
                    };
                    if conflicts.is_empty() {
                        // A gap in the push's own versions.
                        conflicts.push((aggregate_id, current));
                    }
                    let needs = conflicts.iter().map(|(a, _)| a.clone()).chain(touched);
                    self.claim_turn(client, needs.collect(), now_ms);
                    return pull_required(request, conflicts, 0, log);
                }
                Err(Error::EventIdReused {
                    event_id,
                    existing_aggregate,
                    ..
                }) => (
                    event_id,
                    format!("this event id is already used by aggregate {existing_aggregate:?}"),
                ),
                Err(Error::Invalid(InvalidInput::EventTimestamp { event_id, source })) => {
                    (event_id, source.to_string())
                }
                Err(Error::Invalid(reason)) => {
                    // Not about one event: refuse them all, say why.
                    let reason = reason.to_string();
                    rejections.extend(accepted.iter().map(|e| (e.event_id, reason.clone())));
                    return self.accepted(now_ms, client, request, &[], Vec::new(), log);
                }
                Err(e) => return storage_failed(e),
            };
            accepted.retain(|e| e.event_id != refused.0);
            rejections.push(refused);
        }
    }

    /// The final reply to a push that went through (in part or not at all).
    fn accepted(
        &mut self,
        now_ms: u64,
        client: ClientId,
        request: u64,
        written: &[String],
        placed: Vec<Placed>,
        log: &dyn CanonicalLog,
    ) -> (ServerMessage, PushOutcome) {
        if self.turn.as_ref().is_some_and(|t| t.holder == client) {
            self.pass_turn(now_ms);
        } else if let Some(i) = self.queue.iter().position(|(c, _)| *c == client) {
            // What it waited for is written: it no longer needs a turn
            // on those aggregates.
            let set = &mut self.queue[i].1;
            for a in written {
                set.remove(a);
            }
            if set.is_empty() {
                self.queue.remove(i);
            }
        }
        let msg = ServerMessage::Accepted {
            request,
            placed: placed.clone(),
            head: log.head(),
        };
        (msg, PushOutcome::Accepted { placed })
    }

    /// Whether `client` follows and has committed events to receive.
    pub fn wants_events(&self, client: ClientId, head: u64) -> bool {
        self.clients
            .get(&client)
            .and_then(|c| c.follow)
            .is_some_and(|next| next <= head)
    }

    /// The next message of `client`'s follow stream, if it has events to
    /// receive: call when its transport can take more.
    pub fn poll_events(
        &mut self,
        client: ClientId,
        log: &mut dyn CanonicalLog,
    ) -> Result<Option<ServerMessage>, Error> {
        let (max_events, max_bytes) = (
            self.config.message_events_max,
            self.config.message_bytes_max,
        );
        let Some(c) = self.clients.get_mut(&client) else {
            return Ok(None);
        };
        let Some(next) = c.follow else {
            return Ok(None);
        };
        if next > log.head() {
            return Ok(None);
        }
        if c.raw
            && let Some((first, count, records)) = log.read_records(next, max_bytes)?
        {
            debug_assert_eq!(first, next);
            c.follow = Some(first + count as u64);
            return Ok(Some(ServerMessage::Records {
                first_position: first,
                count,
                records,
            }));
        }
        let events = log.read(next, max_events, max_bytes)?;
        let Some(last) = events.last() else {
            return Ok(None);
        };
        c.follow = Some(last.position + 1);
        Ok(Some(ServerMessage::Events { events }))
    }

    // --- the turn ---------------------------------------------------------

    /// Aggregates of `touched` that another client has the turn on (the
    /// client then queues for the turn).
    fn blocked(&mut self, client: ClientId, touched: &[String], now_ms: u64) -> Vec<String> {
        if self.turn.as_ref().is_some_and(|t| t.until_ms <= now_ms) {
            self.pass_turn(now_ms);
        }
        let Some(turn) = &self.turn else {
            return Vec::new();
        };
        if turn.holder == client {
            return Vec::new();
        }
        let busy: Vec<String> = touched
            .iter()
            .filter(|a| turn.aggregates.contains(*a))
            .cloned()
            .collect();
        if !busy.is_empty() {
            self.enqueue(client, touched.iter().cloned().collect());
        }
        busy
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
}

impl CanonicalLog for crate::Store {
    fn store_id(&self) -> Uuid {
        crate::Store::store_id(self)
    }

    fn head(&self) -> u64 {
        crate::Store::head(self)
    }

    fn append(&mut self, groups: &[AggregateEvents]) -> Result<Vec<Committed>, Error> {
        self.append_batch(groups)
    }

    fn read(
        &mut self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, Error> {
        self.read_events(from, max_events, max_bytes)
    }

    fn read_records(
        &mut self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Option<(u64, u32, Vec<u8>)>, Error> {
        self.read_raw_records(from, max_bytes)
    }

    fn aggregate_version(&mut self, aggregate_id: &str) -> Result<u64, Error> {
        crate::Store::aggregate_version(self, aggregate_id)
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
        let config = ServerConfig {
            push_events_max: 0,
            ..ServerConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("push_events_max")
        );
    }
}
