//! Kafka delivery (docs/subscriptions.md, "Kafka") against a real
//! Kafka-protocol broker, tansu, started by the tests (`scripts/test.sh`
//! puts its binary at `target/tools/tansu`, or `FHIRBOX_TEST_TANSU` names
//! one). Notifications arrive in order, keyed by resource, and none is lost
//! while the broker is down.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fhirbox_test_support::wait_until_async;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::TestApp;

/// The tansu binary the tests run.
fn tansu() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("FHIRBOX_TEST_TANSU") {
        return path.into();
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/tansu");
    assert!(
        path.exists(),
        "the Kafka tests need the tansu broker: run scripts/test.sh (it fetches it to target/tools) or set FHIRBOX_TEST_TANSU"
    );
    path
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker (memory storage) on a port of its own.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
}

impl Broker {
    pub async fn start() -> Broker {
        let mut broker = Broker {
            child: None,
            port: free_port(),
        };
        broker.up().await;
        broker
    }

    /// `host:port` for `bootstrapServers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker process (again, on the same port) and waits until
    /// it accepts connections.
    pub async fn up(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let port = self.port;
        let listening = wait_until_async(Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(listening, "tansu did not listen on {port} within 30 s");
    }

    /// Kills the broker (memory storage: what it held is gone).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates a topic of one partition.
    pub fn create_topic(&self, name: &str) {
        let status = Command::new(tansu())
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
                "1",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("tansu topic create runs");
        assert!(status.success(), "tansu topic create {name}: {status}");
    }

    /// Reads partition 0 of `topic` from its beginning until `count`
    /// messages arrived or 30 s passed: (key, content-type header, payload).
    pub async fn read(&self, topic: &str, count: usize) -> Vec<(String, String, Value)> {
        let address = self.address();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            // Partitions are assigned directly: a group join is slow.
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &address)
                .set("group.id", "fhirbox-tests")
                .set("enable.auto.commit", "false")
                .create()
                .expect("a consumer");
            let mut partitions = TopicPartitionList::new();
            partitions
                .add_partition_offset(&topic, 0, Offset::Beginning)
                .unwrap();
            consumer.assign(&partitions).unwrap();
            let mut out = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while out.len() < count && std::time::Instant::now() < deadline {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                let content_type = message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "content-type"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let payload: Value =
                    serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
                out.push((key, content_type, payload));
            }
            out
        })
        .await
        .unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// A topic on every Patient change and a Kafka destination for it.
pub async fn subscribe(app: &TestApp, id: &str, kind: &str, parameters: Value) {
    let url = format!("http://hospital.example/topics/{id}");
    let r = app
        .put(
            &format!("/fhir/AidboxSubscriptionTopic/{id}"),
            &json!({"resourceType": "AidboxSubscriptionTopic", "id": id, "url": url,
                "status": "active", "trigger": [{"resource": "Patient"}]}),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    let r = app
        .put(
            &format!("/fhir/AidboxTopicDestination/{id}"),
            &json!({"resourceType": "AidboxTopicDestination", "id": id, "topic": url,
                "kind": kind, "content": "full-resource", "parameter": parameters}),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
}

/// The value of one `$status` parameter.
pub fn status_value(status: &Value, name: &str) -> Value {
    status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| {
            p.get("valueDecimal")
                .or_else(|| p.get("valueString"))
                .cloned()
                .unwrap_or_else(|| p["part"].clone())
        })
        .unwrap_or(Value::Null)
}

/// (focus, request method, version) of a notification.
fn event(payload: &Value) -> (String, String, String) {
    let entries = payload["entry"].as_array().unwrap();
    let status = &entries[0]["resource"];
    assert_eq!(status["resourceType"], "AidboxSubscriptionStatus");
    assert_eq!(status["type"], "event-notification");
    let focus = status["notificationEvent"][0]["focus"]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let method = entries[1]["request"]["method"].as_str().unwrap().to_owned();
    let version = entries[1]["resource"]["meta"]["versionId"]
        .as_str()
        .unwrap_or("-")
        .to_owned();
    (focus, method, version)
}

backend_tests!(changes_reach_kafka_in_order_and_none_is_lost_while_the_broker_is_down);

async fn changes_reach_kafka_in_order_and_none_is_lost_while_the_broker_is_down(app: TestApp) {
    let mut broker = Broker::start().await;
    broker.create_topic("fhir.patients");
    subscribe(
        &app,
        "patients",
        "kafka-at-least-once",
        json!([
            {"name": "kafkaTopic", "valueString": "fhir.patients"},
            {"name": "bootstrapServers", "valueString": broker.address()},
            {"name": "deliveryTimeoutMs", "valueInteger": 3000},
            {"name": "compressionType", "valueString": "gzip"}
        ]),
    )
    .await;
    app.put_patient("p1", "One").await;
    app.put_patient("p1", "Two").await;
    app.put_patient("p2", "Other").await;
    assert_eq!(app.delete("/fhir/Patient/p1").await.status, 204);
    let got = broker.read("fhir.patients", 4).await;
    let events: Vec<(String, String, String)> = got.iter().map(|m| event(&m.2)).collect();
    let keys: Vec<&str> = got.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        keys,
        ["Patient/p1", "Patient/p1", "Patient/p2", "Patient/p1"]
    );
    assert!(got.iter().all(|m| m.1 == "application/fhir+json"));
    assert_eq!(
        events,
        [
            ("Patient/p1".into(), "POST".into(), "1".into()),
            ("Patient/p1".into(), "PUT".into(), "2".into()),
            ("Patient/p2".into(), "POST".into(), "1".into()),
            ("Patient/p1".into(), "DELETE".into(), "-".into()),
        ]
    );
    let numbers: Vec<i64> = got
        .iter()
        .map(|m| {
            m.2["entry"][0]["resource"]["notificationEvent"][0]["eventNumber"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    let path = "/fhir/AidboxTopicDestination/patients/$status";
    let drained = wait_until_async(Duration::from_secs(10), || async {
        let status = app.get(path).await.json();
        status_value(&status, "messagesDelivered") == json!(4)
            && status_value(&status, "messagesQueued") == json!(0)
    })
    .await;
    assert!(drained, "{}", app.get(path).await.text);

    // The broker goes down: changes stay queued, $status says why.
    broker.down();
    app.put_patient("p3", "Three").await;
    app.put_patient("p4", "Four").await;
    let failing = wait_until_async(Duration::from_secs(20), || async {
        let status = app.get(path).await.json();
        status_value(&status, "lastErrorDetail")[0]["valueString"]
            .as_str()
            .is_some_and(|m| m.starts_with("Kafka: "))
            && status_value(&status, "messagesQueued") == json!(2)
    })
    .await;
    assert!(failing, "{}", app.get(path).await.text);
    // Back (empty: memory storage): what was queued arrives, in order.
    broker.up().await;
    broker.create_topic("fhir.patients");
    let got = broker.read("fhir.patients", 2).await;
    let focus: Vec<String> = got.iter().map(|m| event(&m.2).0).collect();
    assert_eq!(focus, ["Patient/p3", "Patient/p4"]);
    let drained = wait_until_async(Duration::from_secs(10), || async {
        status_value(&app.get(path).await.json(), "messagesQueued") == json!(0)
    })
    .await;
    assert!(drained);
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains(
            "fhirbox_subscription_delivery_attempts_total{destination=\"patients\",result=\"failed\"}"
        ),
        "{metrics}"
    );
}

backend_tests!(best_effort_notifications_are_sent_from_memory_and_counted_when_lost);

/// `kafka-best-effort` keeps nothing in the database: a notification the
/// broker did not take within `deliveryTimeoutMs` is lost and counted.
async fn best_effort_notifications_are_sent_from_memory_and_counted_when_lost(app: TestApp) {
    let mut broker = Broker::start().await;
    broker.create_topic("fhir.best");
    subscribe(
        &app,
        "best",
        "kafka-best-effort",
        json!([
            {"name": "kafkaTopic", "valueString": "fhir.best"},
            {"name": "bootstrapServers", "valueString": broker.address()},
            {"name": "deliveryTimeoutMs", "valueInteger": 2000}
        ]),
    )
    .await;
    app.put_patient("p1", "One").await;
    app.put_patient("p2", "Two").await;
    let got = broker.read("fhir.best", 2).await;
    let focus: Vec<String> = got.iter().map(|m| event(&m.2).0).collect();
    assert_eq!(focus, ["Patient/p1", "Patient/p2"]);
    let path = "/fhir/AidboxTopicDestination/best/$status";
    let status = app.get(path).await.json();
    assert_eq!(status_value(&status, "messagesQueued"), Value::Null);
    assert_eq!(status_value(&status, "messagesLost"), json!(0));

    broker.down();
    app.put_patient("p3", "Three").await;
    let lost = wait_until_async(Duration::from_secs(20), || async {
        status_value(&app.get(path).await.json(), "messagesLost") == json!(1)
    })
    .await;
    assert!(lost, "{}", app.get(path).await.text);
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains("fhirbox_subscription_messages_lost_total{destination=\"best\"} 1"),
        "{metrics}"
    );
    broker.up().await;
    broker.create_topic("fhir.best");
    app.put_patient("p4", "Four").await;
    let got = broker.read("fhir.best", 1).await;
    let focus: Vec<String> = got.iter().map(|m| event(&m.2).0).collect();
    assert_eq!(focus, ["Patient/p4"]);
    let delivered = wait_until_async(Duration::from_secs(10), || async {
        status_value(&app.get(path).await.json(), "messagesDelivered") == json!(3)
    })
    .await;
    assert!(delivered, "{}", app.get(path).await.text);
}
