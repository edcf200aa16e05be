//! `docs/cli.md`, the command-line reference, is the `--help` text of every `sluice` and
//! `sluice-worker` command and subcommand, walked from the built binaries (each
//! command's `Commands:` list names the next ones). This test fails when the file is
//! out of date, and prints the command that regenerates it.

use std::path::PathBuf;
use std::process::Command;

use sluice_tests::{bin, repo_root};

/// The environment variable that makes this test write the file instead of checking it.
const BLESS: &str = "SLUICE_BLESS";

/// `BIN [PATH…] --help`, with no `SLUICE_*` variable set (clap shows their values).
fn help(name: &str, path: &[String]) -> String {
    let mut command: Command = bin(name);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            command.env_remove(&key);
        }
    }
    let out = command
        .args(path)
        .arg("--help")
        .env_remove("COLUMNS")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{name} {path:?} --help");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The subcommands a help text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// One section per command, depth first, in the order `--help` lists them.
fn walk(name: &str, path: &mut Vec<String>, out: &mut String) {
    let text = help(name, path);
    let title = std::iter::once(name.to_owned())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let level = if path.is_empty() { "##" } else { "###" };
    out.push_str(&format!(
        "{level} `{title}`\n\n```text\n{}\n```\n\n",
        text.trim_end()
    ));
    for sub in subcommands(&text) {
        path.push(sub);
        walk(name, path, out);
        path.pop();
    }
}

fn render() -> String {
    let mut out = String::from(
        "# Command-line reference\n\n\
         The `--help` text of every `sluice` and `sluice-worker` command, generated from the \
         built binaries by `tests/tests/cli_docs.rs` (do not edit by hand). Regenerate \
         with:\n\n\
         ```sh\nSLUICE_BLESS=1 cargo test --release -p sluice-tests --test cli_docs\n```\n\n\
         Walkthroughs and defaults are in the README.\n\n",
    );
    for name in ["sluice", "sluice-worker"] {
        walk(name, &mut Vec::new(), &mut out);
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn docs_path() -> PathBuf {
    repo_root().join("docs/cli.md")
}

#[test]
fn docs_cli_md_is_the_help_of_every_command() {
    let rendered = render();
    assert!(
        rendered.contains("### `sluice result`"),
        "the walk found subcommands"
    );
    assert!(rendered.contains("### `sluice-worker serve`"));
    if std::env::var_os(BLESS).is_some() {
        std::fs::write(docs_path(), &rendered).expect("write docs/cli.md");
        return;
    }
    let current = std::fs::read_to_string(docs_path()).unwrap_or_default();
    if current != rendered {
        let first = current
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .map_or(current.lines().count().min(rendered.lines().count()), |i| i);
        panic!(
            "docs/cli.md is out of date (first difference at line {}: {:?} → {:?}).\n\
             Regenerate it with:\n\n    {BLESS}=1 cargo test --release -p sluice-tests --test cli_docs\n",
            first + 1,
            current.lines().nth(first).unwrap_or(""),
            rendered.lines().nth(first).unwrap_or(""),
        );
    }
}

#[test]
fn subcommands_are_read_from_the_commands_list() {
    let help = "Usage: x <COMMAND>\n\nCommands:\n  put   Store\n        more text\n  rm    Delete\n  help  Print\n\nOptions:\n  -h, --help\n";
    assert_eq!(subcommands(help), ["put", "rm"]);
}
