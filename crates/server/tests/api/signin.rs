//! Sign-in through a real OpenID provider (npm `oidc-provider`), driven
//! over HTTP as a browser would be, with the credentials fhirbox presents
//! there in vault files (docs/sign-in.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{captured_logs, Backend, TestApp};
use crate::identity_providers::key_and_certificate;
use crate::oidc::{OidcProvider, ProviderOptions};
use crate::tokens::{bearer, metric};
use crate::vault::{reference, Vault};

/// The application's registered redirect URI (nothing listens there: the
/// browser below stops when it is sent to it).
const APP_CALLBACK: &str = "http://127.0.0.1:9/app/callback";
const VERIFIER: &str = "a-verifier-of-the-application-that-is-long-enough-0123456789";

fn challenge(verifier: &str) -> String {
    fhirbox_auth::signin::codes::challenge_of(verifier)
}

/// A browser: follows redirects by hand, keeps cookies (one host, as
/// 127.0.0.1 is for both servers), and stops at the application.
struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

/// The log lines of sign-ins so far, to explain a failed assertion.
fn sign_in_logs() -> String {
    captured_logs()
        .lines()
        .filter(|l| l.contains("identity_provider") || l.contains("sign"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a sign-in ended.
#[derive(Debug)]
enum Landed {
    /// At the application's redirect URI, with its query.
    App(HashMap<String, String>),
    /// On a page of fhirbox's or the provider's (status and text).
    Page(u16, String),
}

impl Landed {
    fn code(&self) -> String {
        match self {
            Landed::App(q) if q.contains_key("code") => q["code"].clone(),
            other => panic!("no code: {other:?}\n{}", sign_in_logs()),
        }
    }

    fn error(&self) -> String {
        match self {
            Landed::App(q) => q
                .get("error")
                .cloned()
                .unwrap_or_else(|| panic!("no error: {q:?}\n{}", sign_in_logs())),
            other => panic!("not at the application: {other:?}"),
        }
    }
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    async fn step(&mut self, url: &str) -> reqwest::Response {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut request = self.http.get(url);
        if !cookie.is_empty() {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || text.contains("Max-Age=0") || text.contains("max-age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        response
    }

    /// Follows `url` until it leaves for the application, or stops on a
    /// page; `stop_before` ends the walk at the first URL starting with it
    /// (returned unvisited as a page of status 0).
    async fn walk(&mut self, url: &str, stop_before: Option<&str>) -> Landed {
        let mut url = url.to_owned();
        for _ in 0..20 {
            if let Some(prefix) = stop_before {
                if url.starts_with(prefix) {
                    return Landed::Page(0, url);
                }
            }
            if url.starts_with(APP_CALLBACK) {
                let parsed = reqwest::Url::parse(&url).unwrap();
                return Landed::App(parsed.query_pairs().into_owned().collect());
            }
            let response = self.step(&url).await;
            let status = response.status().as_u16();
            if !(300..400).contains(&status) {
                return Landed::Page(status, response.text().await.unwrap());
            }
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            url = reqwest::Url::parse(&url)
                .unwrap()
                .join(&location)
                .unwrap()
                .to_string();
        }
        panic!("more than 20 redirects");
    }
}

fn authorize_query(client: &str, state: &str) -> String {
    format!(
        "client_id={client}&response_type=code&redirect_uri={}&state={state}&code_challenge={}&code_challenge_method=S256&scope=openid",
        urlencode(APP_CALLBACK),
        challenge(VERIFIER)
    )
}

fn urlencode(text: &str) -> String {
    form_urlencoded_component(text)
}

fn form_urlencoded_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST /auth/token` with a code, as the public client `app`.
async fn exchange(app: &TestApp, code: &str, verifier: &str) -> (u16, Value) {
    let response = app
        .anon
        .post(app.url("/auth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", APP_CALLBACK),
            ("client_id", "app"),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    (status, response.json().await.unwrap())
}

/// A signed-in user's access token: sign-in at `start`, then the exchange.
async fn sign_in(app: &TestApp, start: &str) -> String {
    let landed = Browser::new().walk(&app.url(start), None).await;
    let (status, body) = exchange(app, &landed.code(), VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// One IdentityProvider at `provider` for client `client_id` there.
fn identity_provider(app: &TestApp, provider: &OidcProvider, id: &str, client: Value) -> Value {
    let mut client = client;
    client["redirect_uri"] = json!(app.url(&format!("/auth/callback/{id}")));
    json!({"resourceType": "IdentityProvider", "id": id, "type": "OIDC",
        "system": provider.issuer, "issuer": provider.issuer,
        "authorize_endpoint": format!("{}/auth", provider.issuer),
        "token_endpoint": format!("{}/token", provider.issuer),
        "userinfo_endpoint": format!("{}/me", provider.issuer),
        "jwks_uri": provider.jwks_uri(),
        "scopes": ["openid", "email", "profile"],
        "client": client})
}

struct Setup {
    vault: Vault,
    app: TestApp,
    provider: OidcProvider,
    _certs: tempfile::TempDir,
}

/// The IdentityProviders whose callbacks the provider's clients may use.
const IDPS: [&str; 5] = [
    "idp-basic",
    "idp-post",
    "idp-jwt",
    "idp-forged",
    "idp-discovered",
];

/// fhirbox with a vault (the providers' credentials, scoped to
/// IdentityProvider resources), the provider with its three sign-in
/// clients, the three IdentityProviders, and the public client `app`.
/// `provider_certs` are the certificates the provider accepts assertions
/// from; `files` the vault's initial files.
async fn setup(backend: Backend, files: &[(&str, &str)], provider_certs: &[&str]) -> Setup {
    setup_with(backend, files, provider_certs, |_| {}).await
}

/// [`setup`] with more settings.
async fn setup_with(
    backend: Backend,
    files: &[(&str, &str)],
    provider_certs: &[&str],
    adjust: impl FnOnce(&mut fhirbox_server::settings::Settings) + Send + 'static,
) -> Setup {
    let vault = Vault::new(files);
    let scope = json!([{"resource_type": "IdentityProvider"}]);
    let secrets: serde_json::Map<String, Value> = files
        .iter()
        .map(|(name, _)| {
            (
                (*name).to_owned(),
                json!({"path": vault.secret_path(name), "scope": scope}),
            )
        })
        .collect();
    vault.write_config(&json!({"secret": secrets}));
    let path = vault.config_path();
    let app = TestApp::spawn_with(backend, move |s| {
        s.vault_config = Some(path);
        s.cookie_secure = false;
        adjust(s);
    })
    .await;
    let certs = tempfile::tempdir().unwrap();
    let cert_paths = provider_certs
        .iter()
        .enumerate()
        .map(|(i, pem)| {
            let path = certs.path().join(format!("cert{i}.pem"));
            std::fs::write(&path, pem).unwrap();
            path
        })
        .collect();
    let provider = OidcProvider::start_with(ProviderOptions {
        signin_redirect_uris: IDPS
            .iter()
            .map(|idp| app.url(&format!("/auth/callback/{idp}")))
            .collect(),
        signin_certs: cert_paths,
        ..Default::default()
    });
    for (id, client) in [
        (
            "idp-basic",
            json!({"id": "signin-basic", "_secret": reference("basic-credential")}),
        ),
        (
            "idp-post",
            json!({"id": "signin-post", "_secret": reference("post-credential"),
            "token_endpoint_auth_method": "client_secret_post"}),
        ),
        (
            "idp-jwt",
            json!({"id": "signin-jwt", "auth-method": "asymmetric",
            "_private-key": reference("jwt-key"), "_certificate": reference("jwt-cert")}),
        ),
    ] {
        let r = app
            .put(
                &format!("/fhir/IdentityProvider/{id}"),
                &identity_provider(&app, &provider, id, client),
            )
            .await;
        assert!(
            r.status == 200 || r.status == 201,
            "{id}: {} {}",
            r.status,
            r.text
        );
    }
    let others: Vec<Value> = [
        "idp-post",
        "idp-jwt",
        "idp-forged",
        "idp-discovered",
        "idp-misspelled",
    ]
    .iter()
    .map(|id| json!({"reference": format!("IdentityProvider/{id}")}))
    .collect();
    let r = app
        .put(
            "/fhir/Client/app",
            &json!({"resourceType": "Client", "id": "app",
                "grant_types": ["authorization_code", "refresh_token"],
                "auth": {"authorization_code": {"redirect_uri": APP_CALLBACK, "pkce": true,
                    "default_identity_provider": {"reference": "IdentityProvider/idp-basic"},
                    "identity_providers": others}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    Setup {
        vault,
        app,
        provider,
        _certs: certs,
    }
}

/// [`setup`] with the right credentials in the vault: the provider's
/// secrets, and a key and certificate it knows.
async fn standard_setup(backend: Backend) -> Setup {
    let (key, cert) = key_and_certificate();
    setup(backend, &standard_files(&key, &cert), &[&cert]).await
}

fn standard_files<'a>(key: &'a str, cert: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("basic-credential", "basic-secret"),
        ("post-credential", "post-secret"),
        ("jwt-key", key),
        ("jwt-cert", cert),
    ]
}

backend_tests!(per_backend: users_sign_in_through_a_provider_and_read_under_their_policy);

async fn users_sign_in_through_a_provider_and_read_under_their_policy(backend: Backend) {
    // The vault and the certificates must outlive the test: bound, not dropped.
    let Setup {
        app,
        provider,
        vault: _vault,
        _certs,
    } = standard_setup(backend).await;
    let alice = fhirbox_auth::users::user_id(&provider.issuer, "alice");
    // Alice may read Patients through `app`; nobody else may.
    let r = app
        .put(
            "/fhir/AccessPolicy/alice-reads",
            &json!({"resourceType": "AccessPolicy", "id": "alice-reads", "engine": "matcho",
                "matcho": {"request-method": "get", "user": {"data": {"email": "alice@example.org"}}},
                "link": [{"reference": "Client/app"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.put_patient("p1", "Chalmers").await;

    // The default provider (client_secret_basic, secret from the vault).
    provider.login_as("alice").await;
    let token = sign_in(
        &app,
        &format!("/auth/authorize?{}", authorize_query("app", "s1")),
    )
    .await;
    assert_eq!(bearer(&app, "/fhir/Patient/p1", &token).await.status, 200);
    let r = bearer(&app, "/fhir/Patient", &token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Reading is all the policy allows.
    let write = app
        .send(
            app.fhir(
                app.anon
                    .put(app.url("/fhir/Patient/p1"))
                    .bearer_auth(&token),
                &json!({"resourceType": "Patient", "id": "p1"}),
            ),
        )
        .await;
    assert_eq!(write.status, 403);
    let user = app.get(&format!("/fhir/User/{alice}")).await.json();
    assert_eq!(
        user["identifier"][0],
        json!({"system": provider.issuer, "value": "alice"})
    );
    assert_eq!(user["email"], "alice@example.org");
    assert_eq!(user["data"]["name"], "alice Example");

    // client_secret_post and private_key_jwt (assertion with x5t from the
    // certificate), each named in the path.
    for idp in ["idp-post", "idp-jwt"] {
        let token = sign_in(
            &app,
            &format!("/auth/redirect/{idp}?{}", authorize_query("app", "s2")),
        )
        .await;
        assert_eq!(
            bearer(&app, "/fhir/Patient/p1", &token).await.status,
            200,
            "{idp}"
        );
    }
    assert_eq!(
        metric(
            &app,
            "fhirbox_sign_ins_total{identity_provider=\"idp-jwt\",result=\"ok\"}"
        )
        .await,
        1
    );
    // Signing in again with the same claims leaves the User alone.
    assert_eq!(
        app.get(&format!("/fhir/User/{alice}")).await.json()["meta"]["versionId"],
        "1"
    );

    // Bob signs in, and the policy does not serve him.
    provider.login_as("bob").await;
    let bobs = sign_in(
        &app,
        &format!("/auth/authorize?{}", authorize_query("app", "s3")),
    )
    .await;
    assert_eq!(bearer(&app, "/fhir/Patient/p1", &bobs).await.status, 403);
    // A policy linked to Bob's User does.
    let bob = fhirbox_auth::users::user_id(&provider.issuer, "bob");
    let r = app
        .put(
            "/fhir/AccessPolicy/bob-reads",
            &json!({"resourceType": "AccessPolicy", "id": "bob-reads", "engine": "allow",
                "link": [{"reference": format!("User/{bob}")}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(bearer(&app, "/fhir/Patient/p1", &bobs).await.status, 200);

    // A disabled User's token stops working, and the User cannot sign in.
    let mut disabled = app.get(&format!("/fhir/User/{bob}")).await.json();
    disabled["active"] = json!(false);
    assert_eq!(
        app.put(&format!("/fhir/User/{bob}"), &disabled)
            .await
            .status,
        200
    );
    assert_eq!(bearer(&app, "/fhir/Patient/p1", &bobs).await.status, 401);
    let landed = Browser::new()
        .walk(
            &app.url(&format!("/auth/authorize?{}", authorize_query("app", "s4"))),
            None,
        )
        .await;
    assert_eq!(
        landed.error(),
        "access_denied",
        "{landed:?}\n{}",
        sign_in_logs()
    );
    // A disabled IdentityProvider cannot be used.
    provider.login_as("alice").await;
    let mut off = app.get("/fhir/IdentityProvider/idp-post").await.json();
    off["active"] = json!(false);
    assert_eq!(
        app.put("/fhir/IdentityProvider/idp-post", &off)
            .await
            .status,
        200
    );
    let landed = Browser::new()
        .walk(
            &app.url(&format!(
                "/auth/redirect/idp-post?{}",
                authorize_query("app", "s5")
            )),
            None,
        )
        .await;
    assert_eq!(landed.error(), "server_error");
}

backend_tests!(per_backend: codes_states_and_redirects_are_checked);

async fn codes_states_and_redirects_are_checked(backend: Backend) {
    // The vault and the certificates must outlive the test: bound, not dropped.
    let Setup {
        app,
        provider,
        vault: _vault,
        _certs,
    } = standard_setup(backend).await;
    let start = app.url(&format!(
        "/auth/authorize?{}",
        authorize_query("app", "xyz")
    ));

    // A code is single-use, and works only with its verifier.
    let landed = Browser::new().walk(&start, None).await;
    let Landed::App(query) = &landed else {
        panic!("{landed:?}")
    };
    assert_eq!(query["state"], "xyz", "the application's state comes back");
    let code = landed.code();
    let (status, body) = exchange(
        &app,
        &code,
        "another-verifier-that-is-long-enough-0123456789abc",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // The failed try spent it.
    let (status, _) = exchange(&app, &code, VERIFIER).await;
    assert_eq!(status, 400);
    let code = Browser::new().walk(&start, None).await.code();
    assert_eq!(exchange(&app, &code, VERIFIER).await.0, 200);
    let (status, body) = exchange(&app, &code, VERIFIER).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "a replayed code"
    );

    // An unregistered redirect URI is refused on a page: nobody is sent there.
    let evil = format!(
        "/auth/authorize?client_id=app&response_type=code&redirect_uri={}&code_challenge={}&code_challenge_method=S256",
        urlencode("http://127.0.0.1:9/evil"),
        challenge(VERIFIER)
    );
    // Without an ID-token key there is nothing to publish.
    assert_eq!(
        app.send(app.anon.get(app.url("/auth/jwks"))).await.status,
        404
    );
    let r = app.send(app.anon.get(app.url(&evil))).await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    assert!(r.text.contains("redirect_uri"), "{}", r.text);
    // Without PKCE, the application is told so at its redirect URI.
    let landed = Browser::new()
        .walk(
            &app.url("/auth/authorize?client_id=app&response_type=code&state=q"),
            None,
        )
        .await;
    assert_eq!(landed.error(), "invalid_request");

    // The provider's answer must come back to the browser that began the
    // sign-in: another browser, or a changed state, gets a page.
    let callback = app.url("/auth/callback/");
    let mut first = Browser::new();
    let Landed::Page(0, back) = first.walk(&start, Some(&callback)).await else {
        panic!("the provider should send the browser back to fhirbox")
    };
    let r = Browser::new().walk(&back, None).await;
    assert!(
        matches!(&r, Landed::Page(400, text) if text.contains("not started in this browser")),
        "{r:?}"
    );
    let parsed = reqwest::Url::parse(&back).unwrap();
    let forged: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let value = if k == "state" {
                "forged".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), value)
        })
        .collect();
    let mut forged_url = parsed.clone();
    forged_url.query_pairs_mut().clear().extend_pairs(forged);
    let r = first.walk(forged_url.as_str(), None).await;
    assert!(matches!(&r, Landed::Page(400, _)), "{r:?}");
    // The genuine answer still works in the browser that began it, once:
    // the cookie put back and the answer replayed is refused.
    let sealed = first.cookies.clone();
    assert!(matches!(first.walk(&back, None).await, Landed::App(q) if q.contains_key("code")));
    first.cookies = sealed;
    assert_eq!(first.walk(&back, None).await.error(), "invalid_request");
    assert_eq!(
        metric(
            &app,
            "fhirbox_sign_ins_total{identity_provider=\"idp-basic\",result=\"signin_replayed\"}"
        )
        .await,
        1
    );
    // An application signs its users in only through the providers it names.
    let r = app
        .put(
            "/fhir/Client/narrow",
            &json!({"resourceType": "Client", "id": "narrow", "grant_types": ["authorization_code"],
                "auth": {"authorization_code": {"redirect_uri": APP_CALLBACK,
                    "default_identity_provider": {"reference": "IdentityProvider/idp-basic"}}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let other = app.url(&format!(
        "/auth/redirect/idp-jwt?{}",
        authorize_query("narrow", "n")
    ));
    assert_eq!(
        Browser::new().walk(&other, None).await.error(),
        "unauthorized_client"
    );
    let line = "fhirbox_sign_ins_total{identity_provider=\"idp-jwt\",result=\"idp_not_allowed\"}";
    assert_eq!(metric(&app, line).await, 1);
    let mine = app.url(&format!(
        "/auth/redirect/idp-basic?{}",
        authorize_query("narrow", "n")
    ));
    assert!(Browser::new().walk(&mine, None).await.code().len() > 20);
    assert!(
        metric(
            &app,
            "fhirbox_sign_ins_total{identity_provider=\"idp-basic\",result=\"signin_state\"}"
        )
        .await
            >= 2
    );

    // The provider going down between its answer and the exchange.
    let mut browser = Browser::new();
    let Landed::Page(0, back) = browser.walk(&start, Some(&callback)).await else {
        panic!("the provider should send the browser back to fhirbox")
    };
    provider.stop();
    assert_eq!(
        browser.walk(&back, None).await.error(),
        "temporarily_unavailable"
    );
}

backend_tests!(per_backend: rotated_secret_key_and_certificate_apply_to_the_next_sign_in);

async fn rotated_secret_key_and_certificate_apply_to_the_next_sign_in(backend: Backend) {
    let (old_key, old_cert) = key_and_certificate();
    let (new_key, new_cert) = key_and_certificate();
    let Setup {
        app,
        provider,
        vault,
        _certs,
    } = setup(
        backend,
        &[
            ("basic-credential", "a-stale-secret"),
            ("post-credential", "post-secret"),
            ("jwt-key", &old_key),
            ("jwt-cert", &old_cert),
        ],
        &[&old_cert, &new_cert],
    )
    .await;
    let start = &|idp: &str| {
        app.url(&format!(
            "/auth/redirect/{idp}?{}",
            authorize_query("app", "r")
        ))
    };
    provider.login_as("alice").await;

    // A wrong secret in the file: the provider refuses fhirbox.
    assert_eq!(
        Browser::new().walk(&start("idp-basic"), None).await.error(),
        "access_denied"
    );
    vault.rotate("basic-credential", b"basic-secret");
    let code =
        fhirbox_test_support::wait_for_async(std::time::Duration::from_secs(5), || async move {
            match Browser::new().walk(&start("idp-basic"), None).await {
                Landed::App(q) if q.contains_key("code") => Some(q["code"].clone()),
                _ => None,
            }
        })
        .await
        .expect("the rotated secret is used for a sign-in without a restart");
    assert_eq!(exchange(&app, &code, VERIFIER).await.0, 200);

    // Half a rotation (a new key beside the old certificate) fails loudly.
    assert!(
        Browser::new()
            .walk(&start("idp-jwt"), None)
            .await
            .code()
            .len()
            > 20
    );
    vault.rotate("jwt-key", new_key.as_bytes());
    fhirbox_test_support::wait_for_async(std::time::Duration::from_secs(5), || async move {
        let landed = Browser::new().walk(&start("idp-jwt"), None).await;
        matches!(landed, Landed::App(q) if q.get("error").map(String::as_str) == Some("server_error")).then_some(())
    })
    .await
    .expect("a key that does not match its certificate is refused");
    assert!(metric(&app, "fhirbox_sign_ins_total{identity_provider=\"idp-jwt\",result=\"idp_key_certificate_mismatch\"}").await >= 1);
    assert!(captured_logs()
        .contains("client.private-key and client.certificate do not belong together"));
    // The rest of the rotation lands: sign-in works with the new pair.
    vault.rotate("jwt-cert", new_cert.as_bytes());
    let code =
        fhirbox_test_support::wait_for_async(std::time::Duration::from_secs(5), || async move {
            match Browser::new().walk(&start("idp-jwt"), None).await {
                Landed::App(q) if q.contains_key("code") => Some(q["code"].clone()),
                _ => None,
            }
        })
        .await
        .expect("the new key and certificate are used together");
    assert_eq!(exchange(&app, &code, VERIFIER).await.0, 200);

    // No secret value reached a log line, a stored resource or a response.
    let logs = captured_logs();
    let key_line = new_key.lines().nth(1).unwrap();
    for needle in ["basic-secret", "post-secret", "a-stale-secret", key_line] {
        assert!(!logs.contains(needle), "a log line holds {needle}");
    }
    let stored = app.get("/fhir/IdentityProvider").await.text;
    assert!(!stored.contains(key_line) && !stored.contains("a-stale-secret"));
}

/// A token endpoint that answers every exchange with an ID token holding
/// the claims the test put in `claims`, signed with the provider's own key
/// (so only the claims can be wrong).
async fn forging_token_endpoint(claims: Arc<Mutex<Value>>, key_pem: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = move || {
        let claims = claims.lock().unwrap().clone();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem).unwrap();
        async move {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = Some("k1".into());
            let id_token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            axum::Json(
                json!({"access_token": "unused", "token_type": "Bearer", "id_token": id_token}),
            )
        }
    };
    let router = axum::Router::new().route("/token", axum::routing::post(answer));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/token")
}

backend_tests!(per_backend: id_tokens_are_checked_and_endpoints_discovered);

async fn id_tokens_are_checked_and_endpoints_discovered(backend: Backend) {
    // The vault and the certificates must outlive the test: bound, not dropped.
    let Setup {
        app,
        provider,
        vault: _vault,
        _certs,
    } = standard_setup(backend).await;
    let forged = Arc::new(Mutex::new(json!({})));
    let mut idp = identity_provider(
        &app,
        &provider,
        "idp-forged",
        json!({"id": "signin-basic", "_secret": reference("basic-credential")}),
    );
    idp["token_endpoint"] =
        json!(forging_token_endpoint(forged.clone(), provider.key_pem.clone()).await);
    let r = app.put("/fhir/IdentityProvider/idp-forged", &idp).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let at_provider = format!("{}/auth", provider.issuer);
    for (case, reason) in [
        ("audience", "id_token_audience"),
        ("nonce", "id_token_nonce"),
        ("issuer", "id_token_issuer"),
        ("expired", "id_token_expired"),
        ("as issued", "ok"),
    ] {
        let mut browser = Browser::new();
        let start = app.url(&format!(
            "/auth/redirect/idp-forged?{}",
            authorize_query("app", "f")
        ));
        let Landed::Page(0, authorize) = browser.walk(&start, Some(&at_provider)).await else {
            panic!("fhirbox should send the browser to the provider")
        };
        let nonce = reqwest::Url::parse(&authorize)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "nonce")
            .map(|(_, v)| v.into_owned())
            .expect("fhirbox sends a nonce");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = json!({"iss": provider.issuer, "aud": "signin-basic", "sub": "mallory",
            "nonce": nonce, "iat": now, "exp": now + 300});
        match case {
            "audience" => claims["aud"] = json!(["another-client"]),
            "nonce" => claims["nonce"] = json!("the-nonce-of-another-sign-in"),
            "issuer" => claims["iss"] = json!("https://issuer.example"),
            "expired" => claims["exp"] = json!(now - 120),
            _ => {}
        }
        *forged.lock().unwrap() = claims;
        let landed = browser.walk(&authorize, None).await;
        if reason == "ok" {
            assert!(landed.code().len() > 20);
        } else {
            assert_eq!(landed.error(), "server_error", "{case}");
        }
        let line = format!(
            "fhirbox_sign_ins_total{{identity_provider=\"idp-forged\",result=\"{reason}\"}}"
        );
        assert_eq!(metric(&app, &line).await, 1, "{case}");
    }

    // A provider described by its issuer alone: the endpoints come from its
    // discovery document.
    let discovered = |id: &str, issuer: &str| {
        json!({"resourceType": "IdentityProvider", "id": id, "issuer": issuer,
            "scopes": ["openid", "email"],
            "client": {"id": "signin-basic", "_secret": reference("basic-credential"),
                "redirect_uri": app.url(&format!("/auth/callback/{id}"))}})
    };
    let r = app
        .put(
            "/fhir/IdentityProvider/idp-discovered",
            &discovered("idp-discovered", &provider.issuer),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let start = app.url(&format!(
        "/auth/redirect/idp-discovered?{}",
        authorize_query("app", "d")
    ));
    let code = Browser::new().walk(&start, None).await.code();
    assert_eq!(exchange(&app, &code, VERIFIER).await.0, 200);
    // An issuer spelled otherwise than the document spells it is refused
    // (OpenID Connect Discovery §4.3).
    let misspelled = format!("{}/", provider.issuer);
    let r = app
        .put(
            "/fhir/IdentityProvider/idp-misspelled",
            &discovered("idp-misspelled", &misspelled),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let start = app.url(&format!(
        "/auth/redirect/idp-misspelled?{}",
        authorize_query("app", "d")
    ));
    assert_eq!(
        Browser::new().walk(&start, None).await.error(),
        "temporarily_unavailable"
    );
    let line =
        "fhirbox_sign_ins_total{identity_provider=\"idp-misspelled\",result=\"idp_discovery\"}";
    assert_eq!(metric(&app, line).await, 1);
}

/// `POST /auth/token` with a refresh token, as the public client `app`.
async fn refresh(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app
        .anon
        .post(app.url("/auth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "app"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

backend_tests!(per_backend: refresh_tokens_rotate_and_any_instance_redeems_a_code_once);

async fn refresh_tokens_rotate_and_any_instance_redeems_a_code_once(backend: Backend) {
    const SIGNING_KEY: &str = "a-token-signing-key-both-instances-share";
    let (key, cert) = key_and_certificate();
    // The vault and the certificates must outlive the test: bound, not dropped.
    let Setup {
        app,
        provider,
        vault: _vault,
        _certs,
    } = setup_with(backend, &standard_files(&key, &cert), &[&cert], |s| {
        s.token_signing_key = Some(SIGNING_KEY.into());
    })
    .await;
    // A second instance, started before anyone signs in, that would not
    // re-read Users by itself for an hour.
    let sibling = app
        .sibling(|s| {
            s.token_signing_key = Some(SIGNING_KEY.into());
            s.auth_recheck = std::time::Duration::from_secs(3600);
        })
        .await;
    let r = app
        .put(
            "/fhir/AccessPolicy/readers",
            &json!({"resourceType": "AccessPolicy", "id": "readers", "engine": "matcho",
                "matcho": {"request-method": "get", "user": {"id": "present?"}},
                "link": [{"reference": "Client/app"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    provider.login_as("carol").await;
    let start = app.url(&format!("/auth/authorize?{}", authorize_query("app", "r")));

    // A code issued by one instance is redeemed by another, once, for a
    // User that instance had not seen; its token works on both at once.
    let code = Browser::new().walk(&start, None).await.code();
    let (status, body) = exchange(&sibling, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("scope").is_none(),
        "access is what policies allow, not what was asked"
    );
    assert_eq!(
        bearer(
            &sibling,
            "/fhir/Patient",
            body["access_token"].as_str().unwrap()
        )
        .await
        .status,
        200
    );
    assert_eq!(
        exchange(&app, &code, VERIFIER).await.0,
        400,
        "a code redeemed elsewhere"
    );

    // A refresh token is replaced at each use.
    let code = Browser::new().walk(&start, None).await.code();
    let (_, first) = exchange(&app, &code, VERIFIER).await;
    let first_refresh = first["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let (status, second) = refresh(&app, &first_refresh).await;
    assert_eq!(status, 200, "{second}");
    let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        bearer(
            &app,
            "/fhir/Patient",
            second["access_token"].as_str().unwrap()
        )
        .await
        .status,
        200
    );
    // The used one presented again is refused, and takes its successor with it
    // (RFC 9700 §4.14.2): whoever stole one of the two holds nothing usable.
    let (status, body) = refresh(&app, &first_refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(refresh(&sibling, &second_refresh).await.0, 400);
    assert_eq!(
        metric(
            &app,
            "fhirbox_auth_failures_total{reason=\"refresh_replayed\"}"
        )
        .await,
        1
    );

    // Another client presenting the application's refresh token is
    // refused, and the token's line is revoked.
    let r = app
        .put(
            "/fhir/Client/other",
            &json!({"resourceType": "Client", "id": "other", "grant_types": ["authorization_code", "refresh_token"],
                "auth": {"authorization_code": {"redirect_uri": APP_CALLBACK,
                    "default_identity_provider": {"reference": "IdentityProvider/idp-basic"}}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let code = Browser::new().walk(&start, None).await.code();
    let (_, tokens) = exchange(&app, &code, VERIFIER).await;
    let stolen = tokens["refresh_token"].as_str().unwrap().to_owned();
    let response = app
        .anon
        .post(app.url("/auth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", stolen.as_str()),
            ("client_id", "other"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(refresh(&app, &stolen).await.0, 400);

    // A replayed code revokes the refresh tokens it led to.
    let code = Browser::new().walk(&start, None).await.code();
    let (_, tokens) = exchange(&app, &code, VERIFIER).await;
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(exchange(&app, &code, VERIFIER).await.0, 400);
    assert_eq!(refresh(&app, &refresh_token).await.0, 400);

    // A disabled User cannot refresh.
    let code = Browser::new().walk(&start, None).await.code();
    let (_, tokens) = exchange(&app, &code, VERIFIER).await;
    let carol = fhirbox_auth::users::user_id(&provider.issuer, "carol");
    let mut disabled = app.get(&format!("/fhir/User/{carol}")).await.json();
    disabled["active"] = json!(false);
    assert_eq!(
        app.put(&format!("/fhir/User/{carol}"), &disabled)
            .await
            .status,
        200
    );
    let (status, body) = refresh(&app, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // No code, refresh token or access token reached a log line.
    let logs = captured_logs();
    for value in [&code, &first_refresh, &second_refresh] {
        assert!(!logs.contains(value.as_str()));
    }
}

backend_tests!(per_backend: applications_that_ask_for_openid_get_an_id_token);

async fn applications_that_ask_for_openid_get_an_id_token(backend: Backend) {
    let (key, cert) = key_and_certificate();
    let keys = tempfile::tempdir().unwrap();
    let id_key = keys.path().join("id-token-key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&id_key)
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let key_file = id_key.clone();
    let Setup {
        app,
        provider,
        vault: _vault,
        _certs,
    } = setup_with(backend, &standard_files(&key, &cert), &[&cert], move |s| {
        s.base_url = Some("https://fhirbox.test".into());
        s.id_token_key_file = Some(key_file);
    })
    .await;
    provider.login_as("dana").await;
    let start = app.url(&format!(
        "/auth/authorize?{}&nonce=app-nonce-1",
        authorize_query("app", "o")
    ));
    let code = Browser::new().walk(&start, None).await.code();
    let (status, tokens) = exchange(&app, &code, VERIFIER).await;
    assert_eq!(status, 200, "{tokens}");
    let id_token = tokens["id_token"]
        .as_str()
        .expect("an ID token for scope openid");

    // It verifies with the published key, names fhirbox, the application,
    // the User, and the application's nonce.
    let set: jsonwebtoken::jwk::JwkSet = app
        .send(app.anon.get(app.url("/auth/jwks")))
        .await
        .json()
        .as_object()
        .map(|o| serde_json::from_value(Value::Object(o.clone())).unwrap())
        .unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid, set.keys[0].common.key_id);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&["https://fhirbox.test"]);
    validation.set_audience(&["app"]);
    let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(
        claims["sub"],
        fhirbox_auth::users::user_id(&provider.issuer, "dana")
    );
    assert_eq!(claims["nonce"], "app-nonce-1");
    assert_eq!(claims["email"], "dana@example.org");
    let discovery = app
        .send(app.anon.get(app.url("/.well-known/openid-configuration")))
        .await
        .json();
    assert_eq!(discovery["issuer"], "https://fhirbox.test");
    assert_eq!(discovery["jwks_uri"], "https://fhirbox.test/auth/jwks");
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );

    // Without openid, no ID token.
    let plain = format!(
        "/auth/authorize?client_id=app&response_type=code&state=p&code_challenge={}&code_challenge_method=S256",
        challenge(VERIFIER)
    );
    let code = Browser::new().walk(&app.url(&plain), None).await.code();
    let (_, tokens) = exchange(&app, &code, VERIFIER).await;
    assert!(tokens.get("id_token").is_none(), "{tokens}");
    // The private key is never published.
    let published = app.send(app.anon.get(app.url("/auth/jwks"))).await.text;
    assert!(!published.contains("\"d\""), "{published}");
}

backend_tests!(per_backend: a_users_token_is_checked_in_bundle_entries_includes_and_chains);

/// A signed-in user's token meets the same one authorization decision as a
/// client's on every way into the data: each entry of a batch, each
/// included resource, each chain. Denied first, then allowed once the
/// User's policy grows.
async fn a_users_token_is_checked_in_bundle_entries_includes_and_chains(backend: Backend) {
    // The vault and the certificates must outlive the test: bound, not dropped.
    let Setup {
        app,
        provider,
        vault: _vault,
        _certs,
    } = standard_setup(backend).await;
    app.put_patient("p1", "Chalmers").await;
    let r = app
        .put(
            "/fhir/Observation/o1",
            &json!({"resourceType": "Observation", "id": "o1", "status": "final",
                "code": {"text": "weight"}, "subject": {"reference": "Patient/p1"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let alice = fhirbox_auth::users::user_id(&provider.issuer, "alice");
    let link = json!([{"reference": format!("User/{alice}")}]);
    for (id, matcho) in [
        (
            "alice-observations",
            json!({"request-method": "get", "params": {"resource/type": "Observation"}}),
        ),
        (
            "alice-bundles",
            json!({"request-method": "post", "uri": "/fhir"}),
        ),
    ] {
        let r = app
            .put(
                &format!("/fhir/AccessPolicy/{id}"),
                &json!({"resourceType": "AccessPolicy", "id": id, "engine": "matcho",
                    "matcho": matcho, "link": link}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    provider.login_as("alice").await;
    let token = sign_in(
        &app,
        &format!("/auth/authorize?{}", authorize_query("app", "b1")),
    )
    .await;
    let batch = |token: String| {
        let body = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Observation/o1"}},
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "GET", "url": "Observation?subject=Patient/p1&_include=Observation:subject"}}]});
        let app = &app;
        async move {
            let r = app
                .send(app.fhir(app.anon.post(app.url("/fhir")).bearer_auth(token), &body))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            r
        }
    };
    let include = "/fhir/Observation?subject=Patient/p1&_include=Observation:subject";
    let chain = "/fhir/Observation?patient:Patient.name=Chalmers";

    // Observations only: the patient is withheld everywhere.
    assert_eq!(
        bearer(&app, "/fhir/Observation/o1", &token).await.status,
        200
    );
    assert_eq!(bearer(&app, "/fhir/Patient/p1", &token).await.status, 403);
    let r = batch(token.clone()).await;
    let entries = r.json()["entry"].clone();
    assert!(entries[0]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("200"));
    assert!(
        entries[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403"),
        "{}",
        r.text
    );
    assert!(r.text.contains("withheld"), "{}", r.text);
    assert!(!r.text.contains("Chalmers"), "{}", r.text);
    let r = bearer(&app, include, &token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("1 included resources were withheld"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("Chalmers"), "{}", r.text);
    bearer(&app, chain, &token)
        .await
        .assert_outcome(403, "no access policy allows");

    // Patients too: the same requests now show the patient.
    let r = app
        .put(
            "/fhir/AccessPolicy/alice-patients",
            &json!({"resourceType": "AccessPolicy", "id": "alice-patients", "engine": "matcho",
                "matcho": {"request-method": "get", "params": {"resource/type": "Patient"}},
                "link": link}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = batch(token.clone()).await;
    let entries = r.json()["entry"].clone();
    assert!(
        entries[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("withheld"), "{}", r.text);
    let r = bearer(&app, include, &token).await;
    assert!(r.text.contains("Chalmers"), "{}", r.text);
    let r = bearer(&app, chain, &token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["entry"][0]["resource"]["id"], "o1");
}
