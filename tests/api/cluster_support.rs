//! A local Redis Cluster for tests: three masters (`redis-server
//! --cluster-enabled yes`, AOF on) on loopback ports whose cluster-bus ports
//! (+10000) are free too, joined with `redis-cli --cluster create`, and
//! killed on drop (even when the test panics).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    appendfsync: &'static str,
    children: Vec<Option<Child>>,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A port whose cluster-bus port (+10000) is free as well.
fn cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let p = 20_000 + (rand_u16() % 20_000);
        if taken.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
    panic!("no free cluster port pair");
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("random");
    u16::from_le_bytes(b)
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        Self::start_with(masters, 0, "everysec")
    }

    /// `masters` masters with `replicas` replicas each (the first `masters`
    /// ports are the masters), and `appendfsync` (`always`: an acknowledged
    /// write is on that node's disk).
    pub fn start_with(masters: usize, replicas: usize, appendfsync: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            ports.push(cluster_port(&ports));
        }
        let mut cluster = Self {
            ports,
            dir,
            appendfsync,
            children: Vec::new(),
        };
        for i in 0..cluster.ports.len() {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        for p in &cluster.ports {
            cluster.wait(*p, |c| redis::cmd("PING").query::<String>(c).is_ok());
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for p in &cluster.ports {
            cluster.wait(*p, |c| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(c)
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
        }
        // Replicas in sync (a replica that never synced may not fail over).
        for p in &cluster.ports {
            cluster.wait(*p, |c| {
                redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(c)
                    .is_ok_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
            });
        }
        cluster
    }

    fn spawn(&self, i: usize) -> Child {
        let p = self.ports[i];
        let node_dir = self.dir.path().join(p.to_string());
        std::fs::create_dir_all(&node_dir).unwrap();
        Command::new("redis-server")
            .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "3000"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&node_dir)
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed")
    }

    /// Waits until every live node sees the cluster whole again (after a
    /// failover has promoted a replica).
    pub fn wait_ok(&self) {
        for (i, p) in self.ports.iter().enumerate() {
            if self.children[i].is_some() {
                self.wait(*p, |c| {
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query::<String>(c)
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
                });
            }
        }
    }

    /// SIGKILL node `i` (no shutdown, no final fsync).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again from its AOF and `nodes.conf`, and waits until
    /// the cluster is whole.
    pub fn restart(&mut self, i: usize) {
        let child = self.spawn(i);
        self.children[i] = Some(child);
        for p in &self.ports {
            self.wait(*p, |c| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(c)
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
        }
    }

    /// The node that holds `key` (a master answers; the others redirect).
    pub fn owner_of(&self, key: &str) -> usize {
        (0..self.ports.len())
            .find(|i| {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query::<i64>(&mut self.node(*i))
                    .is_ok_and(|n| n == 1)
            })
            .expect("a node holds the key")
    }

    fn wait(&self, port: u16, ok: impl Fn(&mut redis::Connection) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|c| c.get_connection())
                && ok(&mut c)
            {
                return;
            }
            assert!(Instant::now() < deadline, "node {port} not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seed-list URL stampede takes.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// A plain connection to one node.
    pub fn node(&self, i: usize) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.ports[i]))
            .and_then(|c| c.get_connection())
            .expect("node connection")
    }

    /// EVALSHA + EVAL calls each master has run.
    pub fn script_calls(&self) -> Vec<u64> {
        (0..self.ports.len())
            .map(|i| {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(&mut self.node(i))
                    .unwrap();
                info.lines()
                    .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                    .filter_map(|l| {
                        l.split("calls=")
                            .nth(1)
                            .and_then(|r| r.split(',').next())
                            .and_then(|n| n.parse::<u64>().ok())
                    })
                    .sum()
            })
            .collect()
    }
}
