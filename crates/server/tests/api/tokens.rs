//! Tokens from other issuers (docs/tokens.md): TokenIntrospector resources,
//! JWT access tokens checked by a shared secret, configured keys or a real
//! provider's key set, opaque tokens introspected at a real provider, the
//! pitfalls of each, policies over the token's claims, vault-backed keys and
//! credentials rotated under load, and what never leaks.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fhirbox_test_support::wait_until_async;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{captured_logs, Backend, Resp, TestApp};
use crate::oidc::{OidcProvider, ProviderOptions};
use crate::vault::{reference, spawn_with_vault, Vault};

const HS_KEY: &str = "a-shared-hmac-key-of-32-bytes!!!";
const ISS: &str = "https://idp.example.org/realms/hospital";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of an access token from `iss` for user `sub`, valid for a while.
fn claims(iss: &str, sub: &str) -> Value {
    json!({"iss": iss, "sub": sub, "iat": now(), "exp": now() + 300, "scope": "openid patient/*.read"})
}

fn mint(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    typ: Option<&str>,
    claims: &Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    header.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(key: &str, kid: Option<&str>, claims: &Value) -> String {
    mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(key.as_bytes()).unwrap(),
        kid,
        None,
        claims,
    )
}

/// A fresh key pair from openssl: (private PKCS#8 PEM, public PEM).
fn key_pair(algorithm: &[&str]) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(algorithm)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap();
    assert!(public.status.success());
    (
        std::fs::read(&private).unwrap(),
        String::from_utf8(public.stdout).unwrap(),
    )
}

fn rsa_pair() -> (Vec<u8>, String) {
    key_pair(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
}

fn ec_pair() -> (Vec<u8>, String) {
    key_pair(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
}

async fn put_introspector(app: &TestApp, id: &str, body: Value) -> Resp {
    let mut body = body;
    body["resourceType"] = json!("TokenIntrospector");
    body["id"] = json!(id);
    app.put(&format!("/fhir/TokenIntrospector/{id}"), &body)
        .await
}

async fn must_put_introspector(app: &TestApp, id: &str, body: Value) {
    let r = put_introspector(app, id, body).await;
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.text
    );
}

/// An AccessPolicy linked to the tokens of one introspector.
async fn policy_for_introspector(app: &TestApp, policy: &str, introspector: &str, rule: Value) {
    let mut body = json!({"resourceType": "AccessPolicy", "id": policy,
        "link": [{"reference": format!("TokenIntrospector/{introspector}")}]});
    match rule {
        Value::Null => body["engine"] = json!("allow"),
        matcho => {
            body["engine"] = json!("matcho");
            body["matcho"] = matcho;
        }
    }
    let r = app
        .put(&format!("/fhir/AccessPolicy/{policy}"), &body)
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
}

pub async fn bearer(app: &TestApp, path: &str, token: &str) -> Resp {
    app.send(app.anon.get(app.url(path)).bearer_auth(token))
        .await
}

async fn status_with(app: &TestApp, token: &str) -> u16 {
    bearer(app, "/fhir/Patient?_count=1", token).await.status
}

/// The value of one metric line (0 when it is absent).
pub async fn metric(app: &TestApp, line_start: &str) -> u64 {
    let text = app.get("/metrics").await.text;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn fetches(app: &TestApp, introspector: &str, result: &str) -> u64 {
    metric(
        app,
        &format!("fhirbox_external_jwks_fetches_total{{introspector=\"{introspector}\",result=\"{result}\"}}"),
    )
    .await
}

async fn failures(app: &TestApp, reason: &str) -> u64 {
    metric(
        app,
        &format!("fhirbox_auth_failures_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// Expects a 401 for `token`, counted under `reason`.
async fn refused(app: &TestApp, token: &str, reason: &str) {
    let before = failures(app, reason).await;
    let r = bearer(app, "/fhir/Patient?_count=1", token).await;
    r.assert_outcome(401, "authentication failed");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains("invalid_token")),
        "{:?}",
        r.headers
    );
    assert_eq!(failures(app, reason).await, before + 1, "reason {reason}");
}

backend_tests!(per_backend: introspectors_are_checked_on_write_with_what_to_fix, a_provider_jwt_is_accepted_and_policies_see_its_claims, unknown_kids_refetch_once_and_concurrent_misses_share_a_fetch, a_provider_down_keeps_the_last_good_key_set, forged_and_misused_tokens_are_refused, shared_secrets_and_configured_keys_verify_with_pinned_algorithms, opaque_tokens_are_introspected_and_never_cached_past_exp, a_silent_introspection_endpoint_gives_503_in_bounded_time, vault_backed_keys_rotate_without_restart_under_load, a_vault_backed_authorization_rotates_without_restart, bundles_and_admin_types_hold_for_external_tokens, tokens_keys_and_credentials_never_leak);

async fn introspectors_are_checked_on_write_with_what_to_fix(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (body, needle) in [
        (
            json!({"type": "jwt", "jwt": {"iss": ISS}}),
            "needs one key source",
        ),
        (
            json!({"type": "jwt", "jwks_uri": "https://idp.example.org/certs"}),
            "jwks_uri needs jwt.iss",
        ),
        (
            json!({"type": "jwt", "jwt": {"iss": ISS, "secret": HS_KEY}, "jwks_uri": "https://idp.example.org/certs"}),
            "exactly one key source",
        ),
        (
            json!({"type": "jwt", "jwt": {"iss": ISS, "keys": [{"alg": "RS256", "kty": "OCT", "k": HS_KEY}]}}),
            "does not fit",
        ),
        (
            json!({"type": "jwt", "jwt": {"iss": ISS, "keys": [{"alg": "HS256", "k": "-----BEGIN PUBLIC KEY-----\nMIIBIjAN"}]}}),
            "PEM block",
        ),
        (json!({"type": "opaque"}), "introspection_endpoint.url"),
        (
            json!({"type": "jwt", "jwt": {"iss": ISS, "secret": HS_KEY}, "cache_ttl": 0}),
            "cache_ttl",
        ),
    ] {
        let r = put_introspector(&app, "bad", body.clone()).await;
        r.assert_outcome(422, needle);
        assert!(!r.text.contains(HS_KEY), "the key is echoed: {}", r.text);
    }
    assert_eq!(app.get("/fhir/TokenIntrospector/bad").await.status, 404);
    // A good one reads back with its key masked.
    must_put_introspector(
        &app,
        "good",
        json!({"type": "jwt", "jwt": {"iss": ISS, "secret": HS_KEY}}),
    )
    .await;
    let read = app.get("/fhir/TokenIntrospector/good").await;
    assert!(!read.text.contains(HS_KEY), "{}", read.text);
    assert_eq!(
        read.json()["jwt"]["_secret"]["extension"][0]["valueCode"],
        "masked"
    );
    // A secret reference needs external secrets on.
    let r = put_introspector(
        &app,
        "ref",
        json!({"type": "jwt", "jwt": {"iss": ISS, "_secret": reference("hs")}}),
    )
    .await;
    r.assert_outcome(422, "external secrets are off");
}

async fn a_provider_jwt_is_accepted_and_policies_see_its_claims(backend: Backend) {
    let provider = OidcProvider::start();
    let app = TestApp::spawn(backend).await;
    app.put_patient("p1", "Chalmers").await;
    must_put_introspector(&app, "idp", json!({"type": "jwt", "jwt": {"iss": provider.issuer, "typ": "at+jwt"}, "jwks_uri": provider.jwks_uri()})).await;
    let read_token = provider.token("urn:fhirbox:jwt", "read").await;
    // Authenticated, but no policy yet: 403, not 401.
    bearer(&app, "/fhir/Patient/p1", &read_token)
        .await
        .assert_outcome(403, "no access policy allows");
    // A policy linked to the client the token names does not apply to it:
    // another issuer cannot claim a client's policies.
    app.put_client("svc", "a-local-client-secret", &["basic"])
        .await;
    app.allow_client("svc-allow", "svc").await;
    assert_eq!(
        bearer(&app, "/fhir/Patient/p1", &read_token).await.status,
        403
    );
    // Aidbox's form: the token's claims under `jwt`, the user under `user`.
    policy_for_introspector(
        &app,
        "readers",
        "idp",
        json!({
            "request-method": "get",
            "jwt": {"iss": provider.issuer, "scope": "#(^| )read( |$)"},
            "user": {"id": "svc"}
        }),
    )
    .await;
    let read = bearer(&app, "/fhir/Patient/p1", &read_token).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.json()["name"][0]["family"], "Chalmers");
    // The policy's conditions hold: a write, or a token without `read`, is refused.
    let write = app
        .send(
            app.fhir(
                app.anon
                    .put(app.url("/fhir/Patient/p1"))
                    .bearer_auth(&read_token),
                &json!({"resourceType": "Patient", "id": "p1"}),
            ),
        )
        .await;
    assert_eq!(write.status, 403, "{}", write.text);
    let write_token = provider.token("urn:fhirbox:jwt", "write").await;
    assert_eq!(
        bearer(&app, "/fhir/Patient/p1", &write_token).await.status,
        403
    );
    // Each verification is counted by introspector and result.
    assert!(
        metric(
            &app,
            "fhirbox_external_token_verifications_total{introspector=\"idp\",result=\"ok\"}"
        )
        .await
            >= 3
    );
    assert_eq!(
        fetches(&app, "idp", "ok").await,
        1,
        "one fetch serves every token while cache_ttl lasts"
    );
    // An unlinked policy applies to every caller, external ones included.
    app.delete("/fhir/AccessPolicy/readers").await;
    let r = app
        .put(
            "/fhir/AccessPolicy/any-jwt",
            &json!({"resourceType": "AccessPolicy", "id": "any-jwt", "engine": "matcho",
        "matcho": {"jwt": {"client_id": "svc"}, "uri": "#^/fhir/Patient"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        bearer(&app, "/fhir/Patient/p1", &write_token).await.status,
        200
    );
    // ... and a client without `jwt` in its context never matches it.
    assert_eq!(
        app.get_as("/fhir/Patient/p1", "svc", "a-local-client-secret")
            .await
            .status,
        200,
        "svc has its own allow policy"
    );
    app.put_client("other", "another-local-secret", &["basic"])
        .await;
    assert_eq!(
        app.get_as("/fhir/Patient/p1", "other", "another-local-secret")
            .await
            .status,
        403
    );
}

async fn unknown_kids_refetch_once_and_concurrent_misses_share_a_fetch(backend: Backend) {
    // Each key-set answer takes 300 ms, so the concurrent requests below overlap the fetch.
    let provider = OidcProvider::start_with(ProviderOptions {
        kid: "k1",
        jwks_delay_ms: 300,
        ..Default::default()
    });
    let app = TestApp::spawn(backend).await;
    must_put_introspector(
        &app,
        "idp",
        json!({"type": "jwt", "jwt": {"iss": provider.issuer}, "jwks_uri": provider.jwks_uri()}),
    )
    .await;
    policy_for_introspector(&app, "all", "idp", Value::Null).await;
    let first = provider.token("urn:fhirbox:jwt", "read").await;
    // Twelve requests at once, none cached yet: one fetch serves them all.
    let statuses = concurrent_statuses(&app, &first, 12).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fetches(&app, "idp", "ok").await, 1);

    // The provider restarts with a new key (kid k2) on the same port.
    let port = provider.stop();
    let provider = OidcProvider::start_with(ProviderOptions {
        port,
        kid: "k2",
        jwks_delay_ms: 300,
        ..Default::default()
    });
    let second = provider.token("urn:fhirbox:jwt", "read").await;
    let statuses = concurrent_statuses(&app, &second, 8).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        fetches(&app, "idp", "ok").await,
        2,
        "the unknown kid caused exactly one refetch"
    );
    // A token naming a kid the new set lacks is refused, without another
    // fetch: refetches are rate-limited.
    let pem = EncodingKey::from_rsa_pem(&provider.key_pem).unwrap();
    let stray = mint(
        Algorithm::RS256,
        &pem,
        Some("k9"),
        Some("at+jwt"),
        &claims(&provider.issuer, "svc"),
    );
    refused(&app, &stray, "external_unknown_key").await;
    refused(&app, &stray, "external_unknown_key").await;
    assert_eq!(fetches(&app, "idp", "ok").await, 2);
}

/// `n` requests with `token` at once; their statuses.
async fn concurrent_statuses(app: &TestApp, token: &str, n: usize) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = app.anon.clone();
        let url = app.url("/fhir/Patient?_count=1");
        let token = token.to_owned();
        set.spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    set.join_all().await
}

async fn a_provider_down_keeps_the_last_good_key_set(backend: Backend) {
    let provider = OidcProvider::start();
    let app = TestApp::spawn_with(backend, |s| s.issuer_timeout = Duration::from_millis(800)).await;
    must_put_introspector(&app, "idp", json!({"type": "jwt", "jwt": {"iss": provider.issuer}, "jwks_uri": provider.jwks_uri(), "cache_ttl": 1})).await;
    policy_for_introspector(&app, "all", "idp", Value::Null).await;
    let token = provider.token("urn:fhirbox:jwt", "read").await;
    assert_eq!(status_with(&app, &token).await, 200);
    let issuer = provider.issuer.clone();
    let jwks = provider.jwks_uri();
    provider.stop();
    // Past cache_ttl the set is refetched; the fetch fails, the last good set stays.
    let failed = wait_until_async(Duration::from_secs(10), || async {
        assert_eq!(status_with(&app, &token).await, 200);
        fetches(&app, "idp", "failed").await >= 1
    })
    .await;
    assert!(failed, "no refetch was tried after cache_ttl");
    assert_eq!(status_with(&app, &token).await, 200);
    // An introspector that never got its key set answers 503, in bounded time.
    must_put_introspector(
        &app,
        "idp",
        json!({"type": "jwt", "jwt": {"iss": issuer}, "jwks_uri": jwks, "cache_ttl": 2}),
    )
    .await;
    let started = Instant::now();
    let r = bearer(&app, "/fhir/Patient?_count=1", &token).await;
    r.assert_outcome(503, "could not be checked");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.header("retry-after"), Some("5"));
}

async fn forged_and_misused_tokens_are_refused(backend: Backend) {
    let provider = OidcProvider::start();
    let app = TestApp::spawn(backend).await;
    must_put_introspector(&app, "idp", json!({"type": "jwt", "jwt": {"iss": provider.issuer, "typ": "at+jwt"}, "jwks_uri": provider.jwks_uri()})).await;
    policy_for_introspector(&app, "all", "idp", Value::Null).await;
    let good = provider.token("urn:fhirbox:jwt", "read").await;
    assert_eq!(status_with(&app, &good).await, 200);
    let key = EncodingKey::from_rsa_pem(&provider.key_pem).unwrap();
    let iss = provider.issuer.as_str();
    let at = |claims: &Value| mint(Algorithm::RS256, &key, Some("k1"), Some("at+jwt"), claims);
    // Within the leeway (30 s) an expired token still passes; beyond, not.
    let mut c = claims(iss, "u1");
    c["exp"] = json!(now() - 10);
    assert_eq!(status_with(&app, &at(&c)).await, 200);
    c["exp"] = json!(now() - 120);
    refused(&app, &at(&c), "external_expired").await;
    let mut c = claims(iss, "u1");
    c["nbf"] = json!(now() + 600);
    refused(&app, &at(&c), "external_expired").await;
    // An ID token (typ JWT) is not an access token for an issuer that marks them at+jwt.
    let mut id_token = claims(iss, "u1");
    id_token["aud"] = json!("svc");
    id_token["nonce"] = json!("n-0S6_WzA2Mj");
    refused(
        &app,
        &mint(Algorithm::RS256, &key, Some("k1"), Some("JWT"), &id_token),
        "external_type",
    )
    .await;
    // `alg: none`.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(iss, "u1").to_string());
    refused(&app, &format!("{header}.{payload}."), "external_algorithm").await;
    // HS256 signed with the provider's public key as the HMAC secret.
    let public_pem = Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&provider.key_pem)?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    let confused = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem).unwrap(),
        Some("k1"),
        Some("at+jwt"),
        &claims(iss, "u1"),
    );
    refused(&app, &confused, "external_algorithm").await;
    // RS384 with a key published for RS256 only.
    refused(
        &app,
        &mint(
            Algorithm::RS384,
            &key,
            Some("k1"),
            Some("at+jwt"),
            &claims(iss, "u1"),
        ),
        "external_algorithm",
    )
    .await;
    // A tampered payload.
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    forged["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    refused(&app, &tampered, "external_signature").await;
    // Signed by another key under the same kid.
    let (other_private, _) = rsa_pair();
    let other = EncodingKey::from_rsa_pem(&other_private).unwrap();
    refused(
        &app,
        &mint(
            Algorithm::RS256,
            &other,
            Some("k1"),
            Some("at+jwt"),
            &claims(iss, "u1"),
        ),
        "external_signature",
    )
    .await;
    // An issuer no introspector names.
    refused(
        &app,
        &at(&claims("https://elsewhere.example", "u1")),
        "external_unknown_issuer",
    )
    .await;
    // A `crit` header this server does not understand.
    let crit =
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"at+jwt","kid":"k1","crit":["exp"]}"#);
    refused(
        &app,
        &format!("{crit}.{payload}.{}", parts[2]),
        "external_malformed",
    )
    .await;
    // The good token still works after all that.
    assert_eq!(status_with(&app, &good).await, 200);
}

async fn shared_secrets_and_configured_keys_verify_with_pinned_algorithms(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (rsa_private, rsa_public) = rsa_pair();
    let (ec_private, ec_public) = ec_pair();
    must_put_introspector(
        &app,
        "hs",
        json!({"type": "jwt", "jwt": {"iss": "https://hs.example", "secret": HS_KEY}}),
    )
    .await;
    must_put_introspector(
        &app,
        "keys",
        json!({"type": "jwt", "jwt": {"iss": ISS, "keys": [
            {"kid": "hmac", "alg": "HS256", "kty": "OCT", "k": HS_KEY, "format": "plain"},
            {"kid": "rsa", "alg": "RS256", "kty": "RSA", "pub": rsa_public, "format": "PEM"},
            {"kid": "ec", "alg": "ES256", "kty": "EC", "pub": ec_public}
        ]}}),
    )
    .await;
    policy_for_introspector(&app, "hs-all", "hs", Value::Null).await;
    policy_for_introspector(&app, "keys-all", "keys", Value::Null).await;
    // jwt.secret: HS256 only.
    assert_eq!(
        status_with(&app, &hs(HS_KEY, None, &claims("https://hs.example", "u1"))).await,
        200
    );
    refused(
        &app,
        &hs(
            "another-shared-key-of-32-bytes!!",
            None,
            &claims("https://hs.example", "u1"),
        ),
        "external_signature",
    )
    .await;
    let hs384 = mint(
        Algorithm::HS384,
        &EncodingKey::from_secret(HS_KEY.as_bytes()).unwrap(),
        None,
        None,
        &claims("https://hs.example", "u1"),
    );
    refused(&app, &hs384, "external_algorithm").await;
    // jwt.keys: each key by its kid and alg.
    let rsa = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let ec = EncodingKey::from_ec_pem(&ec_private).unwrap();
    assert_eq!(
        status_with(&app, &hs(HS_KEY, Some("hmac"), &claims(ISS, "u1"))).await,
        200
    );
    assert_eq!(
        status_with(
            &app,
            &mint(
                Algorithm::RS256,
                &rsa,
                Some("rsa"),
                None,
                &claims(ISS, "u1")
            )
        )
        .await,
        200
    );
    assert_eq!(
        status_with(
            &app,
            &mint(Algorithm::ES256, &ec, Some("ec"), None, &claims(ISS, "u1"))
        )
        .await,
        200
    );
    // Without a kid, the keys of the token's alg are tried in order.
    assert_eq!(
        status_with(
            &app,
            &mint(Algorithm::RS256, &rsa, None, None, &claims(ISS, "u1"))
        )
        .await,
        200
    );
    // The kid must name a key of that alg.
    refused(
        &app,
        &mint(Algorithm::RS256, &rsa, Some("ec"), None, &claims(ISS, "u1")),
        "external_unknown_key",
    )
    .await;
    // RS384 with the RS256 key: no key is configured for RS384.
    refused(
        &app,
        &mint(
            Algorithm::RS384,
            &rsa,
            Some("rsa"),
            None,
            &claims(ISS, "u1"),
        ),
        "external_algorithm",
    )
    .await;
    // HS256 signed with the RSA public key's PEM as the secret: naming the
    // RSA key's kid finds no HS key of that kid; naming none, only the real
    // HMAC key is tried (the RSA key verifies RS256 alone).
    let pem_as_secret = EncodingKey::from_secret(rsa_public.as_bytes()).unwrap();
    let confused = mint(
        Algorithm::HS256,
        &pem_as_secret,
        Some("rsa"),
        None,
        &claims(ISS, "u1"),
    );
    refused(&app, &confused, "external_unknown_key").await;
    let confused = mint(
        Algorithm::HS256,
        &pem_as_secret,
        None,
        None,
        &claims(ISS, "u1"),
    );
    refused(&app, &confused, "external_signature").await;
    // A policy linked to one introspector does not serve another's tokens.
    must_put_introspector(
        &app,
        "hs2",
        json!({"type": "jwt", "jwt": {"iss": "https://hs2.example", "secret": HS_KEY}}),
    )
    .await;
    let other = hs(HS_KEY, None, &claims("https://hs2.example", "u1"));
    bearer(&app, "/fhir/Patient?_count=1", &other)
        .await
        .assert_outcome(403, "no access policy allows");
    // `iss` must match exactly.
    refused(
        &app,
        &hs(HS_KEY, Some("hmac"), &claims(&format!("{ISS}/"), "u1")),
        "external_unknown_issuer",
    )
    .await;
    // The asymmetric verdict is cached: the second use of a token is a hit.
    let token = mint(Algorithm::ES256, &ec, Some("ec"), None, &claims(ISS, "u2"));
    assert_eq!(status_with(&app, &token).await, 200);
    let hits = metric(
        &app,
        "fhirbox_external_token_cache_hits_total{introspector=\"keys\",result=\"hit\"}",
    )
    .await;
    assert_eq!(status_with(&app, &token).await, 200);
    assert_eq!(
        metric(
            &app,
            "fhirbox_external_token_cache_hits_total{introspector=\"keys\",result=\"hit\"}"
        )
        .await,
        hits + 1
    );
    // A changed introspector drops its cached verdicts: the ES key is gone now.
    must_put_introspector(
        &app,
        "keys",
        json!({"type": "jwt", "jwt": {"iss": ISS, "keys": [
        {"kid": "rsa", "alg": "RS256", "pub": rsa_public}]}}),
    )
    .await;
    refused(&app, &token, "external_algorithm").await;
    // Own tokens still work beside external ones.
    assert_eq!(app.get("/fhir/Patient?_count=1").await.status, 200);
}

async fn opaque_tokens_are_introspected_and_never_cached_past_exp(backend: Backend) {
    let provider = OidcProvider::start_with(ProviderOptions {
        token_ttl: 3,
        ..Default::default()
    });
    let app = TestApp::spawn(backend).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("fhirbox:rs-secret")
    );
    must_put_introspector(&app, "op", json!({"type": "opaque", "cache_ttl": 300,
        "introspection_endpoint": {"url": provider.introspection_endpoint(), "authorization": basic}})).await;
    // The introspection response is under `token`.
    policy_for_introspector(
        &app,
        "active",
        "op",
        json!({"token": {"active": true, "client_id": "svc", "scope": "#read"}}),
    )
    .await;
    let token = provider.token("urn:fhirbox:opaque", "read").await;
    assert_eq!(status_with(&app, &token).await, 200);
    let hits = "fhirbox_external_token_cache_hits_total{introspector=\"op\",result=\"hit\"}";
    let before = metric(&app, hits).await;
    assert_eq!(status_with(&app, &token).await, 200);
    assert_eq!(
        metric(&app, hits).await,
        before + 1,
        "the second use is served from the cache"
    );
    assert!(metric(&app, "fhirbox_external_introspection_duration_seconds_count{introspector=\"op\",result=\"active\"}").await >= 1);
    // The policy's condition on the response holds.
    let write_only = provider.token("urn:fhirbox:opaque", "write").await;
    assert_eq!(status_with(&app, &write_only).await, 403);
    // A revoked token, and one the provider never issued: inactive.
    let revoked = provider.token("urn:fhirbox:opaque", "read").await;
    provider.revoke(&revoked).await;
    refused(&app, &revoked, "external_inactive").await;
    refused(&app, "not-a-token-the-provider-issued", "external_inactive").await;
    // The cache never outlives the token: after its exp the provider is asked
    // again, and says inactive.
    let expired = wait_until_async(Duration::from_secs(10), || async {
        status_with(&app, &token).await == 401
    })
    .await;
    assert!(
        expired,
        "an expired opaque token was still accepted from the cache"
    );
}

async fn a_silent_introspection_endpoint_gives_503_in_bounded_time(backend: Backend) {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/introspect", silent.local_addr().unwrap());
    let app = TestApp::spawn_with(backend, |s| s.issuer_timeout = Duration::from_millis(500)).await;
    must_put_introspector(
        &app,
        "op",
        json!({"type": "opaque", "introspection_endpoint": {"url": url}}),
    )
    .await;
    policy_for_introspector(&app, "all", "op", Value::Null).await;
    let before = failures(&app, "external_issuer_unavailable").await;
    let started = Instant::now();
    let r = bearer(&app, "/fhir/Patient?_count=1", "an-opaque-token").await;
    let took = started.elapsed();
    r.assert_outcome(503, "could not be checked");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        failures(&app, "external_issuer_unavailable").await,
        before + 1
    );
    assert!(metric(&app, "fhirbox_external_introspection_duration_seconds_count{introspector=\"op\",result=\"error\"}").await >= 1);
    // A key set that never comes: 503 in bounded time too.
    must_put_introspector(
        &app,
        "keys",
        json!({"type": "jwt", "jwt": {"iss": ISS}, "jwks_uri": url}),
    )
    .await;
    let (private, _) = rsa_pair();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let token = mint(Algorithm::RS256, &key, Some("k1"), None, &claims(ISS, "u1"));
    let started = Instant::now();
    bearer(&app, "/fhir/Patient?_count=1", &token)
        .await
        .assert_outcome(503, "could not be checked");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

async fn vault_backed_keys_rotate_without_restart_under_load(backend: Backend) {
    let v1 = "hmac-key-version-1-of-32-bytes!!";
    let v2 = "hmac-key-version-2-of-32-bytes!!";
    let vault = Vault::new(&[("hs", v1), ("kid-key", v1)]);
    vault.write_config(&json!({"secret": {
        "hs": {"path": vault.secret_path("hs"), "scope": ["TokenIntrospector/hs"]},
        "kid-key": {"path": vault.secret_path("kid-key"), "scope": ["TokenIntrospector"], "rotation_grace": "5s"}
    }}));
    let app = spawn_with_vault(backend, &vault).await;
    must_put_introspector(
        &app,
        "hs",
        json!({"type": "jwt", "jwt": {"iss": "https://hs.example", "_secret": reference("hs")}}),
    )
    .await;
    must_put_introspector(&app, "keys", json!({"type": "jwt", "jwt": {"iss": ISS, "keys": [{"kid": "a", "alg": "HS256", "_k": reference("kid-key")}]}})).await;
    policy_for_introspector(&app, "hs-all", "hs", Value::Null).await;
    policy_for_introspector(&app, "keys-all", "keys", Value::Null).await;
    let hs_token = |key: &str| hs(key, None, &claims("https://hs.example", "u1"));
    let kid_token = |key: &str| hs(key, Some("a"), &claims(ISS, "u1"));
    assert_eq!(status_with(&app, &hs_token(v1)).await, 200);
    assert_eq!(status_with(&app, &kid_token(v1)).await, 200);
    // Rotations under concurrent requests: only 200 or 401, never anything else.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for n in 0..4 {
        let client = app.anon.clone();
        let url = app.url("/fhir/Patient?_count=1");
        let stop = stop.clone();
        let tokens = [hs_token(v1), hs_token(v2), kid_token(v1), kid_token(v2)];
        load.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut i = n;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .get(&url)
                    .bearer_auth(&tokens[i % 4])
                    .send()
                    .await
                    .unwrap();
                seen.insert(r.status().as_u16());
                i += 1;
            }
            seen
        }));
    }
    for (old, new) in [(v1, v2), (v2, v1), (v1, v2)] {
        vault.rotate("hs", new.as_bytes());
        vault.rotate("kid-key", new.as_bytes());
        let applied = wait_until_async(Duration::from_secs(2), || async {
            status_with(&app, &hs_token(new)).await == 200
                && status_with(&app, &hs_token(old)).await == 401
        })
        .await;
        assert!(applied, "the rotated jwt.secret did not apply within 2 s");
        assert_eq!(status_with(&app, &kid_token(new)).await, 200);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let seen = task.await.unwrap();
        assert!(seen.iter().all(|s| *s == 200 || *s == 401), "{seen:?}");
    }
    // jwt.keys[].k has a 5 s rotation_grace: the old key works for it, then stops.
    assert_eq!(
        status_with(&app, &kid_token(v1)).await,
        200,
        "inside the grace"
    );
    let ended = wait_until_async(Duration::from_secs(10), || async {
        status_with(&app, &kid_token(v1)).await == 401
    })
    .await;
    assert!(ended, "the grace never ended");
    assert_eq!(status_with(&app, &kid_token(v2)).await, 200);
    // /admin/secrets says which introspector uses each secret.
    let admin = app.get("/admin/secrets").await.json();
    let used = |name: &str| {
        admin["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["usedBy"].clone())
            .unwrap()
    };
    assert_eq!(used("hs"), json!(["TokenIntrospector/hs"]));
    assert_eq!(used("kid-key"), json!(["TokenIntrospector/keys"]));
}

async fn a_vault_backed_authorization_rotates_without_restart(backend: Backend) {
    let provider = OidcProvider::start();
    let encode = |id: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };
    let first = encode("fhirbox", "rs-secret");
    let second = encode("fhirbox2", "rs-secret-2");
    let vault = Vault::new(&[("introspect", &first)]);
    vault.write_config(&json!({"secret": {"introspect": {"path": vault.secret_path("introspect"), "scope": ["TokenIntrospector/op"]}}}));
    let app = spawn_with_vault(backend, &vault).await;
    must_put_introspector(&app, "op", json!({"type": "opaque", "cache_ttl": 1,
        "introspection_endpoint": {"url": provider.introspection_endpoint(), "_authorization": reference("introspect")}})).await;
    policy_for_introspector(&app, "all", "op", Value::Null).await;
    let mut tokens = Vec::new();
    for _ in 0..24 {
        tokens.push(provider.token("urn:fhirbox:opaque", "read").await);
    }
    assert_eq!(status_with(&app, &tokens[0]).await, 200);
    // A wrong value applies to the next call: the provider refuses fhirbox, so 503.
    vault.rotate("introspect", encode("fhirbox", "wrong").as_bytes());
    let applied = wait_until_async(Duration::from_secs(4), || async {
        status_with(&app, &tokens[1]).await == 503
    })
    .await;
    assert!(applied, "the rotated authorization value was not used");
    // Rotations between two good credentials while requests run: only 200.
    vault.rotate("introspect", first.as_bytes());
    assert!(
        wait_until_async(Duration::from_secs(4), || async {
            status_with(&app, &tokens[2]).await == 200
        })
        .await
    );
    let runs = tokens[3..].chunks(7).map(|chunk| {
        let client = app.anon.clone();
        let url = app.url("/fhir/Patient?_count=1");
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                for token in &chunk {
                    seen.push(
                        client
                            .get(&url)
                            .bearer_auth(token)
                            .send()
                            .await
                            .unwrap()
                            .status()
                            .as_u16(),
                    );
                }
            }
            seen
        })
    });
    let runs: Vec<_> = runs.collect();
    for value in [&second, &first, &second] {
        vault.rotate("introspect", value.as_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for run in runs {
        let seen = run.await.unwrap();
        assert!(seen.iter().all(|s| *s == 200), "{seen:?}");
    }
}

async fn bundles_and_admin_types_hold_for_external_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_patient("p1", "Chalmers").await;
    must_put_introspector(
        &app,
        "hs",
        json!({"type": "jwt", "jwt": {"iss": "https://hs.example", "secret": HS_KEY}}),
    )
    .await;
    // Reads of Patients only, and batches (whose entries are checked one by one).
    policy_for_introspector(
        &app,
        "patients",
        "hs",
        json!({"request-method": "get", "uri": "#^/fhir/Patient"}),
    )
    .await;
    policy_for_introspector(
        &app,
        "batches",
        "hs",
        json!({"request-method": "post", "uri": "/fhir"}),
    )
    .await;
    let token = hs(HS_KEY, None, &claims("https://hs.example", "nurse-7"));
    assert_eq!(bearer(&app, "/fhir/Patient/p1", &token).await.status, 200);
    assert_eq!(bearer(&app, "/fhir/Observation", &token).await.status, 403);
    // Each bundle entry goes through the same decision.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/p1"}},
        {"request": {"method": "GET", "url": "Observation"}}
    ]});
    let r = app
        .send(app.fhir(app.anon.post(app.url("/fhir")).bearer_auth(&token), &batch))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.json()["entry"].clone();
    assert!(
        entries[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"),
        "{entries}"
    );
    assert!(
        entries[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403"),
        "{entries}"
    );
    // Includes: a referring Observation the token may not read is withheld,
    // and shown once a policy lets it read Observations.
    let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"text": "heart rate"}, "subject": {"reference": "Patient/p1"}});
    assert_eq!(app.put("/fhir/Observation/o1", &obs).await.status, 201);
    let rev = "/fhir/Patient?_id=p1&_revinclude=Observation:subject";
    let withheld = bearer(&app, rev, &token).await;
    assert_eq!(withheld.status, 200, "{}", withheld.text);
    assert!(!withheld.text.contains("heart rate"), "{}", withheld.text);
    assert!(withheld.text.contains("withheld"), "{}", withheld.text);
    // Chains: an Observation search through Patient needs both types.
    let chain = "/fhir/Observation?subject:Patient.name=Chalmers";
    policy_for_introspector(
        &app,
        "observations",
        "hs",
        json!({"request-method": "get", "uri": "#^/fhir/Observation"}),
    )
    .await;
    let shown = bearer(&app, rev, &token).await;
    assert!(shown.text.contains("heart rate"), "{}", shown.text);
    let found = bearer(&app, chain, &token).await;
    assert_eq!(found.status, 200, "{}", found.text);
    assert!(found.text.contains("\"o1\""), "{}", found.text);
    app.delete("/fhir/AccessPolicy/patients").await;
    bearer(&app, chain, &token)
        .await
        .assert_outcome(403, "no access policy allows");
    // Even an allow-everything policy never lets another issuer's token
    // write the server's own types.
    policy_for_introspector(&app, "patients", "hs", Value::Null).await;
    let write = app
        .send(app.fhir(app.anon.put(app.url("/fhir/TokenIntrospector/evil")).bearer_auth(&token),
            &json!({"resourceType": "TokenIntrospector", "id": "evil", "type": "jwt", "jwt": {"iss": "https://evil", "secret": HS_KEY}})))
        .await;
    write.assert_outcome(403, "only the root client");
    assert_eq!(bearer(&app, "/admin/secrets", &token).await.status, 403);
}

async fn tokens_keys_and_credentials_never_leak(backend: Backend) {
    let provider = OidcProvider::start();
    let authorization = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("fhirbox:rs-secret")
    );
    let key = "vault-held-hmac-key-never-shown!";
    let vault = Vault::new(&[("introspect", &authorization), ("hs", key)]);
    vault.write_config(&json!({"secret": {
        "introspect": {"path": vault.secret_path("introspect"), "scope": ["TokenIntrospector"]},
        "hs": {"path": vault.secret_path("hs"), "scope": ["TokenIntrospector"]}}}));
    let app = spawn_with_vault(backend, &vault).await;
    must_put_introspector(&app, "op", json!({"type": "opaque", "introspection_endpoint": {"url": provider.introspection_endpoint(), "_authorization": reference("introspect")}})).await;
    must_put_introspector(
        &app,
        "hs",
        json!({"type": "jwt", "jwt": {"iss": "https://hs.example", "_secret": reference("hs")}}),
    )
    .await;
    policy_for_introspector(&app, "op-all", "op", Value::Null).await;
    let opaque = provider.token("urn:fhirbox:opaque", "read").await;
    let jwt = hs(key, None, &claims("https://hs.example", "u1"));
    let bad_jwt = hs(
        "some-other-hmac-key-of-32-bytes!",
        None,
        &claims("https://hs.example", "u1"),
    );
    let mut seen = String::new();
    for token in [&opaque, &jwt, &bad_jwt, &format!("{opaque}x")] {
        let r = bearer(&app, "/fhir/Patient?_count=1", token).await;
        seen.push_str(&r.text);
        seen.push_str(&format!("{:?}", r.headers));
    }
    for path in [
        "/fhir/TokenIntrospector/op",
        "/fhir/TokenIntrospector/hs",
        "/fhir/TokenIntrospector",
        "/admin/secrets",
        "/metrics",
    ] {
        seen.push_str(&app.get(path).await.text);
    }
    let logs = captured_logs();
    let stored = crate::helpers::database_bytes(&app);
    let stored = String::from_utf8_lossy(&stored);
    for (what, value) in [
        ("opaque token", opaque.as_str()),
        ("jwt", jwt.as_str()),
        ("hmac key", key),
        ("authorization", authorization.as_str()),
        ("basic credential", "rs-secret"),
    ] {
        assert!(!seen.contains(value), "{what} in a response");
        assert!(!logs.contains(value), "{what} in the logs");
        if what != "opaque token" && what != "jwt" {
            assert!(!stored.contains(value), "{what} in the database");
        }
    }
}
