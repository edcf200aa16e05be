//! How a job ended. Every job ends with exactly one [`Outcome`]; the worker never
//! panics or dies because of what a module does.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::JobId;

/// Most bytes any outcome reason or detail keeps: guests control much of this text
/// (import names, name-section function names in backtraces, WAT source in parse
/// errors), and it is stored with every result and dead letter.
pub const MAX_REASON_BYTES: usize = 4 << 10;

/// Most guest stderr bytes a result keeps.
pub const MAX_STDERR_BYTES: usize = 64 << 10;

/// Room [`cut`] keeps for its marker, so a cut string stays within its limit.
const MARKER_ROOM: usize = 32;

/// `text` cut to at most `max` bytes at a char boundary, ending with a visible
/// "… (N bytes cut)" marker when anything was cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut keep = max.saturating_sub(MARKER_ROOM);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let marker = format!("… ({} bytes cut)", text.len() - keep);
    if marker.len() > max {
        // A limit too small for any marker: a bare cut is all that fits.
        let mut keep = max;
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        return text[..keep].to_owned();
    }
    let mut out = String::with_capacity(keep + marker.len());
    out.push_str(&text[..keep]);
    out.push_str(&marker);
    out
}

fn cap_in_place(text: &mut String, max: usize) {
    if text.len() > max {
        *text = cut(text, max);
    }
}

/// Caps a (short name, long text) pair so both together fit [`MAX_REASON_BYTES`]: the
/// name gets at most a quarter, the text the rest.
fn cap_pair(name: &mut String, text: &mut String) {
    cap_in_place(name, MAX_REASON_BYTES / 4);
    cap_in_place(text, MAX_REASON_BYTES - name.len());
}

/// The typed end of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The guest finished (`_start` returned or exited 0; raw ABI: every chunk processed).
    Success,
    /// The instruction budget ran out.
    FuelExhausted,
    /// The wall-clock deadline passed.
    Timeout,
    /// The guest asked for more memory or table space than its limit allows.
    MemoryLimit {
        /// What the guest asked for, as wasmtime reported it.
        detail: String,
    },
    /// The guest wrote more output than `max_output_bytes`.
    OutputLimit {
        /// The job's `max_output_bytes`.
        limit: u64,
    },
    /// A WebAssembly trap: `code` is wasmtime's trap code in snake_case
    /// (`unreachable_code_reached`, `integer_division_by_zero`, `stack_overflow`, …).
    Trap {
        /// wasmtime's trap code, snake_case.
        code: String,
        /// The trap's message, with the guest's backtrace if any.
        message: String,
    },
    /// The guest exited with a non-zero status (`proc_exit(n)`, or a raw-ABI `-n`).
    NonZeroExit {
        /// The exit status.
        code: i32,
    },
    /// The bytes are not a valid module, or it failed to compile.
    InvalidModule {
        /// Why the module was refused.
        reason: String,
    },
    /// The module is larger than the worker's module-size cap.
    ModuleTooLarge {
        /// The module's size in bytes.
        size: u64,
        /// The cap it is over, in bytes.
        limit: u64,
    },
    /// A required export is missing or has the wrong signature.
    MissingExport {
        /// The export looked for.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The module imports something other than the allowed WASI functions.
    ImportNotAllowed {
        /// The import's module name.
        module: String,
        /// The import's field name.
        name: String,
    },
    /// The job's input could not be read (blob missing, I/O error).
    InputUnavailable {
        /// Why the input could not be read.
        reason: String,
    },
    /// The envelope could not be decoded (garbage or an unknown format version).
    BadEnvelope {
        /// Why the envelope could not be decoded.
        reason: String,
    },
    /// The job asks for more than its tenant's policy allows (a forged or stale
    /// envelope: submitters clamp limits to the policy).
    PolicyViolation {
        /// Which limit is over the policy, and by how much.
        reason: String,
    },
    /// The worker could not run the job for a reason of its own (output sink failed,
    /// no pool slot). Not the guest's fault.
    HostError {
        /// What failed on the worker's side.
        reason: String,
    },
}

/// The outcome's kind without its details: a closed set, safe as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The guest finished.
    Success,
    /// The instruction budget ran out.
    FuelExhausted,
    /// The wall-clock deadline passed.
    Timeout,
    /// The guest asked for more memory than its limit.
    MemoryLimit,
    /// The guest wrote more output than its limit.
    OutputLimit,
    /// A WebAssembly trap.
    Trap,
    /// The guest exited with a non-zero status.
    NonZeroExit,
    /// The bytes are not a valid module.
    InvalidModule,
    /// The module is over the module-size cap.
    ModuleTooLarge,
    /// A required export is missing or has the wrong signature.
    MissingExport,
    /// The module imports something not allowed.
    ImportNotAllowed,
    /// The job's input could not be read.
    InputUnavailable,
    /// The envelope could not be decoded.
    BadEnvelope,
    /// The job asks for more than its tenant's policy allows.
    PolicyViolation,
    /// The worker failed for a reason of its own.
    HostError,
}

impl OutcomeKind {
    /// Every kind, in declaration order (for summaries and metric pre-registration).
    pub const ALL: [OutcomeKind; 15] = [
        OutcomeKind::Success,
        OutcomeKind::FuelExhausted,
        OutcomeKind::Timeout,
        OutcomeKind::MemoryLimit,
        OutcomeKind::OutputLimit,
        OutcomeKind::Trap,
        OutcomeKind::NonZeroExit,
        OutcomeKind::InvalidModule,
        OutcomeKind::ModuleTooLarge,
        OutcomeKind::MissingExport,
        OutcomeKind::ImportNotAllowed,
        OutcomeKind::InputUnavailable,
        OutcomeKind::BadEnvelope,
        OutcomeKind::PolicyViolation,
        OutcomeKind::HostError,
    ];

    /// The snake_case name used on stderr, in reports and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::FuelExhausted => "fuel_exhausted",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::MemoryLimit => "memory_limit",
            OutcomeKind::OutputLimit => "output_limit",
            OutcomeKind::Trap => "trap",
            OutcomeKind::NonZeroExit => "non_zero_exit",
            OutcomeKind::InvalidModule => "invalid_module",
            OutcomeKind::ModuleTooLarge => "module_too_large",
            OutcomeKind::MissingExport => "missing_export",
            OutcomeKind::ImportNotAllowed => "import_not_allowed",
            OutcomeKind::InputUnavailable => "input_unavailable",
            OutcomeKind::BadEnvelope => "bad_envelope",
            OutcomeKind::PolicyViolation => "policy_violation",
            OutcomeKind::HostError => "host_error",
        }
    }

    /// Whether running the same job again could end differently. A timeout or a host
    /// error may be transient (a loaded machine, a full disk); a module that is invalid,
    /// traps deterministically or blows its budget will do so again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            OutcomeKind::Timeout | OutcomeKind::HostError | OutcomeKind::InputUnavailable
        )
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a name is not an outcome kind.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown outcome kind {0:?}")]
pub struct UnknownOutcomeKind(String);

/// The kind named by [`OutcomeKind::as_str`] (snake_case, as in reports and metrics).
impl std::str::FromStr for OutcomeKind {
    type Err = UnknownOutcomeKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        OutcomeKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownOutcomeKind(cut(name, 64)))
    }
}

impl Outcome {
    /// The kind of this outcome.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Success => OutcomeKind::Success,
            Outcome::FuelExhausted => OutcomeKind::FuelExhausted,
            Outcome::Timeout => OutcomeKind::Timeout,
            Outcome::MemoryLimit { .. } => OutcomeKind::MemoryLimit,
            Outcome::OutputLimit { .. } => OutcomeKind::OutputLimit,
            Outcome::Trap { .. } => OutcomeKind::Trap,
            Outcome::NonZeroExit { .. } => OutcomeKind::NonZeroExit,
            Outcome::InvalidModule { .. } => OutcomeKind::InvalidModule,
            Outcome::ModuleTooLarge { .. } => OutcomeKind::ModuleTooLarge,
            Outcome::MissingExport { .. } => OutcomeKind::MissingExport,
            Outcome::ImportNotAllowed { .. } => OutcomeKind::ImportNotAllowed,
            Outcome::InputUnavailable { .. } => OutcomeKind::InputUnavailable,
            Outcome::BadEnvelope { .. } => OutcomeKind::BadEnvelope,
            Outcome::PolicyViolation { .. } => OutcomeKind::PolicyViolation,
            Outcome::HostError { .. } => OutcomeKind::HostError,
        }
    }

    /// Whether the job succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// This outcome with every text field cut so that its texts together stay within
    /// [`MAX_REASON_BYTES`]. Call it wherever an outcome is stored or logged: it is
    /// cheap when nothing needs cutting.
    pub fn capped(mut self) -> Outcome {
        match &mut self {
            Outcome::Success
            | Outcome::FuelExhausted
            | Outcome::Timeout
            | Outcome::OutputLimit { .. }
            | Outcome::NonZeroExit { .. }
            | Outcome::ModuleTooLarge { .. } => {}
            Outcome::MemoryLimit { detail: text }
            | Outcome::InvalidModule { reason: text }
            | Outcome::InputUnavailable { reason: text }
            | Outcome::BadEnvelope { reason: text }
            | Outcome::PolicyViolation { reason: text }
            | Outcome::HostError { reason: text } => cap_in_place(text, MAX_REASON_BYTES),
            Outcome::Trap { code, message } => cap_pair(code, message),
            Outcome::MissingExport { name, reason } => cap_pair(name, reason),
            Outcome::ImportNotAllowed { module, name } => cap_pair(module, name),
        }
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind();
        match self {
            Outcome::Success | Outcome::FuelExhausted | Outcome::Timeout => write!(f, "{kind}"),
            Outcome::MemoryLimit { detail } => write!(f, "{kind}: {detail}"),
            Outcome::OutputLimit { limit } => write!(f, "{kind}: more than {limit} bytes"),
            Outcome::Trap { code, message } => write!(f, "{kind}: {code}: {message}"),
            Outcome::NonZeroExit { code } => write!(f, "{kind}: exit code {code}"),
            Outcome::InvalidModule { reason }
            | Outcome::InputUnavailable { reason }
            | Outcome::BadEnvelope { reason }
            | Outcome::PolicyViolation { reason }
            | Outcome::HostError { reason } => write!(f, "{kind}: {reason}"),
            Outcome::ModuleTooLarge { size, limit } => {
                write!(f, "{kind}: {size} bytes over the {limit}-byte cap")
            }
            Outcome::MissingExport { name, reason } => write!(f, "{kind}: `{name}`: {reason}"),
            Outcome::ImportNotAllowed { module, name } => {
                write!(f, "{kind}: `{module}::{name}` is not an allowed import")
            }
        }
    }
}

/// What a run measured, whatever its outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    /// Fuel consumed; `None` when the job ran without fuel metering.
    pub fuel_used: Option<u64>,
    /// Wall time from instantiation to the end of the run, in microseconds.
    pub wall_time_us: u64,
    /// Largest linear memory the guest reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Output bytes written (up to the cap).
    pub output_bytes: u64,
    /// Input bytes the guest consumed.
    pub input_bytes: u64,
}

/// Where a finished job's output is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOutput {
    /// Written straight to the job's own sink (embedded mode: the output file).
    #[default]
    Written,
    /// Small output, carried in the result (encoded as bytes, as
    /// [`crate::JobInput::Inline`] is).
    Inline(#[serde(with = "crate::codec::byte_field")] Vec<u8>),
    /// A chunked blob in the queue's store.
    Blob {
        /// The blob's id in the store.
        id: String,
        /// Its length in bytes.
        len: u64,
    },
}

/// A finished job: its outcome, what the run measured and the start of its stderr.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job this is the result of.
    pub job_id: JobId,
    /// How the job ended.
    pub outcome: Outcome,
    /// What the run measured.
    pub stats: RunStats,
    /// The guest's stderr, cut at the worker's stderr cap (encoded as bytes).
    #[serde(with = "crate::codec::byte_field")]
    pub stderr: Vec<u8>,
    /// Whether stderr was longer than what was kept.
    pub stderr_truncated: bool,
    /// Which attempt this was (1 for the first run).
    pub attempt: u32,
    /// Where the output is.
    pub output: JobOutput,
}

impl JobResult {
    /// This result with its outcome capped ([`Outcome::capped`]) and its stderr cut to
    /// [`MAX_STDERR_BYTES`] (marking it truncated). Call it where results are stored.
    pub fn capped(mut self) -> Self {
        self.outcome = self.outcome.capped();
        if self.stderr.len() > MAX_STDERR_BYTES {
            self.stderr.truncate(MAX_STDERR_BYTES);
            self.stderr_truncated = true;
        }
        self
    }

    /// A result for a job that never reached the sandbox (bad envelope, missing input).
    pub fn without_run(job_id: JobId, outcome: Outcome, attempt: u32) -> Self {
        JobResult {
            job_id,
            outcome,
            stats: RunStats::default(),
            stderr: Vec::new(),
            stderr_truncated: false,
            attempt,
            output: JobOutput::Written,
        }
    }
}

/// One line of a batch's `report.jsonl` (and of `sluice-worker run --report`): the
/// stable, flat shape later tooling reads. Fields are only ever added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportLine {
    /// The input's name (embedded mode: the file name).
    pub input: String,
    /// The job's id.
    pub job_id: JobId,
    /// The outcome kind, snake_case.
    pub outcome: OutcomeKind,
    /// The outcome with its details, for a person.
    pub detail: String,
    /// Fuel consumed; null when the job ran without metering.
    pub fuel_used: Option<u64>,
    /// Wall time in milliseconds.
    pub wall_time_ms: f64,
    /// Output bytes written.
    pub output_bytes: u64,
    /// Input bytes read.
    pub input_bytes: u64,
    /// The guest's largest linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// Which attempt this was (1 for the first run).
    pub attempt: u32,
    /// The guest's exit code when it exited non-zero.
    pub exit_code: Option<i32>,
    /// The start of the guest's stderr (lossy UTF-8).
    pub stderr: String,
}

impl ReportLine {
    /// The report line for `result`, naming its input `input`. Its texts are capped
    /// (detail at [`MAX_REASON_BYTES`], stderr at [`MAX_STDERR_BYTES`]) whatever the
    /// result holds.
    pub fn new(input: impl Into<String>, result: &JobResult) -> Self {
        let stderr = &result.stderr[..result.stderr.len().min(MAX_STDERR_BYTES)];
        ReportLine {
            input: input.into(),
            job_id: result.job_id,
            outcome: result.outcome.kind(),
            detail: cut(
                &result.outcome.clone().capped().to_string(),
                MAX_REASON_BYTES,
            ),
            fuel_used: result.stats.fuel_used,
            wall_time_ms: result.stats.wall_time_us as f64 / 1000.0,
            output_bytes: result.stats.output_bytes,
            input_bytes: result.stats.input_bytes,
            peak_memory_bytes: result.stats.peak_memory_bytes,
            attempt: result.attempt,
            exit_code: match result.outcome {
                Outcome::NonZeroExit { code } => Some(code),
                _ => None,
            },
            // Lossy decoding can triple invalid bytes: cut again after it.
            stderr: cut(&String::from_utf8_lossy(stderr), MAX_STDERR_BYTES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_short_text_and_marks_long_text_within_the_limit() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(5000);
        let out = cut(&long, MAX_REASON_BYTES);
        assert!(out.len() <= MAX_REASON_BYTES, "{}", out.len());
        assert!(out.ends_with(" bytes cut)"), "{out}");
        let kept = out.split('…').next().unwrap();
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(cut(&long, 3), "é");
    }

    #[test]
    fn capped_outcomes_and_results_stay_within_their_limits() {
        let huge = "n".repeat(95_000);
        let outcome = Outcome::ImportNotAllowed {
            module: huge.clone(),
            name: huge.clone(),
        }
        .capped();
        let Outcome::ImportNotAllowed { module, name } = &outcome else {
            unreachable!()
        };
        assert!(module.len() + name.len() <= MAX_REASON_BYTES);
        for outcome in [
            Outcome::HostError {
                reason: huge.clone(),
            },
            Outcome::Trap {
                code: huge.clone(),
                message: huge.clone(),
            },
            Outcome::MissingExport {
                name: huge.clone(),
                reason: huge.clone(),
            },
            Outcome::MemoryLimit {
                detail: huge.clone(),
            },
        ] {
            let text = outcome.capped().to_string();
            assert!(text.len() <= MAX_REASON_BYTES + 64, "{}", text.len());
            assert!(text.contains("bytes cut)"));
        }
        assert_eq!(Outcome::Timeout.capped(), Outcome::Timeout);

        let mut result = JobResult::without_run(
            JobId(uuid::Uuid::nil()),
            Outcome::HostError { reason: huge },
            1,
        );
        result.stderr = vec![0xff; 3 * MAX_STDERR_BYTES];
        let line = ReportLine::new("x", &result);
        assert!(line.detail.len() <= MAX_REASON_BYTES);
        assert!(line.stderr.len() <= MAX_STDERR_BYTES);
        let result = result.capped();
        assert_eq!(result.stderr.len(), MAX_STDERR_BYTES);
        assert!(result.stderr_truncated);
    }

    #[test]
    fn kinds_parse_from_their_names_and_unknown_names_are_refused() {
        for kind in OutcomeKind::ALL {
            assert_eq!(kind.as_str().parse::<OutcomeKind>(), Ok(kind));
        }
        let e = "Success".parse::<OutcomeKind>().unwrap_err();
        assert_eq!(e.to_string(), "unknown outcome kind \"Success\"");
        assert!("".parse::<OutcomeKind>().is_err());
        let long = "x".repeat(10_000).parse::<OutcomeKind>().unwrap_err();
        assert!(long.to_string().len() < 200, "{long}");
    }

    #[test]
    fn kind_names_are_the_same_in_json_and_on_stderr() {
        for kind in OutcomeKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
