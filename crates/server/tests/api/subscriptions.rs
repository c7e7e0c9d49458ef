//! Subscriptions (docs/subscriptions.md): topics and destinations are
//! checked on write (clear 422s, literal credentials never shown), and
//! changes reach a real webhook receiver in order, once acknowledged, after
//! failures, slowness and restarts.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirbox_test_support::wait_until_async;
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp};

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

/// A webhook receiver: it answers `answer` (after `delay_ms`) and keeps
/// the notifications it acknowledged with a 2xx, and their headers.
struct Receiver {
    url: String,
    answer: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    accepted: Arc<Mutex<Vec<(axum::http::HeaderMap, Value)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let answer = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (a, d, r, acc) = (
            answer.clone(),
            delay_ms.clone(),
            refused.clone(),
            accepted.clone(),
        );
        let handler = move |headers: axum::http::HeaderMap, body: String| {
            let (a, d, r, acc) = (a.clone(), d.clone(), r.clone(), acc.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst))).await;
                let status = a.load(Ordering::SeqCst);
                if (200..300).contains(&status) {
                    let bundle: Value = serde_json::from_str(&body).unwrap();
                    acc.lock().unwrap().push((headers, bundle));
                } else {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/hook", axum::routing::post(handler));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook"),
            answer,
            delay_ms,
            refused,
            accepted,
        }
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    /// Every acknowledged event: (eventNumber, focus, the entry's request
    /// method, the resource's versionId if the entry carries it).
    fn events(&self) -> Vec<(i64, String, String, Option<String>)> {
        let mut out = Vec::new();
        for (_, bundle) in self.accepted.lock().unwrap().iter() {
            let entries = bundle["entry"].as_array().unwrap();
            let events = entries[0]["resource"]["notificationEvent"]
                .as_array()
                .unwrap();
            for (i, event) in events.iter().enumerate() {
                let entry = entries.get(i + 1).cloned().unwrap_or(Value::Null);
                out.push((
                    event["eventNumber"].as_i64().unwrap(),
                    event["focus"]["reference"].as_str().unwrap().to_owned(),
                    entry["request"]["method"].as_str().unwrap_or("").to_owned(),
                    entry["resource"]["meta"]["versionId"]
                        .as_str()
                        .map(str::to_owned),
                ));
            }
        }
        out
    }

    async fn wait_for(&self, count: usize) -> bool {
        wait_until_async(Duration::from_secs(20), || async {
            self.events().len() >= count
        })
        .await
    }
}

/// A topic on every change of `resource` (with an optional criterion) and
/// a webhook destination to `receiver`.
async fn subscribe(
    app: &TestApp,
    id: &str,
    resource: &str,
    criteria: Option<&str>,
    endpoint: &str,
    extra: Value,
) {
    let url = format!("http://hospital.example/topics/{id}");
    let mut trigger = json!({"resource": resource});
    if let Some(c) = criteria {
        trigger["fhirPathCriteria"] = json!(c);
    }
    let r = app
        .put(
            &format!("/fhir/AidboxSubscriptionTopic/{id}"),
            &json!({"resourceType": "AidboxSubscriptionTopic", "id": id, "url": url,
                "status": "active", "trigger": [trigger]}),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    let mut parameters = vec![
        json!({"name": "endpoint", "valueUrl": endpoint}),
        json!({"name": "header", "valueString": "X-Tenant: ward-7"}),
    ];
    parameters.extend(extra.as_array().cloned().unwrap_or_default());
    let r = put(
        app,
        id,
        json!({"resourceType": "AidboxTopicDestination", "topic": url,
            "kind": "webhook-at-least-once", "content": "full-resource", "parameter": parameters}),
    )
    .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
}

/// The value of one `$status` parameter.
fn status_value(status: &Value, name: &str) -> Value {
    status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| {
            p.get("valueDecimal")
                .or_else(|| p.get("valueString"))
                .or_else(|| p.get("valueDateTime"))
                .cloned()
                .unwrap_or_else(|| p["part"].clone())
        })
        .unwrap_or(Value::Null)
}

backend_tests!(
    topics_are_checked_on_write,
    changes_reach_the_webhook_in_order_with_their_versions,
    failed_and_slow_deliveries_are_retried_in_order_and_nothing_is_lost
);

async fn topics_are_checked_on_write(app: TestApp) {
    for (trigger, needle) in [
        (
            json!({"resource": "Patinet"}),
            "is not a FHIR R4 resource type",
        ),
        (
            json!({"resource": "Patient", "fhirPathCriteria": "%current.name.count() > 1"}),
            "the function count()",
        ),
        (
            json!({"resource": "Client"}),
            "fhirbox's own types, which topics do not publish",
        ),
    ] {
        let r = app
            .put(
                "/fhir/AidboxSubscriptionTopic/bad",
                &json!({"resourceType": "AidboxSubscriptionTopic", "id": "bad",
                    "url": "http://t", "trigger": [trigger]}),
            )
            .await;
        r.assert_outcome(422, needle);
    }
    let r = app
        .put(
            "/fhir/AidboxSubscriptionTopic/bad",
            &json!({"resourceType": "AidboxSubscriptionTopic", "id": "bad",
                "url": "http://t", "trigger": [{"resource": "Patient", "supportedInteraction": ["read"]}]}),
        )
        .await;
    // Structural validation names the allowed interactions first.
    r.assert_outcome(400, "use one of: create, update, delete");
    assert_eq!(
        app.get("/fhir/AidboxSubscriptionTopic/bad").await.status,
        404
    );
}

async fn changes_reach_the_webhook_in_order_with_their_versions(app: TestApp) {
    let receiver = Receiver::start().await;
    subscribe(&app, "patients", "Patient", None, &receiver.url, json!([])).await;
    subscribe(
        &app,
        "finished",
        "Encounter",
        Some("%current.status = 'finished' and (%previous.empty() or %previous.status != 'finished')"),
        &receiver.url,
        json!([{"name": "maxMessagesInBatch", "valueUnsignedInt": 1}]),
    )
    .await;
    app.put_patient("p1", "One").await;
    app.put_patient("p1", "Two").await;
    assert_eq!(app.delete("/fhir/Patient/p1").await.status, 204);
    assert!(receiver.wait_for(3).await, "{:?}", receiver.events());
    let events = receiver.events();
    let numbers: Vec<i64> = events.iter().map(|e| e.0).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let shapes: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .map(|e| (e.1.as_str(), e.2.as_str(), e.3.as_deref()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("Patient/p1", "POST", Some("1")),
            ("Patient/p1", "PUT", Some("2")),
            ("Patient/p1", "DELETE", None)
        ]
    );
    {
        let accepted = receiver.accepted.lock().unwrap();
        let (headers, bundle) = &accepted[0];
        assert_eq!(headers["x-tenant"], "ward-7");
        assert_eq!(headers["content-type"], "application/fhir+json");
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "history");
        let status = &bundle["entry"][0]["resource"];
        assert_eq!(status["resourceType"], "AidboxSubscriptionStatus");
        assert_eq!(status["type"], "event-notification");
        assert_eq!(status["topic"], "http://hospital.example/topics/patients");
        assert_eq!(
            status["topic-destination"]["reference"],
            "AidboxTopicDestination/patients"
        );
        assert_eq!(bundle["entry"][1]["resource"]["name"][0]["family"], "One");
    }

    // The criterion: only the change that finishes an encounter.
    let encounter = |status: &str| {
        json!({"resourceType": "Encounter", "id": "e1", "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}})
    };
    for status in ["in-progress", "finished", "finished"] {
        let r = app.put("/fhir/Encounter/e1", &encounter(status)).await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
    }
    // Types no topic watches, and a transaction that fails, notify nothing.
    let r = app
        .put(
            "/fhir/Observation/o1",
            &json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Patient/p2"},
         "resource": {"resourceType": "Patient", "id": "p2"}},
        {"request": {"method": "PUT", "url": "Patient/p3"},
         "resource": {"resourceType": "Patient", "id": "p3", "birthDate": "not-a-date"}}]});
    assert_ne!(app.post("/fhir", &failing).await.status, 200);
    app.put_patient("p4", "Four").await;
    assert!(receiver.wait_for(5).await, "{:?}", receiver.events());
    let later: Vec<String> = receiver.events()[3..].iter().map(|e| e.1.clone()).collect();
    assert_eq!(later.len(), 2, "{later:?}");
    assert!(later.contains(&"Encounter/e1".to_owned()), "{later:?}");
    assert!(later.contains(&"Patient/p4".to_owned()), "{later:?}");

    // $status counts what this instance delivered.
    let ok = wait_until_async(Duration::from_secs(10), || async {
        let status = app
            .get("/fhir/AidboxTopicDestination/patients/$status")
            .await
            .json();
        status_value(&status, "messagesDelivered") == json!(4)
            && status_value(&status, "messagesQueued") == json!(0)
    })
    .await;
    let status = app
        .get("/fhir/AidboxTopicDestination/patients/$status")
        .await;
    assert!(ok, "{}", status.text);
    let status = status.json();
    assert_eq!(status["resourceType"], "Parameters");
    assert_eq!(status_value(&status, "status"), "active");
    assert_eq!(status_value(&status, "lastErrorDetail"), Value::Null);
    // The metrics count the same.
    assert_eq!(
        crate::tokens::metric(
            &app,
            "fhirbox_subscription_messages_delivered_total{destination=\"patients\"}"
        )
        .await,
        4
    );
    assert!(
        crate::tokens::metric(
            &app,
            "fhirbox_subscription_delivery_latency_seconds_count{destination=\"patients\"}"
        )
        .await
            == 4
    );
    app.get("/fhir/AidboxTopicDestination/nobody/$status")
        .await
        .assert_outcome(404, "not stored");
    app.get("/fhir/Patient/p4/$status")
        .await
        .assert_outcome(404, "AidboxTopicDestination only");
    // The status is read like the destination: under a policy that lets
    // the client read that type, and not otherwise.
    app.matcho_client(
        "patients-only",
        "reader-secret-1",
        json!({"request-method": "get", "params": {"resource/type": "Patient"}}),
    )
    .await;
    app.matcho_client(
        "reader",
        "reader-secret-1",
        json!({"request-method": "get"}),
    )
    .await;
    for (client, expected) in [("patients-only", 403), ("reader", 200)] {
        let r = app
            .send_as(
                reqwest::Method::GET,
                "/fhir/AidboxTopicDestination/patients/$status",
                (client, "reader-secret-1"),
                None,
            )
            .await;
        assert_eq!(r.status, expected, "{client}: {}", r.text);
    }
}

async fn failed_and_slow_deliveries_are_retried_in_order_and_nothing_is_lost(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    subscribe(
        &app,
        "patients",
        "Patient",
        None,
        &receiver.url,
        json!([{"name": "timeout", "valueUnsignedInt": 1}, {"name": "maxMessagesInBatch", "valueUnsignedInt": 2}]),
    )
    .await;
    for (i, family) in ["A", "B", "C", "D", "E"].iter().enumerate() {
        app.put_patient(&format!("p{i}"), family).await;
    }
    let path = "/fhir/AidboxTopicDestination/patients/$status";
    let failing = wait_until_async(Duration::from_secs(20), || async {
        let status = app.get(path).await.json();
        receiver.refused.load(Ordering::SeqCst) >= 2
            && status_value(&status, "messagesQueued") == json!(5)
    })
    .await;
    let status = app.get(path).await.json();
    assert!(failing, "{status}");
    assert_eq!(
        status_value(&status, "lastErrorDetail")[0]["valueString"],
        "the endpoint answered HTTP 503"
    );
    assert_eq!(status_value(&status, "messagesDelivered"), json!(0));
    assert!(receiver.events().is_empty());
    assert!(
        crate::tokens::metric(
            &app,
            "fhirbox_subscription_delivery_attempts_total{destination=\"patients\",result=\"failed\"}"
        )
        .await
            >= 2
    );

    // A receiver slower than the destination's timeout fails the same way.
    receiver.answer(200);
    receiver.delay_ms.store(3_000, Ordering::SeqCst);
    let timed_out = wait_until_async(Duration::from_secs(30), || async {
        let status = app.get(path).await.json();
        status_value(&status, "lastErrorDetail")[0]["valueString"]
            == "the endpoint did not answer within 1 s"
    })
    .await;
    assert!(timed_out, "{}", app.get(path).await.text);
    // It answered late, after fhirbox gave up: the receiver has seen a
    // notification fhirbox counts as failed, which it will send again.
    receiver.delay_ms.store(0, Ordering::SeqCst);
    receiver.accepted.lock().unwrap().clear();

    // Once the receiver is well, every change arrives, in order.
    assert!(receiver.wait_for(5).await, "{:?}", receiver.events());
    let seen: Vec<String> = receiver.events().iter().map(|e| e.1.clone()).collect();
    // Anything the slow receiver acknowledged too late comes again; the
    // order of first arrivals is the order of the changes.
    let mut first: Vec<String> = Vec::new();
    for s in seen {
        if !first.contains(&s) {
            first.push(s);
        }
    }
    assert_eq!(
        first,
        [
            "Patient/p0",
            "Patient/p1",
            "Patient/p2",
            "Patient/p3",
            "Patient/p4"
        ]
    );
    let drained = wait_until_async(Duration::from_secs(10), || async {
        status_value(&app.get(path).await.json(), "messagesQueued") == json!(0)
    })
    .await;
    assert!(drained);
}

backend_tests!(a_deleted_destination_takes_its_queue_with_it);

/// Deleting a destination removes what was queued for it: the same id
/// created again starts with an empty queue.
async fn a_deleted_destination_takes_its_queue_with_it(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    subscribe(&app, "patients", "Patient", None, &receiver.url, json!([])).await;
    app.put_patient("p1", "One").await;
    app.put_patient("p2", "Two").await;
    let path = "/fhir/AidboxTopicDestination/patients/$status";
    let queued = wait_until_async(Duration::from_secs(10), || async {
        receiver.refused.load(Ordering::SeqCst) >= 1
            && status_value(&app.get(path).await.json(), "messagesQueued") == json!(2)
    })
    .await;
    assert!(queued);
    assert_eq!(
        app.delete("/fhir/AidboxTopicDestination/patients")
            .await
            .status,
        204
    );
    app.get(path).await.assert_outcome(404, "not stored");
    receiver.answer(200);
    subscribe(&app, "patients", "Patient", None, &receiver.url, json!([])).await;
    assert_eq!(
        status_value(&app.get(path).await.json(), "messagesQueued"),
        json!(0)
    );
    app.put_patient("p3", "Three").await;
    assert!(receiver.wait_for(1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let focus: Vec<String> = receiver.events().iter().map(|e| e.1.clone()).collect();
    assert_eq!(focus, ["Patient/p3"]);
}

backend_tests!(per_backend: queued_notifications_survive_a_restart);

/// Notifications queued while the receiver is down are kept in the
/// database: a new server on it delivers them.
async fn queued_notifications_survive_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    subscribe(&app, "patients", "Patient", None, &receiver.url, json!([])).await;
    app.put_patient("p1", "One").await;
    app.put_patient("p2", "Two").await;
    let refused = wait_until_async(Duration::from_secs(10), || async {
        receiver.refused.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(refused);
    let app = app.restart().await;
    receiver.answer(200);
    assert!(receiver.wait_for(2).await, "{:?}", receiver.events());
    let focus: Vec<String> = receiver.events().iter().map(|e| e.1.clone()).collect();
    assert_eq!(
        focus[..2],
        ["Patient/p1".to_owned(), "Patient/p2".to_owned()]
    );
    drop(app);
}

/// A fhirbox process (the real binary) on a database of the test's.
pub struct Process {
    child: std::process::Child,
    base: String,
}

const ROOT_SECRET: &str = "process-root-secret-0123456789";

impl Process {
    pub async fn start(database_url: &str) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirbox"))
            .env("BOX_DB_URL", database_url)
            .env("BOX_WEB_PORT", port.to_string())
            .env("BOX_ROOT_CLIENT_ID", "root")
            .env("BOX_ROOT_CLIENT_SECRET", ROOT_SECRET)
            .env("BOX_AUTH_RECHECK_MS", "200")
            .env_remove("BOX_VAULT_CONFIG")
            .env_remove("BOX_INIT_BUNDLE")
            .env_remove("BOX_METRICS_PORT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let process = Process {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let up = wait_until_async(Duration::from_secs(60), || async {
            client
                .get(format!("{}/health", process.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "fhirbox did not start on {}", process.base);
        process
    }

    async fn put(&self, path: &str, body: &Value) -> u16 {
        reqwest::Client::new()
            .put(format!("{}{path}", self.base))
            .basic_auth("root", Some(ROOT_SECRET))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn get(&self, path: &str) -> u16 {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .basic_auth("root", Some(ROOT_SECRET))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn put_patient(&self, id: &str) {
        let status = self
            .put(
                &format!("/fhir/Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id}),
            )
            .await;
        assert!(status == 201 || status == 200, "{id}: {status}");
    }

    async fn subscribe(&self, endpoint: &str) {
        self.subscribe_to(
            "webhook-at-least-once",
            json!([{"name": "endpoint", "valueUrl": endpoint},
                {"name": "maxMessagesInBatch", "valueUnsignedInt": 1}]),
        )
        .await;
    }

    /// A topic on Patient changes and destination `patients` of `kind`.
    pub async fn subscribe_to(&self, kind: &str, parameters: Value) {
        let topic = json!({"resourceType": "AidboxSubscriptionTopic", "id": "patients",
            "url": "http://hospital.example/topics/patients", "trigger": [{"resource": "Patient"}]});
        assert_eq!(
            self.put("/fhir/AidboxSubscriptionTopic/patients", &topic)
                .await,
            201
        );
        let destination = json!({"resourceType": "AidboxTopicDestination", "id": "patients",
            "topic": "http://hospital.example/topics/patients", "kind": kind,
            "content": "id-only", "parameter": parameters});
        assert_eq!(
            self.put("/fhir/AidboxTopicDestination/patients", &destination)
                .await,
            201
        );
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The order of first arrival of each focus, and whether any came twice.
fn first_arrivals(receiver: &Receiver) -> (Vec<String>, bool) {
    let mut first: Vec<String> = Vec::new();
    let mut repeated = false;
    for (_, focus, _, _) in receiver.events() {
        if first.contains(&focus) {
            repeated = true;
        } else {
            first.push(focus);
        }
    }
    (first, repeated)
}

backend_tests!(per_backend: a_killed_process_loses_no_notification);

/// kill -9 in the middle of delivery: a new process on the database
/// delivers every notification that was not acknowledged, in order.
async fn a_killed_process_loses_no_notification(backend: Backend) {
    let db = crate::helpers::TestDb::create(backend).await;
    let receiver = Receiver::start().await;
    receiver.delay_ms.store(150, Ordering::SeqCst);
    let mut first = Process::start(&db.url()).await;
    first.subscribe(&receiver.url).await;
    let ids: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    for id in &ids {
        first.put_patient(id).await;
    }
    assert!(receiver.wait_for(2).await);
    first.kill();
    let delivered_before = receiver.events().len();
    assert!(
        delivered_before < ids.len(),
        "all delivered before the kill"
    );
    let _second = Process::start(&db.url()).await;
    assert!(
        receiver.wait_for(ids.len()).await,
        "{:?}",
        receiver.events()
    );
    let expected: Vec<String> = ids.iter().map(|id| format!("Patient/{id}")).collect();
    let arrived = wait_until_async(Duration::from_secs(20), || async {
        first_arrivals(&receiver).0.len() == ids.len()
    })
    .await;
    assert!(arrived, "{:?}", receiver.events());
    assert_eq!(first_arrivals(&receiver).0, expected);
}

fhirbox_test_support::postgres_variant! {
    /// Two replicas on one PostgreSQL database: the destination's lease row
    /// lets one of them deliver at a time, so every notification arrives
    /// once and in the order of the changes, whichever replica made them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_on_one_postgresql_deliver_each_notification_once_in_order() {
    let db = crate::helpers::TestDb::create(Backend::Postgres).await;
    let receiver = Receiver::start().await;
    receiver.delay_ms.store(20, Ordering::SeqCst);
    let a = Process::start(&db.url()).await;
    let b = Process::start(&db.url()).await;
    a.subscribe(&receiver.url).await;
    // Another instance applies a new destination to its writes from 25 ms
    // after it was written (docs/subscriptions.md); wait until B knows it.
    let known = wait_until_async(Duration::from_secs(10), || async {
        b.get("/fhir/AidboxTopicDestination/patients/$status").await == 200
    })
    .await;
    assert!(known);
    let ids: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            a.put_patient(id).await;
        } else {
            b.put_patient(id).await;
        }
    }
    assert!(receiver.wait_for(ids.len()).await, "{:?}", receiver.events());
    // Give a second delivery of anything a moment to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (order, repeated) = first_arrivals(&receiver);
    let expected: Vec<String> = ids.iter().map(|id| format!("Patient/{id}")).collect();
    assert_eq!(order, expected);
    assert!(!repeated, "{:?}", receiver.events());
    assert_eq!(receiver.events().len(), ids.len());
}
}

backend_tests!(per_backend: webhook_headers_come_from_the_vault_rotate_and_never_show);

/// A `header` parameter may refer to a vault secret holding the whole line:
/// it is read at each delivery (a rotation applies to the next one), a bad
/// file fails delivery without losing anything, and the value appears in
/// no response, log line or database row.
async fn webhook_headers_come_from_the_vault_rotate_and_never_show(backend: Backend) {
    use crate::vault::{reference, Vault};
    const FIRST: &str = "first-hook-token-4b1d";
    const SECOND: &str = "second-hook-token-77c0e";
    const THIRD: &str = "third-hook-token-a9";
    let vault = Vault::new(&[("hook-auth", &format!("Authorization: Bearer {FIRST}"))]);
    vault.write_config(
        &json!({"secret": {"hook-auth": {"path": vault.secret_path("hook-auth"),
        "scope": ["AidboxTopicDestination/patients"]}}}),
    );
    let app = crate::vault::spawn_with_vault(backend, &vault).await;
    let receiver = Receiver::start().await;
    subscribe(
        &app,
        "patients",
        "Patient",
        None,
        &receiver.url,
        json!([{"name": "header", "_valueString": reference("hook-auth")}]),
    )
    .await;
    let destination = "/fhir/AidboxTopicDestination/patients";
    let stored = app.get(destination).await;
    assert_eq!(
        stored.json()["parameter"][2]["_valueString"],
        reference("hook-auth")
    );
    // A literal header is shown as written.
    assert_eq!(
        stored.json()["parameter"][1]["valueString"],
        "X-Tenant: ward-7"
    );
    let authorization = |i: usize| -> String {
        let accepted = receiver.accepted.lock().unwrap();
        accepted[i].0["authorization"].to_str().unwrap().to_owned()
    };
    app.put_patient("p1", "One").await;
    assert!(receiver.wait_for(1).await);
    assert_eq!(authorization(0), format!("Bearer {FIRST}"));

    // Rotated: the next delivery sends the new line.
    let size_is = |n: usize| crate::helpers::served_secret_size_is(&app, n);
    let second = format!("Authorization: Bearer {SECOND}");
    vault.rotate("hook-auth", second.as_bytes());
    assert!(size_is(second.len()).await);
    app.put_patient("p2", "Two").await;
    assert!(receiver.wait_for(2).await);
    assert_eq!(authorization(1), format!("Bearer {SECOND}"));

    // A file that is not a header line: delivery fails, saying why without
    // the value, and keeps the notification.
    let broken = format!("Bearer {THIRD}");
    vault.rotate("hook-auth", broken.as_bytes());
    assert!(size_is(broken.len()).await);
    app.put_patient("p3", "Three").await;
    let path = "/fhir/AidboxTopicDestination/patients/$status";
    let failing = wait_until_async(Duration::from_secs(10), || async {
        let status = app.get(path).await.json();
        status_value(&status, "lastErrorDetail")[0]["valueString"]
            .as_str()
            .is_some_and(|m| m.contains("header secret \"hook-auth\"") && m.contains("Name: value"))
            && status_value(&status, "messagesQueued") == json!(1)
    })
    .await;
    let status_text = app.get(path).await.text;
    assert!(failing, "{status_text}");
    let third = format!("Authorization: Bearer {THIRD}");
    vault.rotate("hook-auth", third.as_bytes());
    assert!(receiver.wait_for(3).await, "{}", app.get(path).await.text);
    assert_eq!(authorization(2), format!("Bearer {THIRD}"));
    assert_eq!(receiver.events()[2].1, "Patient/p3");

    // Scope and literal credentials are checked on write.
    let mut other = app.get(destination).await.json();
    other["id"] = json!("other");
    put(&app, "other", other)
        .await
        .assert_outcome(422, "not in the scope");
    let literal =
        json!([{"name": "header", "valueString": format!("Authorization: Bearer {FIRST}")}]);
    let r = put(
        &app,
        "literal",
        json!({"resourceType": "AidboxTopicDestination", "topic": "http://t",
            "kind": "webhook-at-least-once", "parameter": [
                {"name": "endpoint", "valueUrl": receiver.url}, literal[0]]}),
    )
    .await;
    r.assert_outcome(422, "keep the whole line");

    // The values are nowhere fhirbox keeps or says anything.
    let bodies = [
        status_text,
        app.get(path).await.text,
        app.get(destination).await.text,
        app.get("/admin/secrets").await.text,
        app.get("/metrics").await.text,
        r.text,
    ];
    crate::helpers::assert_nowhere(&app, &[FIRST, SECOND, THIRD], &bodies);
}
