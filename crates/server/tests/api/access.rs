//! Access control that holds (docs/security.md): route facts cannot be
//! supplied from the query, every bundle entry is authorized like its own
//! request, server types are written by root only, PATCH never sees secret
//! material, tokens die with their client, bounded queries, strict JSON.
//! Every test proves the denial and that the legitimate path still works.

use std::time::Duration;

use fhirbox_test_support::wait_until_async;
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{database_bytes, Resp, TestApp};

const SECRET: &str = "access-test-secret";

/// Stores a client with a literal secret and one matcho policy.
async fn client_with_matcho(app: &TestApp, id: &str, pattern: Value) {
    app.matcho_client(id, SECRET, pattern).await;
}

/// A request as client `id`.
async fn send_as(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    id: &str,
    body: Option<&Value>,
) -> Resp {
    app.send_as(method, path, (id, SECRET), body).await
}

async fn get_as(app: &TestApp, path: &str, id: &str) -> Resp {
    send_as(app, reqwest::Method::GET, path, id, None).await
}

fn forbidden(r: &Resp) {
    assert_eq!(r.status, 403, "expected 403, got {}: {}", r.status, r.text);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
}

fn bundle(kind: &str, entries: Value) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

async fn token(app: &TestApp, id: &str, secret: &str) -> String {
    let r = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth(id, Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["access_token"].as_str().unwrap().to_owned()
}

async fn bearer(app: &TestApp, token: &str) -> Resp {
    app.send(app.anon.get(app.url("/fhir/Patient")).bearer_auth(token))
        .await
}

/// The count of `fhirbox_auth_failures_total{reason}` (read as root).
async fn auth_failures(app: &TestApp, reason: &str) -> u64 {
    let prefix = format!("fhirbox_auth_failures_total{{reason=\"{reason}\"}} ");
    app.get("/metrics")
        .await
        .text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

backend_tests!(
    query_parameters_cannot_supply_or_shadow_route_facts,
    a_create_only_client_cannot_smuggle_writes_through_a_bundle,
    every_bundle_entry_is_authorized_as_its_own_request,
    only_root_writes_clients_policies_and_other_server_types,
    patch_never_reads_the_stored_hash,
    fhirpath_patch_and_shaped_reads_are_authorized_like_their_routes,
    literal_secrets_of_other_fields_are_never_returned_but_kept,
    tokens_die_with_their_client_generation,
    credentials_are_checked_before_grants,
    queries_are_bounded,
    duplicate_keys_full_urls_and_bad_meta_are_refused,
    a_wrong_secret_flood_does_not_starve_legitimate_clients,
    patches_and_bundles_are_bounded,
    conditional_writes_need_the_right_to_search
);

/// A conditional write searches, and a conditional create answers its match
/// with the stored resource: the search is authorized like
/// `GET /fhir/{type}?{criteria}`, over REST and in bundle entries, so a
/// client that may write but not search cannot probe what exists.
async fn conditional_writes_need_the_right_to_search(app: TestApp) {
    let stored = app.put_patient("secretive", "Hidden").await;
    assert_eq!(stored["id"], "secretive");
    client_with_matcho(
        &app,
        "creator",
        json!({"request-method": "post", "uri": "/fhir/Patient"}),
    )
    .await;
    client_with_matcho(
        &app,
        "upserter",
        json!({"uri": "/fhir/Patient", "request-method": {"$enum": ["post", "get"]}}),
    )
    .await;
    let body = json!({"resourceType": "Patient", "name": [{"family": "Probe"}]});
    let conditional = |id: &'static str| {
        app.anon
            .post(app.url("/fhir/Patient"))
            .basic_auth(id, Some(SECRET))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", "family=Hidden")
            .body(body.to_string())
    };
    let denied = app.send(conditional("creator")).await;
    forbidden(&denied);
    assert!(!denied.text.contains("secretive"), "{}", denied.text);
    // The plain create is still allowed.
    let plain = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir/Patient",
        "creator",
        Some(&body),
    )
    .await;
    assert_eq!(plain.status, 201, "{}", plain.text);
    // A client that may search gets the match.
    let allowed = app.send(conditional("upserter")).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert_eq!(allowed.json()["id"], "secretive");

    // The same inside a bundle (POST /fhir is allowed to both for this check).
    for id in ["creator", "upserter"] {
        let policy = format!("{id}-bundle");
        app.put(
            &format!("/fhir/AccessPolicy/{policy}"),
            &json!({"resourceType": "AccessPolicy", "id": policy, "engine": "matcho",
                    "link": [{"reference": format!("Client/{id}")}],
                    "matcho": {"request-method": "post", "uri": "/fhir"}}),
        )
        .await;
    }
    let entries = bundle(
        "batch",
        json!([{"resource": body, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "family=Hidden"}}]),
    );
    let as_creator = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir",
        "creator",
        Some(&entries),
    )
    .await;
    assert_eq!(as_creator.status, 200, "{}", as_creator.text);
    assert_eq!(
        as_creator.json()["entry"][0]["response"]["status"],
        "403 Forbidden"
    );
    assert!(
        !as_creator.text.contains("secretive"),
        "{}",
        as_creator.text
    );
    let as_upserter = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir",
        "upserter",
        Some(&entries),
    )
    .await;
    assert_eq!(
        as_upserter.json()["entry"][0]["response"]["status"],
        "200 OK"
    );
    assert_eq!(
        as_upserter.json()["entry"][0]["resource"]["id"],
        "secretive"
    );
    let transaction = bundle(
        "transaction",
        json!([{"resource": body, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "family=Hidden"}}]),
    );
    let r = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir",
        "creator",
        Some(&transaction),
    )
    .await;
    forbidden(&r);

    // A conditional update, patch or delete searches by its query string:
    // the search is authorized too.
    client_with_matcho(
        &app,
        "writer",
        json!({"params": {"resource/type": "Patient"}, "request-method": {"$enum": ["put", "patch", "delete"]}}),
    )
    .await;
    client_with_matcho(
        &app,
        "rewriter",
        json!({"params": {"resource/type": "Patient"}, "request-method": {"$enum": ["put", "patch", "delete", "get"]}}),
    )
    .await;
    let replacement =
        json!({"resourceType": "Patient", "name": [{"family": "Hidden"}], "gender": "other"});
    let merge = json!({"gender": "male"});
    for (method, body, media) in [
        (reqwest::Method::PUT, &replacement, "application/fhir+json"),
        (
            reqwest::Method::PATCH,
            &merge,
            "application/merge-patch+json",
        ),
        (reqwest::Method::DELETE, &json!(null), ""),
    ] {
        let request = |id: &'static str| {
            let mut req = app
                .anon
                .request(method.clone(), app.url("/fhir/Patient?family=Hidden"))
                .basic_auth(id, Some(SECRET));
            if !media.is_empty() {
                req = req.header("content-type", media).body(body.to_string());
            }
            req
        };
        let denied = app.send(request("writer")).await;
        forbidden(&denied);
        assert!(!denied.text.contains("secretive"), "{}", denied.text);
        let allowed = app.send(request("rewriter")).await;
        assert!(
            allowed.status == 200 || allowed.status == 204,
            "{method}: {} {}",
            allowed.status,
            allowed.text
        );
    }
    // The writer's denials changed nothing; the rewriter's delete came last.
    app.get("/fhir/Patient/secretive")
        .await
        .assert_outcome(410, "deleted");

    // A policy on the type's URL with no method let a client search and
    // create; it does not let it overwrite or delete by criteria what it
    // could not by id: the write is checked again as `put /fhir/Patient/{id}`
    // once the match is known.
    app.put_patient("kept", "Kept").await;
    client_with_matcho(&app, "type-url", json!({"uri": "/fhir/Patient"})).await;
    let as_type_url = |method: reqwest::Method, media: &'static str, body: String| {
        let mut req = app
            .anon
            .request(method, app.url("/fhir/Patient?family=Kept"))
            .basic_auth("type-url", Some(SECRET));
        if !media.is_empty() {
            req = req.header("content-type", media).body(body);
        }
        app.send(req)
    };
    let put = as_type_url(
        reqwest::Method::PUT,
        "application/fhir+json",
        json!({"resourceType": "Patient", "name": [{"family": "Kept"}], "gender": "other"})
            .to_string(),
    )
    .await;
    put.assert_outcome(403, "no access policy allows");
    let patch = as_type_url(
        reqwest::Method::PATCH,
        "application/merge-patch+json",
        json!({"gender": "other"}).to_string(),
    )
    .await;
    forbidden(&patch);
    let delete = as_type_url(reqwest::Method::DELETE, "", String::new()).await;
    forbidden(&delete);
    let kept = app.get("/fhir/Patient/kept").await.json();
    assert_eq!(kept["meta"]["versionId"], "1");
    assert!(kept.get("gender").is_none());
    // It still searches and creates as before.
    assert_eq!(
        get_as(&app, "/fhir/Patient?family=Kept", "type-url")
            .await
            .status,
        200
    );
}

async fn query_parameters_cannot_supply_or_shadow_route_facts(app: TestApp) {
    app.put_patient("p1", "One").await;
    app.put_patient("p2", "Two").await;
    app.put("/fhir/Observation/o1", &json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}})).await;
    // The README's "read patients only" policy.
    client_with_matcho(
        &app,
        "reader",
        json!({"request-method": "get", "params": {"resource/type": "Patient"}}),
    )
    .await;
    assert_eq!(get_as(&app, "/fhir/Patient", "reader").await.status, 200);
    assert_eq!(get_as(&app, "/fhir/Patient/p1", "reader").await.status, 200);
    assert_eq!(
        get_as(&app, "/fhir/Patient/p1/_history", "reader")
            .await
            .status,
        200
    );
    for path in [
        "/fhir?resource/type=Patient",
        "/fhir/_history?resource/type=Patient",
        "/fhir/Observation?resource/type=Patient",
        "/fhir/Observation/o1?resource/type=Patient",
        "/fhir?resource%2Ftype=Patient",
        "/fhir?resource%2ftype=Patient",
        "/fhir/_history?resource/type=Patient&resource/type=Patient",
    ] {
        forbidden(&get_as(&app, path, "reader").await);
    }
    // A percent-encoded route is decoded before the policy sees it.
    assert_eq!(
        get_as(&app, "/fhir/Pat%69ent/p1", "reader").await.status,
        200
    );
    forbidden(&get_as(&app, "/fhir/Observ%61tion/o1", "reader").await);

    // An instance-only policy.
    client_with_matcho(&app, "one", json!({"request-method": "get", "params": {"resource/type": "Patient", "resource/id": "p1"}})).await;
    assert_eq!(get_as(&app, "/fhir/Patient/p1", "one").await.status, 200);
    forbidden(&get_as(&app, "/fhir/Patient?resource/id=p1", "one").await);
    forbidden(&get_as(&app, "/fhir/Patient/p2?resource/id=p1", "one").await);
    forbidden(&get_as(&app, "/fhir/Patient/p2/_history/1?resource/id=p1", "one").await);

    // Query values the handler applies stay usable, under params (Aidbox) and query.
    client_with_matcho(
        &app,
        "pinned",
        json!({"request-method": "get", "params": {"resource/type": "Patient", "_id": "p1"}}),
    )
    .await;
    assert_eq!(
        crate::helpers::entry_ids(&get_as(&app, "/fhir/Patient?_id=p1", "pinned").await.json()),
        ["p1"]
    );
    forbidden(&get_as(&app, "/fhir/Patient?_id=p2", "pinned").await);
    forbidden(&get_as(&app, "/fhir/Patient?_id=p1&_id=p2", "pinned").await);
    forbidden(&get_as(&app, "/fhir/Patient", "pinned").await);
    // A read ignores _id, so a read of another patient cannot borrow the pin.
    forbidden(&get_as(&app, "/fhir/Patient/p2?_id=p1", "pinned").await);
    // A parameter search applies is shown to policies, and the search is
    // limited by it: a pin on `patient` returns that patient's data only.
    app.put(
        "/fhir/Observation/o2",
        &json!({"resourceType": "Observation", "id": "o2", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}),
    )
    .await;
    client_with_matcho(&app, "by-patient", json!({"request-method": "get", "params": {"resource/type": "Observation", "patient": "p1"}})).await;
    let pinned = get_as(&app, "/fhir/Observation?patient=p1", "by-patient").await;
    assert_eq!(pinned.status, 200, "{}", pinned.text);
    assert_eq!(crate::helpers::entry_ids(&pinned.json()), ["o2"]);
    forbidden(&get_as(&app, "/fhir/Observation?patient=p2", "by-patient").await);
    // A parameter search does not apply is never shown to policies: a pin on
    // it fails closed instead of passing a request that returns everything.
    client_with_matcho(&app, "by-nonsense", json!({"request-method": "get", "params": {"resource/type": "Observation", "nonsense": "p1"}})).await;
    forbidden(&get_as(&app, "/fhir/Observation?nonsense=p1", "by-nonsense").await);
    client_with_matcho(
        &app,
        "by-query",
        json!({"query": {"_id": "p2"}, "uri": "/fhir/Patient"}),
    )
    .await;
    assert_eq!(
        crate::helpers::entry_ids(
            &get_as(&app, "/fhir/Patient?_id=p2", "by-query")
                .await
                .json()
        ),
        ["p2"]
    );
    forbidden(&get_as(&app, "/fhir/Patient?_id=p1", "by-query").await);
}

async fn a_create_only_client_cannot_smuggle_writes_through_a_bundle(app: TestApp) {
    client_with_matcho(
        &app,
        "creator",
        json!({"request-method": "post", "params": {"resource/type": "Patient"}}),
    )
    .await;
    let grant_all = json!({"resourceType": "AccessPolicy", "id": "mine", "engine": "allow", "link": [{"reference": "Client/creator"}]});
    let tx = bundle(
        "transaction",
        json!([{"request": {"method": "PUT", "url": "AccessPolicy/mine"}, "resource": grant_all}]),
    );
    forbidden(
        &send_as(
            &app,
            reqwest::Method::POST,
            "/fhir?resource/type=Patient",
            "creator",
            Some(&tx),
        )
        .await,
    );
    assert_eq!(
        app.get("/fhir/AccessPolicy/mine").await.status,
        404,
        "nothing was applied"
    );
    // The legitimate path: a plain create.
    let created = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir/Patient",
        "creator",
        Some(&json!({"resourceType": "Patient"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
}

async fn every_bundle_entry_is_authorized_as_its_own_request(app: TestApp) {
    app.put_client("reader", "reader-secret", &["basic"]).await;
    app.put("/fhir/Observation/o1", &json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}})).await;
    // Allowed: POST anything (so POST /fhir, the bundle itself), nothing else.
    client_with_matcho(&app, "poster", json!({"request-method": "post"})).await;
    let entries = json!([
        {"request": {"method": "GET", "url": "Client/reader"}},
        {"request": {"method": "DELETE", "url": "Observation/o1"}},
        {"request": {"method": "PUT", "url": "Client/poster2"}, "resource": {"resourceType": "Client", "id": "poster2", "secret": "x", "grant_types": ["basic"]}},
        {"request": {"method": "GET", "url": "Observation?_id=o1"}},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
    ]);
    let batch = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir",
        "poster",
        Some(&bundle("batch", entries.clone())),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    let statuses: Vec<String> = batch.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses[..4],
        [
            "403 Forbidden",
            "403 Forbidden",
            "403 Forbidden",
            "403 Forbidden"
        ],
        "{statuses:?}"
    );
    assert_eq!(statuses[4], "201 Created");
    assert!(
        !batch.text.contains("reader-secret") && !batch.text.contains("\"Client\""),
        "{}",
        batch.text
    );
    assert_eq!(
        app.get("/fhir/Observation/o1").await.status,
        200,
        "the delete did not run"
    );
    assert_eq!(
        app.get("/fhir/Client/poster2").await.status,
        404,
        "the client was not created"
    );

    // A transaction with one denied entry fails whole.
    let before = app.get("/fhir/Patient?_total=accurate").await.json()["total"].clone();
    let tx = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir",
        "poster",
        Some(&bundle("transaction", entries)),
    )
    .await;
    forbidden(&tx);
    assert!(
        tx.json()["issue"][0]["expression"][0]
            .as_str()
            .unwrap()
            .starts_with("Bundle.entry["),
        "{}",
        tx.text
    );
    assert_eq!(
        app.get("/fhir/Patient?_total=accurate").await.json()["total"],
        before,
        "nothing was applied"
    );
    // And one the client may make passes.
    let ok = send_as(&app, reqwest::Method::POST, "/fhir", "poster",
        Some(&bundle("transaction", json!([{"fullUrl": "urn:uuid:1", "request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}}])))).await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    // A client whose policies do not allow POST /fhir cannot send bundles at all.
    client_with_matcho(
        &app,
        "patient-writer",
        json!({"params": {"resource/type": "Patient"}}),
    )
    .await;
    forbidden(
        &send_as(
            &app,
            reqwest::Method::POST,
            "/fhir",
            "patient-writer",
            Some(&bundle(
                "batch",
                json!([{"request": {"method": "GET", "url": "Patient"}}]),
            )),
        )
        .await,
    );
}

async fn only_root_writes_clients_policies_and_other_server_types(app: TestApp) {
    app.put_client("victim", "victim-secret", &["basic"]).await;
    app.put_client("admin-ish", SECRET, &["basic"]).await;
    app.allow_client("admin-ish-allow", "admin-ish").await;
    let takeover = json!({"resourceType": "Client", "id": "victim", "secret": "attacker", "grant_types": ["basic"]});
    let r = send_as(
        &app,
        reqwest::Method::PUT,
        "/fhir/Client/victim",
        "admin-ish",
        Some(&takeover),
    )
    .await;
    r.assert_outcome(403, "only the root client may");
    for (path, body) in [
        (
            "/fhir/AccessPolicy/p",
            json!({"resourceType": "AccessPolicy", "id": "p", "engine": "allow"}),
        ),
        (
            "/fhir/TokenIntrospector/t",
            json!({"resourceType": "TokenIntrospector", "id": "t", "type": "jwt"}),
        ),
        (
            "/fhir/IdentityProvider/i",
            json!({"resourceType": "IdentityProvider", "id": "i"}),
        ),
        (
            "/fhir/AidboxTopicDestination/d",
            json!({"resourceType": "AidboxTopicDestination", "id": "d"}),
        ),
        (
            "/fhir/AidboxSubscriptionTopic/s",
            json!({"resourceType": "AidboxSubscriptionTopic", "id": "s"}),
        ),
    ] {
        forbidden(&send_as(&app, reqwest::Method::PUT, path, "admin-ish", Some(&body)).await);
    }
    forbidden(
        &send_as(
            &app,
            reqwest::Method::POST,
            "/fhir/Client",
            "admin-ish",
            Some(&takeover),
        )
        .await,
    );
    forbidden(
        &send_as(
            &app,
            reqwest::Method::DELETE,
            "/fhir/Client/victim",
            "admin-ish",
            None,
        )
        .await,
    );
    let patch = app
        .send(
            app.anon
                .patch(app.url("/fhir/Client/victim"))
                .basic_auth("admin-ish", Some(SECRET))
                .header("content-type", "application/json-patch+json")
                .body(r#"[{"op":"add","path":"/active","value":false}]"#),
        )
        .await;
    forbidden(&patch);
    // The same in a bundle.
    let batch = send_as(
        &app,
        reqwest::Method::POST,
        "/fhir",
        "admin-ish",
        Some(&bundle(
            "batch",
            json!([{"request": {"method": "PUT", "url": "Client/victim"}, "resource": takeover}]),
        )),
    )
    .await;
    assert_eq!(
        batch.json()["entry"][0]["response"]["status"],
        "403 Forbidden",
        "{}",
        batch.text
    );
    // The victim still signs in with its own secret; reads stay with the policies.
    assert_eq!(
        app.get_as("/fhir/Client/victim", "victim", "victim-secret")
            .await
            .status,
        403,
        "victim has no policy"
    );
    app.allow_client("victim-allow", "victim").await;
    assert_eq!(
        app.get_as("/fhir/Patient", "victim", "victim-secret")
            .await
            .status,
        200
    );
    assert_eq!(
        get_as(&app, "/fhir/Client/victim", "admin-ish")
            .await
            .status,
        200
    );
    assert_eq!(
        send_as(
            &app,
            reqwest::Method::PUT,
            "/fhir/Patient/ok",
            "admin-ish",
            Some(&json!({"resourceType": "Patient", "id": "ok"}))
        )
        .await
        .status,
        201
    );
    // A secret reference on an ordinary field tells a client nothing about the config.
    let probe = json!({"resourceType": "Patient", "id": "probe", "_birthDate": {"extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"},
        {"url": "http://health-samurai.io/fhir/secret-reference", "valueString": "client-secret"}]}});
    let r = send_as(
        &app,
        reqwest::Method::PUT,
        "/fhir/Patient/probe",
        "admin-ish",
        Some(&probe),
    )
    .await;
    r.assert_outcome(422, "cannot refer to an external secret");
    assert!(
        !r.text.contains("vault config") && !r.text.contains("scope"),
        "{}",
        r.text
    );
    // Root still may.
    assert_eq!(app.put("/fhir/Client/victim", &json!({"resourceType": "Client", "id": "victim", "secret": "new", "grant_types": ["basic"]})).await.status, 200);
}

async fn patch_never_reads_the_stored_hash(app: TestApp) {
    app.put_client("patched", SECRET, &["basic"]).await;
    app.allow_client("patched-allow", "patched").await;
    let copy = app.patch("/fhir/Client/patched", &json!([{"op": "copy", "from": "/_secret/extension/1/valueString", "path": "/description"}])).await;
    assert_eq!(copy.status, 422, "{}", copy.text);
    assert!(!copy.text.contains("argon2"), "{}", copy.text);
    // `test` cannot be used as an oracle: the hash is not there to compare.
    let stored = String::from_utf8_lossy(&database_bytes(&app)).into_owned();
    let hash_start = stored.find("$argon2id$").expect("the hash is stored");
    let real_hash: String = stored[hash_start..]
        .chars()
        .take_while(|c| *c != '"')
        .collect();
    let right = app.patch("/fhir/Client/patched", &json!([{"op": "test", "path": "/_secret/extension/1/valueString", "value": real_hash}])).await;
    let wrong = app.patch("/fhir/Client/patched", &json!([{"op": "test", "path": "/_secret/extension/1/valueString", "value": "$argon2id$nope"}])).await;
    assert_eq!((right.status, wrong.status), (422, 422));
    let history = app.get("/fhir/Client/patched/_history").await;
    assert!(!history.text.contains("argon2"), "{}", history.text);
    // A patch that leaves the secret alone keeps it working.
    let ok = app
        .patch(
            "/fhir/Client/patched",
            &json!([{"op": "add", "path": "/description", "value": "renamed"}]),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(!ok.text.contains("argon2"));
    assert_eq!(get_as(&app, "/fhir/Patient", "patched").await.status, 200);
    // A merge patch that sets a new literal secret hashes it like a PUT:
    // the new secret works, the old one stops, and the value is never
    // stored or answered in clear.
    let new_secret = "merged-secret-value-0123456789";
    let merged = app
        .send(
            app.client
                .patch(app.url("/fhir/Client/patched"))
                .header("content-type", "application/merge-patch+json")
                .body(json!({"secret": new_secret}).to_string()),
        )
        .await;
    assert_eq!(merged.status, 200, "{}", merged.text);
    assert!(!merged.text.contains(new_secret) && !merged.text.contains("argon2"));
    assert_eq!(get_as(&app, "/fhir/Patient", "patched").await.status, 401);
    let fresh = app
        .send(
            app.anon
                .get(app.url("/fhir/Patient"))
                .basic_auth("patched", Some(new_secret)),
        )
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    let stored = String::from_utf8_lossy(&database_bytes(&app)).into_owned();
    assert!(!stored.contains(new_secret));
    // A FHIRPath Patch that replaces the secret hashes it too, and its
    // paths see the masked view: a where() on the hidden hash finds nothing.
    let fhirpath_secret = "fhirpath-secret-value-0123456789";
    let op = |kind: &str, path: &str, value: Value| {
        let mut parts = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        if !value.is_null() {
            parts.push(json!({"name": "value", "valueString": value}));
        }
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
    };
    let send = |body: Value| {
        app.client
            .patch(app.url("/fhir/Client/patched"))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
    };
    let oracle = app
        .send(send(op(
            "delete",
            "Client._secret.extension.where(valueString = 'x')",
            Value::Null,
        )))
        .await;
    assert!(!oracle.text.contains("argon2"), "{}", oracle.text);
    let replaced = app
        .send(send({
            // The masked view has no secret: it is added, as in a PUT.
            let mut add = op("add", "Client", json!(fhirpath_secret));
            add["parameter"][0]["part"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "name", "valueString": "secret"}));
            add
        }))
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert!(!replaced.text.contains(fhirpath_secret) && !replaced.text.contains("argon2"));
    let with_new = app
        .send(
            app.anon
                .get(app.url("/fhir/Patient"))
                .basic_auth("patched", Some(fhirpath_secret)),
        )
        .await;
    assert_eq!(with_new.status, 200, "{}", with_new.text);
    assert_eq!(get_as(&app, "/fhir/Patient", "patched").await.status, 401);
    let stored = String::from_utf8_lossy(&database_bytes(&app)).into_owned();
    assert!(!stored.contains(fhirpath_secret));
}

async fn literal_secrets_of_other_fields_are_never_returned_but_kept(app: TestApp) {
    let literal = "hmac-literal-value-0123456789abcdef";
    let body = json!({"resourceType": "TokenIntrospector", "id": "ti", "type": "jwt",
        "jwt": {"iss": "https://idp.example", "keys": [
            {"kid": "a", "alg": "HS256", "k": "key-literal-aaaa-0123456789"},
            {"kid": "b", "alg": "HS512", "k": literal}]}});
    let put = app.put("/fhir/TokenIntrospector/ti", &body).await;
    assert_eq!(put.status, 201, "{}", put.text);
    let mut reads = vec![put];
    reads.push(app.get("/fhir/TokenIntrospector/ti").await);
    reads.push(app.get("/fhir/TokenIntrospector/ti/_history/1").await);
    reads.push(app.get("/fhir/TokenIntrospector/ti/_history").await);
    reads.push(app.get("/fhir/TokenIntrospector").await);
    reads.push(
        app.post(
            "/fhir",
            &bundle(
                "batch",
                json!([{"request": {"method": "GET", "url": "TokenIntrospector/ti"}}]),
            ),
        )
        .await,
    );
    for r in &reads {
        assert!(
            !r.text.contains(literal) && !r.text.contains("key-literal"),
            "{}",
            r.text
        );
    }
    let shown = reads[1].json();
    for i in 0..2 {
        assert_eq!(
            shown["jwt"]["keys"][i]["_k"]["extension"][0]["valueCode"],
            "masked"
        );
    }
    // jwt.secret, the other key source, is masked the same way.
    let hs = json!({"resourceType": "TokenIntrospector", "id": "hs", "type": "jwt",
        "jwt": {"iss": "https://hs.example", "secret": literal}});
    let put = app.put("/fhir/TokenIntrospector/hs", &hs).await;
    assert_eq!(put.status, 201, "{}", put.text);
    let read = app.get("/fhir/TokenIntrospector/hs").await;
    assert!(!put.text.contains(literal) && !read.text.contains(literal));
    assert_eq!(
        read.json()["jwt"]["_secret"]["extension"][0]["valueCode"],
        "masked"
    );
    // Sending the masked view back, or patching beside it, keeps the values.
    assert_eq!(
        app.put("/fhir/TokenIntrospector/ti", &shown).await.status,
        200
    );
    let patched = app
        .patch(
            "/fhir/TokenIntrospector/ti",
            &json!([{"op": "add", "path": "/jwt/iss", "value": "https://idp2.example"}]),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert!(!patched.text.contains(literal));
    let copy = app
        .patch(
            "/fhir/TokenIntrospector/ti",
            &json!([{"op": "copy", "from": "/jwt/keys/1/k", "path": "/jwt/iss"}]),
        )
        .await;
    assert_eq!(copy.status, 422, "{}", copy.text);
    let stored = String::from_utf8_lossy(&database_bytes(&app)).into_owned();
    // The current (third) version still holds both literals for the server's use.
    assert!(
        stored.matches(literal).count() >= 3,
        "the literal was kept in every version"
    );
    assert!(stored.matches("key-literal-aaaa").count() >= 3);
}

async fn tokens_die_with_their_client_generation(app: TestApp) {
    client_with_matcho(&app, "svc", json!({"request-method": "get"})).await;
    let first = token(&app, "svc", SECRET).await;
    assert_eq!(bearer(&app, &first).await.status, 200);
    // A new secret: the old token is dead, a new one works.
    app.put("/fhir/Client/svc", &json!({"resourceType": "Client", "id": "svc", "secret": "second-secret-value", "grant_types": ["basic", "client_credentials"]})).await;
    assert_eq!(bearer(&app, &first).await.status, 401);
    let second = token(&app, "svc", "second-secret-value").await;
    assert_eq!(bearer(&app, &second).await.status, 200);
    // Deleted and re-created with the same id and secret: still dead.
    assert_eq!(app.delete("/fhir/Client/svc").await.status, 204);
    app.put("/fhir/Client/svc", &json!({"resourceType": "Client", "id": "svc", "secret": "second-secret-value", "grant_types": ["basic", "client_credentials"]})).await;
    assert_eq!(bearer(&app, &second).await.status, 401);
    assert_eq!(
        bearer(&app, &token(&app, "svc", "second-secret-value").await)
            .await
            .status,
        200
    );
}

async fn credentials_are_checked_before_grants(app: TestApp) {
    app.put_client("basic-only", SECRET, &["basic"]).await;
    let ask = |secret: &'static str| {
        app.send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth("basic-only", Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials"),
        )
    };
    // A wrong secret looks like an unknown client, grant or no grant.
    let wrong = ask("wrong").await;
    assert_eq!(
        (wrong.status, wrong.json()["error"].clone()),
        (401, json!("invalid_client"))
    );
    let unknown = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth("nobody-here", Some("wrong"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials"),
        )
        .await;
    assert_eq!(unknown.text, wrong.text);
    // Only the client itself learns that the grant is missing.
    let right = ask(SECRET).await;
    assert_eq!(
        (right.status, right.json()["error"].clone()),
        (400, json!("unauthorized_client"))
    );
}

async fn queries_are_bounded(app: TestApp) {
    app.put_patient("p1", "One").await;
    // (A 999-parameter query is longer than BOX_MAX_HEADER_BYTES and gets 414 first.)
    let many_dates = vec!["_lastUpdated=gt2000-01-01"; 100].join("&");
    app.get(&format!("/fhir/Patient?{many_dates}"))
        .await
        .assert_outcome(400, "at most 64 are accepted");
    let ids: Vec<String> = (0..1000).map(|i| format!("id{i}")).collect();
    app.get(&format!("/fhir/Patient?_id={}", ids.join(",")))
        .await
        .assert_outcome(400, "at most 100 are accepted");
    app.get(&format!("/fhir?_id={}", ids.join(",")))
        .await
        .assert_outcome(400, "at most 100 are accepted");
    app.get(&format!("/fhir/_history?{many_dates}"))
        .await
        .assert_outcome(400, "at most 64");
    let in_bundle = app.post("/fhir", &bundle("batch", json!([{"request": {"method": "GET", "url": format!("Patient?_id={}", ids.join(","))}}]))).await;
    assert_eq!(
        in_bundle.json()["entry"][0]["response"]["status"],
        "400 Bad Request",
        "{}",
        in_bundle.text
    );
    // Within the bounds: 100 ids and 64 parameters work.
    let hundred: Vec<String> = std::iter::once("p1".to_owned())
        .chain((1..100).map(|i| format!("id{i}")))
        .collect();
    assert_eq!(
        crate::helpers::entry_ids(
            &app.get(&format!("/fhir/Patient?_id={}", hundred.join(",")))
                .await
                .json()
        ),
        ["p1"]
    );
    let sixty_four = vec!["_lastUpdated=gt2000-01-01"; 64].join("&");
    assert_eq!(
        app.get(&format!("/fhir/Patient?{sixty_four}")).await.status,
        200
    );
}

async fn duplicate_keys_full_urls_and_bad_meta_are_refused(app: TestApp) {
    let dup = app
        .send(
            app.client
                .post(app.url("/fhir/Patient"))
                .header("content-type", "application/fhir+json")
                .body(r#"{"resourceType":"Observation","resourceType":"Patient"}"#),
        )
        .await;
    dup.assert_outcome(400, "appears twice");
    let nested = app
        .send(
            app.client
                .put(app.url("/fhir/Patient/d"))
                .header("content-type", "application/fhir+json")
                .body(
                    r#"{"resourceType":"Patient","id":"d","name":[{"family":"a","family":"b"}]}"#,
                ),
        )
        .await;
    nested.assert_outcome(400, "appears twice");
    assert_eq!(app.get("/fhir/Patient/d").await.status, 404);
    app.put_patient("pd", "Dup").await;
    let patch = app
        .send(
            app.client
                .patch(app.url("/fhir/Patient/pd"))
                .header("content-type", "application/json-patch+json")
                .body(r#"[{"op":"add","path":"/name/0","value":{"family":"x","family":"y"}}]"#),
        )
        .await;
    patch.assert_outcome(400, "appears twice");
    assert_eq!(
        app.get("/fhir/Patient/pd").await.json()["meta"]["versionId"],
        "1"
    );
    let token = app.send(app.anon.post(app.url("/auth/token")).header("content-type", "application/json")
        .body(r#"{"grant_type":"client_credentials","client_id":"nobody","client_id":"root","client_secret":"x"}"#)).await;
    assert_eq!(
        (token.status, token.json()["error"].clone()),
        (400, json!("invalid_request")),
        "{}",
        token.text
    );
    let twice = bundle(
        "transaction",
        json!([
            {"fullUrl": "urn:uuid:a", "request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:a", "request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
        ]),
    );
    app.post("/fhir", &twice)
        .await
        .assert_outcome(400, "appears more than once");
    let mut batch = twice.clone();
    batch["type"] = json!("batch");
    app.post("/fhir", &batch)
        .await
        .assert_outcome(400, "appears more than once");
    app.put(
        "/fhir/Patient/m",
        &json!({"resourceType": "Patient", "id": "m", "meta": {"security": "R"}}),
    )
    .await
    .assert_outcome(400, "meta.security must be an array of Codings");
    app.put(
        "/fhir/Patient/m",
        &json!({"resourceType": "Patient", "id": "m", "meta": {"security": [{"code": 1}]}}),
    )
    .await
    .assert_outcome(400, "wrong type");
    // Good shapes are stored.
    let ok = app.put("/fhir/Patient/m", &json!({"resourceType": "Patient", "id": "m",
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}], "tag": [{"code": "t"}]}})).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    let distinct = bundle(
        "transaction",
        json!([
            {"fullUrl": "urn:uuid:a", "request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:b", "request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
        ]),
    );
    assert_eq!(app.post("/fhir", &distinct).await.status, 200);
}

async fn a_wrong_secret_flood_does_not_starve_legitimate_clients(app: TestApp) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    const FLOODERS: usize = 48;
    app.put_client("target", "target-secret", &["basic"]).await;
    app.put_client("legit", "legit-secret", &["basic"]).await;
    app.allow_client("legit-allow", "legit").await;
    assert_eq!(
        app.get_as("/fhir/Patient", "legit", "legit-secret")
            .await
            .status,
        200
    );
    // The flood comes from another address (127.0.0.2 is loopback too),
    // wrong secrets for one existing client, until told to stop.
    let flooder = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let (stop, answered) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut flood = Vec::new();
    for i in 0..FLOODERS {
        let (client, url, stop, answered) = (
            flooder.clone(),
            app.url("/fhir/Patient"),
            stop.clone(),
            answered.clone(),
        );
        flood.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = client
                    .get(&url)
                    .basic_auth("target", Some(format!("wrong-{i}")))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                answered.fetch_add(1, Ordering::SeqCst);
            }
            statuses
        }));
    }
    let flooding = wait_until_async(Duration::from_secs(30), || async {
        answered.load(Ordering::SeqCst) >= FLOODERS
    })
    .await;
    assert!(flooding, "the flood is answered");
    // A write to the auth types used to send every client back to the KDF.
    app.allow_client("unrelated", "target").await;
    assert_eq!(
        app.get_as("/fhir/Patient", "legit", "legit-secret")
            .await
            .status,
        200
    );
    // A client never verified before needs the KDF. How many flood checks
    // ran while it waited tells whether it queued behind the flood.
    app.put_client("cold", "cold-secret", &["basic"]).await;
    app.allow_client("cold-allow", "cold").await;
    let checked_before = auth_failures(&app, "wrong_secret").await;
    assert_eq!(
        app.get_as("/fhir/Patient", "cold", "cold-secret")
            .await
            .status,
        200
    );
    let checked_meanwhile = auth_failures(&app, "wrong_secret").await - checked_before;
    stop.store(true, Ordering::SeqCst);
    for request in flood {
        assert!(request.await.unwrap().iter().all(|s| *s == 401));
    }
    assert!(
        checked_meanwhile <= 6,
        "the new client waited behind {checked_meanwhile} flood checks"
    );
    assert!(
        auth_failures(&app, "throttled").await > 0,
        "the flood was throttled"
    );
    // The flooded client itself still gets in with its real secret.
    assert_eq!(
        app.get_as("/fhir/Patient", "target", "target-secret")
            .await
            .status,
        200
    );
}

async fn patches_and_bundles_are_bounded(app: TestApp) {
    app.put_patient("grow", "Grow").await;
    let doubling: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "", "path": format!("/x{i}")}))
        .collect();
    let r = app
        .patch("/fhir/Patient/grow", &Value::Array(doubling))
        .await;
    r.assert_outcome(422, "larger than");
    let mut nesting = vec![json!({"op": "add", "path": "/n", "value": {}})];
    for _ in 0..150 {
        nesting.push(json!({"op": "add", "path": "/w", "value": {}}));
        nesting.push(json!({"op": "move", "from": "/n", "path": "/w/n"}));
        nesting.push(json!({"op": "move", "from": "/w", "path": "/n"}));
    }
    app.patch("/fhir/Patient/grow", &Value::Array(nesting))
        .await
        .assert_outcome(422, "deeper than 128");
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"op": "test", "path": "/id", "value": "grow"}))
        .collect();
    app.patch("/fhir/Patient/grow", &Value::Array(many))
        .await
        .assert_outcome(400, "at most 1000");
    assert_eq!(
        app.get("/fhir/Patient/grow").await.json()["meta"]["versionId"],
        "1",
        "nothing was stored"
    );
    // An ordinary patch still applies.
    let ok = app
        .patch(
            "/fhir/Patient/grow",
            &json!([{"op": "copy", "from": "/name/0", "path": "/name/1"}]),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    let entries: Vec<Value> = (0..10_001)
        .map(|_| json!({"request": {"method": "GET", "url": "Patient/grow"}}))
        .collect();
    // (The test servers accept 256 KiB bodies; this bundle needs a roomier one.)
    let roomy = app.sibling(|s| s.max_body_bytes = 4 << 20).await;
    roomy
        .post("/fhir", &bundle("batch", Value::Array(entries)))
        .await
        .assert_outcome(400, "at most 10000");

    // BOX_MAX_BUNDLE_ENTRIES moves the bound, both ways.
    let reads = |n: usize| {
        bundle(
            "batch",
            Value::Array(
                (0..n)
                    .map(|_| json!({"request": {"method": "GET", "url": "Patient/grow"}}))
                    .collect(),
            ),
        )
    };
    let narrow = app.sibling(|s| s.max_bundle_entries = 2).await;
    narrow
        .post("/fhir", &reads(3))
        .await
        .assert_outcome(400, "at most 2 are accepted (BOX_MAX_BUNDLE_ENTRIES)");
    let ok = narrow.post("/fhir", &reads(2)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let wide = app
        .sibling(|s| {
            s.max_bundle_entries = 10_001;
            s.max_body_bytes = 4 << 20;
        })
        .await;
    let ok = wide.post("/fhir", &reads(10_001)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

/// A FHIRPath Patch is a PATCH like any other: a client whose policy lets it
/// read Patients but not patch them gets 403 and nothing changes; one that
/// may patch them succeeds. A shaped read (`_elements`) is a read: the
/// reader gets it, a client without read access does not.
async fn fhirpath_patch_and_shaped_reads_are_authorized_like_their_routes(app: TestApp) {
    app.put_patient("fp", "Before").await;
    app.matcho_client(
        "fp-reader",
        SECRET,
        json!({"request-method": "get", "params": {"resource/type": "Patient"}}),
    )
    .await;
    app.matcho_client(
        "fp-patcher",
        SECRET,
        json!({"request-method": "patch", "params": {"resource/type": "Patient"}}),
    )
    .await;
    let patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Patient.name[0].family"},
        {"name": "value", "valueString": "After"}]}]});
    let as_client = |id: &str| {
        app.anon
            .patch(app.url("/fhir/Patient/fp"))
            .basic_auth(id, Some(SECRET))
            .header("content-type", "application/fhir+json")
            .body(patch.to_string())
    };
    app.send(as_client("fp-reader"))
        .await
        .assert_outcome(403, "");
    assert_eq!(
        app.get("/fhir/Patient/fp").await.json()["name"][0]["family"],
        "Before"
    );
    let done = app.send(as_client("fp-patcher")).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(
        app.get("/fhir/Patient/fp").await.json()["name"][0]["family"],
        "After"
    );
    let shaped = get_as(&app, "/fhir/Patient/fp?_elements=name", "fp-reader").await;
    assert_eq!(shaped.status, 200, "{}", shaped.text);
    assert_eq!(shaped.json()["name"][0]["family"], "After");
    get_as(&app, "/fhir/Patient/fp?_elements=name", "fp-patcher")
        .await
        .assert_outcome(403, "");
}
