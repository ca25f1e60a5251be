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
//! * `sync_push_fanin`: [`FANIN_REPLICAS`] clients over QUIC, each with
//!   its own connection, push one-event batches to their own aggregates,
//!   one push in flight each, [`FANIN_PUSHES`] pushes a client. The clients
//!   speak the binary protocol directly (no local replica store), so the
//!   figure is the server's: `strata_eps` with group commit, `baseline_eps`
//!   the same server with one commit, and one sync, per push
//!   (`commit_pushes_max = 1`). Also events per fsync and push latency
//!   (p50, p99), from sending a push to its `Accepted`.
//! * `sync_archive_lag`: the `sync_push_fanin` load (group commit) on a
//!   server that archives its store to a directory (`--archive`, the
//!   default interval) against the same load without the archive: the
//!   ratio is what archiving costs the writers. While it runs the head and
//!   the archive's head are sampled every [`ARCHIVE_SAMPLE`]; the lag of a
//!   sample is the time until the archive held the head seen then
//!   (p50, p99, max), and `catch_up_ms` the time from the last push's
//!   answer until the archive holds everything.
//! * `sync_push_contention_json`: clients that speak only the seed's JSON
//!   protocol over `/ws` write to one aggregate, 1 to 5 events a request,
//!   pushing their rebased events at once after `PULL_REQUIRED`: 5 clients
//!   of [`JSON_CONTENTION_EVENTS`]`.0` events and 32 of `.1`. `strata_eps`
//!   is the 32-client run, `baseline_eps` one client writing as many events
//!   alone (what contention costs); each run reports events/s, the most
//!   rounds one request took, and p99 request latency, and checks that
//!   every event landed once, versions contiguous.
//! * `sync_scale_out`: the `sync_push_fanin` clients (one-event pushes,
//!   one in flight each), against three setups in one run: one node on
//!   the embedded backend (`baseline_eps`), one node on PostgreSQL, and
//!   three nodes on the same PostgreSQL with the clients spread over them
//!   (`strata_eps`); events/s and p99 push latency of each. Needs a
//!   scratch database ([`SyncBenchConfig::database_url`]); skipped without
//!   one. Each run writes to a new store of its own there.
//! * `server_shutdown`: [`SHUTDOWN_STORES`] hosted stores, each holding a
//!   few events, open in a registry; `strata_eps` is stores closed per
//!   second by [`crate::Registry::close`] (several at once), `baseline_eps`
//!   the same stores, opened again, closed one after another (the server
//!   before issue 13).

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
use crate::tls::Trust;
use strata_sync::transport::{Frame, read_frame, write_frame};

/// Every sync workload, in the order [`run`] runs them.
pub const WORKLOADS: &[&str] = &[
    "sync_catchup",
    "sync_push_contention",
    "sync_push_fanin",
    "sync_archive_lag",
    "sync_push_contention_json",
    "sync_scale_out",
    "server_shutdown",
];
/// Nodes of the multi-node run of `sync_scale_out`.
pub const SCALE_OUT_NODES: usize = 3;
/// Stores open in `server_shutdown` (the probe had 101).
pub const SHUTDOWN_STORES: usize = 101;
/// Clients in `sync_push_fanin`.
pub const FANIN_REPLICAS: usize = 64;
/// One-event pushes each client makes in `sync_archive_lag`: enough for
/// the load to last several archive intervals.
pub const ARCHIVE_LAG_PUSHES: u64 = 1_000;
/// How often `sync_archive_lag` samples the head and the archive's head.
pub const ARCHIVE_SAMPLE: Duration = Duration::from_millis(5);
/// One-event pushes each `sync_push_fanin` client makes.
pub const FANIN_PUSHES: u64 = 200;
/// Events per client of the 5- and 32-client runs of
/// `sync_push_contention_json`.
pub const JSON_CONTENTION_EVENTS: (u64, u64) = (200, 100);
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
    /// A scratch PostgreSQL database for `sync_scale_out` (skipped
    /// without one).
    pub database_url: Option<String>,
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
    if wanted("sync_push_fanin") {
        let r = runtime.block_on(sync_push_fanin(&config.dir.join("fanin")))?;
        report(&r);
        results.push(r);
    }
    if wanted("sync_archive_lag") {
        let r = runtime.block_on(sync_archive_lag(&config.dir.join("archive-lag")))?;
        report(&r);
        results.push(r);
    }
    if wanted("sync_push_contention_json") {
        let r = runtime.block_on(sync_push_contention_json(&config.dir.join("json")))?;
        report(&r);
        results.push(r);
    }
    if wanted("sync_scale_out") {
        match &config.database_url {
            Some(url) => {
                let r = runtime.block_on(sync_scale_out(&config.dir.join("scale-out"), url))?;
                report(&r);
                results.push(r);
            }
            None => tracing::warn!(
                "sync_scale_out skipped: it needs a scratch PostgreSQL database (--database-url or STRATA_BENCH_DATABASE_URL)"
            ),
        }
    }
    if wanted("server_shutdown") {
        let r = server_shutdown(&config.dir.join("shutdown"))?;
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
    registry: Arc<crate::Registry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), crate::ServerError>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        // Not stopped (a workload failed): let its threads go without
        // blocking this runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn start_server(data: &Path) -> Result<BenchServer, SyncBenchError> {
    start_server_with(data, |_| {}).await
}

async fn start_server_with(
    data: &Path,
    tweak: impl FnOnce(&mut crate::Config),
) -> Result<BenchServer, SyncBenchError> {
    let mut config = crate::Config::new(
        data.to_path_buf(),
        "127.0.0.1:0".parse().expect("an address"),
        Some("127.0.0.1:0".parse().expect("an address")),
    );
    // Every bench client comes from 127.0.0.1, as a load generator's would:
    // the per-address limits meant for one device on the internet would
    // measure the throttle, not the server. The totals stay as shipped.
    config.unauthenticated_per_address_max = config.unauthenticated_max;
    config.http_connections_per_address_max = config.http_connections_max;
    tweak(&mut config);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The server gets a runtime of its own, as in production: its threads
    // are not the clients', and a profile tells them apart.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-server")
        .enable_all()
        .build()?;
    let task = runtime.spawn(crate::serve(
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
        registry: bound.registry.clone(),
        stop: Some(stop),
        task,
        runtime: Some(runtime),
    })
}

/// Where a protocol-level bench client connects, and to which store.
#[derive(Debug, Clone)]
struct Target {
    quic: SocketAddr,
    fingerprint: String,
    store: String,
}

impl BenchServer {
    fn target(&self) -> Target {
        Target {
            quic: self.quic,
            fingerprint: self.fingerprint.clone(),
            store: crate::DEFAULT_STORE.into(),
        }
    }

    fn options(&self) -> ClientOptions {
        ClientOptions::new(self.quic.to_string(), Trust::Pin(self.fingerprint.clone()))
    }

    async fn stop(mut self) -> Result<(), SyncBenchError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(failed)??;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
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
    let (endpoint, conn, mut send, mut recv) = quic_client(&server.target(), "bench").await?;
    let mut buf = Vec::new();
    write_frame(
        &mut send,
        &mut buf,
        &ClientMessage::Follow { from: 1 },
        crate::quic::SEND_TIMEOUT,
    )
    .await
    .map_err(failed)?;
    let (mut received, mut bytes) = (0u64, 0u64);
    while received < events {
        match next_message(&mut recv).await? {
            Frame::Message(ServerMessage::Records { count, records, .. }) => {
                received += count as u64;
                bytes += records.len() as u64;
            }
            Frame::Message(ServerMessage::Events { events: evs }) => received += evs.len() as u64,
            Frame::Message(other) => return Err(failed(format!("unexpected {other:?}"))),
            Frame::Malformed(e) => return Err(failed(e)),
        }
    }
    let elapsed = start.elapsed();
    strata_sync::transport::close_gracefully(&conn, &mut send, crate::quic::close::DONE, "done")
        .await;
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
    status: Option<String>,
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

// --- sync_push_fanin ---------------------------------------------------------

/// Figures of one fan-in run.
struct FanIn {
    elapsed: Duration,
    /// Every push's time from sending to its `Accepted`.
    latencies: Vec<Duration>,
    /// `fdatasync` calls of the store's log during the run.
    syncs: u64,
    /// Group commits during the run.
    commits: u64,
    /// With an archive: each sample's lag (sorted), and the catch-up.
    archive: Option<(Vec<Duration>, Duration)>,
}

/// The value at quantile `q` of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The server's next frame on a bench client's stream.
async fn next_message(
    recv: &mut quinn::RecvStream,
) -> Result<Frame<ServerMessage>, SyncBenchError> {
    read_frame(recv, strata::sync::wire::MESSAGE_BYTES_MAX, None, None)
        .await
        .map_err(failed)
}

/// A protocol-level QUIC client: connects, says Hello to the target's
/// store, and returns the streams.
async fn quic_client(
    server: &Target,
    name: &str,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ),
    SyncBenchError,
> {
    let tls = crate::tls::client_config(&Trust::Pin(server.fingerprint.clone())).map_err(failed)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.config).map_err(failed)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(strata_sync::transport::transport_config(
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
    let hello = ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        store: server.store.clone(),
        token: None,
        client: name.into(),
    };
    write_frame(&mut send, &mut buf, &hello, crate::quic::SEND_TIMEOUT)
        .await
        .map_err(failed)?;
    match next_message(&mut recv).await? {
        Frame::Message(ServerMessage::Welcome { .. }) => Ok((endpoint, conn, send, recv)),
        other => Err(failed(format!("expected Welcome, got {other:?}"))),
    }
}

/// One fan-in client: `pushes` one-event pushes to its own aggregate, one
/// in flight at a time; returns each push's latency.
async fn fanin_client(
    server: Target,
    replica: usize,
    pushes: u64,
) -> Result<Vec<Duration>, SyncBenchError> {
    let name = format!("fanin-{replica}");
    let (endpoint, conn, mut send, mut recv) = quic_client(&server, &name).await?;
    let mut buf = Vec::new();
    let mut latencies = Vec::with_capacity(pushes as usize);
    for version in 1..=pushes {
        let event = strata::sync::proto::Proposal {
            event_id: strata::Uuid::now_v7(),
            aggregate_id: name.clone(),
            version,
            event_type: "Recorded".into(),
            data: strata::bench::payload(version),
            timestamp: strata::Timestamp::from_parts(crate::quic::now_ms(), 0, &name)
                .map_err(failed)?,
            metadata: None,
        };
        let push = ClientMessage::Push {
            request: version,
            base: 0,
            events: vec![event],
        };
        let sent = Instant::now();
        write_frame(&mut send, &mut buf, &push, crate::quic::SEND_TIMEOUT)
            .await
            .map_err(failed)?;
        match next_message(&mut recv).await? {
            Frame::Message(ServerMessage::Accepted { request, .. }) if request == version => {}
            Frame::Message(other) => {
                return Err(failed(format!("{name}: push {version} answered {other:?}")));
            }
            Frame::Malformed(e) => return Err(failed(e)),
        }
        latencies.push(sent.elapsed());
    }
    strata_sync::transport::close_gracefully(&conn, &mut send, crate::quic::close::DONE, "done")
        .await;
    endpoint.wait_idle().await;
    Ok(latencies)
}

async fn fanin_run(
    dir: &Path,
    commit_pushes_max: usize,
    archive: bool,
    pushes: u64,
) -> Result<FanIn, SyncBenchError> {
    let archive_dir = dir.join("archive");
    let server = Arc::new(
        start_server_with(&dir.join("data"), |c| {
            c.sync.commit_pushes_max = commit_pushes_max;
            if archive {
                c.archive = Some(crate::registry::ArchiveConfig {
                    url: archive_dir.display().to_string(),
                    options: strata_archive::ArchiveOptions::default(),
                });
            }
        })
        .await?,
    );
    let hosted = server
        .registry
        .get_open(crate::DEFAULT_STORE)
        .ok_or_else(|| failed("the default store is not open"))?;
    let stats = |h: &crate::registry::Hosted| {
        (
            h.syncs().unwrap_or(0),
            h.stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let before = stats(&hosted);
    let sampler = hosted.archive_status().cloned().map(|status| {
        let hosted = hosted.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut samples = Vec::new();
                let started = Instant::now();
                loop {
                    let (head, archived) = (hosted.known_head(), status.head());
                    samples.push((Instant::now(), head, archived));
                    let done = stop.load(std::sync::atomic::Ordering::Acquire);
                    if (done && archived >= head) || started.elapsed() > SYNC_DEADLINE {
                        return samples;
                    }
                    tokio::time::sleep(ARCHIVE_SAMPLE).await;
                }
            }
        });
        (stop, task)
    });
    let (elapsed, latencies) = fan_in(&[server.target()], pushes).await?;
    let after = stats(&hosted);
    let finished = Instant::now();
    let archive = match sampler {
        Some((stop, task)) => {
            stop.store(true, std::sync::atomic::Ordering::Release);
            let samples = task.await.map_err(failed)?;
            Some(archive_lags(&samples, finished)?)
        }
        None => None,
    };
    let head = hosted.known_head();
    drop(hosted);
    let total = FANIN_REPLICAS as u64 * pushes;
    if head != total {
        return Err(failed(format!(
            "sync_push_fanin: the log holds {head} of {total} events"
        )));
    }
    Arc::try_unwrap(server)
        .map_err(|_| failed("the server is still in use"))?
        .stop()
        .await?;
    Ok(FanIn {
        elapsed,
        latencies,
        syncs: after.0 - before.0,
        commits: after.1 - before.1,
        archive,
    })
}

/// From samples of (when, head, archived head): each sample's lag, the
/// time until a later sample's archive held that sample's head (sorted),
/// and the time from `finished` until the archive held the last head.
fn archive_lags(
    samples: &[(Instant, u64, u64)],
    finished: Instant,
) -> Result<(Vec<Duration>, Duration), SyncBenchError> {
    let mut lags = Vec::with_capacity(samples.len());
    let mut k = 0;
    for &(at, head, _) in samples {
        while k < samples.len() && (samples[k].2 < head || samples[k].0 < at) {
            k += 1;
        }
        let Some(&(when, _, _)) = samples.get(k) else {
            return Err(failed(format!(
                "sync_archive_lag: the archive never reached position {head}"
            )));
        };
        lags.push(when - at);
    }
    lags.sort();
    let last = samples.last().ok_or_else(|| failed("no samples"))?;
    Ok((lags, last.0.saturating_duration_since(finished)))
}

/// [`FANIN_REPLICAS`] fan-in clients, spread over `targets` in turn, all
/// at once: the time until the last is done, and every push's latency
/// (sorted).
async fn fan_in(
    targets: &[Target],
    pushes: u64,
) -> Result<(Duration, Vec<Duration>), SyncBenchError> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..FANIN_REPLICAS)
        .map(|r| {
            let target = targets[r % targets.len()].clone();
            tokio::spawn(fanin_client(target, r, pushes))
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(
            tokio::time::timeout(SYNC_DEADLINE, t)
                .await
                .map_err(|_| failed("a fan-in client did not finish in time"))?
                .map_err(failed)??,
        );
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok((elapsed, latencies))
}

// --- sync_scale_out ----------------------------------------------------------

/// `sync_scale_out`: fan-in through one embedded node, one PostgreSQL
/// node, and [`SCALE_OUT_NODES`] PostgreSQL nodes on one database.
async fn sync_scale_out(dir: &Path, url: &str) -> Result<WorkloadResult, SyncBenchError> {
    let events = FANIN_REPLICAS as u64 * FANIN_PUSHES;
    let embedded = {
        let server = start_server(&dir.join("embedded")).await?;
        let run = fan_in(&[server.target()], FANIN_PUSHES).await?;
        server.stop().await?;
        run
    };
    let one = scale_out_run(&dir.join("pg-1"), url, 1).await?;
    let many = scale_out_run(&dir.join("pg-n"), url, SCALE_OUT_NODES).await?;
    let eps = |d: Duration| events as f64 / d.as_secs_f64().max(1e-9);
    let p99 = |l: &[Duration]| ms(quantile(l, 0.99));
    let r = result("sync_scale_out", events, many.0, embedded.0);
    let r = with(r, "replicas", FANIN_REPLICAS as u64);
    let r = with(r, "nodes", SCALE_OUT_NODES as u64);
    let r = with(r, "embedded_eps", eps(embedded.0));
    let r = with(r, "embedded_p99_push_ms", p99(&embedded.1));
    let r = with(r, "pg_1_node_eps", eps(one.0));
    let r = with(r, "pg_1_node_p99_push_ms", p99(&one.1));
    let r = with(r, "pg_n_nodes_eps", eps(many.0));
    Ok(with(r, "pg_n_nodes_p99_push_ms", p99(&many.1)))
}

/// Fan-in through `nodes` nodes on database `url`, to a new store; checks
/// that the log holds every push once.
async fn scale_out_run(
    dir: &Path,
    url: &str,
    nodes: usize,
) -> Result<(Duration, Vec<Duration>), SyncBenchError> {
    let store = format!("bench-{}", strata::Uuid::now_v7().simple());
    let mut servers: Vec<BenchServer> = Vec::new();
    for i in 0..nodes {
        let data = dir.join(format!("node-{i}"));
        if i > 0 {
            // One identity for every node, as a deployment has.
            copy_dir(
                &dir.join("node-0").join(crate::tls::TLS_DIR),
                &data.join(crate::tls::TLS_DIR),
            )?;
        }
        let url = url.to_owned();
        servers.push(
            start_server_with(&data, move |c| {
                c.database = Some(crate::pg::PgConfig::new(url));
            })
            .await?,
        );
    }
    let targets: Vec<Target> = servers
        .iter()
        .map(|s| Target {
            store: store.clone(),
            ..s.target()
        })
        .collect();
    let run = fan_in(&targets, FANIN_PUSHES).await?;
    let hosted = servers[0]
        .registry
        .get_open(&store)
        .ok_or_else(|| failed("sync_scale_out: the store is not open"))?;
    let log = tokio::task::spawn_blocking(move || hosted.log.read(1, usize::MAX, usize::MAX))
        .await
        .map_err(failed)?
        .map_err(failed)?;
    let ids: HashSet<strata::Uuid> = log.iter().map(|e| e.event_id).collect();
    let total = FANIN_REPLICAS * FANIN_PUSHES as usize;
    if log.len() != total || ids.len() != total {
        return Err(failed(format!(
            "sync_scale_out: the log holds {} events ({} ids) of {total}",
            log.len(),
            ids.len()
        )));
    }
    for s in servers {
        s.stop().await?;
    }
    Ok(run)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), SyncBenchError> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

async fn sync_push_fanin(dir: &Path) -> Result<WorkloadResult, SyncBenchError> {
    let events = FANIN_REPLICAS as u64 * FANIN_PUSHES;
    let max = crate::registry::COMMIT_PUSHES_MAX;
    let group = fanin_run(&dir.join("group"), max, false, FANIN_PUSHES).await?;
    let single = fanin_run(&dir.join("single"), 1, false, FANIN_PUSHES).await?;
    let per_sync = |f: &FanIn| events as f64 / f.syncs.max(1) as f64;
    let r = result("sync_push_fanin", events, group.elapsed, single.elapsed);
    let r = with(r, "replicas", FANIN_REPLICAS as u64);
    let r = with(r, "events_per_fsync", per_sync(&group));
    let r = with(r, "baseline_events_per_fsync", per_sync(&single));
    let r = with(r, "commits", group.commits);
    let r = with(r, "p50_push_ms", ms(quantile(&group.latencies, 0.5)));
    let r = with(r, "p99_push_ms", ms(quantile(&group.latencies, 0.99)));
    let r = with(
        r,
        "baseline_p50_push_ms",
        ms(quantile(&single.latencies, 0.5)),
    );
    Ok(with(
        r,
        "baseline_p99_push_ms",
        ms(quantile(&single.latencies, 0.99)),
    ))
}

/// `sync_archive_lag`: the fan-in load with and without the archive, twice
/// each in turn (the faster run of each counts, so that drift in the
/// machine's load hits both alike).
async fn sync_archive_lag(dir: &Path) -> Result<WorkloadResult, SyncBenchError> {
    let events = FANIN_REPLICAS as u64 * ARCHIVE_LAG_PUSHES;
    let max = crate::registry::COMMIT_PUSHES_MAX;
    let mut archived: Option<FanIn> = None;
    let mut plain: Option<FanIn> = None;
    let mut runs = Vec::new();
    for round in 0..2 {
        let a = fanin_run(
            &dir.join(format!("archived-{round}")),
            max,
            true,
            ARCHIVE_LAG_PUSHES,
        )
        .await?;
        let p = fanin_run(
            &dir.join(format!("plain-{round}")),
            max,
            false,
            ARCHIVE_LAG_PUSHES,
        )
        .await?;
        runs.push(serde_json::json!([
            a.elapsed.as_secs_f64(),
            p.elapsed.as_secs_f64()
        ]));
        if archived.as_ref().is_none_or(|b| a.elapsed < b.elapsed) {
            archived = Some(a);
        }
        if plain.as_ref().is_none_or(|b| p.elapsed < b.elapsed) {
            plain = Some(p);
        }
    }
    let (archived, plain) = (archived.expect("ran twice"), plain.expect("ran twice"));
    let (lags, catch_up) = archived
        .archive
        .clone()
        .ok_or_else(|| failed("the archived run has no archive"))?;
    let r = result("sync_archive_lag", events, archived.elapsed, plain.elapsed);
    let r = with(r, "replicas", FANIN_REPLICAS as u64);
    let r = with(r, "runs_secs_archived_plain", runs);
    let r = with(
        r,
        "archive_interval_ms",
        strata_archive::INTERVAL_DEFAULT.as_millis() as u64,
    );
    let r = with(r, "lag_p50_ms", ms(quantile(&lags, 0.5)));
    let r = with(r, "lag_p99_ms", ms(quantile(&lags, 0.99)));
    let r = with(
        r,
        "lag_max_ms",
        ms(lags.last().copied().unwrap_or_default()),
    );
    let r = with(r, "catch_up_ms", ms(catch_up));
    let r = with(r, "p99_push_ms", ms(quantile(&archived.latencies, 0.99)));
    Ok(with(
        r,
        "baseline_p99_push_ms",
        ms(quantile(&plain.latencies, 0.99)),
    ))
}

// --- sync_push_contention_json -----------------------------------------------

/// Figures of one JSON contention run.
struct JsonContention {
    elapsed: Duration,
    events: u64,
    /// Most responses one request needed (1: accepted at once).
    rounds_max: usize,
    /// Each request's time from sending to its `OK`.
    latencies: Vec<Duration>,
}

/// A client of the seed's JSON protocol: pushes `events` increments to
/// "hot", 1 to 5 a request, rebasing at once after `PULL_REQUIRED` (it
/// renumbers its events after the latest version it has seen).
async fn json_client(
    http: SocketAddr,
    id: usize,
    events: u64,
) -> Result<(usize, Vec<Duration>), SyncBenchError> {
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
        .await
        .map_err(failed)?;
    let node = format!("json{id}");
    let mut seen = 0u64; // the latest version of "hot" it has seen
    let mut cursor = String::new();
    let mut sent = 0u64;
    let mut rounds_max = 0;
    let mut latencies = Vec::new();
    let mut k = id as u64 + 1;
    let mut counter = 0u32;
    let mut first = true;
    while sent < events {
        k = k
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let n = ((k >> 33) % 5 + 1).min(events - sent);
        let ids: Vec<String> = (0..n).map(|_| strata::Uuid::new_v4().to_string()).collect();
        let local = |base: u64, counter: &mut u32| -> Vec<serde_json::Value> {
            ids.iter()
                .enumerate()
                .map(|(i, eid)| {
                    *counter += 1;
                    serde_json::json!({
                        "event_id": eid, "aggregate_id": "hot", "version": base + 1 + i as u64,
                        "event_type": "CounterIncremented", "event_data": {"value": 1},
                        "timestamp": format!("{}:{}:{node}", crate::quic::now_ms(), *counter),
                        "metadata": null,
                    })
                })
                .collect()
        };
        let start = Instant::now();
        let msg = if first {
            first = false;
            serde_json::json!({"type": "client_sync_request", "last_synced_hlc": cursor, "local_events": local(seen, &mut counter)})
        } else {
            serde_json::json!({"type": "client_push_events", "rebased_events": local(seen, &mut counter)})
        };
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .map_err(failed)?;
        let mut rounds = 0;
        loop {
            let Some(m) = ws.next().await else {
                return Err(failed("the server closed the WebSocket"));
            };
            let Message::Text(text) = m.map_err(failed)? else {
                continue;
            };
            let m: JsonMessage = serde_json::from_str(text.as_str()).map_err(failed)?;
            for e in m.missing_events.iter().chain(&m.events) {
                if e.aggregate_id == "hot" {
                    seen = seen.max(e.version);
                }
            }
            if let Some(c) = m.new_server_hlc {
                cursor = c;
            }
            match (m.kind.as_str(), m.status.as_deref()) {
                ("server_sync_response", Some("OK")) => {
                    rounds += 1;
                    break;
                }
                ("server_sync_response", _) => {
                    rounds += 1;
                    let again = serde_json::json!({"type": "client_push_events", "rebased_events": local(seen, &mut counter)});
                    ws.send(Message::Text(again.to_string().into()))
                        .await
                        .map_err(failed)?;
                }
                ("error", _) => {
                    return Err(failed(format!(
                        "{node}: the server said {}",
                        m.message.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
        latencies.push(start.elapsed());
        rounds_max = rounds_max.max(rounds);
        sent += n;
    }
    let _ = ws.close(None).await;
    Ok((rounds_max, latencies))
}

async fn json_contention_run(
    dir: &Path,
    clients: usize,
    per_client: u64,
) -> Result<JsonContention, SyncBenchError> {
    let server = start_server(dir).await?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(json_client(server.http, c, per_client)))
        .collect();
    let mut rounds_max = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (r, l) = tokio::time::timeout(SYNC_DEADLINE, t)
            .await
            .map_err(|_| failed("sync_push_contention_json: a client did not finish in time"))?
            .map_err(failed)??;
        rounds_max = rounds_max.max(r);
        latencies.extend(l);
    }
    let elapsed = start.elapsed();
    let events = clients as u64 * per_client;
    // Every event landed once, versions contiguous.
    let hosted = server
        .registry
        .get_open(crate::DEFAULT_STORE)
        .ok_or_else(|| failed("the default store is not open"))?;
    let log = hosted
        .embedded()
        .ok_or_else(|| failed("the bench server's store is embedded"))?
        .read_events(1, usize::MAX, usize::MAX)?;
    drop(hosted);
    let ids: HashSet<strata::Uuid> = log.iter().map(|e| e.event_id).collect();
    if log.len() as u64 != events
        || ids.len() != log.len()
        || log
            .iter()
            .enumerate()
            .any(|(i, e)| e.version != i as u64 + 1)
    {
        return Err(failed(format!(
            "sync_push_contention_json: {} events logged for {events} sent, {} distinct",
            log.len(),
            ids.len()
        )));
    }
    server.stop().await?;
    latencies.sort();
    Ok(JsonContention {
        elapsed,
        events,
        rounds_max,
        latencies,
    })
}

async fn sync_push_contention_json(dir: &Path) -> Result<WorkloadResult, SyncBenchError> {
    let (five, thirty_two) = JSON_CONTENTION_EVENTS;
    let small = json_contention_run(&dir.join("five"), 5, five).await?;
    let large = json_contention_run(&dir.join("thirty-two"), 32, thirty_two).await?;
    let alone = json_contention_run(&dir.join("alone"), 1, large.events).await?;
    let eps = |c: &JsonContention| c.events as f64 / c.elapsed.as_secs_f64().max(1e-9);
    let r = result(
        "sync_push_contention_json",
        large.events,
        large.elapsed,
        alone.elapsed,
    );
    let r = with(r, "clients", 32u64);
    let r = with(r, "max_rounds", large.rounds_max as u64);
    let r = with(r, "p50_push_ms", ms(quantile(&large.latencies, 0.5)));
    let r = with(r, "p99_push_ms", ms(quantile(&large.latencies, 0.99)));
    let r = with(r, "five_clients_eps", eps(&small));
    let r = with(r, "five_clients_max_rounds", small.rounds_max as u64);
    let r = with(
        r,
        "five_clients_p99_push_ms",
        ms(quantile(&small.latencies, 0.99)),
    );
    Ok(with(
        r,
        "alone_p99_push_ms",
        ms(quantile(&alone.latencies, 0.99)),
    ))
}

/// `server_shutdown`: see the module documentation.
fn server_shutdown(dir: &Path) -> Result<WorkloadResult, SyncBenchError> {
    let names: Vec<String> = (0..SHUTDOWN_STORES).map(|i| format!("s-{i}")).collect();
    let open_all = || -> Result<Arc<crate::Registry>, SyncBenchError> {
        let registry = Arc::new(crate::Registry::new(
            dir.to_path_buf(),
            strata::sync::ServerConfig::default(),
        ));
        for name in &names {
            let hosted = registry.get(name)?;
            let store = hosted
                .embedded()
                .ok_or_else(|| failed("the bench registry's stores are embedded"))?;
            if store.head() == 0 {
                let events = (0..4).map(|i| NewEvent::new("Noted", strata::bench::payload(i)));
                store.append("a", ExpectedVersion::NoStream, events.collect())?;
            }
        }
        Ok(registry)
    };
    // Baseline first: the stores' first opening (creating files) is not
    // timed, and both runs close the same stores.
    let registry = open_all()?;
    let started = Instant::now();
    registry.close_with(1);
    let baseline = started.elapsed();
    let registry = open_all()?;
    let started = Instant::now();
    registry.close();
    let strata = started.elapsed();
    let r = result("server_shutdown", SHUTDOWN_STORES as u64, strata, baseline);
    let r = with(r, "parallel_ms", strata.as_millis() as u64);
    Ok(with(r, "one_by_one_ms", baseline.as_millis() as u64))
}
