//! Strata server: hosts embedded stores and syncs replicas with them.
//!
//! # Brief overview
//!
//! * [`Config`]: data directory, listen addresses, tokens, limits.
//! * [`serve`]: runs the HTTP server (health, events, the `/ws` WebSocket
//!   with the seed's JSON protocol, the web demo) and the QUIC endpoint
//!   until the shutdown future completes, then closes every store.
//! * [`registry`]: one embedded store per hosted name, with its sync core
//!   and server-side views.
//! * [`quic`] and [`ws`]: the transports; both drive the engine's sans-IO
//!   sync core (`strata::sync`) and only move bytes.
//! * [`tls`]: the server's certificate (self-signed on first start) and
//!   the client's pinning.
//! * [`client`]: the replica side over QUIC, for `strata sync` and
//!   applications.
//!
//! Security: clients authenticate with a token; a server without tokens
//! must listen on loopback only, and says so at start. `/ws` checks the
//! Origin header. Messages, batches, connections and per-client queues are
//! bounded; a slow client is disconnected, never waited for.

pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod client;
pub mod pg;
pub mod quic;
pub mod registry;
pub mod tls;
pub mod web;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use strata::json::EventJson;
use strata::sync::ServerConfig;

pub use registry::{DEFAULT_STORE, Registry};

/// Command-line flags of `strata-server` and `strata serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory with one sub-directory per store (created if missing).
    #[arg(long, env = "STRATA_DATA", default_value = "./strata-server-data")]
    pub data: PathBuf,
    /// HTTP listen address (WebSocket /ws and the web demo at /).
    #[arg(long, env = "STRATA_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// QUIC listen address.
    #[arg(long, env = "STRATA_QUIC", default_value = "127.0.0.1:8443")]
    pub quic: SocketAddr,
    /// Accepted client token (repeat for several). Without any, the server
    /// only listens on loopback.
    #[arg(long = "token", env = "STRATA_TOKENS", value_delimiter = ',')]
    pub tokens: Vec<String>,
    /// Extra Origin allowed to open /ws (repeat for several).
    #[arg(long = "allow-origin")]
    pub allowed_origins: Vec<String>,
}

impl ServeArgs {
    pub fn into_config(self) -> Config {
        let mut config = Config::new(self.data, self.http, Some(self.quic));
        config.tokens = self.tokens;
        config.allowed_origins = self.allowed_origins;
        config
    }
}

/// Logs to stderr at `info` (or as `RUST_LOG` says), in colour only on a
/// terminal. For the binaries; an embedding application sets up its own.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM (what systemd and
/// container runtimes send): the shutdown future for [`serve`], so that
/// connections drain and stores close cleanly either way.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints where the server listens (the lines the README's first command
/// shows).
pub fn print_ready(bound: &Bound) {
    println!("strata-server: web demo at http://{}/", bound.http);
    println!("strata-server: WebSocket sync at ws://{}/ws", bound.http);
    if let (Some(quic), Some(fp)) = (bound.quic, &bound.fingerprint) {
        println!("strata-server: QUIC sync at quic://{quic} (certificate SHA-256 {fp})");
    }
}

/// Most events one `GET /events` returns.
pub const EVENTS_PAGE_MAX: usize = 10_000;
/// Default [`Config::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 1_024;
/// Longest shutdown waits for open connections to end.
pub const CONNECTIONS_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding one sub-directory per hosted store.
    pub data_dir: PathBuf,
    /// HTTP listen address (WebSocket `/ws`, the web demo).
    pub http: SocketAddr,
    /// QUIC listen address; `None` serves HTTP only.
    pub quic: Option<SocketAddr>,
    /// Accepted client tokens. Empty: no authentication, allowed only when
    /// every listen address is loopback.
    pub tokens: Vec<String>,
    /// Origins allowed to open `/ws` besides the server's own and loopback
    /// pages (e.g. `https://app.example.com`, `vscode-webview://…`).
    pub allowed_origins: Vec<String>,
    /// Most concurrent sync connections, both transports together.
    pub connections_max: usize,
    /// Sync limits (push size, message size, turn length).
    pub sync: ServerConfig,
    /// How long one WebSocket send may take before `/ws` drops that
    /// (slow) client; default [`ws::SEND_TIMEOUT`].
    pub ws_send_timeout: std::time::Duration,
}

impl Config {
    /// Defaults for a data directory and listen addresses.
    pub fn new(data_dir: PathBuf, http: SocketAddr, quic: Option<SocketAddr>) -> Config {
        Config {
            data_dir,
            http,
            quic,
            tokens: Vec::new(),
            allowed_origins: Vec::new(),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            sync: ServerConfig::default(),
            ws_send_timeout: ws::SEND_TIMEOUT,
        }
    }

    /// Refuses to run open (without tokens) anywhere but on loopback.
    pub fn check(&self) -> Result<(), ServerError> {
        let open = self.tokens.is_empty();
        let exposed: Vec<SocketAddr> = std::iter::once(self.http)
            .chain(self.quic)
            .filter(|a| !a.ip().is_loopback())
            .collect();
        if open && !exposed.is_empty() {
            return Err(ServerError::OpenAndExposed { addrs: exposed });
        }
        self.sync.validate().map_err(ServerError::Setting)?;
        Ok(())
    }
}

/// Errors that stop the server or refuse a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(
        "refusing to serve without a token on {addrs:?}: pass --token (or STRATA_TOKENS), or listen on 127.0.0.1"
    )]
    OpenAndExposed { addrs: Vec<SocketAddr> },
    #[error("sync setting: {0}")]
    Setting(strata::InvalidInput),
    #[error("store name {name:?} is invalid: use 1 to 64 characters of a-z, 0-9, _ and -")]
    BadStoreName { name: String },
    #[error("opening store {name}: {source}")]
    Store {
        name: String,
        #[source]
        source: Box<strata::Error>,
    },
    #[error("opening the views of store {name}: {message}")]
    Views { name: String, message: String },
    #[error("listening on {addr}: {source}; is another server running there?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What the HTTP handlers share.
#[derive(Debug)]
pub struct AppState {
    pub registry: Arc<Registry>,
    /// Who may sync which store.
    pub auth: Arc<auth::Auth>,
    pub config: Config,
    /// Counts sync connections against `connections_max`.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Becomes `true` when the server stops; open connections end.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Where the server listens, once it does.
#[derive(Debug, Clone)]
pub struct Bound {
    pub http: SocketAddr,
    pub quic: Option<SocketAddr>,
    /// SHA-256 of the QUIC certificate, hex, for clients to pin.
    pub fingerprint: Option<String>,
    /// The hosted stores (for embedders and benchmarks that look inside).
    pub registry: Arc<Registry>,
}

/// Runs the server until `shutdown` completes; `ready` gets the bound
/// addresses. On shutdown, connections close and every store is synced and
/// closed, so nothing acknowledged is lost.
pub async fn serve(
    config: Config,
    ready: impl FnOnce(&Bound) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.check()?;
    if config.tokens.is_empty() {
        tracing::warn!(
            "no token set: any local client may sync (allowed because the server listens on loopback only)"
        );
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
        action: "creating the data directory",
        source,
    })?;
    let registry = Arc::new(Registry::new(config.data_dir.clone(), config.sync.clone()));
    // Open the default store up front: errors show at start, not at the
    // first client.
    {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.get(DEFAULT_STORE))
            .await
            .map_err(|e| ServerError::Io {
                action: "opening the default store",
                source: std::io::Error::other(e),
            })??;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        registry: registry.clone(),
        auth: Arc::new(auth::Auth::new(config.tokens.clone())),
        connections: Arc::new(tokio::sync::Semaphore::new(config.connections_max)),
        config: config.clone(),
        stop: stop_rx.clone(),
    });

    let quic = match config.quic {
        Some(addr) => Some(quic::QuicServer::bind(
            addr,
            state.clone(),
            stop_rx.clone(),
        )?),
        None => None,
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/events", get(events))
        .merge(ws::routes())
        .merge(web::routes())
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.http,
            source,
        })?;
    let bound = Bound {
        http: listener.local_addr().map_err(|source| ServerError::Io {
            action: "reading the HTTP address",
            source,
        })?,
        quic: quic.as_ref().map(|q| q.local_addr()),
        fingerprint: quic.as_ref().map(|q| q.fingerprint().to_owned()),
        registry: registry.clone(),
    };
    ready(&bound);
    let quic_task = quic.map(|q| tokio::spawn(q.run()));
    let mut http_stop = stop_rx.clone();
    let http = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    });
    let http_task = tokio::spawn(async move { http.await });
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(t) = quic_task {
        let _ = t.await;
    }
    let _ = http_task.await;
    // Upgraded WebSockets outlive the HTTP server: wait (bounded) until
    // every connection has seen the stop and given back its permit.
    let permits = u32::try_from(config.connections_max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        CONNECTIONS_DRAIN_TIMEOUT,
        state.connections.acquire_many(permits),
    )
    .await;
    tokio::task::spawn_blocking(move || registry.close())
        .await
        .map_err(|e| ServerError::Io {
            action: "closing stores",
            source: std::io::Error::other(e),
        })?;
    Ok(())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.registry.get(DEFAULT_STORE) {
        Ok(h) => Json(serde_json::json!({ "ok": true, "head": h.store.head(), "store_id": h.store.store_id().to_string() })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    #[serde(default = "one")]
    from: u64,
    #[serde(default = "page")]
    limit: usize,
    #[serde(default)]
    store: Option<String>,
}

fn one() -> u64 {
    1
}

fn page() -> usize {
    1_000
}

async fn events(State(state): State<Arc<AppState>>, Query(q): Query<EventsQuery>) -> Response {
    if q.limit == 0 || q.limit > EVENTS_PAGE_MAX {
        return (
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {EVENTS_PAGE_MAX}\n"),
        )
            .into_response();
    }
    let hosted = match state
        .registry
        .get(q.store.as_deref().unwrap_or(DEFAULT_STORE))
    {
        Ok(h) => h,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<EventJson>, strata::Error> {
        Ok(hosted
            .store
            .read_events(q.from, q.limit, usize::MAX)?
            .iter()
            .map(EventJson::from)
            .collect())
    })
    .await;
    match read {
        Ok(Ok(events)) => Json(events).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
