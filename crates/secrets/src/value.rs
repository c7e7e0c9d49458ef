//! `SecretValue`, the only type that holds secret bytes: redacted in `Debug`, no `Display`,
//! no `Serialize`, wiped on drop. Also the normalisation and character rules of
//! docs/external-secrets.md ("Reading, caching and rotation") and the fixed-length digests
//! used for constant-time comparison.

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::error::SecretError;

/// A secret value as read from its file, after normalisation.
///
/// Cloning is cheap and does not copy the bytes (they sit behind an `Arc`); the bytes are
/// zeroed when the last clone is dropped. There is deliberately no `Display` and no
/// `Serialize`; `Debug` shows the name and `[REDACTED]`.
#[derive(Clone)]
pub struct SecretValue {
    name: Arc<str>,
    bytes: Arc<SecretSlice<u8>>,
}

impl SecretValue {
    /// Wraps already-normalised bytes. Crate-private so that every value in circulation went
    /// through the file rules of docs/external-secrets.md, "Reading, caching and rotation".
    pub(crate) fn new(name: Arc<str>, bytes: Box<[u8]>) -> Self {
        Self {
            name,
            bytes: Arc::new(SecretSlice::from(bytes)),
        }
    }

    /// The name of the secret this value belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Length in bytes (safe to show: it is what the status reports as `size`).
    pub fn len(&self) -> usize {
        self.bytes.expose_secret().len()
    }

    /// Always false for values produced by this crate (empty files are an error), but
    /// provided for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes, for opaque uses: HMAC keys, PEM keys and certificates, JAAS configs.
    /// Multi-line values are fine here (docs/external-secrets.md, "Reading, caching and
    /// rotation").
    pub fn expose_bytes(&self) -> &[u8] {
        self.bytes.expose_secret()
    }

    /// The value as UTF-8 text (PEM, JAAS configs, `Authorization` header values).
    pub fn expose_utf8(&self) -> Result<&str, SecretError> {
        std::str::from_utf8(self.expose_bytes()).map_err(|_| SecretError::InvalidCharacters {
            name: self.name.to_string(),
            requirement: "is not valid UTF-8 text",
        })
    }

    /// The value as an OAuth client secret: every byte must be VSCHAR, printable ASCII
    /// 0x20-0x7E (RFC 6749 appendix A.2, `client-secret = *VSCHAR`). This rejects inner
    /// CR/LF, tabs and non-ASCII, which can never be part of a valid client secret.
    pub fn expose_client_secret(&self) -> Result<&str, SecretError> {
        let bytes = self.expose_bytes();
        if !is_vschar(bytes) {
            return Err(invalid_client_secret(&self.name));
        }
        // VSCHAR is a subset of ASCII, so this cannot fail; map anyway rather than unwrap.
        std::str::from_utf8(bytes).map_err(|_| invalid_client_secret(&self.name))
    }

    /// Whether the value may be used as an OAuth client secret (see
    /// [`expose_client_secret`](Self::expose_client_secret)).
    pub fn is_valid_client_secret(&self) -> bool {
        is_vschar(self.expose_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("value", &format_args!("[REDACTED]"))
            .finish()
    }
}

pub(crate) fn invalid_client_secret(name: &str) -> SecretError {
    SecretError::InvalidCharacters {
        name: name.to_string(),
        requirement: "is not a valid OAuth client secret: every byte must be printable ASCII \
                      0x20-0x7E (RFC 6749 appendix A, VSCHAR)",
    }
}

/// Normalisation (docs/external-secrets.md, "Reading, caching and rotation"): remove exactly
/// one trailing `\r\n` or `\n` (files made with `echo`), keep every other byte as it is.
pub(crate) fn strip_one_trailing_newline(bytes: &[u8]) -> &[u8] {
    if let Some(rest) = bytes.strip_suffix(b"\r\n") {
        rest
    } else if let Some(rest) = bytes.strip_suffix(b"\n") {
        rest
    } else {
        bytes
    }
}

/// RFC 6749 appendix A: VSCHAR = %x20-7E.
pub(crate) fn is_vschar(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// SHA-256 of a value: fixed length, so comparing two of them in constant time reveals nothing
/// about the lengths of the inputs (docs/external-secrets.md, "At use"; `subtle`'s slice
/// `ct_eq` returns early on a length mismatch, which is why raw slices are never compared).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Digest(Zeroizing<[u8; 32]>);

impl Digest {
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&Sha256::digest(bytes));
        Self(out)
    }

    pub(crate) fn ct_eq(&self, other: &Self) -> Choice {
        self.0.as_slice().ct_eq(other.0.as_slice())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An unkeyed digest of a low-entropy secret can be brute-forced: never show it.
        f.write_str("Digest([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> SecretValue {
        SecretValue::new(Arc::from("s"), bytes.to_vec().into_boxed_slice())
    }

    #[test]
    fn strips_exactly_one_trailing_newline() {
        assert_eq!(strip_one_trailing_newline(b"abc\n"), b"abc");
        assert_eq!(strip_one_trailing_newline(b"abc\r\n"), b"abc");
        assert_eq!(strip_one_trailing_newline(b"abc\n\n"), b"abc\n");
        assert_eq!(strip_one_trailing_newline(b"abc\r\n\r\n"), b"abc\r\n");
        assert_eq!(strip_one_trailing_newline(b"abc\r"), b"abc\r");
        assert_eq!(strip_one_trailing_newline(b"a\nb"), b"a\nb");
        assert_eq!(strip_one_trailing_newline(b" abc "), b" abc ");
    }

    #[test]
    fn client_secret_accessor_accepts_only_vschar() {
        assert_eq!(value(b"a b~!").expose_client_secret().unwrap(), "a b~!");
        for bad in [
            &b"a\nb"[..],
            b"a\tb",
            b"a\rb",
            "é".as_bytes(),
            b"a\x7fb",
            b"\x00",
        ] {
            let err = value(bad).expose_client_secret().unwrap_err();
            assert_eq!(err.reason(), "invalid_characters");
            assert!(!value(bad).is_valid_client_secret());
        }
        // Multi-line text is still fine for opaque and text uses.
        let pem = value(b"-----BEGIN-----\nabc\n-----END-----");
        assert_eq!(pem.expose_bytes(), b"-----BEGIN-----\nabc\n-----END-----");
        assert!(pem.expose_utf8().is_ok());
        assert_eq!(
            value(&[0xff, 0xfe]).expose_utf8().unwrap_err().reason(),
            "invalid_characters"
        );
    }

    #[test]
    fn debug_is_redacted() {
        let v = value(b"hunter2-very-secret");
        let shown = format!("{v:?} {v:#?}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let d = format!("{:?}", Digest::of(b"hunter2"));
        assert_eq!(d, "Digest([REDACTED])");
    }

    #[test]
    fn digests_compare_by_content() {
        assert!(bool::from(Digest::of(b"abc").ct_eq(&Digest::of(b"abc"))));
        assert!(!bool::from(Digest::of(b"abc").ct_eq(&Digest::of(b"abcd"))));
        assert!(!bool::from(Digest::of(b"").ct_eq(&Digest::of(b"abc"))));
    }
}
