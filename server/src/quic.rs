//! The QUIC transport: replicas sync over one bidirectional stream per
//! connection, carrying [`strata::sync::wire`] frames (a 4-byte
//! little-endian length, then bincode) both ways. The shell only moves
//! bytes; the protocol is the engine's [`strata::sync::ServerCore`].
//!
//! A connection goes like this:
//!
//! 1. TLS 1.3 handshake with ALPN `strata-sync/1` (see [`crate::tls`]);
//!    a connection over the [`crate::Config::connections_max`] limit gets a
//!    fatal `Unavailable` error instead.
//! 2. The client opens a stream and sends `Hello`. The protocol version
//!    and the token are checked before any store is opened (so
//!    unauthenticated clients cannot make the server create stores), the
//!    store is picked by name, the client is connected to the store's core
//!    ([`crate::registry::Hosted`]) and welcomed.
//! 3. A reader task decodes the client's messages: a push goes to the core
//!    (which answers it after its group commit, through the client's
//!    queue of [`crate::registry::ROUTE_MESSAGES_MAX`] messages), a
//!    `Follow` and the transport's own replies go to the writer. The writer
//!    sends answers first, then, whenever the store's head moves, reads the
//!    next `Records` (raw log records, no re-encoding) or `Events` message
//!    of the follow stream. No lock is held while bytes go to the network,
//!    and a client that does not take a message within [`SEND_TIMEOUT`], or
//!    lets its queue fill, is disconnected: a slow subscriber never stalls
//!    the server or other clients.
//! 4. When either side ends, the core forgets the client (its turn passes
//!    on).
//!
//! A frame that cannot be decoded but whose length prefix was valid gets a
//! non-fatal `Malformed` error (the stream is still in step); a length over
//! the limit is fatal, since what follows cannot be framed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use strata::sync::proto::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use strata::sync::wire;
use strata::sync::{ClientId, ClientInfo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::admission::Pending;
use crate::auth::AuthError;
use crate::metrics::Held;
use crate::registry::Hosted;
use crate::tls::Identity;
use crate::{AppState, DEFAULT_STORE, ServerError};

/// Largest `Hello`: what a client may send before it has authenticated.
/// Read outside [`INBOUND_BYTES_MAX`], so that connections announcing
/// large frames before authenticating take nothing from clients that have.
pub const HELLO_BYTES_MAX: usize = 16 << 10;
/// A client whose stream does not take a message within this is
/// disconnected.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Malformed messages tolerated per connection before it is closed.
pub const MALFORMED_MESSAGES_MAX: u32 = 16;
/// Bytes of client messages being read at once, all connections together
/// (each message reserves its announced length before it is allocated).
pub const INBOUND_BYTES_MAX: usize = 256 << 20;
/// Connections being told "busy" at once; beyond it they are refused
/// without a message.
pub const REFUSALS_MAX: usize = 64;
/// How long refusing a busy client may take.
pub const REFUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for connections to say goodbye.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const _: () = assert!(wire::MESSAGE_BYTES_MAX <= INBOUND_BYTES_MAX);

pub use crate::registry::now_ms;
pub use strata_sync::transport::{
    CLOSE_LINGER, IDLE_TIMEOUT, IDLE_TIMEOUT_MAX, IDLE_TIMEOUT_MIN, KEEP_ALIVES_PER_IDLE_TIMEOUT,
    STREAM_WINDOW_BYTES, UDP_PAYLOAD_BYTES_MAX, close,
};
use strata_sync::transport::{
    Frame, FrameError, SendError, close_gracefully, read_frame, transport_config, write_frame,
};

fn error(code: ErrorCode, message: impl Into<String>, fatal: bool) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        fatal,
    }
}

fn is_fatal(msg: &ServerMessage) -> bool {
    matches!(msg, ServerMessage::Error { fatal: true, .. })
}

// --- the server --------------------------------------------------------------

/// The QUIC endpoint: accepts replicas and drives the sync core.
#[derive(Debug)]
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: String,
    state: Arc<AppState>,
    stop: watch::Receiver<bool>,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    state: Arc<AppState>,
    /// Reserves the bytes of client messages being read.
    inbound: Semaphore,
    /// Busy connections being told so.
    refusals: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl QuicServer {
    /// Binds the endpoint with the server's identity.
    pub fn bind(
        addr: SocketAddr,
        identity: &Identity,
        state: Arc<AppState>,
        stop: watch::Receiver<bool>,
    ) -> Result<QuicServer, ServerError> {
        let tls_err = |e: crate::tls::TlsError| ServerError::Tls(e.to_string());
        let crypto = crate::tls::server_config(identity).map_err(tls_err)?;
        let crypto =
            QuicServerConfig::try_from(crypto).map_err(|e| ServerError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config
            .transport_config(Arc::new(transport_config(IDLE_TIMEOUT)))
            .max_incoming(
                state.config.connections_max + state.config.unauthenticated_max + REFUSALS_MAX,
            );
        let endpoint = quinn::Endpoint::server(config, addr)
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = endpoint.local_addr().map_err(|source| ServerError::Io {
            action: "reading the QUIC address",
            source,
        })?;
        tracing::info!(%addr, fingerprint = %identity.fingerprint, "QUIC sync endpoint bound");
        Ok(QuicServer {
            endpoint,
            addr,
            fingerprint: identity.fingerprint.clone(),
            state,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// SHA-256 of the certificate, lowercase hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Serves until the stop signal, then says goodbye to every client
    /// (a fatal `Unavailable`: retry later), waits briefly for them, and
    /// closes the endpoint.
    pub async fn run(self) {
        let shared = Arc::new(Shared {
            state: self.state.clone(),
            inbound: Semaphore::new(INBOUND_BYTES_MAX),
            refusals: Arc::new(Semaphore::new(REFUSALS_MAX)),
            stop: self.stop.clone(),
        });
        let mut stop = self.stop.clone();
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    // Places for connections that have not authenticated
                    // are their own: a crowd of them never takes the
                    // places of clients that have.
                    match shared.state.admit_unauthenticated(incoming.remote_address().ip()) {
                        Some(pending) => {
                            tasks.spawn(serve_connection(shared.clone(), incoming, pending));
                        }
                        None => {
                            shared.state.metrics.quic.refused_total.fetch_add(1, Ordering::Relaxed);
                            match shared.refusals.clone().try_acquire_owned() {
                                Ok(permit) => {
                                    let message = format!(
                                        "this address has {} connections that have not authenticated yet, its limit; retry later",
                                        shared.state.config.unauthenticated_per_address_max,
                                    );
                                    tasks.spawn(refuse_busy(incoming, message, permit));
                                }
                                Err(_) => incoming.refuse(),
                            }
                        }
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tracing::info!(connections = tasks.len(), "QUIC endpoint stopping");
        // Connections see the stop signal themselves and say goodbye.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        self.endpoint
            .close(VarInt::from_u32(close::SHUTDOWN), b"server shutting down");
        if drained.is_err() {
            // With the endpoint closed every connection ends at once; a task
            // only waits for a core call in progress to finish.
            while tasks.join_next().await.is_some() {}
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
        tracing::info!("QUIC endpoint stopped");
    }
}

/// Tells a client over a connection cap to come back later.
async fn refuse_busy(incoming: quinn::Incoming, message: String, _permit: OwnedSemaphorePermit) {
    let remote = incoming.remote_address();
    tracing::warn!(%remote, %message, "refused a sync connection");
    let refuse = async {
        let conn = incoming.await.ok()?;
        let (mut send, _recv) = conn.accept_bi().await.ok()?;
        let msg = error(ErrorCode::Unavailable, message, true);
        let mut buf = Vec::new();
        write_frame(&mut send, &mut buf, &msg, SEND_TIMEOUT)
            .await
            .ok()?;
        close_gracefully(&conn, &mut send, close::REFUSED, "busy").await;
        Some(())
    };
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, refuse).await;
}

/// How a connection ended, for the log.
#[derive(Debug)]
enum End {
    /// The client finished its stream.
    ClientDone,
    /// A fatal error was sent.
    Refused,
    /// The client did not take messages fast enough.
    Slow,
    Shutdown,
    Failed(String),
}

/// What the reader hands the writer besides the core's answers.
#[derive(Debug)]
enum Local {
    /// A reply of the transport itself (malformed frames, a second Hello).
    Reply(ServerMessage),
    /// The client wants the follow stream from this position on.
    Follow(u64),
}

/// Messages from the reader waiting for the writer.
const LOCAL_MESSAGES_MAX: usize = 8;

/// One connection, from handshake to goodbye.
async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming, pending: Pending) {
    let remote = incoming.remote_address();
    let unauthenticated = Held::new(&shared.state, |m| &m.quic.unauthenticated_open);
    // Everything before authentication, the handshake included, within
    // one deadline.
    let auth_timeout = shared.state.config.auth_timeout;
    let deadline = tokio::time::Instant::now() + auth_timeout;
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "QUIC handshake timed out");
            return;
        }
    };
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "connection ended before a stream");
            return;
        }
        Err(_) => {
            conn.close(VarInt::from_u32(close::REFUSED), b"no stream opened");
            return;
        }
    };
    let mut buf = Vec::new();
    let welcomed = hello(
        &shared, &conn, &mut send, &mut recv, &mut buf, deadline, pending,
    )
    .await;
    let Some(Welcomed {
        hosted,
        id,
        routed,
        permit: _permit,
    }) = welcomed
    else {
        return;
    };
    drop(unauthenticated);
    let _open = Held::new(&shared.state, |m| &m.quic.connections_open);
    shared
        .state
        .metrics
        .quic
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(%remote, store = %hosted.name, client = id, "replica connected");
    let (local_tx, local_rx) = mpsc::channel(LOCAL_MESSAGES_MAX);
    let reader = tokio::spawn(read_loop(
        recv,
        shared.clone(),
        hosted.clone(),
        id,
        local_tx,
    ));
    let end = write_loop(&mut send, &mut buf, &shared, &hosted, routed, local_rx).await;
    match &end {
        End::ClientDone => close_gracefully(&conn, &mut send, close::DONE, "done").await,
        End::Refused => close_gracefully(&conn, &mut send, close::REFUSED, "refused").await,
        End::Shutdown => {
            close_gracefully(&conn, &mut send, close::SHUTDOWN, "server shutting down").await
        }
        End::Slow => conn.close(VarInt::from_u32(close::SLOW), b"too slow"),
        End::Failed(_) => conn.close(VarInt::from_u32(close::REFUSED), b"failed"),
    }
    // The reader ends with the connection; the core forgets the client
    // only after its last message was handed over.
    let _ = reader.await;
    hosted.disconnect(id);
    match end {
        End::Failed(reason) => {
            tracing::warn!(%remote, store = %hosted.name, client = id, %reason, "replica disconnected")
        }
        End::Slow => {
            tracing::warn!(%remote, store = %hosted.name, client = id, timeout = ?SEND_TIMEOUT, "replica too slow; disconnected")
        }
        other => {
            tracing::info!(%remote, store = %hosted.name, client = id, end = ?other, "replica disconnected")
        }
    }
}

/// A client past `Hello`: connected to its store's core, holding a place
/// among authenticated connections.
struct Welcomed {
    hosted: Arc<Hosted>,
    id: ClientId,
    routed: mpsc::Receiver<ServerMessage>,
    permit: OwnedSemaphorePermit,
}

/// Reads `Hello` (at most [`HELLO_BYTES_MAX`], by `deadline`), checks the
/// protocol and the token, takes a place among authenticated connections,
/// opens the store and welcomes the client. `None` when the connection is
/// over.
///
/// The connection may be evicted from its waiting place (`pending`) only
/// while its `Hello` has not arrived: once the server has read it, the
/// answer is the token's, never a cancelled store open.
async fn hello(
    shared: &Shared,
    conn: &Connection,
    send: &mut SendStream,
    recv: &mut RecvStream,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
    pending: Pending,
) -> Option<Welcomed> {
    let remote = conn.remote_address();
    let refuse = |code, message: String| error(code, message, true);
    let bytes_in = &shared.state.metrics.quic.bytes_in_total;
    let first = tokio::select! {
        first = tokio::time::timeout_at(
            deadline,
            read_frame::<ClientMessage>(recv, HELLO_BYTES_MAX, None, Some(bytes_in)),
        ) => first,
        () = pending.evicted() => {
            let msg = refuse(
                ErrorCode::Unavailable,
                "too many connections are waiting to authenticate; send Hello at once after connecting, and retry".into(),
            );
            refuse_connection(conn, send, buf, msg).await;
            return None;
        }
    };
    drop(pending);
    let hello = match first {
        Err(_) => Err(refuse(
            ErrorCode::Unexpected,
            format!(
                "no Hello within {:?} of connecting",
                shared.state.config.auth_timeout
            ),
        )),
        Ok(Err(e @ FrameError::TooLarge { .. })) => Err(refuse(
            ErrorCode::TooLarge,
            format!("{e}: Hello is small; send it first"),
        )),
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "connection ended before Hello");
            return None;
        }
        Ok(Ok(Frame::Malformed(reason))) => Err(refuse(ErrorCode::Malformed, reason)),
        Ok(Ok(Frame::Message(ClientMessage::Hello {
            protocol,
            store,
            token,
            client,
        }))) => {
            let name = if store.is_empty() {
                DEFAULT_STORE.to_owned()
            } else {
                store
            };
            // Checked before a store is opened (or created) for a client
            // that could not use it anyway.
            if protocol != PROTOCOL_VERSION {
                Err(refuse(
                    ErrorCode::Version,
                    format!(
                        "this server speaks sync protocol {PROTOCOL_VERSION}, not {protocol}; upgrade the client or the server"
                    ),
                ))
            } else {
                match shared.state.check(token.as_deref(), &name, remote.ip()) {
                    Ok(grant) => Ok((name, client, grant)),
                    // Waiting out the throttle is the remedy: retryable.
                    Err(e @ AuthError::TooManyFailures { .. }) => {
                        Err(refuse(ErrorCode::Unavailable, e.to_string()))
                    }
                    Err(e) => Err(refuse(ErrorCode::Unauthorized, e.to_string())),
                }
            }
        }
        Ok(Ok(Frame::Message(_))) => Err(refuse(ErrorCode::Unexpected, "send Hello first".into())),
    };
    let (name, client, grant) = match hello {
        Ok(h) => h,
        Err(msg) => {
            refuse_connection(conn, send, buf, msg).await;
            return None;
        }
    };
    let Ok(permit) = shared.state.connections.clone().try_acquire_owned() else {
        shared
            .state
            .metrics
            .quic
            .refused_total
            .fetch_add(1, Ordering::Relaxed);
        let max = shared.state.config.connections_max;
        tracing::warn!(%remote, max, "refused a sync connection: at the connection limit");
        let msg = refuse(
            ErrorCode::Unavailable,
            format!("the server is at its limit of {max} sync connections; retry later"),
        );
        refuse_connection(conn, send, buf, msg).await;
        return None;
    };
    // A grant to write may create the store; a grant to read only opens
    // one that exists.
    let registry = shared.state.registry.clone();
    let opened = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || registry.open_for_sync(&name, grant.write)).await
    };
    let (hosted, head) = match opened {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            let msg = refuse(
                ErrorCode::Unauthorized,
                format!("no store {name:?} here, and this token may only read, not create it"),
            );
            refuse_connection(conn, send, buf, msg).await;
            return None;
        }
        Ok(Err(e)) => {
            let code = match e {
                ServerError::BadStoreName { .. } => ErrorCode::Malformed,
                _ => ErrorCode::Unavailable,
            };
            tracing::info!(%remote, store = %name.chars().take(80).collect::<String>(), error = %e, "sync connection refused");
            refuse_connection(conn, send, buf, refuse(code, e.to_string())).await;
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "opening a store panicked");
            conn.close(VarInt::from_u32(close::REFUSED), b"internal error");
            return None;
        }
    };
    let client: String = client.chars().take(strata::hlc::NODE_BYTES_MAX).collect();
    let (id, routed) = hosted.connect(ClientInfo {
        name: client,
        may_write: grant.write,
    });
    let welcome = ServerMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        store_id: hosted.log.store_id(),
        head,
    };
    if send_message(shared, send, buf, &welcome).await.is_err() {
        conn.close(VarInt::from_u32(close::REFUSED), b"failed");
        hosted.disconnect(id);
        return None;
    }
    Some(Welcomed {
        hosted,
        id,
        routed,
        permit,
    })
}

/// [`write_frame`] with [`SEND_TIMEOUT`], counting the bytes sent.
async fn send_message(
    shared: &Shared,
    send: &mut SendStream,
    buf: &mut Vec<u8>,
    msg: &ServerMessage,
) -> Result<(), SendError> {
    write_frame(send, buf, msg, SEND_TIMEOUT).await?;
    shared
        .state
        .metrics
        .quic
        .bytes_out_total
        .fetch_add(buf.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Sends a fatal refusal and closes the connection.
async fn refuse_connection(
    conn: &Connection,
    send: &mut SendStream,
    buf: &mut Vec<u8>,
    msg: ServerMessage,
) {
    tracing::info!(remote = %conn.remote_address(), reply = ?msg, "sync connection refused");
    let _ = write_frame(send, buf, &msg, SEND_TIMEOUT).await;
    close_gracefully(conn, send, close::REFUSED, "refused").await;
}

/// Decodes the client's messages: pushes go to the store's core, follow
/// requests and the transport's own replies to the writer. Ends when the
/// client finishes or fails, after a fatal reply, or when the writer is
/// gone.
async fn read_loop(
    mut recv: RecvStream,
    shared: Arc<Shared>,
    hosted: Arc<Hosted>,
    id: ClientId,
    local: mpsc::Sender<Local>,
) {
    let mut malformed = 0u32;
    loop {
        let read = read_frame::<ClientMessage>(
            &mut recv,
            wire::MESSAGE_BYTES_MAX,
            Some(&shared.inbound),
            Some(&shared.state.metrics.quic.bytes_in_total),
        );
        let reply = match read.await {
            Ok(Frame::Message(ClientMessage::Push {
                request, events, ..
            })) => {
                hosted.push(id, request, events);
                continue;
            }
            Ok(Frame::Message(ClientMessage::Follow { from })) => Local::Follow(from),
            Ok(Frame::Message(ClientMessage::Hello { .. })) => Local::Reply(error(
                ErrorCode::Unexpected,
                "Hello was already answered",
                false,
            )),
            Ok(Frame::Malformed(reason)) => {
                malformed += 1;
                let fatal = malformed > MALFORMED_MESSAGES_MAX;
                tracing::debug!(client = id, %reason, malformed, "malformed sync message");
                Local::Reply(error(ErrorCode::Malformed, reason, fatal))
            }
            Err(e @ FrameError::TooLarge { .. }) => {
                Local::Reply(error(ErrorCode::TooLarge, e.to_string(), true))
            }
            Err(FrameError::Finished) => return,
            Err(e) => {
                tracing::debug!(client = id, error = %e, "sync stream ended");
                return;
            }
        };
        let fatal = matches!(&reply, Local::Reply(m) if is_fatal(m));
        if local.send(reply).await.is_err() || fatal {
            return;
        }
    }
}

/// Sends the core's answers and the transport's replies first, then the
/// follow stream, one message at a time: the next log read happens only
/// once the previous message was sent, so a slow client's backlog stays in
/// the log.
async fn write_loop(
    send: &mut SendStream,
    buf: &mut Vec<u8>,
    shared: &Shared,
    hosted: &Arc<Hosted>,
    mut routed: mpsc::Receiver<ServerMessage>,
    mut local: mpsc::Receiver<Local>,
) -> End {
    let mut stop = shared.stop.clone();
    let mut head = hosted.head.clone();
    let config = shared.state.registry.sync_config();
    let (max_events, max_bytes) = (config.message_events_max, config.message_bytes_max);
    let mut follow: Option<u64> = None;
    let failed = |e: SendError| match e {
        SendError::Timeout(_) => End::Slow,
        other => End::Failed(other.to_string()),
    };
    loop {
        if *stop.borrow() {
            let bye = error(
                ErrorCode::Unavailable,
                "the server is shutting down; retry later",
                true,
            );
            let _ = send_message(shared, send, buf, &bye).await;
            return End::Shutdown;
        }
        let next = match routed.try_recv() {
            Ok(msg) => Some(msg),
            // The store dropped the route: the client did not keep up.
            Err(mpsc::error::TryRecvError::Disconnected) => return End::Slow,
            Err(mpsc::error::TryRecvError::Empty) => match local.try_recv() {
                Ok(Local::Reply(msg)) => Some(msg),
                Ok(Local::Follow(from)) => {
                    follow = Some(from.max(1));
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return End::ClientDone,
                Err(mpsc::error::TryRecvError::Empty) => None,
            },
        };
        if let Some(msg) = next {
            if let Err(e) = send_message(shared, send, buf, &msg).await {
                return failed(e);
            }
            if is_fatal(&msg) {
                return End::Refused;
            }
            continue;
        }
        // Mark the head seen before looking, so a move after the look
        // wakes us below.
        let committed = *head.borrow_and_update();
        if let Some(from) = follow.filter(|&f| f <= committed) {
            let log = hosted.log.clone();
            let read =
                tokio::task::spawn_blocking(move || match log.read_records(from, max_bytes)? {
                    Some(run) => Ok(Some(ServerMessage::from(run))),
                    None => {
                        let events = log.read(from, max_events, max_bytes)?;
                        Ok::<_, strata::sync::StorageError>(
                            (!events.is_empty()).then_some(ServerMessage::Events { events }),
                        )
                    }
                })
                .await;
            match read {
                Ok(Ok(Some(msg))) => {
                    follow = Some(match &msg {
                        ServerMessage::Records {
                            first_position,
                            count,
                            ..
                        } => first_position + u64::from(*count),
                        ServerMessage::Events { events } => {
                            events.last().map_or(from, |e| e.position + 1)
                        }
                        _ => from,
                    });
                    if let Err(e) = send_message(shared, send, buf, &msg).await {
                        return failed(e);
                    }
                    continue;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::error!(store = %hosted.name, error = %e.detail(), "reading the log for a replica failed");
                    let msg = error(
                        ErrorCode::Internal,
                        "the server could not read its log; retry later",
                        true,
                    );
                    let _ = send_message(shared, send, buf, &msg).await;
                    return End::Refused;
                }
                Err(e) => return End::Failed(format!("reading the log panicked: {e}")),
            }
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return End::Shutdown;
                }
            }
            msg = routed.recv() => match msg {
                Some(msg) => {
                    if let Err(e) = send_message(shared, send, buf, &msg).await {
                        return failed(e);
                    }
                    if is_fatal(&msg) {
                        return End::Refused;
                    }
                }
                None => return End::Slow,
            },
            msg = local.recv() => match msg {
                Some(Local::Reply(msg)) => {
                    if let Err(e) = send_message(shared, send, buf, &msg).await {
                        return failed(e);
                    }
                    if is_fatal(&msg) {
                        return End::Refused;
                    }
                }
                Some(Local::Follow(from)) => follow = Some(from.max(1)),
                None => return End::ClientDone,
            },
            // Only a following client wakes on commits.
            moved = head.changed(), if follow.is_some() => {
                if moved.is_err() {
                    // The store is closing.
                    return End::Shutdown;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata::sync::proto::{PROTOCOL_VERSION, Proposal};

    struct TestServer {
        addr: SocketAddr,
        fingerprint: String,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), ServerError>>,
        _data: tempfile::TempDir,
    }

    async fn start(connections_max: usize) -> TestServer {
        let data = tempfile::tempdir().unwrap();
        let mut config = crate::Config::new(
            data.path().to_path_buf(),
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.1:0".parse().unwrap()),
        );
        config.connections_max = connections_max;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(
            config,
            move |b: &crate::Bound| {
                let _ = ready_tx.send((b.quic.unwrap(), b.fingerprint.clone().unwrap()));
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let (addr, fingerprint) = ready_rx.await.unwrap();
        TestServer {
            addr,
            fingerprint,
            stop: Some(stop),
            task,
            _data: data,
        }
    }

    impl TestServer {
        async fn stop(mut self) {
            self.stop.take().unwrap().send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    async fn connect(s: &TestServer) -> (quinn::Endpoint, Connection, SendStream, RecvStream) {
        let tls =
            crate::tls::client_config(&crate::tls::Trust::Pin(s.fingerprint.clone())).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.config).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                s.addr,
                "localhost",
            )
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        (endpoint, conn, send, recv)
    }

    async fn send(send: &mut SendStream, msg: &ClientMessage) {
        let mut buf = Vec::new();
        write_frame(send, &mut buf, msg, SEND_TIMEOUT)
            .await
            .unwrap();
    }

    async fn recv(recv: &mut RecvStream) -> ServerMessage {
        match tokio::time::timeout(
            Duration::from_secs(10),
            read_frame(recv, wire::MESSAGE_BYTES_MAX, None, None),
        )
        .await
        {
            Ok(Ok(Frame::Message(m))) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn hello() -> ClientMessage {
        ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            store: String::new(),
            token: None,
            client: "t".into(),
        }
    }

    /// A client of another protocol version is refused before its store
    /// is opened: it cannot create one it could not use.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_protocol_version_is_refused_before_any_store_is_made() {
        let server = start(16).await;
        let (_ep, _conn, mut tx, mut rx) = connect(&server).await;
        send(
            &mut tx,
            &ClientMessage::Hello {
                protocol: PROTOCOL_VERSION + 1,
                store: "newer".into(),
                token: None,
                client: "t".into(),
            },
        )
        .await;
        match recv(&mut rx).await {
            ServerMessage::Error {
                code: ErrorCode::Version,
                fatal: true,
                message,
            } => assert!(message.contains("upgrade"), "{message}"),
            other => panic!("expected a Version error, got {other:?}"),
        }
        assert!(!server._data.path().join("newer").exists());
        server.stop().await;
    }

    /// Bounded input: a frame that does not decode gets a non-fatal
    /// `Malformed` error and the stream goes on; a length over the limit is
    /// fatal, before anything is allocated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_frames_are_answered_and_oversized_ones_end_the_connection() {
        let server = start(16).await;
        // Before Hello, anything else is refused for good.
        let (_ep, _conn, mut tx, mut rx) = connect(&server).await;
        send(&mut tx, &ClientMessage::Follow { from: 1 }).await;
        assert!(matches!(
            recv(&mut rx).await,
            ServerMessage::Error {
                code: ErrorCode::Unexpected,
                fatal: true,
                ..
            }
        ));

        let (_ep, _conn, mut tx, mut rx) = connect(&server).await;
        send(&mut tx, &hello()).await;
        assert!(matches!(
            recv(&mut rx).await,
            ServerMessage::Welcome { head: 0, .. }
        ));
        tx.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            recv(&mut rx).await,
            ServerMessage::Error {
                code: ErrorCode::Malformed,
                fatal: false,
                ..
            }
        ));
        // Still in step: a push goes through and its event streams back.
        send(&mut tx, &ClientMessage::Follow { from: 1 }).await;
        let event = Proposal {
            event_id: strata::Uuid::now_v7(),
            aggregate_id: "a".into(),
            version: 1,
            event_type: "T".into(),
            data: b"{}".to_vec(),
            timestamp: strata::Timestamp::from_parts(now_ms(), 0, "t").unwrap(),
            metadata: None,
        };
        send(
            &mut tx,
            &ClientMessage::Push {
                request: 1,
                base: 0,
                events: vec![event],
            },
        )
        .await;
        let (mut accepted, mut records) = (false, false);
        while !(accepted && records) {
            match recv(&mut rx).await {
                ServerMessage::Accepted {
                    request: 1, placed, ..
                } => {
                    assert_eq!(placed[0].position, 1);
                    accepted = true;
                }
                ServerMessage::Records {
                    first_position: 1,
                    count: 1,
                    ..
                } => records = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        tx.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert!(matches!(
            recv(&mut rx).await,
            ServerMessage::Error {
                code: ErrorCode::TooLarge,
                fatal: true,
                ..
            }
        ));
        server.stop().await;
    }

    /// S6 over QUIC: an event id already in the log with other content is a
    /// rejection naming the id and what differs, never an acceptance; the
    /// same content is a retry, answered with the first position.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_id_reused_with_other_content_is_rejected() {
        let server = start(16).await;
        let (_ep, _conn, mut tx, mut rx) = connect(&server).await;
        send(&mut tx, &hello()).await;
        assert!(matches!(recv(&mut rx).await, ServerMessage::Welcome { .. }));
        let original = Proposal {
            event_id: strata::Uuid::now_v7(),
            aggregate_id: "a".into(),
            version: 1,
            event_type: "T".into(),
            data: br#"{"n": 1}"#.to_vec(),
            timestamp: strata::Timestamp::from_parts(now_ms(), 0, "t").unwrap(),
            metadata: None,
        };
        let push = |request, events| ClientMessage::Push {
            request,
            base: 0,
            events,
        };
        send(&mut tx, &push(1, vec![original.clone()])).await;
        assert!(matches!(
            recv(&mut rx).await,
            ServerMessage::Accepted { request: 1, .. }
        ));
        let changed = Proposal {
            data: br#"{"n": 2}"#.to_vec(),
            version: 2,
            ..original.clone()
        };
        send(&mut tx, &push(2, vec![changed])).await;
        match recv(&mut rx).await {
            ServerMessage::Rejected {
                request: 2,
                rejections,
            } => {
                assert_eq!(rejections[0].0, original.event_id);
                assert!(rejections[0].1.contains("event_data"), "{rejections:?}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert!(matches!(
            recv(&mut rx).await,
            ServerMessage::Accepted { request: 2, placed, head: 1 } if placed.is_empty()
        ));
        send(&mut tx, &push(3, vec![original.clone()])).await;
        assert!(matches!(
            recv(&mut rx).await,
            ServerMessage::Accepted { request: 3, placed, head: 1 } if placed[0].position == 1
        ));
        server.stop().await;
    }

    /// Bounded connections: beyond `connections_max`, a client is told to
    /// come back later instead of being served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_over_the_connection_limit_gets_unavailable() {
        let server = start(1).await;
        let (_ep1, _conn1, mut tx1, mut rx1) = connect(&server).await;
        send(&mut tx1, &hello()).await;
        assert!(matches!(
            recv(&mut rx1).await,
            ServerMessage::Welcome { .. }
        ));
        let (_ep2, _conn2, mut tx2, mut rx2) = connect(&server).await;
        send(&mut tx2, &hello()).await;
        assert!(matches!(
            recv(&mut rx2).await,
            ServerMessage::Error {
                code: ErrorCode::Unavailable,
                fatal: true,
                ..
            }
        ));
        // On shutdown, connected clients are told to retry later.
        let stopping = tokio::spawn(server.stop());
        assert!(matches!(
            recv(&mut rx1).await,
            ServerMessage::Error {
                code: ErrorCode::Unavailable,
                fatal: true,
                ..
            }
        ));
        stopping.await.unwrap();
    }
}
