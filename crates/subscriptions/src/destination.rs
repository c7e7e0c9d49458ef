//! `AidboxTopicDestination` resources (Aidbox's shape): where a topic's
//! notifications go. Every write is checked here (docs/subscriptions.md),
//! so a stored destination can be delivered to: a known `kind`, the
//! parameters that kind takes with the value types Aidbox documents,
//! nothing contradictory (SASL without credentials, a client key without
//! TLS). Secret-capable parameters (`saslJaasConfig`, `sslKeystoreKey`,
//! `header`) may be vault references in `_valueString`; literal ones are
//! checked now, referenced ones when delivery reads them.

use fhirbox_fhir::secret_refs::referenced_name;
use serde_json::{Map, Value};

use crate::jaas;

/// Delivery kinds fhirbox knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebhookAtLeastOnce,
    KafkaAtLeastOnce,
    KafkaBestEffort,
}

const KINDS: &[(&str, Kind)] = &[
    ("webhook-at-least-once", Kind::WebhookAtLeastOnce),
    ("kafka-at-least-once", Kind::KafkaAtLeastOnce),
    ("kafka-best-effort", Kind::KafkaBestEffort),
];

/// What a notification carries of the changed resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    FullResource,
    IdOnly,
    Empty,
}

/// A checked destination.
#[derive(Debug, Clone)]
pub struct Destination {
    pub topic: String,
    pub kind: Kind,
    pub active: bool,
    pub content: Content,
    /// The webhook's settings (kind `webhook-at-least-once`).
    pub webhook: Option<Webhook>,
    /// The Kafka producer's settings (the `kafka-*` kinds).
    pub kafka: Option<Kafka>,
}

/// Where and how a Kafka destination publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kafka {
    pub topic: String,
    /// `host:port` pairs joined by commas, listener prefixes left out.
    pub servers: String,
    /// librdkafka's `security.protocol`: `plaintext`, `ssl`,
    /// `sasl_plaintext` or `sasl_ssl`.
    pub protocol: &'static str,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (SASL protocols only).
    pub mechanism: Option<String>,
    /// `saslJaasConfig`: the SASL login.
    pub jaas: Option<Credential>,
    /// `sslKeystoreKey`: the client's PEM private key.
    pub key: Option<Credential>,
    /// `sslKeystoreCertificateChain`: the client's PEM certificate(s).
    pub certificate: Option<String>,
    /// `sslTruststoreCertificates`: the CA certificates (PEM) the broker's
    /// certificate must chain to; the system's roots when absent.
    pub ca: Option<String>,
    /// The producer settings given, by librdkafka's names.
    pub settings: Vec<(&'static str, String)>,
    /// `maxBlockMs`: how long a send may wait for room in the producer's
    /// queue (Kafka's default 60 s).
    pub max_block_ms: u64,
}

/// A secret-capable parameter: as written, or a vault secret's name.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Literal(String),
    Vault(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Literal(_) => write!(f, "Literal(..)"),
            Credential::Vault(secret) => write!(f, "Vault({secret:?})"),
        }
    }
}

/// Where and how a webhook destination posts, with Aidbox's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub endpoint: String,
    /// Seconds a delivery may take (default 30).
    pub timeout_secs: u64,
    /// Seconds an idle connection is kept; `None`: a connection per
    /// delivery (`keepAlive` -1). Default 120.
    pub keep_alive_secs: Option<u64>,
    /// Most notifications one request carries (default 20).
    pub max_batch: usize,
    /// The `header` parameters, in order.
    pub headers: Vec<Header>,
}

/// A webhook `header` parameter.
#[derive(Clone, PartialEq, Eq)]
pub enum Header {
    /// Written in the resource: name and value.
    Literal(String, String),
    /// A vault secret whose value is the whole line, `Name: value`,
    /// resolved at each delivery.
    Vault(String),
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Header::Literal(name, _) => write!(f, "Literal({name:?}, ..)"),
            Header::Vault(secret) => write!(f, "Vault({secret:?})"),
        }
    }
}

/// The value types a parameter may carry.
#[derive(Clone, Copy)]
enum Type {
    Text,
    Url,
    Integer,
    UnsignedInt,
}

impl Type {
    fn element(self) -> &'static str {
        match self {
            Type::Text => "valueString",
            Type::Url => "valueUrl",
            Type::Integer => "valueInteger",
            Type::UnsignedInt => "valueUnsignedInt",
        }
    }
}

/// One parameter a kind takes: its name, type, whether it may repeat, and
/// whether it is secret-capable.
struct Spec {
    name: &'static str,
    kind: Type,
    repeats: bool,
    secret: bool,
}

const fn spec(name: &'static str, kind: Type) -> Spec {
    Spec {
        name,
        kind,
        repeats: false,
        secret: false,
    }
}

/// A secret-capable text parameter (a literal, or a vault reference).
const fn secret(name: &'static str) -> Spec {
    Spec {
        secret: true,
        ..spec(name, Type::Text)
    }
}

const WEBHOOK: &[Spec] = &[
    spec("endpoint", Type::Url),
    spec("timeout", Type::UnsignedInt),
    spec("keepAlive", Type::Integer),
    spec("maxMessagesInBatch", Type::UnsignedInt),
    Spec {
        repeats: true,
        ..secret("header")
    },
];

const KAFKA: &[Spec] = &[
    spec("kafkaTopic", Type::Text),
    spec("bootstrapServers", Type::Text),
    spec("securityProtocol", Type::Text),
    spec("saslMechanism", Type::Text),
    secret("saslJaasConfig"),
    secret("sslKeystoreKey"),
    // fhirbox's names (Kafka's own settings' names) for what Aidbox lacks:
    // the client certificate that goes with sslKeystoreKey, and the CA
    // certificates the broker's certificate must chain to.
    spec("sslKeystoreCertificateChain", Type::Text),
    spec("sslTruststoreCertificates", Type::Text),
    spec("compressionType", Type::Text),
    spec("batchSize", Type::Integer),
    spec("deliveryTimeoutMs", Type::Integer),
    spec("maxBlockMs", Type::Integer),
    spec("maxRequestSize", Type::Integer),
    spec("requestTimeoutMs", Type::Integer),
];

/// A parameter's value: a literal, or a vault reference (by name).
enum Given<'a> {
    Literal(&'a Value),
    Secret(&'a str),
}

/// The parameters of a destination, by name, after the shape checks.
struct Params<'a> {
    values: Vec<(&'static str, Given<'a>)>,
}

impl<'a> Params<'a> {
    fn text(&self, name: &str) -> Option<&'a str> {
        self.values.iter().find_map(|(n, v)| match v {
            Given::Literal(Value::String(s)) if *n == name => Some(s.as_str()),
            _ => None,
        })
    }

    fn present(&self, name: &str) -> bool {
        self.values.iter().any(|(n, _)| *n == name)
    }

    fn all_text<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.values.iter().filter_map(move |(n, v)| match v {
            Given::Literal(Value::String(s)) if *n == name => Some(s.as_str()),
            _ => None,
        })
    }

    fn credential(&self, name: &str) -> Option<Credential> {
        self.values.iter().find_map(|(n, v)| match v {
            _ if *n != name => None,
            Given::Literal(Value::String(s)) => Some(Credential::Literal(s.clone())),
            Given::Secret(secret) => Some(Credential::Vault((*secret).to_owned())),
            Given::Literal(_) => None,
        })
    }

    fn number(&self, name: &str) -> Option<i64> {
        self.values.iter().find_map(|(n, v)| match v {
            // A number beyond i64 is out of every range checked here.
            Given::Literal(value) if *n == name => {
                value.as_i64().or_else(|| value.as_u64().map(|_| i64::MAX))
            }
            _ => None,
        })
    }
}

fn read_params<'a>(
    fields: &'a Map<String, Value>,
    specs: &[Spec],
    kind: &str,
) -> Result<Params<'a>, String> {
    let list = match fields.get("parameter") {
        None | Some(Value::Null) => return Ok(Params { values: Vec::new() }),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("parameter must be an array of {name, value[x]}".into()),
    };
    let mut values: Vec<(&'static str, Given<'a>)> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let at = format!("parameter[{i}]");
        let Some(entry) = entry.as_object() else {
            return Err(format!("{at} must be an object"));
        };
        let Some(name) = entry.get("name").and_then(Value::as_str) else {
            return Err(format!("{at}.name is missing"));
        };
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            if name == "saslClientCallbackHandlerClass" {
                return Err(format!(
                    "{at}: saslClientCallbackHandlerClass names a Java class, which fhirbox cannot run; give the credentials in saslJaasConfig"
                ));
            }
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            let mut shown: String = name.chars().take(64).collect();
            if shown.len() < name.len() {
                shown.push('…');
            }
            return Err(format!(
                "{at}: {shown:?} is not a parameter of kind {kind}; it takes {}",
                known.join(", ")
            ));
        };
        if !spec.repeats && values.iter().any(|(n, _)| *n == spec.name) {
            return Err(format!("{at}: {name} is given twice"));
        }
        let element = spec.kind.element();
        let others: Vec<&String> = entry
            .keys()
            .filter(|k| k.starts_with("value") && k.as_str() != element)
            .collect();
        if let Some(other) = others.first() {
            return Err(format!("{at}: {name} takes {element}, not {other}"));
        }
        let reference = referenced_name(entry.get(&format!("_{element}")));
        let given = match (entry.get(element), reference) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{at}: {name} has both a literal value and a secret reference; keep one of them"
                ))
            }
            (None, Some(secret)) if spec.secret => Given::Secret(secret),
            (None, Some(_)) => {
                return Err(format!(
                    "{at}: {name} is not secret-capable; only saslJaasConfig, sslKeystoreKey and header may refer to a vault secret"
                ))
            }
            (Some(value), None) => {
                let fits = match spec.kind {
                    Type::Text | Type::Url => value.as_str().is_some_and(|s| !s.is_empty()),
                    Type::Integer => value.as_i64().is_some(),
                    Type::UnsignedInt => value.as_u64().is_some(),
                };
                if !fits {
                    return Err(format!("{at}: {name}.{element} has the wrong type"));
                }
                Given::Literal(value)
            }
            (None, None) => return Err(format!("{at}: {name} has no {element}")),
        };
        values.push((spec.name, given));
    }
    Ok(Params { values })
}

fn webhook(params: &Params<'_>) -> Result<Webhook, String> {
    let endpoint = params
        .text("endpoint")
        .ok_or("webhook-at-least-once needs the parameter endpoint (valueUrl)")?;
    let url = url::Url::parse(endpoint).map_err(|_| "endpoint is not an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("endpoint must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "endpoint must not carry credentials (they would be stored and shown in plain text)"
                .into(),
        );
    }
    if params
        .number("timeout")
        .is_some_and(|t| !(1..=300).contains(&t))
    {
        return Err("timeout must be 1 to 300 seconds".into());
    }
    if params.number("keepAlive").is_some_and(|k| k < -1) {
        return Err("keepAlive must be seconds, or -1 to close each connection".into());
    }
    if params
        .number("maxMessagesInBatch")
        .is_some_and(|m| !(1..=1000).contains(&m))
    {
        return Err("maxMessagesInBatch must be 1 to 1000".into());
    }
    for header in params.all_text("header") {
        let (name, _) = header_line(header)?;
        let lower = name.to_ascii_lowercase();
        // A literal header parameter is stored and shown as written: no credentials.
        if ["authorization", "proxy-authorization", "cookie"].contains(&lower.as_str())
            || ["token", "secret", "password", "api-key", "apikey"]
                .iter()
                .any(|word| lower.contains(word))
        {
            return Err(format!(
                "header {name} looks like a credential, and a literal header is stored and shown as written; keep the whole line (\"{name}: …\") in a vault secret and refer to it in _valueString (docs/subscriptions.md)"
            ));
        }
    }
    let positive = |name: &str, default: u64| {
        params
            .number(name)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(default)
    };
    Ok(Webhook {
        endpoint: endpoint.to_owned(),
        timeout_secs: positive("timeout", 30),
        keep_alive_secs: match params.number("keepAlive") {
            Some(-1) => None,
            other => Some(other.and_then(|n| u64::try_from(n).ok()).unwrap_or(120)),
        },
        max_batch: usize::try_from(positive("maxMessagesInBatch", 20)).unwrap_or(20),
        headers: params
            .values
            .iter()
            .filter(|(n, _)| *n == "header")
            .filter_map(|(_, given)| match given {
                Given::Literal(Value::String(line)) => header_line(line)
                    .ok()
                    .map(|(name, value)| Header::Literal(name.to_owned(), value.to_owned())),
                Given::Secret(secret) => Some(Header::Vault((*secret).to_owned())),
                Given::Literal(_) => None,
            })
            .collect(),
    })
}

/// A header line, `Name: value`, checked: the name a token (RFC 9110 §5.1),
/// one line without control characters, and not a header fhirbox sets
/// itself. The error never repeats the line (it may hold a credential).
pub fn header_line(line: &str) -> Result<(&str, &str), String> {
    let Some((name, value)) = line.split_once(':') else {
        return Err("header must be \"Name: value\"".into());
    };
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(
            "header must start with a field name (letters, digits, - and the like) and a colon"
                .into(),
        );
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("header must be one line of text, without control characters".into());
    }
    let lower = name.to_ascii_lowercase();
    // Framing and connection fields are the HTTP client's to set.
    if [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "content-type",
    ]
    .contains(&lower.as_str())
    {
        return Err(format!(
            "header {name} is set by fhirbox itself; leave it out"
        ));
    }
    Ok((name, value.trim()))
}

fn kafka(params: &Params<'_>) -> Result<Kafka, String> {
    let topic = params
        .text("kafkaTopic")
        .ok_or("a kafka destination needs the parameter kafkaTopic (valueString)")?;
    // Kafka's topic names: letters, digits, '.', '_', '-', at most 249.
    if topic.len() > 249
        || topic == "."
        || topic == ".."
        || !topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(
            "kafkaTopic must be a Kafka topic name: letters, digits, '.', '_' and '-', at most 249"
                .into(),
        );
    }
    let servers = params.text("bootstrapServers").ok_or(
        "a kafka destination needs the parameter bootstrapServers (valueString, host:port,…)",
    )?;
    let mut servers_seen: Vec<&str> = Vec::new();
    for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // An optional listener prefix (`SASL_SSL://`), as Kafka accepts.
        let server = server.split_once("://").map_or(server, |(_, rest)| rest);
        servers_seen.push(server);
        let fits = server.rsplit_once(':').is_some_and(|(host, port)| {
            let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
                None => {
                    !host.is_empty()
                        && host
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                }
            };
            let port_ok = !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p > 0);
            host_ok && port_ok
        });
        if !fits {
            return Err("bootstrapServers must be host:port pairs (port 1-65535, IPv6 in brackets) separated by commas".into());
        }
    }
    if servers_seen.is_empty() {
        return Err("bootstrapServers names no server".into());
    }
    let protocol = params.text("securityProtocol").unwrap_or("PLAINTEXT");
    let (sasl, tls, librdkafka_protocol) = match protocol {
        "PLAINTEXT" => (false, false, "plaintext"),
        "SSL" => (false, true, "ssl"),
        "SASL_PLAINTEXT" => (true, false, "sasl_plaintext"),
        "SASL_SSL" => (true, true, "sasl_ssl"),
        _ => {
            return Err(
                "securityProtocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL".into(),
            )
        }
    };
    let mechanism = params.text("saslMechanism");
    match (sasl, mechanism) {
        (true, None) => {
            return Err(format!(
                "securityProtocol {protocol} needs saslMechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            ))
        }
        (true, Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512")) => {}
        (true, Some(_)) => {
            return Err("saslMechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".into())
        }
        (false, Some(_)) => {
            return Err(format!(
                "saslMechanism is set but securityProtocol {protocol} does not use SASL"
            ))
        }
        (false, None) => {}
    }
    if sasl && !params.present("saslJaasConfig") {
        return Err(format!(
            "securityProtocol {protocol} needs saslJaasConfig (literal, or a vault reference in _valueString)"
        ));
    }
    if !sasl && params.present("saslJaasConfig") {
        return Err(format!(
            "saslJaasConfig is set but securityProtocol {protocol} does not use SASL"
        ));
    }
    if let Some(text) = params.text("saslJaasConfig") {
        let parsed = jaas::parse(text).map_err(|e| format!("saslJaasConfig {e}"))?;
        if !parsed.module.fits(mechanism) {
            return Err("saslJaasConfig's login module does not fit saslMechanism: PLAIN takes PlainLoginModule, SCRAM-SHA-256/512 take ScramLoginModule".into());
        }
    }
    for name in [
        "sslKeystoreKey",
        "sslKeystoreCertificateChain",
        "sslTruststoreCertificates",
    ] {
        if params.present(name) && !tls {
            return Err(format!(
                "{name} is set but securityProtocol {protocol} does not use TLS (use SSL or SASL_SSL)"
            ));
        }
    }
    // The client's certificate comes with its key: in
    // sslKeystoreCertificateChain, or after the key in the key's PEM (the
    // way a vault issues them, so both rotate together).
    let key_has_chain = params
        .text("sslKeystoreKey")
        .is_some_and(|key| key.contains("-----BEGIN CERTIFICATE-----"));
    let key_from_vault = matches!(
        params.credential("sslKeystoreKey"),
        Some(Credential::Vault(_))
    );
    if params.present("sslKeystoreCertificateChain") && !params.present("sslKeystoreKey") {
        return Err("sslKeystoreCertificateChain is set without sslKeystoreKey: the client's certificate needs its key".into());
    }
    if params.present("sslKeystoreKey")
        && !params.present("sslKeystoreCertificateChain")
        && !key_has_chain
        && !key_from_vault
    {
        return Err("sslKeystoreKey needs the client's certificate: in sslKeystoreCertificateChain, or after the key in the same PEM".into());
    }
    if let Some(key) = params.text("sslKeystoreKey") {
        if !(key.contains("-----BEGIN") && key.contains("PRIVATE KEY-----")) {
            return Err("sslKeystoreKey must be a PEM private key".into());
        }
        if key.contains("ENCRYPTED") {
            return Err("sslKeystoreKey is encrypted, and fhirbox takes no passphrase; send it unencrypted (it is masked on read) or keep it in the vault".into());
        }
    }
    for name in ["sslKeystoreCertificateChain", "sslTruststoreCertificates"] {
        if let Some(pem) = params.text(name) {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!("{name} must hold PEM certificates"));
            }
        }
    }
    if let Some(compression) = params.text("compressionType") {
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression) {
            return Err("compressionType must be none, gzip, snappy, lz4 or zstd".into());
        }
    }
    for name in [
        "batchSize",
        "deliveryTimeoutMs",
        "maxBlockMs",
        "maxRequestSize",
        "requestTimeoutMs",
    ] {
        if params
            .number(name)
            .is_some_and(|n| !(1..=i64::from(i32::MAX)).contains(&n))
        {
            return Err(format!("{name} must be a positive whole number"));
        }
    }
    // The ranges librdkafka accepts for the settings these become.
    if params
        .number("maxRequestSize")
        .is_some_and(|n| !(1000..=1_000_000_000).contains(&n))
    {
        return Err("maxRequestSize must be 1000 to 1000000000 bytes".into());
    }
    if params
        .number("requestTimeoutMs")
        .is_some_and(|n| n > 900_000)
    {
        return Err("requestTimeoutMs must be at most 900000 (15 minutes)".into());
    }
    if let (Some(batch), Some(request)) =
        (params.number("batchSize"), params.number("maxRequestSize"))
    {
        if batch > request {
            return Err("batchSize must not exceed maxRequestSize".into());
        }
    }
    let mut settings: Vec<(&'static str, String)> = Vec::new();
    if let Some(compression) = params.text("compressionType") {
        settings.push(("compression.type", compression.to_owned()));
    }
    // Kafka's producer settings and librdkafka's names for them.
    for (name, setting) in [
        ("batchSize", "batch.size"),
        ("deliveryTimeoutMs", "message.timeout.ms"),
        ("maxRequestSize", "message.max.bytes"),
        ("requestTimeoutMs", "request.timeout.ms"),
    ] {
        if let Some(n) = params.number(name) {
            settings.push((setting, n.to_string()));
        }
    }
    Ok(Kafka {
        topic: topic.to_owned(),
        servers: servers_seen.join(","),
        protocol: librdkafka_protocol,
        mechanism: mechanism.map(str::to_owned),
        jaas: params.credential("saslJaasConfig"),
        key: params.credential("sslKeystoreKey"),
        certificate: params
            .text("sslKeystoreCertificateChain")
            .map(str::to_owned),
        ca: params.text("sslTruststoreCertificates").map(str::to_owned),
        settings,
        max_block_ms: params
            .number("maxBlockMs")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(60_000),
    })
}

impl Destination {
    /// Reads a stored (or about-to-be-stored) destination; the error says
    /// what to fix, naming the element, and never echoes a value.
    pub fn parse(body: &Value) -> Result<Destination, String> {
        let Some(fields) = body.as_object() else {
            return Err("must be a JSON object".into());
        };
        let topic = match fields.get("topic") {
            Some(Value::String(topic)) if !topic.is_empty() => topic.clone(),
            _ => return Err("topic must be the url of an AidboxSubscriptionTopic".into()),
        };
        let kind_name = fields
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(kind) = KINDS.iter().find(|(n, _)| *n == kind_name).map(|(_, k)| *k) else {
            let known: Vec<&str> = KINDS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "kind must be one of {} (other Aidbox kinds are not delivered by fhirbox)",
                known.join(", ")
            ));
        };
        let active = match fields.get("status").and_then(Value::as_str) {
            None | Some("active") => true,
            Some("off") => false,
            Some(_) => return Err("status must be active or off".into()),
        };
        let content = match fields.get("content").and_then(Value::as_str) {
            None | Some("full-resource") => Content::FullResource,
            Some("id-only") => Content::IdOnly,
            Some("empty") => Content::Empty,
            Some(_) => return Err("content must be full-resource, id-only or empty".into()),
        };
        let (webhook, kafka) = match kind {
            Kind::WebhookAtLeastOnce => (
                Some(webhook(&read_params(fields, WEBHOOK, kind_name)?)?),
                None,
            ),
            Kind::KafkaAtLeastOnce | Kind::KafkaBestEffort => {
                (None, Some(kafka(&read_params(fields, KAFKA, kind_name)?)?))
            }
        };
        Ok(Destination {
            topic,
            kind,
            active,
            content,
            webhook,
            kafka,
        })
    }
}

/// The write rule of `AidboxTopicDestination` (rest's finalizer).
pub fn finalize(body: Value) -> Result<Value, fhirbox_store::Refusal> {
    Destination::parse(&body).map_err(|e| {
        fhirbox_store::Refusal::invalid(format!("AidboxTopicDestination: {e}"))
            .at("AidboxTopicDestination")
    })?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reference(name: &str) -> Value {
        json!({"extension": [
            {"url": fhirbox_fhir::secret_fields::DATA_ABSENT_REASON_URL, "valueCode": "masked"},
            {"url": fhirbox_fhir::secret_fields::SECRET_REFERENCE_URL, "valueString": name}]})
    }

    fn kafka(params: Value) -> Value {
        json!({"resourceType": "AidboxTopicDestination", "topic": "http://example.org/topics/patients",
            "kind": "kafka-at-least-once", "parameter": params})
    }

    fn problem(body: Value) -> String {
        Destination::parse(&body).unwrap_err()
    }

    const JAAS: &str = r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="fhirbox" password="kafka-pass";"#;

    #[test]
    fn good_destinations_parse() {
        let webhook = json!({"topic": "t", "kind": "webhook-at-least-once", "content": "id-only", "parameter": [
            {"name": "endpoint", "valueUrl": "https://hooks.example/fhir"},
            {"name": "timeout", "valueUnsignedInt": 10},
            {"name": "keepAlive", "valueInteger": -1},
            {"name": "header", "valueString": "X-Tenant: ward-7"},
            {"name": "header", "valueString": "X-Other: 1"}]});
        let parsed = Destination::parse(&webhook).unwrap();
        assert_eq!(
            (parsed.kind, parsed.content),
            (Kind::WebhookAtLeastOnce, Content::IdOnly)
        );
        let sasl = kafka(json!([
            {"name": "kafkaTopic", "valueString": "fhir.patients"},
            {"name": "bootstrapServers", "valueString": "k1:9093, k2:9093"},
            {"name": "securityProtocol", "valueString": "SASL_SSL"},
            {"name": "saslMechanism", "valueString": "SCRAM-SHA-512"},
            {"name": "saslJaasConfig", "_valueString": reference("kafka-jaas")},
            {"name": "sslTruststoreCertificates", "valueString": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"},
            {"name": "batchSize", "valueInteger": 16384}]));
        assert_eq!(
            Destination::parse(&sasl).unwrap().kind,
            Kind::KafkaAtLeastOnce
        );
        let literal = kafka(json!([
            {"name": "kafkaTopic", "valueString": "t"}, {"name": "bootstrapServers", "valueString": "k:9092"},
            {"name": "securityProtocol", "valueString": "SASL_PLAINTEXT"}, {"name": "saslMechanism", "valueString": "SCRAM-SHA-256"},
            {"name": "saslJaasConfig", "valueString": JAAS}]));
        assert!(Destination::parse(&literal).is_ok());
    }

    #[test]
    fn refusals_say_what_to_fix_and_never_echo_a_secret() {
        let base = |extra: Value| {
            let mut list = vec![
                json!({"name": "kafkaTopic", "valueString": "t"}),
                json!({"name": "bootstrapServers", "valueString": "k:9092"}),
            ];
            list.extend(extra.as_array().unwrap().iter().cloned());
            kafka(Value::Array(list))
        };
        let sasl = |jaas: &str, mechanism: &str| {
            base(json!([
            {"name": "securityProtocol", "valueString": "SASL_SSL"},
            {"name": "saslMechanism", "valueString": mechanism},
            {"name": "saslJaasConfig", "valueString": jaas}]))
        };
        for (body, needle) in [
            (json!({"kind": "kafka-at-least-once"}), "topic must be"),
            (
                json!({"topic": "t", "kind": "amqp-at-least-once"}),
                "kind must be one of",
            ),
            (
                kafka(json!([{"name": "topic", "valueString": "t"}])),
                "\"topic\" is not a parameter of kind kafka-at-least-once; it takes kafkaTopic",
            ),
            (
                kafka(json!([{"name": "bootstrapServers", "valueString": "k:9092"}])),
                "needs the parameter kafkaTopic",
            ),
            (
                base(json!([{"name": "securityProtocol", "valueString": "SASL_SSL"}])),
                "needs saslMechanism",
            ),
            (
                base(
                    json!([{"name": "securityProtocol", "valueString": "SASL_SSL"}, {"name": "saslMechanism", "valueString": "PLAIN"}]),
                ),
                "needs saslJaasConfig",
            ),
            (sasl(JAAS, "PLAIN"), "does not fit saslMechanism"),
            (
                sasl(
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
                    "PLAIN",
                ),
                "only a Java client",
            ),
            (
                sasl(&JAAS.replace(';', ""), "SCRAM-SHA-256"),
                "must end with ;",
            ),
            (
                base(
                    json!([{"name": "saslClientCallbackHandlerClass", "valueString": "com.example.Handler"}]),
                ),
                "Java class",
            ),
            (
                base(
                    json!([{"name": "sslKeystoreKey", "valueString": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----"}]),
                ),
                "does not use TLS",
            ),
            (
                base(
                    json!([{"name": "securityProtocol", "valueString": "SSL"}, {"name": "sslKeystoreCertificateChain", "valueString": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----"}]),
                ),
                "without sslKeystoreKey",
            ),
            (
                base(json!([{"name": "kafkaTopic", "valueString": "again"}])),
                "given twice",
            ),
            (
                base(json!([{"name": "batchSize", "valueString": "10"}])),
                "takes valueInteger, not valueString",
            ),
            (
                base(json!([{"name": "compressionType", "valueString": "brotli"}])),
                "compressionType",
            ),
            (
                base(json!([{"name": "compressionType", "_valueString": reference("x")}])),
                "not secret-capable",
            ),
            (
                json!({"topic": "t", "kind": "webhook-at-least-once", "parameter": [{"name": "endpoint", "valueUrl": "https://u:p@h.example/"}]}),
                "must not carry credentials",
            ),
            (
                json!({"topic": "t", "kind": "webhook-at-least-once", "parameter": [{"name": "endpoint", "valueUrl": "https://h.example/"}, {"name": "header", "valueString": "no colon"}]}),
                "Name: value",
            ),
            (
                json!({"topic": "t", "kind": "webhook-at-least-once", "parameter": [{"name": "timeout", "valueUnsignedInt": 5}]}),
                "needs the parameter endpoint",
            ),
        ] {
            let got = problem(body.clone());
            assert!(got.contains(needle), "{body}: {got}");
            assert!(!got.contains("kafka-pass"), "{got}");
        }
    }

    #[test]
    fn servers_headers_and_numbers_at_their_edges() {
        let servers = |list: &str| {
            Destination::parse(&kafka(json!([
                {"name": "kafkaTopic", "valueString": "t"},
                {"name": "bootstrapServers", "valueString": list}])))
        };
        assert!(servers("[::1]:9092, k1:9092,").is_ok());
        assert!(servers("SASL_SSL://k1:9093").is_ok());
        for bad in [
            ":9092",
            "a b:9092",
            "k:0",
            "k:+9092",
            "k",
            ",",
            "[nope]:9092",
        ] {
            assert!(
                servers(bad).unwrap_err().contains("bootstrapServers"),
                "{bad}"
            );
        }
        let hook = |params: Value| {
            let mut list =
                vec![json!({"name": "endpoint", "valueUrl": "https://h.example/in?tenant=7"})];
            list.extend(params.as_array().unwrap().iter().cloned());
            Destination::parse(
                &json!({"topic": "t", "kind": "webhook-at-least-once", "parameter": list}),
            )
        };
        assert!(hook(json!([])).is_ok());
        assert!(
            hook(json!([{"name": "timeout", "valueUnsignedInt": u64::MAX}]))
                .unwrap_err()
                .contains("timeout")
        );
        for (header, needle) in [
            ("Authorization: Bearer abc", "credential"),
            ("X-Api-Key: abc", "credential"),
            ("Content-Length: 5", "set by fhirbox"),
            ("X-Ok: a\u{0}b", "control characters"),
        ] {
            let got = hook(json!([{"name": "header", "valueString": header}])).unwrap_err();
            assert!(got.contains(needle), "{header}: {got}");
            assert!(!got.contains("abc"), "{got}");
        }
        let long = "x".repeat(5000);
        let got =
            Destination::parse(&kafka(json!([{"name": long, "valueString": "v"}]))).unwrap_err();
        assert!(got.len() < 600, "{}", got.len());
        let encrypted = kafka(json!([
            {"name": "kafkaTopic", "valueString": "t"}, {"name": "bootstrapServers", "valueString": "k:9093"},
            {"name": "securityProtocol", "valueString": "SSL"},
            {"name": "sslKeystoreKey", "valueString": "-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n-----END ENCRYPTED PRIVATE KEY-----"},
            {"name": "sslKeystoreCertificateChain", "valueString": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----"}]));
        assert!(Destination::parse(&encrypted)
            .unwrap_err()
            .contains("encrypted"));
        let dots = kafka(
            json!([{"name": "kafkaTopic", "valueString": ".."}, {"name": "bootstrapServers", "valueString": "k:1"}]),
        );
        assert!(Destination::parse(&dots)
            .unwrap_err()
            .contains("kafkaTopic"));
    }
}
