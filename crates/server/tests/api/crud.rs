//! Create, read, vread, update, patch and delete.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::TestApp;

backend_tests!(
    create_assigns_an_id_and_answers_201_with_location_and_etag,
    update_creates_then_versions_and_vread_returns_each_version,
    update_keeps_client_meta_elements_but_owns_version_and_time,
    patch_applies_a_json_patch_and_guards_the_id,
    patch_applies_a_merge_patch_sent_either_way,
    patch_applies_a_fhirpath_patch_over_rest_and_in_bundles,
    conditional_read_answers_304_while_the_client_is_current,
    head_answers_a_read_or_search_without_a_body,
    delete_makes_read_answer_410_and_update_brings_it_back,
    prefer_return_chooses_the_response_body,
    if_match_guards_update_patch_and_delete,
    server_types_are_stored_like_fhir_types
);

async fn create_assigns_an_id_and_answers_201_with_location_and_etag(app: TestApp) {
    let r = app
        .post(
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "id": "ignored", "gender": "female"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let body = r.json();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_ne!(id, "ignored");
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    let location = r.header("location").unwrap();
    assert!(
        location.ends_with(&format!("/fhir/Patient/{id}/_history/1")),
        "{location}"
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));

    let read = app.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), body);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    assert!(read.header("last-modified").unwrap().ends_with("GMT"));
}

async fn update_creates_then_versions_and_vread_returns_each_version(app: TestApp) {
    let first = app
        .put(
            "/fhir/Patient/p1",
            &json!({"resourceType": "Patient", "id": "p1", "gender": "male"}),
        )
        .await;
    assert_eq!(first.status, 201);
    assert!(first.header("location").is_some());
    let second = app
        .put(
            "/fhir/Patient/p1",
            &json!({"resourceType": "Patient", "id": "p1", "gender": "female"}),
        )
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["meta"]["versionId"], "2");
    assert_eq!(second.header("etag"), Some("W/\"2\""));

    let v1 = app.get("/fhir/Patient/p1/_history/1").await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.json()["gender"], "male");
    assert_eq!(
        app.get("/fhir/Patient/p1/_history/2").await.json()["gender"],
        "female"
    );
    app.get("/fhir/Patient/p1/_history/3")
        .await
        .assert_outcome(404, "no version 3");
    app.get("/fhir/Patient/p1/_history/x")
        .await
        .assert_outcome(400, "not a version id");
}

async fn update_keeps_client_meta_elements_but_owns_version_and_time(app: TestApp) {
    let r = app.put("/fhir/Patient/m", &json!({
        "resourceType": "Patient", "id": "m",
        "meta": {"versionId": "99", "lastUpdated": "2000-01-01T00:00:00Z", "profile": ["http://example.org/p"]}
    })).await;
    let body = r.json();
    assert_eq!(body["meta"]["versionId"], "1");
    assert_ne!(body["meta"]["lastUpdated"], "2000-01-01T00:00:00Z");
    assert_eq!(body["meta"]["profile"][0], "http://example.org/p");
}

async fn patch_applies_a_json_patch_and_guards_the_id(app: TestApp) {
    app.put_patient("pp", "Before").await;
    let r = app
        .patch(
            "/fhir/Patient/pp",
            &json!([{"op": "replace", "path": "/name/0/family", "value": "After"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["name"][0]["family"], "After");
    assert_eq!(r.json()["meta"]["versionId"], "2");

    app.patch(
        "/fhir/Patient/pp",
        &json!([{"op": "replace", "path": "/id", "value": "other"}]),
    )
    .await
    .assert_outcome(422, "does not match the id in the URL");
    app.patch(
        "/fhir/Patient/pp",
        &json!([{"op": "test", "path": "/name/0/family", "value": "Nope"}]),
    )
    .await
    .assert_outcome(422, "cannot be applied");
    app.patch("/fhir/Patient/pp", &json!({"op": "replace"}))
        .await
        .assert_outcome(400, "is an array of operations");
    app.patch("/fhir/Patient/pp", &json!([{"op": "replace"}]))
        .await
        .assert_outcome(400, "not a valid JSON Patch");
    app.patch("/fhir/Patient/missing", &json!([]))
        .await
        .assert_outcome(404, "does not exist");
    // Nothing of the failed patches was stored.
    assert_eq!(
        app.get("/fhir/Patient/pp").await.json()["meta"]["versionId"],
        "2"
    );
}

/// RFC 7386 merge patches: as `application/merge-patch+json`, and as a JSON
/// object sent as `application/json` (the Python client fhirpy's
/// `save(fields=[...])`); a JSON array as `application/json` is a JSON Patch.
async fn patch_applies_a_merge_patch_sent_either_way(app: TestApp) {
    let patch = |media: &'static str, body: serde_json::Value| {
        app.client
            .patch(app.url("/fhir/Patient/mp"))
            .header("content-type", media)
            .body(body.to_string())
    };
    let created = app
        .put(
            "/fhir/Patient/mp",
            &json!({"resourceType": "Patient", "id": "mp", "active": true, "gender": "male",
                    "name": [{"family": "Before"}], "birthDate": "1970-01-01"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let r = app
        .send(patch(
            "application/merge-patch+json",
            json!({"gender": "female", "active": null, "name": [{"family": "After"}]}),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    assert_eq!(body["gender"], "female");
    assert!(body.get("active").is_none(), "null removes: {body}");
    assert_eq!(body["name"], json!([{"family": "After"}]));
    assert_eq!(body["birthDate"], "1970-01-01", "untouched members stay");
    assert_eq!(body["meta"]["versionId"], "2");
    // The new version is what search sees.
    let found = app.get("/fhir/Patient?family=After&_id=mp").await.json();
    assert_eq!(found["total"], 1);

    let r = app
        .send(patch(
            "application/json",
            json!({"birthDate": "1980-02-02"}),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["birthDate"], "1980-02-02");
    let r = app
        .send(patch(
            "application/json",
            json!([{"op": "replace", "path": "/gender", "value": "other"}]),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["gender"], "other");
    assert_eq!(r.json()["meta"]["versionId"], "4");

    // A result that breaks the resource's rules is refused, and nothing is stored.
    app.send(patch(
        "application/merge-patch+json",
        json!({"id": "other"}),
    ))
    .await
    .assert_outcome(422, "does not match the id in the URL");
    app.send(patch("application/merge-patch+json", json!({"gender": 7})))
        .await
        .assert_outcome(422, "after the patch");
    app.send(patch("application/merge-patch+json", json!(["x"])))
        .await
        .assert_outcome(400, "JSON object");
    app.send(patch("text/plain", json!({"gender": "male"})))
        .await
        .assert_outcome(415, "merge-patch+json");
    app.send(patch(
        "application/fhir+json",
        json!({"resourceType": "Parameters", "parameter": []}),
    ))
    .await
    .assert_outcome(400, "FHIRPath Patch has no operation");
    assert_eq!(
        app.get("/fhir/Patient/mp").await.json()["meta"]["versionId"],
        "4"
    );
}

/// `If-None-Match` and `If-Modified-Since` on read and vread (R4 §3.1.0.1.5).
async fn conditional_read_answers_304_while_the_client_is_current(app: TestApp) {
    app.put_patient("cr", "One").await;
    let get = |headers: &[(&'static str, String)]| {
        let mut req = app.client.get(app.url("/fhir/Patient/cr"));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        app.send(req)
    };
    let first = get(&[]).await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap().to_owned();
    let modified = first.header("last-modified").unwrap().to_owned();

    let same = get(&[("if-none-match", etag.clone())]).await;
    assert_eq!(same.status, 304, "{}", same.text);
    assert!(same.text.is_empty());
    assert_eq!(same.header("etag"), Some(etag.as_str()));
    assert_eq!(same.header("last-modified"), Some(modified.as_str()));
    assert_eq!(get(&[("if-none-match", "*".into())]).await.status, 304);
    assert_eq!(
        get(&[("if-modified-since", modified.clone())]).await.status,
        304
    );
    // Another tag, an older date, or a date that does not parse: the resource.
    assert_eq!(
        get(&[("if-none-match", "W/\"7\"".into())]).await.status,
        200
    );
    assert_eq!(
        get(&[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT".into())])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&[("if-modified-since", "yesterday".into())])
            .await
            .status,
        200
    );
    // If-None-Match decides when both are sent (RFC 9110 §13.2.2).
    assert_eq!(
        get(&[
            ("if-none-match", "W/\"7\"".into()),
            ("if-modified-since", modified.clone())
        ])
        .await
        .status,
        200
    );

    // A new version makes the client's copy stale.
    app.put_patient("cr", "Two").await;
    let after = get(&[("if-none-match", etag.clone())]).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.json()["name"][0]["family"], "Two");
    // vread of the version the client holds is not modified either.
    let old = app
        .send(
            app.client
                .get(app.url("/fhir/Patient/cr/_history/1"))
                .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(old.status, 304);
    // A conditional read of what is not there is still 404.
    app.send(
        app.client
            .get(app.url("/fhir/Patient/none"))
            .header("if-none-match", "*"),
    )
    .await
    .assert_outcome(404, "does not exist");
}

/// HEAD on a read and on a search: the GET's status and headers, no body.
async fn head_answers_a_read_or_search_without_a_body(app: TestApp) {
    app.put_patient("hd", "Head").await;
    let read = app.send(app.client.head(app.url("/fhir/Patient/hd"))).await;
    assert_eq!(read.status, 200);
    assert!(read.text.is_empty());
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    assert!(read
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));
    let search = app
        .send(app.client.head(app.url("/fhir/Patient?family=Head")))
        .await;
    assert_eq!(search.status, 200);
    assert!(search.text.is_empty());
    let missing = app
        .send(app.client.head(app.url("/fhir/Patient/nope")))
        .await;
    assert_eq!(missing.status, 404);
    assert!(missing.text.is_empty());
    let bad = app
        .send(app.client.head(app.url("/fhir/Patient?birthdate=notadate")))
        .await;
    assert_eq!(bad.status, 400);
}

async fn delete_makes_read_answer_410_and_update_brings_it_back(app: TestApp) {
    app.put_patient("d1", "Gone").await;
    let r = app.delete("/fhir/Patient/d1").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    app.get("/fhir/Patient/d1")
        .await
        .assert_outcome(410, "deleted");
    // Deleting again changes nothing and still succeeds.
    assert_eq!(app.delete("/fhir/Patient/d1").await.status, 204);
    app.get("/fhir/Patient/d1/_history/2")
        .await
        .assert_outcome(410, "deletion");
    assert_eq!(app.get("/fhir/Patient/d1/_history/1").await.status, 200);
    app.delete("/fhir/Patient/never")
        .await
        .assert_outcome(404, "does not exist");

    let back = app
        .put(
            "/fhir/Patient/d1",
            &json!({"resourceType": "Patient", "id": "d1"}),
        )
        .await;
    assert_eq!(back.status, 201);
    assert_eq!(back.json()["meta"]["versionId"], "3");
}

async fn prefer_return_chooses_the_response_body(app: TestApp) {
    let minimal = app
        .send(
            app.fhir(
                app.client.post(app.url("/fhir/Patient")),
                &json!({"resourceType": "Patient"}),
            )
            .header("prefer", "return=minimal"),
        )
        .await;
    assert_eq!(minimal.status, 201);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").is_some());
    let oo = app
        .send(
            app.fhir(
                app.client.put(app.url("/fhir/Patient/o")),
                &json!({"resourceType": "Patient", "id": "o"}),
            )
            .header("prefer", "return=OperationOutcome"),
        )
        .await;
    assert_eq!(oo.status, 201);
    assert_eq!(oo.json()["resourceType"], "OperationOutcome");
    assert_eq!(oo.json()["issue"][0]["severity"], "information");
    let deleted = app
        .send(
            app.client
                .delete(app.url("/fhir/Patient/o"))
                .header("prefer", "return=OperationOutcome"),
        )
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["resourceType"], "OperationOutcome");
}

async fn if_match_guards_update_patch_and_delete(app: TestApp) {
    app.put_patient("v", "One").await;
    app.put_patient("v", "Two").await;
    let stale = app
        .send(
            app.fhir(
                app.client.put(app.url("/fhir/Patient/v")),
                &json!({"resourceType": "Patient", "id": "v"}),
            )
            .header("if-match", "W/\"1\""),
        )
        .await;
    stale.assert_outcome(412, "current version is 2");
    let fresh = app
        .send(
            app.fhir(
                app.client.put(app.url("/fhir/Patient/v")),
                &json!({"resourceType": "Patient", "id": "v", "gender": "other"}),
            )
            .header("if-match", "W/\"2\""),
        )
        .await;
    assert_eq!(fresh.status, 200);
    let patch_stale = app
        .send(
            app.client
                .patch(app.url("/fhir/Patient/v"))
                .header("content-type", "application/json-patch+json")
                .header("if-match", "W/\"2\"")
                .body("[]"),
        )
        .await;
    patch_stale.assert_outcome(412, "version 2 was expected");
    let delete_stale = app
        .send(
            app.client
                .delete(app.url("/fhir/Patient/v"))
                .header("if-match", "W/\"1\""),
        )
        .await;
    delete_stale.assert_outcome(412, "version 1 was expected");
    let malformed = app
        .send(
            app.client
                .delete(app.url("/fhir/Patient/v"))
                .header("if-match", "yesterday"),
        )
        .await;
    malformed.assert_outcome(400, "If-Match");
    assert_eq!(app.get("/fhir/Patient/v").await.json()["gender"], "other");
}

async fn server_types_are_stored_like_fhir_types(app: TestApp) {
    let r = app
        .put(
            "/fhir/AccessPolicy/ap1",
            &json!({"resourceType": "AccessPolicy", "id": "ap1", "engine": "allow"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        app.get("/fhir/AccessPolicy/ap1").await.json()["engine"],
        "allow"
    );
}

/// A FHIRPath Patch operation (R4 "FHIRPath Patch").
fn fhirpath_op(kind: &str, path: &str, rest: Value) -> Value {
    let mut parts = vec![
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "path", "valueString": path}),
    ];
    parts.extend(rest.as_array().cloned().unwrap_or_default());
    json!({"name": "operation", "part": parts})
}

async fn patch_applies_a_fhirpath_patch_over_rest_and_in_bundles(app: TestApp) {
    let r = app
        .put(
            "/fhir/Patient/fp",
            &json!({"resourceType": "Patient", "id": "fp", "gender": "female",
                    "name": [{"use": "official", "family": "Ng"}, {"use": "nickname", "given": ["Annie"]}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let send = |media: &str, ops: Vec<Value>| {
        app.client
            .patch(app.url("/fhir/Patient/fp"))
            .header("content-type", media)
            .body(json!({"resourceType": "Parameters", "parameter": ops}).to_string())
    };
    let done = app
        .send(send(
            "application/fhir+json",
            vec![
                fhirpath_op("add", "Patient", json!([{"name": "name", "valueString": "birthDate"}, {"name": "value", "valueDate": "1970-01-02"}])),
                fhirpath_op("replace", "Patient.name.where(use = 'official').family", json!([{"name": "value", "valueString": "Nguyen"}])),
                fhirpath_op("delete", "Patient.name.where(use = 'nickname')", json!([])),
                fhirpath_op("replace", "Patient.gender", json!([{"name": "value", "valueCode": "male"}])),
            ],
        ))
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
    let v = done.json();
    assert_eq!(v["birthDate"], "1970-01-02");
    assert_eq!(v["name"], json!([{"use": "official", "family": "Nguyen"}]));
    assert_eq!(v["gender"], "male");
    assert_eq!(v["meta"]["versionId"], "2");
    // Sent as application/json it is read the same way.
    let again = app
        .send(send(
            "application/json",
            vec![fhirpath_op("delete", "Patient.birthDate", json!([]))],
        ))
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert!(again.json().get("birthDate").is_none());
    // Mistakes: a path that selects nothing, a result the type refuses, a
    // function outside the subset, no operation at all. Nothing is stored.
    for (ops, status, needle) in [
        (
            vec![fhirpath_op(
                "replace",
                "Patient.photo",
                json!([{"name": "value", "valueString": "x"}]),
            )],
            422,
            "selects nothing",
        ),
        (
            vec![fhirpath_op(
                "replace",
                "Patient.gender",
                json!([{"name": "value", "valueInteger": 7}]),
            )],
            422,
            "after the patch: must be one code",
        ),
        (
            vec![fhirpath_op("delete", "Patient.name.exists()", json!([]))],
            400,
            "exists() is not supported",
        ),
        (vec![], 400, "no operation"),
    ] {
        app.send(send("application/fhir+json", ops))
            .await
            .assert_outcome(status, needle);
    }
    assert_eq!(
        app.get("/fhir/Patient/fp").await.json()["meta"]["versionId"],
        "3"
    );

    // In a transaction the Parameters is the entry's resource.
    let bundle = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Parameters", "parameter": [
                    fhirpath_op("add", "Patient.name[0]", json!([{"name": "name", "valueString": "given"}, {"name": "value", "valueString": "Ann"}]))]},
                 "request": {"method": "PATCH", "url": "Patient/fp"}}]}),
        )
        .await;
    assert_eq!(bundle.status, 200, "{}", bundle.text);
    assert_eq!(
        app.get("/fhir/Patient/fp").await.json()["name"][0]["given"],
        json!(["Ann"])
    );
}
