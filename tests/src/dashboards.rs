//! The shipped observability files (`dashboards/`) as tests read them: the Grafana
//! dashboards' panels and PromQL expressions, the metric names an expression reads, and
//! Grafana's variable syntax, so the structure test and the real-Prometheus proof
//! read the files one way.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::repo_root;

/// The Grafana dashboards every fleet gets (`dashboards/grafana/<name>.json`).
pub const DASHBOARDS: [&str; 3] = ["overview", "tenants", "workers"];

/// Grafana's built-in variables a dashboard may use without defining them.
pub const BUILTIN_VARIABLES: [&str; 6] = [
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__all",
];

/// PromQL words that look like metric names but are not: keywords, and aggregation
/// operators (which may be followed by `by (…)` before their parenthesis).
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The path of a file under `dashboards/`.
pub fn path(relative: &str) -> PathBuf {
    repo_root().join("dashboards").join(relative)
}

/// Dashboard `name` parsed.
pub fn load(name: &str) -> Value {
    let path = path(&format!("grafana/{name}.json"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel of `dashboard`, those nested in rows included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The template variables `dashboard` defines.
pub fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|list| list.iter().collect())
        .unwrap_or_default()
}

/// Every PromQL expression of `dashboard`'s panels, with the panel's title.
pub fn panel_exprs(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| {
                    let expr = target["expr"].as_str().unwrap_or_default().to_owned();
                    (title.clone(), expr)
                })
        })
        .collect()
}

/// The variable names `text` refers to: `$name`, `${name}`, `${name:format}`, `[[name]]`.
pub fn variable_refs(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut refs = BTreeSet::new();
    for (i, _) in text.match_indices('$') {
        let rest = &text[i + 1..];
        let name = match rest.strip_prefix('{') {
            Some(inner) => ident(inner),
            None => ident(rest),
        };
        if !name.is_empty() {
            refs.insert(name);
        }
    }
    for (i, _) in text.match_indices("[[") {
        let name = ident(&text[i + 2..]);
        if !name.is_empty() {
            refs.insert(name);
        }
    }
    refs
}

/// The metric names PromQL `expr` reads: identifiers outside strings, label matchers
/// (`{…}`), ranges (`[…]`) and grouping lists (`by (…)`), that are not a function call
/// or a PromQL keyword. Histogram series keep their suffix (`_bucket`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let start = i;
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                if c == '{' {
                    let matchers: String = chars[start + 1..i.min(chars.len())].iter().collect();
                    names.extend(name_matcher(&matchers));
                }
                i += 1;
            }
            '(' if after_grouping => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                after_grouping = false;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = word.to_ascii_lowercase();
                after_grouping = matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                let is_call = next == Some(&'(');
                let preceded_by_digit = start > 0 && chars[start - 1].is_ascii_digit();
                if !is_call && !preceded_by_digit && !PROMQL_WORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// `metric` without a histogram's series suffix (`_bucket`, `_sum`, `_count`).
pub fn family(metric: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| metric.strip_suffix(suffix))
        .unwrap_or(metric)
}

/// `expr` with Grafana's variables replaced by the values in `values` (name → value);
/// `$__rate_interval` and `$__interval` become `1m`, `$__range` `5m`, unless `values`
/// gives them.
pub fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut all: Vec<(String, String)> = vec![
        ("__rate_interval".into(), "1m".into()),
        ("__interval".into(), "1m".into()),
        ("__range".into(), "5m".into()),
    ];
    all.retain(|(name, _)| !values.iter().any(|(k, _)| k == name));
    all.extend(
        values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    // Longest names first, so `$queue_x` is not cut at `$queue`.
    all.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_owned();
    for (name, value) in &all {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("[[{name}]]"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// The metric names a `__name__="a"` or `__name__=~"a|b"` matcher among `matchers` (the
/// text between a selector's braces) selects, when it lists plain names.
fn name_matcher(matchers: &str) -> Vec<String> {
    let Some(at) = matchers.find("__name__") else {
        return Vec::new();
    };
    let rest = matchers[at + "__name__".len()..].trim_start();
    let rest = rest
        .strip_prefix("=~")
        .or_else(|| rest.strip_prefix('='))
        .unwrap_or("")
        .trim_start();
    let Some(value) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) else {
        return Vec::new();
    };
    value
        .split('|')
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        })
        .map(str::to_owned)
        .collect()
}

/// The parts of an alert's `expr` that must have series on a working fleet: the
/// operands of its top-level `and` / `or` / `unless` (recursively, inside parentheses
/// and `absent(…)`), each without its final comparison with a number (`> 0.9`,
/// `== bool 0`), so they show the values the alert compares; `vector(…)` literals are
/// left out.
pub fn alert_operands(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for operand in split_set_operators(expr) {
        let operand = strip_comparison(operand.trim());
        if let Some(inner) = enclosed(operand, "(").or_else(|| enclosed(operand, "absent(")) {
            out.extend(alert_operands(inner));
        } else if !operand.starts_with("vector(") {
            out.push(operand.to_owned());
        }
    }
    out
}

/// `text` split at its top-level `and`, `or` and `unless` (with their `on (…)` /
/// `ignoring (…)`).
fn split_set_operators(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0, 0);
    let mut quote = None;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                _ if depth == 0 && (i == 0 || !is_word(bytes[i - 1])) => {
                    let word_end = (i..bytes.len())
                        .find(|&j| !is_word(bytes[j]))
                        .unwrap_or(bytes.len());
                    if matches!(&text[i..word_end], "and" | "or" | "unless") {
                        parts.push(&text[start..i]);
                        let mut next = skip_space(text, word_end);
                        for modifier in ["on", "ignoring"] {
                            let after = next + modifier.len();
                            if text[next..].starts_with(modifier)
                                && !bytes.get(after).copied().is_some_and(is_word)
                            {
                                let open = skip_space(text, after);
                                let close = text[open..].find(')').map_or(open, |c| open + c + 1);
                                next = close;
                            }
                        }
                        start = next;
                        i = next;
                        continue;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    parts.push(&text[start..]);
    parts
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn skip_space(text: &str, from: usize) -> usize {
    from + text[from..].len() - text[from..].trim_start().len()
}

/// `operand` without a final top-level comparison with a number.
fn strip_comparison(operand: &str) -> &str {
    let trimmed = operand.trim_end();
    let number_start = trimmed
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-')))
        .map_or(0, |at| at + 1);
    let number = &trimmed[number_start..];
    if number.is_empty() || number.parse::<f64>().is_err() {
        return operand;
    }
    let mut left = trimmed[..number_start].trim_end();
    left = left.strip_suffix("bool").map_or(left, str::trim_end);
    for op in ["==", "!=", ">=", "<=", ">", "<"] {
        if let Some(rest) = left.strip_suffix(op) {
            return rest.trim_end();
        }
    }
    operand
}

/// The text inside `open…)` when `text` is that call or parenthesis as a whole.
fn enclosed<'a>(text: &'a str, open: &str) -> Option<&'a str> {
    let inner = text.strip_prefix(open)?.strip_suffix(')')?;
    let mut depth = 0i32;
    for c in inner.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    (depth == 0).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn metric_names_skip_functions_keywords_labels_and_ranges() {
        let expr = r#"sum by (tier) (rate(sluice_a_total{tier="l1", x=~"$q"}[5m]))
            / on (queue) group_left max without (instance) (sluice_b) > 0.5
            and histogram_quantile(0.99, sum by (le) (rate(sluice_c_bucket[1m]))) offset 5m
            or up{job="w"} == bool 1e9"#;
        assert_eq!(
            metric_names(expr),
            set(&["sluice_a_total", "sluice_b", "sluice_c_bucket", "up"])
        );
    }

    #[test]
    fn alert_operands_split_set_operators_and_drop_the_final_comparison() {
        let expr = r#"(
            max by (queue, tenant) (b) > 0
            unless on (queue, tenant)
            max by (queue, tenant) (i) > 0
          )
          and on ()
          (sum(increase(a[10m])) or vector(0)) == 0
          and on (queue)
          min by (queue) (time() - t) < 120"#;
        assert_eq!(
            alert_operands(expr),
            [
                "max by (queue, tenant) (b)",
                "max by (queue, tenant) (i)",
                "sum(increase(a[10m]))",
                "min by (queue) (time() - t)",
            ]
        );
        assert_eq!(
            alert_operands(r#"absent(r{job="s"} and on (job, instance) up == 1)"#),
            [r#"r{job="s"}"#, "up"]
        );
        assert_eq!(
            alert_operands("x / on (q) ((y + z) >= 20) > 0.25"),
            ["x / on (q) ((y + z) >= 20)"]
        );
        assert_eq!(
            alert_operands("up{order=\"and\"} == bool 1e9"),
            ["up{order=\"and\"}"]
        );
    }

    #[test]
    fn metric_names_read_name_matchers() {
        assert_eq!(
            metric_names(r#"{__name__=~"sluice_a|sluice_b", tenant!=""}"#),
            set(&["sluice_a", "sluice_b"])
        );
    }

    #[test]
    fn variable_refs_find_every_syntax() {
        let refs =
            variable_refs(r#"x{a=~"$queue", b="${tenant:regex}"}[$__rate_interval] [[old]]"#);
        assert_eq!(refs, set(&["__rate_interval", "old", "queue", "tenant"]));
    }

    #[test]
    fn substitute_replaces_longest_names_first() {
        assert_eq!(
            substitute(
                "rate(m{a=~\"$q\", b=\"$qq\"}[$__rate_interval])",
                &[("q", "1"), ("qq", "2")]
            ),
            "rate(m{a=~\"1\", b=\"2\"}[1m])"
        );
    }

    #[test]
    fn family_strips_histogram_suffixes() {
        assert_eq!(family("sluice_x_seconds_bucket"), "sluice_x_seconds");
        assert_eq!(family("sluice_x_total"), "sluice_x_total");
    }
}
