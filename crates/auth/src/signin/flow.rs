//! The two ends of a sign-in that pass through the browser: the
//! application's authorization request (RFC 6749 §4.1.1, PKCE RFC 7636),
//! checked before the user is sent anywhere, and the state of the sign-in
//! kept in a cookie fhirbox signs (HMAC-SHA256 with the token signing key),
//! so any instance can finish what another began.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::codes::is_pkce_text;
use crate::clients::ClientRecord;

/// How long a sign-in may take at the provider, in seconds.
pub const FLOW_TTL: u64 = 600;
/// The cookie of a sign-in is this prefix and its `state`.
pub const COOKIE_PREFIX: &str = "fhirbox_signin_";
/// Bounds on what an application may pass through.
const MAX_STATE: usize = 512;
const MAX_SCOPE: usize = 1024;

/// An authorization request that passed every check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approved {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub code_challenge: Option<String>,
    /// The application's `nonce`, for its ID token.
    #[serde(default)]
    pub nonce: Option<String>,
    /// The client's `default_identity_provider`.
    #[serde(skip)]
    pub identity_provider: Option<String>,
    /// The providers the client's users may sign in with.
    #[serde(skip)]
    pub identity_providers: Vec<String>,
}

/// Why an authorization request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// The client or its redirect URI cannot be trusted: the user is told,
    /// and sent nowhere (RFC 6749 §4.1.2.1).
    Page(String),
    /// Sent back to the application's redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl AuthorizeError {
    /// The URL the user agent goes to, for `Redirect`.
    pub fn location(&self) -> Option<String> {
        match self {
            AuthorizeError::Page(_) => None,
            AuthorizeError::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => Some(with_query(
                redirect_uri,
                &[
                    ("error", Some(error)),
                    ("error_description", Some(description.as_str())),
                    ("state", state.as_deref()),
                ],
            )),
        }
    }
}

/// `base` with `pairs` added to its query (the ones that are `Some`).
pub fn with_query(base: &str, pairs: &[(&str, Option<&str>)]) -> String {
    match reqwest::Url::parse(base) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (name, value) in pairs {
                    if let Some(value) = value {
                        query.append_pair(name, value);
                    }
                }
            }
            url.to_string()
        }
        Err(_) => base.to_owned(),
    }
}

/// Checks an application's authorization request against its Client.
/// Until the client and its redirect URI are known good, every problem is
/// a `Page`: a bad request never sends the user to a URL it named.
pub fn check_authorize(
    client: Option<&ClientRecord>,
    params: &[(String, String)],
) -> Result<Approved, AuthorizeError> {
    let page = |text: &str| Err(AuthorizeError::Page(text.to_owned()));
    let mut seen = std::collections::HashSet::new();
    for (name, _) in params {
        if !seen.insert(name.as_str()) {
            // RFC 6749 §3.1: parameters must not be repeated.
            return Err(AuthorizeError::Page(format!(
                "the parameter {name} is repeated; send it once"
            )));
        }
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(client_id) = param("client_id") else {
        return page("client_id is missing");
    };
    let Some(client) = client.filter(|c| c.active) else {
        return page("client_id names no active client");
    };
    let flow = match &client.code_flow {
        Ok(Some(flow)) => flow,
        _ => return page("this client may not use the authorization code grant"),
    };
    // Exact match only (RFC 6749 §3.1.2.3; OAuth 2.0 Security BCP, RFC 9700 §4.1.3).
    if param("redirect_uri").is_some_and(|uri| uri != flow.redirect_uri) {
        return page("redirect_uri is not the one registered for this client");
    }
    let state = param("state").map(str::to_owned);
    let refuse = |error: &'static str, description: &str| {
        Err(AuthorizeError::Redirect {
            redirect_uri: flow.redirect_uri.clone(),
            state: state.clone().filter(|s| s.len() <= MAX_STATE),
            error,
            description: description.to_owned(),
        })
    };
    if state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
        return refuse("invalid_request", "state is longer than 512 characters");
    }
    match param("response_type") {
        Some("code") => {}
        None => return refuse("invalid_request", "response_type is missing"),
        Some(_) => {
            return refuse(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
    }
    let scope = param("scope").map(str::to_owned);
    let nonce = param("nonce").map(str::to_owned);
    if nonce.as_ref().is_some_and(|n| n.len() > MAX_STATE) {
        return refuse("invalid_request", "nonce is longer than 512 characters");
    }
    if scope.as_ref().is_some_and(|s| s.len() > MAX_SCOPE) {
        return refuse("invalid_scope", "scope is longer than 1024 characters");
    }
    let code_challenge = match (param("code_challenge"), param("code_challenge_method")) {
        (None, None) => None,
        (Some(challenge), Some("S256")) if is_pkce_text(challenge) => Some(challenge.to_owned()),
        (Some(_), Some("S256")) => {
            return refuse(
                "invalid_request",
                "code_challenge must be 43 to 128 characters (RFC 7636 §4.2)",
            )
        }
        (Some(_), None | Some("plain")) | (None, Some(_)) => {
            return refuse(
                "invalid_request",
                "send code_challenge with code_challenge_method=S256 (plain is not accepted)",
            )
        }
        (Some(_), Some(_)) => {
            return refuse("invalid_request", "code_challenge_method must be S256")
        }
    };
    if code_challenge.is_none() && (flow.pkce || !client.has_secret()) {
        return refuse(
            "invalid_request",
            "this client must use PKCE: send code_challenge and code_challenge_method=S256",
        );
    }
    Ok(Approved {
        client_id: client_id.to_owned(),
        redirect_uri: flow.redirect_uri.clone(),
        state,
        scope,
        code_challenge,
        nonce,
        identity_provider: flow.default_identity_provider.clone(),
        identity_providers: flow.identity_providers.clone(),
    })
}

/// A sign-in under way at a provider, carried by the browser in a cookie.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    /// The IdentityProvider it went to.
    pub idp: String,
    /// The `state` sent to the provider; the cookie is named after it.
    pub state: String,
    pub nonce: String,
    /// The PKCE verifier for the provider's token endpoint.
    pub verifier: String,
    /// fhirbox's redirect URI at the provider.
    pub callback: String,
    /// When the sign-in expires (seconds since the epoch).
    pub exp: u64,
    pub app: Approved,
}

impl Flow {
    pub fn cookie_name(&self) -> String {
        format!("{COOKIE_PREFIX}{}", self.state)
    }

    /// The cookie's value: the flow's JSON and its tag, each base64url.
    pub fn seal(&self, tag: impl Fn(&[u8]) -> [u8; 32]) -> String {
        let json = serde_json::to_vec(self).expect("a flow serializes");
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag(&json))
        )
    }

    /// The flow in a cookie, if fhirbox sealed it and it has not expired.
    pub fn open(value: &str, tag: impl Fn(&[u8]) -> [u8; 32], now: u64) -> Option<Flow> {
        use subtle::ConstantTimeEq;
        let (json, mac) = value.split_once('.')?;
        let json = URL_SAFE_NO_PAD.decode(json).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !bool::from(tag(&json).as_slice().ct_eq(&mac)) {
            return None;
        }
        let flow: Flow = serde_json::from_slice(&json).ok()?;
        (flow.exp > now).then_some(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client(extra: serde_json::Value) -> ClientRecord {
        let mut body = json!({"id": "app", "grant_types": ["authorization_code"],
            "auth": {"authorization_code": {"redirect_uri": "https://app.example/cb"}}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        ClientRecord::from_body(&body, 1).unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn a_public_client_must_use_pkce_s256() {
        let app = client(json!({}));
        let ok = check_authorize(
            Some(&app),
            &params(&[
                ("client_id", "app"),
                ("response_type", "code"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
                ("state", "xyz"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.redirect_uri, "https://app.example/cb");
        let missing = check_authorize(
            Some(&app),
            &params(&[
                ("client_id", "app"),
                ("response_type", "code"),
                ("state", "xyz"),
            ]),
        )
        .unwrap_err();
        let location = missing.location().unwrap();
        assert!(
            location.starts_with("https://app.example/cb?error=invalid_request"),
            "{location}"
        );
        assert!(location.ends_with("state=xyz"), "{location}");
        let plain = check_authorize(
            Some(&app),
            &params(&[
                ("client_id", "app"),
                ("response_type", "code"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "plain"),
            ]),
        )
        .unwrap_err();
        assert!(matches!(
            plain,
            AuthorizeError::Redirect {
                error: "invalid_request",
                ..
            }
        ));
    }

    #[test]
    fn untrusted_redirects_are_never_followed() {
        let app = client(json!({}));
        for bad in [
            params(&[
                ("client_id", "app"),
                ("redirect_uri", "https://evil.example/cb"),
            ]),
            params(&[
                ("client_id", "app"),
                ("redirect_uri", "https://app.example/cb/"),
            ]),
            params(&[("client_id", "app"), ("client_id", "app")]),
            params(&[("redirect_uri", "https://app.example/cb")]),
        ] {
            let refused = check_authorize(Some(&app), &bad).unwrap_err();
            assert!(matches!(refused, AuthorizeError::Page(_)), "{bad:?}");
        }
        assert!(matches!(
            check_authorize(None, &params(&[("client_id", "x")])),
            Err(AuthorizeError::Page(_))
        ));
        let basic =
            ClientRecord::from_body(&json!({"id": "b", "grant_types": ["basic"]}), 1).unwrap();
        assert!(matches!(
            check_authorize(Some(&basic), &params(&[("client_id", "b")])),
            Err(AuthorizeError::Page(_))
        ));
    }

    #[test]
    fn a_sealed_flow_opens_only_untouched_and_unexpired() {
        let tag = |bytes: &[u8]| -> [u8; 32] {
            use sha2::Digest;
            sha2::Sha256::digest([b"key".as_slice(), bytes].concat()).into()
        };
        let flow = Flow {
            idp: "okta".into(),
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            callback: "https://fhirbox/auth/callback/okta".into(),
            exp: 100,
            app: Approved {
                client_id: "app".into(),
                redirect_uri: "https://app/cb".into(),
                state: None,
                scope: None,
                code_challenge: None,
                nonce: None,
                identity_provider: None,
                identity_providers: vec![],
            },
        };
        let sealed = flow.seal(tag);
        assert_eq!(Flow::open(&sealed, tag, 99), Some(flow.clone()));
        assert_eq!(Flow::open(&sealed, tag, 100), None);
        let (json, mac) = sealed.split_once('.').unwrap();
        let mut forged: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(json).unwrap()).unwrap();
        forged["app"]["redirect_uri"] = json!("https://evil/cb");
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(forged.to_string()));
        assert_eq!(Flow::open(&forged, tag, 1), None);
    }
}
