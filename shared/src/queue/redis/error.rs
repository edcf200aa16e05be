//! The transport failure every role's error carries, and how Redis's errors become it.
//!
//! Each role has its own error enum saying what went wrong in its terms
//! ([`super::TenantError::NotFound`], [`super::BlobError::NotFound`], …); what they share
//! is [`StoreError`]: Redis unreachable, a key holding something this build did not
//! write there, or a reply this build does not understand.

use redis::RedisError;

use crate::queue::QueueError;

/// Redis could not be used for what was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or answered with an error; the operation may be retried.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// A key holds something this build did not write there (named in the message);
    /// retrying does not help until an operator repairs the key.
    #[error("corrupt Redis contents: {0}")]
    Corrupt(String),
    /// Redis (or a script) answered with something this build does not understand.
    #[error("unexpected Redis reply: {0}")]
    Reply(String),
}

impl StoreError {
    /// Whether Redis says the consumer group (or its stream) is gone.
    pub fn is_nogroup(&self) -> bool {
        matches!(self, StoreError::Unavailable(m) if m.contains("NOGROUP"))
    }
}

impl From<StoreError> for QueueError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => QueueError::Unavailable(m),
            StoreError::Corrupt(what) => {
                QueueError::Protocol(format!("corrupt Redis contents: {what}"))
            }
            StoreError::Reply(m) => QueueError::Protocol(m),
        }
    }
}

/// A failed command. A script's `CORRUPT` reply (a key of the queue holds something
/// foreign; the script changed nothing) names the key and is [`StoreError::Corrupt`].
pub(crate) fn unavailable(e: RedisError) -> StoreError {
    if e.code() == Some("CORRUPT") {
        return corrupt(e.detail().unwrap_or_default());
    }
    StoreError::Unavailable(e.to_string())
}

/// A key of the queue holds something this build did not write there.
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// A reply this build does not understand.
pub(crate) fn bad_reply(what: impl Into<String>) -> StoreError {
    StoreError::Reply(what.into())
}

/// A failed command on `key`, naming the key.
pub(crate) fn on_key(key: &str) -> impl Fn(RedisError) -> StoreError + '_ {
    move |e| {
        if e.code() == Some("WRONGTYPE") {
            corrupt(&format!("{key} holds a value of the wrong type"))
        } else {
            match unavailable(e) {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!("{key}: {m}")),
                other => other,
            }
        }
    }
}

/// Whether Redis says the consumer group (or its stream) is gone, whether the command
/// ran alone or inside a script.
pub(crate) fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}
