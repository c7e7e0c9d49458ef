//! The outbound HTTP calls of external tokens: key sets and RFC 7662
//! introspection. Every call is bounded in time and in the size of what it
//! reads, and its errors never carry a header value or a token.

use std::time::Duration;

use serde_json::Value;

/// The most bytes read from an issuer's answer.
const MAX_BODY: usize = 1 << 20;

/// Why a call gave no usable answer (said in logs and counted; never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    Timeout,
    Unreachable(String),
    Status(u16),
    /// An OAuth error response (RFC 6749 §5.2): the status and its `error` code.
    OAuth(u16, String),
    TooLarge,
    Invalid(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Timeout => f.write_str("no answer in time"),
            FetchError::Unreachable(e) => write!(f, "unreachable: {e}"),
            FetchError::Status(code) => write!(f, "answered HTTP {code}"),
            FetchError::OAuth(code, error) => write!(f, "answered HTTP {code}, error {error}"),
            FetchError::TooLarge => write!(f, "answer larger than {MAX_BODY} bytes"),
            FetchError::Invalid(e) => write!(f, "answer not usable: {e}"),
        }
    }
}

/// One HTTP client with a deadline for whole calls.
#[derive(Clone)]
pub struct Fetcher {
    /// `Err` when no client could be built (no TLS roots, say): every call
    /// then fails with that reason, rather than fall back to a client
    /// without these settings.
    client: Result<reqwest::Client, String>,
    timeout: Duration,
}

/// A URL as logs show it: scheme, host, port and path; no credentials, no query.
pub fn for_log(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

impl Fetcher {
    pub fn new(timeout: Duration) -> Fetcher {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // An issuer's key set or verdict comes from the URL configured,
            // never from wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fhirbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                tracing::error!(problem = %e, "no HTTP client for other issuers' key sets and introspection; their tokens cannot be checked");
                e.to_string()
            });
        Fetcher { client, timeout }
    }

    fn client(&self) -> Result<&reqwest::Client, FetchError> {
        self.client
            .as_ref()
            .map_err(|e| FetchError::Unreachable(format!("no HTTP client: {e}")))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET url`, expecting a JSON object.
    pub async fn get_json(&self, url: &str) -> Result<Value, FetchError> {
        let request = self
            .client()?
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        self.json_of(request).await
    }

    /// `GET url` with an `Authorization` value (a userinfo request), expecting a JSON object.
    pub async fn get_json_authorized(
        &self,
        url: &str,
        authorization: &str,
    ) -> Result<Value, FetchError> {
        let mut header = reqwest::header::HeaderValue::from_str(authorization).map_err(|_| {
            FetchError::Invalid("the authorization value is not a valid header value".into())
        })?;
        header.set_sensitive(true);
        let request = self
            .client()?
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::AUTHORIZATION, header);
        self.json_of(request).await
    }

    /// `POST url` with a form body and an optional `Authorization` value
    /// (RFC 7662 §2.1), expecting a JSON object.
    pub async fn post_form(
        &self,
        url: &str,
        authorization: Option<&str>,
        form: &[(&str, &str)],
    ) -> Result<Value, FetchError> {
        let mut request = self
            .client()?
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form);
        if let Some(value) = authorization {
            let mut header = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                FetchError::Invalid("the authorization value is not a valid header value".into())
            })?;
            header.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, header);
        }
        self.json_of(request).await
    }

    async fn json_of(&self, request: reqwest::RequestBuilder) -> Result<Value, FetchError> {
        let work = async {
            let mut response = request.send().await.map_err(describe)?;
            let status = response.status();
            if status == reqwest::StatusCode::BAD_REQUEST
                || status == reqwest::StatusCode::UNAUTHORIZED
            {
                return Err(oauth_error(status.as_u16(), response).await);
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(describe)? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(FetchError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            let value = fhirbox_fhir::json::from_slice_strict(&body)
                .map_err(|e| FetchError::Invalid(format!("not JSON: {e}")))?;
            if !value.is_object() {
                return Err(FetchError::Invalid("not a JSON object".into()));
            }
            Ok(value)
        };
        // The client's own timeout covers each phase; this covers the whole.
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }
}

/// The `error` code of an RFC 6749 §5.2 answer (a short token of the
/// characters the RFC allows, nothing else of the body), else the status.
async fn oauth_error(status: u16, mut response: reqwest::Response) -> FetchError {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 4096 {
            return FetchError::Status(status);
        }
    }
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    match code {
        Some(code) => FetchError::OAuth(status, code),
        None => FetchError::Status(status),
    }
}

fn describe(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout;
    }
    // Without the URL's query (reqwest adds the URL; ours never carry secrets,
    // but the message stays short) and without the source chain's details.
    let e = e.without_url();
    FetchError::Unreachable(e.to_string())
}
