//! The stunnel converter: any text converts or gives an error naming the input file (and a line
//! where there is one); what it converts to is a config the loader takes, or rejects with an
//! error that names the converted file and a line, never a parse error of the converter's own
//! making.

use ectunnel::tools::stunnel;

use super::config;

pub const NAME: &str = "fuzz-stunnel.conf";
const CONVERTED: &str = "converted.toml";

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match stunnel::convert(text, NAME) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(NAME),
                "error does not name the input: {msg}"
            );
        }
        Ok(toml) => {
            if config::reads_a_device(&toml) {
                return;
            }
            if let Some(err) = config::load(&toml, CONVERTED) {
                // The converter writes TOML; the loader may refuse a value (a file that does
                // not exist, an address it cannot use) but never the syntax it was given.
                assert!(
                    !SYNTAX.iter().any(|s| err.contains(s)),
                    "the converter wrote TOML the loader cannot parse: {err}\n---\n{toml}"
                );
            }
        }
    }
}

/// toml's words for text that is not TOML at all, or a key ectunnel does not know.
const SYNTAX: &[&str] = &[
    "unknown field",
    "duplicate key",
    "unclosed",
    "invalid string",
    "invalid escape",
    "invalid unquoted key",
    "invalid table header",
    "expected newline",
];
