//! Batch and transaction bundles.

use base64::Engine;
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::TestApp;

fn transaction(entries: Value) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

async fn patient_total(app: &TestApp) -> i64 {
    app.get("/fhir/Patient?_total=accurate").await.json()["total"]
        .as_i64()
        .unwrap()
}

backend_tests!(
    transaction_creates_and_rewrites_urn_uuid_references,
    failing_transaction_entry_rolls_back_everything,
    transaction_refuses_two_writes_to_one_resource,
    transaction_patch_entry_uses_a_binary_json_patch,
    batch_read_entries_can_be_conditional,
    batch_runs_entries_independently,
    only_batch_and_transaction_bundles_are_processed
);

async fn transaction_creates_and_rewrites_urn_uuid_references(app: TestApp) {
    let bundle = transaction(json!([
        {"fullUrl": "urn:uuid:4f6a1e2e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:4f6a1e2e-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                      "subject": {"reference": "urn:uuid:4f6a1e2e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Patient", "id": "fixed"},
         "request": {"method": "PUT", "url": "Patient/fixed"}}
    ]));
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(out["type"], "transaction-response");
    let entries = out["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    let patient_id = entries[0]["resource"]["id"].as_str().unwrap();
    let subject = entries[1]["resource"]["subject"]["reference"]
        .as_str()
        .unwrap();
    assert_eq!(subject, format!("Patient/{patient_id}"));
    assert!(entries[1]["response"]["location"]
        .as_str()
        .unwrap()
        .contains("/_history/1"));
    // The stored Observation carries the rewritten reference too.
    let obs_id = entries[1]["resource"]["id"].as_str().unwrap();
    let stored = app.get(&format!("/fhir/Observation/{obs_id}")).await.json();
    assert_eq!(
        stored["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    assert_eq!(
        app.get(&format!("/fhir/Patient/{patient_id}")).await.status,
        200
    );
}

async fn failing_transaction_entry_rolls_back_everything(app: TestApp) {
    app.put_patient("exists", "Old").await;
    let before = patient_total(&app).await;
    let bundle = transaction(json!([
        {"resource": {"resourceType": "Patient", "name": [{"family": "New"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "exists", "name": [{"family": "Changed"}]},
         "request": {"method": "PUT", "url": "Patient/exists"}},
        {"request": {"method": "DELETE", "url": "Patient/does-not-exist"}}
    ]));
    let r = app.post("/fhir", &bundle).await;
    r.assert_outcome(404, "the transaction was not applied");
    assert_eq!(
        patient_total(&app).await,
        before,
        "the POST was rolled back"
    );
    let kept = app.get("/fhir/Patient/exists").await.json();
    assert_eq!(kept["name"][0]["family"], "Old");
    assert_eq!(kept["meta"]["versionId"], "1");

    let invalid = transaction(json!([
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Patient"}}
    ]));
    let r = app.post("/fhir", &invalid).await;
    r.assert_outcome(400, "does not match the URL");
    assert_eq!(r.json()["issue"][0]["expression"][0], "Bundle.entry[1]");
    assert_eq!(patient_total(&app).await, before);

    let stale = transaction(json!([
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "exists"}, "request": {"method": "PUT", "url": "Patient/exists", "ifMatch": "W/\"9\""}}
    ]));
    app.post("/fhir", &stale)
        .await
        .assert_outcome(412, "the transaction was not applied");
    assert_eq!(patient_total(&app).await, before);
}

async fn transaction_refuses_two_writes_to_one_resource(app: TestApp) {
    let bundle = transaction(json!([
        {"resource": {"resourceType": "Patient", "id": "twice"}, "request": {"method": "PUT", "url": "Patient/twice"}},
        {"request": {"method": "DELETE", "url": "Patient/twice"}}
    ]));
    app.post("/fhir", &bundle)
        .await
        .assert_outcome(400, "more than one entry");
    app.get("/fhir/Patient/twice")
        .await
        .assert_outcome(404, "does not exist");
}

async fn transaction_patch_entry_uses_a_binary_json_patch(app: TestApp) {
    app.put_patient("tp", "Before").await;
    let patch = json!([{"op": "replace", "path": "/name/0/family", "value": "After"}]);
    let data = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
    let bundle = transaction(json!([
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
         "request": {"method": "PATCH", "url": "Patient/tp"}},
        {"request": {"method": "GET", "url": "Patient/tp"}}
    ]));
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(out["entry"][0]["response"]["status"], "200 OK");
    // GET runs after the writes.
    assert_eq!(out["entry"][1]["resource"]["name"][0]["family"], "After");

    // A merge patch travels the same way, with its own media type.
    let merge = base64::engine::general_purpose::STANDARD
        .encode(json!({"gender": "female", "name": null}).to_string());
    let bundle = transaction(json!([
        {"resource": {"resourceType": "Binary", "contentType": "application/merge-patch+json", "data": merge},
         "request": {"method": "PATCH", "url": "Patient/tp"}}
    ]));
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let now = app.get("/fhir/Patient/tp").await.json();
    assert_eq!(now["gender"], "female");
    assert!(now.get("name").is_none(), "{now}");
    let wrong = base64::engine::general_purpose::STANDARD.encode("[]");
    let bundle = transaction(json!([
        {"resource": {"resourceType": "Binary", "contentType": "application/merge-patch+json", "data": wrong},
         "request": {"method": "PATCH", "url": "Patient/tp"}}
    ]));
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("JSON object"), "{}", r.text);
}

/// `ifNoneMatch` / `ifModifiedSince` on read entries answer 304 without the
/// resource; on any other entry they are an error.
async fn batch_read_entries_can_be_conditional(app: TestApp) {
    let stored = app.put_patient("cb", "Cond").await;
    // An instant keeps its fraction of a second: the stored time itself is
    // not newer, a millisecond earlier is.
    let at = stored["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    let earlier = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Patient/cb", "ifModifiedSince": at}}
            ]}),
        )
        .await
        .json();
    assert_eq!(
        earlier["entry"][0]["response"]["status"], "304 Not Modified",
        "{at}"
    );
    let millis: i64 = at[20..23].parse().unwrap();
    if millis > 0 {
        let before = format!("{}{:03}Z", &at[..20], millis - 1);
        let newer = app
            .post(
                "/fhir",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": "Patient/cb", "ifModifiedSince": before}}
                ]}),
            )
            .await
            .json();
        assert_eq!(
            newer["entry"][0]["response"]["status"], "200 OK",
            "{before}"
        );
    }
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/cb", "ifNoneMatch": "W/\"1\""}},
        {"request": {"method": "GET", "url": "Patient/cb", "ifNoneMatch": "W/\"9\""}},
        {"request": {"method": "GET", "url": "Patient/cb", "ifModifiedSince": "2999-01-01T00:00:00Z"}},
        {"request": {"method": "GET", "url": "Patient/cb", "ifModifiedSince": "2000-01-01T00:00:00Z"}},
        {"request": {"method": "GET", "url": "Patient/cb/_history/1", "ifNoneMatch": "W/\"1\""}},
        {"request": {"method": "GET", "url": "Patient?_id=cb", "ifNoneMatch": "W/\"1\""}},
        {"request": {"method": "GET", "url": "Patient/cb", "ifModifiedSince": "soon"}}
    ]});
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = r.json()["entry"].as_array().unwrap().clone();
    assert_eq!(e[0]["response"]["status"], "304 Not Modified");
    assert_eq!(e[0]["response"]["etag"], "W/\"1\"");
    assert!(e[0].get("resource").is_none(), "{}", e[0]);
    assert_eq!(e[1]["response"]["status"], "200 OK");
    assert_eq!(e[1]["resource"]["id"], "cb");
    assert_eq!(e[2]["response"]["status"], "304 Not Modified");
    assert_eq!(e[3]["response"]["status"], "200 OK");
    assert_eq!(e[4]["response"]["status"], "304 Not Modified");
    for (i, says) in [(5, "read entry"), (6, "ifModifiedSince")] {
        assert_eq!(e[i]["response"]["status"], "400 Bad Request", "{}", e[i]);
        let text = e[i]["response"]["outcome"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap();
        assert!(text.contains(says), "{text}");
    }
}

async fn batch_runs_entries_independently(app: TestApp) {
    app.put_patient("b1", "B").await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Ok"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "GET", "url": "Patient/b1"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "PUT", "url": "Patient/b2"}},
        {"request": {"method": "GET", "url": "Patient?_id=b1"}},
        {"request": {"method": "DELETE", "url": "Patient/b1"}},
        {"request": {"url": "Patient"}}
    ]});
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(out["type"], "batch-response");
    let e = out["entry"].as_array().unwrap();
    assert_eq!(e.len(), 7);
    assert_eq!(e[0]["response"]["status"], "201 Created");
    assert_eq!(e[1]["response"]["status"], "404 Not Found");
    assert_eq!(
        e[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(e[2]["resource"]["id"], "b1");
    assert_eq!(e[3]["response"]["status"], "400 Bad Request");
    assert_eq!(e[4]["resource"]["type"], "searchset");
    assert_eq!(e[4]["resource"]["total"], 1);
    assert_eq!(e[5]["response"]["status"], "204 No Content");
    assert!(e[6]["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("request.method"));
    app.get("/fhir/Patient/b1")
        .await
        .assert_outcome(410, "deleted");
}

async fn only_batch_and_transaction_bundles_are_processed(app: TestApp) {
    app.post(
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "collection"}),
    )
    .await
    .assert_outcome(400, "\"collection\"");
    app.post("/fhir", &json!({"resourceType": "Patient"}))
        .await
        .assert_outcome(400, "Bundle");
    app.post(
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "batch", "entry": {}}),
    )
    .await
    .assert_outcome(400, "array");
    let empty = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction"}),
        )
        .await;
    assert_eq!(empty.status, 200);
    assert!(empty.json().get("entry").is_none());
}
