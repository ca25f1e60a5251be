//! Sync benchmark workloads, run by `strata bench` after the engine's (they
//! need a server, so they live here). Results have the engine's
//! [`WorkloadResult`] shape; docs/BENCHMARKS.md explains each figure.
//!
//! * `sync_catchup`: a server store holds `events` events; a fresh replica
//!   pulls all of them over QUIC (raw log records, appended and synced by
//!   the replica, which also indexes them) versus a client of the seed's
//!   JSON protocol over `/ws` that sends `client_sync_request` with
//!   `last_synced_hlc: ""`, reads events until it has them all and stores
//!   them in the seed design's SQLite `events` table (one durable
//!   transaction per message, reading ahead while it writes, as the
//!   replica does). `strata_eps` is the replica, `baseline_eps` the JSON
//!   client. The transports alone: `quic_transport_eps` (a QUIC client
//!   that only counts the records) against `ws_parse_eps` (a JSON client
//!   that only parses the events), as `transport_ratio`.
//! * `sync_push_contention`: [`CONTENTION_REPLICAS`] replicas, each with
//!   `events / 100 / 8` events in its outbox on one of
//!   [`CONTENTION_AGGREGATES`] aggregates (two replicas per aggregate),
//!   connect at once and push in batches of [`CONTENTION_PUSH_EVENTS`]
//!   until every replica holds every event. `strata_eps` is events per
//!   second with the server's policy (a push from a replica that is
//!   behind is accepted when none of its aggregates moved); `baseline_eps`
//!   the same with replicas that pull to the server's head before every
//!   push (the strict policy, emulated client-side); `max_retries` is the
//!   most `PULL_REQUIRED` answers one replica got.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use strata::bench::WorkloadResult;
use strata::sync::proto::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use strata::sync::{Replica, ReplicaOptions};
use strata::{AggregateEvents, ExpectedVersion, NewEvent, Options, Store};

use crate::client::{ClientOptions, SyncClient};
use crate::quic::{Frame, read_frame, write_frame};
use crate::tls::Trust;

/// Every sync workload, in the order [`run`] runs them.
pub const WORKLOADS: &[&str] = &["sync_catchup", "sync_push_contention"];
/// Events per append while filling the `sync_catchup` server store.
pub const FILL_BATCH_EVENTS: u64 = 1_000;
/// Aggregates per fill batch.
pub const FILL_BATCH_AGGREGATES: u64 = 10;
/// Replicas in `sync_push_contention`.
pub const CONTENTION_REPLICAS: usize = 8;
/// Aggregates they share (each by `CONTENTION_REPLICAS /
/// CONTENTION_AGGREGATES` replicas).
pub const CONTENTION_AGGREGATES: usize = 4;
/// Most events per push in `sync_push_contention` (small, so that pushes
/// interleave and conflict).
pub const CONTENTION_PUSH_EVENTS: usize = 20;
/// `sync_push_contention` commits this fraction of `events` (each push is a
/// durable append on the server).
pub const CONTENTION_EVENTS_DIVISOR: u64 = 100;
/// Fewest events `sync_push_contention` commits.
pub const CONTENTION_EVENTS_MIN: u64 = 800;
/// Longest any workload's sync may take before the run fails.
pub const SYNC_DEADLINE: Duration = Duration::from_secs(600);

const _: () = assert!(CONTENTION_REPLICAS.is_multiple_of(CONTENTION_AGGREGATES));

/// What to run.
#[derive(Debug, Clone)]
pub struct SyncBenchConfig {
    /// Events the catch-up store holds (default 1,000,000).
    pub events: u64,
    /// Scratch directory (removed afterwards).
    pub dir: PathBuf,
    /// Only these workloads (all when empty; names not in [`WORKLOADS`]
    /// are ignored).
    pub only: Vec<String>,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncBenchError {
    #[error(transparent)]
    Store(Box<strata::Error>),
    #[error(transparent)]
    Server(Box<crate::ServerError>),
    #[error(transparent)]
    Client(Box<crate::client::ClientError>),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

impl From<strata::Error> for SyncBenchError {
    fn from(e: strata::Error) -> Self {
        SyncBenchError::Store(Box::new(e))
    }
}

impl From<crate::ServerError> for SyncBenchError {
    fn from(e: crate::ServerError) -> Self {
        SyncBenchError::Server(Box::new(e))
    }
}

impl From<crate::client::ClientError> for SyncBenchError {
    fn from(e: crate::client::ClientError) -> Self {
        SyncBenchError::Client(Box::new(e))
    }
}

fn failed(what: impl std::fmt::Display) -> SyncBenchError {
    SyncBenchError::Failed(what.to_string())
}

/// Runs the selected sync workloads, calling `report` as each finishes.
pub fn run(
    config: &SyncBenchConfig,
    mut report: impl FnMut(&WorkloadResult),
) -> Result<Vec<WorkloadResult>, SyncBenchError> {
    let wanted = |name: &str| config.only.is_empty() || config.only.iter().any(|w| w == name);
    if !WORKLOADS.iter().any(|w| wanted(w)) {
        return Ok(Vec::new());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _ = std::fs::remove_dir_all(&config.dir);
    std::fs::create_dir_all(&config.dir)?;
    let mut results = Vec::new();
    if wanted("sync_catchup") {
        let r = runtime.block_on(sync_catchup(
            config.events.max(FILL_BATCH_EVENTS),
            &config.dir.join("catchup"),
        ))?;
        report(&r);
        results.push(r);
    }
    if wanted("sync_push_contention") {
        let events = (config.events / CONTENTION_EVENTS_DIVISOR).max(CONTENTION_EVENTS_MIN);
        let r = runtime.block_on(sync_push_contention(events, &config.dir.join("contention")))?;
        report(&r);
        results.push(r);
    }
    drop(runtime);
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(results)
}

fn result(workload: &str, events: u64, strata: Duration, baseline: Duration) -> WorkloadResult {
    let eps = |d: Duration| events as f64 / d.as_secs_f64().max(1e-9);
    let (s, b) = (eps(strata), eps(baseline));
    WorkloadResult {
        workload: workload.into(),
        events,
        strata_eps: s,
        baseline_eps: Some(b),
        ratio: Some(s / b),
        limit_eps: None,
        of_limit: None,
        extra: serde_json::Map::new(),
    }
}

fn with(mut r: WorkloadResult, key: &str, value: impl Into<serde_json::Value>) -> WorkloadResult {
    r.extra.insert(key.into(), value.into());
    r
}

/// A server on loopback over `data`, until `stop` is sent.
struct BenchServer {
    quic: SocketAddr,
    http: SocketAddr,
    fingerprint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), crate::ServerError>>,
}

async fn start_server(data: &Path) -> Result<BenchServer, SyncBenchError> {
    let config = crate::Config::new(
        data.to_path_buf(),
        "127.0.0.1:0".parse().expect("an address"),
        Some("127.0.0.1:0".parse().expect("an address")),
    );
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::serve(
        config,
        move |b: &crate::Bound| {
            let _ = ready_tx.send(b.clone());
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let bound = match ready_rx.await {
        Ok(b) => b,
        Err(_) => {
            return Err(match task.await {
                Ok(Err(e)) => e.into(),
                _ => failed("the server did not start"),
            });
        }
    };
    Ok(BenchServer {
        quic: bound.quic.expect("QUIC is on"),
        http: bound.http,
        fingerprint: bound.fingerprint.expect("QUIC is on"),
        stop,
        task,
    })
}

impl BenchServer {
    fn options(&self) -> ClientOptions {
        ClientOptions::new(self.quic.to_string(), Trust::Pin(self.fingerprint.clone()))
    }

    async fn stop(self) -> Result<(), SyncBenchError> {
        let _ = self.stop.send(());
        self.task.await.map_err(failed)??;
        Ok(())
    }
}

fn open_replica(dir: &Path) -> Result<Arc<Replica>, SyncBenchError> {
    Ok(Arc::new(Replica::open(dir, ReplicaOptions::default())?))
}

fn close_replica(r: Arc<Replica>) -> Result<(), SyncBenchError> {
    match Arc::try_unwrap(r) {
        Ok(r) => Ok(r.close()?),
        Err(_) => Err(failed("a replica is still in use")),
    }
}

// --- sync_catchup ------------------------------------------------------------

/// Fills the server's default store with `events` events.
fn fill(store_dir: &Path, events: u64) -> Result<(), SyncBenchError> {
    let store = Store::open(store_dir, Options::default())?;
    let per = FILL_BATCH_EVENTS / FILL_BATCH_AGGREGATES;
    let aggregates = (events / strata::bench::AGGREGATE_EVENTS).max(1);
    for b in 0..events.div_ceil(FILL_BATCH_EVENTS) {
        let groups: Vec<AggregateEvents> = (0..FILL_BATCH_AGGREGATES)
            .map(|g| AggregateEvents {
                aggregate_id: format!("agg-{:06}", (b * FILL_BATCH_AGGREGATES + g) % aggregates),
                expected: ExpectedVersion::Any,
                events: (0..per)
                    .map(|j| {
                        NewEvent::new(
                            "Recorded",
                            strata::bench::payload(b * FILL_BATCH_EVENTS + g * per + j),
                        )
                    })
                    .collect(),
            })
            .collect();
        store.append_batch(&groups)?;
    }
    store.flush_index()?;
    store.close()?;
    Ok(())
}

async fn sync_catchup(events: u64, dir: &Path) -> Result<WorkloadResult, SyncBenchError> {
    let events = events.div_ceil(FILL_BATCH_EVENTS) * FILL_BATCH_EVENTS;
    let data = dir.join("server");
    {
        let store_dir = data.join(crate::DEFAULT_STORE);
        tokio::task::spawn_blocking(move || fill(&store_dir, events))
            .await
            .map_err(failed)??;
    }
    let server = start_server(&data).await?;

    // The QUIC transport alone: receive every record, store nothing.
    let (received, quic_bytes, transport) =
        tokio::time::timeout(SYNC_DEADLINE, quic_receive_all(&server, events))
            .await
            .map_err(|_| failed("QUIC catch-up timed out"))??;
    if received != events {
        return Err(failed(format!(
            "QUIC client received {received} of {events} events"
        )));
    }

    // A fresh replica: records appended and synced to its disk. Timed from
    // the start of the connection to the last event stored (the close is
    // not part of catching up).
    let replica_dir = dir.join("replica");
    let replica = open_replica(&replica_dir)?;
    let client = Arc::new(SyncClient::new(replica.clone(), server.options())?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let task = {
        let client = client.clone();
        tokio::spawn(async move { client.run(stop_rx).await })
    };
    while client.status().committed < events {
        if start.elapsed() > SYNC_DEADLINE || task.is_finished() {
            return Err(failed("replica catch-up did not finish"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let quic = start.elapsed();
    let _ = stop_tx.send(true);
    task.await.map_err(failed)??;
    drop(client);
    let head = replica.committed().head();
    close_replica(replica)?;
    if head != events {
        return Err(failed(format!(
            "the replica holds {head} of {events} events"
        )));
    }

    // The seed's JSON protocol over /ws: parsing only, then a client that
    // stores what it pulls in the seed's table.
    let start = Instant::now();
    let (ws_events, ws_bytes) =
        tokio::time::timeout(SYNC_DEADLINE, ws_receive_all(server.http, events, None))
            .await
            .map_err(|_| failed("WebSocket catch-up timed out"))??;
    let ws_parse = start.elapsed();
    if ws_events != events {
        return Err(failed(format!(
            "the JSON client received {ws_events} of {events} events"
        )));
    }
    let seed_db = dir.join("seed-client.sqlite");
    let start = Instant::now();
    let (ws_events, _) = tokio::time::timeout(
        SYNC_DEADLINE,
        ws_receive_all(server.http, events, Some(&seed_db)),
    )
    .await
    .map_err(|_| failed("WebSocket catch-up timed out"))??;
    let ws = start.elapsed();
    if ws_events != events {
        return Err(failed(format!(
            "the JSON client stored {ws_events} of {events} events"
        )));
    }
    server.stop().await?;

    let eps = |d: Duration| events as f64 / d.as_secs_f64().max(1e-9);
    let r = result("sync_catchup", events, quic, ws);
    let r = with(r, "quic_transport_eps", eps(transport));
    let r = with(r, "ws_parse_eps", eps(ws_parse));
    let r = with(r, "transport_ratio", eps(transport) / eps(ws_parse));
    let r = with(r, "quic_secs", quic.as_secs_f64());
    let r = with(r, "ws_secs", ws.as_secs_f64());
    let r = with(r, "quic_bytes", quic_bytes);
    Ok(with(r, "ws_json_bytes", ws_bytes))
}

/// Follows the log over QUIC from position 1 and counts records until
/// `events`; returns (events, payload bytes, time from connecting to the
/// last record, without the close).
async fn quic_receive_all(
    server: &BenchServer,
    events: u64,
) -> Result<(u64, u64, Duration), SyncBenchError> {
    let start = Instant::now();
    let tls = crate::tls::client_config(&Trust::Pin(server.fingerprint.clone())).map_err(failed)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.config).map_err(failed)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(crate::quic::transport_config(
        crate::quic::IDLE_TIMEOUT,
    )));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address"))?;
    let conn = endpoint
        .connect_with(config, server.quic, crate::client::SERVER_NAME_DEFAULT)
        .map_err(failed)?
        .await
        .map_err(failed)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(failed)?;
    let mut buf = Vec::new();
    for msg in [
        ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            store: crate::DEFAULT_STORE.into(),
            token: None,
            client: "bench".into(),
        },
        ClientMessage::Follow { from: 1 },
    ] {
        write_frame(&mut send, &mut buf, &msg, crate::quic::SEND_TIMEOUT)
            .await
            .map_err(failed)?;
    }
    let (mut received, mut bytes) = (0u64, 0u64);
    while received < events {
        match read_frame::<ServerMessage>(&mut recv, None)
            .await
            .map_err(failed)?
        {
            Frame::Message(ServerMessage::Records { count, records, .. }) => {
                received += count as u64;
                bytes += records.len() as u64;
            }
            Frame::Message(ServerMessage::Events { events: evs }) => received += evs.len() as u64,
            Frame::Message(ServerMessage::Welcome { .. }) => {}
            Frame::Message(other) => return Err(failed(format!("unexpected {other:?}"))),
            Frame::Malformed(e) => return Err(failed(e)),
        }
    }
    let elapsed = start.elapsed();
    crate::quic::close_gracefully(&conn, &mut send, crate::quic::close::DONE, "done").await;
    endpoint.wait_idle().await;
    Ok((received, bytes, elapsed))
}

/// An event as the JSON protocol sends it (the seed's object and its
/// position), parsed the way a client would.
#[derive(serde::Deserialize)]
#[allow(dead_code)] // Parsed to measure parsing; not read.
struct JsonEvent {
    event_id: strata::Uuid,
    aggregate_id: String,
    version: u64,
    event_type: String,
    event_data: Box<serde_json::value::RawValue>,
    timestamp: String,
    #[serde(default)]
    metadata: Option<Box<serde_json::value::RawValue>>,
    position: u64,
}

#[derive(serde::Deserialize)]
struct JsonMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    missing_events: Vec<JsonEvent>,
    #[serde(default)]
    events: Vec<JsonEvent>,
    #[serde(default)]
    new_server_hlc: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// How long the JSON client waits for more before asking again with its
/// cursor, as a seed client polling would.
const WS_POLL: Duration = Duration::from_secs(2);

/// The seed design's client-side table, verbatim (as in the engine's
/// benchmarks).
const SEED_SCHEMA: &str = "
CREATE TABLE events (
    event_id        TEXT PRIMARY KEY,
    aggregate_id    TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,
    timestamp       TEXT NOT NULL,
    metadata        BLOB,
    CONSTRAINT ux_aggregate_version UNIQUE (aggregate_id, version)
);
CREATE INDEX idx_events_aggregate_id ON events (aggregate_id);
CREATE INDEX idx_events_timestamp ON events (timestamp);
";

/// Messages parsed but not yet stored by the JSON client (it reads ahead
/// while it stores, as the QUIC replica does).
const WS_STORE_QUEUE: usize = 8;

/// Stores batches of events in the seed's table, one durable transaction
/// per message, until the channel closes.
fn seed_store(
    path: &Path,
    rx: std::sync::mpsc::Receiver<Vec<JsonEvent>>,
) -> Result<(), SyncBenchError> {
    use strata::projection::rusqlite::{Connection, params};
    let sql = |e: strata::projection::rusqlite::Error| failed(format!("seed table: {e}"));
    let mut conn = Connection::open(path).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    conn.execute_batch(SEED_SCHEMA).map_err(sql)?;
    for batch in rx {
        let tx = conn.transaction().map_err(sql)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (event_id, aggregate_id, version, event_type, event_data, timestamp, metadata)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            for e in &batch {
                stmt.execute(params![
                    e.event_id.to_string(),
                    e.aggregate_id,
                    e.version,
                    e.event_type,
                    e.event_data.get(),
                    e.timestamp,
                    e.metadata.as_ref().map(|m| m.get()),
                ])
                .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
    }
    Ok(())
}

/// The seed's client: `client_sync_request` from `""`, then every event the
/// server sends (the response's `missing_events`, then `server_new_events`),
/// asking again with the last cursor if the server goes quiet. With
/// `store`, it keeps the events in the seed's SQLite table there, as a seed
/// client does. Returns (distinct events, JSON bytes).
async fn ws_receive_all(
    http: SocketAddr,
    events: u64,
    store: Option<&Path>,
) -> Result<(u64, u64), SyncBenchError> {
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
        .await
        .map_err(failed)?;
    let (store_tx, writer) = match store {
        Some(path) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(WS_STORE_QUEUE);
            let path = path.to_path_buf();
            (
                Some(tx),
                Some(std::thread::spawn(move || seed_store(&path, rx))),
            )
        }
        None => (None, None),
    };
    let request = |cursor: &str| {
        serde_json::json!({ "type": "client_sync_request", "last_synced_hlc": cursor, "local_events": [] }).to_string()
    };
    ws.send(Message::Text(request("").into()))
        .await
        .map_err(failed)?;
    let mut seen = HashSet::with_capacity(events as usize);
    let mut bytes = 0u64;
    let mut cursor = String::new();
    while (seen.len() as u64) < events {
        let msg = match tokio::time::timeout(WS_POLL, ws.next()).await {
            Err(_) => {
                ws.send(Message::Text(request(&cursor).into()))
                    .await
                    .map_err(failed)?;
                continue;
            }
            Ok(None) => return Err(failed("the server closed the WebSocket")),
            Ok(Some(m)) => m.map_err(failed)?,
        };
        let Message::Text(text) = msg else { continue };
        bytes += text.len() as u64;
        let m: JsonMessage = serde_json::from_str(text.as_str()).map_err(failed)?;
        match m.kind.as_str() {
            "server_sync_response" | "server_new_events" => {}
            "error" => {
                return Err(failed(format!(
                    "the server said: {}",
                    m.message.unwrap_or_default()
                )));
            }
            _ => continue,
        }
        if let Some(c) = m.new_server_hlc {
            cursor = c;
        }
        let mut batch = m.missing_events;
        batch.extend(m.events);
        batch.retain(|e| seen.insert(e.position));
        if let Some(tx) = &store_tx {
            // The writer thread may be busy syncing: wait off the runtime.
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || tx.send(batch))
                .await
                .map_err(failed)?
                .map_err(|_| failed("the seed table writer stopped"))?;
        }
    }
    let _ = ws.close(None).await;
    drop(store_tx);
    if let Some(w) = writer {
        tokio::task::spawn_blocking(move || w.join())
            .await
            .map_err(failed)?
            .map_err(|_| failed("the seed table writer panicked"))??;
    }
    Ok((seen.len() as u64, bytes))
}

// --- sync_push_contention ------------------------------------------------------

/// Figures of one contention run.
struct Contention {
    elapsed: Duration,
    max_retries: u64,
    pushes: u64,
}

async fn contention_run(
    events: u64,
    dir: &Path,
    pull_before_push: bool,
) -> Result<Contention, SyncBenchError> {
    let server = start_server(&dir.join("server")).await?;
    let per = events / CONTENTION_REPLICAS as u64;
    let total = per * CONTENTION_REPLICAS as u64;
    // Offline, untimed: every replica appends its events to its outbox.
    let mut replicas = Vec::new();
    for i in 0..CONTENTION_REPLICAS {
        let r = open_replica(&dir.join(format!("replica-{i}")))?;
        let writer = r.clone();
        tokio::task::spawn_blocking(move || -> Result<(), strata::Error> {
            let agg = format!("hot-{}", i % CONTENTION_AGGREGATES);
            let events: Vec<NewEvent> = (0..per)
                .map(|n| NewEvent::new("Recorded", strata::bench::payload(n)))
                .collect();
            writer.append(&agg, ExpectedVersion::Any, events)?;
            Ok(())
        })
        .await
        .map_err(failed)??;
        replicas.push(r);
    }
    // Timed: all connect at once and push in small batches until every
    // replica holds every event.
    let mut clients = Vec::new();
    for r in &replicas {
        let mut opts = server.options();
        opts.pull_before_push = pull_before_push;
        opts.push_events_max = CONTENTION_PUSH_EVENTS;
        clients.push(Arc::new(SyncClient::new(r.clone(), opts)?));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let runs: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, stop) = (c.clone(), stop_rx.clone());
            tokio::spawn(async move { c.run(stop).await })
        })
        .collect();
    loop {
        if clients.iter().all(|c| {
            let s = c.status();
            s.pending == 0 && s.committed == total
        }) {
            break;
        }
        if start.elapsed() > SYNC_DEADLINE {
            return Err(failed(
                "sync_push_contention: replicas did not finish in time",
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(true);
    for r in runs {
        r.await.map_err(failed)??;
    }
    let reports: Vec<_> = clients.iter().map(|c| c.report()).collect();
    drop(clients);
    for r in replicas {
        close_replica(r)?;
    }
    server.stop().await?;
    Ok(Contention {
        elapsed,
        max_retries: reports.iter().map(|r| r.pull_required).max().unwrap_or(0),
        pushes: reports.iter().map(|r| r.pushes).sum(),
    })
}

/// Runs of each policy in `sync_push_contention`; the median counts (turn
/// hand-overs make single runs noisy).
pub const CONTENTION_RUNS: usize = 3;

async fn sync_push_contention(events: u64, dir: &Path) -> Result<WorkloadResult, SyncBenchError> {
    let events = events / CONTENTION_REPLICAS as u64 * CONTENTION_REPLICAS as u64;
    let mut behind = Vec::new();
    let mut strict = Vec::new();
    for run in 0..CONTENTION_RUNS {
        // Alternate, so that drift in the machine's load hits both.
        behind.push(contention_run(events, &dir.join(format!("behind-{run}")), false).await?);
        strict.push(contention_run(events, &dir.join(format!("strict-{run}")), true).await?);
    }
    let median = |runs: &mut Vec<Contention>| {
        runs.sort_by_key(|c| c.elapsed);
        runs.swap_remove(runs.len() / 2)
    };
    let secs = |runs: &[Contention]| {
        runs.iter()
            .map(|c| c.elapsed.as_secs_f64())
            .collect::<Vec<_>>()
    };
    let (behind_secs, strict_secs) = (secs(&behind), secs(&strict));
    let (b, s) = (median(&mut behind), median(&mut strict));
    let r = result("sync_push_contention", events, b.elapsed, s.elapsed);
    let r = with(r, "replicas", CONTENTION_REPLICAS as u64);
    let r = with(r, "aggregates", CONTENTION_AGGREGATES as u64);
    let r = with(r, "max_retries", b.max_retries);
    let r = with(r, "pushes", b.pushes);
    let r = with(r, "strict_max_retries", s.max_retries);
    let r = with(r, "strict_pushes", s.pushes);
    let r = with(r, "runs_secs", behind_secs);
    Ok(with(r, "strict_runs_secs", strict_secs))
}
