//! Every limit and input rule the wire and the nodes apply, in one place.
//!
//! - frame limits: what one frame of each kind may hold;
//! - peer-message limits: terms, indexes and snapshot sizes no honest node
//!   can send (checked by `PeerEnvelope::check_bounds`);
//! - key and value rules: what the server takes ([`check_key`],
//!   [`check_value`]) with the default lengths a cluster starts with;
//! - endpoints: the one `host:port` parser the client crate, `kvctl`, the C
//!   library and `cluster.toml` share ([`parse_endpoint`]).
//!
//! The C library adds the original client library's character rules on top
//! (`client/src/validate.rs`); they are that library's contract, not the
//! server's, so they stay there. The Redis port's framing limits belong to
//! RESP and stay beside its parser (`node/src/resp.rs`).

use crate::{ClientError, LogIndex, Term};

// ----- frames -----

/// The largest frame a handshake may use; anything longer is hostile.
pub const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;
/// The largest client frame: a 128-byte key and a 2048-byte value fit many times over,
/// while a client cannot make a node buffer more than this per connection.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Default largest peer frame. What peers send is far smaller: an append
/// batch is at most a quarter of this and never over 4 MiB, a snapshot
/// chunk 1 MiB; so each peer link buffers at most this much.
pub const DEFAULT_MAX_PEER_FRAME: usize = 16 * 1024 * 1024;

// ----- peer messages -----

/// The largest term a node takes from the network or reaches itself. 2^48
/// elections are thousands of years even at one per millisecond, so a larger
/// term is forged or corrupt; below it, `term + 1` can never overflow.
pub const MAX_TERM: Term = 1 << 48;
/// The largest log index a node takes from the network: far beyond any log
/// that fits a disk, far below where index arithmetic could overflow.
pub const MAX_LOG_INDEX: LogIndex = 1 << 56;
/// The largest piece of a snapshot in one message (leaders send
/// [`SNAPSHOT_CHUNK_BYTES`]); bounds what one message makes a follower buffer.
pub const MAX_SNAPSHOT_CHUNK: usize = 8 << 20;
/// The size of the pieces a leader streams a snapshot in.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The largest snapshot a node takes (1 TiB): larger is forged or corrupt.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

// ----- keys and values -----

/// The longest key a cluster takes unless `cluster.toml` says otherwise
/// (`max_key_bytes`): the original system's limit.
pub const DEFAULT_MAX_KEY_BYTES: usize = 128;
/// The longest value a cluster takes unless `cluster.toml` says otherwise
/// (`max_value_bytes`): the original system's limit.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 2048;

/// The server's rule for keys: not empty, at most `max_key_bytes` long.
pub fn check_key(key: &str, max_key_bytes: usize) -> Result<(), ClientError> {
    if key.is_empty() {
        return Err(ClientError::EmptyKey);
    }
    if key.len() > max_key_bytes {
        return Err(ClientError::KeyTooLarge {
            len: key.len(),
            max: max_key_bytes,
        });
    }
    Ok(())
}

/// The server's rule for values: at most `max_value_bytes` long (empty is a value).
pub fn check_value(value: &str, max_value_bytes: usize) -> Result<(), ClientError> {
    if value.len() > max_value_bytes {
        return Err(ClientError::ValueTooLarge {
            len: value.len(),
            max: max_value_bytes,
        });
    }
    Ok(())
}

/// Whether a cluster's key and value limits are usable: a key of at least one
/// byte, and the longest request still fits half a client frame (the rest is
/// the envelope and the answer's old value).
pub fn key_value_limits_fit(max_key_bytes: usize, max_value_bytes: usize) -> bool {
    max_key_bytes > 0 && max_key_bytes.saturating_add(max_value_bytes) <= MAX_CLIENT_FRAME / 2
}

// ----- endpoints -----

/// Why a `host:port` endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// There is no `:` before a port (holds the endpoint as given).
    #[error("{0:?} is not host:port")]
    NoPort(String),
    /// Nothing comes before the last `:` (holds the endpoint as given).
    #[error("{0:?} has no host")]
    NoHost(String),
    /// The host contains whitespace (holds the endpoint as given).
    #[error("{0:?} has whitespace in its host")]
    WhitespaceInHost(String),
    /// The host has a `[` or `]` but is not one non-empty bracketed address
    /// (holds the endpoint as given).
    #[error("{0:?} has a malformed bracketed host")]
    MalformedBrackets(String),
    /// The port is not a decimal number from 1 to 65535.
    #[error("{endpoint:?} has an invalid port {port:?} (1 to 65535, decimal digits only)")]
    InvalidPort {
        /// The endpoint as given.
        endpoint: String,
        /// The text after the last `:`.
        port: String,
    },
}

/// Checks one `host:port` endpoint: a host without whitespace, and a port
/// from 1 to 65535 in decimal digits (no sign, no port 0). IPv6 hosts are
/// written in brackets (`[::1]:5000`). Whether the host resolves is found out
/// by connecting. Returns the endpoint as given.
pub fn parse_endpoint(text: &str) -> Result<&str, EndpointError> {
    let owned = || text.to_string();
    let (host, port) = text.rsplit_once(':').ok_or_else(|| EndpointError::NoPort(owned()))?;
    if host.is_empty() {
        return Err(EndpointError::NoHost(owned()));
    }
    if host.chars().any(char::is_whitespace) {
        return Err(EndpointError::WhitespaceInHost(owned()));
    }
    if host.contains(['[', ']']) && !(host.starts_with('[') && host.ends_with(']') && host.len() > 2) {
        return Err(EndpointError::MalformedBrackets(owned()));
    }
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(number) if digits && number > 0 => Ok(text),
        _ => Err(EndpointError::InvalidPort {
            endpoint: owned(),
            port: port.to_string(),
        }),
    }
}

/// Parses a comma-separated list of endpoints (`host:port,host:port`):
/// entries are trimmed, empty entries skipped, each checked by [`parse_endpoint`].
pub fn parse_endpoint_list(text: &str) -> Result<Vec<String>, EndpointError> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| parse_endpoint(entry).map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for good in ["127.0.0.1:5000", "localhost:1", "[::1]:65535", "a.example:80", "h:0080"] {
            assert_eq!(parse_endpoint(good), Ok(good));
        }
        let refused = |text: &str| parse_endpoint(text).unwrap_err();
        assert_eq!(refused("localhost"), EndpointError::NoPort("localhost".into()));
        assert_eq!(refused(":5000"), EndpointError::NoHost(":5000".into()));
        assert_eq!(
            refused("local host:5000"),
            EndpointError::WhitespaceInHost("local host:5000".into())
        );
        for bad_brackets in ["[::1:5000", "::1]:5000", "[]:5000"] {
            assert_eq!(
                refused(bad_brackets),
                EndpointError::MalformedBrackets(bad_brackets.into())
            );
        }
        for bad_port in ["h:0", "h:+80", "h:-1", "h:65536", "h:", "h:8o", "h: 80"] {
            assert!(
                matches!(refused(bad_port), EndpointError::InvalidPort { .. }),
                "{bad_port:?} accepted"
            );
        }
    }

    #[test]
    fn endpoint_lists() {
        assert_eq!(
            parse_endpoint_list(" 127.0.0.1:5000, localhost:5001 ,,[::1]:5002,"),
            Ok(vec![
                "127.0.0.1:5000".into(),
                "localhost:5001".into(),
                "[::1]:5002".into()
            ])
        );
        assert_eq!(parse_endpoint_list(""), Ok(vec![]));
        assert!(parse_endpoint_list("h:1,h:0").is_err());
    }

    #[test]
    fn keys_and_values() {
        assert_eq!(check_key("k", 1), Ok(()));
        assert_eq!(check_key("", 8), Err(ClientError::EmptyKey));
        assert_eq!(check_key("kk", 1), Err(ClientError::KeyTooLarge { len: 2, max: 1 }));
        assert_eq!(check_value("", 0), Ok(()));
        assert_eq!(check_value("vv", 1), Err(ClientError::ValueTooLarge { len: 2, max: 1 }));
        assert!(key_value_limits_fit(DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_VALUE_BYTES));
        assert!(key_value_limits_fit(1, MAX_CLIENT_FRAME / 2 - 1));
        assert!(!key_value_limits_fit(1, MAX_CLIENT_FRAME / 2));
        assert!(!key_value_limits_fit(0, 1));
        assert!(!key_value_limits_fit(usize::MAX, usize::MAX));
    }
}
