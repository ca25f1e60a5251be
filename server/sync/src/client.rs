//! The replica side of sync over QUIC: a shell that moves bytes between a
//! server and the engine's [`ReplicaCore`], with a [`Replica`] as its
//! storage.
//!
//! # Brief overview
//!
//! * [`sync_until_idle`]: connect, pull and push until nothing is pending
//!   and the server's head is reached, then close. What `strata sync` does.
//! * [`run`]: stay connected, push local appends as they happen (the
//!   replica's [`Replica::on_change`] hook wakes the shell), and reconnect
//!   with exponential backoff and jitter after any transient error. The
//!   outbox is durable, so after a reconnect it drains by itself.
//! * [`spawn_background`]: [`run`] on a thread of its own with its own
//!   runtime, for applications without async code; [`BackgroundSync`]
//!   gives the [`SyncStatus`] and stops it.
//!
//! Every storage call runs on a blocking thread (appends sync to disk).
//! The core is sans-IO: this module gives it the system clock and the
//! connection's events, and sends what it asks to send. While a storage
//! call runs, a reader task keeps reading ahead (a bounded
//! [`INBOUND_MESSAGES_MAX`] messages), so bulk catch-up overlaps network
//! and disk.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, VarInt};
use strata::sync::proto::{ClientMessage, ErrorCode, ServerMessage};
use strata::sync::{Replica, ReplicaConfig, ReplicaCore, ReplicaStorage, SyncError, SyncStatus};
use tokio::sync::{Notify, mpsc, watch};

use crate::now_ms;
use crate::tls::{self, FingerprintMismatch, MismatchSlot, TlsError, Trust};
use crate::transport::{self as quic, Frame, FrameError, close, read_frame, write_frame};

/// Longest a connection attempt (UDP, QUIC and TLS handshakes) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientOptions::request_timeout`].
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// First wait before reconnecting.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default [`ClientOptions::backoff_max`].
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(10);
/// Server messages read ahead while the replica stores earlier ones.
pub const INBOUND_MESSAGES_MAX: usize = 8;
/// Default TLS name of the server (the self-signed certificate holds it).
pub const SERVER_NAME_DEFAULT: &str = "localhost";

const _: () = assert!(BACKOFF_MIN.as_millis() <= BACKOFF_MAX_DEFAULT.as_millis());

/// Where and how to sync.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `host:port` or `ip:port` of the server's QUIC endpoint (a `quic://`
    /// prefix, as the server prints it, is accepted). Several nodes of one
    /// deployment (a PostgreSQL backend), separated by commas: a
    /// connection goes to the first, and after each failure [`run`] tries
    /// the next. A name that resolves to several addresses is taken the
    /// same way.
    pub server: String,
    /// Name checked against the certificate with [`Trust::CaFile`] (and
    /// sent as SNI). Default `localhost`.
    pub server_name: String,
    /// Hosted store to follow. Default `default`.
    pub store: String,
    pub token: Option<String>,
    pub trust: Trust,
    /// A push without an answer for this long ends the connection. Default
    /// 30 s.
    pub request_timeout: Duration,
    /// Longest wait between reconnection attempts in [`run`]. Default 10 s.
    pub backoff_max: Duration,
    /// Name in the server's logs. Default: the replica's HLC node id.
    pub client_name: Option<String>,
    /// A connection without any packet from the server for this long is
    /// dead (keep-alives go every third of it). Default 30 s.
    pub idle_timeout: Duration,
    /// Push only while the replica holds everything the server had when
    /// last heard from. Default off: the server accepts pushes from a
    /// replica that is behind as long as no aggregate they touch moved, so
    /// waiting is only slower. It exists to measure that choice (`strata
    /// bench --only sync_push_contention`).
    pub pull_before_push: bool,
    /// Most events in one push. Default
    /// [`strata::sync::replica::PUSH_EVENTS_MAX_DEFAULT`].
    pub push_events_max: usize,
}

impl ClientOptions {
    /// Defaults for a server address and a trust setting.
    pub fn new(server: impl Into<String>, trust: Trust) -> ClientOptions {
        ClientOptions {
            server: server.into(),
            server_name: SERVER_NAME_DEFAULT.to_owned(),
            store: crate::DEFAULT_STORE.to_owned(),
            token: None,
            trust,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            client_name: None,
            idle_timeout: quic::IDLE_TIMEOUT,
            pull_before_push: false,
            push_events_max: strata::sync::replica::PUSH_EVENTS_MAX_DEFAULT,
        }
    }
}

/// What a sync did, counted by the shell.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Connections that reached `Welcome`.
    pub connections: u64,
    /// Connection attempts that failed or ended in an error.
    pub failures: u64,
    pub pushes: u64,
    pub pushed_events: u64,
    /// Events the server placed in answer to our pushes.
    pub accepted_events: u64,
    /// Pushes refused because an aggregate had moved (Y5): each one is a
    /// pull, a rebase and a retry.
    pub pull_required: u64,
    /// Events the server refused for good.
    pub rejected_events: u64,
    /// Committed events received (`Records` and `Events`).
    pub received_events: u64,
    pub received_messages: u64,
    /// The last transient error, if any.
    pub last_error: Option<String>,
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("bad sync options: {0}")]
    Options(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    FingerprintMismatch(#[from] FingerprintMismatch),
    #[error("cannot resolve {server:?}: {reason}")]
    Resolve { server: String, reason: String },
    #[error("cannot reach the sync server at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the connection to {addr} ended: {reason}")]
    ConnectionLost { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("the sync runtime failed: {0}")]
    Runtime(String),
}

impl ClientError {
    /// Errors a retry cannot fix: wrong settings, wrong credentials, a
    /// server that is not the one pinned, a replica of another store, or
    /// local storage that failed.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Options(_)
            | ClientError::Tls(_)
            | ClientError::FingerprintMismatch(_)
            | ClientError::Runtime(_) => true,
            ClientError::Resolve { .. }
            | ClientError::Unreachable { .. }
            | ClientError::ConnectionLost { .. } => false,
            ClientError::Sync(e) => match e {
                SyncError::Refused { code, .. } => matches!(
                    code,
                    ErrorCode::Unauthorized
                        | ErrorCode::Version
                        | ErrorCode::TooLarge
                        | ErrorCode::Malformed
                ),
                SyncError::WrongStore { .. }
                | SyncError::Version { .. }
                | SyncError::ServerBehind { .. }
                | SyncError::Storage(_) => true,
                SyncError::Timeout(_) | SyncError::Unexpected(_) => false,
                _ => false,
            },
        }
    }

    /// The server could not be reached or went away (exit code 3 in the
    /// CLI).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::Resolve { .. }
                | ClientError::Unreachable { .. }
                | ClientError::ConnectionLost { .. }
        ) || matches!(
            self,
            ClientError::Sync(
                SyncError::Timeout(_)
                    | SyncError::Refused {
                        code: ErrorCode::Unavailable,
                        ..
                    }
            )
        )
    }
}

/// How a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    Idle,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    UntilIdle,
    Forever,
}

/// What woke a session up.
#[derive(Debug)]
enum Input {
    Stop,
    Frame(Option<Result<Frame<ServerMessage>, String>>),
    Changed,
    Timeout,
}

/// What the core said after one input.
#[derive(Debug)]
struct Step {
    out: Vec<ClientMessage>,
    /// When the core wants `handle_timeout` (ms since the epoch).
    timeout_ms: Option<u64>,
    idle: bool,
    welcomed: bool,
}

/// A sync client for one replica. [`sync_until_idle`], [`run`] and
/// [`spawn_background`] wrap it; use it directly to read the status or the
/// report while it runs.
pub struct SyncClient {
    replica: Arc<Replica>,
    opts: ClientOptions,
    core: Arc<Mutex<ReplicaCore>>,
    report: Mutex<SyncReport>,
    tls: Arc<QuicClientConfig>,
    mismatch: Option<MismatchSlot>,
    /// Woken by the replica's change hook.
    changed: Arc<Notify>,
    /// The server's head as last heard, for [`ClientOptions::pull_before_push`].
    server_head: Arc<AtomicU64>,
    /// Which of the server's addresses the next connection goes to
    /// (counts failures; taken modulo the number of addresses).
    next_address: AtomicUsize,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("server", &self.opts.server)
            .field("store", &self.opts.store)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SyncClient {
    /// Checks the options, builds the TLS configuration and hooks into the
    /// replica's local appends.
    pub fn new(replica: Arc<Replica>, opts: ClientOptions) -> Result<SyncClient, ClientError> {
        if opts.server.is_empty() {
            return Err(ClientError::Options(
                "the server address is empty; pass host:port".into(),
            ));
        }
        if opts.request_timeout.is_zero() {
            return Err(ClientError::Options(
                "request_timeout must be above zero".into(),
            ));
        }
        if !(quic::IDLE_TIMEOUT_MIN..=quic::IDLE_TIMEOUT_MAX).contains(&opts.idle_timeout) {
            return Err(ClientError::Options(format!(
                "idle_timeout must be between {:?} and {:?}",
                quic::IDLE_TIMEOUT_MIN,
                quic::IDLE_TIMEOUT_MAX
            )));
        }
        if opts.push_events_max == 0 {
            return Err(ClientError::Options(
                "push_events_max must be above zero".into(),
            ));
        }
        if opts.backoff_max < BACKOFF_MIN {
            return Err(ClientError::Options(format!(
                "backoff_max must be at least {BACKOFF_MIN:?}"
            )));
        }
        crate::check_store_name(&opts.store).map_err(|e| ClientError::Options(e.to_string()))?;
        let client_tls = tls::client_config(&opts.trust)?;
        let crypto = QuicClientConfig::try_from(client_tls.config)
            .map_err(|e| ClientError::Options(format!("TLS: {e}")))?;
        let client = opts
            .client_name
            .clone()
            .unwrap_or_else(|| replica.committed().hlc().node().as_str().to_owned());
        let mut config = ReplicaConfig::new(opts.store.clone(), client);
        config.token = opts.token.clone();
        config.request_timeout_ms = opts.request_timeout.as_millis() as u64;
        config.push_events_max = opts.push_events_max;
        let core = ReplicaCore::new(config);
        let changed = Arc::new(Notify::new());
        // A weak reference: the hook outlives this client (hooks cannot be
        // removed) but must not keep it alive.
        let weak: Weak<Notify> = Arc::downgrade(&changed);
        replica.on_change(move || {
            if let Some(n) = weak.upgrade() {
                n.notify_one();
            }
        });
        Ok(SyncClient {
            replica,
            opts,
            core: Arc::new(Mutex::new(core)),
            report: Mutex::new(SyncReport::default()),
            tls: Arc::new(crypto),
            mismatch: client_tls.mismatch,
            changed,
            server_head: Arc::new(AtomicU64::new(0)),
            next_address: AtomicUsize::new(0),
        })
    }

    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The sync status now. It may wait for a storage call in progress (an
    /// append and its sync): from async code, prefer a blocking thread.
    pub fn status(&self) -> SyncStatus {
        let core = lock(&self.core);
        core.status(&self.replica.storage(), now_ms())
    }

    /// What this client did so far.
    pub fn report(&self) -> SyncReport {
        lock(&self.report).clone()
    }

    fn count(&self, f: impl FnOnce(&mut SyncReport)) {
        f(&mut lock(&self.report));
    }

    /// One connection, until the replica is idle and caught up.
    pub async fn sync_until_idle(&self) -> Result<SyncReport, ClientError> {
        let addr = self.resolve().await?;
        let endpoint = client_endpoint(addr)?;
        let (_keep, mut never) = watch::channel(false);
        let result = self
            .session(&endpoint, addr, Mode::UntilIdle, &mut never)
            .await;
        // Let the close reach the server (the caller may drop the runtime
        // next); a connection that never came up has nothing to say.
        if !matches!(
            result,
            Err(ClientError::Unreachable { .. } | ClientError::FingerprintMismatch(_))
        ) {
            let _ = tokio::time::timeout(quic::CLOSE_LINGER, endpoint.wait_idle()).await;
        }
        if let Err(e) = &result {
            self.count(|r| {
                r.failures += 1;
                r.last_error = Some(e.to_string());
            });
        }
        result.map(|_| self.report())
    }

    /// Stays connected until `stop` turns true, reconnecting with
    /// exponential backoff and jitter after transient errors. Returns an
    /// error only for permanent ones (see [`ClientError::is_permanent`]).
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<(), ClientError> {
        let mut backoff = BACKOFF_MIN;
        let mut jitter = Jitter::new();
        let mut endpoint: Option<(bool, Endpoint)> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let connections = self.report().connections;
            let result = match self.resolve().await {
                Ok(addr) => {
                    let v6 = addr.is_ipv6();
                    if endpoint.as_ref().is_none_or(|(is_v6, _)| *is_v6 != v6) {
                        endpoint = client_endpoint(addr).ok().map(|ep| (v6, ep));
                    }
                    match &endpoint {
                        Some((_, ep)) => self.session(ep, addr, Mode::Forever, &mut stop).await,
                        None => Err(ClientError::Unreachable {
                            addr,
                            reason: "cannot open a UDP socket".into(),
                        }),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => break,
                Err(e) if e.is_permanent() => {
                    tracing::error!(error = %e, "sync stopped");
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sync interrupted; reconnecting");
                    // The next attempt goes to the next address, if any.
                    self.next_address.fetch_add(1, Ordering::Relaxed);
                    self.count(|r| {
                        r.failures += 1;
                        r.last_error = Some(e.to_string());
                    });
                }
            }
            if self.report().connections > connections {
                // The connection worked for a while: start over.
                backoff = BACKOFF_MIN;
            }
            let wait = jitter.apply(backoff);
            backoff = (backoff * 2).min(self.opts.backoff_max);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut stop) => break,
            }
        }
        if let Some((_, ep)) = endpoint {
            ep.close(VarInt::from_u32(close::DONE), b"done");
            let _ = tokio::time::timeout(quic::CLOSE_LINGER, ep.wait_idle()).await;
        }
        Ok(())
    }

    /// The address the next connection goes to: of all the addresses of
    /// [`ClientOptions::server`], in order, the one after as many failures
    /// as there were.
    async fn resolve(&self) -> Result<SocketAddr, ClientError> {
        let server = &self.opts.server;
        let resolve_err = |reason: String| ClientError::Resolve {
            server: server.clone(),
            reason,
        };
        let mut all = Vec::new();
        for entry in server.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            // The server prints its endpoint as `quic://host:port`; take
            // that form too.
            let bare = entry
                .strip_prefix("quic://")
                .unwrap_or(entry)
                .trim_end_matches('/');
            if let Ok(addr) = bare.parse::<SocketAddr>() {
                all.push(addr);
                continue;
            }
            let addrs = tokio::net::lookup_host(bare)
                .await
                .map_err(|e| resolve_err(format!("{bare}: {e}; use host:port")))?;
            all.extend(addrs);
        }
        if all.is_empty() {
            return Err(resolve_err("no address".into()));
        }
        Ok(all[self.next_address.load(Ordering::Relaxed) % all.len()])
    }

    /// Runs `f` on the core and the replica's storage on a blocking thread
    /// and collects what the core wants to send.
    async fn drive<F>(&self, f: F) -> Result<Step, ClientError>
    where
        F: FnOnce(&mut ReplicaCore, &mut dyn ReplicaStorage, u64) -> Result<(), SyncError>
            + Send
            + 'static,
    {
        let core = self.core.clone();
        let replica = self.replica.clone();
        let strict = self.opts.pull_before_push.then(|| self.server_head.clone());
        tokio::task::spawn_blocking(move || {
            let mut core = lock(&core);
            let mut storage = replica.storage();
            let now = now_ms();
            let result = match strict {
                Some(server_head) => {
                    let mut strict = PullBeforePush {
                        inner: &mut storage,
                        server_head,
                    };
                    f(&mut core, &mut strict, now)
                }
                None => f(&mut core, &mut storage, now),
            };
            let mut out = Vec::new();
            while let Some(m) = core.poll_transmit() {
                out.push(m);
            }
            result?;
            Ok(Step {
                out,
                timeout_ms: core.poll_timeout(),
                idle: core.is_idle(&storage),
                welcomed: core.status(&storage, now).connected,
            })
        })
        .await
        .map_err(|e| ClientError::Runtime(format!("a storage call panicked: {e}")))?
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        addr: SocketAddr,
    ) -> Result<Connection, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
        if let Some(slot) = &self.mismatch {
            lock(slot).take();
        }
        let mut config = quinn::ClientConfig::new(self.tls.clone());
        config.transport_config(Arc::new(quic::transport_config(self.opts.idle_timeout)));
        let connecting = endpoint
            .connect_with(config, addr, &self.opts.server_name)
            .map_err(|e| unreachable(e.to_string()))?;
        let result = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await;
        let mismatch = self.mismatch.as_ref().and_then(|slot| lock(slot).take());
        match result {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(match mismatch {
                Some(m) => ClientError::FingerprintMismatch(m),
                None => unreachable(e.to_string()),
            }),
            Err(_) => Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }

    /// One connection: handshake, `Hello`, then messages both ways until
    /// idle (in [`Mode::UntilIdle`]), `stop`, or an error.
    async fn session(
        &self,
        endpoint: &Endpoint,
        addr: SocketAddr,
        mode: Mode,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, ClientError> {
        let conn = tokio::select! {
            conn = self.connect(endpoint, addr) => conn?,
            _ = stopped(stop) => return Ok(SessionEnd::Stopped),
        };
        let lost = |reason: String| ClientError::ConnectionLost { addr, reason };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        let (tx, mut inbound) = mpsc::channel(INBOUND_MESSAGES_MAX);
        let reader = tokio::spawn(read_ahead(recv, tx));
        let mut buf = Vec::new();
        let result = async {
            let mut step = self
                .drive(|core, storage, _| {
                    core.handle_connected(storage);
                    Ok(())
                })
                .await?;
            let mut welcomed = false;
            loop {
                for m in std::mem::take(&mut step.out) {
                    if let ClientMessage::Push { events, .. } = &m {
                        let n = events.len() as u64;
                        self.count(|r| {
                            r.pushes += 1;
                            r.pushed_events += n;
                        });
                    }
                    if let Err(e) =
                        write_frame(&mut send, &mut buf, &m, self.opts.request_timeout).await
                    {
                        // A server that refuses the connection answers the
                        // first message and closes it, maybe while the next
                        // ones are still being written: its reason came in
                        // before the close, so say that, not that the
                        // connection was lost.
                        return Err(self
                            .reply_before_loss(&mut inbound, lost(e.to_string()))
                            .await);
                    }
                }
                if step.welcomed && !welcomed {
                    welcomed = true;
                    self.count(|r| r.connections += 1);
                    tracing::info!(%addr, store = %self.opts.store, "sync connected");
                }
                if mode == Mode::UntilIdle && step.welcomed && step.idle {
                    return Ok(SessionEnd::Idle);
                }
                let deadline = step
                    .timeout_ms
                    .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())));
                let input = tokio::select! {
                    _ = stopped(stop) => Input::Stop,
                    frame = inbound.recv() => Input::Frame(frame),
                    _ = self.changed.notified() => Input::Changed,
                    _ = sleep_until(deadline) => Input::Timeout,
                };
                step = match input {
                    Input::Stop => return Ok(SessionEnd::Stopped),
                    Input::Frame(Some(Ok(Frame::Message(msg)))) => self.take_message(msg).await?,
                    Input::Frame(Some(Ok(Frame::Malformed(reason)))) => {
                        return Err(lost(format!(
                            "the server sent a malformed message: {reason}"
                        )));
                    }
                    Input::Frame(Some(Err(e))) => return Err(lost(e)),
                    Input::Frame(None) => return Err(lost("the reader stopped".into())),
                    Input::Changed => {
                        self.drive(|core, storage, now| core.handle_local_change(now, storage))
                            .await?
                    }
                    Input::Timeout => {
                        self.drive(|core, storage, now| core.handle_timeout(now, storage))
                            .await?
                    }
                };
            }
        }
        .await;
        match &result {
            Ok(_) => quic::close_gracefully(&conn, &mut send, close::DONE, "done").await,
            Err(_) => conn.close(VarInt::from_u32(close::REFUSED), b"client error"),
        }
        let _ = reader.await;
        // Forget what was in flight; ids make the retry safe.
        let core = self.core.clone();
        let _ = tokio::task::spawn_blocking(move || lock(&core).handle_disconnected()).await;
        if result.is_ok() {
            tracing::info!(%addr, "sync disconnected");
        }
        result
    }

    /// What the server sent before the connection failed under a write:
    /// each message it had sent goes to the core, and the first error that
    /// makes (a fatal refusal) is the session's error; `lost` if none.
    /// The reader ends with the connection, so this waits at most for what
    /// is already on its way.
    async fn reply_before_loss(
        &self,
        inbound: &mut mpsc::Receiver<Result<Frame<ServerMessage>, String>>,
        lost: ClientError,
    ) -> ClientError {
        let deadline = Instant::now() + quic::CLOSE_LINGER;
        loop {
            match tokio::time::timeout_at(deadline.into(), inbound.recv()).await {
                Ok(Some(Ok(Frame::Message(msg)))) => {
                    if let Err(e) = self.take_message(msg).await {
                        return e;
                    }
                }
                _ => return lost,
            }
        }
    }

    /// Counts a message from the server and hands it to the core.
    async fn take_message(&self, msg: ServerMessage) -> Result<Step, ClientError> {
        self.count_inbound(&msg);
        self.drive(move |core, storage, now| core.handle_message(now, msg, storage))
            .await
    }

    fn count_inbound(&self, msg: &ServerMessage) {
        let head = match msg {
            ServerMessage::Welcome { head, .. }
            | ServerMessage::Accepted { head, .. }
            | ServerMessage::PullRequired { head, .. } => Some(*head),
            ServerMessage::Records {
                first_position,
                count,
                ..
            } => Some(first_position + (*count as u64).saturating_sub(1)),
            ServerMessage::Events { events } => events.last().map(|e| e.position),
            _ => None,
        };
        if let Some(h) = head {
            self.server_head.fetch_max(h, Ordering::Relaxed);
        }
        self.count(|r| {
            r.received_messages += 1;
            match msg {
                ServerMessage::Records { count, .. } => r.received_events += *count as u64,
                ServerMessage::Events { events } => r.received_events += events.len() as u64,
                ServerMessage::Accepted { placed, .. } => r.accepted_events += placed.len() as u64,
                ServerMessage::PullRequired { .. } => r.pull_required += 1,
                ServerMessage::Rejected { rejections, .. } => {
                    r.rejected_events += rejections.len() as u64
                }
                ServerMessage::Welcome { .. } | ServerMessage::Error { .. } => {}
            }
        });
    }
}

/// Storage that offers nothing to push until the replica holds the
/// server's head as last heard ([`ClientOptions::pull_before_push`]). The
/// core asks again whenever events arrive.
struct PullBeforePush<'a> {
    inner: &'a mut dyn ReplicaStorage,
    server_head: Arc<AtomicU64>,
}

impl ReplicaStorage for PullBeforePush<'_> {
    fn remote_store_id(&self) -> Option<strata::Uuid> {
        self.inner.remote_store_id()
    }

    fn set_remote_store_id(&mut self, id: strata::Uuid) -> Result<(), strata::Error> {
        self.inner.set_remote_store_id(id)
    }

    fn committed_head(&self) -> u64 {
        self.inner.committed_head()
    }

    fn apply_events(&mut self, events: &[strata::Event]) -> Result<(), strata::Error> {
        self.inner.apply_events(events)
    }

    fn apply_records(&mut self, run: &strata::log::RawRun) -> Result<(), strata::Error> {
        self.inner.apply_records(run)
    }

    fn prepare_push(
        &mut self,
        max: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<Vec<strata::sync::proto::Proposal>, strata::Error> {
        if self.inner.committed_head() < self.server_head.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        self.inner.prepare_push(max, max_bytes, now_ms)
    }

    fn reject(
        &mut self,
        rejections: &[(strata::Uuid, String)],
        now_ms: u64,
    ) -> Result<(), strata::Error> {
        self.inner.reject(rejections, now_ms)
    }

    fn pending(&self) -> (usize, Option<u64>) {
        self.inner.pending()
    }
}

/// Resolves when `stop` turns true; never, if its sender is gone (nobody
/// can stop us any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads server messages ahead into `tx`; ends at the first error, which it
/// passes on.
async fn read_ahead(mut recv: RecvStream, tx: mpsc::Sender<Result<Frame<ServerMessage>, String>>) {
    loop {
        let frame = read_frame::<ServerMessage>(
            &mut recv,
            strata::sync::wire::MESSAGE_BYTES_MAX,
            None,
            None,
        )
        .await;
        let end = frame.is_err();
        let item = frame.map_err(|e| match e {
            FrameError::Finished => "the server finished the stream".to_owned(),
            other => other.to_string(),
        });
        if tx.send(item).await.is_err() || end {
            return;
        }
    }
}

fn client_endpoint(addr: SocketAddr) -> Result<Endpoint, ClientError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    Endpoint::client(bind).map_err(|e| ClientError::Unreachable {
        addr,
        reason: format!("cannot open a UDP socket: {e}"),
    })
}

/// Full jitter between half and all of a wait, from a small xorshift
/// generator seeded by the clock (no need for cryptographic randomness).
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Jitter(seed | 1)
    }

    fn apply(&mut self, wait: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let half = wait / 2;
        half + Duration::from_nanos(self.0 % (half.as_nanos() as u64).max(1))
    }
}

/// Connects, syncs until nothing is pending and the server's head is
/// reached, and closes.
pub async fn sync_until_idle(
    replica: Arc<Replica>,
    opts: ClientOptions,
) -> Result<SyncReport, ClientError> {
    SyncClient::new(replica, opts)?.sync_until_idle().await
}

/// Stays connected and pushes local changes as they happen until `stop`
/// turns true; reconnects after transient errors.
pub async fn run(
    replica: Arc<Replica>,
    opts: ClientOptions,
    stop: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    SyncClient::new(replica, opts)?.run(stop).await
}

/// Sync running in the background on its own thread and runtime.
#[derive(Debug)]
pub struct BackgroundSync {
    client: Arc<SyncClient>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<Result<(), ClientError>>>,
}

/// Starts [`run`] on a thread of its own, for applications without an
/// async runtime.
pub fn spawn_background(
    replica: Arc<Replica>,
    opts: ClientOptions,
) -> Result<BackgroundSync, ClientError> {
    let client = Arc::new(SyncClient::new(replica, opts)?);
    let (stop, stop_rx) = watch::channel(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Runtime(e.to_string()))?;
    let c = client.clone();
    let thread = std::thread::Builder::new()
        .name("strata-sync".into())
        .spawn(move || runtime.block_on(c.run(stop_rx)))
        .map_err(|e| ClientError::Runtime(e.to_string()))?;
    Ok(BackgroundSync {
        client,
        stop,
        thread: Some(thread),
    })
}

impl BackgroundSync {
    pub fn status(&self) -> SyncStatus {
        self.client.status()
    }

    pub fn report(&self) -> SyncReport {
        self.client.report()
    }

    /// Whether sync still runs (it ends on a permanent error; see
    /// [`BackgroundSync::stop`] for which).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops sync, closes the connection, and returns the permanent error
    /// that ended it early, if any.
    pub fn stop(mut self) -> Result<(), ClientError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ClientError> {
        let _ = self.stop.send(true);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| ClientError::Runtime("the sync thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_wait() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let w = j.apply(Duration::from_millis(100));
            assert!(
                w >= Duration::from_millis(50) && w < Duration::from_millis(100),
                "{w:?}"
            );
        }
    }
}
