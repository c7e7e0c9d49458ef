//! Search by every kind of R4 search parameter (docs/search.md), over real
//! HTTP on both backends: strings, tokens, dates, numbers, quantities,
//! references and uris, their modifiers and prefixes, `:missing`, OR within
//! a parameter and AND across repetitions, malformed values, and the index
//! following updates, deletes and data stored before it existed.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{entry_ids, Backend, TestApp};

backend_tests!(
    strings_match_prefixes_without_case_or_accents,
    tokens_match_codes_systems_and_text,
    dates_are_ranges_compared_by_prefix,
    numbers_and_quantities_use_implicit_precision,
    references_match_ids_types_and_urls,
    uris_match_exactly_below_and_above,
    missing_or_and_and_combine,
    composites_pair_values_of_one_element,
    bad_values_and_unsupported_parameters_are_400s,
    the_index_follows_updates_and_deletes,
    system_search_by_type_and_post_search,
    post_search_is_authorized_as_the_get,
);

backend_tests!(per_backend: data_stored_before_the_index_is_found_after_a_restart,);

/// The ids a search returns, sorted.
async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let path = if query.starts_with('?') {
        format!("/fhir{query}")
    } else {
        format!("/fhir/{query}")
    };
    let r = app.get(&path).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    let mut ids = entry_ids(&r.json());
    ids.sort();
    ids
}

async fn put(app: &TestApp, body: Value) {
    let path = format!(
        "/fhir/{}/{}",
        body["resourceType"].as_str().unwrap(),
        body["id"].as_str().unwrap()
    );
    let r = app.put(&path, &body).await;
    assert!(r.status == 200 || r.status == 201, "{path}: {}", r.text);
}

async fn strings_match_prefixes_without_case_or_accents(app: TestApp) {
    put(&app, json!({"resourceType": "Patient", "id": "a", "name": [{"family": "Müller", "given": ["Zoë"]}],
        "address": [{"city": "Zürich", "line": ["1 Bahnhofstrasse"]}]})).await;
    put(&app, json!({"resourceType": "Patient", "id": "b", "name": [{"family": "Mueller", "given": ["Ann"]}]})).await;
    put(&app, json!({"resourceType": "Patient", "id": "c", "name": [{"family": "Smith", "text": "Ann Smith"}]})).await;
    assert_eq!(ids(&app, "Patient?family=muller").await, ["a"]);
    assert_eq!(ids(&app, "Patient?family=MÜL").await, ["a"]);
    assert_eq!(ids(&app, "Patient?family=mu").await, ["a", "b"]);
    // `name` searches every part of a HumanName.
    assert_eq!(ids(&app, "Patient?name=ann").await, ["b", "c"]);
    assert_eq!(ids(&app, "Patient?name=zoe").await, ["a"]);
    assert_eq!(ids(&app, "Patient?address=zurich").await, ["a"]);
    assert_eq!(ids(&app, "Patient?address-city=zur").await, ["a"]);
    // :exact is case- and accent-sensitive and whole; :contains anywhere.
    assert_eq!(ids(&app, "Patient?family:exact=Müller").await, ["a"]);
    assert!(ids(&app, "Patient?family:exact=muller").await.is_empty());
    assert!(ids(&app, "Patient?family:exact=Mül").await.is_empty());
    assert_eq!(ids(&app, "Patient?family:contains=ell").await, ["b"]);
    assert_eq!(ids(&app, "Patient?name:contains=mit").await, ["c"]);
    // phonetic: Soundex of each name part.
    put(
        &app,
        json!({"resourceType": "Patient", "id": "r", "name": [{"family": "Robert"}]}),
    )
    .await;
    assert_eq!(ids(&app, "Patient?phonetic=Rupert").await, ["r"]);
    assert!(ids(&app, "Patient?phonetic=Rubin").await.is_empty());
    // A wildcard in the value is matched literally.
    assert!(ids(&app, "Patient?family=%25").await.is_empty());
}

async fn tokens_match_codes_systems_and_text(app: TestApp) {
    let loinc = "http://loinc.org";
    put(&app, json!({"resourceType": "Observation", "id": "hr", "status": "final",
        "code": {"coding": [{"system": loinc, "code": "8867-4", "display": "Heart rate"}], "text": "Pulse"}})).await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "local", "status": "preliminary",
        "code": {"coding": [{"code": "8867-4"}]}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "bp", "status": "final",
        "code": {"coding": [{"system": loinc, "code": "85354-9"}]}}),
    )
    .await;
    assert_eq!(ids(&app, "Observation?code=8867-4").await, ["hr", "local"]);
    assert_eq!(
        ids(&app, &format!("Observation?code={loinc}|8867-4")).await,
        ["hr"]
    );
    assert_eq!(ids(&app, "Observation?code=|8867-4").await, ["local"]);
    assert_eq!(
        ids(&app, &format!("Observation?code={loinc}|")).await,
        ["bp", "hr"]
    );
    assert_eq!(ids(&app, "Observation?status=final").await, ["bp", "hr"]);
    // :not includes resources with no value at all.
    put(&app, json!({"resourceType": "Observation", "id": "nostatus", "status": "final", "code": {"text": "x"}})).await;
    assert_eq!(
        ids(&app, "Observation?code:not=8867-4").await,
        ["bp", "nostatus"]
    );
    assert_eq!(ids(&app, "Observation?code:text=puls").await, ["hr"]);
    assert_eq!(ids(&app, "Observation?code:text=heart").await, ["hr"]);
    // Identifiers, contact points and booleans.
    put(&app, json!({"resourceType": "Patient", "id": "p", "active": true,
        "identifier": [{"system": "urn:mrn", "value": "123"}], "telecom": [{"system": "email", "value": "a@b.org"}]})).await;
    assert_eq!(ids(&app, "Patient?identifier=urn:mrn|123").await, ["p"]);
    assert!(ids(&app, "Patient?identifier=urn:other|123")
        .await
        .is_empty());
    assert_eq!(ids(&app, "Patient?email=a@b.org").await, ["p"]);
    assert_eq!(ids(&app, "Patient?active=true").await, ["p"]);
    // :of-type: the identifier's type, then its value.
    put(&app, json!({"resourceType": "Patient", "id": "typed", "identifier": [{"system": "urn:mrn", "value": "446053",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}]})).await;
    assert_eq!(
        ids(
            &app,
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053"
        )
        .await,
        ["typed"]
    );
    assert!(ids(
        &app,
        "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|DL|446053"
    )
    .await
    .is_empty());
    assert!(ids(&app, "Patient?active=false").await.is_empty());
}

async fn dates_are_ranges_compared_by_prefix(app: TestApp) {
    put(
        &app,
        json!({"resourceType": "Patient", "id": "y1980", "birthDate": "1980"}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "d1980", "birthDate": "1980-06-15"}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "d1990", "birthDate": "1990-01-01"}),
    )
    .await;
    // A value of lower precision is the whole interval it names.
    assert_eq!(
        ids(&app, "Patient?birthdate=1980").await,
        ["d1980", "y1980"]
    );
    assert_eq!(ids(&app, "Patient?birthdate=1980-06").await, ["d1980"]);
    assert_eq!(ids(&app, "Patient?birthdate=eq1980-06-15").await, ["d1980"]);
    assert_eq!(ids(&app, "Patient?birthdate=ne1980").await, ["d1990"]);
    assert_eq!(ids(&app, "Patient?birthdate=gt1985").await, ["d1990"]);
    assert_eq!(
        ids(&app, "Patient?birthdate=lt1985").await,
        ["d1980", "y1980"]
    );
    assert_eq!(ids(&app, "Patient?birthdate=ge1990-01-01").await, ["d1990"]);
    assert_eq!(
        ids(&app, "Patient?birthdate=le1980-06-15").await,
        ["d1980", "y1980"]
    );
    assert_eq!(ids(&app, "Patient?birthdate=sa1980").await, ["d1990"]);
    assert_eq!(
        ids(&app, "Patient?birthdate=eb1990").await,
        ["d1980", "y1980"]
    );
    assert_eq!(
        ids(&app, "Patient?birthdate=ap1980-06-15").await,
        ["d1980", "y1980"]
    );
    // Two bounds: AND across repetitions. (A year overlaps both a June and a
    // July bound: precision makes ranges, R4 §3.1.1.4.1.)
    assert_eq!(
        ids(&app, "Patient?birthdate=ge1980-06-01&birthdate=lt1980-07").await,
        ["d1980", "y1980"]
    );
    assert_eq!(
        ids(&app, "Patient?birthdate=ge1985&birthdate=lt1995").await,
        ["d1990"]
    );
    // Periods, an open end, and times with zones.
    put(&app, json!({"resourceType": "Encounter", "id": "open", "status": "in-progress", "class": {"code": "AMB"},
        "period": {"start": "2020-03-02T09:05:11-05:00"}})).await;
    put(&app, json!({"resourceType": "Encounter", "id": "closed", "status": "finished", "class": {"code": "AMB"},
        "period": {"start": "2019-01-01", "end": "2019-01-02"}})).await;
    assert_eq!(ids(&app, "Encounter?date=gt2030").await, ["open"]);
    assert_eq!(
        ids(&app, "Encounter?date=ge2020-03-02T14:05:11Z").await,
        ["open"]
    );
    assert_eq!(ids(&app, "Encounter?date=2019-01").await, ["closed"]);
}

async fn numbers_and_quantities_use_implicit_precision(app: TestApp) {
    for (id, value) in [("a", 0.45), ("b", 0.5), ("c", 0.56), ("d", 5.4)] {
        put(
            &app,
            json!({"resourceType": "RiskAssessment", "id": id, "status": "final",
            "subject": {"reference": "Patient/p"}, "prediction": [{"probabilityDecimal": value}]}),
        )
        .await;
    }
    // 0.5 means [0.45, 0.55).
    assert_eq!(
        ids(&app, "RiskAssessment?probability=0.5").await,
        ["a", "b"]
    );
    assert_eq!(ids(&app, "RiskAssessment?probability=0.50").await, ["b"]);
    assert_eq!(
        ids(&app, "RiskAssessment?probability=gt0.5").await,
        ["c", "d"]
    );
    assert_eq!(
        ids(&app, "RiskAssessment?probability=le0.5").await,
        ["a", "b"]
    );
    assert_eq!(
        ids(&app, "RiskAssessment?probability=ne0.5").await,
        ["c", "d"]
    );
    let ucum = "http://unitsofmeasure.org";
    put(&app, json!({"resourceType": "Observation", "id": "glucose", "status": "final", "code": {"text": "g"},
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": ucum, "code": "mmol/L"}})).await;
    put(&app, json!({"resourceType": "Observation", "id": "weight", "status": "final", "code": {"text": "w"},
        "valueQuantity": {"value": 5.4, "unit": "kg", "system": ucum, "code": "kg"}})).await;
    assert_eq!(
        ids(&app, "Observation?value-quantity=5.4").await,
        ["glucose", "weight"]
    );
    assert_eq!(
        ids(&app, &format!("Observation?value-quantity=5.4|{ucum}|kg")).await,
        ["weight"]
    );
    assert_eq!(
        ids(&app, "Observation?value-quantity=5.4||mmol/L").await,
        ["glucose"]
    );
    assert_eq!(
        ids(&app, "Observation?value-quantity=gt5|unknown|kg").await,
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&app, "Observation?value-quantity=ap5").await,
        ["glucose", "weight"]
    );
}

async fn references_match_ids_types_and_urls(app: TestApp) {
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Group/p1"}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o3", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "http://other.example/fhir/Patient/p3/_history/2"}}),
    )
    .await;
    assert_eq!(ids(&app, "Observation?subject=p1").await, ["o1", "o2"]);
    assert_eq!(ids(&app, "Observation?subject=Patient/p1").await, ["o1"]);
    assert_eq!(ids(&app, "Observation?subject:Group=p1").await, ["o2"]);
    assert_eq!(ids(&app, "Observation?patient=p1").await, ["o1"]);
    assert_eq!(
        ids(
            &app,
            &format!("Observation?subject={}/Patient/p1", app.url("/fhir"))
        )
        .await,
        ["o1"]
    );
    assert_eq!(ids(&app, "Observation?subject=Patient/p3").await, ["o3"]);
    // :identifier: a reference by identifier.
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o4", "status": "final", "code": {"text": "x"},
        "subject": {"identifier": {"system": "urn:mrn", "value": "77"}}}),
    )
    .await;
    assert_eq!(
        ids(&app, "Observation?subject:identifier=urn:mrn|77").await,
        ["o4"]
    );
    assert!(ids(&app, "Observation?subject:identifier=urn:other|77")
        .await
        .is_empty());
    app.get("/fhir/Observation?subject:Medication=p1")
        .await
        .assert_outcome(400, "not a type this parameter refers to");
}

async fn uris_match_exactly_below_and_above(app: TestApp) {
    for (id, url) in [
        ("a", "http://example.org/fhir/ValueSet/a"),
        ("b", "http://example.org/fhir/ValueSet/a/b"),
        ("c", "http://other.org/x"),
    ] {
        put(
            &app,
            json!({"resourceType": "ValueSet", "id": id, "status": "active", "url": url}),
        )
        .await;
    }
    assert_eq!(
        ids(&app, "ValueSet?url=http://example.org/fhir/ValueSet/a").await,
        ["a"]
    );
    assert_eq!(
        ids(&app, "ValueSet?url:below=http://example.org/fhir/").await,
        ["a", "b"]
    );
    assert_eq!(
        ids(
            &app,
            "ValueSet?url:above=http://example.org/fhir/ValueSet/a/b/c"
        )
        .await,
        ["a", "b"]
    );
}

async fn missing_or_and_and_combine(app: TestApp) {
    put(
        &app,
        json!({"resourceType": "Patient", "id": "f", "gender": "female", "birthDate": "1980"}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "m", "gender": "male"}),
    )
    .await;
    put(&app, json!({"resourceType": "Patient", "id": "u"})).await;
    assert_eq!(ids(&app, "Patient?gender:missing=true").await, ["u"]);
    assert_eq!(ids(&app, "Patient?gender:missing=false").await, ["f", "m"]);
    assert_eq!(
        ids(&app, "Patient?birthdate:missing=true").await,
        ["m", "u"]
    );
    // Comma = OR within a parameter; repetition = AND.
    assert_eq!(ids(&app, "Patient?gender=female,male").await, ["f", "m"]);
    assert_eq!(
        ids(&app, "Patient?gender=female,male&birthdate=1980").await,
        ["f"]
    );
    assert!(ids(&app, "Patient?gender=female&gender=male")
        .await
        .is_empty());
    // With _id and _lastUpdated.
    assert_eq!(ids(&app, "Patient?gender=female,male&_id=m,u").await, ["m"]);
    // Paging still pages: two per page, every match once.
    let first = app
        .get("/fhir/Patient?gender:missing=false&_count=1")
        .await
        .json();
    assert_eq!(first["total"], 2);
    let next = crate::helpers::link(&first, "next").expect("a next page");
    assert!(next.contains("gender%3Amissing=false"), "{next}");
}

async fn bad_values_and_unsupported_parameters_are_400s(app: TestApp) {
    for (query, says) in [
        ("Patient?birthdate=1980-13", "\"birthdate\""),
        ("Patient?birthdate=xx1980", "\"birthdate\""),
        ("RiskAssessment?probability=lots", "\"probability\""),
        ("Patient?gender:missing=maybe", "true or false"),
        ("Patient?family:below=x", ":below is not supported"),
        ("Patient?_text=x", "\"_text\" is not supported"),
        ("Observation?code-value-quantity=8867-4", "joined by $"),
        ("Patient?family=", "empty"),
    ] {
        app.get(&format!("/fhir/{query}"))
            .await
            .assert_outcome(400, says);
    }
}

async fn the_index_follows_updates_and_deletes(app: TestApp) {
    put(
        &app,
        json!({"resourceType": "Patient", "id": "x", "name": [{"family": "Before"}]}),
    )
    .await;
    assert_eq!(ids(&app, "Patient?family=before").await, ["x"]);
    put(
        &app,
        json!({"resourceType": "Patient", "id": "x", "name": [{"family": "After"}]}),
    )
    .await;
    assert!(ids(&app, "Patient?family=before").await.is_empty());
    assert_eq!(ids(&app, "Patient?family=after").await, ["x"]);
    let r = app
        .patch(
            "/fhir/Patient/x",
            &json!([{"op": "replace", "path": "/name/0/family", "value": "Patched"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&app, "Patient?family=patched").await, ["x"]);
    assert_eq!(app.delete("/fhir/Patient/x").await.status, 204);
    assert!(ids(&app, "Patient?family=patched").await.is_empty());
    // Back again: found again.
    put(
        &app,
        json!({"resourceType": "Patient", "id": "x", "name": [{"family": "Again"}]}),
    )
    .await;
    assert_eq!(ids(&app, "Patient?family=again").await, ["x"]);
    // A transaction's entries are indexed with their rewritten references.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b4c7e9a-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:0b4c7e9a-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let r = app.post("/fhir", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let patient_id = r.json()["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ids(&app, &format!("Observation?subject=Patient/{patient_id}"))
            .await
            .len(),
        1
    );
}

async fn data_stored_before_the_index_is_found_after_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "old", "name": [{"family": "Stored"}]}),
    )
    .await;
    // As data written before the index existed: rows gone, version unset.
    {
        use fhirbox_store::{SearchIndex, Store};
        let settings = app.settings();
        let store = Store::open(settings.database.expose()).await.unwrap();
        assert!(store
            .replace_index("Patient", "old", 1, Vec::new())
            .await
            .unwrap());
        store.set_index_version("older-definitions").await.unwrap();
        store.close().await;
    }
    assert!(
        ids(&app, "Patient?family=stored").await.is_empty(),
        "the rows are gone"
    );
    let app = app.restart().await;
    assert_eq!(ids(&app, "Patient?family=stored").await, ["old"]);
}

async fn system_search_by_type_and_post_search(app: TestApp) {
    put(
        &app,
        json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Tagged"}],
        "meta": {"tag": [{"system": "urn:t", "code": "x"}]}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
        "meta": {"tag": [{"system": "urn:t", "code": "x"}]}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Organization", "id": "g", "name": "Org"}),
    )
    .await;
    // The common parameters work across types; _type narrows.
    assert_eq!(ids(&app, "?_tag=urn:t|x").await, ["o", "p"]);
    assert_eq!(ids(&app, "?_tag=urn:t|x&_type=Patient").await, ["p"]);
    assert_eq!(ids(&app, "?_type=Patient,Organization").await, ["g", "p"]);
    // With one _type, that type's parameters apply.
    assert_eq!(ids(&app, "?_type=Patient&family=tag").await, ["p"]);
    app.get("/fhir?_type=Nope")
        .await
        .assert_outcome(400, "not a resource type");
    // POST _search: the form body's parameters with the query string's.
    let form = |path: &str, body: &str| {
        app.send(
            app.client
                .post(app.url(path))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_owned()),
        )
    };
    let r = form("/fhir/Patient/_search", "family=tag").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(entry_ids(&r.json()), ["p"]);
    let r = form("/fhir/Patient/_search?family=tag", "family=nobody").await;
    assert!(entry_ids(&r.json()).is_empty(), "both apply");
    let r = form("/fhir/_search", "_tag=urn:t|x&_type=Observation").await;
    assert_eq!(entry_ids(&r.json()), ["o"]);
    // _count=0: only the total.
    let counted = app.get("/fhir/Patient?family=tag&_count=0").await.json();
    assert_eq!(counted["total"], 1);
    assert!(counted.get("entry").is_none(), "{counted}");
}

async fn composites_pair_values_of_one_element(app: TestApp) {
    let loinc = "http://loinc.org";
    let bp = |id: &str, systolic: f64, diastolic: f64| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": loinc, "code": "85354-9"}]},
            "component": [
                {"code": {"coding": [{"system": loinc, "code": "8480-6"}]}, "valueQuantity": {"value": systolic, "unit": "mm[Hg]"}},
                {"code": {"coding": [{"system": loinc, "code": "8462-4"}]}, "valueQuantity": {"value": diastolic, "unit": "mm[Hg]"}}]})
    };
    put(&app, bp("high", 150.0, 95.0)).await;
    put(&app, bp("normal", 118.0, 76.0)).await;
    put(&app, json!({"resourceType": "Observation", "id": "hr", "status": "final",
        "code": {"coding": [{"system": loinc, "code": "8867-4"}]}, "valueQuantity": {"value": 72, "unit": "/min"}})).await;
    // The systolic value above 140: the pair is taken from one component,
    // so a high diastolic does not count as a high systolic.
    assert_eq!(
        ids(
            &app,
            &format!("Observation?component-code-value-quantity={loinc}|8480-6$gt140")
        )
        .await,
        ["high"]
    );
    assert_eq!(
        ids(
            &app,
            "Observation?component-code-value-quantity=8462-4$gt140"
        )
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        ids(
            &app,
            "Observation?component-code-value-quantity=8462-4$lt80"
        )
        .await,
        ["normal"]
    );
    assert_eq!(
        ids(
            &app,
            &format!("Observation?code-value-quantity={loinc}|8867-4$72")
        )
        .await,
        ["hr"]
    );
    assert_eq!(
        ids(&app, "Observation?code-value-quantity=8867-4$ge100").await,
        Vec::<String>::new()
    );
    // Token and token.
    put(&app, json!({"resourceType": "Observation", "id": "c", "status": "final", "code": {"coding": [{"code": "smoking"}]},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "266919005"}]}})).await;
    assert_eq!(
        ids(
            &app,
            "Observation?code-value-concept=smoking$http://snomed.info/sct|266919005"
        )
        .await,
        ["c"]
    );
    assert!(ids(&app, "Observation?code-value-concept=smoking$other")
        .await
        .is_empty());
}

async fn post_search_is_authorized_as_the_get(app: TestApp) {
    put(
        &app,
        json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Visible"}]}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}}),
    )
    .await;
    app.put_client("reader", "reader-secret", &["basic"]).await;
    let r = app
        .put(
            "/fhir/AccessPolicy/reader-policy",
            &json!({"resourceType": "AccessPolicy", "id": "reader-policy", "engine": "matcho",
                    "link": [{"reference": "Client/reader"}],
                    "matcho": {"request-method": "get", "params": {"resource/type": "Patient"}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.put_client("pinned", "pinned-secret", &["basic"]).await;
    let r = app
        .put(
            "/fhir/AccessPolicy/pinned-policy",
            &json!({"resourceType": "AccessPolicy", "id": "pinned-policy", "engine": "matcho",
                    "link": [{"reference": "Client/pinned"}],
                    "matcho": {"request-method": "get", "params": {"resource/type": "Patient", "family": "visible"}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let form = |path: &str, body: &str, who: &str, secret: &str| {
        app.send(
            app.anon
                .post(app.url(path))
                .basic_auth(who, Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_owned()),
        )
    };
    // A client that may read Patients may search them by POST…
    let r = form(
        "/fhir/Patient/_search",
        "family=vis",
        "reader",
        "reader-secret",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(entry_ids(&r.json()), ["p"]);
    // …but not another type, nor across types.
    assert_eq!(
        form("/fhir/Observation/_search", "", "reader", "reader-secret")
            .await
            .status,
        403
    );
    assert_eq!(
        form(
            "/fhir/_search",
            "_type=Observation",
            "reader",
            "reader-secret"
        )
        .await
        .status,
        403
    );
    // A policy pinning a parameter sees the query string only: the pin in the
    // URL passes (the body can only narrow), the pin in the body alone does not.
    let r = form(
        "/fhir/Patient/_search?family=visible",
        "",
        "pinned",
        "pinned-secret",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        form(
            "/fhir/Patient/_search",
            "family=visible",
            "pinned",
            "pinned-secret"
        )
        .await
        .status,
        403
    );
}
