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
//!   message (a good one gets no reply) sent within
//!   [`crate::Config::auth_timeout`].
//!   A wrong or missing token, or one that does not grant the store, gets
//!   an `error` message and a close (1008). A bad store name is 400. The
//!   store is opened only once the token is checked: a token that may
//!   write it creates it if missing, one that may only read is refused
//!   when it does not exist.
//! * Before authenticating, a connection holds a place of its own
//!   ([`crate::Config::unauthenticated_max`], and per address), never one
//!   of the authenticated ones (503 when none is left); it may read only
//!   [`crate::http::UNAUTHENTICATED_READ_BYTES_MAX`] bytes (the upgrade
//!   request and a small `auth` message; more ends the connection), and it
//!   is never woken by commits.
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
//! * Limits: one permit of [`crate::AppState::connections`] per
//!   authenticated connection (503 at the upgrade when none is left, or an
//!   `unavailable` error and a close 1013 after a late `auth`); messages up to [`WS_MESSAGE_BYTES_MAX`] reach
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
use std::time::Duration;

use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use strata::sync::proto::ServerMessage;
use strata::sync::seed::{Auth, SEED_MESSAGE_BYTES_MAX, SeedSession, SeedStep, error_json};
use strata::sync::{CanonicalLog, ClientInfo};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use crate::AppState;
use crate::admission::Pending;
use crate::auth::{AuthError, Grant};
use crate::http::{Place, ReadBudget};
use crate::metrics::Held;
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

/// Where a connection stands at the upgrade.
enum Admission {
    /// Its token (or the open server) was checked: a place among
    /// authenticated connections is held.
    Ready {
        grant: Grant,
        permit: OwnedSemaphorePermit,
    },
    /// Its token was refused; the client is told after the upgrade, in
    /// the protocol's words.
    Refused(AuthError),
    /// No token yet: it waits for `auth` in a place of its own.
    Waiting(Pending),
}

fn at_limit(state: &AppState) -> Response {
    state
        .metrics
        .ws
        .refused_total
        .fetch_add(1, Ordering::Relaxed);
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the server has {} connections, its limit; retry later",
            state.config.connections_max
        ),
    )
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    budget: Option<Extension<ReadBudget>>,
    place: Option<Extension<Place>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let ip = crate::peer_ip_of(peer);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let open = state.auth.is_open();
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
    let admission = if token.is_some() || state.auth.is_open() {
        match state.check(token.as_deref(), &store, ip) {
            Ok(grant) => match state.connections.clone().try_acquire_owned() {
                Ok(permit) => Admission::Ready { grant, permit },
                Err(_) => {
                    tracing::warn!(peer = ?peer, max = state.config.connections_max, "refused /ws: connection limit");
                    return at_limit(&state);
                }
            },
            Err(e) => Admission::Refused(e),
        }
    } else {
        match state.admit_unauthenticated(ip) {
            Some(pending) => Admission::Waiting(pending),
            None => {
                state
                    .metrics
                    .ws
                    .refused_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = ?peer, "refused /ws: too many connections from this address waiting to authenticate");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "this address has {} connections that have not authenticated yet, its limit; send the token with the upgrade or retry later",
                        state.config.unauthenticated_per_address_max,
                    ),
                );
            }
        }
    };
    let stop = state.stop.clone();
    ws.max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| async move {
            let conn = Connection {
                socket,
                stop,
                send_timeout: state.config.ws_send_timeout,
                state,
                store,
                peer,
                budget: budget.map(|Extension(b)| b),
            };
            // The HTTP connection's place stays taken while this lives.
            let _place = place;
            conn.run(admission).await;
        })
}

/// The token of an `Authorization: Bearer <t>` header.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
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

/// `localhost`, or a loopback address written as an IP (127.0.0.0/8,
/// `[::1]`): names a DNS answer cannot re-point.
fn is_loopback_name(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(std::net::IpAddr::V6),
        None => host.parse::<std::net::Ipv4Addr>().map(std::net::IpAddr::V4),
    };
    ip.is_ok_and(|ip| ip.is_loopback())
}

/// Whether a `Host` header names this machine's loopback (any port): what
/// an open server answers, so that a name re-pointed at 127.0.0.1 (DNS
/// rebinding) does not reach it.
pub fn is_loopback_authority(host: &str) -> bool {
    split_host_port(&host.trim().to_ascii_lowercase()).is_some_and(|(h, _)| is_loopback_name(h))
}

/// Whether an `Origin` is a loopback page (`http` or `https`, any port).
pub fn is_loopback_origin(origin: &str) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !authority.contains(['/', '@'])
        && split_host_port(authority).is_some_and(|(h, _)| is_loopback_name(h))
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The client closed, or the socket ended.
    ClientGone,
    /// The server is stopping (or the store closed).
    Shutdown,
    /// A send did not complete within the send timeout, or the client let
    /// its answers pile up.
    SlowClient,
    /// Writing failed: the socket is gone.
    WriteFailed(String),
    /// Reading failed (e.g. a frame above [`WS_MESSAGE_BYTES_MAX`]).
    ReadFailed(String),
    /// Authentication refused, or the store could not be opened.
    Refused(String),
    /// Authenticated, but every place for authenticated connections is
    /// taken.
    Busy(String),
    /// A blocking task panicked.
    Internal(String),
}

/// One upgraded connection.
struct Connection {
    socket: WebSocket,
    stop: watch::Receiver<bool>,
    send_timeout: Duration,
    state: Arc<AppState>,
    /// The store the client named.
    store: String,
    peer: Option<SocketAddr>,
    /// The connection's pre-authentication read budget, lifted once the
    /// client has authenticated.
    budget: Option<ReadBudget>,
}

/// An authenticated client with its store open.
struct Admitted2 {
    hosted: Arc<Hosted>,
    grant: Grant,
    _permit: OwnedSemaphorePermit,
}

/// Runs `f` on a blocking thread (it reads the log).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, End> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| End::Internal(e.to_string()))
}

impl Connection {
    async fn run(mut self, admission: Admission) {
        let end = match self.admit(admission).await {
            Ok(Admitted2 {
                hosted,
                grant,
                _permit,
            }) => {
                let _open = Held::new(&self.state, |m| &m.ws.connections_open);
                self.state
                    .metrics
                    .ws
                    .connections_total
                    .fetch_add(1, Ordering::Relaxed);
                let (client, routed) = hosted.connect(ClientInfo {
                    name: "seed-json".into(),
                    may_write: grant.write,
                });
                tracing::info!(store = %hosted.name, client, peer = ?self.peer, write = grant.write, "ws client connected");
                let end = self.serve(&hosted, SeedSession::new(client), routed).await;
                hosted.disconnect(client);
                end
            }
            Err(end) => end,
        };
        let store = self.store.clone();
        match &end {
            End::SlowClient => {
                tracing::warn!(store = %store, peer = ?self.peer, timeout = ?self.send_timeout, "ws client too slow: dropped")
            }
            End::Internal(e) => {
                tracing::error!(store = %store, error = %e, "ws connection failed")
            }
            End::WriteFailed(e) => {
                tracing::info!(store = %store, peer = ?self.peer, error = %e, "ws client gone while sending")
            }
            e => {
                tracing::info!(store = %store, peer = ?self.peer, end = ?e, "ws client disconnected")
            }
        }
        let close = match &end {
            End::Shutdown => Some((close_code::AWAY, "the server is shutting down".to_owned())),
            End::Refused(reason) => Some((close_code::POLICY, reason.clone())),
            End::Busy(reason) => Some((close_code::AGAIN, reason.clone())),
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
    }

    /// Authenticates the client (with the token of the upgrade request, or
    /// else from its first message, `auth`, within the auth timeout), and
    /// only then opens the store.
    async fn admit(&mut self, admission: Admission) -> Result<Admitted2, End> {
        let (grant, permit) = match admission {
            Admission::Ready { grant, permit } => (grant, permit),
            Admission::Refused(e) => return Err(self.refuse_auth(&e).await),
            Admission::Waiting(place) => {
                let _waiting = Held::new(&self.state, |m| &m.ws.unauthenticated_open);
                let limit = self.state.config.auth_timeout;
                let read = tokio::select! {
                    read = tokio::time::timeout(limit, self.read_auth()) => read,
                    () = place.evicted() => {
                        let reason = "too many connections are waiting to authenticate; send the token with the upgrade, or auth at once, and retry".to_owned();
                        self.send(error_json("unavailable", &reason, None)).await?;
                        return Err(End::Busy(reason));
                    }
                };
                let token = match read {
                    Ok(token) => token?,
                    Err(_) => {
                        let reason = format!(
                            "no auth message within {limit:?}; send {{\"type\":\"auth\",\"token\":…}} first"
                        );
                        self.send(error_json("unauthorized", &reason, None)).await?;
                        return Err(End::Refused(reason));
                    }
                };
                let ip = crate::peer_ip_of(self.peer);
                let grant = match self.state.check(Some(&token), &self.store, ip) {
                    Ok(grant) => grant,
                    Err(e) => return Err(self.refuse_auth(&e).await),
                };
                let Ok(permit) = self.state.connections.clone().try_acquire_owned() else {
                    self.state
                        .metrics
                        .ws
                        .refused_total
                        .fetch_add(1, Ordering::Relaxed);
                    let reason = format!(
                        "the server has {} connections, its limit; retry later",
                        self.state.config.connections_max
                    );
                    self.send(error_json("unavailable", &reason, None)).await?;
                    return Err(End::Busy(reason));
                };
                drop(place);
                (grant, permit)
            }
        };
        if let Some(budget) = &self.budget {
            budget.lift();
        }
        let (registry, name, write) =
            (self.state.registry.clone(), self.store.clone(), grant.write);
        let opened = blocking(move || registry.open_for_sync(&name, write)).await?;
        match opened {
            Ok(Some((hosted, _head))) => Ok(Admitted2 {
                hosted,
                grant,
                _permit: permit,
            }),
            Ok(None) => {
                let reason = format!(
                    "no store {:?} here, and this token may only read, not create it",
                    self.store
                );
                self.send(error_json("unauthorized", &reason, None)).await?;
                Err(End::Refused(reason))
            }
            Err(e) => {
                tracing::error!(store = %self.store, error = %e, "refused /ws: store");
                let reason = format!("store {:?} cannot be opened; retry later", self.store);
                self.send(error_json("unavailable", &reason, None)).await?;
                Err(End::Busy(reason))
            }
        }
    }

    /// Tells the client its token was refused; the connection ends. A
    /// throttled address is told `unavailable` (close 1013): waiting is
    /// its remedy, not another token.
    async fn refuse_auth(&mut self, e: &AuthError) -> End {
        let reason = e.to_string();
        let (code, end) = match e {
            AuthError::TooManyFailures { .. } => ("unavailable", End::Busy(reason.clone())),
            _ => ("unauthorized", End::Refused(reason.clone())),
        };
        if let Err(end) = self.send(error_json(code, &reason, None)).await {
            return end;
        }
        end
    }

    /// Waits for the client's `auth` message; other messages get an
    /// `error`, and all but a malformed `auth` end the connection.
    async fn read_auth(&mut self) -> Result<String, End> {
        loop {
            let msg = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => return Err(End::Shutdown),
                msg = self.socket.recv() => msg,
            };
            match msg {
                None | Some(Ok(Message::Close(_))) => return Err(End::ClientGone),
                Some(Err(e)) => return Err(End::ReadFailed(e.to_string())),
                Some(Ok(Message::Text(text))) => {
                    match self.count_in(Auth::parse(text.as_str()), text.len()) {
                        Ok(a) => return Ok(a.token),
                        Err(reply) => {
                            let refused = reply.contains("\"unauthorized\"");
                            self.send(reply.clone()).await?;
                            if refused {
                                return Err(End::Refused(close_reason(&[reply])));
                            }
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let msg = error_json(
                        "malformed",
                        "binary frames are not part of this protocol; send JSON text",
                        None,
                    );
                    self.send(msg).await?;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }

    /// The message loop: client messages, the core's answers, live events,
    /// the stop signal.
    async fn serve(
        &mut self,
        hosted: &Arc<Hosted>,
        session: SeedSession,
        mut routed: mpsc::Receiver<ServerMessage>,
    ) -> End {
        let mut head = hosted.head.clone();
        let mut session = Some(session);
        /// What woke the loop.
        enum Woke {
            Answer(ServerMessage),
            HeadMoved,
            Socket(Option<Result<Message, axum::Error>>),
        }
        loop {
            let following = session.as_ref().is_some_and(SeedSession::is_following);
            let woke = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => return End::Shutdown,
                msg = routed.recv() => match msg {
                    Some(msg) => Woke::Answer(msg),
                    // The store dropped the route: answers piled up.
                    None => return End::SlowClient,
                },
                // Only a following client wakes on commits.
                changed = head.changed(), if following => {
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                    Woke::HeadMoved
                }
                msg = self.socket.recv() => Woke::Socket(msg),
            };
            let out = match woke {
                Woke::Answer(msg) => {
                    match with_session(hosted, &mut session, move |s, log| s.handle_reply(msg, log))
                        .await
                    {
                        Ok(out) => out,
                        Err(end) => return end,
                    }
                }
                Woke::HeadMoved => Vec::new(),
                Woke::Socket(None | Some(Ok(Message::Close(_)))) => return End::ClientGone,
                Woke::Socket(Some(Err(e))) => return End::ReadFailed(e.to_string()),
                Woke::Socket(Some(Ok(Message::Text(text)))) => {
                    self.count_in((), text.len());
                    // Parsed and checked here, outside the core's lock; only
                    // the push itself goes to the core.
                    let step = match with_session(hosted, &mut session, move |s, log| {
                        s.handle_text(text.as_str(), log)
                    })
                    .await
                    {
                        Ok(step) => step,
                        Err(end) => return end,
                    };
                    match step {
                        SeedStep::Reply(out) => out,
                        SeedStep::Push { request, events } => {
                            let client = session.as_ref().map_or(0, SeedSession::client);
                            hosted.push(client, request, events);
                            continue;
                        }
                    }
                }
                Woke::Socket(Some(Ok(Message::Binary(_)))) => vec![error_json(
                    "malformed",
                    "binary frames are not part of this protocol; send JSON text",
                    None,
                )],
                // Pings are answered by the WebSocket layer.
                Woke::Socket(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            };
            for m in out {
                if let Err(end) = self.send(m).await {
                    return end;
                }
            }
            if let Err(end) = self.broadcast(hosted, &mut session).await {
                return end;
            }
        }
    }

    /// Sends live events until the client has everything in the log. Each
    /// read happens only after the previous send completed, so a client's
    /// backlog stays in the log, not in memory.
    async fn broadcast(
        &mut self,
        hosted: &Arc<Hosted>,
        session: &mut Option<SeedSession>,
    ) -> Result<(), End> {
        loop {
            match with_session(hosted, session, |s, log| s.poll_broadcast(log)).await? {
                Ok(Some(msg)) => self.send(msg).await?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::error!(store = %hosted.name, error = %e.detail(), "reading events for a ws client");
                    let msg = error_json("unavailable", &e.to_string(), None);
                    return self.send(msg).await;
                }
            }
        }
    }

    /// One send, bounded by the send timeout and cut short by the stop
    /// signal.
    async fn send(&mut self, text: String) -> Result<(), End> {
        self.state
            .metrics
            .ws
            .bytes_out_total
            .fetch_add(text.len() as u64, Ordering::Relaxed);
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

    /// Counts `bytes` received; passes `value` through.
    fn count_in<T>(&self, value: T, bytes: usize) -> T {
        self.state
            .metrics
            .ws
            .bytes_in_total
            .fetch_add(bytes as u64, Ordering::Relaxed);
        value
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

/// Runs `f` with the session and the store's log on a blocking thread (the
/// session reads the log), and puts the session back.
async fn with_session<T: Send + 'static>(
    hosted: &Arc<Hosted>,
    session: &mut Option<SeedSession>,
    f: impl FnOnce(&mut SeedSession, &dyn CanonicalLog) -> T + Send + 'static,
) -> Result<T, End> {
    let mut s = session
        .take()
        .ok_or_else(|| End::Internal("no session".into()))?;
    let log = hosted.log.clone();
    let (s, out) = blocking(move || {
        let out = f(&mut s, &*log);
        (s, out)
    })
    .await?;
    *session = Some(s);
    Ok(out)
}

/// The close reason for a refusal: the message of the last error.
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
            "http://127.0.0.2",
            "http://[0:0:0:0:0:0:0:1]:5",
        ] {
            assert!(ok(o, Some("strata.example"), false), "{o}");
            assert!(ok(o, None, true), "{o}");
        }
        for o in [
            "http://128.0.0.1",
            "http://[::2]",
            "http://0x7f.0.0.1",
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
    fn loopback_hosts_are_loopback_names_or_addresses_only() {
        for h in [
            "localhost",
            "LocalHost:80",
            "127.0.0.1:8080",
            "127.9.9.9",
            "[::1]:1",
        ] {
            assert!(is_loopback_authority(h), "{h}");
        }
        for h in [
            "evil.example",
            "127.0.0.1.nip.io",
            "localhost.",
            "[::1",
            "",
            "10.0.0.1:1",
        ] {
            assert!(!is_loopback_authority(h), "{h}");
        }
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
