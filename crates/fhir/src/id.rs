//! The FHIR `id` datatype rule (R4 §2.24.0.1): `[A-Za-z0-9\-\.]{1,64}`.

/// Longest id FHIR R4 allows.
pub const MAX_ID_LEN: usize = 64;

/// True when `id` satisfies the R4 `id` regex.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_of_the_r4_alphabet() {
        assert!(is_valid_id("basic"));
        assert!(is_valid_id("a-b.C9"));
        assert!(is_valid_id(&"x".repeat(64)));
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("é"));
        assert!(!is_valid_id("a b"));
    }
}
