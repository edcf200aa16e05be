//! The Dockerfile: hadolint's verdict, what it copies (present, and in the build
//! context), the binaries it installs and runs, the user it runs as, no secret.

use std::collections::BTreeSet;

use super::{assert_runs, read, repo_root, tool, workspace_bins};

/// A Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(rest) => current.push_str(rest),
            None => {
                current.push_str(trimmed);
                let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((word.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// Whether `.dockerignore` keeps `path` (relative to the root) in the build context:
/// its rules in order, the last that matches deciding (`*` any top-level name, `**/x`
/// any component `x`, a directory rule everything below it, `!` keeping).
fn in_build_context(path: &str) -> bool {
    let mut kept = true;
    for rule in read(".dockerignore").lines().map(str::trim) {
        if rule.is_empty() || rule.starts_with('#') {
            continue;
        }
        let (keep, pattern) = match rule.strip_prefix('!') {
            Some(p) => (true, p.trim_end_matches('/')),
            None => (false, rule.trim_end_matches('/')),
        };
        let matches = match pattern.strip_prefix("**/") {
            Some(component) => path.split('/').any(|c| c == component),
            None if pattern == "*" => true,
            None => path == pattern || path.starts_with(&format!("{pattern}/")),
        };
        if matches {
            kept = keep;
        }
    }
    kept
}

/// A Kubernetes quantity (`3Gi`, `512Mi`, `1G`, `64`) in bytes.

#[test]
fn dockerfile_passes_hadolint() {
    // No finding at any level (error, warning, info, style) is accepted.
    let out = tool("hadolint")
        .args(["--no-color", "--failure-threshold", "style", "Dockerfile"])
        .current_dir(repo_root())
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfile_copies_what_exists_and_runs_workspace_binaries() {
    let bins = workspace_bins();
    let instructions = dockerfile_instructions();
    let mut copied_sources = 0;
    let mut built = BTreeSet::new();
    for (word, args) in &instructions {
        if word == "COPY" && !args.contains("--from=") {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (_dest, sources) = words.split_last().expect("COPY SRC… DEST");
            for source in sources {
                let path = source.trim_end_matches('/');
                assert!(
                    repo_root().join(path).exists(),
                    "COPY {source}: no such path"
                );
                assert!(
                    in_build_context(path),
                    "COPY {source}: .dockerignore leaves it out"
                );
                copied_sources += 1;
            }
        }
        for word in args.split_whitespace() {
            if let Some(name) = word.strip_prefix("target/release/") {
                assert!(
                    bins.contains(name),
                    "the image installs {name}, not a workspace binary"
                );
                built.insert(name.to_owned());
            }
        }
        if word == "CMD" || word == "ENTRYPOINT" {
            let command: Vec<String> = serde_json::from_str(args).expect("exec form");
            assert_runs(&command, &bins, &format!("the image's {word}"));
        }
    }
    assert!(copied_sources >= 6, "the Dockerfile copies the workspace");
    assert_eq!(built, bins, "one image with every workspace binary");
    // Each crate the stub build names exists, and the runtime runs as a non-root user.
    for member in ["shared", "worker", "scheduler", "tests"] {
        assert!(
            instructions
                .iter()
                .any(|(w, a)| w == "COPY" && a.contains(&format!("{member}/Cargo.toml"))),
            "the dependency layer copies {member}/Cargo.toml"
        );
    }
    let user = instructions
        .iter()
        .rev()
        .find(|(w, _)| w == "USER")
        .expect("a USER");
    assert!(
        !user.1.starts_with("root") && !user.1.starts_with('0'),
        "runs as {}",
        user.1
    );
    assert!(
        instructions.iter().any(|(w, _)| w == "HEALTHCHECK"),
        "a HEALTHCHECK"
    );
    let secretish = ["PASSWORD", "TOKEN", "CACHE_KEY", "REDIS_URL"];
    for (word, args) in &instructions {
        if word == "ENV" || word == "ARG" {
            assert!(
                !secretish.iter().any(|s| args.contains(s)),
                "{word} {args}: a secret baked in"
            );
        }
    }
}
