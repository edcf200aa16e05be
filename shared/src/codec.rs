//! The wire format: one format-version byte, then the postcard encoding; job
//! envelopes and stored results each have their own version.
//!
//! The version byte lets a fleet run mixed releases: a worker that meets an envelope
//! from a newer scheduler refuses it with [`DecodeError::UnknownVersion`] (and the job
//! is dead-lettered with that reason) instead of misreading it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::{EntryPoint, Job, JobId, JobInput, Limits, ModuleHash, TenantId};
use crate::outcome::{JobOutput, JobResult};

pub(crate) mod byte_field;

/// The job envelope's format version this build writes and reads.
///
/// - 1: input references were prefixed strings (`blob:ID`, `file://PATH`, `stdin:`).
/// - 2: input references are a typed [`crate::JobInput`] (inline, file, blob, stdin).
///   A version-1 envelope decodes to [`DecodeError::UnknownVersion`] and is
///   dead-lettered as `bad_envelope`, as any unknown version is.
/// - 3: the job carries its module's name ([`Job::program`], the guest's `argv[0]`).
///   Version-2 envelopes (queued, delayed or dead-lettered before an upgrade) still
///   decode, with no name.
pub const FORMAT_VERSION: u8 = 3;

/// The oldest envelope version this build still reads.
pub const OLDEST_FORMAT_VERSION: u8 = 2;

/// Whether this build reads envelopes of `version`. Every version it reads starts
/// with the job id (postcard's length byte 16, then the UUID's bytes), which the Redis
/// protocol reads without decoding the rest.
pub fn reads_version(version: u8) -> bool {
    (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version)
}

/// The stored result's format version. Results have their own: the envelope's bump to
/// 2 did not change [`JobResult`], so results written before it (kept for their TTL)
/// still read.
pub const RESULT_FORMAT_VERSION: u8 = 1;

/// Why bytes are not a valid envelope or result. Never a panic: queues carry untrusted
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty envelope")]
    Empty,
    /// Written by another release's format.
    #[error(
        "unknown envelope format version {found} (this build reads jobs of versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION} and results of version {RESULT_FORMAT_VERSION})"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The body does not decode as the expected type (postcard's reason).
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A whole value decoded with bytes left over.
    #[error("envelope has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Encodes `value` behind its version byte into one buffer of about `size_hint` bytes
/// (the payloads' length plus room for the rest), so a 4 KiB payload is neither grown
/// through a dozen reallocations nor copied again behind the version byte.
fn encode_versioned<T: Serialize>(version: u8, value: &T, size_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_hint.saturating_add(ENCODE_ROOM));
    out.push(version);
    // Serializing our own plain-data types into a Vec cannot fail: postcard only
    // errors on unsupported serde features (none used) or a full fixed buffer.
    postcard::to_extend(value, out).expect("postcard encodes plain data into a Vec")
}

/// Room [`encode_versioned`] reserves beyond the payloads for everything else a job or
/// result holds (ids, limits, names, stats); a larger value only grows the buffer.
const ENCODE_ROOM: usize = 256;

/// The payload bytes a job's envelope carries beside its fixed fields.
fn job_payload(job: &Job) -> usize {
    let input = match &job.input {
        JobInput::Inline(bytes) => bytes.len(),
        _ => 0,
    };
    let strings = job.args.iter().map(String::len).sum::<usize>()
        + job
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + job.label.len()
        + job.tenant.0.len();
    input + strings
}

/// The payload bytes a stored result carries beside its fixed fields.
fn result_payload(result: &JobResult) -> usize {
    let output = match &result.output {
        JobOutput::Inline(bytes) => bytes.len(),
        _ => 0,
    };
    output + result.stderr.len()
}

fn decode_versioned<T: DeserializeOwned>(expected: u8, bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != expected {
        return Err(DecodeError::UnknownVersion { found: version });
    }
    decode_body(body)
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a job as an envelope: version 2 when it carries no program name (so a
/// worker of the release before version 3 still runs it during a rolling upgrade),
/// version 3 only when it does.
pub fn encode(job: &Job) -> Vec<u8> {
    if job.program.is_some() {
        return encode_versioned(FORMAT_VERSION, job, job_payload(job));
    }
    encode_versioned(
        OLDEST_FORMAT_VERSION,
        &JobV2Ref {
            id: &job.id,
            module: &job.module,
            input: &job.input,
            entry: &job.entry,
            args: &job.args,
            env: &job.env,
            limits: &job.limits,
            tenant: &job.tenant,
            attempt: &job.attempt,
            label: &job.label,
        },
        job_payload(job),
    )
}

/// Decodes a job envelope of this version or a version-2 one (which has no module
/// name).
pub fn decode(bytes: &[u8]) -> Result<Job, DecodeError> {
    match bytes.split_first() {
        Some((&2, body)) => decode_body::<JobV2>(body).map(Job::from),
        _ => decode_versioned(FORMAT_VERSION, bytes),
    }
}

/// A version-2 job as written: the version-3 layout without [`Job::program`]
/// (postcard writes fields in order, so the old body is this struct).
#[derive(Serialize)]
struct JobV2Ref<'a> {
    id: &'a JobId,
    module: &'a ModuleHash,
    input: &'a JobInput,
    entry: &'a EntryPoint,
    args: &'a [String],
    env: &'a [(String, String)],
    limits: &'a Limits,
    tenant: &'a TenantId,
    attempt: &'a u32,
    label: &'a str,
}

/// A version-2 job as read (see [`JobV2Ref`]).
#[derive(Deserialize)]
struct JobV2 {
    id: JobId,
    module: ModuleHash,
    input: JobInput,
    entry: EntryPoint,
    args: Vec<String>,
    env: Vec<(String, String)>,
    limits: Limits,
    tenant: TenantId,
    attempt: u32,
    label: String,
}

impl From<JobV2> for Job {
    fn from(v2: JobV2) -> Self {
        Job {
            id: v2.id,
            module: v2.module,
            input: v2.input,
            entry: v2.entry,
            args: v2.args,
            env: v2.env,
            limits: v2.limits,
            tenant: v2.tenant,
            attempt: v2.attempt,
            label: v2.label,
            program: None,
        }
    }
}

/// Encodes a job's result as it is stored.
pub fn encode_result(result: &JobResult) -> Vec<u8> {
    encode_versioned(RESULT_FORMAT_VERSION, result, result_payload(result))
}

/// Decodes a stored result.
pub fn decode_result(bytes: &[u8]) -> Result<JobResult, DecodeError> {
    decode_versioned(RESULT_FORMAT_VERSION, bytes)
}

#[cfg(test)]
mod wire_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{BlobId, ModuleName, ProgramName};
    use proptest::prelude::*;

    fn arb_job() -> impl Strategy<Value = Job> {
        (
            any::<[u8; 32]>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..256).prop_map(JobInput::Inline),
                (".{0,40}", any::<u64>()).prop_map(|(id, len)| JobInput::Blob {
                    id: BlobId::new(id),
                    len
                }),
                (proptest::collection::vec(1u8.., 0..40), any::<u64>()).prop_map(|(path, len)| {
                    use std::os::unix::ffi::OsStringExt;
                    JobInput::File {
                        path: std::ffi::OsString::from_vec(path).into(),
                        len,
                    }
                }),
                Just(JobInput::Stdin),
            ],
            prop_oneof![
                Just(EntryPoint::Command),
                "[a-z_]{1,12}".prop_map(|export| EntryPoint::Raw { export })
            ],
            proptest::collection::vec(".{0,12}", 0..4),
            proptest::collection::vec(("[A-Z_]{1,8}", ".{0,12}"), 0..4),
            (
                any::<Option<u64>>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (".{0,10}", any::<u32>(), ".{0,20}", any::<u128>()),
            proptest::option::of("[a-z][a-z0-9._-]{0,20}"),
        )
            .prop_map(
                |(hash, input, entry, args, env, limits, (tenant, attempt, label, id), program)| {
                    Job {
                        id: JobId(uuid::Uuid::from_u128(id)),
                        module: ModuleHash(hash),
                        input,
                        entry,
                        args,
                        env,
                        limits: Limits {
                            fuel: limits.0,
                            memory_bytes: limits.1,
                            timeout_ms: limits.2,
                            max_output_bytes: limits.3,
                        },
                        tenant: TenantId(tenant),
                        attempt,
                        label,
                        program: program.map(|name| name.parse::<ModuleName>().unwrap().into()),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn every_job_round_trips(job in arb_job()) {
            prop_assert_eq!(decode(&encode(&job)).unwrap(), job);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(job in arb_job(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&job);
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn flipped_bytes_never_panic(job in arb_job(), at in any::<prop::sample::Index>(), xor in 1u8..) {
            let mut bytes = encode(&job);
            let at = at.index(bytes.len());
            bytes[at] ^= xor;
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(&Job::new(ModuleHash::of(b""), JobInput::Inline(vec![])));
        bytes[0] = 99;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnknownVersion { found: 99 })
        );
    }

    #[test]
    fn a_version_one_envelope_with_a_string_reference_is_refused_by_version() {
        // What a version-1 scheduler wrote for a blob input: the same job layout with
        // the input as variant 1 holding a `blob:`-prefixed string and a length.
        let mut bytes = encode(&Job::new(ModuleHash::of(b""), JobInput::Inline(vec![])));
        bytes[0] = 1;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnknownVersion { found: 1 })
        );
    }

    /// A version-2 envelope as the version-2 encoder wrote it (before `program`): a
    /// job with id 01900000-0000-7000-8000-000000000001, the empty module's hash,
    /// inline input `hi`, a command, argument `a`, env `K=V`, default limits, tenant
    /// `acme`, attempt 1, label `in.txt`.
    const V2_ENVELOPE: &str = "021001900000000070008000000000000001e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855000268690001016101014b01560080808020904e808080200461636d650106696e2e747874";

    #[test]
    fn a_version_two_envelope_still_decodes_with_no_program_name() {
        let bytes = hex::decode(V2_ENVELOPE).unwrap();
        let job = decode(&bytes).unwrap();
        assert_eq!(
            job.id,
            JobId(uuid::Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0001
            ))
        );
        assert_eq!(job.module, ModuleHash::of(b""));
        assert_eq!(job.input, JobInput::Inline(b"hi".to_vec()));
        assert_eq!(job.entry, EntryPoint::Command);
        assert_eq!(job.args, ["a"]);
        assert_eq!(job.env, [("K".to_owned(), "V".to_owned())]);
        assert_eq!(job.limits, Limits::default());
        assert_eq!(job.tenant, TenantId("acme".into()));
        assert_eq!((job.attempt, job.label.as_str()), (1, "in.txt"));
        assert_eq!(job.program, None);
        // Re-encoded (it has no name), it is the same version-2 envelope, byte for
        // byte: what a worker of the release before version 3 reads.
        assert_eq!(encode(&job), bytes);
    }

    #[test]
    fn a_job_without_a_name_encodes_as_version_two_and_with_one_as_version_three() {
        let mut job = Job::new(ModuleHash::of(b""), JobInput::Inline(b"x".to_vec()));
        let v2 = encode(&job);
        assert_eq!(v2[0], OLDEST_FORMAT_VERSION);
        assert_eq!(decode(&v2).unwrap(), job);
        job.program = Some(ProgramName::from("upper".parse::<ModuleName>().unwrap()));
        let v3 = encode(&job);
        assert_eq!(v3[0], FORMAT_VERSION);
        // The version-3 body is the version-2 body and the name.
        assert_eq!(v3[1..v2.len()], v2[1..]);
        assert_eq!(decode(&v3).unwrap(), job);
    }

    #[test]
    fn a_version_three_envelope_carries_the_name_as_given_and_refuses_an_over_long_one() {
        let mut job = Job::new(ModuleHash::of(b""), JobInput::Inline(vec![]));
        job.program = Some("upper".parse::<ModuleName>().unwrap().into());
        let bytes = encode(&job);
        assert_eq!(decode(&bytes).unwrap().program, job.program);
        // A name the rule refuses (a later, tighter rule): decoded as given, so a job
        // queued before the tightening still runs; it was checked at submit.
        let name_at = bytes.len() - "upper".len();
        let mut older_rule = bytes.clone();
        older_rule[name_at] = b'/';
        assert_eq!(
            decode(&older_rule).unwrap().program.unwrap().as_str(),
            "/pper"
        );
        // Over the length cap: malformed, not a panic.
        let mut hostile = bytes[..name_at - 1].to_vec();
        hostile.extend([0x81, 0x01]); // postcard's varint for 129
        hostile.extend([b'a'; 129]);
        assert!(matches!(decode(&hostile), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn results_keep_their_own_version_so_stored_ones_read_across_the_envelope_bump() {
        let result = crate::JobResult::without_run(JobId::new(), crate::Outcome::Success, 1);
        let bytes = encode_result(&result);
        assert_eq!(bytes[0], RESULT_FORMAT_VERSION);
        assert_eq!(RESULT_FORMAT_VERSION, 1);
        assert_eq!(decode_result(&bytes), Ok(result));
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn empty_and_trailing_bytes_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        let mut bytes = encode(&Job::new(ModuleHash::of(b""), JobInput::Inline(vec![])));
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes(1)));
    }
}
