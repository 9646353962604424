//! The embedded default: a private `redis-server` this process starts,
//! supervises and stops.
//!
//! - It listens on a unix socket in the data dir only (no TCP port), with AOF
//!   persistence (`appendfsync always` by default: an acknowledged claim is on
//!   disk before its answer leaves Redis).
//! - If it dies, the supervisor logs it and starts it again on the same data;
//!   the store's connection manager reconnects and reloads the scripts.
//! - `PR_SET_PDEATHSIG` makes the kernel send it SIGTERM if this process dies
//!   without cleaning up, so a `kill -9` of the service leaves no orphan.
//! - On shutdown it gets SIGTERM (Redis then flushes and closes its AOF).
//! - A lock file keeps two services from running Redis on one data dir.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the embedded Redis is run.
#[derive(Debug, Clone)]
pub struct ManagedConfig {
    pub data_dir: PathBuf,
    pub redis_server: String,
    pub appendfsync: String,
}

/// A running, supervised `redis-server`.
#[derive(Debug)]
pub struct ManagedRedis {
    socket: PathBuf,
    pid: Arc<AtomicI32>,
    stop: watch::Sender<bool>,
    supervisor: Option<JoinHandle<()>>,
    _lock: File,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error("cannot use data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("data dir {0} is in use by another stampede process")]
    Locked(PathBuf),
    #[error(
        "cannot start `{0}`: {1}. Install Redis (apt-get install redis-server) or set STAMPEDE_REDIS_URL"
    )]
    Spawn(String, std::io::Error),
    #[error("redis-server did not become ready within {0:?}; see {1}")]
    NotReady(Duration, PathBuf),
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a start waits for another process to let go of the data dir.
const LOCK_WAIT: Duration = Duration::from_secs(10);

fn signal(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number has
        // no memory-safety preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl ManagedRedis {
    /// Starts `redis-server` and waits until it answers PING.
    pub async fn start(cfg: ManagedConfig) -> Result<Self, ManagedError> {
        let dir = cfg.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| ManagedError::DataDir(dir.clone(), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| ManagedError::DataDir(dir.clone(), e))?;
        let lock = File::create(dir.join("stampede.lock"))
            .map_err(|e| ManagedError::DataDir(dir.clone(), e))?;
        // A service restarted at once may find its predecessor still
        // flushing the AOF on its way out: wait a little for the lock.
        let mut waited = Duration::ZERO;
        while lock.try_lock().is_err() {
            if waited >= LOCK_WAIT {
                return Err(ManagedError::Locked(dir));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        let socket = dir.join("redis.sock");
        let lock_fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
        let child = spawn(&cfg, &dir, &socket, lock_fd)?;
        let pid = Arc::new(AtomicI32::new(child.id().map_or(0, |p| p as i32)));
        wait_ready(&socket, &dir).await?;
        tracing::info!(data_dir = %dir.display(), appendfsync = %cfg.appendfsync, "embedded redis-server is up");

        let (stop, stop_rx) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(
            cfg,
            (dir, lock_fd),
            socket.clone(),
            child,
            pid.clone(),
            stop_rx,
        ));
        Ok(Self {
            socket,
            pid,
            stop,
            supervisor: Some(supervisor),
            _lock: lock,
        })
    }

    /// The URL the store connects to.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// The process id of the current `redis-server` (tests kill it).
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Stops Redis cleanly: SIGTERM, then SIGKILL after `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        signal(self.pid(), libc::SIGTERM);
        if let Some(mut sup) = self.supervisor.take()
            && tokio::time::timeout(grace, &mut sup).await.is_err()
        {
            {
                tracing::warn!("embedded redis-server did not stop in {grace:?}; killing it");
                signal(self.pid(), libc::SIGKILL);
                let _ = sup.await;
            }
        }
        tracing::info!("embedded redis-server stopped");
    }
}

impl Drop for ManagedRedis {
    fn drop(&mut self) {
        // A ManagedRedis dropped without shutdown() (a panic, a test) must not
        // leave its redis-server running.
        if self.supervisor.is_some() {
            let _ = self.stop.send(true);
            signal(self.pid(), libc::SIGTERM);
        }
    }
}

/// Starts `redis-server` on `dir`. It inherits the data dir's lock
/// (`lock_fd`, an `flock` shared by every copy of the descriptor), so the
/// dir stays locked until the redis-server itself has exited, not only this
/// process: a service started on the same dir waits for the old
/// redis-server to finish its AOF and let go of the socket path, which it
/// removes on its way out.
fn spawn(
    cfg: &ManagedConfig,
    dir: &Path,
    socket: &Path,
    lock_fd: std::os::fd::RawFd,
) -> Result<Child, ManagedError> {
    let mut cmd = Command::new(&cfg.redis_server);
    cmd.arg("--port")
        .arg("0")
        .arg("--unixsocket")
        .arg(socket)
        .arg("--unixsocketperm")
        .arg("700")
        .arg("--dir")
        .arg(dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg(&cfg.appendfsync)
        .arg("--save")
        .arg("")
        // A rule's epoch hash holds every identity of its epoch; when one
        // expires (a rule nobody uses any more: rules.lua UNLINKs the old
        // ones while it is used) it is freed off the main thread.
        .arg("--lazyfree-lazy-expire")
        .arg("yes")
        .arg("--daemonize")
        .arg("no")
        .arg("--logfile")
        .arg("redis.log")
        .arg("--loglevel")
        .arg("notice")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    // SAFETY: prctl(PR_SET_PDEATHSIG) and fcntl(F_SETFD) are
    // async-signal-safe and touch no memory of the parent; they run in the
    // child between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // Keep the lock's descriptor open across exec (clear CLOEXEC).
            libc::fcntl(lock_fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| ManagedError::Spawn(cfg.redis_server.clone(), e))
}

async fn wait_ready(socket: &Path, dir: &Path) -> Result<(), ManagedError> {
    let url = format!("redis+unix://{}", socket.display());
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            && let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("PING").query_async::<String>(&mut c),
            )
            .await
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(ManagedError::NotReady(READY_TIMEOUT, dir.join("redis.log")))
}

async fn supervise(
    cfg: ManagedConfig,
    (dir, lock_fd): (PathBuf, std::os::fd::RawFd),
    socket: PathBuf,
    mut child: Child,
    pid: Arc<AtomicI32>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let status = child.wait().await;
        if *stop.borrow() {
            return;
        }
        tracing::warn!(
            ?status,
            "embedded redis-server exited unexpectedly; restarting it"
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            match spawn(&cfg, &dir, &socket, lock_fd) {
                Ok(c) => {
                    child = c;
                    pid.store(child.id().map_or(0, |p| p as i32), Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "restarting embedded redis-server failed");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        match wait_ready(&socket, &dir).await {
            Ok(()) => {
                tracing::info!("embedded redis-server restarted");
                backoff = Duration::from_millis(100);
            }
            Err(e) => tracing::error!(error = %e, "restarted redis-server is not ready yet"),
        }
    }
}
