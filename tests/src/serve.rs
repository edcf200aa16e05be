//! A real `sluice serve` process for a test, and an HTTP client for it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::bin;

/// A `sluice serve` process just started: the child, the address it listens on, and
/// every line it has written to stderr so far (also echoed as `[serve] …`).
pub struct SpawnedServe {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Starts `sluice serve --listen 127.0.0.1:0` on `redis_url` and `queue` with `admin`
/// as the admin token and `extra` arguments, and waits until it says where it listens.
pub fn spawn_serve(redis_url: &str, queue: &str, admin: &str, extra: &[&str]) -> SpawnedServe {
    let mut child = bin("sluice")
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", redis_url])
        .args(["--queue", queue])
        .args(extra)
        .env("SLUICE_ADMIN_TOKEN", admin)
        // Tests read its log lines: a `RUST_LOG` from the shell would change them.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("sluice serve: listening on ") {
                let _ = tx.send(addr.to_owned());
            }
            eprintln!("[serve] {line}");
            lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve is listening");
    SpawnedServe { child, addr, log }
}

/// An HTTP client that reports every status as a response, with a fresh connection per
/// request: the server closes a connection whose request body it did not read (a 405
/// or 401 answered early), and a pooled connection closed that way would fail the next
/// request for a reason of the client's own.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .build()
        .into()
}

/// A running HTTP service.
pub struct ServeProcess {
    child: Child,
    pub base: String,
    agent: ureq::Agent,
}

/// A response: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl ServeProcess {
    /// Starts `sluice serve` on a free port, with `admin` as the admin token.
    pub fn start(redis_url: &str, queue: &str, admin: &str) -> Self {
        let spawned = spawn_serve(redis_url, queue, admin, &[]);
        let (child, addr, agent) = (spawned.child, spawned.addr, agent());
        ServeProcess {
            child,
            base: format!("http://{addr}"),
            agent,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a request; `token` becomes a bearer header.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        let url = format!("{}{}", self.base, path);
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let request = match token {
            Some(t) => request.header("Authorization", format!("Bearer {t}")),
            None => request,
        };
        let request = request.body(body.to_vec()).expect("request");
        let mut response = self.agent.run(request).expect("HTTP round trip");
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .expect("read body");
        Reply { status, body }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
