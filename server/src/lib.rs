//! Strata server: hosts embedded stores and serves them over HTTP.
//!
//! # Brief overview
//!
//! * [`Config`]: where the data lives and what to listen on.
//! * [`serve`]: runs the HTTP server until the shutdown future completes.
//! * [`json`]: the seed's JSON event object (`event_id`, `aggregate_id`,
//!   `version`, `event_type`, `event_data`, `timestamp`, `metadata`).
//!
//! Today it serves the default store read-only: `GET /health` and
//! `GET /events?from=<position>&limit=<n>`. The sync protocol (QUIC and
//! WebSocket) arrives with the sync work.

pub mod json;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use strata::{Options, Store};

/// Most events one `GET /events` returns.
pub const EVENTS_PAGE_MAX: usize = 10_000;
/// Name of the store served when a client names none.
pub const DEFAULT_STORE: &str = "default";

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding one sub-directory per hosted store.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening store {name}: {source}")]
    Store {
        name: String,
        #[source]
        source: strata::Error,
    },
    #[error("listening on {addr}: {source}; is another server running there?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Http(#[source] std::io::Error),
}

#[derive(Clone)]
struct AppState {
    store: Store,
}

/// Opens the default store and serves HTTP on `config.http` until
/// `shutdown` completes. `ready` receives the bound address.
pub async fn serve(
    config: Config,
    ready: impl FnOnce(SocketAddr) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let dir = config.data_dir.join(DEFAULT_STORE);
    let store = Store::open(&dir, Options::default()).map_err(|source| ServerError::Store {
        name: DEFAULT_STORE.into(),
        source,
    })?;
    let state = Arc::new(AppState {
        store: store.clone(),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/events", get(events))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.http,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Http)?;
    ready(addr);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Http)?;
    // Close on a blocking thread: it syncs and joins the indexer.
    tokio::task::spawn_blocking(move || store.close())
        .await
        .ok()
        .transpose()
        .map_err(|source| ServerError::Store {
            name: DEFAULT_STORE.into(),
            source,
        })?;
    Ok(())
}

async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(
        serde_json::json!({ "ok": true, "head": state.store.head(), "store_id": state.store.store_id().to_string() }),
    )
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    #[serde(default = "one")]
    from: u64,
    #[serde(default = "page")]
    limit: usize,
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
    let store = state.store.clone();
    let read =
        tokio::task::spawn_blocking(move || -> Result<Vec<json::EventJson>, strata::Error> {
            store
                .read_all(q.from)
                .take(q.limit)
                .map(|e| e.map(|e| json::EventJson::from(&e)))
                .collect()
        })
        .await;
    match read {
        Ok(Ok(events)) => Json(events).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
