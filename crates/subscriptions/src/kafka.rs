//! Publishing to Kafka (docs/subscriptions.md, "Kafka"): one idempotent
//! producer per destination (`acks=all`, librdkafka through `rdkafka`),
//! built from the destination's parameters and the credentials read at
//! the moment of use. A rotated credential gives a different fingerprint,
//! and the next send builds a new producer with it; an authentication
//! failure ends the send at once (the client context sees it) instead of
//! waiting out the delivery timeout, so `$status` and the metrics show it
//! and the notifications stay queued until the credential is fixed.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use secrecy::{ExposeSecret, SecretString};

use crate::destination::Kafka;
use crate::stats::Stats;

/// The credentials of one send, read from the destination or the vault.
pub(crate) struct Credentials {
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub key: Option<SecretString>,
    /// The client's certificates, when the key's PEM carries them.
    pub certificate: Option<String>,
}

impl Credentials {
    /// A digest that changes when a credential does (kept in memory only,
    /// to tell whether the producer must be built again).
    fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.username.hash(&mut hasher);
        self.password
            .as_ref()
            .map(|p| p.expose_secret())
            .hash(&mut hasher);
        self.key
            .as_ref()
            .map(|k| k.expose_secret())
            .hash(&mut hasher);
        self.certificate.hash(&mut hasher);
        hasher.finish()
    }
}

/// Splits a PEM text into its private key blocks and its certificate
/// blocks (RFC 7468 encapsulation boundaries), each set joined again.
pub(crate) fn split_pem(text: &str) -> (String, String) {
    let (mut key, mut certificates) = (String::new(), String::new());
    let mut current: Option<bool> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some(label == "CERTIFICATE");
        }
        match current {
            Some(true) => {
                certificates.push_str(line);
                certificates.push('\n');
            }
            Some(false) => {
                key.push_str(line);
                key.push('\n');
            }
            None => {}
        }
        if line.starts_with("-----END ") {
            current = None;
        }
    }
    (key, certificates)
}

/// One notification as a Kafka message.
pub(crate) struct Message {
    /// `ResourceType/id`: the changes of one resource go to one partition,
    /// in order.
    pub key: String,
    pub payload: String,
    pub timestamp_ms: i64,
}

/// Sees what the client reports between sends: errors go to the log and to
/// `$status`, and an authentication failure ends the send in progress (one
/// reported before a send began does not end it).
struct Watch {
    destination: String,
    stats: Arc<Stats>,
    auth: Arc<AuthFailures>,
}

/// Authentication failures the client reported: how many, and a signal for
/// the send waiting meanwhile.
#[derive(Default)]
struct AuthFailures {
    count: AtomicU64,
    signal: tokio::sync::Notify,
}

fn is_auth_failure(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

impl ClientContext for Watch {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // librdkafka's own lines name brokers and states, never a credential.
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(destination = %self.destination, facility, message, "kafka client");
            }
            _ => {
                tracing::debug!(destination = %self.destination, facility, message, "kafka client");
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let message = format!("Kafka: {reason}");
        tracing::warn!(destination = %self.destination, error = %error, %reason, "kafka client error");
        if is_auth_failure(&error) {
            self.stats.noticed(message);
            self.auth.count.fetch_add(1, Ordering::SeqCst);
            self.auth.signal.notify_waiters();
        } else if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.stats
                .noticed("Kafka: no broker of bootstrapServers can be reached".into());
        }
    }
}

/// The producer of one version of a destination with one set of
/// credentials.
pub(crate) struct Publisher {
    version: i64,
    fingerprint: u64,
    producer: Option<FutureProducer<Watch>>,
    stats: Arc<Stats>,
    auth: Arc<AuthFailures>,
}

impl Publisher {
    /// Whether this producer fits the destination's version and the
    /// credentials read now.
    pub fn fits(&self, version: i64, credentials: &Credentials) -> bool {
        self.version == version && self.fingerprint == credentials.fingerprint()
    }

    /// Builds the producer; the error says which setting the client
    /// refused, never a credential.
    pub fn new(
        id: &str,
        version: i64,
        kafka: &Kafka,
        credentials: &Credentials,
        stats: Arc<Stats>,
    ) -> Result<Publisher, String> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &kafka.servers)
            .set("security.protocol", kafka.protocol)
            // At least once, in order per partition, no duplicates from
            // the producer's own retries.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("client.id", format!("fhirbox-{id}"))
            // Kafka's own default (librdkafka's is 300 s).
            .set("message.timeout.ms", "120000")
            // Send what is queued without waiting for fuller batches.
            .set("linger.ms", "1")
            .set("log_level", "6");
        for (name, value) in &kafka.settings {
            config.set(*name, value);
        }
        if let Some(mechanism) = &kafka.mechanism {
            config.set("sasl.mechanism", mechanism);
        }
        if let Some(username) = &credentials.username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &credentials.password {
            config.set("sasl.password", password.expose_secret());
        }
        if let Some(key) = &credentials.key {
            config.set("ssl.key.pem", key.expose_secret());
        }
        if let Some(certificate) = credentials
            .certificate
            .as_ref()
            .or(kafka.certificate.as_ref())
        {
            config.set("ssl.certificate.pem", certificate);
        }
        if let Some(ca) = &kafka.ca {
            config.set("ssl.ca.pem", ca);
        }
        let auth = Arc::new(AuthFailures::default());
        let watch = Watch {
            destination: id.to_owned(),
            stats: stats.clone(),
            auth: auth.clone(),
        };
        let producer: FutureProducer<Watch> =
            config.create_with_context(watch).map_err(|e| match e {
                // librdkafka names the setting it refused; a credential is
                // never in such a message (any text is a valid password).
                KafkaError::ClientConfig(_, description, key, _) => {
                    format!("the Kafka client refused {key}: {description}")
                }
                KafkaError::ClientCreation(reason) => {
                    format!("the Kafka client could not be created: {reason}")
                }
                _ => "the Kafka client could not be created".to_owned(),
            })?;
        Ok(Publisher {
            version,
            fingerprint: credentials.fingerprint(),
            producer: Some(producer),
            stats,
            auth,
        })
    }

    /// Publishes `messages` to the destination's topic, in order, and waits
    /// until the broker acknowledged every one (`acks=all`). Any failure
    /// fails the whole send: the caller sends them all again (at least once).
    pub async fn publish(&self, kafka: &Kafka, messages: &[Message]) -> Result<(), String> {
        let producer = self.producer.as_ref().ok_or("the Kafka client is closed")?;
        // Authentication failures from now on end this send.
        let failures = self.auth.count.load(Ordering::SeqCst);
        let failed = self.auth.signal.notified();
        tokio::pin!(failed);
        failed.as_mut().enable();
        let auth_error = || {
            self.stats
                .last_error()
                .map(|(message, _)| message)
                .unwrap_or_else(|| "Kafka: authentication failed".to_owned())
        };
        let headers = OwnedHeaders::new().insert(KafkaHeader {
            key: "content-type",
            value: Some("application/fhir+json"),
        });
        let room_until = tokio::time::Instant::now() + Duration::from_millis(kafka.max_block_ms);
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(messages.len());
        for message in messages {
            loop {
                let record = FutureRecord::to(&kafka.topic)
                    .key(&message.key)
                    .payload(&message.payload)
                    .timestamp(message.timestamp_ms)
                    .headers(headers.clone());
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                        if tokio::time::Instant::now() < room_until =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => return Err(describe(&e)),
                }
            }
        }
        if self.auth.count.load(Ordering::SeqCst) != failures {
            return Err(auth_error());
        }
        let acknowledged = async {
            for delivery in pending {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(describe(&e)),
                    Err(_) => return Err("the Kafka client stopped".to_owned()),
                }
            }
            Ok(())
        };
        tokio::select! {
            result = acknowledged => result,
            () = failed => Err(auth_error()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Closing a producer purges its queue and joins its thread: off
        // the runtime's threads.
        if let Some(producer) = self.producer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || drop(producer));
                }
                Err(_) => drop(producer),
            }
        }
    }
}

/// What a failed send says: the client's error, never a payload.
fn describe(error: &KafkaError) -> String {
    match error {
        KafkaError::MessageProduction(code) => match code {
            RDKafkaErrorCode::MessageTimedOut => {
                "Kafka: the broker did not acknowledge within deliveryTimeoutMs".to_owned()
            }
            RDKafkaErrorCode::QueueFull => {
                "Kafka: the producer's queue stayed full for maxBlockMs".to_owned()
            }
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                "Kafka: the broker has no such topic (kafkaTopic)".to_owned()
            }
            RDKafkaErrorCode::MessageSizeTooLarge => {
                "Kafka: a notification is larger than maxRequestSize or the broker allows"
                    .to_owned()
            }
            other => format!("Kafka: {other}"),
        },
        other => format!("Kafka: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::split_pem;

    #[test]
    fn a_key_file_splits_into_its_key_and_its_certificates() {
        let text = "junk\n-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n";
        let (key, certificates) = split_pem(text);
        assert_eq!(
            key,
            "-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(certificates.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(!certificates.contains("AAA") && certificates.contains("CCC"));
        let (key, certificates) =
            split_pem("-----BEGIN EC PRIVATE KEY-----\nK\n-----END EC PRIVATE KEY-----");
        assert!(key.contains('K') && certificates.is_empty());
    }
}
