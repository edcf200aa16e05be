//! An error and its causes as one line, each said once. An error type whose message
//! already ends with its source's (`cannot read module m.wasm: No such file or
//! directory`) would otherwise repeat it when the chain is printed (anyhow's `{:#}`),
//! and a wrapper that adds nothing would print the same words twice.
//!
//! ```
//! use sluice_shared::error_text::joined;
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("cannot read module m.wasm: {source}")]
//! struct ReadModule {
//!     source: std::io::Error,
//! }
//! let io = std::io::Error::from(std::io::ErrorKind::NotFound);
//! let error = ReadModule { source: io };
//! let mut chain: Vec<&(dyn std::error::Error + 'static)> = vec![&error];
//! chain.push(&error.source);
//! assert_eq!(joined(chain), "cannot read module m.wasm: entity not found");
//! ```

use std::error::Error;

/// The messages of `chain` (an error, then its causes, as `anyhow::Error::chain` or
/// repeated [`Error::source`] give them) joined by `": "`, leaving out a cause whose
/// message the one before it already holds.
pub fn joined<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in chain {
        let text = cause.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// [`joined`] over `error` and its [`Error::source`] chain.
pub fn chain_text<'a>(error: &'a (dyn Error + 'static)) -> String {
    joined(std::iter::successors(
        Some(error),
        |e: &&'a (dyn Error + 'static)| (*e).source(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{what}: {source}")]
    struct Wrapped {
        what: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("batch failed")]
    struct Outer {
        #[source]
        inner: Wrapped,
    }

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let io = || std::io::Error::other("No such file or directory (os error 2)");
        let wrapped = Wrapped {
            what: "cannot read module /m.wasm",
            source: io(),
        };
        assert_eq!(
            chain_text(&wrapped),
            "cannot read module /m.wasm: No such file or directory (os error 2)"
        );
        let outer = Outer {
            inner: Wrapped {
                what: "reading /in",
                source: io(),
            },
        };
        assert_eq!(
            chain_text(&outer),
            "batch failed: reading /in: No such file or directory (os error 2)"
        );
    }
}
