//! What a batch tells as it runs, the same in both modes: one `report.jsonl` line per
//! finished job, a count by outcome kind, failed jobs named on stderr and a progress
//! bar. Embedded mode ([`crate::batch`]) and distributed mode ([`crate::distributed`])
//! both write through [`Report`], the batch's one report writer: each line goes out
//! whole in one write (no buffer to lose), so an interrupted batch leaves only complete
//! lines.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use sluice_shared::{JobResult, OutcomeKind, ReportLine};

use crate::batch::{BatchError, BatchSummary};

/// The report file written beside the outputs.
pub const REPORT_FILE: &str = "report.jsonl";

/// Failed jobs named one per line on a terminal; the rest are counted, and the count
/// printed when the batch ends.
pub const FAILURE_LINES: usize = 10;

/// The progress bar batches draw on stderr (hidden when it is not a terminal): done
/// and total, the rate as a whole number, elapsed time, failures so far, and a message
/// (what the batch waits for).
fn progress_bar(total: u64) -> ProgressBar {
    let progress = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} jobs  {rate}  {elapsed}  {prefix}  {msg}",
    )
    .map(|style| {
        style.with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0} jobs/s", state.per_sec());
            },
        )
    })
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    progress.set_style(style);
    progress.set_prefix("0 failed");
    if !progress.is_hidden() {
        progress.enable_steady_tick(Duration::from_millis(500));
    }
    progress
}

/// Tells the user something while a batch runs: above the progress bar when it is
/// drawn, else on stderr (the progress bar's own lines are dropped when it is hidden).
pub(crate) fn say(progress: &ProgressBar, line: &str) {
    if progress.is_hidden() {
        eprintln!("sluice: {line}");
    } else {
        progress.println(line);
    }
}

/// A batch's `report.jsonl`, its counts by outcome kind and its progress bar.
pub(crate) struct Report {
    path: PathBuf,
    file: File,
    /// The first write to the report that failed: the batch goes on, and fails at
    /// [`Report::finish`].
    error: Option<std::io::Error>,
    by_kind: BTreeMap<OutcomeKind, usize>,
    progress: ProgressBar,
    /// Failed jobs not named (past [`FAILURE_LINES`] on a terminal).
    failures_unnamed: usize,
    /// Whether failures are named without end (stderr is not a terminal: a log).
    name_every_failure: bool,
    /// Set by [`Report::finish`]: nothing is recorded after it.
    closed: bool,
}

impl Report {
    /// Opens `out_dir/report.jsonl` for `jobs` jobs (appending when `append`, else
    /// starting it afresh), with a progress bar if `progress`.
    pub(crate) fn create(
        out_dir: &Path,
        jobs: usize,
        progress: bool,
        append: bool,
    ) -> Result<Self, BatchError> {
        let path = out_dir.join(REPORT_FILE);
        let file = if append {
            OpenOptions::new().create(true).append(true).open(&path)
        } else {
            File::create(&path)
        }
        .map_err(|e| BatchError::output(&path, e))?;
        let progress = if progress {
            progress_bar(jobs as u64)
        } else {
            ProgressBar::hidden()
        };
        Ok(Report {
            path,
            file,
            error: None,
            by_kind: BTreeMap::new(),
            name_every_failure: progress.is_hidden() || !std::io::stderr().is_terminal(),
            progress,
            failures_unnamed: 0,
            closed: false,
        })
    }

    /// The progress bar (hidden without `progress`).
    pub(crate) fn progress(&self) -> &ProgressBar {
        &self.progress
    }

    /// Tells the user something (see [`say`]).
    pub(crate) fn say(&self, line: &str) {
        say(&self.progress, line);
    }

    /// Whether [`Report::finish`] was called: the batch is over, nothing more is
    /// recorded (an output finishing now is not kept either).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Records one finished job: its report line (written whole), its kind's count, a
    /// line if it failed, one step of progress. A failed write is answered now and
    /// again by [`Report::finish`]. Nothing happens once the report is closed.
    pub(crate) fn record(&mut self, label: &str, result: &JobResult) -> Result<(), BatchError> {
        if self.closed {
            return Ok(());
        }
        let written = serde_json::to_vec(&ReportLine::new(label, result))
            .map_err(std::io::Error::from)
            .and_then(|mut line| {
                line.push(b'\n');
                self.file.write_all(&line)
            });
        *self.by_kind.entry(result.outcome.kind()).or_default() += 1;
        if !result.outcome.is_success() {
            let failures: usize = self
                .by_kind
                .iter()
                .filter(|(kind, _)| **kind != OutcomeKind::Success)
                .map(|(_, n)| n)
                .sum();
            self.progress.set_prefix(format!("{failures} failed"));
            if self.name_every_failure || failures <= FAILURE_LINES {
                self.say(&format!("{label}: {}", result.outcome));
            } else {
                self.failures_unnamed += 1;
            }
        }
        self.progress.inc(1);
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                let answer =
                    BatchError::output(&self.path, std::io::Error::new(e.kind(), e.to_string()));
                self.error.get_or_insert(e);
                Err(answer)
            }
        }
    }

    /// Closes the report (nothing is recorded after), clears the progress bar and
    /// sums the batch up: `total` jobs were to run.
    pub(crate) fn finish(
        &mut self,
        total: usize,
        elapsed: Duration,
    ) -> Result<BatchSummary, BatchError> {
        self.closed = true;
        self.progress.finish_and_clear();
        if self.failures_unnamed > 0 {
            eprintln!(
                "sluice: … and {} more failed; see {}",
                self.failures_unnamed,
                self.path.display()
            );
        }
        let synced = self.file.flush();
        if let Some(error) = self.error.take() {
            return Err(BatchError::output(&self.path, error));
        }
        synced.map_err(|e| BatchError::output(&self.path, e))?;
        Ok(BatchSummary {
            total,
            by_kind: self.by_kind.clone(),
            elapsed,
            report: self.path.clone(),
            ..BatchSummary::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use sluice_shared::{JobId, Outcome};

    use super::*;

    fn failure() -> JobResult {
        JobResult::without_run(JobId::new(), Outcome::Timeout, 1)
    }

    /// On a terminal only the first failures are named; the rest are counted for the
    /// end. Every failure still gets its whole report line.
    #[test]
    fn failure_lines_are_capped_on_a_terminal_and_every_line_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = Report::create(dir.path(), 30, false, false).unwrap();
        report.name_every_failure = false;
        for i in 0..30 {
            report.record(&format!("in{i}"), &failure()).unwrap();
        }
        assert_eq!(report.failures_unnamed, 30 - FAILURE_LINES);
        let summary = report.finish(30, Duration::from_secs(1)).unwrap();
        assert_eq!(summary.failed(), 30);
        let text = std::fs::read_to_string(dir.path().join(REPORT_FILE)).unwrap();
        assert_eq!(text.lines().count(), 30);
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        // Closed: nothing more is recorded.
        report.record("late", &failure()).unwrap();
        let after = std::fs::read_to_string(dir.path().join(REPORT_FILE)).unwrap();
        assert_eq!(after, text);
    }
}
