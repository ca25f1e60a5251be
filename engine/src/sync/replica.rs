//! The replica side of sync as a state machine: no sockets, no clock (time
//! is passed in), local storage through [`ReplicaStorage`]. A transport
//! shell calls the `handle_*` methods with what happens and sends what
//! [`ReplicaCore::poll_transmit`] gives.
//!
//! The loop: on connect, say `Hello` and `Follow` from the committed head.
//! Committed events stream in and are appended to the local log (an exact
//! prefix of the server's, Y1), which also retires pending events that
//! reached the server. Whenever nothing is in flight and the outbox is not
//! empty, push it (rebased first if the committed log moved under it). On
//! `Accepted`, wait until those events arrive on the stream, then push the
//! rest; on `PullRequired`, wait until the stream reaches the server's head,
//! rebase, push again. After a reconnect the outbox drains by itself.

use std::collections::VecDeque;

use uuid::Uuid;

use super::proto::{ClientMessage, ErrorCode, PROTOCOL_VERSION, Proposal, ServerMessage};
use crate::error::Error;
use crate::event::Event;
use crate::log::RawRun;

/// Default [`ReplicaConfig::request_timeout_ms`].
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default [`ReplicaConfig::push_events_max`].
pub const PUSH_EVENTS_MAX_DEFAULT: usize = 500;
/// Default [`ReplicaConfig::push_bytes_max`]: well under the wire's
/// message limit and the server's batch limit.
pub const PUSH_BYTES_MAX_DEFAULT: usize = 4 << 20;
/// First wait before pushing again after the server refused a push with a
/// non-fatal error; it doubles on each refusal in a row.
pub const ERROR_BACKOFF_MS_MIN: u64 = 250;
/// Longest wait after refusals in a row.
pub const ERROR_BACKOFF_MS_MAX: u64 = 30_000;

/// The replica's local state, as the core needs it.
pub trait ReplicaStorage {
    /// The server store this replica follows, once known.
    fn remote_store_id(&self) -> Option<Uuid>;
    fn set_remote_store_id(&mut self, id: Uuid) -> Result<(), Error>;
    /// Last committed (server) position held locally.
    fn committed_head(&self) -> u64;
    /// Appends committed events, contiguous from `committed_head() + 1`,
    /// and retires pending events among them.
    fn apply_events(&mut self, events: &[Event]) -> Result<(), Error>;
    /// The same for a run of raw log records (unchecked: the storage
    /// checks it, [`RawRun::check`]).
    fn apply_records(&mut self, run: &RawRun) -> Result<(), Error>;
    /// The outbox to push, at most `max` events of at most `max_bytes` in
    /// all ([`Proposal::size_bytes`]; always at least one event), rebased
    /// first if the
    /// committed log moved under it (versions renumbered after the
    /// committed ones, timestamps re-stamped with the receive rule, the
    /// application's hook asked to keep, change or drop each event; dropped
    /// events become rejections).
    fn prepare_push(
        &mut self,
        max: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<Vec<Proposal>, Error>;
    /// Records events the server refused for good and takes them out of
    /// the outbox.
    fn reject(&mut self, rejections: &[(Uuid, String)], now_ms: u64) -> Result<(), Error>;
    /// Pending events and the age of the oldest, for status.
    fn pending(&self) -> (usize, Option<u64>);
}

/// How the replica behaves.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub store: String,
    pub token: Option<String>,
    /// The replica's node id, for the server's logs.
    pub client: String,
    /// A push without an answer for this long means the connection is dead.
    pub request_timeout_ms: u64,
    /// Most events in one push (halved, down to one, each time the server
    /// says a push is too large, and back to this on each new connection;
    /// a single event the server finds too large becomes a rejection).
    pub push_events_max: usize,
    /// Most bytes of events in one push.
    pub push_bytes_max: usize,
}

impl ReplicaConfig {
    /// A configuration with the default limits.
    pub fn new(store: impl Into<String>, client: impl Into<String>) -> ReplicaConfig {
        ReplicaConfig {
            store: store.into(),
            token: None,
            client: client.into(),
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            push_events_max: PUSH_EVENTS_MAX_DEFAULT,
            push_bytes_max: PUSH_BYTES_MAX_DEFAULT,
        }
    }
}

/// What the application and `strata sync` can see of sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStatus {
    pub connected: bool,
    pub pending: usize,
    /// Age of the oldest pending event, in milliseconds.
    pub oldest_pending_ms: Option<u64>,
    /// When the last push was answered or events arrived (ms since the
    /// Unix epoch, as the shell's clock said).
    pub last_sync_ms: Option<u64>,
    /// Last server position held locally.
    pub committed: u64,
    /// The server's head, as last heard.
    pub server_head: u64,
}

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("the server refused: {message} ({})", code.as_str())]
    Refused { code: ErrorCode, message: String },
    #[error(
        "this replica follows store {expected}, but the server hosts {found}; use a new replica directory for another store"
    )]
    WrongStore { expected: Uuid, found: Uuid },
    #[error(
        "the server speaks sync protocol {found}, this replica {PROTOCOL_VERSION}; upgrade one of them"
    )]
    Version { found: u32 },
    #[error(
        "the server's log ends at position {server_head} but this replica holds up to {local_head}: the server lost events (restored from an older backup?); restore the server from a newer copy, or start this replica afresh"
    )]
    ServerBehind { server_head: u64, local_head: u64 },
    #[error("the server sent {0}, which the protocol does not allow")]
    Unexpected(&'static str),
    #[error("no answer from the server for {0} ms")]
    Timeout(u64),
    #[error(transparent)]
    Storage(#[from] Error),
}

#[derive(Debug)]
struct InFlight {
    request: u64,
    sent_ms: u64,
    /// The pushed events' ids.
    events: Vec<Uuid>,
}

/// The replica's sync state machine.
#[derive(Debug)]
pub struct ReplicaCore {
    config: ReplicaConfig,
    connected: bool,
    welcomed: bool,
    outgoing: VecDeque<ClientMessage>,
    in_flight: Option<InFlight>,
    /// Don't push until the committed head reaches this.
    wait_for: Option<u64>,
    /// Don't push before this time (the server asked us to wait our turn,
    /// or refused the last push).
    retry_at: Option<u64>,
    /// Wait after the next refusal.
    error_backoff_ms: u64,
    /// Current most events per push.
    push_events_max: usize,
    next_request: u64,
    server_head: u64,
    last_sync_ms: Option<u64>,
}

impl ReplicaCore {
    pub fn new(config: ReplicaConfig) -> ReplicaCore {
        let push_events_max = config.push_events_max;
        ReplicaCore {
            config,
            connected: false,
            welcomed: false,
            outgoing: VecDeque::new(),
            in_flight: None,
            wait_for: None,
            retry_at: None,
            error_backoff_ms: ERROR_BACKOFF_MS_MIN,
            push_events_max: push_events_max.max(1),
            next_request: 1,
            server_head: 0,
            last_sync_ms: None,
        }
    }

    /// The transport connected: introduce ourselves and follow the log.
    pub fn handle_connected(&mut self, storage: &dyn ReplicaStorage) {
        self.connected = true;
        self.welcomed = false;
        self.outgoing.clear();
        self.in_flight = None;
        self.wait_for = None;
        self.retry_at = None;
        // A new connection may reach a server with other limits: start
        // from the configured push size again.
        self.push_events_max = self.config.push_events_max.max(1);
        self.outgoing.push_back(ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            store: self.config.store.clone(),
            token: self.config.token.clone(),
            client: self.config.client.clone(),
        });
        self.outgoing.push_back(ClientMessage::Follow {
            from: storage.committed_head() + 1,
        });
    }

    /// The transport is gone. Whatever was in flight may or may not have
    /// landed; ids make the retry after reconnecting safe.
    pub fn handle_disconnected(&mut self) {
        self.connected = false;
        self.welcomed = false;
        self.outgoing.clear();
        self.in_flight = None;
        self.wait_for = None;
    }

    /// The application appended locally: push if we can.
    pub fn handle_local_change(
        &mut self,
        now_ms: u64,
        storage: &mut dyn ReplicaStorage,
    ) -> Result<(), SyncError> {
        self.maybe_push(now_ms, storage)
    }

    /// A message from the server.
    pub fn handle_message(
        &mut self,
        now_ms: u64,
        msg: ServerMessage,
        storage: &mut dyn ReplicaStorage,
    ) -> Result<(), SyncError> {
        match msg {
            ServerMessage::Welcome {
                protocol,
                store_id,
                head,
            } => {
                if protocol != PROTOCOL_VERSION {
                    return Err(SyncError::Version { found: protocol });
                }
                match storage.remote_store_id() {
                    Some(expected) if expected != store_id => {
                        return Err(SyncError::WrongStore {
                            expected,
                            found: store_id,
                        });
                    }
                    Some(_) => {}
                    None => storage.set_remote_store_id(store_id)?,
                }
                let local_head = storage.committed_head();
                if head < local_head {
                    return Err(SyncError::ServerBehind {
                        server_head: head,
                        local_head,
                    });
                }
                self.welcomed = true;
                self.server_head = head;
            }
            ServerMessage::Events { events } => {
                if let Some(last) = events.last() {
                    self.server_head = self.server_head.max(last.position);
                }
                storage.apply_events(&events)?;
                self.last_sync_ms = Some(now_ms);
            }
            ServerMessage::Records {
                first_position,
                count,
                records,
            } => {
                let Some(last) = first_position
                    .checked_add(u64::from(count))
                    .filter(|_| count > 0)
                    .map(|end| end - 1)
                else {
                    return Err(SyncError::Unexpected(
                        "a Records message that is empty or ends past the last position",
                    ));
                };
                self.server_head = self.server_head.max(last);
                storage.apply_records(&RawRun {
                    first_position,
                    count,
                    records,
                })?;
                self.last_sync_ms = Some(now_ms);
            }
            ServerMessage::Accepted {
                request,
                placed,
                head,
            } => {
                self.server_head = self.server_head.max(head);
                if !self.answered(request) {
                    return self.maybe_push(now_ms, storage);
                }
                // Push more only once these are in the local log, so the
                // next versions are computed on top of them.
                self.wait_for = placed.iter().map(|p| p.position).max();
                self.last_sync_ms = Some(now_ms);
                self.error_backoff_ms = ERROR_BACKOFF_MS_MIN;
            }
            ServerMessage::PullRequired {
                request,
                head,
                retry_after_ms,
                ..
            } => {
                self.server_head = self.server_head.max(head);
                if !self.answered(request) {
                    return self.maybe_push(now_ms, storage);
                }
                self.wait_for = Some(head);
                self.retry_at = (retry_after_ms > 0)
                    .then(|| now_ms.saturating_add(retry_after_ms.min(ERROR_BACKOFF_MS_MAX)));
            }
            ServerMessage::Rejected { rejections, .. } => {
                // An `Accepted` or `PullRequired` for the same request
                // follows and ends it.
                storage.reject(&rejections, now_ms)?;
            }
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => {
                if fatal {
                    return Err(SyncError::Refused { code, message });
                }
                tracing::warn!(code = code.as_str(), %message, "server refused a message");
                // A refused push is not in flight any more. Push again
                // later, and smaller if it was too large; a single event
                // too large can never pass, so it becomes a rejection.
                let pushed = self.in_flight.take().map(|f| f.events).unwrap_or_default();
                if code == ErrorCode::Unauthorized {
                    // The token may read this store, not write to it: no
                    // retry can change that. The events stay pending for
                    // a token that may.
                    return Err(SyncError::Refused { code, message });
                }
                if code == ErrorCode::TooLarge {
                    if let [id] = pushed[..] {
                        let reason = format!("the server refused it as too large: {message}");
                        storage.reject(&[(id, reason)], now_ms)?;
                    } else {
                        self.push_events_max = (self.push_events_max / 2).max(1);
                    }
                }
                self.retry_at = Some(now_ms.saturating_add(self.error_backoff_ms));
                self.error_backoff_ms = (self.error_backoff_ms * 2).min(ERROR_BACKOFF_MS_MAX);
            }
        }
        self.maybe_push(now_ms, storage)
    }

    /// Ends the request in flight if this answers it. An answer to any
    /// other request (a duplicate, or one from before a reconnect) is
    /// stale and ignored.
    fn answered(&mut self, request: u64) -> bool {
        match &self.in_flight {
            Some(f) if f.request == request => {
                self.in_flight = None;
                true
            }
            _ => false,
        }
    }

    fn maybe_push(
        &mut self,
        now_ms: u64,
        storage: &mut dyn ReplicaStorage,
    ) -> Result<(), SyncError> {
        if !self.welcomed || self.in_flight.is_some() {
            return Ok(());
        }
        if let Some(at) = self.retry_at {
            if now_ms < at {
                return Ok(());
            }
            self.retry_at = None;
        }
        if let Some(head) = self.wait_for {
            if storage.committed_head() < head {
                return Ok(());
            }
            self.wait_for = None;
        }
        let events =
            storage.prepare_push(self.push_events_max, self.config.push_bytes_max, now_ms)?;
        if events.is_empty() {
            return Ok(());
        }
        let request = self.next_request;
        self.next_request += 1;
        let ids = events.iter().map(|e| e.event_id).collect();
        self.outgoing.push_back(ClientMessage::Push {
            request,
            base: storage.committed_head(),
            events,
        });
        self.in_flight = Some(InFlight {
            request,
            sent_ms: now_ms,
            events: ids,
        });
        Ok(())
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.outgoing.pop_front()
    }

    /// When [`ReplicaCore::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let request = self
            .in_flight
            .as_ref()
            .map(|f| f.sent_ms + self.config.request_timeout_ms);
        match (request, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: a push unanswered for too long means the connection is
    /// dead (the shell reconnects); a wait for our turn may be over.
    pub fn handle_timeout(
        &mut self,
        now_ms: u64,
        storage: &mut dyn ReplicaStorage,
    ) -> Result<(), SyncError> {
        if let Some(f) = &self.in_flight
            && now_ms >= f.sent_ms + self.config.request_timeout_ms
        {
            return Err(SyncError::Timeout(self.config.request_timeout_ms));
        }
        self.maybe_push(now_ms, storage)
    }

    pub fn status(&self, storage: &dyn ReplicaStorage, now_ms: u64) -> SyncStatus {
        let (pending, oldest) = storage.pending();
        SyncStatus {
            connected: self.connected && self.welcomed,
            pending,
            oldest_pending_ms: oldest.map(|t| now_ms.saturating_sub(t)),
            last_sync_ms: self.last_sync_ms,
            committed: storage.committed_head(),
            server_head: self.server_head.max(storage.committed_head()),
        }
    }

    /// Nothing pending and nothing in flight, everything committed that the
    /// server had when last heard.
    pub fn is_idle(&self, storage: &dyn ReplicaStorage) -> bool {
        self.in_flight.is_none()
            && storage.pending().0 == 0
            && storage.committed_head() >= self.server_head
    }
}
