//! The output directory of a batch: outputs are `OUT/<input name>`, the report is
//! `OUT/report.jsonl`, and a job's output is written to `OUT/.<input name>.part` until
//! it succeeds. So no input may be named `report.jsonl` or `.<…>.part` (refused before
//! any job runs), and a rerun into a directory that holds files refuses unless told
//! what to do with them: `--force` removes the previous run's outputs and report,
//! `--resume` keeps the inputs whose successful output and report line exist. Either
//! removes only outputs the previous report lists as successes (and partial files, and
//! the output archive `outputs.tar` of a run with `--output-format tar`, which
//! `--resume` refuses): anything else in OUT stays, unless a job's successful output
//! replaces it. Input names must be valid
//! UTF-8 (each names an output and a report line exactly).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use super::output::{ARCHIVE_FILE, OutputFormat};
use super::{BatchError, BatchOptions};
use crate::report::REPORT_FILE;

/// The longest input name, in bytes: `OUT/.<name>.part` must stay within the 255
/// bytes a file name may have.
pub const MAX_NAME_BYTES: usize = 255 - ".".len() - ".part".len();

/// What to do with an output directory that holds files already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutMode {
    /// Refuse (the default).
    #[default]
    Fresh,
    /// Remove the previous run's outputs (the successes its report lists), report and
    /// partial files first.
    Force,
    /// Skip the inputs whose successful output and report line exist; append to the
    /// report.
    Resume,
}

/// One input: its name (the output's name too), its path and size.
pub type Input = (String, PathBuf, u64);

/// What the output directory holds for this run.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The inputs to run, sorted by name.
    pub inputs: Vec<Input>,
    /// Inputs skipped by `--resume`.
    pub skipped: usize,
    /// Whether the report is appended to (`--resume`) rather than started afresh.
    pub append: bool,
    /// The output directory's lock, held as long as this lives ([`lock`]).
    pub _lock: File,
}

/// Locks the output directory (an exclusive `flock` on the directory itself, so no
/// file is added to it) for as long as the returned handle lives: two processes never
/// write one directory's outputs and report at once.
pub(crate) fn lock(out: &Path) -> Result<File, BatchError> {
    let dir = File::open(out).map_err(|e| BatchError::output(out, e))?;
    match dir.try_lock() {
        Ok(()) => Ok(dir),
        Err(std::fs::TryLockError::WouldBlock) => Err(BatchError::OutLocked {
            path: out.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(BatchError::output(out, e)),
    }
}

/// Creates a job's partial output file afresh: a stale one (or anything planted under
/// its name, a symlink included) is removed first, and the new one is created only if
/// nothing took the name meanwhile (never following a link).
pub(crate) fn create_part(part: &Path) -> std::io::Result<File> {
    match std::fs::remove_file(part) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
}

/// Where a job's output goes until it succeeds.
pub(crate) fn part_path(out_dir: &Path, label: &str) -> PathBuf {
    out_dir.join(format!(".{label}.part"))
}

fn is_part_name(name: &str) -> bool {
    name.len() > ".part".len() && name.starts_with('.') && name.ends_with(".part")
}

/// Whether `name` can be an output's name under the output directory: one plain
/// component, not the report's, not a partial file's. Names read back from Redis or
/// from a report are checked with it before any file is touched.
pub(crate) fn is_output_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name != REPORT_FILE
        && !is_part_name(name)
}

/// The regular files of `dir`, sorted by name.
pub fn list_inputs(dir: &Path) -> Result<Vec<Input>, BatchError> {
    let err = |error| BatchError::Inputs {
        path: dir.to_owned(),
        error,
    };
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path();
        let meta = entry.metadata().map_err(|error| BatchError::Inputs {
            path: path.clone(),
            error,
        })?;
        if meta.is_file() {
            // Refused, not made lossy: `a\xff` and `a\xfe` would both become `a\u{FFFD}`.
            let Ok(name) = entry.file_name().into_string() else {
                return Err(BatchError::NonUtf8Name { path });
            };
            let path =
                std::fs::canonicalize(&path).map_err(|error| BatchError::Inputs { path, error })?;
            inputs.push((name, path, meta.len()));
        }
    }
    inputs.sort();
    Ok(inputs)
}

/// Lists the inputs (at least one, none with a reserved name), creates the output
/// directory (not the input directory) and applies `options.out_mode` to what it
/// holds.
pub(crate) fn prepare(options: &BatchOptions) -> Result<Prepared, BatchError> {
    if options.output_format == OutputFormat::Tar && options.out_mode == OutMode::Resume {
        return Err(BatchError::ResumeArchive);
    }
    // Before anything is created: a `--resume` after a tar run, in either format.
    if options.out_mode == OutMode::Resume && options.out_dir.join(ARCHIVE_FILE).exists() {
        return Err(BatchError::ResumeArchive);
    }
    let inputs = list_inputs(&options.input_dir)?;
    if inputs.is_empty() {
        return Err(BatchError::NoInputs(options.input_dir.clone()));
    }
    for (name, path, _) in &inputs {
        let why = if name == REPORT_FILE {
            Some("the report is OUT/report.jsonl")
        } else if is_part_name(name) {
            Some("OUT/.<name>.part holds an output being written")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(BatchError::ReservedName {
                path: path.clone(),
                why,
            });
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(BatchError::NameTooLong {
                path: path.clone(),
                len: name.len(),
            });
        }
    }
    let out = &options.out_dir;
    std::fs::create_dir_all(out).map_err(|e| BatchError::output(out, e))?;
    let lock = lock(out)?;
    let canonical = |dir: &Path| std::fs::canonicalize(dir).map_err(|e| BatchError::output(dir, e));
    if canonical(out)? == canonical(&options.input_dir)? {
        return Err(BatchError::OutIsInput);
    }
    let entries = std::fs::read_dir(out)
        .map_err(|e| BatchError::output(out, e))?
        .count();
    if entries == 0 {
        return Ok(Prepared {
            inputs,
            skipped: 0,
            append: false,
            _lock: lock,
        });
    }
    match options.out_mode {
        OutMode::Fresh => Err(BatchError::OutNotEmpty {
            path: out.clone(),
            entries,
        }),
        OutMode::Force => {
            // Only what the previous run wrote: its archive after a tar run, else the
            // outputs of the successes its report lists. Any other file is not ours (a
            // current input's output replaces it, atomically, only if that job
            // succeeds; a tar run's archive replaces `outputs.tar`).
            let archive = out.join(ARCHIVE_FILE);
            let tar_run = match super::archive::written_by_sluice(&archive) {
                Ok(ours) => ours,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(BatchError::output(&archive, e)),
            };
            if tar_run {
                remove(&archive)?;
            } else {
                let previous = previous_report(out)?;
                for name in previous_outputs(&previous) {
                    remove(&out.join(name))?;
                }
            }
            remove(&out.join(REPORT_FILE))?;
            remove_parts(out)?;
            Ok(Prepared {
                inputs,
                skipped: 0,
                append: false,
                _lock: lock,
            })
        }
        OutMode::Resume => resume(out, inputs, lock),
    }
}

/// `--resume`: keeps the inputs with a successful report line and their output, and a
/// report of just those lines (rewritten whole, then renamed over the old one); the
/// rest run again, their stale outputs removed first.
fn resume(out: &Path, inputs: Vec<Input>, lock: File) -> Result<Prepared, BatchError> {
    let wanted: HashSet<&str> = inputs.iter().map(|(name, _, _)| name.as_str()).collect();
    let mut kept: HashMap<String, String> = HashMap::new();
    let previous = previous_report(out)?;
    let ours: HashSet<String> = previous_outputs(&previous).map(str::to_owned).collect();
    for (name, line) in previous {
        if is_success(&line) && wanted.contains(name.as_str()) && out.join(&name).is_file() {
            kept.insert(name, line);
        } else {
            kept.remove(&name);
        }
    }
    let mut report = String::new();
    let mut run = Vec::new();
    for input in inputs {
        match kept.get(&input.0) {
            Some(line) => {
                report.push_str(line);
                report.push('\n');
            }
            None => {
                // A stale output of the previous run goes; a file it did not write stays.
                if ours.contains(&input.0) {
                    remove(&out.join(&input.0))?;
                }
                run.push(input);
            }
        }
    }
    let path = out.join(REPORT_FILE);
    let part = part_path(out, REPORT_FILE);
    std::fs::write(&part, report).map_err(|e| BatchError::output(&part, e))?;
    std::fs::rename(&part, &path).map_err(|e| BatchError::output(&path, e))?;
    remove_parts(out)?;
    Ok(Prepared {
        skipped: kept.len(),
        inputs: run,
        append: true,
        _lock: lock,
    })
}

/// The previous run's report lines that parse, with the input each names (only names
/// that can be outputs); none without a report.
pub(crate) fn previous_report(out: &Path) -> Result<Vec<(String, String)>, BatchError> {
    let path = out.join(REPORT_FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BatchError::output(&path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            let name = value["input"].as_str()?;
            is_output_name(name).then(|| (name.to_owned(), line.to_owned()))
        })
        .collect())
}

/// Whether a report line is a success's (only a success leaves an output).
fn is_success(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["outcome"] == "success")
}

/// The outputs a previous run wrote: the inputs its report lists as successes.
fn previous_outputs(report: &[(String, String)]) -> impl Iterator<Item = &str> {
    report
        .iter()
        .filter(|(_, line)| is_success(line))
        .map(|(name, _)| name.as_str())
}

/// Removes the partial files (`.<name>.part`) in `out`: what an interrupted or
/// failed write left.
pub(crate) fn remove_parts(out: &Path) -> Result<(), BatchError> {
    let entries = std::fs::read_dir(out).map_err(|e| BatchError::output(out, e))?;
    for entry in entries.flatten() {
        if is_part_name(&entry.file_name().to_string_lossy()) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes a regular file; one that is not there is fine.
fn remove(path: &Path) -> Result<(), BatchError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BatchError::output(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_output_directory_is_refused_until_its_lock_goes() {
        let out = tempfile::tempdir().unwrap();
        let held = lock(out.path()).unwrap();
        let err = lock(out.path()).unwrap_err();
        assert!(matches!(err, BatchError::OutLocked { .. }), "{err}");
        drop(held);
        lock(out.path()).unwrap();
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_part_file_never_writes_through_a_planted_link() {
        let out = tempfile::tempdir().unwrap();
        let victim = out.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let part = part_path(out.path(), "x");
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        use std::io::Write;
        create_part(&part).unwrap().write_all(b"output").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&part).unwrap(), "output");
        assert!(!std::fs::symlink_metadata(&part).unwrap().is_symlink());
    }

    #[test]
    fn names_that_cannot_be_outputs() {
        for bad in ["", ".", "..", "a/b", "report.jsonl", ".x.part"] {
            assert!(!is_output_name(bad), "{bad:?}");
        }
        for good in ["a", ".hidden", "x.part", "report.jsonl.txt"] {
            assert!(is_output_name(good), "{good:?}");
        }
    }
}
