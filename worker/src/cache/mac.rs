//! Integrity of cached artifacts: HMAC-SHA256 over the artifact key and bytes.
//!
//! Loading compiled code is `unsafe`: whoever can write the cache (the L2 directory,
//! the queue's Redis) could otherwise make a worker run native code of their choosing.
//! Every artifact a worker writes to L2 or L3 carries a [`Tag`] made with the
//! [`CacheSecret`]; an artifact is deserialized only through a [`Verified`] value, and
//! only [`Mac::verify`] (here) makes one, after a constant-time comparison of the tag.
//!
//! The secret comes from configuration (`SLUICE_CACHE_KEY` or `--cache-key-file`) and
//! is what workers of a fleet share; it is required for L3. Without one a worker
//! generates a random secret per process, so its own L2 files (written by it, checked
//! by it) are the only artifacts it will load.

use std::fmt;
use std::io::Read;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::key::ArtifactKey;

/// Shortest secret accepted: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

/// The secret integrity tags are made with. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheSecret(Vec<u8>);

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Too short to resist guessing.
    #[error("the cache key must be at least {MIN_SECRET_BYTES} bytes, got {0}")]
    TooShort(usize),
}

impl CacheSecret {
    /// A configured secret (surrounding whitespace, such as a file's final newline,
    /// is not part of it).
    pub fn new(bytes: &[u8]) -> Result<Self, SecretError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(trimmed.len()));
        }
        Ok(CacheSecret(trimmed.to_vec()))
    }

    /// A random secret for this process only (256 bits from the operating system's
    /// generator, through two version-4 UUIDs' 122 random bits each).
    pub fn random() -> Self {
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        CacheSecret(bytes)
    }
}

impl fmt::Debug for CacheSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheSecret(<redacted>)")
    }
}

/// An HMAC-SHA256 tag over an artifact key and bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tag(pub [u8; 32]);

pub use crate::compile::artifact::{Artifact, Verified};

/// The tag did not match: the artifact is not what this fleet wrote under that key.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The tag does not match the key and bytes.
    #[error("artifact {0}: integrity tag mismatch")]
    Mismatch(ArtifactKey),
    /// The artifact file could not be read.
    #[error("artifact {key}: reading it: {error}")]
    Read {
        /// The artifact.
        key: ArtifactKey,
        /// What the read said.
        error: std::io::Error,
    },
}

/// Makes and checks tags with one secret.
#[derive(Clone, Debug)]
pub struct Mac {
    secret: CacheSecret,
}

impl Mac {
    /// Tags made and checked with `secret`.
    pub fn new(secret: CacheSecret) -> Self {
        Mac { secret }
    }

    fn start(&self, key: &ArtifactKey) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret.0).expect("HMAC takes keys of any size");
        mac.update(&key.to_bytes());
        mac
    }

    /// A public name for the secret (16 hex digits of an HMAC of a fixed text): L2
    /// files carry it, so files tagged with another secret (a restarted worker's
    /// random one) are never taken for this one's and are evicted as the oldest.
    pub fn key_id(&self) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret.0).expect("HMAC takes keys of any size");
        mac.update(b"sluice-cache-key-id");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// The tag of `bytes` stored under `key`.
    pub fn sign(&self, key: &ArtifactKey, bytes: &[u8]) -> Tag {
        let mut mac = self.start(key);
        mac.update(bytes);
        Tag(mac.finalize().into_bytes().into())
    }

    /// Checks `tag` over `key` and `artifact` (in constant time); a file is read whole
    /// through its descriptor.
    pub fn verify<'a>(
        &self,
        key: &ArtifactKey,
        artifact: Artifact<'a>,
        tag: &Tag,
    ) -> Result<Verified<'a>, VerifyError> {
        let mut mac = self.start(key);
        let artifact = match artifact {
            Artifact::Bytes(bytes) => {
                mac.update(bytes);
                Artifact::Bytes(bytes)
            }
            Artifact::File(mut file) => {
                let mut buf = vec![0; 1 << 16];
                loop {
                    let n = file
                        .read(&mut buf)
                        .map_err(|error| VerifyError::Read { key: *key, error })?;
                    if n == 0 {
                        break;
                    }
                    mac.update(&buf[..n]);
                }
                Artifact::File(file)
            }
        };
        mac.verify_slice(&tag.0)
            .map_err(|_| VerifyError::Mismatch(*key))?;
        Ok(Verified::after_mac_check(artifact))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::EngineFingerprint;
    use sluice_shared::ModuleHash;

    fn key(n: u8) -> ArtifactKey {
        ArtifactKey {
            module: ModuleHash([n; 32]),
            engine: EngineFingerprint([7; 32]),
        }
    }

    #[test]
    fn a_tag_checks_its_key_and_bytes_and_nothing_else() {
        let mac = Mac::new(CacheSecret::new(b"0123456789abcdef\n").unwrap());
        let tag = mac.sign(&key(1), b"artifact");
        assert!(
            mac.verify(&key(1), Artifact::Bytes(b"artifact"), &tag)
                .is_ok()
        );
        assert!(matches!(
            mac.verify(&key(1), Artifact::Bytes(b"artifacT"), &tag),
            Err(VerifyError::Mismatch(_))
        ));
        assert!(
            mac.verify(&key(2), Artifact::Bytes(b"artifact"), &tag)
                .is_err()
        );
        let other = Mac::new(CacheSecret::random());
        assert!(
            other
                .verify(&key(1), Artifact::Bytes(b"artifact"), &tag)
                .is_err()
        );
    }

    #[test]
    fn a_file_is_checked_through_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"artifact").unwrap();
        let mac = Mac::new(CacheSecret::random());
        let tag = mac.sign(&key(1), b"artifact");
        let file = std::fs::File::open(&path).unwrap();
        assert!(mac.verify(&key(1), Artifact::File(file), &tag).is_ok());
        std::fs::write(&path, b"artifacX").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(mac.verify(&key(1), Artifact::File(file), &tag).is_err());
    }

    #[test]
    fn short_secrets_are_refused_and_never_shown() {
        assert!(matches!(
            CacheSecret::new(b"short\n"),
            Err(SecretError::TooShort(5))
        ));
        let secret = CacheSecret::new(b"0123456789abcdef").unwrap();
        assert!(!format!("{secret:?}").contains("0123"));
    }
}
