//! AidboxTopicDestination resources are checked on write
//! (docs/subscriptions.md): clear 422s, literal credentials never shown.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::TestApp;

const TOPIC: &str = "http://hospital.example/topics/patients";
const JAAS: &str = r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="fhirbox" password="kafka-literal-pass";"#;

fn kafka(params: Value) -> Value {
    json!({"resourceType": "AidboxTopicDestination", "topic": TOPIC,
        "kind": "kafka-at-least-once", "parameter": params})
}

/// `PUT /fhir/AidboxTopicDestination/<id>` with `body` under that id.
async fn put(app: &TestApp, id: &str, mut body: Value) -> crate::helpers::Resp {
    body["id"] = json!(id);
    app.put(&format!("/fhir/AidboxTopicDestination/{id}"), &body)
        .await
}

backend_tests!(destinations_are_checked_on_write_and_credentials_never_shown);

async fn destinations_are_checked_on_write_and_credentials_never_shown(app: TestApp) {
    let good = kafka(json!([
        {"name": "kafkaTopic", "valueString": "fhir.patients"},
        {"name": "bootstrapServers", "valueString": "kafka-1:9093,kafka-2:9093"},
        {"name": "securityProtocol", "valueString": "SASL_PLAINTEXT"},
        {"name": "saslMechanism", "valueString": "SCRAM-SHA-256"},
        {"name": "saslJaasConfig", "valueString": JAAS}]));
    let r = put(&app, "kafka", good).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let read = app.get("/fhir/AidboxTopicDestination/kafka").await.text;
    assert!(!read.contains("kafka-literal-pass"), "{read}");
    let webhook = json!({"resourceType": "AidboxTopicDestination", "topic": TOPIC,
        "kind": "webhook-at-least-once", "content": "id-only", "parameter": [
            {"name": "endpoint", "valueUrl": "https://hooks.hospital.example/fhir"},
            {"name": "header", "valueString": "X-Tenant: ward-7"}]});
    assert_eq!(put(&app, "hook", webhook).await.status, 201);
    for (body, needle) in [
        (
            kafka(json!([{"name": "topic", "valueString": "fhir.patients"}])),
            "\"topic\" is not a parameter of kind kafka-at-least-once",
        ),
        (
            kafka(json!([
                {"name": "kafkaTopic", "valueString": "t"},
                {"name": "bootstrapServers", "valueString": "k:9092"},
                {"name": "securityProtocol", "valueString": "SASL_SSL"},
                {"name": "saslMechanism", "valueString": "PLAIN"},
                {"name": "saslJaasConfig", "valueString": JAAS}])),
            "does not fit saslMechanism",
        ),
        (
            kafka(json!([
                {"name": "kafkaTopic", "valueString": "t"},
                {"name": "bootstrapServers", "valueString": "k:9092"},
                {"name": "saslClientCallbackHandlerClass", "valueString": "com.example.Handler"}])),
            "Java class",
        ),
        (
            json!({"resourceType": "AidboxTopicDestination", "topic": TOPIC, "kind": "webhook-at-least-once",
                "parameter": [{"name": "endpoint", "valueUrl": "ftp://hooks.example/"}]}),
            "http or https",
        ),
    ] {
        let r = put(&app, "bad", body).await;
        r.assert_outcome(422, needle);
        assert!(!r.text.contains("kafka-literal-pass"), "{}", r.text);
    }
    // A refused write left nothing behind, and the good one is intact.
    assert_eq!(
        app.get("/fhir/AidboxTopicDestination/bad").await.status,
        404
    );
    let stored = app.get("/fhir/AidboxTopicDestination/kafka").await.json();
    assert_eq!(stored["parameter"][0]["valueString"], "fhir.patients");
}
