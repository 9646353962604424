//! One connection type for both deployments: a single node (a redis-rs
//! `ConnectionManager`, reconnecting by itself) or Redis Cluster (redis-rs's
//! async `ClusterConnection`, which follows `MOVED`/`ASK`, refreshes its
//! slot map after a failover and sends each command to its slot's master).
//! Every store call goes through [`Conn`], so the scripts and commands are
//! the same on both: each script touches one hash slot.
//!
//! The cluster connection is made on first use (like the single node's,
//! lazily), so the service starts, not ready, while the cluster is down.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

/// The scheme of a cluster seed list:
/// `redis+cluster://host1:7000,host2:7001[,...]` (`rediss+cluster://` for TLS).
pub const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster://", "rediss+cluster://"];

/// The seed nodes of a cluster URL as single-node URLs, or `None` when `url`
/// is not a cluster URL. Credentials (`user:pass@`) on the first host apply
/// to every node.
pub fn cluster_seeds(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = CLUSTER_SCHEMES
        .iter()
        .find_map(|s| url.strip_prefix(s).map(|r| (s, r)))?;
    let plain = if scheme.starts_with("rediss") {
        "rediss://"
    } else {
        "redis://"
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{plain}{auth}{h}"))
        .collect();
    if seeds.is_empty() {
        return Some(Err("a cluster URL names at least one host:port".into()));
    }
    for s in &seeds {
        if let Err(e) = redis::Client::open(s.as_str()) {
            return Some(Err(format!("{s}: {e}")));
        }
    }
    Some(Ok(seeds))
}

/// A connection to a single node or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(LazyCluster),
}

/// A cluster connection made on first use.
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    conn: Arc<OnceCell<ClusterConnection>>,
}

impl LazyCluster {
    pub fn new(
        seeds: &[String],
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let client = ClusterClient::builder(seeds.to_vec())
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .retries(3)
            .build()?;
        Ok(Self {
            client: Arc::new(client),
            conn: Arc::new(OnceCell::new()),
        })
    }

    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl Conn {
    /// `WAIT replicas timeout` on the master of `fence`'s slot, right after
    /// a write to `fence` on the same connection ([`Conn::fenced`]): how
    /// many replicas have every write made there before it.
    pub async fn wait_replicas(
        &self,
        fence: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        redis::from_redis_value(self.fenced(fence, cmd).await?).map_err(Into::into)
    }

    /// `WAITAOF 1 replicas timeout` the same way (Redis 7.2+): how many
    /// replicas have fsynced to their AOF every write made there before the
    /// fence, or -1 when the master itself has not (no AOF, or not in time).
    pub async fn wait_aof(
        &self,
        fence: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAITAOF");
        cmd.arg(1).arg(replicas).arg(timeout_ms);
        let (local, remote): (i64, i64) = redis::from_redis_value(self.fenced(fence, cmd).await?)?;
        Ok(if local >= 1 { remote } else { -1 })
    }

    /// `SET fence 1` then `wait`, as one pipeline on one connection to the
    /// master of `fence`'s slot (the node itself, on a single node); the
    /// reply of `wait`.
    ///
    /// `WAIT` and `WAITAOF` count the writes of their own connection. The
    /// writes to confirm (a claim batch, a stock take) were made by an
    /// earlier call, maybe on a connection that has since been re-made; the
    /// fence is a write of this connection that Redis applies after them,
    /// so confirming it confirms them. Were the connection lost between the
    /// two commands, the pipeline fails: nothing is confirmed by mistake.
    async fn fenced(&self, fence: &str, wait: redis::Cmd) -> redis::RedisResult<Value> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(fence).arg(1).ignore().add_command(wait);
        match self {
            Conn::Single(c) => {
                let (v,): (Value,) = pipe.query_async(&mut c.clone()).await?;
                Ok(v)
            }
            Conn::Cluster(lazy) => {
                use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
                let route = Route::with_slot(Slot::for_key(fence), SlotAddr::Master);
                let mut c = lazy.get().await?;
                let mut v = c
                    .route_pipeline(pipe, 1, 1, SingleNodeRoutingInfo::SpecificNode(route))
                    .await?;
                v.pop().ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Parse, "no reply to the wait"))
                })
            }
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl std::fmt::Debug for LazyCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyCluster")
            .field("connected", &self.conn.initialized())
            .finish()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_list_becomes_one_url_per_node() {
        assert_eq!(
            cluster_seeds("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/")
                .unwrap()
                .unwrap(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]
        );
        assert_eq!(
            cluster_seeds("rediss+cluster://u:p@a:7000,b:7001")
                .unwrap()
                .unwrap(),
            ["rediss://u:p@a:7000", "rediss://u:p@b:7001"]
        );
        assert!(cluster_seeds("redis://a:6379").is_none());
        assert!(cluster_seeds("redis+cluster://").unwrap().is_err());
    }
}
