//! The shipped observability files (`dashboards/`) hold together: every Grafana
//! dashboard's panels have unique ids, every target uses the datasource variable, every
//! variable used is defined, every metric read is documented in docs/metrics.md; the
//! provisioning files match the dashboards; every alert rule has `for`, a severity, a
//! summary and a runbook, and a promtool unit test where it fires and one where it stays
//! quiet; and `promtool check config`, `promtool check rules` and `promtool test rules`
//! pass on the files as shipped.

use std::collections::{BTreeSet, HashSet};
use std::process::Command;

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;
use sluice_tests::dashboards::{
    BUILTIN_VARIABLES, DASHBOARDS, family, load, metric_names, panel_exprs, panels, path,
    variable_refs, variables,
};
use sluice_tests::repo_root;

/// The datasource uid the provisioning file fixes and the dashboards default to.
const DATASOURCE_UID: &str = "sluice-prometheus";

/// Metric names docs/metrics.md documents (every `` `sluice_…` `` in it).
fn documented_metrics() -> BTreeSet<String> {
    let docs =
        std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("docs/metrics.md");
    docs.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("sluice_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// The metrics of `names` that docs/metrics.md does not document (`up` is Prometheus').
fn undocumented(names: &BTreeSet<String>, documented: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|n| *n != "up" && !documented.contains(family(n)) && !documented.contains(*n))
        .cloned()
        .collect()
}

fn yaml(relative: &str) -> Yaml {
    let file = path(relative);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn uid(datasource: &Value) -> Option<&str> {
    datasource["uid"].as_str().or(datasource.as_str())
}

#[test]
fn panel_ids_are_unique_and_every_panel_is_placed() {
    for name in DASHBOARDS {
        let dashboard = load(name);
        let mut seen = HashSet::new();
        for panel in panels(&dashboard) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: a panel without an id: {}", panel["title"]));
            assert!(seen.insert(id), "{name}: panel id {id} used twice");
            for field in ["h", "w", "x", "y"] {
                assert!(
                    panel["gridPos"][field].is_u64(),
                    "{name}: panel {id} has no gridPos.{field}"
                );
            }
        }
        assert!(seen.len() > 3, "{name}: only {} panels", seen.len());
        assert!(
            dashboard["uid"].is_string() && dashboard["title"].is_string(),
            "{name}: uid and title"
        );
        assert!(
            dashboard["schemaVersion"].as_u64() >= Some(36),
            "{name}: schemaVersion"
        );
    }
}

#[test]
fn every_target_uses_the_datasource_variable() {
    for name in DASHBOARDS {
        let dashboard = load(name);
        let datasource = variables(&dashboard)
            .into_iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(datasource["type"], "datasource", "{name}");
        assert_eq!(datasource["query"], "prometheus", "{name}");
        assert_eq!(
            datasource["current"]["value"], DATASOURCE_UID,
            "{name}: the variable's default"
        );
        let mut targets = 0;
        for panel in panels(&dashboard) {
            if panel["type"] == "row" {
                continue;
            }
            let title = &panel["title"];
            assert_eq!(
                uid(&panel["datasource"]),
                Some("${datasource}"),
                "{name}: panel {title}"
            );
            let list = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: panel {title} has no targets"));
            assert!(!list.is_empty(), "{name}: panel {title} has no targets");
            for target in list {
                targets += 1;
                assert_eq!(
                    uid(&target["datasource"]),
                    Some("${datasource}"),
                    "{name}: a target of {title}"
                );
                assert!(
                    target["expr"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{name}: {title}: empty expr"
                );
            }
        }
        for variable in variables(&dashboard) {
            if variable["type"] == "query" {
                assert_eq!(
                    uid(&variable["datasource"]),
                    Some("${datasource}"),
                    "{name}: variable {}",
                    variable["name"]
                );
            }
        }
        assert!(targets > 0, "{name}: no targets");
    }
}

#[test]
fn every_variable_used_is_defined() {
    for name in DASHBOARDS {
        let dashboard = load(name);
        let defined: BTreeSet<String> = variables(&dashboard)
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .chain(BUILTIN_VARIABLES.iter().map(|v| (*v).to_owned()))
            .collect();
        // Every string anywhere in the dashboard: exprs, titles, datasources, variable queries.
        fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::String(s) => out.push(s),
                Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
                Value::Object(map) => map.values().for_each(|v| strings(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        strings(&dashboard, &mut all);
        for text in all {
            for used in variable_refs(text) {
                assert!(
                    defined.contains(&used),
                    "{name}: `${used}` is used in {text:?} and not defined"
                );
            }
        }
    }
}

#[test]
fn every_metric_a_dashboard_reads_is_documented() {
    let documented = documented_metrics();
    let mut missing = BTreeSet::new();
    for name in DASHBOARDS {
        let dashboard = load(name);
        let mut texts: Vec<String> = panel_exprs(&dashboard)
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        for variable in variables(&dashboard) {
            if let Some(def) = variable["definition"].as_str() {
                // label_values(<selector>, <label>): the selector reads a metric.
                let inner = def
                    .trim_start_matches("label_values(")
                    .trim_end_matches(')');
                texts.push(
                    inner
                        .rsplit_once(',')
                        .map_or(inner, |(sel, _)| sel)
                        .to_owned(),
                );
            }
        }
        for text in texts {
            let names = metric_names(&text);
            assert!(!names.is_empty(), "{name}: {text} reads no metric");
            missing.extend(undocumented(&names, &documented));
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboards read {missing:?}, not in docs/metrics.md"
    );
}

#[test]
fn provisioning_loads_the_dashboards_from_the_prometheus_datasource() {
    let datasources = yaml("provisioning/datasources/prometheus.yaml");
    let list = datasources["datasources"]
        .as_sequence()
        .expect("datasources");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["uid"].as_str(), Some(DATASOURCE_UID));
    assert_eq!(list[0]["type"].as_str(), Some("prometheus"));
    assert!(
        list[0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http"))
    );
    let providers = yaml("provisioning/dashboards/sluice.yaml");
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert!(
        provider["options"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/'))
    );
    assert_eq!(datasources["apiVersion"].as_u64(), Some(1));
    assert_eq!(providers["apiVersion"].as_u64(), Some(1));
}

#[test]
fn the_scrape_config_has_the_scheduler_and_worker_jobs_and_the_rules() {
    let config = yaml("prometheus/prometheus.yml");
    let jobs: BTreeSet<&str> = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .filter_map(|job| job["job_name"].as_str())
        .collect();
    assert_eq!(jobs, BTreeSet::from(["sluice-scheduler", "sluice-worker"]));
    let rules: Vec<&str> = config["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(rules, ["rules/sluice.rules.yml"]);
}

/// Every alert of the rule file, as (name, rule).
fn alerts() -> Vec<(String, Yaml)> {
    let rules = yaml("prometheus/rules/sluice.rules.yml");
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").clone())
        .map(|rule| {
            (
                rule["alert"]
                    .as_str()
                    .expect("only alerting rules")
                    .to_owned(),
                rule,
            )
        })
        .collect()
}

#[test]
fn every_alert_has_for_severity_summary_runbook_and_documented_metrics() {
    let documented = documented_metrics();
    let alerts = alerts();
    let mut missing = BTreeSet::new();
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    for (name, rule) in &alerts {
        assert!(rule["for"].as_str().is_some(), "{name}: no `for`");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "runbook"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|s| s.len() > 10),
                "{name}: no {annotation}"
            );
        }
        let expr = rule["expr"].as_str().expect("expr");
        missing.extend(undocumented(&metric_names(expr), &documented));
    }
    assert!(
        missing.is_empty(),
        "the alerts read {missing:?}, not in docs/metrics.md"
    );
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_is_quiet() {
    let tests = yaml("prometheus/rules/sluice.rules.test.yml");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for check in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = check["alertname"].as_str().expect("alertname").to_owned();
            match check["exp_alerts"].as_sequence() {
                Some(expected) if !expected.is_empty() => fires.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    for (name, _) in alerts() {
        assert!(
            fires.contains(&name),
            "{name}: no promtool test where it fires"
        );
        assert!(
            quiet.contains(&name),
            "{name}: no promtool test where it stays quiet"
        );
    }
}

/// Runs `promtool ARGS` in dashboards/prometheus and fails with its output unless it
/// succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(path("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `promtool` ({e}): install it with `bash scripts/setup`")
        });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_config() {
    promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn promtool_checks_the_rules() {
    promtool(&["check", "rules", "rules/sluice.rules.yml"]);
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    promtool(&["test", "rules", "rules/sluice.rules.test.yml"]);
}
