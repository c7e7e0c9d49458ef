//! Prometheus metrics (`GET /metrics`, text exposition format). Labels are
//! route templates, methods, statuses, reason codes and the ids of resources
//! an operator configures (IdentityProviders, TokenIntrospectors,
//! destinations): never the ids of data, secrets or tokens.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntrospectorLabels {
    introspector: String,
    result: String,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<ReasonLabels, Counter>,
    sign_ins: Family<SignInLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    identity_provider: String,
    result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fhirbox");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route template",
            latency.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused authentications and authorizations by reason",
            auth_failures.clone(),
        );
        let sign_ins = Family::<SignInLabels, Counter>::default();
        registry.register(
            "sign_ins",
            "Sign-ins through IdentityProviders, by provider and result (ok or a failure reason)",
            sign_ins.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            auth_failures,
            sign_ins,
        }
    }

    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// One sign-in's end. Provider ids are labels: an operator configures
    /// them; a path naming an unknown one is counted as `(unknown)`.
    pub fn sign_in(&self, identity_provider: &str, result: &str) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                identity_provider: identity_provider.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// The counters of other issuers' tokens (docs/tokens.md), registered
    /// here. Introspector ids are labels: an operator configures them, so
    /// they are few; tokens and users never are.
    pub fn token_events(&self) -> Arc<dyn fhirbox_auth::external::TokenEvents> {
        let events = TokenMetrics {
            verifications: Family::default(),
            jwks_fetches: Family::default(),
            introspections: Family::new_with_constructor(latency_histogram),
            cache_hits: Family::default(),
        };
        self.with_registry(|registry| {
            registry.register(
                "external_token_verifications",
                "Other issuers' tokens checked, by TokenIntrospector and result (ok or a failure reason)",
                events.verifications.clone(),
            );
            registry.register(
                "external_jwks_fetches",
                "Fetches of issuers' key sets, by TokenIntrospector and result (ok, failed)",
                events.jwks_fetches.clone(),
            );
            registry.register(
                "external_introspection_duration_seconds",
                "Calls to introspection endpoints, by TokenIntrospector and result (active, inactive, error)",
                events.introspections.clone(),
            );
            registry.register(
                "external_token_cache_hits",
                "Verdicts on other issuers' tokens served from the cache, by TokenIntrospector",
                events.cache_hits.clone(),
            );
        });
        Arc::new(events)
    }

    /// The counters of subscription delivery (docs/subscriptions.md),
    /// registered here, labelled by destination id.
    pub fn delivery_events(&self) -> Arc<dyn fhirbox_subscriptions::delivery::DeliveryEvents> {
        let events = DeliveryMetrics {
            attempts: Family::default(),
            delivered: Family::default(),
            lost: Family::default(),
            latency: Family::new_with_constructor(delivery_histogram),
        };
        self.with_registry(|registry| {
            registry.register(
                "subscription_delivery_attempts",
                "Attempts to deliver a batch of notifications, by destination and result (ok, failed)",
                events.attempts.clone(),
            );
            registry.register(
                "subscription_messages_delivered",
                "Notifications acknowledged by their receiver, by destination",
                events.delivered.clone(),
            );
            registry.register(
                "subscription_messages_lost",
                "Best-effort notifications dropped (memory queue full, or the send failed), by destination",
                events.lost.clone(),
            );
            registry.register(
                "subscription_delivery_latency_seconds",
                "Time from a change being stored to its notification being acknowledged, by destination",
                events.latency.clone(),
            );
        });
        Arc::new(events)
    }

    /// Lets other parts of the server add their own metrics.
    pub fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

struct TokenMetrics {
    verifications: Family<IntrospectorLabels, Counter>,
    jwks_fetches: Family<IntrospectorLabels, Counter>,
    introspections: Family<IntrospectorLabels, Histogram, fn() -> Histogram>,
    cache_hits: Family<IntrospectorLabels, Counter>,
}

fn introspector_labels(introspector: &str, result: &str) -> IntrospectorLabels {
    IntrospectorLabels {
        introspector: introspector.to_owned(),
        result: result.to_owned(),
    }
}

impl fhirbox_auth::external::TokenEvents for TokenMetrics {
    fn verification(&self, introspector: &str, result: &'static str) {
        self.verifications
            .get_or_create(&introspector_labels(introspector, result))
            .inc();
    }

    fn jwks_fetch(&self, introspector: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.jwks_fetches
            .get_or_create(&introspector_labels(introspector, result))
            .inc();
    }

    fn introspection(&self, introspector: &str, seconds: f64, outcome: &'static str) {
        self.introspections
            .get_or_create(&introspector_labels(introspector, outcome))
            .observe(seconds);
    }

    fn cache_hit(&self, introspector: &str) {
        self.cache_hits
            .get_or_create(&introspector_labels(introspector, "hit"))
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    destination: String,
    result: String,
}

fn delivery_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct DeliveryMetrics {
    attempts: Family<AttemptLabels, Counter>,
    delivered: Family<DestinationLabels, Counter>,
    lost: Family<DestinationLabels, Counter>,
    latency: Family<DestinationLabels, Histogram, fn() -> Histogram>,
}

impl fhirbox_subscriptions::delivery::DeliveryEvents for DeliveryMetrics {
    fn attempt(&self, destination: &str, ok: bool) {
        self.attempts
            .get_or_create(&AttemptLabels {
                destination: destination.to_owned(),
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    fn delivered(&self, destination: &str, seconds_since_change: &[f64]) {
        let labels = DestinationLabels {
            destination: destination.to_owned(),
        };
        self.delivered
            .get_or_create(&labels)
            .inc_by(seconds_since_change.len() as u64);
        let histogram = self.latency.get_or_create(&labels);
        for seconds in seconds_since_change {
            histogram.observe(*seconds);
        }
    }

    fn lost(&self, destination: &str, count: u64) {
        self.lost
            .get_or_create(&DestinationLabels {
                destination: destination.to_owned(),
            })
            .inc_by(count);
    }
}

/// A bundle entry refused by access control counts like a refused request.
impl fhirbox_rest::RestEvents for Metrics {
    fn entry_denied(&self, reason: &'static str) {
        self.auth_failure(reason);
    }
}

/// `GET /metrics` alone, without authentication: what `BOX_METRICS_PORT`
/// serves. On the main port the same handler sits behind authentication.
pub fn scrape_router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(expose))
        .with_state(metrics)
}

pub async fn expose(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut response = (StatusCode::OK, metrics.render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
