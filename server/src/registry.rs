//! The stores a server hosts: one embedded Strata store per name, each in
//! its own directory under the data directory (per-store isolation), with
//! its sync core, its server-side views, and a notifier that tells async
//! transports when its log moved.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata::projection::counter::CounterProjection;
use strata::projection::todo::TodoProjection;
use strata::projection::{ViewOptions, Views};
use strata::sync::{ClientId, ServerConfig, ServerCore};
use strata::{Options, Store};

use crate::ServerError;

/// Longest store name.
pub const STORE_NAME_BYTES_MAX: usize = 64;
/// Store served when a client names none.
pub const DEFAULT_STORE: &str = "default";
/// How often the head notifier looks at the shutdown flag.
const HEAD_WAKE: Duration = Duration::from_millis(200);

/// Checks a store name: 1 to 64 bytes of `[a-z0-9_-]`, so that it is a safe
/// directory name everywhere.
pub fn validate_store_name(name: &str) -> Result<(), ServerError> {
    let ok = !name.is_empty()
        && name.len() <= STORE_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ServerError::BadStoreName {
            name: name.chars().take(80).collect(),
        })
    }
}

/// One hosted store.
pub struct Hosted {
    pub name: String,
    pub store: Store,
    pub views: Views,
    pub core: Mutex<ServerCore>,
    /// The log's head, updated whenever it moves.
    pub head: tokio::sync::watch::Receiver<u64>,
    next_client: AtomicU64,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted").field("name", &self.name).finish()
    }
}

impl Hosted {
    /// A fresh id for a connection to this store.
    pub fn next_client_id(&self) -> ClientId {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` with the sync core and the store, as the core's canonical
    /// log. Blocking (it may append and sync): call from a blocking thread.
    pub fn with_core<T>(&self, f: impl FnOnce(&mut ServerCore, &mut Store) -> T) -> T {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        let mut store = self.store.clone();
        f(&mut core, &mut store)
    }
}

/// All hosted stores, opened on first use.
pub struct Registry {
    data_dir: PathBuf,
    sync: ServerConfig,
    stores: Mutex<HashMap<String, Arc<Hosted>>>,
    shutdown: Arc<AtomicBool>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Registry {
    pub fn new(data_dir: PathBuf, sync: ServerConfig) -> Registry {
        Registry {
            data_dir,
            sync,
            stores: Mutex::new(HashMap::new()),
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn sync_config(&self) -> &ServerConfig {
        &self.sync
    }

    /// The hosted store `name`, opened (and created) on first use.
    pub fn get(&self, name: &str) -> Result<Arc<Hosted>, ServerError> {
        validate_store_name(name)?;
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = stores.get(name) {
            return Ok(h.clone());
        }
        let dir = self.data_dir.join(name);
        let store_err = |source| ServerError::Store {
            name: name.to_owned(),
            source: Box::new(source),
        };
        let store = Store::open(&dir, Options::default()).map_err(store_err)?;
        let views = Views::open(
            &store,
            vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
            ViewOptions::default(),
        )
        .map_err(|e| ServerError::Views {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        let (tx, rx) = tokio::sync::watch::channel(store.head());
        let log = store.log().clone();
        let shutdown = self.shutdown.clone();
        std::thread::Builder::new()
            .name(format!("strata-head-{name}"))
            .spawn(move || {
                let mut seen = *tx.borrow();
                while !shutdown.load(Ordering::Acquire) && !log.is_closed() {
                    let head = log.wait_beyond(seen, HEAD_WAKE);
                    if head > seen {
                        seen = head;
                        if tx.send(head).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| ServerError::Io {
                action: "starting a head notifier",
                source: e,
            })?;
        tracing::info!(store = name, dir = %dir.display(), head = store.head(), "store opened");
        let hosted = Arc::new(Hosted {
            name: name.to_owned(),
            store,
            views,
            core: Mutex::new(ServerCore::new(self.sync.clone())),
            head: rx,
            next_client: AtomicU64::new(1),
        });
        stores.insert(name.to_owned(), hosted.clone());
        Ok(hosted)
    }

    /// Closes every store: syncs, stops views and notifiers. Nothing
    /// acknowledged is lost (acknowledged means synced already).
    pub fn close(&self) {
        self.shutdown.store(true, Ordering::Release);
        let stores: Vec<Arc<Hosted>> = self
            .stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in stores {
            h.views.clone().close();
            if let Err(e) = h.store.clone().close() {
                tracing::error!(store = %h.name, error = %e, "closing a store");
            }
        }
    }
}
