//! Concurrent writers never lose a version.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::TestApp;

/// Sends `WRITERS` updates of `Patient/{id}` at once (each with its own family
/// name, all with the same `If-Match` when given) and returns their statuses.
async fn parallel_puts(app: &TestApp, id: &str, if_match: Option<&str>) -> Vec<u16> {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let mut request = app
                .client
                .put(app.url(&format!("/fhir/Patient/{id}")))
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("W{i}")}]}).to_string());
            if let Some(tag) = if_match {
                request = request.header("if-match", tag);
            }
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::with_capacity(tasks.len());
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

const WRITERS: usize = 12;

backend_tests!(
    parallel_updates_with_the_same_if_match_let_exactly_one_win,
    parallel_unconditional_updates_each_get_their_own_version
);

async fn parallel_updates_with_the_same_if_match_let_exactly_one_win(app: TestApp) {
    app.put_patient("race", "Start").await;
    let statuses = parallel_puts(&app, "race", Some("W/\"1\"")).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        WRITERS - 1,
        "{statuses:?}"
    );
    assert_eq!(
        app.get("/fhir/Patient/race").await.json()["meta"]["versionId"],
        "2"
    );
}

async fn parallel_unconditional_updates_each_get_their_own_version(app: TestApp) {
    let statuses = parallel_puts(&app, "busy", None).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "exactly one create: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        WRITERS - 1,
        "{statuses:?}"
    );
    let current = app.get("/fhir/Patient/busy").await.json();
    assert_eq!(current["meta"]["versionId"], WRITERS.to_string());
    let history = app
        .get("/fhir/Patient/busy/_history?_count=100")
        .await
        .json();
    assert_eq!(history["total"], WRITERS as i64);
    let mut families: Vec<String> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["name"][0]["family"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    families.sort();
    families.dedup();
    assert_eq!(families.len(), WRITERS, "every write is kept in history");
}
