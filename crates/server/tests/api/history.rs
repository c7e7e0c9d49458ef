//! History at instance, type and system level.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::{link, TestApp};

backend_tests!(
    instance_history_lists_versions_newest_first_with_deletions,
    type_and_system_history_page_through_everything,
    since_filters_history
);

async fn instance_history_lists_versions_newest_first_with_deletions(app: TestApp) {
    app.put_patient("h", "One").await;
    app.put_patient("h", "Two").await;
    app.delete("/fhir/Patient/h").await;
    let bundle = app.get("/fhir/Patient/h/_history").await.json();
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["total"], 3);
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[0]["response"]["etag"], "W/\"3\"");
    assert_eq!(entries[1]["resource"]["name"][0]["family"], "Two");
    assert_eq!(entries[1]["request"]["method"], "PUT");
    assert_eq!(entries[2]["resource"]["meta"]["versionId"], "1");
    app.get("/fhir/Patient/nope/_history")
        .await
        .assert_outcome(404, "does not exist");
}

async fn type_and_system_history_page_through_everything(app: TestApp) {
    app.put_patient("x", "1").await;
    app.put_patient("y", "1").await;
    app.put_patient("x", "2").await;
    app.put(
        "/fhir/Observation/o",
        &json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "pulse"}}),
    )
    .await;

    let patients = app.get("/fhir/Patient/_history").await.json();
    assert_eq!(patients["total"], 3);
    let system = app.get("/fhir/_history?_count=2").await.json();
    assert_eq!(system["total"], 4);
    assert_eq!(system["entry"].as_array().unwrap().len(), 2);
    assert_eq!(
        system["entry"][0]["resource"]["resourceType"],
        "Observation"
    );
    let next = app.get(&link(&system, "next").unwrap()).await.json();
    assert_eq!(next["entry"].as_array().unwrap().len(), 2);
    assert_eq!(next["entry"][1]["resource"]["id"], "x");
    assert_eq!(next["entry"][1]["resource"]["meta"]["versionId"], "1");
    assert!(link(&next, "next").is_none());
}

async fn since_filters_history(app: TestApp) {
    app.put_patient("s", "1").await;
    let r = app
        .get("/fhir/_history?_since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(r["total"], 0);
    let r = app.get("/fhir/_history?_since=2000").await.json();
    assert_eq!(r["total"], 1);
    app.get("/fhir/_history?_since=later")
        .await
        .assert_outcome(400, "_since");
}
