//! `_include` and `_revinclude` (R4 §3.1.1.5.4), and that what they add is
//! only what the caller may read.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{link, Resp, TestApp};

backend_tests!(
    includes_add_referenced_and_referring_resources_once,
    included_resources_are_shown_only_to_clients_that_may_read_them,
    wildcards_and_iterate_follow_references_to_a_fixed_point,
    iterate_never_follows_a_withheld_resource
);

/// Patients p1, p2 (family One, Two); observations o1, o2 of p1, o3 of p2.
async fn seed(app: &TestApp) {
    app.put_patient("p1", "One").await;
    app.put_patient("p2", "Two").await;
    for (id, subject) in [("o1", "p1"), ("o2", "p1"), ("o3", "p2")] {
        let r = app
            .put(
                &format!("/fhir/Observation/{id}"),
                &json!({"resourceType": "Observation", "id": id, "status": "final",
                        "code": {"text": "weight"},
                        "subject": {"reference": format!("Patient/{subject}")}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

/// `(mode, type/id)` of every entry, in order.
fn entries(bundle: &Value) -> Vec<(String, String)> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let r = &e["resource"];
                    (
                        e["search"]["mode"].as_str().unwrap_or_default().to_owned(),
                        format!(
                            "{}/{}",
                            r["resourceType"].as_str().unwrap(),
                            r["id"].as_str().unwrap_or_default()
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(m, r)| ((*m).to_owned(), (*r).to_owned()))
        .collect()
}

async fn includes_add_referenced_and_referring_resources_once(app: TestApp) {
    seed(&app).await;
    let r = app
        .get("/fhir/Observation?subject=Patient/p1&_include=Observation:subject")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bundle = r.json();
    assert_eq!(bundle["total"], 2, "included resources are not counted");
    assert_eq!(
        entries(&bundle),
        pairs(&[
            ("match", "Observation/o1"),
            ("match", "Observation/o2"),
            ("include", "Patient/p1")
        ])
    );
    assert!(link(&bundle, "self")
        .unwrap()
        .contains("_include=Observation%3Asubject"));

    let rev = app
        .get("/fhir/Patient?_id=p1,p2&_revinclude=Observation:subject")
        .await
        .json();
    assert_eq!(rev["total"], 2);
    assert_eq!(
        entries(&rev),
        pairs(&[
            ("match", "Patient/p1"),
            ("match", "Patient/p2"),
            ("include", "Observation/o1"),
            ("include", "Observation/o2"),
            ("include", "Observation/o3")
        ])
    );
    // Each page includes what its own matches refer to.
    let first = app
        .get("/fhir/Patient?_id=p1,p2&_revinclude=Observation:subject&_count=1")
        .await
        .json();
    assert_eq!(
        entries(&first),
        pairs(&[
            ("match", "Patient/p1"),
            ("include", "Observation/o1"),
            ("include", "Observation/o2")
        ])
    );
    let second = app.get(&link(&first, "next").unwrap()).await.json();
    assert_eq!(
        entries(&second),
        pairs(&[("match", "Patient/p2"), ("include", "Observation/o3")])
    );
    // A target type narrows; both directions at once appear once each.
    let none = app
        .get("/fhir/Observation?_include=Observation:subject:Group")
        .await
        .json();
    assert!(entries(&none).iter().all(|(mode, _)| mode == "match"));
    let both = app
        .get("/fhir/Patient?_id=p1&_revinclude=Observation:subject&_revinclude=Observation:patient")
        .await
        .json();
    assert_eq!(entries(&both).len(), 3, "{both}");
    // A deleted resource is not included.
    app.delete("/fhir/Observation/o2").await;
    let after = app
        .get("/fhir/Patient?_id=p1&_revinclude=Observation:subject")
        .await
        .json();
    assert_eq!(
        entries(&after),
        pairs(&[("match", "Patient/p1"), ("include", "Observation/o1")])
    );

    for (query, says) in [
        (
            "Observation?_include=Observation:code",
            "no reference search parameter",
        ),
        (
            "Observation?_include=Patient:organization",
            "does not return Patient",
        ),
        ("Observation?_revinclude=*", "use Type:parameter"),
        ("Patient?_revinclude=Observation:*", "wildcard _revinclude"),
        (
            "Observation?_include:deep=Observation:subject",
            "not a form of _include",
        ),
        (
            "Patient?_revinclude=Observation:subject:Group",
            "does not refer to the resources",
        ),
    ] {
        app.get(&format!("/fhir/{query}"))
            .await
            .assert_outcome(400, says);
    }
}

const SECRET: &str = "include-secret-value";

async fn as_client(app: &TestApp, path: &str, id: &str) -> Resp {
    app.send_as(reqwest::Method::GET, path, (id, SECRET), None)
        .await
}

/// Clients that may read (`GET`) observations only, patients only, and
/// anything; `obs-only` may also send bundles.
pub async fn readers(app: &TestApp, secret: &str) {
    for (id, matcho) in [
        (
            "obs-only",
            json!({"request-method": "get", "params": {"resource/type": "Observation"}}),
        ),
        (
            "pat-only",
            json!({"request-method": "get", "params": {"resource/type": "Patient"}}),
        ),
        ("reader", json!({"request-method": "get"})),
    ] {
        app.matcho_client(id, secret, matcho).await;
    }
    let bundles = json!({"resourceType": "AccessPolicy", "id": "obs-only-bundle", "engine": "matcho",
        "link": [{"reference": "Client/obs-only"}], "matcho": {"request-method": "post", "uri": "/fhir"}});
    let r = app
        .put("/fhir/AccessPolicy/obs-only-bundle", &bundles)
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
}

/// A batch of GET entries sent as `obs-only` (see `readers`).
pub async fn batch_as_obs_only(app: &TestApp, secret: &str, urls: &[&str]) -> Resp {
    let entries: Vec<Value> = urls
        .iter()
        .map(|url| json!({"request": {"method": "GET", "url": url}}))
        .collect();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let r = app
        .send_as(
            reqwest::Method::POST,
            "/fhir",
            ("obs-only", secret),
            Some(&batch),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

/// A client that may read observations but not patients gets the
/// observations and is told, without names, that included patients were
/// withheld; a client that may read both gets them.
async fn included_resources_are_shown_only_to_clients_that_may_read_them(app: TestApp) {
    seed(&app).await;
    readers(&app, SECRET).await;

    let path = "/fhir/Observation?subject=Patient/p1&_include=Observation:subject";
    let narrow = as_client(&app, path, "obs-only").await;
    assert_eq!(narrow.status, 200, "{}", narrow.text);
    let bundle = narrow.json();
    assert_eq!(
        entries(&bundle),
        pairs(&[
            ("match", "Observation/o1"),
            ("match", "Observation/o2"),
            ("outcome", "OperationOutcome/")
        ])
    );
    let note = bundle["entry"][2]["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap();
    assert!(
        note.contains("1 included resources were withheld"),
        "{note}"
    );
    assert!(!narrow.text.contains("\"family\""), "{}", narrow.text);
    let wide = as_client(&app, path, "reader").await.json();
    assert_eq!(entries(&wide).last().unwrap().1, "Patient/p1");

    // The other way round: patients, with their observations withheld.
    let rev = "/fhir/Patient?_id=p1&_revinclude=Observation:subject";
    let patients = as_client(&app, rev, "pat-only").await;
    assert_eq!(patients.status, 200, "{}", patients.text);
    let bundle = patients.json();
    assert_eq!(
        entries(&bundle)[0],
        ("match".to_owned(), "Patient/p1".to_owned())
    );
    assert!(
        !patients.text.contains("Observation/o1"),
        "{}",
        patients.text
    );
    assert!(patients.text.contains("2 included resources were withheld"));
    assert_eq!(
        as_client(&app, rev, "reader").await.json()["entry"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // A client that may not search the type at all is refused as before.
    assert_eq!(as_client(&app, rev, "obs-only").await.status, 403);

    // The same inside a batch, whose GET entries are searches of their own.
    let r = batch_as_obs_only(
        &app,
        SECRET,
        &["Observation?subject=Patient/p1&_include=Observation:subject"],
    )
    .await;
    let searchset = &r.json()["entry"][0]["resource"];
    assert_eq!(searchset["type"], "searchset");
    assert!(!r.text.contains("\"family\""), "{}", r.text);
    assert!(r.text.contains("withheld"), "{}", r.text);
}

/// On top of `seed`: p1's general practitioner dr1 and organization org1,
/// dr1's... nothing; p1 and p2 link to each other (a cycle); o1 has
/// performer dr1.
async fn seed_chain(app: &TestApp) {
    seed(app).await;
    for body in [
        json!({"resourceType": "Organization", "id": "org1", "name": "Org"}),
        json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Doc"}]}),
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "One"}],
               "generalPractitioner": [{"reference": "Practitioner/dr1"}],
               "managingOrganization": {"reference": "Organization/org1"},
               "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]}),
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Two"}],
               "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"text": "weight"}, "subject": {"reference": "Patient/p1"},
               "performer": [{"reference": "Practitioner/dr1"}]}),
    ] {
        let path = format!(
            "/fhir/{}/{}",
            body["resourceType"].as_str().unwrap(),
            body["id"].as_str().unwrap()
        );
        let r = app.put(&path, &body).await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
    }
}

fn included(bundle: &Value) -> Vec<String> {
    let mut found: Vec<String> = entries(bundle)
        .into_iter()
        .filter(|(mode, _)| mode == "include")
        .map(|(_, r)| r)
        .collect();
    found.sort();
    found
}

async fn wildcards_and_iterate_follow_references_to_a_fixed_point(app: TestApp) {
    seed_chain(&app).await;
    let get = |query: &str| {
        let app = &app;
        let path = format!("/fhir/{query}");
        async move {
            let r = app.get(&path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            r.json()
        }
    };
    // Every reference of the matches, or of one type.
    assert_eq!(
        included(&get("Observation?_id=o1&_include=*").await),
        ["Patient/p1", "Practitioner/dr1"]
    );
    assert_eq!(
        included(&get("Observation?_id=o1&_include=Observation:*:Practitioner").await),
        ["Practitioner/dr1"]
    );
    // One level: the patient only; iterated: what the patient refers to.
    assert_eq!(
        included(&get("Observation?_id=o1&_include=Observation:subject").await),
        ["Patient/p1"]
    );
    let deep = get(
        "Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:general-practitioner&_include:iterate=Patient:organization",
    )
    .await;
    assert_eq!(
        included(&deep),
        ["Organization/org1", "Patient/p1", "Practitioner/dr1"]
    );
    assert_eq!(deep["total"], 1, "included resources are not counted");
    // A cycle ends: p1 -> p2 -> p1, each once.
    let cycle = get("Patient?_id=p1&_include:iterate=Patient:link").await;
    assert_eq!(
        entries(&cycle),
        pairs(&[("match", "Patient/p1"), ("include", "Patient/p2")])
    );
    // Reverse and forward iterate together: the observations of p1, then
    // whoever performed them.
    assert_eq!(
        included(
            &get("Patient?_id=p1&_revinclude=Observation:subject&_include:iterate=Observation:performer")
                .await
        ),
        ["Observation/o1", "Observation/o2", "Practitioner/dr1"]
    );
    // Without :iterate an include from a type the search does not return is
    // still a 400.
    app.get("/fhir/Observation?_include=Patient:general-practitioner")
        .await
        .assert_outcome(400, "does not return Patient");
}

/// A client that may read observations and practitioners but not patients:
/// the patient is withheld, and nothing is followed from it, so iterating
/// through it reveals neither it nor what it refers to.
async fn iterate_never_follows_a_withheld_resource(app: TestApp) {
    seed_chain(&app).await;
    app.matcho_client(
        "no-patients",
        SECRET,
        json!({"request-method": "get", "params": {"resource/type": "Observation"}}),
    )
    .await;
    let r = app
        .put(
            "/fhir/AccessPolicy/no-patients-dr",
            &json!({"resourceType": "AccessPolicy", "id": "no-patients-dr", "engine": "matcho",
                    "link": [{"reference": "Client/no-patients"}],
                    "matcho": {"request-method": "get", "params": {"resource/type": "Practitioner"}}}),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let path = "/fhir/Observation?_id=o2&_include=Observation:subject&_include:iterate=Patient:general-practitioner";
    let narrow = as_client(&app, path, "no-patients").await;
    assert_eq!(narrow.status, 200, "{}", narrow.text);
    let bundle = narrow.json();
    assert_eq!(included(&bundle), Vec::<String>::new(), "{bundle}");
    assert!(
        narrow.text.contains("1 included resources were withheld"),
        "{}",
        narrow.text
    );
    assert!(!narrow.text.contains("dr1") && !narrow.text.contains("Doc"));
    // Root, for contrast, gets both.
    assert_eq!(
        included(&app.get(path).await.json()),
        ["Patient/p1", "Practitioner/dr1"]
    );
}
