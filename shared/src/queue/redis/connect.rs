//! Why connecting to Redis failed, told apart so a caller can act on it: a refused
//! credential or an unusable URL does not get better by retrying (a worker should stop
//! at once and say so), an unreachable server may (a worker keeps trying). Every
//! message is scrubbed of the URL's password ([`super::config::scrubbed`]).

use redis::{ErrorKind, RedisError};

use super::config::{RedisConfigError, scrubbed};
use crate::queue::QueueError;

/// Why [`RedisQueue::connect_checked`](super::RedisQueue::connect_checked) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is unusable (a queue name, a zero TTL): fix it and restart.
    #[error("Redis configuration: {0}")]
    Config(#[from] RedisConfigError),
    /// The client cannot use the URL (it does not parse, a bad database number).
    #[error("the Redis URL is not usable: {0}")]
    Url(String),
    /// Redis refused the credentials (a wrong password or user: `WRONGPASS`; none
    /// given where one is required: `NOAUTH`; an ACL user without the commands or
    /// keys the queue needs: `NOPERM`). Retrying with the same ones cannot help.
    #[error("Redis refused the credentials: {0}")]
    Auth(String),
    /// `--redis-cluster` names a server without cluster support (`cluster-enabled
    /// no`): drop the flag or point it at a cluster node.
    #[error("the Redis server is not a cluster node (--redis-cluster): {0}")]
    NotCluster(String),
    /// Redis is unreachable or failed; trying again later may work.
    #[error("Redis is unreachable: {0}")]
    Unavailable(String),
}

impl ConnectError {
    /// Whether trying again with the same settings may succeed (only an unreachable or
    /// failing server; never refused credentials, a server that is not the cluster
    /// node it was said to be, or an unusable configuration).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectError::Unavailable(_))
    }

    /// A failed step of connecting to `url`, classified, its message scrubbed of the
    /// URL's secrets.
    pub(crate) fn from_redis(error: &RedisError, url: &str) -> Self {
        let message = scrubbed(&error.to_string(), url);
        let refused = error.kind() == ErrorKind::AuthenticationFailed
            || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
        if refused {
            ConnectError::Auth(message)
        } else if error.kind() == ErrorKind::InvalidClientConfig {
            ConnectError::Url(message)
        } else {
            ConnectError::Unavailable(message)
        }
    }
}

/// For callers of [`RedisQueue::connect`](super::RedisQueue::connect): an unusable
/// configuration or URL is a protocol error, the rest leave the backend unavailable
/// (with the reason in the message).
impl From<ConnectError> for QueueError {
    fn from(error: ConnectError) -> Self {
        match error {
            ConnectError::Config(_) | ConnectError::Url(_) | ConnectError::NotCluster(_) => {
                QueueError::Protocol(error.to_string())
            }
            ConnectError::Auth(_) => QueueError::Unavailable(error.to_string()),
            // "queue backend unavailable: …" says the rest.
            ConnectError::Unavailable(reason) => QueueError::Unavailable(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_server_is_worth_retrying() {
        let url = "redis://admin:s3cret@host";
        let auth = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        let e = ConnectError::from_redis(&auth, url);
        assert!(matches!(e, ConnectError::Auth(_)), "{e}");
        assert!(!e.is_transient());
        let bad_url = RedisError::from((ErrorKind::InvalidClientConfig, "Redis URL did not parse"));
        assert!(matches!(
            ConnectError::from_redis(&bad_url, url),
            ConnectError::Url(_)
        ));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let e = ConnectError::from_redis(&io, url);
        assert!(e.is_transient(), "{e}");
        assert!(matches!(QueueError::from(e), QueueError::Unavailable(_)));
    }

    #[test]
    fn a_password_the_client_quotes_is_scrubbed() {
        let url = "redis://admin:s3cret@host";
        let quoting = RedisError::from((
            ErrorKind::InvalidClientConfig,
            "bad URL",
            format!("in {url}"),
        ));
        let e = ConnectError::from_redis(&quoting, url).to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
