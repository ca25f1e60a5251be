//! One writer process per store: an exclusive lock on `<store>/LOCK`.
//!
//! The lock is an OS advisory lock (`flock`), so it disappears with the
//! process that held it, crash or not; no stale lock ever needs cleaning.
//! The file's text names the holder so that a refused open can say who.
//!
//! A `flock` belongs to the open file, and a child process shares the
//! parent's open files from `fork` until `exec` closes them. So when this
//! process closes a store while another of its threads is spawning a
//! process, the lock can outlive the close for that moment, and reopening
//! at once would be refused by our own, just-closed store. When the holder
//! the file names is this process, [`LockFile::acquire`] therefore tries
//! again for up to [`SELF_HELD_RETRY`] before it reports the lock as held.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Name of the lock file inside a store.
pub const LOCK_FILE: &str = "LOCK";

/// How long [`LockFile::acquire`] keeps trying when the lock's holder is
/// this very process (see the module documentation); a real second open
/// in the same process is refused after this.
pub const SELF_HELD_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
/// Pause between those tries.
const SELF_HELD_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

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
        let ours = format!("pid {} ", std::process::id());
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.seek(SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    if holder.starts_with(&ours) && started.elapsed() < SELF_HELD_RETRY {
                        std::thread::sleep(SELF_HELD_PAUSE);
                        continue;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock this process is about to let go of (as when a forked child
    /// has not exec'd yet) is waited for; one it keeps is still refused.
    #[test]
    fn a_lock_held_by_this_process_is_waited_for_briefly_then_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = LockFile::acquire(dir.path()).unwrap();
        let started = std::time::Instant::now();
        let err = LockFile::acquire(dir.path()).unwrap_err();
        assert!(started.elapsed() >= SELF_HELD_RETRY);
        assert!(
            matches!(&err, Error::Locked { holder, .. } if holder.starts_with(&format!("pid {} ", std::process::id()))),
            "{err}"
        );
        let release = std::thread::spawn(move || {
            std::thread::sleep(SELF_HELD_RETRY / 5);
            drop(held);
        });
        LockFile::acquire(dir.path()).unwrap();
        release.join().unwrap();
    }
}
