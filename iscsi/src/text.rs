//! The text of Login and Text PDUs (RFC 7143 6.1): `key=value` pairs, each ended by a NUL.
//! Keys are at most 63 bytes of letters, digits, `.`, `-`, `+`, `@`, `_`; values at most
//! 255 bytes unless the key allows more (binary CHAP values, SendTargets answers). Parsing
//! is bounded and refuses what a target must reject.

use thiserror::Error;

/// Longest key name.
pub const MAX_KEY: usize = 63;
/// Longest value of an ordinary key.
pub const MAX_VALUE: usize = 255;
/// Longest value of a key that carries binary data (CHAP_C, CHAP_R: 1024 bytes hex-encoded
/// is 2050 characters with the `0x` prefix).
pub const MAX_LONG_VALUE: usize = 8192;
/// Most pairs in one exchange.
pub const MAX_PAIRS: usize = 256;

/// Text that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    /// A pair without `=`.
    #[error("a text pair has no '=': {0:?}")]
    NoEquals(String),
    /// A key that is empty, too long, or has a character keys may not.
    #[error("invalid key {0:?}")]
    BadKey(String),
    /// A value longer than its key allows.
    #[error("the value of {key} is {len} bytes, more than {max}")]
    ValueTooLong {
        /// The key.
        key: String,
        /// Its value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Text that is not UTF-8 (iSCSI text is UTF-8).
    #[error("text is not UTF-8")]
    NotUtf8,
    /// More pairs than allowed.
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
    /// The same key twice in one exchange.
    #[error("key {0} is given twice")]
    Repeated(String),
}

/// Whether a key may carry a long (binary) value.
fn long_value(key: &str) -> bool {
    matches!(key, "CHAP_C" | "CHAP_R" | "CHAP_I" | "CHAP_N" | "TargetAddress" | "TargetName" | "InitiatorName")
        || key.starts_with("X-")
        || key.starts_with("X#")
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_' | b'#'))
}

/// Parses a text data segment into ordered pairs. A trailing partial pair (no NUL) is
/// refused; an empty segment is no pairs. Keys may not repeat.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let text = std::str::from_utf8(data).map_err(|_| TextError::NotUtf8)?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    let body = text.strip_suffix('\0').unwrap_or(text);
    if body.is_empty() {
        return Ok(pairs);
    }
    for item in body.split('\0') {
        if pairs.len() == MAX_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        let (k, v) = item.split_once('=').ok_or_else(|| TextError::NoEquals(item.chars().take(64).collect()))?;
        if !valid_key(k) {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        let max = if long_value(k) { MAX_LONG_VALUE } else { MAX_VALUE };
        if v.len() > max {
            return Err(TextError::ValueTooLong { key: k.to_string(), len: v.len(), max });
        }
        if pairs.iter().any(|(pk, _)| pk == k) {
            return Err(TextError::Repeated(k.to_string()));
        }
        pairs.push((k.to_string(), v.to_string()));
    }
    Ok(pairs)
}

/// Emits pairs as a text data segment.
pub fn emit(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Vec<(String, String)>, TextError> {
        parse(s.as_bytes())
    }

    #[test]
    fn pairs_parse_in_order_and_emit_back() {
        let text = "InitiatorName=iqn.2026-12.test:host\0SessionType=Normal\0AuthMethod=CHAP,None\0";
        let pairs = p(text).unwrap();
        assert_eq!(pairs[0], ("InitiatorName".into(), "iqn.2026-12.test:host".into()));
        assert_eq!(pairs[2].1, "CHAP,None");
        assert_eq!(emit(&pairs), text.as_bytes());
        assert_eq!(p("").unwrap(), vec![]);
        assert_eq!(p("A=\0").unwrap(), vec![("A".into(), String::new())]);
    }

    #[test]
    fn broken_text_is_refused_with_why() {
        assert!(matches!(p("NoEquals\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(p("=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(p("Bad Key=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(p(&format!("{}=v\0", "K".repeat(64))), Err(TextError::BadKey(_))));
        assert!(matches!(p(&format!("MaxBurstLength={}\0", "9".repeat(256))), Err(TextError::ValueTooLong { .. })));
        assert!(p(&format!("CHAP_C=0x{}\0", "ab".repeat(1024))).is_ok(), "binary CHAP values may be long");
        assert!(matches!(p("A=1\0A=2\0"), Err(TextError::Repeated(_))));
        assert!(matches!(parse(&[0xff, b'=', 0]), Err(TextError::NotUtf8)));
        let many: String = (0..=MAX_PAIRS).map(|i| format!("X-k{i}=v\0")).collect();
        assert_eq!(p(&many), Err(TextError::TooManyPairs));
    }
}
