//! A secret from the configuration (push token, BMC and meter passwords, API
//! keys): a string that never prints. Its `Debug` and `Display` say
//! `<redacted>`, it is not serialisable, and [`Secret::describe`] is how
//! `check-config` of both binaries shows one. Reading the file it comes from
//! is the binaries' business (this crate does no I/O).

use std::fmt;

/// What a secret prints as, everywhere.
pub const REDACTED: &str = "<redacted>";

/// A secret string: only [`Secret::expose`] gives it out, for the one place that sends it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How `check-config` shows it: `<redacted>, 12 bytes, from token_file /etc/x`.
    pub fn describe(&self, source: &str) -> String {
        format!("{REDACTED}, {} bytes, from {source}", self.0.len())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2-token");
        for shown in [format!("{s:?}"), format!("{s}"), format!("{:?}", Some(&s)), s.describe("token_file /x")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.describe("token_file /x"), "<redacted>, 13 bytes, from token_file /x");
        assert_eq!(s.expose(), "hunter2-token");
    }
}
