//! What the bench's jobs run: the module (the built-in no-op, or a `--module` file
//! stored the way `sluice module put` stores it), their inputs (printable text of
//! `--input-size` bytes, in a few variants so a result delivered to the wrong job is
//! caught), and each variant's expected output, taken from a reference run of the same
//! module over the same input by `sluice-worker run`. A job counts as done only when its
//! outcome is success and its output is byte for byte the expected one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{EntryPoint, Job, JobId, JobInput, JobOutput, Limits, ModuleHash, OutcomeKind};

use crate::modules;

/// The no-op transform the bench runs when no `--module` is given.
pub const NOOP_WAT: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// The largest `--input-size`: inputs travel inline in the job's envelope, as a
/// submitter sends every input up to 256 KiB.
pub const MAX_INPUT_BYTES: u64 = 256 << 10;

/// The most input bytes one bench run may enqueue (all its jobs × input size), so a
/// typo in `--jobs`, `--latency-jobs` or `--input-size` cannot fill the server's memory
/// (which holds about twice this at the end of a run: the inputs and the outputs).
pub const MAX_TOTAL_INPUT_BYTES: u64 = 1 << 30;

/// Distinct inputs the jobs cycle through (one when inputs are empty).
const VARIANTS: usize = 8;

/// The text inputs are cut from: printable ASCII with lower and upper case, digits and
/// newlines (what a text filter is run over).
const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog. 0123456789\n";

/// Why the bench's workload could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// `--input-size` is over [`MAX_INPUT_BYTES`].
    #[error(
        "--input-size {size} is over the bench's cap of {MAX_INPUT_BYTES} bytes (inputs travel inline)"
    )]
    InputTooLarge {
        /// The size asked for.
        size: u64,
    },
    /// The run's jobs (warm-up, throughput, latency, drain) × `--input-size` is over
    /// [`MAX_TOTAL_INPUT_BYTES`].
    #[error(
        "{jobs} jobs (warm-up, --jobs and --latency-jobs, and --jobs again for the drain run) × {size} bytes is over the bench's cap of {MAX_TOTAL_INPUT_BYTES} input bytes per run (fewer --jobs, a smaller --input-size, or --no-drain)"
    )]
    TooMuchInput {
        /// Jobs asked for.
        jobs: usize,
        /// Input size asked for.
        size: u64,
    },
    /// The module file cannot be read.
    #[error("reading module {path}: {source}")]
    ReadModule {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The module is not a valid module.
    #[error("module {name}: {reason}")]
    BadModule {
        /// The module's name (its file name, or `no-op`).
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The reference run could not be made.
    #[error("reference run of {name} with {worker}: {source}")]
    ReferenceIo {
        /// The module's name.
        name: String,
        /// The worker binary.
        worker: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The reference run did not succeed, so there is no output to check jobs against.
    #[error("reference run of {name} over a {size}-byte input failed ({status}): {stderr}")]
    ReferenceFailed {
        /// The module's name.
        name: String,
        /// The input size.
        size: usize,
        /// The exit status.
        status: std::process::ExitStatus,
        /// The start of its stderr.
        stderr: String,
    },
}

/// The bench's module, inputs and expected outputs.
#[derive(Debug)]
pub struct Workload {
    /// The module's name in the figures: its file name, or `no-op`.
    pub name: String,
    /// The module's wasm bytes (WAT already compiled).
    pub wasm: Vec<u8>,
    /// The module's metadata, stored beside it as an upload stores it.
    pub meta: sluice_shared::module_meta::ModuleMeta,
    /// Bytes per input.
    pub input_size: usize,
    inputs: Vec<Vec<u8>>,
    expected: Vec<Vec<u8>>,
}

impl Workload {
    /// Reads and checks the module, builds the inputs, and runs the module once over
    /// each with `worker` (`sluice-worker run`) for the expected outputs. `jobs` is
    /// every job the run will send.
    pub fn prepare(
        module: Option<&Path>,
        input_size: u64,
        jobs: usize,
        worker: &Path,
    ) -> Result<Self, WorkloadError> {
        if input_size > MAX_INPUT_BYTES {
            return Err(WorkloadError::InputTooLarge { size: input_size });
        }
        if (jobs as u64).saturating_mul(input_size) > MAX_TOTAL_INPUT_BYTES {
            return Err(WorkloadError::TooMuchInput {
                jobs,
                size: input_size,
            });
        }
        let (name, bytes) = match module {
            None => ("no-op".to_owned(), NOOP_WAT.as_bytes().to_vec()),
            Some(path) => (
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string()),
                std::fs::read(path).map_err(|source| WorkloadError::ReadModule {
                    path: path.to_owned(),
                    source,
                })?,
            ),
        };
        let (wasm, _) = modules::prepare(&bytes).map_err(|e| WorkloadError::BadModule {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let meta = modules::metadata(&wasm);
        let input_size = input_size as usize;
        let variants = if input_size == 0 { 1 } else { VARIANTS };
        let inputs: Vec<Vec<u8>> = (0..variants).map(|v| text(v, input_size)).collect();
        let expected = reference_outputs(&name, &wasm, &inputs, worker)?;
        Ok(Workload {
            name,
            wasm,
            meta,
            input_size,
            inputs,
            expected,
        })
    }

    /// The entry point jobs name: the module's default, as `sluice submit` picks it.
    pub fn entry(&self) -> EntryPoint {
        self.meta.default_entry.clone()
    }

    /// Job number `n` of a run (its input is variant `n % variants`), with its variant.
    pub fn job(&self, n: usize, module: ModuleHash, limits: &Limits) -> (Job, usize) {
        let variant = n % self.inputs.len();
        let mut job = Job::new(module, JobInput::Inline(self.inputs[variant].clone()));
        job.entry = self.entry();
        job.limits = limits.clone();
        (job, variant)
    }

    /// Checks finished jobs: each notice's outcome, then each successful job's stored
    /// output against its variant's expected output.
    pub async fn check(
        &self,
        queue: &RedisQueue,
        finished: &HashMap<JobId, (OutcomeKind, usize)>,
    ) -> anyhow::Result<Checked> {
        let mut checked = Checked::default();
        let mut to_fetch = Vec::new();
        for (id, (kind, variant)) in finished {
            if *kind == OutcomeKind::Success {
                to_fetch.push((*id, *variant));
            } else {
                *checked.failed.entry(kind.to_string()).or_default() += 1;
            }
        }
        for chunk in to_fetch.chunks(500) {
            let ids: Vec<JobId> = chunk.iter().map(|(id, _)| *id).collect();
            let mut results: HashMap<JobId, _> = queue
                .results()
                .fetch(&ids)
                .await?
                .into_iter()
                .map(|r| (r.job_id, r))
                .collect();
            for (id, variant) in chunk {
                let Some(result) = results.remove(id) else {
                    checked.missing += 1;
                    continue;
                };
                let output = match &result.output {
                    JobOutput::Inline(bytes) => bytes.clone(),
                    JobOutput::Written => Vec::new(),
                    JobOutput::Blob { .. } => {
                        let mut out = Vec::new();
                        crate::distributed::write_output(queue, &result, &mut out).await?;
                        out
                    }
                };
                if result.attempt > 1 {
                    checked.retried += 1;
                }
                if result.outcome.kind() != OutcomeKind::Success {
                    *checked
                        .failed
                        .entry(result.outcome.kind().to_string())
                        .or_default() += 1;
                } else if output == self.expected[*variant] {
                    checked.ok += 1;
                } else {
                    checked.wrong_output += 1;
                }
            }
        }
        Ok(checked)
    }
}

/// What checking a run's jobs found.
#[derive(Debug, Default, Clone)]
pub struct Checked {
    /// Jobs that succeeded with exactly the expected output.
    pub ok: usize,
    /// Jobs that succeeded with another output.
    pub wrong_output: usize,
    /// Jobs that ended otherwise, by outcome kind.
    pub failed: std::collections::BTreeMap<String, usize>,
    /// Jobs whose notice said success but whose result was gone when checked
    /// (expired: `--ttl` shorter than the run). Reported on their own: neither failed
    /// nor left out of jobs/s, but their outputs went unchecked.
    pub missing: usize,
    /// Checked jobs that ran more than once (an earlier attempt hit a retryable error,
    /// such as a full instance pool): their CPU is in the run's CPU per job.
    pub retried: usize,
}

impl Checked {
    /// Jobs that did not succeed, or succeeded with another output.
    pub fn not_ok(&self) -> usize {
        self.wrong_output + self.failed.values().sum::<usize>()
    }

    /// Jobs a run's jobs/s counts: those with the expected output and those whose
    /// result expired before it was checked (reported as `expired`), not failed jobs
    /// nor wrong outputs.
    pub fn counted(&self) -> usize {
        self.ok + self.missing
    }

    /// Every job checked: with an outcome, whether right, wrong or expired.
    pub fn total(&self) -> usize {
        self.ok + self.not_ok() + self.missing
    }

    /// The failures in words (`none` when there are none).
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .failed
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        if self.wrong_output > 0 {
            parts.push(format!("{} wrong output", self.wrong_output));
        }
        if self.missing > 0 {
            parts.push(format!(
                "{} succeeded but expired before checked (raise --ttl)",
                self.missing
            ));
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Input variant `v` of `size` bytes: the text from offset `7 v`, repeated.
fn text(v: usize, size: usize) -> Vec<u8> {
    TEXT.iter()
        .cycle()
        .skip(v * 7 % TEXT.len())
        .take(size)
        .copied()
        .collect()
}

/// Each input's output from `sluice-worker run` of the module (written to a scratch
/// file as `<name>.wasm`).
fn reference_outputs(
    name: &str,
    wasm: &[u8],
    inputs: &[Vec<u8>],
    worker: &Path,
) -> Result<Vec<Vec<u8>>, WorkloadError> {
    let io = |source| WorkloadError::ReferenceIo {
        name: name.to_owned(),
        worker: worker.to_owned(),
        source,
    };
    let dir = tempfile::tempdir().map_err(io)?;
    let file = dir.path().join("module.wasm");
    std::fs::write(&file, wasm).map_err(io)?;
    inputs
        .iter()
        .map(|input| {
            let mut child = Command::new(worker)
                .arg("run")
                .arg(&file)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io)?;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let feed = {
                let input = input.clone();
                std::thread::spawn(move || stdin.write_all(&input))
            };
            let out = child.wait_with_output().map_err(io)?;
            // A guest that stops reading early closes the pipe; its exit status says
            // whether that was a failure.
            let _ = feed.join();
            if !out.status.success() {
                return Err(WorkloadError::ReferenceFailed {
                    name: name.to_owned(),
                    size: input.len(),
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(500)])
                        .into_owned(),
                });
            }
            Ok(out.stdout)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_printable_text_of_the_size_asked() {
        for v in 0..VARIANTS {
            let input = text(v, 4096);
            assert_eq!(input.len(), 4096);
            assert!(
                input
                    .iter()
                    .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n')
            );
        }
        assert_ne!(text(0, 64), text(1, 64), "variants differ");
        assert!(text(3, 0).is_empty());
    }

    #[test]
    fn too_much_input_says_how_to_ask_for_less() {
        let Err(err) = Workload::prepare(None, 256 << 10, 10_000, Path::new("no-worker")) else {
            panic!("10,000 × 256 KiB is over the cap");
        };
        assert!(matches!(err, WorkloadError::TooMuchInput { .. }), "{err}");
        assert!(err.to_string().contains("--no-drain"), "{err}");
    }

    #[test]
    fn checked_counts_every_kind_of_failure() {
        let mut checked = Checked {
            ok: 5,
            wrong_output: 1,
            missing: 2,
            ..Checked::default()
        };
        checked.failed.insert("timeout".into(), 3);
        // Expired results are reported, not counted as failed.
        assert_eq!(checked.not_ok(), 4);
        assert_eq!(
            checked.describe(),
            "3 timeout, 1 wrong output, 2 succeeded but expired before checked (raise --ttl)"
        );
        assert_eq!(Checked::default().describe(), "none");
    }
}
