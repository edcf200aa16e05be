//! Job parameters and module names from query strings.

use std::time::Duration;

use sluice_shared::parse::{LimitField, env_pair};
use sluice_shared::{EntryPoint, Limits, ModuleName};

use super::error::{ApiError, ApiResult};

/// Job parameters from the query string (`module`, `fuel`, `memory`, `timeout`,
/// `max_output`, `invoke`, and repeatable `arg` and `env=K=V`; `wait` is beside them,
/// in [`JobQuery`]).
pub(super) struct JobParams {
    pub(super) module: String,
    pub(super) requested: Limits,
    pub(super) entry: Option<EntryPoint>,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
}

/// `text` as one URL path segment: every byte but the unreserved ones (letters,
/// digits, `-._~`) percent-encoded, so a name with `?`, `#`, `%`, a space or non-ASCII
/// text names the same resource in a `Location` header (the router decodes it back).
pub(super) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A job submission's query: the job's parameters, and how long the request may wait
/// for the job to finish (`wait`, `POST /v1/jobs` only).
pub(super) struct JobQuery {
    pub(super) params: JobParams,
    pub(super) wait: Option<Duration>,
}

/// The job parameters and `wait` of a `POST /v1/jobs` query; an unknown parameter or a
/// value that does not parse is a 400 naming it.
pub(super) fn job_params(query: Option<&str>) -> ApiResult<JobQuery> {
    let mut wait = None;
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
                super::units::set_limit_text(&mut params.requested, field, &value)
                    .map_err(ApiError::bad_request)?
            }
            "invoke" => params.entry = Some(value.parse().map_err(|e| bad(&e))?),
            "arg" => params.args.push(value.into_owned()),
            "env" => params.env.push(env_pair(&value).map_err(|e| bad(&e))?),
            "wait" => wait = Some(super::units::duration_text(&value).map_err(|e| bad(&e))?),
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
    if wait.is_some_and(|w| w.is_zero()) {
        return Err(ApiError::bad_request(
            "wait: must be more than 0 (leave it out not to wait)",
        ));
    }
    Ok(JobQuery { params, wait })
}

/// Longest module name (an alias) a request may give.
pub(super) const MAX_NAME: usize = ModuleName::MAX_BYTES;

/// A module name from the query: 1-128 characters, no `/`.
pub(super) fn module_name(query: Option<&str>) -> ApiResult<Option<String>> {
    let name = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned());
    // The one module-name rule (`ModuleName`): what a job may then name, and the
    // argv[0] its guests see.
    if let Some(name) = &name
        && let Err(e) = name.parse::<ModuleName>()
    {
        return Err(ApiError::bad_request(format!(
            "name: {e} (1-128 bytes of printable characters, no whitespace, `/`, control or format characters, no leading `-`, not a module hash)"
        )));
    }
    Ok(name)
}

/// Items a list page holds when the client does not say.
pub(super) const DEFAULT_PAGE: usize = 100;

/// The longest cursor accepted (the API's own are well under it).
const MAX_CURSOR: usize = 256;

/// `?limit` and `?cursor` of a list route: the page size (1-1000, default 100; more is
/// capped at 1000) and where to resume, as the position the previous page ended at.
pub(super) struct Paging {
    pub(super) limit: usize,
    pub(super) after: Option<String>,
}

/// A cursor as answered: the position after which the next page starts, URL-safe
/// base64 so clients treat it as opaque.
pub(super) fn cursor_of(position: Option<String>) -> Option<String> {
    use base64::Engine;
    position.map(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("c1:{p}")))
}

/// `?limit` and `?cursor` from a query string; any other parameter, a limit that is
/// not a positive number, or a cursor this API did not give is a 400.
pub(super) fn paging(query: Option<&str>) -> ApiResult<Paging> {
    use base64::Engine;
    let mut paging = Paging {
        limit: DEFAULT_PAGE,
        after: None,
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "limit" => {
                let limit: u64 = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| ApiError::bad_request("limit: a positive whole number"))?;
                paging.limit = limit.min(sluice_shared::queue::redis::MAX_PAGE as u64) as usize;
            }
            "cursor" => {
                let bad = || ApiError::bad_request("cursor: not a cursor this API answered");
                if value.len() > MAX_CURSOR {
                    return Err(bad());
                }
                let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value.as_bytes())
                    .map_err(|_| bad())?;
                let text = String::from_utf8(decoded).map_err(|_| bad())?;
                let position = text.strip_prefix("c1:").ok_or_else(bad)?;
                paging.after = Some(position.to_owned());
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {:?} (limit, cursor)",
                    sluice_shared::outcome::cut(other, 64)
                )));
            }
        }
    }
    Ok(paging)
}

impl Paging {
    /// The cursor's position parsed as `T`; a position of another form is a 400 (a
    /// cursor of another list, or forged).
    pub(super) fn after_as<T: std::str::FromStr>(&self) -> ApiResult<Option<T>> {
        self.after
            .as_deref()
            .map(|p| {
                p.parse()
                    .map_err(|_| ApiError::bad_request("cursor: not a cursor of this list"))
            })
            .transpose()
    }
}

/// A list page as answered: `{"items": [...], "next_cursor": ...}`.
pub(super) fn page_json(items: Vec<serde_json::Value>, next: Option<String>) -> serde_json::Value {
    serde_json::json!({ "items": items, "next_cursor": cursor_of(next) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        let cursor = cursor_of(Some("0190a0a0-0000-7000-8000-000000000000".into())).unwrap();
        let page = paging(Some(&format!("limit=5&cursor={cursor}"))).unwrap();
        assert_eq!(page.limit, 5);
        let id: Option<sluice_shared::JobId> = page.after_as().unwrap();
        assert!(id.is_some());
        // A position of another list's form is refused by the list.
        let offset: ApiResult<Option<u64>> = page.after_as();
        assert!(offset.is_err());
        for bad in [
            "cursor=not-base64!".to_owned(),
            format!("cursor={}", "A".repeat(MAX_CURSOR + 4)),
            "cursor=bm8tcHJlZml4".to_owned(), // "no-prefix"
            "limit=0".to_owned(),
            "limit=-3".to_owned(),
            "limit=x".to_owned(),
            "page=2".to_owned(),
        ] {
            assert!(paging(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_path_segment_keeps_unreserved_bytes_and_encodes_the_rest() {
        assert_eq!(path_segment("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(path_segment("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn wait_is_a_duration_or_milliseconds_and_more_than_zero() {
        let wait = |q: &str| job_params(Some(&format!("module=m&{q}"))).map(|j| j.wait);
        assert_eq!(wait("wait=2s").ok().flatten(), Some(Duration::from_secs(2)));
        assert_eq!(
            wait("wait=250").ok().flatten(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(job_params(Some("module=m")).ok().and_then(|j| j.wait), None);
        for bad in ["wait=0", "wait=0s", "wait=soon", "wait=-1s", "wait="] {
            assert!(wait(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_limit_defaults_to_100_and_is_capped_at_1000() {
        assert_eq!(paging(None).unwrap().limit, DEFAULT_PAGE);
        assert_eq!(paging(Some("limit=1000000")).unwrap().limit, 1000);
    }
}
