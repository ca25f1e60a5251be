//! One writer process per store: an exclusive lock on `<store>/LOCK`.
//!
//! The lock is an OS advisory lock (`flock`), so it disappears with the
//! process that held it, crash or not; no stale lock ever needs cleaning.
//! The file's text names the holder so that a refused open can say who.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Name of the lock file inside a store.
pub const LOCK_FILE: &str = "LOCK";

/// Held for as long as a read-write store is open.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    pub fn acquire(store_dir: &Path) -> Result<LockFile, Error> {
        let path = store_dir.join(LOCK_FILE);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| Error::Io {
                path,
                action,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Locked {
                    path,
                    holder: if holder.is_empty() {
                        "an unknown process".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("locking the store")(e)),
        }
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unknown".into());
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = format!(
            "pid {} ({exe}), since unix time {since}\n",
            std::process::id()
        );
        file.set_len(0).map_err(io("writing the lock file"))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io("writing the lock file"))?;
        file.write_all(text.as_bytes())
            .map_err(io("writing the lock file"))?;
        Ok(LockFile { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
