//! Tenants: who a job runs for, and the policy that bounds what their jobs may ask for.
//!
//! A policy is enforced twice: the submitter clamps a job's requested limits to it
//! ([`TenantPolicy::clamp`]), and the worker checks the envelope against it again before
//! running ([`TenantPolicy::check`]), so a forged envelope gains nothing.

use serde::{Deserialize, Serialize};

use crate::job::Limits;

/// What a tenant's jobs may ask for.
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
        }
    }
}

/// A limit a job asked for beyond its tenant's policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{limit} {asked} is over the tenant's policy of {allowed}")]
pub struct PolicyViolation {
    pub limit: &'static str,
    pub asked: String,
    pub allowed: String,
}

impl TenantPolicy {
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
    fn tenant_names_are_a_safe_alphabet() {
        assert!(validate_name("acme-corp_2").is_ok());
        for bad in ["", "Acme", "a b", "a/b", "{x}", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
