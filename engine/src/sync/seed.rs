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

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::proto::{Proposal, ServerMessage};
use super::server::{CanonicalLog, ClientId, PushOutcome, ServerCore};
use crate::error::Error;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    last_synced_hlc: String,
    #[serde(default)]
    last_synced_position: Option<u64>,
    local_events: Vec<EventJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushEvents {
    rebased_events: Vec<EventJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    token: String,
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conflicts: Vec<Conflict<'a>>,
    /// With `PULL_REQUIRED` because another client has the turn on these
    /// aggregates: wait this long before pushing again.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

#[derive(Serialize)]
struct Conflict<'a> {
    aggregate_id: &'a str,
    current_version: u64,
}

#[derive(Serialize)]
struct NewEvents {
    #[serde(rename = "type")]
    kind: &'static str,
    events: Vec<OutEvent>,
}

/// What to send back, and whether to close afterwards.
#[derive(Debug, Default)]
pub struct SeedOutput {
    pub messages: Vec<String>,
    pub close: bool,
}

/// The error message of the JSON protocol.
pub fn error_json(code: &str, message: &str, event_id: Option<uuid::Uuid>) -> String {
    let mut v = serde_json::json!({ "type": "error", "code": code, "message": message });
    if let Some(id) = event_id {
        v["event_id"] = serde_json::Value::String(id.to_string());
    }
    v.to_string()
}

/// One WebSocket connection speaking the seed's protocol.
#[derive(Debug)]
pub struct SeedSession {
    client: ClientId,
    authenticated: bool,
    /// Last position sent to the client; live events follow it once the
    /// client has synced once.
    delivered: u64,
    following: bool,
    next_request: u64,
}

impl SeedSession {
    /// A new connection. `token` is what the transport saw (header or
    /// query); without one, a server that needs a token waits for `auth`.
    pub fn connect(
        client: ClientId,
        token: Option<&str>,
        core: &mut ServerCore,
        log: &dyn CanonicalLog,
    ) -> (SeedSession, SeedOutput) {
        core.connect(client, false);
        let mut session = SeedSession {
            client,
            authenticated: false,
            delivered: 0,
            following: false,
            next_request: 1,
        };
        let mut out = SeedOutput::default();
        if token.is_some() || core.config().tokens.is_empty() {
            session.authenticate(token, core, log, &mut out);
        }
        (session, out)
    }

    fn authenticate(
        &mut self,
        token: Option<&str>,
        core: &mut ServerCore,
        log: &dyn CanonicalLog,
        out: &mut SeedOutput,
    ) {
        match core.hello(
            self.client,
            super::proto::PROTOCOL_VERSION,
            token,
            "seed-json",
            log,
        ) {
            ServerMessage::Welcome { .. } => self.authenticated = true,
            ServerMessage::Error { code, message, .. } => {
                out.messages.push(error_json(code.as_str(), &message, None));
                out.close = true;
            }
            _ => {}
        }
    }

    /// Handles one text message.
    pub fn handle_text(
        &mut self,
        now_ms: u64,
        text: &str,
        core: &mut ServerCore,
        log: &mut dyn CanonicalLog,
    ) -> SeedOutput {
        let mut out = SeedOutput::default();
        if text.len() > SEED_MESSAGE_BYTES_MAX {
            out.messages.push(error_json(
                "too_large",
                &format!("a message of {} bytes is more than the limit of {SEED_MESSAGE_BYTES_MAX}; send fewer events at once", text.len()),
                None,
            ));
            return out;
        }
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                out.messages
                    .push(error_json("malformed", &format!("not JSON: {e}"), None));
                return out;
            }
        };
        let Some(kind) = value
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
        else {
            out.messages.push(error_json(
                "malformed",
                "a message needs a \"type\" string",
                None,
            ));
            return out;
        };
        let mut body = value;
        if let Some(obj) = body.as_object_mut() {
            obj.remove("type");
        }
        if !self.authenticated {
            if kind == "auth" {
                match serde_json::from_value::<Auth>(body) {
                    Ok(a) => self.authenticate(Some(&a.token), core, log, &mut out),
                    Err(e) => {
                        out.messages
                            .push(error_json("malformed", &format!("auth: {e}"), None))
                    }
                }
            } else {
                out.messages.push(error_json(
                    "unauthorized",
                    "send {\"type\":\"auth\",\"token\":...} first",
                    None,
                ));
                out.close = true;
            }
            return out;
        }
        let result = match kind.as_str() {
            "client_sync_request" => serde_json::from_value::<SyncRequest>(body)
                .map_err(|e| error_json("malformed", &format!("client_sync_request: {e}"), None))
                .and_then(|req| {
                    let base = base_position(&req.last_synced_hlc, req.last_synced_position, log)
                        .map_err(|e| error_json("malformed", &e, None))?;
                    self.delivered = base;
                    self.following = true;
                    Ok(req.local_events)
                }),
            "client_push_events" => serde_json::from_value::<PushEvents>(body)
                .map_err(|e| error_json("malformed", &format!("client_push_events: {e}"), None))
                .map(|p| p.rebased_events),
            "auth" => Err(error_json("unexpected", "already authenticated", None)),
            other => Err(error_json(
                "unexpected",
                &format!(
                    "unknown message type {other:?}; expected client_sync_request or client_push_events"
                ),
                None,
            )),
        };
        let events = match result {
            Ok(events) => events,
            Err(msg) => {
                out.messages.push(msg);
                return out;
            }
        };
        if let Err(msg) = check_events(&events) {
            out.messages.push(msg);
            return out;
        }
        let mut status = "OK";
        let mut conflicts = Vec::new();
        let mut retry_after_ms = None;
        if !events.is_empty() {
            let proposals: Vec<Proposal> = events.iter().map(proposal).collect();
            let request = self.next_request;
            self.next_request += 1;
            let (replies, outcome) = core.push(now_ms, self.client, request, proposals, log);
            for r in replies {
                match r {
                    ServerMessage::Rejected { rejections, .. } => {
                        for (id, reason) in rejections {
                            out.messages.push(error_json("rejected", &reason, Some(id)));
                        }
                    }
                    ServerMessage::Error { code, message, .. } => {
                        out.messages.push(error_json(code.as_str(), &message, None))
                    }
                    ServerMessage::PullRequired {
                        retry_after_ms: wait,
                        ..
                    } if wait > 0 => retry_after_ms = Some(wait),
                    _ => {}
                }
            }
            match outcome {
                PushOutcome::Accepted { .. } => {}
                PushOutcome::PullRequired { conflicts: c } => {
                    status = "PULL_REQUIRED";
                    conflicts = c;
                }
                PushOutcome::Refused => return out,
            }
        }
        match self.missing_events(log) {
            Ok(missing) => {
                let new_server_position = self.delivered;
                let new_server_hlc = match cursor_token(new_server_position, log) {
                    Ok(t) => t,
                    Err(e) => {
                        out.messages
                            .push(error_json("unavailable", &e.to_string(), None));
                        return out;
                    }
                };
                let response = SyncResponse {
                    kind: "server_sync_response",
                    status,
                    missing_events: missing,
                    new_server_hlc,
                    new_server_position,
                    conflicts: conflicts
                        .iter()
                        .map(|(a, v)| Conflict {
                            aggregate_id: a,
                            current_version: *v,
                        })
                        .collect(),
                    retry_after_ms,
                };
                out.messages
                    .push(serde_json::to_string(&response).expect("responses serialise"));
            }
            Err(e) => out
                .messages
                .push(error_json("unavailable", &e.to_string(), None)),
        }
        out
    }

    /// Events after `delivered`, up to the per-message limit.
    fn missing_events(&mut self, log: &mut dyn CanonicalLog) -> Result<Vec<OutEvent>, Error> {
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
    /// synced: call when the log moved.
    pub fn poll_broadcast(&mut self, log: &mut dyn CanonicalLog) -> Result<Option<String>, Error> {
        if !self.following || log.head() <= self.delivered {
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

    pub fn disconnect(&self, core: &mut ServerCore, now_ms: u64) {
        core.disconnect(self.client, now_ms);
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
pub fn cursor_token(position: u64, log: &mut dyn CanonicalLog) -> Result<String, Error> {
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

/// The server position a client's cursor stands for (see the module
/// documentation).
pub fn base_position(
    hlc: &str,
    position: Option<u64>,
    log: &mut dyn CanonicalLog,
) -> Result<u64, String> {
    let head = log.head();
    if let Some(p) = position {
        return Ok(p.min(head));
    }
    if hlc.is_empty() {
        return Ok(0);
    }
    let ts = Timestamp::parse(hlc).map_err(|e| format!("last_synced_hlc: {e}"))?;
    if let Some(p) = ts
        .node()
        .as_str()
        .strip_prefix(TOKEN_NODE_PREFIX)
        .and_then(|p| p.parse::<u64>().ok())
    {
        // A token only if the clock matches the event at that position: a
        // node id that merely looks like one (`@42`) is an ordinary HLC.
        let at = log.read(p, 1, usize::MAX).map_err(|e| e.to_string())?;
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
        let events = log
            .read(from, EVENTS_PER_MESSAGE_MAX, EVENTS_BYTES_PER_MESSAGE_MAX)
            .map_err(|e| e.to_string())?;
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
        let mut log = store.clone();
        let mut core = ServerCore::new(super::super::ServerConfig::default());
        let (mut session, out) = SeedSession::connect(1, None, &mut core, &log);
        assert!(out.messages.is_empty() && !out.close);
        let limit = EVENTS_BYTES_PER_MESSAGE_MAX + 2 * PAD_BYTES;
        let request = r#"{"type":"client_sync_request","last_synced_hlc":"","local_events":[]}"#;
        let out = session.handle_text(0, request, &mut core, &mut log);
        let response: serde_json::Value = serde_json::from_str(&out.messages[0]).unwrap();
        assert!(
            out.messages[0].len() <= limit,
            "{} bytes",
            out.messages[0].len()
        );
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
        while let Some(msg) = session.poll_broadcast(&mut log).unwrap() {
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
        let mut log = store.clone();
        let token = cursor_token(2, &mut log).unwrap();
        assert_eq!(base_position(&token, None, &mut log), Ok(2));
        assert_eq!(base_position("", None, &mut log), Ok(0));
        // Node `@3`, but the clock of position 1's event: not a token. The
        // client has seen clocks up to 1000 only, so it resumes from the
        // start, not after position 3.
        let lookalike = format!("{:015}:{:010}:@3", 1_000, 0);
        let from = base_position(&lookalike, None, &mut log).unwrap();
        assert!(from < 1, "resumed after {from}");
    }
}
