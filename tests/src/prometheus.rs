//! A real Prometheus server for a test (Debian's `prometheus`, installed by
//! `scripts/setup`): started on a free port with a configuration and a data directory
//! of its own, stopped when dropped. Its HTTP API answers the test's questions: which
//! targets are up, what a PromQL expression evaluates to, how its rules are doing.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;

use crate::serve::agent;
use crate::wait::poll;

/// How many of Prometheus' last log lines a failure message shows.
const LOG_TAIL: usize = 30;

/// A running `prometheus` owned by a test.
pub struct PrometheusServer {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
    _dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (for a process that binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PrometheusServer {
    /// Starts `prometheus` with `config` (a `prometheus.yml` text; relative paths in it
    /// resolve against a temporary directory, so rule files should be absolute) and
    /// returns once its `/-/ready` answers 200 while it still runs. The port is picked
    /// free and then bound by `prometheus` itself, so another process may take it in
    /// between: when it exits saying the address is in use, it starts again on another
    /// port (a few times). Fails saying to run `scripts/setup` when `prometheus` is not
    /// installed.
    pub fn start(config: &str) -> Self {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let mut server = Self::spawn(config);
            poll(
                "prometheus did not become ready",
                Duration::from_secs(60),
                || server.ready_status(),
                |status| status == "200" || status.starts_with("exited"),
            );
            match server.child.try_wait() {
                Ok(None) => return server,
                Ok(Some(_)) if server.log_tail().contains("address already in use") => continue,
                other => panic!(
                    "prometheus exited ({other:?}) before it was ready:\n{}",
                    server.log_tail()
                ),
            }
        }
        panic!("prometheus found its port taken {ATTEMPTS} times in a row");
    }

    /// Spawns `prometheus` on a free port with `config` in a new temporary directory.
    fn spawn(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `prometheus` ({e}): install it with `bash scripts/setup`")
            });
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().push(line);
            }
        });
        PrometheusServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            agent: agent(),
            _dir: dir,
        }
    }

    /// `/-/ready`'s status, or why it could not be asked (with the log's tail once the
    /// process has exited).
    fn ready_status(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("exited ({status}):\n{}", self.log_tail());
        }
        match self.agent.get(format!("{}/-/ready", self.base)).call() {
            Ok(response) => response.status().as_u16().to_string(),
            Err(e) => format!("{e}\n{}", self.log_tail()),
        }
    }

    /// The base URL of its HTTP API (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Its last log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock();
        log[log.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// GETs `path` with `query` parameters and returns the `data` of a `success` reply,
    /// or the error Prometheus gave (`errorType: error`) or the transport failure.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        for (key, value) in query {
            request = request.query(*key, *value);
        }
        let mut response = request.call().map_err(|e| format!("GET {path}: {e}"))?;
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("GET {path}: reading the reply: {e}"))?;
        let reply: Value =
            serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))?;
        if reply["status"] == "success" {
            Ok(reply["data"].clone())
        } else {
            Err(format!(
                "{}: {}",
                reply["errorType"].as_str().unwrap_or("?"),
                reply["error"].as_str().unwrap_or(&body)
            ))
        }
    }

    /// Evaluates `expr` now (`/api/v1/query`) and returns its result's samples (a
    /// vector's elements; a scalar or string result is one element).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        match &data["result"] {
            Value::Array(samples) if data["resultType"] != "scalar" => Ok(samples.clone()),
            Value::Null => Err(format!("no result in {data}")),
            other => Ok(vec![other.clone()]),
        }
    }

    /// The number a one-sample query evaluates to now (`None` for no sample).
    pub fn value(&self, expr: &str) -> Option<f64> {
        let samples = self.query(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let sample = samples.first()?;
        let value = if sample["value"].is_array() {
            &sample["value"][1]
        } else {
            &sample[1]
        };
        value.as_str().and_then(|v| v.parse().ok())
    }

    /// The active scrape targets (`/api/v1/targets`).
    pub fn active_targets(&self) -> Vec<Value> {
        let data = self
            .api("/api/v1/targets", &[("state", "active")])
            .unwrap_or_else(|e| panic!("targets: {e}"));
        data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (at most `within`) until `count` targets are active and every one of them
    /// has been scraped successfully; fails naming the targets' health otherwise.
    pub fn wait_targets_up(&self, count: usize, within: Duration) {
        poll(
            &format!("{count} targets up"),
            within,
            || {
                self.active_targets()
                    .iter()
                    .map(|t| format!("{}={}", t["scrapeUrl"], t["health"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            |health| health.matches("=\"up\"").count() == count,
        );
    }

    /// Every rule of every loaded group (`/api/v1/rules`), each with its `group` added.
    pub fn rules(&self) -> Vec<Value> {
        let data = self
            .api("/api/v1/rules", &[])
            .unwrap_or_else(|e| panic!("rules: {e}"));
        let mut rules = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let mut rule = rule.clone();
                rule["group"] = group["name"].clone();
                rules.push(rule);
            }
        }
        rules
    }

    /// The series matching selector `matcher` (`/api/v1/series`).
    pub fn series(&self, matcher: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/series", &[("match[]", matcher)])?;
        Ok(data.as_array().cloned().unwrap_or_default())
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
