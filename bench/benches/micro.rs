//! Micro-benchmarks of the hot paths, in nanoseconds per operation:
//! secret resolution on a cache hit, Basic header parse plus verification of
//! an already-verified credential, matcho policy evaluation, and the JSON read
//! path (stored bytes to HTTP response).

use std::hint::black_box;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use fhirbox_rest::reply::resource_reply;
use fhirbox_rest::ReturnPreference;
use fhirbox_secrets::{Requester, ResolverOptions, SecretResolver};
use fhirbox_server::auth::clients::Grant;
use fhirbox_server::auth::credentials::{self, Credentials};
use fhirbox_server::auth::policy::{Engine as PolicyEngine, Policy};
use fhirbox_server::auth::{secret_hash, AuthService};
use fhirbox_server::response::render;
use fhirbox_store::{ResourceWrite, Store, StoredResource, WriteKind, WriteOp};
use serde_json::json;

fn secret_resolution(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client-secret");
    std::fs::write(&file, "super-secret-value").unwrap();
    let config = dir.path().join("vault.json");
    std::fs::write(
        &config,
        json!({"secret": {"client-secret": {"path": file.display().to_string(), "scope": ["Client/basic"]}}}).to_string(),
    )
    .unwrap();
    let resolver = SecretResolver::start(&config, ResolverOptions::new(["Client"])).unwrap();
    let who = Requester::new("Client", "basic");
    c.bench_function("secret resolve (cache hit)", |b| {
        b.iter(|| resolver.resolve(black_box("client-secret"), &who).unwrap())
    });
    c.bench_function("secret verify_client_secret (cache hit)", |b| {
        b.iter(|| {
            resolver
                .verify_client_secret(
                    black_box("client-secret"),
                    &who,
                    black_box(b"super-secret-value"),
                )
                .unwrap()
        })
    });
}

fn basic_auth(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = runtime.block_on(async {
        let store = Store::open(&format!("sqlite:{}/bench.db", dir.path().display())).await.unwrap();
        let phc = secret_hash::hash(b"literal-secret").unwrap();
        let body = json!({"resourceType": "Client", "id": "bench", "grant_types": ["basic"], "_secret": secret_hash::masked_with_hash(&phc)});
        store
            .write(WriteOp {
                resource_type: "Client".into(),
                id: "bench".into(),
                kind: WriteKind::Put(body),
                if_match: None,
                finalize: None,
                index: None,
                matching: None,
                notify: None,
            })
            .await
            .unwrap();
        AuthService::start(&store, None, None, None).await.unwrap()
    });
    let mut headers = HeaderMap::new();
    let encoded = base64::engine::general_purpose::STANDARD.encode("bench:literal-secret");
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
    );
    let verify = || {
        let Ok(Credentials::Basic { id, secret }) = credentials::from_headers(black_box(&headers))
        else {
            panic!("parses")
        };
        runtime
            .block_on(auth.verify_secret(&id, &secret, &[Grant::Basic], None))
            .unwrap()
    };
    verify(); // the one KDF run; every later check hits the verified-credential cache
    c.bench_function("basic header parse + verify (cached)", |b| b.iter(verify));
}

fn matcho(c: &mut Criterion) {
    let policy = Policy::parse(&json!({
        "engine": "matcho",
        "matcho": {"request-method": {"$enum": ["get", "head"]}, "uri": "#^/fhir/Patient", "params": {"resource/type": "Patient"}, "client": {"id": "present?"}}
    }))
    .unwrap();
    let PolicyEngine::Matcho(pattern) = policy.engine else {
        panic!("matcho")
    };
    let context = json!({"request-method": "get", "uri": "/fhir/Patient/p1", "query-string": "",
        "params": {"resource/type": "Patient", "resource/id": "p1"}, "client": {"id": "reader", "resourceType": "Client"}});
    c.bench_function("matcho policy evaluation", |b| {
        b.iter(|| assert!(pattern.matches(Some(black_box(&context)))))
    });
}

fn read_path(c: &mut Criterion) {
    let body = json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3", "lastUpdated": "2026-11-29T06:00:00.000Z"},
        "name": [{"family": "Doe", "given": ["Jane", "Q"]}], "gender": "female", "birthDate": "1970-01-01",
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
        "telecom": [{"system": "phone", "value": "555-0100"}]})
    .to_string();
    let stored = Arc::new(StoredResource {
        resource_type: "Patient".into(),
        id: "p1".into(),
        version_id: 3,
        last_updated: 1_795_000_000_000_000,
        deleted: false,
        body,
    });
    c.bench_function("JSON read path (stored bytes to response)", |b| {
        b.iter(|| {
            render(resource_reply(
                200,
                black_box(&stored),
                None,
                ReturnPreference::Representation,
                "",
            ))
        })
    });
}

/// Structural validation per resource (docs/validation.md): a Patient and an
/// Observation of the Synthea-shaped fixture, and a transaction of 2,000
/// entries (one validation per entry, as a transaction does).
fn validation(c: &mut Criterion) {
    use fhirbox_validation::{UnknownElements, Validator};
    let validator = Validator::new(UnknownElements::Refuse).unwrap();
    let bundle: serde_json::Value = serde_json::from_str(include_str!(
        "../../crates/server/tests/fixtures/synthea-style-transaction.json"
    ))
    .unwrap();
    let resources: Vec<serde_json::Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    let of_type = |t: &str| {
        resources
            .iter()
            .find(|r| r["resourceType"] == t)
            .unwrap()
            .clone()
    };
    let patient = of_type("Patient");
    let observation = resources[6].clone();
    assert_eq!(observation["code"]["text"], "Blood Pressure");
    c.bench_function("validate a Synthea Patient", |b| {
        b.iter(|| validator.validate("Patient", black_box(&patient)).unwrap())
    });
    c.bench_function("validate a Synthea Observation (blood pressure)", |b| {
        b.iter(|| {
            validator
                .validate("Observation", black_box(&observation))
                .unwrap()
        })
    });
    let entries: Vec<&serde_json::Value> = resources.iter().cycle().take(2000).collect();
    c.bench_function("validate the entries of a 2,000-entry transaction", |b| {
        b.iter(|| {
            for resource in &entries {
                let t = resource["resourceType"].as_str().unwrap();
                validator.validate(t, black_box(resource)).unwrap();
            }
        })
    });
    c.bench_function(
        "index rows of a Synthea Patient (every R4 parameter)",
        |b| b.iter(|| fhirbox_rest::indexing::entries("Patient", black_box(&patient))),
    );
    eprintln!(
        "index rows of the Synthea Patient: {}",
        fhirbox_rest::indexing::entries("Patient", &patient).len()
    );
    c.bench_function("compile the validator of every type (once at start)", |b| {
        b.iter(|| Validator::new(UnknownElements::Refuse).unwrap())
    });
}

criterion_group!(
    benches,
    secret_resolution,
    basic_auth,
    matcho,
    read_path,
    validation
);
criterion_main!(benches);
