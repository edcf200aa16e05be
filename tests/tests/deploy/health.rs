//! The image's health check and the manifests' probes, against the real processes.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use sluice_tests::{RedisServer, ServeProcess, WorkerProcess, repo_root};

use super::{free_port, http_status, text, yaml};

#[test]
fn health_check_and_probe_endpoints_answer_on_the_real_processes() {
    let redis = RedisServer::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let _worker =
        WorkerProcess::start(&redis.url(), "default", "w1", &["--metrics-addr", &metrics]);
    // The endpoint binds in a task of its own, beside the worker's "ready" line.
    sluice_tests::wait::poll(
        "the worker's metrics endpoint accepting connections",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(&metrics).is_ok(),
        |up| *up,
    );
    let serve = ServeProcess::start(&redis.url(), "default", "admin-token-for-probes");

    let healthcheck = |port: &str| {
        Command::new("bash")
            .arg(repo_root().join("deploy/healthcheck"))
            .env("SLUICE_HEALTHCHECK_PORT", port)
            .status()
            .expect("run deploy/healthcheck")
            .success()
    };
    let port_of = |addr: &str| addr.rsplit(':').next().expect("a port").to_owned();
    assert!(healthcheck(&port_of(&metrics)), "the worker's /healthz");
    assert!(
        healthcheck(&port_of(&serve.addr)),
        "sluice serve's /healthz"
    );
    assert!(
        !healthcheck(&free_port().to_string()),
        "nothing listening is unhealthy"
    );
    // A process that answers, but not 200 (a 503 from /readyz-like failures), is
    // unhealthy: a listener here answers every request 503.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refusing_port = refusing.local_addr().expect("addr").port();
    let answer = std::thread::spawn(move || {
        let (mut conn, _) = refusing.accept().expect("the health check connects");
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request);
        conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .expect("answer 503");
    });
    assert!(
        !healthcheck(&refusing_port.to_string()),
        "a 503 is unhealthy"
    );
    answer.join().expect("the 503 listener");

    // Readiness and liveness are split on both: readiness on /readyz (Redis answers,
    // not draining), liveness on /healthz (the process, or the worker's claim loop,
    // makes progress; Redis down is no reason to restart).
    for file in ["deploy/k8s/worker.yaml", "deploy/k8s/serve.yaml"] {
        let container = &yaml(file)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            text(container, &["readinessProbe", "httpGet", "path"]),
            "/readyz",
            "{file}"
        );
        assert_eq!(
            text(container, &["livenessProbe", "httpGet", "path"]),
            "/healthz",
            "{file}"
        );
    }

    // Every probe path the manifests use answers 200 on the process it probes.
    for (file, addr) in [
        ("deploy/k8s/worker.yaml", &metrics),
        ("deploy/k8s/serve.yaml", &serve.addr),
    ] {
        let deployment = yaml(file);
        for container in deployment["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers")
        {
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if container[probe].is_null() {
                    continue;
                }
                let path = text(container, &[probe, "httpGet", "path"]);
                assert_eq!(http_status(addr, path), 200, "{file}: {probe} {path}");
            }
        }
    }
}
