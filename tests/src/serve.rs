//! A real `sluice serve` process for a test, and an HTTP client for it: raw calls,
//! calls that must succeed, tenant creation with the admin token, module uploads,
//! `/metrics` readings and hand-framed uploads. The process is killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::bin;

/// A `sluice serve` process just started: the child, the address it listens on, and
/// every line it has written to stderr so far (also echoed as `[serve] …`).
pub struct SpawnedServe {
    /// The running process.
    pub child: Child,
    /// The address it listens on (`127.0.0.1:<port>`).
    pub addr: String,
    /// Every stderr line so far.
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
            lines.lock().push(line);
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => addr,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice serve did not say where it listens: {e}");
        }
    };
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

/// A running `sluice serve` and a client for it; killed when dropped.
pub struct ServeProcess {
    child: Child,
    /// `http://<addr>`.
    pub base: String,
    /// The address it listens on (`127.0.0.1:<port>`).
    pub addr: String,
    admin: String,
    log: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
}

/// A response: status, headers and body.
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    pub headers: ureq::http::HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text, cut to 1 KiB (failure messages quote it).
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(1024).collect()
    }

    /// The JSON error's code, asserting the error body's shape.
    pub fn error_code(&self) -> String {
        let body = self.json();
        assert!(body["error"]["message"].is_string(), "{body}");
        body["error"]["code"]
            .as_str()
            .expect("an error code")
            .to_owned()
    }
}

impl ServeProcess {
    /// Starts `sluice serve` on a free port, with `admin` as the admin token.
    pub fn start(redis_url: &str, queue: &str, admin: &str) -> Self {
        Self::start_with(redis_url, queue, admin, &[])
    }

    /// Starts `sluice serve` on a free port, with `admin` as the admin token and
    /// `extra` command-line arguments.
    pub fn start_with(redis_url: &str, queue: &str, admin: &str, extra: &[&str]) -> Self {
        let SpawnedServe { child, addr, log } = spawn_serve(redis_url, queue, admin, extra);
        ServeProcess {
            child,
            base: format!("http://{addr}"),
            addr,
            admin: admin.to_owned(),
            log,
            agent: agent(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (it drains and exits; `Drop` still reaps it).
    pub fn terminate(&self) {
        crate::sigterm(self.pid());
    }

    /// Whether any stderr line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().iter().any(|l| l.contains(needle))
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
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .expect("read body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Sends `body` as JSON with a POST to `path` for `token`'s tenant.
    pub fn post_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(token), body.to_string().as_bytes())
    }

    /// Sends a request that must succeed (2xx) and returns its JSON body.
    pub fn ok(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Value {
        let reply = self.call(method, path, token, body);
        assert!(
            (200..300).contains(&reply.status),
            "{method} {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        serde_json::from_slice(&reply.body).expect("JSON reply")
    }

    /// Creates tenant `name` with `policy` through the admin API (asserting 201) and
    /// returns its token.
    pub fn tenant(&self, name: &str, policy: Value) -> String {
        let body = json!({ "name": name, "policy": policy }).to_string();
        let reply = self.call(
            "POST",
            "/v1/admin/tenants",
            Some(&self.admin),
            body.as_bytes(),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["token"].as_str().unwrap().to_owned()
    }

    /// Uploads `bytes` as module `name` for `token`'s tenant; returns the reply as is.
    pub fn upload(&self, token: &str, bytes: &[u8], name: &str) -> Reply {
        self.call(
            "PUT",
            &format!("/v1/modules?name={name}"),
            Some(token),
            bytes,
        )
    }

    /// A gauge or counter from `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let reply = self.call("GET", "/metrics", None, b"");
        let text = String::from_utf8_lossy(&reply.body);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        crate::peak_rss_kib(self.pid())
    }

    /// Sends a POST with a body of `total` zero bytes, declared (`Content-Length`) or
    /// chunked (so the server can only count the bytes as they stream), and returns
    /// the response's status. A reader runs alongside the writer: the server may answer
    /// before the body is sent, and then closes the connection.
    pub fn raw_upload(&self, path: &str, token: &str, total: usize, chunked: bool) -> u16 {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {total}")
        };
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             {framing}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reader = stream.try_clone().unwrap();
        let response = std::thread::spawn(move || {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            head
        });
        let chunk = vec![0u8; 64 << 10];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            let ok = if chunked {
                stream.write_all(format!("{n:x}\r\n").as_bytes()).is_ok()
                    && stream.write_all(&chunk[..n]).is_ok()
                    && stream.write_all(b"\r\n").is_ok()
            } else {
                stream.write_all(&chunk[..n]).is_ok()
            };
            if !ok {
                break; // The server answered early and closed.
            }
            sent += n;
        }
        if chunked {
            let _ = stream.write_all(b"0\r\n\r\n");
        }
        let head = response.join().unwrap();
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {line:?}"))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
