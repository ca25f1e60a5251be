//! Where an archive lives: a [`Target`] holds objects by key (`/`-separated,
//! relative), as a directory or an object store does.
//!
//! * A path, or a `file://` URL: [`LocalDir`], Strata's own, which syncs
//!   every object and its directory before a put returns (an archive on a
//!   local or network disk survives a power cut as the store does).
//! * Any other URL: [`ObjectStoreTarget`] over the `object_store` crate
//!   (`s3://bucket/prefix` with this crate's `aws` feature, and
//!   S3-compatible services through `AWS_ENDPOINT`; `gs://` with `gcp`;
//!   `az://` with `azure`; `memory://` always; the server's and the CLI's
//!   features `archive-s3`, `archive-gcs`, `archive-azure` turn them on). Credentials and options come from the environment
//!   (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as object_store's builders read them.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::ArchiveError;

/// Suffix of a [`LocalDir`] object while it is written (renamed when
/// whole; a leftover of a crash is ignored and overwritten).
pub const PART_SUFFIX: &str = ".part";
/// Environment variables passed to object_store's builders, by prefix.
pub const OPTION_ENV_PREFIXES: &[&str] = &["AWS_", "GOOGLE_", "AZURE_", "OBJECT_STORE_"];

/// A place that holds an archive's objects.
pub trait Target: Send + Sync + fmt::Debug {
    /// Stores `bytes` as `key`, whole or not at all; replaces an object of
    /// that key.
    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// The object `key`, `None` if there is none.
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Keys of the objects whose key starts with `prefix`, where the part
    /// of `prefix` after its last `/` is the start of a name in that
    /// "directory". Sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Removes `key`; an absent key is not an error.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Where this is, for messages.
    fn url(&self) -> &str;
}

/// Opens the archive location `url`: a directory path, `file:///dir`, or
/// an object store URL (see the module documentation).
pub fn open(url: &str) -> Result<Arc<dyn Target>, ArchiveError> {
    let bad = |reason: String| ArchiveError::Url {
        url: url.to_owned(),
        reason,
    };
    if url.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if !url.contains("://") {
        return Ok(Arc::new(LocalDir::new(PathBuf::from(url), url)));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if parsed.scheme() == "file" {
        let path = parsed
            .to_file_path()
            .map_err(|()| bad("a file:// URL needs an absolute path".into()))?;
        return Ok(Arc::new(LocalDir::new(path, url)));
    }
    let options = std::env::vars()
        .filter(|(k, _)| OPTION_ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v));
    let (store, prefix) =
        object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(ObjectStoreTarget::new(
        Arc::from(store),
        prefix,
        url,
    )?))
}

/// `url` with `name` appended as one more path segment: the archive of
/// one store (named `name`) under a server's archive location.
pub fn join(url: &str, name: &str) -> String {
    format!("{}/{name}", url.trim_end_matches('/'))
}

/// An archive in a local directory. Every put is written to a
/// `.part` file, synced, renamed into place, and its directory synced.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    url: String,
}

impl LocalDir {
    pub fn new(root: PathBuf, url: &str) -> LocalDir {
        LocalDir {
            root,
            url: url.to_owned(),
        }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Keys are relative, `/`-separated, without `.` or `..` parts: an archive
/// never writes outside its location.
fn check_key(key: &str) -> io::Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("archive key {key:?} is not a relative path of plain names"),
        ));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Target for LocalDir {
    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        let part = PathBuf::from(format!("{}{PART_SUFFIX}", path.display()));
        let mut f = File::create(&part)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&part, &path)?;
        sync_dir(&dir)
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (dir, start) = match prefix.rsplit_once('/') {
            Some((dir, start)) => (Some(dir), start),
            None => (None, prefix),
        };
        let path = match dir {
            Some(d) => self.path(d)?,
            None => self.root.clone(),
        };
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(start)
                && !name.ends_with(PART_SUFFIX)
                && entry.file_type()?.is_file()
            {
                keys.push(match dir {
                    Some(d) => format!("{d}/{name}"),
                    None => name,
                });
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// An archive in an object store, through the `object_store` crate. Its
/// calls are async; this target runs them on a runtime of its own, so its
/// methods block (call them from a plain thread, not an async task).
pub struct ObjectStoreTarget {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Always `Some` but in `drop`, which shuts it down without blocking
    /// (dropping a runtime where blocking is not allowed, as in an async
    /// task that drops a server's registry, would panic).
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
}

impl Drop for ObjectStoreTarget {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for ObjectStoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreTarget {
    /// Objects of `store` under `prefix`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        url: &str,
    ) -> Result<ObjectStoreTarget, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ArchiveError::Target {
                url: url.to_owned(),
                action: "starting the object store's runtime".into(),
                source,
            })?;
        Ok(ObjectStoreTarget {
            store,
            prefix,
            runtime: Some(runtime),
            url: url.to_owned(),
        })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(f)
    }

    fn path(&self, key: &str) -> io::Result<ObjectPath> {
        check_key(key)?;
        Ok(key
            .split('/')
            .fold(self.prefix.clone(), |p, part| p.join(part)))
    }
}

fn object_err(e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Target for ObjectStoreTarget {
    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes.to_vec());
        self.block_on(self.store.put(&path, payload))
            .map(drop)
            .map_err(object_err)
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        self.block_on(async {
            match self.store.get(&path).await {
                Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(object_err)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (dir, start) = match prefix.rsplit_once('/') {
            Some((dir, start)) => (Some(self.path(dir)?), start),
            None => (None, prefix),
        };
        let under = dir.as_ref().unwrap_or(&self.prefix);
        let metas: Vec<_> = self
            .block_on(self.store.list(Some(under)).try_collect())
            .map_err(object_err)?;
        let base: Vec<_> = self.prefix.parts().collect();
        let mut keys: Vec<String> = metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.parts().collect();
                let rel = parts.get(base.len()..)?;
                let key = rel.iter().map(|p| p.as_ref()).collect::<Vec<_>>().join("/");
                let name = rel.last()?.as_ref();
                // Only direct children of the "directory", whose name
                // starts as asked.
                let depth = prefix.matches('/').count() + 1;
                (rel.len() == depth && name.starts_with(start)).then_some(key)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key)?;
        match self.block_on(self.store.delete(&path)) {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other.map_err(object_err),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(t: &dyn Target) {
        assert_eq!(t.get("a/b").unwrap(), None);
        t.put("ARCHIVE.json", b"{}").unwrap();
        t.put("log/0/x.seg", b"one").unwrap();
        t.put("log/0/x.seg.1-2", b"two").unwrap();
        t.put("log/0/y.seg", b"three").unwrap();
        t.put("log/1/x.seg", b"four").unwrap();
        assert_eq!(t.get("log/0/x.seg").unwrap().as_deref(), Some(&b"one"[..]));
        t.put("log/0/x.seg", b"replaced").unwrap();
        assert_eq!(
            t.get("log/0/x.seg").unwrap().as_deref(),
            Some(&b"replaced"[..])
        );
        assert_eq!(
            t.list("log/0/x.seg").unwrap(),
            vec!["log/0/x.seg".to_owned(), "log/0/x.seg.1-2".to_owned()]
        );
        assert_eq!(
            t.list("log/0/x.seg.").unwrap(),
            vec!["log/0/x.seg.1-2".to_owned()]
        );
        assert_eq!(t.list("ARCH").unwrap(), vec!["ARCHIVE.json".to_owned()]);
        assert!(t.list("log/9/").unwrap().is_empty());
        t.delete("log/0/x.seg.1-2").unwrap();
        t.delete("log/0/x.seg.1-2").unwrap();
        assert_eq!(t.list("log/0/x.seg.").unwrap(), Vec::<String>::new());
        for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert!(t.put(bad, b"").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_local_directory_holds_lists_and_deletes_objects() {
        let dir = tempfile::tempdir().unwrap();
        let t = open(dir.path().to_str().unwrap()).unwrap();
        exercise(&*t);
        // Nothing is left half-written.
        assert!(!walk(dir.path()).iter().any(|p| p.ends_with(PART_SUFFIX)));
    }

    #[test]
    fn an_object_store_holds_lists_and_deletes_objects() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let t = ObjectStoreTarget::new(
            store,
            ObjectPath::from("srv/store-a"),
            "memory://srv/store-a",
        )
        .unwrap();
        exercise(&t);
    }

    #[test]
    fn urls_name_their_target_or_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        open(&url).unwrap().put("k", b"v").unwrap();
        assert_eq!(fs::read(dir.path().join("k")).unwrap(), b"v");
        assert!(open("memory:///prefix").is_ok());
        let e = open("").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = open("file://relative/x").unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        #[cfg(not(feature = "aws"))]
        {
            let e = open("s3://bucket/x").unwrap_err().to_string();
            assert!(e.contains("not enabled"), "{e}");
        }
        assert_eq!(join("s3://b/p/", "store"), "s3://b/p/store");
        assert_eq!(join("/srv/archive", "store"), "/srv/archive/store");
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
        out
    }
}
