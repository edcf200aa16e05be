//! Tenants: who a job runs for, and the policy that bounds what their jobs may ask for
//! and how much of the fleet they may hold.
//!
//! A policy is enforced twice: the submitter clamps a job's requested limits to it
//! ([`TenantPolicy::clamp`]) and refuses a job or request over a quota, and the worker
//! checks the envelope against it again before running ([`TenantPolicy::check`] and
//! [`TenantPolicy::check_job`]), so a forged envelope gains nothing.
//!
//! Every field has a default (`docs/quotas.md` lists them and what a client sees on
//! hitting each), and a stored policy written before a field existed decodes with that
//! field's default.

use serde::{Deserialize, Serialize};

use crate::job::{Job, Limits};

/// What a tenant's jobs may ask for, and how much of the fleet the tenant may hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantPolicy {
    /// Largest fuel budget. `Some(n)`: every job runs metered, with at most `n` fuel
    /// (a job that asks for none gets `n`). `None`: unmetered jobs are allowed.
    pub max_fuel: Option<u64>,
    /// Largest linear memory, bytes.
    pub max_memory_bytes: u64,
    /// Longest wall-clock deadline, ms.
    pub max_timeout_ms: u64,
    /// Largest output, bytes.
    pub max_output_bytes: u64,
    /// Most jobs of this tenant running at once.
    pub max_concurrent_jobs: u32,
    /// Most jobs per second this tenant may start; `None` for no rate limit.
    pub rate_per_second: Option<f64>,
    /// Largest input of one job, bytes (an upload is counted while it streams).
    pub max_input_bytes: u64,
    /// Most arguments of one job.
    pub max_args: u32,
    /// Most environment variables of one job.
    pub max_env: u32,
    /// Most bytes of one job's arguments and environment together (every argument,
    /// key and value counted).
    pub max_args_env_bytes: u64,
    /// Most inputs in one batch request.
    pub max_batch_jobs: u32,
    /// Most bytes one batch request may enqueue: its decoded inputs plus each job's
    /// arguments and environment (they are copied into every job).
    pub max_batch_bytes: u64,
    /// Most bytes the tenant may put in Redis within one blob lifetime (a rolling
    /// window, 24 h by default): what its requests store (inputs, inline and blobs,
    /// arguments and environment) and what workers store for its jobs (outputs and
    /// results).
    pub max_stored_bytes: u64,
    /// Most modules the tenant may hold at once.
    pub max_modules: u32,
    /// Most of the tenant's jobs waiting in its backlog for admission.
    pub max_backlog_jobs: u64,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            max_fuel: None,
            max_memory_bytes: 256 << 20,
            max_timeout_ms: 60_000,
            max_output_bytes: 1 << 30,
            max_concurrent_jobs: 64,
            rate_per_second: None,
            max_input_bytes: 1 << 30,
            max_args: 256,
            max_env: 256,
            max_args_env_bytes: 64 << 10,
            max_batch_jobs: 10_000,
            max_batch_bytes: 64 << 20,
            max_stored_bytes: 4 << 30,
            max_modules: 16,
            max_backlog_jobs: 10_000,
        }
    }
}

/// A limit a job asked for beyond its tenant's policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{limit} {asked} is over the tenant's policy of {allowed}")]
pub struct PolicyViolation {
    /// The limit's name.
    pub limit: &'static str,
    /// What the job asked for.
    pub asked: String,
    /// What the policy allows.
    pub allowed: String,
}

/// A policy value that makes no sense, with the field named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy field {field}: {reason}")]
pub struct InvalidPolicy {
    /// The policy field.
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

/// The bytes a job's arguments and environment take (what `max_args_env_bytes` caps).
pub fn args_env_bytes(args: &[String], env: &[(String, String)]) -> u64 {
    let args: usize = args.iter().map(String::len).sum();
    let env: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    (args + env) as u64
}

impl TenantPolicy {
    /// Checks that every value can be enforced: a zero that would refuse everything, or
    /// a rate that is not a positive finite number (JSON has no NaN, so a NaN rate would
    /// be stored as "no limit"), is refused with the field named.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let bad = |field: &'static str, reason: &str| {
            Err(InvalidPolicy {
                field,
                reason: reason.to_owned(),
            })
        };
        if let Some(rate) = self.rate_per_second
            && !(rate.is_finite() && rate > 0.0)
        {
            return bad(
                "rate_per_second",
                &format!("must be a positive finite number of jobs per second, got {rate}"),
            );
        }
        if self.max_fuel == Some(0) {
            return bad(
                "max_fuel",
                "must be at least 1 (omit it for unmetered jobs)",
            );
        }
        let at_least_one = [
            ("max_memory_bytes", self.max_memory_bytes),
            ("max_timeout_ms", self.max_timeout_ms),
            ("max_concurrent_jobs", u64::from(self.max_concurrent_jobs)),
            ("max_batch_jobs", u64::from(self.max_batch_jobs)),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_backlog_jobs", self.max_backlog_jobs),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                return bad(field, "must be at least 1 (0 would refuse every job)");
            }
        }
        Ok(())
    }

    /// `requested` lowered to what the policy allows.
    pub fn clamp(&self, requested: &Limits) -> Limits {
        Limits {
            fuel: match (requested.fuel, self.max_fuel) {
                (Some(asked), Some(max)) => Some(asked.min(max)),
                (None, Some(max)) => Some(max),
                (asked, None) => asked,
            },
            memory_bytes: requested.memory_bytes.min(self.max_memory_bytes),
            timeout_ms: requested.timeout_ms.min(self.max_timeout_ms),
            max_output_bytes: requested.max_output_bytes.min(self.max_output_bytes),
        }
    }

    /// Whether `limits` are within the policy.
    pub fn check(&self, limits: &Limits) -> Result<(), PolicyViolation> {
        let over = |limit: &'static str, asked: String, allowed: String| {
            Err(PolicyViolation {
                limit,
                asked,
                allowed,
            })
        };
        match (limits.fuel, self.max_fuel) {
            (None, Some(max)) => return over("fuel", "unmetered".into(), max.to_string()),
            (Some(asked), Some(max)) if asked > max => {
                return over("fuel", asked.to_string(), max.to_string());
            }
            _ => {}
        }
        if limits.memory_bytes > self.max_memory_bytes {
            return over(
                "memory",
                limits.memory_bytes.to_string(),
                self.max_memory_bytes.to_string(),
            );
        }
        if limits.timeout_ms > self.max_timeout_ms {
            return over(
                "timeout_ms",
                limits.timeout_ms.to_string(),
                self.max_timeout_ms.to_string(),
            );
        }
        if limits.max_output_bytes > self.max_output_bytes {
            return over(
                "max_output",
                limits.max_output_bytes.to_string(),
                self.max_output_bytes.to_string(),
            );
        }
        Ok(())
    }

    /// Whether a whole job is within the policy: its limits ([`Self::check`]), its
    /// input size, and its arguments' and environment's counts and bytes.
    pub fn check_job(&self, job: &Job) -> Result<(), PolicyViolation> {
        self.check(&job.limits)?;
        let over = |limit: &'static str, asked: u64, allowed: u64| {
            Err(PolicyViolation {
                limit,
                asked: asked.to_string(),
                allowed: allowed.to_string(),
            })
        };
        if job.input.len() > self.max_input_bytes {
            return over("input_bytes", job.input.len(), self.max_input_bytes);
        }
        if job.args.len() as u64 > u64::from(self.max_args) {
            return over("args", job.args.len() as u64, self.max_args.into());
        }
        if job.env.len() as u64 > u64::from(self.max_env) {
            return over("env", job.env.len() as u64, self.max_env.into());
        }
        let bytes = args_env_bytes(&job.args, &job.env);
        if bytes > self.max_args_env_bytes {
            return over("args_env_bytes", bytes, self.max_args_env_bytes);
        }
        Ok(())
    }
}

/// Why a tenant name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tenant name is 1-64 of a-z, 0-9, `-` and `_`; got {0:?}")]
pub struct BadTenantName(pub String);

/// Checks a tenant name: it becomes part of Redis keys and metric-free logs, so it is
/// kept to a small, safe alphabet.
pub fn validate_name(name: &str) -> Result<(), BadTenantName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BadTenantName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TenantPolicy {
        TenantPolicy {
            max_fuel: Some(1_000),
            max_memory_bytes: 16 << 20,
            max_timeout_ms: 1_000,
            max_output_bytes: 100,
            ..TenantPolicy::default()
        }
    }

    #[test]
    fn clamped_limits_pass_the_check() {
        let asked = Limits {
            fuel: None,
            memory_bytes: 1 << 30,
            timeout_ms: 60_000,
            max_output_bytes: 1 << 20,
        };
        assert!(policy().check(&asked).is_err());
        let clamped = policy().clamp(&asked);
        assert_eq!(clamped.fuel, Some(1_000));
        assert_eq!(clamped.memory_bytes, 16 << 20);
        assert_eq!(clamped.timeout_ms, 1_000);
        assert_eq!(clamped.max_output_bytes, 100);
        assert_eq!(policy().check(&clamped), Ok(()));
        let modest = Limits {
            fuel: Some(10),
            memory_bytes: 1 << 20,
            timeout_ms: 10,
            max_output_bytes: 1,
        };
        assert_eq!(policy().clamp(&modest), modest);
    }

    #[test]
    fn each_limit_over_the_policy_is_named() {
        let ok = policy().clamp(&Limits::default());
        let cases = [
            (
                Limits {
                    fuel: Some(1_001),
                    ..ok.clone()
                },
                "fuel",
            ),
            (
                Limits {
                    fuel: None,
                    ..ok.clone()
                },
                "fuel",
            ),
            (
                Limits {
                    memory_bytes: 32 << 20,
                    ..ok.clone()
                },
                "memory",
            ),
            (
                Limits {
                    timeout_ms: 1_001,
                    ..ok.clone()
                },
                "timeout_ms",
            ),
            (
                Limits {
                    max_output_bytes: 101,
                    ..ok.clone()
                },
                "max_output",
            ),
        ];
        for (limits, name) in cases {
            assert_eq!(policy().check(&limits).unwrap_err().limit, name);
        }
    }

    #[test]
    fn a_whole_job_is_checked_for_input_args_and_env() {
        use crate::job::{JobInput, ModuleHash};
        let policy = TenantPolicy {
            max_input_bytes: 10,
            max_args: 2,
            max_env: 1,
            max_args_env_bytes: 8,
            ..TenantPolicy::default()
        };
        let ok = Job::new(ModuleHash::of(b""), JobInput::Inline(vec![0; 10]));
        assert_eq!(policy.check_job(&ok), Ok(()));
        let limit = |f: &dyn Fn(&mut Job)| {
            let mut job = ok.clone();
            f(&mut job);
            policy.check_job(&job).unwrap_err().limit
        };
        assert_eq!(
            limit(&|j| j.input = JobInput::Inline(vec![0; 11])),
            "input_bytes"
        );
        assert_eq!(
            limit(&|j| {
                j.input = JobInput::Blob {
                    id: crate::BlobId::new("x"),
                    len: 1 << 40,
                }
            }),
            "input_bytes"
        );
        assert_eq!(limit(&|j| j.args = vec!["a".into(); 3]), "args");
        assert_eq!(limit(&|j| j.env = vec![("a".into(), "b".into()); 2]), "env");
        assert_eq!(
            limit(&|j| j.args = vec!["12345".into(); 2]),
            "args_env_bytes"
        );
        assert_eq!(limit(&|j| j.limits.timeout_ms = u64::MAX), "timeout_ms");
    }

    #[test]
    fn policies_without_the_quota_fields_still_decode() {
        let old = r#"{"max_fuel":null,"max_memory_bytes":1048576,"max_timeout_ms":1000,
            "max_output_bytes":100,"max_concurrent_jobs":2,"rate_per_second":null}"#;
        let policy: TenantPolicy = serde_json::from_str(old).unwrap();
        assert_eq!(policy.max_memory_bytes, 1 << 20);
        assert_eq!(
            policy.max_input_bytes,
            TenantPolicy::default().max_input_bytes
        );
        assert_eq!(
            policy.max_backlog_jobs,
            TenantPolicy::default().max_backlog_jobs
        );
        assert_eq!(policy.validate(), Ok(()));
    }

    #[test]
    fn nonsense_policy_values_are_refused_with_the_field_named() {
        assert_eq!(TenantPolicy::default().validate(), Ok(()));
        let field = |p: TenantPolicy| p.validate().unwrap_err().field;
        for rate in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0] {
            let p = TenantPolicy {
                rate_per_second: Some(rate),
                ..TenantPolicy::default()
            };
            assert_eq!(field(p), "rate_per_second", "{rate}");
        }
        let p = TenantPolicy {
            max_concurrent_jobs: 0,
            ..TenantPolicy::default()
        };
        assert_eq!(field(p), "max_concurrent_jobs");
        let p = TenantPolicy {
            max_fuel: Some(0),
            ..TenantPolicy::default()
        };
        assert_eq!(field(p), "max_fuel");
        let p = TenantPolicy {
            max_backlog_jobs: 0,
            ..TenantPolicy::default()
        };
        assert_eq!(field(p), "max_backlog_jobs");
    }

    #[test]
    fn tenant_names_are_a_safe_alphabet() {
        assert!(validate_name("acme-corp_2").is_ok());
        for bad in ["", "Acme", "a b", "a/b", "{x}", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
