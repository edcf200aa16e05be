//! Job parameters and module names from query strings.

use sluice_shared::parse::{LimitField, env_pair, set_limit};
use sluice_shared::{EntryPoint, Limits, ModuleHash};

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
            "fuel" | "memory" | "timeout" | "max_output" => {
                let field: LimitField = key.parse().map_err(|e| bad(&e))?;
                set_limit(&mut params.requested, field, &value)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            "invoke" => params.entry = Some(value.parse().map_err(|e| bad(&e))?),
            "arg" => params.args.push(value.into_owned()),
            "env" => params.env.push(env_pair(&value).map_err(|e| bad(&e))?),
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

/// Longest module name (an alias) a request may give.
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
