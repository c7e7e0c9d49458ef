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

/// The tansu binary the tests run: `tansu` keeps topics in memory,
/// `tansu-sasl` (built with SQLite storage) keeps SCRAM users too.
fn tansu(name: &str) -> std::path::PathBuf {
    let variable = if name == "tansu" {
        "FHIRBOX_TEST_TANSU"
    } else {
        "FHIRBOX_TEST_TANSU_SASL"
    };
    if let Some(path) = std::env::var_os(variable) {
        return path.into();
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/tools")
        .join(name);
    assert!(
        path.exists(),
        "the Kafka tests need the tansu broker at {}: run scripts/kafka-broker.sh (scripts/test.sh does) or set {variable}",
        path.display()
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

/// A tansu broker (memory storage) on a port of its own; with TLS, socat
/// in front of it (tansu speaks plaintext only) on the advertised port.
pub struct Broker {
    child: Option<Child>,
    tls: Option<Child>,
    /// Where tansu listens.
    pub port: u16,
    /// Where clients connect (the TLS port when there is one).
    advertised: u16,
    /// The SQLite storage of a broker with SCRAM users (`None`: memory).
    storage: Option<tempfile::TempDir>,
    /// Whether clients must log in (SASL/SCRAM).
    authenticate: bool,
}

/// Waits until something listens on `port`.
async fn listening(port: u16) -> bool {
    wait_until_async(Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

impl Broker {
    pub async fn start() -> Broker {
        let port = free_port();
        let mut broker = Broker {
            child: None,
            tls: None,
            port,
            advertised: port,
            storage: None,
            authenticate: false,
        };
        broker.up().await;
        broker
    }

    /// A broker that requires SASL/SCRAM logins (SQLite storage), with
    /// `users` (SCRAM-SHA-256) and one-partition `topics` created first;
    /// with `pki`, reached through TLS (no client certificate asked).
    pub async fn start_sasl(users: &[(&str, &str)], topics: &[&str], pki: Option<&Pki>) -> Broker {
        let mut broker = Broker {
            child: None,
            tls: None,
            port: free_port(),
            advertised: free_port(),
            storage: Some(tempfile::tempdir().unwrap()),
            authenticate: false,
        };
        broker.up().await;
        for (name, password) in users {
            broker.create_user(name, password);
        }
        for topic in topics {
            broker.create_topic(topic);
        }
        broker.down();
        broker.authenticate = true;
        broker.up().await;
        match pki {
            Some(pki) => broker.tls(pki, false).await,
            None => broker.plain_proxy().await,
        }
        broker
    }

    /// Changes a user's password (the broker restarts without logins for
    /// the change, then with them again).
    pub async fn set_password(&mut self, name: &str, password: &str) {
        self.down();
        self.authenticate = false;
        self.up().await;
        self.create_user(name, password);
        self.down();
        self.authenticate = true;
        self.up().await;
    }

    fn create_user(&self, name: &str, password: &str) {
        let status = Command::new(tansu("tansu-sasl"))
            .args([
                "user",
                "create",
                name,
                password,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--mechanism",
                "scram256",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("tansu user create runs");
        assert!(status.success(), "tansu user create {name}: {status}");
    }

    /// socat forwarding the advertised port to tansu's, without TLS.
    async fn plain_proxy(&mut self) {
        let proxy = Command::new("socat")
            .arg(format!(
                "TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork",
                self.advertised
            ))
            .arg(format!("TCP:127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts (apt-get install socat)");
        self.tls = Some(proxy);
        assert!(listening(self.advertised).await, "socat did not listen");
    }

    /// A broker reached through TLS that asks for a client certificate
    /// signed by `pki`'s CA (mutual TLS).
    pub async fn start_tls(pki: &Pki) -> Broker {
        let mut broker = Broker {
            child: None,
            tls: None,
            port: free_port(),
            advertised: free_port(),
            storage: None,
            authenticate: false,
        };
        broker.up().await;
        broker.tls(pki, true).await;
        broker
    }

    /// socat terminating TLS on the advertised port (asking for a client
    /// certificate of `pki`'s CA when `verify`) in front of tansu.
    async fn tls(&mut self, pki: &Pki, verify: bool) {
        let dir = pki.dir.path();
        let tls = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify={}",
                self.advertised,
                dir.join("broker.pem").display(),
                dir.join("broker.key").display(),
                dir.join("ca.pem").display(),
                u8::from(verify),
            ))
            .arg(format!("TCP:127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts (apt-get install socat)");
        self.tls = Some(tls);
        assert!(listening(self.advertised).await, "socat did not listen");
    }

    /// `host:port` for `bootstrapServers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// Starts the broker process (again, on the same port) and waits until
    /// it accepts connections.
    pub async fn up(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let mut command = match &self.storage {
            None => {
                let mut command = Command::new(tansu("tansu"));
                command.args(["broker", "--storage-engine", "memory://tansu/"]);
                command
            }
            Some(dir) => {
                // The SQLite file is named relative to the working directory.
                let mut command = Command::new(tansu("tansu-sasl"));
                command.current_dir(dir.path()).args([
                    "broker",
                    "--storage-engine",
                    "sqlite://tansu.db",
                ]);
                if self.authenticate {
                    command.arg("--authentication");
                }
                command
            }
        };
        let child = command
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        assert!(
            listening(self.port).await,
            "tansu did not listen on {} within 30 s",
            self.port
        );
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
        let binary = if self.storage.is_some() {
            "tansu-sasl"
        } else {
            "tansu"
        };
        let status = Command::new(tansu(binary))
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
        self.read_with(topic, count, &[]).await
    }

    /// Reads partition 0 of `topic` until `count` different keys arrived
    /// (or 60 s passed): the keys in the order of their first arrival, and
    /// how many messages were read in all.
    pub async fn first_keys(&self, topic: &str, count: usize) -> (Vec<String>, usize) {
        let consumer = self.consumer(topic, &[]);
        tokio::task::spawn_blocking(move || {
            let (mut keys, mut read) = (Vec::<String>::new(), 0);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while keys.len() < count && std::time::Instant::now() < deadline {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                read += 1;
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            (keys, read)
        })
        .await
        .unwrap()
    }

    /// A consumer of partition 0 of `topic` from its beginning, with more
    /// settings (TLS, SASL). The partition is assigned directly: a group
    /// join is slow.
    fn consumer(&self, topic: &str, settings: &[(&str, String)]) -> BaseConsumer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.address())
            .set("group.id", "fhirbox-tests")
            .set("enable.auto.commit", "false");
        for (name, value) in settings {
            config.set(*name, value);
        }
        let consumer: BaseConsumer = config.create().expect("a consumer");
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&partitions).unwrap();
        consumer
    }

    /// [`Broker::read`] with more consumer settings (TLS, SASL).
    pub async fn read_with(
        &self,
        topic: &str,
        count: usize,
        settings: &[(&str, String)],
    ) -> Vec<(String, String, Value)> {
        let consumer = self.consumer(topic, settings);
        tokio::task::spawn_blocking(move || {
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
        if let Some(mut tls) = self.tls.take() {
            let _ = tls.kill();
            let _ = tls.wait();
        }
    }
}

/// Test certificates, made with the openssl command: a CA, the broker's
/// certificate for 127.0.0.1, and client certificates.
pub struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.authority("ca");
        pki.leaf("ca", "broker", "127.0.0.1");
        pki
    }

    /// A self-signed CA named `name` (`name.pem`, `name.key`).
    pub fn authority(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    /// A certificate for `cn` signed by CA `ca`: (private key, certificate).
    pub fn leaf(&self, ca: &str, name: &str, cn: &str) -> (String, String) {
        let dir = self.dir.path();
        std::fs::write(
            dir.join(format!("{name}.ext")),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        (
            self.read(&format!("{name}.key")),
            self.read(&format!("{name}.pem")),
        )
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap()
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
    // A send fails (deliveryTimeoutMs), counted, before the broker is back.
    let failed_attempt =
        "fhirbox_subscription_delivery_attempts_total{destination=\"patients\",result=\"failed\"}";
    let failing = wait_until_async(Duration::from_secs(20), || async {
        let status = app.get(path).await.json();
        status_value(&status, "lastErrorDetail")[0]["valueString"]
            .as_str()
            .is_some_and(|m| m.starts_with("Kafka: "))
            && status_value(&status, "messagesQueued") == json!(2)
            && app.get("/metrics").await.text.contains(failed_attempt)
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
    // A transaction the store rolls back (its second entry's version
    // check fails after the first entry was decided) hands nothing over.
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Patient/p5"},
         "resource": {"resourceType": "Patient", "id": "p5"}},
        {"request": {"method": "PUT", "url": "Patient/p1", "ifMatch": "W/\"99\""},
         "resource": {"resourceType": "Patient", "id": "p1"}}]});
    let r = app.post("/fhir", &failing).await;
    assert_eq!(r.status, 412, "{}", r.text);
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

backend_tests!(per_backend: a_client_key_from_the_vault_rotates_and_never_shows);

/// Mutual TLS with `sslKeystoreKey` from the vault (the key, then its
/// certificate, in one file, as a vault issues them): a key the broker does
/// not trust fails delivery and keeps the notification; the next good key
/// delivers it, with no restart; no key appears anywhere fhirbox speaks.
async fn a_client_key_from_the_vault_rotates_and_never_shows(backend: crate::helpers::Backend) {
    use crate::vault::{reference, Vault};
    let pki = Pki::new();
    let (first_key, first_cert) = pki.leaf("ca", "first", "fhirbox");
    let (second_key, second_cert) = pki.leaf("ca", "second", "fhirbox");
    pki.authority("rogue");
    let (rogue_key, rogue_cert) = pki.leaf("rogue", "intruder", "fhirbox");
    let (reader_key, reader_cert) = pki.leaf("ca", "reader", "reader");
    let broker = Broker::start_tls(&pki).await;
    broker.create_topic("fhir.secure");

    let vault = Vault::new(&[("kafka-client", &format!("{first_key}{first_cert}"))]);
    vault.write_config(
        &json!({"secret": {"kafka-client": {"path": vault.secret_path("kafka-client"),
        "scope": ["AidboxTopicDestination/secure"]}}}),
    );
    let app = crate::vault::spawn_with_vault(backend, &vault).await;
    subscribe(
        &app,
        "secure",
        "kafka-at-least-once",
        json!([
            {"name": "kafkaTopic", "valueString": "fhir.secure"},
            {"name": "bootstrapServers", "valueString": broker.address()},
            {"name": "securityProtocol", "valueString": "SSL"},
            {"name": "sslKeystoreKey", "_valueString": reference("kafka-client")},
            {"name": "sslTruststoreCertificates", "valueString": pki.read("ca.pem")},
            {"name": "deliveryTimeoutMs", "valueInteger": 3000}
        ]),
    )
    .await;
    let reader = [
        ("security.protocol", "ssl".to_owned()),
        ("ssl.ca.pem", pki.read("ca.pem")),
        ("ssl.certificate.pem", reader_cert),
        ("ssl.key.pem", reader_key),
    ];
    app.put_patient("p1", "One").await;
    let got = broker.read_with("fhir.secure", 1, &reader).await;
    assert_eq!(got.len(), 1);
    assert_eq!(event(&got[0].2).0, "Patient/p1");

    // A key and certificate of another CA: the broker refuses the client.
    let rogue = format!("{rogue_key}{rogue_cert}");
    vault.rotate("kafka-client", rogue.as_bytes());
    assert!(
        crate::helpers::served_secret_size_is(&app, rogue.trim_end().len()).await,
        "{} {}",
        rogue.len(),
        app.get("/admin/secrets").await.text
    );
    app.put_patient("p2", "Two").await;
    let path = "/fhir/AidboxTopicDestination/secure/$status";
    let failing = wait_until_async(Duration::from_secs(20), || async {
        let status = app.get(path).await.json();
        status_value(&status, "lastErrorDetail")[0]["valueString"]
            .as_str()
            .is_some_and(|m| m.starts_with("Kafka: "))
            && status_value(&status, "messagesQueued") == json!(1)
    })
    .await;
    let failing_status = app.get(path).await.text;
    assert!(failing, "{failing_status}");

    // Rotated to a good key: the queued notification goes out.
    let second = format!("{second_key}{second_cert}");
    vault.rotate("kafka-client", second.as_bytes());
    let got = broker.read_with("fhir.secure", 2, &reader).await;
    let focus: Vec<String> = got.iter().map(|m| event(&m.2).0).collect();
    assert_eq!(focus, ["Patient/p1", "Patient/p2"]);

    // No key is in anything fhirbox answers, logs or stores.
    let bodies = [
        failing_status,
        app.get(path).await.text,
        app.get("/fhir/AidboxTopicDestination/secure").await.text,
        app.get("/admin/secrets").await.text,
        app.get("/metrics").await.text,
    ];
    // A line from the middle of each key's base64.
    let needles: Vec<&str> = [&first_key, &second_key, &rogue_key]
        .iter()
        .map(|key| {
            let lines: Vec<&str> = key.lines().collect();
            lines[lines.len() / 2]
        })
        .collect();
    crate::helpers::assert_nowhere(&app, &needles, &bodies);
}

fhirbox_test_support::postgres_variant! {
    /// Two replicas (real processes) on one PostgreSQL share the outbox of a
    /// Kafka destination; one is killed (SIGKILL) halfway through the
    /// changes: every change reaches Kafka, in order of first arrival.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_and_a_kill_9_deliver_every_change_to_kafka_in_order() {
        use crate::subscriptions::Process;
        let broker = Broker::start().await;
        broker.create_topic("fhir.replicas");
        let db = crate::helpers::TestDb::create(crate::helpers::Backend::Postgres).await;
        let mut a = Process::start(&db.url()).await;
        let b = Process::start(&db.url()).await;
        a.subscribe_to(
            "kafka-at-least-once",
            json!([{"name": "kafkaTopic", "valueString": "fhir.replicas"},
                {"name": "bootstrapServers", "valueString": broker.address()}]),
        )
        .await;
        let known = wait_until_async(Duration::from_secs(10), || async {
            b.get("/fhir/AidboxTopicDestination/patients/$status").await == 200
        })
        .await;
        assert!(known);
        let ids: Vec<String> = (0..40).map(|i| format!("p{i:02}")).collect();
        for (i, id) in ids.iter().enumerate() {
            if i == 20 {
                a.kill();
            }
            if i % 2 == 0 && i < 20 {
                a.put_patient(id).await;
            } else {
                b.put_patient(id).await;
            }
        }
        let (keys, read) = broker.first_keys("fhir.replicas", ids.len()).await;
        let expected: Vec<String> = ids.iter().map(|id| format!("Patient/{id}")).collect();
        assert_eq!(keys, expected, "{read} messages read");
    }
}

backend_tests!(per_backend: a_rotated_jaas_file_and_wrong_credentials_over_sasl_ssl);

/// SCRAM-SHA-256 over TLS with the JAAS line from the vault: the broker
/// changes the password, so fhirbox's login fails (`$status` says so, the
/// notification stays queued); the vault file is rotated to the new
/// password and the notification goes out, with no restart. Neither
/// password appears anywhere fhirbox answers, logs or stores.
async fn a_rotated_jaas_file_and_wrong_credentials_over_sasl_ssl(backend: crate::helpers::Backend) {
    use crate::vault::{reference, Vault};
    const FIRST: &str = "first-kafka-pass-5c1e";
    const SECOND: &str = "second-kafka-pass-90ad";
    const READER: &str = "reader-pass-77";
    let jaas = |password: &str| {
        format!(
            r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="fhirbox" password="{password}";"#
        )
    };
    let pki = Pki::new();
    let mut broker = Broker::start_sasl(
        &[("fhirbox", FIRST), ("reader", READER)],
        &["fhir.sasl"],
        Some(&pki),
    )
    .await;
    let vault = Vault::new(&[("kafka-jaas", &jaas(FIRST))]);
    vault.write_config(
        &json!({"secret": {"kafka-jaas": {"path": vault.secret_path("kafka-jaas"),
        "scope": ["AidboxTopicDestination/sasl"]}}}),
    );
    let app = crate::vault::spawn_with_vault(backend, &vault).await;
    subscribe(
        &app,
        "sasl",
        "kafka-at-least-once",
        json!([
            {"name": "kafkaTopic", "valueString": "fhir.sasl"},
            {"name": "bootstrapServers", "valueString": broker.address()},
            {"name": "securityProtocol", "valueString": "SASL_SSL"},
            {"name": "saslMechanism", "valueString": "SCRAM-SHA-256"},
            {"name": "saslJaasConfig", "_valueString": reference("kafka-jaas")},
            {"name": "sslTruststoreCertificates", "valueString": pki.read("ca.pem")},
            {"name": "deliveryTimeoutMs", "valueInteger": 5000}
        ]),
    )
    .await;
    let reader = [
        ("security.protocol", "sasl_ssl".to_owned()),
        ("sasl.mechanism", "SCRAM-SHA-256".to_owned()),
        ("sasl.username", "reader".to_owned()),
        ("sasl.password", READER.to_owned()),
        ("ssl.ca.pem", pki.read("ca.pem")),
    ];
    app.put_patient("p1", "One").await;
    let got = broker.read_with("fhir.sasl", 1, &reader).await;
    assert_eq!(got.len(), 1, "nothing read over SASL_SSL");
    assert_eq!(event(&got[0].2).0, "Patient/p1");

    // The broker's password changes: fhirbox's login is refused.
    broker.set_password("fhirbox", SECOND).await;
    app.put_patient("p2", "Two").await;
    let path = "/fhir/AidboxTopicDestination/sasl/$status";
    let failed_attempt =
        "fhirbox_subscription_delivery_attempts_total{destination=\"sasl\",result=\"failed\"}";
    let failing = wait_until_async(Duration::from_secs(30), || async {
        let status = app.get(path).await.json();
        status_value(&status, "lastErrorDetail")[0]["valueString"]
            .as_str()
            .is_some_and(|m| m.starts_with("Kafka: ") && m.to_lowercase().contains("auth"))
            && status_value(&status, "messagesQueued") == json!(1)
            && app.get("/metrics").await.text.contains(failed_attempt)
    })
    .await;
    let failing_status = app.get(path).await.text;
    assert!(failing, "{failing_status}");
    let metrics = app.get("/metrics").await.text;

    // The vault file is rotated to the new password: delivery resumes.
    vault.rotate("kafka-jaas", jaas(SECOND).as_bytes());
    let got = broker.read_with("fhir.sasl", 2, &reader).await;
    let focus: Vec<String> = got.iter().map(|m| event(&m.2).0).collect();
    assert_eq!(focus, ["Patient/p1", "Patient/p2"]);
    let drained = wait_until_async(Duration::from_secs(10), || async {
        status_value(&app.get(path).await.json(), "messagesQueued") == json!(0)
    })
    .await;
    assert!(drained);

    let bodies = [
        failing_status,
        metrics,
        app.get(path).await.text,
        app.get("/fhir/AidboxTopicDestination/sasl").await.text,
        app.get("/admin/secrets").await.text,
    ];
    crate::helpers::assert_nowhere(&app, &[FIRST, SECOND], &bodies);
}
