//! What a batch tells as it runs, the same in both modes: one `report.jsonl` line per
//! finished job, a count by outcome kind, a line per failed job and a progress bar on
//! stderr. Embedded mode ([`crate::batch`]) and distributed mode
//! ([`crate::distributed`]) both write through [`Report`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sluice_shared::{JobResult, OutcomeKind, ReportLine};

use crate::batch::{BatchError, BatchSummary};

/// The report file written beside the outputs.
pub const REPORT_FILE: &str = "report.jsonl";

/// The progress bar batches draw on stderr (hidden when it is not a terminal).
fn progress_bar(total: u64) -> ProgressBar {
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
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
    file: BufWriter<File>,
    /// The first write to the report that failed: the batch goes on, and fails at
    /// [`Report::finish`].
    error: Option<std::io::Error>,
    by_kind: BTreeMap<OutcomeKind, usize>,
    progress: ProgressBar,
}

impl Report {
    /// Creates `out_dir/report.jsonl` for `jobs` jobs, with a progress bar if `progress`.
    pub(crate) fn create(out_dir: &Path, jobs: usize, progress: bool) -> Result<Self, BatchError> {
        let path = out_dir.join(REPORT_FILE);
        let file = File::create(&path).map_err(|source| BatchError::Output {
            path: path.clone(),
            source,
        })?;
        Ok(Report {
            path,
            file: BufWriter::new(file),
            error: None,
            by_kind: BTreeMap::new(),
            progress: if progress {
                progress_bar(jobs as u64)
            } else {
                ProgressBar::hidden()
            },
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

    /// Records one finished job: its report line, its kind's count, a line if it
    /// failed, one step of progress. A failed write is answered now and again by
    /// [`Report::finish`].
    pub(crate) fn record(&mut self, label: &str, result: &JobResult) -> Result<(), BatchError> {
        let written = serde_json::to_writer(&mut self.file, &ReportLine::new(label, result))
            .map_err(std::io::Error::from)
            .and_then(|()| self.file.write_all(b"\n"));
        *self.by_kind.entry(result.outcome.kind()).or_default() += 1;
        if !result.outcome.is_success() {
            self.say(&format!("{label}: {}", result.outcome));
        }
        self.progress.inc(1);
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                let answer = self.output_error(std::io::Error::new(e.kind(), e.to_string()));
                self.error.get_or_insert(e);
                Err(answer)
            }
        }
    }

    /// Clears the progress bar, flushes the report and sums the batch up.
    pub(crate) fn finish(
        &mut self,
        total: usize,
        elapsed: Duration,
    ) -> Result<BatchSummary, BatchError> {
        self.progress.finish_and_clear();
        let flushed = self.file.flush();
        if let Some(source) = self.error.take() {
            return Err(self.output_error(source));
        }
        flushed.map_err(|source| self.output_error(source))?;
        Ok(BatchSummary {
            total,
            by_kind: self.by_kind.clone(),
            elapsed,
            report: self.path.clone(),
        })
    }

    fn output_error(&self, source: std::io::Error) -> BatchError {
        BatchError::Output {
            path: self.path.clone(),
            source,
        }
    }
}
