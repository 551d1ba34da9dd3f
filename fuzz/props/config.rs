//! The config loader: any text gives a `Config` or an error whose message names the file and
//! the line, and never quotes a secret written in the file.

use ectunnel::Config;

/// What the errors call the file.
pub const NAME: &str = "fuzz.toml";

/// Errors about the file as a whole, which have no line to name.
const WHOLE_FILE: &[&str] = &["no [[listener]] defined"];

/// Values of `password = "…"` in `text` long enough (12+) that finding one in a message is no
/// coincidence.
pub fn secrets(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        rest = &rest[at + "password".len()..];
        let value = rest.trim_start_matches([' ', '\t']);
        let Some(value) = value.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start_matches([' ', '\t']);
        let Some(value) = value.strip_prefix(['"', '\'']) else {
            continue;
        };
        if let Some(end) = value.find(['"', '\'', '\n', '\\'])
            && end >= 12
        {
            out.push(&value[..end]);
        }
    }
    out
}

/// Whether `text` could make the loader read from a device, which would block or never end:
/// those are not what this property is about.
pub fn reads_a_device(text: &str) -> bool {
    ["/dev", "/proc", "/sys"].iter().any(|d| text.contains(d))
}

/// Loads `text`; returns the error message, if any, after checking it.
pub fn load(text: &str, name: &str) -> Option<String> {
    let err = Config::from_toml(text, name).err()?.to_string();
    assert!(err.starts_with(name), "error does not name the file: {err}");
    let after = &err[name.len()..];
    let line = after
        .strip_prefix(':')
        .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_digit()));
    assert!(
        line || WHOLE_FILE.iter().any(|w| err.contains(w)),
        "error names no line: {err}"
    );
    for s in secrets(text) {
        assert!(!err.contains(s), "error quotes the secret {s:?}: {err}");
    }
    Some(err)
}

/// The property for one fuzz input (as UTF-8 text; other bytes are not a config).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if reads_a_device(text) {
        return;
    }
    load(text, NAME);
}
