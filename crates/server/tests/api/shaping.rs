//! `_summary` and `_elements` (R4 §3.1.1.5.8–9) on read, vread, search and
//! bundle reads; a shaped resource cannot be written back.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{link, TestApp};

backend_tests!(
    reads_are_shaped_and_tagged_subsetted,
    searches_shape_their_matches_and_count_alone,
    shaping_errors_name_what_to_fix,
    a_shaped_resource_is_not_written_back,
    bundle_reads_are_shaped_and_secrets_stay_masked
);

const SUBSETTED: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

fn patient(id: &str) -> Value {
    json!({
        "resourceType": "Patient", "id": id,
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>"},
        "name": [{"family": "Shape", "given": ["Ann"]}],
        "gender": "female", "birthDate": "1970-01-02", "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
        "deceasedBoolean": false,
        "contact": [{"name": {"family": "Kin"}}],
        "communication": [{"language": {"text": "en"}}]
    })
}

/// The top-level keys of a resource, sorted.
fn keys(resource: &Value) -> Vec<String> {
    let mut keys: Vec<String> = resource
        .as_object()
        .unwrap_or_else(|| panic!("not a resource: {resource}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"].as_array().is_some_and(|tags| {
        tags.iter()
            .any(|t| t["system"] == SUBSETTED && t["code"] == "SUBSETTED")
    })
}

async fn store(app: &TestApp, resource: &Value) {
    let path = format!(
        "/fhir/{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    let r = app.put(&path, resource).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
}

async fn reads_are_shaped_and_tagged_subsetted(app: TestApp) {
    store(&app, &patient("p")).await;
    let whole = app.get("/fhir/Patient/p").await;
    assert!(!subsetted(&whole.json()), "a plain read is whole");

    let summary = app.get("/fhir/Patient/p?_summary=true").await;
    assert_eq!(summary.status, 200);
    assert_eq!(summary.header("etag"), whole.header("etag"));
    let v = summary.json();
    assert_eq!(
        keys(&v),
        [
            "_birthDate",
            "birthDate",
            "deceasedBoolean",
            "gender",
            "id",
            "meta",
            "name",
            "resourceType"
        ]
    );
    assert!(subsetted(&v), "{v}");
    assert_eq!(v["meta"]["versionId"], "1", "meta is kept whole");

    let elements = app
        .get("/fhir/Patient/p?_elements=birthDate,deceased,contact")
        .await
        .json();
    assert_eq!(
        keys(&elements),
        [
            "_birthDate",
            "birthDate",
            "contact",
            "deceasedBoolean",
            "id",
            "meta",
            "resourceType"
        ]
    );
    assert!(subsetted(&elements));

    let text = app
        .get("/fhir/Patient/p/_history/1?_summary=text")
        .await
        .json();
    assert_eq!(keys(&text), ["id", "meta", "resourceType", "text"]);
    let data = app.get("/fhir/Patient/p?_summary=data").await.json();
    assert!(data.get("text").is_none() && data.get("contact").is_some());
    assert!(subsetted(&data));
    let everything = app.get("/fhir/Patient/p?_summary=false").await.json();
    assert_eq!(everything, whole.json());

    // An Observation keeps its mandatory status and code under _elements.
    store(
        &app,
        &json!({"resourceType": "Observation", "id": "o", "status": "final",
                "code": {"text": "weight"}, "valueQuantity": {"value": 70},
                "subject": {"reference": "Patient/p"}, "note": [{"text": "n"}]}),
    )
    .await;
    let o = app.get("/fhir/Observation/o?_elements=value").await.json();
    assert_eq!(
        keys(&o),
        [
            "code",
            "id",
            "meta",
            "resourceType",
            "status",
            "valueQuantity"
        ]
    );
}

async fn searches_shape_their_matches_and_count_alone(app: TestApp) {
    for id in ["a", "b", "c"] {
        store(&app, &patient(id)).await;
    }
    store(
        &app,
        &json!({"resourceType": "Observation", "id": "o", "status": "final",
                "code": {"text": "weight"}, "subject": {"reference": "Patient/a"},
                "note": [{"text": "n"}]}),
    )
    .await;
    let count = app
        .get("/fhir/Patient?family=shape&_summary=count")
        .await
        .json();
    assert_eq!(count["total"], 3);
    assert!(count.get("entry").is_none(), "{count}");

    let bundle = app
        .get("/fhir/Observation?_elements=status&_include=Observation:subject")
        .await
        .json();
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{bundle}");
    let matched = &entries[0]["resource"];
    assert_eq!(entries[0]["search"]["mode"], "match");
    assert_eq!(
        keys(matched),
        ["code", "id", "meta", "resourceType", "status"]
    );
    assert!(subsetted(matched));
    let included = &entries[1]["resource"];
    assert_eq!(entries[1]["search"]["mode"], "include");
    assert!(
        included.get("contact").is_some() && !subsetted(included),
        "an included resource comes whole: {included}"
    );
    // The self link carries the shaping, so the next page is shaped too.
    let self_link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("_elements=status"), "{self_link}");

    let summaries = app.get("/fhir/Patient?_summary=true&_count=2").await.json();
    for entry in summaries["entry"].as_array().unwrap() {
        assert!(entry["resource"].get("contact").is_none());
        assert!(subsetted(&entry["resource"]));
    }
    let next = link(&summaries, "next").expect("a second page");
    let second = app.get(&next).await.json();
    let last = &second["entry"][0]["resource"];
    assert!(subsetted(last) && last.get("contact").is_none(), "{second}");
}

async fn shaping_errors_name_what_to_fix(app: TestApp) {
    store(&app, &patient("p")).await;
    for (path, needle) in [
        (
            "/fhir/Patient/p?_elements=nmae",
            "Patient has no element \"nmae\"",
        ),
        ("/fhir/Patient?_elements=name.family", "top-level"),
        (
            "/fhir/Patient/p?_summary=count",
            "_summary=count applies to a search",
        ),
        ("/fhir/Patient?_summary=maybe", "_summary=maybe"),
        (
            "/fhir/Patient?_summary=true&_elements=name",
            "cannot be combined",
        ),
        (
            "/fhir/Patient?_contained=true",
            "_contained is not supported",
        ),
        (
            "/fhir/Observation?_containedType=contained",
            "_containedType is not supported",
        ),
    ] {
        app.get(path).await.assert_outcome(400, needle);
    }
}

async fn a_shaped_resource_is_not_written_back(app: TestApp) {
    store(&app, &patient("p")).await;
    let part = app.get("/fhir/Patient/p?_elements=gender").await.json();
    let refused = app.put("/fhir/Patient/p", &part).await;
    refused.assert_outcome(422, "SUBSETTED");
    let created = app.post("/fhir/Patient", &part).await;
    created.assert_outcome(422, "SUBSETTED");
    let whole = app.get("/fhir/Patient/p").await.json();
    assert_eq!(whole["meta"]["versionId"], "1", "nothing was written");
    assert!(whole.get("contact").is_some());
}

async fn bundle_reads_are_shaped_and_secrets_stay_masked(app: TestApp) {
    store(&app, &patient("p")).await;
    app.put_client("shaped", "shaped-client-secret-value", &["basic"])
        .await;
    let answer = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Patient/p?_elements=gender"}},
                {"request": {"method": "GET", "url": "Patient?_summary=count"}},
                {"request": {"method": "GET", "url": "Client/shaped?_summary=true"}},
                {"request": {"method": "GET", "url": "Patient/p?_elements=nmae"}}
            ]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(!answer.text.contains("shaped-client-secret-value"));
    let v = answer.json();
    let read = &v["entry"][0]["resource"];
    assert_eq!(keys(read), ["gender", "id", "meta", "resourceType"]);
    assert!(subsetted(read));
    assert_eq!(v["entry"][1]["resource"]["total"], 1);
    let client = &v["entry"][2]["resource"];
    let whole = app.get("/fhir/Client/shaped").await.json();
    assert_eq!(client["secret"], whole["secret"], "masked the same way");
    assert!(v["entry"][3]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("400"));
    let shaped_read = app.get("/fhir/Client/shaped?_elements=secret").await;
    assert!(!shaped_read.text.contains("shaped-client-secret-value"));
    assert_eq!(shaped_read.json()["secret"], whole["secret"]);
}
