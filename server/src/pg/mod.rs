//! The canonical log in PostgreSQL: several stateless `strata-server`
//! nodes share one database and serve the same stores (issue 14).
//!
//! # Brief overview
//!
//! * [`PgDatabase`]: one node's connection pool to the database. Connecting
//!   checks that the database is reachable, speaks UTF-8, and has a schema
//!   this binary knows, migrating an older one ([`schema`]).
//! * [`PgLog`]: one hosted store's log in that database, implementing
//!   [`CanonicalLog`] with the same promises as the embedded store.
//! * [`HeadListener`]: wakes a node when any node commits (LISTEN/NOTIFY on
//!   a dedicated connection, polling as the fallback).
//!
//! docs/POSTGRES.md describes the schema and how to set up the database.
//!
//! # Client: tokio-postgres with deadpool-postgres
//!
//! tokio-postgres is the maintained asynchronous client on which the Rust
//! PostgreSQL ecosystem builds (sqlx's own driver aside). It pipelines
//! statements on one connection (several in flight before the first answer,
//! which shortens the time a commit holds the store's lock), takes arrays
//! of every type as parameters (one `INSERT … SELECT FROM unnest(…)` per
//! commit), gives notifications as messages of the connection (LISTEN), and
//! runs on Tokio, which the server runs on already. deadpool-postgres adds
//! a small pool with a per-connection statement cache and nothing else.
//! sqlx was the alternative: its compile-time checked queries need a
//! database (or checked-in metadata) at build time, it brings its own pool,
//! migrator and runtime layer, and it does not pipeline statements on one
//! connection. The SQL here is a handful of fixed statements, which the
//! contract tests run against a real PostgreSQL.
//!
//! # Gapless positions across nodes
//!
//! Every commit of a store is one transaction that first takes the store's
//! row in `strata_stores` `FOR UPDATE`: the store's position lock, shared
//! by every node because it lives in the database. Under it the commit
//! reads `head`, checks the pushes against the log, inserts its events at
//! `head + 1 …`, sets `head`, queues a notification and commits; the lock
//! is released only at commit (or rollback). So commits of one store run
//! one at a time, whichever node makes them: each starts from the head the
//! previous one committed, and positions follow each other without gaps in
//! commit order. A commit that fails rolls back whole: its positions were
//! never visible and the next commit takes them. A reader sees a committed
//! transaction's rows and its new head together (one snapshot per
//! statement), and since a commit can only start after the previous one
//! became visible, it never sees a later commit without the earlier ones:
//! reads are bounded by the head read in the same statement.
//!
//! # Group commit
//!
//! [`CanonicalLog::append_pushes`] gets every push of one node's group
//! commit; they go in one transaction, so they share one WAL flush, as the
//! embedded store's pushes share one `fdatasync`. The pushes are checked in
//! memory ([`plan`]) against what the transaction read under the lock.
//!
//! # Threads
//!
//! [`CanonicalLog`] is synchronous: the server calls it from its committer
//! thread and from Tokio's blocking threads (`spawn_blocking`). [`PgLog`]
//! runs each call on the runtime it was connected in with
//! [`Handle::block_on`](tokio::runtime::Handle::block_on): the calling
//! thread drives the query, the connections' I/O runs on the runtime's
//! workers. That needs a multi-thread runtime (checked at connect), and a
//! call from inside an async task panics ("Cannot start a runtime from
//! within a runtime"): call it where blocking is allowed, as the server
//! does.

mod listener;
mod plan;
mod presence;
pub mod schema;
mod turn;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::future::try_join_all;
use strata::hlc::{DRIFT_MS_MAX_DEFAULT, Hlc, NodeId};
use strata::sync::proto::Proposal;
use strata::sync::server::LEASE_MS_DEFAULT;
use strata::sync::{CanonicalLog, CommitResult, Push, PushOutcome, StorageError};
use strata::{Event, Limits, SystemClock, Timestamp, Uuid, WallClock};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls};

pub use listener::{
    HeadListener, HeadSource, HeadUpdate, LISTEN_POLL_INTERVAL_DEFAULT,
    LISTEN_RECONNECT_DELAY_DEFAULT, LISTEN_RECONNECT_DELAY_MAX, LISTENER_APPLICATION_NAME,
    ListenerConfig,
};
pub use presence::{PRESENCE_APPLICATION_NAME, PRESENCE_LOCK_CLASS};
pub use schema::SCHEMA_VERSION;
pub use turn::{
    HELD_RECHECK_MS, TURN_AGGREGATES_MAX, TURN_LEASE_MS_MAX, TURN_QUEUE_MAX, WAITER_STALE_LEASES,
};

/// Default [`PgConfig::pool_size_max`].
pub const POOL_SIZE_DEFAULT: usize = 16;
/// Default [`PgConfig::connect_timeout`].
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Longest a call waits for a free connection of the pool.
pub const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one statement may run on the server (`statement_timeout`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a commit waits for a store's position lock (`lock_timeout`):
/// another node's commit holds it for milliseconds, so a wait this long
/// means that node is stuck; the commit fails as unavailable and is
/// retried.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that sits in an open transaction this long is ended by the
/// server (`idle_in_transaction_session_timeout`), so that a node that
/// stalls mid-commit cannot keep a store's lock.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole call ([`PgLog`] method) may take; past it the
/// connection is dropped (the server then rolls its transaction back) and
/// the call fails as unavailable.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The channel every commit notifies, with payload `store:head`.
pub const NOTIFY_CHANNEL: &str = "strata_head";
/// Most rows in one `INSERT` statement of a commit (a commit inserts in
/// several statements beyond this, in one transaction).
pub const INSERT_ROWS_MAX: usize = 4_096;
/// About the most payload bytes in one `INSERT` statement: PostgreSQL
/// refuses one parameter (an array) over 1 GiB, and big messages cost
/// memory on both sides.
pub const INSERT_BYTES_MAX: usize = 32 << 20;
/// What a row counts for in [`CanonicalLog::read`]'s byte limit beyond its
/// text and byte fields (position, id, version, timestamp): about what it
/// takes in a message.
pub const READ_ROW_BYTES_OVERHEAD: i64 = 64;
/// Longest aggregate id the backend takes ([`PgConfig::limits`] may not
/// allow more): PostgreSQL's B-tree index on `(store, aggregate_id,
/// version)` holds keys of at most about 2 700 bytes, and a longer one
/// would fail its whole commit.
pub const PG_AGGREGATE_ID_BYTES_MAX: usize = 2_000;
/// The application name of the pool's connections (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "strata-server";

const _: () = assert!(STATEMENT_TIMEOUT.as_millis() < OPERATION_TIMEOUT.as_millis());
const _: () = assert!(LOCK_TIMEOUT.as_millis() < STATEMENT_TIMEOUT.as_millis());
const _: () = assert!(INSERT_BYTES_MAX < 1 << 30);
const _: () = assert!(strata::event::AGGREGATE_ID_BYTES_MAX_DEFAULT <= PG_AGGREGATE_ID_BYTES_MAX);

/// How a node reaches the database, and the log rules it enforces.
/// Defaults: [`POOL_SIZE_DEFAULT`] connections, [`CONNECT_TIMEOUT_DEFAULT`],
/// default [`Limits`], a 60 s HLC drift limit, the system clock, and a node
/// id derived from each store's id.
#[derive(Clone)]
pub struct PgConfig {
    /// A libpq-style connection string: `postgres://user:pass@host:port/db`
    /// or `host=… port=… user=… dbname=…` (a `host` that is a directory
    /// means a Unix socket there).
    pub url: String,
    /// Most connections this node opens for its logs (the listener has one
    /// more of its own).
    pub pool_size_max: usize,
    /// Longest to wait for a new connection.
    pub connect_timeout: Duration,
    /// The limits each push is checked against (as the embedded store's
    /// [`strata::Options::limits`]).
    pub limits: Limits,
    /// Pushed timestamps further ahead of the wall clock are refused.
    pub hlc_drift_ms_max: u64,
    pub clock: Arc<dyn WallClock>,
    /// Node id of the logs' clocks. They only check and merge the
    /// timestamps clients send (they never stamp an event), so it shows
    /// nowhere; default: derived from the store id, as the embedded store.
    pub node_id: Option<String>,
    /// How long a client refused for a conflict holds the fairness turn,
    /// across every node (the server core's `lease_ms`; module [`turn`]).
    pub turn_lease_ms: u64,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool_size_max: POOL_SIZE_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            limits: Limits::default(),
            hlc_drift_ms_max: DRIFT_MS_MAX_DEFAULT,
            clock: Arc::new(SystemClock),
            node_id: None,
            turn_lease_ms: LEASE_MS_DEFAULT,
        }
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show where it points instead.
        let target = self
            .url
            .parse::<tokio_postgres::Config>()
            .map_or_else(|_| "(unparsable)".to_owned(), |c| describe_target(&c));
        f.debug_struct("PgConfig")
            .field("target", &target)
            .field("pool_size_max", &self.pool_size_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("hlc_drift_ms_max", &self.hlc_drift_ms_max)
            .field("turn_lease_ms", &self.turn_lease_ms)
            .finish()
    }
}

/// Why the PostgreSQL backend could not start or open a store. Messages
/// name the database (never its password) and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    #[error(
        "the database URL is not a PostgreSQL connection string ({reason}); use postgres://USER:PASSWORD@HOST:PORT/DATABASE or key=value pairs (host=… port=… user=… dbname=…)"
    )]
    BadUrl { reason: String },
    #[error("cannot connect to PostgreSQL at {target}: {reason}; {hint}")]
    Unreachable {
        target: String,
        reason: String,
        hint: &'static str,
    },
    #[error("PostgreSQL at {target}: {action} failed: {}{}", describe(.source), hint_suffix(*.hint))]
    Query {
        target: String,
        action: &'static str,
        hint: Option<&'static str>,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "PostgreSQL at {target}: {action} took longer than {timeout:?}; check the database's load and the network"
    )]
    Timeout {
        target: String,
        action: &'static str,
        timeout: Duration,
    },
    #[error(
        "the database at {target} has Strata schema version {found}, newer than this binary's {supported}: a newer strata-server has upgraded it; run that version (or a newer one) on every node, or point the database URL at another database"
    )]
    SchemaNewer {
        target: String,
        found: i32,
        supported: i32,
    },
    #[error(
        "the database at {target} stores text as {found}, not UTF8, so event types and aggregate ids would not survive: create the database with ENCODING 'UTF8' (see docs/POSTGRES.md)"
    )]
    Encoding { target: String, found: String },
    #[error(
        "the PostgreSQL backend needs a multi-thread Tokio runtime (found {found}): connect from one, e.g. #[tokio::main] or Builder::new_multi_thread()"
    )]
    Runtime { found: String },
    #[error("PostgreSQL setting {name} {reason}")]
    Setting { name: &'static str, reason: String },
    #[error("store name {name:?} is invalid: use 1 to 64 characters of a-z, 0-9, _ and -")]
    BadStoreName { name: String },
}

/// Maps a failed statement of `action` on the database at `target` to
/// [`PgError::Query`], with a hint when one applies.
pub(crate) fn query_error(
    target: &str,
    action: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    let target = target.to_owned();
    move |source| PgError::Query {
        target,
        action,
        hint: hint_for(&source),
        source,
    }
}

fn hint_suffix(hint: Option<&'static str>) -> String {
    hint.map(|h| format!("; {h}")).unwrap_or_default()
}

/// A tokio-postgres error in one line: the server's message and SQLSTATE
/// for a database error, the client's with its causes otherwise (its own
/// text is only the kind: "error connecting to server").
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// A pool's error in one line (a connection's with its causes).
fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(source) => describe(source),
        other => other.to_string(),
    }
}

/// What to do about an error, when its SQLSTATE says.
fn hint_for(e: &tokio_postgres::Error) -> Option<&'static str> {
    let code = e.code()?;
    Some(
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            "check the user and password in the database URL"
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            "the database does not exist: create it, owned by the server's user (createdb -O USER NAME; docs/POSTGRES.md)"
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            "the user may not create Strata's tables: make it the database's owner (ALTER DATABASE NAME OWNER TO USER; docs/POSTGRES.md)"
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            "the database has no connection left: lower the pool size or raise max_connections"
        } else {
            return None;
        },
    )
}

/// `user@host:port/dbname` of a connection configuration: where it points,
/// without the password.
fn describe_target(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match c.get_ports().get(i).or(c.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "(no host)".to_owned()
    } else {
        hosts.join(",")
    };
    format!(
        "{}@{hosts}/{}",
        c.get_user().unwrap_or("(default user)"),
        c.get_dbname().unwrap_or("(default database)")
    )
}

/// One node's connections to the database that holds its stores' logs.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct PgDatabase {
    inner: Arc<DbInner>,
}

struct DbInner {
    pool: Pool,
    handle: Handle,
    /// For the listener's own connection.
    pg: tokio_postgres::Config,
    /// Where it points, for messages.
    target: String,
    config: PgConfig,
    /// Drawn at connect: names this node's clients in the stores' turns.
    session: Uuid,
    /// Tells other nodes this one is alive while it lives.
    _presence: presence::Presence,
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase")
            .field("target", &self.inner.target)
            .finish()
    }
}

impl PgDatabase {
    /// Connects to the database: checks the settings, that it answers,
    /// that it speaks UTF-8, and brings its schema to [`SCHEMA_VERSION`]
    /// (refusing a newer one). Call it from the multi-thread Tokio runtime
    /// the logs will use.
    pub async fn connect(config: PgConfig) -> Result<PgDatabase, PgError> {
        let handle = Handle::try_current().map_err(|e| PgError::Runtime {
            found: e.to_string(),
        })?;
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return Err(PgError::Runtime {
                found: format!("{:?}", handle.runtime_flavor()),
            });
        }
        config.limits.validate().map_err(|e| PgError::Setting {
            name: "limits",
            reason: e.to_string(),
        })?;
        if config.limits.aggregate_id_bytes_max > PG_AGGREGATE_ID_BYTES_MAX {
            return Err(PgError::Setting {
                name: "limits.aggregate_id_bytes_max",
                reason: format!(
                    "is {}, more than the PostgreSQL backend's {PG_AGGREGATE_ID_BYTES_MAX} (its index on aggregate ids holds keys of about 2700 bytes at most); lower it",
                    config.limits.aggregate_id_bytes_max
                ),
            });
        }
        if !(1..=TURN_LEASE_MS_MAX).contains(&config.turn_lease_ms) {
            return Err(PgError::Setting {
                name: "turn_lease_ms",
                reason: format!(
                    "is {}, must be 1 to {TURN_LEASE_MS_MAX} (a day)",
                    config.turn_lease_ms
                ),
            });
        }
        if config.pool_size_max == 0 {
            return Err(PgError::Setting {
                name: "pool_size_max",
                reason: "is 0, must be at least 1".into(),
            });
        }
        let mut pg: tokio_postgres::Config =
            config
                .url
                .parse()
                .map_err(|e: tokio_postgres::Error| PgError::BadUrl {
                    reason: e.to_string(),
                })?;
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name(APPLICATION_NAME);
        }
        // synchronous_commit=on: a commit returns once its WAL is flushed
        // (and, with synchronous standbys configured, flushed on them), so
        // an acknowledged push is durable (S2) even where the database's
        // default is `off`.
        let session = format!(
            "-c synchronous_commit=on -c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            LOCK_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {session}"),
            _ => session,
        };
        pg.options(options);
        let target = describe_target(&pg);

        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size_max)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Setting {
                name: "pool",
                reason: e.to_string(),
            })?;

        let mut client = pool
            .get()
            .await
            .map_err(|e| unreachable_error(&target, config.connect_timeout, e))?;
        let encoding: String = client
            .query_one("SHOW server_encoding", &[])
            .await
            .map_err(query_error(&target, "reading the server's encoding"))?
            .get(0);
        if !encoding.eq_ignore_ascii_case("UTF8") {
            return Err(PgError::Encoding {
                target,
                found: encoding,
            });
        }
        let found = schema::migrate(&mut client, &target).await?;
        tracing::info!(%target, schema = SCHEMA_VERSION, found, "connected to PostgreSQL");
        drop(client);
        let session = Uuid::new_v4();
        let presence = presence::start(&handle, pg.clone(), session)
            .await
            .map_err(query_error(&target, "taking this node's presence lock"))?;
        Ok(PgDatabase {
            inner: Arc::new(DbInner {
                pool,
                handle,
                pg,
                target,
                config,
                session,
                _presence: presence,
            }),
        })
    }

    /// Where the database is (`user@host:port/dbname`, no password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The runtime the logs run their queries on.
    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// The log of store `name`, created (empty, with a new store id) if the
    /// database has none yet. Blocks: call it where blocking is allowed
    /// (see the module documentation).
    pub fn open_log(&self, name: &str) -> Result<PgLog, PgError> {
        Ok(self.open_log_if(name, true)?.expect("created if missing"))
    }

    /// The log of store `name` if the database has it, `None` if not:
    /// readers never create a store. Blocks, as [`PgDatabase::open_log`].
    pub fn find_log(&self, name: &str) -> Result<Option<PgLog>, PgError> {
        self.open_log_if(name, false)
    }

    fn open_log_if(&self, name: &str, create: bool) -> Result<Option<PgLog>, PgError> {
        crate::registry::validate_store_name(name).map_err(|_| PgError::BadStoreName {
            name: name.chars().take(80).collect(),
        })?;
        let db = &self.inner;
        let new_id = Uuid::now_v7();
        let query = async {
            let client = db
                .pool
                .get()
                .await
                .map_err(|e| unreachable_error(&db.target, db.config.connect_timeout, e))?;
            let err = |action| query_error(&db.target, action);
            if create {
                client
                    .execute(
                        "INSERT INTO strata_stores (name, store_id) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                        &[&name, &new_id],
                    )
                    .await
                    .map_err(err("creating the store's row"))?;
            }
            let row = client
                .query_opt(
                    "SELECT id, store_id, head FROM strata_stores WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(err("reading the store's row"))?;
            Ok::<_, PgError>(row.map(|row| {
                (
                    row.get::<_, i32>(0),
                    row.get::<_, Uuid>(1),
                    row.get::<_, i64>(2),
                )
            }))
        };
        let Some((key, store_id, head)) = db
            .handle
            .block_on(async { tokio::time::timeout(OPERATION_TIMEOUT, query).await })
            .map_err(|_| PgError::Timeout {
                target: db.target.clone(),
                action: "opening a store",
                timeout: OPERATION_TIMEOUT,
            })??
        else {
            return Ok(None);
        };
        let node = match &db.config.node_id {
            Some(n) => NodeId::new(n).map_err(|e| PgError::Setting {
                name: "node_id",
                reason: e.to_string(),
            })?,
            None => default_node_id(store_id),
        };
        tracing::info!(store = name, %store_id, head, "store opened in PostgreSQL");
        Ok(Some(PgLog {
            db: self.clone(),
            name: name.to_owned(),
            key,
            store_id,
            hlc: Hlc::new(node, db.config.clock.clone(), db.config.hlc_drift_ms_max),
        }))
    }

    /// Starts a [`HeadListener`] on this database: `on_head` hears of every
    /// store's new head, whichever node committed it. See
    /// [`HeadListener`].
    pub fn listen(
        &self,
        config: ListenerConfig,
        on_head: impl Fn(HeadUpdate) + Send + Sync + 'static,
    ) -> Result<HeadListener, PgError> {
        for (name, value) in [
            ("poll_interval", config.poll_interval),
            ("reconnect_delay", config.reconnect_delay),
        ] {
            if value.is_zero() {
                return Err(PgError::Setting {
                    name,
                    reason: "is 0, must be longer".into(),
                });
            }
        }
        Ok(HeadListener::start(
            &self.inner.handle,
            self.inner.pg.clone(),
            config,
            Arc::new(on_head),
        ))
    }
}

/// The node id of a store's clock when none is configured: as the embedded
/// store derives it from its store id (the random tail of the UUIDv7).
fn default_node_id(store_id: Uuid) -> NodeId {
    let b = store_id.as_bytes();
    let tail = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    NodeId::new(&format!("{tail:016x}")).expect("hex is a valid node id")
}

fn unreachable_error(target: &str, timeout: Duration, e: deadpool_postgres::PoolError) -> PgError {
    use deadpool_postgres::PoolError;
    let (reason, hint) = match &e {
        PoolError::Backend(source) => (
            describe_pool(&e),
            hint_for(source).unwrap_or(
                "check that PostgreSQL is running and that the database URL (--database-url, STRATA_DATABASE_URL) names its host, port and database",
            ),
        ),
        PoolError::Timeout(_) => (
            format!("no connection within {timeout:?}"),
            "check that PostgreSQL is running, reachable from this machine, and not overloaded",
        ),
        other => (
            other.to_string(),
            "check that PostgreSQL is running and that the database URL names it",
        ),
    };
    PgError::Unreachable {
        target: target.to_owned(),
        reason,
        hint,
    }
}

/// What went wrong inside one call of [`PgLog`].
enum OpError {
    Pg(tokio_postgres::Error),
    /// The database holds something the log's rules forbid.
    Damaged(String),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Pg(e)
    }
}

/// A database value that must fit the engine's `u64` (positions, versions).
fn to_u64(v: i64, what: &str) -> Result<u64, OpError> {
    u64::try_from(v).map_err(|_| OpError::Damaged(format!("{what} {v} is negative")))
}

/// A `u64` the engine gave, as PostgreSQL's `bigint`.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One hosted store's canonical log in PostgreSQL. See the module
/// documentation; the contract is [`CanonicalLog`]'s.
pub struct PgLog {
    db: PgDatabase,
    name: String,
    /// The store's `strata_stores.id`, the `store` of its events.
    key: i32,
    store_id: Uuid,
    /// Checks and merges pushed timestamps (the receive rule, H1).
    hlc: Hlc,
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLog")
            .field("name", &self.name)
            .field("store_id", &self.store_id)
            .field("database", &self.db.inner.target)
            .finish()
    }
}

/// The store's position lock, with its head and its turn (module
/// [`turn`]).
const LOCK_SQL: &str = "SELECT head, turn::text FROM strata_stores WHERE id = $1 FOR UPDATE";
/// The database's clock in milliseconds: the turn's clock, the same for
/// every node. Its own statement, sent after the lock's, so that it reads
/// the clock once the lock is held (in the locking statement it would be
/// read before the wait for the lock).
const CLOCK_SQL: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";
/// The events the log holds under some ids, their payloads by length and
/// SHA-256 (`sha256` is in PostgreSQL from 11 on).
const HELD_SQL: &str = "SELECT event_id, position, version, aggregate_id, event_type,
            octet_length(event_data), sha256(event_data),
            octet_length(metadata), sha256(metadata)
     FROM strata_events WHERE store = $1 AND event_id = ANY($2)";
const VERSIONS_SQL: &str = "SELECT a.aggregate_id,
        (SELECT e.version FROM strata_events e
          WHERE e.store = $1 AND e.aggregate_id = a.aggregate_id
          ORDER BY e.version DESC LIMIT 1)
     FROM unnest($2::text[]) AS a(aggregate_id)";
const INSERT_SQL: &str = "INSERT INTO strata_events
        (store, position, batch_end, event_id, aggregate_id, version, event_type, event_data, metadata, hlc)
     SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::uuid[], $5::text[], $6::bigint[],
                              $7::text[], $8::bytea[], $9::bytea[], $10::text[])";
const SET_HEAD_SQL: &str = "UPDATE strata_stores SET head = $2 WHERE id = $1";
const SET_TURN_SQL: &str = "UPDATE strata_stores SET turn = $2::text::jsonb WHERE id = $1";
/// For each presence key, whether its node is gone (nobody holds the lock;
/// the shared lock taken to find out ends with the transaction).
const GONE_SQL: &str = "SELECT pg_try_advisory_xact_lock_shared($1, k)
     FROM unnest($2::int4[]) WITH ORDINALITY AS t(k, i) ORDER BY i";
const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2)";
const HEAD_SQL: &str = "SELECT head FROM strata_stores WHERE id = $1";
/// Events from a position on, at most `$3` of them and about `$4` bytes:
/// rows are taken while the rows before them hold fewer bytes. Bounded by
/// the head read in the same statement, so by one snapshot.
const READ_SQL: &str = "SELECT position, event_id, aggregate_id, version, event_type, event_data, metadata, hlc, batch_end
     FROM (SELECT *, coalesce(sum(row_bytes) OVER (ORDER BY position
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::bigint AS bytes_before
           FROM (SELECT e.*, octet_length(e.aggregate_id) + octet_length(e.event_type)
                           + octet_length(e.event_data) + coalesce(octet_length(e.metadata), 0)
                           + $5::bigint AS row_bytes
                 FROM strata_events e
                 WHERE e.store = $1 AND e.position >= $2
                   AND e.position <= (SELECT head FROM strata_stores WHERE id = $1)
                 ORDER BY e.position
                 LIMIT $3) AS limited) AS counted
     WHERE bytes_before < $4
     ORDER BY position";
/// The rest of a push that a read stopped inside.
const READ_REST_SQL: &str = "SELECT position, event_id, aggregate_id, version, event_type, event_data, metadata, hlc, batch_end
     FROM strata_events WHERE store = $1 AND position > $2 AND position <= $3
     ORDER BY position";

impl PgLog {
    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database this log is in.
    pub fn database(&self) -> &PgDatabase {
        &self.db
    }

    /// Runs `op` on a pooled connection, on the runtime, within
    /// [`OPERATION_TIMEOUT`]; blocks the calling thread.
    fn run<T>(
        &self,
        action: &'static str,
        op: impl AsyncFnOnce(&mut ClientWrapper) -> Result<T, OpError>,
    ) -> Result<T, StorageError> {
        let db = &self.db.inner;
        db.handle.block_on(async {
            let mut client: Object =
                db.pool.get().await.map_err(|e| StorageError::Unavailable {
                    reason: format!("no database connection for {action}: {}", describe_pool(&e)),
                })?;
            let outcome = tokio::time::timeout(OPERATION_TIMEOUT, op(&mut client)).await;
            match outcome {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(OpError::Damaged(reason))) => Err(StorageError::Damaged {
                    reason: format!("store {}: {action}: {reason}", self.name),
                }),
                Ok(Err(OpError::Pg(e))) => Err(self.storage_error(action, &e)),
                Err(_) => {
                    // The connection may still be inside the statement:
                    // close it rather than hand it to the next call (the
                    // server rolls the transaction back).
                    drop(Object::take(client));
                    Err(StorageError::Unavailable {
                        reason: format!(
                            "{action} got no answer from the database within {OPERATION_TIMEOUT:?}"
                        ),
                    })
                }
            }
        })
    }

    /// A database error as the storage contract's: a broken rule of the
    /// tables (a unique key, a check) means the log is not what this node
    /// read under the lock, which only another writer could do: damaged.
    /// Anything else (connection lost, timeouts, the server shutting down)
    /// may pass: unavailable.
    fn storage_error(&self, action: &str, e: &tokio_postgres::Error) -> StorageError {
        let reason = format!("{action}: {}", describe(e));
        let integrity = e.code().is_some_and(|c| c.code().starts_with("23"));
        if integrity {
            StorageError::Damaged {
                reason: format!("store {}: {reason}", self.name),
            }
        } else {
            StorageError::Unavailable { reason }
        }
    }

    /// How this node names `client` in the stores' turns.
    fn turn_client(&self, client: strata::sync::ClientId) -> String {
        format!("{}/{client}", self.db.inner.session)
    }

    /// Takes the store's lock; its turn as stored, and the database's
    /// clock in milliseconds.
    async fn lock_turns(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(u64, turn::Turns, i64), OpError> {
        let (lock, clock) =
            futures_util::try_join!(tx.prepare_cached(LOCK_SQL), tx.prepare_cached(CLOCK_SQL))?;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&self.key];
        let (row, now) =
            futures_util::try_join!(tx.query_opt(&lock, &lock_params), tx.query_one(&clock, &[]))?;
        let row = row.ok_or_else(|| OpError::Damaged("its row in strata_stores is gone".into()))?;
        Ok((to_u64(row.get(0), "head")?, turns_of(&row)?, now.get(0)))
    }

    /// Writes the store's turn (NULL when free).
    async fn set_turns(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        turns: &turn::Turns,
    ) -> Result<(), OpError> {
        let stmt = tx.prepare_cached(SET_TURN_SQL).await?;
        let json = (*turns != turn::Turns::default())
            .then(|| serde_json::to_string(turns).expect("a turn serializes"));
        tx.execute(&stmt, &[&self.key, &json]).await?;
        Ok(())
    }

    /// Other nodes named in the turn whose presence lock is free are gone:
    /// their clients leave it (module [`presence`]). One query, made only
    /// when another node's client is in the turn.
    async fn forget_gone_nodes(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        turns: &mut turn::Turns,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), OpError> {
        let mine = self.db.inner.session.to_string();
        let others = turns.sessions_except(&mine);
        if others.is_empty() {
            return Ok(());
        }
        // A name that is not a session id names no live node.
        let keys: Vec<i32> = others
            .iter()
            .map(|s| s.parse::<Uuid>().map_or(0, presence::lock_key))
            .collect();
        let stmt = tx.prepare_cached(GONE_SQL).await?;
        let rows = tx
            .query(&stmt, &[&presence::PRESENCE_LOCK_CLASS, &keys])
            .await?;
        let gone: Vec<&str> = others
            .iter()
            .zip(&rows)
            .filter(|(s, r)| r.get::<_, bool>(0) || s.parse::<Uuid>().is_err())
            .map(|(s, _)| s.as_str())
            .collect();
        turns.forget_sessions(&gone, now_ms, lease_ms);
        Ok(())
    }

    async fn leave_turn(&self, client: &mut ClientWrapper, who: &str) -> Result<(), OpError> {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let (_, before, now_ms) = self.lock_turns(&tx).await?;
        let mut turns = before.clone();
        turns.left(who, now_ms, to_i64(self.db.inner.config.turn_lease_ms));
        if turns != before {
            self.set_turns(&tx, &turns).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append(
        &self,
        client: &mut ClientWrapper,
        pushes: &[Push],
    ) -> Result<CommitResult, OpError> {
        let mut ids: Vec<Uuid> = Vec::new();
        let mut seen_ids = HashSet::new();
        let mut aggregates: Vec<&str> = Vec::new();
        let mut seen_aggs = HashSet::new();
        for e in pushes.iter().flat_map(|p| p.events.iter()) {
            if seen_ids.insert(e.event_id) {
                ids.push(e.event_id);
            }
            if seen_aggs.insert(e.aggregate_id.as_str()) {
                aggregates.push(&e.aggregate_id);
            }
        }
        // Read committed, whatever the database's default: each statement
        // sees every commit before it, and the lock's wait ends in a read
        // of the row as the previous commit left it (under repeatable read
        // it would end in a serialization failure instead).
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let (lock, clock, held, versions) = futures_util::try_join!(
            tx.prepare_cached(LOCK_SQL),
            tx.prepare_cached(CLOCK_SQL),
            tx.prepare_cached(HELD_SQL),
            tx.prepare_cached(VERSIONS_SQL)
        )?;
        // Pipelined: the lock is taken first, and the reads after it run
        // once it is granted, each seeing every commit before it.
        let lock_params: [&(dyn ToSql + Sync); 1] = [&self.key];
        let held_params: [&(dyn ToSql + Sync); 2] = [&self.key, &ids];
        let versions_params: [&(dyn ToSql + Sync); 2] = [&self.key, &aggregates];
        let (head_row, clock_row, held_rows, version_rows) = futures_util::try_join!(
            tx.query_opt(&lock, &lock_params),
            tx.query_one(&clock, &[]),
            tx.query(&held, &held_params),
            tx.query(&versions, &versions_params)
        )?;
        let head_row =
            head_row.ok_or_else(|| OpError::Damaged("its row in strata_stores is gone".into()))?;
        let head = to_u64(head_row.get(0), "head")?;
        let turns_before = turns_of(&head_row)?;
        let now_ms: i64 = clock_row.get(0);
        let lease_ms = to_i64(self.db.inner.config.turn_lease_ms);
        let mut turns = turns_before.clone();
        self.forget_gone_nodes(&tx, &mut turns, now_ms, lease_ms)
            .await?;
        turns.expire(now_ms, lease_ms);
        let mut stored = HashMap::with_capacity(held_rows.len());
        let fingerprint = |len: i32, sha256: &[u8]| -> Result<plan::Fingerprint, OpError> {
            Ok(plan::Fingerprint {
                len: u64::try_from(len)
                    .map_err(|_| OpError::Damaged(format!("a payload length of {len}")))?,
                sha256: sha256
                    .try_into()
                    .map_err(|_| OpError::Damaged("a SHA-256 that is not 32 bytes".into()))?,
            })
        };
        for r in held_rows {
            let metadata = match (r.get::<_, Option<i32>>(7), r.get::<_, Option<&[u8]>>(8)) {
                (Some(len), Some(sha256)) => Some(fingerprint(len, sha256)?),
                _ => None,
            };
            stored.insert(
                r.get::<_, Uuid>(0),
                plan::Stored {
                    position: to_u64(r.get(1), "position")?,
                    version: to_u64(r.get(2), "version")?,
                    aggregate_id: r.get(3),
                    event_type: r.get(4),
                    data: fingerprint(r.get(5), r.get(6))?,
                    metadata,
                },
            );
        }
        let mut current = HashMap::with_capacity(version_rows.len());
        for r in version_rows {
            if let Some(v) = r.get::<_, Option<i64>>(1) {
                current.insert(r.get::<_, String>(0), to_u64(v, "version")?);
            }
        }
        // The turn: pushes another client's turn holds wait; the others are
        // planned, and their outcomes move the turn.
        let mut held: Vec<Option<u64>> = Vec::with_capacity(pushes.len());
        let mut going: Vec<Arc<[Proposal]>> = Vec::with_capacity(pushes.len());
        let mut touched: Vec<(String, BTreeSet<String>)> = Vec::with_capacity(pushes.len());
        for p in pushes {
            let who = self.turn_client(p.client);
            let aggs: BTreeSet<String> = p.events.iter().map(|e| e.aggregate_id.clone()).collect();
            let wait = turns.held(&who, &aggs, now_ms);
            if wait.is_some() {
                turns.wait(&who, &aggs, now_ms);
            } else {
                going.push(p.events.clone());
            }
            held.push(wait);
            touched.push((who, aggs));
        }
        let plan = plan::plan(
            &going,
            &plan::Holdings {
                head,
                stored: &stored,
                versions: &current,
            },
            &self.db.inner.config.limits,
            &self.hlc,
        );
        let mut planned = plan.outcomes.into_iter();
        let mut outcomes = Vec::with_capacity(pushes.len());
        for (wait, (who, aggs)) in held.into_iter().zip(&touched) {
            let mut outcome = match wait {
                Some(wait_ms) => PushOutcome::Held { wait_ms },
                None => planned
                    .next()
                    .expect("one planned outcome a push that went"),
            };
            match &outcome {
                PushOutcome::Appended(_) => turns.written(who, aggs, now_ms, lease_ms),
                PushOutcome::Conflict(conflicts) => {
                    let mut needs = aggs.clone();
                    needs.extend(conflicts.iter().map(|(a, _)| a.clone()));
                    turns.refused(who, needs, now_ms, lease_ms);
                    // Another client holds the turn on these aggregates
                    // (claimed earlier in this commit): what this client
                    // rebased now would be stale again by its turn, so
                    // its push waits, as the core's would.
                    if let Some(wait_ms) = turns.held(who, aggs, now_ms) {
                        outcome = PushOutcome::Held { wait_ms };
                    }
                }
                _ => {}
            }
            outcomes.push(outcome);
        }
        // The turn may have passed during this commit (its holder's push
        // was appended): a held push whose client is no longer blocked
        // (it may hold the turn now) is offered again at once. A turn can
        // also pass with nothing appended (its holder left,
        // its node died, its time ran out in a commit that wrote nothing)
        // and no notification says so: waiters look again at least every
        // HELD_RECHECK_MS.
        for (outcome, (who, aggs)) in outcomes.iter_mut().zip(&touched) {
            if let PushOutcome::Held { wait_ms } = outcome {
                *wait_ms = turns
                    .held(who, aggs, now_ms)
                    .map_or(0, |w| w.min(HELD_RECHECK_MS));
            }
        }
        if turns != turns_before {
            self.set_turns(&tx, &turns).await?;
        }
        if !plan.rows.is_empty() {
            let (insert, set_head, notify) = futures_util::try_join!(
                tx.prepare_cached(INSERT_SQL),
                tx.prepare_cached(SET_HEAD_SQL),
                tx.prepare_cached(NOTIFY_SQL)
            )?;
            let chunks = insert_chunks(&plan.rows);
            let columns: Vec<Columns<'_>> = chunks.iter().map(|rows| Columns::of(rows)).collect();
            let head = to_i64(plan.head);
            let payload = format!("{}:{}", self.name, plan.head);
            // Pipelined too; if one fails, the transaction is aborted and
            // the statements after it fail, and nothing commits.
            let insert_params: Vec<[&(dyn ToSql + Sync); 10]> = columns
                .iter()
                .map(|c| {
                    [
                        &self.key as &(dyn ToSql + Sync),
                        &c.position,
                        &c.batch_end,
                        &c.event_id,
                        &c.aggregate_id,
                        &c.version,
                        &c.event_type,
                        &c.data,
                        &c.metadata,
                        &c.hlc,
                    ]
                })
                .collect();
            let set_head_params: [&(dyn ToSql + Sync); 2] = [&self.key, &head];
            let notify_params: [&(dyn ToSql + Sync); 2] = [&NOTIFY_CHANNEL, &payload];
            let inserts = insert_params.iter().map(|p| tx.execute(&insert, p));
            let (inserted, _, _) = futures_util::try_join!(
                try_join_all(inserts),
                tx.execute(&set_head, &set_head_params),
                tx.query_one(&notify, &notify_params)
            )?;
            let inserted: u64 = inserted.iter().sum();
            if inserted != plan.rows.len() as u64 {
                return Err(OpError::Damaged(format!(
                    "{inserted} of {} rows were inserted",
                    plan.rows.len()
                )));
            }
        }
        tx.commit().await?;
        Ok(CommitResult {
            outcomes,
            head: plan.head,
        })
    }

    async fn read_events(
        &self,
        client: &mut ClientWrapper,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, OpError> {
        let (read, rest) = futures_util::try_join!(
            client.prepare_cached(READ_SQL),
            client.prepare_cached(READ_REST_SQL)
        )?;
        let from = to_i64(from.max(1));
        let max_events = i64::try_from(max_events).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &read,
                &[
                    &self.key,
                    &from,
                    &max_events,
                    &max_bytes,
                    &READ_ROW_BYTES_OVERHEAD,
                ],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(event_of(r)?);
        }
        // Whole pushes: finish the one the limits stopped inside.
        if let Some(last) = rows.last() {
            let (position, batch_end): (i64, i64) = (last.get(0), last.get(8));
            if batch_end > position {
                let more = client
                    .query(&rest, &[&self.key, &position, &batch_end])
                    .await?;
                for r in &more {
                    out.push(event_of(r)?);
                }
            }
        }
        if out.windows(2).any(|w| w[1].position != w[0].position + 1) {
            return Err(OpError::Damaged(format!(
                "positions from {from} are not consecutive"
            )));
        }
        Ok(out)
    }
}

/// The turn of a row of [`LOCK_SQL`].
fn turns_of(row: &tokio_postgres::Row) -> Result<turn::Turns, OpError> {
    match row.get::<_, Option<&str>>(1) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| OpError::Damaged(format!("its turn is not readable: {e}"))),
        None => Ok(turn::Turns::default()),
    }
}

/// A row of [`READ_SQL`] as an event.
fn event_of(r: &tokio_postgres::Row) -> Result<Event, OpError> {
    let position = to_u64(r.get(0), "position")?;
    let hlc: &str = r.get(7);
    let timestamp = Timestamp::parse(hlc).map_err(|e| {
        OpError::Damaged(format!(
            "the event at position {position} has a bad timestamp: {e}"
        ))
    })?;
    Ok(Event {
        position,
        event_id: r.get(1),
        aggregate_id: r.get(2),
        version: to_u64(r.get(3), "version")?,
        event_type: r.get(4),
        data: r.get(5),
        timestamp,
        metadata: r.get(6),
    })
}

/// Splits a commit's rows into `INSERT` statements of at most
/// [`INSERT_ROWS_MAX`] rows and about [`INSERT_BYTES_MAX`] bytes.
fn insert_chunks<'r, 'a>(rows: &'r [plan::Row<'a>]) -> Vec<&'r [plan::Row<'a>]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, r) in rows.iter().enumerate() {
        let size = r.data.len() + r.metadata.map_or(0, <[u8]>::len) + r.aggregate_id.len();
        if i > start && (i - start >= INSERT_ROWS_MAX || bytes + size > INSERT_BYTES_MAX) {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// The rows of one `INSERT`, as one array per column (`unnest`).
struct Columns<'a> {
    position: Vec<i64>,
    batch_end: Vec<i64>,
    event_id: Vec<Uuid>,
    aggregate_id: Vec<&'a str>,
    version: Vec<i64>,
    event_type: Vec<&'a str>,
    data: Vec<&'a [u8]>,
    metadata: Vec<Option<&'a [u8]>>,
    hlc: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [plan::Row<'a>]) -> Columns<'a> {
        Columns {
            position: rows.iter().map(|r| to_i64(r.position)).collect(),
            batch_end: rows.iter().map(|r| to_i64(r.batch_end)).collect(),
            event_id: rows.iter().map(|r| r.event_id).collect(),
            aggregate_id: rows.iter().map(|r| r.aggregate_id).collect(),
            version: rows.iter().map(|r| to_i64(r.version)).collect(),
            event_type: rows.iter().map(|r| r.event_type).collect(),
            data: rows.iter().map(|r| r.data).collect(),
            metadata: rows.iter().map(|r| r.metadata).collect(),
            hlc: rows.iter().map(|r| r.hlc.as_str()).collect(),
        }
    }
}

impl CanonicalLog for PgLog {
    fn store_id(&self) -> Uuid {
        self.store_id
    }

    fn head(&self) -> Result<u64, StorageError> {
        self.run("reading the head", async |c| {
            let stmt = c.prepare_cached(HEAD_SQL).await?;
            let row = c
                .query_opt(&stmt, &[&self.key])
                .await?
                .ok_or_else(|| OpError::Damaged("its row in strata_stores is gone".into()))?;
            to_u64(row.get(0), "head")
        })
    }

    fn keeps_turns(&self) -> bool {
        true
    }

    fn client_left(&self, client: strata::sync::ClientId) -> Result<(), StorageError> {
        let who = self.turn_client(client);
        self.run("taking a departed client out of the turn", async |c| {
            self.leave_turn(c, &who).await
        })
    }

    fn append_pushes(&self, pushes: &[Push]) -> Result<CommitResult, StorageError> {
        if pushes.is_empty() {
            return Ok(CommitResult {
                outcomes: Vec::new(),
                head: self.head()?,
            });
        }
        self.run("a group commit", async |c| self.append(c, pushes).await)
    }

    fn read(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StorageError> {
        self.run("reading events", async |c| {
            self.read_events(c, from, max_events, max_bytes).await
        })
    }

    /// PostgreSQL holds events, not the embedded log's records: always
    /// `None`, and followers are sent `Events`.
    fn read_records(
        &self,
        _from: u64,
        _max_bytes: usize,
    ) -> Result<Option<strata::log::RawRun>, StorageError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_never_shows_the_password() {
        let c: tokio_postgres::Config = "postgres://alice:secret@db.example:5433/strata"
            .parse()
            .unwrap();
        let t = describe_target(&c);
        assert_eq!(t, "alice@db.example:5433/strata");
        let shown = format!(
            "{:?}",
            PgConfig::new("postgres://alice:secret@db.example/strata")
        );
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn inserts_are_split_by_rows_and_bytes() {
        let data = vec![0u8; INSERT_BYTES_MAX / 2 + 1];
        let row = |position, data: &'static [u8]| plan::Row {
            position,
            batch_end: position,
            event_id: Uuid::now_v7(),
            aggregate_id: "a",
            version: position,
            event_type: "T",
            data,
            metadata: None,
            hlc: String::new(),
        };
        let big: &'static [u8] = Box::leak(data.into_boxed_slice());
        let rows: Vec<_> = (1..=3).map(|p| row(p, big)).collect();
        let chunks = insert_chunks(&rows);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        let rows: Vec<_> = (1..=INSERT_ROWS_MAX as u64 + 1)
            .map(|p| row(p, b"x"))
            .collect();
        let chunks = insert_chunks(&rows);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [INSERT_ROWS_MAX, 1]
        );
        assert!(insert_chunks(&[]).is_empty());
    }
}
