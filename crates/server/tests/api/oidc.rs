//! A real OpenID provider for the tests: the npm package `oidc-provider`,
//! run by Node from `tests/oidc-provider` (installed there by
//! `scripts/test.sh`, or `npm ci --prefix crates/server/tests/oidc-provider`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// One running provider process.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
    pub port: u16,
    /// The PKCS#8 PEM of its signing key, for tokens the tests mint themselves.
    pub key_pem: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// How to start a provider.
pub struct ProviderOptions<'a> {
    pub port: u16,
    pub kid: &'a str,
    /// Access token lifetime in seconds.
    pub token_ttl: u64,
    /// How long each key-set answer is held back, in milliseconds.
    pub jwks_delay_ms: u64,
    /// fhirbox's callback URLs the sign-in clients may redirect to; none
    /// leaves the sign-in clients out.
    pub signin_redirect_uris: Vec<String>,
    /// Certificates whose public keys `signin-jwt` signs its assertions with.
    pub signin_certs: Vec<PathBuf>,
}

impl Default for ProviderOptions<'_> {
    fn default() -> Self {
        ProviderOptions {
            port: 0,
            kid: "k1",
            token_ttl: 300,
            jwks_delay_ms: 0,
            signin_redirect_uris: Vec::new(),
            signin_certs: Vec::new(),
        }
    }
}

impl OidcProvider {
    pub fn start() -> OidcProvider {
        Self::start_with(ProviderOptions::default())
    }

    pub fn start_with(options: ProviderOptions<'_>) -> OidcProvider {
        let dir = provider_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the test OpenID provider is not installed: run `npm ci --prefix {}` (scripts/test.sh does)",
            dir.display()
        );
        let scratch = tempfile::tempdir().unwrap();
        let pem_path = scratch.path().join("key.pem");
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", options.port.to_string())
            .env("KID", options.kid)
            .env("TOKEN_TTL", options.token_ttl.to_string())
            .env("JWKS_DELAY_MS", options.jwks_delay_ms.to_string())
            .env("KEY_PEM_OUT", &pem_path)
            .env(
                "SIGNIN_REDIRECT_URIS",
                options.signin_redirect_uris.join(","),
            )
            .env(
                "SIGNIN_CERTS",
                options
                    .signin_certs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(scratch.path().join("stderr")).unwrap())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with('{') {
                    let _ = tx.send(line);
                }
            }
        });
        // A generous deadline: on this shared 2-core machine a start that
        // normally takes half a second has taken over 30 s under load.
        let ready = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_else(|e| {
            let stderr = std::fs::read_to_string(scratch.path().join("stderr")).unwrap_or_default();
            panic!("the OpenID provider prints its ready line within 90 s ({e}); its stderr: {stderr}")
        });
        let ready: Value = serde_json::from_str(&ready).unwrap();
        OidcProvider {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            port: ready["port"].as_u64().unwrap() as u16,
            key_pem: std::fs::read(&pem_path).unwrap(),
            _dir: scratch,
        }
    }

    /// Chooses the account the next sign-in logs in as.
    pub async fn login_as(&self, sub: &str) {
        let response = reqwest::get(format!("{}/test/login-as?sub={sub}", self.issuer))
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// A `client_credentials` access token of client `svc` for `resource`
    /// (`urn:fhirbox:jwt` or `urn:fhirbox:opaque`) and `scope`.
    pub async fn token(&self, resource: &str, scope: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth("svc", Some("svc-secret"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "token request: {status} {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Revokes a token (RFC 7009) as client `svc`.
    pub async fn revoke(&self, token: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth("svc", Some("svc-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// Stops the process and waits for it, so its port is free again.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
