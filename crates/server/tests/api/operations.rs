//! Metadata, health, readiness and restart persistence.

use serde_json::Value;

use crate::backend_tests;
use crate::helpers::TestApp;

backend_tests!(
    metadata_lists_exactly_the_routed_interactions,
    health_reports_database_response_time,
    readiness_fails_with_a_reason_while_the_database_is_unreachable,
    data_survives_a_restart
);

async fn metadata_lists_exactly_the_routed_interactions(app: TestApp) {
    let r = app.get("/fhir/metadata").await;
    assert_eq!(r.status, 200);
    let cs = r.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let rest = &cs["rest"][0];
    let system: Vec<&str> = rest["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        system,
        ["transaction", "batch", "search-system", "history-system"]
    );
    let patient = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    let codes: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "search-type",
            "create",
            "history-type",
            "read",
            "update",
            "patch",
            "delete",
            "history-instance",
            "vread"
        ]
    );
    // The conditional interactions and patch formats that are implemented.
    assert_eq!(patient["conditionalCreate"], true);
    assert_eq!(patient["conditionalRead"], "full-support");
    assert_eq!(patient["conditionalUpdate"], true);
    assert_eq!(patient["conditionalDelete"], "single");
    let listed = |key: &str, item: &str| patient[key].as_array().unwrap().iter().any(|v| v == item);
    assert!(listed("searchInclude", "Patient:organization"));
    assert!(listed("searchRevInclude", "Observation:subject"));
    assert!(!listed("searchInclude", "Patient:name"));
    assert!(listed("searchInclude", "Patient:*") && listed("searchInclude", "*"));
    assert_eq!(
        cs["patchFormat"],
        serde_json::json!([
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/fhir+json"
        ])
    );
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params[..2], ["_id", "_lastUpdated"]);
    // Every R4 parameter of the type that is searched, with its type.
    for name in [
        "name",
        "family",
        "birthdate",
        "identifier",
        "gender",
        "organization",
        "_tag",
    ] {
        assert!(params.contains(&name), "{name} in {params:?}");
    }
    assert!(
        !params.contains(&"_text"),
        "unsupported ones are not listed"
    );
    let birthdate = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "birthdate")
        .unwrap();
    assert_eq!(birthdate["type"], "date");
    assert_eq!(
        birthdate["definition"],
        "http://hl7.org/fhir/SearchParameter/individual-birthdate"
    );
    let client = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Client")
        .unwrap();
    let doc = client["documentation"].as_str().unwrap();
    assert!(
        doc.contains("secret (HTTP Basic") && doc.contains("secret-reference"),
        "{doc}"
    );
    let introspector = rest["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "TokenIntrospector")
        .unwrap();
    assert!(introspector["documentation"]
        .as_str()
        .unwrap()
        .contains("jwt.keys[].k"));
    assert!(patient.get("documentation").is_none());
    assert_eq!(rest["resource"].as_array().unwrap().len(), 146 + 7);
    // $validate is routed for every type, so it is listed for every type.
    assert_eq!(patient["operation"][0]["name"], "validate");
}

async fn health_reports_database_response_time(app: TestApp) {
    let r = app.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/health+json"));
    let v = r.json();
    assert_eq!(v["status"], "pass");
    let check = &v["checks"]["database:responseTime"][0];
    assert_eq!(check["status"], "pass");
    assert!(check["observedValue"].as_f64().unwrap() >= 0.0);
    assert_eq!(app.get("/health/ready").await.status, 200);
}

async fn readiness_fails_with_a_reason_while_the_database_is_unreachable(app: TestApp) {
    app.state.store.close().await;
    let r = app.get("/health/ready").await;
    assert_eq!(r.status, 503);
    let v: Value = r.json();
    assert_eq!(v["status"], "fail");
    assert!(v["output"]
        .as_str()
        .unwrap()
        .contains("database unreachable"));
    // Liveness still answers so the orchestrator does not restart the pod for a database outage.
    let live = app.get("/health").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["status"], "warn");
    // API calls fail with 503, not 500.
    app.get("/fhir/Patient/x")
        .await
        .assert_outcome(503, "database is unavailable");
}

async fn data_survives_a_restart(app: TestApp) {
    app.put_patient("keep", "Persisted").await;
    app.put_patient("keep", "Persisted2").await;
    let app = app.restart().await;
    let r = app.get("/fhir/Patient/keep").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"][0]["family"], "Persisted2");
    assert_eq!(r.json()["meta"]["versionId"], "2");
    let next = app.put_patient("keep", "After").await;
    assert_eq!(next["meta"]["versionId"], "3");
}
