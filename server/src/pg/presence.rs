//! A node's presence in the database, so that other nodes can tell a live
//! node's fairness turn from a dead one's (module [`super::turn`]).
//!
//! Each [`PgDatabase`](super::PgDatabase) draws a session id when it
//! connects and holds a session-level advisory lock keyed by it
//! (`pg_advisory_lock(PRESENCE_LOCK_CLASS, key)`) on a connection of its own
//! for as long as it lives. PostgreSQL releases the lock when that
//! connection ends, which it does at once when the node's process dies (the
//! kernel closes its sockets). A commit that finds a turn held or awaited
//! by another session asks, in its transaction, whether that session's
//! lock is free (`pg_try_advisory_xact_lock_shared`): free means the node
//! is gone, and its clients leave the turn. A node whose presence
//! connection broke (the database restarted) reconnects and takes the lock
//! again; meanwhile its clients' turns may pass to others, which costs
//! order only, never an event.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use strata::Uuid;

/// The first key of every presence lock ("STRA" in ASCII).
pub const PRESENCE_LOCK_CLASS: i32 = 0x5354_5241;
/// The application name of the presence connection.
pub const PRESENCE_APPLICATION_NAME: &str = "strata-presence";
/// First wait before the presence connection is made again after it broke;
/// it doubles up to [`PRESENCE_RECONNECT_DELAY_MAX`].
pub const PRESENCE_RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Longest wait between two attempts to make the presence connection.
pub const PRESENCE_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

/// The second key of `session`'s presence lock. Two sessions with the same
/// key would each look alive while the other is: a 1 in 2³² chance per
/// pair, and it only delays a dead node's turn until its deadline.
pub(crate) fn lock_key(session: Uuid) -> i32 {
    let b = session.as_bytes();
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Holds the presence lock until dropped.
#[derive(Debug)]
pub(crate) struct Presence {
    task: JoinHandle<()>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        // The task owns the client: aborting it drops the client, which
        // ends the connection, which releases the lock.
        self.task.abort();
    }
}

/// Takes the lock once (an error if the database refuses), then keeps it,
/// reconnecting in the background whenever the connection ends.
pub(crate) async fn start(
    handle: &Handle,
    mut pg: tokio_postgres::Config,
    session: Uuid,
) -> Result<Presence, tokio_postgres::Error> {
    pg.application_name(PRESENCE_APPLICATION_NAME);
    let key = lock_key(session);
    let first = hold(&pg, key).await?;
    let task = handle.spawn(async move {
        let mut held = Some(first);
        let mut delay = PRESENCE_RECONNECT_DELAY;
        loop {
            if let Some((client, connection)) = held.take() {
                let _ = connection.await;
                drop(client);
                tracing::warn!(%session, "the presence connection to PostgreSQL ended; making it again");
            }
            tokio::time::sleep(delay).await;
            match hold(&pg, key).await {
                Ok(h) => {
                    held = Some(h);
                    delay = PRESENCE_RECONNECT_DELAY;
                }
                Err(e) => {
                    tracing::warn!(%session, error = %super::describe(&e), "cannot take the presence lock in PostgreSQL");
                    delay = (delay * 2).min(PRESENCE_RECONNECT_DELAY_MAX);
                }
            }
        }
    });
    Ok(Presence { task })
}

/// A new connection holding the lock, and the task driving it (it ends
/// when the connection does).
async fn hold(
    pg: &tokio_postgres::Config,
    key: i32,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
    let (client, connection) = pg.connect(NoTls).await?;
    let connection = tokio::spawn(connection);
    // Waits if a commit holds the key shared for a moment (or, once in 2³²,
    // another node shares the key; lock_timeout then ends the wait, and
    // the connection is made again).
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&PRESENCE_LOCK_CLASS, &key],
        )
        .await?;
    Ok((client, connection))
}
