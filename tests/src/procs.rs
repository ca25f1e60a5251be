//! Server and replica child processes for the crash tests
//! (tests/sync_quic.rs, tests/scale_out.rs): the binaries of
//! tests/src/bin/, which the tests kill at any point. A test passes its own
//! `env!("CARGO_BIN_EXE_…")` path, which only integration tests know.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use strata::Uuid;

/// A `sync_server` process, once it said `READY`. Killed when dropped, so
/// that a failing test leaves no server running.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Child,
    /// Its QUIC address.
    pub addr: SocketAddr,
    pub fingerprint: String,
    /// Its HTTP address (`/ws`, `/events`).
    pub http: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sync_server` (binary `bin`) on `data`, QUIC on `addr`, with its
/// stores' logs in PostgreSQL when `database` names one; returns once it
/// listens.
pub fn spawn_server(
    bin: &Path,
    data: &Path,
    addr: SocketAddr,
    database: Option<&str>,
) -> ServerProcess {
    spawn_server_with(bin, data, addr, database, &[])
}

/// [`spawn_server`] with environment variables (`SYNC_SERVER_ARCHIVE`…).
pub fn spawn_server_with(
    bin: &Path,
    data: &Path,
    addr: SocketAddr,
    database: Option<&str>,
    env: &[(&str, &str)],
) -> ServerProcess {
    let mut child = Command::new(bin)
        .envs(env.iter().copied())
        .arg(data)
        .arg(addr.to_string())
        .args(database)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("READY"), "server said {line:?}");
    ServerProcess {
        addr: parts.next().unwrap().parse().unwrap(),
        fingerprint: parts.next().unwrap().to_owned(),
        http: parts.next().unwrap().parse().unwrap(),
        child,
    }
}

/// A `sync_client` process: a replica appending and syncing in the
/// background until it is killed (at the latest when dropped).
#[derive(Debug)]
pub struct ClientProcess {
    pub child: Child,
    /// Reads its `APPENDED` lines; ends when the process does.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ClientProcess {
    /// Kills it and waits until every line it printed was read.
    pub fn kill(mut self) {
        kill(&mut self.child);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sync_client` (binary `bin`) on replica `dir`, syncing with
/// `servers` (one address, or several separated by commas) pinned to
/// `fingerprint`; each id it reports appended is pushed to `appended`.
pub fn spawn_client(
    bin: &Path,
    dir: &Path,
    servers: &str,
    fingerprint: &str,
    seed: u64,
    appended: Arc<Mutex<Vec<Uuid>>>,
) -> ClientProcess {
    let mut child = Command::new(bin)
        .arg(dir)
        .arg(servers)
        .arg(fingerprint)
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // A line cut by the kill is not a promise: the event may or
            // may not be in the outbox.
            if let Some(id) = line.strip_prefix("APPENDED ").and_then(|s| s.parse().ok()) {
                appended.lock().unwrap().push(id);
            }
        }
    });
    ClientProcess {
        child,
        reader: Some(reader),
    }
}

/// SIGKILL, then reap. Killing a process that already ended is fine.
pub fn kill(child: &mut Child) {
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    child.wait().unwrap();
}
