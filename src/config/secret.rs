//! A credential that must never be printed, and is wiped from memory when dropped.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

/// A password or token. `Debug` and `Display` print `***`, so a secret cannot reach a log line,
/// an error message or `check` output by accident; the only way to the bytes is [`Secret::expose`].
/// The last clone to go zeroes the bytes (a core dump or a later heap reuse does not show a
/// rotated-out token). Copies on their way through I/O buffers to TLS are not covered.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::new(Zeroizing::new(value.into())))
    }

    /// The secret itself, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_its_value() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2");
    }
}
