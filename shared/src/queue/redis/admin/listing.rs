//! The operator's listing of stored modules (`sluice module ls`): every module of the
//! queue with its size and the names (an operator's aliases, tenants' aliases) that
//! point at it, read with `SCAN`, capped at [`MAX_LISTED_MODULES`].

use redis::Value;
use serde::{Deserialize, Serialize};

use super::super::error::unavailable;
use super::super::reply::count_of;
use super::{Admin, AdminError};
use crate::job::ModuleHash;

/// A stored module and the names that point at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredModule {
    /// Its content address.
    pub hash: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The names pointing at it: an operator's (`NAME`) and tenants' (`TENANT/NAME`).
    pub names: Vec<String>,
}

/// Most modules and aliases [`Admin::modules`] reads (an operator's listing, not an export).
pub const MAX_LISTED_MODULES: usize = 10_000;

impl Admin<'_> {
    /// Every stored module (up to [`MAX_LISTED_MODULES`]) with the names pointing at it,
    /// by hash; names whose module is gone are listed with size 0.
    pub async fn modules(self) -> Result<Vec<StoredModule>, AdminError> {
        let prefix = self.q.keys.prefix();
        let mut by_hash: std::collections::BTreeMap<String, StoredModule> = Default::default();
        let hashes = self.scan(&format!("{prefix}module:*")).await?;
        let hashes: Vec<String> = hashes
            .iter()
            .filter_map(|key| key.strip_prefix(&format!("{prefix}module:")))
            .filter(|rest| rest.parse::<ModuleHash>().is_ok())
            .map(str::to_owned)
            .collect();
        let mut pipe = redis::pipe();
        for hash in &hashes {
            pipe.cmd("STRLEN").arg(format!("{prefix}module:{hash}"));
        }
        let sizes: Vec<Result<Value, redis::RedisError>> = if hashes.is_empty() {
            Vec::new()
        } else {
            pipe.ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?
        };
        for (hash, size) in hashes.into_iter().zip(sizes) {
            let bytes = size.as_ref().map_or(0, count_of);
            by_hash.insert(
                hash.clone(),
                StoredModule {
                    hash,
                    bytes,
                    names: Vec::new(),
                },
            );
        }
        let aliases = self.scan(&format!("{prefix}alias:*")).await?;
        let mut pipe = redis::pipe();
        for key in &aliases {
            pipe.cmd("GET").arg(key);
        }
        let targets: Vec<Result<Option<String>, redis::RedisError>> = if aliases.is_empty() {
            Vec::new()
        } else {
            pipe.ignore_errors()
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?
        };
        for (key, target) in aliases.iter().zip(targets) {
            let (Some(name), Ok(Some(hash))) =
                (key.strip_prefix(&format!("{prefix}alias:")), target)
            else {
                continue;
            };
            by_hash
                .entry(hash.clone())
                .or_insert_with(|| StoredModule {
                    hash,
                    bytes: 0,
                    names: Vec::new(),
                })
                .names
                .push(name.to_owned());
        }
        let mut out: Vec<StoredModule> = by_hash.into_values().collect();
        for module in &mut out {
            module.names.sort();
        }
        Ok(out)
    }

    /// Keys matching `pattern` (`SCAN`), at most [`MAX_LISTED_MODULES`].
    pub(super) async fn scan(self, pattern: &str) -> Result<Vec<String>, AdminError> {
        let (mut cursor, mut out) = (0u64, Vec::new());
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut self.q.connection())
                .await
                .map_err(unavailable)?;
            out.extend(keys);
            cursor = next;
            if cursor == 0 || out.len() >= MAX_LISTED_MODULES {
                out.sort();
                out.dedup();
                out.truncate(MAX_LISTED_MODULES);
                return Ok(out);
            }
        }
    }
}
