//! The key and value rules of the original system's client library.
//!
//! The C library ([`crate::ffi`]) refuses, before anything is sent, what the
//! original refused, with the original's messages; its test programs depend
//! on it. The rules are stricter than the server's own limits (which only
//! bound the lengths and refuse the empty key), so Rust callers that want the
//! same contract call [`check_key`] and [`check_value`] themselves.
//!
//! - a key is 1 to [`MAX_KEY_BYTES`] bytes of printable ASCII (32 to 126)
//!   without `[` or `]`;
//! - a value is 1 to [`MAX_VALUE_BYTES`] bytes of ASCII letters, digits,
//!   whitespace (space, `\t`, `\n`, `\x0c`, `\r`), `.`, `,`, `_` and `-`.

/// Longest key, in bytes: the server's default, as in the original.
pub const MAX_KEY_BYTES: usize = protocol::limits::DEFAULT_MAX_KEY_BYTES;
/// Longest value, in bytes: the server's default, as in the original.
pub const MAX_VALUE_BYTES: usize = protocol::limits::DEFAULT_MAX_VALUE_BYTES;

/// Why a key or value is refused. The messages are the original's, word for word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// The key breaks the key rule.
    #[error("Invalid key: Keys must be printable ASCII (without '[' or ']') and ≤ 128 bytes")]
    Key,
    /// The value breaks the value rule.
    #[error("Invalid value: Values must be printable ASCII and ≤ 2048 bytes")]
    Value,
}

/// Checks a key: 1 to 128 bytes, each printable ASCII (32 to 126) other than `[` and `]`.
pub fn check_key(key: impl AsRef<[u8]>) -> Result<(), InvalidInput> {
    let key = key.as_ref();
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .iter()
            .all(|&b| (b' '..=b'~').contains(&b) && b != b'[' && b != b']');
    if valid {
        Ok(())
    } else {
        Err(InvalidInput::Key)
    }
}

/// Checks a value: 1 to 2048 bytes, each an ASCII letter, digit or whitespace,
/// or one of `.`, `,`, `_`, `-`.
pub fn check_value(value: impl AsRef<[u8]>) -> Result<(), InvalidInput> {
    let value = value.as_ref();
    let valid = !value.is_empty() && value.len() <= MAX_VALUE_BYTES && value.iter().all(|&b| value_byte(b));
    if valid {
        Ok(())
    } else {
        Err(InvalidInput::Value)
    }
}

/// The bytes a value may hold. Whitespace is `u8::is_ascii_whitespace` (space,
/// tab, line feed, form feed, carriage return), the same set as `\s` in the
/// original's Go regular expressions.
fn value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b.is_ascii_whitespace() || matches!(b, b'.' | b',' | b'_' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(check_key("TestKey"), Ok(()));
        assert_eq!(check_key("a"), Ok(()));
        assert_eq!(check_key("k".repeat(MAX_KEY_BYTES)), Ok(()));
        // Every printable character but the brackets, the space included.
        let printable: Vec<u8> = (32u8..=126).filter(|b| *b != b'[' && *b != b']').collect();
        for chunk in printable.chunks(MAX_KEY_BYTES) {
            assert_eq!(check_key(chunk), Ok(()), "{:?}", String::from_utf8_lossy(chunk));
        }
        assert_eq!(check_key(" {}~!@#$%^&*()"), Ok(()));

        assert_eq!(check_key(""), Err(InvalidInput::Key));
        assert_eq!(check_key("k".repeat(MAX_KEY_BYTES + 1)), Err(InvalidInput::Key));
        assert_eq!(check_key("Invalid[Key]"), Err(InvalidInput::Key));
        assert_eq!(check_key("a]"), Err(InvalidInput::Key));
        assert_eq!(check_key("tab\there"), Err(InvalidInput::Key));
        assert_eq!(check_key("new\nline"), Err(InvalidInput::Key));
        assert_eq!(check_key("del\x7f"), Err(InvalidInput::Key));
        assert_eq!(check_key("nul\0"), Err(InvalidInput::Key));
        assert_eq!(check_key("é"), Err(InvalidInput::Key));
        assert_eq!(check_key([0xffu8, b'a']), Err(InvalidInput::Key));
    }

    #[test]
    fn values() {
        assert_eq!(check_value("TestValue"), Ok(()));
        assert_eq!(
            check_value("Hello, world. snake_case and kebab-case 0123456789"),
            Ok(())
        );
        assert_eq!(check_value(" \t\n\x0c\r"), Ok(()));
        assert_eq!(check_value("v".repeat(MAX_VALUE_BYTES)), Ok(()));

        assert_eq!(check_value(""), Err(InvalidInput::Value));
        assert_eq!(check_value("v".repeat(MAX_VALUE_BYTES + 1)), Err(InvalidInput::Value));
        for bad in [
            "Invalid@Value!",
            "a/b",
            "x:y",
            "[v]",
            "semi;colon",
            "q?",
            "tab\x0bvertical",
            "é",
            "nul\0",
        ] {
            assert_eq!(check_value(bad), Err(InvalidInput::Value), "{bad:?}");
        }
        // Exactly the allowed punctuation, nothing else printable.
        let allowed: Vec<u8> = (32u8..=126).filter(|b| value_byte(*b)).collect();
        let punctuation: String = allowed
            .iter()
            .filter(|b| !b.is_ascii_alphanumeric())
            .map(|&b| char::from(b))
            .collect();
        assert_eq!(punctuation, " ,-._");
    }

    #[test]
    fn messages_are_the_originals() {
        assert_eq!(
            InvalidInput::Key.to_string(),
            "Invalid key: Keys must be printable ASCII (without '[' or ']') and ≤ 128 bytes"
        );
        assert_eq!(
            InvalidInput::Value.to_string(),
            "Invalid value: Values must be printable ASCII and ≤ 2048 bytes"
        );
    }
}
