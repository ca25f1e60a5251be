//! Strata server: hosts embedded stores and syncs replicas with them.
//!
//! # Brief overview
//!
//! * [`Config`]: data directory, listen addresses, tokens, TLS, limits.
//! * [`serve`]: runs the HTTP port ([`http`]: health, events, metrics, the
//!   `/ws` WebSocket with the seed's JSON protocol, the web demo) and the
//!   QUIC endpoint until the shutdown future completes, then closes every
//!   store.
//! * [`registry`]: one embedded store per hosted name, with its sync core,
//!   its committer and server-side views.
//! * [`quic`] and [`ws`]: the transports; both drive the engine's sans-IO
//!   sync core (`strata::sync`) and only move bytes.
//! * [`auth`]: tokens and the stores they grant, read or read-write.
//! * [`tls`]: the server's certificate (self-signed on first start) and
//!   the client's pinning.
//! * [`metrics`]: `/metrics` for Prometheus.
//! * [`client`]: the replica side over QUIC, for `strata sync` and
//!   applications.
//!
//! Security (docs/PROTOCOL.md, section 8): clients authenticate with a
//! token that grants named stores, read or read-write, checked before any
//! store is opened; a server without tokens listens on loopback only and
//! checks `Host` and `Origin` there. The HTTP port speaks TLS off loopback.
//! Before a client has authenticated it may read only a small message, in
//! a bounded time, within caps of its own; messages, batches, connections
//! and queues are bounded; a slow client is disconnected, never waited
//! for.

pub mod admission;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
/// The QUIC sync client: the `strata-sync` crate, re-exported.
pub use strata_sync::client;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod quic;
pub mod registry;
pub mod tls;
pub mod web;
pub mod ws;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use strata::json::EventJson;
use strata::sync::ServerConfig;

pub use registry::{DEFAULT_STORE, Registry};

/// Command-line flags of `strata-server` and `strata serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory with one sub-directory per store (created if missing).
    #[arg(long, env = "STRATA_DATA", default_value = "./strata-server-data")]
    pub data: PathBuf,
    /// HTTP listen address (WebSocket /ws, /events, the web demo at /).
    #[arg(long, env = "STRATA_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// QUIC listen address.
    #[arg(long, env = "STRATA_QUIC", default_value = "127.0.0.1:8443")]
    pub quic: SocketAddr,
    /// A token that may read and write every store (repeat for several; at
    /// least 16 bytes). Prefer --token-file: flags show in `ps`. Without
    /// tokens the server listens on loopback only.
    #[arg(long = "token", env = "STRATA_TOKENS", value_delimiter = ',')]
    pub tokens: Vec<String>,
    /// File of `token store-pattern mode` lines (mode read or write; a
    /// pattern is a store name, a prefix ending in *, or *); read again on
    /// SIGHUP.
    #[arg(long, env = "STRATA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Certificate chain (PEM) for HTTPS/WSS on the HTTP port; with
    /// --tls-key. Default off loopback: the server's own self-signed
    /// certificate (the one QUIC uses).
    #[arg(long, env = "STRATA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "STRATA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS on loopback too (off loopback it is the default).
    #[arg(long, conflicts_with = "http_plaintext")]
    pub https: bool,
    /// Serve plain HTTP off loopback (behind a TLS proxy).
    #[arg(long)]
    pub http_plaintext: bool,
    /// Listen address of /metrics without a token (keep it private);
    /// without it, /metrics on the HTTP port needs a token for every store.
    #[arg(long, env = "STRATA_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// Extra Origin allowed to open /ws (repeat for several).
    #[arg(long = "allow-origin")]
    pub allowed_origins: Vec<String>,
    /// Where the stores' logs live: `embedded` (a directory per store
    /// under --data) or `postgres` (one database that several nodes share;
    /// needs --database-url).
    #[arg(long, env = "STRATA_BACKEND", value_enum, default_value = "embedded")]
    pub backend: BackendKind,
    /// PostgreSQL connection string for --backend postgres
    /// (postgres://USER:PASSWORD@HOST:PORT/DATABASE).
    #[arg(
        long,
        env = "STRATA_DATABASE_URL",
        hide_env_values = true,
        required_if_eq("backend", "postgres")
    )]
    pub database_url: Option<String>,
    /// Most connections this node opens to PostgreSQL (one more listens
    /// for other nodes' commits).
    #[arg(long, env = "STRATA_DATABASE_POOL", default_value_t = pg::POOL_SIZE_DEFAULT)]
    pub database_pool: usize,
    /// Archive every store's log, as it grows, to URL/<store>: a directory
    /// (path or file:///dir), or an object store (s3://bucket/prefix and
    /// others, with the archive-s3/-gcs/-azure features; credentials from
    /// AWS_*/GOOGLE_*/AZURE_* variables). Restore with `strata restore`.
    #[arg(long, env = "STRATA_ARCHIVE", value_name = "URL")]
    pub archive: Option<String>,
    /// Milliseconds between archive steps: the most the archive lags the
    /// durable head while it keeps up.
    #[arg(
        long,
        env = "STRATA_ARCHIVE_INTERVAL_MS",
        default_value_t = strata_archive::INTERVAL_DEFAULT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..=ARCHIVE_INTERVAL_MS_MAX)
    )]
    pub archive_interval_ms: u64,
}

/// Longest `--archive-interval-ms`: a day.
pub const ARCHIVE_INTERVAL_MS_MAX: u64 = 86_400_000;

/// The `--backend` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Embedded,
    Postgres,
}

impl ServeArgs {
    pub fn into_config(self) -> Config {
        let mut config = Config::new(self.data, self.http, Some(self.quic));
        config.tokens = self.tokens;
        config.token_file = self.token_file;
        config.tls_cert = self.tls_cert.zip(self.tls_key);
        config.http_tls = if self.https {
            HttpTls::Always
        } else if self.http_plaintext {
            HttpTls::Never
        } else {
            HttpTls::OffLoopback
        };
        config.metrics = self.metrics;
        config.allowed_origins = self.allowed_origins;
        config.archive = self.archive.map(|url| registry::ArchiveConfig {
            url,
            options: strata_archive::ArchiveOptions {
                interval: std::time::Duration::from_millis(self.archive_interval_ms),
                ..strata_archive::ArchiveOptions::default()
            },
        });
        if self.backend == BackendKind::Postgres {
            let mut pg = pg::PgConfig::new(self.database_url.unwrap_or_default());
            pg.pool_size_max = self.database_pool;
            config.database = Some(pg);
        } else if self.database_url.is_some() {
            tracing::warn!(
                "--database-url is not used: the backend is embedded (pass --backend postgres)"
            );
        }
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
    let (http, ws) = if bound.http_tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("strata-server: web demo at {http}://{}/", bound.http);
    println!("strata-server: WebSocket sync at {ws}://{}/ws", bound.http);
    if let (Some(quic), Some(fp)) = (bound.quic, &bound.fingerprint) {
        println!("strata-server: QUIC sync at quic://{quic} (certificate SHA-256 {fp})");
    }
    if let Some(metrics) = bound.metrics {
        println!("strata-server: metrics at http://{metrics}/metrics");
    }
}

/// Most events one `GET /events` returns.
pub const EVENTS_PAGE_MAX: usize = 10_000;
/// About the most bytes of events (as the log stores them) one
/// `GET /events` returns; the `Strata-Next-From` header says where the
/// next page starts when there may be more.
pub const EVENTS_PAGE_BYTES_MAX: usize = 1 << 20;
/// Default [`Config::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 1_024;
/// Default [`Config::unauthenticated_max`].
pub const UNAUTHENTICATED_MAX_DEFAULT: usize = 128;
/// Default [`Config::unauthenticated_per_address_max`].
pub const UNAUTHENTICATED_PER_ADDRESS_MAX_DEFAULT: usize = 16;
/// Default [`Config::http_connections_max`].
pub const HTTP_CONNECTIONS_MAX_DEFAULT: usize = 2_048;
/// Default [`Config::http_connections_per_address_max`].
pub const HTTP_CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = 64;
/// Longest shutdown waits for open connections to end.
pub const CONNECTIONS_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Default [`Config::auth_timeout`]: the longest a client may take from
/// connecting to authenticating (QUIC handshake and `Hello`, the `/ws`
/// `auth` message).
pub const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// When the HTTP port speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpTls {
    /// TLS unless the HTTP address is loopback (the default).
    #[default]
    OffLoopback,
    /// Always TLS.
    Always,
    /// Never TLS, wherever it listens (behind a TLS proxy): say so.
    Never,
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding one sub-directory per hosted store.
    pub data_dir: PathBuf,
    /// HTTP listen address (WebSocket `/ws`, the web demo).
    pub http: SocketAddr,
    /// QUIC listen address; `None` serves HTTP only.
    pub quic: Option<SocketAddr>,
    /// Tokens that may read and write every store. With `token_file`
    /// empty too: no authentication, allowed only when every listen
    /// address is loopback.
    pub tokens: Vec<String>,
    /// File of per-store grants ([`auth`]), read again on `SIGHUP`.
    pub token_file: Option<PathBuf>,
    /// Certificate and key (PEM) for the HTTP port; default: the server's
    /// own identity.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// When the HTTP port speaks TLS.
    pub http_tls: HttpTls,
    /// Origins allowed to open `/ws` besides the server's own and loopback
    /// pages (e.g. `https://app.example.com`, `vscode-webview://…`).
    pub allowed_origins: Vec<String>,
    /// Most concurrent authenticated sync connections, both transports
    /// together.
    pub connections_max: usize,
    /// Most sync connections that have not authenticated yet, both
    /// transports together; they never take `connections_max` places.
    /// Past it the oldest waiting connection is closed to make room.
    pub unauthenticated_max: usize,
    /// The same, from one address; past it new ones are refused.
    pub unauthenticated_per_address_max: usize,
    /// Most HTTP connections (requests, and WebSockets before and after
    /// authenticating).
    pub http_connections_max: usize,
    /// The same, from one address.
    pub http_connections_per_address_max: usize,
    /// Listen address of `/metrics` without a token.
    pub metrics: Option<SocketAddr>,
    /// Longest from connecting (QUIC) or from the upgrade (`/ws`) to
    /// authenticating; default [`AUTH_TIMEOUT`].
    pub auth_timeout: std::time::Duration,
    /// Longest an HTTP client may take to send a request's headers, and
    /// keep a connection idle; default [`http::HEADER_READ_TIMEOUT`].
    pub http_header_timeout: std::time::Duration,
    /// Sync limits (push size, message size, turn length).
    pub sync: ServerConfig,
    /// How long one WebSocket send may take before `/ws` drops that
    /// (slow) client; default [`ws::SEND_TIMEOUT`].
    pub ws_send_timeout: std::time::Duration,
    /// The PostgreSQL database that keeps every store's log, shared with
    /// other nodes; `None` (the default): embedded stores under
    /// `data_dir`, which then holds only the TLS identity.
    pub database: Option<pg::PgConfig>,
    /// How a PostgreSQL node hears of other nodes' commits.
    pub listener: pg::ListenerConfig,
    /// The continuous archive of every embedded store's log; `None` (the
    /// default): none.
    pub archive: Option<registry::ArchiveConfig>,
}

impl Config {
    /// Defaults for a data directory and listen addresses.
    pub fn new(data_dir: PathBuf, http: SocketAddr, quic: Option<SocketAddr>) -> Config {
        Config {
            data_dir,
            http,
            quic,
            tokens: Vec::new(),
            token_file: None,
            tls_cert: None,
            http_tls: HttpTls::default(),
            allowed_origins: Vec::new(),
            connections_max: CONNECTIONS_MAX_DEFAULT,
            unauthenticated_max: UNAUTHENTICATED_MAX_DEFAULT,
            unauthenticated_per_address_max: UNAUTHENTICATED_PER_ADDRESS_MAX_DEFAULT,
            http_connections_max: HTTP_CONNECTIONS_MAX_DEFAULT,
            http_connections_per_address_max: HTTP_CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            metrics: None,
            auth_timeout: AUTH_TIMEOUT,
            http_header_timeout: http::HEADER_READ_TIMEOUT,
            sync: ServerConfig::default(),
            ws_send_timeout: ws::SEND_TIMEOUT,
            database: None,
            listener: pg::ListenerConfig::default(),
            archive: None,
        }
    }

    /// Whether the server runs without tokens.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty() && self.token_file.is_none()
    }

    /// Whether the HTTP port speaks TLS.
    pub fn http_is_tls(&self) -> bool {
        match self.http_tls {
            HttpTls::Always => true,
            HttpTls::Never => false,
            HttpTls::OffLoopback => !self.http.ip().is_loopback(),
        }
    }

    /// Refuses to run open (without tokens) anywhere but on loopback, and
    /// settings that do not fit.
    pub fn check(&self) -> Result<(), ServerError> {
        let exposed: Vec<SocketAddr> = std::iter::once(self.http)
            .chain(self.quic)
            .chain(self.metrics)
            .filter(|a| !a.ip().is_loopback())
            .collect();
        if self.is_open() && !exposed.is_empty() {
            return Err(ServerError::OpenAndExposed { addrs: exposed });
        }
        for (name, value) in [
            ("connections_max", self.connections_max),
            ("unauthenticated_max", self.unauthenticated_max),
            (
                "unauthenticated_per_address_max",
                self.unauthenticated_per_address_max,
            ),
            ("http_connections_max", self.http_connections_max),
            (
                "http_connections_per_address_max",
                self.http_connections_per_address_max,
            ),
        ] {
            if value == 0 {
                return Err(ServerError::Setting(strata::InvalidInput::Setting {
                    name,
                    reason: "is 0, must be at least 1".into(),
                }));
            }
        }
        for (name, value) in [
            ("auth_timeout", self.auth_timeout),
            ("http_header_timeout", self.http_header_timeout),
        ] {
            if value.is_zero() {
                return Err(ServerError::Setting(strata::InvalidInput::Setting {
                    name,
                    reason: "is 0, must be positive".into(),
                }));
            }
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
        "refusing to serve without a token on {addrs:?}: pass --token-file (or --token), or listen on 127.0.0.1"
    )]
    OpenAndExposed { addrs: Vec<SocketAddr> },
    #[error("setting: {0}")]
    Setting(strata::InvalidInput),
    #[error("tokens: {0}")]
    Auth(#[from] auth::AuthConfigError),
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
    #[error("{0}")]
    Postgres(Box<pg::PgError>),
    #[error(
        "store {name}: {dir} holds an embedded store, and this server keeps the store's log in PostgreSQL (its data directory holds only mirrors of it): move that directory out of the data directory, or serve it with --backend embedded"
    )]
    NotAMirror { name: String, dir: PathBuf },
    #[error("archiving store {name}: {message}")]
    Archive { name: String, message: String },
    #[error(
        "--archive copies embedded logs; with --backend postgres the log is the database's: archive it with PostgreSQL's own tools (WAL archiving, pg_basebackup)"
    )]
    ArchiveOnPostgres,
    #[error("store {name}: {source}")]
    Log {
        name: String,
        #[source]
        source: strata::sync::StorageError,
    },
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

/// What the HTTP handlers and the transports share.
#[derive(Debug)]
pub struct AppState {
    pub registry: Arc<Registry>,
    /// Who may sync which store.
    pub auth: Arc<auth::Auth>,
    pub config: Config,
    /// PostgreSQL: this node's ear on other nodes' commits.
    pub head_listener: Option<Arc<pg::HeadListener>>,
    /// Counts authenticated sync connections against `connections_max`.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Sync connections that have not authenticated yet (capped in all,
    /// where the oldest give way, and per address).
    pub unauthenticated: Arc<admission::PendingAuth>,
    /// HTTP connections, in all and per address.
    pub http_connections: Arc<admission::ConnectionCount>,
    pub metrics: metrics::ServerMetrics,
    /// Becomes `true` when the server stops; open connections end.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    /// A place for a sync connection that has not authenticated yet:
    /// `None` when its address has all it may have; past the total cap the
    /// oldest waiting connection gives way ([`admission::PendingAuth`]).
    pub fn admit_unauthenticated(&self, peer: IpAddr) -> Option<admission::Pending> {
        let admitted = self.unauthenticated.admit(peer).ok()?;
        if admitted.evicted_another {
            self.metrics
                .unauthenticated_evicted_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Some(admitted.pending)
    }

    /// Checks `token` for `store`, counting failures.
    pub fn check(
        &self,
        token: Option<&str>,
        store: &str,
        peer: IpAddr,
    ) -> Result<auth::Grant, auth::AuthError> {
        let checked = self.auth.check(token, store, peer);
        self.count_failure(&checked);
        checked
    }

    /// Checks that `token` grants every store (`/metrics`), counting
    /// failures.
    pub fn check_all(&self, token: Option<&str>, peer: IpAddr) -> Result<(), auth::AuthError> {
        let checked = self.auth.check_all(token, peer);
        self.count_failure(&checked);
        checked
    }

    fn count_failure<T>(&self, checked: &Result<T, auth::AuthError>) {
        if checked.is_err() {
            self.metrics
                .auth_failures_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Where the server listens, once it does.
#[derive(Debug, Clone)]
pub struct Bound {
    pub http: SocketAddr,
    /// Whether the HTTP port speaks TLS (`https:`, `wss:`).
    pub http_tls: bool,
    pub quic: Option<SocketAddr>,
    /// SHA-256 of the certificate (QUIC, and the HTTP port unless given
    /// another), hex, for clients to pin.
    pub fingerprint: Option<String>,
    /// Where `/metrics` is served without a token.
    pub metrics: Option<SocketAddr>,
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
    let auth = Arc::new(auth::Auth::new(
        config.tokens.clone(),
        config.token_file.clone(),
    )?);
    if auth.is_open() {
        tracing::warn!(
            "no token set: any local client may sync (allowed because the server listens on loopback only)"
        );
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
        action: "creating the data directory",
        source,
    })?;
    let backend = match &config.database {
        None => registry::Backend::Embedded,
        Some(pg) => registry::Backend::Postgres(
            // The turn across nodes lasts what the core's would.
            pg::PgDatabase::connect(pg::PgConfig {
                turn_lease_ms: config.sync.lease_ms,
                ..pg.clone()
            })
            .await
            .map_err(|e| ServerError::Postgres(Box::new(e)))?,
        ),
    };
    let mut registry =
        Registry::with_backend(config.data_dir.clone(), config.sync.clone(), backend);
    if let Some(archive) = &config.archive {
        registry = registry.with_archive(archive.clone())?;
    }
    let registry = Arc::new(registry);
    // Other nodes' commits wake this node's followers.
    let head_listener = match registry.backend() {
        registry::Backend::Postgres(db) => {
            let registry = Arc::downgrade(&registry);
            let listener = db
                .listen(config.listener.clone(), move |update| {
                    if let Some(h) = registry.upgrade().and_then(|r| r.get_open(&update.store)) {
                        h.learn_head(update.head);
                    }
                })
                .map_err(|e| ServerError::Postgres(Box::new(e)))?;
            Some(Arc::new(listener))
        }
        registry::Backend::Embedded => None,
    };
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
    let tls_err = |e: tls::TlsError| ServerError::Tls(e.to_string());
    let needs_identity =
        config.quic.is_some() || (config.http_is_tls() && config.tls_cert.is_none());
    let identity = if needs_identity {
        let host = config.quic.map(|a| a.ip()).or(Some(config.http.ip()));
        Some(tls::Identity::load_or_create(&config.data_dir, host).map_err(tls_err)?)
    } else {
        None
    };
    let http_tls = if config.http_is_tls() {
        let (cert, key) = match &config.tls_cert {
            Some((c, k)) => tls::load_cert_and_key(c, k).map_err(tls_err)?,
            None => {
                let id = identity.as_ref().expect("made above");
                (vec![id.cert.clone()], id.key.clone_key())
            }
        };
        Some(Arc::new(
            tls::http_server_config(cert, key).map_err(tls_err)?,
        ))
    } else {
        if !config.http.ip().is_loopback() {
            tracing::warn!(addr = %config.http, "plain HTTP off loopback (--http-plaintext): put a TLS proxy in front");
        }
        if config.tls_cert.is_some() {
            tracing::warn!(
                addr = %config.http,
                "--tls-cert is not used: the HTTP port speaks plain HTTP here (pass --https to use it on loopback)"
            );
        }
        None
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        registry: registry.clone(),
        auth: auth.clone(),
        head_listener,
        connections: Arc::new(tokio::sync::Semaphore::new(config.connections_max)),
        unauthenticated: Arc::new(admission::PendingAuth::new(
            config.unauthenticated_max,
            config.unauthenticated_per_address_max,
        )),
        http_connections: Arc::new(admission::ConnectionCount::default()),
        metrics: metrics::ServerMetrics::default(),
        config: config.clone(),
        stop: stop_rx.clone(),
    });

    let quic = match (config.quic, &identity) {
        (Some(addr), Some(identity)) => Some(quic::QuicServer::bind(
            addr,
            identity,
            state.clone(),
            stop_rx.clone(),
        )?),
        _ => None,
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/events", get(events))
        .route("/metrics", get(metrics_authenticated))
        .merge(ws::routes())
        .merge(web::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.http,
            source,
        })?;
    let metrics_listener = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    let bound = Bound {
        http: listener.local_addr().map_err(|source| ServerError::Io {
            action: "reading the HTTP address",
            source,
        })?,
        http_tls: http_tls.is_some(),
        quic: quic.as_ref().map(|q| q.local_addr()),
        fingerprint: identity.as_ref().map(|i| i.fingerprint.clone()),
        metrics: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        registry: registry.clone(),
    };
    ready(&bound);
    let quic_task = quic.map(|q| tokio::spawn(q.run()));
    let http_task = tokio::spawn(http::serve(
        listener,
        app,
        http::HttpOptions {
            tls: http_tls,
            connections_max: config.http_connections_max,
            per_address_max: config.http_connections_per_address_max,
            header_timeout: config.http_header_timeout,
        },
        state.http_connections.clone(),
        stop_rx.clone(),
    ));
    let metrics_task = metrics_listener.map(|l| {
        let app = Router::new()
            .route("/metrics", get(metrics_open))
            .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
            .with_state(state.clone());
        tokio::spawn(http::serve(
            l,
            app,
            http::HttpOptions {
                tls: None,
                connections_max: http::METRICS_CONNECTIONS_MAX,
                per_address_max: http::METRICS_CONNECTIONS_MAX,
                header_timeout: config.http_header_timeout,
            },
            Arc::new(admission::ConnectionCount::default()),
            stop_rx.clone(),
        ))
    });
    let reload_task = tokio::spawn(reload_on_sighup(auth.clone(), stop_rx.clone()));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(t) = quic_task {
        let _ = t.await;
    }
    let _ = http_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = reload_task.await;
    // Upgraded WebSockets outlive the HTTP loop: wait (bounded) until
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

/// Resolves when the server stops (`stop` turns true or its sender is
/// gone). Unlike `stop.wait_for` in a `select!` arm, holds no borrow of
/// the channel afterwards.
pub(crate) async fn until_stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Reads the token file again on each `SIGHUP` until the server stops.
async fn reload_on_sighup(auth: Arc<auth::Auth>, mut stop: tokio::sync::watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; restart the server to reload tokens");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    match auth.reload() {
                        Ok(tokens) => tracing::info!(tokens, "tokens reloaded"),
                        Err(e) => tracing::error!(error = %e, "reloading tokens failed; the tokens in force stay"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (auth, stop.wait_for(|s| *s).await);
    }
}

/// The token of a request: `Authorization: Bearer <t>`, else `?token=`.
fn request_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    ws::bearer(headers).or_else(|| query.map(str::to_owned))
}

fn peer_ip(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    peer_ip_of(peer.map(|Extension(ConnectInfo(a))| a))
}

/// The address failures are counted against; requests served outside
/// [`http::serve`] (tests calling the router) count as one unknown peer.
pub(crate) fn peer_ip_of(peer: Option<SocketAddr>) -> IpAddr {
    peer.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

fn refuse(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    (status, format!("{reason}\n")).into_response()
}

fn auth_refusal(e: &auth::AuthError) -> Response {
    let status = match e {
        auth::AuthError::Unauthorized => StatusCode::UNAUTHORIZED,
        auth::AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
        auth::AuthError::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    refuse(status, e)
}

/// Every HTTP request: counted; on an open server (no tokens, loopback
/// only) the `Host` must be a loopback name and an `Origin`, if any, a
/// loopback page, so that a site whose name was pointed at 127.0.0.1 (DNS
/// rebinding) cannot read it from a browser. Every response gets `nosniff`.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    state
        .metrics
        .http_requests_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if state.auth.is_open() {
        let headers = req.headers();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !host.is_some_and(ws::is_loopback_authority) {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "this server runs without tokens and answers loopback names only (Host must be localhost, 127.0.0.1 or [::1])",
            );
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            let allowed = state.config.allowed_origins.iter().any(|a| a == &*origin)
                || ws::is_loopback_origin(&origin);
            if !allowed {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "this server runs without tokens and answers pages of loopback origins only",
                );
            }
        }
    }
    let mut response = next.run(req).await;
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Debug, serde::Deserialize)]
struct HealthQuery {
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// `GET /health`: `{"ok":true}` for anyone (load balancers); with
/// `?store=` and a token that may read it, also its head and id.
async fn health(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Query(q): Query<HealthQuery>,
) -> Response {
    let Some(store) = q.store else {
        return Json(serde_json::json!({ "ok": true })).into_response();
    };
    let hosted = match readable_store(&state, peer, &headers, &store, q.token.as_deref()).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let log = hosted.log.clone();
    match tokio::task::spawn_blocking(move || log.head()).await {
        Ok(Ok(head)) => Json(serde_json::json!({
            "ok": true, "store": store, "head": head, "store_id": hosted.log.store_id().to_string(),
        }))
        .into_response(),
        Ok(Err(e)) => {
            tracing::error!(store = %store, error = %e.detail(), "reading a head for /health");
            refuse(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The store a read names, for a client that may read it: a bad name is
/// 400, a refused token 401/403/429, a store that does not exist 404 (a
/// read never creates one).
async fn readable_store(
    state: &Arc<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    store: &str,
    query_token: Option<&str>,
) -> Result<Arc<registry::Hosted>, Response> {
    registry::validate_store_name(store).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    let token = request_token(headers, query_token);
    state
        .check(token.as_deref(), store, peer_ip(peer))
        .map_err(|e| auth_refusal(&e))?;
    match open_existing(state, store.to_owned()).await? {
        Some(h) => Ok(h),
        None => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no store {store:?} here"),
        )),
    }
}

/// The store `name` if it exists, opened on a blocking thread; never
/// created.
async fn open_existing(
    state: &Arc<AppState>,
    name: String,
) -> Result<Option<Arc<registry::Hosted>>, Response> {
    let registry = state.registry.clone();
    match tokio::task::spawn_blocking(move || registry.get_existing(&name)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e @ ServerError::BadStoreName { .. })) => Err(refuse(StatusCode::BAD_REQUEST, e)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "opening a store for a read");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store cannot be opened; retry later",
            ))
        }
        Err(e) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, e)),
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
    #[serde(default)]
    token: Option<String>,
}

fn one() -> u64 {
    1
}

fn page() -> usize {
    1_000
}

/// `GET /events?store=&from=&limit=`: committed events as seed JSON
/// objects, at most `limit` and about [`EVENTS_PAGE_BYTES_MAX`]; the
/// `Strata-Next-From` header, when present, is where the next page starts.
/// Needs a token that may read the store (unless the server is open). A
/// store that does not exist is 404: a read never creates one.
async fn events(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    if q.limit == 0 || q.limit > EVENTS_PAGE_MAX {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {EVENTS_PAGE_MAX}"),
        );
    }
    let store = q.store.unwrap_or_else(|| DEFAULT_STORE.to_owned());
    let hosted = match readable_store(&state, peer, &headers, &store, q.token.as_deref()).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    // Position 0 is before the first event.
    let from = q.from.max(1);
    let read = tokio::task::spawn_blocking(
        move || -> Result<(Vec<EventJson>, u64, u64), strata::sync::StorageError> {
            // The head after the read: every event read is at or below
            // it, so a next page exists when `next` is not past it.
            let events = hosted.log.read(from, q.limit, EVENTS_PAGE_BYTES_MAX)?;
            let head = hosted.log.head()?;
            // A read returns whole batches and may pass `limit`: the page
            // ends at `limit`, and the next starts right after it.
            let page = &events[..events.len().min(q.limit)];
            let next = page.last().map_or(from, |e| e.position + 1);
            let json: Vec<EventJson> = page.iter().map(EventJson::from).collect();
            Ok((json, next, head))
        },
    )
    .await;
    match read {
        Ok(Ok((events, next, head))) => {
            let mut response = Json(events).into_response();
            if next <= head
                && let Ok(v) = HeaderValue::from_str(&next.to_string())
            {
                response.headers_mut().insert("strata-next-from", v);
            }
            response
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e.detail(), "reading events for GET /events");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store cannot be read; retry later",
            )
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn render_metrics(state: &AppState) -> Response {
    let stores = state.registry.open_stores();
    let rows: Vec<metrics::StoreRow<'_>> = stores
        .iter()
        .map(|h| metrics::StoreRow {
            name: h.name.clone(),
            stats: &h.stats,
            syncs: h.syncs(),
            head: h.known_head(),
            clients: h.client_count(),
            mirrored: h.mirrored(),
            archive: h.archive_status().map(|a| metrics::ArchiveRow {
                head: a.head(),
                failures: a.failures.load(std::sync::atomic::Ordering::Relaxed),
                bytes: a.bytes.load(std::sync::atomic::Ordering::Relaxed),
            }),
        })
        .collect();
    let listener = state.head_listener.as_ref().map(|l| metrics::ListenerRow {
        connected: l.is_connected(),
        connections: l.connections(),
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&state.metrics, &rows, listener),
    )
        .into_response()
}

/// `/metrics` on the HTTP port: for a token that may read every store.
async fn metrics_authenticated(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let token = ws::bearer(&headers);
    if let Err(e) = state.check_all(token.as_deref(), peer_ip(peer)) {
        return auth_refusal(&e);
    }
    render_metrics(&state)
}

/// `/metrics` on its own listen address: no token.
async fn metrics_open(State(state): State<Arc<AppState>>) -> Response {
    render_metrics(&state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("strata-server").chain(args.iter().copied()))
            .map(|c| c.serve.into_config())
    }

    #[test]
    fn flags_say_when_the_http_port_speaks_tls() {
        let loopback = parse(&[]).unwrap();
        assert_eq!(loopback.http_tls, HttpTls::OffLoopback);
        assert!(!loopback.http_is_tls(), "plain HTTP on loopback by default");
        assert!(loopback.is_open());
        let exposed = parse(&["--http", "0.0.0.0:8080", "--token-file", "/t"]).unwrap();
        assert!(exposed.http_is_tls(), "TLS off loopback by default");
        assert!(!exposed.is_open());
        let plain = parse(&["--http", "0.0.0.0:8080", "--http-plaintext"]).unwrap();
        assert!(!plain.http_is_tls());
        assert!(parse(&["--https"]).unwrap().http_is_tls());
        assert!(parse(&["--https", "--http-plaintext"]).is_err());
        // A certificate needs its key, and the other way round.
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
        let given = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(given.tls_cert, Some(("c.pem".into(), "k.pem".into())));
    }

    #[test]
    fn an_open_server_may_not_listen_beyond_loopback_on_any_port() {
        for args in [
            &["--http", "0.0.0.0:0"][..],
            &["--quic", "0.0.0.0:0"][..],
            &["--metrics", "0.0.0.0:0"][..],
        ] {
            let err = parse(args).unwrap().check().unwrap_err();
            assert!(
                matches!(err, ServerError::OpenAndExposed { .. }),
                "{args:?}: {err}"
            );
        }
        let mut zero = parse(&[]).unwrap();
        zero.auth_timeout = std::time::Duration::ZERO;
        assert!(zero.check().is_err());
    }
}
