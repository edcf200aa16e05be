//! Where an embedded batch puts its outputs ([`OutputFormat`], the one parser of
//! `--output-format`): one file per input (the default), or one tar archive of them
//! all, `OUT/outputs.tar`, which spares a disk file system one file create and rename
//! per job ([`super::archive`]).

use std::fmt;
use std::str::FromStr;

/// The archive an embedded batch writes with `--output-format tar`, in OUT.
pub const ARCHIVE_FILE: &str = "outputs.tar";

/// How an embedded batch writes its outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// `OUT/<input name>`, one file per successful job (the default).
    #[default]
    Files,
    /// One entry per successful job in `OUT/outputs.tar`, named as the input.
    Tar,
}

impl OutputFormat {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Files => "files",
            OutputFormat::Tar => "tar",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--output-format` value that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown output format {0:?}: expected files or tar")]
pub struct UnknownOutputFormat(String);

impl FromStr for OutputFormat {
    type Err = UnknownOutputFormat;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "files" => Ok(OutputFormat::Files),
            "tar" => Ok(OutputFormat::Tar),
            // Capped: the message repeats what was typed.
            other => Err(UnknownOutputFormat(other.chars().take(64).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_name_and_refuses_others() {
        for format in [OutputFormat::Files, OutputFormat::Tar] {
            assert_eq!(format.as_str().parse::<OutputFormat>(), Ok(format));
        }
        for bad in ["", "TAR", "zip", "files "] {
            let err = bad.parse::<OutputFormat>().unwrap_err();
            assert!(err.to_string().contains("expected files or tar"), "{err}");
        }
    }
}
