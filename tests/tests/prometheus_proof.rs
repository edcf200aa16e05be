//! The shipped dashboards and alert rules work on a real Prometheus against a real
//! fleet: a redis-server with a `maxmemory`, `sluice serve` (its `--metrics-listen`
//! address serves the queue state, tenants included) and two
//! `sluice-worker serve` with `--metrics-addr`, all scraped every second by Debian's
//! `prometheus` with the repository's scrape configuration and rule files. After a batch
//! of successes and failures (traps, fuel bombs) has finished, while another tenant
//! (one job at a time) still has a job running and a backlog, every PromQL expression
//! of every dashboard panel must evaluate without error to at least one series, none
//! NaN or infinite, every dashboard variable must find its values (the tenant variable
//! both tenants, the held one included), every rule must be healthy, every metric an
//! alert reads must have series, and each operand of each alert's expression, without
//! its final comparison, must evaluate to finite series (the alert could see the fleet).

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;
use sluice_tests::dashboards::{
    DASHBOARDS, alert_operands, load, metric_names, panel_exprs, path, substitute, variables,
};
use sluice_tests::prometheus::free_port;
use sluice_tests::wait::poll;
use sluice_tests::{PrometheusServer, RedisServer, ServeProcess, WorkerProcess, guest};

const ADMIN: &str = "admin-secret-for-the-prometheus-proof";
const QUEUE: &str = "proof";
const TENANT: &str = "acme";
/// A tenant limited to one job at a time whose jobs spin for minutes: while the
/// dashboards are evaluated it has a job in flight and a backlog, as a busy fleet does
/// (the queue reports per-tenant backlog and in-flight only for tenants that have some).
const HELD: &str = "held";
/// How many jobs the held tenant submits (one runs, the rest wait in its backlog).
const HELD_JOBS: usize = 4;

/// The batch: (module file, name, jobs, per-job limits, the outcome every job must have).
const BATCHES: [(&str, &str, usize, Option<u64>, &str); 3] = [
    ("uppercase.wasm", "upper", 24, None, "success"),
    ("unreachable.wat", "trap", 6, None, "trap"),
    (
        "infinite_loop.wat",
        "spin",
        4,
        Some(2_000_000),
        "fuel_exhausted",
    ),
];

/// The repository's prometheus.yml with a 1 s scrape and evaluation interval, the
/// fleet's addresses as targets and the rule files' absolute paths.
fn scrape_config(scheduler: &str, workers: &[String]) -> String {
    let file = path("prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&file).expect("prometheus.yml");
    let mut config: Yaml = serde_yaml_ng::from_str(&text).expect("prometheus.yml parses");
    config["global"]["scrape_interval"] = Yaml::from("1s");
    config["global"]["evaluation_interval"] = Yaml::from("1s");
    let rules_dir = file.parent().expect("prometheus/").to_owned();
    for rule_file in config["rule_files"].as_sequence_mut().expect("rule_files") {
        let relative = rule_file.as_str().expect("a path").to_owned();
        *rule_file = Yaml::from(rules_dir.join(relative).display().to_string());
    }
    for job in config["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs")
    {
        let targets: Vec<Yaml> = match job["job_name"].as_str() {
            Some("sluice-scheduler") => vec![Yaml::from(scheduler)],
            Some("sluice-worker") => workers.iter().map(|w| Yaml::from(w.as_str())).collect(),
            other => panic!("unexpected job {other:?} in prometheus.yml"),
        };
        job["static_configs"] = serde_yaml_ng::from_str("[{targets: []}]").unwrap();
        job["static_configs"][0]["targets"] = Yaml::Sequence(targets);
    }
    serde_yaml_ng::to_string(&config).expect("serialize prometheus.yml")
}

/// Posts every batch of [`BATCHES`] for `token` and waits until each is done, checking
/// every job's outcome; returns how many jobs ran.
fn run_batches(api: &ServeProcess, token: &str) -> usize {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut total = 0;
    for (file, name, jobs, fuel, outcome) in BATCHES {
        let bytes = std::fs::read(guest(file)).unwrap();
        let reply = api.upload(token, &bytes, name);
        assert!(
            matches!(reply.status, 200 | 201),
            "{}: {}",
            reply.status,
            reply.text()
        );
        let inputs: Vec<Value> = (0..jobs)
            .map(|i| json!({ "name": format!("{name}-{i}"), "data": b64.encode(format!("input {i}")) }))
            .collect();
        let mut body = json!({ "module": name, "inputs": inputs });
        if let Some(fuel) = fuel {
            body["limits"] = json!({ "fuel": fuel });
        }
        let reply = api.post_json("/v1/batches", token, &body);
        assert_eq!(reply.status, 201, "{}", reply.text());
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        let batch = poll(
            &format!("batch {name} not done"),
            Duration::from_secs(180),
            || api.ok("GET", &format!("/v1/batches/{id}"), Some(token), b""),
            |batch| batch["done"] == batch["total"],
        );
        assert_eq!(batch["by_outcome"][outcome], jobs, "{name}: {batch}");
        total += jobs;
    }
    total
}

/// Submits [`HELD_JOBS`] spinning jobs (fuel and wall-clock limits far beyond the
/// test) for the held tenant.
fn hold(api: &ServeProcess, token: &str) {
    let bytes = std::fs::read(guest("infinite_loop.wat")).unwrap();
    let reply = api.upload(token, &bytes, "spin");
    assert_eq!(reply.status, 201, "{}", reply.text());
    let inputs: Vec<Value> = (0..HELD_JOBS)
        .map(|i| json!({ "name": format!("held-{i}"), "data": "" }))
        .collect();
    let body = json!({
        "module": "spin",
        "inputs": inputs,
        "limits": { "fuel": 1_000_000_000_000_000u64, "timeout": "10m" },
    });
    let reply = api.post_json("/v1/batches", token, &body);
    assert_eq!(reply.status, 201, "{}", reply.text());
}

#[test]
fn every_dashboard_and_rule_expression_evaluates_on_a_real_prometheus() {
    let redis = RedisServer::start();
    // A limit far above what the test uses, so the memory ratio the alert reads is real.
    redis.cli(&["CONFIG", "SET", "maxmemory", "1gb"]);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let api = ServeProcess::start_with(
        &redis.url(),
        QUEUE,
        ADMIN,
        &["--metrics-listen", &metrics_addr],
    );
    let worker_addrs: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let _workers: Vec<WorkerProcess> = worker_addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            WorkerProcess::start(
                &redis.url(),
                QUEUE,
                &format!("w{i}"),
                &["--metrics-addr", addr],
            )
        })
        .collect();
    let prometheus = PrometheusServer::start(&scrape_config(&metrics_addr, &worker_addrs));
    prometheus.wait_targets_up(3, Duration::from_secs(60));

    let held = api.tenant(HELD, json!({ "max_concurrent_jobs": 1 }));
    hold(&api, &held);
    let token = api.tenant(TENANT, json!({}));
    // Twice: a counter series is born at its first job, and jobs this fast may all end
    // before Prometheus first scrapes it, so one round can leave every rate at 0 (a
    // rate counts no increase before a series' first sample). After Prometheus has seen
    // the first round, the second one moves every series it made.
    let first = run_batches(&api, &token);
    wait_for(
        &prometheus,
        &format!("sum(sluice_tenant_jobs_total{{tenant=\"{TENANT}\"}}) >= {first}"),
    );
    let jobs = first + run_batches(&api, &token);

    // Prometheus has scraped the finished batch from the workers and the queue, and
    // holds enough samples for every rate over a minute.
    for condition in [
        format!("sum(sluice_jobs_total{{job=\"sluice-worker\"}}) >= {jobs}"),
        // Finished in the queue's stats: completed (results stored) or dead-lettered.
        format!(
            "sum(sluice_queue_completed_total{{queue=\"{QUEUE}\"}}) \
             + sum(sluice_queue_dead_lettered_total{{queue=\"{QUEUE}\"}}) >= {jobs}"
        ),
        "min(count_over_time(up[1m])) >= 10".to_owned(),
        format!("sum(sluice_tenant_inflight_jobs{{tenant=\"{HELD}\"}}) >= 1"),
        format!("sum(sluice_tenant_backlog_jobs{{tenant=\"{HELD}\"}}) >= 1"),
    ] {
        wait_for(&prometheus, &condition);
    }
    // The failures are there as what they are.
    for (_, _, n, _, outcome) in &BATCHES[1..] {
        let seen = prometheus
            .value(&format!("sum(sluice_jobs_total{{outcome=\"{outcome}\"}})"))
            .unwrap_or(0.0);
        assert!(seen >= *n as f64, "{outcome}: {seen} runs seen, {n} ran");
    }

    let instance = worker_addrs[0].as_str();
    // Grafana renders a multi-value variable as an alternation. Rates and ranges span
    // the whole run (as a dashboard over the last 10 minutes would), so a histogram's
    // quantile has observations to work on.
    let tenants = format!("({TENANT}|{HELD})");
    let values = [
        ("__rate_interval", "10m"),
        ("__range", "10m"),
        ("datasource", "sluice-prometheus"),
        ("queue", QUEUE),
        ("tenant", tenants.as_str()),
        ("instance", instance),
    ];
    let mut failures = Vec::new();
    for name in DASHBOARDS {
        let dashboard = load(name);
        for (title, expr) in panel_exprs(&dashboard) {
            let query = substitute(&expr, &values);
            if let Err(e) = finite_series(&prometheus, &query) {
                failures.push(format!("{name} / {title}: {e}: {query}"));
            }
        }
        for variable in variables(&dashboard) {
            let Some(def) = variable["definition"].as_str() else {
                continue;
            };
            let inner = def
                .trim_start_matches("label_values(")
                .trim_end_matches(')');
            let (selector, label) = inner.rsplit_once(',').expect("label_values(sel, label)");
            let label = label.trim();
            let found: BTreeSet<String> = match prometheus.series(&substitute(selector, &values)) {
                Ok(series) => series
                    .iter()
                    .filter_map(|s| s[label].as_str().map(str::to_owned))
                    .collect(),
                Err(e) => {
                    failures.push(format!("{name}: variable {def}: {e}"));
                    continue;
                }
            };
            // The held tenant has run nothing to its end: only its backlog and
            // in-flight series name it.
            let want: &[&str] = match variable["name"].as_str() {
                Some("tenant") => &[TENANT, HELD],
                Some("queue") => &[QUEUE],
                Some("instance") => &[instance],
                _ => &[],
            };
            if found.is_empty() || want.iter().any(|w| !found.contains(*w)) {
                failures.push(format!(
                    "{name}: variable {def} finds {found:?}, not {want:?}"
                ));
            }
        }
    }

    // Every rule has been evaluated, without error, and reads metrics that exist.
    let rules = poll(
        "every rule evaluated",
        Duration::from_secs(60),
        || Rules(prometheus.rules()),
        |rules| !rules.0.is_empty() && rules.0.iter().all(|r| r["health"] != "unknown"),
    )
    .0;
    let shipped = std::fs::read_to_string(path("prometheus/rules/sluice.rules.yml")).unwrap();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        assert!(
            shipped.contains(&format!("alert: {name}")),
            "{name} is not a shipped rule"
        );
        if rule["health"] != "ok" {
            failures.push(format!(
                "rule {name}: health {} {}",
                rule["health"], rule["lastError"]
            ));
        }
        let expr = rule["query"].as_str().unwrap_or_default();
        for operand in alert_operands(expr) {
            if let Err(e) = finite_series(&prometheus, &operand) {
                failures.push(format!("rule {name}: operand {e}: {operand}"));
            }
        }
        for metric in metric_names(expr) {
            match prometheus.series(&metric) {
                Ok(series) if series.is_empty() => {
                    failures.push(format!("rule {name} reads {metric}, which has no series"))
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("rule {name}: series {metric}: {e}")),
            }
        }
    }
    let alerts = shipped.matches("- alert: ").count();
    assert_eq!(
        rules.len(),
        alerts,
        "Prometheus loaded {} of {alerts} rules",
        rules.len()
    );
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Evaluates `expr`: Ok when it returns at least one series and every value is a
/// finite number.
fn finite_series(prometheus: &PrometheusServer, expr: &str) -> Result<(), String> {
    let samples = prometheus.query(expr)?;
    if samples.is_empty() {
        return Err("no series".to_owned());
    }
    for sample in &samples {
        // A vector sample is {metric, value: [t, "v"]}; a scalar is [t, "v"].
        let value = if sample["value"].is_array() {
            &sample["value"][1]
        } else {
            &sample[1]
        };
        let finite = value
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
        if !finite {
            return Err(format!("a value that is not a finite number: {sample}"));
        }
    }
    Ok(())
}

/// Waits until filtering expression `condition` returns a series (it holds).
fn wait_for(prometheus: &PrometheusServer, condition: &str) {
    poll(
        &format!("Prometheus: {condition}: series"),
        Duration::from_secs(60),
        || match prometheus.query(condition) {
            Ok(samples) => samples.len().to_string(),
            Err(e) => e,
        },
        |reading| reading.parse::<usize>().is_ok_and(|n| n > 0),
    );
}

/// The rules as a poll reading.
struct Rules(Vec<Value>);

impl std::fmt::Display for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for rule in &self.0 {
            writeln!(f, "{} {}", rule["name"], rule["health"])?;
        }
        Ok(())
    }
}
