//! Hearing of other nodes' commits: LISTEN/NOTIFY, with polling as the
//! fallback.
//!
//! Every commit that moves a store's head runs `pg_notify('strata_head',
//! 'store:head')` in its transaction. PostgreSQL delivers a notification
//! only when (and if) that transaction commits, to every session listening
//! on the channel, in commit order. A [`HeadListener`] holds one such
//! session on a dedicated connection (outside the pool: a pooled connection
//! is handed to other work between calls, a listening one must stay) and
//! reports each store's new head to a callback, which the server uses to
//! wake the connections that follow that store on this node.
//!
//! Notifications are lost while the listener is not connected (the
//! database restarted, the network broke). So after every (re)connection
//! the listener reads every store's head once, and while connected it
//! reads them again every [`ListenerConfig::poll_interval`]: a head that
//! moved without a notification is reported at most that long after.
//! A report is made only when a head is higher than the last one reported
//! for that store, so the callback sees each store's heads rising.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use super::NOTIFY_CHANNEL;

/// Default [`ListenerConfig::poll_interval`].
pub const LISTEN_POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);
/// Default [`ListenerConfig::reconnect_delay`].
pub const LISTEN_RECONNECT_DELAY_DEFAULT: Duration = Duration::from_millis(250);
/// The reconnect delay doubles after each failure up to this.
pub const LISTEN_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);
/// The application name of the listener's connection.
pub const LISTENER_APPLICATION_NAME: &str = "strata-listener";

/// How a [`HeadListener`] behaves. Defaults: poll every 2 s, reconnect
/// after 250 ms (doubling to 5 s while it keeps failing).
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// How often every store's head is read besides the notifications (the
    /// longest a head that moved without a notification goes unreported).
    pub poll_interval: Duration,
    /// How long to wait before reconnecting after the connection failed.
    pub reconnect_delay: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            poll_interval: LISTEN_POLL_INTERVAL_DEFAULT,
            reconnect_delay: LISTEN_RECONNECT_DELAY_DEFAULT,
        }
    }
}

/// How a head was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSource {
    /// A commit's notification.
    Notify,
    /// A read of the stores' heads (after connecting, or the periodic one).
    Poll,
}

/// Store `store`'s head is now at least `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadUpdate {
    pub store: String,
    pub head: u64,
    pub source: HeadSource,
}

/// The callback of a [`HeadListener`]. It runs on the runtime: it must not
/// block.
pub type OnHead = Arc<dyn Fn(HeadUpdate) + Send + Sync>;

#[derive(Debug, Default)]
struct Stats {
    connected: AtomicBool,
    connects: AtomicU64,
}

/// A task that reports every store's new heads, whichever node committed
/// them: see the module documentation. Stops when dropped.
#[derive(Debug)]
pub struct HeadListener {
    task: JoinHandle<()>,
    stats: Arc<Stats>,
}

impl Drop for HeadListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HeadListener {
    pub(super) fn start(
        handle: &Handle,
        mut pg: tokio_postgres::Config,
        config: ListenerConfig,
        on_head: OnHead,
    ) -> HeadListener {
        pg.application_name(LISTENER_APPLICATION_NAME);
        let stats = Arc::new(Stats::default());
        let task = handle.spawn(run(pg, config, on_head, stats.clone()));
        HeadListener { task, stats }
    }

    /// Whether the listening connection is up now (listening, and caught
    /// up with every head committed before it listened).
    pub fn is_connected(&self) -> bool {
        self.stats.connected.load(Ordering::Acquire)
    }

    /// How many times it has connected (1 after the first connection; more
    /// after reconnections).
    pub fn connections(&self) -> u64 {
        self.stats.connects.load(Ordering::Acquire)
    }
}

/// The listener's loop: connect, listen, report, and again after a failure.
async fn run(
    pg: tokio_postgres::Config,
    config: ListenerConfig,
    on_head: OnHead,
    stats: Arc<Stats>,
) {
    let mut reported: HashMap<String, u64> = HashMap::new();
    let mut delay = config.reconnect_delay;
    loop {
        let why = listen(&pg, &config, &on_head, &stats, &mut reported).await;
        tracing::warn!(error = %why, retry_in = ?delay, "the head listener lost its connection to PostgreSQL");
        let was_connected = stats.connected.swap(false, Ordering::AcqRel);
        if was_connected {
            delay = config.reconnect_delay;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LISTEN_RECONNECT_DELAY_MAX.max(config.reconnect_delay));
    }
}

/// One connection's life: returns why it ended.
async fn listen(
    pg: &tokio_postgres::Config,
    config: &ListenerConfig,
    on_head: &OnHead,
    stats: &Stats,
    reported: &mut HashMap<String, u64>,
) -> String {
    match listen_once(pg, config, on_head, stats, reported).await {
        Ok(()) => "the connection was closed".to_owned(),
        Err(e) => e,
    }
}

async fn listen_once(
    pg: &tokio_postgres::Config,
    config: &ListenerConfig,
    on_head: &OnHead,
    stats: &Stats,
    reported: &mut HashMap<String, u64>,
) -> Result<(), String> {
    let pg_err = |e: tokio_postgres::Error| super::describe(&e);
    // Every wait is bounded: a server (or network) that stopped answering
    // keeps no promise to say so, and the listener must move on to a new
    // connection.
    let connect_timeout = pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(super::CONNECT_TIMEOUT_DEFAULT);
    let (client, mut connection) = tokio::time::timeout(connect_timeout, pg.connect(NoTls))
        .await
        .map_err(|_| format!("no connection within {connect_timeout:?}"))?
        .map_err(pg_err)?;
    // The connection must be polled for the client's queries to progress
    // and to receive notifications: a task forwards its messages.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            let failed = m.is_err();
            if tx.send(m).is_err() || failed {
                return;
            }
        }
    });
    // Abort the driver whichever way this returns.
    struct Abort(JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = Abort(driver);

    bounded(
        "LISTEN",
        client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")),
    )
    .await?;
    let poll = bounded(
        "preparing the heads' query",
        client.prepare("SELECT name, head FROM strata_stores"),
    )
    .await?;
    let poll_heads = async |reported: &mut HashMap<String, u64>| -> Result<(), String> {
        let rows = bounded("reading the heads", client.query(&poll, &[])).await?;
        for row in rows {
            let (store, head): (String, i64) = (row.get(0), row.get(1));
            if let Ok(head) = u64::try_from(head) {
                report(on_head, reported, store, head, super::HeadSource::Poll);
            }
        }
        Ok(())
    };
    // Listening now: whatever commits from here on is notified. What
    // committed before (while no connection listened) is read once; then
    // the listener counts as connected.
    poll_heads(reported).await?;
    stats.connected.store(true, Ordering::Release);
    stats.connects.fetch_add(1, Ordering::AcqRel);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + config.poll_interval,
        config.poll_interval,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => poll_heads(reported).await?,
            m = rx.recv() => match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == NOTIFY_CHANNEL => {
                    match n.payload().rsplit_once(':').map(|(s, h)| (s, h.parse::<u64>())) {
                        Some((store, Ok(head))) => {
                            report(on_head, reported, store.to_owned(), head, super::HeadSource::Notify);
                        }
                        _ => tracing::warn!(payload = n.payload(), "a notification on {NOTIFY_CHANNEL} that is not store:head"),
                    }
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(notice = %notice.message(), "PostgreSQL notice on the listener");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(pg_err(e)),
                // The driver stopped: the connection is closed.
                None => return Ok(()),
            },
        }
    }
}

/// `f` within [`super::OPERATION_TIMEOUT`], its error in one line.
async fn bounded<T>(
    what: &str,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    tokio::time::timeout(super::OPERATION_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what} took longer than {:?}", super::OPERATION_TIMEOUT))?
        .map_err(|e| super::describe(&e))
}

fn report(
    on_head: &OnHead,
    reported: &mut HashMap<String, u64>,
    store: String,
    head: u64,
    source: super::HeadSource,
) {
    let last = reported.entry(store.clone()).or_insert(0);
    if head > *last {
        *last = head;
        on_head(HeadUpdate {
            store,
            head,
            source,
        });
    }
}
