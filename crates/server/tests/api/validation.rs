//! Structural validation of every write (docs/validation.md): each kind of
//! fault is refused with an OperationOutcome that names the element and
//! says what to fix, on every write path (create, update, patch, batch and
//! transaction entries, the init bundle), and nothing is stored; real-world
//! data passes; `$validate` checks without storing and is authorized as a
//! read; unknown elements can be allowed for migrations; data stored before
//! is kept and reported by `fhirbox validate-store`.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{Backend, Resp, TestApp};

backend_tests!(
    each_kind_of_fault_is_refused_with_what_to_fix,
    problems_are_listed_together_and_capped,
    every_write_path_is_validated_and_nothing_is_stored,
    real_world_data_passes,
    validate_operation_checks_without_storing,
);

backend_tests!(per_backend:
    validate_operation_is_authorized_as_a_read,
    unknown_elements_can_be_allowed_for_migrations,
    data_stored_before_is_kept_and_reported,
    an_invalid_init_transaction_stops_the_start,
);

/// The issues of an OperationOutcome as (code, expression, diagnostics).
fn issues(r: &Resp) -> Vec<(String, String, String)> {
    let v = r.json();
    assert_eq!(v["resourceType"], "OperationOutcome", "{}", r.text);
    v["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["code"].as_str().unwrap_or_default().to_owned(),
                i["expression"][0].as_str().unwrap_or_default().to_owned(),
                i["diagnostics"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Asserts a 400 whose only issue has this code, at this element, saying this.
fn assert_one_issue(r: &Resp, code: &str, expression: &str, says: &str) {
    assert_eq!(r.status, 400, "{}", r.text);
    let found = issues(r);
    assert_eq!(found.len(), 1, "{}", r.text);
    let (c, e, d) = &found[0];
    assert_eq!((c.as_str(), e.as_str()), (code, expression), "{}", r.text);
    assert!(d.contains(says), "{d:?} should say {says:?}");
}

async fn total(app: &TestApp, resource_type: &str) -> i64 {
    app.get(&format!("/fhir/{resource_type}")).await.json()["total"]
        .as_i64()
        .unwrap()
}

fn observation(extra: Value) -> Value {
    let mut body =
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn each_kind_of_fault_is_refused_with_what_to_fix(app: TestApp) {
    let faults = [
        // The four a new user tried: a number for a code, an unknown
        // element, a malformed date, a string where a list belongs.
        (
            json!({"resourceType": "Patient", "gender": 123}),
            "structure",
            "Patient.gender",
            "male, female, other, unknown",
        ),
        (
            json!({"resourceType": "Patient", "foo": "bar"}),
            "structure",
            "Patient.foo",
            "unknown element",
        ),
        (
            json!({"resourceType": "Patient", "birthDate": "not-a-date"}),
            "value",
            "Patient.birthDate",
            "YYYY-MM-DD",
        ),
        (
            json!({"resourceType": "Patient", "name": "Smith"}),
            "structure",
            "Patient.name",
            "must be a list",
        ),
        // A list where one value belongs, and a wrong primitive type deep down.
        // (HL7's definitions say "object" only by their properties; fhirbox
        // adds it, so a string is not a HumanName.)
        (
            json!({"resourceType": "Patient", "name": ["Smith"]}),
            "structure",
            "Patient.name[0]",
            "must be an object",
        ),
        (
            json!({"resourceType": "Patient", "gender": ["female"]}),
            "structure",
            "Patient.gender",
            "must be one code (a string)",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"given": ["Ann", 3]}]}),
            "structure",
            "Patient.name[0].given[1]",
            "must be a string",
        ),
        // Formats and ranges of primitives.
        (
            json!({"resourceType": "Patient", "birthDate": "2023-02-29"}),
            "value",
            "Patient.birthDate",
            "does not exist",
        ),
        (
            json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
            "value",
            "Patient.multipleBirthInteger",
            "whole number",
        ),
        (
            json!({"resourceType": "Patient", "meta": {"lastUpdated": "2024-01-01"}}),
            "value",
            "Patient.meta.lastUpdated",
            "time zone",
        ),
        (
            json!({"resourceType": "Patient", "photo": [{"data": "not base64!"}]}),
            "value",
            "Patient.photo[0].data",
            "base64",
        ),
        (
            json!({"resourceType": "Patient", "active": "yes"}),
            "structure",
            "Patient.active",
            "true or false",
        ),
        (
            // (A create ignores the body's own id; a contained one is checked.)
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "has space"}],
                   "managingOrganization": {"reference": "#has space"}}),
            "value",
            "Patient.contained[0].id",
            "1 to 64 characters",
        ),
        // Required elements, required codes, choice elements.
        (
            json!({"resourceType": "Observation", "status": "final"}),
            "required",
            "Observation.code",
            "code is required",
        ),
        (
            observation(json!({"status": "done"})),
            "code-invalid",
            "Observation.status",
            "final",
        ),
        (
            observation(json!({"valueString": "a", "valueQuantity": {"value": 1}})),
            "invariant",
            "Observation",
            "value[x] is a choice",
        ),
        // Primitive extensions: `_element` holds an Element, and an extension needs its url.
        (
            json!({"resourceType": "Patient", "_birthDate": {"extension": [{"valueString": "x"}]}}),
            "required",
            "Patient._birthDate.extension[0].url",
            "url is required",
        ),
        (
            json!({"resourceType": "Patient", "_birthDate": "x"}),
            "structure",
            "Patient._birthDate",
            "must be an object",
        ),
        // Contained resources are validated as their own type, and local references must resolve.
        (
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Observation", "id": "o", "status": "final"}],
                "generalPractitioner": [{"reference": "#o"}]}),
            "required",
            "Patient.contained[0].code",
            "code is required",
        ),
        (
            observation(json!({"subject": {"reference": "#nobody"}})),
            "invariant",
            "Observation.subject.reference",
            "names no contained resource",
        ),
        (
            json!({"resourceType": "Patient", "contained": [{"resourceType": "NoSuchType", "id": "x"}],
                "generalPractitioner": [{"reference": "#x"}]}),
            "code-invalid",
            "Patient.contained[0].resourceType",
            "not a code",
        ),
    ];
    let mut entries = Vec::new();
    for (n, (body, code, expression, says)) in faults.into_iter().enumerate() {
        let resource_type = body["resourceType"].as_str().unwrap().to_owned();
        // Create.
        let r = app.post(&format!("/fhir/{resource_type}"), &body).await;
        assert_one_issue(&r, code, expression, says);
        // The value sent is never repeated back.
        if let Some(v) = body.get("birthDate").and_then(Value::as_str) {
            assert!(!r.text.contains(v), "{}", r.text);
        }
        // Update that would create, with the client's id.
        let id = format!("f{n}");
        let mut with_id = body.clone();
        with_id["id"] = json!(id);
        let r = app
            .put(&format!("/fhir/{resource_type}/{id}"), &with_id)
            .await;
        assert_one_issue(&r, code, expression, says);
        // A transaction of that one entry.
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": body, "request": {"method": "POST", "url": resource_type}}]});
        let r = app.post("/fhir", &transaction).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(
            (issues(&r)[0].0.as_str(), issues(&r)[0].1.as_str()),
            (code, expression)
        );
        entries.push((json!({"resource": with_id, "request": {"method": "PUT", "url": format!("{resource_type}/{id}")}}), code, expression));
    }
    // A batch of all of them: each entry fails on its own, with its issue.
    let batch = json!({"resourceType": "Bundle", "type": "batch",
        "entry": entries.iter().map(|(e, _, _)| e.clone()).collect::<Vec<_>>()});
    let r = app.post("/fhir", &batch).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let answered = r.json()["entry"].clone();
    for (i, (_, code, expression)) in entries.iter().enumerate() {
        let entry = &answered[i]["response"];
        assert_eq!(entry["status"], "400 Bad Request", "entry {i}: {entry}");
        assert_eq!(
            entry["outcome"]["issue"][0]["code"], *code,
            "entry {i}: {entry}"
        );
        assert_eq!(
            entry["outcome"]["issue"][0]["expression"][0], *expression,
            "entry {i}"
        );
    }
    assert_eq!(total(&app, "Patient").await, 0, "nothing was stored");
    assert_eq!(total(&app, "Observation").await, 0);
    // The legitimate path: the same shapes, right.
    let fine = json!({"resourceType": "Patient", "gender": "female", "birthDate": "2024-02-29",
        "name": [{"given": ["Ann"]}], "multipleBirthInteger": 2, "photo": [{"data": "aGVsbG8="}],
        "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "x"}]},
        "contained": [{"resourceType": "Organization", "id": "o", "name": "Clinic"}],
        "managingOrganization": {"reference": "#o"}});
    let r = app.post("/fhir/Patient", &fine).await;
    assert_eq!(r.status, 201, "{}", r.text);
}

async fn problems_are_listed_together_and_capped(app: TestApp) {
    let r = app
        .post(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "gender": 1, "birthDate": "x", "foo": 1}),
        )
        .await;
    assert_eq!(r.status, 400);
    let mut at: Vec<String> = issues(&r).into_iter().map(|(_, e, _)| e).collect();
    at.sort();
    assert_eq!(at, ["Patient.birthDate", "Patient.foo", "Patient.gender"]);
    let mut many = json!({"resourceType": "Patient"});
    for i in 0..100 {
        many[format!("unknown{i}")] = json!(i);
    }
    let r = app.post("/fhir/Patient", &many).await;
    assert_eq!(r.status, 400);
    let found = issues(&r);
    assert_eq!(found.len(), 21, "20 problems and one that counts the rest");
    assert!(found[20].2.contains("80 more"), "{:?}", found[20]);
}

async fn every_write_path_is_validated_and_nothing_is_stored(app: TestApp) {
    let good = json!({"resourceType": "Patient", "id": "p", "gender": "female"});
    assert_eq!(app.put("/fhir/Patient/p", &good).await.status, 201);
    let bad = json!({"resourceType": "Patient", "id": "p", "gender": "woman"});

    // Update: refused, the stored version stays.
    let r = app.put("/fhir/Patient/p", &bad).await;
    assert_one_issue(&r, "code-invalid", "Patient.gender", "female");
    // Update that creates: refused, nothing created.
    let r = app
        .put(
            "/fhir/Patient/q",
            &json!({"resourceType": "Patient", "id": "q", "gender": "woman"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    app.get("/fhir/Patient/q")
        .await
        .assert_outcome(404, "does not exist");

    // Patch: the result is validated (422: the patch was well-formed, its
    // result is not), with the same issues.
    let r = app
        .patch(
            "/fhir/Patient/p",
            &json!([{"op": "replace", "path": "/gender", "value": "woman"}]),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let found = issues(&r);
    assert_eq!(found.len(), 1, "{}", r.text);
    assert_eq!(found[0].1, "Patient.gender");
    assert!(found[0].2.starts_with("after the patch"), "{}", found[0].2);
    let r = app
        .patch(
            "/fhir/Patient/p",
            &json!([{"op": "add", "path": "/birthDate", "value": "1990-01-01"}]),
        )
        .await;
    assert_eq!(r.status, 200, "a valid patch still applies: {}", r.text);

    // Batch: the bad entry fails alone, the good one is stored.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": bad, "request": {"method": "PUT", "url": "Patient/p"}},
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}}]});
    let r = app.post("/fhir", &batch).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.json()["entry"].clone();
    assert_eq!(entries[0]["response"]["status"], "400 Bad Request");
    let outcome = &entries[0]["response"]["outcome"]["issue"][0];
    assert_eq!(outcome["code"], "code-invalid");
    assert_eq!(outcome["expression"][0], "Patient.gender");
    assert_eq!(outcome["expression"][1], "Bundle.entry[0]");
    assert_eq!(entries[1]["response"]["status"], "201 Created");

    // Transaction: one bad entry, nothing applied.
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final"}, "request": {"method": "POST", "url": "Observation"}}]});
    let r = app.post("/fhir", &transaction).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let found = issues(&r);
    assert_eq!(found[0].1, "Observation.code");
    assert!(
        found[0].2.starts_with("the transaction was not applied"),
        "{}",
        found[0].2
    );
    assert_eq!(
        total(&app, "Patient").await,
        2,
        "p and the batch's Patient only"
    );
    assert_eq!(total(&app, "Observation").await, 0);

    let current = app.get("/fhir/Patient/p").await.json();
    assert_eq!(current["gender"], "female");
    assert_eq!(
        current["meta"]["versionId"], "2",
        "only the valid patch was stored"
    );
}

async fn real_world_data_passes(app: TestApp) {
    // A transaction shaped like Synthea's output (US Core extensions,
    // identifiers, narrative, components, dosage, claims).
    let bundle: Value =
        serde_json::from_str(include_str!("../fixtures/synthea-style-transaction.json")).unwrap();
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.json()["entry"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 12);
    for e in &entries {
        assert_eq!(e["response"]["status"], "201 Created", "{e}");
    }
    let patient = &entries[2]["resource"];
    assert_eq!(
        patient["extension"][0]["extension"][1]["valueString"],
        "White"
    );
    // Every R4 resource type and the server's own types are known.
    let capability = app.get("/fhir/metadata").await.json();
    let resources = capability["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.len() >= 152, "{}", resources.len());
    assert!(resources
        .iter()
        .all(|r| r["operation"][0]["name"] == "validate"));
}

async fn validate_operation_checks_without_storing(app: TestApp) {
    // Problems come back as issues of a 200 OperationOutcome.
    let r = app
        .post(
            "/fhir/Patient/$validate",
            &json!({"resourceType": "Patient", "gender": "woman", "foo": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(issues(&r).len(), 2);
    // A valid resource: one information issue.
    let r = app
        .post(
            "/fhir/Patient/$validate",
            &json!({"resourceType": "Patient", "gender": "female"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["issue"][0]["severity"], "information");
    assert_eq!(total(&app, "Patient").await, 0, "nothing was stored");
    // Parameters form, mode update: the id must match the URL.
    let r = app
        .post(
            "/fhir/Patient/a/$validate",
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "mode", "valueCode": "update"},
                {"name": "resource", "resource": {"resourceType": "Patient", "id": "b"}}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        issues(&r)[0].2.contains("does not match the id in the URL"),
        "{}",
        r.text
    );
    // Mode delete looks the resource up.
    let r = app
        .send(
            app.client
                .post(app.url("/fhir/Patient/nobody/$validate?mode=delete")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(issues(&r)[0].0, "not-found");
    // A request $validate cannot answer is an error.
    app.post(
        "/fhir/Patient/$validate?mode=merge",
        &json!({"resourceType": "Patient"}),
    )
    .await
    .assert_outcome(400, "not a $validate mode");
    app.post(
        "/fhir/NoSuchType/$validate",
        &json!({"resourceType": "Patient"}),
    )
    .await
    .assert_outcome(404, "not a resource type");
}

const SECRET: &str = "validation-client-secret";

async fn validate_operation_is_authorized_as_a_read(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_client("reader", SECRET, &["basic"]).await;
    let r = app
        .put(
            "/fhir/AccessPolicy/reader-policy",
            &json!({"resourceType": "AccessPolicy", "id": "reader-policy", "engine": "matcho",
                    "link": [{"reference": "Client/reader"}],
                    "matcho": {"request-method": "get", "params": {"resource/type": {"$enum": ["Patient", "Client"]}}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let post_as = |path: &str, body: &Value| {
        app.send(
            app.fhir(app.anon.post(app.url(path)), body)
                .basic_auth("reader", Some(SECRET)),
        )
    };
    let patient = json!({"resourceType": "Patient", "gender": "female"});
    // May read Patient, so may validate one...
    let r = post_as("/fhir/Patient/$validate", &patient).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // ...but not write one, nor validate a type it may not read.
    assert_eq!(post_as("/fhir/Patient", &patient).await.status, 403);
    let observation =
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    assert_eq!(
        post_as("/fhir/Observation/$validate", &observation)
            .await
            .status,
        403
    );
    assert_eq!(total(&app, "Patient").await, 0);
    // A reader of Client learns that a secret reference would be refused,
    // not the vault's configuration; root learns why.
    let client = json!({"resourceType": "Client", "grant_types": ["basic"],
        "_secret": {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"},
            {"url": "http://health-samurai.io/fhir/secret-reference", "valueString": "db-password"}]}});
    let r = post_as("/fhir/Client/$validate", &client).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let said = &issues(&r)[0].2;
    assert!(said.contains("the root client can see why"), "{said}");
    assert!(!r.text.contains("BOX_VAULT_CONFIG"), "{}", r.text);
    let r = app.post("/fhir/Client/$validate", &client).await;
    assert!(issues(&r)[0].2.contains("BOX_VAULT_CONFIG"), "{}", r.text);
}

async fn unknown_elements_can_be_allowed_for_migrations(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.validation = fhirbox_server::settings::Validation::AllowUnknownElements
    })
    .await;
    let legacy =
        json!({"resourceType": "Patient", "id": "legacy", "gender": "female", "legacyCode": "A7"});
    let r = app.put("/fhir/Patient/legacy", &legacy).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        app.get("/fhir/Patient/legacy").await.json()["legacyCode"],
        "A7"
    );
    // Everything else is still checked.
    let r = app
        .put(
            "/fhir/Patient/legacy",
            &json!({"resourceType": "Patient", "id": "legacy", "gender": "woman", "legacyCode": "A7"}),
        )
        .await;
    assert_one_issue(&r, "code-invalid", "Patient.gender", "female");
}

async fn data_stored_before_is_kept_and_reported(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.validation = fhirbox_server::settings::Validation::Off
    })
    .await;
    let old = json!({"resourceType": "Patient", "id": "old", "birthDate": "12/31/1999", "nickname": "Bo"});
    assert_eq!(app.put("/fhir/Patient/old", &old).await.status, 201);
    assert_eq!(
        app.put(
            "/fhir/Patient/fine",
            &json!({"resourceType": "Patient", "id": "fine"})
        )
        .await
        .status,
        201
    );
    // Strict again: what was stored is still there, unchanged.
    let app = app
        .restart_with(|s| s.validation = fhirbox_server::settings::Validation::Strict)
        .await;
    let read = app.get("/fhir/Patient/old").await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["nickname"], "Bo");
    // It cannot be written back as it is...
    let r = app.put("/fhir/Patient/old", &old).await;
    assert_eq!(r.status, 400, "{}", r.text);
    // ...and the command names it, by type and id, with what to fix.
    let mut settings = app.settings();
    settings.validation = fhirbox_server::settings::Validation::Strict;
    let (code, text) = fhirbox_server::validate_store::validate_store_command(&settings).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("Patient/old\n"), "{text}");
    assert!(
        text.contains("Patient.birthDate: is not a valid date"),
        "{text}"
    );
    assert!(text.contains("Patient.nickname: unknown element"), "{text}");
    assert!(!text.contains("Patient/fine"), "{text}");
    assert!(text.contains("checked 2 resources; 1 do not"), "{text}");
}

async fn an_invalid_init_transaction_stops_the_start(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.json");
    std::fs::write(
        &path,
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "gender": "woman"}, "request": {"method": "POST", "url": "Patient"}}]})
        .to_string(),
    )
    .unwrap();
    let Err(error) = TestApp::try_spawn_with(backend, |s| s.init_bundle = Some(path.clone())).await
    else {
        panic!("an invalid init transaction must stop the start");
    };
    assert!(error.contains("Patient.gender"), "{error}");
    // A valid one starts.
    std::fs::write(
        &path,
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}}]})
        .to_string(),
    )
    .unwrap();
    let app = TestApp::spawn_with(backend, |s| s.init_bundle = Some(path.clone())).await;
    assert_eq!(total(&app, "Patient").await, 1);
}
