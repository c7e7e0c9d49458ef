//! Concurrent writers never lose a version.

use futures_like::join_all;
use serde_json::json;

use crate::backend_tests;

/// Minimal join_all over tokio tasks, so the tests need no futures crate.
mod futures_like {
    pub async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

const WRITERS: usize = 12;

backend_tests! {
    async fn parallel_updates_with_the_same_if_match_let_exactly_one_win(app) {
        app.put_patient("race", "Start").await;
        let tasks = (0..WRITERS)
            .map(|i| {
                let client = app.client.clone();
                let url = app.url("/fhir/Patient/race");
                tokio::spawn(async move {
                    client
                        .put(url)
                        .header("content-type", "application/fhir+json")
                        .header("if-match", "W/\"1\"")
                        .body(json!({"resourceType": "Patient", "id": "race", "name": [{"family": format!("W{i}")}]}).to_string())
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let statuses = join_all(tasks).await;
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 412).count(), WRITERS - 1, "{statuses:?}");
        assert_eq!(app.get("/fhir/Patient/race").await.json()["meta"]["versionId"], "2");
    }

    async fn parallel_unconditional_updates_each_get_their_own_version(app) {
        let tasks = (0..WRITERS)
            .map(|i| {
                let client = app.client.clone();
                let url = app.url("/fhir/Patient/busy");
                tokio::spawn(async move {
                    client
                        .put(url)
                        .header("content-type", "application/fhir+json")
                        .body(json!({"resourceType": "Patient", "id": "busy", "name": [{"family": format!("W{i}")}]}).to_string())
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let statuses = join_all(tasks).await;
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "exactly one create: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), WRITERS - 1, "{statuses:?}");
        let current = app.get("/fhir/Patient/busy").await.json();
        assert_eq!(current["meta"]["versionId"], WRITERS.to_string());
        let history = app.get("/fhir/Patient/busy/_history?_count=100").await.json();
        assert_eq!(history["total"], WRITERS as i64);
        let mut families: Vec<String> = history["entry"].as_array().unwrap().iter().map(|e| e["resource"]["name"][0]["family"].as_str().unwrap().to_owned()).collect();
        families.sort();
        families.dedup();
        assert_eq!(families.len(), WRITERS, "every write is kept in history");
    }
}
