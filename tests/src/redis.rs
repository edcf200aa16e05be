//! A real `redis-server` for a test: started on a free port in its own directory,
//! stopped when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running redis-server owned by a test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    tls: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Makes a CA and a server certificate for 127.0.0.1 in `dir` with openssl.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed (bash scripts/setup)");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sluice-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// Starts redis-server and returns once it logged that it accepts connections.
fn spawn(port: u16, dir: &Path, aof: bool, tls: bool) -> Child {
    let mut command = Command::new("redis-server");
    if tls {
        command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .current_dir(dir);
    } else {
        command.args(["--port", &port.to_string()]);
    }
    let mut child = command
        .args(["--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", if aof { "yes" } else { "no" }])
        .args(["--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", ""])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (bash scripts/setup)");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("Ready to accept connections"));
    assert!(
        ready,
        "redis-server on port {port} exited before it was ready"
    );
    // Keep draining its log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that logs every write to an append-only file (fsync always), so a
    /// restart loses nothing.
    pub fn start_with_aof() -> Self {
        Self::start_with(true)
    }

    /// A server that speaks only TLS, with a certificate from a CA of its own
    /// (`ca_path`).
    pub fn start_with_tls() -> Self {
        Self::start_inner(false, true)
    }

    fn start_with(aof: bool) -> Self {
        Self::start_inner(aof, false)
    }

    fn start_inner(aof: bool, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if tls {
            make_certificates(dir.path());
        }
        let port = free_port();
        let child = spawn(port, dir.path(), aof, tls);
        RedisServer {
            child: Some(child),
            port,
            dir,
            aof,
            tls,
        }
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA certificate a TLS server's certificate is signed by.
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (to freeze it with SIGSTOP, as a hung server), while it
    /// runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: a crash, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (replaying the AOF if on).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.child = Some(spawn(self.port, self.dir.path(), self.aof, self.tls));
    }

    /// Runs `redis-cli` against it and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
