//! The wire format: one format-version byte, then the postcard encoding; job
//! envelopes and stored results each have their own version.
//!
//! The version byte lets a fleet run mixed releases: a worker that meets an envelope
//! from a newer scheduler refuses it with [`DecodeError::UnknownVersion`] (and the job
//! is dead-lettered with that reason) instead of misreading it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::job::Job;
use crate::outcome::JobResult;

/// The job envelope's format version this build writes and reads.
///
/// - 1: input references were prefixed strings (`blob:ID`, `file://PATH`, `stdin:`).
/// - 2: input references are a typed [`crate::JobInput`] (inline, file, blob, stdin).
///   A version-1 envelope decodes to [`DecodeError::UnknownVersion`] and is
///   dead-lettered as `bad_envelope`, as any unknown version is.
pub const FORMAT_VERSION: u8 = 2;

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
        "unknown envelope format version {found} (this build reads jobs of version {FORMAT_VERSION} and results of version {RESULT_FORMAT_VERSION})"
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

fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Serializing our own plain-data types into a Vec cannot fail: postcard only
    // errors on unsupported serde features (none used) or a full fixed buffer.
    out.extend(postcard::to_stdvec(value).expect("postcard encodes plain data into a Vec"));
    out
}

fn decode_versioned<T: DeserializeOwned>(expected: u8, bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != expected {
        return Err(DecodeError::UnknownVersion { found: version });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a job as an envelope.
pub fn encode(job: &Job) -> Vec<u8> {
    encode_versioned(FORMAT_VERSION, job)
}

/// Decodes a job envelope.
pub fn decode(bytes: &[u8]) -> Result<Job, DecodeError> {
    decode_versioned(FORMAT_VERSION, bytes)
}

/// Encodes a job's result as it is stored.
pub fn encode_result(result: &JobResult) -> Vec<u8> {
    encode_versioned(RESULT_FORMAT_VERSION, result)
}

/// Decodes a stored result.
pub fn decode_result(bytes: &[u8]) -> Result<JobResult, DecodeError> {
    decode_versioned(RESULT_FORMAT_VERSION, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{BlobId, EntryPoint, JobId, JobInput, Limits, ModuleHash, TenantId};
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
        )
            .prop_map(
                |(hash, input, entry, args, env, limits, (tenant, attempt, label, id))| Job {
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
