//! The byte fields' encoding ([`super::byte_field`]) against the derive it replaced: a
//! private copy of the old shapes (plain `Vec<u8>` fields, postcard's per-element
//! sequence) must give the same bytes, both ways, in postcard and in JSON, so queued
//! jobs, stored results and mixed-release fleets read across the change.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::*;
use crate::job::{BlobId, ModuleName, ProgramName};
use crate::outcome::{Outcome, RunStats};

/// [`JobInput`] before its inline bytes were a byte field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum OldJobInput {
    Inline(Vec<u8>),
    /// The path went as `serialize_bytes` and came back as a `Vec<u8>`: in postcard
    /// and JSON alike, the same bytes as a plain `Vec<u8>`.
    File {
        path: Vec<u8>,
        len: u64,
    },
    Blob {
        id: BlobId,
        len: u64,
    },
    Stdin,
}

/// [`Job`] before the change (the version-3 body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OldJob {
    id: JobId,
    module: ModuleHash,
    input: OldJobInput,
    entry: EntryPoint,
    args: Vec<String>,
    env: Vec<(String, String)>,
    limits: Limits,
    tenant: TenantId,
    attempt: u32,
    label: String,
    program: Option<ProgramName>,
}

/// [`Job`] before the change as a version-2 body (no program name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OldJobV2 {
    id: JobId,
    module: ModuleHash,
    input: OldJobInput,
    entry: EntryPoint,
    args: Vec<String>,
    env: Vec<(String, String)>,
    limits: Limits,
    tenant: TenantId,
    attempt: u32,
    label: String,
}

/// [`JobOutput`] before the change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum OldJobOutput {
    Written,
    Inline(Vec<u8>),
    Blob { id: String, len: u64 },
}

/// [`JobResult`] before the change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OldJobResult {
    job_id: JobId,
    outcome: Outcome,
    stats: RunStats,
    stderr: Vec<u8>,
    stderr_truncated: bool,
    attempt: u32,
    output: OldJobOutput,
}

/// Payload sizes around postcard's varint steps: empty, one byte, the last 1-byte
/// length (127), the first 2-byte one (128), 300, a 4 KiB job, the first 3-byte one.
const SIZES: [usize; 7] = [0, 1, 127, 128, 300, 4096, 16_384];

/// `n` bytes of every value, so no byte is special-cased by accident.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn job(input: JobInput, program: Option<ProgramName>) -> Job {
    Job {
        id: JobId(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_0001,
        )),
        module: ModuleHash::of(b"m"),
        input,
        entry: EntryPoint::Raw {
            export: "process".into(),
        },
        args: vec!["a".into(), "bé".into()],
        env: vec![("K".into(), "V".into())],
        limits: Limits {
            fuel: Some(1000),
            ..Limits::default()
        },
        tenant: TenantId("acme".into()),
        attempt: 2,
        label: "in.txt".into(),
        program,
    }
}

fn old_input(input: &JobInput) -> OldJobInput {
    use std::os::unix::ffi::OsStrExt;
    match input {
        JobInput::Inline(bytes) => OldJobInput::Inline(bytes.clone()),
        JobInput::File { path, len } => OldJobInput::File {
            path: path.as_os_str().as_bytes().to_vec(),
            len: *len,
        },
        JobInput::Blob { id, len } => OldJobInput::Blob {
            id: id.clone(),
            len: *len,
        },
        JobInput::Stdin => OldJobInput::Stdin,
    }
}

fn old_job(job: &Job) -> OldJob {
    OldJob {
        id: job.id,
        module: job.module,
        input: old_input(&job.input),
        entry: job.entry.clone(),
        args: job.args.clone(),
        env: job.env.clone(),
        limits: job.limits.clone(),
        tenant: job.tenant.clone(),
        attempt: job.attempt,
        label: job.label.clone(),
        program: job.program.clone(),
    }
}

fn old_job_v2(job: &Job) -> OldJobV2 {
    let old = old_job(job);
    OldJobV2 {
        id: old.id,
        module: old.module,
        input: old.input,
        entry: old.entry,
        args: old.args,
        env: old.env,
        limits: old.limits,
        tenant: old.tenant,
        attempt: old.attempt,
        label: old.label,
    }
}

fn result(stderr: Vec<u8>, output: JobOutput) -> JobResult {
    JobResult {
        job_id: JobId(uuid::Uuid::from_u128(7)),
        outcome: Outcome::Trap {
            code: "unreachable_code_reached".into(),
            message: "wasm trap".into(),
        },
        stats: RunStats {
            fuel_used: Some(5),
            wall_time_us: 120,
            peak_memory_bytes: 65_536,
            output_bytes: 300,
            input_bytes: 4096,
        },
        stderr,
        stderr_truncated: true,
        attempt: 1,
        output,
    }
}

fn old_result(result: &JobResult) -> OldJobResult {
    OldJobResult {
        job_id: result.job_id,
        outcome: result.outcome.clone(),
        stats: result.stats.clone(),
        stderr: result.stderr.clone(),
        stderr_truncated: result.stderr_truncated,
        attempt: result.attempt,
        output: match &result.output {
            JobOutput::Written => OldJobOutput::Written,
            JobOutput::Inline(bytes) => OldJobOutput::Inline(bytes.clone()),
            JobOutput::Blob { id, len } => OldJobOutput::Blob {
                id: id.clone(),
                len: *len,
            },
        },
    }
}

/// `new` and `old` encode to the same bytes in postcard and in JSON, and each reads
/// the other's bytes back as itself.
fn same_wire<New, Old>(new: &New, old: &Old)
where
    New: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    Old: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let new_bytes = postcard::to_stdvec(new).unwrap();
    let old_bytes = postcard::to_stdvec(old).unwrap();
    assert_eq!(new_bytes, old_bytes, "postcard bytes differ for {new:?}");
    assert_eq!(&postcard::from_bytes::<New>(&old_bytes).unwrap(), new);
    assert_eq!(&postcard::from_bytes::<Old>(&new_bytes).unwrap(), old);
    let new_json = serde_json::to_string(new).unwrap();
    let old_json = serde_json::to_string(old).unwrap();
    assert_eq!(new_json, old_json, "JSON differs");
    assert_eq!(&serde_json::from_str::<New>(&old_json).unwrap(), new);
    assert_eq!(&serde_json::from_str::<Old>(&new_json).unwrap(), old);
}

#[test]
fn inline_inputs_encode_as_before_in_both_envelope_versions() {
    for n in SIZES {
        let bytes = payload(n);
        // Version 2 (no program name): the envelope the encoder writes is the old
        // derive's version-2 body behind the version byte.
        let v2 = job(JobInput::Inline(bytes.clone()), None);
        let mut old = vec![OLDEST_FORMAT_VERSION];
        old.extend(postcard::to_stdvec(&old_job_v2(&v2)).unwrap());
        assert_eq!(encode(&v2), old, "version 2, {n} bytes");
        assert_eq!(decode(&old).unwrap(), v2);
        let body: OldJobV2 = postcard::from_bytes(&encode(&v2)[1..]).unwrap();
        assert_eq!(body, old_job_v2(&v2));
        // Version 3 (a program name).
        let name = ProgramName::from("upper".parse::<ModuleName>().unwrap());
        let v3 = job(JobInput::Inline(bytes), Some(name));
        let mut old = vec![FORMAT_VERSION];
        old.extend(postcard::to_stdvec(&old_job(&v3)).unwrap());
        assert_eq!(encode(&v3), old, "version 3, {n} bytes");
        assert_eq!(decode(&old).unwrap(), v3);
        same_wire(&v3, &old_job(&v3));
    }
}

#[test]
fn every_input_kind_encodes_as_before() {
    use std::os::unix::ffi::OsStringExt;
    for input in [
        JobInput::File {
            path: std::ffi::OsString::from_vec(b"in/\xff\x00x".to_vec()).into(),
            len: 300,
        },
        JobInput::File {
            path: std::ffi::OsString::from_vec(payload(300)).into(),
            len: 0,
        },
        JobInput::Blob {
            id: BlobId::new("b1"),
            len: 1 << 40,
        },
        JobInput::Stdin,
    ] {
        same_wire(&input, &old_input(&input));
        let job = job(input, None);
        same_wire(&job, &old_job(&job));
    }
}

#[test]
fn results_with_output_and_stderr_encode_as_before() {
    for n in SIZES {
        for output in [
            JobOutput::Inline(payload(n)),
            JobOutput::Written,
            JobOutput::Blob {
                id: "o1".into(),
                len: n as u64,
            },
        ] {
            let result = result(payload(n / 2 + n % 3), output);
            let old = old_result(&result);
            let mut stored = vec![RESULT_FORMAT_VERSION];
            stored.extend(postcard::to_stdvec(&old).unwrap());
            assert_eq!(encode_result(&result), stored, "{n} bytes");
            assert_eq!(decode_result(&stored).unwrap(), result);
            same_wire(&result, &old);
        }
    }
}

/// Postcard's varint for 2^62: a length no buffer could be allocated for (a decoder
/// that reserved it up front would abort), read on any 64-bit target.
const VARINT_2_POW_62: [u8; 9] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];

/// Ten bytes that all say "more follows": past the longest varint a `u64` has.
const VARINT_OVERFLOW: [u8; 10] = [0xff; 10];

/// A version-2 envelope up to its inline input's length, then `length` and 16 bytes.
fn forged_envelope(length: &[u8]) -> Vec<u8> {
    let before = job(JobInput::Stdin, None);
    let mut forged = vec![OLDEST_FORMAT_VERSION];
    forged.extend(postcard::to_stdvec(&(before.id, before.module)).unwrap());
    forged.push(0); // JobInput::Inline
    forged.extend(length);
    forged.extend(payload(16));
    forged
}

/// A stored result up to its stderr's length (the fields before it, as postcard writes
/// a struct: in order), then `length` and 16 bytes.
fn forged_result(length: &[u8]) -> Vec<u8> {
    let before = result(Vec::new(), JobOutput::Written);
    let mut forged = vec![RESULT_FORMAT_VERSION];
    forged.extend(postcard::to_stdvec(&(before.job_id, before.outcome, before.stats)).unwrap());
    forged.extend(length);
    forged.extend(payload(16));
    forged
}

#[test]
fn a_byte_field_longer_than_its_envelope_is_malformed_not_an_allocation() {
    // The forgeries are built right: with the true length, each is how a real
    // envelope or result with those 16 bytes begins; so the refusals below are the
    // length's doing.
    let real = encode(&job(JobInput::Inline(payload(16)), None));
    assert!(real.starts_with(&forged_envelope(&[16])));
    let real = encode_result(&result(payload(16), JobOutput::Written));
    assert!(real.starts_with(&forged_result(&[16])));
    // An inline input or a stderr that claims 2^32 or 2^62 bytes over the 16 that
    // follow: refused by what is there, never allocated (the test would abort if it
    // were).
    let huge: [&[u8]; 2] = [&[0x80, 0x80, 0x80, 0x80, 0x10], &VARINT_2_POW_62];
    for length in huge {
        assert!(
            matches!(
                decode(&forged_envelope(length)),
                Err(DecodeError::Malformed(_))
            ),
            "input length {length:x?}"
        );
        assert!(
            matches!(
                decode_result(&forged_result(length)),
                Err(DecodeError::Malformed(_))
            ),
            "stderr length {length:x?}"
        );
    }
    // A length whose varint never ends within a u64: malformed, not wrapped around.
    assert!(matches!(
        decode(&forged_envelope(&VARINT_OVERFLOW)),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_result(&forged_result(&VARINT_OVERFLOW)),
        Err(DecodeError::Malformed(_))
    ));
    // Every truncation of a valid envelope with an inline input is refused too.
    let bytes = encode(&job(JobInput::Inline(payload(16)), None));
    for cut in 1..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}
