//! Conditional interactions (R4 §3.1.0.8): create with `If-None-Exist` over
//! REST, in batch and transaction entries and under concurrent requests;
//! update, patch and delete by criteria.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{Resp, TestApp};
use fhirbox_test_support::Backend;

backend_tests!(
    if_none_exist_creates_once_then_answers_the_match,
    if_none_exist_criteria_are_checked,
    batch_and_transaction_entries_create_conditionally,
    parallel_conditional_creates_store_one_resource,
    conditional_update_replaces_the_match_or_creates,
    conditional_patch_and_delete_act_on_the_one_match,
    a_transaction_that_creates_its_own_match_is_refused,
    transaction_entries_update_patch_and_delete_by_criteria,
    conditional_writes_and_references_fail_a_transaction_clearly,
    batch_entries_write_by_criteria_each_on_their_own,
    conditional_references_are_searched_as_the_caller
);

backend_tests!(per_backend: conditional_delete_takes_several_matches_when_the_setting_allows);

const SYSTEM: &str = "http://hospital.example/mrn";

fn patient(mrn: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": mrn}],
           "name": [{"family": family}]})
}

async fn create_if_none(app: &TestApp, body: &Value, criteria: &str) -> Resp {
    app.send(
        app.fhir(app.client.post(app.url("/fhir/Patient")), body)
            .header("if-none-exist", criteria),
    )
    .await
}

async fn matches(app: &TestApp, mrn: &str) -> Vec<String> {
    let found = app
        .get(&format!("/fhir/Patient?identifier={SYSTEM}|{mrn}"))
        .await
        .json();
    found["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn if_none_exist_creates_once_then_answers_the_match(app: TestApp) {
    let criteria = format!("identifier={SYSTEM}|m1");
    let first = create_if_none(&app, &patient("m1", "First"), &criteria).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert!(first.header("location").unwrap().contains(&id));

    // A second create with the same criteria stores nothing and answers the match.
    let again = create_if_none(&app, &patient("m1", "Second"), &criteria).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.json()["name"][0]["family"], "First");
    assert_eq!(again.header("etag"), Some("W/\"1\""));
    assert_eq!(matches(&app, "m1").await, vec![id.clone()]);
    // With a leading `?` and with more criteria it is the same search.
    let more = create_if_none(
        &app,
        &patient("m1", "Third"),
        &format!("?{criteria}&family=First"),
    )
    .await;
    assert_eq!(more.status, 200, "{}", more.text);
    assert_eq!(more.json()["id"], id.as_str());

    // Criteria that match nothing create.
    let other = create_if_none(
        &app,
        &patient("m1", "Other"),
        &format!("{criteria}&family=Nobody"),
    )
    .await;
    assert_eq!(other.status, 201, "{}", other.text);
    // Now two match: 412, and nothing more is stored.
    create_if_none(&app, &patient("m1", "Fourth"), &criteria)
        .await
        .assert_outcome(412, "more than one Patient matches");
    assert_eq!(matches(&app, "m1").await.len(), 2);
    // `Prefer: return=minimal` on a match: no body, the match's Location.
    let minimal = app
        .send(
            app.fhir(
                app.client.post(app.url("/fhir/Patient")),
                &patient("m1", "x"),
            )
            .header("if-none-exist", format!("_id={id}"))
            .header("prefer", "return=minimal"),
        )
        .await;
    assert_eq!(minimal.status, 200);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").unwrap().contains(&id));
}

async fn if_none_exist_criteria_are_checked(app: TestApp) {
    let body = patient("c1", "Checked");
    for (criteria, says) in [
        ("", "no search parameters"),
        ("nosuchparam=1", "nosuchparam"),
        ("_count=1", "_count"),
        ("birthdate=notadate", "birthdate"),
        ("organization.name=x", "cannot use a chain"),
    ] {
        create_if_none(&app, &body, criteria)
            .await
            .assert_outcome(400, says);
    }
    assert!(matches(&app, "c1").await.is_empty(), "nothing was created");
}

async fn batch_and_transaction_entries_create_conditionally(app: TestApp) {
    let criteria = format!("identifier={SYSTEM}|b1");
    let entry = |family: &str| {
        json!({"fullUrl": "urn:uuid:0b1f1a52-0000-4000-8000-000000000001",
               "resource": patient("b1", family),
               "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}})
    };
    let observation = json!({"resource": {"resourceType": "Observation", "status": "final",
            "code": {"text": "weight"},
            "subject": {"reference": "urn:uuid:0b1f1a52-0000-4000-8000-000000000001"}},
        "request": {"method": "POST", "url": "Observation"}});

    // Transaction, nothing matches: created, and the reference names it.
    let r = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction",
                    "entry": [entry("Tx"), observation.clone()]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(out["entry"][0]["response"]["status"], "201 Created");
    let id = out["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        out["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{id}")
    );

    // Transaction, one matches: nothing is created, the reference names the match.
    let r = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction",
                    "entry": [entry("Again"), observation.clone()]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(out["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(out["entry"][0]["resource"]["id"], id.as_str());
    assert_eq!(out["entry"][0]["resource"]["name"][0]["family"], "Tx");
    assert_eq!(
        out["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{id}")
    );
    assert_eq!(matches(&app, "b1").await, vec![id.clone()]);

    // The same criteria twice in one transaction is refused as a whole.
    let mut twin = entry("Twin");
    twin["fullUrl"] = json!("urn:uuid:0b1f1a52-0000-4000-8000-000000000002");
    let r = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction",
                    "entry": [entry("One"), twin, observation.clone()]}),
        )
        .await;
    r.assert_outcome(400, "the same ifNoneExist");

    // Batch: each entry on its own; a match answers 200 with it.
    let r = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": patient("b1", "Batch"),
                 "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}},
                {"resource": patient("b2", "Batch"),
                 "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={SYSTEM}|b2")}},
                {"resource": patient("b3", "Batch"),
                 "request": {"method": "POST", "url": "Patient", "ifNoneExist": "nosuch=1"}},
                {"request": {"method": "GET", "url": "Patient", "ifNoneExist": criteria}}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = r.json()["entry"].as_array().unwrap().clone();
    assert_eq!(e[0]["response"]["status"], "200 OK");
    assert_eq!(e[0]["resource"]["id"], id.as_str());
    assert_eq!(e[1]["response"]["status"], "201 Created");
    assert_eq!(e[2]["response"]["status"], "400 Bad Request");
    assert_eq!(e[3]["response"]["status"], "400 Bad Request");
    assert!(e[3]["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("create entry"));
    assert_eq!(matches(&app, "b1").await.len(), 1);
    assert_eq!(matches(&app, "b2").await.len(), 1);
    assert!(matches(&app, "b3").await.is_empty());
}

/// Many clients "upsert" the same patient at once: exactly one resource is
/// stored, one request answers 201 and the others 200 with it.
async fn parallel_conditional_creates_store_one_resource(app: TestApp) {
    const CLIENTS: usize = 12;
    for round in 0..3 {
        let mrn = format!("p{round}");
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let request = app
                    .client
                    .post(app.url("/fhir/Patient"))
                    .header("content-type", "application/fhir+json")
                    .header("if-none-exist", format!("identifier={SYSTEM}|{mrn}"))
                    .body(patient(&mrn, &format!("C{i}")).to_string());
                tokio::spawn(async move {
                    let r = request.send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap();
                    (status, body["id"].as_str().unwrap_or_default().to_owned())
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let created = answers.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(created, 1, "{answers:?}");
        assert!(
            answers.iter().all(|(s, _)| *s == 201 || *s == 200),
            "{answers:?}"
        );
        let stored = matches(&app, &mrn).await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert!(
            answers.iter().all(|(_, id)| *id == stored[0]),
            "{answers:?}"
        );
    }
}

/// `PUT /fhir/{type}?criteria` (R4 §3.1.0.4.3).
async fn conditional_update_replaces_the_match_or_creates(app: TestApp) {
    let put = |criteria: String, body: Value| {
        app.send(
            app.fhir(
                app.client
                    .put(app.url(&format!("/fhir/Patient?{criteria}"))),
                &body,
            ),
        )
    };
    let criteria = format!("identifier={SYSTEM}|u1");
    // Nothing matches: created with a server id.
    let created = put(criteria.clone(), patient("u1", "Made")).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(created.header("location").unwrap().contains(&id));
    // One matches: replaced, with or without the id in the body.
    let replaced = put(criteria.clone(), patient("u1", "Changed")).await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_eq!(replaced.json()["id"], id.as_str());
    assert_eq!(replaced.json()["meta"]["versionId"], "2");
    let mut with_id = patient("u1", "Again");
    with_id["id"] = json!(id);
    let again = put(criteria.clone(), with_id).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["name"][0]["family"], "Again");
    // An id that is not the match's is refused; so is an id with no match.
    let mut wrong = patient("u1", "Wrong");
    wrong["id"] = json!("someone-else");
    put(criteria.clone(), wrong.clone())
        .await
        .assert_outcome(400, "someone-else");
    put(format!("identifier={SYSTEM}|nobody"), wrong)
        .await
        .assert_outcome(400, "PUT to that URL");
    assert!(app.get("/fhir/Patient/someone-else").await.status == 404);
    // If-Match applies to the match.
    let stale = app
        .send(
            app.fhir(
                app.client
                    .put(app.url(&format!("/fhir/Patient?{criteria}"))),
                &patient("u1", "Stale"),
            )
            .header("if-match", "W/\"1\""),
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    // Several match: 412, nothing changes.
    let second = app.post("/fhir/Patient", &patient("u1", "Second")).await;
    assert_eq!(second.status, 201);
    put(criteria.clone(), patient("u1", "Nope"))
        .await
        .assert_outcome(412, "more than one Patient matches");
    // No criteria, or criteria the server does not know: 400.
    app.send(app.fhir(
        app.client.put(app.url("/fhir/Patient")),
        &patient("u1", "x"),
    ))
    .await
    .assert_outcome(400, "needs search criteria");
    put("nosuch=1".into(), patient("u1", "x"))
        .await
        .assert_outcome(400, "nosuch");
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}")).await.json()["meta"]["versionId"],
        "3"
    );
}

/// `PATCH` and `DELETE /fhir/{type}?criteria`.
async fn conditional_patch_and_delete_act_on_the_one_match(app: TestApp) {
    let created = app.post("/fhir/Patient", &patient("d1", "Patchable")).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let criteria = format!("identifier={SYSTEM}|d1");
    let patched = app
        .send(
            app.client
                .patch(app.url(&format!("/fhir/Patient?{criteria}")))
                .header("content-type", "application/merge-patch+json")
                .body(json!({"gender": "female"}).to_string()),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.json()["id"], id.as_str());
    assert_eq!(patched.json()["gender"], "female");
    app.send(
        app.client
            .patch(app.url(&format!("/fhir/Patient?identifier={SYSTEM}|nobody")))
            .header("content-type", "application/json-patch+json")
            .body("[]"),
    )
    .await
    .assert_outcome(404, "no Patient matches");

    let deleted = app
        .send(
            app.client
                .delete(app.url(&format!("/fhir/Patient?{criteria}"))),
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    app.get(&format!("/fhir/Patient/{id}"))
        .await
        .assert_outcome(410, "deleted");
    // Nothing matches any more: nothing to delete.
    let none = app
        .send(
            app.client
                .delete(app.url(&format!("/fhir/Patient?{criteria}")))
                .header("prefer", "return=OperationOutcome"),
        )
        .await;
    assert_eq!(none.status, 200, "{}", none.text);
    assert!(none.text.contains("nothing was deleted"), "{}", none.text);
    // Several match: 412, and both are kept.
    for i in 0..2 {
        app.post("/fhir/Patient", &patient("d2", &format!("Twin{i}")))
            .await;
    }
    app.send(
        app.client
            .delete(app.url(&format!("/fhir/Patient?identifier={SYSTEM}|d2"))),
    )
    .await
    .assert_outcome(412, "more than one");
    assert_eq!(matches(&app, "d2").await.len(), 2);
    app.send(app.client.delete(app.url("/fhir/Patient")))
        .await
        .assert_outcome(400, "needs search criteria");
    // If-Match cannot hold on a resource that is not there.
    app.send(
        app.client
            .delete(app.url(&format!("/fhir/Patient?identifier={SYSTEM}|nobody")))
            .header("if-match", "W/\"1\""),
    )
    .await
    .assert_outcome(412, "If-Match cannot hold");
}

/// A transaction whose own plain create matches one of its conditional
/// creates cannot succeed: a 409 that says so, and nothing stored.
async fn a_transaction_that_creates_its_own_match_is_refused(app: TestApp) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("t1", "Plain"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient("t1", "Conditional"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={SYSTEM}|t1")}}
    ]});
    app.post("/fhir", &bundle)
        .await
        .assert_outcome(409, "by another of its own entries");
    assert!(matches(&app, "t1").await.is_empty());
}

/// A PATCH entry's Binary holding a JSON merge patch.
fn merge_patch(patch: Value) -> Value {
    use base64::Engine as _;
    json!({"resourceType": "Binary", "contentType": "application/merge-patch+json",
           "data": base64::engine::general_purpose::STANDARD.encode(patch.to_string())})
}

/// Stores a Patient with MRN `mrn`; returns its id.
async fn stored(app: &TestApp, mrn: &str, family: &str) -> String {
    let r = app.post("/fhir/Patient", &patient(mrn, family)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()["id"].as_str().unwrap().to_owned()
}

async fn transaction(app: &TestApp, entries: Value) -> Resp {
    app.post(
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
    )
    .await
}

fn statuses(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn transaction_entries_update_patch_and_delete_by_criteria(app: TestApp) {
    let a = stored(&app, "a1", "Alpha").await;
    let b = stored(&app, "b1", "Beta").await;
    let c = stored(&app, "c1", "Gamma").await;
    let criteria = |mrn: &str| format!("Patient?identifier={SYSTEM}|{mrn}");
    let answer = transaction(
        &app,
        json!([
            {"fullUrl": "urn:uuid:a", "resource": patient("a1", "Updated"),
             "request": {"method": "PUT", "url": criteria("a1")}},
            {"fullUrl": "urn:uuid:n", "resource": patient("n1", "New"),
             "request": {"method": "PUT", "url": criteria("n1")}},
            {"resource": merge_patch(json!({"gender": "male"})),
             "request": {"method": "PATCH", "url": criteria("b1")}},
            {"request": {"method": "DELETE", "url": criteria("c1")}},
            {"request": {"method": "DELETE", "url": criteria("nobody")}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                          "subject": {"reference": "urn:uuid:n"},
                          "focus": [{"reference": "urn:uuid:a"}],
                          "performer": [{"reference": criteria("b1")}]},
             "request": {"method": "POST", "url": "Observation"}}
        ]),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let bundle = answer.json();
    assert_eq!(
        statuses(&bundle),
        [
            "200 OK",
            "201 Created",
            "200 OK",
            "204 No Content",
            "204 No Content",
            "201 Created"
        ]
    );
    let updated = app.get(&format!("/fhir/Patient/{a}")).await.json();
    assert_eq!(updated["name"][0]["family"], "Updated");
    assert_eq!(updated["meta"]["versionId"], "2");
    let new_id = bundle["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(matches(&app, "n1").await, std::slice::from_ref(&new_id));
    assert_eq!(
        app.get(&format!("/fhir/Patient/{b}")).await.json()["gender"],
        "male"
    );
    assert_eq!(app.get(&format!("/fhir/Patient/{c}")).await.status, 410);
    let observation = &bundle["entry"][5]["resource"];
    assert_eq!(
        observation["subject"]["reference"],
        format!("Patient/{new_id}")
    );
    assert_eq!(observation["focus"][0]["reference"], format!("Patient/{a}"));
    assert_eq!(
        observation["performer"][0]["reference"],
        format!("Patient/{b}")
    );
}

async fn conditional_writes_and_references_fail_a_transaction_clearly(app: TestApp) {
    let a = stored(&app, "a1", "Alpha").await;
    stored(&app, "twin", "One").await;
    stored(&app, "twin", "Two").await;
    let observation = |reference: &str| {
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                            "subject": {"reference": reference}},
               "request": {"method": "POST", "url": "Observation"}})
    };
    let criteria = |mrn: &str| format!("Patient?identifier={SYSTEM}|{mrn}");
    for (entries, status, needle) in [
        (
            json!([{"resource": merge_patch(json!({"gender": "male"})),
                    "request": {"method": "PATCH", "url": criteria("nobody")}}, observation("Patient/x")]),
            404,
            "no Patient matches",
        ),
        (
            json!([{"resource": patient("twin", "Three"), "request": {"method": "PUT", "url": criteria("twin")}},
                   observation("Patient/x")]),
            412,
            "twin",
        ),
        (
            json!([observation(&criteria("nobody"))]),
            404,
            "the conditional reference",
        ),
        (
            json!([observation(&criteria("twin"))]),
            412,
            "cannot be resolved",
        ),
        (
            json!([{"resource": patient("a1", "Again"), "request": {"method": "PUT", "url": criteria("a1")}},
                   {"request": {"method": "DELETE", "url": format!("Patient/{a}")}}]),
            400,
            "changed by more than one entry",
        ),
        (
            json!([{"resource": patient("a1", "Again"), "request": {"method": "PUT", "url": "Patient?name:bogus=x"}}]),
            400,
            "criteria",
        ),
    ] {
        let r = transaction(&app, entries.clone()).await;
        r.assert_outcome(status, needle);
        assert!(
            r.text.contains("the transaction was not applied"),
            "{}",
            r.text
        );
    }
    // ifMatch on a conditional delete that matches nothing cannot hold.
    let r = transaction(
        &app,
        json!([{"request": {"method": "DELETE", "url": criteria("nobody"), "ifMatch": "W/\"1\""}}]),
    )
    .await;
    r.assert_outcome(412, "ifMatch cannot hold");
    assert_eq!(
        app.get("/fhir/Observation?_summary=count").await.json()["total"],
        0,
        "nothing was stored"
    );
    let alpha = app.get(&format!("/fhir/Patient/{a}")).await.json();
    assert_eq!(alpha["meta"]["versionId"], "1");
}

async fn batch_entries_write_by_criteria_each_on_their_own(app: TestApp) {
    let b = stored(&app, "b1", "Beta").await;
    let criteria = |mrn: &str| format!("Patient?identifier={SYSTEM}|{mrn}");
    let answer = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "DELETE", "url": criteria("nobody")}},
                {"resource": merge_patch(json!({"gender": "male"})),
                 "request": {"method": "PATCH", "url": criteria("nobody")}},
                {"resource": merge_patch(json!({"gender": "male"})),
                 "request": {"method": "PATCH", "url": criteria("b1")}},
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                              "subject": {"reference": criteria("b1")}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                              "subject": {"reference": criteria("nobody")}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"resource": patient("b1", "Renamed"),
                 "request": {"method": "PUT", "url": criteria("b1")}},
                {"request": {"method": "DELETE", "url": criteria("nobody"), "ifMatch": "W/\"1\""}}
            ]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let bundle = answer.json();
    let got = statuses(&bundle);
    assert_eq!(got[0], "204 No Content");
    assert!(got[1].starts_with("404"), "{got:?}");
    assert_eq!(got[2], "200 OK");
    assert_eq!(got[3], "201 Created");
    assert!(got[4].starts_with("404"), "{got:?}");
    assert_eq!(got[5], "200 OK");
    assert!(got[6].starts_with("412"), "{got:?}");
    assert_eq!(
        bundle["entry"][3]["resource"]["subject"]["reference"],
        format!("Patient/{b}")
    );
    let beta = app.get(&format!("/fhir/Patient/{b}")).await.json();
    assert_eq!(beta["name"][0]["family"], "Renamed");
    assert_eq!(beta["meta"]["versionId"], "3");
}

/// Resolving a conditional reference is a search: a client that may create
/// Observations but not search Patients is refused, and one that may
/// search them too succeeds. A conditional update in a bundle is
/// authorized as its search and as the write of the resource it matches.
async fn conditional_references_are_searched_as_the_caller(app: TestApp) {
    let p = stored(&app, "p1", "Pat").await;
    let secret = "conditional-caller-secret";
    app.matcho_client(
        "obs-writer",
        secret,
        json!({"request-method": "post", "params": {"resource/type": "Observation"}}),
    )
    .await;
    for (id, matcho) in [
        (
            "obs-writer-bundle",
            json!({"request-method": "post", "uri": "/fhir"}),
        ),
        (
            "obs-writer-put",
            json!({"request-method": "put", "params": {"resource/type": "Patient"}}),
        ),
    ] {
        let r = app
            .put(
                &format!("/fhir/AccessPolicy/{id}"),
                &json!({"resourceType": "AccessPolicy", "id": id, "engine": "matcho",
                        "link": [{"reference": "Client/obs-writer"}], "matcho": matcho}),
            )
            .await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
    }
    let criteria = format!("Patient?identifier={SYSTEM}|p1");
    let observation = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                      "subject": {"reference": criteria}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let update = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("p1", "Changed"), "request": {"method": "PUT", "url": criteria}}]});
    let as_writer = |body: &Value| {
        let body = body.clone();
        let app = &app;
        async move {
            app.send_as(
                reqwest::Method::POST,
                "/fhir",
                ("obs-writer", secret),
                Some(&body),
            )
            .await
        }
    };
    as_writer(&observation).await.assert_outcome(403, "Patient");
    as_writer(&update).await.assert_outcome(403, "");
    assert_eq!(
        app.get("/fhir/Observation?_summary=count").await.json()["total"],
        0
    );
    assert_eq!(
        app.get(&format!("/fhir/Patient/{p}")).await.json()["name"][0]["family"],
        "Pat"
    );

    let r = app
        .put(
            "/fhir/AccessPolicy/obs-writer-search",
            &json!({"resourceType": "AccessPolicy", "id": "obs-writer-search", "engine": "matcho",
                    "link": [{"reference": "Client/obs-writer"}],
                    "matcho": {"request-method": "get", "params": {"resource/type": "Patient"}}}),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let created = as_writer(&observation).await;
    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(
        created.json()["entry"][0]["resource"]["subject"]["reference"],
        format!("Patient/{p}")
    );
    let updated = as_writer(&update).await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(
        app.get(&format!("/fhir/Patient/{p}")).await.json()["name"][0]["family"],
        "Changed"
    );
}

/// `BOX_CONDITIONAL_DELETE_MAX=3`: up to three matches are deleted in one
/// transaction, each authorized as a delete by id; more is a 412 and
/// nothing is deleted.
async fn conditional_delete_takes_several_matches_when_the_setting_allows(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.conditional_delete_max = 3).await;
    let cs = app.get("/fhir/metadata").await.json();
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert_eq!(patient["conditionalDelete"], "multiple");
    let mut many = Vec::new();
    for i in 0..4 {
        many.push(stored(&app, &format!("m{i}"), "Many").await);
    }
    let kept = stored(&app, "k", "Kept").await;
    // Four match: more than the setting allows.
    app.delete("/fhir/Patient?family=Many")
        .await
        .assert_outcome(412, "at most 3 at once");
    assert_eq!(
        app.get(&format!("/fhir/Patient/{}", many[0])).await.status,
        200
    );
    app.delete(&format!("/fhir/Patient/{}", many[3])).await;
    // If-Match names one version; three resources match.
    app.send(
        app.client
            .delete(app.url("/fhir/Patient?family=Many"))
            .header("if-match", "W/\"1\""),
    )
    .await
    .assert_outcome(412, "If-Match names one version");
    // A client whose policy names the type's URL only may not delete them by id.
    let secret = "multi-delete-secret";
    app.matcho_client("typed", secret, json!({"uri": "/fhir/Patient"}))
        .await;
    let denied = app
        .send_as(
            reqwest::Method::DELETE,
            "/fhir/Patient?family=Many",
            ("typed", secret),
            None,
        )
        .await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert!(
        denied.text.contains("the resource the criteria match is"),
        "refused at the delete by id: {}",
        denied.text
    );
    for id in &many[..3] {
        assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status, 200);
    }
    // Root deletes all three in one go; the other patient stays.
    let done = app.delete("/fhir/Patient?family=Many").await;
    assert_eq!(done.status, 204, "{}", done.text);
    for id in &many[..3] {
        assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status, 410);
    }
    assert_eq!(app.get(&format!("/fhir/Patient/{kept}")).await.status, 200);
    // One match or none still answer as the single form does.
    assert_eq!(app.delete("/fhir/Patient?family=Kept").await.status, 204);
    assert_eq!(app.delete("/fhir/Patient?family=Nobody").await.status, 204);
}
