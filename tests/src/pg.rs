//! A real PostgreSQL for tests: a temporary cluster made with Debian's
//! `postgresql` package (`initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/<version>/bin`, the newest installed), listening
//! only on a Unix socket in its own temporary directory (no port to
//! collide with), and stopped and deleted when dropped.
//!
//! A watchdog process stops the cluster and deletes its directory when the
//! test process ends, however it ends (a panic, an abort, a kill): so the
//! cluster that a test binary's tests share ([`PgCluster::shared`]), which
//! no drop reaches, is torn down too, and nothing is left running.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then every
//! PostgreSQL command runs as the `postgres` user the package creates
//! (`runuser -u postgres --`), in a directory handed to that user.
//!
//! Without PostgreSQL the tests fail, saying how to install it (`.ci/run`
//! does): a test that cannot run is not a test that passed.
//!
//! The cluster runs with `fsync=off`: the tests check what the backend
//! does, not the disk's durability, and a sync per commit would make them
//! slow on a small machine. [`PgCluster::start_with`] turns it back on.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Environment variable naming the directory of `initdb`, `pg_ctl` and
/// `psql`, when they are not in Debian's place.
pub const PG_BIN_ENV: &str = "STRATA_PG_BIN";
/// Where Debian installs each PostgreSQL version's programs.
pub const DEBIAN_PG_LIB: &str = "/usr/lib/postgresql";
/// The user PostgreSQL runs as when the tests run as root.
pub const PG_OS_USER: &str = "postgres";
/// The database superuser of the test cluster (trust authentication).
pub const PG_SUPERUSER: &str = "postgres";
/// The port number in the socket's file name (`.s.PGSQL.<port>`); no TCP
/// port is opened.
pub const PG_PORT: u16 = 5432;
/// Longest `pg_ctl` waits for the server to start or stop.
pub const PG_CTL_WAIT_S: u32 = 60;
/// How often the watchdog looks whether the test process is still there.
const WATCHDOG_POLL_S: f32 = 0.2;
/// Longest path of the socket directory: a Unix socket's path must fit in
/// 107 bytes, and `/.s.PGSQL.5432` follows it.
const SOCKET_DIR_BYTES_MAX: usize = 80;

/// Settings of every test cluster; see the module documentation.
const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
];

/// A running temporary PostgreSQL cluster. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `Some("postgres")` when the tests run as root.
    run_as: Option<&'static str>,
    settings: Vec<(String, String)>,
    running: AtomicBool,
    next_db: AtomicU64,
    /// Stops the cluster when the process ends; a drop stops it first.
    watchdog: Mutex<Option<Child>>,
}

impl PgCluster {
    /// A new cluster with the test settings.
    pub fn start() -> PgCluster {
        PgCluster::start_with(&[])
    }

    /// A new cluster with the test settings, then `settings` (later ones
    /// win: `("fsync", "on")` for durability tests).
    pub fn start_with(settings: &[(&str, &str)]) -> PgCluster {
        let bin = pg_bin_dir();
        let run_as = running_as_root().then_some(PG_OS_USER);
        // As root, /tmp whatever TMPDIR says: the postgres user must be able
        // to reach the directory, and root's own temporary directory may be
        // closed to it. Also /tmp when TMPDIR is too long for a socket path.
        let base = std::env::temp_dir();
        let base = if run_as.is_some() || base.as_os_str().len() > SOCKET_DIR_BYTES_MAX - 20 {
            PathBuf::from("/tmp")
        } else {
            base
        };
        let dir = tempfile::Builder::new()
            .prefix("strata-pg-")
            .tempdir_in(&base)
            .expect("creating the cluster's temporary directory");
        assert!(
            dir.path().as_os_str().len() <= SOCKET_DIR_BYTES_MAX,
            "{} is too long for a Unix socket's directory",
            dir.path().display()
        );
        if let Some(user) = run_as {
            let (uid, gid) = os_user_ids(user);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("handing the cluster's directory to the postgres user");
        }
        let cluster = PgCluster {
            dir,
            bin,
            run_as,
            settings: TEST_SETTINGS
                .iter()
                .chain(settings)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            running: AtomicBool::new(false),
            next_db: AtomicU64::new(1),
            watchdog: Mutex::new(None),
        };
        let data = cluster.data_dir();
        let out = cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                PG_SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let watchdog = cluster.start_watchdog();
        *cluster.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(watchdog);
        cluster.start_again();
        cluster
    }

    /// The cluster this process's tests share: started by the first test
    /// that asks, stopped by its watchdog when the process ends. Each test
    /// makes its own database in it ([`PgCluster::create_database`]).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    /// Starts the watchdog: a shell that waits for this process to end,
    /// then stops the server and deletes the directory.
    fn start_watchdog(&self) -> Child {
        let pg_ctl = self.bin.join("pg_ctl");
        let script = format!(
            "while kill -0 \"$1\" 2>/dev/null; do sleep {WATCHDOG_POLL_S}; done; {} \"$2\" -D \"$3\" stop -m immediate -w >/dev/null 2>&1; rm -rf \"$4\"",
            match self.run_as {
                Some(user) => format!("runuser -u {user} --"),
                None => String::new(),
            }
        );
        Command::new("sh")
            .args(["-c", &script, "strata-pg-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&pg_ctl)
            .arg(self.data_dir())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the cluster's watchdog (sh)")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The connection string of database `db` (libpq key=value form, which
    /// tokio-postgres and `psql` take).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={PG_PORT} user={PG_SUPERUSER} dbname={db}",
            self.socket_dir().display()
        )
    }

    /// A new, empty database; returns its name.
    pub fn create_database(&self) -> String {
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Runs `sql` in database `db` with `psql` and returns what it printed
    /// (unaligned, tuples only); panics with psql's message if it fails.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let out = self
            .command(&psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", path_str(self.socket_dir())])
            .args([
                "-p",
                &PG_PORT.to_string(),
                "-U",
                PG_SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (fast shutdown: sessions are ended, committed work
    /// kept), as a database that goes away under load.
    pub fn stop(&self) {
        if self.running.swap(false, Ordering::AcqRel) {
            let out = self.pg_ctl(&["stop", "-m", "fast"]);
            assert!(
                out.status.success(),
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts the server (again, after [`PgCluster::stop`]).
    pub fn start_again(&self) {
        if self.running.load(Ordering::Acquire) {
            return;
        }
        let mut options = format!(
            "-k {} -p {PG_PORT} -c listen_addresses=''",
            path_str(self.socket_dir())
        );
        for (k, v) in &self.settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let log = self.dir.path().join("server.log");
        let out = self.pg_ctl(&["start", "-l", path_str(&log), "-o", &options]);
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}{}\nserver log:\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running.store(true, Ordering::Release);
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data_dir();
        let wait = PG_CTL_WAIT_S.to_string();
        let mut all = vec!["-D", path_str(&data), "-w", "-t", &wait];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(&self.bin.join(program))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// A command for one of PostgreSQL's programs, as the postgres user
    /// when the tests run as root, in the cluster's directory (the test's
    /// own may be closed to that user).
    fn command(&self, program: &Path) -> Command {
        let mut c = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        c.current_dir(self.dir.path());
        c
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running.swap(false, Ordering::AcqRel) {
            // Immediate: nothing of a test cluster needs to survive.
            let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        }
        // Stopped: the watchdog has nothing left to do (the directory goes
        // with the TempDir).
        let watchdog = self.watchdog.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut w) = watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The uid and gid of `user`.
fn os_user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .expect("running id");
        assert!(
            out.status.success(),
            "there is no {user:?} user to run PostgreSQL as (the tests run as root, which PostgreSQL refuses): install Debian's postgresql package, which creates it (`.ci/run` does: apt-get install -y postgresql)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("id prints a number")
    };
    (id("-u"), id("-g"))
}

/// The directory with `initdb`, `pg_ctl` and `psql`: [`PG_BIN_ENV`], or the
/// newest version under [`DEBIAN_PG_LIB`]. Panics, saying how to install
/// PostgreSQL, when there is none.
pub fn pg_bin_dir() -> PathBuf {
    find_pg_bin(std::env::var_os(PG_BIN_ENV), Path::new(DEBIAN_PG_LIB))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_pg_bin(env: Option<std::ffi::OsString>, lib: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = env {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            Ok(dir)
        } else {
            Err(format!("{PG_BIN_ENV}={} has no initdb", dir.display()))
        };
    }
    let newest = std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max();
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "PostgreSQL is not installed (no {}/<version>/bin/initdb): the PostgreSQL tests need it; install Debian's package (apt-get install -y postgresql), as .ci/run does, or set {PG_BIN_ENV} to the directory of initdb, pg_ctl and psql",
            lib.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_postgresql_the_error_says_how_to_install_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_pg_bin(None, empty.path()).unwrap_err();
        assert!(err.contains("PostgreSQL is not installed"), "{err}");
        assert!(err.contains("apt-get install -y postgresql"), "{err}");
        assert!(err.contains(".ci/run"), "{err}");
    }

    #[test]
    fn the_newest_installed_version_is_chosen() {
        let lib = tempfile::tempdir().unwrap();
        for v in ["9", "15", "13", "notaversion"] {
            let bin = lib.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
        }
        // A newer version without initdb (a client-only install) is skipped.
        std::fs::create_dir_all(lib.path().join("17/bin")).unwrap();
        assert_eq!(
            find_pg_bin(None, lib.path()).unwrap(),
            lib.path().join("15/bin")
        );
    }
}
