//! The seed's JSON protocol over WebSocket at `/ws`: the compatibility
//! transport for older clients and browsers. The protocol itself lives in
//! the engine ([`strata::sync::seed::SeedSession`] over the store's
//! [`strata::sync::ServerCore`]); this module only moves text frames.
//!
//! # Brief overview
//!
//! * `GET /ws?store=<name>&token=<t>` upgrades to a WebSocket. `store`
//!   defaults to `default`. The token comes from `Authorization: Bearer
//!   <t>`, else from the `token` query parameter (browsers cannot set
//!   headers on a WebSocket), else from a first `{"type":"auth","token":…}`
//!   message (a good one gets no reply). A wrong or missing token gets an
//!   `error` message and a close (1008). A bad store name is 400; a store
//!   that does not exist is 404 for a client without a valid token at
//!   upgrade time (it may not create stores by naming them).
//! * Origin rule, checked before upgrading (a browser page cannot lie about
//!   its Origin, so this keeps other sites' pages away; non-browser
//!   clients send no Origin and are held to the token instead). Allowed:
//!   - no `Origin` header;
//!   - an origin listed in [`crate::Config::allowed_origins`] (exact,
//!     byte-for-byte match, e.g. `https://app.example.com`);
//!   - loopback pages: `http://` or `https://` with host `127.0.0.1`,
//!     `localhost` or `[::1]`, any port;
//!   - the server's own origin (its `host[:port]` equals the `Host`
//!     header), but only on a server with tokens. A server without tokens
//!     listens on loopback, where the rule above already covers its own
//!     pages; there, a page whose name was re-pointed at 127.0.0.1 (DNS
//!     rebinding) would otherwise pass as the server's own.
//!
//!   Anything else (including `null`) is refused with 403 and a plain-text
//!   reason.
//! * Limits: one permit of [`crate::AppState::connections`] per connection
//!   (503 when none is left); messages up to [`WS_MESSAGE_BYTES_MAX`] reach
//!   the session, which answers those above
//!   [`strata::sync::seed::SEED_MESSAGE_BYTES_MAX`] with an `error`
//!   message; larger frames end the connection (1009). Binary frames get
//!   an `error` message. Each outgoing message holds about
//!   [`strata::sync::seed::EVENTS_BYTES_PER_MESSAGE_MAX`] of events.
//! * Slow clients: nothing queues in memory. Live events
//!   (`server_new_events`) are read from the log only when the previous
//!   send has completed, so a client's backlog stays in the log. A send
//!   that takes longer than [`crate::Config::ws_send_timeout`] (default
//!   [`SEND_TIMEOUT`]) drops that connection; other clients never wait
//!   for it, and the store's core lock is never held across a socket
//!   operation.
//! * Shutdown: when [`crate::AppState::stop`] turns true every connection
//!   sends a close (1001) and ends; `serve` waits for their permits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use strata::sync::seed::{SEED_MESSAGE_BYTES_MAX, SeedOutput, SeedSession, error_json};
use tokio::sync::watch;

use crate::AppState;
use crate::registry::{DEFAULT_STORE, Hosted, validate_store_name};

/// Default [`crate::Config::ws_send_timeout`]: the longest one send to a
/// client may take before the client counts as too slow and is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How much larger than the session's limit a frame may be and still reach
/// the session (which answers it with a JSON error instead of a dropped
/// connection).
pub const MESSAGE_SLACK_BYTES: usize = 1 << 20;
/// Largest WebSocket message or frame read from a client.
pub const WS_MESSAGE_BYTES_MAX: usize = SEED_MESSAGE_BYTES_MAX + MESSAGE_SLACK_BYTES;
/// How long a closing connection waits for its close frame to go out and
/// for the client's answer.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest close reason the WebSocket protocol allows (RFC 6455, 5.5).
const CLOSE_REASON_BYTES_MAX: usize = 123;
/// Longest piece of an untrusted header echoed in a refusal.
const ECHO_CHARS_MAX: usize = 200;

/// The `/ws` route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/ws", get(upgrade))
}

#[derive(Debug, serde::Deserialize)]
struct WsQuery {
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

fn refuse(status: StatusCode, reason: String) -> Response {
    (status, format!("{reason}\n")).into_response()
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let open = state.config.tokens.is_empty();
        if let Err(reason) = check_origin(&origin, host, &state.config.allowed_origins, open) {
            tracing::info!(peer = ?peer, origin = %echo(&origin), "refused /ws: origin");
            return refuse(StatusCode::FORBIDDEN, reason);
        }
    }
    let store = query.store.unwrap_or_else(|| DEFAULT_STORE.to_owned());
    if let Err(e) = validate_store_name(&store) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    let token = bearer(&headers).or(query.token);
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        tracing::warn!(peer = ?peer, max = state.config.connections_max, "refused /ws: connection limit");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server has {} connections, its limit; retry later",
                state.config.connections_max
            ),
        );
    };
    // A client that has not shown a valid token yet may use stores that
    // exist, not create new ones (each is a directory and open files).
    let may_create = strata::sync::token_accepted(&state.config.tokens, token.as_deref());
    let (registry, data_dir) = (state.registry.clone(), state.config.data_dir.clone());
    let name = store.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<Option<Arc<Hosted>>, String> {
        if !may_create && !data_dir.join(&name).is_dir() {
            return Ok(None);
        }
        registry.get(&name).map(Some).map_err(|e| e.to_string())
    })
    .await;
    let hosted = match opened {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "store {store:?} does not exist; to create it, pass a token in the Authorization header or the token query parameter"
                ),
            );
        }
        Ok(Err(e)) => {
            tracing::error!(store = %store, error = %e, "refused /ws: store");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, e);
        }
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("opening store {store:?}: {e}"),
            );
        }
    };
    let send_timeout = state.config.ws_send_timeout;
    let stop = state.stop.clone();
    ws.max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| async move {
            let conn = Connection {
                socket,
                stop,
                send_timeout,
                hosted,
                peer,
            };
            conn.run(token).await;
            drop(permit);
        })
}

/// The token of an `Authorization: Bearer <t>` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn echo(s: &str) -> String {
    s.chars().take(ECHO_CHARS_MAX).collect()
}

/// Applies the origin rule of the module documentation. `open`: the server
/// runs without tokens.
fn check_origin(
    origin: &str,
    host: Option<&str>,
    allowed: &[String],
    open: bool,
) -> Result<(), String> {
    if allowed.iter().any(|a| a == origin) {
        return Ok(());
    }
    let refused = || {
        let o = echo(origin);
        format!(
            "origin {o:?} may not open /ws on this server; start the server with --allow-origin {o} to allow it"
        )
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(refused());
    };
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https")
        || authority.is_empty()
        || authority.contains(['/', '@'])
    {
        return Err(refused());
    }
    let Some((origin_host, port)) = split_host_port(&authority) else {
        return Err(refused());
    };
    if is_loopback_name(origin_host) {
        return Ok(());
    }
    if !open && let Some(host) = host {
        let host = host.trim().to_ascii_lowercase();
        let default_port = if scheme == "https" { "443" } else { "80" };
        let same =
            host == authority || (port.is_none() && host == format!("{authority}:{default_port}"));
        if same {
            return Ok(());
        }
    }
    Err(refused())
}

/// `host[:port]` with a bracketed IPv6 host; `None` if malformed.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, rest) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        (&authority[..=end], &authority[end + 1..])
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) => (h, &authority[h.len()..]),
            None => (authority, ""),
        }
    };
    let port = match rest {
        "" => None,
        r => {
            let p = r.strip_prefix(':')?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(p)
        }
    };
    (!host.is_empty()).then_some((host, port))
}

fn is_loopback_name(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The client closed, or the socket ended.
    ClientGone,
    /// The server is stopping (or the store closed).
    Shutdown,
    /// A send did not complete within the send timeout.
    SlowClient,
    /// Writing failed: the socket is gone.
    WriteFailed(String),
    /// Reading failed (e.g. a frame above [`WS_MESSAGE_BYTES_MAX`]).
    ReadFailed(String),
    /// The session asked to close (authentication refused).
    Refused(String),
    /// A blocking task panicked.
    Internal(String),
}

/// One upgraded connection.
struct Connection {
    socket: WebSocket,
    stop: watch::Receiver<bool>,
    send_timeout: Duration,
    hosted: Arc<Hosted>,
    peer: Option<SocketAddr>,
}

/// Runs `f` on a blocking thread (the store may append and sync).
async fn blocking<T: Send + 'static>(
    hosted: &Arc<Hosted>,
    f: impl FnOnce(&Hosted) -> T + Send + 'static,
) -> Result<T, End> {
    let h = hosted.clone();
    tokio::task::spawn_blocking(move || f(&h))
        .await
        .map_err(|e| End::Internal(e.to_string()))
}

impl Connection {
    async fn run(mut self, token: Option<String>) {
        let client = self.hosted.next_client_id();
        let store = self.hosted.name.clone();
        tracing::info!(store = %store, client, peer = ?self.peer, "ws client connected");
        let mut head = self.hosted.head.clone();
        head.borrow_and_update();
        let connected = blocking(&self.hosted, move |h| {
            h.with_core(|core, log| SeedSession::connect(client, token.as_deref(), core, log))
        })
        .await;
        let mut session = None;
        let end = match connected {
            Ok((s, out)) => {
                session = Some(s);
                match self.deliver(out).await {
                    Ok(()) => self.serve(&mut session, &mut head).await,
                    Err(end) => end,
                }
            }
            Err(end) => end,
        };
        match &end {
            End::SlowClient => {
                tracing::warn!(store = %store, client, peer = ?self.peer, timeout = ?self.send_timeout, "ws client too slow: dropped")
            }
            End::Internal(e) => {
                tracing::error!(store = %store, client, error = %e, "ws connection failed")
            }
            End::WriteFailed(e) => {
                tracing::info!(store = %store, client, peer = ?self.peer, error = %e, "ws client gone while sending")
            }
            e => {
                tracing::info!(store = %store, client, peer = ?self.peer, end = ?e, "ws client disconnected")
            }
        }
        let close = match &end {
            End::Shutdown => Some((close_code::AWAY, "the server is shutting down".to_owned())),
            End::Refused(reason) => Some((close_code::POLICY, reason.clone())),
            End::ReadFailed(e) if e.contains("Space limit exceeded") => {
                Some((close_code::SIZE, e.clone()))
            }
            End::ReadFailed(e) => Some((close_code::PROTOCOL, e.clone())),
            End::Internal(_) => Some((close_code::ERROR, "internal error".to_owned())),
            End::ClientGone => None,
            End::SlowClient | End::WriteFailed(_) => None,
        };
        if !matches!(end, End::SlowClient | End::WriteFailed(_)) {
            self.finish(close).await;
        }
        let now = now_ms();
        let gone = blocking(&self.hosted, move |h| {
            h.with_core(|core, _| match &session {
                Some(s) => s.disconnect(core, now),
                // The session was lost in a panic: release its client id.
                None => core.disconnect(client, now),
            })
        })
        .await;
        if let Err(End::Internal(e)) = gone {
            tracing::error!(store = %store, client, error = %e, "ws disconnect failed");
        }
    }

    /// The message loop: client messages, live events, the stop signal.
    async fn serve(
        &mut self,
        session: &mut Option<SeedSession>,
        head: &mut watch::Receiver<u64>,
    ) -> End {
        let mut poll = true;
        loop {
            if poll {
                head.borrow_and_update();
                if let Err(end) = self.broadcast(session).await {
                    return end;
                }
                poll = false;
            }
            let msg = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => return End::Shutdown,
                changed = head.changed() => {
                    if changed.is_err() {
                        // The notifier stops when the store closes.
                        return End::Shutdown;
                    }
                    poll = true;
                    continue;
                }
                msg = self.socket.recv() => msg,
            };
            match msg {
                None | Some(Ok(Message::Close(_))) => return End::ClientGone,
                Some(Err(e)) => return End::ReadFailed(e.to_string()),
                Some(Ok(Message::Text(text))) => {
                    let Some(mut s) = session.take() else {
                        return End::Internal("no session".into());
                    };
                    let now = now_ms();
                    let out = blocking(&self.hosted, move |h| {
                        let out =
                            h.with_core(|core, log| s.handle_text(now, text.as_str(), core, log));
                        (s, out)
                    })
                    .await;
                    let (s, out) = match out {
                        Ok(r) => r,
                        Err(end) => return end,
                    };
                    *session = Some(s);
                    if let Err(end) = self.deliver(out).await {
                        return end;
                    }
                    poll = true;
                }
                Some(Ok(Message::Binary(_))) => {
                    let msg = error_json(
                        "malformed",
                        "binary frames are not part of this protocol; send JSON text",
                        None,
                    );
                    if let Err(end) = self.send(msg).await {
                        return end;
                    }
                }
                // Pings are answered by the WebSocket layer.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }

    /// Sends the session's messages; ends the connection if it asked to.
    async fn deliver(&mut self, out: SeedOutput) -> Result<(), End> {
        let reason = out.close.then(|| close_reason(&out.messages));
        for msg in out.messages {
            self.send(msg).await?;
        }
        match reason {
            Some(r) => Err(End::Refused(r)),
            None => Ok(()),
        }
    }

    /// Sends live events until the client has everything in the log. Each
    /// read happens only after the previous send completed, so a client's
    /// backlog stays in the log, not in memory.
    async fn broadcast(&mut self, session: &mut Option<SeedSession>) -> Result<(), End> {
        loop {
            let Some(mut s) = session.take() else {
                return Err(End::Internal("no session".into()));
            };
            let (s, polled) = blocking(&self.hosted, move |h| {
                let mut log = h.store.clone();
                let r = s.poll_broadcast(&mut log);
                (s, r)
            })
            .await?;
            *session = Some(s);
            match polled {
                Ok(Some(msg)) => self.send(msg).await?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::error!(store = %self.hosted.name, error = %e, "reading events for a ws client");
                    let msg = error_json(
                        "unavailable",
                        &format!("the server could not read its log ({e}); sync again later"),
                        None,
                    );
                    return self.send(msg).await;
                }
            }
        }
    }

    /// One send, bounded by the send timeout and cut short by the stop
    /// signal.
    async fn send(&mut self, text: String) -> Result<(), End> {
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => Err(End::Shutdown),
            sent = tokio::time::timeout(self.send_timeout, self.socket.send(Message::Text(text.into()))) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(End::WriteFailed(e.to_string())),
                Err(_) => Err(End::SlowClient),
            },
        }
    }

    /// Sends a close frame (if any) and waits briefly for the client's
    /// answer, so that the frames before it are read rather than reset.
    async fn finish(&mut self, close: Option<(u16, String)>) {
        let socket = &mut self.socket;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if let Some((code, reason)) = close {
                let frame = CloseFrame {
                    code,
                    reason: truncate(&reason, CLOSE_REASON_BYTES_MAX).into(),
                };
                if socket.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
            }
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

/// The close reason for a session that asked to close: the message of its
/// last error.
fn close_reason(messages: &[String]) -> String {
    messages
        .last()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "refused".to_owned())
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rule() {
        let allowed = vec!["https://app.example.com".to_owned(), "null".to_owned()];
        let ok =
            |o: &str, host: Option<&str>, open: bool| check_origin(o, host, &allowed, open).is_ok();
        // Configured origins, exactly.
        assert!(ok("https://app.example.com", Some("strata.example"), false));
        assert!(!ok(
            "https://app.example.com.evil",
            Some("strata.example"),
            false
        ));
        assert!(!ok("http://app.example.com", Some("strata.example"), false));
        assert!(ok("null", None, true));
        // Loopback pages, any port, http or https.
        for o in [
            "http://127.0.0.1:3000",
            "http://localhost",
            "https://localhost:8443",
            "http://[::1]:9",
            "HTTP://LOCALHOST:1",
        ] {
            assert!(ok(o, Some("strata.example"), false), "{o}");
            assert!(ok(o, None, true), "{o}");
        }
        for o in [
            "http://127.0.0.2",
            "http://localhost.evil.com",
            "http://127.0.0.1.evil.com",
            "file://localhost",
            "http://[::1",
            "http://localhost:x",
        ] {
            assert!(!ok(o, Some("strata.example"), false), "{o}");
        }
        // The server's own origin, with tokens only.
        assert!(ok(
            "http://strata.example:8080",
            Some("strata.example:8080"),
            false
        ));
        assert!(ok(
            "http://strata.example",
            Some("strata.example:80"),
            false
        ));
        assert!(ok("https://strata.example", Some("strata.example"), false));
        assert!(!ok(
            "http://strata.example:8080",
            Some("strata.example:8081"),
            false
        ));
        assert!(!ok("http://strata.example:8080", None, false));
        assert!(!ok(
            "http://rebound.example:8080",
            Some("rebound.example:8080"),
            true
        ));
        assert!(!ok(
            "http://user@strata.example",
            Some("strata.example"),
            false
        ));
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "bearer  s3cret ".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn close_reasons_fit_the_frame() {
        let long = "é".repeat(100);
        let t = truncate(&long, CLOSE_REASON_BYTES_MAX);
        assert!(t.len() <= CLOSE_REASON_BYTES_MAX);
        assert_eq!(t.len(), 122);
        let msgs = vec![error_json("unauthorized", "missing or wrong token", None)];
        assert_eq!(close_reason(&msgs), "missing or wrong token");
        assert_eq!(close_reason(&[]), "refused");
    }
}
