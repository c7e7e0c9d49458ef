//! The validator through its public API: what passes, what is refused and
//! how it is reported, for R4 types and the server's own.

use fhirbox_validation::{ProblemKind, UnknownElements, Validator, MAX_PROBLEMS};
use serde_json::{json, Value};

fn strict() -> std::sync::Arc<Validator> {
    Validator::shared(UnknownElements::Refuse).expect("the schema compiles")
}

fn problems(resource: &Value) -> Vec<(ProblemKind, String)> {
    let t = resource["resourceType"].as_str().unwrap();
    match strict().validate(t, resource) {
        Ok(()) => Vec::new(),
        Err(p) => p
            .listed
            .into_iter()
            .map(|p| (p.kind, p.expression))
            .collect(),
    }
}

#[test]
fn every_type_is_known_and_an_empty_resource_of_most_passes() {
    let v = strict();
    for t in fhirbox_fhir_types() {
        assert!(v.knows(t), "{t}");
    }
    assert!(!v.knows("Nope"));
    assert!(problems(&json!({"resourceType": "Patient"})).is_empty());
    assert!(problems(&json!({"resourceType": "Client"})).is_empty());
}

fn fhirbox_fhir_types() -> impl Iterator<Item = &'static str> {
    [
        "Patient",
        "Observation",
        "Bundle",
        "Parameters",
        "Client",
        "AccessPolicy",
        "User",
        "TokenIntrospector",
        "IdentityProvider",
        "AidboxSubscriptionTopic",
        "AidboxTopicDestination",
    ]
    .into_iter()
}

#[test]
fn repeating_primitives_keep_nulls_to_align_their_extensions() {
    // R4 §2.6.2: a null in either list keeps values and extensions aligned.
    let aligned = json!({"resourceType": "Patient", "name": [{
        "given": ["Ann", null],
        "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}]}]});
    assert!(problems(&aligned).is_empty(), "{:?}", problems(&aligned));
    // A single value cannot be null.
    let single = json!({"resourceType": "Patient", "gender": null});
    assert_eq!(problems(&single).len(), 1);
}

#[test]
fn the_secret_reference_pattern_is_valid_on_all_ten_fields() {
    let reference = json!({"extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"},
        {"url": "http://health-samurai.io/fhir/secret-reference", "valueString": "name"}]});
    let bodies = [
        json!({"resourceType": "Client", "_secret": reference, "grant_types": ["basic"]}),
        json!({"resourceType": "IdentityProvider", "client": {"id": "x", "_secret": reference,
               "_private-key": reference, "_certificate": reference, "auth-method": "asymmetric"}}),
        json!({"resourceType": "TokenIntrospector", "type": "jwt",
               "jwt": {"_secret": reference, "keys": [{"kid": "a", "kty": "OCT", "alg": "HS256", "_k": reference}]},
               "introspection_endpoint": {"url": "https://idp.example/introspect", "_authorization": reference}}),
        json!({"resourceType": "AidboxTopicDestination", "kind": "kafka-at-least-once", "parameter": [
               {"name": "saslJaasConfig", "_valueString": reference},
               {"name": "sslKeystoreKey", "_valueString": reference}]}),
        json!({"resourceType": "AidboxTopicDestination", "kind": "webhook-at-least-once", "parameter": [
               {"name": "header", "_valueString": reference}, {"name": "header", "_valueString": reference}]}),
    ];
    for body in bodies {
        assert!(problems(&body).is_empty(), "{body}: {:?}", problems(&body));
    }
    // The literal forms are strings; anything else is refused.
    let bad = json!({"resourceType": "Client", "secret": {"value": "x"}});
    assert_eq!(
        problems(&bad),
        [(ProblemKind::Structure, "Client.secret".to_owned())]
    );
}

#[test]
fn the_server_types_check_their_elements_and_choices() {
    let bad = json!({"resourceType": "AidboxTopicDestination", "parameter": [
        {"name": "batchSize", "valueInteger": 10, "valueString": "10"}, {"valueString": "x"}]});
    let found = problems(&bad);
    assert!(
        found.contains(&(
            ProblemKind::Invariant,
            "AidboxTopicDestination.parameter[0]".to_owned()
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&(
            ProblemKind::Required,
            "AidboxTopicDestination.parameter[1].name".to_owned()
        )),
        "{found:?}"
    );
    let typo = json!({"resourceType": "TokenIntrospector", "type": "jwt", "jwt": {"isss": "x"}});
    assert_eq!(
        problems(&typo),
        [(
            ProblemKind::Structure,
            "TokenIntrospector.jwt.isss".to_owned()
        )]
    );
}

#[test]
fn huge_faulty_bodies_report_boundedly() {
    // Every value wrong: the report is capped, and a very large body gets
    // only its first problem rather than one per value.
    let many: Vec<Value> = (0..1000).map(|_| json!(1)).collect();
    let body = json!({"resourceType": "Patient", "name": many});
    let p = strict().validate("Patient", &body).unwrap_err();
    assert_eq!(p.listed.len(), MAX_PROBLEMS);
    assert_eq!(p.more, 1000 - MAX_PROBLEMS);
    let huge: Vec<Value> = (0..200_000).map(|_| json!(1)).collect();
    let body = json!({"resourceType": "Patient", "contained": huge});
    let p = strict().validate("Patient", &body).unwrap_err();
    assert_eq!((p.listed.len(), p.more), (1, 0));
    assert_eq!(p.listed[0].expression, "Patient.contained[0]");
    assert!(
        p.listed[0].message.contains("must be an object"),
        "{}",
        p.listed[0].message
    );
}

#[test]
fn unknown_elements_can_be_allowed() {
    let lax = Validator::shared(UnknownElements::Allow).unwrap();
    let body = json!({"resourceType": "Patient", "legacy": 1, "gender": "female"});
    assert!(lax.validate("Patient", &body).is_ok());
    let body = json!({"resourceType": "Patient", "legacy": 1, "gender": 2});
    let p = lax.validate("Patient", &body).unwrap_err();
    assert_eq!(p.listed.len(), 1);
    assert_eq!(p.listed[0].expression, "Patient.gender");
}
