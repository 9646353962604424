//! A local Redis Cluster for tests: three masters (`redis-server
//! --cluster-enabled yes`, AOF on) on loopback ports whose cluster-bus ports
//! (+6500, `--cluster-port`) are free too, joined with `redis-cli --cluster create`, and
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

/// A node's cluster-bus port: its port plus this (`--cluster-port`).
const BUS_OFFSET: u16 = 6_500;

/// A port whose cluster-bus port is free as well. Both stay below the
/// kernel's ephemeral range (32768..): a port found free there can be taken
/// by any outgoing connection before the node binds it (a node that could
/// not bind never answered: "node … not ready").
fn cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let p = 20_000 + (rand_u16() % 6_000);
        if taken
            .iter()
            .any(|t| *t == p || *t + BUS_OFFSET == p || p + BUS_OFFSET == *t)
        {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + BUS_OFFSET)).is_ok()
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
            .args(["--cluster-port", &(p + BUS_OFFSET).to_string()])
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

    /// Script calls each master has run: EVALSHA + EVAL, and FCALL (the
    /// claim library).
    pub fn script_calls(&self) -> Vec<u64> {
        self.command_calls(&["evalsha", "eval", "fcall"])
    }

    /// Each node's calls of the commands `names` (`INFO commandstats`).
    pub fn command_calls(&self, names: &[&str]) -> Vec<u64> {
        (0..self.ports.len())
            .map(|i| {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(&mut self.node(i))
                    .unwrap();
                info.lines()
                    .filter(|l| {
                        names
                            .iter()
                            .any(|n| l.starts_with(&format!("cmdstat_{n}:")))
                    })
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

/// Eight clients claiming on one campaign with a new phone each time, until
/// [`Sale::finish`]: what a master is killed under.
pub struct Sale {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<(Vec<String>, usize)>>,
}

impl Sale {
    pub fn start(app: &crate::helpers::TestApp, id: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..8)
            .map(|w| {
                let (client, url, stop) = (
                    app.client.clone(),
                    app.url(&format!("/v1/campaigns/{id}/claims")),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let (mut acked, mut unavailable, mut n) = (Vec::new(), 0, 0);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        let body = serde_json::json!({
                            "phone": crate::helpers::phone(w * 100_000 + n),
                            "device_id": format!("k{w}-{n}"),
                        });
                        let Ok(res) = client.post(&url).json(&body).send().await else {
                            continue;
                        };
                        match res.status().as_u16() {
                            201 => acked.push(
                                res.json::<serde_json::Value>().await.unwrap()["code"]
                                    .as_str()
                                    .unwrap()
                                    .to_owned(),
                            ),
                            503 => unavailable += 1,
                            s => panic!("unexpected {s}: {}", res.text().await.unwrap()),
                        }
                    }
                    (acked, unavailable)
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients; the codes answered 201 and the count of 503s.
    pub async fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut acked, mut unavailable) = (Vec::new(), 0);
        for c in self.clients {
            let (a, u) = c.await.unwrap();
            acked.extend(a);
            unavailable += u;
        }
        assert!(
            acked.len() > 20,
            "the sale ran: {} acknowledged",
            acked.len()
        );
        assert!(
            unavailable > 0,
            "the kill was felt (503s while the master was down)"
        );
        (acked, unavailable)
    }
}

/// Every acknowledged code is unique and still redeems.
pub async fn assert_every_acknowledged_code_redeems(
    app: &crate::helpers::TestApp,
    acked: &[String],
) {
    let unique: std::collections::HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "no code twice");
    for (n, code) in acked.iter().enumerate() {
        let res = app
            .post(
                "/v1/redemptions",
                &serde_json::json!({"code": code, "order_id": format!("r-{n}")}),
            )
            .await;
        assert_eq!(
            res.status(),
            200,
            "acknowledged code {code} lost: {}",
            res.text().await.unwrap()
        );
    }
}
