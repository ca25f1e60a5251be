//! The stores a server hosts, by name, each with its sync core and its
//! committer. A store's log is kept by one of two backends ([`Backend`]):
//! an embedded Strata store in its own directory under the data directory
//! (per-store isolation; the default), with its server-side views; or one
//! PostgreSQL database shared by several server nodes ([`crate::pg`]).
//!
//! A store's [`ServerCore`] does no I/O. [`Hosted`] is its shell: it hands
//! the core what the transports receive (under the core's lock, which is
//! held only for those state changes), routes what the core transmits to
//! each connection's queue, and runs the committer, a thread of its own
//! that carries out the core's group commits on the log (outside the
//! lock), hands the results back, and publishes the new head to the
//! connections that follow the log. A thread rather than a task: it
//! blocks in `fdatasync` (or waits for the database's commit), and it must
//! not wait behind connection tasks in the runtime's queue between
//! commits. With PostgreSQL, heads that other nodes commit arrive through
//! [`Hosted::learn_head`].

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata::projection::counter::CounterProjection;
use strata::projection::todo::TodoProjection;
use strata::projection::{ViewOptions, Views};
use strata::sync::proto::{Proposal, ServerMessage};
pub use strata::sync::server::COMMIT_PUSHES_MAX_DEFAULT as COMMIT_PUSHES_MAX;
use strata::sync::{CanonicalLog, ClientId, ClientInfo, CoreEvent, ServerConfig, ServerCore};
use strata::{Options, Store};
use strata_archive::{ArchiveHandle, ArchiveOptions, ArchiveStatus, Archiver};
use tokio::sync::{mpsc, watch};

use crate::ServerError;
use crate::metrics::StoreMetrics;
use crate::pg::PgDatabase;

pub use strata_sync::{DEFAULT_STORE, STORE_NAME_BYTES_MAX, now_ms};
/// Stores closed at once on shutdown.
pub const CLOSE_THREADS_MAX: usize = 16;
/// Messages from the core waiting for one connection's writer. A client
/// that lets more pile up is too slow (or does not read): it is dropped.
pub const ROUTE_MESSAGES_MAX: usize = 64;
/// How long the committer sleeps when nothing asks for it, at most.
const COMMITTER_IDLE: Duration = Duration::from_secs(1);
/// Longest the committer waits for more pushes before a commit, when the
/// last commit held several (clients are pushing at once): as many pushes
/// as the last commit held usually arrive within it, and a larger group
/// costs one sync instead of several. Alone, a push never waits.
pub const COMMIT_GATHER_MAX: Duration = Duration::from_micros(500);

/// Checks a store name: 1 to 64 bytes of `[a-z0-9_-]`, so that it is a safe
/// directory name everywhere.
pub fn validate_store_name(name: &str) -> Result<(), ServerError> {
    strata_sync::check_store_name(name).map_err(|e| ServerError::BadStoreName { name: e.name })
}

/// Where hosted stores keep their logs.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// Each store an embedded Strata store in `<data>/<name>`, with its
    /// server-side views (the default).
    #[default]
    Embedded,
    /// Every store's log in one PostgreSQL database, shared with the other
    /// nodes connected to it. Each node keeps its own server-side views,
    /// computed from the log through a local mirror (`<data>/<name>`).
    Postgres(PgDatabase),
}

/// Most events one step of a mirror reads from the database.
pub const MIRROR_READ_EVENTS_MAX: usize = 10_000;
/// About the most bytes one step of a mirror reads from the database.
pub const MIRROR_READ_BYTES_MAX: usize = 8 << 20;
/// The file in a mirror's directory that holds the id of the store in the
/// database it mirrors.
pub const MIRROR_MARKER_FILE: &str = "mirror-of";
/// How long a mirror waits after a failed step before the next.
const MIRROR_RETRY: Duration = Duration::from_millis(500);

/// What keeps one hosted store's log, and its server-side views.
enum Kept {
    /// The embedded store is the log; its views follow it.
    Embedded { store: Store, views: Views },
    /// The log is in PostgreSQL. `mirror`, an embedded store in this
    /// node's data directory, copies it (events, positions and all) for
    /// the views to follow: each node computes the views from the log.
    Postgres { mirror: Store, views: Views },
}

/// One hosted store.
pub struct Hosted {
    pub name: String,
    /// The canonical log: every read and commit of the transports goes
    /// through it, whichever the backend.
    pub log: Arc<dyn CanonicalLog>,
    kept: Kept,
    core: Mutex<ServerCore>,
    /// Each connected client's queue of messages from the core.
    routes: Mutex<HashMap<ClientId, mpsc::Sender<ServerMessage>>>,
    /// Wakes the committer (a push arrived, or the turn may have moved):
    /// a pending wake-up, and its condition.
    wake: (Mutex<bool>, Condvar),
    /// Set when the registry closes: the committer stops.
    stop: AtomicBool,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// PostgreSQL: the thread that copies the log into the mirror, and
    /// its wake-up (the head moved).
    mirror_follower: Mutex<Option<JoinHandle<()>>>,
    mirror_wake: (Mutex<bool>, Condvar),
    /// The log's head, published after every commit.
    pub head: watch::Receiver<u64>,
    head_tx: watch::Sender<u64>,
    next_client: AtomicU64,
    /// Counters for `/metrics` and `strata bench`.
    pub stats: StoreMetrics,
    /// When each push waiting for its answer reached the core, by client
    /// and request (for the latency histogram).
    started: Mutex<HashMap<ClientId, VecDeque<(u64, Instant)>>>,
    /// The continuous archive of an embedded store's log, when the server
    /// has one ([`ArchiveConfig`]).
    archive: Mutex<Option<ArchiveHandle>>,
    archive_status: Option<Arc<ArchiveStatus>>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted").field("name", &self.name).finish()
    }
}

impl Hosted {
    /// The embedded store, if this store's log is one.
    pub fn embedded(&self) -> Option<&Store> {
        match &self.kept {
            Kept::Embedded { store, .. } => Some(store),
            Kept::Postgres { .. } => None,
        }
    }

    /// The server-side views (counter, todo) of this node: following the
    /// embedded store, or the PostgreSQL log's mirror.
    pub fn views(&self) -> &Views {
        match &self.kept {
            Kept::Embedded { views, .. } | Kept::Postgres { views, .. } => views,
        }
    }

    /// PostgreSQL: the position up to which this node's mirror (and so its
    /// views' source) holds the log. `None` for an embedded store.
    pub fn mirrored(&self) -> Option<u64> {
        match &self.kept {
            Kept::Postgres { mirror, .. } => Some(mirror.head()),
            Kept::Embedded { .. } => None,
        }
    }

    /// The log's `fdatasync` calls so far (embedded backend only: a
    /// database flushes its WAL on its own).
    pub fn syncs(&self) -> Option<u64> {
        self.embedded()
            .map(|s| s.log().stats().syncs.load(Ordering::Relaxed))
    }

    /// The last head this node knows: its own commits', and those other
    /// nodes' commits it has heard of. Never blocks; a reader that must
    /// not miss another node's commit asks the log ([`CanonicalLog::head`],
    /// which blocks).
    pub fn known_head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Another node committed up to `head` (a shared log): the core answers
    /// with at least this head, and followers on this node wake.
    pub fn learn_head(&self, head: u64) {
        // A push the log held for another node's client may go now.
        let released = self.drive(false, |core| core.handle_head(head));
        if released {
            self.wake_committer();
        }
        self.publish_head(head);
    }

    fn publish_head(&self, head: u64) {
        let moved = self.head_tx.send_if_modified(|h| {
            let moved = head > *h;
            *h = (*h).max(head);
            moved
        });
        if moved && matches!(self.kept, Kept::Postgres { .. }) {
            let (pending, cv) = &self.mirror_wake;
            *pending.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_one();
        }
    }

    /// PostgreSQL: copies the log into the mirror as the head moves, until
    /// the registry closes. A failed step (the database unreachable) is
    /// tried again after [`MIRROR_RETRY`]; the views only lag meanwhile.
    fn mirror_loop(&self) {
        while !self.stop.load(Ordering::Acquire) {
            match self.mirror_step() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(store = %self.name, error = %e, "copying the log into this node's mirror failed; retrying");
                    std::thread::sleep(MIRROR_RETRY);
                    continue;
                }
            }
            let (pending, cv) = &self.mirror_wake;
            let mut woken = pending.lock().unwrap_or_else(|e| e.into_inner());
            if !*woken && !self.stop.load(Ordering::Acquire) {
                woken = cv
                    .wait_timeout(woken, COMMITTER_IDLE)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *woken = false;
        }
    }

    /// One step of the mirror: copies what the log holds beyond it, up to
    /// the head this node knows. `Ok(true)` when it copied something.
    fn mirror_step(&self) -> Result<bool, String> {
        let Kept::Postgres { mirror, .. } = &self.kept else {
            return Ok(false);
        };
        let have = mirror.head();
        if have >= self.known_head() {
            return Ok(false);
        }
        let events = self
            .log
            .read(have + 1, MIRROR_READ_EVENTS_MAX, MIRROR_READ_BYTES_MAX)
            .map_err(|e| e.detail().to_owned())?;
        if events.is_empty() {
            return Ok(false);
        }
        mirror
            .append_replicated(&events)
            .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Stops the mirror's thread, then copies what this node knows was
    /// committed, so that the views on disk hold it.
    fn stop_mirror(&self) {
        {
            let (pending, cv) = &self.mirror_wake;
            *pending.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_one();
        }
        let handle = self
            .mirror_follower
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        loop {
            match self.mirror_step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(store = %self.name, error = %e, "the mirror could not catch up before closing");
                    break;
                }
            }
        }
    }

    /// How far this store's archive got, if it is archived.
    pub fn archive_status(&self) -> Option<&Arc<ArchiveStatus>> {
        self.archive_status.as_ref()
    }

    /// Stops the archive's thread after one last step, so that a store
    /// closed cleanly leaves its archive at its head.
    fn stop_archive(&self) {
        let handle = self
            .archive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle
            && let Err(e) = h.stop()
        {
            tracing::warn!(store = %self.name, error = %e, "the archive's last step before closing failed; it holds what earlier steps archived");
        }
    }

    fn core(&self) -> MutexGuard<'_, ServerCore> {
        // The core leaves its state consistent before anything that can
        // panic, so the state behind a poisoned lock is still valid.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core, then sends what it transmitted and publishes
    /// what it reported, after the lock is released. Wakes the committer
    /// when `f` may have made a commit possible.
    fn drive<T>(&self, wake: bool, f: impl FnOnce(&mut ServerCore) -> T) -> T {
        let (out, messages, events) = {
            let mut core = self.core();
            let out = f(&mut core);
            let messages: Vec<_> = std::iter::from_fn(|| core.poll_transmit()).collect();
            let events: Vec<_> = std::iter::from_fn(|| core.poll_event()).collect();
            (out, messages, events)
        };
        self.route(messages);
        for e in events {
            match e {
                CoreEvent::HeadMoved { head } => self.publish_head(head),
                CoreEvent::LeftTurn { client } => self.leave_turn(client),
                other => tracing::debug!(store = %self.name, event = ?other, "core event"),
            }
        }
        if wake {
            self.wake_committer();
        }
        out
    }

    /// Tells the log that `client` left, off this thread (the call waits
    /// for the database; `drive` may run on a connection's task).
    fn leave_turn(&self, client: ClientId) {
        let log = self.log.clone();
        let name = self.name.clone();
        let leave = move || {
            if let Err(e) = log.client_left(client) {
                // Not fatal: the turn then runs out by its deadline.
                tracing::warn!(store = %name, error = %e.detail(), "could not take a departed client out of the turn");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(leave)),
            Err(_) => drop(std::thread::spawn(leave)),
        }
    }

    fn wake_committer(&self) {
        let (pending, cv) = &self.wake;
        *pending.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_one();
    }

    /// Puts each message on its client's queue. A client whose queue is
    /// full is not keeping up: its route is dropped, which ends its
    /// connection (its writer sees the queue close).
    fn route(&self, messages: Vec<(ClientId, ServerMessage)>) {
        if messages.is_empty() {
            return;
        }
        self.count_answers(&messages);
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for (client, msg) in messages {
            let Some(tx) = routes.get(&client) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg) {
                tracing::warn!(store = %self.name, client, max = ROUTE_MESSAGES_MAX, "client does not take its answers; dropped");
                routes.remove(&client);
            }
        }
    }

    /// Counts the answers among `messages`, and the latency of the pushes
    /// they end.
    fn count_answers(&self, messages: &[(ClientId, ServerMessage)]) {
        let m = &self.stats;
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        for (client, msg) in messages {
            let request = match msg {
                ServerMessage::Accepted { request, .. } => {
                    m.accepted.fetch_add(1, Ordering::Relaxed);
                    Some(*request)
                }
                ServerMessage::PullRequired { request, .. } => {
                    m.pull_required.fetch_add(1, Ordering::Relaxed);
                    Some(*request)
                }
                ServerMessage::Rejected { rejections, .. } => {
                    m.rejections
                        .fetch_add(rejections.len() as u64, Ordering::Relaxed);
                    continue;
                }
                ServerMessage::Error { .. } => {
                    m.errors.fetch_add(1, Ordering::Relaxed);
                    // Errors name no request: it ends the oldest waiting.
                    None
                }
                _ => continue,
            };
            let Some(queue) = started.get_mut(client) else {
                continue;
            };
            let at = match request {
                Some(r) => queue
                    .iter()
                    .position(|(q, _)| *q == r)
                    .and_then(|i| queue.remove(i)),
                None => queue.pop_front(),
            };
            if let Some((_, at)) = at {
                m.push_latency.observe(at.elapsed());
            }
            if queue.is_empty() {
                started.remove(client);
            }
        }
    }

    /// Connects an authenticated client: returns its id and the queue of
    /// messages the core sends it.
    pub fn connect(&self, info: ClientInfo) -> (ClientId, mpsc::Receiver<ServerMessage>) {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(ROUTE_MESSAGES_MAX);
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        self.drive(false, |core| core.handle_connect(id, info));
        (id, rx)
    }

    /// The client is gone.
    pub fn disconnect(&self, client: ClientId) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
        // Its turn may pass, letting held pushes go.
        self.drive(true, |core| core.handle_disconnect(now_ms(), client));
    }

    /// A push from `client`; its answer comes through the client's queue.
    pub fn push(&self, client: ClientId, request: u64, events: Vec<Proposal>) {
        {
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            let queue = started.entry(client).or_default();
            // Bounded like the core's own queue of waiting pushes.
            if queue.len() < strata::sync::server::PUSHES_WAITING_PER_CLIENT_MAX + 1 {
                queue.push_back((request, Instant::now()));
            }
        }
        self.drive(true, |core| {
            core.handle_push(now_ms(), client, request, events)
        });
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.core().client_count()
    }

    /// The committer: carries out the core's group commits one after the
    /// other until the registry closes. A commit runs while new pushes
    /// gather in the core; the next commit takes them all.
    fn commit_loop(&self) {
        let mut last_size = 0;
        while !self.stop.load(Ordering::Acquire) {
            if last_size > 1 {
                self.gather(last_size);
            }
            let (commit, timeout) = self.drive(false, |core| {
                core.handle_timeout(now_ms());
                (core.poll_commit(), core.poll_timeout())
            });
            let Some(commit) = commit else {
                let wait = timeout.map_or(COMMITTER_IDLE, |at| {
                    Duration::from_millis(at.saturating_sub(now_ms())).min(COMMITTER_IDLE)
                });
                let (pending, cv) = &self.wake;
                let mut woken = pending.lock().unwrap_or_else(|e| e.into_inner());
                if !*woken {
                    woken = cv
                        .wait_timeout(woken, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                *woken = false;
                continue;
            };
            let count = commit.pushes.len() as u64;
            last_size = commit.pushes.len();
            let result = self.log.append_pushes(&commit.pushes);
            if let Err(e) = &result {
                tracing::error!(store = %self.name, error = %e.detail(), "a group commit failed");
            }
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats.pushes.fetch_add(count, Ordering::Relaxed);
            self.drive(false, |core| {
                core.handle_committed(now_ms(), commit.id, result)
            });
        }
    }

    /// Waits, at most [`COMMIT_GATHER_MAX`], until `size` pushes wait.
    fn gather(&self, size: usize) {
        let deadline = std::time::Instant::now() + COMMIT_GATHER_MAX;
        let (pending, cv) = &self.wake;
        let mut woken = pending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.core().pushes_waiting() >= size {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.stop.load(Ordering::Acquire) {
                return;
            }
            *woken = false;
            woken = cv
                .wait_timeout(woken, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the committer and waits for it (a commit in progress ends
    /// first).
    fn stop_committer(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake_committer();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Committer threads hold their store: stop them, and close.
        self.close();
    }
}

/// All hosted stores, opened on first use.
pub struct Registry {
    data_dir: PathBuf,
    sync: ServerConfig,
    backend: Backend,
    archive: Option<ArchiveConfig>,
    stores: Mutex<HashMap<String, Arc<Hosted>>>,
    /// Held while a store opens (files, or a database round trip that may
    /// wait out a timeout), so that a store is opened once; `stores` is
    /// locked only to look up and insert, so lookups never wait for it.
    opening: Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Registry {
    /// Stores in embedded logs under `data_dir`.
    pub fn new(data_dir: PathBuf, sync: ServerConfig) -> Registry {
        Registry::with_backend(data_dir, sync, Backend::Embedded)
    }

    pub fn with_backend(data_dir: PathBuf, sync: ServerConfig, backend: Backend) -> Registry {
        Registry {
            data_dir,
            sync,
            backend,
            archive: None,
            stores: Mutex::new(HashMap::new()),
            opening: Mutex::new(()),
        }
    }

    /// Archives every embedded store it opens from now on to
    /// `<archive.url>/<store name>`. PostgreSQL keeps its own log: there it
    /// is refused (archive the database with its own tools).
    pub fn with_archive(mut self, archive: ArchiveConfig) -> Result<Registry, ServerError> {
        if matches!(self.backend, Backend::Postgres(_)) {
            return Err(ServerError::ArchiveOnPostgres);
        }
        self.archive = Some(archive);
        Ok(self)
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn sync_config(&self) -> &ServerConfig {
        &self.sync
    }

    /// The hosted store `name`, opened (and created) on first use. Blocks
    /// (it may open files or query the database): call from a blocking
    /// thread.
    pub fn get(&self, name: &str) -> Result<Arc<Hosted>, ServerError> {
        self.open(name, true)
            .map(|h| h.expect("created when missing"))
    }

    /// The hosted store `name` if it exists (opened if needed), `None` if
    /// there is no such store: readers never create one.
    pub fn get_existing(&self, name: &str) -> Result<Option<Arc<Hosted>>, ServerError> {
        self.open(name, false)
    }

    /// The store a client with a grant may sync: a grant to write opens
    /// (and creates) it, a grant to read only opens one that exists. With
    /// the head read from the log now, which the core learns: a client
    /// that synced through another node never hears of a head behind what
    /// it holds. Blocks, as [`Registry::get`].
    pub fn open_for_sync(
        &self,
        name: &str,
        write: bool,
    ) -> Result<Option<(Arc<Hosted>, u64)>, ServerError> {
        let Some(hosted) = self.open(name, write)? else {
            return Ok(None);
        };
        let head = hosted.log.head().map_err(|source| ServerError::Log {
            name: name.to_owned(),
            source,
        })?;
        hosted.learn_head(head);
        Ok(Some((hosted, head)))
    }

    fn open(&self, name: &str, create: bool) -> Result<Option<Arc<Hosted>>, ServerError> {
        validate_store_name(name)?;
        if let Some(h) = self.get_open(name) {
            return Ok(Some(h));
        }
        let _opening = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = self.get_open(name) {
            return Ok(Some(h));
        }
        let log_err = |source| ServerError::Log {
            name: name.to_owned(),
            source,
        };
        let mut archive = None;
        let (log, kept, head): (Arc<dyn CanonicalLog>, Kept, u64) = match &self.backend {
            Backend::Embedded => {
                let dir = self.data_dir.join(name);
                if !create && !dir.join(strata::log::LOG_DIR).is_dir() {
                    return Ok(None);
                }
                let (store, views) = open_embedded(name, &dir)?;
                let head = store.head();
                if let Some(config) = &self.archive {
                    archive = Some(start_archive(name, &store, config)?);
                }
                (
                    Arc::new(store.clone()),
                    Kept::Embedded { store, views },
                    head,
                )
            }
            Backend::Postgres(db) => {
                let found = if create {
                    db.open_log(name).map(Some)
                } else {
                    db.find_log(name)
                };
                let Some(log) = found.map_err(|e| ServerError::Postgres(Box::new(e)))? else {
                    return Ok(None);
                };
                let head = log.head().map_err(log_err)?;
                let (mirror, views) =
                    open_mirror(name, &self.data_dir.join(name), log.store_id(), head)?;
                (Arc::new(log), Kept::Postgres { mirror, views }, head)
            }
        };
        let (head_tx, head_rx) = watch::channel(head);
        let sync = ServerConfig {
            log_keeps_turns: log.keeps_turns(),
            ..self.sync.clone()
        };
        let hosted = Arc::new(Hosted {
            name: name.to_owned(),
            log,
            kept,
            core: Mutex::new(ServerCore::new(sync, head)),
            routes: Mutex::new(HashMap::new()),
            wake: (Mutex::new(false), Condvar::new()),
            stop: AtomicBool::new(false),
            committer: Mutex::new(None),
            mirror_follower: Mutex::new(None),
            mirror_wake: (Mutex::new(true), Condvar::new()),
            head: head_rx,
            head_tx,
            next_client: AtomicU64::new(1),
            stats: StoreMetrics::default(),
            started: Mutex::new(HashMap::new()),
            archive_status: archive.as_ref().map(|a: &ArchiveHandle| a.status().clone()),
            archive: Mutex::new(archive),
        });
        let committer = {
            let hosted = hosted.clone();
            std::thread::Builder::new()
                .name(format!("strata-commit-{name}"))
                .spawn(move || hosted.commit_loop())
                .map_err(|source| ServerError::Io {
                    action: "starting a store's committer",
                    source,
                })?
        };
        *hosted.committer.lock().unwrap_or_else(|e| e.into_inner()) = Some(committer);
        if matches!(hosted.kept, Kept::Postgres { .. }) {
            let follower = {
                let hosted = hosted.clone();
                std::thread::Builder::new()
                    .name(format!("strata-mirror-{name}"))
                    .spawn(move || hosted.mirror_loop())
                    .map_err(|source| ServerError::Io {
                        action: "starting a store's mirror",
                        source,
                    })?
            };
            *hosted
                .mirror_follower
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(follower);
        }
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), hosted.clone());
        Ok(Some(hosted))
    }

    /// Every open store.
    pub fn open_stores(&self) -> Vec<Arc<Hosted>> {
        let mut all: Vec<Arc<Hosted>> = self
            .stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The hosted store `name` if it is open.
    pub fn get_open(&self, name: &str) -> Option<Arc<Hosted>> {
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Closes every store, [`CLOSE_THREADS_MAX`] at a time: stops each
    /// committer, then syncs and closes the store and its views. Nothing
    /// acknowledged is lost (acknowledged means synced already).
    pub fn close(&self) {
        self.close_with(CLOSE_THREADS_MAX);
    }

    /// [`Registry::close`] by at most `threads` threads (1: one store after
    /// another, the baseline of the `server_shutdown` benchmark).
    pub fn close_with(&self, threads: usize) {
        // No store opens while they close.
        let _opening = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        let stores: Vec<Arc<Hosted>> = self
            .stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        // Several at once: each close mostly waits on its disk and on its
        // threads ending.
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..stores.len().min(threads.max(1)) {
                scope.spawn(|| {
                    while let Some(h) = stores.get(next.fetch_add(1, Ordering::Relaxed)) {
                        h.stop_committer();
                        h.stop_archive();
                        let (store, views) = match &h.kept {
                            Kept::Embedded { store, views } => (store, views),
                            Kept::Postgres { mirror, views } => {
                                h.stop_mirror();
                                (mirror, views)
                            }
                        };
                        views.clone().close();
                        if let Err(e) = store.clone().close() {
                            tracing::error!(store = %h.name, error = %e, "closing a store");
                        }
                    }
                });
            }
        });
    }
}

/// Where and how often a server archives its stores' logs.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The archive location of the server: each store goes to
    /// `<url>/<store name>` (a directory path, `file:///…`, or an object
    /// store URL: README.md, "Backups").
    pub url: String,
    /// Steps' timing and retries.
    pub options: ArchiveOptions,
}

/// Starts the archive of `store` (first step on its own thread: an
/// unreachable archive does not delay the store's opening).
fn start_archive(
    name: &str,
    store: &Store,
    config: &ArchiveConfig,
) -> Result<ArchiveHandle, ServerError> {
    let url = strata_archive::target::join(&config.url, name);
    let target = strata_archive::target::open(&url).map_err(|e| ServerError::Archive {
        name: name.to_owned(),
        message: e.to_string(),
    })?;
    let archiver = Archiver::new(store.clone(), target).map_err(|e| ServerError::Archive {
        name: name.to_owned(),
        message: e.to_string(),
    })?;
    tracing::info!(store = name, archive = %url, "archiving the store's log");
    strata_archive::spawn(
        archiver,
        config.options.clone(),
        format!("strata-archive-{name}"),
    )
    .map_err(|source| ServerError::Io {
        action: "starting a store's archive",
        source,
    })
}

/// Opens (or creates) an embedded store and its server-side views.
fn open_embedded(name: &str, dir: &std::path::Path) -> Result<(Store, Views), ServerError> {
    let store = Store::open(dir, Options::default()).map_err(|source| ServerError::Store {
        name: name.to_owned(),
        source: Box::new(source),
    })?;
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
        ViewOptions::default(),
    )
    .map_err(|e| ServerError::Views {
        name: name.to_owned(),
        message: e.to_string(),
    })?;
    tracing::info!(store = name, dir = %dir.display(), head = store.head(), "store opened");
    Ok((store, views))
}

/// Opens this node's mirror of a store whose log is in PostgreSQL, and its
/// views. A mirror of another store of that name (another database, or a
/// database restored to an earlier head) is deleted and made again: the
/// mirror is a cache. A directory that holds an embedded store of the
/// same name is left alone, and the store is refused.
fn open_mirror(
    name: &str,
    dir: &std::path::Path,
    store_id: strata::Uuid,
    head: u64,
) -> Result<(Store, Views), ServerError> {
    let io = |action| move |source| ServerError::Io { action, source };
    let marker = dir.join(MIRROR_MARKER_FILE);
    let id = store_id.to_string();
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == id => {}
        Ok(found) => {
            tracing::info!(store = name, mirrored = %found.trim(), database = %id, "the mirror is of another store; making it again");
            std::fs::remove_dir_all(dir).map_err(io("deleting a stale mirror"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(strata::log::LOG_DIR).exists() {
                return Err(ServerError::NotAMirror {
                    name: name.to_owned(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        Err(e) => return Err(io("reading a mirror's marker")(e)),
    }
    std::fs::create_dir_all(dir).map_err(io("creating a mirror"))?;
    std::fs::write(&marker, &id).map_err(io("writing a mirror's marker"))?;
    let (store, views) = open_embedded(name, dir)?;
    if store.head() <= head {
        return Ok((store, views));
    }
    // Beyond the database's head: the database went back (a restore).
    tracing::info!(
        store = name,
        mirrored = store.head(),
        head,
        "the mirror is ahead of the database; making it again"
    );
    views.close();
    store.close().map_err(|source| ServerError::Store {
        name: name.to_owned(),
        source: Box::new(source),
    })?;
    std::fs::remove_dir_all(dir).map_err(io("deleting a stale mirror"))?;
    std::fs::create_dir_all(dir).map_err(io("creating a mirror"))?;
    std::fs::write(&marker, &id).map_err(io("writing a mirror's marker"))?;
    open_embedded(name, dir)
}
