//! PEM keys and certificates from resources are read with limits before any
//! parser sees them: a bounded size, and a bounded nesting depth of their DER.
//! The key parsers below jsonwebtoken descend into nested DER by recursion,
//! so a block of a few kilobytes of nested SEQUENCEs could otherwise exhaust
//! a thread's stack, and a very large RSA key would make signing slow.

/// The most bytes of PEM text a key or certificate field may hold: room for
/// an 8192-bit RSA private key (about 6.4 KB) or a short chain.
pub const MAX_PEM_BYTES: usize = 16 * 1024;
/// The deepest nesting real keys and certificates use is well under this.
const MAX_DEPTH: usize = 16;

/// The PEM blocks of `text`, each checked; errors say what to fix.
pub fn blocks(text: &str) -> Result<Vec<pem::Pem>, String> {
    if text.len() > MAX_PEM_BYTES {
        return Err(format!("is longer than {MAX_PEM_BYTES} bytes"));
    }
    let blocks = pem::parse_many(text).map_err(|_| "is not valid PEM".to_owned())?;
    if blocks.is_empty() {
        return Err("holds no PEM block".into());
    }
    for block in &blocks {
        if !der_depth_within(block.contents(), MAX_DEPTH) {
            return Err("holds DER that is malformed or nested too deeply".into());
        }
    }
    Ok(blocks)
}

/// Walks DER (X.690 §8.1) without recursion: true when every element's
/// header is well formed, lengths stay inside their parent, and constructed
/// elements nest at most `max` deep.
fn der_depth_within(der: &[u8], max: usize) -> bool {
    // The end offsets of the constructed elements we are inside.
    let mut ends: Vec<usize> = Vec::new();
    let mut at = 0;
    while at < der.len() {
        while ends.last().is_some_and(|end| at >= *end) {
            ends.pop();
        }
        let tag = der[at];
        if tag & 0x1f == 0x1f {
            // High tag numbers appear in no key or certificate structure.
            return false;
        }
        let Some(&first) = der.get(at + 1) else {
            return false;
        };
        let (length, header) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let count = (first & 0x7f) as usize;
            if count == 0 || count > 4 {
                return false;
            }
            let Some(bytes) = der.get(at + 2..at + 2 + count) else {
                return false;
            };
            (
                bytes.iter().fold(0usize, |n, b| (n << 8) | *b as usize),
                2 + count,
            )
        };
        let Some(end) = at.checked_add(header).and_then(|s| s.checked_add(length)) else {
            return false;
        };
        let limit = ends.last().copied().unwrap_or(der.len());
        if end > limit {
            return false;
        }
        if tag & 0x20 != 0 {
            ends.push(end);
            if ends.len() > max {
                return false;
            }
            at += header;
        } else {
            at = end;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Vec<u8> {
        let mut der = vec![0x05, 0x00];
        for _ in 0..levels {
            let mut outer = vec![0x30];
            let n = der.len();
            if n < 0x80 {
                outer.push(n as u8);
            } else {
                outer.extend([0x82, (n >> 8) as u8, n as u8]);
            }
            outer.extend(der);
            der = outer;
        }
        der
    }

    #[test]
    fn nesting_is_bounded_and_lengths_must_fit() {
        assert!(der_depth_within(&nested(5), MAX_DEPTH));
        assert!(!der_depth_within(&nested(5000), MAX_DEPTH));
        // A length running past its parent, a truncated header, a high tag.
        assert!(!der_depth_within(
            &[0x30, 0x03, 0x04, 0x05, 0x00],
            MAX_DEPTH
        ));
        assert!(!der_depth_within(&[0x30], MAX_DEPTH));
        assert!(!der_depth_within(&[0x1f, 0x00], MAX_DEPTH));
        let text = pem::encode(&pem::Pem::new("PRIVATE KEY", nested(100)));
        assert!(blocks(&text).unwrap_err().contains("nested"));
        assert!(blocks(&"x".repeat(MAX_PEM_BYTES + 1))
            .unwrap_err()
            .contains("longer"));
    }
}
