//! Fields of the server's own resources read the same way wherever they
//! appear: a secret-capable field (a literal, or a vault reference in
//! `_<key>`, never both) and an outbound URL.

use serde_json::{Map, Value};

use crate::secret_hash;

/// A value that may be written literally or as a vault secret reference.
#[derive(Clone)]
pub enum SecretSlot {
    Literal(std::sync::Arc<secrecy::SecretSlice<u8>>),
    /// The name of a secret in the vault config, resolved at each use.
    Vault(String),
}

impl std::fmt::Debug for SecretSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSlot::Literal(_) => f.write_str("Literal([REDACTED])"),
            SecretSlot::Vault(name) => write!(f, "Vault({name:?})"),
        }
    }
}

/// The `active` flag of a server resource: true unless it says false.
pub fn active(body: &Value) -> Result<bool, String> {
    match body.get("active") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err("active must be true or false".into()),
    }
}

/// An absolute `http` or `https` URL.
pub fn http_url(text: &str, at: &str) -> Result<String, String> {
    // The text is not echoed: a mistyped URL may still carry a password.
    let parsed =
        reqwest::Url::parse(text).map_err(|e| format!("{at} is not an absolute URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{at} must be an http or https URL with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{at} must not carry credentials; keep them in the resource's secret fields"
        ));
    }
    Ok(text.to_owned())
}

/// A secret-capable field: its literal value, or the name in `_<key>`.
pub fn slot(
    fields: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<SecretSlot>, String> {
    let element = fields.get(&format!("_{key}"));
    match (fields.get(key), secret_hash::referenced_name(element)) {
        (Some(Value::String(_)), Some(_)) => Err(format!(
            "{at} has both a literal value and a secret reference; keep one of them"
        )),
        (Some(Value::String(value)), None) if !value.is_empty() => Ok(Some(SecretSlot::Literal(
            std::sync::Arc::new(value.as_bytes().to_vec().into()),
        ))),
        (Some(Value::Null) | None, Some(name)) => Ok(Some(SecretSlot::Vault(name.to_owned()))),
        (Some(Value::Null) | None, None) => Ok(None),
        _ => Err(format!(
            "{at} must be a non-empty string or a secret reference in _{key}"
        )),
    }
}
