//! Job parameters and module names from query strings.

use sluice_shared::{EntryPoint, Limits, ModuleHash, units};

use super::error::{ApiError, ApiResult};

/// Job parameters from the query string (`module`, `fuel`, `memory`, `timeout`,
/// `max_output`, `invoke`, and repeatable `arg` and `env=K=V`).
pub(super) struct JobParams {
    pub(super) module: String,
    pub(super) requested: Limits,
    pub(super) entry: Option<EntryPoint>,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
}

pub(super) fn job_params(query: Option<&str>) -> ApiResult<JobParams> {
    let mut params = JobParams {
        module: String::new(),
        requested: Limits::default(),
        entry: None,
        args: Vec::new(),
        env: Vec::new(),
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(format!("{key}: {e}"));
        match key.as_ref() {
            "module" => {
                if value.len() > 2 * MAX_NAME {
                    return Err(bad(&"longer than a module name or hash can be"));
                }
                params.module = value.into_owned()
            }
            "fuel" => params.requested.fuel = Some(value.parse().map_err(|e| bad(&e))?),
            "memory" => {
                params.requested.memory_bytes = units::parse_size(&value).map_err(|e| bad(&e))?
            }
            "timeout" => {
                let d = units::parse_duration(&value).map_err(|e| bad(&e))?;
                params.requested.timeout_ms = units::millis_at_least_one(d);
            }
            "max_output" => {
                params.requested.max_output_bytes =
                    units::parse_size(&value).map_err(|e| bad(&e))?
            }
            "invoke" => {
                if value.is_empty() || value.len() > MAX_NAME {
                    return Err(bad(&format!("an export name is 1-{MAX_NAME} bytes")));
                }
                params.entry = Some(match value.as_ref() {
                    "_start" => EntryPoint::Command,
                    other => EntryPoint::Raw {
                        export: other.to_owned(),
                    },
                })
            }
            "arg" => params.args.push(value.into_owned()),
            "env" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| ApiError::bad_request("env: expected KEY=VALUE"))?;
                params.env.push((k.to_owned(), v.to_owned()));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    if params.module.is_empty() {
        return Err(ApiError::bad_request(
            "module is required (a hash or a name)",
        ));
    }
    Ok(params)
}

/// Longest module name (an alias) or export name a request may give.
pub(super) const MAX_NAME: usize = 128;

/// A module name from the query: 1-128 characters, no `/`.
pub(super) fn module_name(query: Option<&str>) -> ApiResult<Option<String>> {
    let name = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned());
    if let Some(name) = &name
        && (name.is_empty()
            || name.len() > MAX_NAME
            || name.contains('/')
            || name.parse::<ModuleHash>().is_ok())
    {
        return Err(ApiError::bad_request(
            "name: 1-128 characters, no `/`, not a module hash",
        ));
    }
    Ok(name)
}
