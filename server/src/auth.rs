//! Who may do what: tokens and the stores they grant. Every transport and
//! endpoint asks [`Auth::check`] with the token it got, the store the
//! client names and the client's address, **before** the store is opened.
//!
//! # Tokens and grants
//!
//! * `--token T` (repeatable, or `STRATA_TOKENS=T1,T2`): T may read and
//!   write every store.
//! * `--token-file PATH`: one grant per line, `token store-pattern mode`,
//!   separated by spaces or tabs; `#` starts a comment. `store-pattern` is
//!   a store name, a prefix ending in `*` (`team-*`), or `*` for every
//!   store; `mode` is `read` or `write` (write includes read). A token may
//!   have several lines; it gets the widest mode of the lines that match.
//!   The file is read again on `SIGHUP` (a file that does not parse keeps
//!   the grants in force and says why in the log).
//! * Tokens are at least [`TOKEN_BYTES_MIN`] bytes of visible ASCII other than `#`;
//!   an empty or short token is refused at start.
//! * Without any token the server is open: everyone may read and write,
//!   and [`crate::Config::check`] allows that on loopback only.
//!
//! Tokens are compared as SHA-256 digests looked up in a table, so the
//! time taken does not depend on how much of a guess was right.
//!
//! # Failed attempts
//!
//! Each failure is counted per client address. Past
//! [`FAILURES_PER_WINDOW_MAX`] failures within [`FAILURE_WINDOW`], that
//! address is refused without a check until the window has passed
//! ([`AuthError::TooManyFailures`]), so guessing is throttled. Failures
//! are logged at WARN: the first of each address in a window, and the
//! moment it is blocked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::registry::{STORE_NAME_BYTES_MAX, validate_store_name};

/// Shortest token accepted.
pub const TOKEN_BYTES_MIN: usize = 16;
/// Longest token accepted.
pub const TOKEN_BYTES_MAX: usize = 512;
/// Largest token file read.
pub const TOKEN_FILE_BYTES_MAX: u64 = 1 << 20;
/// Failed attempts one address may make within [`FAILURE_WINDOW`].
pub const FAILURES_PER_WINDOW_MAX: u32 = 20;
/// The window failed attempts are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are remembered; beyond it the oldest windows
/// are forgotten first.
pub const FAILURE_ADDRESSES_MAX: usize = 10_000;

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Read,
    Write,
}

/// What a token grants on one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// May push (otherwise only read and follow).
    pub write: bool,
}

/// Why a client is refused. The messages go to clients: they name no
/// token and no other store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or wrong token; pass a token this server accepts")]
    Unauthorized,
    #[error("this token does not grant store {store:?}")]
    Forbidden { store: String },
    #[error(
        "too many failed attempts from this address; wait {retry_after_secs} s before trying again"
    )]
    TooManyFailures { retry_after_secs: u64 },
}

/// A token setting that cannot be used: the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "a token is {len} bytes{what}; tokens must be {TOKEN_BYTES_MIN} to {TOKEN_BYTES_MAX} visible ASCII characters other than # (make one with e.g. `openssl rand -hex 24`)"
    )]
    BadToken { len: usize, what: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}; a line is `token store-pattern mode`, mode read or write")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Which stores a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    All,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::All);
        }
        let (name, prefix) = match text.strip_suffix('*') {
            Some(p) => (p, true),
            None => (text, false),
        };
        let valid = !name.is_empty()
            && name.len() <= STORE_NAME_BYTES_MAX
            && (prefix || validate_store_name(name).is_ok())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "{text:?} is not a store pattern: use a store name, a prefix ending in *, or *"
            ));
        }
        Ok(if prefix {
            Pattern::Prefix(name.to_owned())
        } else {
            Pattern::Exact(name.to_owned())
        })
    }

    fn matches(&self, store: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(p) => store.starts_with(p.as_str()),
            Pattern::Exact(n) => store == n,
        }
    }
}

type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn check_token(token: &str) -> Result<(), AuthConfigError> {
    let len = token.len();
    // Visible ASCII: a token travels in an HTTP header, a token file line
    // (where `#` starts a comment) and a page's `#token=` fragment.
    let what = if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
        if c.is_whitespace() {
            " with white space"
        } else if c == '#' {
            " with a #"
        } else {
            " with a character that is not visible ASCII"
        }
    } else if (TOKEN_BYTES_MIN..=TOKEN_BYTES_MAX).contains(&len) {
        return Ok(());
    } else {
        ""
    };
    Err(AuthConfigError::BadToken { len, what })
}

/// The grants in force: rules by token digest.
#[derive(Debug, Default)]
struct Grants {
    rules: HashMap<Digest, Vec<(Pattern, Mode)>>,
}

impl Grants {
    fn add(&mut self, token: &str, pattern: Pattern, mode: Mode) {
        self.rules
            .entry(digest(token))
            .or_default()
            .push((pattern, mode));
    }

    /// Parses a token file.
    fn read_file(path: &Path, into: &mut Grants) -> Result<(), AuthConfigError> {
        let io = |source| AuthConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > TOKEN_FILE_BYTES_MAX {
            return Err(AuthConfigError::BadLine {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("the file is {len} bytes, more than {TOKEN_FILE_BYTES_MAX}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| AuthConfigError::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, pattern, mode] = fields[..] else {
                return Err(bad(format!("{} fields, not 3", fields.len())));
            };
            check_token(token).map_err(|e| bad(e.to_string()))?;
            let pattern = Pattern::parse(pattern).map_err(bad)?;
            let mode = match mode {
                "read" => Mode::Read,
                "write" => Mode::Write,
                other => return Err(bad(format!("mode {other:?} is neither read nor write"))),
            };
            into.add(token, pattern, mode);
        }
        Ok(())
    }
}

/// Failed attempts of one address in its current window.
#[derive(Debug)]
struct Failures {
    since: Instant,
    count: u32,
}

/// The server's tokens and grants, and the record of failed attempts.
#[derive(Debug)]
pub struct Auth {
    flag_tokens: Vec<String>,
    file: Option<PathBuf>,
    grants: RwLock<Arc<Grants>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            flag_tokens: Vec::new(),
            file: None,
            grants: RwLock::new(Arc::new(Grants::default())),
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl Auth {
    /// Tokens given as flags (every store, read and write) and an optional
    /// token file. Refuses short or empty tokens and a file that does not
    /// parse.
    pub fn new(flag_tokens: Vec<String>, file: Option<PathBuf>) -> Result<Auth, AuthConfigError> {
        for t in &flag_tokens {
            check_token(t)?;
        }
        let auth = Auth {
            flag_tokens,
            file,
            ..Auth::default()
        };
        *auth.grants.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth.load()?);
        Ok(auth)
    }

    fn load(&self) -> Result<Grants, AuthConfigError> {
        let mut grants = Grants::default();
        for t in &self.flag_tokens {
            grants.add(t, Pattern::All, Mode::Write);
        }
        if let Some(path) = &self.file {
            Grants::read_file(path, &mut grants)?;
        }
        Ok(grants)
    }

    /// Reads the token file again (on `SIGHUP`). On error the grants in
    /// force stay.
    pub fn reload(&self) -> Result<usize, AuthConfigError> {
        let grants = self.load()?;
        let tokens = grants.rules.len();
        *self.grants.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(grants);
        Ok(tokens)
    }

    /// Whether the server runs without tokens (loopback only).
    pub fn is_open(&self) -> bool {
        self.flag_tokens.is_empty() && self.file.is_none()
    }

    /// What `token` grants on `store`, for a client at `peer`.
    pub fn check(
        &self,
        token: Option<&str>,
        store: &str,
        peer: IpAddr,
    ) -> Result<Grant, AuthError> {
        let Some(grants) = self.grants_for(peer)? else {
            return Ok(Grant { write: true });
        };
        let Some(rules) = token.and_then(|t| grants.rules.get(&digest(t))) else {
            self.failed(peer, "missing or wrong token");
            return Err(AuthError::Unauthorized);
        };
        match rules
            .iter()
            .filter(|(p, _)| p.matches(store))
            .map(|(_, m)| *m)
            .max()
        {
            Some(mode) => Ok(Grant {
                write: mode == Mode::Write,
            }),
            None => {
                self.failed(peer, "token without a grant for the store");
                Err(AuthError::Forbidden {
                    store: store.chars().take(STORE_NAME_BYTES_MAX).collect(),
                })
            }
        }
    }

    /// A token that grants read on every store (for `/metrics` on the main
    /// port), for a client at `peer`.
    pub fn check_all(&self, token: Option<&str>, peer: IpAddr) -> Result<(), AuthError> {
        let Some(grants) = self.grants_for(peer)? else {
            return Ok(());
        };
        match token.and_then(|t| grants.rules.get(&digest(t))) {
            Some(rules) if rules.iter().any(|(p, _)| *p == Pattern::All) => Ok(()),
            Some(_) => {
                self.failed(peer, "token without a grant for every store");
                Err(AuthError::Forbidden { store: "*".into() })
            }
            None => {
                self.failed(peer, "missing or wrong token");
                Err(AuthError::Unauthorized)
            }
        }
    }

    /// The grants a check from `peer` is made against: `None` on an open
    /// server (everyone may do everything); refused while `peer` is
    /// blocked.
    fn grants_for(&self, peer: IpAddr) -> Result<Option<Arc<Grants>>, AuthError> {
        if self.is_open() {
            return Ok(None);
        }
        if let Some(retry_after_secs) = self.blocked(peer) {
            return Err(AuthError::TooManyFailures { retry_after_secs });
        }
        Ok(Some(
            self.grants
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        ))
    }

    /// Seconds left on `peer`'s block, if it is blocked.
    fn blocked(&self, peer: IpAddr) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let f = failures.get(&peer)?;
        let left = FAILURE_WINDOW.saturating_sub(f.since.elapsed());
        (f.count >= FAILURES_PER_WINDOW_MAX && !left.is_zero()).then(|| left.as_secs().max(1))
    }

    fn failed(&self, peer: IpAddr, what: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= FAILURE_ADDRESSES_MAX && !failures.contains_key(&peer) {
            failures.retain(|_, f| f.since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= FAILURE_ADDRESSES_MAX {
                // Still full of fresh windows: forget the oldest.
                if let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(a, _)| *a)
                {
                    failures.remove(&oldest);
                }
            }
        }
        let f = failures.entry(peer).or_insert(Failures {
            since: Instant::now(),
            count: 0,
        });
        if f.since.elapsed() >= FAILURE_WINDOW {
            *f = Failures {
                since: Instant::now(),
                count: 0,
            };
        }
        f.count += 1;
        if f.count == 1 {
            tracing::warn!(%peer, reason = what, "authentication failed");
        } else if f.count == FAILURES_PER_WINDOW_MAX {
            tracing::warn!(%peer, failures = f.count, window = ?FAILURE_WINDOW, "too many failed authentications; refusing this address for the rest of the window");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn short_empty_spaced_or_hashed_tokens_are_refused_at_start() {
        for bad in [
            "",
            "s3cret",
            "fifteen-bytes!!",
            "has a space in it ok",
            "sixteen-bytes-#k",
            "sixteen-bytes-\u{e9}k",
        ] {
            assert!(
                matches!(
                    Auth::new(vec![bad.into()], None),
                    Err(AuthConfigError::BadToken { .. })
                ),
                "{bad:?}"
            );
        }
        Auth::new(vec!["sixteen-bytes-ok".into()], None).unwrap();
    }

    #[test]
    fn a_token_file_grants_stores_by_name_prefix_or_all_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# who          stores   mode\n\
             reader-token-0001  default  read\n\
             team-token-000001  team-*   write   # the team's stores\n\
             team-token-000001  default  read\n\
             admin-token-00001  *        write\n",
        )
        .unwrap();
        let auth = Auth::new(vec![], Some(path.clone())).unwrap();
        assert!(!auth.is_open());
        let check = |t: &str, s: &str| auth.check(Some(t), s, PEER);
        assert_eq!(
            check("reader-token-0001", "default"),
            Ok(Grant { write: false })
        );
        assert!(matches!(
            check("reader-token-0001", "other"),
            Err(AuthError::Forbidden { .. })
        ));
        assert_eq!(
            check("team-token-000001", "team-a"),
            Ok(Grant { write: true })
        );
        assert_eq!(
            check("team-token-000001", "default"),
            Ok(Grant { write: false })
        );
        assert!(check("team-token-000001", "tea").is_err());
        assert_eq!(
            check("admin-token-00001", "anything"),
            Ok(Grant { write: true })
        );
        assert_eq!(
            check("nobody-token-0001", "default"),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(
            auth.check(None, "default", PEER),
            Err(AuthError::Unauthorized)
        );
        assert!(auth.check_all(Some("admin-token-00001"), PEER).is_ok());
        assert!(auth.check_all(Some("team-token-000001"), PEER).is_err());

        // Reloaded: a revoked token stops working; a bad file keeps the old.
        std::fs::write(&path, "admin-token-00001 * read\n").unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert_eq!(check("admin-token-00001", "x"), Ok(Grant { write: false }));
        std::fs::write(&path, "admin-token-00001 * sometimes\n").unwrap();
        let err = auth.reload().unwrap_err().to_string();
        assert!(err.contains(":1:") && err.contains("sometimes"), "{err}");
        assert_eq!(check("admin-token-00001", "x"), Ok(Grant { write: false }));
        for bad in ["short default read", "long-enough-token /etc read", "a b"] {
            std::fs::write(&path, bad).unwrap();
            assert!(auth.reload().is_err(), "{bad}");
        }
    }

    #[test]
    fn failed_attempts_are_throttled_per_address() {
        let auth = Auth::new(vec!["right-token-00001".into()], None).unwrap();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        for _ in 0..FAILURES_PER_WINDOW_MAX {
            assert_eq!(
                auth.check(Some("wrong-token-00001"), "default", PEER),
                Err(AuthError::Unauthorized)
            );
        }
        // Blocked now, even with the right token; other addresses are not.
        assert!(matches!(
            auth.check(Some("right-token-00001"), "default", PEER),
            Err(AuthError::TooManyFailures { .. })
        ));
        assert!(
            auth.check(Some("right-token-00001"), "default", other)
                .is_ok()
        );
    }

    /// A shared buffer the log is written to.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failures_are_logged_at_warn_once_per_window_and_when_blocked() {
        let auth = Auth::new(vec!["right-token-00001".into()], None).unwrap();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..FAILURES_PER_WINDOW_MAX + 5 {
                let _ = auth.check(Some("wrong-token-00001"), "default", PEER);
            }
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("authentication failed"),
            "{log}"
        );
        assert!(
            lines[0].contains("127.0.0.1") && !log.contains("wrong-token"),
            "{log}"
        );
        assert!(
            lines[1].contains("WARN") && lines[1].contains("refusing this address"),
            "{log}"
        );
    }

    #[test]
    fn open_mode_grants_everything() {
        let auth = Auth::default();
        assert!(auth.is_open());
        assert_eq!(auth.check(None, "any", PEER), Ok(Grant { write: true }));
    }
}
