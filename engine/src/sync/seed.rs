//! The seed's JSON protocol over WebSocket, driven by the same
//! [`ServerCore`] as QUIC. Messages, with exactly the seed's shapes:
//!
//! * client → server: `client_sync_request` {last_synced_hlc, local_events},
//!   `client_push_events` {rebased_events}; and, for servers that require a
//!   token, `auth` {token} as the first message (or a header or query
//!   parameter, see the server).
//! * server → client: `server_sync_response` {status: "OK" |
//!   "PULL_REQUIRED", missing_events, new_server_hlc}, `server_new_events`
//!   {events}, and `error` {code, message, event_id?} for anything refused
//!   or malformed (the connection stays open unless the error is about
//!   authentication).
//!
//! Cursors. The seed keys its cursor on an HLC, which skips events that
//! arrive late with an older clock. Here every `new_server_hlc` the server
//! hands out is a token shaped like an HLC whose node part is `@` and the
//! server position (`001700000000000:0000000003:@42`): a client that sends
//! it back as `last_synced_hlc` resumes exactly after position 42. Newer
//! clients may send `last_synced_position` instead (and read
//! `new_server_position`; events carry a `position` field). Any other HLC
//! is mapped conservatively: to just before the first position whose
//! running maximum HLC reaches it, which never skips an event but may
//! resend some (clients ignore event ids they hold). `""` means from the
//! start.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::proto::{Proposal, ServerMessage};
use super::server::ClientId;
use super::storage::{CanonicalLog, StorageError};
use crate::hlc::{COUNTER_DIGITS, PHYSICAL_DIGITS, Timestamp};
use crate::json::EventJson;

/// Largest JSON message accepted.
pub const SEED_MESSAGE_BYTES_MAX: usize = 4 << 20;
/// Most events in one `missing_events` or `server_new_events`.
pub const EVENTS_PER_MESSAGE_MAX: usize = 1_000;
/// About the most bytes of events (as the log stores them) in one
/// `missing_events` or `server_new_events`: reads stop at the first batch
/// boundary past it. Without it, 1,000 events of up to 1 MiB each made a
/// message no client could read.
pub const EVENTS_BYTES_PER_MESSAGE_MAX: usize = 1 << 20;
/// Node part of a cursor token: `@` then the position.
pub const TOKEN_NODE_PREFIX: char = '@';

/// Just the `type` of a message, read before the message itself.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

// Each message is parsed from its text straight into its shape, so that
// `event_data` and `metadata` keep the client's exact bytes (key order,
// whitespace, numbers of any size, duplicate keys): nothing goes through a
// generic JSON value on the way.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    #[serde(rename = "type")]
    _kind: String,
    last_synced_hlc: String,
    #[serde(default)]
    last_synced_position: Option<u64>,
    local_events: Vec<EventJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushEvents {
    #[serde(rename = "type")]
    _kind: String,
    rebased_events: Vec<EventJson>,
}

/// The `auth` message a client sends first on a server with tokens (read by
/// the transport before a session exists).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(rename = "type")]
    _kind: String,
    pub token: String,
}

impl Auth {
    /// Parses an `auth` message; the error is the `error` message to send.
    pub fn parse(text: &str) -> Result<Auth, String> {
        match parse_tag(text)?.as_deref() {
            Some("auth") => serde_json::from_str::<Auth>(text)
                .map_err(|e| error_json("malformed", &format!("auth: {e}"), None)),
            _ => Err(error_json(
                "unauthorized",
                "send {\"type\":\"auth\",\"token\":...} first",
                None,
            )),
        }
    }
}

/// The `type` of a message; the error is the `error` message to send.
fn parse_tag(text: &str) -> Result<Option<Cow<'_, str>>, String> {
    if text.len() > SEED_MESSAGE_BYTES_MAX {
        return Err(error_json(
            "too_large",
            &format!(
                "a message of {} bytes is more than the limit of {SEED_MESSAGE_BYTES_MAX}; send fewer events at once",
                text.len()
            ),
            None,
        ));
    }
    match serde_json::from_str::<Tag<'_>>(text) {
        Ok(Tag { kind: Some(k) }) => Ok(Some(k)),
        Ok(Tag { kind: None }) => Err(error_json(
            "malformed",
            "a message needs a \"type\" string",
            None,
        )),
        Err(e) if e.is_data() => Err(error_json(
            "malformed",
            "a message is a JSON object with a \"type\" string",
            None,
        )),
        Err(e) => Err(error_json("malformed", &format!("not JSON: {e}"), None)),
    }
}

/// An event as the server sends it: the seed's object plus its position.
#[derive(Serialize)]
struct OutEvent {
    #[serde(flatten)]
    event: EventJson,
    position: u64,
}

#[derive(Serialize)]
struct SyncResponse<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    missing_events: Vec<OutEvent>,
    new_server_hlc: String,
    new_server_position: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    conflicts: &'a [Conflict],
}

#[derive(Serialize)]
struct Conflict {
    aggregate_id: String,
    current_version: u64,
}

#[derive(Serialize)]
struct NewEvents {
    #[serde(rename = "type")]
    kind: &'static str,
    events: Vec<OutEvent>,
}

/// The error message of the JSON protocol.
pub fn error_json(code: &str, message: &str, event_id: Option<uuid::Uuid>) -> String {
    let mut v = serde_json::json!({ "type": "error", "code": code, "message": message });
    if let Some(id) = event_id {
        v["event_id"] = serde_json::Value::String(id.to_string());
    }
    v.to_string()
}

/// What to do with a client's message.
#[derive(Debug)]
pub enum SeedStep {
    /// Send these messages; the request is over.
    Reply(Vec<String>),
    /// Hand these events to the store's [`super::ServerCore`] as push
    /// `request` of this session's client; its answer comes back through
    /// [`SeedSession::handle_reply`].
    Push { request: u64, events: Vec<Proposal> },
}

/// One authenticated WebSocket connection speaking the seed's protocol: it
/// turns text into pushes for the store's core and the core's answers into
/// `server_sync_response`s, and keeps the connection's cursor. It reads the
/// log (missing events, cursor tokens) but never writes: pushes go through
/// the core, so they share its group commits and its turn.
#[derive(Debug)]
pub struct SeedSession {
    client: ClientId,
    /// Last position sent to the client; live events follow it once the
    /// client has synced once.
    delivered: u64,
    following: bool,
    next_request: u64,
    /// The request whose final answer the core has not given yet.
    awaiting: Option<u64>,
}

impl SeedSession {
    /// A session for `client`, which the transport has authenticated and
    /// connected to the store's core.
    pub fn new(client: ClientId) -> SeedSession {
        SeedSession {
            client,
            delivered: 0,
            following: false,
            next_request: 1,
            awaiting: None,
        }
    }

    pub fn client(&self) -> ClientId {
        self.client
    }

    /// Whether the client gets live events (it has sent
    /// `client_sync_request`).
    pub fn is_following(&self) -> bool {
        self.following
    }

    /// Whether a push of this session waits for the core's answer.
    pub fn is_waiting(&self) -> bool {
        self.awaiting.is_some()
    }

    /// Handles one text message. Reads the log (cursor mapping, missing
    /// events), so call it where blocking is fine, never under the core's
    /// lock.
    pub fn handle_text(&mut self, text: &str, log: &dyn CanonicalLog) -> SeedStep {
        let reply = |m: String| SeedStep::Reply(vec![m]);
        let kind = match parse_tag(text) {
            Ok(k) => k,
            Err(m) => return reply(m),
        };
        if self.awaiting.is_some() {
            return reply(error_json(
                "unexpected",
                "the last request is still being answered; wait for its server_sync_response",
                None,
            ));
        }
        let events = match kind.as_deref() {
            Some("client_sync_request") => {
                let req = match serde_json::from_str::<SyncRequest>(text) {
                    Ok(r) => r,
                    Err(e) => {
                        return reply(error_json(
                            "malformed",
                            &format!("client_sync_request: {e}"),
                            None,
                        ));
                    }
                };
                match base_position(&req.last_synced_hlc, req.last_synced_position, log) {
                    Ok(base) => {
                        self.delivered = base;
                        self.following = true;
                    }
                    Err(CursorError::Malformed(e)) => {
                        return reply(error_json("malformed", &e, None));
                    }
                    Err(CursorError::Storage(e)) => {
                        return reply(error_json("unavailable", &e.to_string(), None));
                    }
                }
                req.local_events
            }
            Some("client_push_events") => match serde_json::from_str::<PushEvents>(text) {
                Ok(p) => p.rebased_events,
                Err(e) => {
                    return reply(error_json(
                        "malformed",
                        &format!("client_push_events: {e}"),
                        None,
                    ));
                }
            },
            Some("auth") => return reply(error_json("unexpected", "already authenticated", None)),
            other => {
                let name = other.unwrap_or_default();
                return reply(error_json(
                    "unexpected",
                    &format!(
                        "unknown message type {name:?}; expected client_sync_request or client_push_events"
                    ),
                    None,
                ));
            }
        };
        if let Err(msg) = check_events(&events) {
            return reply(msg);
        }
        if events.is_empty() {
            return SeedStep::Reply(self.respond("OK", &[], log));
        }
        let request = self.next_request;
        self.next_request += 1;
        self.awaiting = Some(request);
        SeedStep::Push {
            request,
            events: events.iter().map(proposal).collect(),
        }
    }

    /// A message from the core for this session's client: the answer to
    /// its push. Returns what to send: `error` `rejected` messages as they
    /// come, then the `server_sync_response` (or the `error`) that ends the
    /// request. Reads the log, like [`SeedSession::handle_text`].
    pub fn handle_reply(&mut self, msg: ServerMessage, log: &dyn CanonicalLog) -> Vec<String> {
        let Some(request) = self.awaiting else {
            return Vec::new();
        };
        match msg {
            ServerMessage::Rejected {
                request: r,
                rejections,
            } if r == request => rejections
                .iter()
                .map(|(id, reason)| error_json("rejected", reason, Some(*id)))
                .collect(),
            ServerMessage::Accepted { request: r, .. } if r == request => {
                self.awaiting = None;
                self.respond("OK", &[], log)
            }
            ServerMessage::PullRequired {
                request: r,
                conflicts,
                ..
            } if r == request => {
                self.awaiting = None;
                let conflicts: Vec<Conflict> = conflicts
                    .into_iter()
                    .map(|(aggregate_id, current_version)| Conflict {
                        aggregate_id,
                        current_version,
                    })
                    .collect();
                self.respond("PULL_REQUIRED", &conflicts, log)
            }
            ServerMessage::Error { code, message, .. } => {
                // The core's refusals of a push carry no request: with one
                // request at a time, it is the one waiting.
                self.awaiting = None;
                vec![error_json(code.as_str(), &message, None)]
            }
            _ => Vec::new(),
        }
    }

    /// The `server_sync_response` with `missing_events` after the cursor,
    /// which moves to the last position sent.
    fn respond(
        &mut self,
        status: &'static str,
        conflicts: &[Conflict],
        log: &dyn CanonicalLog,
    ) -> Vec<String> {
        let missing = match self.missing_events(log) {
            Ok(m) => m,
            Err(e) => return vec![error_json("unavailable", &e.to_string(), None)],
        };
        let new_server_position = self.delivered;
        let new_server_hlc = match cursor_token(new_server_position, log) {
            Ok(t) => t,
            Err(e) => return vec![error_json("unavailable", &e.to_string(), None)],
        };
        let response = SyncResponse {
            kind: "server_sync_response",
            status,
            missing_events: missing,
            new_server_hlc,
            new_server_position,
            conflicts,
        };
        vec![serde_json::to_string(&response).expect("responses serialise")]
    }

    /// Events after `delivered`, up to the per-message limits.
    fn missing_events(&mut self, log: &dyn CanonicalLog) -> Result<Vec<OutEvent>, StorageError> {
        let events = log.read(
            self.delivered + 1,
            EVENTS_PER_MESSAGE_MAX,
            EVENTS_BYTES_PER_MESSAGE_MAX,
        )?;
        if let Some(last) = events.last() {
            self.delivered = last.position;
        }
        Ok(events
            .iter()
            .map(|e| OutEvent {
                event: EventJson::from(e),
                position: e.position,
            })
            .collect())
    }

    /// Live events for this client (`server_new_events`), once it has
    /// synced and while no request of its waits: call when the log moved,
    /// and again after each send, until `None`.
    pub fn poll_broadcast(
        &mut self,
        log: &dyn CanonicalLog,
    ) -> Result<Option<String>, StorageError> {
        if !self.following || self.awaiting.is_some() || log.head()? <= self.delivered {
            return Ok(None);
        }
        let events = self.missing_events(log)?;
        if events.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::to_string(&NewEvents {
                kind: "server_new_events",
                events,
            })
            .expect("events serialise"),
        ))
    }
}

/// Refuses pushes that no rebase could fix: the same event twice, or a
/// gap in an aggregate's versions.
fn check_events(events: &[EventJson]) -> Result<(), String> {
    let mut ids = HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for e in events {
        if !ids.insert(e.event_id) {
            return Err(error_json(
                "malformed",
                "the same event_id appears twice in one message",
                Some(e.event_id),
            ));
        }
        if let Some(prev) = last.insert(&e.aggregate_id, e.version)
            && prev.checked_add(1) != Some(e.version)
        {
            return Err(error_json(
                "malformed",
                &format!(
                    "version gap in {:?}: {} after {prev}; versions of one aggregate must follow each other",
                    e.aggregate_id, e.version
                ),
                Some(e.event_id),
            ));
        }
    }
    Ok(())
}

fn proposal(e: &EventJson) -> Proposal {
    let n = e.to_new_event();
    Proposal {
        event_id: e.event_id,
        aggregate_id: e.aggregate_id.clone(),
        version: e.version,
        event_type: n.event_type,
        data: n.data,
        timestamp: e.timestamp.clone(),
        metadata: n.metadata,
    }
}

/// The cursor token for `position`: the HLC of the event there, with `@`
/// and the position as its node (`""` for position 0).
pub fn cursor_token(position: u64, log: &dyn CanonicalLog) -> Result<String, StorageError> {
    if position == 0 {
        return Ok(String::new());
    }
    let (p, c) = match log.read(position, 1, usize::MAX)?.first() {
        Some(e) if e.position == position => (e.timestamp.physical_ms(), e.timestamp.counter()),
        _ => (0, 0),
    };
    Ok(format!(
        "{p:0pw$}:{c:0cw$}:{TOKEN_NODE_PREFIX}{position}",
        pw = PHYSICAL_DIGITS,
        cw = COUNTER_DIGITS
    ))
}

/// Why a client's cursor could not be mapped.
#[derive(Debug, PartialEq, Eq)]
pub enum CursorError {
    /// The cursor is not an HLC.
    Malformed(String),
    Storage(StorageError),
}

impl From<StorageError> for CursorError {
    fn from(e: StorageError) -> Self {
        CursorError::Storage(e)
    }
}

/// The server position a client's cursor stands for (see the module
/// documentation).
pub fn base_position(
    hlc: &str,
    position: Option<u64>,
    log: &dyn CanonicalLog,
) -> Result<u64, CursorError> {
    let head = log.head()?;
    if let Some(p) = position {
        return Ok(p.min(head));
    }
    if hlc.is_empty() {
        return Ok(0);
    }
    let ts = Timestamp::parse(hlc)
        .map_err(|e| CursorError::Malformed(format!("last_synced_hlc: {e}")))?;
    if let Some(p) = ts
        .node()
        .as_str()
        .strip_prefix(TOKEN_NODE_PREFIX)
        .and_then(|p| p.parse::<u64>().ok())
    {
        // A token only if the clock matches the event at that position: a
        // node id that merely looks like one (`@42`) is an ordinary HLC.
        let at = log.read(p, 1, usize::MAX)?;
        if at.first().is_some_and(|e| {
            e.position == p
                && e.timestamp.physical_ms() == ts.physical_ms()
                && e.timestamp.counter() == ts.counter()
        }) {
            return Ok(p);
        }
    }
    // Not a token: resume before the first position whose running maximum
    // clock reaches the client's, which the client cannot have passed.
    let key = (
        ts.physical_ms(),
        ts.counter(),
        ts.node().as_str().to_owned(),
    );
    let mut from = 1;
    let mut max: Option<(u64, u32, String)> = None;
    while from <= head {
        let events = log.read(from, EVENTS_PER_MESSAGE_MAX, EVENTS_BYTES_PER_MESSAGE_MAX)?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        for e in &events {
            let t = (
                e.timestamp.physical_ms(),
                e.timestamp.counter(),
                e.timestamp.node().as_str().to_owned(),
            );
            if max.as_ref().is_none_or(|m| t > *m) {
                max = Some(t);
            }
            if max.as_ref().is_some_and(|m| *m >= key) {
                return Ok(e.position - 1);
            }
        }
        from = last + 1;
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExpectedVersion, NewEvent};
    use crate::{Options, Store};

    fn replies(step: SeedStep) -> Vec<String> {
        match step {
            SeedStep::Reply(m) => m,
            SeedStep::Push { .. } => panic!("expected replies, got a push"),
        }
    }

    /// Bounded messages: a backlog of large events comes in messages of
    /// about [`EVENTS_BYTES_PER_MESSAGE_MAX`], never all at once, and the
    /// follow stream resumes where the response stopped.
    #[test]
    fn messages_are_bounded_in_bytes() {
        const EVENTS: u64 = 12;
        const PAD_BYTES: usize = 300 << 10;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let pad = "p".repeat(PAD_BYTES);
        for v in 0..EVENTS {
            let data = format!("{{\"value\":1,\"pad\":\"{pad}\"}}").into_bytes();
            store
                .append(
                    "big",
                    ExpectedVersion::Exact(v),
                    vec![NewEvent::new("CounterIncremented", data)],
                )
                .unwrap();
        }
        let mut session = SeedSession::new(1);
        let limit = EVENTS_BYTES_PER_MESSAGE_MAX + 2 * PAD_BYTES;
        let request = r#"{"type":"client_sync_request","last_synced_hlc":"","local_events":[]}"#;
        let out = replies(session.handle_text(request, &store));
        let response: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert!(out[0].len() <= limit, "{} bytes", out[0].len());
        let mut positions: Vec<u64> = response["missing_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect();
        assert!(!positions.is_empty() && (positions.len() as u64) < EVENTS);
        assert_eq!(
            response["new_server_position"].as_u64(),
            positions.last().copied()
        );
        while let Some(msg) = session.poll_broadcast(&store).unwrap() {
            assert!(msg.len() <= limit, "{} bytes", msg.len());
            let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
            positions.extend(
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["position"].as_u64().unwrap()),
            );
        }
        assert_eq!(positions, (1..=EVENTS).collect::<Vec<_>>());
        store.close().unwrap();
    }

    /// Y6 for seed clients: a cursor token resumes exactly after its
    /// position; an ordinary HLC whose node merely looks like a token is
    /// mapped conservatively, never past an event the client lacks.
    #[test]
    fn cursor_tokens_resume_exactly_and_lookalikes_never_skip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
            let ts = Timestamp::from_parts(1_000 + i as u64, 0, node).unwrap();
            store
                .append(
                    "a",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("T", "{}").with_timestamp(ts)],
                )
                .unwrap();
        }
        let token = cursor_token(2, &store).unwrap();
        assert_eq!(base_position(&token, None, &store), Ok(2));
        assert_eq!(base_position("", None, &store), Ok(0));
        // Node `@3`, but the clock of position 1's event: not a token. The
        // client has seen clocks up to 1000 only, so it resumes from the
        // start, not after position 3.
        let lookalike = format!("{:015}:{:010}:@3", 1_000, 0);
        let from = base_position(&lookalike, None, &store).unwrap();
        assert!(from < 1, "resumed after {from}");
    }

    /// A message is parsed straight from its text into its shape:
    /// `event_data` and `metadata` keep the client's bytes exactly (key
    /// order, whitespace, a number no float holds, duplicate keys).
    #[test]
    fn event_data_and_metadata_keep_the_clients_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let data = r#"{"b": 1, "a": 12345678901234567890123456789, "e": 1E2, "b": 2}"#;
        let metadata = r#"[ 1.50 , {"z":null,"a" :0} ]"#;
        let text = format!(
            r#"{{"type":"client_sync_request","last_synced_hlc":"","local_events":[{{"event_id":"00000000-0000-0000-0000-0000000000a1","aggregate_id":"c","version":1,"event_type":"T","event_data":{data},"timestamp":"1700000000000:0:A","metadata":{metadata}}}]}}"#
        );
        let mut session = SeedSession::new(1);
        match session.handle_text(&text, &store) {
            SeedStep::Push { events, .. } => {
                assert_eq!(events[0].data, data.as_bytes());
                assert_eq!(events[0].metadata.as_deref(), Some(metadata.as_bytes()));
            }
            SeedStep::Reply(m) => panic!("expected a push, got {m:?}"),
        }
        // Messages that are not objects, or not JSON, get `malformed`.
        for bad in ["[1]", "\"x\"", "{\"type\":", "{} trailing"] {
            let out = replies(SeedSession::new(2).handle_text(bad, &store));
            assert!(out[0].contains("malformed"), "{bad}: {out:?}");
        }
    }
}
