//! Module names: the rule a submitter's alias must follow ([`ModuleName`], checked at
//! upload and submit) and the bounded name a job carries as its guest's `argv[0]`
//! ([`ProgramName`], only length-checked when an envelope is decoded, so a later
//! tightening of the rule never dead-letters a job already queued).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::job::ModuleHash;

/// A module's name: an alias its submitter gave it (`sluice module put --name`,
/// `PUT /v1/modules?name=`), by which jobs may name it, and the `argv[0]` its guests
/// see. 1 to [`ModuleName::MAX_BYTES`] bytes of printable, non-whitespace characters
/// (no control, format — bidi overrides, zero-width — or separator characters), no
/// `/` (the API's paths), no leading `-` (it would read as an option), and not a
/// module hash (which names a module by content).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    /// The longest name, in bytes.
    pub const MAX_BYTES: usize = 128;

    /// The name a job gave as its module: `None` for a module hash, the name
    /// otherwise, or why the text is neither.
    pub fn of_reference(text: &str) -> Result<Option<Self>, ModuleNameError> {
        if text.parse::<ModuleHash>().is_ok() {
            return Ok(None);
        }
        text.parse().map(Some)
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a module name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleNameError {
    /// No characters.
    #[error("a module name is empty")]
    Empty,
    /// Over [`ModuleName::MAX_BYTES`].
    #[error("a module name is at most {max} bytes, got {len}", max = ModuleName::MAX_BYTES)]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Holds a `/`, or a control, format, separator or whitespace character.
    #[error("a module name may not contain {0:?}")]
    BadCharacter(char),
    /// Starts with `-`.
    #[error("a module name may not start with '-'")]
    LeadingDash,
    /// Is a module hash, which names a module by content.
    #[error("a module name may not be a module hash (64 hex digits)")]
    IsHash,
}

impl FromStr for ModuleName {
    type Err = ModuleNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ModuleNameError::Empty);
        }
        if s.len() > Self::MAX_BYTES {
            return Err(ModuleNameError::TooLong { len: s.len() });
        }
        if let Some(bad) = s.chars().find(|&c| !allowed(c)) {
            return Err(ModuleNameError::BadCharacter(bad));
        }
        if s.starts_with('-') {
            return Err(ModuleNameError::LeadingDash);
        }
        if s.parse::<ModuleHash>().is_ok() {
            return Err(ModuleNameError::IsHash);
        }
        Ok(ModuleName(s.to_owned()))
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ModuleName> for String {
    fn from(name: ModuleName) -> Self {
        name.0
    }
}

/// Whether a name may hold `c`: not `/`, not a control (Cc), format (Cf) or
/// separator (Z*) character, not whitespace. Views that print names read from Redis
/// (`sluice top`) replace the characters this refuses, so no stored name can move a
/// terminal's cursor or reorder what it shows.
pub fn allowed(c: char) -> bool {
    c != '/' && !c.is_control() && !c.is_whitespace() && !is_format(c)
}

/// Unicode general category Cf (format characters: soft hyphen, bidi controls and
/// overrides, zero-width characters, the byte-order mark, tags, …), Unicode 15.1.
fn is_format(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = u32::from(c);
    CF.iter().any(|&(low, high)| (low..=high).contains(&c))
}

/// The name a job carries as its guest's `argv[0]`: a [`ModuleName`] when the job was
/// submitted (the rule is checked there), and on decoding only at most
/// [`ModuleName::MAX_BYTES`] bytes, so that a job queued under an older rule still
/// runs under a newer one (the worker passes it as given).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct ProgramName(String);

impl ProgramName {
    /// The name as carried.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<ModuleName> for ProgramName {
    fn from(name: ModuleName) -> Self {
        ProgramName(name.0)
    }
}

impl From<ProgramName> for String {
    fn from(name: ProgramName) -> Self {
        name.0
    }
}

impl fmt::Display for ProgramName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProgramName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if name.len() > ModuleName::MAX_BYTES {
            return Err(serde::de::Error::custom(ModuleNameError::TooLong {
                len: name.len(),
            }));
        }
        Ok(ProgramName(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_the_alias_rule() {
        assert_eq!("upper".parse::<ModuleName>().unwrap().as_str(), "upper");
        assert!("upper-case.v2_ü".parse::<ModuleName>().is_ok());
        assert_eq!("".parse::<ModuleName>(), Err(ModuleNameError::Empty));
        let long = "a".repeat(ModuleName::MAX_BYTES + 1);
        assert_eq!(
            long.parse::<ModuleName>(),
            Err(ModuleNameError::TooLong { len: 129 })
        );
        assert!(
            "a".repeat(ModuleName::MAX_BYTES)
                .parse::<ModuleName>()
                .is_ok()
        );
        assert_eq!(
            "a/b".parse::<ModuleName>(),
            Err(ModuleNameError::BadCharacter('/'))
        );
        assert_eq!(
            "a\u{1b}[31m".parse::<ModuleName>(),
            Err(ModuleNameError::BadCharacter('\u{1b}'))
        );
        let hash = ModuleHash::of(b"").to_hex();
        assert_eq!(hash.parse::<ModuleName>(), Err(ModuleNameError::IsHash));
        assert_eq!(ModuleName::of_reference(&hash), Ok(None));
        assert_eq!(
            ModuleName::of_reference("upper").unwrap().unwrap().as_str(),
            "upper"
        );
    }

    #[test]
    fn invisible_reordering_and_blank_characters_and_a_leading_dash_are_refused() {
        for bad in [
            '\u{202E}',  // right-to-left override
            '\u{2066}',  // left-to-right isolate
            '\u{200B}',  // zero-width space
            '\u{200D}',  // zero-width joiner
            '\u{FEFF}',  // byte-order mark
            '\u{00AD}',  // soft hyphen
            '\u{E0041}', // tag letter A
            '\u{2028}',  // line separator
            '\u{2029}',  // paragraph separator
            ' ',
            '\u{00A0}', // no-break space
            '\u{3000}', // ideographic space
            '\t',
            '\u{85}', // next line
        ] {
            let name = format!("up{bad}per");
            assert_eq!(
                name.parse::<ModuleName>(),
                Err(ModuleNameError::BadCharacter(bad)),
                "{:?}",
                bad
            );
        }
        assert_eq!(
            "-rf".parse::<ModuleName>(),
            Err(ModuleNameError::LeadingDash)
        );
        assert!("a-b".parse::<ModuleName>().is_ok());
    }

    #[test]
    fn a_carried_name_is_only_length_checked_when_decoded() {
        // A name a later rule refuses still decodes: the job was checked at submit.
        let old = ProgramName("old name".to_owned());
        let bytes = postcard::to_stdvec(&old).unwrap();
        assert_eq!(postcard::from_bytes::<ProgramName>(&bytes).unwrap(), old);
        let long = postcard::to_stdvec(&"a".repeat(ModuleName::MAX_BYTES + 1)).unwrap();
        assert!(postcard::from_bytes::<ProgramName>(&long).is_err());
    }
}
