//! A real Redis Cluster for a test: six `redis-server --cluster-enabled yes` on free
//! loopback ports (three masters, three replicas) joined by `redis-cli --cluster
//! create`, each in a directory of its own; every server is killed and the
//! directories removed when it is dropped.
//!
//! Every wait here polls a server's own report (`CLUSTER INFO`, `CLUSTER NODES`) for
//! the state it waits for, bounded; none sleeps a fixed time.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait;

/// Masters in the cluster (each with one replica).
pub const MASTERS: usize = 3;
/// How long the cluster may take to agree on a state (formed, failed over).
const AGREE_WITHIN: Duration = Duration::from_secs(60);
/// `CLUSTER FAILOVER` attempts before a failover test gives up.
const FAILOVER_ATTEMPTS: usize = 3;
/// How long one `CLUSTER FAILOVER` attempt may take to promote the replica (the
/// server abandons a manual failover after 5 s).
const PROMOTED_WITHIN: Duration = Duration::from_secs(8);

/// A running Redis Cluster owned by a test.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Holds every node's directory (config file, logs); removed on drop.
    _dir: tempfile::TempDir,
}

/// One node: its server process and client port; killed (and reaped) when dropped,
/// so a node started before a later one failed never outlives the test.
pub struct Node {
    child: Child,
    port: u16,
}

impl Node {
    /// The node's client port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeLine {
    /// The node's id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// Whether it is a master (else a replica).
    pub master: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// The slot ranges it serves (masters), `(first, last)`.
    pub slots: Vec<(u16, u16)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// How long a node may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Starts one cluster-enabled node in `dir` (with `extra` arguments, e.g.
/// `--requirepass`) on a free port and returns once it accepts connections. Panics
/// (the node killed) if it exits or is not ready within [`READY_WITHIN`].
pub fn spawn_node(dir: &Path, extra: &[&str]) -> Node {
    let port = free_port();
    let bus_port = free_port();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--cluster-port", &bus_port.to_string()])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--cluster-node-timeout", "5000"])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", ""])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (bash scripts/setup)");
    let stdout = child.stdout.take().expect("piped stdout");
    // From here the node is killed however this returns.
    let node = Node { child, port };
    // The log is read on a thread of its own (and drained after "Ready"), so a
    // server that neither gets ready nor exits cannot hold the test up past the bound.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let ready = lines
            .by_ref()
            .any(|line| line.contains("Ready to accept connections"));
        let _ = ready_tx.send(ready);
        lines.for_each(drop);
    });
    match ready_rx.recv_timeout(READY_WITHIN) {
        Ok(true) => node,
        Ok(false) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("cluster node on port {port} exited before it was ready")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("cluster node on port {port} not ready within {READY_WITHIN:?}")
        }
    }
}

/// Runs `redis-cli -p PORT ARGS` and returns its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses `CLUSTER NODES` output.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let port = fields[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = fields[2];
            let master = flags.split(',').any(|f| f == "master");
            let master_id = (fields[3] != "-").then(|| fields[3].to_owned());
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|one| (one, one)),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_owned(),
                port,
                master,
                master_id,
                slots,
            })
        })
        .collect()
}

impl RedisCluster {
    /// Starts six nodes, forms a three-master cluster with a replica per master, and
    /// returns once every node reports `cluster_state:ok` and agrees on which nodes are
    /// masters.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Each node is pushed as soon as it runs: if a later one fails, dropping
        // the cluster stops those already started (fields drop in order: the nodes
        // before their directory).
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            _dir: dir,
        };
        for _ in 0..MASTERS * 2 {
            let node = spawn_node(cluster._dir.path(), &[]);
            cluster.nodes.push(node);
        }
        let addresses: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.await_agreement("the cluster formed", |_| true);
        cluster
    }

    /// Every node's client port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The seed list clients are given: every node, comma-separated.
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `redis-cli` against the node on `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }

    /// The cluster as the node on `port` sees it.
    pub fn nodes(&self, port: u16) -> Vec<NodeLine> {
        parse_nodes(&cli(port, &["CLUSTER", "NODES"]))
    }

    /// The slot of `key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The client port of the master serving `key`'s slot, as every node agrees.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.keyslot(key);
        let view = self.nodes(self.nodes[0].port);
        view.iter()
            .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {view:?}"))
    }

    /// The client port of a replica of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        let view = self.nodes(master_port);
        let master = view
            .iter()
            .find(|n| n.port == master_port)
            .expect("the master knows itself");
        view.iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("the master on {master_port} has no replica: {view:?}"))
    }

    /// `CLUSTER FAILOVER` on the replica on `replica_port` (a manual failover: its
    /// master stops taking writes until the replica has caught up, then they swap), and
    /// returns once every node agrees the replica is a master.
    pub fn failover(&self, replica_port: u16) {
        // A manual failover needs the replica's link to its master up (to catch up).
        wait::poll(
            &format!("the replica on {replica_port} linked to its master"),
            AGREE_WITHIN,
            || cli(replica_port, &["INFO", "replication"]),
            |info| info.contains("master_link_status:up"),
        );
        // A manual failover the master does not join in time (5 s under load) is
        // abandoned by the replica: it is asked again, a bounded number of times.
        let promoted = (0..FAILOVER_ATTEMPTS).any(|_| {
            let answer = cli(replica_port, &["CLUSTER", "FAILOVER"]);
            assert_eq!(answer.trim(), "OK", "CLUSTER FAILOVER on {replica_port}");
            let deadline = std::time::Instant::now() + PROMOTED_WITHIN;
            loop {
                if cli(replica_port, &["ROLE"]).starts_with("master") {
                    break true;
                }
                if std::time::Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert!(
            promoted,
            "the replica on {replica_port} is not a master after {FAILOVER_ATTEMPTS} \
             CLUSTER FAILOVER attempts"
        );
        self.await_agreement(&format!("{replica_port} became a master"), |view| {
            view.iter().any(|n| n.port == replica_port && n.master)
        });
    }

    /// Polls every node until each reports `cluster_state:ok`, all see the same
    /// masters and slots, and `done` accepts the view.
    fn await_agreement(&self, what: &str, done: impl Fn(&[NodeLine]) -> bool) {
        let masters = |view: &[NodeLine]| {
            let mut m: Vec<(u16, Vec<(u16, u16)>)> = view
                .iter()
                .filter(|n| n.master && !n.slots.is_empty())
                .map(|n| (n.port, n.slots.clone()))
                .collect();
            m.sort();
            m
        };
        wait::poll(
            what,
            AGREE_WITHIN,
            || {
                let views: Vec<(String, Vec<NodeLine>)> = self
                    .ports()
                    .iter()
                    .map(|&p| (cli(p, &["CLUSTER", "INFO"]), self.nodes(p)))
                    .collect();
                // Every master serving slots has a replica (a node joins as a master
                // without slots and turns replica only once told, node by node).
                let ok = views.iter().all(|(info, view)| {
                    let masters = masters(view);
                    info.contains("cluster_state:ok")
                        && view.len() == MASTERS * 2
                        && masters.len() == MASTERS
                        && masters.iter().all(|(port, _)| {
                            let id = view.iter().find(|n| n.port == *port).map(|n| &n.id);
                            view.iter().any(|n| !n.master && n.master_id.as_ref() == id)
                        })
                });
                let first = masters(&views[0].1);
                let agree = views.iter().all(|(_, view)| masters(view) == first);
                Agreement {
                    settled: ok && agree && done(&views[0].1),
                    masters: first.iter().map(|(p, _)| *p).collect(),
                }
            },
            |a| a.settled,
        );
    }
}

/// A reading of the cluster's agreement, printable for a wait's failure message.
struct Agreement {
    settled: bool,
    masters: Vec<u16>,
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "settled {}, masters {:?}", self.settled, self.masters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host replica e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7000 [93-<-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 2);
        assert!(!nodes[0].master);
        assert_eq!(nodes[0].port, 30004);
        assert_eq!(
            nodes[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(nodes[1].master);
        assert_eq!(nodes[1].slots, [(0, 5460), (7000, 7000)]);
    }
}
