//! `sluice top` as a person meets it, against a real redis-server and real workers: the
//! full-screen view in a detached tmux session of a fixed size draws a queue's figures
//! (ready, delayed, dead, failed, the oldest ready job's age, a tenant's backlog, the
//! workers), follows a running batch
//! (completions and failures counted and drawn as rates), says when Redis is away and
//! carries on when it is back, redraws to a new width, and exits 0 on `q` with the
//! terminal restored; `--once` prints one plain-text reading, and without a terminal
//! it refuses (exit 2) pointing at `--once`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_shared::{Job, JobInput, JobResult, ModuleHash, Outcome, Queue};
use sluice_tests::fleet::api_batch;
use sluice_tests::wait::poll;
use sluice_tests::{Fleet, bin};

/// How long a test waits for something that takes a moment.
const WITHIN: Duration = Duration::from_secs(60);

/// A guest that does nothing and succeeds.
const NOOP_WAT: &str = r#"(module (func (export "_start")))"#;
/// A guest that traps.
const TRAP_WAT: &str = r#"(module (func (export "_start") unreachable))"#;

fn jobs(module: ModuleHash, n: usize) -> Vec<Job> {
    (0..n)
        .map(|_| Job::new(module, JobInput::Inline(Vec::new())))
        .collect()
}

/// A tmux server of the test's own (private socket), killed on drop, with one
/// session `top` running a command whose exit status is written to a file.
struct Tmux {
    socket: String,
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts `command` in a detached `width`×`height` session.
    fn start(width: u16, height: u16, command: &[String]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "sluice-top-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("tmux.conf");
        std::fs::write(
            &conf,
            "set -g remain-on-exit on\nset -g status off\nset -g default-terminal xterm-256color\n",
        )
        .unwrap();
        let tmux = Tmux { socket, dir };
        let script = format!("\"$@\"; echo $? > '{}'", tmux.status_file().display());
        let out = Command::new("tmux")
            .args(["-L", &tmux.socket, "-f"])
            .arg(&conf)
            .args(["new-session", "-d", "-s", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .args(["sh", "-c", &script, "sh"])
            .args(command)
            .output()
            .expect("tmux is installed (bash scripts/setup)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            text(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        out
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        text(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout)
    }

    /// Polls the pane until `done` accepts what it shows; fails naming `what` and the
    /// last screen after [`WITHIN`].
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        poll(what, WITHIN, || self.screen(), |s| done(s))
    }

    /// Waits until the pane's command has exited, and returns its exit status as the
    /// shell around it saw it (128 + N for signal N). The shell writes it to a file:
    /// tmux may mark a pane dead before it has reaped the command's status.
    fn await_exit(&self) -> String {
        let read = || std::fs::read_to_string(self.status_file()).unwrap_or_default();
        poll("the pane's command to exit", WITHIN, read, |s| {
            s.ends_with('\n')
        })
        .trim()
        .to_owned()
    }

    fn status_file(&self) -> PathBuf {
        self.dir.path().join("status")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The widest line of a screen, in characters.
fn widest(screen: &str) -> usize {
    screen
        .lines()
        .map(|l| l.trim_end().chars().count())
        .max()
        .unwrap_or(0)
}

/// `sluice top --redis URL --queue NAME ARGS…` as argv.
fn top_command(fleet: &Fleet, queue: &str, args: &[&str]) -> Vec<String> {
    let sluice = bin("sluice").get_program().to_string_lossy().into_owned();
    [sluice, "top".into(), "--redis".into(), fleet.url()]
        .into_iter()
        .chain(["--queue".to_owned(), queue.to_owned()])
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect()
}

/// The screen's line holding `label` and the number after it, e.g. `ready 5`.
fn shows(screen: &str, label: &str, value: u64) -> bool {
    screen.contains(&format!("{label} {value} ")) || screen.contains(&format!("{label} {value}\n"))
}

#[test]
fn the_live_view_draws_a_running_batch_resizes_survives_redis_and_quits_on_q() {
    let mut fleet = Fleet::start("topq");
    let q = &fleet.queue;
    let noop = fleet.put_module(NOOP_WAT.as_bytes());
    let trap = fleet.put_module(TRAP_WAT.as_bytes());

    // Five ready, one dead letter (claimed by `holder`, then given up), two delayed for
    // an hour, and three jobs in tenant acme's backlog.
    fleet.rt.block_on(q.enqueue(&jobs(noop, 1))).unwrap();
    let claimed = fleet
        .rt
        .block_on(q.claim("holder", 1, WITHIN, Duration::ZERO))
        .unwrap();
    let claimed = claimed.into_iter().next().expect("claimed one");
    let given_up =
        JobResult::without_run(claimed.delivery.as_ref().unwrap().id, Outcome::Timeout, 1);
    fleet
        .rt
        .block_on(q.dead_letter(&claimed.lease, given_up))
        .unwrap();
    fleet.rt.block_on(q.enqueue(&jobs(noop, 5))).unwrap();
    let later = fleet.rt.block_on(q.server_time_ms()).unwrap() + 3_600_000;
    fleet
        .rt
        .block_on(q.schedule(&jobs(noop, 2), later))
        .unwrap();
    fleet.rt.block_on(api_batch(q, "acme", &jobs(noop, 3)));

    let tmux = Tmux::start(
        100,
        32,
        &top_command(&fleet, "topq", &["--interval", "200ms"]),
    );
    let screen = tmux.wait_for("the queue's figures", |s| {
        shows(s, "ready", 5)
            && shows(s, "delayed", 2)
            && shows(s, "dead", 1)
            && shows(s, "in flight", 0)
            && s.contains("acme")
            && s.contains("holder")
    });
    assert!(
        screen.contains("tenants (3 waiting, 0 in flight)"),
        "{screen}"
    );
    assert!(shows(&screen, "failed", 1), "{screen}");
    assert!(!screen.contains("oldest ready 0ms "), "{screen}");
    assert!(screen.contains("workers (1 live)"), "{screen}");
    assert_eq!(widest(&screen), 100, "{screen}");

    // A running batch: a worker takes the five, then three that trap (dead letters).
    let _worker = fleet.worker("w-top", &[]);
    let screen = tmux.wait_for("the batch completed", |s| {
        shows(s, "completed", 5) && shows(s, "ready", 0) && s.contains("w-top")
    });
    assert!(!screen.contains("completed/s 0.0 (max 0.0)"), "{screen}");
    fleet.rt.block_on(q.enqueue(&jobs(trap, 3))).unwrap();
    let screen = tmux.wait_for("the failures", |s| {
        shows(s, "dead", 4) && shows(s, "failed", 4)
    });
    assert!(!screen.contains("failures/s 0.0 (max 0.0)"), "{screen}");

    // Wider: the view redraws to the new width.
    tmux.run(&["resize-window", "-t", "top", "-x", "140", "-y", "32"]);
    let screen = tmux.wait_for("the view redrawn 140 wide", |s| widest(s) == 140);
    assert!(shows(&screen, "completed", 5), "{screen}");

    // Redis away: the view says so and keeps its figures; back: the error goes.
    fleet.redis.kill();
    let screen = tmux.wait_for("the Redis error", |s| s.contains("Redis: "));
    assert!(shows(&screen, "completed", 5), "{screen}");
    fleet.redis.start_again();
    tmux.wait_for("the error gone after Redis came back", |s| {
        !s.contains("Redis: ") && shows(s, "completed", 0)
    });

    // `q`: exit 0, the alternate screen left.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    assert_eq!(tmux.await_exit(), "0", "{}", tmux.screen());
    let screen = tmux.screen();
    assert!(!screen.contains("tenants ("), "{screen}");
}

#[test]
fn esc_and_ctrl_c_quit_too() {
    let fleet = Fleet::start("topkeys");
    for key in ["Escape", "C-c"] {
        let tmux = Tmux::start(80, 24, &top_command(&fleet, "topkeys", &[]));
        tmux.wait_for("the view", |s| shows(s, "ready", 0));
        tmux.run(&["send-keys", "-t", "top", key]);
        assert_eq!(tmux.await_exit(), "0", "{key}: {}", tmux.screen());
    }
}

#[test]
fn once_prints_one_plain_reading_and_without_a_terminal_top_refuses() {
    let fleet = Fleet::start("toponce");
    let noop = fleet.put_module(NOOP_WAT.as_bytes());
    fleet
        .rt
        .block_on(fleet.queue.enqueue(&jobs(noop, 2)))
        .unwrap();
    fleet
        .rt
        .block_on(api_batch(&fleet.queue, "acme", &jobs(noop, 4)));

    let out = fleet.sluice(&["top", "--once"]).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("queue toponce"), "{stdout}");
    assert!(
        stdout.contains("ready 2  in flight 0  delayed 0  dead 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tenants (4 waiting, 0 in flight)"),
        "{stdout}"
    );
    assert!(stdout.contains("acme"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "no escape codes: {stdout:?}");

    // stdout a pipe: refused, pointing at --once.
    let out = fleet.sluice(&["top"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not a terminal") && stderr.contains("--once"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // An interval out of range is a usage error naming it.
    let out = fleet
        .sluice(&["top", "--interval", "1ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--interval"),
        "{}",
        text(&out.stderr)
    );
}
