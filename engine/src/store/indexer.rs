//! The background indexer: follows the log and copies visible events into
//! `index.sqlite` in batches, trimming the tail behind it.

use super::*;

impl Store {
    /// Waits until the index holds every event visible now. Fails if the
    /// indexer is stuck.
    pub fn flush_index(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.options.read_only {
            return Ok(());
        }
        let target = self.head();
        let mut st = lock(&inner.progress.state);
        loop {
            if st.indexed >= target {
                return Ok(());
            }
            if let Some(reason) = &st.stopped {
                return Err(IndexError::Stopped {
                    reason: reason.clone(),
                }
                .into());
            }
            st = inner
                .progress
                .moved
                .wait_timeout(st, IDLE_WAKE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The index's checkpoint: the last position written to SQLite.
    pub fn indexed_position(&self) -> u64 {
        self.inner.progress.get().indexed
    }

    /// Whether `index.sqlite` exists. A read-only store without it
    /// answers reads from the log alone; a read-write open rebuilds it.
    pub fn index_present(&self) -> bool {
        self.inner.index.is_present()
    }
}

/// How far the indexer has got, and whether it is stuck.
#[derive(Debug, Default)]
pub(super) struct IndexProgress {
    pub(super) state: Mutex<IndexState>,
    pub(super) moved: Condvar,
}

#[derive(Debug, Default, Clone)]
pub(super) struct IndexState {
    /// Every position up to this one is in the index.
    pub(super) indexed: u64,
    /// Why the indexer stopped, when it did.
    pub(super) stopped: Option<String>,
}

impl IndexProgress {
    pub(super) fn set(&self, indexed: u64, stopped: Option<String>) {
        let mut st = lock(&self.state);
        st.indexed = st.indexed.max(indexed);
        st.stopped = stopped;
        self.moved.notify_all();
    }

    pub(super) fn get(&self) -> IndexState {
        lock(&self.state).clone()
    }
}

/// The indexer: copies visible events from the log into SQLite.
pub(super) struct Indexer {
    pub(super) log: Log,
    pub(super) writer: IndexWriter,
    pub(super) tail: Arc<RwLock<Tail>>,
    pub(super) progress: Arc<IndexProgress>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) batch_max: usize,
    pub(super) indexed: u64,
    pub(super) hlc_max: (u64, u32),
    pub(super) cursor: Cursor,
}

impl Indexer {
    /// Indexes up to `batch_max` visible events (at most up to `upto`) in
    /// one transaction.
    pub(super) fn step(&mut self, upto: u64) -> Result<(), IndexStepError> {
        let mut rows = 0usize;
        let mut last = self.indexed;
        let mut hlc_max = self.hlc_max;
        let mut max_id: Option<Uuid> = None;
        let mut batch = self.writer.begin()?;
        let result = (|| -> Result<(), IndexStepError> {
            while rows < self.batch_max {
                let Some(view) = self.cursor.next_batch(upto)? else {
                    break;
                };
                let mut frame = Vec::new();
                for r in view.records() {
                    let (offset, rec) = r?;
                    frame.push(NewRow {
                        event: rec,
                        segment: view.segment_first,
                        offset,
                    });
                    hlc_max = hlc_max.max((rec.hlc_physical_ms, rec.hlc_counter));
                    max_id = max_id.max(Some(rec.event_id));
                    last = rec.position;
                }
                rows += frame.len();
                batch.insert_frame(&frame)?;
            }
            Ok(())
        })();
        // Dropping an uncommitted batch rolls it back.
        match result.and_then(|()| batch.commit(last, hlc_max).map_err(IndexStepError::from)) {
            Ok(()) => {
                self.indexed = last;
                self.hlc_max = hlc_max;
                self.tail
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .trim(last, max_id);
                self.progress.set(last, None);
                Ok(())
            }
            Err(e) => {
                // Start again from the checkpoint next time.
                self.cursor = self.log.cursor(self.indexed + 1);
                Err(e)
            }
        }
    }

    /// Follows the log until the store closes, indexing what it makes
    /// visible (and, at close, what is visible already). Readers do not
    /// wait for the index (the tail answers), so a trickle of appends is
    /// let gather into fewer SQLite transactions.
    pub(super) fn run(mut self) {
        let (log, shutdown) = (self.log.clone(), self.shutdown.clone());
        let pace = FollowPace {
            idle_wake: IDLE_WAKE,
            gather: INDEXER_GATHER,
            retry: INDEXER_RETRY,
        };
        follow(&log, &shutdown, pace, |visible| {
            if visible <= self.indexed {
                return Step::Applied(self.indexed);
            }
            match self.step(visible) {
                Ok(()) => Step::Applied(self.indexed),
                Err(e) => {
                    tracing::error!(error = %e, "indexer failed; retrying");
                    self.progress.set(self.indexed, Some(e.to_string()));
                    Step::Failed
                }
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum IndexStepError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl From<IndexStepError> for Error {
    fn from(e: IndexStepError) -> Error {
        match e {
            IndexStepError::Log(e) => Error::Log(e),
            IndexStepError::Index(e) => Error::Index(e),
        }
    }
}
