//! Chained parameters and `_has` (R4 §3.1.1.4.13–14), and that they reach
//! other types only for clients that may search them.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{entry_ids, TestApp};
use crate::includes::{batch_as_obs_only, readers};

const SECRET: &str = "chain-secret-value";

backend_tests!(
    chains_follow_references_forwards_and_back,
    chains_reach_only_types_the_client_may_search
);

async fn put(app: &TestApp, path: &str, body: Value) {
    let r = app.put(path, &body).await;
    assert!(r.status == 201 || r.status == 200, "{path}: {}", r.text);
}

/// dr1 (Dr Who) is the practitioner of p1 (Smith, 1970), whom org1
/// (Clinic) manages; p2 is Jones.
/// o1 (code A) is about p1, in p1's encounter e1; o2 (code B) is about p2.
async fn seed(app: &TestApp) {
    let resources = [
        json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Who"}]}),
        json!({"resourceType": "Organization", "id": "org1", "name": "Clinic"}),
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Smith"}],
               "birthDate": "1970-05-01", "generalPractitioner": [{"reference": "Practitioner/dr1"}],
               "managingOrganization": {"reference": "Organization/org1"}}),
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Jones"}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
               "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "A"}]},
               "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"}}),
        json!({"resourceType": "Observation", "id": "o2", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "B"}]},
               "subject": {"reference": "Patient/p2"}}),
    ];
    for body in resources {
        let path = format!(
            "/fhir/{}/{}",
            body["resourceType"].as_str().unwrap(),
            body["id"].as_str().unwrap()
        );
        put(app, &path, body).await;
    }
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let r = app.get(&format!("/fhir/{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    let mut ids = entry_ids(&r.json());
    ids.sort();
    ids
}

async fn chains_follow_references_forwards_and_back(app: TestApp) {
    seed(&app).await;
    for (query, expected) in [
        ("Observation?subject:Patient.name=smith", &["o1"][..]),
        // A parameter with one target needs no type.
        ("Patient?organization.name=clinic", &["p1"]),
        ("Patient?organization.name=other", &[]),
        ("Observation?encounter:Encounter.status=finished", &["o1"]),
        ("Observation?encounter:Encounter.status=planned", &[]),
        ("Observation?patient:Patient.name=smi", &["o1"]),
        (
            "Observation?patient:Patient.name=smith,jones",
            &["o1", "o2"],
        ),
        ("Observation?patient:Patient.name:exact=smith", &[]),
        ("Observation?code=A&subject:Patient.birthdate=1970", &["o1"]),
        ("Observation?code=B&subject:Patient.birthdate=1970", &[]),
        // Two links.
        (
            "Encounter?subject:Patient.general-practitioner:Practitioner.name=who",
            &["e1"],
        ),
        (
            "Encounter?subject:Patient.general-practitioner:Practitioner.name=nobody",
            &[],
        ),
        // Reverse chains, and one inside another.
        ("Patient?_has:Observation:subject:code=A", &["p1"]),
        ("Patient?_has:Observation:patient:code=A,B", &["p1", "p2"]),
        ("Patient?_has:Observation:patient:code=A&name=jones", &[]),
        (
            "Practitioner?_has:Patient:general-practitioner:_has:Observation:patient:code=A",
            &["dr1"],
        ),
        (
            "Practitioner?_has:Patient:general-practitioner:_has:Observation:patient:code=B",
            &[],
        ),
        // A chain inside _has.
        (
            "Practitioner?_has:Patient:general-practitioner:organization.name=x",
            &[],
        ),
    ] {
        assert_eq!(ids(&app, query).await, expected, "{query}");
    }
    // Without a type, a chain goes through every target that has the
    // parameter: Observation.subject's Patient and Location both have name.
    assert_eq!(ids(&app, "Observation?subject.name=smith").await, ["o1"]);
    put(
        &app,
        "/fhir/Location/loc1",
        json!({"resourceType": "Location", "id": "loc1", "name": "Smithfield"}),
    )
    .await;
    put(
        &app,
        "/fhir/Observation/o3",
        json!({"resourceType": "Observation", "id": "o3", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "C"}]},
               "subject": {"reference": "Location/loc1"}}),
    )
    .await;
    assert_eq!(
        ids(&app, "Observation?subject.name=smith").await,
        ["o1", "o3"]
    );
    assert_eq!(
        ids(&app, "Observation?subject:Patient.name=smith").await,
        ["o1"]
    );
    app.delete("/fhir/Observation/o3").await;
    // The count agrees with the page.
    let counted = app
        .get("/fhir/Observation?patient:Patient.name=smith,jones&_count=1")
        .await
        .json();
    assert_eq!(counted["total"], 2);

    for (query, says) in [
        ("Observation?subject.nosuch=x", "none of them has a search parameter \"nosuch\""),
        ("Observation?subject:Medication.code=x", "does not refer to Medication"),
        ("Observation?code.name=x", "no reference search parameter"),
        ("Observation?patient:Patient.nosuch=x", "no search parameter \"nosuch\""),
        ("Observation?patient:Patient._id=p1", "cannot end a chain"),
        ("Patient?_has:Observation:code:code=A", "no reference search parameter"),
        ("Patient?_has:Encounter:practitioner:status=finished", "does not refer to Patient"),
        ("Patient?_has:Observation", "use _has:Type"),
        ("Patient?birthdate.name=x", "no reference search parameter"),
        (
            "Encounter?subject:Patient.general-practitioner:Practitioner._has:Encounter:practitioner:patient:Patient.name=x",
            "at most 3 links",
        ),
    ] {
        app.get(&format!("/fhir/{query}"))
            .await
            .assert_outcome(400, says);
    }
    // A deleted target no longer matches.
    assert_eq!(app.delete("/fhir/Patient/p1").await.status, 204);
    assert!(ids(&app, "Observation?patient:Patient.name=smith")
        .await
        .is_empty());
    assert!(ids(
        &app,
        "Practitioner?_has:Patient:general-practitioner:name=smith"
    )
    .await
    .is_empty());
}

async fn chains_reach_only_types_the_client_may_search(app: TestApp) {
    seed(&app).await;
    readers(&app, SECRET).await;
    let get = |path: &'static str, id: &'static str| {
        app.send_as(reqwest::Method::GET, path, (id, SECRET), None)
    };
    let chain = "/fhir/Observation?patient:Patient.name=smith";
    let denied = get(chain, "obs-only").await;
    denied.assert_outcome(403, "no access policy allows");
    assert!(
        denied.text.contains("through a chain or _has"),
        "{}",
        denied.text
    );
    assert_eq!(
        get("/fhir/Observation?code=A", "obs-only").await.status,
        200
    );
    assert_eq!(entry_ids(&get(chain, "reader").await.json()), ["o1"]);

    let has = "/fhir/Patient?_has:Observation:patient:code=A";
    get(has, "pat-only")
        .await
        .assert_outcome(403, "no access policy allows");
    assert_eq!(entry_ids(&get(has, "reader").await.json()), ["p1"]);

    // A chain without a type reaches every target type that has the
    // parameter: a client that may search Patients but not Locations must
    // name the type.
    app.matcho_client(
        "obs-pat",
        SECRET,
        json!({"request-method": "get", "params": {"resource/type": "Observation"}}),
    )
    .await;
    let r = app
        .put(
            "/fhir/AccessPolicy/obs-pat-2",
            &json!({"resourceType": "AccessPolicy", "id": "obs-pat-2", "engine": "matcho",
                    "link": [{"reference": "Client/obs-pat"}],
                    "matcho": {"request-method": "get", "params": {"resource/type": "Patient"}}}),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    get("/fhir/Observation?subject.name=smith", "obs-pat")
        .await
        .assert_outcome(403, "Location");
    assert_eq!(
        entry_ids(
            &get("/fhir/Observation?subject:Patient.name=smith", "obs-pat")
                .await
                .json()
        ),
        ["o1"]
    );

    // POST _search and a batch's search entry are checked the same way.
    let form = app
        .send(
            app.anon
                .post(app.url("/fhir/Observation/_search"))
                .basic_auth("obs-only", Some(SECRET))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("patient:Patient.name=smith"),
        )
        .await;
    form.assert_outcome(403, "no access policy allows");
    let r = batch_as_obs_only(
        &app,
        SECRET,
        &[
            "Observation?patient:Patient.name=smith",
            "Observation?code=A",
        ],
    )
    .await;
    let out = r.json();
    assert_eq!(out["entry"][0]["response"]["status"], "403 Forbidden");
    assert_eq!(out["entry"][1]["response"]["status"], "200 OK");
}
