//! Every error status comes back as an OperationOutcome that says what to fix.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::{TestApp, TEST_MAX_BODY};

backend_tests!(
    unknown_types_ids_and_routes_are_explained,
    malformed_bodies_are_400_and_store_nothing,
    only_json_is_spoken,
    wrong_methods_are_405,
    oversized_bodies_are_413
);

async fn unknown_types_ids_and_routes_are_explained(app: TestApp) {
    app.get("/fhir/Spaceship/1")
        .await
        .assert_outcome(404, "not a resource type");
    app.get("/fhir/Patient/bad_id!")
        .await
        .assert_outcome(400, "not a valid FHIR id");
    app.get("/fhir/Patient/nobody")
        .await
        .assert_outcome(404, "Patient/nobody does not exist");
    app.get("/nothing/here")
        .await
        .assert_outcome(404, "no endpoint");
}

async fn malformed_bodies_are_400_and_store_nothing(app: TestApp) {
    let not_json = app
        .send(
            app.client
                .post(app.url("/fhir/Patient"))
                .header("content-type", "application/fhir+json")
                .body("{oops"),
        )
        .await;
    not_json.assert_outcome(400, "not valid JSON");
    let empty = app
        .send(
            app.client
                .post(app.url("/fhir/Patient"))
                .header("content-type", "application/fhir+json"),
        )
        .await;
    empty.assert_outcome(400, "empty");
    app.post("/fhir/Patient", &json!([1, 2]))
        .await
        .assert_outcome(400, "JSON object");
    app.post("/fhir/Patient", &json!({"name": []}))
        .await
        .assert_outcome(400, "resourceType is missing");
    app.post("/fhir/Patient", &json!({"resourceType": "Observation"}))
        .await
        .assert_outcome(400, "does not match the URL");
    app.put(
        "/fhir/Patient/a",
        &json!({"resourceType": "Patient", "id": "b"}),
    )
    .await
    .assert_outcome(400, "does not match the id in the URL");
    app.put("/fhir/Patient/a", &json!({"resourceType": "Patient"}))
        .await
        .assert_outcome(400, "has no id");
    let total = app.get("/fhir/Patient?_total=accurate").await.json()["total"].clone();
    assert_eq!(total, 0);
}

async fn only_json_is_spoken(app: TestApp) {
    let xml = app
        .send(
            app.client
                .post(app.url("/fhir/Patient"))
                .header("content-type", "application/fhir+xml")
                .body("<Patient/>"),
        )
        .await;
    xml.assert_outcome(415, "application/fhir+json");
    let none = app
        .send(app.client.post(app.url("/fhir/Patient")).body("{}"))
        .await;
    none.assert_outcome(415, "Content-Type is missing");
    let accept = app
        .send(
            app.client
                .get(app.url("/fhir/Patient"))
                .header("accept", "application/fhir+xml"),
        )
        .await;
    accept.assert_outcome(406, "application/fhir+json");
    app.get("/fhir/Patient?_format=xml")
        .await
        .assert_outcome(406, "_format=xml");
    assert_eq!(app.get("/fhir/Patient?_format=json").await.status, 200);
    let browser = app
        .send(
            app.client
                .get(app.url("/fhir/metadata"))
                .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        )
        .await;
    assert_eq!(browser.status, 200);
}

async fn wrong_methods_are_405(app: TestApp) {
    app.send(app.client.post(app.url("/fhir/Patient/x")))
        .await
        .assert_outcome(405, "POST is not supported");
    app.send(app.client.delete(app.url("/fhir/Patient/_history")))
        .await
        .assert_outcome(405, "DELETE is not supported");
    // DELETE on the type is a conditional delete, which needs criteria.
    app.send(app.client.delete(app.url("/fhir/Patient")))
        .await
        .assert_outcome(400, "needs search criteria");
    app.send(app.client.put(app.url("/fhir/metadata")))
        .await
        .assert_outcome(405, "PUT");
}

async fn oversized_bodies_are_413(app: TestApp) {
    let big = "x".repeat(TEST_MAX_BODY + 1);
    let r = app
        .post(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "text": {"div": big}}),
        )
        .await;
    r.assert_outcome(413, "larger than this server accepts");
}
